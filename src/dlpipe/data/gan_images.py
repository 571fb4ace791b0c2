"""Images for the GAN slot: a user's folder of pictures, resizing, channels.

``name: folder`` reads every picture under a folder (an ImageFolder such as
CelebA's ``img_align_celeba/`` inside a root, or pictures directly in it),
resized so the shorter side is ``image_size`` and centre-cropped, as the
seed's ``Resize`` + ``CenterCrop``. Everything becomes uint8 N x nc x S x S.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from dlpipe.errors import PipelineError

# torchvision's ImageFolder extensions
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def list_images(folder: str | Path, key: str = "dcgan.data.folder") -> list[Path]:
    """Every picture under ``folder`` (recursively), sorted: a missing, non-folder or
    picture-less path is one clear error naming it and the params key."""
    if not str(folder):
        raise PipelineError(f"params.yaml: '{key}' is empty; set it to a folder of pictures (e.g. CelebA's)")
    root = Path(folder)
    if not root.is_dir():
        what = "does not exist" if not root.exists() else "is not a folder"
        raise PipelineError(f"{root}: the folder of GAN images ('{key}') {what}")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise PipelineError(f"{root}: the folder of GAN images ('{key}') holds no pictures "
                            f"({', '.join(IMAGE_EXTENSIONS)}), in it or in its sub-folders")
    return files


def read_picture(path: Path, image_size: int, nc: int) -> torch.Tensor:
    """One picture -> uint8 nc x S x S: shorter side resized to S, centre crop."""
    try:
        with Image.open(path) as image:
            image = image.convert("L" if nc == 1 else "RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise PipelineError(f"{path}: not a readable picture ({type(exc).__name__}: {exc})") from None
    # Imported here, for a folder source only: torchvision's import costs about 2.5 s of a
    # stage's start, and the embedded digits need no resizing.
    from torchvision.transforms import functional as TF

    image = TF.center_crop(TF.resize(image, image_size, antialias=True), image_size)
    return TF.pil_to_tensor(image)


def read_folder(folder: str | Path, image_size: int, nc: int, max_images: int,
                seed: int) -> tuple[torch.Tensor, list[str]]:
    """uint8 N x nc x S x S of the folder's pictures (a seeded sample of ``max_images``
    when set), and their paths relative to the folder."""
    files = list_images(folder)
    if max_images and len(files) > max_images:
        keep = torch.randperm(len(files), generator=torch.Generator().manual_seed(seed))[:max_images]
        files = [files[i] for i in sorted(keep.tolist())]
    images = torch.empty((len(files), nc, image_size, image_size), dtype=torch.uint8)
    for i, path in enumerate(tqdm(files, desc="read pictures", unit="image", mininterval=2.0)):
        images[i] = read_picture(path, image_size, nc)
    return images, [p.relative_to(folder).as_posix() for p in files]


def to_channels(images: torch.Tensor, nc: int) -> torch.Tensor:
    """uint8 N x C x H x W -> N x nc x H x W: colour to grey by ITU-R 601 luma
    (as PIL's ``convert("L")``), grey to colour by repeating the channel."""
    c = images.shape[1]
    if c == nc:
        return images
    if nc == 1 and c == 3:
        weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        return (images.float() * weights).sum(dim=1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
    if nc == 3 and c == 1:
        return images.expand(-1, 3, -1, -1).contiguous()
    raise PipelineError(f"cannot turn {c}-channel images into {nc}-channel ones")


def resize(images: torch.Tensor, image_size: int, chunk: int = 4096) -> torch.Tensor:
    """uint8 N x C x H x W -> N x C x S x S (bilinear, antialiased when shrinking)."""
    if images.shape[-2:] == (image_size, image_size):
        return images
    out = torch.empty((len(images), images.shape[1], image_size, image_size), dtype=torch.uint8)
    for start in range(0, len(images), chunk):
        block = images[start:start + chunk].float()
        block = F.interpolate(block, size=(image_size, image_size), mode="bilinear", align_corners=False,
                              antialias=True)
        out[start:start + chunk] = block.round().clamp(0, 255).to(torch.uint8)
    return out
