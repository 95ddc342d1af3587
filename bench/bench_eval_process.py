"""`rbzoo eval` as a whole process against plain pyautoattack in a script, both as fresh processes.

The issue's own measurement (issue 18, item 7): APGD-CE + APGD-T on the first N test images of a
checkpoint, once by `rbzoo eval CKPT --version custom --attacks apgd-ce,apgd-t` (clean pass with
certificate, chunk state, evidence of every break, results file) and once by a script that loads the
same model and images and calls `AutoAttack(...).run_standard_evaluation` with the same ε and seed.
Whole processes are counted (interpreter start, imports, data loading), on the CPU time of the
children (`getrusage(RUSAGE_CHILDREN)`), one thread each, interleaved; the robust counts must agree.
Target ≤ 1.05×.

    rbzoo train --config quickstart --out runs/qs      # the checkpoint (about 1 min of CPU)
    python bench/bench_eval_process.py runs/qs [--n 200] [--eps 0.1] [--reps 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import _common  # noqa: F401  (puts the checkout on sys.path)

PLAIN = r'''
import sys
import numpy as np
import torch
from pyautoattack import AutoAttack
import rbzoo, rbzoo.data
from rbzoo.checkpoint import checkpoint_dataset, read
from rbzoo.resolve import resolve_checkpoint
from rbzoo.robust import chunk_seed

ckpt, n, eps = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
path = resolve_checkpoint(ckpt)
model = rbzoo.load(path).eval()
ds = rbzoo.data.get_dataset(checkpoint_dataset(read(path)), "test", None)
x = torch.stack([ds[i][0] for i in range(n)]).float()
y = torch.tensor([int(ds[i][1]) for i in range(n)])
aa = AutoAttack(model, norm="Linf", eps=eps, version="custom", attacks=["apgd-ce", "apgd-t"], seed=chunk_seed(0, 0),
                device="cpu")
aa.logger.disabled = True
with torch.no_grad():
    _, y_adv = aa.run_standard_evaluation(x, y, batch_size=n)  # (adversarial inputs, their predicted labels)
print(int((y_adv.cpu() == y).sum()))
'''


def child_cpu() -> tuple[float, float]:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime, r.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", help="a checkpoint or run folder (its dataset must be available offline, e.g. digits)")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    root = Path(__file__).resolve().parents[1]
    env["PYTHONPATH"] = str(root) + os.pathsep + env.get("PYTHONPATH", "")
    times: dict = {"plain": [], "rbzoo": []}
    system: dict = {"plain": [], "rbzoo": []}  # of which system time: page faults of large tensors, the noisiest part
    counts: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "r.json"
        cmds = {
            "plain": [sys.executable, "-c", PLAIN, args.checkpoint, str(args.n), repr(args.eps)],
            "rbzoo": [sys.executable, "-m", "rbzoo", "eval", args.checkpoint, "--version", "custom", "--attacks",
                      "apgd-ce,apgd-t", "--n-examples", str(args.n), "--eps", repr(args.eps), "--fresh", "--force",
                      "--out", str(out), "--state", str(Path(tmp) / "state")],
        }
        for rep in range(args.reps):
            for name in (("plain", "rbzoo") if rep % 2 == 0 else ("rbzoo", "plain")):
                u0, s0 = child_cpu()
                p = subprocess.run(cmds[name], env=env, capture_output=True, text=True)
                u1, s1 = child_cpu()
                times[name].append(u1 - u0 + s1 - s0)
                system[name].append(s1 - s0)
                if p.returncode:
                    sys.exit(f"{name} failed ({p.returncode}): {p.stderr.strip().splitlines()[-1:]}")
                counts[name] = int(p.stdout.strip().splitlines()[-1]) if name == "plain" else \
                    json.loads(out.read_text())["robust_correct"]
                print(f"  rep {rep}: {name} {times[name][-1]:.2f} s CPU ({system[name][-1]:.2f} s system), "
                      f"robust {counts[name]}/{args.n}", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["rbzoo"] / med["plain"]
    low = min(times["rbzoo"]) / min(times["plain"])
    same = "the same robust count" if counts["plain"] == counts["rbzoo"] else "DIFFERENT robust counts"
    print(f"whole processes, APGD-CE + APGD-T on {args.n} images, one thread: plain pyautoattack {med['plain']:.2f} s, "
          f"rbzoo eval {med['rbzoo']:.2f} s CPU (median of {args.reps}); ratio {ratio:.3f}x (of minima {low:.3f}x), {same}  target <= 1.05x "
          f"{'OK' if ratio <= 1.05 else 'OVER'}")


if __name__ == "__main__":
    main()
