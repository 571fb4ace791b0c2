"""dlpipe: four classic PyTorch recipes as one reproducible DVC + Snakemake pipeline."""

__version__ = "0.1.0"
