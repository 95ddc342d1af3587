"""Import the paper's official checkpoints (method.md §5.8) as format-v1 checkpoints, with proof.

An official file is a `torch.save` dict whose `state_dict` holds, under `module.1.`, every
SubnetConv's ±1 `weight` and float `scores` and every BatchNorm's running statistics. The per-layer
kept fractions are not stored (method.md §12.1): they are recomputed from `keep` and `p` with the
paper's allocation, and each layer keeps its top-|score| weights by the official sort rule.
Because the ±1 weights came from torch's global RNG, the result stores them explicitly.

Three safeguards: the file is read with `torch.load(weights_only=True)`, allow-listing only the
numpy scalar types official files carry; every key, shape and dtype must fit the requested
network (never the official loader's silent skip); and the written checkpoint must give the
same logits, bit for bit, as an independent functional forward pass over the official state dict.
"""

from __future__ import annotations

import importlib
import math
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ._io import atomic_path, check_output, file_sha256
from .checkpoint import load as load_checkpoint
from .checkpoint import save as save_checkpoint
from .data import dataset_metadata, get_spec
from .errors import CheckpointError, ConfigError
from .layers import kept_count, top_mask
from .models import create_model
from .models._registry import fold

# `arch` strings of the official model_type (method.md §10) → (rbzoo architecture, dataset).
OFFICIAL_ARCHS = {
    **{f"cResNet{d}": (f"cifar_resnet{d}", "cifar10") for d in (18, 34, 50)},
    **{f"cResNet{d}_cifar100": (f"cifar_resnet{d}", "cifar100") for d in (18, 34, 50)},
    **{f"ResNet{d}_imagenet100": (f"imagenet_resnet{d}", "imagenet100") for d in (18, 34, 50)},
}
PREFIXES = ("module.1.", "1.")  # DataParallel(Sequential(Normalize, Net)), or without DataParallel
BN_EPS = 1e-5


@dataclass(frozen=True)
class NetSpec:
    """The official topology, written down independently of rbzoo's modules (method.md §1.2, §1.4)."""

    imagenet: bool
    bottleneck: bool
    blocks: tuple[int, ...]
    widths: tuple[int, ...] | None  # None: tiny_resnet, (width, 2·width)


NET_SPECS = {
    **{f"cifar_resnet{d}": NetSpec(False, d == 50, b, (64, 128, 256, 512))
       for d, b in ((18, (2, 2, 2, 2)), (34, (3, 4, 6, 3)), (50, (3, 4, 6, 3)))},
    **{f"imagenet_resnet{d}": NetSpec(True, d == 50, b, (64, 128, 256, 512))
       for d, b in ((18, (2, 2, 2, 2)), (34, (3, 4, 6, 3)), (50, (3, 4, 6, 3)))},
    "tiny_resnet": NetSpec(False, False, (1, 1), None),  # CIFAR-style; for tests
}

# BN-consistency thresholds, relative to the median running_var of the layer's BN (see bn_check).
ACTIVE_REL = 1e-4  # a channel above this carried signal during training
ZERO_REL = 1e-10  # a channel at or below this was constant zero (0.9^t decay of an empty channel)
LIVE_REL = 1e-4  # an input channel whose activations reach this fraction of the largest is live
BN_TOLERANCE = (8, 0.005)  # contradictions allowed: max(8, 0.5 % of the channels checked)
BN_MOMENTUM = 0.1  # the official BatchNorm2d default: an empty channel's running_var decays ×0.9 per update


@dataclass
class ConvertReport:
    """What a conversion did; every number the CLI prints comes from here."""

    source: Path
    out: Path
    source_bytes: int
    source_sha256: str
    out_bytes: int
    weights_sha256: str
    arch: dict
    dataset: str
    keep: float
    p: float
    n_weights: int
    kept: int
    float32_bytes: int
    layers: list[dict]
    check_inputs: int
    check_seed: int
    max_abs_diff: float
    official_pool_rel_diff: float | None  # max |Δ| / max |logit| against the official avg_pool2d(4) head
    bn_check: dict
    official: dict = field(default_factory=dict)

    @property
    def tied_layers(self) -> list[str]:
        return [r["name"] for r in self.layers if r["boundary_tie"]]


# ------------------------------------------------------------------------------------- safe loading

def numpy_safe_globals() -> list:
    """Exactly the numpy globals official files reference: float64 scalars in the optimizer's
    param_groups, pickled by numpy 1.x (`numpy.core…`) or 2.x (`numpy._core…`)."""
    try:
        scalar = importlib.import_module("numpy._core.multiarray").scalar
    except ImportError:  # numpy < 2
        scalar = importlib.import_module("numpy.core.multiarray").scalar
    return [(scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar"),
            np.dtype, type(np.dtype(np.float64))]


def load_official(path: str | Path) -> dict:
    """`torch.load(weights_only=True)` on CPU; anything else (code, truncation, junk) → CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no such file: {path}")
    try:
        with torch.serialization.safe_globals(numpy_safe_globals()):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        text = str(e)
        if "Weights only load failed" not in text and "WeightsUnpickler" not in text:
            raise CheckpointError(f"{path}: not a PyTorch checkpoint ({_first_line(text)})") from None
        hit = re.search(r"GLOBAL ([\w.]+)", text)
        if hit:
            raise CheckpointError(f"{path}: refused: the pickle references {hit.group(1)}, which a weights-only "
                                  f"load does not allow (rbzoo never runs a full unpickle)") from None
        detail = text.split("WeightsUnpickler error:", 1)[-1] if "WeightsUnpickler error:" in text else ""
        raise CheckpointError(f"{path}: refused: not a weights-only checkpoint ({_first_line(detail) or 'unsupported content'})") from None
    except Exception as e:  # torch raises RuntimeError/EOFError/ValueError… for damaged archives
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {_first_line(str(e))})") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("state_dict"), dict):
        what = f"a dict with keys {sorted(map(str, obj))[:6]}" if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(f"{path}: not an official checkpoint: expected a dict with a 'state_dict' "
                              f"(method.md §5.8), found {what}")
    bad = [k for k, v in obj["state_dict"].items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: state_dict holds non-tensor entries: {bad[:5]}")
    return obj


def _first_line(text: str) -> str:
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return line[:200]




# ------------------------------------------------------------------------------------- strict mapping

def _strip_prefix(sd: dict, path: Path) -> dict[str, torch.Tensor]:
    prefix = next((p for p in PREFIXES if all(k.startswith(p) for k in sd)), None)
    if prefix is None:
        odd = [k for k in sd if not k.startswith(PREFIXES[0])][:5]
        raise CheckpointError(f"{path}: state_dict keys must all start with 'module.1.' (the official "
                              f"DataParallel(Sequential(Normalize, Net)) layout); these do not: {odd}")
    return {k[len(prefix):]: v for k, v in sd.items()}


def _check_state(state: dict, expected: dict, *, arch: str, num_classes: int, end_with_bn: bool, path: Path) -> None:
    """Every key, shape and dtype of `state` must equal the skeleton's; errors list what differs."""
    what = f"{arch} ({num_classes} classes, {'with' if end_with_bn else 'no'} final BN)"
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    last_extra = [k for k in unexpected if k.startswith("last.")]
    last_missing = [k for k in missing if k.startswith("last.")]
    if last_extra and not end_with_bn:
        raise ConfigError(f"{path}: the checkpoint has a final BN (last.*): pass --end-with-bn")
    if last_missing and end_with_bn:
        raise ConfigError(f"{path}: the checkpoint has no final BN (last.*): drop --end-with-bn")
    if missing or unexpected:
        parts = [f"{len(ks)} {label} key(s): {', '.join(ks[:6])}{', …' if len(ks) > 6 else ''}"
                 for label, ks in (("missing", missing), ("unexpected", unexpected)) if ks]
        raise CheckpointError(f"{path}: state_dict does not fit {what}: {'; '.join(parts)}")
    shapes = [f"{k}: checkpoint {list(state[k].shape)}, expected {list(v.shape)}"
              for k, v in expected.items() if state[k].shape != v.shape]
    if shapes:
        hint = ""
        if "fc.weight" in "".join(shapes):
            hint = f" (the checkpoint's classifier has {state['fc.weight'].shape[0]} outputs: pass --dataset/--num-classes)"
        raise CheckpointError(f"{path}: shapes do not fit {what}: {'; '.join(shapes[:4])}"
                              f"{'; …' if len(shapes) > 4 else ''}{hint}")
    dtypes = [f"{k}: {str(state[k].dtype).replace('torch.', '')} (expected {str(v.dtype).replace('torch.', '')})"
              for k, v in expected.items() if state[k].dtype != v.dtype]
    if dtypes:
        raise CheckpointError(f"{path}: unexpected dtypes: {'; '.join(dtypes[:4])}")


def official_mask(scores: torch.Tensor, keep: float) -> tuple[torch.Tensor, bool]:
    """The official TopMask (method.md §2): sort |s| ascending, zero the j = int((1−k)·n) smallest.

    Ties follow rbzoo's rule, that of a stable ascending sort (`torch.sort(stable=True)`): the lower
    flat index is pruned first. Plain `torch.sort` promises no order for ties on any device, and
    the official CUDA sort left them unspecified (docs/convert.md). Computed with a top-k
    selection instead of a full sort. Returns (bool mask, whether equal values straddle the cut);
    raises ValueError on NaN or infinite scores.
    """
    flat = scores.detach().abs().flatten()
    if not bool(torch.isfinite(flat).all()):
        raise ValueError("scores hold NaN or infinite values")
    mask = top_mask(flat, kept_count(flat.numel(), keep), ties="high")
    if mask.all() or not mask.any():
        return mask.view_as(scores), False
    tie = bool(flat[mask].min() == flat[~mask].max())  # the smallest kept equals the largest pruned
    return mask.view_as(scores), tie


# ------------------------------------------------------------------------------------- official forward

def official_forward(state: dict[str, torch.Tensor], weights: dict[str, torch.Tensor], spec: NetSpec,
                     x: torch.Tensor, *, mean, std, end_with_bn: bool, width: int = 8,
                     pool: str = "mean", probe: dict | None = None) -> torch.Tensor:
    """Logits of the official network, in eval mode, straight from a state dict (no nn.Modules).

    `weights` maps each conv name to its effective weight (±1 × TopMask). `pool="official"` uses
    the official CIFAR head literally (avg_pool2d(4), 32×32 inputs only); "mean" average-pools
    the whole final map, as rbzoo's head does (bit-identical to the official head on 32×32). `probe`, if given, receives
    for each conv (its BN's name, a bool per input channel: does that input ever reach the conv).
    """
    def conv_bn(conv: str, bn: str | None, h: torch.Tensor, stride: int) -> torch.Tensor:
        w = weights[conv]
        if probe is not None:
            peak = h.detach().abs().amax(dim=(0, 2, 3))
            probe[conv] = (bn, peak > LIVE_REL * peak.max().clamp_min(1e-30))
        out = F.conv2d(h, w, None, stride, (w.shape[-1] - 1) // 2)
        if bn is None:
            return out
        return F.batch_norm(out, state[f"{bn}.running_mean"], state[f"{bn}.running_var"], None, None, False, 0.0, BN_EPS)

    m = torch.tensor(mean, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, -1, 1, 1)
    h = (x - m) / s
    if spec.imagenet:
        h = F.max_pool2d(F.relu(conv_bn("conv1", "bn1", h, 2)), 3, 2, 1)
    else:
        h = F.relu(conv_bn("conv1", "bn1", h, 1))
    widths = spec.widths or (width, 2 * width)
    expansion = 4 if spec.bottleneck else 1
    in_planes = widths[0]
    short = "downsample" if spec.imagenet else "shortcut"
    for i, (planes, count) in enumerate(zip(widths, spec.blocks)):
        for j in range(count):
            pre, stride = f"layer{i + 1}.{j}.", (2 if i > 0 and j == 0 else 1)
            if spec.bottleneck:
                o = F.relu(conv_bn(pre + "conv1", pre + "bn1", h, 1))
                o = F.relu(conv_bn(pre + "conv2", pre + "bn2", o, stride))
                o = conv_bn(pre + "conv3", pre + "bn3", o, 1)
            else:
                o = F.relu(conv_bn(pre + "conv1", pre + "bn1", h, stride))
                o = conv_bn(pre + "conv2", pre + "bn2", o, 1)
            if stride != 1 or in_planes != planes * expansion:  # the official shortcut rule
                o = o + conv_bn(f"{pre}{short}.0", f"{pre}{short}.1", h, stride)
            else:
                o = o + h
            h = F.relu(o)
            in_planes = planes * expansion
    if probe is not None:
        probe["features"] = h
    if spec.imagenet:
        h = F.adaptive_avg_pool2d(h, 1)
    elif pool == "official":
        h = F.avg_pool2d(h, 4)
    else:  # whole-map average pooling: the official op (and order) on 32×32 inputs, any size otherwise
        h = F.avg_pool2d(h, tuple(h.shape[-2:]))
    logits = conv_bn("fc", "last" if end_with_bn else None, h, 1)
    return logits.flatten(1)


# ------------------------------------------------------------------------------------- BN consistency

def bn_check(masks: dict[str, torch.Tensor], state: dict[str, torch.Tensor], probe: dict) -> dict:
    """Do the BN running statistics agree with the masks that this keep/p gives?

    A conv output channel with no kept weight is constant zero, so during training its BN's
    running_var decayed geometrically (×0.9 per forward) to ~0; one with a kept weight on a live
    input carried signal. Two contradictions are counted per BN channel: "sparse" (the masks
    prune the channel's whole row but its BN saw signal: these masks keep too little) and "dense"
    (the BN saw nothing but the masks connect the channel to a live input: they keep too much).
    Channels whose rows changed in the last few dozen training steps can contradict honestly,
    hence a tolerance. The check cannot see errors that do not empty or fill whole rows, nor judge
    a BN whose statistics had too few updates (`num_batches_tracked`) for an empty channel's
    variance to decay: such BNs are counted in `young_bns` and not checked; if no BN could be
    checked, the result is not ok (nothing was verified).
    """
    checked, sparse, dense, per_layer, young = 0, 0, 0, [], []
    for name, mask in masks.items():
        bn, live = probe.get(name, (None, None))
        if bn is None:
            continue
        rv = state[f"{bn}.running_var"].double()
        scale = rv.median().item() if rv.median().item() > 0 else rv.max().item()
        if scale <= 0:
            continue
        updates = state.get(f"{bn}.num_batches_tracked")
        # An empty channel still holds (1 − momentum)^updates of its initial variance 1: until that
        # is below the "silent" threshold, empty and live channels cannot be told apart.
        if updates is not None and (1 - BN_MOMENTUM) ** max(int(updates), 0) > ZERO_REL * scale:
            young.append(int(updates))
            continue
        links = mask.flatten(2).any(2)  # (out, in): does any kept weight join the two channels
        rows = links.any(1)
        rows_live = (links & live.view(1, -1)).any(1)
        s = int((~rows & (rv > ACTIVE_REL * scale)).sum())
        d = int((rows_live & (rv <= ZERO_REL * scale)).sum())
        checked += rv.numel()
        sparse, dense = sparse + s, dense + d
        if s or d:
            per_layer.append({"layer": name, "bn": bn, "sparse": s, "dense": d})
    allowed = max(BN_TOLERANCE[0], math.ceil(BN_TOLERANCE[1] * checked))
    return {"checked": checked, "sparse": sparse, "dense": dense, "allowed": allowed,
            "ok": sparse + dense <= allowed and (checked > 0 or not young), "layers": per_layer, "skipped": False,
            "young_bns": len(young), "min_updates": min(young) if young else None}


# ------------------------------------------------------------------------------------- conversion

# Bumped whenever the same official file and options would convert to another checkpoint: part of
# the key of `rbzoo pull`'s import cache, so an older conversion is never reused.
CONVERTER_VERSION = 1

def _resolve(arch: str, num_classes: int | None, dataset: str | None, official_arch) -> tuple[str, int]:
    if arch not in NET_SPECS:
        raise ConfigError(f"--arch {arch!r}: convert knows {', '.join(sorted(NET_SPECS))}")
    if isinstance(official_arch, str) and official_arch in OFFICIAL_ARCHS:
        o_arch, o_ds = OFFICIAL_ARCHS[official_arch]
        if o_arch != arch:
            raise ConfigError(f"the checkpoint's arch is {official_arch!r} (rbzoo {o_arch}), not --arch {arch}")
        if dataset is not None and dataset != o_ds:
            raise ConfigError(f"the checkpoint's arch {official_arch!r} was trained on {o_ds}, not --dataset {dataset}")
        dataset = o_ds
    if dataset is None:
        raise ConfigError(f"cannot tell the dataset (the checkpoint's arch {official_arch!r} is not an official "
                          f"model type): pass --dataset")
    spec = get_spec(dataset)
    if num_classes is not None and int(num_classes) != spec.num_classes:
        raise ConfigError(f"--num-classes {num_classes} contradicts {dataset} ({spec.num_classes} classes)")
    return dataset, spec.num_classes


def _plain(v):
    """A JSON-able copy of an official record value (tensors, numpy scalars, strings)."""
    if isinstance(v, torch.Tensor) and v.numel() == 1:
        return v.item()
    if isinstance(v, (np.generic,)):
        return v.item()
    if isinstance(v, (int, float, str, bool)) or v is None:
        return v
    return repr(v)[:80]


def convert_official(path: str | Path, *, arch: str, keep: float = 0.01, p: float = 0.1,
                     end_with_bn: bool, num_classes: int | None = None, dataset: str | None = None,
                     out: str | Path, objective: str | None = None, bn_consistency: bool = True,
                     check_batch: int | None = None, check_size: int | None = None, seed: int = 0,
                     force: bool = False) -> ConvertReport:
    """Convert an official checkpoint to a format-v1 checkpoint with explicit signs at `out`.

    Raises CheckpointError/ConfigError (nothing written) if the file does not fit `arch` and the
    options, if the BN statistics contradict the masks of `keep`/`p` (unless
    `bn_consistency=False`), or if the written model's logits differ in any bit from the official
    forward pass on `check_batch` random inputs of the dataset's image size (or `check_size`),
    drawn in [0, 1] with `seed`. `out` must not be the input, and must not exist unless `force`
    (OutputExistsError).
    """
    path = Path(path)
    out = check_output(out, inputs=(path,), force=force, kind="--out")
    obj = load_official(path)
    official_arch = obj.get("arch")
    dataset, num_classes = _resolve(arch, num_classes, dataset, official_arch)
    dspec = get_spec(dataset)
    skeleton = _skeleton(arch, num_classes, dspec, end_with_bn, keep, p)
    state = _strip_prefix(obj["state_dict"], path)
    _check_state(state, skeleton.state_dict(), arch=arch, num_classes=num_classes, end_with_bn=end_with_bn, path=path)
    masks, weights, layers = _official_masks(skeleton, state, path)

    size = check_size or dspec.image_size
    batch = check_batch or (4 if size <= 64 else 2)
    x = torch.rand(batch, dspec.channels, size, size, generator=torch.Generator().manual_seed(seed))
    probe: dict = {}
    ref, lit = _official_logits(state, weights, NET_SPECS[arch], x, probe, dspec=dspec, end_with_bn=end_with_bn,
                                width=skeleton.arch.get("width", 8))
    check = bn_check(masks, state, probe) if bn_consistency else {"skipped": True, "ok": True}
    _bn_verdict(check, path, keep, p)
    model, rest = _folded_model(skeleton, weights, state)
    source_sha, source_bytes = file_sha256(path)
    record = {k: _plain(v) for k, v in obj.items() if k not in ("state_dict", "optimizer")}
    metadata = {
        "rbzoo.dataset": dataset_metadata(dataset),
        "rbzoo.train": {"arch": arch, "dataset": dataset, "keep": keep, "p": p, "end_with_bn": end_with_bn,
                        "objective": objective, "source": "official", "official_arch": _plain(official_arch)},
        "rbzoo.source": {"file": path.name, "sha256": source_sha, "size": source_bytes,
                         "format": "IVRL/RobustBinarySubNet torch.save checkpoint", "record": record},
    }
    digest, got, diff, out_bytes = _write_equivalent(model, out, metadata, x, ref, path)

    n = sum(r["n"] for r in layers)
    bn_floats = sum(v.numel() for k, v in rest.items() if v.is_floating_point())
    scale = ref.abs().max().clamp_min(1e-30)
    return ConvertReport(
        source=path, out=out, source_bytes=source_bytes, source_sha256=source_sha, out_bytes=out_bytes,
        weights_sha256=digest, arch=skeleton.arch, dataset=dataset, keep=keep, p=p, n_weights=n,
        kept=sum(r["kept"] for r in layers), float32_bytes=4 * (n + bn_floats), layers=layers,
        check_inputs=batch, check_seed=seed, max_abs_diff=diff,
        official_pool_rel_diff=None if lit is None else ((got - lit).abs().max() / scale).item(),
        bn_check=check, official={"arch": _plain(official_arch), **record})


def _skeleton(arch: str, num_classes: int, dspec, end_with_bn: bool, keep: float, p: float) -> torch.nn.Module:
    """The rbzoo network on the meta device: names, shapes, dtypes and per-layer keep; no memory."""
    try:
        with torch.device("meta"):
            return create_model(arch, num_classes=num_classes, mean=dspec.mean, std=dspec.std,
                                end_with_bn=end_with_bn, keep=keep, p=p, materialize=False)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _official_masks(skeleton, state: dict, path: Path) -> tuple[dict, dict, list[dict]]:
    """Per prunable layer: the official mask, the effective weight ±1 × mask, and a report row."""
    modules = dict(skeleton.named_modules())
    masks, weights, layers = {}, {}, []
    for key in skeleton.prunable_keys:
        name = key[: -len(".weight")]
        m = modules[name]
        w, s = state[f"{name}.weight"], state[f"{name}.scores"]
        try:
            mask, tie = official_mask(s, m.keep)
        except ValueError as e:
            raise CheckpointError(f"{path}: {name}.scores: {e}") from None
        kept = kept_count(m.numel, m.keep)  # what the sort rule keeps, n − int((1 − k)·n)
        bad = int((w[mask].abs() != 1).sum())
        if bad:
            raise CheckpointError(f"{path}: {name}.weight: {bad} kept weights are not ±1: not a binary-init "
                                  f"SubnetConv checkpoint")
        masks[name], weights[name] = mask, w * mask
        layers.append({"name": key, "shape": list(w.shape), "n": w.numel(), "keep": m.keep, "kept": kept,
                       "boundary_tie": tie})
    return masks, weights, layers


def _official_logits(state: dict, weights: dict, spec: NetSpec, x: torch.Tensor, probe: dict, *, dspec,
                     end_with_bn: bool, width: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The official forward's logits on `x` (filling `probe`), and those of the literal
    avg_pool2d(4) CIFAR head when the final map is 4×4 (else None)."""
    with torch.no_grad():
        ref = official_forward(state, weights, spec, x, probe=probe, mean=dspec.mean, std=dspec.std,
                               end_with_bn=end_with_bn, width=width)
        features = probe.pop("features")
        lit = None
        if not spec.imagenet and features.shape[-2:] == (4, 4):
            # The literal official CIFAR head, avg_pool2d(4); rbzoo pools the same way, so this
            # difference is reported and expected to be zero.
            lit = F.conv2d(F.avg_pool2d(features, 4), weights["fc"])
            if end_with_bn:
                lit = F.batch_norm(lit, state["last.running_mean"], state["last.running_var"], None, None, False, 0.0, BN_EPS)
            lit = lit.flatten(1)
    return ref, lit


def _bn_verdict(check: dict, path: Path, keep: float, p: float) -> None:
    """Raise a one-line ConfigError when the BN statistics are too young to judge, or contradict keep/p."""
    if not check["ok"] and check["checked"] == 0:
        raise ConfigError(f"{path}: cannot check --keep {keep:g} --p {p:g} against the BatchNorm statistics: they are "
                          f"too young to judge (only {check['min_updates']} updates; an empty channel still shows "
                          f"{(1 - BN_MOMENTUM) ** check['min_updates']:.2g} of its initial variance), so they "
                          f"neither confirm nor contradict these values; if keep and p are the ones the model was "
                          f"trained with, convert with --no-bn-check")
    if not check["ok"]:
        worst = sorted(check["layers"], key=lambda r: -(r["sparse"] + r["dense"]))[:3]
        where = ", ".join(f"{r['layer']} ({r['sparse']} sparse, {r['dense']} dense)" for r in worst)
        raise ConfigError(f"{path}: the BatchNorm statistics contradict the masks of --keep {keep:g} --p {p:g}: "
                          f"{check['sparse']} channels pruned whole carried signal and {check['dense']} silent channels "
                          f"would be connected (of {check['checked']}; at most {check['allowed']} tolerated), e.g. "
                          f"{where}; was it trained with other --keep/--p (the paper's zoo: 0.01/0.1)? "
                          f"--no-bn-check converts anyway")


def _folded_model(skeleton, weights: dict, state: dict) -> tuple[torch.nn.Module, dict]:
    """The eval-mode folded network holding the official masks and BN state; also the BN state."""
    model = fold(skeleton, weights={f"{n}.weight": w for n, w in weights.items()})
    prunable = {k[: -len(".weight")] for k in skeleton.prunable_keys}
    rest = {k: v for k, v in state.items() if k.rsplit(".", 1)[0] not in prunable}
    missing, unexpected = model.load_state_dict(rest, strict=False, assign=True)  # replaces the meta tensors
    if unexpected or set(missing) != set(skeleton.prunable_keys):
        raise CheckpointError(f"internal error: BN state does not load: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model.eval(), rest


def _write_equivalent(model, out: Path, metadata: dict, x: torch.Tensor, ref: torch.Tensor,
                      path: Path) -> tuple[str, torch.Tensor, float, int]:
    """Save `model` atomically at `out` only if the file read back gives logits equal to `ref` in
    every bit; returns (weights digest, its logits, max |Δ|, file size)."""
    with atomic_path(out) as tmp:
        digest = save_checkpoint(model, tmp, metadata=metadata, signs="explicit")
        converted = load_checkpoint(tmp)
        with torch.no_grad():
            got = converted(x)
        same = (got == ref) | (got.isnan() & ref.isnan())
        diff = (got - ref).abs().nan_to_num(0.0).max().item()
        if not bool(same.all()):
            raise CheckpointError(f"{path}: equivalence check failed: the converted model's logits differ from the "
                                  f"official forward pass (max |Δ| = {diff:.3g}); nothing written")
        out_bytes = tmp.stat().st_size
    return digest, got, diff, out_bytes


# ------------------------------------------------------------------------------------- zoo import

__all__ = ["ConvertReport", "OFFICIAL_ARCHS", "bn_check", "convert_official", "load_official",
           "numpy_safe_globals", "official_forward", "official_mask"]
