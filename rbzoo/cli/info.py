"""`rbzoo info` and `rbzoo export`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from . import app, console


@app.command()
def info(
    checkpoint: Annotated[Optional[str], typer.Argument(help="A format-v1 checkpoint (.safetensors), a run folder "
                                                                "(best/last.safetensors) or a zoo name, as for eval.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
    list_models: Annotated[bool, typer.Option("--list-models", help="List the registered architectures.")] = False,
) -> None:
    """Describe a checkpoint: architecture, seed, per-layer kept counts and coding cost, digest."""
    from .. import inspect as rb_inspect  # library imports live in the commands: --help stays torch-free
    from ..resolve import resolve_checkpoint
    from ..zoo import resolve_remote

    if list_models:
        rows = rb_inspect.model_table()
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
    report = rb_inspect.describe(resolve_checkpoint(checkpoint, resolve_remote))
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


@app.command()
def export(
    checkpoint: Annotated[Path, typer.Argument(help="A format-v1 checkpoint.")],
    out: Annotated[Path, typer.Argument(help="Output .safetensors: a plain dense state_dict.")],
) -> None:
    """Write the folded dense weights (sign × mask) and BN buffers as a plain safetensors state_dict."""
    from .. import inspect as rb_inspect

    n = rb_inspect.export_dense(checkpoint, out)
    console.print(f"wrote {out} ({n:,} bytes)")
