"""`rbzoo pull DIR --robust` against a clean `rbzoo pull DIR`: what proving every break costs.

A tiny_resnet is fitted to generated CIFAR-10-format test images (tests/datagen.py, the real pickle
layout; N test images, so most are clean-correct), evaluated with APGD-CE (few iterations) at each
ε of `--eps`, so that it keeps the evidence of every break, and published with `rbzoo push --to`.
Then, alternately, a clean pull and a robust pull of the folder, each with a fresh registry (so
neither is answered from the record), in this process, on CPU time with one thread.

A robust pull adds one forward pass over the broken samples to the clean pull's pass over all n,
so its cost is about 1 + (breaks / n) × (the forward pass's share of a clean pull), plus decoding.
The paper's nine entries break 25–41 % of the test set (clean − AutoAttack accuracy: at most
81.63 − 40.77 % for ResNet34, CIFAR-10, fast); ε = 2.25/255 here breaks about as many, the
default's first case. The second, ε = 8/255, breaks every clean-correct sample: the worst case,
reported with its floor. Target: ≤ 1.5× for the paper-like share.

    python bench/bench_pull_robust.py [--n 300] [--reps 3] [--eps 2.25/255,8/255]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import _common  # (also puts the checkout on sys.path)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import datagen  # noqa: E402

import rbzoo  # noqa: E402
import rbzoo.data  # noqa: E402
from rbzoo import hub, zoo  # noqa: E402
from rbzoo.evaluate import EvalConfig, run_eval  # noqa: E402


def fitted(root: Path, path: Path) -> Path:
    ds = rbzoo.data.get_dataset("cifar10", "test", root)  # fitted to the test images: most are clean-correct
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    y = torch.tensor([ds[i][1] for i in range(len(ds))])
    torch.manual_seed(0)
    model = rbzoo.create_model("tiny_resnet", keep=0.5, p=1.0, seed=3, score_init_scale=1.0)
    model = _common.exact_bn_statistics(_common.fit_scores(model, x, y, steps=40, lr=0.1), x)
    rbzoo.save(model, path, metadata={"rbzoo.dataset": rbzoo.data.dataset_metadata("cifar10")})
    return path


def pull_times(tmp: Path, root: Path, pub: Path, reps: int) -> tuple[dict, str]:
    times: dict = {"clean": [], "robust": []}
    message = ""
    for rep in range(reps + 1):  # the first round warms up
        for kind in (("clean", "robust") if rep % 2 == 0 else ("robust", "clean")):
            os.environ["RBZOO_HOME"] = str(tmp / f"home-{pub.name}-{kind}-{rep}")
            t0 = time.process_time()
            p = zoo.pull(str(pub), data_dir=root, robust=kind == "robust", cards_dir=tmp / "cards")
            if rep:
                times[kind].append(time.process_time() - t0)
            message = p.robust_message or message
    return {k: statistics.median(v) for k, v in times.items()}, message


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--eps", default="2.25/255,8/255", help="comma-separated radii, one published model each")
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = datagen.write_cifar10(tmp / "data", n_train=500, n_test=args.n)
        ckpt = fitted(root, tmp / "m.safetensors")
        for i, eps in enumerate(args.eps.split(",")):
            out = tmp / f"r{i}.json"
            r = run_eval(EvalConfig(model=str(ckpt), data_dir=str(root), device="cpu", eps=eps, version="custom",
                                    attacks=["apgd-ce"], n_iter=5, n_restarts=1, chunk_size=100, out=out,
                                    state=tmp / f"state{i}"))
            pub = tmp / f"pub{i}"
            hub.push(ckpt, to=pub, results=out, cards_dir=tmp / "cards")
            med, message = pull_times(tmp, root, pub, args.reps)
            ratio = med["robust"] / med["clean"]
            k = r["evidence"]["n"]
            share = k / args.n
            paper_like = share <= 0.41
            print(f"eps {eps}: n={args.n}, clean {r['clean_correct']}, robust {r['robust_correct']}, {k} breaks "
                  f"({100 * share:.0f} % of n{', paper-like' if paper_like else ', beyond the paper entries'}), "
                  f"{r['evidence']['bytes'] / max(k, 1):.0f} evidence bytes per break")
            print(f"  {message}")
            print(f"  pull {med['clean']:.3f} s, pull --robust {med['robust']:.3f} s CPU (median of {args.reps}); "
                  f"ratio {ratio:.2f}x" + (f"  target <= 1.5x {'OK' if ratio <= 1.5 else 'OVER'}" if paper_like else
                                           f"  (no target: about 1 + {share:.2f} x the forward share)"), flush=True)


if __name__ == "__main__":
    main()
