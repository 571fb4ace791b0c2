"""CPU (or CUDA) tuning options, measured on the pipeline's networks at the stages' batch sizes:
channels_last, bf16 autocast (fp16 on CUDA), ``torch.compile`` (its compile time counted),
and one thread against the stage's threads.

One training step per network (forward, loss, zero_grad, backward, step) on
synthetic batches of the stages' shapes: LeNet (batch 64, 3 x 32 x 32, SGD),
ResNet18 fine-tuning (batch 32, 3 x 64 x 64: the default image size, Adam),
the DCGAN (batch 16, 1 x 32 x 32, ngf = ndf = 32: the DCGAN tutorial's D step then G
step, two Adams). Every option is a side of one alternation against the
eager fp32 baseline; the figure is step-time ratio option / baseline (< 1:
faster). For ``compile`` the first call's extra time is the compile time,
and ``stage_ratio`` counts it over the number of steps the default training
stage runs (``STAGE_STEPS``): the decision rule "only where faster including
compile time". For autocast the relative change of the loss on the first step
(same weights, same batch) and after the same steps (the accuracy side of "as
accurate"; the batch is fixed, so the later losses are of a memorised batch).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from typing import Callable

import torch
import torch.nn.functional as F

from benchmarks.reference import torch_threads
from benchmarks.timing import alternate, medians, units_per_sample

# Training steps of the default stages on the embedded data (epochs x batches per epoch).
# ResNet18: both transfer stages, a count generous to compile (the head's frozen graph would compile anew).
STAGE_STEPS = {"lenet": 60 * 20, "resnet18": 15 * 5 + 15 * 5, "dcgan": 60 * 78}
OPTIONS = ("channels_last", "autocast", "compile", "threads_1")


def build(name: str, device: torch.device) -> dict:
    """Networks, optimizers, a fixed batch and a step function for one model."""
    torch.manual_seed(0)
    if name == "lenet":
        from dlpipe.models.lenet import LeNet

        nets = {"net": LeNet(10).to(device)}
        opts = [torch.optim.SGD(nets["net"].parameters(), lr=0.01, momentum=0.9)]
        batch = (torch.randn(64, 3, 32, 32, device=device), torch.randint(0, 10, (64,), device=device))
    elif name == "resnet18":
        from dlpipe.models.resnet import ResNet18

        nets = {"net": ResNet18(2).to(device)}
        opts = [torch.optim.Adam(nets["net"].parameters(), lr=1e-4)]
        batch = (torch.randn(32, 3, 64, 64, device=device), torch.randint(0, 2, (32,), device=device))
    elif name == "dcgan":
        from dlpipe.models.dcgan import build as build_dcgan

        generator, discriminator = build_dcgan(100, 32, 32, 1, 32)
        nets = {"generator": generator.to(device), "discriminator": discriminator.to(device)}
        opts = [torch.optim.Adam(net.parameters(), lr=2e-4, betas=(0.5, 0.999)) for net in nets.values()]
        batch = (torch.randn(16, 1, 32, 32, device=device).tanh(), torch.randn(16, 100, 1, 1, device=device))
    else:
        raise ValueError(f"unknown network {name!r}")
    return {"nets": nets, "opts": opts, "batch": batch}


def step_fn(name: str, nets: dict, opts: list, batch, autocast: Callable[[], contextlib.AbstractContextManager]):
    """One training step; returns the loss tensor (the generator's for the DCGAN)."""
    if name in ("lenet", "resnet18"):
        net, (opt,), (x, y) = nets["net"], opts, batch

        def step():
            with autocast():
                loss = F.cross_entropy(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return loss
        return step
    generator, discriminator = nets["generator"], nets["discriminator"]
    opt_g, opt_d = opts
    real, noise = batch
    ones, zeros = torch.ones(len(real), device=real.device), torch.zeros(len(real), device=real.device)

    def gan_step():
        # BCE outside autocast: CUDA's autocast refuses it (fp16 probabilities), so it runs in fp32.
        discriminator.zero_grad(set_to_none=True)
        with autocast():
            fake = generator(noise)
            out_real, out_fake = discriminator(real).view(-1), discriminator(fake.detach()).view(-1)
        loss_d = F.binary_cross_entropy(out_real.float(), ones) + F.binary_cross_entropy(out_fake.float(), zeros)
        loss_d.backward()
        opt_d.step()
        generator.zero_grad(set_to_none=True)
        with autocast():
            out = discriminator(fake).view(-1)
        loss_g = F.binary_cross_entropy(out.float(), ones)
        loss_g.backward()
        opt_g.step()
        return loss_g
    return gan_step


def variant(name: str, option: str, device: torch.device) -> dict:
    """The step of ``name`` with one option applied (``baseline``: none)."""
    parts = build(name, device)
    nets, batch = parts["nets"], parts["batch"]
    autocast = contextlib.nullcontext
    if option == "channels_last":
        nets = {key: net.to(memory_format=torch.channels_last) for key, net in nets.items()}
        batch = tuple(t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 and t.shape[-1] > 1 else t
                      for t in batch)
    elif option == "autocast":
        dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
        autocast = lambda: torch.autocast(device.type, dtype=dtype)  # noqa: E731
    elif option == "compile":
        nets = {key: torch.compile(net) for key, net in nets.items()}
    return {"step": step_fn(name, nets, parts["opts"], batch, autocast),
            "threads": 1 if option == "threads_1" else None}


def measure(name: str, device: torch.device, target_s: float, repeats: int, options: tuple[str, ...] = OPTIONS,
            log: Callable[[str], None] = print) -> dict:
    """Step times of ``name`` with each option against the baseline; a timed sample is as many
    steps as last about ``target_s`` at the baseline's speed (at most 50)."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ValueError(f"unknown tuning option(s) {unknown}; of {OPTIONS}")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    variants, first_call, losses, failed = {}, {}, {}, {}
    for option in ("baseline", *options):
        if option == "autocast" and device.type == "cpu" and not cpu_has_bf16():
            continue
        variants[option] = variant(name, option, device)
        start = time.perf_counter()
        try:
            with torch_threads(variants[option]["threads"]):
                loss = variants[option]["step"]()  # compile happens here
                sync()
        except Exception as exc:  # noqa: BLE001 (an option that fails here is recorded as failing)
            if option == "baseline":
                raise
            failed[option] = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
            del variants[option]
            log(f"  tuning {name} {option}: fails: {failed[option][:160]}")
            continue
        first_call[option] = time.perf_counter() - start
        losses[option] = [float(loss.detach())]  # the first step's loss: same weights, same batch

    start = time.perf_counter()
    variants["baseline"]["step"]()
    sync()
    steps = units_per_sample(time.perf_counter() - start, target_s, cap=50)

    def side(option: str):
        def run():
            with torch_threads(variants[option]["threads"]):
                for _ in range(steps):
                    loss = variants[option]["step"]()
                sync()
            losses.setdefault(option, []).append(float(loss.detach()))
        return run

    times = alternate({option: side(option) for option in variants}, repeats, warmup=1)
    per_step = {option: value / steps for option, value in medians(times).items()}
    base = per_step["baseline"]
    record = {"steps_per_sample": steps, "step_s": per_step, "first_call_s": first_call, "options": {},
              "failed": failed}
    for option in variants:
        if option == "baseline":
            continue
        entry = {"step_ratio": per_step[option] / base}
        if option == "compile":
            compile_s = max(0.0, first_call[option] - per_step[option])
            n = STAGE_STEPS[name]
            entry.update({"compile_s": compile_s, "stage_steps": n,
                          "stage_ratio": (compile_s + n * per_step[option]) / (n * base)})
        if option == "autocast":  # the first step's loss (same start) and the last one's
            entry["first_loss_rel_diff"], entry["last_loss_rel_diff"] = (
                abs(losses[option][i] - losses["baseline"][i]) / max(abs(losses["baseline"][i]), 1e-12)
                for i in (0, -1))
        record["options"][option] = entry
        log(f"  tuning {name} {option}: step x{entry['step_ratio']:.3f}"
            + (f", compile {entry['compile_s']:.1f} s, over the stage's {entry['stage_steps']} steps "
               f"x{entry['stage_ratio']:.3f}" if option == "compile" else "")
            + (f", loss rel. diff {entry['first_loss_rel_diff']:.1e} (first step), "
               f"{entry['last_loss_rel_diff']:.1e} (last)" if option == "autocast" else ""))
    return record


def cpu_has_bf16() -> bool:
    """Whether bf16 autocast can run on this CPU at all (oneDNN needs AVX-512 or AMX for it)."""
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return True
    return "avx512" in flags or "amx" in flags


def tuning(device: torch.device, target_s: float, repeats: int,
           networks: tuple[str, ...] = ("lenet", "resnet18", "dcgan"), options: tuple[str, ...] = OPTIONS,
           log: Callable[[str], None] = print) -> dict:
    """{network: measure(...)}. ``compile`` compiles into a fresh, empty inductor cache (removed
    afterwards): the compile time a stage pays on its first run (a warm cache pays less)."""
    results = {}
    with contextlib.ExitStack() as stack:
        if "compile" in options:
            cache = stack.enter_context(tempfile.TemporaryDirectory(prefix="dlpipe-bench-inductor-"))
            before = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
            stack.callback(lambda: os.environ.pop("TORCHINDUCTOR_CACHE_DIR") if before is None
                           else os.environ.__setitem__("TORCHINDUCTOR_CACHE_DIR", before))
        for name in networks:
            torch._dynamo.reset()
            results[name] = measure(name, device, target_s, repeats, options, log)
    return results
