"""The houses MLP's linear skip path."""

from __future__ import annotations

import torch

from dlpipe.models.mlp import HouseMLP


def test_the_skip_path_starts_at_zero_and_learns_the_linear_part():
    torch.manual_seed(3)
    plain = HouseMLP(6, (8, 4), output_bias=12.0)
    torch.manual_seed(3)
    skip = HouseMLP(6, (8, 4), output_bias=12.0, skip=True)
    assert set(skip.state_dict()) - set(plain.state_dict()) == {"skip.weight"}
    assert skip.skip.weight.shape == (1, 6) and not skip.skip.weight.any()
    x = torch.randn(10, 6)
    assert torch.equal(skip(x), plain(x))  # the same net, the skip path at zero
    # A linear target: one Adam step moves the skip weights, and with them the output.
    y = 12.0 + x @ torch.arange(6.0)
    optimizer = torch.optim.Adam(skip.parameters(), lr=0.01)
    torch.sqrt(torch.mean((skip(x) - y) ** 2)).backward()
    optimizer.step()
    assert skip.skip.weight.abs().min() > 0
    assert not torch.equal(skip(x), plain(x))
