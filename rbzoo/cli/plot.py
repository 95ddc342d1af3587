"""`rbzoo plot`: figures from checkpoints, runs, results files and model cards."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..constants import PLOT_KINDS
from . import _check, app, console, err_console


@app.command()
def plot(
    kind: Annotated[str, typer.Argument(callback=_check.names("plot kind", PLOT_KINDS),
                                        help="layers, structure, curves, attack, zoo, compare or breaks.")],
    inputs: Annotated[list[Path], typer.Argument(help="layers/structure: a checkpoint; curves: a run folder or metrics.jsonl; "
                                                      "attack, breaks: a results JSON; zoo: cards (.md) and results (.json); "
                                                      "compare: two checkpoints.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Image to write: .png, .pdf or .svg.")],
    data: Annotated[Optional[Path], typer.Option("--data", help="Also write the figure's numbers as JSON.")] = None,
    layers: Annotated[Optional[list[str]], typer.Option("--layers", help="structure: layer names (repeat or comma-separate); "
                                                                        "default: first, middle and deepest pruned k×k conv.")] = None,
    p: Annotated[Optional[str], typer.Option("--p", help="layers: p values to overlay, e.g. 0.0,0.5,1.0 (the default).")] = None,
    trials: Annotated[int, typer.Option("--trials", min=1, help="structure: random placements for the baseline.")] = 100,
    seed: Annotated[int, typer.Option("--seed", help="structure: seed of the random placements.")] = 0,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing image (and --data file).")] = False,
    data_dir: Annotated[Optional[Path], typer.Option("--data-dir", help="breaks: the test data (default $RBZOO_DATA or ./data).")] = None,
) -> None:
    """Draw a figure: per-layer allocation, mask structure, training curves, attack stages, zoo, mask overlap,
    or stored adversarial examples beside their clean images (breaks)."""
    names = [n for item in layers or [] for n in item.split(",") if n.strip()] or None
    for path in inputs:
        _check.existing(path)
    _check.output(out, force=force, kind="--out", inputs=tuple(inputs))  # before matplotlib and torch load
    if data is not None:
        _check.output(data, force=force, kind="--data", inputs=tuple(inputs))
    from .. import plot as rb_plot  # matplotlib costs ~0.6 s to import: only when plotting

    result = rb_plot.plot(kind, inputs, out, data_out=data, layers=names, ps=p, trials=trials, seed=seed,
                            force=force, data_dir=data_dir)
    for s in result.get("skipped", []):
        err_console.print(f"warning: {s['path']}: {s['reason']}; left out", highlight=False, soft_wrap=True)
    console.print(f"wrote {out}" + (f" and {data}" if data else ""), highlight=False)
