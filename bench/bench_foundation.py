"""Foundation benchmarks (issue 2): checkpoint load, masked training step, folded eval forward.

Every number is a median over interleaved repetitions in this process, printed with its ratio
against a reference run in the same process:

1. load: `rbzoo.load` (read + decode + regenerate signs + build) of a cifar_resnet34
   keep 0.01 / p 0.1 / end_with_bn checkpoint on CPU. Target < 0.5 s. Reference: loading the
   same network from a plain dense float32 safetensors file into the same module tree.
2. train: one training step (forward, backward, SGD step on the scores, so the top-k mask is
   recomputed every step) of the masked ResNet34 versus its dense `nn.Conv2d` twin (same
   architecture, same non-affine BN, trainable float weights, SGD on the weights), same batch.
   Target <= 1.10x.
3. eval: forward of the folded checkpoint (`rbzoo.load`) versus the dense twin in eval mode
   under inference mode, same batch. Target <= 1.02x.

    python bench/bench_foundation.py [--threads N] [--reps R] [--batch B] [--only load,train,eval] [--clock wall|cpu]

On a shared machine use `--threads 1 --clock cpu` (see bench/README.md).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from _common import busy_note, dense_twin, header, interleaved, median, report, set_clock, set_threads, timed
from safetensors.torch import load_file, save_file

import rbzoo
import rbzoo.layers as L
from rbzoo.models._registry import create_model_from_arch, fold

ARCH = dict(keep=0.01, p=0.1, end_with_bn=True, seed=1234)


def build_model() -> torch.nn.Module:
    """The issue's ResNet34 with BN statistics from a few train-mode batches."""
    m = rbzoo.create_model("cifar_resnet34", **ARCH).train()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _ in range(2):
            m(torch.rand(16, 3, 32, 32, generator=g))
    return m.eval()


def bench_load(model: torch.nn.Module, tmp: Path, reps: int) -> None:
    print("\n## load (read + decode + regenerate + build), CPU")
    path = tmp / "rn34.safetensors"
    rbzoo.save(model, path)
    # Reference: the same network as a plain dense float32 file, loaded into the same module tree.
    dense_path = tmp / "rn34-dense.safetensors"
    folded = rbzoo.load(path)  # eval-ready, every masked layer already a dense nn.Conv2d
    save_file({k: v.contiguous() for k, v in folded.state_dict().items()}, str(dense_path))
    arch = model.arch

    def load_rbzoo():
        rbzoo.load(path)

    def load_dense():
        sd = load_file(str(dense_path))
        skel = create_model_from_arch(arch, materialize=False)
        weights = {k: sd[k] for k in skel.prunable_keys}
        net = fold(skel, weights=weights)
        net.load_state_dict({k: v for k, v in sd.items() if k not in weights}, strict=False)

    first = timed(lambda: rbzoo.load(path))
    times = interleaved({"rbzoo": load_rbzoo, "dense": load_dense}, reps=reps, inner=1, warmup=1)
    # Breakdown of the rbzoo load: read (parse + decode + regenerate + verify) vs build.
    t_read, t_build = [], []
    for _ in range(reps):
        box = {}
        t_read.append(timed(lambda: box.setdefault("ck", rbzoo.read(path))))
        t_build.append(timed(lambda: rbzoo.checkpoint.build(box["ck"])))
    print(f"file {path.stat().st_size:,} bytes (dense float32: {dense_path.stat().st_size:,} bytes); first load {first * 1e3:.1f} ms")
    report("dense float32 load (reference)", times["dense"])
    report("rbzoo.load", times["rbzoo"], times["dense"])
    report("  of which read+verify", t_read)
    report("  of which build", t_build)
    med = median(times["rbzoo"])
    print(f"load {med:.3f} s  target < 0.5 s  {'OK' if med < 0.5 else 'OVER'}")


def _count_topk(model, x, y, opt) -> int:
    """How many layers recompute their top-k in the forward that follows an SGD step."""
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    opt.step()
    calls = []
    real = L.top_mask
    L.top_mask = lambda *a, **k: calls.append(1) or real(*a, **k)
    try:
        model(x)
    finally:
        L.top_mask = real
    return len(calls)


def bench_train(model: torch.nn.Module, batch: int, reps: int) -> None:
    print(f"\n## train step (forward + backward + SGD step), batch {batch}, 32x32, CPU")
    masked = model.train()
    dense = dense_twin(model).train()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(batch, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)
    opt_m = torch.optim.SGD([p for p in masked.parameters() if p.requires_grad], lr=0.1, momentum=0.9, weight_decay=5e-4)
    opt_d = torch.optim.SGD([p for p in dense.parameters() if p.requires_grad], lr=0.1, momentum=0.9, weight_decay=5e-4)
    n_layers = len(masked.prunable_keys)
    n_topk = _count_topk(masked, x, y, opt_m)
    print(f"trainable: masked {sum(p.numel() for p in opt_m.param_groups[0]['params']):,} scores, "
          f"dense {sum(p.numel() for p in opt_d.param_groups[0]['params']):,} weights; "
          f"layers recomputing their top-k after a step: {n_topk} of {n_layers}")

    def step(model, opt):
        def run():
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()
        return run

    times = interleaved({"masked": step(masked, opt_m), "dense": step(dense, opt_d)}, reps=reps, inner=1, warmup=2)
    report("dense nn.Conv2d step (reference)", times["dense"])
    report("masked SubnetConv2d step", times["masked"], times["dense"], target=1.10)
    print(f"images/s: masked {batch / median(times['masked']):.1f}, dense {batch / median(times['dense']):.1f}")


def bench_eval(model: torch.nn.Module, tmp: Path, batch: int, reps: int) -> None:
    print(f"\n## eval forward (inference mode), batch {batch}, 32x32, CPU")
    path = tmp / "rn34-eval.safetensors"
    rbzoo.save(model.eval(), path)
    folded = rbzoo.load(path)
    dense = dense_twin(model, requires_grad=False).eval()
    masked = model.eval()  # unfolded: cached mask, the attack/eval path at fixed scores
    x = torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(2))

    def fwd(m):
        def run():
            with torch.inference_mode():
                m(x)
        return run

    with torch.inference_mode():
        assert torch.equal(folded(x), masked(x)), "folded and masked logits differ"
    times = interleaved({"folded": fwd(folded), "dense": fwd(dense), "masked": fwd(masked)}, reps=reps, inner=3, warmup=2)
    report("dense nn.Conv2d eval (reference)", times["dense"])
    report("folded rbzoo.load eval", times["folded"], times["dense"], target=1.02)
    report("unfolded SubnetConv2d eval", times["masked"], times["dense"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: all available cores)")
    ap.add_argument("--reps", type=int, default=9, help="interleaved repetitions per benchmark")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--only", default="load,train,eval", help="comma-separated subset of load,train,eval")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="wall time, or process CPU time (robust on a shared machine; use with --threads 1)")
    args = ap.parse_args()
    threads = set_threads(args.threads)
    set_clock(args.clock)
    header("rbzoo foundation benchmarks: cifar_resnet34 keep 0.01 p 0.1 end_with_bn", threads)
    which = set(args.only.split(","))
    torch.manual_seed(0)
    model = build_model()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if "load" in which:
            bench_load(model, tmp, args.reps)
            busy_note()
        if "train" in which:
            bench_train(model, args.batch, args.reps)
            busy_note()
        if "eval" in which:
            bench_eval(model, tmp, args.batch, args.reps)
            busy_note()


if __name__ == "__main__":
    main()
