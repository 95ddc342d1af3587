"""`rbzoo eval`: clean accuracy, then AutoAttack (or PGD) on the points still correct.

Exact clean accuracy itself (numerics profiles, ordered batches, data and prediction digests,
margins) lives in :mod:`rbzoo.exact`; the verification certificate in :mod:`rbzoo.verdict`.

:func:`run_eval` is what `rbzoo eval` runs: resolve and verify the checkpoint, check every option,
measure clean accuracy, then attack the points still correct with AutoAttack or PGD
(:mod:`rbzoo.robust`: chunked, resumable, shardable), and write the results JSON atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ._io import check_output, file_sha256, write_bytes, write_json
from .checkpoint import build, checkpoint_dataset, read
from .data import DEFAULT_EPS, get_dataset, get_spec
from .constants import NORMS, SUBSETS, choose, rbzoo_home
from .distributed import resolve_device
from .errors import ConfigError, DataError
from .evidence import CODEC as EVIDENCE_CODEC
from .evidence import FORMAT as EVIDENCE_FORMAT
from .evidence import Evidence
from .exact import check_profile, clean_accuracy, indices_digest, pack_flags, select_indices, wilson_interval
from .resolve import Resolver, resolve_checkpoint
from .robust import make_attack_spec, open_state, process_group, robust_evaluation, shard_from_env
from .verdict import Certificate


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
    numerics: str = "verify"  # rbzoo.exact profile of the clean pass and the attack: verify | fast | bf16
    force: bool = False  # replace an existing --out


def _check_config(config: EvalConfig, ckpt, path: Path):
    """Every option checked against the checkpoint before anything runs:
    (dataset name, the dataset the checkpoint records, attack spec or None, --out path or None)."""
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
    check_profile(config.numerics)
    attack = None
    if not config.clean_only:
        eps, norm = config.eps, choose("norm", config.norm, NORMS)
        if eps is None:
            if norm != "Linf":
                raise ConfigError(f"give --eps for {norm} (the default radius {DEFAULT_EPS[name]:.6g} is L∞)")
            eps = DEFAULT_EPS[name]
        attack = make_attack_spec(norm=norm, eps=eps, version=config.version, attacks=config.attacks,
                                  seed=config.seed, chunk_size=config.chunk_size, n_iter=config.n_iter,
                                  n_restarts=config.n_restarts, n_queries=config.n_queries, pgd_steps=config.pgd_steps,
                                  pgd_alpha=config.alpha, input_numel=spec.numel,
                                  numerics=config.numerics)
    if config.batch_size < 1:
        raise ConfigError(f"batch size must be >= 1, got {config.batch_size}")
    out = Path(config.out) if config.out is not None else None
    if out is not None and out.is_dir():
        raise ConfigError(f"--out {out} is a folder; give a file name such as results.json")
    if out is not None:  # checked before any work: a finished evaluation's results are not replaced silently
        check_output(out, inputs=(path,), force=config.force, kind="--out")
        if attack is not None:
            check_output(evidence_path(out), inputs=(path,), force=config.force, kind="evidence file")
    return name, recorded, attack, out


def evidence_path(out: Path) -> Path:
    """Where the evidence of results file `out` goes: `<stem>.evidence.safetensors` beside it."""
    return out.with_name(f"{out.stem}.evidence.safetensors")


def run_eval(config: EvalConfig, *, progress: Callable[[str, int, int], None] | None = None,
             remote: Resolver | None = None) -> dict | None:
    """Evaluate a checkpoint as `config` says and return the results (written atomically to
    `config.out` if given). Every input is checked before anything is written. Under torchrun the
    ranks share the attack chunks; rank 0 returns the merged results, the others None.
    `progress(stage, done, total, info=None)` reports the clean pass ("clean", per batch, no info),
    then each chunk's start and attacks (info: a `robust.ChunkProgress`); nothing is printed here. `remote` resolves
    names that are not local files (zoo names, Hub repo ids; see :func:`rbzoo.zoo.resolve_remote`).
    """
    t0 = time.perf_counter()
    shard = shard_from_env()
    path = resolve_checkpoint(config.model, remote)
    ckpt = read(path)
    name, recorded, attack, out = _check_config(config, ckpt, path)
    device = resolve_device(config.device, shard.local_rank)
    dataset = get_dataset(name, config.split, config.data_dir, download=config.download)
    indices = select_indices(len(dataset), config.n_examples, config.subset, config.subset_seed)
    warns = [f"rbzoo: the checkpoint was trained on {recorded}, evaluated on {name}"] if recorded and recorded != name else []

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
                               num_workers=config.num_workers, progress=clean_step, profile=config.numerics)
        robust, state_dir = None, None
        if attack is not None:
            fingerprint = {
                "model_digest": ckpt.digest,
                "dataset": name, "split": config.split, "data_sha256": clean.data_sha256,
                "n_examples": clean.n_examples, "indices_sha256": indices_digest(indices),
                "predictions_sha256": clean.predictions_sha256, **attack.as_dict(),
                "pyautoattack": package_versions()["pyautoattack"], "evidence": EVIDENCE_FORMAT,
            }
            state_dir = Path(config.state) if config.state is not None else default_state_dir(fingerprint)
            state = open_state(state_dir, fingerprint, shard, fresh=config.fresh)
            robust = robust_evaluation(model, dataset, indices, clean.correct_mask, attack, state, device=device,
                                       shard=shard, progress=report)
        if not shard.is_main:
            return None
    results = _results(config, ckpt, path, name, len(dataset), indices, clean, robust, attack, warns, device, shard)
    if robust is not None:
        data = Evidence(robust.evidence, {
            "norm": attack.norm, "eps": attack.eps, "attacks": list(attack.attacks), "numerics": attack.numerics,
            "shape": list(dataset[int(indices[0])][0].shape), "model_digest": ckpt.digest, "dataset": name,
            "n_examples": clean.n_examples, "indices_sha256": indices_digest(indices),
            "data_sha256": clean.data_sha256}).to_bytes()
        ev_path = evidence_path(out) if out is not None else state_dir / "evidence.safetensors"
        write_bytes(ev_path, data)
        results["evidence"] = {"file": ev_path.name if out is not None else str(ev_path),
                               "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
                               "n": len(robust.evidence), "codec": EVIDENCE_CODEC}
    results.update(state_dir=str(state_dir) if state_dir else None, wall_s=round(time.perf_counter() - t0, 3))
    if out is not None:
        write_json(out, results)
    return results


def _results(config: EvalConfig, ckpt, path: Path, name: str, split_size: int, indices, clean, robust, attack,
             warns: list[str], device, shard) -> dict:
    """The results JSON (docs/results.md): what was evaluated, how, and what came out."""
    n, subset_used = clean.n_examples, clean.n_examples < split_size
    return {
        "rbzoo_results": 1,
        "model_digest": ckpt.digest,
        # Absolute (symlinks kept, so a Hub-cache path still ends in model.safetensors): readers
        # such as `rbzoo plot` may run from another folder.
        "model": {"path": os.path.abspath(path), "arch": ckpt.arch.get("id"), "file_sha256": file_sha256(path)[0]},
        "dataset": name,
        "split": config.split,
        "n_examples": n,
        "subset": {"mode": config.subset, "seed": config.subset_seed if config.subset == "random" else None},
        "split_size": split_size,
        "indices_sha256": indices_digest(indices),
        "clean_correct": clean.clean_correct,
        "clean_acc": clean.clean_acc,
        "predictions_sha256": clean.predictions_sha256,
        "data_sha256": clean.data_sha256,
        # Per-sample labels and top-2 margins: what lets another machine verify these predictions
        # within numerical tolerance (docs/numerics.md), not only bit for bit.
        "certificate": Certificate.of(clean).to_json(),
        "robust_correct": robust.robust_correct if robust else None,
        "robust_acc": robust.robust_correct / n if robust else None,
        "attack": attack.as_dict() if attack else None,
        "robust_acc_after": {a: c / n for a, c in robust.after.items()} if robust else {},
        "robust_correct_after": dict(robust.after) if robust else {},
        "wilson95": ({"clean": wilson_interval(clean.clean_correct, n),
                      "robust": wilson_interval(robust.robust_correct, n) if robust else None} if subset_used else None),
        "robust_flags": pack_flags(robust.flags) if robust else None,
        "evidence": None,  # set by run_eval: {file, sha256, bytes, n, codec} of the stored breaks
        "warnings": warns + (robust.warnings if robust else []),
        "versions": package_versions(),
        "device": describe_device(device),
        "world_size": shard.world,
        "numerics": clean.numerics,
        "numerics_profile": clean.profile,
        "n_chunks": robust.n_chunks if robust else None,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
