"""Evidence of breaks: bytes per broken sample, and what keeping it costs the attack.

Two models, attacked by APGD-CE + APGD-T as `rbzoo eval` runs them (`rbzoo.robust.robust_evaluation`,
chunked, state saved after every attack, every break encoded and re-checked):

- *digits*: a tiny_resnet fitted to scikit-learn's 8×8 digits (the quickstart data), ε = 0.1;
- *cifar*: a cifar_resnet18 (keep 0.05, random scores) on random 32×32×3 images labelled with its
  own predictions, ε = 8/255 (the size that matters: the target is ≤ 1 KB per broken sample,
  against 6 KB for the image as float16).

Bytes: per broken sample, the compressed payload and the whole evidence file divided by the
breaks; the level histogram (1: δ ∈ {−ε, 0, ε}; 0: stored exactly).

Overhead: the same chunks attacked by plain pyautoattack (one `run_standard_evaluation` per chunk,
as tests/test_eval.py checks is equivalent) and by `robust_evaluation` (fresh state each time),
interleaved, on this process's CPU time with one thread. Target ≤ 1.05×. On a shared machine the
two totals jitter by several per cent, so the part that keeping evidence adds is also timed
directly inside the rbzoo runs: `encode_breaks` (quantize, re-check, deflate) and the chunk-state
writes, as a share of the run. Use n_iter 100 (AutoAttack's standard) for the figure that counts.

    python bench/bench_evidence.py [--n 32] [--n-iter 10] [--reps 3] [--only bytes,overhead]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

import _common  # (also puts the checkout on sys.path)
import rbzoo
import rbzoo.robust
from rbzoo.evidence import Evidence, read_evidence
from rbzoo.exact import clean_accuracy
from rbzoo.robust import EvalState, chunk_seed, make_attack_spec, robust_evaluation


def digits_model():
    from rbzoo.data import get_dataset

    train, test = get_dataset("digits", "train", None), get_dataset("digits", "test", None)
    x = torch.stack([train[i][0] for i in range(len(train))])
    y = torch.tensor([int(train[i][1]) for i in range(len(train))])
    torch.manual_seed(0)
    model = rbzoo.create_model("tiny_resnet", num_classes=10, in_channels=1, mean=(0.3053,), std=(0.3760,), keep=0.5, p=1.0, seed=0,
                               score_init_scale=1.0)
    return _common.fit_scores(model, x, y, steps=60, lr=0.05).eval(), test, 0.1


def cifar_model(n: int, device: str = "cpu"):
    model = rbzoo.create_model("cifar_resnet18", keep=0.05, p=0.1, seed=0).eval().requires_grad_(False).to(device)
    x = torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(0)).to(device)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, TensorDataset(x.cpu(), y.cpu()), 8 / 255


def run_rbzoo(model, ds, idx, spec, folder: Path, device: str = "cpu"):
    """`rbzoo eval`'s attack path: robust_evaluation under the spec's numerics profile."""
    clean = clean_accuracy(model, ds, indices=idx, device=device)
    state = EvalState.open(folder, {"bench": str(folder)}, replace="always")
    return robust_evaluation(model, ds, idx, clean.correct_mask, spec, state, device=device), clean


def run_plain(model, ds, idx, spec, device: str = "cpu"):
    """Plain pyautoattack per chunk, under PyTorch's default numerics."""
    from pyautoattack import AutoAttack

    x = torch.stack([ds[int(i)][0] for i in idx]).float().to(device)
    y = torch.tensor([int(ds[int(i)][1]) for i in idx]).to(device)
    with torch.no_grad():
        correct = (model(x).argmax(1) == y).cpu().numpy()
    for c in range((len(idx) + spec.chunk_size - 1) // spec.chunk_size):
        pos = np.arange(c * spec.chunk_size, min((c + 1) * spec.chunk_size, len(idx)))
        pos = pos[correct[pos]]
        if not len(pos):
            continue
        aa = AutoAttack(model, version="custom", attacks=list(spec.attacks), eps=spec.eps, seed=chunk_seed(spec.seed, c),
                        device=device)
        aa.logger.disabled = True
        for attack in (aa.apgd, aa.apgd_targeted):
            n_iter = spec.n_iter
            attack.n_iter = attack.n_iter_orig = n_iter
            attack.n_iter_2, attack.n_iter_min = max(int(0.22 * n_iter), 1), max(int(0.06 * n_iter), 1)
            attack.size_decr = max(int(0.03 * n_iter), 1)
            attack.n_restarts = 1
        aa.run_standard_evaluation(x[pos], y[pos], batch_size=len(pos))


def bytes_part(args) -> None:
    for name, (model, ds, eps) in (("digits", digits_model()), ("cifar", cifar_model(args.n))):
        idx = np.arange(min(args.n, len(ds)))
        spec = make_attack_spec(eps=eps, version="custom", attacks=["apgd-ce", "apgd-t"], n_iter=args.n_iter,
                                n_restarts=1, chunk_size=args.chunk)
        with tempfile.TemporaryDirectory() as tmp:
            res, clean = run_rbzoo(model, ds, idx, spec, Path(tmp) / "s")
        shape = list(ds[0][0].shape)
        data = Evidence(res.evidence, {"norm": "Linf", "eps": eps, "attacks": list(spec.attacks), "shape": shape}).to_bytes()
        k = len(res.evidence)
        numel = int(np.prod(shape))
        read_evidence(data, n_examples=len(idx), numel=numel)
        levels = {}
        for e in res.evidence:
            levels[e.level] = levels.get(e.level, 0) + 1
        payload = sum(len(e.payload) for e in res.evidence) / max(k, 1)
        print(f"{name:7s} {shape}: {clean.clean_correct}/{len(idx)} clean-correct, {k} broken; payload "
              f"{payload:7.1f} B/sample, file {len(data) / max(k, 1):7.1f} B/sample (float16 image: {2 * numel} B); "
              f"levels {dict(sorted(levels.items()))}" + ("  target <= 1024 B: " + ("OK" if len(data) / max(k, 1) <= 1024
                                                                                    else "OVER") if name == "cifar" else ""))


def overhead_part(args) -> None:
    model, ds, eps = cifar_model(args.n)
    idx = np.arange(args.n)
    spec = make_attack_spec(eps=eps, version="custom", attacks=["apgd-ce", "apgd-t"], n_iter=args.n_iter, n_restarts=1,
                            chunk_size=args.chunk)
    times = {"plain": [], "rbzoo": []}
    kept = {"encode": 0.0, "save": 0.0}  # CPU time inside the rbzoo runs spent keeping evidence

    def timed(part, fn):
        def wrapper(*a, **k):
            t0 = time.process_time()
            try:
                return fn(*a, **k)
            finally:
                kept[part] += time.process_time() - t0
        return wrapper

    rbzoo.robust.encode_breaks = timed("encode", rbzoo.robust.encode_breaks)  # a bench may wrap; rbzoo never does
    EvalState.save_chunk = timed("save", EvalState.save_chunk)
    with tempfile.TemporaryDirectory() as tmp:
        fns = {"plain": lambda: run_plain(model, ds, idx, spec),
               "rbzoo": lambda: run_rbzoo(model, ds, idx, spec, Path(tmp) / "s")}
        fns["rbzoo"]()  # warm-up
        kept.update(encode=0.0, save=0.0)
        for r in range(args.reps):
            for name in (("plain", "rbzoo") if r % 2 == 0 else ("rbzoo", "plain")):
                t0 = time.process_time()
                fns[name]()
                times[name].append(time.process_time() - t0)
                print(f"  rep {r}: {name} {times[name][-1]:.2f} s CPU", flush=True)
    best = {k: min(v) for k, v in times.items()}
    med = {k: float(np.median(v)) for k, v in times.items()}
    ratio = med["rbzoo"] / med["plain"]
    print(f"overhead, cifar_resnet18 {args.n} points, APGD-CE + APGD-T n_iter {args.n_iter}, CPU time, {args.reps} reps: "
          f"plain {med['plain']:.2f} s, rbzoo {med['rbzoo']:.2f} s (median); ratio {ratio:.3f}x (of minima "
          f"{best['rbzoo'] / best['plain']:.3f}x)  target <= 1.05x {'OK' if ratio <= 1.05 else 'OVER'}")
    total = sum(times["rbzoo"])
    print(f"keeping evidence inside the rbzoo runs: encode + re-check {kept['encode']:.2f} s, state writes "
          f"{kept['save']:.2f} s of {total:.2f} s CPU ({100 * (kept['encode'] + kept['save']) / total:.2f} %)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--chunk", type=int, default=16)
    ap.add_argument("--n-iter", type=int, default=10)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--only", default="bytes,overhead")
    args = ap.parse_args()
    torch.set_num_threads(1)
    parts = args.only.split(",")
    if "bytes" in parts:
        bytes_part(args)
    if "overhead" in parts:
        overhead_part(args)


if __name__ == "__main__":
    main()
