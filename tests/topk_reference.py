"""Literal full-sort references for rbzoo's two top-k tie rules (rbzoo.layers.top_mask), test-only.

Both sort with `stable=True`: a plain CPU `torch.sort` is not stable on ties (torch 2.14).
"""

import torch


def keep_lower(s: torch.Tensor, kept: int) -> torch.Tensor:
    """`ties="low"`: the `kept` largest |s|, equal values kept in ascending flat-index order."""
    a = s.detach().abs().flatten()
    mask = torch.zeros(a.numel(), dtype=torch.bool)
    mask[torch.sort(a, descending=True, stable=True).indices[:kept]] = True
    return mask.view_as(s)


def sort_mask(scores: torch.Tensor, keep: float) -> torch.Tensor:
    """`ties="high"`, the official rule literally: sort |s| ascending (stably), prune the j smallest."""
    flat = scores.detach().abs().flatten()
    j = int((1.0 - float(keep)) * flat.numel())
    mask = torch.ones(flat.numel(), dtype=torch.bool)
    mask[torch.sort(flat, stable=True).indices[:j]] = False
    return mask.view_as(scores)
