"""How far do the logits move between numerics profiles, and which labels flip? (docs/numerics.md)

Trains the quickstart model (rbzoo.train, `quickstart` config, digits, CPU) into a temp folder, or
takes `--checkpoint`, and evaluates one fixed input set under each profile users actually run.
The reference is CPU float32, batch 256, oneDNN on (what `rbzoo eval --device cpu` does).

Inputs: all 1,797 digits images (train + test split) and five perturbed copies of each (Gaussian
noise σ = 0.03, 0.1, 0.2, and a one-pixel shift left/right): 10,782 inputs, many of them near a
decision boundary, where flips happen.

Per profile, with z the reference logits, z' the profile's and a the reference label:
- dev:  max over inputs of ‖z' − z‖∞ / ‖z‖∞ (relative logit deviation);
- D:    max over inputs of max_c |(z'_a − z'_c) − (z_a − z_c)| / ‖z‖∞ (margin deviation). A label
        can only flip where the reference's relative top-2 margin m (rbzoo.exact.relative_margins)
        is ≤ D, so τ = safety × D makes every flip a near-tie;
- flips, and the largest reference margin among them.

`--deep` adds the same measurement for a cifar_resnet34 (keep 0.01, BN statistics from random
images, untrained: the arithmetic depth of a real zoo model) on 256 random 32×32 inputs.

    python bench/bench_numerics.py [--checkpoint PATH] [--epochs 20] [--deep] [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import rbzoo  # noqa: E402
from rbzoo.exact import numerics, relative_margins, tf32_emulated  # noqa: E402
from rbzoo.verdict import TAU  # noqa: E402

SAFETY = 4


def train_quickstart(out: Path, epochs: int) -> Path:
    from rbzoo.config import load_config
    from rbzoo.train import train

    cfg = load_config("quickstart", {"epochs": epochs, "device": "cpu"})
    train(cfg, out, progress=False, log=lambda line: None)
    return out / "best.safetensors"


def digits_inputs() -> torch.Tensor:
    from rbzoo.data import get_dataset

    images = [x for split in ("train", "test") for x, _ in get_dataset("digits", split, None)]
    x = torch.stack(images)
    g = torch.Generator().manual_seed(0)
    variants = [x] + [(x + s * torch.randn(x.shape, generator=g)).clamp(0, 1) for s in (0.03, 0.1, 0.2)]
    variants += [torch.roll(x, shifts=k, dims=3) for k in (-1, 1)]
    return torch.cat(variants)


@torch.no_grad()
def logits(model: nn.Module, x: torch.Tensor, batch: int = 256) -> torch.Tensor:
    return torch.cat([model(x[i:i + batch]).float() for i in range(0, len(x), batch)])


def profiles(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Logits of `x` under every measured profile (the first one is the reference)."""
    out = {}
    with numerics("verify"):
        out["cpu fp32, batch 256 (reference)"] = logits(model, x)
        with torch.backends.mkldnn.flags(enabled=False):
            out["fp32, oneDNN off"] = logits(model, x)
        out["fp32, batch 1"] = logits(model, x, batch=1)
        cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
        out["fp32, channels-last"] = logits(cl, x.contiguous(memory_format=torch.channels_last))
        out["fp64 (float64 everywhere)"] = logits(copy.deepcopy(model).double(), x.double())
        with tf32_emulated(copy.deepcopy(model)) as m:
            out["TF32 emulated (10-bit mantissa operands)"] = logits(m, x)
    with numerics("bf16"):
        out["bf16 autocast"] = logits(model, x)
    if torch.cuda.is_available():  # the GPU profiles users run, against the same CPU reference
        gpu = copy.deepcopy(model).cuda()
        for profile, label in (("verify", "cuda fp32 (verify)"), ("fast", "cuda TF32 (fast)"), ("bf16", "cuda bf16")):
            with numerics(profile, "cuda"):
                out[label] = logits(gpu, x.cuda()).cpu()
    return out


def measure(ref: torch.Tensor, z: torch.Tensor) -> dict:
    scale = ref.abs().amax(1)
    a = ref.argmax(1)
    dev = ((z - ref).abs().amax(1) / scale).max().item()
    gap_ref = ref.gather(1, a[:, None]) - ref
    gap_new = z.gather(1, a[:, None]) - z
    d = ((gap_new - gap_ref).abs().amax(1) / scale)
    m = relative_margins(ref)
    flips = torch.nonzero(z.argmax(1) != a).flatten()
    return {"dev": dev, "D": d.max().item(), "D999": torch.quantile(d, 0.999).item(), "flips": len(flips),
            "max_flip_margin": m[flips].max().item() if len(flips) else None}


def report(title: str, model: nn.Module, x: torch.Tensor) -> dict[str, dict]:
    zs = profiles(model, x)
    ref = zs.pop(next(iter(zs)))
    m = relative_margins(ref)
    print(f"\n{title}: {len(x)} inputs; reference margins below 1e-4 / 1e-3 / 1e-2 / 2e-2 / 1e-1 / 0.25: "
          + " / ".join(str(int((m < t).sum())) for t in (1e-4, 1e-3, 1e-2, 2e-2, 1e-1, 0.25)))
    print("| profile | max rel. logit dev. | max margin dev. D | D, 99.9 % | flips | max margin of a flip |")
    print("|---|---|---|---|---|---|")
    rows = {}
    for name, z in zs.items():
        r = rows[name] = measure(ref, z)
        flip_m = "—" if r["max_flip_margin"] is None else f"{r['max_flip_margin']:.2e}"
        print(f"| {name} | {r['dev']:.2e} | {r['D']:.2e} | {r['D999']:.2e} | {r['flips']} | {flip_m} |")
    return rows


def deep_model() -> tuple[nn.Module, torch.Tensor]:
    model = rbzoo.create_model("cifar_resnet34", keep=0.01, p=0.1, end_with_bn=True, seed=3, score_init_scale=1.0)
    g = torch.Generator().manual_seed(1)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(64, 3, 32, 32, generator=g))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "deep.safetensors"
        rbzoo.save(model.eval(), path)
        return rbzoo.load(path), torch.rand(256, 3, 32, 32, generator=g)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, help="a digits model (default: train the quickstart)")
    ap.add_argument("--epochs", type=int, default=20, help="quickstart epochs when training (default 20)")
    ap.add_argument("--deep", action="store_true", help="also measure an untrained cifar_resnet34")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="TF32 acceleration on top of oneDNN")  # mkldnn.flags() notes it
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; τ now: {TAU}; safety factor {SAFETY}")
    with tempfile.TemporaryDirectory() as tmp:
        path = args.checkpoint or train_quickstart(Path(tmp) / "qs", args.epochs)
        model = rbzoo.load(path)
        rows = report(f"quickstart model ({path.name})", model, digits_inputs())
    if args.deep:
        rows.update({f"deep {k}": v for k, v in report("cifar_resnet34 keep 0.01 (untrained)", *deep_model()).items()})
    fp32 = max(r["D"] for k, r in rows.items() if "fp32" in k or "fp64" in k)
    tf32 = max(r["D"] for k, r in rows.items() if "TF32" in k)
    bf16 = max(r["D"] for k, r in rows.items() if "bf16" in k)
    print(f"\nsuggested τ = {SAFETY} × max D: verify {SAFETY * fp32:.1e}, fast {SAFETY * max(fp32, tf32):.1e}, "
          f"bf16 {SAFETY * bf16:.1e}")


if __name__ == "__main__":
    main()
