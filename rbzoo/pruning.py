"""Layer-adaptive keep ratios (method.md §4) and score initialization (method.md §2)."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import torch
import torch.nn as nn

from .constants import SCORE_MODES
from .layers import SubnetConv2d



def allocate_keep(ns: Sequence[int], keep: float, p: float) -> list[float]:
    """Per-layer kept fractions k_i ∝ n_i^(p−1) with total ≈ keep·N, exactly as the official code.

    Layers are visited by size (stable sort), each capped at 1.0, and the constant is recomputed
    from the remaining budget after *every* layer. Returns the fractions in the input order.
    """
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"keep must be in (0, 1], got {keep}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}")
    ns = [int(n) for n in ns]
    order = sorted(range(len(ns)), key=lambda i: ns[i])
    powers = [float(ns[i]) ** p for i in order]
    total = float(sum(ns))
    budget = int(keep * total)
    c = keep * total / sum(powers)
    out = [0.0] * len(ns)
    for pos, i in enumerate(order):
        k_i = min(c * float(ns[i]) ** (p - 1.0), 1.0)
        out[i] = k_i
        budget -= int(k_i * ns[i])
        rest = sum(powers[pos + 1:])
        c = budget / rest if rest else 0.0  # the official code divides by zero here; unused
    return out


def subnet_layers(model: nn.Module) -> list[tuple[str, SubnetConv2d]]:
    """(weight key, module) of every SubnetConv2d, in module registration order."""
    return [(f"{name}.weight", m) for name, m in model.named_modules() if isinstance(m, SubnetConv2d)]


def set_model_keep(model: nn.Module, keep: float, p: float) -> list[float]:
    """Assign the adaptive per-layer keep fractions to every SubnetConv2d of `model`."""
    layers = subnet_layers(model)
    ks = allocate_keep([m.numel for _, m in layers], keep, p)
    for (_, m), k in zip(layers, ks):
        m.keep = k
    return ks


def derive_seed(*parts) -> int:
    """A 63-bit seed from any tuple of values (run seed, layer name, epoch, purpose...)."""
    digest = hashlib.sha256("\0".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def layer_generator(tag: str, seed: int, name: str) -> torch.Generator:
    """A CPU generator private to one layer, so no layer's draw depends on another's."""
    return torch.Generator().manual_seed(derive_seed(tag, seed, name))


def score_bound(a: float, mode: str, fan: int, is_last: bool) -> float:
    """b = a/√fan for fan-scaled layers, else a (method.md §2)."""
    if mode not in SCORE_MODES:
        raise ValueError(f"unknown score mode {mode!r}; choose from {', '.join(SCORE_MODES)}")
    scaled = mode == "all" or (mode == "except_last" and not is_last) or (mode == "only_last" and is_last)
    return a / math.sqrt(fan) if scaled else a


def init_scores(model: nn.Module, seed: int, a: float, mode: str, last_layer: str | None) -> None:
    """Scores ~ U(−b, b) per layer, each from its own generator keyed by (seed, weight key)."""
    for key, m in subnet_layers(model):
        fan = m.in_channels * m.kernel_size * m.kernel_size
        b = score_bound(a, mode, fan, key == last_layer)
        m.init_scores(b, layer_generator("rbzoo-scores", seed, key))
