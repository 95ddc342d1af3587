"""Building blocks shared by every architecture: the masked binary convolution, non-affine
BatchNorm, and input normalization.

A :class:`SubnetConv2d` holds fixed ±1 weights (a buffer regenerated from the seed) and one float
score per weight. Its effective weight is ``sign ⊙ TopMask(|scores|, kept)``. The mask is cached
and recomputed only when the scores change, so the many forwards of an attack or an evaluation at
fixed scores cost exactly one top-k.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .signs import signs

# Normalization constants of method.md §1.1.
NORMALIZATION = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "imagenet100": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


def kept_count(n: int, keep: float) -> int:
    """The paper's kept count: n − int((1 − keep)·n), computed in float64 (method.md §2)."""
    return n - int((1.0 - float(keep)) * n)


def top_mask(scores: torch.Tensor, kept: int) -> torch.Tensor:
    """Boolean mask (same shape as `scores`) keeping the `kept` largest |scores|."""
    flat = scores.detach().abs().flatten()
    n = flat.numel()
    if kept >= n:
        return torch.ones_like(scores, dtype=torch.bool)
    mask = torch.zeros(n, dtype=torch.bool, device=scores.device)
    if kept > 0:
        mask[torch.topk(flat, kept, sorted=False).indices] = True
    return mask.view_as(scores)


class _StraightThrough(torch.autograd.Function):
    """Returns the cached effective weight; sends ∂L/∂W_eff · W · sign(s) to the scores."""

    @staticmethod
    def forward(ctx, scores, weight, w_eff):  # noqa: D102
        ctx.save_for_backward(scores, weight)
        return w_eff.view_as(w_eff)

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        scores, weight = ctx.saved_tensors
        return grad * weight * torch.sign(scores), None, None


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
        if key != self._cache_key:
            self._mask = top_mask(s, self.kept)
            self._w_eff = w * self._mask  # a new tensor: graphs holding the old one stay valid
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


def fan_in(module: nn.Module) -> int:
    w = module.weight
    return int(math.prod(w.shape[1:]))
