"""The pipeline's benchmarks, apart from the product (src/dlpipe): ``python -m benchmarks``
(``make bench``), ``python -m benchmarks.seeds`` (``make seeds``) and the reference
recipes, run from the repository root. Their bars (the issue's acceptance figures) live
here, in summary.py; their tests, test_*.py beside them, run under ``make test``."""
