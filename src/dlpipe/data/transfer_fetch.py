"""Get the transfer-learning images into data/raw/transfer/ as an ImageFolder
(params ``transfer.data``): ``train/<class>/*`` and ``val/<class>/*``.

- ``faces``: scikit-image's LFW subset (``skimage.data.lfw_subset()``, shipped
  inside scikit-image: no network): 200 grey 25 x 25 crops, the first 100
  faces, the other 100 background patches. Written as PNG files, split
  stratified and deterministically (``faces_val_fraction``, ``split_seed``).
- ``hymenoptera``: the PyTorch tutorial's ants/bees zip, downloaded from
  ``hymenoptera_url``, its md5 checked against ``hymenoptera_md5`` (when set),
  every member checked before anything is extracted.

``source.json`` records what the folder holds. The folder is built under a
temporary name and swapped in only when complete: a failed download, a wrong
md5 or a bad archive leaves the previous data/raw/transfer as it was.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from dlpipe.config import TransferData
from dlpipe.data.classifier_convert import stratified_split
from dlpipe.data.archives import download, safe_extract_zip
from dlpipe.errors import PipelineError
from dlpipe.io import atomic_dir, write_json

log = logging.getLogger(__name__)

RAW_DIR = Path("data/raw/transfer")
SOURCE_JSON = "source.json"
SPLITS = ("train", "val")
FACE_CLASSES = ("face", "non_face")  # ImageFolder's order: sorted folder names
FACES_PER_CLASS = 100


def fetch_faces(cfg: TransferData, dest: Path) -> None:
    from skimage.data import lfw_subset

    images = lfw_subset()
    if images.shape != (2 * FACES_PER_CLASS, 25, 25):
        raise PipelineError(f"skimage.data.lfw_subset() returned {images.shape}, expected 200 x 25 x 25 "
                            "(100 faces, then 100 non-faces)")
    # Floats in 0..1 (the docstring says uint8; scikit-image 0.26 returns float64).
    pixels = np.clip(np.round(np.asarray(images, dtype=np.float64) * 255), 0, 255).astype(np.uint8)
    labels = np.repeat(np.arange(len(FACE_CLASSES)), FACES_PER_CLASS)
    split = stratified_split(labels, {"val": cfg.faces_val_fraction}, cfg.split_seed)
    for name in SPLITS:
        for index in split[name]:
            folder = dest / name / FACE_CLASSES[labels[index]]
            folder.mkdir(parents=True, exist_ok=True)
            # The index in lfw_subset() names the file, so every PNG can be traced back.
            Image.fromarray(pixels[index]).save(folder / f"lfw_{index:03d}.png", format="PNG")
    write_json(dest / SOURCE_JSON, {
        "name": "faces", "origin": "skimage.data.lfw_subset", "class_names": list(FACE_CLASSES),
        "sizes": {name: int(len(split[name])) for name in SPLITS},
        "val_fraction": cfg.faces_val_fraction, "split_seed": cfg.split_seed,
    })


def image_folder_root(extracted: Path, label: str) -> Path:
    """The folder holding train/ and val/: the archive's top folder (the real zip's
    ``hymenoptera_data/``) or the archive root itself."""
    candidates = [extracted] + sorted(p for p in extracted.iterdir() if p.is_dir())
    for folder in candidates:
        if all((folder / name).is_dir() for name in SPLITS):
            return folder
    raise PipelineError(f"{label}: not an ImageFolder archive: no train/ and val/ folders "
                        "(at its root or in one top folder)")


def fetch_hymenoptera(cfg: TransferData, dest: Path, scratch: Path) -> None:
    url = cfg.hymenoptera_url
    archive = scratch / PurePosixPath(url).name
    log.info("downloading %s", url)
    actual = download(url, archive, cfg.hymenoptera_md5, "transfer.data.hymenoptera_url",
                      "transfer.data.hymenoptera_md5")
    if not cfg.hymenoptera_md5:
        log.warning("transfer.data.hymenoptera_md5 is empty: the download was not checked; "
                    "its md5 is %s (set it in params.yaml to pin the data)", actual)
    label = f"{archive.name} from {url}"
    extracted = scratch / "extracted"
    extracted.mkdir()
    safe_extract_zip(archive, extracted, label)
    root = image_folder_root(extracted, label)
    for name in SPLITS:
        shutil.move(root / name, dest / name)
    write_json(dest / SOURCE_JSON, {"name": "hymenoptera", "url": url, "md5": actual})


def fetch(cfg: TransferData, out_dir: Path) -> None:
    """Fill ``out_dir`` with the chosen dataset; on any failure it is left as it was."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # The download goes beside the output (same disk), never into the output itself.
    with atomic_dir(out_dir) as staging, tempfile.TemporaryDirectory(prefix=".download.", dir=out_dir.parent) as tmp:
        if cfg.name == "faces":
            fetch_faces(cfg, staging)
        else:
            fetch_hymenoptera(cfg, staging, Path(tmp))
