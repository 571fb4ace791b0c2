"""Figure 8, how close to the limit: per model, the training step's achieved
GFLOP/s against the machine's dense float32 matmul peak at the stage's thread
count, and the share of the step spent outside compute.

The step is the pipeline's, on the stage's own loader (``overhead.stage_workload``):
``loop.train_one_epoch`` for houses, LeNet and both transfer stages, and
``gan.fit_gan`` as train_dcgan runs it by default for the DCGAN (each step a D
step with the R1 penalty, a double backward, then a G step and the generator's
EMA). Torch runs on ``threads.train_<model>`` of params.yaml, as the stage does.

- FLOPs a step: ``torch.utils.flop_counter.FlopCounterMode`` around one epoch,
  divided by its steps. It counts matmuls and convolutions (forward, backward,
  R1's double backward); elementwise ops, BatchNorm, pooling, the loss and the
  optimizer's update count 0 (few FLOPs, bound by memory, not arithmetic).
- Step time (s): median over ``repeats`` rounds of a few epochs' wall time /
  their steps, neither counted nor profiled; the loader's indexing and batched
  augmentation are inside it, the stage's per-epoch validation and checkpoint
  are not.
- Peak: ``torch.mm`` of square float32 matrices, n x n by n x n (2 n^3 FLOPs),
  median seconds per n, at each thread count the models use; the best n is the
  peak. GFLOP/s / peak is the fraction of peak.
- Outside compute: one epoch a round under ``torch.profiler``, alternating with
  the plain rounds. Compute is the time inside ATen: the self times of every
  ``aten::`` op summed (CPU: self CPU time, the caller's wait for its intra-op
  threads included; CUDA: self device time, the GPU's kernels).
  ``outside_compute_share`` = 1 - compute / wall time of the same profiled
  epoch (median over the rounds; a ratio within one epoch, so that load from
  other jobs inflates both alike): Python, the autograd engine's and the
  optimizer's bookkeeping, the loader's Python and, on CUDA, the GPU's idle
  time. ATen's own dispatch and, on the CPU, the start and join of its
  intra-op threads (microseconds an op) count as compute. The profiler adds
  about a microsecond an op, mostly outside the ops: ``profiler_slowdown``
  (profiled / plain step time) says how much, and the share is a little high
  for the models of many tiny ops. ``matmul_conv_share``: the part of the
  profiled step inside the FLOP-counted ops (the outermost ``aten::mm``,
  ``addmm``, ``convolution``, ``convolution_backward``, ...; their own rate is
  ``matmul_conv_gflop_s``); the
  rest of compute is the memory-bound ops (elementwise, BatchNorm, pooling,
  optimizer, indexing).

Read together: a large outside share, and Python bounds the step; much of ATen's
time outside matmul and convolution, memory-bound ops; matmul and convolution
filling the step at a rate far below the peak, operands too small for the cores
(per-op dispatch and thread start, short loops). Derived figures (GFLOP/s,
fractions) are summary.py's, from the medians recorded here.
"""

from __future__ import annotations

import itertools
import statistics
import time
from typing import Callable

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode, flop_registry

from benchmarks.overhead import MODELS, Workload, stage_workload
from benchmarks.reference import torch_threads
from benchmarks.timing import alternate, units_per_sample

SIZES = (512, 768, 1024, 1536, 2048)  # sides n of the peak sweep's matrices
CUDA_SIZES = SIZES + (4096, 8192)  # a GPU needs larger matrices to fill
QUICK_SIZES = (256, 512)
FLOP_OPS = frozenset(str(op).replace(".", "::", 1) for op in flop_registry)  # "aten::mm": the profiler's names


class _TotalOnly:
    """FlopCounterMode's module tracker, minus the tracking: its hooks make ``torch.autograd.grad``
    of a leaf input fail ("A leaf node was passed to _will_engine_execute_node", pytorch/pytorch#131753),
    which is what R1 computes. Only the total is read here."""

    parents = {"Global"}

    def __enter__(self):
        return self

    def __exit__(self, *args) -> None:
        return None


def counted_flops(fn: Callable[[], object]) -> int:
    """FLOPs of the matmuls and convolutions ``fn`` runs, as FlopCounterMode counts them."""
    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _TotalOnly()
    with counter:
        fn()
    return counter.get_total_flops()


def _outermost(event) -> bool:
    """No op above ``event`` is FLOP-counted (a convolution's time is counted once, not again in its kernel's op)."""
    parent = event.cpu_parent
    while parent is not None:
        if parent.name in FLOP_OPS:
            return False
        parent = parent.cpu_parent
    return True


def profiled_seconds(fn: Callable[[], object], device: torch.device) -> dict[str, float]:
    """Seconds of ``fn`` under the profiler: its wall time, the time inside ATen ops (self times
    of every ``aten::`` op summed) and inside the FLOP-counted ones (total times of the outermost);
    CPU time, or on CUDA the device's (the kernels')."""
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        fn()
        wall = time.perf_counter() - start
    events = [e for e in prof.events() if e.name.startswith("aten::")]
    own, whole = ("self_device_time_total", "device_time_total") if cuda else ("self_cpu_time_total",
                                                                              "cpu_time_total")
    aten = sum(getattr(e, own) for e in events)
    counted = sum(getattr(e, whole) for e in events if e.name in FLOP_OPS and _outermost(e))
    return {"wall_s": wall, "aten_s": aten / 1e6, "matmul_conv_s": counted / 1e6}  # us -> s


def matmul_seconds(n: int, device: torch.device, repeats: int, target_s: float) -> float:
    """Median seconds of one float32 n x n @ n x n ``torch.mm`` (into a preallocated output)."""
    generator = torch.Generator(device=device).manual_seed(0)
    a, b = (torch.randn(n, n, device=device, generator=generator) for _ in range(2))
    out = torch.empty(n, n, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def calls(count: int) -> Callable[[], None]:
        def run() -> None:
            for _ in range(count):
                torch.mm(a, b, out=out)
            sync()
        return run

    calls(1)()  # warm-up
    start = time.perf_counter()
    calls(1)()
    count = units_per_sample(time.perf_counter() - start, target_s)
    return statistics.median(alternate({"mm": calls(count)}, repeats=repeats, warmup=0)["mm"]) / count


def peak_sweep(sizes: tuple[int, ...], device: torch.device, repeats: int, target_s: float) -> dict[str, float]:
    """{n: median seconds of one n x n matmul}, at the current thread count."""
    return {str(n): matmul_seconds(n, device, repeats, target_s) for n in sizes}


def measure_steps(workload: Workload, device: torch.device, repeats: int, target_s: float) -> dict:
    """FLOPs, wall seconds and in-ATen seconds of the workload's training step (see the module's text)."""
    epoch_index = itertools.count()
    train_epoch = workload.stage_epoch or workload.pipeline_epoch

    def epochs(count: int) -> Callable[[], None]:
        def run() -> None:
            for _ in range(count):
                train_epoch(next(epoch_index))
            workload.sync()
        return run

    epochs(1)()  # warm-up: first-call allocations, lazy initialisation
    start = time.perf_counter()
    epochs(1)()
    count = units_per_sample(time.perf_counter() - start, target_s)
    flops = counted_flops(epochs(1))
    # Profiled rounds (one epoch each: gathering the profiler's events takes longer than the epoch)
    # alternate with the plain ones; each profiled round's shares are of its own wall time, so that
    # load which comes and goes hits both sides of the ratio alike.
    profiled, timed = epochs(1), epochs(count)
    inside: dict[str, list[dict]] = {}
    times = alternate({"step": timed, "profiled": lambda: profiled_seconds(profiled, device)}, repeats=repeats,
                      warmup=0, results=inside)
    steps = workload.steps_per_epoch
    return {"flops_per_step": flops / steps, "steps_per_epoch": steps, "epochs_per_sample": count,
            "batch_size": workload.batch_size,
            "runs_s": [t / (count * steps) for t in times["step"]],  # seconds a step, plain rounds
            "profiled_runs_s": [{key: value / steps for key, value in run.items()} for run in inside["profiled"]]}


def gflops(params, device: torch.device, repeats: int, target_s: float = 1.0, sizes: tuple[int, ...] | None = None,
           models: tuple[str, ...] = MODELS, log: Callable[[str], None] = print) -> dict:
    """{"peak_s": {threads: peak_sweep}, "models": {model: measure_steps(...) and its threads}}; a model
    whose prepared data is missing is recorded as skipped."""
    from benchmarks import summary
    from dlpipe.errors import PipelineError
    from dlpipe.workflow_graph import stage_threads

    sizes = sizes or (CUDA_SIZES if device.type == "cuda" else SIZES)
    threads = {name: stage_threads(params.raw, f"train_{name}", params.source) for name in models}
    peaks = {}
    for count in sorted(set(threads.values())):
        with torch_threads(count):
            peaks[str(count)] = peak_sweep(sizes, device, repeats, target_s / 5)  # a mm is steadier than a step
        best = summary.peak_gflop_s(peaks[str(count)])
        log(f"  matmul peak, {count} thread(s): {best:.1f} GFLOP/s (n {', '.join(map(str, sizes))})")
    results = {}
    for name in models:
        with torch_threads(threads[name]):
            try:
                workload = stage_workload(name, params, device)
            except PipelineError as exc:
                results[name] = {"skipped": str(exc), "threads": threads[name]}
                log(f"  gflops {name}: skipped ({exc})")
                continue
            results[name] = {**measure_steps(workload, device, repeats, target_s), "threads": threads[name]}
        f = summary.model_gflops(results[name], peaks)
        log(f"  gflops {name}: {f['flops_per_step'] / 1e6:.1f} MFLOP a step in {f['step_s'] * 1e3:.2f} ms -> "
            f"{f['gflop_s']:.2f} GFLOP/s, {f['fraction_of_peak']:.1%} of {f['peak_gflop_s']:.1f} "
            f"({threads[name]} thread(s)); outside ATen {f['outside_compute_share']:.0%}, "
            f"in matmul/conv {f['matmul_conv_share']:.0%}")
    return {"peak_s": peaks, "models": results}
