"""`rbzoo data imagenet100`: build the ImageNet100 subset from an ImageNet folder tree."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ..constants import LINK_MODES
from . import App, _check, app, console, err_console

data_app = App(help="Prepare datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("imagenet100")
def imagenet100(
    imagenet: Annotated[Path, typer.Option("--imagenet", help="ImageNet root (or the Kaggle layout's top) with train/<wnid>/ and val/, per-class or flat.")],
    out: Annotated[Path, typer.Option("--out", help="Data folder: the subset goes to OUT/imagenet100/{train,val} (use it as --data-dir).")],
    link: Annotated[str, typer.Option("--link", callback=_check.names("--link", LINK_MODES), help="copy (default), hard (hard links) or sym (symbolic links).")] = "copy",
    classes: Annotated[Optional[Path], typer.Option("--classes", help="A custom class list (one WNID per line) instead of the shipped one.")] = None,
    val_labels: Annotated[Optional[Path], typer.Option(
        "--val-labels", help="Labels of a flat val/: Kaggle's LOC_val_solution.csv (found by itself at the root or "
                             "the Kaggle top) or '<file name> <wnid>' lines.")] = None,
    workers: Annotated[int, typer.Option("--workers", min=1, help="Parallel file operations.")] = 8,
) -> None:
    """Build ImageNet100 from an ImageNet folder tree (resumable: rerun the same command).

    The subset is Continuum's class list, pinned (docs/method.md §8); its 100 classes' files are
    copied or linked."""
    from ..data import imagenet100 as inet  # here, not at the top: --help stays torch-free

    with Progress(TextColumn("imagenet100"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, disable=not console.is_terminal, transient=True) as bar:
        task = bar.add_task("files", total=None)
        result = inet.build_imagenet100(imagenet, out, link=link, classes=classes, val_labels=val_labels,
                                        workers=workers,
                                        progress=lambda done, total: bar.update(task, completed=done, total=total))
    n = result.counts
    if result.val_labels is not None:
        console.print(f"flat val/: classes from {result.val_labels}", highlight=False)
    console.print(f"imagenet100 → {result.out}: {len(result.classes)} classes, "
                  f"train {sum(n['train'].values()):,} / val {sum(n['val'].values()):,} images "
                  f"({result.written:,} {'copied' if link == 'copy' else 'linked'}, {result.skipped:,} already in place); verified")
    for w in result.warnings:
        err_console.print(f"[yellow]warning:[/] {w}", highlight=False)
    console.print(f"use it with --data-dir {out}")
