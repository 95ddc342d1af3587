"""`rbzoo info` and `rbzoo export`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from ..errors import ConfigError
from . import app, console


@app.command()
def info(
    checkpoint: Annotated[Optional[str], typer.Argument(help="A format-v1 checkpoint (.safetensors), a run folder "
                                                                "(best/last.safetensors) or a zoo name, as for eval.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
    list_models: Annotated[bool, typer.Option("--list-models", help="List the registered architectures.")] = False,
) -> None:
    """Describe a checkpoint: architecture, seed, per-layer kept counts and coding cost, digest."""
    from .. import inspection  # library imports live in the commands: --help stays torch-free
    from ..resolve import resolve_checkpoint
    from ..zoo import resolve_remote

    if list_models:
        rows = inspection.model_table()
        if as_json:
            console.print_json(json.dumps(rows))
            return
        table = Table(title="rbzoo architectures")
        for col in ("name", "classes", "input", "normalize", "description"):
            table.add_column(col)
        for r in rows:
            table.add_row(r["name"], str(r["num_classes"]), str(r["input_size"]), r["normalize"], r["description"])
        console.print(table)
        return
    if checkpoint is None:
        raise typer.BadParameter("give a CHECKPOINT or --list-models")
    report = inspection.describe(resolve_checkpoint(checkpoint, resolve_remote))
    if as_json:
        print(json.dumps(report, indent=2))
        return
    t = report["totals"]
    console.print(f"[bold]{escape(str(report['path']))}[/]  ({report['file_size']:,} bytes)")
    console.print(f"architecture  {report['arch']['id']}  classes={report['arch']['num_classes']}  end_with_bn={report['arch']['end_with_bn']}")
    console.print(f"signs         {report['signs']}" + (f"  seed={report['seed']}" if report["seed"] is not None else ""))
    console.print(f"model digest  {report['model_digest']}")
    table = Table(show_lines=False)
    for col in ("layer", "shape", "n", "kept", "density", "coded bits", "log2 C(n,k)", "ratio"):
        table.add_column(col, justify="left" if col in ("layer", "shape") else "right")
    for r in report["layers"]:
        table.add_row(r["name"], "×".join(map(str, r["shape"])), f"{r['n']:,}", f"{r['kept']:,}", f"{r['density']:.4%}",
                      f"{r['coded_bits']:,}", f"{r['bound_bits']:,.0f}", f"{r['ratio']:.4f}" if r["ratio"] else "—")
    table.add_row("total", "", f"{t['n']:,}", f"{t['kept']:,}", f"{t['density']:.4%}", f"{t['coded_bits']:,}",
                  f"{t['bound_bits']:,.0f}", f"{t['ratio']:.4f}", style="bold")
    console.print(table)
    console.print(f"float32 dense weights would take {t['float32_bytes']:,} bytes: this file is {t['compression']:.0f}× smaller")


def _export_format(fmt: Optional[str], out: Path) -> str:
    if fmt is None:  # the suffix decides; the historical default is safetensors
        return "onnx" if out.suffix.lower() == ".onnx" else "safetensors"
    if fmt not in ("onnx", "safetensors"):
        raise ConfigError(f"unknown --format {fmt!r} (onnx, safetensors)")
    return fmt


@app.command()
def export(
    model: Annotated[str, typer.Argument(help="Checkpoint file, run folder, zoo name or repo id.")],
    out_arg: Annotated[Optional[Path], typer.Argument(metavar="[OUT]", help="Output file (same as --out).")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Output file.")] = None,
    fmt: Annotated[Optional[str], typer.Option("--format", help="onnx or safetensors (default: from the suffix of OUT; safetensors otherwise).")] = None,
    variant: Annotated[str, typer.Option(help="ONNX weights: dense (float32), int8 (±1/0, cast in the graph) or sparse (sparse initializers).")] = "dense",
    bn: Annotated[str, typer.Option(help="ONNX BatchNorm: fold (into the convolutions) or explicit (BatchNormalization nodes).")] = "fold",
    opset: Annotated[int, typer.Option(help="ONNX opset.")] = 17,
    check_n: Annotated[Optional[int], typer.Option("--check-n", help="Verify on the first N test samples (default: the whole test split).")] = None,
    dataset: Annotated[Optional[str], typer.Option(help="Dataset to verify on (default: the one recorded in the checkpoint).")] = None,
    data_dir: Annotated[Optional[Path], typer.Option("--data-dir", help="Data folder (default $RBZOO_DATA or ./data).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing output file.")] = False,
) -> None:
    """Export a model: ONNX verified by onnxruntime against rbzoo's labels, or dense safetensors."""
    from .. import inspection  # library imports live in the commands: --help stays torch-free
    from .. import onnx_export
    from ..resolve import resolve_checkpoint
    from ..zoo import resolve_remote

    if out_arg is not None and out is not None:
        raise ConfigError("give the output once: OUT or --out")
    out = out if out is not None else out_arg
    if out is None:
        raise ConfigError("give an output file: --out PATH")
    if _export_format(fmt, out) == "safetensors":
        if variant != "dense" or bn != "fold" or check_n is not None:
            raise ConfigError("--variant, --bn and --check-n apply to --format onnx")
        n = inspection.export_dense(resolve_checkpoint(model, resolve_remote), out, force=force)
        console.print(f"wrote {out} ({n:,} bytes)", highlight=False)
        return
    r = onnx_export.export_onnx(model, out, variant=variant, bn=bn, opset=opset, dataset=dataset, data_dir=data_dir,
                                check_n=check_n, force=force, remote=resolve_remote)
    c = r.check
    console.print(f"wrote {r.path} ({r.file_size:,} bytes, {r.variant}, BN {r.bn}, opset {r.opset})", highlight=False)
    console.print(f"verified against rbzoo on {r.dataset}/test: {c.message()}", highlight=False)
    console.print(f"clean correct: rbzoo {c.torch_correct}/{c.n}, onnxruntime {c.onnx_correct}/{c.n}; "
                  f"model digest {r.model_digest}", highlight=False)
