"""`rbzoo reproduce`: train a zoo entry with the config its card names, evaluate it, judge it.

Three phases, each resumable by running the same command again:

1. **train** — :func:`rbzoo.train.train` in the run folder (resumed from its last completed
   epoch; skipped when the run already has every epoch, or with `eval_only`);
2. **evaluate** — :func:`rbzoo.evaluate.run_eval` on the run's `best.safetensors`: clean accuracy,
   then the card's attack (AutoAttack standard at the card's ε) unless a cheaper one is asked for;
   its saved chunks resume an interrupted attack; the results go to `reproduction.eval.json`;
3. **report** — `reproduction.json` and `reproduction.md` beside them (:mod:`rbzoo.reproduction`).

The run folder owns `reproduction.*` as it owns `metrics.jsonl`: the report is rewritten whenever
the command completes. Results of another evaluation (another model or attack) are never replaced
without `force`, which also starts the training over. Under torchrun every rank trains and attacks;
rank 0 writes.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from ._io import canonical_json, check_output, file_sha256, write_json, write_text
from .cards import Card, load_card
from .checkpoint import read
from .config import PAPER_COMPAT_DIFFERENCES, RUNTIME_FIELDS, TrainConfig, load_config
from .constants import cards_dir as default_cards_dir
from .data import default_data_dir, get_spec
from .errors import ConfigError
from .evaluate import EvalConfig, run_eval
from .reproduction import (DEFAULT_MARGIN, EVAL_JSON, REPORT_JSON, REPORT_KEY, REPORT_MD, REPORT_VERSION,
                           attack_match, judge, report_markdown, sampling_note)
from .resolve import resolve_checkpoint
from .robust import make_attack_spec
from .train import BEST_FILE, CONFIG_FILE, read_state, train

OWN_FILES = (REPORT_JSON, REPORT_MD, EVAL_JSON)


@dataclass
class ReproduceOptions:
    """Everything `rbzoo reproduce` can be told; defaults match the CLI's."""

    entry: str  # a zoo name (a card in the cards folder) or a card file (.md)
    out: str | os.PathLike | None = None  # the run folder (training) or where eval-only writes
    eval_only: str | os.PathLike | None = None  # a run folder or checkpoint made another way
    cards_dir: str | os.PathLike | None = None
    overrides: dict = field(default_factory=dict)  # config fields (dotted keys), runtime ones included
    n_examples: int | None = None  # evaluate the first N test images (default: all)
    version: str | None = None  # AutoAttack version; default: the card's
    attacks: list[str] | None = None
    pgd_steps: int | None = None  # a quick PGD instead of AutoAttack (an upper bound)
    n_iter: int | None = None
    n_restarts: int | None = None
    n_queries: int | None = None
    attack_seed: int = 0
    chunk_size: int = 500
    batch_size: int = 256
    margin: float = DEFAULT_MARGIN
    by: str | None = None  # who reproduced it (shown on a card that carries the report)
    force: bool = False


@dataclass
class Plan:
    """What a reproduction will do, resolved and checked before anything runs."""

    card: Card
    card_path: Path
    entry_config: TrainConfig  # the config the card names, unmodified
    config: TrainConfig | None  # what is trained (None: eval-only)
    model: Path | None  # eval-only: the checkpoint
    run_meta: dict | None  # the training config's metadata (from the config, or the checkpoint)
    deviations: list[dict]
    out_dir: Path  # the run folder: training, evaluation results and report
    eval: EvalConfig
    attack: dict  # the resolved attack (results' `attack`)
    attack_matches: bool
    attack_why: str


def find_entry(entry: str, cards_dir=None) -> tuple[Path, Card]:
    """The card of a zoo name, or a card file."""
    path = Path(entry)
    if not (entry.endswith(".md") or path.is_file()):
        path = default_cards_dir(cards_dir) / f"{entry}.md"
        if not path.is_file():
            raise ConfigError(f"{entry!r} is not a zoo entry (no card {path}; see `rbzoo pull --list`)")
    return path, load_card(path)


def differences(entry: dict, run: dict) -> list[dict]:
    """Training settings (metadata keys, nested ones dotted) where `run` departs from `entry`."""
    out = []

    def walk(a, b, prefix):
        for key in sorted(set(a) | set(b)):
            x, y = a.get(key), b.get(key)
            if isinstance(x, dict) and isinstance(y, dict):
                walk(x, y, f"{prefix}{key}.")
            elif x != y and not (isinstance(x, float) and isinstance(y, float) and abs(x - y) <= 1e-12 * max(1, abs(x))):
                out.append({"key": prefix + key, "entry": x, "run": y})

    walk(entry, run, "")
    return out


def config_digest(meta: dict) -> str:
    import hashlib

    return hashlib.sha256(canonical_json(meta).encode()).hexdigest()


def make_plan(opts: ReproduceOptions) -> Plan:
    """Resolve the entry, its config with the overrides, the attack and the paths; no work, no writes."""
    card_path, card = find_entry(opts.entry, opts.cards_dir)
    if not card.config:
        raise ConfigError(f"{card_path}: the card names no config (rbzoo.config), so rbzoo cannot train it")
    entry_cfg = load_config(card.config)
    if entry_cfg.dataset != card.dataset or entry_cfg.arch != card.rb["arch"]["id"]:
        raise ConfigError(f"{card_path}: config {card.config} trains {entry_cfg.arch} on {entry_cfg.dataset}, "
                          f"the card describes {card.rb['arch']['id']} on {card.dataset}")
    runtime = {k: v for k, v in opts.overrides.items() if k in RUNTIME_FIELDS}
    model = None
    if opts.eval_only is not None:
        trained = {k for k in opts.overrides if k not in RUNTIME_FIELDS}
        if trained:
            raise ConfigError(f"--eval-only evaluates a finished run: training settings ({', '.join(sorted(trained))}) "
                              f"do not apply")
        model = resolve_checkpoint(str(opts.eval_only))
        ck = read(model)
        recorded = ck.meta_json("rbzoo.train")
        cfg, run_meta = None, recorded if isinstance(recorded, dict) else None
        out_dir = Path(opts.out) if opts.out is not None else model.parent
    else:
        if opts.out is None:
            raise ConfigError("give --out RUN, the run folder to train in (or --eval-only RUN for a finished run)")
        cfg = load_config(card.config, opts.overrides)
        run_meta, out_dir = cfg.metadata(), Path(opts.out)
    deviations = differences(entry_cfg.metadata(), run_meta) if run_meta is not None else []
    ev = _eval_config(card, opts, runtime, out_dir)
    spec = get_spec(card.dataset)
    attack = make_attack_spec(norm=ev.norm, eps=ev.eps, version=ev.version, attacks=ev.attacks, seed=ev.seed,
                              chunk_size=ev.chunk_size, n_iter=ev.n_iter, n_restarts=ev.n_restarts,
                              n_queries=ev.n_queries, pgd_steps=ev.pgd_steps,
                              input_numel=spec.numel).as_dict()
    matches, why = attack_match(card.robust_args, attack)
    return Plan(card, card_path, entry_cfg, cfg, model, run_meta, deviations, out_dir, ev, attack, matches, why)


def _eval_config(card: Card, opts: ReproduceOptions, runtime: dict, out_dir: Path) -> EvalConfig:
    args = card.robust_args or {"norm": "Linf", "eps": card.rb["eps"], "version": "standard"}
    version = opts.version or (args["version"] if args["version"] != "pgd" else "standard")
    card_pgd = (args.get("steps") or 10) if args["version"] == "pgd" else None  # PGD claims: the card's steps
    pgd_steps = opts.pgd_steps if opts.pgd_steps is not None else (None if opts.version else card_pgd)
    return EvalConfig(
        model="", dataset=card.dataset, data_dir=runtime.get("data_dir"), download=bool(runtime.get("download", False)),
        n_examples=opts.n_examples, batch_size=opts.batch_size, device=runtime.get("device", "auto"),
        num_workers=runtime.get("num_workers") or 0, norm=args["norm"], eps=args["eps"], version=version,
        attacks=opts.attacks, pgd_steps=pgd_steps, seed=opts.attack_seed, chunk_size=opts.chunk_size,
        n_iter=opts.n_iter, n_restarts=opts.n_restarts, n_queries=opts.n_queries, out=out_dir / EVAL_JSON)


def data_needed(dataset: str, data_dir, download: bool) -> str:
    """Where the data must be, and whether it is there."""
    spec = get_spec(dataset)
    if dataset == "digits":
        return "digits: bundled with scikit-learn (nothing to download)"
    where = Path(data_dir) if data_dir else default_data_dir()
    folder = where / spec.folder
    if folder.exists():
        return f"{dataset}: {folder} (found)"
    how = ("`rbzoo data imagenet100 --imagenet ROOT --out DATA`, then --data-dir DATA" if dataset == "imagenet100"
           else "downloaded (--download)" if download else "add --download, or --data-dir DIR holding it")
    return f"{dataset}: {folder} (missing: {how})"


def plan_lines(plan: Plan) -> list[str]:
    """The plan as `--dry-run` prints it."""
    card, cfg = plan.card, plan.config
    a = plan.attack
    claimed = card.rb["claimed"]
    lines = [f"entry       {card.name} ({plan.card_path}): {card.rb['arch']['id']} on {card.dataset}, "
             f"paper clean {claimed['clean_acc']:.2f} %"
             + (f", robust {claimed['robust_acc']:.2f} %" if claimed["robust_acc"] is not None else "")]
    if cfg is not None:
        att = cfg.attack
        lines += [f"config      {card.config}" + (f" with {', '.join(d['key'] + '=' + json.dumps(d['run']) for d in plan.deviations)}"
                                                  if plan.deviations else " (unmodified)"),
                  f"train       {cfg.epochs} epochs, objective {cfg.objective} (eps {att.eps:.6g}, step {att.alpha:.6g}, "
                  f"{att.steps} steps), keep {cfg.keep:g}, p {cfg.p:g}, seed {cfg.seed}, "
                  f"{'--paper-compat' if cfg.paper_compat else 'rbzoo defaults (not --paper-compat)'} → {plan.out_dir}"]
    else:
        lines.append(f"model       {plan.model} (eval only; training config "
                     f"{'recorded' if plan.run_meta is not None else 'not recorded'}"
                     + (f", departs in {', '.join(d['key'] for d in plan.deviations)}" if plan.deviations else "") + ")")
    what = (f"PGD-{a['steps']} (step {a['alpha']:.6g})" if a["version"] == "pgd"
            else f"AutoAttack {a['version']} ({', '.join(a['attacks'])})")
    extra = ", ".join(f"{k}={a[k]}" for k in ("n_iter", "n_restarts", "n_queries") if k in a)
    n = plan.eval.n_examples
    lines += [f"evaluate    clean accuracy, then {what}{' ' + extra if extra else ''}, {a['norm']} eps={a['eps']:.6g}, "
              f"seed {a['seed']}, on {'the whole test split' if n is None else f'the first {n} test images'}",
              f"attack      {'matches the card' if plan.attack_matches else 'NOT the card’s: robust accuracy is an upper bound'}"
              f" ({plan.attack_why})",
              f"data        {data_needed(card.dataset, plan.eval.data_dir, plan.eval.download)}",
              f"report      {plan.out_dir / REPORT_JSON}, {plan.out_dir / REPORT_MD}"]
    return lines


# ------------------------------------------------------------------------------------------ phases

def _train_phase(plan: Plan, opts: ReproduceOptions, log, progress) -> None:
    cfg, out = plan.config, plan.out_dir
    started = (out / CONFIG_FILE).is_file()
    if started and not opts.force:
        stored = load_config(str(out / CONFIG_FILE))
        diff = differences(stored.metadata(), cfg.metadata())
        if diff:
            d = diff[0]
            raise ConfigError(f"{out} holds a run of another config ({d['key']}: {json.dumps(d['run'])} now, "
                              f"{json.dumps(d['entry'])} in the run{' and more' if len(diff) > 1 else ''}); rerun the "
                              f"command that started it, or pass --force to start over")
        state = read_state(out)
        if state is not None and state["epoch"] >= cfg.epochs:
            log(f"training: all {cfg.epochs} epochs done in {out}")
            return
    elif not started and out.is_dir() and any(out.iterdir()) and not opts.force:
        raise ConfigError(f"{out} exists, is not empty and holds no rbzoo run; choose another --out or pass --force")
    if opts.force and os.environ.get("RANK", "0") == "0":
        for name in OWN_FILES:  # they describe the run being replaced
            (out / name).unlink(missing_ok=True)
    train(cfg, out, resume=started and not opts.force, force=opts.force, progress=progress, log=log)


def _same_evaluation(prev: dict, model_digest: str, attack: dict, n_examples: int | None) -> str | None:
    """None when `prev` (results JSON) is this evaluation; else what differs."""
    if prev.get("model_digest") != model_digest:
        return "another model"
    if prev.get("attack") != attack:
        return "another attack"
    if prev.get("n_examples") != (n_examples if n_examples is not None else prev.get("split_size")):
        return "another number of test images"
    return None


def _eval_phase(plan: Plan, model: Path, opts: ReproduceOptions, progress) -> dict | None:
    out = plan.out_dir / EVAL_JSON
    if out.is_file():
        try:
            prev = json.loads(out.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            prev = {}
        why = _same_evaluation(prev, read(model).digest, plan.attack, plan.eval.n_examples)
        if why is None:
            return prev
        if not opts.force:
            raise ConfigError(f"{out} holds the results of {why}; pass --force to replace them, or evaluate "
                              f"into another folder with --eval-only {model} --out DIR")
    return run_eval(replace(plan.eval, model=str(model), force=out.exists()), progress=progress)


def _training_summary(plan: Plan) -> dict | None:
    if plan.config is None:
        return None
    state = read_state(plan.out_dir) or {}
    history = state.get("history") or []
    return {"run_dir": str(plan.out_dir), "epochs": plan.config.epochs, "epochs_done": len(history),
            "best_epoch": (state.get("best") or {}).get("epoch"),
            "wall_s": round(history[-1]["elapsed_s"], 1) if history else None}


def build_report(plan: Plan, results: dict, results_path: Path, opts: ReproduceOptions,
                 training: dict | None) -> dict:
    """The report (rbzoo.reproduction documents the verdicts) from a plan and its results JSON."""
    card = plan.card
    claimed = card.rb["claimed"]
    a = results["attack"]
    clean = judge(claimed["clean_acc"], results["clean_correct"], results["n_examples"], margin=opts.margin)
    robust = None
    if results.get("robust_correct") is not None:
        robust = judge(claimed["robust_acc"], results["robust_correct"], results["n_examples"], margin=opts.margin,
                       attack_matches=plan.attack_matches)
    run_text = None
    if a is not None:
        run_text = (f"PGD-{a['steps']}" if a["version"] == "pgd" else f"AutoAttack {a['version']}") + \
                   f", {a['norm']}, ε = {a['eps']:.6g}" + ("" if plan.attack_matches else ", upper bound")
    compat = plan.run_meta.get("paper_compat") if plan.run_meta else None
    differs = [] if compat else [{"setting": s, "rbzoo": ours, "official": theirs}
                                 for s, ours, theirs in PAPER_COMPAT_DIFFERENCES
                                 if (plan.run_meta or {}).get("objective") == "trades" or "TRADES" not in s]
    meta = plan.run_meta
    return {
        REPORT_KEY: REPORT_VERSION,
        "entry": card.name,
        "dataset": card.dataset,
        "arch": card.rb["arch"]["id"],
        "card": {"path": str(plan.card_path), "sha256": file_sha256(plan.card_path)[0], "config": card.config,
                 "kind": card.kind},
        "config": {"name": (meta or {}).get("name") or card.config,
                   "digest": config_digest(meta) if meta is not None else "unknown",
                   "source": "run config" if plan.config is not None else ("checkpoint" if meta else None)},
        "deviations": plan.deviations,
        "paper_compat": {"enabled": compat, "differs": differs if compat is not None else []},
        "model": {"path": results["model"]["path"], "digest": results["model_digest"],
                  "file_sha256": results["model"]["file_sha256"]},
        "seeds": {"train": (meta or {}).get("seed"), "attack": a["seed"] if a else None,
                  "subset": results["subset"]["seed"]},
        "attack": {"card": card.robust_args, "run": a, "run_text": run_text, "matches": plan.attack_matches,
                   "why": plan.attack_why},
        "margin": opts.margin,
        "clean": clean,
        "robust": robust,
        "sampling": sampling_note(results["n_examples"], clean["ours"])
                    + ("" if results["n_examples"] == results["split_size"] else
                       f" (the first {results['n_examples']:,} of {results['split_size']:,}: a sample)"),
        "training": training,
        "eval": {"results": str(results_path), "results_sha256": file_sha256(results_path)[0],
                 "wall_s": results.get("wall_s")},
        "versions": results["versions"],
        "hardware": {"device": results["device"], "platform": platform.platform(), "cpu_count": os.cpu_count(),
                     "world_size": results["world_size"]},
        "by": opts.by,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def reproduce(opts: ReproduceOptions, *, log: Callable[[str], None] | None = None, train_progress: bool | None = None,
              eval_progress=None) -> dict | None:
    """Train (unless eval-only), evaluate and judge; returns the report (None on the non-zero ranks)."""
    log = log or (lambda line: print(line, flush=True))
    plan = make_plan(opts)
    if plan.config is not None:
        _train_phase(plan, opts, log, train_progress)
        model = plan.out_dir / BEST_FILE
    else:
        model = plan.model
    json_path, md_path = plan.out_dir / REPORT_JSON, plan.out_dir / REPORT_MD
    for p in (json_path, md_path):  # never over the evaluated model, nor over a folder
        check_output(p, inputs=(model,), force=True)
    results = _eval_phase(plan, model, opts, eval_progress)
    if results is None:
        return None
    report = build_report(plan, results, plan.out_dir / EVAL_JSON, opts, _training_summary(plan))
    write_json(json_path, report)
    write_text(md_path, report_markdown(report))
    return report


__all__ = ["OWN_FILES", "Plan", "ReproduceOptions", "build_report", "data_needed", "differences", "find_entry",
           "make_plan", "plan_lines", "reproduce"]
