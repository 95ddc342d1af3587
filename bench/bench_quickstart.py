"""The README's quickstart, run once: its result and model digest, so the next person can compare.

Not a timing (the time printed is for orientation only). Training is bit-reproducible on one
machine with the same versions and settings; across CPUs the kernels' float rounding differs, so
the model (its digest) and its accuracy move a little. docs/numerics.md lists the spread measured
so far; a run here with the default settings either matches a row (same digest) or adds one.

    python bench/bench_quickstart.py                      # the quickstart as `rbzoo train` runs it
    python bench/bench_quickstart.py --threads 2          # torch intra-op threads (config: 1)
    python bench/bench_quickstart.py --no-mkldnn          # oneDNN off during training and evaluation
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import rbzoo  # noqa: E402
from rbzoo.config import load_config  # noqa: E402
from rbzoo.train import train  # noqa: E402


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: the config's 1)")
    ap.add_argument("--no-mkldnn", action="store_true", help="disable oneDNN (torch.backends.mkldnn) for the run")
    ap.add_argument("--epochs", type=int, default=None, help="fewer epochs for a quick look (default: the config's 20)")
    ap.add_argument("--out", type=Path, default=None, help="keep the run folder here (default: a temporary one)")
    args = ap.parse_args()

    overrides = {k: v for k, v in (("cpu_threads", args.threads), ("epochs", args.epochs)) if v is not None}
    cfg = load_config("quickstart", {**overrides, "device": "cpu"})
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp) / "qs"
        t0, c0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
        torch.backends.mkldnn.enabled = not args.no_mkldnn  # (its flags() context warns about TF32 on torch 2.14)
        train(cfg, out, log=lambda line: None)
        c1 = resource.getrusage(resource.RUSAGE_SELF)
        wall, cpu = time.perf_counter() - t0, (c1.ru_utime + c1.ru_stime) - (c0.ru_utime + c0.ru_stime)
        best = rbzoo.read(out / "best.safetensors")
    m = best.meta_json("rbzoo.metrics")
    n = m["test_n"]
    clean, robust = round(m["test_clean_acc"] * n), round(m["test_robust_acc"] * n)
    record = {
        "clean": f"{clean}/{n}", "clean_pct": round(100 * clean / n, 2),
        "pgd10": f"{robust}/{n}", "pgd10_pct": round(100 * robust / n, 2),
        "best_epoch": m["best_epoch"], "model_digest": best.digest,
        "settings": {"threads": cfg.cpu_threads, "mkldnn": not args.no_mkldnn, "epochs": cfg.epochs},
        "machine": {"cpu": _cpu_name(), "isa": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__,
                    "python": platform.python_version(), "rbzoo": rbzoo.__version__},
        "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
    }
    print(f"quickstart ({record['settings']}): best epoch {m['best_epoch']}, clean {record['clean']} = "
          f"{record['clean_pct']:.2f} %, PGD-10 {record['pgd10']} = {record['pgd10_pct']:.2f} % (ε = 0.1)")
    print(f"model digest {best.digest}")
    print(f"{record['machine']['cpu']} ({record['machine']['isa']}), torch {torch.__version__}; "
          f"{wall:.0f} s wall, {cpu:.0f} s CPU")
    print(json.dumps(record, sort_keys=True))


if __name__ == "__main__":
    main()
