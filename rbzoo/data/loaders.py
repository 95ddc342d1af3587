"""Reading the datasets: scikit-learn's digits as tensors here; CIFAR and ImageNet100 through
torchvision (`vision.py`, imported only for them, so the digits quickstart never needs torchvision).

`rbzoo.data` re-exports everything here on first use, so importing `rbzoo.data` for the dataset
specs does not import torch.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Subset, TensorDataset

from ..errors import DataError
from . import default_data_dir, get_spec

# --- datasets ----------------------------------------------------------------------------------


def _digits(split: str) -> TensorDataset:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    # A fixed permutation defines the split so it never depends on a run's seed: 1,437 / 360.
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    idx = perm[:1437] if split == "train" else perm[1437:]
    return TensorDataset(x[idx], y[idx])


def train_transform(name: str, augment: bool):
    """The loader-side augmentation of method.md §5.1 (None for the digits, which are tensors already)."""
    if name == "digits":
        return None
    from . import vision  # torchvision only where a torchvision dataset is used

    return vision.train_transform(name, augment)


def test_transform(name: str):
    """The deterministic test-time transform (None for the digits)."""
    if name == "digits":
        return None
    from . import vision

    return vision.test_transform(name)


def get_dataset(name: str, split: str, data_dir: str | os.PathLike | None = None, *,
                train_augment: bool = False, download: bool = False, transform=None) -> Dataset:
    """A dataset split ("train" or "test") yielding (float image in [0, 1], int label).

    `transform` overrides the default: training augmentation for "train" when `train_augment`,
    the deterministic test transform otherwise.
    """
    spec = get_spec(name)
    if split not in ("train", "test"):
        raise DataError(f"unknown split {split!r} (train, test)")
    if name == "digits":
        return _digits(split)
    from . import vision  # torchvision only where a torchvision dataset is used

    root = Path(data_dir) if data_dir is not None else default_data_dir()
    if transform is None:
        transform = vision.train_transform(name, train_augment) if split == "train" else vision.test_transform(name)
    return vision.open_dataset(spec, split, root, transform, download)


def split_train_valid(n: int, valid_ratio: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded train/validation indices: validation = first valid_ratio·n of a permutation."""
    if not 0.0 <= valid_ratio < 1.0:
        raise DataError(f"valid_ratio must be in [0, 1), got {valid_ratio}")
    perm = np.random.default_rng(seed).permutation(n)
    n_valid = int(valid_ratio * n)
    return np.sort(perm[n_valid:]), np.sort(perm[:n_valid])


__all__ = ["Subset", "get_dataset", "split_train_valid", "test_transform",
           "train_transform"]
