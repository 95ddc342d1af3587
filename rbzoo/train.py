"""`rbzoo train`: the paper's adversarial pruning trainer (method.md §5), in one readable loop.

Only the scores are trained (SGD); the ±1 weights stay fixed. Each epoch: set the learning rate,
train one epoch on adversarial examples of the chosen objective, then measure clean and PGD robust
accuracy on the validation split and the test split, keep the model with the best robust
validation accuracy, and write the run folder:

    RUN_DIR/config.yaml        the resolved config (what `--resume` reads back)
    RUN_DIR/metrics.jsonl      one JSON record per epoch (accuracies as fractions)
    RUN_DIR/best.safetensors   checkpoint format v1 of the selected epoch
    RUN_DIR/last.safetensors   checkpoint format v1 of the latest epoch
    RUN_DIR/state.pt           everything needed to resume (torch.load(weights_only=True) safe)
    RUN_DIR/tb/                TensorBoard events (optional)

Every file is replaced atomically, and state.pt is written last, so a run killed at any moment
resumes from the last completed epoch. Randomness is reseeded at the start of every epoch from
(seed, epoch, rank), which makes an interrupted and resumed CPU run bit-identical to an
uninterrupted one; that is why state.pt holds no RNG state (tests/test_train_resume.py).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import sys
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from . import distributed
from ._io import atomic_path, write_bytes, write_text
from .attacks import pgd
from .checkpoint import save
from .config import CONFIG_FILE, TrainConfig, check_run_dir
from .data import dataset_metadata, get_dataset, get_spec, split_train_valid, test_transform
from .errors import CheckpointError, ConfigError, RbzooWarning
from .exact import ordered_batches
from .layers import SubnetConv2d
from .models import create_model
from .objectives import make_objective
from .pruning import derive_seed

METRICS_FILE, STATE_FILE = "metrics.jsonl", "state.pt"
BEST_FILE, LAST_FILE, TB_DIR = "best.safetensors", "last.safetensors", "tb"
RUN_FILES = (CONFIG_FILE, METRICS_FILE, STATE_FILE, BEST_FILE, LAST_FILE, TB_DIR)
STATE_FORMAT = "rbzoo-train-state-v1"


@dataclass
class TrainResult:
    run_dir: Path
    epochs_done: int
    best_epoch: int | None
    best: dict | None  # the metrics record of the selected epoch
    last: dict | None  # the metrics record of the final epoch
    wall_s: float


# --- schedule ------------------------------------------------------------------------------------


def lr_at(cfg: TrainConfig, epoch: int) -> float:
    """The learning rate of 0-based `epoch`, set once per epoch (method.md §5.1)."""
    if epoch < cfg.warmup_epochs:
        return cfg.lr * (epoch + 1) / cfg.warmup_epochs
    e, span = epoch - cfg.warmup_epochs, cfg.epochs - cfg.warmup_epochs
    if cfg.lr_schedule == "cosine":
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * e / span))
    if cfg.lr_schedule == "multistep":
        return cfg.lr * cfg.lr_gamma ** sum(epoch >= m for m in cfg.lr_milestones)
    return cfg.lr


def reseed(cfg: TrainConfig, epoch: int, rank: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA) for this epoch: data order and augmentation,
    attack random starts and the fast attacker's crops then depend on (seed, epoch, rank) only."""
    s = derive_seed(cfg.seed, "epoch", epoch, rank)
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)


# --- data and model ------------------------------------------------------------------------------


class _Indexed(Dataset):
    """(image, label, position): the fast attacker keys its perturbation memory by position."""

    def __init__(self, ds: Dataset) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int):
        x, y = self.ds[i]
        return x, y, i


@dataclass
class _Data:
    train: Dataset  # yields (x, y, position)
    val_source: Dataset  # the train split with test-time transforms
    val_indices: list[int]
    test: Dataset
    test_indices: list[int]
    image_shape: tuple[int, int, int]


def build_data(cfg: TrainConfig) -> _Data:
    """Load the splits (a missing dataset raises DataError before anything is written)."""
    spec = get_spec(cfg.dataset)
    full = get_dataset(cfg.dataset, "train", cfg.data_dir, train_augment=cfg.resolved_augment(), download=cfg.download)
    plain = get_dataset(cfg.dataset, "train", cfg.data_dir, transform=test_transform(cfg.dataset))
    test = get_dataset(cfg.dataset, "test", cfg.data_dir, download=cfg.download)
    train_idx, val_idx = split_train_valid(len(full), cfg.valid_ratio, cfg.seed)
    if len(train_idx) < 2:
        raise ConfigError(f"{cfg.dataset}: only {len(train_idx)} training images after the validation split")
    test_idx = np.arange(len(test))
    if cfg.test_subset is not None and cfg.test_subset < len(test):
        rng = np.random.default_rng(derive_seed(cfg.seed, "test-subset"))
        test_idx = np.sort(rng.choice(len(test), cfg.test_subset, replace=False))
    elif cfg.test_subset is not None and cfg.test_subset > len(test):
        warnings.warn(f"test_subset {cfg.test_subset:,} is larger than the {cfg.dataset} test split "
                      f"({len(test):,} images): the whole split is used", RbzooWarning)
    shape = (spec.channels, spec.image_size, spec.image_size)
    return _Data(_Indexed(Subset(full, train_idx.tolist())), plain, val_idx.tolist(), test, test_idx.tolist(), shape)


def build_model(cfg: TrainConfig) -> nn.Module:
    spec = get_spec(cfg.dataset)
    try:
        return create_model(
            cfg.arch, num_classes=spec.num_classes, mean=spec.mean, std=spec.std, in_channels=spec.channels,
            end_with_bn=cfg.end_with_bn, first_layer_dense=cfg.first_layer_dense, last_layer_dense=cfg.last_layer_dense,
            nonlinearity=cfg.nonlinearity, width=cfg.width, seed=cfg.seed, keep=cfg.keep, p=cfg.p,
            score_init_scale=cfg.score_init_scale, score_mode=cfg.score_mode,
        )
    except (KeyError, ValueError) as e:
        raise ConfigError(f"cannot build {cfg.arch}: {e}") from None


def _fixed_weight_keys(model: nn.Module) -> set[str]:
    """The ±1 weight buffers: regenerated from the seed, so the training state leaves them out."""
    return {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, SubnetConv2d)}


def model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    skip = _fixed_weight_keys(model)
    return {k: v.detach().cpu() for k, v in model.state_dict().items() if k not in skip}


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Strict: the saved keys must be exactly the model's state minus the fixed weights."""
    expected = set(model.state_dict()) - _fixed_weight_keys(model)
    if set(state) != expected:
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        raise CheckpointError(f"training state does not match the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    model.load_state_dict(state, strict=False)


# --- evaluation ----------------------------------------------------------------------------------


def evaluate_split(model: nn.Module, dataset: Dataset, indices: list[int], cfg: TrainConfig, ctx, seed: int,
                   num_workers: int, autocast) -> tuple[int, float, float]:
    """(n, clean accuracy, PGD robust accuracy) in eval mode, sharded over ranks.

    Default: a sample counts as robust when it is classified correctly both clean and under the
    attack, and PGD keeps each sample's highest-loss iterate including the last. Paper-compat: the
    official accuracy on the attacked images alone, and the official best-iterate rule (the last
    iterate is never evaluated, method.md §12.11)."""
    a = cfg.eval_attack
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    counts = torch.zeros(3, dtype=torch.float64, device=ctx.device)
    shard = indices[ctx.rank::ctx.world_size]
    for x, y in ordered_batches(dataset, shard, cfg.eval_batch_size, num_workers):
        x, y = x.to(ctx.device), torch.as_tensor(y).to(ctx.device)
        with autocast:
            with torch.no_grad():
                ok = model(x).argmax(1) == y
            x_adv = pgd(model, x, y, eps=a.eps, alpha=a.alpha, steps=a.steps, random_start=True,
                        select="paper" if cfg.paper_compat else "best", generator=gen)
            with torch.no_grad():
                ok_adv = model(x_adv).argmax(1) == y
                if not cfg.paper_compat:
                    ok_adv &= ok
        counts += torch.tensor([len(y), ok.sum().item(), ok_adv.sum().item()], dtype=torch.float64, device=ctx.device)
    n, clean, robust = distributed.all_reduce_sum(counts).tolist()
    return int(n), (clean / n if n else float("nan")), (robust / n if n else float("nan"))


# --- training state (everything stored as tensors and plain types: weights_only loads it) -------


def read_state(run_dir: Path) -> dict | None:
    path = run_dir / STATE_FILE
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user-facing error
        raise CheckpointError(f"{path}: cannot read the training state ({str(e).splitlines()[0]})") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path}: not an rbzoo training state")
    return state


# --- run folder ----------------------------------------------------------------------------------


def _clear_run_files(out: Path) -> None:
    for name in RUN_FILES:
        p = out / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def _write_metrics(run_dir: Path, history: list[dict]) -> None:
    write_text(run_dir / METRICS_FILE, "".join(json.dumps(r) + "\n" for r in history))


def _fmt(v) -> str:
    return "  -  " if v is None else f"{v:.4f}"


def epoch_line(r: dict) -> str:
    """The one plain log line of an epoch (keep and sparsity are always shown)."""
    return (f"epoch {r['epoch']}/{r['epochs']} keep={r['keep']:g} (sparsity {r['sparsity']:g}) lr={r['lr']:.4g} "
            f"loss={r['train_loss']:.4f} train_acc={r['train_acc']:.4f} "
            f"val clean/robust={_fmt(r['val_clean_acc'])}/{_fmt(r['val_robust_acc'])} "
            f"test clean/robust={_fmt(r['test_clean_acc'])}/{_fmt(r['test_robust_acc'])} "
            f"{r['images_per_s']:.0f} img/s {r['wall_s']:.1f}s" + (" *best*" if r["is_best"] else ""))


class _Display:
    """Rich epoch and batch bars on a terminal; otherwise one plain line per epoch via `log`."""

    def __init__(self, enabled: bool, rich: bool, log: Callable[[str], None], epochs: int, start: int) -> None:
        self.enabled, self.log, self.progress = enabled, log, None
        if enabled and rich:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)

            self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn())
            self.progress.start()
            self.epochs = self.progress.add_task("epochs", total=epochs, completed=start, info="")
            self.batches = self.progress.add_task("batches", total=1, info="")
            self.log = lambda line: self.progress.console.print(line, highlight=False)

    def start_epoch(self, epoch: int, n_batches: int) -> None:
        if self.progress:
            self.progress.reset(self.batches, total=n_batches, description=f"epoch {epoch}", info="")

    def evaluating(self) -> None:
        if self.progress:
            self.progress.update(self.batches, description="evaluating")

    def batch(self, info: str) -> None:
        if self.progress:
            self.progress.update(self.batches, advance=1, info=info)

    def end_epoch(self, line: str) -> None:
        if self.progress:
            self.progress.update(self.epochs, advance=1)
        if self.enabled:
            self.log(line)

    def close(self) -> None:
        if self.progress:
            self.progress.stop()


def _print(line: str) -> None:
    print(line, flush=True)


# --- the trainer ---------------------------------------------------------------------------------


def train(cfg: TrainConfig, out_dir: str | os.PathLike, *, resume: bool = False, force: bool = False,
          progress: bool | None = None, log: Callable[[str], None] | None = None) -> TrainResult:
    """Train (or, with `resume`, continue) the run in `out_dir`; returns the best and last records.

    Everything that can fail on bad input — the folder, the config, the data, the device, the
    network — is checked before the folder is created. `progress` None: rich bars when stdout is a
    terminal, one plain line per epoch otherwise. Under torchrun only rank 0 writes and prints.
    """
    t_start = time.perf_counter()
    log = log or _print
    out = Path(out_dir)
    threads = torch.get_num_threads()
    if cfg.cpu_threads is not None:
        torch.set_num_threads(cfg.cpu_threads)
    ctx = distributed.setup(cfg.device)
    try:
        return _train(cfg, out, ctx, resume, force, progress, log, t_start)
    finally:
        distributed.cleanup()
        torch.set_num_threads(threads)


@dataclass
class _Parts:
    """What one run trains with: built once, before the run folder is touched."""

    net: nn.Module  # the bare network: attacks, evaluation and checkpoints use it
    forward: nn.Module  # the training forward: the DDP wrapper under torchrun, else `net`
    optimizer: torch.optim.Optimizer
    objective: object
    sampler: DistributedSampler
    loader: DataLoader
    autocast: object
    num_workers: int


@dataclass
class _Progress:
    """The run's history so far: what state.pt stores and a resume restores."""

    start: int = 0
    history: list = field(default_factory=list)
    best_epoch: int | None = None
    best_metric: float = -1.0
    best_bytes: bytes | None = None
    elapsed: float = 0.0


def _validate(cfg: TrainConfig, out: Path, ctx, resume: bool, force: bool) -> dict | None:
    """Every check that needs no data: the folder, the batch split, the device; the saved state."""
    check_run_dir(out, resume=resume, force=force)
    if cfg.batch_size % ctx.world_size:
        raise ConfigError(f"batch_size {cfg.batch_size} is the global batch; it must divide by the {ctx.world_size} processes")
    if cfg.sync_bn and ctx.device.type != "cuda":
        # torch's SyncBatchNorm refuses CPU tensors (ValueError on the first forward of a
        # distributed run): say so before anything is written.
        raise ConfigError("sync_bn needs CUDA (torch's SyncBatchNorm runs on GPUs only)")
    state = read_state(out) if resume else None
    if state is not None and state["config"] != cfg.metadata():
        raise ConfigError(f"{out}/{CONFIG_FILE} no longer matches the run's training state; restore it to resume")
    return state


def build_network(cfg: TrainConfig, ctx, state: dict | None = None) -> nn.Module:
    """The network on its device, in the memory format and BN flavour the config asks for."""
    net = build_model(cfg).to(ctx.device)
    if cfg.channels_last:
        net = net.to(memory_format=torch.channels_last)
    if cfg.sync_bn and ctx.enabled:
        net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
    if state is not None:
        load_model_state(net, state["model"])
    return net


def _build_parts(cfg: TrainConfig, ctx, data: _Data, state: dict | None) -> _Parts:
    device = ctx.device
    net = build_network(cfg, ctx, state)
    num_workers = cfg.num_workers if cfg.num_workers is not None else (min(8, os.cpu_count() or 1) if device.type == "cuda" else 0)
    per_rank_batch = cfg.batch_size // ctx.world_size
    if cfg.batch_size > len(data.train):  # would silently train full-batch
        raise ConfigError(f"batch_size {cfg.batch_size} is larger than the training set ({len(data.train):,} images); "
                          f"give at most {len(data.train)}")
    # Every rank shuffles with the same seed and takes its stride of one permutation, so global step
    # s trains on the same samples for any number of processes (when the set divides evenly).
    sampler = DistributedSampler(data.train, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=cfg.seed)
    loader = DataLoader(data.train, batch_size=per_rank_batch, sampler=sampler, num_workers=num_workers,
                        pin_memory=device.type == "cuda", drop_last=len(sampler) % per_rank_batch == 1)  # BN needs ≥ 2
    # The attack runs on `net` itself; the training forward goes through DDP so gradients sync.
    # broadcast_buffers=False: rank 0's BN statistics are broadcast before evaluating instead of on
    # every forward (which would also resend the fixed ±1 weight buffers each step).
    forward = nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None,
                                                  broadcast_buffers=False) if ctx.enabled else net
    params = [p for p in net.parameters() if p.requires_grad]  # the scores (+ optional dense layers)
    optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=cfg.nesterov)
    objective = make_objective(cfg, len(data.train), data.image_shape, device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if cfg.bf16 else nullcontext()
    return _Parts(net, forward, optimizer, objective, sampler, loader, autocast, num_workers)


def _restore(parts: _Parts, state: dict | None, out: Path) -> _Progress:
    """Optimizer, attack memory and history from state.pt (a fresh _Progress without one). No RNG
    state: reseed() at every epoch start makes the run a function of (seed, epoch)."""
    if state is None:
        return _Progress()
    parts.optimizer.load_state_dict(state["optimizer"])
    try:
        parts.objective.load_state_dict(state["objective"])
    except ValueError as e:
        raise CheckpointError(f"{out}/{STATE_FILE}: {e}") from None
    best = state["best_checkpoint"]
    return _Progress(state["epoch"], list(state["history"]), state["best"]["epoch"], state["best"]["metric"],
                     None if best is None else best.numpy().tobytes(), state["elapsed_s"])


def _prepare_run_dir(cfg: TrainConfig, out: Path, ctx, resume: bool, force: bool, run: _Progress, log):
    """Create the run folder (or repair it to the last committed epoch); rank 0 only. Returns the
    TensorBoard writer, if any."""
    distributed.barrier()  # every rank has checked the folder before rank 0 changes it
    writer = None
    if ctx.is_main:
        if not resume:
            if force:
                _clear_run_files(out)
            out.mkdir(parents=True, exist_ok=True)
            write_text(out / CONFIG_FILE, cfg.to_yaml())
        else:
            # Files written after the last state.pt belong to an epoch that will be redone.
            _write_metrics(out, run.history)
            if run.best_bytes is not None:
                write_bytes(out / BEST_FILE, run.best_bytes)
            elif (out / BEST_FILE).exists():
                (out / BEST_FILE).unlink()
        if cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                writer = SummaryWriter(str(out / TB_DIR), purge_step=run.start + 1)
            except ImportError:
                log("tensorboard is not installed; continuing without TensorBoard events (pip install tensorboard)")
    distributed.barrier()
    return writer


def order_digest(batches: list[torch.Tensor], device: torch.device) -> str:
    """SHA-256 of the epoch's global batches: per step, the sorted training positions of every
    rank. Equal for 1 and N processes with the same global batch (when the set divides evenly)."""
    if not batches:
        return hashlib.sha256(b"").hexdigest()
    sizes = [len(b) for b in batches]  # the same on every rank: DistributedSampler pads to equal shares
    mine = torch.cat(batches).to(device=device, dtype=torch.int64)
    everyone = distributed.all_gather_cat(mine).cpu().view(-1, len(mine))  # (world, positions)
    h, offset = hashlib.sha256(), 0
    for n in sizes:
        step = everyone[:, offset:offset + n].flatten().sort().values
        h.update(step.numpy().astype("<i8").tobytes())
        offset += n
    return h.hexdigest()


def _train_epoch(cfg: TrainConfig, parts: _Parts, ctx, epoch: int, display: "_Display") -> dict:
    """One epoch of adversarial training; returns its loss, accuracy, steps and data order."""
    device, t0 = ctx.device, time.perf_counter()
    lr = lr_at(cfg, epoch)
    for group in parts.optimizer.param_groups:
        group["lr"] = lr
    reseed(cfg, epoch, ctx.rank)
    parts.sampler.set_epoch(epoch)
    display.start_epoch(epoch + 1, len(parts.loader))
    parts.net.train()
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss·n, correct, n
    batches = []
    for x, y, idx in parts.loader:
        batches.append(idx)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with parts.autocast:
            loss, logits = parts.objective(parts.net, parts.forward, x, y, idx)
        parts.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        parts.optimizer.step()  # changes the scores: each masked layer recomputes its top-k once
        with torch.no_grad():
            sums += torch.stack([loss.detach().double() * len(y), (logits.argmax(1) == y).sum().double(),
                                 torch.tensor(float(len(y)), dtype=torch.float64, device=device)])
        if display.progress:
            done = time.perf_counter() - t0
            display.batch(f"loss {loss.item():.3f} acc {sums[1].item() / sums[2].item():.3f} "
                          f"{sums[2].item() * ctx.world_size / done:.0f} img/s keep {cfg.keep:g}")
    loss_sum, correct, seen = distributed.all_reduce_sum(sums).tolist()
    distributed.check_in_sync(parts.net, device, parts.objective.live_tensors())
    return {"lr": lr, "train_loss": loss_sum / seen, "train_acc": correct / seen, "train_steps": len(batches),
            "train_order_sha256": order_digest(batches, device), "images_per_s": seen / (time.perf_counter() - t0)}


def _evaluate_epoch(cfg: TrainConfig, parts: _Parts, ctx, data: _Data, epoch: int) -> tuple[tuple, tuple]:
    """(n, clean, robust) on the validation and test splits when this epoch evaluates them."""
    distributed.broadcast_buffers(parts.net)  # rank 0's BN statistics are the model's
    last_epoch = epoch + 1 == cfg.epochs
    do_val = bool(data.val_indices) and ((epoch + 1) % cfg.eval_every == 0 or last_epoch)
    do_test = (epoch + 1) % cfg.test_every == 0 or last_epoch
    val = test = (None, None, None)
    if do_val:
        val = evaluate_split(parts.net, data.val_source, data.val_indices, cfg, ctx, derive_seed(cfg.seed, "val", epoch),
                             parts.num_workers, parts.autocast)
    if do_test:
        test = evaluate_split(parts.net, data.test, data.test_indices, cfg, ctx, derive_seed(cfg.seed, "test", epoch),
                              parts.num_workers, parts.autocast)
    return val, test


def _record(cfg: TrainConfig, epoch: int, train: dict, val: tuple, test: tuple, data: _Data, run: _Progress,
            wall: float) -> dict:
    """The epoch's metrics record; updates the model selection in `run`."""
    # Model selection by robust validation accuracy (test when there is no validation split).
    metric = val[2] if data.val_indices else test[2]
    is_best = metric is not None and metric > run.best_metric
    if is_best:
        run.best_epoch, run.best_metric = epoch + 1, metric
    run.elapsed += wall
    return {
        "epoch": epoch + 1, "epochs": cfg.epochs, "lr": train["lr"], "keep": cfg.keep, "sparsity": cfg.sparsity, "p": cfg.p,
        "objective": cfg.objective, "train_loss": train["train_loss"], "train_acc": train["train_acc"],
        "val_clean_acc": val[1], "val_robust_acc": val[2], "val_n": val[0],
        "test_clean_acc": test[1], "test_robust_acc": test[2], "test_n": test[0],
        "is_best": is_best, "best_epoch": run.best_epoch, "images_per_s": train["images_per_s"], "wall_s": wall,
        "elapsed_s": run.elapsed, "train_steps": train["train_steps"], "train_order_sha256": train["train_order_sha256"],
    }


def _commit_epoch(cfg: TrainConfig, out: Path, parts: _Parts, run: _Progress, record: dict, writer) -> None:
    """Write metrics, checkpoints, then state.pt (the commit point); rank 0 only."""
    _write_metrics(out, run.history)
    if writer is not None:
        _tensorboard(writer, record)
    meta = {"rbzoo.dataset": dataset_metadata(cfg.dataset), "rbzoo.train": cfg.metadata(), "rbzoo.metrics": record}
    save(parts.net, out / LAST_FILE, metadata=meta)
    if record["is_best"]:
        save(parts.net, out / BEST_FILE, metadata=meta)
        run.best_bytes = (out / BEST_FILE).read_bytes()
    snapshot = {
        "format": STATE_FORMAT, "epoch": record["epoch"], "config": cfg.metadata(),
        "model": model_state(parts.net), "optimizer": parts.optimizer.state_dict(), "objective": parts.objective.state_dict(),
        "best": {"epoch": run.best_epoch, "metric": run.best_metric},
        "best_checkpoint": None if run.best_bytes is None else torch.frombuffer(bytearray(run.best_bytes), dtype=torch.uint8),
        "history": run.history, "elapsed_s": run.elapsed,
    }
    with atomic_path(out / STATE_FILE) as tmp:
        torch.save(snapshot, tmp)


def _banner(cfg: TrainConfig, out: Path, ctx, data: _Data, resume: bool, start: int) -> str:
    what = "resuming" if resume else "training"
    return (f"{what} {cfg.name or cfg.arch} → {out}: {cfg.arch} on {cfg.dataset}, objective {cfg.objective}"
            f"{' (paper-compat)' if cfg.paper_compat else ''}, keep={cfg.keep:g} (sparsity {cfg.sparsity:g}) p={cfg.p:g}, "
            f"epochs {start + 1}..{cfg.epochs}, {len(data.train)} train / {len(data.val_indices)} val / "
            f"{len(data.test_indices)} test images, device {ctx.device}" + (f" ×{ctx.world_size}" if ctx.enabled else ""))


def _train(cfg, out, ctx, resume, force, progress, log, t_start) -> TrainResult:
    # Everything that can fail on bad input is checked before the run folder is touched.
    state = _validate(cfg, out, ctx, resume, force)
    data = build_data(cfg)
    parts = _build_parts(cfg, ctx, data, state)
    run = _restore(parts, state, out)
    writer = _prepare_run_dir(cfg, out, ctx, resume, force, run, log)
    display = _Display(ctx.is_main, sys.stdout.isatty() if progress is None else progress, log, cfg.epochs, run.start)
    if ctx.is_main:
        display.log(_banner(cfg, out, ctx, data, resume, run.start))
    try:
        for epoch in range(run.start, cfg.epochs):
            t0 = time.perf_counter()
            train_stats = _train_epoch(cfg, parts, ctx, epoch, display)
            display.evaluating()
            val, test = _evaluate_epoch(cfg, parts, ctx, data, epoch)
            record = _record(cfg, epoch, train_stats, val, test, data, run, time.perf_counter() - t0)
            run.history.append(record)
            if ctx.is_main:
                _commit_epoch(cfg, out, parts, run, record, writer)
            distributed.barrier()
            display.end_epoch(epoch_line(record))
    finally:
        display.close()
        if writer is not None:
            writer.close()
    best = next((r for r in run.history if r["epoch"] == run.best_epoch), None)
    last = run.history[-1] if run.history else None
    if ctx.is_main and best is not None:
        display.log(f"done: best epoch {best['epoch']} (keep={cfg.keep:g}): val robust {_fmt(best['val_robust_acc'])}, "
                    f"test clean {_fmt(best['test_clean_acc'])}, test robust {_fmt(best['test_robust_acc'])} → {out / BEST_FILE}")
    return TrainResult(out, len(run.history), run.best_epoch, best, last, time.perf_counter() - t_start)


def _tensorboard(writer, r: dict) -> None:
    """Distinct tags for validation and test (the official code wrote both to test/*)."""
    step = r["epoch"]
    writer.add_scalar("train/loss", r["train_loss"], step)
    writer.add_scalar("train/acc", r["train_acc"], step)
    writer.add_scalar("train/lr", r["lr"], step)
    writer.add_scalar("train/images_per_s", r["images_per_s"], step)
    writer.add_scalar("run/keep", r["keep"], step)
    for split in ("val", "test"):
        for kind in ("clean", "robust"):
            v = r[f"{split}_{kind}_acc"]
            if v is not None:
                writer.add_scalar(f"{split}/{kind}_acc", v, step)
    writer.flush()
