"""The numbers behind `rbzoo plot` (method.md §4 and §7), kept apart from any drawing.

Every `*_data` function returns a plain, JSON-able dict: what the figure shows and what
`rbzoo plot --data` writes. The small helpers (per-channel counts, random placements, Jaccard,
Pareto front, …) are pure functions of numpy arrays so they can be tested on their own.

Random baselines place the *same number* of kept weights uniformly at random in the layer
(method.md §7, `visualize/weight_mask.py`), from `numpy.random.default_rng(seed)`; the seed and the
number of trials are recorded in the output.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from ._io import MAX_RESULTS_BYTES, file_sha256, read_bounded
from .cards import split_front_matter
from .checkpoint import Checkpoint, LayerRecord, read
from .errors import CheckpointError, ConfigError, DataError
from .labels import attack_label, eps_label
from .layers import kept_count
from .pruning import allocate_keep
from .reproduction import REPORT_KEY, read_report

DEFAULT_PS = (0.0, 0.5, 1.0)
BAND = (5.0, 95.0)  # percentiles of the random-placement band

# --------------------------------------------------------------------------------------------
# Checkpoints


def as_checkpoint(ckpt: Checkpoint | str | os.PathLike) -> Checkpoint:
    """A verified :class:`Checkpoint`, reading `ckpt` if it is a path."""
    return ckpt if isinstance(ckpt, Checkpoint) else read(ckpt)


def short_name(key: str) -> str:
    """`layer1.0.conv1.weight` → `layer1.0.conv1` (how figures label layers)."""
    return key[: -len(".weight")] if key.endswith(".weight") else key


def layer_mask(rec: LayerRecord) -> np.ndarray:
    """The boolean mask of a prunable layer in its weight shape (Cout, Cin, kh, kw)."""
    return rec.mask.reshape(rec.shape)


def float32_bytes(ck: Checkpoint) -> int:
    """Bytes of the same network stored as dense float32 (prunable weights + BN/dense tensors)."""
    n = sum(rec.n for rec in ck.layers)
    return 4 * (n + sum(int(t.numel()) for t in ck.tensors.values()))


# --------------------------------------------------------------------------------------------
# layers: per-layer keep allocation (method.md §4)


def keep_allocation(ns: Sequence[int], keep: float, p: float) -> dict:
    """Per-layer kept fraction and kept count that `allocate_keep` gives for (keep, p)."""
    ks = allocate_keep(ns, keep, p)
    return {"keep": [float(k) for k in ks], "kept": [kept_count(n, k) for n, k in zip(ns, ks)]}


def parse_ps(text: str | Sequence[float] | None) -> list[float]:
    """`"0,0.5,1"` → [0.0, 0.5, 1.0]; every p must lie in [0, 1]."""
    if text is None:
        return list(DEFAULT_PS)
    items = text.split(",") if isinstance(text, str) else list(text)
    out = []
    for item in items:
        try:
            p = float(item)
        except (TypeError, ValueError):
            raise ConfigError(f"--p: {item!r} is not a number (give e.g. 0.0,0.5,1.0)") from None
        if not 0.0 <= p <= 1.0 or math.isnan(p):
            raise ConfigError(f"--p: {p} is outside [0, 1]")
        if p not in out:
            out.append(p)
    if not out:
        raise ConfigError("--p: give at least one value")
    return out


def layers_data(ckpt: Checkpoint | str | os.PathLike, ps: Sequence[float] | None = DEFAULT_PS) -> dict:
    """Realised per-layer keep ratios and kept counts, plus the allocation for each p in `ps`.

    keep and p come from the training config stored in `rbzoo.train`; without it keep is
    inferred as total kept / total n and only the overlays are drawn for the requested p values.
    """
    ck = as_checkpoint(ckpt)
    ps = parse_ps(ps)
    ns = [rec.n for rec in ck.layers]
    kept = [rec.kept for rec in ck.layers]
    total_n, total_kept = sum(ns), sum(kept)
    if not ck.layers or total_kept == 0:
        raise CheckpointError(f"{ck.path}: no kept weights to allocate")
    cfg = ck.meta_json("rbzoo.train")
    keep = p = None
    if isinstance(cfg, dict) and isinstance(cfg.get("keep"), (int, float)):
        keep = float(cfg["keep"])
        p = float(cfg["p"]) if isinstance(cfg.get("p"), (int, float)) else None
    source = "rbzoo.train" if keep is not None else "inferred"
    if keep is None:
        keep = total_kept / total_n
    if not 0.0 < keep <= 1.0:
        raise CheckpointError(f"{ck.path}: rbzoo.train keep {keep} is outside (0, 1]")
    overlay_ps = list(ps) + ([p] if p is not None and p not in ps else [])
    allocations = {repr(q): {"p": q, **keep_allocation(ns, keep, q)} for q in overlay_ps}
    matches = None
    if p is not None:
        matches = allocations[repr(p)]["kept"] == kept
    return {
        "kind": "layers",
        "checkpoint": str(ck.path),
        "arch": ck.arch.get("id"),
        "keep": keep,
        "p": p,
        "keep_source": source,
        "realised_matches_config": matches,
        "total": {"n": total_n, "kept": total_kept, "keep": total_kept / total_n},
        "layers": [
            {"name": short_name(rec.name), "shape": list(rec.shape), "n": rec.n, "kept": rec.kept, "keep": rec.kept / rec.n}
            for rec in ck.layers
        ],
        "allocations": allocations,
    }


# --------------------------------------------------------------------------------------------
# structure: channel and kernel statistics of one layer's mask (method.md §7)


def channel_counts(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Kept weights per output channel (Cout,) and per input channel (Cin,) of a 4-D mask."""
    m = np.asarray(mask, dtype=bool)
    if m.ndim != 4:
        raise ValueError(f"expected a (Cout, Cin, kh, kw) mask, got shape {m.shape}")
    return m.sum(axis=(1, 2, 3)).astype(np.int64), m.sum(axis=(0, 2, 3)).astype(np.int64)


def kernel_counts(mask: np.ndarray) -> np.ndarray:
    """Kept weights in each kh×kw kernel, shape (Cout, Cin)."""
    m = np.asarray(mask, dtype=bool)
    return m.sum(axis=(2, 3)).astype(np.int64)


def occupancy_histogram(mask: np.ndarray) -> np.ndarray:
    """How many kernels hold 0, 1, …, kh·kw kept weights; sums to Cout·Cin."""
    m = np.asarray(mask, dtype=bool)
    return np.bincount(kernel_counts(m).ravel(), minlength=m.shape[2] * m.shape[3] + 1)


def empty_channels(mask: np.ndarray) -> tuple[int, int]:
    """(empty output channels, empty input channels) of a 4-D mask."""
    out, inp = channel_counts(mask)
    return int((out == 0).sum()), int((inp == 0).sum())


def random_statistics(shape: Sequence[int], kept: int, trials: int, seed: int) -> dict[str, np.ndarray]:
    """Statistics of `trials` uniform random placements of `kept` weights in a layer of `shape`.

    Returns per trial: "out" and "in" (per-channel counts, unsorted, (trials, C)), "hist"
    (kernel occupancy histogram, (trials, kh·kw+1)), "empty_out" and "empty_in" (trials,).
    """
    cout, cin, kh, kw = (int(s) for s in shape)
    n, kk = cout * cin * kh * kw, kh * kw
    if not 0 <= kept <= n:
        raise ValueError(f"kept={kept} outside [0, {n}]")
    if trials < 1:
        raise ValueError("trials must be ≥ 1")
    rng = np.random.default_rng(seed)
    out = np.empty((trials, cout), np.int64)
    inp = np.empty((trials, cin), np.int64)
    hist = np.empty((trials, kk + 1), np.int64)
    for t in range(trials):
        idx = rng.choice(n, size=kept, replace=False)
        kernel = idx // kk  # flat index of (o, i) in C order
        out[t] = np.bincount(kernel // cin, minlength=cout)
        inp[t] = np.bincount(kernel % cin, minlength=cin)
        hist[t] = np.bincount(np.bincount(kernel, minlength=cout * cin), minlength=kk + 1)
    return {"out": out, "in": inp, "hist": hist, "empty_out": (out == 0).sum(1), "empty_in": (inp == 0).sum(1)}


def band(samples: np.ndarray) -> dict[str, list[float]]:
    """Mean and the 5–95 % band over axis 0."""
    s = np.asarray(samples, dtype=np.float64)
    lo, hi = np.percentile(s, BAND, axis=0)
    return {"mean": s.mean(0).tolist(), "lo": lo.tolist(), "hi": hi.tolist()}


def spy_matrix(mask: np.ndarray) -> np.ndarray:
    """Tile a (Cout, Cin, k, k) mask into the (Cout·k)×(Cin·k) matrix of the paper's spy plots.

    Row o·kh + a, column i·kw + b holds mask[o, i, a, b], so each k×k block is one kernel.
    """
    m = np.asarray(mask, dtype=bool)
    cout, cin, kh, kw = m.shape
    return m.transpose(0, 2, 1, 3).reshape(cout * kh, cin * kw)


def pool_spy(matrix: np.ndarray, max_side: int = 384) -> tuple[np.ndarray, int]:
    """Block-OR a spy matrix down to at most `max_side` per side (so sparse dots stay visible).

    Returns (pooled bool matrix, block size); the block size is 1 when no pooling is needed.
    """
    m = np.asarray(matrix, dtype=bool)
    f = max(1, math.ceil(max(m.shape) / max_side))
    if f == 1:
        return m, 1
    r, c = math.ceil(m.shape[0] / f) * f, math.ceil(m.shape[1] / f) * f
    padded = np.zeros((r, c), bool)
    padded[: m.shape[0], : m.shape[1]] = m
    return padded.reshape(r // f, f, c // f, f).any(axis=(1, 3)), f


def resolve_layers(ck: Checkpoint, names: Iterable[str] | None) -> list[LayerRecord]:
    """The requested layers (with or without `.weight`), or a few representative ones."""
    by_name = {short_name(rec.name): rec for rec in ck.layers}
    if names:
        out = []
        for name in names:
            key = short_name(name.strip())
            if key not in by_name:
                raise ConfigError(f"unknown layer {name!r}; valid layers: {', '.join(by_name)}")
            if by_name[key] not in out:
                out.append(by_name[key])
        return out
    # The first, middle and deepest k×k convolution that is actually pruned (a capped, fully kept
    # stem has no structure to show); method.md §7 plots these kinds of layers.
    spatial = ([rec for rec in ck.layers if rec.shape[2] * rec.shape[3] > 1 and 0 < rec.kept < rec.n]
               or [rec for rec in ck.layers if rec.shape[2] * rec.shape[3] > 1] or list(ck.layers))
    picks = [spatial[0], spatial[len(spatial) // 2], spatial[-1]]
    return [rec for i, rec in enumerate(picks) if rec not in picks[:i]]


def layer_structure(rec: LayerRecord, trials: int = 100, seed: int = 0) -> dict:
    """Every number of one layer's structure figure (pruned vs random)."""
    mask = layer_mask(rec)
    out, inp = channel_counts(mask)
    rnd = random_statistics(rec.shape, rec.kept, trials, seed)
    spy = spy_matrix(mask)
    rows, cols = np.nonzero(spy)
    e_out, e_in = empty_channels(mask)
    return {
        "name": short_name(rec.name),
        "shape": list(rec.shape),
        "n": rec.n,
        "kept": rec.kept,
        "out_channel": {"pruned": np.sort(out)[::-1].tolist(), "random": band(-np.sort(-rnd["out"], axis=1))},
        "in_channel": {"pruned": np.sort(inp)[::-1].tolist(), "random": band(-np.sort(-rnd["in"], axis=1))},
        "empty": {
            "out": {"pruned": e_out, "random": band(rnd["empty_out"][:, None]), "of": int(rec.shape[0])},
            "in": {"pruned": e_in, "random": band(rnd["empty_in"][:, None]), "of": int(rec.shape[1])},
        },
        "occupancy": {
            "bins": list(range(rec.shape[2] * rec.shape[3] + 1)),
            "pruned": occupancy_histogram(mask).tolist(),
            "random": band(rnd["hist"]),
        },
        "spy": {
            "shape": list(spy.shape),
            "kernel": [int(rec.shape[2]), int(rec.shape[3])],
            "kept_rc": np.stack([rows, cols], 1).tolist(),
            "nonempty_out": np.flatnonzero(out).tolist(),
            "nonempty_in": np.flatnonzero(inp).tolist(),
        },
    }


def structure_data(ckpt: Checkpoint | str | os.PathLike, layers: Iterable[str] | None = None,
                   trials: int = 100, seed: int = 0) -> dict:
    """Structure statistics of the chosen layers (default: first, middle and deepest pruned k×k conv)."""
    ck = as_checkpoint(ckpt)
    if trials < 1:
        raise ConfigError("--trials must be ≥ 1")
    recs = resolve_layers(ck, layers)
    return {
        "kind": "structure", "checkpoint": str(ck.path), "arch": ck.arch.get("id"),
        "trials": int(trials), "seed": int(seed), "band_percentiles": list(BAND),
        "layers": [layer_structure(rec, trials, seed) for rec in recs],
    }


# --------------------------------------------------------------------------------------------
# curves: a run's metrics.jsonl


def metrics_path(run: str | os.PathLike) -> Path:
    """`run/metrics.jsonl` for a run folder, or the file itself."""
    p = Path(run)
    if p.is_dir():
        p = p / "metrics.jsonl"
        if not p.is_file():
            raise DataError(f"{run}: no metrics.jsonl in this run folder")
    elif not p.is_file():
        raise DataError(f"no such run folder or metrics file: {run}")
    return p


def read_metrics(run: str | os.PathLike) -> list[dict]:
    """Epoch records of a metrics.jsonl, sorted by epoch (the last record of an epoch wins).

    A final line cut short by a run that is still writing is ignored; any other bad line is an
    error naming its line number.
    """
    path = metrics_path(run)
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a metrics.jsonl (binary content)") from None
    lines = text.split("\n")
    by_epoch: dict[float, dict] = {}
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) and i > 1:  # partial last line (no trailing newline yet)
                continue
            raise DataError(f"{path}: line {i} is not JSON; expected a metrics.jsonl with one epoch record per line") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("epoch"), (int, float)):
            raise DataError(f"{path}: line {i} has no numeric 'epoch'; expected a metrics.jsonl epoch record")
        by_epoch[rec["epoch"]] = rec
    if not by_epoch:
        raise DataError(f"{path}: no epoch records")
    return [by_epoch[e] for e in sorted(by_epoch)]


def _series(records: list[dict], key: str) -> dict:
    pts = [(r["epoch"], r[key]) for r in records
           if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool) and math.isfinite(r[key])]
    return {"epoch": [e for e, _ in pts], "value": [float(v) for _, v in pts]}


def series_label(key: str, objective: str | None = None) -> str:
    """What a metrics.jsonl series measured, in words: rbzoo's trainer scores its training batches
    *after* the training attack, so `train_*` is adversarial (TRADES: its whole objective)."""
    split, _, rest = key.partition("_")
    split = {"val": "validation", "valid": "validation"}.get(split, split)
    if split == "train" and rest in ("acc", "loss"):
        if rest == "loss" and objective == "trades":
            return "train, TRADES loss (clean CE + β·KL to adversarial)"
        attack = {"pgd": "PGD", "fast": "fast single-step", "fgsm_rs": "FGSM-RS", "trades": "TRADES"}.get(objective or "")
        return f"train, on adversarial batches ({attack} training attack)" if attack else "train, on adversarial batches"
    kind = rest.rsplit("_", 1)[0]  # clean_acc -> clean, robust_acc -> robust
    if kind == "robust":
        return f"{split}, robust (PGD)"
    return f"{split}, {kind}" if kind not in ("acc", "loss") else split


def curves_data(run: str | os.PathLike) -> dict:
    """Loss, accuracy and learning-rate series; missing or null values are left out per series.

    Accuracy series are any keys ending in `_acc`, loss series any ending in `_loss`. Accuracies are
    reported in percent: fractions (every value ≤ 1, as rbzoo writes them) are multiplied by 100.
    """
    records = read_metrics(run)
    keys = list(dict.fromkeys(k for r in records for k in r))
    acc = {k: _series(records, k) for k in keys if k.endswith("_acc")}
    loss = {k: _series(records, k) for k in keys if k.endswith("_loss")}
    acc = {k: v for k, v in acc.items() if v["epoch"]}
    loss = {k: v for k, v in loss.items() if v["epoch"]}
    values = [v for s in acc.values() for v in s["value"]]
    scale = "fraction" if values and max(values) <= 1.0 else "percent"
    if scale == "fraction":
        for s in acc.values():
            s["value"] = [100.0 * v for v in s["value"]]
    lr = _series(records, "lr")
    if not acc and not loss and not lr["epoch"]:
        raise DataError(f"{metrics_path(run)}: no loss, accuracy or lr values to plot")
    objective = next((r["objective"] for r in reversed(records) if isinstance(r.get("objective"), str)), None)
    labels = {k: series_label(k, objective) for k in list(loss) + list(acc)}
    return {"kind": "curves", "source": str(metrics_path(run)), "epochs": len(records), "objective": objective,
            "accuracy_input_scale": scale, "accuracy_percent": acc, "loss": loss, "lr": lr, "labels": labels}


# --------------------------------------------------------------------------------------------
# attack and zoo: results JSON and model cards


def read_json(path: str | os.PathLike) -> dict:
    p = Path(path)
    if not p.is_file():
        raise DataError(f"no such file: {path}")
    try:
        obj = json.loads(read_bounded(p, MAX_RESULTS_BYTES, DataError, what="a results JSON").decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise DataError(f"{path}: not a JSON file; expected an `rbzoo eval --out` results file") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: not an rbzoo results file (top level is not an object)")
    return obj


def read_results(path: str | os.PathLike) -> dict:
    """A results JSON written by `rbzoo eval --out` (checks the `rbzoo_results` marker)."""
    obj = read_json(path)
    if obj.get("rbzoo_results") != 1:
        raise DataError(f"{path}: not an rbzoo results file (no \"rbzoo_results\": 1)")
    return obj


def attack_data(results: str | os.PathLike | dict) -> dict:
    """Accuracy (percent) before the attack and after each cumulative attack stage."""
    src = str(results) if not isinstance(results, dict) else "<dict>"
    r = read_results(results) if not isinstance(results, dict) else results
    if not isinstance(r.get("clean_acc"), (int, float)):
        raise DataError(f"{src}: results file has no clean_acc")
    after = r.get("robust_acc_after") or {}
    if not isinstance(after, dict):
        raise DataError(f"{src}: robust_acc_after is not an object")
    stages = list(after.items())
    if not stages and isinstance(r.get("robust_acc"), (int, float)):
        stages = [((r.get("attack") or {}).get("version") or "attack", r["robust_acc"])]
    if not stages:
        raise DataError(f"{src}: no attack stages (this evaluation was clean only)")
    for name, v in stages:
        if not isinstance(v, (int, float)):
            raise DataError(f"{src}: robust_acc_after[{name!r}] is not a number")
    attack = r.get("attack") or {}
    wilson = r.get("wilson95") or {}
    label = attack_label(attack)
    return {
        "kind": "attack", "source": src,
        "arch": (r.get("model") or {}).get("arch"), "model_path": (r.get("model") or {}).get("path"),
        "dataset": r.get("dataset"), "split": r.get("split"), "n_examples": r.get("n_examples"),
        "norm": attack.get("norm"), "eps": attack.get("eps"), "eps_label": eps_label(attack.get("eps")),
        "version": attack.get("version"), "attacks": attack.get("attacks"), "seed": attack.get("seed"),
        "attack_label": label,
        "stages": ["clean"] + [label if str(n) == "pgd" else str(n) for n, _ in stages],
        "acc_percent": [100.0 * float(r["clean_acc"])] + [100.0 * float(v) for _, v in stages],
        "wilson95_percent": {k: [100.0 * x for x in v] for k, v in wilson.items() if isinstance(v, list) and len(v) == 2},
    }


def read_card(path: str | os.PathLike) -> dict:
    """The YAML front matter of a model card (`---` … `---`), checked to be an rbzoo card."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"no such file: {path}")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a model card (binary content)") from None
    # The lenient reader: any card with an rbzoo block plots, without the Hub schema's checks.
    meta, _ = split_front_matter(text, str(path), error=DataError)
    if not isinstance(meta, dict) or not isinstance(meta.get("rbzoo"), dict):
        raise DataError(f"{path}: not an rbzoo model card (no `rbzoo:` section)")
    return meta


def _card_metric(meta: dict, kind: str) -> float | None:
    for entry in meta.get("model-index") or []:
        for res in (entry or {}).get("results") or []:
            for m in (res or {}).get("metrics") or []:
                if isinstance(m, dict) and m.get("type") == kind and isinstance(m.get("value"), (int, float)):
                    return float(m["value"])
    return None


def _num(x) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def card_point(path: str | os.PathLike) -> dict:
    """A zoo point from a model card (accuracies in percent, as cards store them)."""
    meta = read_card(path)
    rb = meta["rbzoo"]
    claimed = rb.get("claimed") or {}
    size = rb.get("checkpoint_bytes")
    size_source = "card"
    if not isinstance(size, int) or isinstance(size, bool):
        local = Path(path).parent / str(rb.get("checkpoint") or "")
        size, size_source = (local.stat().st_size, "file") if rb.get("checkpoint") and local.is_file() else (None, None)
    arch = rb.get("arch") if isinstance(rb.get("arch"), dict) else {"id": rb.get("arch")}
    return {
        "name": str(rb.get("name") or Path(path).stem), "source": "card", "path": str(path),
        "robust_acc": _card_metric(meta, "robust_accuracy") if _card_metric(meta, "robust_accuracy") is not None else _num(claimed.get("robust_acc")),
        "clean_acc": _card_metric(meta, "accuracy") if _card_metric(meta, "accuracy") is not None else _num(claimed.get("clean_acc")),
        "checkpoint_bytes": size, "size_source": size_source,
        "float32_bytes": rb.get("float32_bytes") if isinstance(rb.get("float32_bytes"), int) else None,
        "sha256": rb.get("checkpoint_sha256"), "arch": arch.get("id"), "dataset": rb.get("dataset"),
        "eps": _num(rb.get("eps")), "keep": _num(rb.get("keep")), "p": _num(rb.get("p")), "objective": rb.get("objective"),
    }


def results_point(path: str | os.PathLike, cards: Sequence[dict] = ()) -> dict:
    """A zoo point from a results JSON (accuracies converted to percent).

    The checkpoint size is the size of `model.path` (as given, or relative to the results file)
    when that file still has the evaluated SHA-256; otherwise that of a card among `cards` with
    the same checkpoint_sha256; otherwise None.
    """
    r = read_results(path)
    model = r.get("model") or {}
    sha = model.get("file_sha256")
    mpath = str(model.get("path") or "")
    size = f32 = None
    size_source = None
    candidates = [Path(mpath), Path(path).parent / mpath] if mpath else []
    for cand in candidates:
        if cand.is_file() and (not sha or file_sha256(cand)[0] == sha):
            size, size_source = cand.stat().st_size, "file"
            try:
                f32 = float32_bytes(read(cand))
            except CheckpointError:
                f32 = None
            break
    if size is None and sha:
        for c in cards:
            if c.get("sha256") == sha and c.get("checkpoint_bytes") is not None:
                size, f32, size_source = c["checkpoint_bytes"], c.get("float32_bytes"), f"card {c['name']}"
                break
    stem = Path(mpath).stem if mpath else Path(path).stem
    name = f"{Path(mpath).parent.name}/{stem}" if stem in ("model", "checkpoint", "best", "last") and Path(mpath).parent.name else stem
    attack = r.get("attack") or {}
    robust = _num(r.get("robust_acc"))
    clean = _num(r.get("clean_acc"))
    return {
        "name": name, "source": "results", "path": str(path),
        "robust_acc": None if robust is None else 100.0 * robust, "clean_acc": None if clean is None else 100.0 * clean,
        "checkpoint_bytes": size, "size_source": size_source, "float32_bytes": f32, "sha256": sha,
        "arch": model.get("arch"), "dataset": r.get("dataset"), "eps": _num(attack.get("eps")),
        "keep": None, "p": None, "objective": None, "n_examples": r.get("n_examples"),
    }


def reproduction_point(path: str | os.PathLike, report: dict) -> dict:
    """A zoo point from a reproduction report: the reproduction's robust accuracy with its 95 %
    interval, and the paper's number it was judged against (percent). The size is the evaluated
    checkpoint's, when that file is still there with the same SHA-256."""
    rows = {k: report.get(k) if isinstance(report.get(k), dict) else None for k in ("clean", "robust")}
    model = report.get("model") or {}
    mpath, sha = Path(str(model.get("path") or "")), model.get("file_sha256")
    size = f32 = None
    if model.get("path") and mpath.is_file() and (not sha or file_sha256(mpath)[0] == sha):
        size = mpath.stat().st_size
        try:
            f32 = float32_bytes(read(mpath))
        except CheckpointError:
            f32 = None
    rob, clean = rows["robust"] or {}, rows["clean"] or {}
    attack = report.get("attack") or {}
    return {
        "name": f"{report.get('entry')} (reproduced)", "source": "reproduction", "path": str(path),
        "robust_acc": _num(rob.get("ours")), "robust_ci": rob.get("wilson95"), "paper_robust_acc": _num(rob.get("paper")),
        "robust_verdict": rob.get("verdict"), "upper_bound": bool(rob.get("upper_bound")),
        "clean_acc": _num(clean.get("ours")), "paper_clean_acc": _num(clean.get("paper")),
        "clean_verdict": clean.get("verdict"), "checkpoint_bytes": size, "size_source": "file" if size else None,
        "float32_bytes": f32, "sha256": sha, "arch": None, "dataset": report.get("dataset"), "eps": _num((attack.get("run") or {}).get("eps")), "entry": report.get("entry"),
        "keep": None, "p": None, "objective": None,
    }


def pareto_front(sizes: Sequence[float], accs: Sequence[float]) -> list[int]:
    """Indices of the points no other point beats (smaller-or-equal size and higher-or-equal
    accuracy, one strictly), ordered by size. Exact duplicates keep their first occurrence."""
    order = sorted(range(len(sizes)), key=lambda i: (sizes[i], -accs[i], i))
    front, best = [], -math.inf
    for i in order:
        if accs[i] > best:
            front.append(i)
            best = accs[i]
    return front


def zoo_data(inputs: Sequence[str | os.PathLike]) -> dict:
    """Robust accuracy against checkpoint size for any mix of cards (.md) and results (.json).

    "pareto" maps each dataset to the indices (into "points", by size) of its Pareto front.
    """
    if not inputs:
        raise ConfigError("zoo: give at least one model card (.md) or results file (.json)")
    cards, results, reproductions = [], [], []
    for p in inputs:
        suffix = Path(p).suffix.lower()
        if suffix == ".md":
            cards.append(card_point(p))
        elif suffix == ".json":
            obj = read_json(p)
            if REPORT_KEY in obj:
                reproductions.append(reproduction_point(p, read_report(p)))
            else:
                results.append(p)
        else:
            raise DataError(f"{p}: expected a model card (.md), a results file or a reproduction report (.json)")
    points = cards + [results_point(p, cards) for p in results] + reproductions
    usable, skipped = [], []
    for pt in points:
        if pt["robust_acc"] is None:
            skipped.append({"path": pt["path"], "reason": "no robust accuracy"})
        elif pt["checkpoint_bytes"] is None:
            why = ("card has checkpoint_bytes: null (not converted yet)" if pt["source"] == "card"
                   else "checkpoint size unknown (model.path not found, no card with its sha256 among the inputs)")
            skipped.append({"path": pt["path"], "reason": why})
        else:
            usable.append(pt)
    if not usable:
        first = skipped[0]
        more = f" (and {len(skipped) - 1} more)" if len(skipped) > 1 else ""
        raise DataError(f"zoo: no input has both a robust accuracy and a checkpoint size; "
                        f"{first['path']}: {first['reason']}{more}")
    by_dataset: dict[str, list[int]] = {}
    for i, pt in enumerate(usable):
        if pt["source"] == "reproduction":  # a second measurement of a published entry, not another model
            continue
        by_dataset.setdefault(str(pt["dataset"]), []).append(i)
    # One front per dataset: robust accuracies on different datasets (and budgets) do not compare.
    fronts = {}
    for d, idx in by_dataset.items():
        front = pareto_front([usable[i]["checkpoint_bytes"] for i in idx], [usable[i]["robust_acc"] for i in idx])
        fronts[d] = [idx[j] for j in front]
    return {"kind": "zoo", "points": usable, "pareto": fronts, "skipped": skipped}


# --------------------------------------------------------------------------------------------
# compare: overlap of two checkpoints' masks


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """|a ∧ b| / |a ∨ b| of two boolean masks (1.0 when both are empty)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    if a.shape != b.shape:
        raise ValueError(f"mask shapes differ: {a.shape} vs {b.shape}")
    union = int(np.logical_or(a, b).sum())
    return 1.0 if union == 0 else int(np.logical_and(a, b).sum()) / union


def random_jaccard(n: int, kept_a: int, kept_b: int) -> float:
    """Jaccard expected of two independent uniform masks with these counts (ratio of expectations:
    E|A∩B| = kept_a·kept_b/n)."""
    inter = kept_a * kept_b / n if n else 0.0
    union = kept_a + kept_b - inter
    return 1.0 if union == 0 else inter / union


def compare_data(a: Checkpoint | str | os.PathLike, b: Checkpoint | str | os.PathLike) -> dict:
    """Per-layer mask overlap of two checkpoints of the same architecture."""
    ca, cb = as_checkpoint(a), as_checkpoint(b)
    la = [(rec.name, tuple(rec.shape)) for rec in ca.layers]
    lb = [(rec.name, tuple(rec.shape)) for rec in cb.layers]
    if ca.arch.get("id") != cb.arch.get("id") or la != lb:
        raise CheckpointError(f"compare needs the same architecture: {ca.path} is {ca.arch.get('id')} "
                              f"({len(la)} prunable layers), {cb.path} is {cb.arch.get('id')} ({len(lb)})")
    rows = []
    for ra, rb in zip(ca.layers, cb.layers):
        inter = int(np.logical_and(ra.mask, rb.mask).sum())
        rows.append({
            "name": short_name(ra.name), "n": ra.n, "kept_a": ra.kept, "kept_b": rb.kept,
            "intersection": inter, "union": ra.kept + rb.kept - inter,
            "jaccard": jaccard(ra.mask, rb.mask), "random_jaccard": random_jaccard(ra.n, ra.kept, rb.kept),
        })
    inter = sum(r["intersection"] for r in rows)
    union = sum(r["union"] for r in rows)
    return {
        "kind": "compare", "a": str(ca.path), "b": str(cb.path), "arch": ca.arch.get("id"),
        "seed_a": ca.seed, "seed_b": cb.seed, "digest_a": ca.digest, "digest_b": cb.digest,
        "layers": rows, "total": {"intersection": inter, "union": union, "jaccard": 1.0 if union == 0 else inter / union},
    }


# --------------------------------------------------------------------------------------------
# breaks: stored adversarial examples beside their clean images


def results_evidence(results_path: str | os.PathLike, r: dict):
    """The evidence file a results file names, checked against its SHA-256 and read (bounded)."""
    from .evidence import read_evidence, results_evidence_file

    ev = r.get("evidence")
    if not isinstance(ev, dict) or not isinstance(ev.get("file"), str):
        raise DataError(f"{results_path}: the results name no evidence file (made before rbzoo kept evidence, "
                        f"or clean only); rerun `rbzoo eval`")
    from .data import get_spec

    numel = get_spec(r.get("dataset")).numel
    data = results_evidence_file(r, results_path, numel=numel, error=DataError)
    return read_evidence(data, n_examples=int(r.get("n_examples") or 0), numel=numel)


def breaks_data(results: str | os.PathLike, data_dir=None, count: int = 6) -> tuple[dict, list]:
    """The first `count` stored breaks of a results file: (numbers, [(clean, adversarial) images
    as H×W×C arrays]). The clean images come from the test data (`data_dir`)."""
    from .data import get_dataset
    from .evidence import decode_one
    from .exact import indices_digest, select_indices

    r = read_results(results)
    ev = results_evidence(results, r)
    ds = get_dataset(r["dataset"], r.get("split", "test"), data_dir)
    sub = r.get("subset") or {}
    idx = select_indices(len(ds), r["n_examples"], sub.get("mode") or "first", sub.get("seed") or 0)
    if indices_digest(idx) != r.get("indices_sha256"):
        raise DataError(f"{results}: the evaluated indices do not match this copy of {r['dataset']}")
    rows, images = [], []
    for e in ev.items[:count]:
        x, y = ds[int(idx[e.position])]
        adv = decode_one(x.float(), e)
        images.append((x.permute(1, 2, 0).numpy(), adv.permute(1, 2, 0).numpy()))
        d = (adv - x).flatten()
        rows.append({"position": e.position, "index": int(idx[e.position]), "label": int(y), "adv_label": e.adv_label,
                     "attack": e.attack, "linf": float(d.abs().max()), "l2": float(d.norm())})
    attack = r.get("attack") or {}
    return {"kind": "breaks", "source": str(results), "dataset": r["dataset"], "n_examples": r["n_examples"],
            "n_breaks": len(ev.items), "norm": attack.get("norm"), "eps": attack.get("eps"),
            "eps_label": eps_label(attack.get("eps")), "attack_label": attack_label(attack), "breaks": rows}, images
