"""torchvision's ResNet18 with a freezable backbone, layer groups for
discriminative learning rates, and the weights it starts from.

``ResNet18`` subclasses torchvision's ``ResNet`` without adding parameters or
buffers, so its state_dict has torchvision's keys: a saved file loads into
``torchvision.models.resnet18(num_classes=...)`` as is, and torchvision's
ImageNet weights load into it.

Starting weights (params ``transfer.model.weights``):
- ``imagenet``: torchvision's ``ResNet18_Weights.IMAGENET1K_V1``, from torch
  hub's cache (downloaded there when absent and the network allows);
- ``none``: random initialisation;
- ``pipeline``: the backbone the pipeline pretrained on the classifier data;
- anything else: the path of a state_dict file.
Every file is read with ``weights_only=True``; its ``fc`` is left out, because
the new head has the target dataset's classes.
"""

from __future__ import annotations

import logging
import urllib.error
from pathlib import Path

import torch
from torch import nn
from torchvision.models import ResNet18_Weights
from torchvision.models.resnet import BasicBlock, ResNet

from dlpipe.errors import PipelineError
from dlpipe.tensor_io import load_state_dict_file, weights_cap

log = logging.getLogger(__name__)

HEAD = "fc"
# fastai's split of a ResNet for discriminative LRs: the stem rides with layer1.
GROUPS = (("conv1", "bn1", "layer1"), ("layer2",), ("layer3",), ("layer4",), (HEAD,))


class ResNet18(ResNet):
    """ResNet18 whose backbone (everything but ``fc``) can be frozen: no gradients,
    and its BatchNorm layers stay in eval mode even under ``model.train()``, so
    their running statistics keep what the backbone learnt."""

    def __init__(self, num_classes: int):
        super().__init__(BasicBlock, [2, 2, 2, 2], num_classes=num_classes)
        self.backbone_frozen = False

    def freeze_backbone(self, frozen: bool = True) -> ResNet18:
        self.backbone_frozen = frozen
        for name, param in self.named_parameters():
            param.requires_grad_(name.startswith(HEAD + ".") or not frozen)
        return self.train(self.training)  # re-apply the BatchNorm modes

    def train(self, mode: bool = True) -> ResNet18:
        # The shared loop (and torch-lr-finder) call model.train() every epoch:
        # a frozen backbone's BatchNorm must not update its running stats then.
        super().train(mode)
        if self.backbone_frozen:
            for name, module in self.named_modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm) and not name.startswith(HEAD):
                    module.eval()
        return self

    def layer_groups(self) -> list[list[nn.Parameter]]:
        """Parameters in GROUPS order: stem+layer1, layer2, layer3, layer4, fc."""
        return [[p for name in group for p in getattr(self, name).parameters()] for group in GROUPS]


def group_lrs(lr: float, spread: float, groups: int = len(GROUPS)) -> list[float]:
    """Geometric from lr / spread (first group) to lr (last), as fastai's slice(lr / spread, lr)."""
    if groups == 1:
        return [lr]
    return [lr / spread ** ((groups - 1 - i) / (groups - 1)) for i in range(groups)]


def imagenet_file() -> Path:
    """Where torchvision's ``ResNet18_Weights`` keeps its file: torch hub's checkpoints folder."""
    url = ResNet18_Weights.IMAGENET1K_V1.url
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def imagenet_state() -> dict[str, torch.Tensor]:
    weights = ResNet18_Weights.IMAGENET1K_V1
    path = imagenet_file()
    if not path.is_file():
        log.info("ImageNet weights not in torch hub's cache; downloading %s", weights.url)
        try:
            # Writes a temp file, checks the sha256 prefix in the name, then renames.
            torch.hub.download_url_to_file(weights.url, str(path), hash_prefix=path.stem.rsplit("-", 1)[-1])
        except (urllib.error.URLError, OSError, RuntimeError, ValueError) as exc:
            raise PipelineError(
                f"transfer.model.weights 'imagenet': {path} is absent and could not be downloaded "
                f"({type(exc).__name__}: {str(exc)[:120]}); on an offline machine copy {path.name} "
                f"(from {weights.url}) to {path} (torch hub's cache: TORCH_HOME, default ~/.cache/torch), "
                "or use weights 'pipeline' or 'none'") from None
    return load_state_dict_file(path)


def load_backbone(model: ResNet18, weights: str, pipeline_file: Path) -> str:
    """Load every weight but ``fc`` from the source ``weights`` names; returns a
    description for the log. Missing, extra or misshapen tensors name the file."""
    if weights == "none":
        return "random initialisation"
    if weights == "imagenet":
        path, state = imagenet_file(), imagenet_state()
    else:
        path = Path(pipeline_file if weights == "pipeline" else weights)
        if weights == "pipeline" and not path.is_file():
            raise PipelineError(f"{path}: not found; run pretrain_transfer_backbone first (transfer.model.weights 'pipeline')")
        state = load_state_dict_file(path, max_bytes=weights_cap(model))
    backbone = {k: v for k, v in state.items() if not k.startswith(HEAD + ".")}
    expected = {k: v for k, v in model.state_dict().items() if not k.startswith(HEAD + ".")}
    missing = sorted(set(expected) - set(backbone))
    unexpected = sorted(set(backbone) - set(expected))
    wrong = [f"{k} {tuple(backbone[k].shape)} (ResNet18 has {tuple(v.shape)})"
             for k, v in expected.items() if k in backbone and backbone[k].shape != v.shape]
    if missing or unexpected or wrong:
        problems = [f"{len(missing)} missing (e.g. {missing[0]})"] if missing else []
        problems += [f"{len(unexpected)} unexpected (e.g. {unexpected[0]})"] if unexpected else []
        problems += [f"wrong shape: {wrong[0]}"] if wrong else []
        raise PipelineError(f"{path}: not ResNet18 weights: {'; '.join(problems)} (transfer.model.weights)")
    model.load_state_dict(backbone, strict=False)
    return f"{weights} ({path})"
