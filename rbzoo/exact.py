"""Exact evaluation, the leaf both clean and robust evaluation stand on.

Numerics profiles (how the arithmetic is done), batches in a fixed order, digests of data and
predictions, bit packing of per-sample flags and labels, exact clean accuracy with each sample's
relative top-2 margin. What a margin may excuse (τ, the certificate, verdicts) is decided in
:mod:`rbzoo.verdict`; docs/numerics.md gives the measurements.

This module imports nothing from rbzoo above `_io`, `errors` and `distributed`.
"""

from __future__ import annotations

import base64
import hashlib
import math
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, Subset

from .codec import pack_bits
from .constants import NUMERICS_PROFILES, SUBSETS
from .errors import ConfigError

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

def check_profile(profile: str) -> str:
    if profile not in PROFILE_DESCRIPTIONS:
        raise ConfigError(f"unknown numerics profile {profile!r} ({', '.join(PROFILES)})")
    return profile


def _backend_flags() -> tuple:
    return (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark,
            torch.backends.cudnn.deterministic, torch.are_deterministic_algorithms_enabled(),
            torch.is_deterministic_algorithms_warn_only_enabled(), torch.utils.deterministic.fill_uninitialized_memory)


def _use_deterministic_algorithms(mode: bool, warn_only: bool) -> None:
    # torch.use_deterministic_algorithms also imports torch._inductor to set its flag there: 1.6 s of
    # CPU per process (bench/bench_eval_process.py), for a compiler rbzoo never uses. Inductor's flag is
    # still set when something else has loaded it.
    setter = getattr(torch._C, "_set_deterministic_algorithms", None)
    if setter is None:  # another torch: the public call, whatever it costs
        torch.use_deterministic_algorithms(mode, warn_only=warn_only)
        return
    setter(mode, warn_only=warn_only)
    inductor = sys.modules.get("torch._inductor.config")
    if inductor is not None:
        inductor.deterministic = mode


def _set_backend_flags(tf32: bool, benchmark: bool, deterministic: bool, warn_only: bool = True) -> None:
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cudnn.benchmark = benchmark
    torch.backends.cudnn.deterministic = deterministic
    _use_deterministic_algorithms(deterministic, warn_only)
    # Deterministic mode would also fill every new tensor with NaN, a debugging aid that cost an
    # attack 5-7 % on CPU (bench/bench_evidence.py) and changes no result of a kernel that writes
    # its output (APGD on CPU: bit-identical adversarial examples with and without it).
    torch.utils.deterministic.fill_uninitialized_memory = False


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
        _use_deterministic_algorithms(saved[4], saved[5])
        torch.utils.deterministic.fill_uninitialized_memory = saved[6]


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
    if mode not in SUBSETS:
        raise ConfigError(f"unknown subset mode {mode!r}; choose from {', '.join(SUBSETS)}")
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


@torch.no_grad()
def clean_accuracy(model: nn.Module, dataset: Dataset, *, indices: Sequence[int] | None = None,
                   batch_size: int = 256, device: str | torch.device = "cpu", num_workers: int = 0,
                   progress=None, profile: str = DEFAULT_PROFILE, margins: bool = True, on_batch=None) -> CleanResult:
    """Exact clean accuracy of `model` on `dataset` (or its `indices`, in that order), under the
    numerics `profile`, recording each sample's relative top-2 margin unless `margins=False`.

    `progress`, if given, is called with the number of samples done after each batch; `on_batch`
    with (position of the batch's first sample, images, labels), so a caller can keep some images
    without loading them twice.
    """
    check_profile(profile)
    model = model.to(device).eval()
    preds, labels, margin_parts, classes = [], [], [], None
    digest = DataDigest()
    done = 0
    with numerics(profile, device):
        for x, y in ordered_batches(dataset, indices, batch_size, num_workers):
            digest.update(x, y)
            if on_batch is not None:
                on_batch(done, x, y)
            done += len(y)
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
