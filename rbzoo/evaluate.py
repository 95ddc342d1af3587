"""Evaluation: exact clean accuracy under a pinned numerics profile, and `rbzoo eval`.

Clean accuracy is reproducible to the sample: the model runs in eval mode with folded weights,
TF32 off and deterministic algorithms, over the data in a fixed order. The result carries a
SHA-256 of the per-sample predicted labels (so two machines compare predictions, not totals) and
a SHA-256 of the evaluated data tensors (a different copy of the data is the other silent cause
of mismatches).

:func:`run_eval` is what `rbzoo eval` runs: resolve and verify the checkpoint, check every option,
measure clean accuracy, then attack the points still correct with AutoAttack or PGD
(:mod:`rbzoo.robust`: chunked, resumable, shardable), and write the results JSON atomically.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import platform
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, Subset

from ._io import file_sha256, write_json
from .constants import rbzoo_home
from .distributed import resolve_device
from .errors import ConfigError, DataError

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


# --- `rbzoo eval`: clean accuracy, then AutoAttack (or PGD) on the points still correct -----------


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


def select_indices(total: int, n_examples: int | None = None, mode: str = "first", seed: int = 0) -> np.ndarray:
    """The evaluated dataset indices, in dataset order: the first N, or a seeded random N."""
    if mode not in ("first", "random"):
        raise ConfigError(f"unknown subset mode {mode!r} (first, random)")
    n = total if n_examples is None else int(n_examples)
    if not 1 <= n <= total:
        raise ConfigError(f"--n-examples {n} out of range: the split has {total} examples")
    if mode == "first":
        return np.arange(n, dtype=np.int64)
    return np.sort(np.random.default_rng(seed).choice(total, size=n, replace=False)).astype(np.int64)


def pack_flags(flags: np.ndarray) -> str:
    """Per-sample booleans as packbits (little bit order), base64: the results' `robust_flags`."""
    return base64.b64encode(np.packbits(np.asarray(flags, dtype=np.uint8), bitorder="little").tobytes()).decode("ascii")


def unpack_flags(text: str, n: int) -> np.ndarray:
    """Inverse of :func:`pack_flags` for `n` samples (ValueError if the text does not hold them)."""
    bits = np.unpackbits(np.frombuffer(base64.b64decode(text, validate=True), dtype=np.uint8), bitorder="little")
    if len(bits) < n or len(bits) >= n + 8 or bits[n:].any():
        raise ValueError(f"packed flags do not hold {n} samples")
    return bits[:n].astype(bool)


def indices_digest(indices: np.ndarray) -> str:
    return hashlib.sha256(np.asarray(indices, dtype="<i8").tobytes()).hexdigest()


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("rbzoo", "torch", "torchvision", "numpy", "pyautoattack", "safetensors"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"


def checkpoint_dataset(ckpt) -> str | None:
    """The dataset name recorded in `rbzoo.dataset` (a JSON object or a bare name), if any."""
    value = ckpt.meta_json("rbzoo.dataset")
    if isinstance(value, dict):
        value = value.get("name")
    return value if isinstance(value, str) and value else None


def default_state_dir(fingerprint: dict) -> Path:
    """`$RBZOO_HOME/eval-state/<key of the fingerprint>`: the same evaluation finds its saved chunks
    again whatever --out says (adding --out to an interrupted command resumes it)."""
    key = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]
    return rbzoo_home() / "eval-state" / key


@dataclass
class EvalConfig:
    """Everything `rbzoo eval` can be told; defaults match the CLI's."""

    model: str
    dataset: str | None = None  # default: the checkpoint's rbzoo.dataset
    split: str = "test"
    data_dir: str | None = None
    download: bool = False
    n_examples: int | None = None
    subset: str = "first"  # first | random
    subset_seed: int = 0
    batch_size: int = 256
    device: str = "auto"
    num_workers: int = 0
    clean_only: bool = False
    norm: str = "Linf"
    eps: str | float | None = None  # default: DEFAULT_EPS[dataset] for Linf
    version: str = "standard"
    attacks: list[str] | None = None
    pgd_steps: int | None = None
    alpha: str | float | None = None
    seed: int = 0
    chunk_size: int = 500
    n_iter: int | None = None
    n_restarts: int | None = None
    n_queries: int | None = None
    out: str | os.PathLike | None = None
    state: str | os.PathLike | None = None
    fresh: bool = False


def run_eval(config: EvalConfig, *, progress: Callable[[str, int, int], None] | None = None) -> dict | None:
    """Evaluate a checkpoint as `config` says and return the results (written atomically to
    `config.out` if given). Every input is checked before anything is written. Under torchrun the
    ranks share the attack chunks; rank 0 returns the merged results, the others None.
    `progress(stage, done, total, info=None)` reports the clean pass ("clean", per batch, no info),
    then each chunk's start and attacks (info: a `robust.ChunkProgress`). Nothing is printed here.
    """
    from .checkpoint import build, read
    from .data import DEFAULT_EPS, get_dataset, get_spec
    from .resolve import resolve_checkpoint
    from .robust import make_attack_spec, open_state, process_group, robust_evaluation, shard_from_env

    t0 = time.perf_counter()
    shard = shard_from_env()
    path = resolve_checkpoint(config.model)
    ckpt = read(path)
    recorded = checkpoint_dataset(ckpt)
    name = config.dataset or recorded
    if not name:
        raise ConfigError(f"{path} records no dataset (rbzoo.dataset); pass --dataset")
    spec = get_spec(name)
    model_classes, model_channels = ckpt.arch.get("num_classes"), ckpt.arch.get("in_channels", 3)
    if model_classes != spec.num_classes:
        raise DataError(f"{path.name} has {model_classes} classes but {name} has {spec.num_classes}: wrong --dataset for this model")
    if model_channels != spec.channels:
        raise DataError(f"{path.name} takes {model_channels}-channel images but {name} has {spec.channels} channels")
    attack = None
    if not config.clean_only:
        eps = config.eps
        if eps is None:
            if config.norm != "Linf":
                raise ConfigError(f"give --eps for {config.norm} (the default radius {DEFAULT_EPS[name]:.6g} is L∞)")
            eps = DEFAULT_EPS[name]
        attack = make_attack_spec(norm=config.norm, eps=eps, version=config.version, attacks=config.attacks,
                                  seed=config.seed, chunk_size=config.chunk_size, n_iter=config.n_iter,
                                  n_restarts=config.n_restarts, n_queries=config.n_queries, pgd_steps=config.pgd_steps,
                                  pgd_alpha=config.alpha, input_numel=spec.channels * spec.image_size ** 2)
    if config.batch_size < 1:
        raise ConfigError(f"batch size must be >= 1, got {config.batch_size}")
    out = Path(config.out) if config.out is not None else None
    if out is not None and out.is_dir():
        raise ConfigError(f"--out {out} is a folder; give a file name such as results.json")
    device = resolve_device(config.device, shard.local_rank)
    dataset = get_dataset(name, config.split, config.data_dir, download=config.download)
    indices = select_indices(len(dataset), config.n_examples, config.subset, config.subset_seed)
    warns = []
    if recorded and recorded != name:
        warns.append(f"rbzoo: the checkpoint was trained on {recorded}, evaluated on {name}")

    with process_group(shard, device):
        model = build(ckpt, device)
        report = progress if shard.is_main else None
        done = 0

        def clean_step(k: int) -> None:
            nonlocal done
            done += k
            if report is not None:
                report("clean", done, len(indices))

        clean = clean_accuracy(model, dataset, indices=indices, batch_size=config.batch_size, device=device,
                               num_workers=config.num_workers, progress=clean_step)
        robust, state_dir = None, None
        if attack is not None:
            fingerprint = {
                "model_digest": ckpt.digest, "model_state_sha256": ckpt.metadata.get("rbzoo.state_sha256"),
                "dataset": name, "split": config.split, "data_sha256": clean.data_sha256,
                "n_examples": clean.n_examples, "indices_sha256": indices_digest(indices),
                "predictions_sha256": clean.predictions_sha256, **attack.as_dict(),
                "pyautoattack": package_versions()["pyautoattack"],
            }
            state_dir = Path(config.state) if config.state is not None else default_state_dir(fingerprint)
            state = open_state(state_dir, fingerprint, shard, fresh=config.fresh)
            robust = robust_evaluation(model, dataset, indices, clean.correct_mask, attack, state, device=device,
                                       shard=shard, progress=report)
        if not shard.is_main:
            return None
    n, subset_used = clean.n_examples, clean.n_examples < len(dataset)
    results = {
        "rbzoo_results": 1,
        "model_digest": ckpt.digest,
        "model": {"path": str(path), "arch": ckpt.arch.get("id"), "file_sha256": file_sha256(path)[0]},
        "dataset": name,
        "split": config.split,
        "n_examples": n,
        "subset": {"mode": config.subset, "seed": config.subset_seed if config.subset == "random" else None},
        "split_size": len(dataset),
        "indices_sha256": indices_digest(indices),
        "clean_correct": clean.clean_correct,
        "clean_acc": clean.clean_acc,
        "predictions_sha256": clean.predictions_sha256,
        "data_sha256": clean.data_sha256,
        "robust_correct": robust.robust_correct if robust else None,
        "robust_acc": robust.robust_correct / n if robust else None,
        "attack": attack.as_dict() if attack else None,
        "robust_acc_after": {a: c / n for a, c in robust.after.items()} if robust else {},
        "robust_correct_after": dict(robust.after) if robust else {},
        "wilson95": ({"clean": wilson_interval(clean.clean_correct, n),
                      "robust": wilson_interval(robust.robust_correct, n) if robust else None} if subset_used else None),
        "robust_flags": pack_flags(robust.flags) if robust else None,
        "warnings": warns + (robust.warnings if robust else []),
        "wall_s": round(time.perf_counter() - t0, 3),
        "versions": package_versions(),
        "device": describe_device(device),
        "world_size": shard.world,
        "numerics": clean.numerics,
        "state_dir": str(state_dir) if state_dir else None,
        "n_chunks": robust.n_chunks if robust else None,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if out is not None:
        write_json(out, results)
    return results

