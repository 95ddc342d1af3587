"""How far does a re-run AutoAttack chunk stray under another numerics profile? (the spot-check cap)

`rbzoo pull --spot-check` re-attacks chunks with their recorded seeds. On the publisher's numerics
profile the flags come out identical; on another, rounding differences are amplified by the attack
(APGD follows the sign of a gradient and keeps the best point found), so a re-run can follow
another trajectory and break a sample the honest publisher's run left robust, or the other way
round. This script measures how often, to set the cross-profile tolerance
(`rbzoo.verdict.SPOT_MEASURED`, docs/numerics.md "The spot-check cap").

Each model is attacked by `rbzoo eval`'s attack path (`rbzoo.robust.run_chunk`, chunk by chunk,
APGD-CE + APGD-T, `make_attack_spec(..., numerics=P)`) under every variant:

- `verify`, `fast`, `bf16`: the profiles as run on this CPU (`fast` is `verify`'s arithmetic here);
- `fast-tf32`: `fast` with every Conv2d/Linear operand rounded to TF32's 10-bit mantissa
  (straight-through for the gradient): what `fast` does on a GPU, which this CPU cannot run;
- `verify-no-onednn`: the same profile on other CPU kernels (what another machine does).

For every ordered pair (published → re-run) it counts: samples attacked (clean-correct), flags that
differ, published-robust samples the re-run breaks, and of those how many the re-run's own evidence
*proves* (inside the threat model, adversarial margin ≥ τ of the pair, checked under the re-run's
variant: `rbzoo.evidence.check_breaks`), i.e. what an honest claim is charged with by the spot check;
and published breaks the re-run leaves robust (already proved by the published evidence).

Models: the quickstart (`rbzoo train` quickstart config, PGD-trained tiny_resnet on 8×8 digits,
ε = 0.1; trained here unless `--checkpoint`), and a tiny_resnet fitted (not adversarially) to the
digits as bench/bench_evidence.py does (ε = 0.05, so that some samples survive); `cifar`: a
tiny_resnet fitted to generated CIFAR-10-format test images (tests/datagen.py) as
bench/bench_pull_robust.py does, 32×32×3 inputs (ε = `--cifar-eps`, default 2/255).

    python bench/bench_spot_profiles.py [--checkpoint QS.safetensors] [--n-iter 100] [--seeds 0,1]
        [--models quickstart,fitted,cifar] [--n 360] [--variants verify,fast-tf32,bf16] [--device cuda]
"""

from __future__ import annotations

import argparse
import platform
import re
import sys
import tempfile
import time
import warnings
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402,F401  (puts the checkout on sys.path)
import rbzoo  # noqa: E402
from rbzoo.checkpoint import model_digest_of  # noqa: E402
from rbzoo.evidence import Encoded, check_breaks  # noqa: E402
from rbzoo.exact import clean_accuracy, numerics, round_tf32  # noqa: E402
from rbzoo.robust import ChunkRecord, chunk_seed, make_attack_spec, run_chunk  # noqa: E402
from rbzoo import verdict  # noqa: E402
from rbzoo.verdict import tau_for  # noqa: E402


@contextmanager
def tf32_ste(model: nn.Module):
    """TF32 emulation that keeps gradients: operands rounded in the forward pass, identity backward."""
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    saved = [m.weight.data for m in layers]

    def hook(_m, args):
        x = args[0]
        return (x + (round_tf32(x) - x).detach(), *args[1:])

    hooks = [m.register_forward_pre_hook(hook) for m in layers]
    try:
        for m in layers:
            m.weight.data = round_tf32(m.weight.data)
        yield
    finally:
        for m, w in zip(layers, saved):
            m.weight.data = w
        for h in hooks:
            h.remove()


# name: (rbzoo profile, extra context around the attack and the check)
VARIANTS = {
    "verify": ("verify", lambda m: nullcontext()),
    "fast": ("fast", lambda m: nullcontext()),
    "fast-tf32": ("fast", tf32_ste),  # `fast` as a GPU runs it (TF32 emulated)
    "bf16": ("bf16", lambda m: nullcontext()),
    "verify-no-onednn": ("verify", lambda m: torch.backends.mkldnn.flags(enabled=False)),  # other kernels
}


def quickstart(out: Path) -> Path:
    from rbzoo.config import load_config
    from rbzoo.train import train

    train(load_config("quickstart", {"epochs": 20, "device": "cpu"}), out, progress=False, log=lambda line: None)
    return out / "best.safetensors"


def attack_all(model, ds, idx, correct, spec, variant: str, device: str) -> tuple[np.ndarray, dict[int, Encoded]]:
    """`rbzoo eval`'s attack, chunk by chunk, under `variant`: (robust flags, evidence by position)."""
    flags, evidence = np.zeros(len(idx), bool), {}
    cs = spec.chunk_size
    with VARIANTS[variant][1](model):
        for c in range((len(idx) + cs - 1) // cs):
            start, stop = c * cs, min((c + 1) * cs, len(idx))
            rec = ChunkRecord(c, start, stop, chunk_seed(spec.seed, c), correct[start:stop].copy())
            rec = run_chunk(model, ds, idx[start:stop], rec, spec, torch.device(device), save=lambda r: None)
            flags[start:stop] = rec.robust
            evidence.update({e["position"]: Encoded.from_json(e) for e in rec.evidence})
    return flags, evidence


def proved(model, ds, idx, items: list[Encoded], variant: str, tau: float, spec, device: str) -> tuple[int, int, float]:
    """(proved, near-ties, largest margin) of re-run breaks, checked as spot_check does."""
    if not items:
        return 0, 0, float("nan")
    x = torch.stack([ds[int(idx[e.position])][0] for e in items]).float().to(device)
    y = torch.tensor([int(ds[int(idx[e.position])][1]) for e in items]).to(device)
    with VARIANTS[variant][1](model), numerics(VARIANTS[variant][0], device):
        chk = check_breaks(model, x, y, items, norm=spec.norm, eps=spec.eps, tau=tau)
    return len(chk.proved), len(chk.near_ties), float(chk.margins.max())


def measure(name: str, model: nn.Module, ds, eps: float, args, rows: list) -> None:
    idx = np.arange(min(args.n, len(ds)))
    model = model.eval().requires_grad_(False).to(args.device)
    correct = clean_accuracy(model, ds, indices=idx, device=args.device).correct_mask
    print(f"{name}: model digest {model_digest_of(model)[:16]}…, {int(correct.sum())}/{len(idx)} clean-correct, ε {eps:g}",
          flush=True)
    for seed in args.seeds:
        runs = {}
        for v in args.variants:
            spec = make_attack_spec(eps=eps, version="custom", attacks=["apgd-ce", "apgd-t"], n_iter=args.n_iter,
                                    n_restarts=1, chunk_size=args.chunk, seed=seed, numerics=VARIANTS[v][0])
            t0 = time.process_time()
            runs[v] = attack_all(model, ds, idx, correct, spec, v, args.device)
            print(f"  {name} seed {seed} {v}: {int(runs[v][0].sum())}/{int(correct.sum())} robust "
                  f"({time.process_time() - t0:.0f} s CPU)", flush=True)
        for a in args.variants:
            for b in args.variants:
                if a == b:
                    continue
                fa, fb = runs[a][0], runs[b][0]
                newly = np.flatnonzero(fa & ~fb)
                tau = tau_for(VARIANTS[a][0], VARIANTS[b][0])
                k, near, top = proved(model, ds, idx, [runs[b][1][int(p)] for p in newly], b, tau, spec, args.device)
                both = set(runs[a][1]) & set(runs[b][1])
                ev = sum(runs[a][1][p].payload != runs[b][1][p].payload for p in both)
                rows.append(dict(model=name, seed=seed, pub=a, rerun=b, attacked=int(correct.sum()), robust=int(fa.sum()),
                                 differ=int((fa != fb).sum()), newly=len(newly), proved=k, near=near, top=top,
                                 back=int((~fa & fb & correct).sum()), tau=tau, evidence=ev))


ROW = re.compile(r"^\| (\w+) \| (\d+) \| ([\w-]+) → ([\w-]+) \| (\d+) \| (\d+) \| (\d+) \| (\d+) \| (\d+) \(τ ([\d.e-]+)\) "
                 r"\| (\d+) \| ([\d.—-]+) \| (\d+) \|(?: (\d+) \|)?$")
KEYS = ("model", "seed", "pub", "rerun", "attacked", "robust", "differ", "newly", "proved", "tau", "near", "top", "back",
        "evidence")


def print_rows(rows: list[dict]) -> None:
    print("\n| model | seed | published → re-run | attacked | published robust | flags differ | robust → broken "
          "| of which proved (≥ τ) | near-ties | largest margin | broken → robust | evidence differs (broken in both) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        top = "—" if r["newly"] == 0 else f"{r['top']:.2f}"
        print(f"| {r['model']} | {r['seed']} | {r['pub']} → {r['rerun']} | {r['attacked']} | {r['robust']} | {r['differ']} "
              f"| {r['newly']} | {r['proved']} (τ {r['tau']:g}) | {r['near']} | {top} | {r['back']} | {r['evidence']} |")


def read_rows(paths: list[Path]) -> list[dict]:
    """The per-pair rows printed by earlier runs (to summarize runs made separately)."""
    rows = []
    for path in paths:
        for line in path.read_text("utf-8").splitlines():
            m = ROW.match(line)
            if m:
                r = dict(zip(KEYS, m.groups()))
                rows.append({k: (v if k in ("model", "pub", "rerun") else float("nan") if v == "—" else
                                 float(v) if k in ("tau", "top") else None if v is None else int(v)) for k, v in r.items()})
    return rows


def summarize(rows: list[dict]) -> None:
    """docs/numerics.md's table: per model and pair of variants (seeds pooled), both directions;
    then what the measured rate gives (rbzoo.verdict.SPOT_RATE = SAFETY × max(k, 3) / T)."""
    variants = list(dict.fromkeys(r["pub"] for r in rows))
    print("\n| model (seeds) | a ↔ b | attacked | robust-flagged (a) | flags differ | a → b: re-run breaks (proved) "
          "| b → a: re-run breaks (proved) | largest margin of a re-run break |")
    print("|---|---|---|---|---|---|---|---|")
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        seeds = sorted({r["seed"] for r in mine})
        for i, a in enumerate(variants):
            for b in variants[i + 1:]:
                ab = [r for r in mine if (r["pub"], r["rerun"]) == (a, b)]
                ba = [r for r in mine if (r["pub"], r["rerun"]) == (b, a)]
                if not ab:
                    continue
                tops = [r["top"] for r in ab + ba if r["newly"]]
                top = f"{max(tops):.3f}" if tops else "—"
                print(f"| {model} ({', '.join(map(str, seeds))}) | {a} ↔ {b} | {sum(r['attacked'] for r in ab)} "
                      f"| {sum(r['robust'] for r in ab)} | {sum(r['differ'] for r in ab)} "
                      f"| {sum(r['newly'] for r in ab)} ({sum(r['proved'] for r in ab)}) "
                      f"| {sum(r['newly'] for r in ba)} ({sum(r['proved'] for r in ba)}) | {top} |")
    cross = [r for r in rows if VARIANTS[r["pub"]][0] != VARIANTS[r["rerun"]][0]]
    k = sum(r["proved"] for r in cross)
    once = {}  # (model, seed): robust-flagged samples of its first variant's run
    for r in rows:
        once.setdefault((r["model"], r["seed"]), r["robust"])
    t = sum(once.values())
    print(f"\ncross-profile: {k} proved re-run breaks; T = {t} robust-flagged samples (each counted once: the "
          f"{variants[0]} runs); rate = {verdict.SAFETY} × max({k}, 3) / {t} = {100 * verdict.SAFETY * max(k, 3) / t:.2f} %; "
          f"rbzoo.verdict.SPOT_MEASURED now {getattr(verdict, 'SPOT_MEASURED', None)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, help="a quickstart model (default: train one, ~1 min CPU)")
    ap.add_argument("--models", default="quickstart,fitted")
    ap.add_argument("--n", type=int, default=360, help="test digits attacked (all 360 by default)")
    ap.add_argument("--chunk", type=int, default=60)
    ap.add_argument("--cifar-eps", type=float, default=2 / 255)
    ap.add_argument("--n-iter", type=int, default=100)
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--device", default="cpu", help="cuda: `fast` is real TF32 there (add cuDNN's kernels to the table)")
    ap.add_argument("--from-logs", type=Path, nargs="+", help="summarize the outputs of earlier runs instead of running")
    args = ap.parse_args()
    if args.from_logs:
        summarize(read_rows(args.from_logs))
        return
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.variants = args.variants.split(",")
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message="TF32 acceleration on top of oneDNN")
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or platform.machine()
    print(f"{where}, torch {torch.__version__}, 1 thread; APGD-CE + APGD-T, "
          f"n_iter {args.n_iter}, 1 restart, chunks of {args.chunk}, seeds {args.seeds}")
    from rbzoo.data import get_dataset

    ds = get_dataset("digits", "test", None)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            if name == "quickstart":
                path = args.checkpoint or quickstart(Path(tmp) / "qs")
                measure("quickstart", rbzoo.load(path), ds, 0.1, args, rows)
            elif name == "cifar":
                sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
                import datagen
                from bench_pull_robust import fitted

                root = datagen.write_cifar10(Path(tmp) / "data", n_train=500, n_test=args.n)
                path = fitted(root, Path(tmp) / "cifar.safetensors")
                measure("cifar", rbzoo.load(path), get_dataset("cifar10", "test", root), args.cifar_eps, args, rows)
            elif name == "fitted":
                from bench_evidence import digits_model

                model, _, _ = digits_model()
                measure("fitted", model, ds, 0.05, args, rows)
    print_rows(rows)
    summarize(rows)


if __name__ == "__main__":
    main()
