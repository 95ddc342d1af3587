"""Shared helpers for the benchmarks: the dense twin of a masked model, and interleaved timing.

Benchmarks compare an rbzoo model against a *dense twin*: the same architecture, module names,
non-affine BatchNorm and normalization, with every `SubnetConv2d` replaced by a plain bias-free
`nn.Conv2d` whose weight is an ordinary trainable parameter (what a well-written dense network
trains). Both run in the same process, on the same batch, alternately, so machine noise hits both.
"""

from __future__ import annotations

import copy
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn

# Let the scripts run from a source checkout without installing.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rbzoo.layers import SubnetConv2d  # noqa: E402


def dense_twin(model: nn.Module, *, requires_grad: bool = True) -> nn.Module:
    """A deep copy of `model` with every SubnetConv2d replaced by a dense `nn.Conv2d`.

    The dense weight starts as the layer's ±1 signs (values do not change the cost of a dense
    convolution) and, with `requires_grad`, is trainable like in normal dense training. Every other
    module (BN, dense first/last layers, normalization) is copied as is.
    """
    twin = copy.deepcopy(model)
    for name, m in list(twin.named_modules()):
        if not isinstance(m, SubnetConv2d):
            continue
        conv = nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding,
                         bias=False, device=m.weight.device, dtype=m.weight.dtype)
        with torch.no_grad():
            conv.weight.copy_(m.weight)
        conv.weight.requires_grad_(requires_grad)
        parent_name, _, child = name.rpartition(".")
        parent = twin.get_submodule(parent_name) if parent_name else twin
        setattr(parent, child, conv)
    return twin


def fit_scores(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, steps: int, lr: float) -> nn.Module:
    """Fit a masked model's scores to (x, y), full batch, Adam (a fixture model that classifies its
    data mostly right, in seconds; call `torch.manual_seed` first for a reproducible fit)."""
    import torch.nn.functional as F

    model.train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    for _ in range(steps):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def exact_bn_statistics(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """Set every BatchNorm's running statistics to the exact ones of `x` (not a running average)."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    with torch.no_grad():
        model.train()(x)
    return model.eval()


def set_threads(n: int | None) -> int:
    """Fix the intra-op thread count (default: all cores the process may use)."""
    if n is None:
        n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    torch.set_num_threads(n)
    return n


# Which clock the benchmarks read: wall time (default), or this process's CPU time, which is far
# less sensitive to other tenants of a shared machine (use it with --threads 1, where no OpenMP
# thread spins while waiting).
CLOCK = {"wall": time.perf_counter, "cpu": time.process_time}
_clock = time.perf_counter


def set_clock(name: str) -> None:
    global _clock
    _clock = CLOCK[name]


def interleaved(fns: dict[str, Callable[[], None]], *, reps: int, inner: int, warmup: int = 2) -> dict[str, list[float]]:
    """Median-friendly timings: `reps` rounds, each running every fn `inner` times, order alternating.

    Returns per-call seconds (one value per round and fn). Alternating the order inside a round
    cancels slow drifts (thermal, other tenants) between the compared runs.
    """
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            fns[n]()
    out: dict[str, list[float]] = {n: [] for n in names}
    for r in range(reps):
        for n in (names if r % 2 == 0 else names[::-1]):
            t0 = _clock()
            for _ in range(inner):
                fns[n]()
            out[n].append((_clock() - t0) / inner)
    return out


def timed(fn: Callable[[], object]) -> float:
    """Seconds one call of `fn` takes on the selected clock."""
    t0 = _clock()
    fn()
    return _clock() - t0


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def busy_factor(seconds: float = 0.3) -> float:
    """Wall time over CPU time of a single-threaded spin: ≈ 1 on an idle machine, ≈ 2 when each
    core is shared with one other runnable process. Wall-clock ratios are unreliable above ~1.2."""
    t0, c0 = time.perf_counter(), time.process_time()
    x = 0
    while time.perf_counter() - t0 < seconds:
        x += 1
    return (time.perf_counter() - t0) / max(time.process_time() - c0, 1e-9)


def header(title: str, threads: int) -> None:
    print(f"# {title}")
    print(f"# torch {torch.__version__}, {platform.processor() or platform.machine()}, threads={threads}, "
          f"clock={'cpu' if _clock is time.process_time else 'wall'}")
    busy = busy_factor()
    if busy < 1.2:
        note = ""
    elif _clock is time.process_time:
        note = "  <- machine busy (CPU-clock numbers are only mildly affected)"
    else:
        note = "  <- machine busy: wall times are inflated; rerun idle or with --clock cpu --threads 1"
    print(f"# busy factor (wall/cpu of a spin loop): {busy:.2f}{note}")


def busy_note() -> None:
    """Print the busy factor again: other load may have started during a long benchmark."""
    print(f"# busy factor now: {busy_factor():.2f}")


def report(name: str, seconds: list[float], ref: list[float] | None = None, target: float | None = None) -> float | None:
    """Print one line: median time (and spread), and the ratio of medians against `ref`."""
    med = median(seconds)
    line = f"{name:<34} median {med * 1e3:9.2f} ms  (min {min(seconds) * 1e3:8.2f}, max {max(seconds) * 1e3:8.2f}, n={len(seconds)})"
    ratio = None
    if ref is not None:
        ratio = med / median(ref)
        line += f"  ratio {ratio:.3f}x (of minima {min(seconds) / min(ref):.3f}x)"
        if target is not None:
            line += f"  target <= {target:.2f}x  {'OK' if ratio <= target else 'OVER'}"
    print(line)
    return ratio
