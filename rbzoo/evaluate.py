"""Evaluation: exact clean accuracy under a pinned numerics profile.

Clean accuracy is reproducible to the sample: the model runs in eval mode with folded weights,
TF32 off and deterministic algorithms, over the data in a fixed order. The result carries a
SHA-256 of the per-sample predicted labels (so two machines compare predictions, not totals) and
a SHA-256 of the evaluated data tensors (a different copy of the data is the other silent cause
of mismatches).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, Subset

NUMERICS_PROFILE = "rbzoo-pinned-v1: eval mode, folded weights, float32, TF32 off, deterministic algorithms, cuDNN benchmark off, fixed order"


@contextmanager
def pinned_numerics():
    """TF32 off, deterministic algorithms on, cuDNN autotuning off; restored on exit."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    saved = (
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.deterministic,
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark,
         torch.backends.cudnn.deterministic) = saved[:4]
        torch.use_deterministic_algorithms(saved[4], warn_only=saved[5])


def predictions_digest(predictions: np.ndarray) -> str:
    """SHA-256 of the predicted labels in dataset order, as little-endian int32."""
    return hashlib.sha256(np.asarray(predictions, dtype="<i4").tobytes()).hexdigest()


class DataDigest:
    """Incremental SHA-256 of evaluated images (float32 LE) and labels (int64 LE), in order."""

    def __init__(self) -> None:
        self._h = hashlib.sha256()

    def update(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self._h.update(x.detach().to("cpu", torch.float32).contiguous().numpy().astype("<f4", copy=False).tobytes())
        self._h.update(y.detach().to("cpu", torch.int64).contiguous().numpy().astype("<i8", copy=False).tobytes())

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def ordered_batches(dataset: Dataset, indices: Sequence[int] | None = None, batch_size: int = 256,
                    num_workers: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of (images, labels) in a fixed order: `indices` (or the whole dataset) as given."""
    ds = dataset if indices is None else Subset(dataset, list(indices))
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers, drop_last=False)
    for x, y in loader:
        yield x, torch.as_tensor(y)


@dataclass
class CleanResult:
    n_examples: int
    clean_correct: int
    predictions: np.ndarray  # int64, one per evaluated sample, in order
    labels: np.ndarray
    predictions_sha256: str
    data_sha256: str
    numerics: str = NUMERICS_PROFILE
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
                   progress=None) -> CleanResult:
    """Exact clean accuracy of `model` on `dataset` (or its `indices`, in that order).

    `progress`, if given, is called with the number of samples done after each batch.
    """
    model = model.to(device).eval()
    preds, labels = [], []
    digest = DataDigest()
    with pinned_numerics():
        for x, y in ordered_batches(dataset, indices, batch_size, num_workers):
            digest.update(x, y)
            out = model(x.to(device, torch.float32))
            preds.append(out.argmax(1).cpu())
            labels.append(y.cpu())
            if progress is not None:
                progress(len(y))
    p = torch.cat(preds).numpy().astype(np.int64) if preds else np.zeros(0, np.int64)
    t = torch.cat(labels).numpy().astype(np.int64) if labels else np.zeros(0, np.int64)
    return CleanResult(len(t), int((p == t).sum()), p, t, predictions_digest(p), digest.hexdigest())
