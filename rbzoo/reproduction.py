"""The reproduction report: a zoo entry's published numbers beside a reproduction's, judged.

`rbzoo reproduce` (:mod:`rbzoo.reproduce`) writes it; `rbzoo push --reproduction` carries it to a
card; `rbzoo plot zoo` draws it. This module only knows the report: the verdict rule, the JSON
layout, its markdown table and the summary a card keeps; it reads reports and writes nothing.

The verdict of one number (accuracies in percent; [lo, hi] is the 95 % Wilson interval of the
reproduction's k correct out of n test images, which covers test-set sampling only):

- *reproduced*: lo − margin ≤ paper ≤ hi + margin;
- *below*: the reproduction is lower (paper > hi + margin);
- *above*: the reproduction is higher (paper < lo − margin).

The margin (default 1 point) stands for what the interval leaves out: seed-to-seed variation of
training and of the attack. A robust number measured with a cheaper attack than the card's is an
upper bound on the robust accuracy under the card's attack: it can still show *below* (a stronger
attack only lowers it further), otherwise it is *upper bound*, never *reproduced*.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

from .errors import ConfigError
from .exact import wilson_interval

REPORT_KEY = "rbzoo_reproduction"  # the format marker and version of the JSON
REPORT_VERSION = 1
REPORT_JSON, REPORT_MD, EVAL_JSON = "reproduction.json", "reproduction.md", "reproduction.eval.json"
DEFAULT_MARGIN = 1.0  # percentage points beyond the Wilson interval
VERDICTS = ("reproduced", "below", "above", "upper bound")
MAX_REPORT_BYTES = 4 << 20  # a report is a few kB (results' certificates are not copied into it)


def judge(paper: float | None, correct: int, n: int, *, margin: float = DEFAULT_MARGIN,
          attack_matches: bool = True) -> dict:
    """One row of the report: the paper's number (percent, or None), ours with its interval, the verdict."""
    if n < 1 or not 0 <= correct <= n:
        raise ValueError(f"{correct} correct out of {n} is not a count")
    if margin < 0 or not math.isfinite(margin):
        raise ConfigError(f"margin must be a finite number ≥ 0 (percentage points), got {margin}")
    lo, hi = (100.0 * v for v in wilson_interval(correct, n))
    eps = 1e-9  # the paper's two decimals compared with floats
    verdict = None
    if paper is not None:
        if paper > hi + margin + eps:
            verdict = "below"
        elif not attack_matches:
            verdict = "upper bound"
        elif paper < lo - margin - eps:
            verdict = "above"
        else:
            verdict = "reproduced"
    return {"paper": paper, "ours": 100.0 * correct / n, "correct": correct, "n": n, "wilson95": [lo, hi],
            "margin": margin, "verdict": verdict, "upper_bound": not attack_matches}


def attack_match(card_args: dict | None, attack: dict | None) -> tuple[bool, str]:
    """Whether the evaluation's attack (results' `attack`) is the card's (`model-index` args), and why not."""
    if not card_args:
        return False, "the card publishes no robust accuracy"
    if not attack:
        return False, "no attack was run"
    kind = (f"PGD-{card_args['steps']}" if card_args.get("steps") else "PGD") if card_args["version"] == "pgd" \
        else f"AutoAttack {card_args['version']}"
    want = f"{kind} ({card_args['norm']}, eps={card_args['eps']:.6g})"
    if attack["norm"] != card_args["norm"] or abs(attack["eps"] - card_args["eps"]) > 1e-6 * max(1.0, card_args["eps"]):
        return False, f"{attack['norm']} eps={attack['eps']:.6g}, the card's is {want}"
    if attack["version"] != card_args["version"]:
        what = "PGD" if attack["version"] == "pgd" else f"AutoAttack {attack['version']} ({', '.join(attack['attacks'])})"
        return False, f"{what} instead of the card's {want}"
    if attack["version"] == "pgd" and card_args.get("steps") is not None and attack["steps"] != card_args["steps"]:
        return False, f"PGD-{attack['steps']} instead of the card's PGD-{card_args['steps']}"
    changed = [f"{k}={attack[k]}" for k in ("n_iter", "n_restarts", "n_queries") if attack.get(k) is not None]
    if changed:
        return False, f"{attack['version']} with {', '.join(changed)}, fewer or other iterations than the card's"
    return True, f"the card's attack: {want}"


def sampling_note(n: int, pct: float) -> str:
    """What a test set of n images can resolve at this accuracy (half the Wilson interval)."""
    lo, hi = wilson_interval(round(pct * n / 100), n)
    return (f"n = {n:,} test images: a 95 % Wilson interval is about ±{50 * (hi - lo):.1f} points at "
            f"{pct:.1f} %; smaller differences cannot be told from test-set sampling")


def report_markdown(r: dict) -> str:
    """The short markdown table of a report (what reproduction.md holds)."""
    rows = [("clean accuracy", r["clean"])]
    if r["robust"] is not None:
        rows.append((f"robust accuracy ({r['attack']['run_text']})", r["robust"]))
    lines = [f"# Reproduction of {r['entry']}", "",
             "| | paper | this run | 95 % Wilson interval | verdict |", "|---|---|---|---|---|"]
    for label, j in rows:
        paper = "—" if j["paper"] is None else f"{j['paper']:.2f} %"
        lo, hi = j["wilson95"]
        lines.append(f"| {label} | {paper} | {j['ours']:.2f} % ({j['correct']:,} / {j['n']:,}) | "
                     f"[{lo:.2f}, {hi:.2f}] | {j['verdict'] or '—'} |")
    lines += ["", f"Verdicts: *reproduced* when the paper's number lies in the interval widened by "
                  f"±{r['margin']:g} point{'' if r['margin'] == 1 else 's'} (training and attack seeds), else *below* or *above*. "
                  f"{r['sampling']}."]
    if r["robust"] is not None and not r["attack"]["matches"]:
        lines.append(f"Robust accuracy: {r['attack']['why']}; a cheaper attack gives an upper bound, "
                     f"so it is never called reproduced.")
    if r["deviations"]:
        lines.append("This run departs from the entry's config: " + ", ".join(
            f"{d['key']} {d['run']} (entry: {d['entry']})" for d in r["deviations"]) + ".")
    pc = r["paper_compat"]
    lines.append(("Trained with `--paper-compat` (the official code's quirks)." if pc["enabled"] else
                  "Trained with rbzoo's defaults, which differ from the official code in: "
                  + "; ".join(d["setting"] for d in pc["differs"]) + " (`--paper-compat` reproduces them).")
                 if pc["enabled"] is not None else "Training settings unknown (the checkpoint records no config).")
    lines += ["", f"config `{r['config']['name']}` (digest `{r['config']['digest'][:16]}…`), model digest "
                  f"`{r['model']['digest'][:16]}…`, seeds: training {r['seeds']['train']}, attack {r['seeds']['attack']}; "
                  f"rbzoo {r['versions'].get('rbzoo')}, torch {r['versions'].get('torch')}, "
                  f"pyautoattack {r['versions'].get('pyautoattack')}; {r['hardware']['device']}."]
    return "\n".join(lines) + "\n"


def read_report(path: str | Path) -> dict:
    """A reproduction report (JSON), checked for the fields its readers use; ConfigError otherwise."""
    return _parse_report(_read_bytes(Path(path)), Path(path))


def _read_bytes(path: Path) -> bytes:
    try:
        if path.stat().st_size > MAX_REPORT_BYTES:
            raise ConfigError(f"{path}: larger than {MAX_REPORT_BYTES >> 20} MiB, not a reproduction report")
        return path.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read reproduction report {path}: {e.strerror or e}") from None


def _parse_report(data: bytes, path: Path) -> dict:
    try:
        r = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: not a reproduction report (invalid JSON: {e})") from None
    if not isinstance(r, dict) or r.get(REPORT_KEY) != REPORT_VERSION:
        raise ConfigError(f"{path}: not a reproduction report (no {REPORT_KEY}: {REPORT_VERSION})")
    def well_formed() -> bool:  # a check, not `assert`: `python -O` would drop those
        for key in ("clean", "robust"):
            j = r[key]
            if (key == "clean" or j is not None) and not (
                    isinstance(j["ours"], (int, float)) and isinstance(j["n"], int) and len(j["wilson95"]) == 2
                    and j["verdict"] in VERDICTS + (None,)):
                return False
        return isinstance(r["entry"], str) and isinstance(r["model"]["digest"], str)

    try:
        ok = well_formed()
    except (KeyError, TypeError):
        ok = False
    if not ok:
        raise ConfigError(f"{path}: malformed reproduction report (clean, robust, entry or model digest)")
    return r


def for_card(path: str | Path, model_digest: str) -> tuple[bytes, dict]:
    """(the report's bytes, the card's `rbzoo.reproduction`) for `rbzoo push --reproduction`: the
    report must be about the pushed model."""
    path = Path(path)
    data = _read_bytes(path)
    r = _parse_report(data, path)
    if r["model"]["digest"] != model_digest:
        raise ConfigError(f"{path} reports on another model (digest {r['model']['digest'][:12]}…), not on this "
                          f"checkpoint ({model_digest[:12]}…)")
    return data, card_summary(r, hashlib.sha256(data).hexdigest())


def card_summary(r: dict, report_sha256: str) -> dict:
    """What a card's `rbzoo.reproduction` keeps of a report (the report itself travels beside it)."""

    def row(j):
        return None if j is None else {"acc": round(j["ours"], 2), "wilson95": [round(v, 2) for v in j["wilson95"]],
                                       "n": j["n"], "verdict": j["verdict"]}

    return {"by": r.get("by") or "unknown", "entry": r["entry"], "created": r["created"],
            "hardware": r["hardware"]["device"], "report_sha256": report_sha256, "margin": r["margin"],
            "clean": row(r["clean"]), "robust": row(r["robust"]),
            "attack": r["attack"]["run_text"] if r["robust"] is not None else None,
            "modified": [d["key"] for d in r["deviations"]]}
