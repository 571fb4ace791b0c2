"""Fréchet distance between image sets in the feature space of a network trained here.

Inception weights cannot be downloaded on an offline machine, so the DCGAN is
measured in the penultimate (84-d) layer of a LeNet trained for it (train_fid_lenet). The
distance itself is torchmetrics' ``FrechetInceptionDistance`` with that
network as its ``feature`` module: a maintained implementation (float64
moments, the trace of the matrix square root from eigenvalues) rather than a
hand-written one. ``frechet_distance_numpy`` is the textbook formula with
scipy's ``sqrtm``, kept as the reference the tests compare against.

Images enter as uint8 N x C x S x S (what a saved picture holds, so real and
generated images are quantised alike); ``LeNetFeatures`` brings them to what
the LeNet was trained on: 3 channels, 32 x 32, normalised by the classifier's
training-split statistics.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance

from dlpipe.errors import PipelineError
from dlpipe.models.lenet import IMAGE_SIZE, LeNet


class LeNetFeatures(nn.Module):
    """uint8 N x C x S x S -> the LeNet's penultimate activations (N x hidden[1])."""

    def __init__(self, lenet: LeNet, mean, std):
        super().__init__()
        self.lenet = lenet.eval()
        self.num_features = lenet.fc2.out_features  # torchmetrics reads this instead of probing
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"expected uint8 N x C x H x W images, got {images.dtype} {tuple(images.shape)}")
        x = images.float() / 255.0
        if x.shape[-2:] != (IMAGE_SIZE, IMAGE_SIZE):
            # Downscaling a 64 px GAN image: antialiased, as a photo would be resized.
            x = F.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False, antialias=True)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)  # grey -> the 3 equal channels the classifier data has
        return (x - self.mean) / self.std

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.lenet.features(self.prepare(images))

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.lenet(self.prepare(images))


@torch.no_grad()
def frechet_distance(features: nn.Module, real: torch.Tensor, fake: torch.Tensor, batch: int = 500) -> float:
    """FID of two uint8 image sets through ``features`` (torchmetrics, float64 moments)."""
    # The metric keeps its sums in float64 already; its set_dtype would also
    # convert the feature network (a module it owns) in place, so it is not called.
    metric = FrechetInceptionDistance(feature=features, normalize=False).to(real.device)
    for images, is_real in ((real, True), (fake, False)):
        for start in range(0, len(images), batch):
            metric.update(images[start:start + batch], real=is_real)
    return float(metric.compute())


def frechet_distance_numpy(a: np.ndarray, b: np.ndarray) -> float:
    """Reference: ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 sqrtm(S_a S_b)) of two feature
    matrices (rows = samples), with scipy's matrix square root."""
    from scipy import linalg

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = linalg.sqrtm(cov_a @ cov_b)
    if np.iscomplexobj(root):
        root = root.real  # rounding leaves tiny imaginary parts on near-singular products
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2.0 * root))


# torch-fidelity's Inception weights (the TensorFlow FID network, ported); torchmetrics'
# integer ``feature`` uses them. Looked for in torch hub's cache, never downloaded here.
INCEPTION_WEIGHTS = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_WEIGHTS}"


def inception_weights_path() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS


@torch.no_grad()
def inception_distance(real: torch.Tensor, fake: torch.Tensor, batch: int = 100) -> float:
    """The usual Inception FID (2048-d pool features) of two uint8 image sets, only
    with torch-fidelity installed and its weights file already on this machine."""
    if importlib.util.find_spec("torch_fidelity") is None:
        raise PipelineError("params.yaml: 'dcgan.evaluate.inception_fid' is true but torch-fidelity is not "
                            "installed (pip install torch-fidelity)")
    path = inception_weights_path()
    if not path.is_file():
        raise PipelineError(f"params.yaml: 'dcgan.evaluate.inception_fid' is true but {path} does not exist; "
                            f"nothing is downloaded at run time: fetch {INCEPTION_URL} elsewhere and put it "
                            "there (TORCH_HOME moves the folder)")
    metric = FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=str(path)).to(real.device)
    for images, is_real in ((real, True), (fake, False)):
        for start in range(0, len(images), batch):
            chunk = images[start:start + batch]
            metric.update(chunk.expand(-1, 3, -1, -1) if chunk.shape[1] == 1 else chunk, real=is_real)
    return float(metric.compute())
