"""Datasets: CIFAR10/100 through torchvision, ImageNet100 as an ImageFolder tree, and the 8×8
handwritten digits that ship with scikit-learn (offline quickstart).

This file holds the specs (classes, sizes, normalization, default eps) and imports no torch;
reading the data is in `loaders.py` (torch) and `vision.py` (torchvision: CIFAR, ImageNet100), whose
names are importable from here.

Images are float tensors in [0, 1]; normalization is the model's first layer. The CIFAR
files are pickles: every one (official or not) is read once, by a restricted unpickler that admits
nothing but numpy arrays, lists, dicts and strings, so a hostile file cannot execute code.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path

from ..constants import NORMALIZATION
from ..errors import DataError


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    num_classes: int
    image_size: int
    channels: int
    normalize: str | None  # key of constants.NORMALIZATION, or None (mean/std given below)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    folder: str  # what must exist under --data-dir

    @property
    def numel(self) -> int:
        """Values per input image (channels × size × size)."""
        return self.channels * self.image_size ** 2


DATASETS: dict[str, DatasetSpec] = {
    "cifar10": DatasetSpec("cifar10", 10, 32, 3, "cifar10", *NORMALIZATION["cifar10"], "cifar-10-batches-py"),
    "cifar100": DatasetSpec("cifar100", 100, 32, 3, "cifar100", *NORMALIZATION["cifar100"], "cifar-100-python"),
    "imagenet100": DatasetSpec("imagenet100", 100, 224, 3, "imagenet", *NORMALIZATION["imagenet"], "imagenet100"),
    # sklearn's digits: 8×8, values 0..16 scaled to [0, 1]; mean/std measured on the whole set.
    "digits": DatasetSpec("digits", 10, 8, 1, None, (0.3053,), (0.3760,), "(bundled with scikit-learn)"),
}


# Robust-evaluation radius (L∞, [0, 1] pixels) used by the paper for each dataset (method.md §6.1).
DEFAULT_EPS = {"cifar10": 8 / 255, "cifar100": 4 / 255, "imagenet100": 2 / 255, "digits": 0.1}


def dataset_metadata(name: str) -> dict:
    """The `rbzoo.dataset` metadata object a checkpoint trained on `name` carries."""
    s = get_spec(name)
    return {"name": s.name, "num_classes": s.num_classes, "image_size": s.image_size, "channels": s.channels,
            "mean": list(s.mean), "std": list(s.std)}


def get_spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    return DATASETS[name]


def default_data_dir() -> Path:
    return Path(os.environ.get("RBZOO_DATA", "data"))


# Loading needs torch: those names come from .loaders (and the CIFAR classes from .vision, which
# needs torchvision) on first use (PEP 562), so the specs above (card validation, `rbzoo pull
# --list`) stay torch-free.
_LAZY = {"Subset": ".loaders", "get_dataset": ".loaders", "split_train_valid": ".loaders",
         "test_transform": ".loaders", "train_transform": ".loaders",
         "SafeCIFAR10": ".vision", "SafeCIFAR100": ".vision"}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name], __name__), name)


__all__ = ["DATASETS", "DEFAULT_EPS", "dataset_metadata", "DatasetSpec", "Subset", "get_dataset", "get_spec", "split_train_valid", "train_transform", "test_transform"]
