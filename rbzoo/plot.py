"""Rendering for `rbzoo plot`: matplotlib only, no numbers computed here (see `rbzoo.figures`).

Each `plot_<kind>` computes its data with `rbzoo.figures`, draws it, writes the image atomically
(PNG, PDF or SVG by the suffix of `out`) and, with `data_out`, the numbers as JSON; it returns the
data dict. Figures are built on `matplotlib.figure.Figure` with the Agg canvas, never pyplot, so
nothing global (backend, open-figure list) is touched. Colours are the Okabe–Ito palette.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator

from . import figures as F
from ._io import atomic_path, check_output, write_json
from .constants import PLOT_KINDS
from .errors import ConfigError

# Okabe & Ito (2008), "Color Universal Design": distinguishable with every common colour-vision deficiency.
OKABE_ITO = {
    "black": "#000000", "orange": "#E69F00", "sky": "#56B4E9", "green": "#009E73",
    "yellow": "#F0E442", "blue": "#0072B2", "vermillion": "#D55E00", "purple": "#CC79A7",
}
PALETTE = [OKABE_ITO[c] for c in ("blue", "orange", "green", "vermillion", "purple", "sky", "black", "yellow")]
KINDS = PLOT_KINDS
FORMATS = {".png": "png", ".pdf": "pdf", ".svg": "svg"}
STYLE = {
    "font.size": 10, "axes.titlesize": 10, "axes.labelsize": 10, "legend.fontsize": 8,
    "xtick.labelsize": 8, "ytick.labelsize": 8, "figure.titlesize": 12,
    "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3,
    "grid.linewidth": 0.6, "axes.prop_cycle": matplotlib.cycler(color=PALETTE),
    "svg.hashsalt": "rbzoo", "savefig.dpi": 150, "figure.dpi": 100,
}
# No timestamps or software strings in the files, so the same input gives the same bytes.
_METADATA = {"png": {"Software": None}, "pdf": {"CreationDate": None, "Producer": None, "Creator": None},
             "svg": {"Date": None, "Creator": None}}


def image_format(out: str | os.PathLike) -> str:
    """"png", "pdf" or "svg" from the suffix of `out`."""
    fmt = FORMATS.get(Path(out).suffix.lower())
    if fmt is None:
        raise ConfigError(f"--out {out}: unsupported image suffix; use .png, .pdf or .svg")
    return fmt


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, out: str | os.PathLike, data: dict, data_out: str | os.PathLike | None) -> dict:
    fmt = image_format(out)
    with matplotlib.rc_context(STYLE), atomic_path(out) as tmp:
        fig.savefig(tmp, format=fmt, metadata=_METADATA[fmt], facecolor="white")
    if data_out is not None:
        write_json(data_out, data)
    return data


def _bytes_label(x: float, _pos=None) -> str:
    for unit, div in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if x >= div:
            return f"{x / div:g} {unit}"
    return f"{x:g} B"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _bytes_axis(ax) -> None:
    """A log axis of byte sizes whose every label reads "20 kB": matplotlib would label the minor
    ticks of a narrow range as "2×10⁴" next to the major "10 kB". Minor ticks get labels only when
    the axis spans less than about a decade (as matplotlib itself does), else they crowd."""
    ax.xaxis.set_major_formatter(FuncFormatter(_bytes_label))

    def minor(x: float, pos=None) -> str:
        lo, hi = sorted(ax.get_xlim())
        return _bytes_label(x) if lo > 0 and math.log10(hi / lo) < 1.2 else ""

    ax.xaxis.set_minor_formatter(FuncFormatter(minor))


# --------------------------------------------------------------------------------------------


def draw_layers(data: dict) -> Figure:
    layers = data["layers"]
    x = np.arange(len(layers))
    with matplotlib.rc_context(STYLE):
        fig = _figure(max(7.0, 0.32 * len(layers) + 3.0), 6.5)
        top, bottom = fig.subplots(2, 1, sharex=True)
        top.bar(x, [r["keep"] for r in layers], color=OKABE_ITO["sky"], edgecolor=OKABE_ITO["blue"], linewidth=0.6,
                label="this checkpoint", zorder=2)
        bottom.bar(x, [r["kept"] for r in layers], color=OKABE_ITO["sky"], edgecolor=OKABE_ITO["blue"], linewidth=0.6,
                   label="this checkpoint", zorder=2)
        colours = [c for c in PALETTE if c not in (OKABE_ITO["sky"], OKABE_ITO["blue"])]
        markers = "ovsD^<>P"
        for i, alloc in enumerate(data["allocations"].values()):
            trained = data["p"] is not None and alloc["p"] == data["p"]
            label = f"allocation p = {alloc['p']:g}" + (" (trained)" if trained else "")
            style = dict(color=colours[i % len(colours)], marker=markers[i % len(markers)], markersize=4,
                         linewidth=1.2, linestyle="-" if trained else "--", label=label, zorder=3)
            top.plot(x, alloc["keep"], **style)
            bottom.plot(x, alloc["kept"], **style)
        top.axhline(data["keep"], color=OKABE_ITO["black"], linestyle=":", linewidth=1, label=f"global k = {data['keep']:.4g}")
        top.set_yscale("log")
        bottom.set_yscale("log")
        top.set_ylabel("kept fraction $k_l$ (log scale)")
        bottom.set_ylabel("kept weights (count, log scale)")
        bottom.set_xlabel("prunable layer (input → output)")
        bottom.set_xticks(x, [r["name"] for r in layers], rotation=90, fontsize=7 if len(layers) > 25 else 8)
        top.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncols=3, frameon=False)  # above the bars
        src = "from rbzoo.train" if data["keep_source"] == "rbzoo.train" else "inferred as kept / n (no training config)"
        p = f", p = {data['p']:g}" if data["p"] is not None else ""
        fig.suptitle(f"{data['arch']}: per-layer keep allocation ({data['total']['kept']:,} of {data['total']['n']:,} "
                     f"weights kept)\nk = {data['keep']:.4g} {src}{p}")
    return fig


def _channel_panel(ax, stats: dict, empty: dict, axis: str, trials: int) -> None:
    pruned = stats["pruned"]
    edges = np.arange(len(pruned) + 1) + 0.5  # rank r spans [r − ½, r + ½]
    rnd = stats["random"]
    ax.stairs(rnd["hi"], edges, baseline=rnd["lo"], fill=True, color=OKABE_ITO["sky"], alpha=0.45,
              label="random, 5–95 % band")
    ax.stairs(rnd["mean"], edges, baseline=None, color=OKABE_ITO["blue"], linewidth=1.2,
              label=f"random, mean of {trials} (empty {empty['random']['mean'][0]:.1f})")
    ax.stairs(pruned, edges, baseline=None, color=OKABE_ITO["vermillion"], linewidth=1.6,
              label=f"learned mask (empty {empty['pruned']} of {empty['of']})")
    ax.set_xlabel(f"{axis} channel, sorted by kept count")
    ax.set_ylabel(f"kept weights per {axis} channel")
    ax.set_xlim(0.5, len(pruned) + 0.5)
    ax.set_ylim(0, max(max(pruned), max(rnd["hi"])) * 1.3 + 0.5)  # headroom for the legend
    ax.legend(loc="upper right")


def _occupancy_panel(ax, occ: dict, trials: int) -> None:
    bins = np.asarray(occ["bins"])
    w = 0.4
    rnd = occ["random"]
    mean = np.asarray(rnd["mean"])
    err = np.clip(np.vstack([mean - np.asarray(rnd["lo"]), np.asarray(rnd["hi"]) - mean]), 0, None)
    ax.bar(bins - w / 2, occ["pruned"], w, color=OKABE_ITO["vermillion"], label="learned mask", zorder=2)
    ax.bar(bins + w / 2, mean, w, yerr=err, color=OKABE_ITO["sky"], edgecolor=OKABE_ITO["blue"], linewidth=0.5,
           ecolor=OKABE_ITO["black"], capsize=2, error_kw={"linewidth": 0.7}, label=f"random, mean of {trials} (5–95 %)",
           zorder=2)
    ax.set_yscale("log")
    ax.set_ylim(0.5, max(max(occ["pruned"]), max(rnd["hi"])) * 8)  # headroom for the legend
    ax.set_xticks(bins)
    ax.set_xlabel("kept weights per kernel (of $k^2$)")
    ax.set_ylabel("kernels (count, log scale)")
    ax.legend(loc="upper right")


def _spy_panel(ax, spy: dict) -> None:
    rows, cols = spy["shape"]
    kh, kw = spy["kernel"]
    full = np.zeros((rows, cols), bool)
    if spy["kept_rc"]:
        rc = np.asarray(spy["kept_rc"])
        full[rc[:, 0], rc[:, 1]] = True
    pooled, f = F.pool_spy(full)
    ax.imshow(pooled, cmap=ListedColormap(["white", OKABE_ITO["black"]]), vmin=0, vmax=1, interpolation="nearest",
              extent=(0, pooled.shape[1] * f, pooled.shape[0] * f, 0),
              aspect="equal" if max(rows, cols) <= 3 * min(rows, cols) else "auto")
    # Marker strips: non-empty output rows (left) and input columns (top), as in the paper's heatmaps.
    mx, my = 0.06 * cols, 0.06 * rows  # strip sizes in data units, ~5 % of each side
    strip = ListedColormap(["#DDDDDD", OKABE_ITO["blue"]])
    out_flags = np.zeros(rows // kh, bool)
    out_flags[spy["nonempty_out"]] = True
    in_flags = np.zeros(cols // kw, bool)
    in_flags[spy["nonempty_in"]] = True
    ax.imshow(out_flags[:, None], cmap=strip, vmin=0, vmax=1, extent=(-mx, -mx / 4, rows, 0), aspect="auto", interpolation="nearest")
    ax.imshow(in_flags[None, :], cmap=strip, vmin=0, vmax=1, extent=(0, cols, -my / 4, -my), aspect="auto", interpolation="nearest")
    ax.set_xlim(-mx, cols)
    ax.set_ylim(rows, -my)
    ax.grid(False)
    pooled_note = f", {f}×{f} blocks" if f > 1 else ""
    ax.set_title(f"mask ({rows}×{cols}{pooled_note}); blue = non-empty channel", fontsize=8)
    ax.set_xlabel(f"input channel × {kw} (column)")
    ax.set_ylabel(f"output channel × {kh} (row)")


def draw_structure(data: dict) -> Figure:
    rows = data["layers"]
    trials = data["trials"]
    with matplotlib.rc_context(STYLE):
        fig = _figure(17.0, 3.6 * len(rows) + 0.6)
        subs = fig.subfigures(len(rows), 1, squeeze=False)[:, 0]
        for sf, layer in zip(subs, rows):
            axes = sf.subplots(1, 4, width_ratios=[1, 1, 1, 0.9])
            _channel_panel(axes[0], layer["out_channel"], layer["empty"]["out"], "output", trials)
            _channel_panel(axes[1], layer["in_channel"], layer["empty"]["in"], "input", trials)
            _occupancy_panel(axes[2], layer["occupancy"], trials)
            _spy_panel(axes[3], layer["spy"])
            shape = "×".join(map(str, layer["shape"]))
            sf.suptitle(f"{layer['name']}  ({shape}): {layer['kept']:,} of {layer['n']:,} weights kept "
                        f"({layer['kept'] / layer['n']:.2%})", fontsize=11, fontweight="bold")
        fig.suptitle(f"{data['arch']}: learned mask structure vs random placement of the same count "
                     f"({trials} trials, seed {data['seed']})")
    return fig


_SPLIT_COLOUR = {"train": OKABE_ITO["orange"], "val": OKABE_ITO["blue"], "valid": OKABE_ITO["blue"],
                 "test": OKABE_ITO["vermillion"]}


def _series_style(key: str, n_points: int, label: str) -> dict:
    split = key.split("_", 1)[0]
    adversarial = "robust" in key or split == "train"  # training batches are attacked ones
    return {"color": _SPLIT_COLOUR.get(split, OKABE_ITO["purple"]), "linestyle": "--" if adversarial else "-",
            "marker": ("s" if adversarial else "o") if n_points <= 40 else None, "markersize": 3.5,
            "linewidth": 1.5, "label": label}


def draw_curves(data: dict) -> Figure:
    with matplotlib.rc_context(STYLE):
        fig = _figure(15.0, 4.2)
        ax_loss, ax_acc, ax_lr = fig.subplots(1, 3)
        labels = data.get("labels") or {}
        for ax, series in ((ax_loss, data["loss"]), (ax_acc, data["accuracy_percent"])):
            for key, s in series.items():
                ax.plot(s["epoch"], s["value"], **_series_style(key, len(s["epoch"]), labels.get(key, key)))
        lr = data["lr"]
        if lr["epoch"]:
            ax_lr.plot(lr["epoch"], lr["value"], color=OKABE_ITO["green"], linewidth=1.5,
                       marker="o" if len(lr["epoch"]) <= 40 else None, markersize=3)
            pos = [v for v in lr["value"] if v > 0]
            if pos and len(pos) == len(lr["value"]) and max(pos) / min(pos) > 100:
                ax_lr.set_yscale("log")
        for ax, title, ylabel, empty in ((ax_loss, "loss", "cross-entropy loss", not data["loss"]),
                                         (ax_acc, "accuracy (clean —, adversarial --)", "accuracy (%)", not data["accuracy_percent"]),
                                         (ax_lr, "learning rate", "learning rate", not lr["epoch"])):
            ax.set_title(title)
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylabel(ylabel)
            if empty:
                ax.text(0.5, 0.5, "not recorded", transform=ax.transAxes, ha="center", va="center", color="grey")
            elif ax is not ax_lr:
                ax.legend(loc="best")
        if data["accuracy_percent"]:
            ax_acc.set_ylim(bottom=0)
        run = Path(data["source"]).parent.name or data["source"]
        fig.suptitle(f"Training curves of {run} ({data['epochs']} epochs)")
    return fig


def draw_attack(data: dict) -> Figure:
    stages, acc = data["stages"], data["acc_percent"]
    x = np.arange(len(stages))
    with matplotlib.rc_context(STYLE):
        fig = _figure(max(5.5, 1.1 * len(stages) + 2.5), 4.5)
        ax = fig.subplots()
        colours = [OKABE_ITO["blue"]] + [OKABE_ITO["vermillion"]] * (len(stages) - 1)
        ax.bar(x, acc, color=colours, width=0.6, zorder=2)
        ax.plot(x, acc, color=OKABE_ITO["black"], linewidth=1, marker="o", markersize=3, zorder=3)
        wilson = data.get("wilson95_percent") or {}
        for key, idx in (("clean", 0), ("robust", len(stages) - 1)):
            if key in wilson and (key == "clean" or idx > 0):
                lo, hi = wilson[key]
                ax.errorbar([idx], [acc[idx]], yerr=[[max(acc[idx] - lo, 0)], [max(hi - acc[idx], 0)]], color=OKABE_ITO["black"],
                            capsize=4, linewidth=1, zorder=4)
        for xi, v in zip(x, acc):
            ax.annotate(f"{v:.2f} %", (xi, v), textcoords="offset points", xytext=(7, 3), ha="left", va="bottom", fontsize=8,
                        bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": "none", "alpha": 0.8}, zorder=5)
        ax.set_xticks(x, stages, rotation=20 if len(stages) > 4 else 0)
        ax.set_ylim(0, min(100.0, max(acc) * 1.18 + 2))
        ax.set_ylabel("accuracy (%)")
        ax.set_xlabel("after attack stage (cumulative; clean = no attack)")
        n = f", n = {data['n_examples']:,}" if isinstance(data.get("n_examples"), int) else ""
        version = data.get("attack_label") or "attack"
        ax.set_title(f"{data.get('arch') or 'model'} on {data.get('dataset') or '?'} {data.get('split') or ''}{n}\n"
                     f"{version}, {data.get('norm') or 'Linf'} ε = {data['eps_label']}"
                     + ("; bars: Wilson 95 %" if wilson else ""))
    return fig


def draw_zoo(data: dict) -> Figure:
    pts = data["points"]
    datasets = list(dict.fromkeys(str(p["dataset"]) for p in pts))
    colour = {d: PALETTE[i % len(PALETTE)] for i, d in enumerate(datasets)}
    with matplotlib.rc_context(STYLE):
        fig = _figure(9.0, 5.8)
        ax = fig.subplots()
        shown = set()
        for p in pts:
            c = colour[str(p["dataset"])]
            if p["source"] == "reproduction":
                _reproduction_marks(ax, p, c, shown)
                continue
            marker = "o" if p["source"] == "card" else "s"
            label = f"{p['dataset']} ({'card' if p['source'] == 'card' else 'eval results'})"
            ax.scatter([p["checkpoint_bytes"]], [p["robust_acc"]], color=c, marker=marker, s=42, zorder=3,
                       label=None if label in shown else label, edgecolor="black", linewidth=0.5)
            shown.add(label)
            if p.get("float32_bytes"):
                ax.plot([p["checkpoint_bytes"], p["float32_bytes"]], [p["robust_acc"]] * 2, color="#999999", linestyle=":",
                        linewidth=0.8, zorder=1)
                ax.scatter([p["float32_bytes"]], [p["robust_acc"]], facecolor="none", edgecolor=c, marker="D", s=36, zorder=2)
                if "f32" not in shown:  # a neutral legend entry: the markers take their dataset's colour
                    ax.scatter([], [], facecolor="none", edgecolor=OKABE_ITO["black"], marker="D", s=36,
                               label="same network as float32 (reference)")
                shown.add("f32")
            ax.annotate(p["name"], (p["checkpoint_bytes"], p["robust_acc"]), textcoords="offset points", xytext=(5, 4), fontsize=7)
        for d, front in data["pareto"].items():
            if len(front) < 2:  # a front of one model says nothing
                continue
            xs = [pts[i]["checkpoint_bytes"] for i in front]
            ys = [pts[i]["robust_acc"] for i in front]
            ax.step(xs + [xs[-1] * 1.5], ys + [ys[-1]], where="post", color=colour[d], linewidth=3, alpha=0.35, zorder=1.5,
                    solid_capstyle="butt", label=f"Pareto front ({d})")
        ax.set_xscale("log")
        _bytes_axis(ax)
        ax.set_xlabel("checkpoint size (bytes, log scale)")
        ax.set_ylabel("robust accuracy (%)")
        top = max(max(p["robust_acc"], (p.get("robust_ci") or [0, 0])[1] * 1.0, p.get("paper_robust_acc") or 0.0)
                  for p in pts)
        ax.set_ylim(0, min(100.0, top * 1.12 + 2))
        ax.legend(loc="best")
        ax.set_title(f"rbzoo: robust accuracy vs size ({_count(len(pts), 'model')})"
                     + (f"; {len(data['skipped'])} input(s) without size or robust accuracy left out" if data["skipped"] else ""))
    return fig


def _reproduction_marks(ax, p: dict, c, shown: set) -> None:
    """A reproduction: its robust accuracy with the 95 % interval (a triangle with error bars; open
    when a cheaper attack made it an upper bound), the paper's number as a star at the same size."""
    x, y = p["checkpoint_bytes"], p["robust_acc"]
    lo, hi = p.get("robust_ci") or (y, y)
    label = "reproduction, 95 % interval" + (" (upper bound: cheaper attack)" if p["upper_bound"] else "")
    ax.errorbar([x], [y], yerr=[[y - lo], [hi - y]], fmt="^", color=c, markersize=7, capsize=3, zorder=3,
                markerfacecolor="white" if p["upper_bound"] else c, label=None if label in shown else label)
    shown.add(label)
    if p.get("paper_robust_acc") is not None:
        ax.plot([x, x], [p["paper_robust_acc"], y], color=c, linestyle="--", linewidth=0.8, zorder=2)
        ax.scatter([x], [p["paper_robust_acc"]], marker="*", s=110, color=c, edgecolor="black", linewidth=0.5,
                   zorder=3, label=None if "paper" in shown else "paper's number (reproduced entry)")
        shown.add("paper")
    ax.annotate(f"{p['name']}: {p.get('robust_verdict') or '—'}", (x, y), textcoords="offset points", xytext=(7, -10),
                fontsize=7)


def _overlap_counts(ax, x: np.ndarray, rows: list[dict], a: str, b: str) -> None:
    """Per layer: weights kept by both masks and weights kept by one only. Two checkpoints of one
    training setting keep the same counts, so their kept counts say nothing; what moved does."""
    both = [r["intersection"] for r in rows]
    only_a = [r["kept_a"] - r["intersection"] for r in rows]
    only_b = [r["kept_b"] - r["intersection"] for r in rows]
    same = all(r["kept_a"] == r["kept_b"] for r in rows)
    series = [("kept in both", both, OKABE_ITO["blue"])]
    if same:  # each weight A dropped, B kept elsewhere: one count
        series.append(("kept by one only (equal counts, so |A∖B| = |B∖A|)", only_a, OKABE_ITO["orange"]))
    else:
        series += [(f"only in A: {a}", only_a, OKABE_ITO["orange"]), (f"only in B: {b}", only_b, OKABE_ITO["sky"])]
    w = 0.8 / len(series)
    for i, (label, values, colour) in enumerate(series):
        ax.bar(x + (i - (len(series) - 1) / 2) * w, values, w, color=colour, label=label, zorder=2)
    ax.set_yscale("log")
    top = max([v for _, values, _ in series for v in values] + [1])
    ax.set_ylim(0.8, top * 8)  # headroom for the legend
    ax.set_ylabel("weights (count, log scale)")
    ax.set_title("where the masks agree and differ" + (f"; A and B each keep {sum(r['kept_a'] for r in rows):,} weights"
                                                      if same else ""), fontsize=9)
    ax.legend(loc="upper center", ncols=len(series))


def draw_compare(data: dict) -> Figure:
    rows = data["layers"]
    x = np.arange(len(rows))
    a, b = Path(data["a"]).name, Path(data["b"]).name
    if a == b:  # same file name in two folders
        a, b = data["a"], data["b"]
    with matplotlib.rc_context(STYLE):
        fig = _figure(max(7.0, 0.32 * len(rows) + 3.0), 6.5)
        top, bottom = fig.subplots(2, 1, sharex=True)
        _overlap_counts(top, x, rows, a, b)
        bottom.bar(x, [r["jaccard"] for r in rows], 0.6, color=OKABE_ITO["green"], label="Jaccard |A∩B| / |A∪B|", zorder=2)
        bottom.scatter(x, [r["random_jaccard"] for r in rows], marker="_", s=160, linewidths=2, color=OKABE_ITO["vermillion"],
                       label="expected for independent random masks", zorder=3)
        bottom.set_ylim(0, 1.3)  # headroom for the legend
        bottom.set_yticks(np.linspace(0, 1, 6))
        bottom.set_ylabel("mask overlap (Jaccard index)")
        bottom.set_xlabel("prunable layer (input → output)")
        bottom.set_xticks(x, [r["name"] for r in rows], rotation=90, fontsize=7 if len(rows) > 25 else 8)
        bottom.legend(loc="upper center", ncols=2)
        fig.suptitle(f"{data['arch']}: mask overlap, overall Jaccard {data['total']['jaccard']:.3f}\nA = {a}, B = {b}")
    return fig


# --------------------------------------------------------------------------------------------


def plot_layers(checkpoint, out, *, ps: Sequence[float] | str | None = None, data_out=None) -> dict:
    """Per-layer keep ratio and kept count, with the allocation for other p values overlaid."""
    image_format(out)
    data = F.layers_data(checkpoint, F.parse_ps(ps))
    return _save(draw_layers(data), out, data, data_out)


def plot_structure(checkpoint, out, *, layers: Sequence[str] | None = None, trials: int = 100, seed: int = 0,
                   data_out=None) -> dict:
    """The paper's structure figures (method.md §7) for the chosen layers."""
    image_format(out)
    data = F.structure_data(checkpoint, layers, trials, seed)
    return _save(draw_structure(data), out, data, data_out)


def plot_curves(run, out, *, data_out=None) -> dict:
    """Training curves from a run folder or its metrics.jsonl."""
    image_format(out)
    data = F.curves_data(run)
    return _save(draw_curves(data), out, data, data_out)


def plot_attack(results, out, *, data_out=None) -> dict:
    """Accuracy after each AutoAttack stage from a results JSON."""
    image_format(out)
    data = F.attack_data(results)
    return _save(draw_attack(data), out, data, data_out)


def draw_breaks(data: dict, images: list) -> Figure:
    """Each stored break as a column: the clean image above, the adversarial example below."""
    k = max(len(images), 1)
    with matplotlib.rc_context(STYLE):
        fig = _figure(max(1.6 * k, 4.0), 4.2)
        axes = np.atleast_2d(fig.subplots(2, k, squeeze=False))
        for j in range(k):
            for i in range(2):
                ax = axes[i, j]
                ax.set_xticks([])
                ax.set_yticks([])
                ax.grid(False)
                if j >= len(images):
                    ax.set_axis_off()
                    continue
                img = images[j][i]
                ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None,
                          vmin=0, vmax=1, interpolation="nearest")
                row = data["breaks"][j]
                ax.set_title(f"#{row['index']}: label {row['label']}" if i == 0 else
                             f"{row['attack']}: → {row['adv_label']}", fontsize=8,
                             color=OKABE_ITO["black"] if i == 0 else OKABE_ITO["vermillion"])
        axes[0, 0].set_ylabel("clean")
        axes[1, 0].set_ylabel("adversarial")
        fig.suptitle(f"{data['n_breaks']} stored breaks of {data['n_examples']} {data['dataset']} samples "
                     f"({data['attack_label']}, {data.get('norm') or 'Linf'} ε = {data['eps_label']}); "
                     f"first {len(images)}", fontsize=10)
    return fig


def plot_breaks(results, out, *, data_dir=None, data_out=None, count: int = 6) -> dict:
    """Stored adversarial examples beside their clean images, from a results JSON and its evidence."""
    image_format(out)
    data, images = F.breaks_data(results, data_dir, count)
    if not images:
        raise ConfigError(f"{results}: the attack broke no sample: nothing to show")
    return _save(draw_breaks(data, images), out, data, data_out)


def plot_zoo(inputs: Sequence, out, *, data_out=None) -> dict:
    """Robust accuracy vs checkpoint size for cards and results files, with Pareto fronts."""
    image_format(out)
    data = F.zoo_data(inputs)
    return _save(draw_zoo(data), out, data, data_out)


def plot_compare(a, b, out, *, data_out=None) -> dict:
    """Per-layer mask overlap (Jaccard) of two checkpoints of the same architecture."""
    image_format(out)
    data = F.compare_data(a, b)
    return _save(draw_compare(data), out, data, data_out)


def plot(kind: str, inputs: Sequence[str | os.PathLike], out: str | os.PathLike, *, data_out=None,
         layers: Sequence[str] | None = None, ps: Sequence[float] | str | None = None, trials: int = 100,
         seed: int = 0, force: bool = False, data_dir=None) -> dict:
    """Dispatch for `rbzoo plot KIND INPUT… --out FILE`. The image (and `data_out`) follow the
    writer rule: never over an input, an existing file only with `force`."""
    inputs = list(inputs)
    check_output(out, inputs=tuple(inputs), force=force, kind="--out")
    if data_out is not None:
        check_output(data_out, inputs=tuple(inputs), force=force, kind="--data")
    arity = {"layers": 1, "structure": 1, "curves": 1, "attack": 1, "compare": 2, "breaks": 1}
    if kind not in KINDS:
        raise ConfigError(f"unknown plot kind {kind!r}; choose from {', '.join(KINDS)}")
    if kind in arity and len(inputs) != arity[kind]:
        raise ConfigError(f"plot {kind} takes {arity[kind]} input{'s' if arity[kind] > 1 else ''}, got {len(inputs)}")
    if kind == "zoo" and not inputs:
        raise ConfigError("plot zoo takes one or more cards (.md) or results files (.json)")
    if layers and kind != "structure":
        raise ConfigError("--layers only applies to `plot structure`")
    if ps is not None and kind != "layers":
        raise ConfigError("--p only applies to `plot layers`")
    if kind == "layers":
        return plot_layers(inputs[0], out, ps=ps, data_out=data_out)
    if kind == "structure":
        return plot_structure(inputs[0], out, layers=layers, trials=trials, seed=seed, data_out=data_out)
    if kind == "curves":
        return plot_curves(inputs[0], out, data_out=data_out)
    if kind == "attack":
        return plot_attack(inputs[0], out, data_out=data_out)
    if kind == "breaks":
        return plot_breaks(inputs[0], out, data_dir=data_dir, data_out=data_out)
    if kind == "zoo":
        return plot_zoo(inputs, out, data_out=data_out)
    return plot_compare(inputs[0], inputs[1], out, data_out=data_out)
