"""Get the transfer-learning images into data/raw/transfer/ as an ImageFolder
(params ``transfer.data``): ``train/<class>/*`` and ``val/<class>/*``.

- ``faces``: scikit-image's LFW subset (``skimage.data.lfw_subset()``, shipped
  inside scikit-image: no network): 200 grey 25 x 25 crops, the first 100
  faces, the other 100 background patches. Written as PNG files, split
  stratified and deterministically: ``train_per_class`` of each class to
  train/, all the others to val/ (``split_seed``).
- ``hymenoptera``: the PyTorch tutorial's ants/bees zip, downloaded from
  ``hymenoptera_url``, its md5 checked against ``hymenoptera_md5`` (when set),
  every member checked before anything is extracted.
- ``folder``: your own ImageFolder at ``folder`` (relative to the repository
  root, or absolute): ``train/<class>/*`` and ``val/<class>/*`` are copied as
  they are; one folder of ``<class>/*`` is split here, stratified and
  deterministically (``folder_val_fraction``, ``split_seed``). Every picture
  is decoded once before anything is written, so a corrupt one is named.

``source.json`` records what the folder holds. The folder is built under a
temporary name and swapped in only when complete: a failed download, a wrong
md5, a bad archive or a bad folder leaves the previous data/raw/transfer as it was.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from dlpipe.config import TransferData
from dlpipe.data.classifier_convert import stratified_split
from dlpipe.data.archives import download, safe_extract_zip
from dlpipe.data.transfer_images import IMAGE_SUFFIXES
from dlpipe.errors import PipelineError
from dlpipe.io import atomic_dir, scratch_dir, write_json

log = logging.getLogger(__name__)

RAW_DIR = Path("data/raw/transfer")
SOURCE_JSON = "source.json"
SPLITS = ("train", "val")
FACE_CLASSES = ("face", "non_face")  # ImageFolder's order: sorted folder names
FACES_PER_CLASS = 100


def faces_split(labels: np.ndarray, train_per_class: int, seed: int) -> dict[str, np.ndarray]:
    """``train_per_class`` indices of each class to train, every other one to val, as
    ``stratified_split`` draws them (each class's permutation from ``seed``)."""
    counts = np.bincount(labels)
    if counts.min() != counts.max():
        raise PipelineError(f"faces: classes of {counts.tolist()} images; expected equal counts")
    val = counts[0] - train_per_class
    split = stratified_split(labels, {"val": val / counts[0]}, seed)  # round(val / n x n) == val
    return {"train": split["train"], "val": split["val"]}


def fetch_faces(cfg: TransferData, dest: Path) -> None:
    from skimage.data import lfw_subset

    images = lfw_subset()
    if images.shape != (2 * FACES_PER_CLASS, 25, 25):
        raise PipelineError(f"skimage.data.lfw_subset() returned {images.shape}, expected 200 x 25 x 25 "
                            "(100 faces, then 100 non-faces)")
    # Floats in 0..1 (the docstring says uint8; scikit-image 0.26 returns float64).
    pixels = np.clip(np.round(np.asarray(images, dtype=np.float64) * 255), 0, 255).astype(np.uint8)
    labels = np.repeat(np.arange(len(FACE_CLASSES)), FACES_PER_CLASS)
    split = faces_split(labels, cfg.train_per_class, cfg.split_seed)
    for name in SPLITS:
        for index in split[name]:
            folder = dest / name / FACE_CLASSES[labels[index]]
            folder.mkdir(parents=True, exist_ok=True)
            # The index in lfw_subset() names the file, so every PNG can be traced back.
            Image.fromarray(pixels[index]).save(folder / f"lfw_{index:03d}.png", format="PNG")
    write_json(dest / SOURCE_JSON, {
        "name": "faces", "origin": "skimage.data.lfw_subset", "class_names": list(FACE_CLASSES),
        "sizes": {name: int(len(split[name])) for name in SPLITS},
        "train_per_class": cfg.train_per_class, "split_seed": cfg.split_seed,
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


def fetch_hymenoptera(cfg: TransferData, dest: Path, scratch: Path, limits) -> None:
    url = cfg.hymenoptera_url
    archive = scratch / PurePosixPath(url).name
    log.info("downloading %s", url)
    actual = download(url, archive, cfg.hymenoptera_md5, "transfer.data.hymenoptera_url",
                      "transfer.data.hymenoptera_md5", limits)
    if not cfg.hymenoptera_md5:
        log.warning("transfer.data.hymenoptera_md5 is empty: the download was not checked; "
                    "its md5 is %s (set it in params.yaml to pin the data)", actual)
    label = f"{archive.name} from {url}"
    extracted = scratch / "extracted"
    extracted.mkdir()
    safe_extract_zip(archive, extracted, label, limits)
    root = image_folder_root(extracted, label)
    for name in SPLITS:
        shutil.move(root / name, dest / name)
    write_json(dest / SOURCE_JSON, {"name": "hymenoptera", "url": url, "md5": actual})


FOLDER_KEY = "transfer.data.folder"
FRACTION_KEY = "transfer.data.folder_val_fraction"


def class_folders(folder: Path) -> dict[str, list[Path]]:
    """{class: its pictures, sorted} of one ImageFolder split, read as
    ``transfer_images.scan`` reads it (sorted sub-folders that are not hidden,
    every file under them with an image suffix); classes may be empty here."""
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    return {name: sorted(p for p in (folder / name).rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            for name in classes}


def check_classes(folder: Path, classes: dict[str, list[Path]]) -> None:
    """No pictures at all, an empty class, a single class: one error naming the folder and the key."""
    if not any(classes.values()):
        loose = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
        if classes:
            found = f"no pictures in any of its class folders ({', '.join(classes)})"
        else:
            found = f"{len(loose)} pictures directly in it but no class folders" if loose else "no class folders"
        raise PipelineError(f"{folder}: {found} ('{FOLDER_KEY}'); expected one sub-folder per class "
                            f"holding its pictures ({', '.join(IMAGE_SUFFIXES)})")
    empty = [name for name, files in classes.items() if not files]
    if empty:
        raise PipelineError(f"{folder / empty[0]}: class folder holds no pictures ({', '.join(IMAGE_SUFFIXES)}) "
                            f"('{FOLDER_KEY}'); expected at least one picture in every class folder")
    if len(classes) < 2:
        raise PipelineError(f"{folder}: only one class folder ({next(iter(classes))}/) ('{FOLDER_KEY}'); "
                            "expected at least two class folders, one per class")


def check_readable(path: Path) -> None:
    """Decode the whole picture (as prepare_transfer will), or name the file."""
    try:
        with Image.open(path) as image:
            image.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise PipelineError(f"{path}: not a readable image ({type(exc).__name__}: {exc}) "
                            f"('{FOLDER_KEY}')") from None


def split_folder(root: Path, classes: dict[str, list[Path]], fraction: float, seed: int) -> dict[str, dict]:
    """{split: {class: [(source file, path inside the class folder)]}}: ``fraction`` of each
    class to val/, as ``stratified_split`` draws it; every class keeps one picture in each split."""
    for name, files in classes.items():
        count = int(round(fraction * len(files)))  # stratified_split's count
        if count < 1 or count >= len(files):
            raise PipelineError(
                f"{root / name}: {len(files)} picture(s) give {count} to val/ and {len(files) - count} to train/ "
                f"('{FRACTION_KEY}' {fraction}); expected at least one in each: add pictures to this class, "
                f"change the fraction, or give the folder its own train/ and val/")
    names = list(classes)
    files = [(name, path) for name in names for path in classes[name]]
    labels = np.array([names.index(name) for name, _ in files])
    split = stratified_split(labels, {"val": fraction}, seed)
    copies: dict[str, dict] = {part: {name: [] for name in names} for part in SPLITS}
    for part in SPLITS:
        for index in split[part].tolist():
            name, path = files[index]
            copies[part][name].append((path, path.relative_to(root / name)))
    return copies


def fetch_folder(cfg: TransferData, dest: Path) -> None:
    if not cfg.folder:
        raise PipelineError(f"params.yaml: '{FOLDER_KEY}' is empty but 'transfer.data.name' is 'folder'; "
                            "set it to a folder holding train/<class>/* and val/<class>/*, or <class>/*")
    root = Path(cfg.folder)
    if not root.is_dir():
        what = "does not exist" if not root.exists() else "is not a folder"
        raise PipelineError(f"{root}: the transfer images folder ('{FOLDER_KEY}') {what}")
    present = [name for name in SPLITS if (root / name).is_dir()]
    if len(present) == 1:
        missing = next(name for name in SPLITS if name not in present)
        raise PipelineError(f"{root}: has {present[0]}/ but no {missing}/ ('{FOLDER_KEY}'); expected both "
                            f"train/<class>/ and val/<class>/, or class folders only (then split by "
                            f"'{FRACTION_KEY}')")
    if present:
        splits = {name: class_folders(root / name) for name in SPLITS}
        for name in SPLITS:
            check_classes(root / name, splits[name])
        train, val = set(splits["train"]), set(splits["val"])
        if train != val:
            only, where, other = ((sorted(train - val), "train", "val") if train - val
                                  else (sorted(val - train), "val", "train"))
            raise PipelineError(f"{root}: class folder(s) {', '.join(only)} in {where}/ but not in {other}/ "
                                f"('{FOLDER_KEY}'); expected the same class folders in train/ and val/")
        layout = {"layout": "train/ and val/ as given"}
        copies = {name: {cls: [(path, path.relative_to(root / name / cls)) for path in files]
                         for cls, files in splits[name].items()} for name in SPLITS}
    else:
        classes = class_folders(root)
        check_classes(root, classes)
        layout = {"layout": "class folders, split here", "val_fraction": cfg.folder_val_fraction,
                  "split_seed": cfg.split_seed}
        copies = split_folder(root, classes, cfg.folder_val_fraction, cfg.split_seed)
    for name in SPLITS:
        for files in copies[name].values():
            for path, _ in files:
                check_readable(path)
    for name in SPLITS:
        for cls, files in copies[name].items():
            for path, rel in files:
                target = dest / name / cls / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)
    class_names = list(copies["train"])
    write_json(dest / SOURCE_JSON, {
        "name": "folder", "folder": cfg.folder, "class_names": class_names, **layout,
        "sizes": {name: sum(len(files) for files in copies[name].values()) for name in SPLITS},
        "class_counts": {name: [len(copies[name][cls]) for cls in class_names] for name in SPLITS},
    })
    log.info("transfer folder %s (%s): classes %s", cfg.folder, layout["layout"], ", ".join(class_names))


def fetch(cfg: TransferData, out_dir: Path, limits) -> None:
    """Fill ``out_dir`` with the chosen dataset; on any failure it is left as it was."""
    with atomic_dir(out_dir) as staging, scratch_dir(out_dir.parent) as tmp:
        if cfg.name == "faces":
            fetch_faces(cfg, staging)
        elif cfg.name == "folder":
            fetch_folder(cfg, staging)
        else:
            fetch_hymenoptera(cfg, staging, tmp, limits)
