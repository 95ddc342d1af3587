"""`rbzoo convert`: import an official checkpoint of the paper (docs/method.md §5.8, docs/zoo.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..constants import BUILTIN_ARCHITECTURES, OBJECTIVES
from ..data import DATASETS
from . import _check, app, console


def _size(n: int) -> str:
    for unit, div in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= div:
            return f"{n / div:.1f} {unit}"
    return f"{n} B"


@app.command()
def convert(
    official: Annotated[Path, typer.Argument(callback=_check.existing, help="The official .pth checkpoint (read with weights_only=True).")],
    arch: Annotated[str, typer.Option("--arch", callback=_check.names("--arch", BUILTIN_ARCHITECTURES), help="rbzoo architecture, e.g. cifar_resnet34, imagenet_resnet34.")],
    out: Annotated[Path, typer.Option("--out", help="Output format-v1 checkpoint (.safetensors).")],
    keep: Annotated[float, typer.Option("--keep", min=0.0, max=1.0, help="Kept fraction k the model was trained with (--prune-rate).")] = 0.01,
    p: Annotated[float, typer.Option("--p", min=0.0, max=1.0, help="Layer-adaptivity exponent p (--pr-scale).")] = 0.1,
    end_with_bn: Annotated[bool, typer.Option("--end-with-bn", help="The model has the final BN over the logits (last.*).")] = False,
    num_classes: Annotated[Optional[int], typer.Option("--num-classes", min=1, help="Classes (default: the dataset's).")] = None,
    dataset: Annotated[Optional[str], typer.Option("--dataset", callback=_check.names("--dataset", tuple(DATASETS)), help="cifar10, cifar100 or imagenet100 (default: from the file's arch).")] = None,
    objective: Annotated[Optional[str], typer.Option("--objective", callback=_check.names("--objective", OBJECTIVES), help="Training objective to record (pgd, fast, trades).")] = None,
    no_bn_check: Annotated[bool, typer.Option("--no-bn-check", help="Skip the check that BN statistics fit the masks of --keep/--p.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing --out file (never the input).")] = False,
) -> None:
    """Convert an official checkpoint to rbzoo's format (explicit signs), proving identical logits."""
    _check.output(out, force=force, kind="--out", inputs=(official,))  # before torch loads (convert checks again)
    from .. import convert as rb_convert  # here, not at the top: --help stays torch-free

    r = rb_convert.convert_official(official, arch=arch, keep=keep, p=p, end_with_bn=end_with_bn, num_classes=num_classes,
                                    dataset=dataset, out=out, objective=objective, bn_consistency=not no_bn_check,
                                    force=force)
    console.print(f"official  {r.source}  {r.source_bytes:,} bytes ({_size(r.source_bytes)})  sha256 {r.source_sha256[:16]}…")
    console.print(f"converted {r.out}  {r.out_bytes:,} bytes ({_size(r.out_bytes)}): {r.source_bytes / r.out_bytes:,.0f}× smaller; "
                  f"float32 weights + BN would take {r.float32_bytes:,} bytes ({r.float32_bytes / r.out_bytes:,.0f}×)")
    console.print(f"network   {r.arch['id']}, {r.arch['num_classes']} classes, {r.dataset}, keep {r.keep:g}, p {r.p:g}: "
                  f"{r.kept:,} of {r.n_weights:,} weights kept in {len(r.layers)} layers")
    lit = "" if r.official_pool_rel_diff is None else (
        f"; the official avg_pool2d(4) head sums in another order: relative |Δ| ≤ {r.official_pool_rel_diff:.1g}")
    console.print(f"equivalence: logits identical to the official forward pass with keep {r.keep:g}, p {r.p:g} on "
                  f"{r.check_inputs} random inputs (seed {r.check_seed}, max |Δ| = {r.max_abs_diff:g}){lit}")
    console.print("  proves: this file computes the same function as the official code run with these keep/p; "
                  "does NOT prove: that these are the keep/p the model was trained with (docs/convert.md)",
                  highlight=False)
    bn = r.bn_check
    if bn.get("skipped"):
        console.print("BN check: skipped (--no-bn-check): nothing here confirms keep/p; only an exact clean-accuracy "
                      "check (`rbzoo pull`, `rbzoo eval`) can", highlight=False)
    else:
        young = f"; {bn['young_bns']} BNs too young to judge (skipped)" if bn.get("young_bns") else ""
        console.print(f"BN check: {bn['sparse'] + bn['dense']} contradictions in {bn['checked']:,} channels "
                      f"(≤ {bn['allowed']} tolerated): the BN statistics agree with these keep/p{young}")
    if r.tied_layers:
        console.print(f"note: equal |scores| straddle the cut in {', '.join(r.tied_layers)}; rbzoo prunes the lower "
                      f"flat index first (the official CUDA sort left such ties unspecified)", highlight=False)
    console.print(f"digest    {r.weights_sha256}")
