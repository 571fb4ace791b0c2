"""DCGAN: the tutorial's networks and initialisation, the D and G steps (detach, one
optimizer each), trouble reporting, and the Fréchet distance against a scipy
reference. The data slot and the stages: tests/test_dcgan_stages.py."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from dlpipe.errors import PipelineError
from dlpipe.models.dcgan import Discriminator, Generator, build
from dlpipe.models.lenet import LeNet
from dlpipe.metrics import fid as fid_module
from dlpipe.metrics.fid import LeNetFeatures, frechet_distance, frechet_distance_numpy
from dlpipe.training.gan import Watch, discriminator_step, ema_of, generator_step, r1_penalty
from dlpipe.training.gan_augment import DiffAugment

NZ = 16


def params_of(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in module.named_parameters()}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------- networks


def test_image_size_64_is_the_seeds_network():
    g, d = Generator(nz=100, ngf=64, nc=3, image_size=64), Discriminator(ndf=64, nc=3, image_size=64)
    convs = [(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.bias is None)
             for m in g.main if isinstance(m, nn.ConvTranspose2d)]
    assert convs == [(100, 512, (4, 4), (1, 1), (0, 0), True), (512, 256, (4, 4), (2, 2), (1, 1), True),
                     (256, 128, (4, 4), (2, 2), (1, 1), True), (128, 64, (4, 4), (2, 2), (1, 1), True),
                     (64, 3, (4, 4), (2, 2), (1, 1), True)]
    assert [type(m).__name__ for m in g.main][-2:] == ["ConvTranspose2d", "Tanh"]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in g.main) == 4
    assert sum(isinstance(m, nn.ReLU) for m in g.main) == 4
    convs = [(m.in_channels, m.out_channels, m.stride) for m in d.main if isinstance(m, nn.Conv2d)]
    assert convs == [(3, 64, (2, 2)), (64, 128, (2, 2)), (128, 256, (2, 2)), (256, 512, (2, 2)), (512, 1, (1, 1))]
    assert isinstance(d.main[1], nn.LeakyReLU) and d.main[1].negative_slope == 0.2  # no BatchNorm on the input
    assert sum(isinstance(m, nn.BatchNorm2d) for m in d.main) == 3
    assert isinstance(d.main[-1], nn.Sigmoid)
    x = g(torch.randn(2, 100, 1, 1))
    assert x.shape == (2, 3, 64, 64) and x.abs().max() <= 1
    out = d(x)
    assert out.shape == (2,) and torch.all((out > 0) & (out < 1))


def test_image_size_32_drops_the_widest_layer():
    g, d = build(NZ, 8, 8, 1, 32)
    assert g(torch.randn(3, NZ, 1, 1)).shape == (3, 1, 32, 32)
    assert d(torch.zeros(3, 1, 32, 32)).shape == (3,)
    assert sum(isinstance(m, nn.ConvTranspose2d) for m in g.main) == 4
    assert g.main[0].out_channels == 8 * 4 and d.main[-2].in_channels == 8 * 4
    with pytest.raises(ValueError, match="32, 64"):
        Generator(image_size=48)


def test_weights_init_statistics():
    torch.manual_seed(0)
    g, d = build(100, 64, 64, 3, 64)
    for net in (g, d):
        convs = torch.cat([m.weight.flatten() for m in net.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))])
        assert abs(convs.mean().item()) < 1e-3
        assert convs.std().item() == pytest.approx(0.02, rel=0.02)
        norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
        weights = torch.cat([m.weight for m in norms]).detach()
        assert weights.mean().item() == pytest.approx(1.0, abs=0.005)
        assert weights.std().item() == pytest.approx(0.02, rel=0.15)
        assert all(torch.count_nonzero(m.bias) == 0 for m in norms)
        assert all(m.bias is None for m in net.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)))


# --------------------------------------------------------------------------- the two steps


@pytest.fixture
def nets():
    torch.manual_seed(1)
    g, d = build(NZ, 8, 8, 1, 32)
    opt_g = torch.optim.Adam(g.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), lr=2e-4, betas=(0.5, 0.999))
    real = torch.rand(8, 1, 32, 32) * 2 - 1
    return g, d, opt_g, opt_d, real, torch.randn(8, NZ, 1, 1)


def augmentations():
    """No augmentation, and DiffAugment's shifts and cutout (what D sees changes, the rules do not)."""
    return [lambda x: x, DiffAugment(0.125, 0.5, torch.Generator().manual_seed(3))]


@pytest.mark.parametrize("r1_gamma", [0.0, 1.0], ids=["bce", "r1"])
@pytest.mark.parametrize("augment", augmentations(), ids=["plain", "diffaugment"])
def test_discriminator_step_leaves_the_generator_alone(nets, augment, r1_gamma):
    g, d, opt_g, opt_d, real, z = nets
    g_before, d_before = params_of(g), params_of(d)
    out = discriminator_step(g, d, opt_d, real, z, nn.BCELoss(), augment, r1_gamma)
    assert same(params_of(g), g_before)
    assert all(p.grad is None for p in g.parameters())  # detach: no gradient reached G at all
    assert not same(params_of(d), d_before)
    assert out["finite"] and 0 < out["d_x"] < 1 and 0 < out["d_g_z1"] < 1


@pytest.mark.parametrize("augment", augmentations(), ids=["plain", "diffaugment"])
def test_generator_step_leaves_the_discriminator_alone(nets, augment):
    g, d, opt_g, opt_d, real, z = nets
    fake = discriminator_step(g, d, opt_d, real, z, nn.BCELoss(), augment)["fake"]
    g_before, d_before = params_of(g), params_of(d)
    out = generator_step(d, opt_g, fake, nn.BCELoss(), augment)
    assert same(params_of(d), d_before)
    assert any(p.grad is not None for p in d.parameters())  # G's loss reached D's grads, not its weights
    assert not same(params_of(g), g_before)
    assert out["finite"] and 0 < out["d_g_z2"] < 1


def test_steps_are_the_seeds_update(nets):
    """The DCGAN tutorial's loop body, verbatim in substance, on copies: the same weights after one step."""
    g, d, opt_g, opt_d, real, z = nets
    g2, d2 = copy.deepcopy(g), copy.deepcopy(d)
    opt_g2 = torch.optim.Adam(g2.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d2 = torch.optim.Adam(d2.parameters(), lr=2e-4, betas=(0.5, 0.999))
    criterion = nn.BCELoss()
    d2.zero_grad()
    label = torch.full((real.size(0),), 1.0)
    err_real = criterion(d2(real).view(-1), label)
    err_real.backward()
    fake = g2(z)
    label.fill_(0.0)
    err_fake = criterion(d2(fake.detach()).view(-1), label)
    err_fake.backward()
    opt_d2.step()
    g2.zero_grad()
    label.fill_(1.0)
    err_g = criterion(d2(fake).view(-1), label)
    err_g.backward()
    opt_g2.step()

    step_d = discriminator_step(g, d, opt_d, real, z, criterion)
    step_g = generator_step(d, opt_g, step_d["fake"], criterion)
    assert same(params_of(g), params_of(g2)) and same(params_of(d), params_of(d2))
    assert step_d["loss_d"] == pytest.approx((err_real + err_fake).item())
    assert step_g["loss_g"] == pytest.approx(err_g.item())


def test_r1_penalty_of_a_linear_critic_is_its_squared_weight_norm():
    """logit = <w, x>: its gradient at every input is w, so the penalty is ||w||^2."""
    w = torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(5)).requires_grad_()
    x = torch.randn(6, 3, 4, 4).requires_grad_()
    penalty = r1_penalty((x * w).sum(dim=(1, 2, 3)), x)
    assert penalty.item() == pytest.approx(w.pow(2).sum().item(), rel=1e-6)
    penalty.backward()  # create_graph: the penalty reaches the critic's weights (d||w||^2/dw = 2w)
    assert torch.allclose(w.grad, 2 * w.detach())


def test_discriminator_logits_are_its_output_before_the_sigmoid():
    torch.manual_seed(0)
    d = Discriminator(8, 1, 32)
    x = torch.randn(4, 1, 32, 32)
    assert torch.equal(torch.sigmoid(d.logits(x)), d(x))


def test_r1_step_is_bce_plus_half_gamma_times_the_penalty(nets):
    """The D step with R1, against the loss written out by hand on copies: same weights after one step."""
    g, d, opt_g, opt_d, real, z = nets
    gamma = 2.5
    d2 = copy.deepcopy(d)
    opt_d2 = torch.optim.Adam(d2.parameters(), lr=2e-4, betas=(0.5, 0.999))
    x = real.clone().requires_grad_()
    logits = d2.main[:-1](x).view(-1)
    (grad,) = torch.autograd.grad(logits.sum(), x, create_graph=True)
    penalty = (grad ** 2).sum(dim=(1, 2, 3)).mean()
    with torch.no_grad():
        fake = g(z)
    bce = nn.functional.binary_cross_entropy
    loss = (bce(torch.sigmoid(logits), torch.ones(8)) + gamma / 2 * penalty
            + bce(d2(fake).view(-1), torch.zeros(8)))
    d2.zero_grad()
    loss.backward()
    opt_d2.step()

    out = discriminator_step(g, d, opt_d, real, z, nn.BCELoss(), r1_gamma=gamma)
    assert all(torch.allclose(a, b, atol=1e-7) for a, b in zip(d.parameters(), d2.parameters()))
    assert out["r1"] == pytest.approx(gamma / 2 * penalty.item(), rel=1e-5)
    assert out["loss_d"] == pytest.approx((loss - gamma / 2 * penalty).item(), rel=1e-5)  # the BCE alone


def test_a_nan_loss_skips_the_update_and_is_counted(nets, caplog):
    g, d, opt_g, opt_d, real, z = nets
    real[0, 0, 0, 0] = float("nan")
    d_before = params_of(d)
    out = discriminator_step(g, d, opt_d, real, z, nn.BCELoss())
    assert not out["finite"] and math.isnan(out["loss_d"])
    assert same(params_of(d), d_before)
    watch = Watch(threshold=0.01, patience=3)
    with caplog.at_level("WARNING"):
        watch.update({"step": 7, "epoch": 1, "loss_d": out["loss_d"], "loss_g": 1.0, "d_g_z2": 0.5})
    assert watch.nan_steps == 1 and "step 7" in caplog.text


def test_a_discriminator_that_wins_for_long_is_reported(caplog):
    watch = Watch(threshold=0.01, patience=3)
    values = [0.5, 0.005, 0.001, 0.002, 0.003, 0.4, 0.001, 0.002, 0.5]
    with caplog.at_level("WARNING"):
        for step, value in enumerate(values, 1):
            watch.update({"step": step, "epoch": 1, "loss_d": 0.1, "loss_g": 5.0, "d_g_z2": value})
    assert (watch.collapse_steps, watch.longest, watch.alerts, watch.nan_steps) == (6, 4, 1, 0)
    assert caplog.text.count("won completely for 3 steps") == 1 and "since step 2" in caplog.text


# --------------------------------------------------------------------------- Fréchet distance


class Flat(nn.Module):
    num_features = 4  # torchmetrics would otherwise probe with a 3 x 299 x 299 image

    def forward(self, x):
        return x.flatten(1).double()


def test_frechet_distance_of_gaussians_matches_the_closed_form():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(20000, 4, 1, 1, generator=gen)
    b = torch.randn(20000, 4, 1, 1, generator=gen) * 2 + torch.tensor([1.0, 0, 0, 0]).view(1, 4, 1, 1)
    # ||mu||^2 + tr(I + 4I - 2 * 2I) = 1 + 4 * (1 + 4 - 4)
    assert frechet_distance(Flat(), a, b) == pytest.approx(5.0, rel=0.03)
    assert frechet_distance(Flat(), a, a) == pytest.approx(0.0, abs=1e-6)


@pytest.fixture(scope="module")
def random_lenet_features():
    torch.manual_seed(3)
    return LeNetFeatures(LeNet(10), [0.3] * 3, [0.3] * 3)


class Projection(nn.Module):
    """A fixed linear map of the pixels: full-rank covariances, unlike ReLU features."""

    num_features = 16

    def __init__(self):
        super().__init__()
        self.weight = torch.randn(32 * 32, 16, generator=torch.Generator().manual_seed(4)) / 32

    def forward(self, x):
        return x.float().flatten(1) @ self.weight


# A random LeNet has dead ReLU features (zero variance): scipy's sqrtm warns that the
# covariance product is singular, and the two implementations must still agree.
@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")
@pytest.mark.parametrize("network", ["lenet", "projection"])
def test_frechet_distance_agrees_with_the_scipy_reference(random_lenet_features, network):
    gen = torch.Generator().manual_seed(1)
    real = torch.randint(0, 256, (300, 1, 32, 32), dtype=torch.uint8, generator=gen)
    shifted = (real.int() // 2 + 60).to(torch.uint8)
    features = random_lenet_features if network == "lenet" else Projection()
    assert frechet_distance(features, real, real) == pytest.approx(0.0, abs=1e-3)
    ours = frechet_distance(features, real, shifted)
    assert ours > 0.01
    with torch.no_grad():
        reference = frechet_distance_numpy(features(real).numpy(), features(shifted).numpy())
    assert ours == pytest.approx(reference, rel=1e-4)
    other = torch.randint(0, 256, (300, 1, 32, 32), dtype=torch.uint8, generator=gen)
    assert 0 < frechet_distance(features, real, other) < ours  # two draws of one distribution: near, not 0


def test_lenet_features_take_grey_and_64_px_images(random_lenet_features):
    grey = torch.randint(0, 256, (4, 1, 32, 32), dtype=torch.uint8)
    assert torch.equal(random_lenet_features(grey), random_lenet_features(grey.expand(-1, 3, -1, -1)))
    assert random_lenet_features(torch.zeros(2, 3, 64, 64, dtype=torch.uint8)).shape == (2, 84)
    with pytest.raises(ValueError, match="uint8"):
        random_lenet_features(torch.zeros(2, 3, 32, 32))


def test_inception_fid_never_downloads(monkeypatch, tmp_path):
    images = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)
    monkeypatch.setattr(fid_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(PipelineError, match="torch-fidelity is not installed"):
        fid_module.inception_distance(images, images)
    monkeypatch.setattr(fid_module.importlib.util, "find_spec", lambda name: object())
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(PipelineError, match=r"weights-inception-2015-12-05-6726825d\.pth does not exist"):
        fid_module.inception_distance(images, images)


def test_generator_ema_starts_as_a_copy_then_moves_by_one_minus_decay():
    generator = Generator(nz=NZ, ngf=8, nc=1, image_size=32)
    assert ema_of(generator, 0.0) is None
    ema = ema_of(generator, 0.9)
    first = params_of(generator)
    ema.update_parameters(generator)  # the first update copies the weights
    assert same(params_of(ema.module), first)
    with torch.no_grad():
        for p in generator.parameters():
            p.add_(1.0)
    ema.update_parameters(generator)
    for name, value in params_of(ema.module).items():
        torch.testing.assert_close(value, first[name] + 0.1)  # 0.9 * old + 0.1 * (old + 1)
    generator(torch.randn(4, NZ, 1, 1))  # a training forward moves BatchNorm's running statistics
    ema.update_parameters(generator)
    bn = next(m for m in generator.modules() if isinstance(m, nn.BatchNorm2d))
    ema_bn = next(m for m in ema.module.modules() if isinstance(m, nn.BatchNorm2d))
    assert not torch.equal(ema_bn.running_mean, torch.zeros_like(ema_bn.running_mean))  # buffers are averaged too
    assert not torch.equal(ema_bn.running_mean, bn.running_mean)


def test_warming_ema_decays_by_min_of_decay_and_its_update_count():
    """Weights that rise by 1 a step: the average follows the recursion with
    min(0.9, (1 + n) / (10 + n)) at the n-th averaging update, 0.9 from n = 80 on."""
    generator = Generator(nz=NZ, ngf=8, nc=1, image_size=32)
    ema = ema_of(generator, 0.9, warmup=True)
    start = params_of(generator)
    expected = fixed = 0.0  # offsets of the average from the starting weights: warming, fixed 0.9
    ema.update_parameters(generator)  # the first update copies the weights
    for n in range(1, 101):
        with torch.no_grad():
            for p in generator.parameters():
                p.add_(1.0)
        generator(torch.randn(2, NZ, 1, 1))  # the integer num_batches_tracked is averaged too
        ema.update_parameters(generator)
        decay = min(0.9, (1 + n) / (10 + n))
        expected = decay * expected + (1 - decay) * n
        fixed = 0.9 * fixed + 0.1 * n
        if n in (12, 100):
            for name, value in params_of(ema.module).items():
                torch.testing.assert_close(value, start[name] + expected)
        if n == 12:
            assert expected - fixed > 2  # the early weights weigh less: nearer the last weights than a fixed 0.9


def test_lazy_r1_penalises_every_nth_step_scaled_by_n(nets, monkeypatch):
    """r1_interval 3: the D steps 0, 3, 6 carry gamma x 3, the others none (Karras et al. 2020)."""
    from dlpipe.data.loaders import TensorLoader
    from dlpipe.training import gan

    g, d, opt_g, opt_d, real, _ = nets
    seen = []
    step = gan.discriminator_step

    def recording(*args, **options):
        seen.append(args[-1])  # r1_gamma, the last positional argument
        return step(*args, **options)

    monkeypatch.setattr(gan, "discriminator_step", recording)
    loader = TensorLoader(real.repeat(2, 1, 1, 1), torch.zeros(16), batch_size=4, shuffle=True, seed=0)
    gan.fit_gan(g, d, opt_g, opt_d, loader, torch.Generator().manual_seed(0), nz=NZ, epochs=2,
                collapse_threshold=0.01, collapse_patience=100, r1_gamma=0.5, r1_interval=3)
    assert seen == [1.5, 0.0, 0.0, 1.5, 0.0, 0.0, 1.5, 0.0]  # 2 epochs x 4 batches, counted across epochs


def tiny_fit_gan(**options):
    """fit_gan over 40 tiny images (5 batches, 3 epochs) from fixed seeds; every image index
    in ``nan_images`` gets a NaN pixel. Returns the result and everything it trained."""
    from dlpipe.data.loaders import TensorLoader
    from dlpipe.training import gan

    nan_images = options.pop("nan_images", ())
    torch.manual_seed(0)
    g, d = build(NZ, 8, 8, 1, 32)
    images = torch.rand(40, 1, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    for index in nan_images:
        images[index, 0, 3, 3] = float("nan")
    loader = TensorLoader(images, torch.zeros(40), batch_size=8, shuffle=True, seed=0, drop_last=True)
    opt_g, opt_d = (torch.optim.Adam(net.parameters(), lr=2e-4, betas=(0.5, 0.999)) for net in (g, d))
    noise = torch.Generator().manual_seed(2)
    result = gan.fit_gan(g, d, opt_g, opt_d, loader, noise, nz=NZ, epochs=3, collapse_threshold=0.45,
                         collapse_patience=2, **options)
    return result, {"g": g.state_dict(), "d": d.state_dict(), "opt_g": opt_g.state_dict(),
                    "opt_d": opt_d.state_dict(), "sampler": result.sampler.state_dict(), "noise": noise.get_state()}


def same_bits(a, b) -> bool:
    """Equal, NaN included (a NaN input leaves NaN in BatchNorm's running statistics)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and a.dtype == b.dtype and bool(
            torch.equal(a.nan_to_num(12345.0), b.nan_to_num(12345.0)) and torch.equal(a.isnan(), b.isnan()))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same_bits(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same_bits(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return a == b


@pytest.mark.parametrize("nan_images", [(5,), (3, 11, 17, 25, 33)], ids=["one", "several"])
def test_a_non_finite_step_gives_what_a_check_after_every_step_gives(monkeypatch, nan_images, caplog):
    """fit_gan takes every update and checks an epoch's steps at its end; an epoch with a
    non-finite step is rerun from its start with the check after every step. The result is
    that of checking every step from the start (same rows, counts, weights, Adam states)."""
    from dlpipe.training import gan

    with caplog.at_level("WARNING"):
        result, trained = tiny_fit_gan(nan_images=nan_images, ema_decay=0.9, r1_gamma=1.0, r1_interval=2)
    assert "rerunning it from its start" in caplog.text
    assert result.watch["nan_steps"] > 0
    assert any(math.isnan(row["loss_d"]) for row in result.history)
    assert len(result.history) == 15 and [row["step"] for row in result.history] == list(range(1, 16))

    for name in ("discriminator_step", "generator_step"):
        step = getattr(gan, name)
        monkeypatch.setattr(gan, name, lambda *args, _step=step, **options: _step(*args, **{**options, "check": True}))
    checked, checked_trained = tiny_fit_gan(nan_images=nan_images, ema_decay=0.9, r1_gamma=1.0, r1_interval=2)
    assert same_bits(result.history, checked.history) and result.watch == checked.watch
    assert same_bits(trained, checked_trained)


def test_the_gan_loop_reads_the_device_once_per_epoch(monkeypatch):
    """No .item(), bool() or float() on a tensor while training (each would wait for the GPU):
    one .tolist() of the epoch's stacked numbers. SGD: Adam reads its step count on the CPU."""
    from dlpipe.data.loaders import TensorLoader
    from dlpipe.training import gan

    torch.manual_seed(0)
    g, d = build(NZ, 8, 8, 1, 32)
    loader = TensorLoader(torch.rand(32, 1, 32, 32) * 2 - 1, torch.zeros(32), batch_size=8, shuffle=True, seed=0)
    opt_g, opt_d = (torch.optim.SGD(net.parameters(), lr=1e-3) for net in (g, d))
    reads = {}
    for method in ("item", "tolist", "__bool__", "__float__", "__int__"):
        original = getattr(torch.Tensor, method)

        def counting(self, *args, _name=method, _original=original):
            reads[_name] = reads.get(_name, 0) + 1
            return _original(self, *args)

        monkeypatch.setattr(torch.Tensor, method, counting)
    result = gan.fit_gan(g, d, opt_g, opt_d, loader, torch.Generator().manual_seed(0), nz=NZ, epochs=2,
                         collapse_threshold=0.01, collapse_patience=100, r1_gamma=1.0)
    monkeypatch.undo()
    assert len(result.history) == 8 and reads == {"tolist": 2}


# --------------------------------------------------------------------------- sample grids


@pytest.mark.parametrize("count,nrow", [(1, 1), (2, 8), (5, 2), (16, 4), (64, 8), (10, 3)])
@pytest.mark.parametrize("channels", [1, 3])
def test_sample_grid_lays_images_out_as_torchvisions_make_grid(count, nrow, channels, tmp_path):
    """The grid PNGs' bytes (and their DVC hashes) stay those torchvision's layout gave."""
    import numpy as np
    from PIL import Image
    from torchvision.utils import make_grid

    from dlpipe.pictures.sample_grid import save_grid, tile

    images = torch.randint(0, 256, (count, channels, 8, 6), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(count))
    expected = make_grid(images, nrow=nrow, padding=2, pad_value=0)
    expected = expected[:1] if channels == 1 else expected  # make_grid repeats grey to 3 channels
    assert torch.equal(tile(images, nrow), expected)
    save_grid(images, tmp_path / "grid.png", nrow=nrow)
    saved = np.asarray(Image.open(tmp_path / "grid.png"))
    assert np.array_equal(saved, expected.permute(1, 2, 0).squeeze(-1).numpy())
