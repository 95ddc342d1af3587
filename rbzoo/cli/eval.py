"""`rbzoo eval`: exact clean accuracy, then AutoAttack (resumable, shardable) or a quick PGD check."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from ..constants import AA_VERSIONS, NORMS, NUMERICS_PROFILES, SUBSETS
from ..data import DATASETS
from ..labels import pct
from . import _check, app, console, resume_hint, same_command


class _Display:
    """Progress of `run_eval`: rich bars with ETA on a terminal; otherwise (piped, logged) one plain
    line per chunk and per attack, so a long AutoAttack run shows it is alive."""

    def __init__(self) -> None:
        self.plain = not console.is_terminal
        self.progress = Progress(TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                 console=console, disable=self.plain, transient=False)
        self.tasks: dict[str, int] = {}
        self.t0 = time.perf_counter()
        self.resumed = 0  # point-attacks saved by an earlier session: not part of this session's rate

    def __call__(self, stage: str, done: int, total: int, info=None) -> None:
        if self.plain:
            self._line(stage, done, total, info)
            return
        key = "clean" if stage == "clean" else "attack"
        label = "clean accuracy" if key == "clean" else f"attack: {stage}"
        if key not in self.tasks:
            self.tasks[key] = self.progress.add_task(label, total=total)
        self.progress.update(self.tasks[key], completed=done, total=total, description=label)

    def _line(self, stage: str, done: int, total: int, info) -> None:
        elapsed = time.perf_counter() - self.t0
        if info is None:  # the clean pass reports every batch: one line when it is over
            if done == total:
                console.print(f"{stage}: {done}/{total} examples ({elapsed:.1f} s)", highlight=False, markup=False)
            return
        where = f"chunk {info.chunk + 1}/{info.n_chunks}"
        if info.attack is None:
            self.resumed += len(info.done) * info.size
            saved = f", resumed after {', '.join(info.done)}" if info.done else ""
            what = "still robust" if info.done else "clean-correct to attack"
            console.print(f"{where}: {info.size} points, {info.robust} {what}{saved}", highlight=False, markup=False)
            return
        rate = (done - self.resumed) / max(elapsed, 1e-9)
        eta = f", ETA {(total - done) / rate:.0f} s" if rate > 0 and done < total else ""
        console.print(f"{where} {info.attack}: {info.robust}/{info.size} still robust ({info.wall_s:.1f} s); "
                      f"{done}/{total} point-attacks done{eta}", highlight=False, markup=False)


def _ci(ci: list[float] | None) -> str:
    return "" if not ci else f"[{100 * ci[0]:.2f}, {100 * ci[1]:.2f}]"


def _summary(r: dict, out: Optional[Path]) -> None:
    n = r["n_examples"]
    a = r["attack"]
    title = f"{r['model']['arch']} on {r['dataset']}/{r['split']}: {n} examples"
    if a:
        title += f", {a['norm']} eps={a['eps']:.6g}, {a['version']}"
    table = Table(title=title)
    for col, justify in (("", "left"), ("correct", "right"), ("accuracy", "right"), ("Wilson 95%", "right")):
        table.add_column(col, justify=justify)
    w = r["wilson95"] or {}
    table.add_row("clean", f"{r['clean_correct']}/{n}", pct(r["clean_acc"]), _ci(w.get("clean")))
    for attack, acc in r["robust_acc_after"].items():
        table.add_row(f"after {attack}", f"{r['robust_correct_after'][attack]}/{n}", pct(acc), "")
    if r["robust_acc"] is not None:
        table.add_row("robust", f"{r['robust_correct']}/{n}", pct(r["robust_acc"]), _ci(w.get("robust")), style="bold")
    console.print(table)
    console.print(f"predictions sha256 {r['predictions_sha256']}\ndata sha256        {r['data_sha256']}\n"
                  f"model digest       {r['model_digest']}", highlight=False)
    for message in r["warnings"]:
        console.print(f"[yellow]warning:[/] {message}", highlight=False)
    ev = r.get("evidence")
    if ev:
        per = f", {ev['bytes'] / ev['n']:.0f} bytes per break" if ev["n"] else ""
        console.print(f"evidence: {ev['n']} adversarial examples in {ev['file']} ({ev['bytes']:,} bytes{per}), "
                      f"sha256 {ev['sha256']}", highlight=False)
    where = f"; results in {out}" if out else ""
    state = f"; state in {r['state_dir']}" if r.get("state_dir") else ""
    console.print(f"{r['wall_s']:.1f} s on {r['device']}{where}{state}", highlight=False)


@app.command("eval")
def eval_cmd(
    model: Annotated[str, typer.Argument(callback=_check.model, help="A checkpoint file, a run folder (best/last.safetensors), "
                                         "a zoo name (`rbzoo pull --list`), a Hub repo id org/name[@rev], or a folder "
                                         "written by `rbzoo push --to`.")],
    dataset: Annotated[Optional[str], typer.Option(callback=_check.names("--dataset", tuple(DATASETS)),
                                                   help="Dataset (default: the one recorded in the checkpoint).")] = None,
    split: Annotated[str, typer.Option(callback=_check.names("--split", ("train", "test")), help="train or test.")] = "test",
    data_dir: Annotated[Optional[Path], typer.Option("--data-dir", help="Data folder (default $RBZOO_DATA or ./data).")] = None,
    download: Annotated[bool, typer.Option("--download", help="Download the dataset if missing.")] = False,
    n_examples: Annotated[Optional[int], typer.Option("--n-examples", min=1, help="Evaluate N examples (default: the whole split).")] = None,
    subset: Annotated[str, typer.Option(callback=_check.names("--subset", SUBSETS), help="Which N: 'first' or a seeded 'random' subset.")] = "first",
    subset_seed: Annotated[int, typer.Option("--subset-seed", help="Seed of the random subset.")] = 0,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Batch size of the clean pass.")] = 256,
    device: Annotated[str, typer.Option(callback=_check.device, help="cpu, cuda, cuda:N or auto.")] = "auto",
    workers: Annotated[int, typer.Option(min=0, help="Data-loader worker processes.")] = 0,
    clean_only: Annotated[bool, typer.Option("--clean-only", help="Only clean accuracy, no attack.")] = False,
    norm: Annotated[str, typer.Option(callback=_check.names("--norm", NORMS), help="Threat model: Linf (L∞) or L2, "
                                                                                "any case.")] = "Linf",
    eps: Annotated[Optional[str], typer.Option(callback=_check.eps, help="Radius, e.g. 8/255 or 0.0314 (default: the dataset's L∞ eps).")] = None,
    version: Annotated[str, typer.Option(callback=_check.names("--version", AA_VERSIONS), help="AutoAttack version: standard, plus, rand or custom.")] = "standard",
    attacks: Annotated[Optional[str], typer.Option(help="With --version custom: comma-separated, from apgd-ce, apgd-dlr, apgd-t, fab, fab-t, square.")] = None,
    pgd: Annotated[Optional[int], typer.Option("--pgd", metavar="STEPS", min=1, help="Quick check: L∞ PGD-STEPS (best iterate) instead of AutoAttack.")] = None,
    alpha: Annotated[Optional[str], typer.Option(callback=_check.eps, help="PGD step size (default eps/4).")] = None,
    seed: Annotated[int, typer.Option(help="Attack seed; chunk i uses a seed derived from (seed, i).")] = 0,
    chunk_size: Annotated[int, typer.Option("--chunk-size", min=1, help="Points per chunk: the unit of saving, sharding and attack batching.")] = 500,
    n_iter: Annotated[Optional[int], typer.Option("--n-iter", min=1, help="Override APGD/FAB iterations (default: the version's).")] = None,
    n_restarts: Annotated[Optional[int], typer.Option("--n-restarts", min=1, help="Override APGD/FAB/Square restarts.")] = None,
    n_queries: Annotated[Optional[int], typer.Option("--n-queries", min=1, help="Override Square queries.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Write the results JSON here (atomically).")] = None,
    state: Annotated[Optional[Path], typer.Option(help="Resume-state folder (default: $RBZOO_HOME/eval-state/<key of the "
                                                        "evaluation>: the same command resumes, with or without --out).")] = None,
    fresh: Annotated[bool, typer.Option("--fresh", help="Discard any saved state and start over.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing --out file.")] = False,
    numerics: Annotated[str, typer.Option("--numerics", callback=_check.names("--numerics", NUMERICS_PROFILES),
                                          help="Numerics of the clean pass and the attack: verify (float32, "
                                          "TF32 off; the reference), fast (TF32) or bf16; recorded in the results "
                                          "and the evidence.")] = "verify",
) -> None:
    """Exact clean accuracy and AutoAttack robust accuracy of a checkpoint (resumable; shard it with torchrun)."""
    if out is not None:  # before torch loads (the library checks again)
        _check.output(out, force=force, kind="--out", model=model)
    from ..evaluate import EvalConfig, run_eval  # here, not at the top: --help stays torch-free
    from ..zoo import resolve_remote

    config = EvalConfig(
        model=model, dataset=dataset, split=split, data_dir=data_dir, download=download, n_examples=n_examples,
        subset=subset, subset_seed=subset_seed, batch_size=batch_size, device=device, num_workers=workers,
        clean_only=clean_only, norm=norm, eps=eps, version=version,
        attacks=[a for a in attacks.split(",") if a.strip()] if attacks else None, pgd_steps=pgd, alpha=alpha,
        seed=seed, chunk_size=chunk_size, n_iter=n_iter, n_restarts=n_restarts, n_queries=n_queries,
        out=out, state=state, fresh=fresh, numerics=numerics, force=force,
    )
    if not clean_only:  # the attack saves each finished chunk: the same command continues from there
        resume_hint(same_command())
    display = _Display()
    with display.progress:
        results = run_eval(config, progress=display, remote=resolve_remote)
    if results is not None:  # None on the non-zero ranks of a sharded run
        _summary(results, out)
