"""The original house-price recipe's FirstNeuralNet: a fully connected regressor with Xavier init.

Widths are configurable (the recipe has 10 and 5). The network predicts
log1p(price), not the price: the recipe's loss takes log1p of the raw output and
is NaN as soon as an output falls below -1; in log space it never is.

``skip``: a linear path from the inputs straight to the output, added to the
hidden layers' output (a ridge regression beside the net, decayed by the same
weight decay): on these features most of the log-price is linear, and the
hidden layers are left the rest to learn. It starts at zero, so the initial net
is the one without it.
"""

from __future__ import annotations

import torch
from torch import nn


class HouseMLP(nn.Module):
    def __init__(self, n_input: int, hidden: tuple[int, ...] = (10, 5), output_bias: float = 0.0,
                 skip: bool = False):
        super().__init__()
        widths = [n_input, *hidden]
        layers: list[nn.Module] = []
        for fan_in, fan_out in zip(widths, widths[1:]):
            layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
        layers.append(nn.Linear(widths[-1], 1))
        self.net = nn.Sequential(*layers)
        for layer in self.net:
            if isinstance(layer, nn.Linear):
                nn.init.xavier_uniform_(layer.weight)
                nn.init.zeros_(layer.bias)
        # Start at the mean training log-price so early steps fit shape, not offset.
        nn.init.constant_(self.net[-1].bias, output_bias)
        self.skip = nn.Linear(n_input, 1, bias=False) if skip else None
        if self.skip is not None:
            nn.init.zeros_(self.skip.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        if self.skip is not None:
            out = out + self.skip(x)
        return out.squeeze(-1)
