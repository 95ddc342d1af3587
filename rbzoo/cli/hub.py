"""`rbzoo push` and `rbzoo pull`: the zoo on the Hugging Face Hub (see rbzoo.hub)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich import box
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from ..constants import NUMERICS_PROFILES
from ..errors import ConfigError
from ..labels import attack_label, pct
from . import _check, app, console

_ENDPOINT = typer.Option("--endpoint", help="Hub URL (default: $HF_ENDPOINT, else https://huggingface.co).")
_TOKEN = typer.Option("--token", help="Hub token (default: $HF_TOKEN, else `hf auth login`). Never printed.")
_CARDS = typer.Option("--cards-dir", help="The zoo's card folder (default: $RBZOO_CARDS, a checkout's cards/, "
                                          "else ~/.cache/rbzoo/cards).")
_DATA = typer.Option("--data-dir", help="Folder holding the test data (default: $RBZOO_DATA, else ./data).")


class _Bars:
    """Rich progress bars for evaluation, started on first use; silent when stdout is not a terminal."""

    def __init__(self) -> None:
        self._progress: Progress | None = None

    def __call__(self, description: str, total: int):
        if not console.is_terminal:
            return lambda n: None
        if self._progress is None:
            self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                      TimeRemainingColumn(), console=console, transient=True)
            self._progress.start()
        task = self._progress.add_task(description, total=total)
        return lambda n: self._progress.advance(task, n)

    def __enter__(self) -> "_Bars":
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()


def _robust_text(card) -> str:
    robust = card.rb["claimed"]["robust_acc"]
    if robust is None:
        return "— (not measured)"
    a = card.robust_args or {}
    return f"{pct(robust, of=100)} claimed ({attack_label(a)}, {a.get('norm')}, eps={a.get('eps'):.6g})"


@app.command()
def push(
    checkpoint: Annotated[str, typer.Argument(callback=_check.checkpoint, help="The checkpoint (.safetensors) to publish, "
                                              "or a run folder (its best, else last, checkpoint).")],
    repo_id: Annotated[Optional[str], typer.Argument(help="Hub repo id org/name (optional with --to).")] = None,
    results: Annotated[Optional[Path], typer.Option("--results", callback=_check.existing, help="`rbzoo eval` results JSON (default: "
                       "<stem>.results.json or results.json beside the checkpoint).")] = None,
    data_dir: Annotated[Optional[Path], _DATA] = None,
    revision: Annotated[Optional[str], typer.Option("--revision", help="Branch to commit to (created if needed).")] = None,
    private: Annotated[bool, typer.Option("--private", help="Create the repo as private.")] = False,
    create_pr: Annotated[bool, typer.Option("--create-pr", help="Open a pull request instead of committing.")] = False,
    endpoint: Annotated[Optional[str], _ENDPOINT] = None,
    token: Annotated[Optional[str], _TOKEN] = None,
    name: Annotated[Optional[str], typer.Option("--name", help="Zoo name (default: the repo's name; with --to, the "
                                                               "run folder's name, else the file's stem).")] = None,
    to: Annotated[Optional[Path], typer.Option("--to", help="Write the repo layout into this folder instead "
                                                             "(air-gapped exchange; no network).")] = None,
    cards_dir: Annotated[Optional[Path], _CARDS] = None,
    device: Annotated[str, typer.Option("--device", callback=_check.device, help="Device for --data-dir evaluation.")] = "cpu",
    force: Annotated[bool, typer.Option("--force", help="With --to: replace the files of an earlier push there.")] = False,
    reproduction: Annotated[Optional[Path], typer.Option("--reproduction", help="An `rbzoo reproduce` report of this "
                            "model (reproduction.json): published beside it; the card says who reproduced it.")] = None,
) -> None:
    """Publish a checkpoint, its card and results in ONE commit (or into a folder with --to).

    Needs a clean-accuracy result: results JSON from `rbzoo eval`, or --data-dir to compute it.
    With --data-dir and results, both must agree exactly. Prints the revision to pin and updates
    the zoo's local card.
    """
    from ..resolve import resolve_checkpoint

    checkpoint = resolve_checkpoint(checkpoint)  # a file or a run folder (checked before torch loads)
    from .. import hub  # here, not at the top: --help and --list stay torch-free

    with _Bars() as bars:
        r = hub.push(checkpoint, repo_id, results=results, data_dir=data_dir, revision=revision, private=private,
                     create_pr=create_pr, endpoint=endpoint, token=token, name=name, to=to, cards_dir=cards_dir,
                     device=device, progress=bars, force=force, reproduction=reproduction)
    exp = r.card.expected
    acc = f"clean {exp['clean_correct']}/{exp['n_examples']} ({pct(r.card.rb['claimed']['clean_acc'], of=100)})"
    if r.folder is not None:
        also = f", {hub.REPRODUCTION_FILE}" if reproduction is not None else ""
        console.print(f"wrote {r.card.name} to {r.folder}: {hub.CARD_FILE} (its card), {hub.CHECKPOINT_FILE}, "
                      f"{hub.RESULTS_FILE}{also} ({acc})", highlight=False)
        console.print(f"on the other machine: rbzoo pull {r.folder}", highlight=False)
        return
    console.print(f"pushed {r.card.name} to {r.repo_id} in one commit ({acc}): {r.commit_url}", highlight=False)
    if r.pr_url:
        console.print(f"pull request: {r.pr_url}", highlight=False)
    console.print(f"revision to pin: {r.pin}", highlight=False)
    console.print(f"zoo card: {r.local_card}", highlight=False)


@app.command()
def pull(
    spec: Annotated[Optional[str], typer.Argument(metavar="NAME|REPO_ID[@REV]|DIR",
                    help="A zoo name, a Hub repo id (optionally @branch, tag or commit), or a --to folder.")] = None,
    data_dir: Annotated[Optional[Path], _DATA] = None,
    no_verify: Annotated[bool, typer.Option("--no-verify", help="Skip re-evaluating the clean accuracy.")] = False,
    endpoint: Annotated[Optional[str], _ENDPOINT] = None,
    token: Annotated[Optional[str], _TOKEN] = None,
    list_zoo: Annotated[bool, typer.Option("--list", help="Show the zoo (every card) as a table.")] = False,
    cards_dir: Annotated[Optional[Path], _CARDS] = None,
    device: Annotated[str, typer.Option("--device", callback=_check.device, help="Device for the verification.")] = "cpu",
    source: Annotated[Optional[Path], typer.Option("--source", callback=_check.existing, help="Imported entries only: a local copy of the authors' official .pth file (instead of downloading it).")] = None,
    no_bn_check: Annotated[bool, typer.Option("--no-bn-check", help="Imported entries only: convert without checking the card's keep/p against the BN statistics (see docs/convert.md).")] = False,
    strict: Annotated[bool, typer.Option("--strict", help="Demand every predicted label to equal the reference "
                                         "(no near-tie tolerance; a count-only card fails).")] = False,
    numerics: Annotated[str, typer.Option("--numerics", callback=_check.names("--numerics", NUMERICS_PROFILES),
                                          help="Numerics profile of the re-evaluation: verify "
                                          "(float32, TF32 off), fast (TF32), bf16 (docs/numerics.md).")] = "verify",
    write_card: Annotated[bool, typer.Option("--write-card", help="Count-only cards: write the card with this "
                                             "machine's per-sample reference into the cards folder.")] = False,
    robust: Annotated[bool, typer.Option("--robust", help="Also check the robust claim: every published adversarial "
                                         "example is inside the threat model and misclassified (robust accuracy ≤ claim).")] = False,
    spot_check: Annotated[Optional[str], typer.Option("--spot-check", metavar="K|all", help="With --robust: re-attack K "
                          "random chunks (or all) with their recorded seeds and compare the robust flags.")] = None,
    results: Annotated[Optional[Path], typer.Option("--results", help="With --write-card, imported entries: an `rbzoo "
                       "eval` results file of this model (evidence beside it) whose robust claim the card then pins.")] = None,
    force: Annotated[bool, typer.Option("--force", help="With --write-card: replace an existing card.")] = False,
) -> None:
    """Download a zoo model and verify it: SHA-256, strict load, clean accuracy sample by sample.

    Says which of three it was: exact (every label equals the reference), verified within
    numerical tolerance (only near-ties differ, named), or count only (the card has no per-sample
    reference); anything else, or a number of the card that does not follow from its certificate
    and results, exits 3 and names the samples or the field. An imported entry converted from a
    --source FILE that no hash pins says "unpinned source", never verified. Works offline from the
    cache with HF_HUB_OFFLINE=1; a verified pull is recorded, so repeating it unchanged is instant.
    """
    if list_zoo:
        _print_zoo(cards_dir)
        return
    if spec is None:
        raise ConfigError("give NAME, REPO_ID[@REV] or DIR to pull, or --list to see the zoo")
    _check.pull_spec(spec, cards_dir)  # a typo is answered before torch loads
    spot = None
    if spot_check is not None:
        spot = "all" if spot_check == "all" else int(spot_check) if spot_check.isdigit() and int(spot_check) > 0 else None
        if spot is None:
            raise ConfigError(f"--spot-check takes a number of chunks >= 1 or 'all', got {spot_check!r}")
    from .. import zoo  # after --list: listing the zoo does not import torch

    with _Bars() as bars:
        r = zoo.pull(spec, data_dir=data_dir, verify=not no_verify, endpoint=endpoint, token=token, source=source,
                     cards_dir=cards_dir, device=device, progress=bars, bn_check=not no_bn_check, strict=strict,
                     numerics=numerics, write_card=write_card, force=force, robust=robust or spot is not None,
                     spot_check_chunks=spot, robust_results=results)
    _print_pull(spec, r)


_VERDICT = {"exact": "exact", "tolerance": "verified within numerical tolerance", "count only": "count only"}


def _print_pull(spec: str, r) -> None:
    card = r.card
    f32 = card.rb["float32_bytes"]
    acc = f"{r.clean_correct}/{r.n_examples} = {pct(r.clean_correct, of=r.n_examples)}"
    clean = {
        "verified": f"verified ({_VERDICT.get(r.verdict, r.verdict)}): {acc}",
        "cached": f"verified earlier ({_VERDICT.get(r.verdict, r.verdict)}): {acc} (registry)",
        "skipped": f"NOT verified (--no-verify); the card claims {pct(card.rb['claimed']['clean_acc'], of=100)}",
        "unpinned source": f"NOT verified: unpinned source ({_VERDICT.get(r.verdict, r.verdict)}): {acc}",
    }[r.status]
    table = Table(title=f"{card.name}", show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    table.add_row("model", f"{card.rb['arch']['id']} on {card.dataset}, k={card.rb['keep']:g}")
    table.add_row("source", r.label if r.repo_id else str(spec))
    table.add_row("file", str(r.path))
    table.add_row("size", f"{r.size:,} bytes ({f32 / r.size:,.0f}× smaller than float32), SHA-256 ok")
    table.add_row("clean accuracy", clean)
    robust = _robust_text(card)
    if r.robust:  # --robust: what was proved here, beside the claim
        robust += f"; proved here: ≤ {pct(r.robust['bound_correct'], of=r.robust['n'])}"
    table.add_row("robust accuracy", robust)
    console.print(table)
    if r.message:
        console.print(r.message, highlight=False, markup=False)
    if r.robust_message:
        console.print(r.robust_message, highlight=False, markup=False)
    for note in r.notes:
        console.print(f"note: {note}", highlight=False, markup=False)
    if r.status == "skipped":
        console.print("clean accuracy was not verified (--no-verify)", highlight=False)
    if r.card_block is not None:
        _print_card_block(r)


def _print_card_block(r) -> None:
    import yaml

    block = {"model_digest": r.card_block["model_digest"], "expected": r.card_block["expected"]}
    console.print("this card has no per-sample reference; a maintainer would publish (rbzoo block):", highlight=False)
    console.print(yaml.safe_dump(block, sort_keys=False).rstrip(), highlight=False, markup=False)
    if r.written_card is not None:
        console.print(f"wrote {r.written_card} and its certificate beside it", highlight=False, markup=False)
    else:
        console.print("with its certificate: rerun with --write-card (this machine's certificate is kept, so the "
                      "next pull here is exact)", highlight=False)


_ZOO_COLUMNS = ("name", "dataset", "architecture", "k", "objective", "clean", "robust", "size", "Hub", "status")
_WIDE_ZOO = 140


def _print_zoo(cards_dir) -> None:
    from ..constants import cards_dir as default_cards_dir
    from ..verified import list_zoo

    entries = list_zoo(cards_dir)
    # Narrower than _WIDE_ZOO columns: the columns a name does not already say (rn34-cifar10-pgd), never a cut name.
    wide = console.width >= _WIDE_ZOO
    cols = _ZOO_COLUMNS if wide else ("name", "k", "clean", "robust", "size", "status")
    models = sum(e.card.kind != "reference" for e in entries)  # a reference entry publishes no model
    refs = len(entries) - models
    table = Table(title=f"rbzoo model zoo ({models} model{'' if models == 1 else 's'}"
                        f"{f', {refs} reference' if refs else ''})",
                  box=box.HEAVY_HEAD if wide else box.SIMPLE_HEAD, pad_edge=wide)
    for col in cols:
        table.add_column(col, justify="right" if col in ("k", "clean", "robust", "size") else "left",
                         no_wrap=col in ("name", "Hub", "clean", "robust", "size"))
    for e in entries:
        rb = e.card.rb
        hubref = f"{rb['repo_id']}@{rb['revision'][:12]}" if rb["revision"] else (rb["repo_id"] or "—")
        row = {"name": rb["name"], "dataset": rb["dataset"], "architecture": rb["arch"]["id"], "k": f"{rb['keep']:g}",
               "objective": rb["objective"] or "—", "clean": pct(rb["claimed"]["clean_acc"], of=100),
               "robust": pct(rb["claimed"]["robust_acc"], of=100),
               "size": f"{rb['checkpoint_bytes']:,}" if rb["checkpoint_bytes"] else "—", "Hub": hubref, "status": e.status}
        table.add_row(*(row[c] for c in cols))
    console.print(table)
    if entries and not wide:
        console.print(f"(dataset, architecture, objective and Hub repo: on a terminal of {_WIDE_ZOO}+ columns)",
                      highlight=False)
    if not entries:
        console.print(f"no cards in {default_cards_dir(cards_dir)}", highlight=False)
