"""The few distributed-training helpers the trainer needs (torchrun / DDP).

Under `torchrun` the environment carries RANK, WORLD_SIZE and LOCAL_RANK; otherwise everything
here degrades to a single process and the collectives are no-ops. CPU runs use gloo, CUDA runs
NCCL, each process driving the GPU of its LOCAL_RANK.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn

from .errors import ConfigError


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """"auto" → cuda:LOCAL_RANK when CUDA is available, else cpu; explicit names are checked.

    A bare "cuda" under torchrun means this process's GPU, cuda:LOCAL_RANK.
    """
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r} (cpu, cuda, cuda:N, auto)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name} requested but CUDA is not available")
        if dev.index is None:
            dev = torch.device(f"cuda:{local_rank}")
        if dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device {dev} does not exist ({torch.cuda.device_count()} GPUs)")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device mps requested but MPS is not available")
    return dev


def setup(device: str) -> DistContext:
    """Join the torchrun process group if there is one; returns this process's rank and device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext(0, 1, 0, resolve_device(device))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return DistContext(rank, world, local_rank, dev)


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather_cat(t: torch.Tensor) -> torch.Tensor:
    """Concatenate equally shaped tensors of every rank along dim 0, in rank order."""
    if not (dist.is_available() and dist.is_initialized()):
        return t
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def broadcast_buffers(module: nn.Module, src: int = 0) -> None:
    """Give every rank rank 0's buffers (BN running statistics) before evaluating or saving."""
    if dist.is_available() and dist.is_initialized():
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                for b in m.buffers():
                    dist.broadcast(b, src)


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when `flag` is true on at least one (to fail together, not hang)."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def state_digest(tensors: list[torch.Tensor]) -> bytes:
    """SHA-256 over the exact bytes of `tensors` (a bit-level fingerprint, unlike a sum)."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().contiguous().cpu().view(-1).view(torch.uint8).numpy().tobytes())
    return h.digest()


def check_in_sync(module: nn.Module, device: torch.device, extra: list[torch.Tensor] = ()) -> None:
    """Raise if the trainable parameters (or `extra` state) differ between ranks by a single bit: a
    failed sync. Equal scores give equal masks, so every rank then holds the same network."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    tensors = [p for p in module.parameters() if p.requires_grad] + list(extra)
    mine = torch.frombuffer(bytearray(state_digest(tensors)), dtype=torch.uint8).to(device)
    everyone = all_gather_cat(mine[None])
    if not bool((everyone == everyone[0]).all()):
        raise RuntimeError("training state differs between ranks after an epoch: gradients or attack memory did not synchronize")
