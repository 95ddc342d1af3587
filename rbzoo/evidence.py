"""Evidence of robust-accuracy breaks: the adversarial input of every sample an attack broke.

Each adversarial example is stored as its perturbation from the clean image, quantized:
``x' = clamp(x + q·s, 0, 1)`` with integer symbols ``q ∈ [−L, L]`` (int8) and one float32 step
``s`` per sample, compressed with raw deflate. L is the coarsest level of ``LEVELS`` at which the
decoded example is still inside the threat model and still misclassified with a margin no smaller
than ``min(its exact margin, KEEP_MARGIN)``; an example no level keeps is stored exactly (float32,
level 0). APGD's L∞ perturbations sit mostly at ±ε, so L = 1 (δ ∈ {−ε, 0, +ε}) usually suffices:
about 1 bit per pixel before deflate.

- L∞: ``s = ε / L``, ``q = round(δ / s)`` clipped to ±L.
- L2: ``s = max|δ| / L``, ``q = trunc(δ / s)`` (toward zero: ‖q·s‖₂ ≤ ‖δ‖₂).
- A pixel at 0 or 1 gets ``q = ±L`` so that the clamp gives it back exactly.

The threat-model check allows float32 rounding (``EPS_RTOL``, ``EPS_ATOL``): pyautoattack itself
projects with ``x ± ε`` in float32. The *adversarial margin* of logits z for label y is
``(max_{j≠y} z_j − z_y) / max(‖z‖∞, tiny)``: positive iff the label is wrong.

The evidence file is safetensors (numpy arrays, string metadata, no pickle); reading it bounds
every size before allocating (:func:`read_evidence`; :func:`read_evidence_file` refuses an oversized
file before reading it). Imports nothing from rbzoo but `errors` and `_io`.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ._io import read_bounded
from .errors import VerificationError

FORMAT = 1
LEVELS = (1, 3, 15, 127)  # tried in order; 0 marks an exactly stored (float32) example
EXACT = 0
KEEP_MARGIN = 2e-2  # a quantized example must keep its margin up to this (τ of the `fast` profile)
EPS_RTOL, EPS_ATOL = 1e-5, 1e-6  # float32 slack of the ε-ball check
MAX_EVIDENCE_BYTES = 1 << 31
CODEC = "rbzoo-evidence-v1: x' = clamp(x + q*scale, 0, 1), q int8 raw-deflate (level>0) or x' float32 raw-deflate (level 0)"


def adversarial_margins(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(best other logit − true logit) / ‖z‖∞ per row: > 0 iff misclassified. NaN rows get −2."""
    z = logits.detach().to(torch.float32)
    y = labels.to(z.device).long().reshape(-1, 1)
    true = z.gather(1, y).squeeze(1)
    other = z.scatter(1, y, float("-inf")).amax(1)
    m = (other - true) / z.abs().amax(1).clamp_min(torch.finfo(torch.float32).tiny)
    return torch.nan_to_num(m, nan=-2.0)


def perturbation_norms(x: torch.Tensor, x_adv: torch.Tensor, norm: str) -> torch.Tensor:
    """‖x_adv − x‖ per sample. The differences are float32 (relative error ≤ 2⁻²⁴, far inside
    EPS_RTOL); the L2 sum accumulates in float64."""
    d = (x_adv.float() - x.float()).flatten(1)
    return d.abs().amax(1).double() if norm == "Linf" else d.square().sum(1, dtype=torch.float64).sqrt()


def within_threat(x: torch.Tensor, x_adv: torch.Tensor, norm: str, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(inside the ε-ball, inside [0, 1]) per sample, with float32 slack on the ball only.
    NaN and ±inf fail the box (every comparison with NaN is false)."""
    ball = perturbation_norms(x, x_adv, norm) <= eps * (1 + EPS_RTOL) + EPS_ATOL
    lo, hi = x_adv.flatten(1).aminmax(dim=1)
    return ball.cpu(), ((lo >= 0) & (hi <= 1)).cpu()


def _symbols(x: torch.Tensor, x_adv: torch.Tensor, norm: str, eps: float, level: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(q int8 [k, ...], scale float32 [k]) of a batch at one level."""
    d = (x_adv - x).float()
    k = len(x)
    if norm == "Linf":
        scale = torch.full((k,), eps / level, dtype=torch.float32)
        q = torch.round(d / scale.view(-1, *[1] * (d.ndim - 1)))
    else:
        scale = (d.flatten(1).abs().amax(1) / level).float().clamp_min(torch.finfo(torch.float32).tiny)
        q = torch.trunc(d / scale.view(-1, *[1] * (d.ndim - 1)))
    q = q.clamp(-level, level)
    q = torch.where(x_adv >= 1, torch.full_like(q, level), q)
    q = torch.where(x_adv <= 0, torch.full_like(q, -level), q)
    return q.to(torch.int8), scale


def dequantize(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The decoder: clamp(x + q·scale, 0, 1) in float32."""
    s = scale.to(x.device, torch.float32).view(-1, *[1] * (x.ndim - 1))
    return (x.float() + q.to(x.device, torch.float32) * s).clamp(0, 1)


@dataclass
class Encoded:
    """One stored example: its evaluated position and how to rebuild it from the clean image."""

    position: int
    label: int
    adv_label: int
    attack: str
    level: int  # 0: exact float32
    scale: float
    payload: bytes

    def to_json(self) -> dict:
        return {"position": self.position, "label": self.label, "adv_label": self.adv_label, "attack": self.attack,
                "level": self.level, "scale": self.scale, "payload": self.payload.hex()}

    @classmethod
    def from_json(cls, d: dict) -> Encoded:
        return cls(int(d["position"]), int(d["label"]), int(d["adv_label"]), str(d["attack"]), int(d["level"]),
                   float(d["scale"]), bytes.fromhex(d["payload"]))


def _deflate(raw: bytes) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, -15, 9)
    return c.compress(raw) + c.flush()


def _inflate(data: bytes, size: int) -> bytes:
    d = zlib.decompressobj(-15)
    raw = d.decompress(data, size)
    if len(raw) != size or d.unconsumed_tail or not d.eof or d.unused_data:
        raise VerificationError(f"evidence: a payload does not inflate to exactly {size} bytes")
    return raw


@torch.no_grad()
def encode_breaks(model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor, positions, attack: str,
                  norm: str, eps: float, adv_logits: torch.Tensor | None = None) -> list[Encoded]:
    """Encode the broken examples (x_adv, misclassified) of clean images x with labels y.

    Run under the attack's numerics profile: the re-checks forward the decoded examples through
    `model` once per level, on the samples no coarser level kept. `adv_logits`: the model's logits
    of `x_adv` if the caller has them (the attack's own check), saving one forward pass.
    """
    x, x_adv = x.detach().float(), x_adv.detach().float()
    k = len(x)
    if k == 0:
        return []
    exact_margin = adversarial_margins(model(x_adv) if adv_logits is None else adv_logits, y).cpu()
    want = torch.minimum(exact_margin, torch.tensor(KEEP_MARGIN))
    out: list[Encoded | None] = [None] * k
    todo = torch.arange(k)
    for level in LEVELS:
        if not len(todo):
            break
        q, scale = _symbols(x[todo], x_adv[todo], norm, eps, level)
        dec = dequantize(x[todo], q, scale)
        logits = model(dec)
        margin = adversarial_margins(logits, y[todo]).cpu()
        ball, box = within_threat(x[todo], dec, norm, eps)
        ok = ball & box & (margin > 0) & (margin >= want[todo])
        preds = logits.argmax(1).cpu()
        for j in torch.nonzero(ok).flatten().tolist():
            i = int(todo[j])
            out[i] = Encoded(int(positions[i]), int(y[i]), int(preds[j]), attack, level, float(scale[j]),
                             _deflate(q[j].cpu().numpy().tobytes()))
        todo = todo[~ok]
    if len(todo):
        preds = (model(x_adv[todo]) if adv_logits is None else adv_logits[todo.to(adv_logits.device)]).argmax(1).cpu()
        for j, i in enumerate(todo.tolist()):
            raw = x_adv[i].cpu().numpy().astype("<f4").tobytes()
            out[i] = Encoded(int(positions[i]), int(y[i]), int(preds[j]), attack, EXACT, 0.0, _deflate(raw))
    return out  # type: ignore[return-value]


def decode_one(x: torch.Tensor, e: Encoded) -> torch.Tensor:
    """The stored adversarial example of clean image `x` (one image, no batch dimension)."""
    numel = x.numel()
    if e.level == EXACT:
        return torch.from_numpy(np.frombuffer(_inflate(e.payload, 4 * numel), dtype="<f4").copy()).view_as(x)
    if not 1 <= e.level <= 127 or not np.isfinite(e.scale) or e.scale <= 0:
        raise VerificationError(f"evidence: sample {e.position} has a bad level {e.level} or scale {e.scale}")
    q = torch.from_numpy(np.frombuffer(_inflate(e.payload, numel), dtype=np.int8).copy()).view_as(x)
    if q.abs().max() > e.level:
        raise VerificationError(f"evidence: sample {e.position} has symbols beyond its level {e.level}")
    return dequantize(x.unsqueeze(0), q.unsqueeze(0), torch.tensor([e.scale], dtype=torch.float32))[0]


def decode_many(x: torch.Tensor, items: list[Encoded]) -> torch.Tensor:
    """The stored adversarial examples of clean images `x` (one per item): as :func:`decode_one`,
    quantized ones dequantized in one batch."""
    k = len(items)
    if k == 0:
        return x.float().clone()
    numel = x[0].numel()
    out = torch.empty(x.shape, dtype=torch.float32)
    qs, scales, quantized = np.zeros((k, numel), np.int8), np.zeros(k, np.float32), np.zeros(k, bool)
    for j, e in enumerate(items):
        if e.level == EXACT:
            out[j] = decode_one(x[j].cpu(), e)
            continue
        if not 1 <= e.level <= 127 or not np.isfinite(e.scale) or e.scale <= 0:
            raise VerificationError(f"evidence: sample {e.position} has a bad level {e.level} or scale {e.scale}")
        q = np.frombuffer(_inflate(e.payload, numel), dtype=np.int8)
        if np.abs(q.astype(np.int16)).max() > e.level:
            raise VerificationError(f"evidence: sample {e.position} has symbols beyond its level {e.level}")
        qs[j], scales[j], quantized[j] = q, e.scale, True
    if quantized.any():
        sel = torch.from_numpy(quantized)
        xq = x.cpu()[sel].float()
        out[sel] = dequantize(xq, torch.from_numpy(qs[quantized]).view(xq.shape), torch.from_numpy(scales[quantized]))
    return out


# --- the evidence file ---------------------------------------------------------------------------------

_ARRAYS = {"positions": np.int64, "labels": np.int64, "adv_labels": np.int64, "attack": np.uint8, "level": np.int16,
           "scale": np.float32, "offsets": np.int64, "payload": np.uint8}


@dataclass
class Evidence:
    """Every stored example of one evaluation, with what it was made under."""

    items: list[Encoded]
    meta: dict = field(default_factory=dict)  # norm, eps, attacks, shape, numerics, model_digest, ...

    def by_position(self) -> dict[int, Encoded]:
        return {e.position: e for e in self.items}

    def to_bytes(self) -> bytes:
        """safetensors bytes; the same items and meta always give the same bytes."""
        from safetensors.numpy import save

        items = sorted(self.items, key=lambda e: e.position)
        attacks = list(self.meta["attacks"])
        lengths = [len(e.payload) for e in items]
        arrays = {
            "positions": np.array([e.position for e in items], np.int64),
            "labels": np.array([e.label for e in items], np.int64),
            "adv_labels": np.array([e.adv_label for e in items], np.int64),
            "attack": np.array([attacks.index(e.attack) for e in items], np.uint8),
            "level": np.array([e.level for e in items], np.int16),
            "scale": np.array([e.scale for e in items], np.float32),
            "offsets": np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).astype(np.int64),
            "payload": np.frombuffer(b"".join(e.payload for e in items), np.uint8) if items else np.zeros(0, np.uint8),
        }
        # One metadata entry: safetensors writes its metadata map in no fixed order.
        meta = {"rbzoo_evidence": json.dumps({"format": FORMAT, "codec": CODEC, **self.meta}, sort_keys=True)}
        return save(arrays, metadata=meta)


def max_evidence_bytes(n_examples: int, numel: int) -> int:
    """The most bytes the evidence of an evaluation of `n_examples` images of `numel` values can
    take: every example stored exactly (float32, deflate's worst-case growth) with its fields, plus
    the header; never more than MAX_EVIDENCE_BYTES. Readers refuse a larger file before reading it
    (:func:`rbzoo._io.read_bounded`), and :func:`read_evidence` refuses larger bytes."""
    raw = 4 * numel
    deflated = raw + (raw >> 12) + (raw >> 14) + (raw >> 25) + 13  # zlib's compressBound
    return min(max(int(n_examples), 0) * (deflated + 64) + 4096, MAX_EVIDENCE_BYTES)


def read_evidence_file(path, *, n_examples: int, numel: int, error: type[Exception], name: str | None = None) -> bytes:
    """The bytes of an evidence file, refused by its size (before a byte is read) with `error` if
    larger than an evaluation of `n_examples` inputs of `numel` values can need."""
    return read_bounded(path, max_evidence_bytes(n_examples, numel), error, what=f"the evidence of {n_examples} samples",
                        name=name)


def results_evidence_file(results: dict, results_path, *, numel: int, error: type[Exception]) -> bytes:
    """The bytes of the evidence file a results file names (`results["evidence"]["file"]`: beside it,
    or an absolute path), read bounded and checked against the SHA-256 the results record."""
    ev = results["evidence"]
    name = Path(ev["file"])
    path = name if name.is_absolute() else Path(results_path).parent / name.name
    if not path.is_file():
        raise error(f"{results_path}: its evidence file {path} is missing")
    data = read_evidence_file(path, n_examples=int(results.get("n_examples") or 0), numel=numel, error=error)
    if hashlib.sha256(data).hexdigest() != ev.get("sha256"):
        raise error(f"{path}: SHA-256 differs from the one {results_path} records")
    return data


def read_evidence(data: bytes, *, n_examples: int, numel: int) -> Evidence:
    """Parse untrusted evidence bytes; every size is bounded by the evaluation it claims to be of."""
    from safetensors import SafetensorError
    from safetensors.numpy import load

    limit = max_evidence_bytes(n_examples, numel)
    if len(data) > limit:
        raise VerificationError(f"evidence: {len(data):,} bytes is more than {limit:,}, the most the evidence of "
                                f"{n_examples} examples can be")
    if len(data) < 8 or int.from_bytes(data[:8], "little") > len(data) - 8:
        raise VerificationError("evidence: not a safetensors file")
    try:
        arrays = load(data)
        header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])
    except (SafetensorError, ValueError) as e:
        raise VerificationError(f"evidence: not a valid safetensors file ({e})") from None
    try:
        meta = json.loads((header.get("__metadata__") or {}).get("rbzoo_evidence", "null"))
    except (ValueError, TypeError, AttributeError):
        meta = None
    if set(arrays) != set(_ARRAYS) or not isinstance(meta, dict) or meta.pop("format", None) != FORMAT:
        raise VerificationError(f"evidence: expected format {FORMAT} with arrays {sorted(_ARRAYS)}")
    meta.pop("codec", None)
    for name, dtype in _ARRAYS.items():
        if arrays[name].dtype != dtype or arrays[name].ndim != 1:
            raise VerificationError(f"evidence: array {name} must be 1-d {np.dtype(dtype).name}")
    k = len(arrays["positions"])
    if k > n_examples or any(len(arrays[a]) != k for a in ("labels", "adv_labels", "attack", "level", "scale")) \
            or len(arrays["offsets"]) != k + 1:
        raise VerificationError("evidence: arrays of inconsistent lengths")
    off = arrays["offsets"]
    if k and (off[0] != 0 or (np.diff(off) < 0).any() or off[-1] != len(arrays["payload"])):
        raise VerificationError("evidence: bad payload offsets")
    pos = arrays["positions"]
    if k and (pos.min() < 0 or pos.max() >= n_examples or (np.diff(pos) <= 0).any()):
        raise VerificationError("evidence: positions must be increasing and inside the evaluation")
    attacks = meta.get("attacks")
    if not isinstance(attacks, list) or (k and arrays["attack"].max() >= len(attacks)):
        raise VerificationError("evidence: attack indices do not match the metadata's attacks")
    payload = arrays["payload"].tobytes()
    items = [Encoded(int(pos[i]), int(arrays["labels"][i]), int(arrays["adv_labels"][i]), str(attacks[arrays["attack"][i]]),
                     int(arrays["level"][i]), float(arrays["scale"][i]), payload[off[i]:off[i + 1]]) for i in range(k)]
    return Evidence(items, meta)


def bytes_per_example(evidence: Evidence) -> float:
    return sum(len(e.payload) for e in evidence.items) / max(len(evidence.items), 1)


# --- checking stored examples ------------------------------------------------------------------------


@dataclass
class BreakCheck:
    """What re-checking stored examples against a model and the true test images found."""

    positions: np.ndarray  # evaluated positions checked
    margins: np.ndarray  # adversarial margin of each decoded example under the checking model
    ball: np.ndarray  # inside the ε-ball
    box: np.ndarray  # inside [0, 1]
    label_ok: np.ndarray  # the stored true label is the data's
    tau: float

    @property
    def proved(self) -> np.ndarray:
        return self.positions[self.ball & self.box & self.label_ok & (self.margins >= self.tau)]

    @property
    def near_ties(self) -> np.ndarray:
        """Misclassified by a margin below τ, or classified right by less than τ: not proved, not failed."""
        return self.positions[self.ball & self.box & self.label_ok & (np.abs(self.margins) < self.tau)]

    @property
    def invalid(self) -> np.ndarray:
        """Outside the threat model, a wrong label, or confidently classified right: not a break."""
        return self.positions[~(self.ball & self.box & self.label_ok) | (self.margins <= -self.tau)]


@torch.no_grad()
def check_breaks(model: nn.Module, clean: torch.Tensor, labels: torch.Tensor, items: list[Encoded], *, norm: str,
                 eps: float, tau: float, batch_size: int = 256) -> BreakCheck:
    """Decode every stored example from its clean image (`clean[i]`, true label `labels[i]`, for
    `items[i]`) and check it: inside the ε-ball of `norm`, inside [0, 1], and misclassified by
    `model` with an adversarial margin of at least τ (below τ either way: a near-tie)."""
    k = len(items)
    margins, ball, box = np.zeros(k, np.float32), np.zeros(k, bool), np.zeros(k, bool)
    for s in range(0, k, batch_size):
        part = range(s, min(s + batch_size, k))
        x = clean[s:part.stop].float()
        adv = decode_many(x, items[s:part.stop]).to(x.device)
        b, bx = within_threat(x, adv, norm, eps)
        ball[s:part.stop], box[s:part.stop] = b.numpy(), bx.numpy()
        margins[s:part.stop] = adversarial_margins(model(adv), labels[s:part.stop]).cpu().numpy()
    label_ok = np.array([int(labels[i]) == items[i].label for i in range(k)], bool)
    return BreakCheck(np.array([e.position for e in items], np.int64), margins, ball, box, label_ok, float(tau))
