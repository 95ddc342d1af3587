"""ONNX variants of a cifar_resnet34 at keep 0.01: file size, onnxruntime load time and latency,
each as a ratio against the dense float32 graph measured in the same run.

The model is built with `rbzoo.create_model` (seeded signs, random scores, no data needed). Every
variant computes the same function (the run checks that their logits agree); they differ in how
the ternary weights are stored: float32 (dense), int8 ±1/0 cast in the graph (int8), ONNX sparse
initializers with int8 values and INT64 indices (sparse). Latencies are interleaved (see _common).

    python bench/bench_onnx.py [--batch 8] [--reps 5] [--threads N] [--bn fold|explicit] [--clock wall|cpu]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from _common import header, interleaved, median, report, set_clock, set_threads  # noqa: I001 (puts the checkout on sys.path)

import rbzoo
from rbzoo.onnx_export import VARIANTS, build_proto, require_onnx


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="cifar_resnet34")
    ap.add_argument("--keep", type=float, default=0.01)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--bn", default="fold", choices=["fold", "explicit"])
    ap.add_argument("--clock", default="wall", choices=["wall", "cpu"])
    args = ap.parse_args()
    _, ort = require_onnx()
    set_clock(args.clock)
    threads = set_threads(args.threads)
    header(f"ONNX variants: {args.arch}, keep {args.keep}, batch {args.batch}, BN {args.bn}, onnxruntime {ort.__version__}", threads)

    model = rbzoo.create_model(args.arch, keep=args.keep, p=0.1, end_with_bn=True, seed=1234, score_init_scale=1.0).eval()
    blobs = {v: build_proto(model, image_size=32, variant=v, bn=args.bn).SerializeToString() for v in VARIANTS}
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sessions, load_s = {}, {}
    for v, blob in blobs.items():
        t0 = time.perf_counter()
        sessions[v] = ort.InferenceSession(blob, sess_options=opts, providers=["CPUExecutionProvider"])
        load_s[v] = time.perf_counter() - t0
    x = torch.rand(args.batch, 3, 32, 32, generator=torch.Generator().manual_seed(0)).numpy()
    outs = {v: s.run(None, {"images": x})[0] for v, s in sessions.items()}
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    for v, out in outs.items():  # the ratios below are only meaningful if every variant is the same model
        dev = np.abs(out - ref).max() / np.abs(ref).max()
        assert np.array_equal(out.argmax(1), ref.argmax(1)) and dev < 1e-4, f"{v}: logits differ from torch ({dev:.3g})"

    dense_bytes = len(blobs["dense"])
    print(f"\n{'variant':<8} {'bytes':>12} {'size ratio':>11} {'load s':>8} {'load ratio':>11}")
    for v in VARIANTS:
        print(f"{v:<8} {len(blobs[v]):>12,} {len(blobs[v]) / dense_bytes:>10.4f}x {load_s[v]:>8.3f} {load_s[v] / load_s['dense']:>10.2f}x")
    ckpt_bytes = _checkpoint_bytes(model)
    print(f"{'rbzoo':<8} {ckpt_bytes:>12,} {ckpt_bytes / dense_bytes:>10.4f}x   (the .safetensors checkpoint, for scale)")

    print(f"\nonnxruntime latency, batch {args.batch} (ratio against dense fp32):")
    fns = {v: (lambda s=s: s.run(None, {"images": x})) for v, s in sessions.items()}
    times = interleaved(fns, reps=args.reps, inner=3)
    for v in VARIANTS:
        report(f"onnx {v}", times[v], None if v == "dense" else times["dense"])
    print(f"# dense fp32 median per image: {median(times['dense']) / args.batch * 1e3:.2f} ms")


def _checkpoint_bytes(model) -> int:
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "m.safetensors"
        rbzoo.save(model, path)
        return path.stat().st_size


if __name__ == "__main__":
    main()
