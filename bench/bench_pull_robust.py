"""`rbzoo pull DIR --robust` against a clean `rbzoo pull DIR`: what proving every break costs.

A tiny_resnet is fitted to generated CIFAR-10-format test images (so most are clean-correct and
many breaks must be proved) (tests/datagen.py, the real pickle
layout; N test images), evaluated with APGD-CE (few iterations) so that it keeps the evidence of
every break, and published with `rbzoo push --to`. Then, alternately, a clean pull and a robust
pull of the folder, each with a fresh registry (so neither is answered from the record), in this
process, on CPU time with one thread. Target: robust ≤ 1.5× clean.

    python bench/bench_pull_robust.py [--n 500] [--reps 3]
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
import torch.nn as nn
import torch.nn.functional as F

import _common  # noqa: F401  (puts the checkout on sys.path)

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
    model = rbzoo.create_model("tiny_resnet", keep=0.5, p=1.0, seed=3, score_init_scale=1.0).train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for _ in range(40):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    with torch.no_grad():
        model(x)
    rbzoo.save(model.eval(), path, metadata={"rbzoo.dataset": rbzoo.data.dataset_metadata("cifar10")})
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = datagen.write_cifar10(tmp / "data", n_train=500, n_test=args.n)
        ckpt = fitted(root, tmp / "m.safetensors")
        out = tmp / "r.json"
        r = run_eval(EvalConfig(model=str(ckpt), data_dir=str(root), device="cpu", eps="8/255", version="custom",
                                attacks=["apgd-ce"], n_iter=5, n_restarts=1, chunk_size=100, out=out, state=tmp / "state"))
        hub.push(ckpt, to=tmp / "pub", results=out, cards_dir=tmp / "cards")
        times = {"clean": [], "robust": []}
        message = ""
        for rep in range(args.reps + 1):  # the first round warms up
            for kind in (("clean", "robust") if rep % 2 == 0 else ("robust", "clean")):
                os.environ["RBZOO_HOME"] = str(tmp / f"home-{kind}-{rep}")
                t0 = time.process_time()
                p = zoo.pull(str(tmp / "pub"), data_dir=root, robust=kind == "robust", cards_dir=tmp / "cards")
                if rep:
                    times[kind].append(time.process_time() - t0)
                message = p.robust_message or message
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["robust"] / med["clean"]
    print(f"n={args.n}: clean {r['clean_correct']}, robust {r['robust_correct']}, {r['evidence']['n']} breaks, "
          f"{r['evidence']['bytes'] / max(r['evidence']['n'], 1):.0f} evidence bytes per break")
    print(f"  {message}")
    print(f"pull {med['clean']:.2f} s, pull --robust {med['robust']:.2f} s CPU (median of {args.reps}); ratio {ratio:.2f}x "
          f"target <= 1.5x {'OK' if ratio <= 1.5 else 'OVER'}")


if __name__ == "__main__":
    main()
