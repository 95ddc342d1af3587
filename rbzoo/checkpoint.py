"""Checkpoint format v1 (format.md): seed + one golomb-gaps mask per layer + BN statistics.

`save` writes it, `read` parses and verifies it without building a network, `load` returns an
eval-ready module with folded dense weights. Reading never unpickles anything and never allocates
more than the shapes of the declared architecture require.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import save as st_save

from . import __version__
from ._io import write_bytes
from .codec import decode_mask, encode_mask, entropy_bound_bits
from .errors import CheckpointError, CodecError
from .exact import pack_bits
from .layers import SubnetConv2d
from .models._registry import create_model_from_arch, fold, prunable_layers
from .signs import SIGNS_V1, sign_bits

FORMAT_VERSION = "1"
EXPLICIT = "explicit"
REQUIRED_KEYS = ("rbzoo.format", "rbzoo.arch", "rbzoo.signs", "rbzoo.layers", "rbzoo.weights_sha256")


def weights_digest(layers: list[tuple[np.ndarray, np.ndarray]]) -> str:
    """format.md §5: SHA-256 over packbits(mask) || packbits(signs of kept weights), per layer."""
    h = hashlib.sha256()
    for mask, kept_signs in layers:
        h.update(pack_bits(mask))
        h.update(pack_bits(kept_signs))
    return h.hexdigest()


def state_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the non-prunable tensors (BN statistics, dense layers), sorted by key.

    Not part of format.md (the weights digest covers only masks and signs); rbzoo writes it as
    the extra metadata key `rbzoo.state_sha256` so a flipped bit in a BN buffer is caught too.
    """
    h = hashlib.sha256()
    for key in sorted(tensors):
        h.update(key.encode() + b"\0")
        h.update(tensors[key].detach().to("cpu", torch.float32).contiguous().numpy().astype("<f4", copy=False).tobytes())
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
    """Write `model` (trainable or folded) as a format-v1 checkpoint; returns the weights digest.

    `signs` is "rbzoo-signs-v1" (regenerated from `model.seed`), "explicit" (stored per kept
    weight), or "auto" (the model's own mode). Values of `metadata` that are not strings are
    JSON-encoded.
    """
    mode = getattr(model, "signs_mode", SIGNS_V1) if signs == "auto" else signs
    if mode not in (SIGNS_V1, EXPLICIT):
        raise CheckpointError(f"unknown signs mode {mode!r}")
    tensors: dict[str, torch.Tensor] = {}
    layer_meta, digest_parts = [], []
    for key, module in prunable_layers(model):
        w = _ternary(module).numpy().reshape(-1)
        mask = w != 0
        if not np.all(np.abs(w[mask]) == 1):
            raise CheckpointError(f"{key}: effective weights are not ternary (−1, 0, +1)")
        kept_signs = w[mask] > 0
        if mode == SIGNS_V1:
            regen = sign_bits(model.seed, key, module.weight.shape)[mask].astype(bool)
            if not np.array_equal(regen, kept_signs):
                raise CheckpointError(f"{key}: weights do not match rbzoo-signs-v1 for seed {model.seed}; save with signs='explicit'")
        else:
            tensors[f"{key}.signs"] = torch.from_numpy(np.frombuffer(pack_bits(kept_signs), dtype=np.uint8).copy())
        tensors[f"{key}.mask"] = torch.from_numpy(np.frombuffer(encode_mask(mask), dtype=np.uint8).copy())
        layer_meta.append({"name": key, "shape": list(module.weight.shape), "kept": int(mask.sum())})
        digest_parts.append((mask, kept_signs))
    for key, value in _rest_state(model).items():
        if not value.is_floating_point():
            raise CheckpointError(f"{key}: unexpected non-float state tensor")
        tensors[key] = value.detach().to("cpu", torch.float32).contiguous()
    digest = weights_digest(digest_parts)
    rest = {k: v for k, v in tensors.items() if not k.endswith((".mask", ".signs"))}
    meta = {
        "rbzoo.format": FORMAT_VERSION,
        "rbzoo.arch": json.dumps(model.arch, sort_keys=True),
        "rbzoo.signs": mode,
        "rbzoo.layers": json.dumps(layer_meta),
        "rbzoo.weights_sha256": digest,
        "rbzoo.state_sha256": state_digest(rest),
        "rbzoo.version": __version__,
        "rbzoo.created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if mode == SIGNS_V1:
        meta["rbzoo.seed"] = str(int(model.seed))
    for k, v in (metadata or {}).items():
        if k in REQUIRED_KEYS or k in ("rbzoo.seed", "rbzoo.state_sha256"):
            raise CheckpointError(f"metadata key {k!r} is reserved")
        meta[k] = v if isinstance(v, str) else json.dumps(v, sort_keys=True)
    write_bytes(path, st_save(tensors, metadata=meta))
    return digest


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
    digest: str
    file_size: int
    extra: dict = field(default_factory=dict)

    def meta_json(self, key: str, default=None):
        """A metadata value decoded from JSON (or `default` if absent)."""
        if key not in self.metadata:
            return default
        try:
            return json.loads(self.metadata[key])
        except json.JSONDecodeError:
            return self.metadata[key]


def _json_meta(meta: dict, key: str):
    try:
        return json.loads(meta[key])
    except (json.JSONDecodeError, TypeError) as e:
        raise CheckpointError(f"metadata {key} is not valid JSON: {e}") from None


def read(path: str | os.PathLike) -> Checkpoint:
    """Parse and fully verify a checkpoint (codec, counts, tensor set, shapes, digest)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no such checkpoint: {path}")
    try:
        handle = safe_open(str(path), framework="pt", device="cpu")
    except Exception as e:  # safetensors raises its own error type for any malformed header
        raise CheckpointError(f"{path}: not a valid safetensors file ({str(e).splitlines()[0]})") from None
    with handle as f:
        meta = f.metadata() or {}
        missing_meta = [k for k in REQUIRED_KEYS if k not in meta]
        if "rbzoo.format" not in meta:
            raise CheckpointError(f"{path}: not an rbzoo checkpoint (no rbzoo.format metadata)")
        if meta["rbzoo.format"] != FORMAT_VERSION:
            raise CheckpointError(f"{path}: unknown rbzoo.format {meta['rbzoo.format']!r} (this reader knows {FORMAT_VERSION})")
        if missing_meta:
            raise CheckpointError(f"{path}: missing metadata {', '.join(missing_meta)}")
        arch = _json_meta(meta, "rbzoo.arch")
        mode = meta["rbzoo.signs"]
        if mode not in (SIGNS_V1, EXPLICIT):
            raise CheckpointError(f"{path}: unknown rbzoo.signs {mode!r}")
        seed = None
        if mode == SIGNS_V1:
            try:
                seed = int(meta["rbzoo.seed"])
                assert 0 <= seed < 2**64
            except (KeyError, ValueError, AssertionError):
                raise CheckpointError(f"{path}: rbzoo.seed missing or out of range") from None
        try:
            skeleton = create_model_from_arch(arch, materialize=False)
        except (KeyError, ValueError, TypeError) as e:
            raise CheckpointError(f"{path}: bad rbzoo.arch: {e}") from None
        declared = _json_meta(meta, "rbzoo.layers")
        expected = [(key, tuple(m.weight.shape)) for key, m in prunable_layers(skeleton)]
        if not isinstance(declared, list) or len(declared) != len(expected):
            raise CheckpointError(f"{path}: rbzoo.layers lists {len(declared) if isinstance(declared, list) else '?'} layers, {arch.get('id')} has {len(expected)}")
        rest_expected = {k: tuple(v.shape) for k, v in _rest_state(skeleton).items()}
        wanted = set(rest_expected) | {f"{k}.mask" for k, _ in expected}
        if mode == EXPLICIT:
            wanted |= {f"{k}.signs" for k, _ in expected}
        present = set(f.keys())
        if present != wanted:
            parts = []
            if wanted - present:
                parts.append("missing " + ", ".join(sorted(wanted - present)[:5]))
            if present - wanted:
                parts.append("unexpected " + ", ".join(sorted(present - wanted)[:5]))
            raise CheckpointError(f"{path}: tensor set does not match {arch.get('id')}: {'; '.join(parts)}")
        layers, parts = [], []
        for entry, (key, shape) in zip(declared, expected):
            if not isinstance(entry, dict) or entry.get("name") != key or tuple(entry.get("shape", ())) != shape:
                raise CheckpointError(f"{path}: layer {key}: declared {entry} but the architecture has shape {list(shape)}")
            kept = entry.get("kept")
            n = int(np.prod(shape))
            if not isinstance(kept, int) or not 0 <= kept <= n:
                raise CheckpointError(f"{path}: layer {key}: bad kept count {kept!r}")
            blob = f.get_tensor(f"{key}.mask")
            if blob.dtype != torch.uint8 or blob.dim() != 1:
                raise CheckpointError(f"{path}: layer {key}: mask must be a 1-D U8 tensor")
            try:
                mask = decode_mask(blob.numpy(), n, expected_kept=kept)
            except CodecError as e:
                raise CheckpointError(f"{path}: layer {key}: {e}") from None
            if mode == SIGNS_V1:
                kept_signs = sign_bits(seed, key, shape)[mask].astype(bool)
            else:
                packed = f.get_tensor(f"{key}.signs")
                if packed.dtype != torch.uint8 or tuple(packed.shape) != ((kept + 7) // 8,):
                    raise CheckpointError(f"{path}: layer {key}: signs must be U8[{(kept + 7) // 8}]")
                bits = np.unpackbits(packed.numpy(), bitorder="little")
                if bits[kept:].any():
                    raise CheckpointError(f"{path}: layer {key}: nonzero padding bits in signs")
                kept_signs = bits[:kept].astype(bool)
            layers.append(LayerRecord(key, shape, kept, mask, kept_signs, blob.numel()))
            parts.append((mask, kept_signs))
        tensors = {}
        for key, shape in rest_expected.items():
            t = f.get_tensor(key)
            if t.dtype != torch.float32 or tuple(t.shape) != shape:
                raise CheckpointError(f"{path}: {key}: expected F32{list(shape)}, found {str(t.dtype).replace('torch.', '')}{list(t.shape)}")
            tensors[key] = t
    digest = weights_digest(parts)
    if digest != meta["rbzoo.weights_sha256"]:
        raise CheckpointError(f"{path}: weights digest mismatch (file says {meta['rbzoo.weights_sha256'][:16]}…, content gives {digest[:16]}…): the masks or signs are corrupted")
    if "rbzoo.state_sha256" in meta and state_digest(tensors) != meta["rbzoo.state_sha256"]:
        raise CheckpointError(f"{path}: BatchNorm/dense tensor digest mismatch: the stored statistics are corrupted")
    return Checkpoint(path, dict(meta), arch, mode, seed, layers, tensors, digest, path.stat().st_size,
                      extra={"skeleton": skeleton})


def build(ckpt: Checkpoint, device: str | torch.device = "cpu") -> nn.Module:
    """An eval-mode module with folded dense weights from a verified :class:`Checkpoint`."""
    model = ckpt.extra.pop("skeleton", None) or create_model_from_arch(ckpt.arch, materialize=False)
    model = fold(model, weights={rec.name: _dense_weight(rec) for rec in ckpt.layers})
    missing, unexpected = model.load_state_dict(ckpt.tensors, strict=False)
    unexpected = [k for k in unexpected]
    missing = [k for k in missing if not k.endswith("num_batches_tracked") and k[: -len(".weight")] + ".weight" not in model.prunable_keys]
    if missing or unexpected:  # read() already checked the set; this guards against drift
        raise CheckpointError(f"state mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.seed = ckpt.seed
    model.signs_mode = ckpt.signs_mode
    model.weights_sha256 = ckpt.digest
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
