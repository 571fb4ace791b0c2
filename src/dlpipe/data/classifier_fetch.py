"""Get the image-classification data into data/raw/classifier/ (params ``lenet.data``).

- ``digits``: scikit-learn's handwritten digits (1,797 real 8x8 images, 10
  classes), which ship inside scikit-learn: no network. Stored as
  ``digits.pt`` ({"images": uint8 N x 8 x 8 in 0..16, "labels": int64 N}).
- ``cifar10``: the official CIFAR-10 python archive, downloaded from
  ``cifar10_url``, its md5 checked against ``cifar10_md5``, every member
  checked before anything is extracted (no absolute paths, no '..', no links
  or devices), then extracted as ``cifar-10-batches-py/``.

``source.json`` records which dataset the folder holds. The folder is built
under a temporary name and swapped in only when complete: a failed download,
a wrong md5 or a bad archive leaves the previous data/raw/classifier as it was.
"""

from __future__ import annotations

import logging
from pathlib import Path, PurePosixPath

import torch

from dlpipe.config import ClassifierData
from dlpipe.data.archives import download, safe_extract_tar
from dlpipe.errors import PipelineError
from dlpipe.io import atomic_dir, atomic_path, scratch_dir, write_json

log = logging.getLogger(__name__)

RAW_DIR = Path("data/raw/classifier")
SOURCE_JSON = "source.json"  # which dataset the raw folder holds

CIFAR_DIR = "cifar-10-batches-py"
CIFAR_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta")
DIGITS_FILE = "digits.pt"


def fetch_digits(dest: Path) -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images).round().to(torch.uint8)  # integer values 0..16
    with atomic_path(dest / DIGITS_FILE) as tmp, open(tmp, "wb") as fh:  # a handle: same bytes each run
        torch.save({"images": images, "labels": torch.from_numpy(digits.target).to(torch.int64)}, fh)
    write_json(dest / SOURCE_JSON, {"name": "digits", "origin": "sklearn.datasets.load_digits",
                                    "class_names": [str(name) for name in digits.target_names]})


def fetch_cifar10(cfg: ClassifierData, dest: Path, scratch: Path, limits) -> None:
    archive = scratch / PurePosixPath(cfg.cifar10_url).name
    log.info("downloading %s", cfg.cifar10_url)
    download(cfg.cifar10_url, archive, cfg.cifar10_md5, "lenet.data.cifar10_url", "lenet.data.cifar10_md5", limits)
    label = f"{archive.name} from {cfg.cifar10_url}"
    safe_extract_tar(archive, dest, label, limits)
    missing = [name for name in CIFAR_FILES if not (dest / CIFAR_DIR / name).is_file()]
    if missing:
        raise PipelineError(f"{label}: not the CIFAR-10 python archive: no {CIFAR_DIR}/{missing[0]} in it")
    write_json(dest / SOURCE_JSON, {"name": "cifar10", "url": cfg.cifar10_url, "md5": cfg.cifar10_md5})


def fetch(cfg: ClassifierData, out_dir: Path, limits) -> None:
    """Fill ``out_dir`` with the chosen dataset; on any failure it is left as it was."""
    with atomic_dir(out_dir) as staging, scratch_dir(out_dir.parent) as tmp:
        if cfg.name == "digits":
            fetch_digits(staging)
        else:
            fetch_cifar10(cfg, staging, tmp, limits)
