"""The cost of recording margins: `clean_accuracy(..., margins=True)` vs `margins=False`.

A clean evaluation that records each sample's relative top-2 margin (for the verification
certificate, rbzoo.exact) does one extra topk(2) and max|z| per batch on the logits. Both variants
evaluate the same folded model on the same in-memory dataset, interleaved in this process; the
printed ratio is with / without (target ≤ 1.02×, issue 10). Certificate building (float16
quantization, packing, JSON) is timed on its own, as a fraction of the evaluation.

Default model: cifar_resnet18 keep 0.01 (folded, as `rbzoo eval` loads it), 1,024 random 32×32
images, batch 256 — the shape of a real CIFAR evaluation, small enough for a shared CPU.

    python bench/bench_certificate.py [--arch cifar_resnet18] [--n 1024] [--reps 5] [--threads 1] [--clock cpu]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

import rbzoo
from _common import header, interleaved, median, report, set_clock, set_threads, timed
from rbzoo.exact import clean_accuracy
from rbzoo.verdict import Certificate


def build(arch: str, n: int) -> tuple[torch.nn.Module, TensorDataset]:
    model = rbzoo.create_model(arch, keep=0.01, p=0.1, end_with_bn=True, seed=0, score_init_scale=1.0)
    g = torch.Generator().manual_seed(0)
    model.train()
    with torch.no_grad():
        model(torch.rand(64, 3, 32, 32, generator=g))  # BN statistics that are not all zero/one
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.safetensors"
        rbzoo.save(model.eval(), path)
        folded = rbzoo.load(path)
    x = torch.rand(n, 3, 32, 32, generator=g)
    return folded, TensorDataset(x, torch.randint(0, 10, (n,), generator=g))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="cifar_resnet18")
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    args = ap.parse_args()
    threads = set_threads(args.threads)
    set_clock(args.clock)
    header(f"clean_accuracy with vs without margins: {args.arch}, {args.n} images, batch {args.batch_size}", threads)
    model, ds = build(args.arch, args.n)

    def run(margins: bool):
        return clean_accuracy(model, ds, batch_size=args.batch_size, margins=margins)

    with_m, without = run(True), run(False)
    assert with_m.predictions_sha256 == without.predictions_sha256  # same evaluation, plus margins
    t = interleaved({"with": lambda: run(True), "without": lambda: run(False)}, reps=args.reps, inner=1, warmup=1)
    report("clean_accuracy, margins=False", t["without"])
    report("clean_accuracy, margins=True", t["with"], t["without"], target=1.02)
    cert_s = [timed(lambda: Certificate.from_json(json.loads(json.dumps(Certificate.of(with_m).to_json()))))
              for _ in range(args.reps)]
    print(f"certificate build + JSON round trip: {median(cert_s) * 1e3:.2f} ms "
          f"({median(cert_s) / median(t['without']):.4f} of the evaluation)")


if __name__ == "__main__":
    main()
