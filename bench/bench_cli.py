"""How fast the CLI answers: `rbzoo --help` (and friends) vs starting Python with typer and rich.

Each command runs as a fresh subprocess, interleaved with the reference (alternating order each
repetition), so machine noise hits both. The reference is `python -c "import typer, rich"`: what any
typer CLI pays before it does anything. Printed: median wall time and median CPU time (user+sys of
the child, barely affected by other tenants of a shared machine) and the ratio rbzoo / reference
next to the target (≤ 4×, issue 12).

The checkout's code runs (PYTHONPATH is set to the repository root), not an installed copy.

    python bench/bench_cli.py [--reps 9] [--also]   # --also: each subcommand's --help, --version, pull --list
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = [sys.executable, "-c", "import typer, rich"]
TARGET = 4.0


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["COLUMNS"] = "100"
    return env


def _run(cmd: list[str], env: dict) -> tuple[float, float]:
    """(wall seconds, child CPU seconds) of one run; a failing command stops the benchmark."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def measure(cmd: list[str], reps: int, env: dict) -> dict:
    """Medians for `cmd` and the reference, interleaved; one warm-up run of each first (disk cache)."""
    _run(cmd, env), _run(REFERENCE, env)
    times: dict[str, list[tuple[float, float]]] = {"cmd": [], "ref": []}
    for i in range(reps):
        order = ("cmd", "ref") if i % 2 == 0 else ("ref", "cmd")
        for which in order:
            times[which].append(_run(cmd if which == "cmd" else REFERENCE, env))
    med = {k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for k, v in times.items()}
    return {"wall": med["cmd"][0], "cpu": med["cmd"][1], "ref_wall": med["ref"][0], "ref_cpu": med["ref"][1]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--also", action="store_true", help="also time every subcommand's --help, --version, pull --list")
    args = ap.parse_args()
    env = _env()
    rbzoo = [sys.executable, "-m", "rbzoo"]
    commands = [["--help"]]
    if args.also:
        commands += [["--version"], ["pull", "--list"]] + [[c, "--help"] for c in
                                                           ("train", "eval", "info", "export", "pull", "push",
                                                            "convert", "plot", "data")]
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}, {args.reps} reps")
    print(f"{'command':<24} {'wall s':>8} {'ref s':>8} {'wall ×':>7} {'cpu s':>8} {'ref s':>8} {'cpu ×':>7}  target")
    for sub in commands:
        m = measure(rbzoo + sub, args.reps, env)
        print(f"{'rbzoo ' + ' '.join(sub):<24} {m['wall']:8.3f} {m['ref_wall']:8.3f} {m['wall'] / m['ref_wall']:6.2f}× "
              f"{m['cpu']:8.3f} {m['ref_cpu']:8.3f} {m['cpu'] / m['ref_cpu']:6.2f}×  ≤ {TARGET:g}×")


if __name__ == "__main__":
    main()
