"""Fixtures of the benchmarks' tests. The tiny DCGAN run (``classifier_run``, ``gan_run``)
is the one tests/test_dcgan_stages.py builds, imported from there: the benchmarks may
use the tests' helpers, never the other way round (tests/ imports nothing of benchmarks/)."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"
if str(TESTS) not in sys.path:  # tests/ is no package: its modules import each other by name
    sys.path.insert(0, str(TESTS))

from test_dcgan_stages import classifier_run, gan_run  # noqa: E402,F401  (module-scoped fixtures)
