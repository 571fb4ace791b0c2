"""params.accel: autocast, channels_last and torch.compile in the shared loop.

Each option is checked against the plain float32 loop on the same batches:
the option is really in effect (dtype, memory format, compiled forward), and
the training result stays close to the plain one.
"""

from __future__ import annotations

import copy

import pytest
import torch

from dlpipe.data.loaders import TensorLoader
from dlpipe.models.lenet import LeNet
from dlpipe.training import loop
from dlpipe.training.accel import OFF, Accel
from dlpipe.training.tasks import classification


@pytest.fixture
def batches():
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(64, 3, 32, 32, generator=generator)
    labels = torch.randint(0, 10, (64,), generator=generator)
    return TensorLoader(images, labels, 16, shuffle=True, seed=0)


def train(accel: Accel, loader) -> tuple[torch.nn.Module, float]:
    torch.manual_seed(0)
    model = accel.prepare(LeNet(10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loss = loop.train_one_epoch(model, loader, classification().loss_fn, optimizer, accel=accel)
    return model, loss


def conv_output_dtypes(model, loader, accel) -> set[torch.dtype]:
    seen = set()
    handle = model.conv1.register_forward_hook(lambda module, args, out: seen.add(out.dtype))
    loop.predict(model, loader, accel)
    handle.remove()
    return seen


def test_all_off_is_the_plain_float32_loop(batches):
    model, _ = train(OFF, batches)
    assert conv_output_dtypes(model, batches, OFF) == {torch.float32}
    assert not OFF.grad_scaler().is_enabled()


def test_amp_on_the_cpu_autocasts_to_bfloat16_and_stays_close(batches):
    amp = Accel("cpu", amp=True)
    plain, plain_loss = train(OFF, batches)
    mixed, mixed_loss = train(amp, batches)
    assert conv_output_dtypes(mixed, batches, amp) == {torch.bfloat16}
    assert not amp.grad_scaler().is_enabled()  # bfloat16 has float32's range: no loss scaling
    outputs, _ = loop.predict(mixed, batches, amp)
    assert outputs.dtype == torch.float32  # metrics are computed in float32
    assert mixed_loss == pytest.approx(plain_loss, rel=0.02)
    for name, value in plain.state_dict().items():
        assert value.dtype == mixed.state_dict()[name].dtype == torch.float32  # master weights stay float32
        torch.testing.assert_close(mixed.state_dict()[name], value, atol=2e-2, rtol=0)


def test_channels_last_changes_the_layout_not_the_result(batches):
    nhwc = Accel("cpu", channels_last=True)
    plain, plain_loss = train(OFF, batches)
    model, loss = train(nhwc, batches)
    assert model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert nhwc.batch(torch.zeros(2, 3, 8, 8)).is_contiguous(memory_format=torch.channels_last)
    assert loss == pytest.approx(plain_loss, rel=1e-4)
    for name, value in plain.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], value, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_compile_keeps_the_state_dict_keys_and_the_result(batches):
    compiled = Accel("cpu", compile=True)
    plain, plain_loss = train(OFF, batches)
    model, loss = train(compiled, batches)
    assert model._compiled_call_impl is not None  # the forward that ran was the compiled one
    assert list(model.state_dict()) == list(plain.state_dict())  # checkpoints and weights files keep their keys
    assert loss == pytest.approx(plain_loss, rel=1e-4)
    fresh = LeNet(10)
    fresh.load_state_dict(copy.deepcopy(model.state_dict()))  # loads into an uncompiled model


@pytest.mark.parametrize("deterministic", [True, False])
def test_compile_carries_the_deterministic_mode_to_inductor(deterministic):
    """A compiling stage hands deterministic mode on to Inductor's own flag (the compiling
    itself waits for the model's first call)."""
    from torch._inductor import config as inductor_config

    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              inductor_config.deterministic)
    try:
        torch.use_deterministic_algorithms(deterministic, warn_only=True)
        inductor_config.deterministic = not deterministic
        Accel(compile=True).prepare(LeNet(10))
        assert inductor_config.deterministic is deterministic
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        inductor_config.deterministic = before[2]


def test_runtime_setup_is_deterministic_without_loading_inductor():
    import subprocess
    import sys

    code = ("import sys, torch; from dlpipe import runtime; runtime.setup(0, 'cpu'); "
            "print(torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(), "
            "'torch._inductor' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "True", "False"]
