"""Eval throughput of a folded binary subnetwork vs the identical dense network.

A cifar_resnet34 at keep 0.01 is saved and loaded the way `rbzoo eval` loads it (folded: every
masked layer is a plain nn.Conv2d holding sign × mask). The reference is the same module tree
with dense random weights in every folded convolution. Both run, interleaved in this process:

- clean forward (no_grad, eval mode), images/s;
- one APGD-CE iteration as `rbzoo eval` runs it (pyautoattack APGDAttack, n_iter=1, one
  restart: a forward for the clean prediction, then two forward+input-gradient passes), images/s.
  Each model's own predictions are the labels, so every model attacks every point (APGD skips
  points that are already misclassified, which would make the work differ).

Printed ratios are folded time / dense time (target ≤ 1.02×). Also shown, for information: the
unfolded trainable model (SubnetConv2d with cached masks) on the same work.

On CPU the clock is this process's CPU time (`time.process_time`) on one thread by default, so
other load on a shared machine does not distort the ratios; on CUDA it is wall time with
synchronization.

    python bench/bench_eval.py [--device cuda] [--batch-size 256] [--reps 5] [--threads 1] [--clock wall]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn

import rbzoo
from _common import dense_twin
from rbzoo.exact import pinned_numerics


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


CLOCK = time.perf_counter


def time_forward(model: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        _sync(x.device)
        t = CLOCK()
        model(x)
        _sync(x.device)
    return CLOCK() - t


def time_apgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    from pyautoattack.autopgd_base import APGDAttack

    attack = APGDAttack(model, n_iter=1, n_restarts=1, eps=8 / 255, norm="Linf", seed=0, device=x.device)
    _sync(x.device)
    t = CLOCK()
    attack.perturb(x, y)
    _sync(x.device)
    return CLOCK() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch-size", type=int, default=None, help="default: 256 on CUDA, 32 on CPU")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--keep", type=float, default=0.01)
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default 1 on CPU)")
    ap.add_argument("--clock", choices=("cpu", "wall"), default=None, help="default: cpu on CPU, wall on CUDA")
    args = ap.parse_args()
    device = torch.device(args.device)
    global CLOCK
    clock = args.clock or ("wall" if device.type == "cuda" else "cpu")
    CLOCK = time.process_time if clock == "cpu" else time.perf_counter
    if device.type == "cpu":
        torch.set_num_threads(args.threads or 1)
    bs = args.batch_size or (256 if device.type == "cuda" else 32)

    trainable = rbzoo.create_model("cifar_resnet34", keep=args.keep, p=0.1, end_with_bn=True, seed=0).eval()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rn34.safetensors"
        rbzoo.save(trainable, path)
        folded = rbzoo.load(path, device=device)
    dense = dense_twin(trainable, requires_grad=False).to(device).eval()
    trainable = trainable.to(device).requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(bs, 3, 32, 32, generator=g).to(device)
    models = {"folded": folded, "dense": dense, "unfolded": trainable}
    # APGD attacks only the points a model classifies correctly: label every point with each
    # model's own prediction so every model attacks all `bs` points (equal work).
    with torch.no_grad():
        labels = {name: model(x).argmax(1) for name, model in models.items()}

    times = {(name, kind): [] for name in models for kind in ("forward", "apgd")}
    with pinned_numerics():
        for name, model in models.items():  # warm-up (allocator, kernels, mask caches)
            time_forward(model, x)
            time_apgd(model, x, labels[name])
        for _ in range(args.reps):  # interleaved, so drift in machine load hits all equally
            for name, model in models.items():
                times[(name, "forward")].append(time_forward(model, x))
                times[(name, "apgd")].append(time_apgd(model, x, labels[name]))

    print(f"cifar_resnet34 keep={args.keep} on {device}"
          f"{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else f' ({torch.get_num_threads()} threads)'}"
          f", batch {bs}, {clock} clock, {args.reps} interleaved reps; img/s from the fastest rep (median in brackets)")
    for kind, label in (("forward", "clean forward"), ("apgd", "APGD-CE, 1 iteration")):
        best = {name: min(times[(name, kind)]) for name in models}  # least disturbed by other load
        med = {name: statistics.median(times[(name, kind)]) for name in models}
        print(f"{label:22s} " + "  ".join(f"{name} {bs / best[name]:9.1f} ({bs / med[name]:.1f}) img/s" for name in models))
        ratio = best["folded"] / best["dense"]
        print(f"{'':22s} folded/dense time ratio {ratio:.3f}x ({'OK' if ratio <= 1.02 else 'ABOVE'} target 1.02x; "
              f"median {med['folded'] / med['dense']:.3f}x);  unfolded/dense {best['unfolded'] / best['dense']:.3f}x")


if __name__ == "__main__":
    main()
