"""`rbzoo reproduce`: train a zoo entry with its card's config, evaluate it, judge it (rbzoo.reproduce)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..constants import AA_VERSIONS
from ..errors import ConfigError
from . import _check, app, console, resume_hint, same_command


class _EvalDisplay:
    """`rbzoo eval`'s progress display, started when the evaluation starts: training shows its own
    bars first, and rich allows one live display at a time."""

    def __init__(self) -> None:
        from .eval import _Display

        self.display, self.started = _Display(), False

    def __call__(self, *args, **kwargs) -> None:
        if not self.started:
            self.display.t0 = time.perf_counter()  # the evaluation's clock, not the training's
            self.display.progress.start()
            self.started = True
        self.display(*args, **kwargs)

    def close(self) -> None:
        if self.started:
            self.display.progress.stop()


@app.command()
def reproduce(
    entry: Annotated[str, typer.Argument(help="A zoo name (see `rbzoo pull --list`) or a card file (.md).")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="The run folder: training, evaluation and "
                                                "report (the same command continues it).")] = None,
    eval_only: Annotated[Optional[Path], typer.Option("--eval-only", help="Skip training: evaluate and judge this "
                                                      "run folder or checkpoint (report in it, or in --out).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan (config, epochs, attack, data) and exit.")] = False,
    data_dir: Annotated[Optional[Path], typer.Option("--data-dir", help="Folder holding the datasets (default $RBZOO_DATA or ./data).")] = None,
    download: Annotated[bool, typer.Option("--download", help="Download CIFAR if missing.")] = False,
    device: Annotated[Optional[str], typer.Option("--device", callback=_check.device, help="auto, cpu, cuda or cuda:N.")] = None,
    num_workers: Annotated[Optional[int], typer.Option("--num-workers", min=0, help="Data-loading worker processes (default: the config's).")] = None,
    epochs: Annotated[Optional[int], typer.Option("--epochs", help="Train this many epochs instead of the config's "
                                                  "(a modified config: the report says so).")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Training seed (default: the config's).")] = None,
    paper_compat: Annotated[Optional[bool], typer.Option("--paper-compat/--no-paper-compat",
                                                         help="Reproduce the official code's quirks (default: the config's).")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a config field, repeatable: --set width=4.")] = None,
    n_examples: Annotated[Optional[int], typer.Option("--n-examples", help="Evaluate the first N test images (default: all).")] = None,
    version: Annotated[Optional[str], typer.Option("--version", callback=_check.names("--version", AA_VERSIONS), help="AutoAttack version (default: the card's).")] = None,
    attacks: Annotated[Optional[str], typer.Option("--attacks", help="With --version custom: e.g. apgd-ce (cheaper: an upper bound).")] = None,
    pgd: Annotated[Optional[int], typer.Option("--pgd", metavar="STEPS", help="A quick L∞ PGD instead of AutoAttack (an upper bound).")] = None,
    n_iter: Annotated[Optional[int], typer.Option("--n-iter", help="Override APGD/FAB iterations (an upper bound).")] = None,
    n_restarts: Annotated[Optional[int], typer.Option("--n-restarts", help="Override restarts (an upper bound).")] = None,
    n_queries: Annotated[Optional[int], typer.Option("--n-queries", help="Override Square queries (an upper bound).")] = None,
    attack_seed: Annotated[int, typer.Option("--attack-seed", help="Attack seed.")] = 0,
    chunk_size: Annotated[int, typer.Option("--chunk-size", help="Points per attack chunk (the unit of resuming).")] = 500,
    margin: Annotated[float, typer.Option("--margin", help="Points beyond the 95 % interval still called reproduced.")] = 1.0,
    by: Annotated[Optional[str], typer.Option("--by", help="Who reproduced it (a card carrying the report shows it).")] = None,
    cards_dir: Annotated[Optional[Path], typer.Option("--cards-dir", help="The zoo's card folder.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Start over: retrain and re-evaluate, replacing the run's files.")] = False,
) -> None:
    """Reproduce a zoo entry: train with its config, evaluate clean and AutoAttack robust accuracy, and
    judge each against the paper's number (reproduced / below / above) in reproduction.json and .md.

    Examples: `rbzoo reproduce quickstart --out runs/qs-repro`;
    `rbzoo reproduce rn18-cifar10-fast --out runs/rn18 --data-dir data --dry-run`;
    `torchrun --nproc_per_node 8 -m rbzoo reproduce rn34-cifar10-pgd --out runs/rn34 --data-dir data`.
    """
    from ..config import parse_override  # torch-free; the library below is imported after the checks

    if out is None and eval_only is None:
        raise ConfigError("give --out RUN (the run folder to train in) or --eval-only RUN")
    if margin < 0:
        raise ConfigError(f"--margin must be ≥ 0 points, got {margin}")
    overrides = {k: v for k, v in {"epochs": epochs, "seed": seed, "paper_compat": paper_compat,
                                   "data_dir": None if data_dir is None else str(data_dir),
                                   "download": download or None, "device": device,
                                   "num_workers": num_workers}.items() if v is not None}
    for item in set_ or []:
        key, value = parse_override(item)
        overrides[key] = value
    from ..reproduce import ReproduceOptions, make_plan, plan_lines
    from ..reproduce import reproduce as run  # here, not at the top: --help stays torch-free

    opts = ReproduceOptions(
        entry=entry, out=out, eval_only=eval_only, cards_dir=cards_dir, overrides=overrides, n_examples=n_examples,
        version=version, attacks=[a for a in attacks.split(",") if a.strip()] if attacks else None, pgd_steps=pgd,
        n_iter=n_iter, n_restarts=n_restarts, n_queries=n_queries, attack_seed=attack_seed, chunk_size=chunk_size,
        margin=margin, by=by, force=force)
    if dry_run:
        for line in plan_lines(make_plan(opts)):
            console.print(line, highlight=False, markup=False, soft_wrap=True)
        return
    resume_hint(same_command(drop=("--fresh", "--force")))
    display = _EvalDisplay()
    try:
        report = run(opts, log=lambda line: console.print(line, highlight=False, markup=False),
                     eval_progress=display)
    finally:
        display.close()
    if report is None:  # a non-zero rank of torchrun
        return
    from ..reproduction import REPORT_JSON, REPORT_MD, report_markdown

    where = Path(report["training"]["run_dir"]) if report["training"] else Path(report["eval"]["results"]).parent
    console.print(report_markdown(report), highlight=False, markup=False, soft_wrap=True)
    console.print(f"report: {where / REPORT_JSON} and {where / REPORT_MD}", highlight=False, markup=False)
