"""The transfer slot's images: an ImageFolder decoded once into uint8 tensors.

data/prepared/transfer/
  train.pt, val.pt   {"images": uint8 N x 3 x H x W, "sizes": int64 N x 2, "labels": int64 N}
  meta.json          dataset, class names, split sizes and counts, each image's file

Images differ in size (hymenoptera's photos), so each one sits in the top-left
corner of a zero canvas as large as the largest, with its own height and width
in ``sizes``; the batched crops of ``transfer_augment`` read only that part.
Images larger than ``transfer.prepare.max_side`` are shrunk first (aspect kept),
which bounds the memory and the cost of every crop.

Folders are read as torchvision's ImageFolder reads them: classes are the
sorted sub-folder names, files with its image suffixes, converted to RGB.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dlpipe.errors import PipelineError
from dlpipe.layouts import TEXT, JsonFile, Tensor, TensorFile, array, record

PREPARED_DIR = Path("data/prepared/transfer")
META_JSON = "meta.json"
SPLITS = ("train", "val")
# torchvision.datasets.folder.IMG_EXTENSIONS
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def scan(folder: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """(class names, [(file, class index)]) in ImageFolder's order."""
    if not folder.is_dir():
        raise PipelineError(f"{folder}: not found; run fetch_transfer first")
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    samples = [(path, index) for index, name in enumerate(classes)
               for path in sorted((folder / name).rglob("*"))
               if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES]
    if not classes or not samples:
        raise PipelineError(f"{folder}: no class folders with images ({', '.join(IMAGE_SUFFIXES)}) in it")
    # As torchvision's ImageFolder: a class folder without images is an error, not a class never seen.
    present = {label for _, label in samples}
    empty = [name for index, name in enumerate(classes) if index not in present]
    if empty:
        raise PipelineError(f"{folder / empty[0]}: class folder holds no images ({', '.join(IMAGE_SUFFIXES)}); "
                            "expected at least one image in every class folder")
    if len(classes) < 2:
        raise PipelineError(f"{folder}: only one class folder ({classes[0]}/); "
                            "expected at least two class folders, one per class")
    return classes, samples


def decode(path: Path, max_side: int) -> torch.Tensor:
    """uint8 3 x h x w, RGB; shrunk (antialiased) so that max(h, w) <= max_side."""
    try:
        with Image.open(path) as image:
            rgb = image.convert("RGB")  # forces the full decode: a truncated file fails here
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise PipelineError(f"{path}: not a readable image ({type(exc).__name__}: {exc})") from None
    if max(rgb.size) > max_side:
        scale = max_side / max(rgb.size)
        rgb = rgb.resize((max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale))),
                         Image.Resampling.BILINEAR, reducing_gap=None)
    return torch.from_numpy(np.asarray(rgb, dtype=np.uint8).copy()).permute(2, 0, 1)


def read_split(folder: Path, max_side: int) -> dict:
    """{"images", "sizes", "labels", "class_names", "files"} of one ImageFolder split."""
    classes, samples = scan(folder)
    images = [decode(path, max_side) for path, _ in samples]
    height = max(image.shape[1] for image in images)
    width = max(image.shape[2] for image in images)
    canvas = torch.zeros(len(images), 3, height, width, dtype=torch.uint8)
    for slot, image in zip(canvas, images):
        slot[:, :image.shape[1], :image.shape[2]] = image
    return {
        "images": canvas,
        "sizes": torch.tensor([tuple(image.shape[1:]) for image in images], dtype=torch.int64).view(-1, 2),
        "labels": torch.tensor([label for _, label in samples], dtype=torch.int64),
        "class_names": classes,
        "files": [path.relative_to(folder).as_posix() for path, _ in samples],
    }


SPLIT = TensorFile("prepare_transfer", f"{PREPARED_DIR}/*.pt", {
    "images": Tensor("uint8", ("N", 3, "H", "W")), "sizes": Tensor("int64", ("N", 2), min=1),
    "labels": Tensor("int64", ("N",), min=0, below="classes")})
META = JsonFile("prepare_transfer", f"{PREPARED_DIR}/{META_JSON}", record({
    "dataset": TEXT, "class_names": array(TEXT, min_items=2), "files": {"type": "object"}}))


def save_split(folder: Path, split: str, data: dict) -> None:
    SPLIT.save(folder / f"{split}.pt", data)


def load_split(split: str, device: torch.device | str = "cpu", folder: Path = PREPARED_DIR) -> dict[str, torch.Tensor]:
    path, classes = Path(folder) / f"{split}.pt", len(load_meta(folder)["class_names"])
    data = SPLIT.load(path, "cpu", classes=classes)
    canvas = data["images"].shape[2:]  # each image sits in its top-left corner
    if bool((data["sizes"] > torch.tensor(canvas)).any()):
        raise PipelineError(f"{path}: 'sizes': an image of {tuple(data['sizes'].max(0).values.tolist())} "
                            f"does not fit the {tuple(canvas)} canvas; rerun {SPLIT.producer}")
    return {name: value.to(device) for name, value in data.items()}


def load_meta(folder: Path = PREPARED_DIR) -> dict:
    return META.read(Path(folder) / META_JSON)
