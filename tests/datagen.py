"""Small datasets in the real on-disk formats, for tests (torchvision's loaders read them)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np


def _images(rng: np.random.Generator, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Learnable images: a class-dependent colour/brightness pattern plus noise (N×3072 uint8)."""
    n = len(labels)
    base = rng.integers(0, 256, size=(num_classes, 3, 32, 32)).astype(np.float32)
    noise = rng.normal(0, 40, size=(n, 3, 32, 32))
    return np.clip(base[labels] * 0.8 + noise, 0, 255).astype(np.uint8).reshape(n, 3072)


def write_cifar10(root: Path, n_train: int = 100, n_test: int = 50, seed: int = 0) -> Path:
    """`root/cifar-10-batches-py/` with five data batches, a test batch and batches.meta."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    y_train = rng.integers(0, 10, size=n_train)
    x_train = _images(rng, y_train, 10)
    for i, chunk in enumerate(np.array_split(np.arange(n_train), 5)):
        entry = {"batch_label": f"training batch {i + 1} of 5", "labels": y_train[chunk].tolist(),
                 "data": x_train[chunk], "filenames": [f"img_{j}.png" for j in chunk]}
        with open(folder / f"data_batch_{i + 1}", "wb") as f:
            pickle.dump(entry, f)
    y_test = rng.integers(0, 10, size=n_test)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"batch_label": "testing batch 1 of 1", "labels": y_test.tolist(), "data": _images(rng, y_test, 10),
                     "filenames": [f"t_{j}.png" for j in range(n_test)]}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],
                     "num_cases_per_batch": n_train // 5, "num_vis": 3072}, f)
    return Path(root)


def write_cifar100(root: Path, n_train: int = 200, n_test: int = 100, seed: int = 0) -> Path:
    """`root/cifar-100-python/` with train, test and meta."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in (("train", n_train), ("test", n_test)):
        y = rng.integers(0, 100, size=n)
        with open(folder / name, "wb") as f:
            pickle.dump({"filenames": [f"{name}_{j}.png" for j in range(n)], "batch_label": name, "fine_labels": y.tolist(),
                         "coarse_labels": (y // 5).tolist(), "data": _images(rng, y, 100)}, f)
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"class{i}" for i in range(100)], "coarse_label_names": [f"super{i}" for i in range(20)]}, f)
    return Path(root)
