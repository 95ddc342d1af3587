"""Adversarial training objectives (method.md §5.2–5.4): each turns a clean batch into a loss.

An objective is called as ``objective(model, forward, x, y, idx) -> (loss, logits)``: `model` is
the bare network (attacks run on it, with input gradients only), `forward` the module that the
training forward goes through (the DDP wrapper under torchrun, else `model`), `idx` the batch's
positions in the training set (the "fast" perturbation memory is keyed by them).

BatchNorm during attacks. The official PGD and "fast" trainers run the attack forwards in train
mode, so each of them updates the running statistics (method.md §12.10). rbzoo's default keeps the
train-mode behaviour (batch statistics) but freezes the running statistics during attack
forwards; ``paper_compat=True`` lets them update, as the official code does.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import distributed
from .attacks import fgsm_rs, pgd, trades_kl
from .config import TrainConfig
from .pruning import derive_seed


@contextmanager
def attack_batchnorm(model: nn.Module, update_running_stats: bool):
    """Attack forwards in train mode use batch statistics; unless `update_running_stats`, BN layers
    stop tracking for the duration, so their running mean/var (and counters) are left untouched."""
    if update_running_stats:
        yield
        return
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    for m in bns:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in bns:
            m.track_running_stats = True


class Objective:
    """Base class: stateless objectives need only `__call__`."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.compat = cfg.paper_compat

    def ce(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), y, label_smoothing=self.cfg.label_smoothing)

    def __call__(self, model, forward, x, y, idx) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {}

    def live_tensors(self) -> list[torch.Tensor]:
        """State tensors every rank must hold identically (checked after each epoch)."""
        return []

    def load_state_dict(self, state: dict) -> None:
        if state:
            raise ValueError(f"unexpected objective state keys {sorted(state)}")


class PGDTraining(Objective):
    """PGD-k adversarial training (Madry et al.) with a uniform random start (method.md §5.2).

    Default: train on the final iterate. Paper-compat: the official best-iterate rule (the start and
    the first k−1 iterates compete on loss; the last step is never evaluated)."""

    def __call__(self, model, forward, x, y, idx):
        a = self.cfg.attack
        with attack_batchnorm(model, update_running_stats=self.compat):
            x_adv = pgd(model, x, y, eps=a.eps, alpha=a.alpha, steps=a.steps, random_start=True,
                        select="paper" if self.compat else "final")
        logits = forward(x_adv)
        return self.ce(logits, y), logits


class FGSMRSTraining(Objective):
    """True FGSM-RS (Wong et al., 2020): a fresh random start each batch, one signed step."""

    def __call__(self, model, forward, x, y, idx):
        a = self.cfg.attack
        with attack_batchnorm(model, update_running_stats=self.compat):
            x_adv = fgsm_rs(model, x, y, eps=a.eps, alpha=a.alpha)
        logits = forward(x_adv)
        return self.ce(logits, y), logits


class TRADESTraining(Objective):
    """TRADES (method.md §5.4): CE(f(x), y) + β/B · KL_sum(f(x') ‖ f(x)), target not detached.

    The attack runs in eval mode (as the reference). The reference computes f(x) twice in train
    mode (two BN running-stat updates); paper-compat does too, the default reuses the first."""

    def __call__(self, model, forward, x, y, idx):
        a = self.cfg.attack
        model.eval()
        try:
            x_adv = trades_kl(model, x, eps=a.eps, alpha=a.alpha, steps=a.steps)
        finally:
            model.train()
        logits_nat = forward(x)  # the one forward through DDP; gradients of all three still sync
        logits_adv = model(x_adv)
        target = model(x) if self.compat else logits_nat
        kl = F.kl_div(F.log_softmax(logits_adv.float(), dim=1), F.softmax(target.float(), dim=1), reduction="sum")
        return self.ce(logits_nat, y) + self.cfg.trades_beta * kl / len(x), logits_adv


def _crop(t: torch.Tensor, i: torch.Tensor, j: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Per-sample crops t[b, :, i_b:i_b+h, j_b:j_b+w] of a (B, C, H', W') tensor."""
    rows = i[:, None] + torch.arange(h, device=t.device)
    cols = j[:, None] + torch.arange(w, device=t.device)
    b = torch.arange(len(t), device=t.device)[:, None, None]
    # contiguous: the permuted view is channels-last in memory, which would send every convolution
    # of the fast objective down other kernels than the other objectives use.
    return t[b, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).contiguous()


def _uncrop_(t: torch.Tensor, i: torch.Tensor, j: torch.Tensor, patch: torch.Tensor) -> None:
    """Write `patch` (B, C, h, w) into t at the per-sample offsets (inverse of `_crop`)."""
    h, w = patch.shape[-2:]
    rows = i[:, None] + torch.arange(h, device=t.device)
    cols = j[:, None] + torch.arange(w, device=t.device)
    b = torch.arange(len(t), device=t.device)[:, None, None]
    t[b, :, rows[:, :, None], cols[:, None, :]] = patch.permute(0, 2, 3, 1)


def first_occurrence(idx: torch.Tensor) -> torch.Tensor:
    """Boolean mask of the entries of the 1-D `idx` whose value did not occur earlier in it."""
    order = torch.argsort(idx, stable=True)  # stable: a value's first occurrence sorts first
    ordered = idx[order]
    first = torch.ones_like(ordered, dtype=torch.bool)
    first[1:] = ordered[1:] != ordered[:-1]
    keep = torch.empty_like(first)
    keep[order] = first
    return keep


def _hflip(t: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    return torch.where(flip[:, None, None, None], t.flip(3), t)


class FastTraining(Objective):
    """The official "fast" trainer, ATTA-style (method.md §5.3): a per-sample perturbation memory
    carried across epochs and a single signed step, with augmentation inside the attacker.

    Per training sample the memory holds a δ canvas of C×(H+8)×(W+8), initialised U(−ε, ε) from the
    run seed (stored 8×8 average-pooled for images larger than 160 px). Per batch: pad the image by 4
    with value 0.5, crop back to H×W at offsets in {0..7}, flip horizontally with probability 1/2;
    take the same crop/flip of the canvas as δ; one step δ ← clip(δ + α·sign ∇δ CE, −ε, ε), then
    δ ← clip(x + δ, 0, 1) − x; write δ back into its crop of the canvas; train on x + δ.
    """

    PAD = 4

    def __init__(self, cfg: TrainConfig, n: int, image_shape: tuple[int, int, int], device: torch.device) -> None:
        super().__init__(cfg)
        c, h, w = image_shape
        self.h, self.w = h, w
        hp, wp = h + 2 * self.PAD, w + 2 * self.PAD
        self.pool = 8 if max(h, w) > 160 and hp % 8 == 0 and wp % 8 == 0 else 1
        g = torch.Generator().manual_seed(derive_seed(cfg.seed, "fast-memory"))
        shape = (n, c, hp // self.pool, wp // self.pool)
        self.memory = ((torch.rand(shape, generator=g) * 2 - 1) * cfg.attack.eps).to(device)

    def _canvases(self, idx: torch.Tensor) -> torch.Tensor:
        m = self.memory[idx]
        if self.pool > 1:
            m = m.repeat_interleave(self.pool, 2).repeat_interleave(self.pool, 3)
        return m

    def _store(self, idx: torch.Tensor, canvases: torch.Tensor) -> None:
        if self.pool > 1:
            canvases = F.avg_pool2d(canvases, self.pool)
        # Every rank keeps the whole memory; share this step's updates so the copies stay equal.
        idx, canvases = distributed.all_gather_cat(idx), distributed.all_gather_cat(canvases)
        # DistributedSampler pads a rank's share with samples another rank also has: one index can
        # come twice in a step, and an indexed write with repeats has no defined winner on CUDA.
        # The lowest rank's update wins, on every device.
        keep = first_occurrence(idx)
        self.memory[idx[keep]] = canvases[keep]

    def __call__(self, model, forward, x, y, idx):
        a, dev, n = self.cfg.attack, x.device, len(x)
        # Offsets in {0..7} (the official code; torchvision would draw 0..8) and a horizontal flip,
        # drawn from the global CPU RNG, which the trainer reseeds every epoch.
        i = torch.randint(0, 2 * self.PAD, (n,)).to(dev)
        j = torch.randint(0, 2 * self.PAD, (n,)).to(dev)
        flip = torch.randint(0, 2, (n,)).bool().to(dev)
        idx = idx.to(dev)
        x_aug = _hflip(_crop(F.pad(x, (self.PAD,) * 4, value=0.5), i, j, self.h, self.w), flip)
        canvases = self._canvases(idx)
        delta = _hflip(_crop(canvases, i, j, self.h, self.w), flip).requires_grad_(True)
        with attack_batchnorm(model, update_running_stats=self.compat):
            loss = F.cross_entropy(model(x_aug + delta).float(), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, delta)
        delta = (delta.detach() + a.alpha * grad.sign()).clamp_(-a.eps, a.eps)
        delta = (x_aug + delta).clamp_(0, 1) - x_aug
        _uncrop_(canvases, i, j, _hflip(delta, flip))
        self._store(idx, canvases)
        logits = forward(x_aug + delta)
        return self.ce(logits, y), logits

    def state_dict(self) -> dict:
        return {"memory": self.memory.detach().cpu()}

    def live_tensors(self) -> list[torch.Tensor]:
        return [self.memory]

    def load_state_dict(self, state: dict) -> None:
        mem = state.get("memory")
        if set(state) != {"memory"} or not isinstance(mem, torch.Tensor) or mem.shape != self.memory.shape:
            raise ValueError("the saved fast-attack memory does not match this run's training set")
        self.memory.copy_(mem)


def make_objective(cfg: TrainConfig, n_train: int, image_shape: tuple[int, int, int], device: torch.device) -> Objective:
    """The objective named by `cfg.objective`."""
    if cfg.objective == "pgd":
        return PGDTraining(cfg)
    if cfg.objective == "fgsm_rs":
        return FGSMRSTraining(cfg)
    if cfg.objective == "trades":
        return TRADESTraining(cfg)
    if cfg.objective == "fast":
        return FastTraining(cfg, n_train, image_shape, device)
    raise ValueError(f"unknown objective {cfg.objective!r}")
