"""Exact evaluation, the leaf both clean and robust evaluation stand on.

Numerics profiles (how the arithmetic is done), batches in a fixed order, digests of data and
predictions, bit packing of per-sample flags and labels, exact clean accuracy, and the
*verification certificate*: per sample the predicted label and the relative top-2 margin, so that
a re-evaluation on another machine can tell a real change of the model (a confident sample flips)
from rounding (only near-ties flip). docs/numerics.md gives the measurements behind τ.

This module imports nothing from rbzoo above `_io`, `errors` and `distributed`.
"""

from __future__ import annotations

import base64
import hashlib
import math
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, Subset

from ._io import canonical_json
from .codec import pack_bits
from .constants import NUMERICS_PROFILES
from .errors import ConfigError, VerificationError

# --- numerics profiles ---------------------------------------------------------------------------

NUMERICS_PROFILE = ("rbzoo-pinned-v1: eval mode, folded weights, float32, TF32 off, deterministic algorithms, "
                    "cuDNN benchmark off, fixed order")
PROFILE_DESCRIPTIONS = {
    "verify": NUMERICS_PROFILE,
    "fast": "rbzoo-fast-v1: eval mode, folded weights, float32 with TF32 allowed, cuDNN benchmark on, fixed order",
    "bf16": "rbzoo-bf16-v1: eval mode, folded weights, autocast bfloat16 (TF32 allowed, cuDNN benchmark on), fixed order",
}
PROFILES = NUMERICS_PROFILES  # named in constants so cards and the CLI need no torch
DEFAULT_PROFILE = "verify"

# Near-tie tolerance τ per profile: a sample may change its label between two evaluations only if
# its relative top-2 margin is below τ. τ = the largest margin deviation measured for the profile
# (bench/bench_numerics.py) × a safety factor of at least 4, rounded up; docs/numerics.md.
TAU = {"verify": 1e-4, "fast": 2e-2, "bf16": 0.25}


def check_profile(profile: str) -> str:
    if profile not in PROFILE_DESCRIPTIONS:
        raise ConfigError(f"unknown numerics profile {profile!r} ({', '.join(PROFILES)})")
    return profile


def tau_for(*profiles: str) -> float:
    """τ for comparing evaluations made under `profiles`: the largest of theirs."""
    return max(TAU[check_profile(p)] for p in profiles)


def _backend_flags() -> tuple:
    return (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark,
            torch.backends.cudnn.deterministic, torch.are_deterministic_algorithms_enabled(),
            torch.is_deterministic_algorithms_warn_only_enabled())


def _set_backend_flags(tf32: bool, benchmark: bool, deterministic: bool, warn_only: bool = True) -> None:
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cudnn.benchmark = benchmark
    torch.backends.cudnn.deterministic = deterministic
    torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)


@contextmanager
def numerics(profile: str = DEFAULT_PROFILE, device: str | torch.device = "cpu"):
    """Run the block under a numerics profile; every backend flag is restored on exit.

    verify: float32, TF32 off, deterministic algorithms, cuDNN autotuning off (reproducible).
    fast:   TF32 allowed and cuDNN autotuning (what PyTorch does on a GPU by default, roughly).
    bf16:   as fast, inside `torch.autocast(dtype=torch.bfloat16)`.
    """
    check_profile(profile)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS determinism needs it set
    saved = _backend_flags()
    verify = profile == "verify"
    _set_backend_flags(tf32=not verify, benchmark=not verify, deterministic=verify)
    dev_type = torch.device(device).type
    cast = torch.autocast(dev_type, dtype=torch.bfloat16) if profile == "bf16" else nullcontext()
    try:
        with cast:
            yield
    finally:
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark,
         torch.backends.cudnn.deterministic) = saved[:4]
        torch.use_deterministic_algorithms(saved[4], warn_only=saved[5])


def pinned_numerics():
    """The verification profile: TF32 off, deterministic algorithms, cuDNN autotuning off."""
    return numerics("verify")


def round_tf32(t: torch.Tensor) -> torch.Tensor:
    """Round float32 values to TF32's 10-bit mantissa (round to nearest even), kept as float32."""
    bits = t.detach().to(torch.float32).contiguous().view(torch.int32)
    lsb = (bits >> 13) & 1
    rounded = (bits + 0xFFF + lsb) & ~0x1FFF
    # Leave inf/nan alone: their exponent is all ones, and rounding could carry into the sign.
    special = (bits & 0x7F800000) == 0x7F800000
    return torch.where(special, bits, rounded).view(torch.float32)


@contextmanager
def tf32_emulated(model: nn.Module):
    """Emulate TF32 convolutions/matmuls on any device: round the operands of every Conv2d and
    Linear to a 10-bit mantissa, accumulate in float32 (what TF32 tensor cores do)."""
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    saved = [m.weight.data for m in layers]
    hooks = [m.register_forward_pre_hook(lambda _m, args: (round_tf32(args[0]), *args[1:])) for m in layers]
    try:
        for m in layers:
            m.weight.data = round_tf32(m.weight.data)
        yield model
    finally:
        for m, w in zip(layers, saved):
            m.weight.data = w
        for h in hooks:
            h.remove()


# --- ordered data and digests --------------------------------------------------------------------


def predictions_digest(predictions: np.ndarray) -> str:
    """SHA-256 of the predicted labels in dataset order, as little-endian int32."""
    return hashlib.sha256(np.asarray(predictions, dtype="<i4").tobytes()).hexdigest()


def select_indices(total: int, n_examples: int | None = None, mode: str = "first", seed: int = 0) -> np.ndarray:
    """The evaluated dataset indices, in dataset order: the first N, or a seeded random N."""
    if mode not in ("first", "random"):
        raise ConfigError(f"unknown subset mode {mode!r} (first, random)")
    n = total if n_examples is None else int(n_examples)
    if not 1 <= n <= total:
        raise ConfigError(f"--n-examples {n} out of range: the split has {total} examples")
    if mode == "first":
        return np.arange(n, dtype=np.int64)
    return np.sort(np.random.default_rng(seed).choice(total, size=n, replace=False)).astype(np.int64)


def indices_digest(indices: np.ndarray) -> str:
    """SHA-256 of the evaluated dataset indices, as little-endian int64."""
    return hashlib.sha256(np.asarray(indices, dtype="<i8").tobytes()).hexdigest()


class DataDigest:
    """Incremental SHA-256 of the evaluated samples in order: image_0 (float32 LE), label_0
    (int64 LE), image_1, label_1, … — per sample, so the digest does not depend on the batch size."""

    def __init__(self) -> None:
        self._h = hashlib.sha256()

    def update(self, x: torch.Tensor, y: torch.Tensor) -> None:
        xs = x.detach().to("cpu", torch.float32).contiguous().numpy().astype("<f4", copy=False)
        ys = y.detach().to("cpu", torch.int64).reshape(-1).contiguous().numpy().astype("<i8", copy=False)
        for image, label in zip(xs, ys):
            self._h.update(image.tobytes())
            self._h.update(label.tobytes())

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def ordered_batches(dataset: Dataset, indices: Sequence[int] | None = None, batch_size: int = 256,
                    num_workers: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of (images, labels) in a fixed order: `indices` (or the whole dataset) as given."""
    ds = dataset if indices is None else Subset(dataset, list(indices))
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers, drop_last=False)
    for x, y in loader:
        yield x, torch.as_tensor(y)


def wilson_interval(k: int, n: int, z: float = 1.959963984540054) -> list[float]:
    """Wilson score interval of a binomial proportion k/n (95% by default)."""
    if n <= 0:
        return [0.0, 1.0]
    p = k / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # Exact ends at k = 0 and k = n, where rounding would leave 1e-17 off.
    return [0.0 if k == 0 else max(0.0, center - half), 1.0 if k == n else min(1.0, center + half)]


# --- bit packing: one routine for flags (1 bit) and labels (ceil(log2 classes) bits) --------------


_BYTE_ALIGNED = {8: "<u1", 16: "<u2", 32: "<u4"}  # whole-byte fields: plain little-endian integers


def pack_uint(values: np.ndarray, width: int = 1) -> bytes:
    """Pack non-negative integers in `width`-bit fields, least significant bit first, fields in
    order, bytes filled from their lowest bit (numpy's bitorder="little"); zero padding at the end.
    width 1 packs flags; width 16 gives exactly the bytes of little-endian uint16."""
    v = np.asarray(values).reshape(-1)
    if not 1 <= width <= 32:
        raise ValueError(f"field width {width} out of range 1..32")
    if v.dtype != bool and v.size and (v.min() < 0 or v.max() >= 1 << width):
        raise ValueError(f"values do not fit in {width} bits")
    if width == 1:
        return pack_bits(v)
    v = v.astype(np.int64, copy=False)
    if width in _BYTE_ALIGNED:
        return v.astype(_BYTE_ALIGNED[width]).tobytes()
    bits = np.empty((v.size, width), np.uint8)
    for j in range(width):  # one bit plane at a time: n×width bytes, never n×width int64s
        bits[:, j] = (v >> j) & 1
    return np.packbits(bits.reshape(-1), bitorder="little").tobytes()


def unpack_uint(data: bytes, n: int, width: int = 1) -> np.ndarray:
    """Inverse of :func:`pack_uint` for `n` fields (int64); ValueError unless `data` holds exactly
    them (right byte count, zero padding)."""
    if not 1 <= width <= 32 or n < 0:
        raise ValueError(f"bad field layout: {n} fields of {width} bits")
    if len(data) != (n * width + 7) // 8:
        raise ValueError(f"{len(data)} bytes do not hold {n} fields of {width} bits")
    if width in _BYTE_ALIGNED:
        return np.frombuffer(data, dtype=_BYTE_ALIGNED[width]).astype(np.int64)
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little")
    if bits[n * width:].any():
        raise ValueError("nonzero padding bits")
    planes = bits[: n * width].reshape(n, width)
    out = np.zeros(n, np.int64)
    for j in range(width):
        out |= planes[:, j].astype(np.int64) << j
    return out


def pack_flags(flags: np.ndarray) -> str:
    """Per-sample booleans as packbits (little bit order), base64: the results' `robust_flags`."""
    return base64.b64encode(pack_bits(flags)).decode("ascii")


def unpack_flags(text: str, n: int) -> np.ndarray:
    """Inverse of :func:`pack_flags` for `n` samples (ValueError if the text does not hold them)."""
    try:
        return unpack_uint(base64.b64decode(text, validate=True), n, 1).astype(bool)
    except ValueError:
        raise ValueError(f"packed flags do not hold {n} samples") from None


def label_bits(num_classes: int) -> int:
    """Bits per packed label: ceil(log2 num_classes), at least 1."""
    return max(1, (num_classes - 1).bit_length())


# --- exact clean accuracy --------------------------------------------------------------------------


def relative_margins(logits: torch.Tensor) -> torch.Tensor:
    """Relative top-2 margin per row: (z₁ − z₂) / max(‖z‖∞, tiny), z₁ ≥ z₂ the two largest logits.

    Scale-invariant and in [0, 2]. Rounding moves each logit by about ε‖z‖∞, so a label can only
    change between two numerics profiles where this margin is below their relative deviation.
    A row with a NaN gets 2.0 (never a near-tie: a broken sample must not be excused)."""
    z = logits.detach().to(torch.float32)
    if z.ndim != 2 or z.shape[1] < 2:
        raise ConfigError(f"margins need logits of shape (N, classes >= 2), got {tuple(z.shape)}")
    top2 = z.topk(2, dim=1).values
    m = (top2[:, 0] - top2[:, 1]) / z.abs().amax(dim=1).clamp_min(torch.finfo(torch.float32).tiny)
    return torch.nan_to_num(m, nan=2.0)


@dataclass
class CleanResult:
    n_examples: int
    clean_correct: int
    predictions: np.ndarray  # int64, one per evaluated sample, in order
    labels: np.ndarray
    predictions_sha256: str
    data_sha256: str
    numerics: str = NUMERICS_PROFILE
    margins: np.ndarray | None = None  # float32 relative top-2 margins, one per sample
    num_classes: int | None = None
    profile: str = DEFAULT_PROFILE
    extra: dict = field(default_factory=dict)

    @property
    def clean_acc(self) -> float:
        return self.clean_correct / self.n_examples if self.n_examples else 0.0

    @property
    def correct_mask(self) -> np.ndarray:
        return self.predictions == self.labels

    def certificate(self, tau: float | None = None) -> Certificate:
        """The verification certificate of these predictions (τ: the profile's by default)."""
        if self.margins is None or self.num_classes is None:
            raise ConfigError("this result recorded no margins (clean_accuracy(..., margins=False))")
        return Certificate(self.n_examples, self.num_classes, self.predictions, self.margins,
                           TAU[self.profile] if tau is None else tau, self.profile)


@torch.no_grad()
def clean_accuracy(model: nn.Module, dataset: Dataset, *, indices: Sequence[int] | None = None,
                   batch_size: int = 256, device: str | torch.device = "cpu", num_workers: int = 0,
                   progress=None, profile: str = DEFAULT_PROFILE, margins: bool = True) -> CleanResult:
    """Exact clean accuracy of `model` on `dataset` (or its `indices`, in that order), under the
    numerics `profile`, recording each sample's relative top-2 margin unless `margins=False`.

    `progress`, if given, is called with the number of samples done after each batch.
    """
    check_profile(profile)
    model = model.to(device).eval()
    preds, labels, margin_parts, classes = [], [], [], None
    digest = DataDigest()
    with numerics(profile, device):
        for x, y in ordered_batches(dataset, indices, batch_size, num_workers):
            digest.update(x, y)
            out = model(x.to(device, torch.float32))
            preds.append(out.argmax(1).cpu())
            if margins:
                margin_parts.append(relative_margins(out).cpu())
            labels.append(y.cpu())
            classes = out.shape[1]
            if progress is not None:
                progress(len(y))
    p = torch.cat(preds).numpy().astype(np.int64) if preds else np.zeros(0, np.int64)
    t = torch.cat(labels).numpy().astype(np.int64) if labels else np.zeros(0, np.int64)
    m = None
    if margins:
        m = torch.cat(margin_parts).numpy() if margin_parts else np.zeros(0, np.float32)
    return CleanResult(len(t), int((p == t).sum()), p, t, predictions_digest(p), digest.hexdigest(),
                       numerics=PROFILE_DESCRIPTIONS[profile], margins=m, num_classes=classes, profile=profile)


# --- the verification certificate ------------------------------------------------------------------

CERTIFICATE_VERSION = 1
MAX_CERT_SAMPLES = 2_000_000  # above any test split (ImageNet's validation set: 50,000)
MAX_CLASSES = 1 << 16
_CERT_KEYS = {"rbzoo_certificate", "n", "num_classes", "profile", "tau", "label_bits", "labels", "labels_sha256",
              "margins", "margins_dtype", "near_ties"}


def _bad(what: str) -> VerificationError:
    return VerificationError(f"certificate: {what}")


def _quantize(margins: np.ndarray) -> np.ndarray:
    """Margins as stored (float16, values in [0, 2]) so that JSON round trips lose nothing."""
    return np.asarray(margins, dtype=np.float32).astype("<f2").astype(np.float32)


@dataclass(frozen=True, eq=False)
class Certificate:
    """What a reference evaluation promises, per sample: the predicted label and the relative top-2
    margin (:func:`relative_margins`, stored as float16). Samples with margin < τ are near-ties."""

    n: int
    num_classes: int
    labels: np.ndarray  # int64 [n]
    margins: np.ndarray  # float32 [n], float16-exact
    tau: float
    profile: str

    def __post_init__(self) -> None:
        labels = np.asarray(self.labels).reshape(-1).astype(np.int64)
        margins = _quantize(np.asarray(self.margins).reshape(-1))
        if len(labels) != self.n or len(margins) != self.n:
            raise _bad(f"{len(labels)} labels and {len(margins)} margins for n = {self.n}")
        if not 2 <= self.num_classes <= MAX_CLASSES:
            raise _bad(f"num_classes {self.num_classes} out of range 2..{MAX_CLASSES}")
        if self.n and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise _bad(f"a label is outside 0..{self.num_classes - 1}")
        if not (np.isfinite(margins).all() and (margins >= 0).all() and (margins <= 2).all()):
            raise _bad("margins must be finite and in [0, 2]")
        if not (isinstance(self.tau, (int, float)) and math.isfinite(self.tau) and 0 <= self.tau <= 1):
            raise _bad(f"tau must be a number in [0, 1], got {self.tau!r}")
        check_profile(self.profile)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "margins", margins)
        object.__setattr__(self, "tau", float(self.tau))

    def near_ties(self, tau: float | None = None) -> np.ndarray:
        """Indices of the samples whose margin is below τ (this certificate's by default)."""
        return np.flatnonzero(self.margins < (self.tau if tau is None else tau))

    @property
    def digest(self) -> str:
        """SHA-256 of the canonical JSON of :meth:`to_json` (sorted keys, no spaces): what a card pins
        as `expected.certificate_sha256`. Independent of how the JSON was spelled when read."""
        return hashlib.sha256(canonical_json(self.to_json()).encode("ascii")).hexdigest()

    @property
    def labels_sha256(self) -> str:
        """Equal to the results' `predictions_sha256` of the same labels."""
        return predictions_digest(self.labels)

    def to_json(self) -> dict:
        bits = label_bits(self.num_classes)
        return {"rbzoo_certificate": CERTIFICATE_VERSION, "n": self.n, "num_classes": self.num_classes,
                "profile": self.profile, "tau": self.tau, "label_bits": bits,
                "labels": base64.b64encode(pack_uint(self.labels, bits)).decode("ascii"),
                "labels_sha256": self.labels_sha256,
                "margins": base64.b64encode(self.margins.astype("<f2").tobytes()).decode("ascii"),
                "margins_dtype": "float16",
                # Redundant with margins and τ, stated so a reader sees which samples may differ.
                "near_ties": [int(i) for i in self.near_ties()]}

    @classmethod
    def from_json(cls, d: object, *, max_n: int = MAX_CERT_SAMPLES) -> Certificate:
        """Validate every field of an untrusted certificate, bounding sizes before decoding."""
        if not isinstance(d, dict):
            raise _bad(f"expected a JSON object, got {type(d).__name__}")
        if set(d) != _CERT_KEYS:
            extra, missing = sorted(set(d) - _CERT_KEYS), sorted(_CERT_KEYS - set(d))
            raise _bad(f"unexpected fields {extra}" if extra else f"missing fields {missing}")
        if _int(d, "rbzoo_certificate", 0, 1 << 31) != CERTIFICATE_VERSION:
            raise _bad(f"version {d['rbzoo_certificate']} is not supported (this rbzoo reads {CERTIFICATE_VERSION})")
        n, classes = _int(d, "n", 0, max_n), _int(d, "num_classes", 2, MAX_CLASSES)
        bits = label_bits(classes)
        if _int(d, "label_bits", 1, 32) != bits:
            raise _bad(f"label_bits must be {bits} for {classes} classes")
        if d["margins_dtype"] != "float16":
            raise _bad("margins_dtype must be 'float16'")
        if not isinstance(d["profile"], str) or d["profile"] not in PROFILE_DESCRIPTIONS:
            raise _bad(f"unknown profile {str(d['profile'])[:40]!r}")
        if isinstance(d["tau"], bool) or not isinstance(d["tau"], (int, float)):
            raise _bad("tau must be a number")
        try:
            labels = unpack_uint(_b64(d, "labels", (n * bits + 7) // 8), n, bits)
        except ValueError as e:
            raise _bad(f"labels: {e}") from None
        if labels.size and labels.max() >= classes:
            raise _bad(f"a label is outside 0..{classes - 1}")
        if predictions_digest(labels) != d["labels_sha256"]:
            raise _bad("labels do not match labels_sha256")
        margins = np.frombuffer(_b64(d, "margins", 2 * n), dtype="<f2").astype(np.float32)
        cert = cls(n, classes, labels, margins, d["tau"], d["profile"])
        near = d["near_ties"]
        if not isinstance(near, list) or len(near) > n or near != cert.near_ties().tolist():
            raise _bad("near_ties must list exactly the samples whose margin is below tau")
        return cert


def _int(d: dict, key: str, lo: int, hi: int) -> int:
    v = d[key]
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise _bad(f"{key} must be an integer in {lo}..{hi}")
    return v


def _b64(d: dict, key: str, nbytes: int) -> bytes:
    """Decode base64 field `key` that must hold exactly `nbytes` bytes; the text length is checked
    first, so a hostile field cannot make us allocate more than the header promised."""
    text = d[key]
    if not isinstance(text, str) or len(text) != 4 * ((nbytes + 2) // 3):
        raise _bad(f"{key} must be base64 of {nbytes} bytes")
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError:
        raise _bad(f"{key} is not valid base64") from None
    if len(raw) != nbytes:
        raise _bad(f"{key} must be base64 of {nbytes} bytes")
    return raw


def certify(logits: torch.Tensor | np.ndarray, *, profile: str = DEFAULT_PROFILE, tau: float | None = None) -> Certificate:
    """The certificate of a batch of logits [N, classes] computed under `profile`."""
    z = torch.as_tensor(logits)
    margins = relative_margins(z)
    labels = z.argmax(1).cpu().numpy()
    return Certificate(len(labels), z.shape[1], labels, margins.cpu().numpy(), TAU[check_profile(profile)]
                       if tau is None else tau, profile)


# --- verdicts -----------------------------------------------------------------------------------------

MAX_NAMED = 10  # sample indices a message names
STATUSES = ("exact", "tolerance", "count only", "failed")


def _named(idx: np.ndarray) -> str:
    return ", ".join(str(int(i)) for i in idx[:MAX_NAMED]) + (", …" if len(idx) > MAX_NAMED else "")


@dataclass(frozen=True, eq=False)
class Verdict:
    """The outcome of checking an evaluation against a reference.

    exact: every label equals the reference; tolerance: only near-ties differ; count only: the
    reference has no per-sample labels and the correct count moved by no more than this
    evaluation's near-ties allow; failed: anything else."""

    status: str
    n: int
    tau: float
    differing: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    near_tie_differing: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    outside: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    counts: tuple[int, int, int] | None = None  # count only: (expected, got, near-ties allowed)

    @property
    def ok(self) -> bool:
        return self.status != "failed"

    def message(self) -> str:
        """One line saying which of the outcomes this is, and the samples or counts behind it."""
        if self.counts is not None:
            exp, got, allowed = self.counts
            head = "count only" if self.ok else "failed (count only)"
            of = f"/{self.n}" if self.n >= 0 else ""
            return (f"{head}: {got}{of} correct, the reference says {exp}{of} (difference {got - exp:+d}; "
                    f"{allowed} near-ties in this evaluation allow ±{allowed}); no per-sample reference")
        if self.status == "exact":
            return f"exact: all {self.n} predicted labels equal the reference"
        k = len(self.differing)
        if self.status == "tolerance":
            return (f"verified within numerical tolerance: {k} of {self.n} samples differ, all near-ties "
                    f"(relative top-2 margin < {self.tau:.0e}): indices {_named(self.differing)}")
        return (f"failed: {len(self.outside)} of {self.n} samples differ outside the near-ties (margin ≥ {self.tau:.0e}): "
                f"indices {_named(self.outside)}; {k} differ in all")


def compare(reference: Certificate, labels, margins=None, *, tau: float | None = None,
            profile: str | None = None) -> Verdict:
    """Check new labels (and, if known, their margins) against a reference certificate.

    A sample may differ iff its reference margin or its new margin is below τ. τ defaults to the
    larger of the reference's and that of `profile` (the new evaluation's). `labels` may also be
    the new evaluation's Certificate (its margins and profile are then used)."""
    if isinstance(labels, Certificate):
        labels, margins, profile = labels.labels, labels.margins, labels.profile if profile is None else profile
    labels = np.asarray(labels).reshape(-1)
    if len(labels) != reference.n:
        raise VerificationError(f"the reference certifies {reference.n} samples, this evaluation has {len(labels)}")
    if tau is None:
        tau = reference.tau if profile is None else max(reference.tau, TAU[check_profile(profile)])
    near = reference.margins < tau
    if margins is not None:
        margins = np.asarray(margins, dtype=np.float32).reshape(-1)
        if len(margins) != reference.n:
            raise VerificationError(f"{len(margins)} margins for {reference.n} samples")
        near |= np.nan_to_num(margins, nan=2.0) < tau
    diff = np.flatnonzero(labels != reference.labels)
    inside, outside = diff[near[diff]], diff[~near[diff]]
    status = "exact" if not len(diff) else "tolerance" if not len(outside) else "failed"
    return Verdict(status, reference.n, float(tau), diff, inside, outside)


def compare_count(expected_correct: int, got_correct: int, near_ties, *, n: int | None = None,
                  tau: float | None = None) -> Verdict:
    """A reference that gives a correct count only (e.g. a paper's table): accept iff the count
    moved by no more than the number of near-ties of this evaluation. `near_ties` is this
    evaluation's Certificate (its near-ties below `tau`, default its own τ), their indices, or their
    number. Never "exact": there is nothing per sample to compare."""
    if isinstance(near_ties, Certificate):
        tau = near_ties.tau if tau is None else tau
        n, near_ties = near_ties.n, near_ties.near_ties(tau)
    allowed = int(near_ties) if np.ndim(near_ties) == 0 else len(near_ties)
    status = "count only" if abs(int(got_correct) - int(expected_correct)) <= allowed else "failed"
    return Verdict(status, -1 if n is None else n, float("nan") if tau is None else float(tau),
                   counts=(int(expected_correct), int(got_correct), allowed))
