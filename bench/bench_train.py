"""One PGD-10 adversarial-training step: masked cifar_resnet18 (keep 0.01, p 0.1) vs its dense twin.

The dense reference is the same network with every SubnetConv2d replaced by a plain trainable
`nn.Conv2d` (same non-affine BatchNorm, same last BN). Both run the same rbzoo training step
(`objectives.PGDTraining`: 10 PGD iterations taking input gradients only, with the running
statistics frozen, then one forward/backward and an SGD step), on the same batch, in the same
process, alternating so that machine noise hits both equally. Target (issue 3): masked/dense ≤ 1.05.

    python bench/bench_train.py [--batch 32] [--reps 5] [--device cpu] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn as nn

import rbzoo
from rbzoo.config import load_config
from rbzoo.layers import SubnetConv2d, top_mask
from rbzoo.models._registry import fold
from rbzoo.objectives import PGDTraining


def build(dense: bool, device: torch.device) -> nn.Module:
    model = rbzoo.create_model("cifar_resnet18", keep=0.01, p=0.1, end_with_bn=True, seed=1234)
    if dense:
        model = fold(model)
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.requires_grad_(True)
    return model.to(device).train()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cfg = load_config("rn18-cifar10-pgd")  # ε 8/255, α 2/255, 10 steps, final iterate (default rule)
    objective = PGDTraining(cfg)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch, 3, 32, 32, generator=g).to(device)
    y = torch.randint(0, 10, (args.batch,), generator=g).to(device)

    runs = {}
    for name in ("masked", "dense"):
        model = build(name == "dense", device)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=5e-4)
        runs[name] = (model, opt)

    def step(name: str) -> float:
        model, opt = runs[name]
        sync(device)
        t = time.perf_counter()
        loss, _ = objective(model, model, x, y, None)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync(device)
        return time.perf_counter() - t

    for name in runs:  # warm-up (allocator, oneDNN primitive caches)
        step(name)
    times = {name: [] for name in runs}
    for _ in range(args.reps):
        for name in runs:
            times[name].append(step(name))
    med = {name: statistics.median(ts) for name, ts in times.items()}
    best = {name: min(ts) for name, ts in times.items()}

    # Where the masked step's extra time goes: one top-k over every layer's scores per step.
    masked = runs["masked"][0]
    layers = [m for m in masked.modules() if isinstance(m, SubnetConv2d)]
    sync(device)
    t = time.perf_counter()
    for m in layers:
        top_mask(m.scores, m.kept)
    sync(device)
    topk_s = time.perf_counter() - t

    print(f"device {device}, threads {torch.get_num_threads()}, batch {args.batch}, reps {args.reps}")
    for name in ("dense", "masked"):
        print(f"  {name:6s} PGD-10 AT step  median {med[name] * 1e3:8.1f} ms ({args.batch / med[name]:6.2f} images/s)"
              f"  min {best[name] * 1e3:8.1f} ms ({args.batch / best[name]:6.2f} images/s)"
              f"   all: {', '.join(f'{v * 1e3:.0f}' for v in times[name])} ms")
    print(f"  top-k of all {len(layers)} masks once: {topk_s * 1e3:.1f} ms ({topk_s / best['masked']:.1%} of the fastest masked step)")
    print(f"ratio masked/dense = {med['masked'] / med['dense']:.3f} (medians), {best['masked'] / best['dense']:.3f} (minima)   target ≤ 1.05")


if __name__ == "__main__":
    main()
