"""The DCGAN of PyTorch's DCGAN tutorial: a generator of transposed convolutions from a noise vector
of size ``nz`` to an ``nc`` x S x S image in [-1, 1] (Tanh), and a
discriminator of strided convolutions from such an image to one probability
(Sigmoid); BatchNorm everywhere except the generator's output and the
discriminator's input, ReLU in the generator, LeakyReLU(0.2) in the
discriminator, no biases (BatchNorm has its own).

The depth follows the image size S (32 or 64): the generator starts at 4 x 4
with ``ngf * S / 8`` channels and halves them at each doubling, so S = 64 is
exactly the tutorial's network and S = 32 drops its widest layer. The layers sit
in ``main`` (an ``nn.Sequential``) as in the seed, so the state_dict keys match.
"""

from __future__ import annotations

import torch
from torch import nn

IMAGE_SIZES = (32, 64)


def _multiplier(image_size: int) -> int:
    if image_size not in IMAGE_SIZES:
        raise ValueError(f"DCGAN image_size must be one of {IMAGE_SIZES}, got {image_size}")
    return image_size // 8  # channel multiplier of the 4 x 4 layer: 32 -> 4, 64 -> 8


class Generator(nn.Module):
    def __init__(self, nz: int = 100, ngf: int = 64, nc: int = 3, image_size: int = 64):
        super().__init__()
        self.nz, self.image_size = nz, image_size
        mult = _multiplier(image_size)
        # input is Z (nz x 1 x 1), going into a convolution: (ngf * mult) x 4 x 4
        layers: list[nn.Module] = [nn.ConvTranspose2d(nz, ngf * mult, 4, 1, 0, bias=False),
                                   nn.BatchNorm2d(ngf * mult), nn.ReLU(True)]
        while mult > 1:  # each block doubles the side and halves the channels
            layers += [nn.ConvTranspose2d(ngf * mult, ngf * mult // 2, 4, 2, 1, bias=False),
                       nn.BatchNorm2d(ngf * mult // 2), nn.ReLU(True)]
            mult //= 2
        layers += [nn.ConvTranspose2d(ngf, nc, 4, 2, 1, bias=False), nn.Tanh()]  # nc x S x S
        self.main = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.main(z)


class Discriminator(nn.Module):
    def __init__(self, ndf: int = 64, nc: int = 3, image_size: int = 64):
        super().__init__()
        top = _multiplier(image_size)
        # input is nc x S x S; no BatchNorm on the input layer (as in the tutorial)
        layers: list[nn.Module] = [nn.Conv2d(nc, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True)]
        mult = 1
        while mult < top:  # each block halves the side and doubles the channels
            layers += [nn.Conv2d(ndf * mult, ndf * mult * 2, 4, 2, 1, bias=False),
                       nn.BatchNorm2d(ndf * mult * 2), nn.LeakyReLU(0.2, inplace=True)]
            mult *= 2
        layers += [nn.Conv2d(ndf * top, 1, 4, 1, 0, bias=False), nn.Sigmoid()]  # (ndf * top) x 4 x 4 -> 1
        self.main = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x).view(-1)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The output before the final Sigmoid (the R1 penalty's gradient is taken of it)."""
        return self.main[:-1](x).view(-1)


def weights_init(module: nn.Module) -> None:
    """The tutorial's initialisation (Radford et al., 2016): every convolution's
    weights N(0, 0.02); BatchNorm weights N(1, 0.02) and biases 0."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def build(nz: int, ngf: int, ndf: int, nc: int, image_size: int) -> tuple[Generator, Discriminator]:
    """Both networks, initialised; call under a seeded RNG for repeatable weights."""
    generator, discriminator = Generator(nz, ngf, nc, image_size), Discriminator(ndf, nc, image_size)
    generator.apply(weights_init)
    discriminator.apply(weights_init)
    return generator, discriminator
