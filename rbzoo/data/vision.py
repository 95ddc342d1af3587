"""The datasets read through torchvision: CIFAR10/100 (every pickle read once, by a restricted
unpickler), ImageNet100 as an ImageFolder tree, and their transforms.

Only these need torchvision, so only they import it: the digits quickstart runs without it.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from torchvision import datasets as tvd
from torchvision import transforms as T

from ..errors import DataError

# --- safe reading of CIFAR pickles -------------------------------------------------------------

_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("copyreg", "_reconstructor"), ("builtins", "object"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"forbidden global {module}.{name}")


def _read_batch(path: Path) -> dict:
    """One read of a CIFAR pickle, by the restricted unpickler: the bytes used are the bytes checked."""
    try:
        with open(path, "rb") as f:
            obj = _RestrictedUnpickler(f, encoding="latin1").load()
    except Exception as e:
        raise DataError(f"{path} is not a valid CIFAR batch file ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path} is not a valid CIFAR batch file (a {type(obj).__name__}, not a dict)")
    return obj


def _batch_arrays(path: Path, num_classes: int) -> tuple[np.ndarray, list[int]]:
    """(uint8 images N×3072, labels) of a batch file, with every field checked."""
    entry = _read_batch(path)
    data = entry.get("data")
    labels = entry.get("labels", entry.get("fine_labels"))
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"{path}: `data` must be a uint8 array of N×3072 pixels")
    if not isinstance(labels, list) or len(labels) != len(data) or not all(
            isinstance(v, int) and 0 <= v < num_classes for v in labels):
        raise DataError(f"{path}: labels must be {len(data)} integers in [0, {num_classes})")
    return data, labels


class _SafeCIFARMixin:
    """torchvision's CIFAR datasets, with each pickle read once, by the restricted unpickler.

    torchvision's own constructor would `pickle.load` the files (any code in them would run);
    this one fills the same fields (`data` N×32×32×3 uint8, `targets`, `classes`) instead.
    """

    def __init__(self, root, train: bool = True, transform=None, target_transform=None, download: bool = False):
        tvd.VisionDataset.__init__(self, root, transform=transform, target_transform=target_transform)
        self.train = train
        if download:
            self.download()
        if not self._check_integrity():
            raise RuntimeError("Dataset not found. You can use download=True to download it")
        self._load_meta()
        data, self.targets = [], []
        for name, _ in self.train_list if train else self.test_list:
            images, labels = _batch_arrays(Path(self.root) / self.base_folder / name, len(self.classes))
            data.append(images)
            self.targets.extend(labels)
        self.data = np.vstack(data).reshape(-1, 3, 32, 32).transpose((0, 2, 3, 1))  # HWC, as torchvision

    def _check_integrity(self) -> bool:  # noqa: D401 - torchvision hook (also used by download())
        root = Path(self.root) / self.base_folder
        files = self.train_list + self.test_list + [(self.meta["filename"], self.meta["md5"])]
        return all((root / name).is_file() for name, _ in files)

    def _load_meta(self) -> None:  # torchvision re-checks the official MD5 here
        path = Path(self.root) / self.base_folder / self.meta["filename"]
        classes = _read_batch(path).get(self.meta["key"])
        if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
            raise DataError(f"{path}: `{self.meta['key']}` must be a list of class names")
        self.classes = classes
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}


class SafeCIFAR10(_SafeCIFARMixin, tvd.CIFAR10):
    pass


class SafeCIFAR100(_SafeCIFARMixin, tvd.CIFAR100):
    pass


# --- transforms --------------------------------------------------------------------------------


def train_transform(name: str, augment: bool) -> T.Compose:
    """The loader-side augmentation of method.md §5.1."""
    if name == "imagenet100":
        return T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.ToTensor()])
    if name in ("cifar10", "cifar100") and augment:
        return T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor()])
    return T.Compose([T.ToTensor()])


def test_transform(name: str) -> T.Compose:
    if name == "imagenet100":
        return T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor()])
    return T.Compose([T.ToTensor()])


# --- opening a split ------------------------------------------------------------------------------


def open_dataset(spec, split: str, root: Path, transform, download: bool):
    """CIFAR10/100 or ImageNet100 (`spec` from rbzoo.data.get_spec) at `root`; DataError when missing."""
    name = spec.name
    if name in ("cifar10", "cifar100"):
        cls = SafeCIFAR10 if name == "cifar10" else SafeCIFAR100
        try:
            return cls(str(root), train=split == "train", transform=transform, download=download)
        except RuntimeError:
            raise DataError(
                f"{name} not found in {root}: put the extracted '{spec.folder}/' folder there "
                f"(or run with --download when online)"
            ) from None
        except OSError as e:
            raise DataError(f"could not download {name} into {root}: {e}") from None
    folder = root / spec.folder / ("train" if split == "train" else "val")
    if not folder.is_dir():
        raise DataError(f"imagenet100 not found: expected an ImageFolder tree at {folder} (build it with `rbzoo data imagenet100`)")
    ds = tvd.ImageFolder(str(folder), transform=transform)
    if len(ds.classes) != spec.num_classes:
        raise DataError(f"{folder} has {len(ds.classes)} classes, imagenet100 needs {spec.num_classes}")
    return ds
