"""dlpipe: the PyTorch recipes of the seed as one reproducible DVC + Snakemake pipeline."""

__version__ = "0.1.0"
