"""Building blocks shared by every architecture: the masked binary convolution, non-affine
BatchNorm, and input normalization.

A :class:`SubnetConv2d` holds fixed ±1 weights (a buffer regenerated from the seed) and one float
score per weight. Its effective weight is ``sign ⊙ TopMask(|scores|, kept)``. The mask is cached
and recomputed only when the scores change, so the many forwards of an attack or an evaluation at
fixed scores cost exactly one top-k.
"""

from __future__ import annotations

import functools
import math
import threading

import torch
import torch.nn as nn
import torch.nn.functional as F

from .signs import signs


def kept_count(n: int, keep: float) -> int:
    """The paper's kept count: n − int((1 − keep)·n), computed in float64 (method.md §2)."""
    return n - int((1.0 - float(keep)) * n)


TIES = ("low", "high")


def top_mask(scores: torch.Tensor, kept: int, *, ties: str = "low") -> torch.Tensor:
    """Boolean mask (same shape as `scores`) keeping exactly the `kept` largest |scores|.

    Equal |scores| at the cut are split by flat index, on CPU deterministically:
    ``ties="low"`` keeps the lower index (rbzoo's rule: training, evaluation, every checkpoint it
    writes); ``ties="high"`` keeps the higher one, i.e. prunes the lower one first, as a stable
    ascending sort does (how `convert` reads the official rule). The official code sorts on the
    GPU without a stable flag, so its tie order is unspecified; so is ours on non-CPU devices,
    which use `torch.topk`, whatever `ties` says.
    """
    if ties not in TIES:
        raise ValueError(f"ties must be one of {TIES}, got {ties!r}")
    if ties == "high":  # the mirror image: reversing the flat order turns "high" into "low"
        flipped = scores.detach().reshape(-1).flip(0)
        return top_mask(flipped, kept).flip(0).view_as(scores)
    flat = scores.detach().reshape(-1)
    n = flat.numel()
    if kept >= n:
        return torch.ones_like(scores, dtype=torch.bool)
    if kept <= 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    if flat.device.type != "cpu":
        mask = torch.zeros(n, dtype=torch.bool, device=flat.device)
        mask[torch.topk(flat.abs(), kept, sorted=False).indices] = True
        return mask.view_as(scores)
    a = torch.abs(flat, out=_scratch(n, flat.dtype, 0))
    if n <= _SORT_MAX_N:
        mask = torch.zeros(n, dtype=torch.bool)
        mask[torch.sort(a, descending=True, stable=True).indices[:kept]] = True
        return mask.view_as(scores)
    for z in (4.0, 16.0, math.inf):  # a wider bracket only if the sampled one missed (rare)
        mask = _band_select(a, kept, z)
        if mask is not None:
            return mask.view_as(scores)
    # Only NaN scores get here (no threshold orders them): rank them as torch.topk does, NaN first.
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.topk(a, kept, sorted=False).indices] = True
    return mask.view_as(scores)


# Top-k on CPU: `torch.topk` costs ~10 ns per score, which made the mask the largest overhead of a
# training step. Instead, two thresholds bracketing the k-th largest |s| are estimated from a
# sample of 8192 scores, everything above the upper one is kept, and the exact top-up comes from
# the few values inside the bracket. Every step is checked by exact counts, so the result never depends on
# the sample, only the speed does. Temporaries live in a per-thread scratch pool (sized for the
# largest layer) because fresh multi-megabyte allocations page-fault on every step.
_SORT_MAX_N = 4096
_SAMPLE = 8192
_POOL = threading.local()


def _scratch(n: int, dtype: torch.dtype, slot: int) -> torch.Tensor:
    """A reusable CPU buffer of at least n elements (contents undefined; never escapes)."""
    pool = _POOL.__dict__.setdefault("buffers", {})
    buf = pool.get((slot, dtype))
    if buf is None or buf.numel() < n:
        with torch.inference_mode(False):  # a normal tensor stays writable in and out of inference mode
            buf = pool[(slot, dtype)] = torch.empty(n, dtype=dtype)
    return buf[:n]


@functools.lru_cache(maxsize=256)
def _sample_index(n: int) -> torch.Tensor:
    """Up to _SAMPLE well-spread flat indices: j·s mod n with s ≈ 0.618·n coprime to n.

    A plain stride would alias with the weight layout (e.g. a stride divisible by 9 samples one
    kernel tap only) and bias the quantile estimate; golden-ratio steps visit every residue.
    """
    m = min(n, _SAMPLE)
    step = max(1, int(n * 0.6180339887))
    while math.gcd(step, n) != 1:
        step += 1
    return (torch.arange(m, dtype=torch.int64) * step) % n


def _band_select(a: torch.Tensor, kept: int, z: float) -> torch.Tensor | None:
    """Exact top-`kept` mask of the flat non-negative `a` (0 < kept < n), or None if the bracket
    estimated with a z-sigma margin does not contain the k-th value."""
    n = a.numel()
    sample = a[_sample_index(n)]
    m = sample.numel()
    q = 1.0 - kept / n  # fraction dropped: the threshold sits at sample rank ≈ q·m
    if math.isinf(z):
        lo, hi = -1, m
    else:
        half = z * math.sqrt(m * q * (1.0 - q)) + 2.0
        lo, hi = math.floor(q * m - half), math.ceil(q * m + half)  # 0-based sample ranks
    if hi < m:
        mask = torch.gt(a, torch.kthvalue(sample, hi + 1).values)
    else:
        mask = torch.zeros(n, dtype=torch.bool)
    need = kept - int(torch.count_nonzero(mask))
    if need < 0:
        return None
    if need == 0:
        return mask
    band = _scratch(n, torch.bool, 1)
    if lo >= 0:
        torch.ge(a, torch.kthvalue(sample, lo + 1).values, out=band)
        band.logical_xor_(mask)  # mask ⊆ {a ≥ t_lo}, so this is t_lo ≤ a ≤ t_hi
    else:
        torch.logical_not(mask, out=band)
    idx = torch.nonzero(band).view(-1)  # ascending flat indices
    if idx.numel() < need:
        return None
    if idx.numel() == need:
        mask[idx] = True
        return mask
    vals = a[idx]
    v = torch.kthvalue(vals, idx.numel() - need + 1).values  # the need-th largest in the band
    take = vals >= v
    extra = int(torch.count_nonzero(take)) - need
    if extra < 0:  # NaN scores: not orderable here
        return None
    if extra:  # ties at v: the lowest indices win, so drop the highest
        take[torch.nonzero(vals == v).view(-1)[-extra:]] = False
    mask.index_put_((idx,), take)  # band positions are all False in mask: write take there
    return mask


class _StraightThrough(torch.autograd.Function):
    """Returns the cached effective weight; sends ∂L/∂W_eff · W · sign(s) to the scores."""

    @staticmethod
    def forward(ctx, scores, weight, w_eff):  # noqa: D102
        ctx.save_for_backward(scores, weight)
        return w_eff.view_as(w_eff)

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        scores, weight = ctx.saved_tensors
        # One fresh tensor, updated in place: each extra temporary of this size costs page faults.
        return torch.sign(scores).mul_(weight).mul_(grad), None, None


def _strided_pointwise_nhwc_on_cpu(x: torch.Tensor, conv) -> bool:
    return (x.device.type == "cpu" and conv.kernel_size == 1 and conv.padding == 0 and conv.stride > 1
            and not x.is_contiguous()
            and x.is_contiguous(memory_format=torch.channels_last))


class SubnetConv2d(nn.Module):
    """A bias-free convolution whose ±1 weights are fixed and whose mask is learned.

    `weight` is a buffer (never trained); `scores` is the only parameter. `keep` is this layer's
    kept fraction k_l; the kept count follows the paper's truncation exactly.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        *,
        keep: float = 1.0,
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        shape = (out_channels, in_channels, kernel_size, kernel_size)
        self.register_buffer("weight", torch.ones(shape))
        self.scores = nn.Parameter(torch.zeros(shape))
        self.keep = float(keep)
        self._cache_key: tuple | None = None
        self._mask: torch.Tensor | None = None
        self._w_eff: torch.Tensor | None = None

    @property
    def numel(self) -> int:
        return self.weight.numel()

    @property
    def kept(self) -> int:
        return kept_count(self.numel, self.keep)

    def set_signs(self, seed: int, name: str) -> None:
        """Fill `weight` with the rbzoo-signs-v1 signs of (seed, name)."""
        with torch.no_grad():
            self.weight.copy_(signs(seed, name, self.weight.shape))
        self._cache_key = None

    def init_scores(self, bound: float, generator: torch.Generator) -> None:
        """Draw the scores from U(−bound, bound) with `generator` (CPU)."""
        with torch.no_grad():
            s = torch.rand(self.scores.shape, generator=generator, dtype=torch.float64)
            self.scores.copy_(((s * 2 - 1) * bound).to(self.scores.dtype))
        self._cache_key = None

    def _refresh(self) -> None:
        s, w = self.scores, self.weight
        key = (s._version, s.data_ptr(), s.device, w._version, w.data_ptr(), self.kept)
        # A mask computed under torch.inference_mode is an inference tensor, which autograd cannot
        # save: recompute it once when training resumes at the same scores.
        stale = self._w_eff is not None and self._w_eff.is_inference() and not torch.is_inference_mode_enabled()
        if key != self._cache_key or stale:
            self._mask = top_mask(s, self.kept)
            # A new tensor each time, so graphs holding the old one stay valid. bool→float then an
            # in-place multiply is several times faster on CPU than `w * mask` or `torch.where`.
            self._w_eff = self._mask.to(w.dtype).mul_(w)
            self._cache_key = key

    def mask(self) -> torch.Tensor:
        """The current boolean keep-mask."""
        self._refresh()
        return self._mask

    def effective_weight(self) -> torch.Tensor:
        """sign ⊙ mask, without autograd history."""
        self._refresh()
        return self._w_eff

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._refresh()
        w = self._w_eff
        if torch.is_grad_enabled() and self.scores.requires_grad:
            w = _StraightThrough.apply(self.scores, self.weight, w)
        if w.dtype != x.dtype:
            w = w.to(x.dtype)
        if _strided_pointwise_nhwc_on_cpu(x, self):
            # oneDNN's AVX2 weight gradient of a strided 1×1 convolution on channels-last input
            # crashes the process (torch 2.14.1, AVX2-only CPUs). Subsampling first and convolving
            # with stride 1 computes the same dot products without that kernel.
            return F.conv2d(x[:, :, ::self.stride, ::self.stride], w, None, 1, 0)
        return F.conv2d(x, w, None, self.stride, self.padding)

    def folded(self) -> nn.Conv2d:
        """A plain `nn.Conv2d` holding sign ⊙ mask as one dense weight (inference path)."""
        conv = nn.Conv2d(
            self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding,
            bias=False, device=self.weight.device,
        )
        conv.weight = nn.Parameter(self.effective_weight().clone(), requires_grad=False)
        return conv

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, keep={self.keep:.6g}"
        )


def NonAffineBatchNorm2d(num_features: int) -> nn.BatchNorm2d:  # noqa: N802 - reads as a class
    """BatchNorm without learnable scale/shift (the method's only BN; method.md §2)."""
    return nn.BatchNorm2d(num_features, affine=False)


class Normalize(nn.Module):
    """(x − mean) / std per channel; constants are non-persistent buffers (recorded in metadata)."""

    def __init__(self, mean, std) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


def dense_conv(in_channels, out_channels, kernel_size, stride=1, padding=0, bias=False) -> nn.Conv2d:
    """A trainable float convolution (for the optional dense first/last layer)."""
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=bias)
    return conv
