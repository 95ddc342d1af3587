"""Checkpoint format v1 (format.md): seed + one golomb-gaps mask per layer + BN statistics.

`save` writes it, `read` parses and verifies it without building a network, `load` returns an
eval-ready module with folded dense weights. Reading never unpickles anything and never allocates
more than the shapes of the declared architecture require.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import save as st_save

from . import __version__
from ._io import canonical_json, write_bytes
from .codec import decode_mask, encode_mask, entropy_bound_bits, pack_bits
from .constants import MAX_CLASSES
from .errors import CheckpointError, CodecError
from .layers import SubnetConv2d
from .models._registry import ARCH_KEYS, ARCHITECTURES, create_model_from_arch, fold, prunable_layers
from .signs import SIGNS_V1, sign_bits

FORMAT_VERSION = "1"
EXPLICIT = "explicit"
MODEL_DIGEST_TAG = b"rbzoo-model-v1\0"
# rbzoo.model_sha256 is required by this reader (docs/format.md §8): a file without it predates the
# whole-model digest and cannot be verified, so it is refused rather than trusted in part.
REQUIRED_KEYS = ("rbzoo.format", "rbzoo.arch", "rbzoo.signs", "rbzoo.layers", "rbzoo.weights_sha256", "rbzoo.model_sha256")
RESERVED_KEYS = REQUIRED_KEYS + ("rbzoo.seed", "rbzoo.state_sha256")


def weights_digest(layers: list[tuple[np.ndarray, np.ndarray]]) -> str:
    """format.md §5: SHA-256 over packbits(mask) || packbits(signs of kept weights), per layer."""
    h = hashlib.sha256()
    for mask, kept_signs in layers:
        h.update(pack_bits(mask))
        h.update(pack_bits(kept_signs))
    return h.hexdigest()


def _field(h, data: bytes) -> None:
    h.update(len(data).to_bytes(8, "little"))
    h.update(data)


def _shape_text(shape) -> bytes:
    return ",".join(str(int(d)) for d in shape).encode("ascii")


def model_digest(arch_json: str, layers: list[tuple[str, tuple, np.ndarray, np.ndarray]],
                 tensors: dict[str, torch.Tensor]) -> str:
    """docs/format.md §8 `rbzoo.model_sha256`: one SHA-256 over everything that determines the
    network's function — the canonical architecture record, every layer's mask and kept signs,
    and every other stored tensor (BatchNorm statistics, dense layers), in a fixed order."""
    h = hashlib.sha256(MODEL_DIGEST_TAG)
    _field(h, arch_json.encode("utf-8"))
    h.update(len(layers).to_bytes(8, "little"))
    for name, shape, mask, kept_signs in layers:
        _field(h, name.encode("utf-8"))
        _field(h, _shape_text(shape))
        _field(h, pack_bits(mask))
        _field(h, pack_bits(kept_signs))
    h.update(len(tensors).to_bytes(8, "little"))
    for key in sorted(tensors, key=lambda k: k.encode("utf-8")):
        t = tensors[key].detach().to("cpu", torch.float32).contiguous()
        _field(h, key.encode("utf-8"))
        _field(h, b"F32")
        _field(h, _shape_text(t.shape))
        _field(h, t.numpy().astype("<f4", copy=False).tobytes())
    return h.hexdigest()


def _ternary(module: nn.Module) -> torch.Tensor:
    if isinstance(module, SubnetConv2d):
        return module.effective_weight().detach().float().cpu()
    return module.weight.detach().float().cpu()


def _rest_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every state entry that is not a prunable layer's weight/scores, minus num_batches_tracked."""
    prunable = {key[: -len(".weight")] for key in model.prunable_keys}
    out = {}
    for key, value in model.state_dict().items():
        module = key.rsplit(".", 1)[0] if "." in key else ""
        if module in prunable or key.endswith("num_batches_tracked"):
            continue
        out[key] = value
    return out


def save(model: nn.Module, path: str | os.PathLike, metadata: dict | None = None, signs: str = "auto") -> str:
    """Write `model` (trainable or folded) as a format-v1 checkpoint; returns the model digest.

    `signs` is "rbzoo-signs-v1" (regenerated from `model.seed`), "explicit" (stored per kept
    weight), or "auto" (the model's own mode). Values of `metadata` that are not strings are
    JSON-encoded. The write is atomic.
    """
    mode = getattr(model, "signs_mode", SIGNS_V1) if signs == "auto" else signs
    if mode not in (SIGNS_V1, EXPLICIT):
        raise CheckpointError(f"unknown signs mode {mode!r}")
    tensors: dict[str, torch.Tensor] = {}
    layer_meta, parts, rest = _contents(model, mode)
    for key, shape, mask, kept_signs in parts:
        if mode == EXPLICIT:
            tensors[f"{key}.signs"] = torch.from_numpy(np.frombuffer(pack_bits(kept_signs), dtype=np.uint8).copy())
        tensors[f"{key}.mask"] = torch.from_numpy(np.frombuffer(encode_mask(mask), dtype=np.uint8).copy())
    tensors.update(rest)
    arch_json = canonical_json(model.arch)
    digest = model_digest(arch_json, parts, rest)
    meta = {
        "rbzoo.format": FORMAT_VERSION,
        "rbzoo.arch": arch_json,
        "rbzoo.signs": mode,
        "rbzoo.layers": json.dumps(layer_meta),
        "rbzoo.weights_sha256": weights_digest([(m, sg) for _, _, m, sg in parts]),
        "rbzoo.model_sha256": digest,
        "rbzoo.version": __version__,
        "rbzoo.created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if mode == SIGNS_V1:
        meta["rbzoo.seed"] = str(int(model.seed))
    for k, v in (metadata or {}).items():
        if k in RESERVED_KEYS:
            raise CheckpointError(f"metadata key {k!r} is reserved")
        meta[k] = v if isinstance(v, str) else json.dumps(v, sort_keys=True)
    write_bytes(path, st_save(tensors, metadata=meta))
    return digest


def _contents(model: nn.Module, mode: str) -> tuple[list, list, dict[str, torch.Tensor]]:
    """(layer records, (name, shape, mask, kept signs) per prunable layer, the other tensors as float32)."""
    layer_meta, parts = [], []
    for key, module in prunable_layers(model):
        mask, kept_signs = _mask_and_signs(model, key, module, mode)
        layer_meta.append({"name": key, "shape": list(module.weight.shape), "kept": int(mask.sum())})
        parts.append((key, tuple(module.weight.shape), mask, kept_signs))
    rest = {}
    for key, value in _rest_state(model).items():
        if not value.is_floating_point():
            raise CheckpointError(f"{key}: unexpected non-float state tensor")
        rest[key] = value.detach().to("cpu", torch.float32).contiguous()
    return layer_meta, parts, rest


def model_digest_of(model: nn.Module) -> str:
    """The whole-model digest (§8) of a module in memory: what `save` would write for it."""
    if getattr(model, "model_digest", None):
        return model.model_digest
    _, parts, rest = _contents(model, EXPLICIT)
    return model_digest(canonical_json(model.arch), parts, rest)


def _mask_and_signs(model: nn.Module, key: str, module: nn.Module, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """The flat keep-mask and the signs of the kept weights of one prunable layer."""
    w = _ternary(module).numpy().reshape(-1)
    mask = w != 0
    if not np.all(np.abs(w[mask]) == 1):
        raise CheckpointError(f"{key}: effective weights are not ternary (−1, 0, +1)")
    kept_signs = w[mask] > 0
    if mode == SIGNS_V1:
        regen = sign_bits(model.seed, key, module.weight.shape)[mask].astype(bool)
        if not np.array_equal(regen, kept_signs):
            raise CheckpointError(f"{key}: weights do not match rbzoo-signs-v1 for seed {model.seed}; save with signs='explicit'")
    return mask, kept_signs


@dataclass
class LayerRecord:
    name: str
    shape: tuple[int, ...]
    kept: int
    mask: np.ndarray  # bool, flat
    signs: np.ndarray  # bool, one per kept weight
    coded_bytes: int

    @property
    def n(self) -> int:
        return int(np.prod(self.shape))

    @property
    def bound_bits(self) -> float:
        return entropy_bound_bits(self.n, self.kept)


@dataclass
class Checkpoint:
    """A parsed, verified checkpoint: what `rbzoo info` shows and what `load` builds from."""

    path: Path
    metadata: dict[str, str]
    arch: dict
    signs_mode: str
    seed: int | None
    layers: list[LayerRecord]
    tensors: dict[str, torch.Tensor]
    digest: str  # the whole-model digest, rbzoo.model_sha256 (docs/format.md §8)
    file_size: int
    weights_digest: str = ""  # rbzoo.weights_sha256: masks and signs only (format.md §5)

    def meta_json(self, key: str, default=None):
        """A metadata value decoded from JSON (or `default` if absent)."""
        if key not in self.metadata:
            return default
        try:
            return json.loads(self.metadata[key])
        except (ValueError, RecursionError):  # not JSON (a bare string), or hostile (huge integers, deep nesting)
            return self.metadata[key]


# Bounds on what a file may declare, checked before anything is allocated (a hostile 200-byte file
# must not make the reader build a 200 GB network). The largest zoo model (ImageNet ResNet50) has
# 23.5 M prunable weights; the limits leave room for research variants, nothing more.
MAX_IN_CHANNELS = 64
MAX_WIDTH = 1024
MAX_PRUNABLE = 1 << 27  # 134 M weights
NONLINEARITIES = ("relu", "leaky_relu")


def _shown(value, limit: int) -> str:
    """A value read from a file, for a one-line message: truncated, control characters escaped."""
    text = value if isinstance(value, str) else repr(value)
    return text[:limit].encode("unicode_escape").decode("ascii")


def dataset_name(metadata: dict[str, str]) -> str | None:
    """The dataset name recorded in `rbzoo.dataset` (a JSON object or a bare name), if any."""
    text = metadata.get("rbzoo.dataset")
    try:
        value = json.loads(text) if text else None
    except (ValueError, RecursionError):
        value = text  # a bare name
    if isinstance(value, dict):
        value = value.get("name")
    return value if isinstance(value, str) and value else None


def checkpoint_dataset(ckpt: Checkpoint) -> str | None:
    """:func:`dataset_name` of a checkpoint's metadata."""
    return dataset_name(ckpt.metadata)


def _strict_json(text: str, key: str):
    def no_duplicates(pairs):
        keys = [k for k, _ in pairs]
        if len(keys) != len(set(keys)):
            raise CheckpointError(f"metadata {key} has a duplicate key")
        return dict(pairs)

    def no_constants(name):
        raise CheckpointError(f"metadata {key} contains {name}")

    try:
        return json.loads(text, object_pairs_hook=no_duplicates, parse_constant=no_constants)
    except (ValueError, TypeError, RecursionError) as e:  # ValueError also covers 5000-digit integers
        raise CheckpointError(f"metadata {key} is not valid JSON: {str(e).splitlines()[0][:120]}") from None


def check_arch(arch) -> None:
    """Reject an architecture record that rbzoo would not write, before any model is built."""
    def bad(why: str):
        raise CheckpointError(f"bad rbzoo.arch: {why}")

    def integer(name: str, lo: int, hi: int) -> None:
        v = arch.get(name)
        if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
            bad(f"{name} must be an integer in [{lo}, {hi}], got {_shown(v, 40)}")

    if not isinstance(arch, dict):
        bad("not a JSON object")
    if not isinstance(arch.get("id"), str) or arch["id"] not in ARCHITECTURES:
        bad(f"unknown architecture {_shown(arch.get('id'), 60)}")
    unknown = set(arch) - set(ARCH_KEYS) - {"id"}
    if unknown:
        bad(f"unknown options {_shown(sorted(unknown)[:5], 120)}")
    integer("num_classes", 1, MAX_CLASSES)
    integer("in_channels", 1, MAX_IN_CHANNELS)
    for name in ("mean", "std"):
        v = arch.get(name)
        if (not isinstance(v, list) or len(v) != arch["in_channels"]
                or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v)):
            bad(f"{name} must be {arch['in_channels']} finite numbers")
    if not all(x > 0 for x in arch["std"]):
        bad("std must be positive")
    for name in ("end_with_bn", "first_layer_dense", "last_layer_dense"):
        if not isinstance(arch.get(name), bool):
            bad(f"{name} must be true or false")
    if arch.get("nonlinearity") not in NONLINEARITIES:
        bad(f"nonlinearity must be one of {', '.join(NONLINEARITIES)}")
    if arch["id"] == "tiny_resnet":
        integer("width", 1, MAX_WIDTH)
    elif "width" in arch:
        bad(f"{arch['id']} has no width option")


def _skeleton(arch: dict, path: Path) -> nn.Module:
    """The declared network on the meta device: shapes and key names, no memory."""
    check_arch(arch)
    try:
        with torch.device("meta"):
            skeleton = create_model_from_arch(arch, materialize=False)
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: bad rbzoo.arch: {e}") from None
    total = sum(math.prod(m.weight.shape) for _, m in prunable_layers(skeleton))
    if total > MAX_PRUNABLE:
        raise CheckpointError(f"{path}: rbzoo.arch declares {total:,} prunable weights, above rbzoo's limit of {MAX_PRUNABLE:,}")
    return skeleton


@dataclass
class _Header:
    arch: dict
    arch_json: str
    mode: str
    seed: int | None
    declared: list


def _read_header(meta: dict, path: Path) -> _Header:
    if "rbzoo.format" not in meta:
        raise CheckpointError(f"{path}: not an rbzoo checkpoint (no rbzoo.format metadata)")
    if meta["rbzoo.format"] != FORMAT_VERSION:
        raise CheckpointError(f"{path}: unknown rbzoo.format {meta['rbzoo.format'][:20]!r} (this reader knows {FORMAT_VERSION})")
    if "rbzoo.model_sha256" not in meta and "rbzoo.weights_sha256" in meta:
        raise CheckpointError(f"{path}: written by rbzoo 0.1, without the whole-model digest (rbzoo.model_sha256); "
                              "it cannot be verified, so it is refused: re-create it with this rbzoo")
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        raise CheckpointError(f"{path}: missing metadata {', '.join(missing)}")
    arch_json = meta["rbzoo.arch"]
    arch = _strict_json(arch_json, "rbzoo.arch")
    try:
        canonical = canonical_json(arch)
    except (TypeError, ValueError):
        canonical = None
    if canonical != arch_json:
        raise CheckpointError(f"{path}: rbzoo.arch is not in canonical JSON form (docs/format.md §8)")
    mode = meta["rbzoo.signs"]
    if mode not in (SIGNS_V1, EXPLICIT):
        raise CheckpointError(f"{path}: unknown rbzoo.signs {mode[:40]!r}")
    seed = None
    if mode == SIGNS_V1:
        text = meta.get("rbzoo.seed", "")
        if not (text.isascii() and text.isdigit() and len(text) <= 20 and int(text) < 2**64 and str(int(text)) == text):
            raise CheckpointError(f"{path}: rbzoo.seed missing or out of range")
        seed = int(text)
    declared = _strict_json(meta["rbzoo.layers"], "rbzoo.layers")
    return _Header(arch, arch_json, mode, seed, declared)


def _check_tensor_set(present: set, expected: list, rest_expected: dict, mode: str, arch: dict, path: Path) -> None:
    wanted = set(rest_expected) | {f"{k}.mask" for k, _ in expected}
    if mode == EXPLICIT:
        wanted |= {f"{k}.signs" for k, _ in expected}
    if present != wanted:
        parts = []
        if wanted - present:
            parts.append("missing " + ", ".join(sorted(wanted - present)[:5]))
        if present - wanted:
            parts.append("unexpected " + ", ".join(_shown(k, 80) for k in sorted(present - wanted)[:5]))
        raise CheckpointError(f"{path}: tensor set does not match {arch.get('id')}: {'; '.join(parts)}")


def _read_layer(f, head: _Header, entry, key: str, shape: tuple, path: Path) -> LayerRecord:
    if not isinstance(entry, dict) or entry.get("name") != key or tuple(entry.get("shape", ()) or ()) != shape:
        raise CheckpointError(f"{path}: layer {key}: declared {_shown(entry, 120)} but the architecture has shape {list(shape)}")
    kept = entry.get("kept")
    n = math.prod(shape)
    if not isinstance(kept, int) or isinstance(kept, bool) or not 0 <= kept <= n:
        raise CheckpointError(f"{path}: layer {key}: bad kept count {_shown(kept, 40)}")
    blob = f.get_tensor(f"{key}.mask")
    if blob.dtype != torch.uint8 or blob.dim() != 1:
        raise CheckpointError(f"{path}: layer {key}: mask must be a 1-D U8 tensor")
    try:
        mask = decode_mask(blob.numpy(), n, expected_kept=kept)
    except CodecError as e:
        raise CheckpointError(f"{path}: layer {key}: {e}") from None
    if head.mode == SIGNS_V1:
        kept_signs = sign_bits(head.seed, key, shape)[mask].astype(bool)
    else:
        packed = f.get_tensor(f"{key}.signs")
        if packed.dtype != torch.uint8 or tuple(packed.shape) != ((kept + 7) // 8,):
            raise CheckpointError(f"{path}: layer {key}: signs must be U8[{(kept + 7) // 8}]")
        bits = np.unpackbits(packed.numpy(), bitorder="little")
        if bits[kept:].any():
            raise CheckpointError(f"{path}: layer {key}: nonzero padding bits in signs")
        kept_signs = bits[:kept].astype(bool)
    return LayerRecord(key, shape, kept, mask, kept_signs, blob.numel())


def read(path: str | os.PathLike) -> Checkpoint:
    """Parse and fully verify a checkpoint: bounded architecture, codec, counts, tensor set,
    shapes, and the whole-model digest. Builds nothing but a meta-device skeleton."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no such checkpoint: {path}")
    try:
        handle = safe_open(str(path), framework="pt", device="cpu")
    except Exception as e:  # safetensors raises its own error type for any malformed header
        raise CheckpointError(f"{path}: not a valid safetensors file ({str(e).splitlines()[0][:160]})") from None
    with handle as f:
        meta = f.metadata() or {}
        head = _read_header(meta, path)
        skeleton = _skeleton(head.arch, path)
        expected = [(key, tuple(m.weight.shape)) for key, m in prunable_layers(skeleton)]
        if not isinstance(head.declared, list) or len(head.declared) != len(expected):
            n_declared = len(head.declared) if isinstance(head.declared, list) else "?"
            raise CheckpointError(f"{path}: rbzoo.layers lists {n_declared} layers, {head.arch['id']} has {len(expected)}")
        rest_expected = {k: tuple(v.shape) for k, v in _rest_state(skeleton).items()}
        _check_tensor_set(set(f.keys()), expected, rest_expected, head.mode, head.arch, path)
        layers = [_read_layer(f, head, entry, key, shape, path) for entry, (key, shape) in zip(head.declared, expected)]
        tensors = {}
        for key, shape in rest_expected.items():
            t = f.get_tensor(key)
            if t.dtype != torch.float32 or tuple(t.shape) != shape:
                raise CheckpointError(f"{path}: {key}: expected F32{list(shape)}, found {str(t.dtype).replace('torch.', '')}{list(t.shape)}")
            tensors[key] = t
    _verify_digests(meta, head, layers, tensors, path)
    return Checkpoint(path, dict(meta), head.arch, head.mode, head.seed, layers, tensors, meta["rbzoo.model_sha256"],
                      path.stat().st_size, weights_digest=meta["rbzoo.weights_sha256"])


def _verify_digests(meta: dict, head: _Header, layers: list[LayerRecord], tensors: dict, path: Path) -> None:
    wd = weights_digest([(rec.mask, rec.signs) for rec in layers])
    if wd != meta["rbzoo.weights_sha256"]:
        raise CheckpointError(f"{path}: weights digest mismatch (file says {_shown(meta['rbzoo.weights_sha256'], 16)}…, content gives {wd[:16]}…): the masks or signs are corrupted")
    md = model_digest(head.arch_json, [(r.name, r.shape, r.mask, r.signs) for r in layers], tensors)
    if md != meta["rbzoo.model_sha256"]:
        raise CheckpointError(f"{path}: model digest mismatch (file says {_shown(meta['rbzoo.model_sha256'], 16)}…, content gives {md[:16]}…): "
                              "the architecture record, masks or stored tensors were changed")


def build(ckpt: Checkpoint, device: str | torch.device = "cpu") -> nn.Module:
    """An eval-mode module with folded dense weights from a verified :class:`Checkpoint`."""
    model = create_model_from_arch(ckpt.arch, materialize=False)  # arch already bounded by read()
    model = fold(model, weights={rec.name: _dense_weight(rec) for rec in ckpt.layers})
    missing, unexpected = model.load_state_dict(ckpt.tensors, strict=False)
    unexpected = [k for k in unexpected]
    missing = [k for k in missing if not k.endswith("num_batches_tracked") and k[: -len(".weight")] + ".weight" not in model.prunable_keys]
    if missing or unexpected:  # read() already checked the set; this guards against drift
        raise CheckpointError(f"state mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.seed = ckpt.seed
    model.signs_mode = ckpt.signs_mode
    model.model_digest = ckpt.digest
    model.weights_sha256 = ckpt.weights_digest
    model.rbzoo_metadata = ckpt.metadata
    model.requires_grad_(False)
    return model.to(device).eval()


def _dense_weight(rec: LayerRecord) -> torch.Tensor:
    w = np.zeros(rec.n, dtype=np.float32)
    w[rec.mask] = np.where(rec.signs, 1.0, -1.0).astype(np.float32)
    return torch.from_numpy(w).view(rec.shape)


def load(path: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """Read, verify and build a checkpoint: an eval-ready module with folded weights."""
    return build(read(path), device)
