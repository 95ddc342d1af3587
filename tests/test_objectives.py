"""The training objectives reproduce the rules the README states (method.md §5): PGD's selection
rules, BatchNorm updates per batch, the fast (ATTA-style) attacker's step, and the TRADES loss.

Each test recomputes the rule directly (scripted losses, explicit per-sample loops, a hand-written
KL) instead of re-running the code under test."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from rbzoo.attacks import pgd
from rbzoo.config import load_config
from rbzoo.objectives import FastTraining, first_occurrence, make_objective
from rbzoo.train import build_model


def config(objective="pgd", compat=False, **over):
    base = {"arch": "tiny_resnet", "width": 4, "objective": objective, "paper_compat": compat, "attack.steps": 10}
    base.update(over)
    return load_config("rn18-cifar10-pgd", base)


def batch(n=4, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g), torch.randint(0, 10, (n,), generator=g), torch.arange(n)


# --- PGD selection rules -------------------------------------------------------------------------


class Identity(nn.Module):
    def forward(self, x):
        return x.flatten(1)


def scripted(script: torch.Tensor):
    """A loss whose value at the t-th evaluated iterate is script[t] (per sample) and whose input
    gradient is +1 everywhere, so each PGD step moves every pixel by +alpha: iterate t = x + t·alpha."""
    calls = []

    def loss_fn(logits, target):
        s = logits.sum(1)
        value = s - s.detach() + script[len(calls)]
        calls.append(len(calls))
        return value

    return loss_fn, calls


# Six evaluable iterates (start + 5 steps) for four samples; one row per iterate.
SCRIPT = torch.tensor([
    # s0: best is the last step   s1: best is step 1   s2: never above 0   s3: ties keep the earliest
    [0.1, 0.1, -1.0, 0.7],
    [0.2, 0.8, -1.0, 0.7],
    [0.9, 0.2, -1.0, 0.7],
    [0.3, 0.3, -1.0, 0.7],
    [0.4, 0.4, -1.0, 0.7],
    [5.0, 0.5, -1.0, 0.7],
])


@pytest.mark.parametrize("rule, picked, evaluated", [
    ("final", [5, 5, 5, 5], 5),  # the last iterate, no extra forward
    ("best", [5, 1, 0, 0], 6),  # highest loss among the start and all 5 steps (initial best loss 0)
    ("paper", [2, 1, 0, 0], 5),  # the official rule: the last step is never evaluated
])
def test_pgd_selection_rules(rule, picked, evaluated):
    x, alpha = torch.full((4, 1), 0.5), 0.01
    loss_fn, calls = scripted(SCRIPT)
    out = pgd(Identity(), x, torch.zeros(4, dtype=torch.long), eps=0.1, alpha=alpha, steps=5, random_start=False,
              select=rule, loss_fn=loss_fn)
    expected = x + alpha * torch.tensor(picked, dtype=torch.float32)[:, None]
    assert torch.allclose(out, expected, atol=1e-6), (rule, ((out - x) / alpha).round().flatten().tolist())
    assert len(calls) == evaluated


@pytest.mark.parametrize("compat, rule", [(False, "final"), (True, "paper")])
def test_pgd_training_uses_its_rule(compat, rule):
    """The PGD objective trains on the final iterate by default and on the paper rule's pick under
    --paper-compat (train mode uses batch statistics, so the replay below sees the same network)."""
    cfg = config("pgd", compat, **{"attack.steps": 3})
    model = build_model(cfg).train()
    x, y, idx = batch(8)
    seen = []
    model.register_forward_hook(lambda m, inp, out: seen.append(inp[0].detach().clone()))
    torch.manual_seed(1)
    make_objective(cfg, 8, (3, 8, 8), torch.device("cpu"))(model, model, x, y, idx)
    trained_on = seen[-1]
    picks = {}
    for r in ("final", "paper"):
        torch.manual_seed(1)  # the same random start
        picks[r] = pgd(model, x, y, eps=cfg.attack.eps, alpha=cfg.attack.alpha, steps=3, select=r)
    assert not torch.equal(picks["final"], picks["paper"])  # the rules disagree on this batch
    assert torch.equal(trained_on, picks[rule])


# --- BatchNorm running-statistics updates per training batch ------------------------------------


@pytest.mark.parametrize("objective, compat, updates, clean_forwards", [
    ("pgd", False, 1, 0), ("pgd", True, 11, 0),  # PGD-10: 10 attack forwards + the training forward
    ("fgsm_rs", False, 1, 0), ("fgsm_rs", True, 2, 0),
    ("fast", False, 1, 0), ("fast", True, 2, 0),
    ("trades", False, 2, 1), ("trades", True, 3, 2),  # f(x) once vs twice in train mode, plus f(x')
])
def test_batchnorm_updates_per_batch(objective, compat, updates, clean_forwards):
    cfg = config(objective, compat, **{"attack.steps": {"trades": 2, "fast": 1}.get(objective, 10)})
    model = build_model(cfg).train()
    x, y, idx = batch(4)
    clean = []
    model.register_forward_hook(lambda m, inp, out: clean.append(m.training and torch.equal(inp[0], x)))
    obj = make_objective(cfg, 4, (3, 8, 8), torch.device("cpu"))
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(int(m.num_batches_tracked) == 0 for m in bns)
    loss, _ = obj(model, model, x, y, idx)
    loss.backward()
    assert [int(m.num_batches_tracked) for m in bns] == [updates] * len(bns)
    assert sum(clean) == clean_forwards


# --- the fast (ATTA-style) attacker --------------------------------------------------------------


def fast_step_by_hand(model, memory, x, y, idx, i, j, flip, eps, alpha):
    """method.md §5.3 written out per sample: pad with 0.5, crop at (i, j), flip; the same crop and
    flip of the sample's canvas is δ; one signed step; write δ back un-flipped into its crop."""
    n, c, h, w = x.shape
    xs, ds = [], []
    for b in range(n):
        padded = torch.full((c, h + 8, w + 8), 0.5)
        padded[:, 4:4 + h, 4:4 + w] = x[b]
        xa = padded[:, i[b]:i[b] + h, j[b]:j[b] + w]
        d = memory[idx[b], :, i[b]:i[b] + h, j[b]:j[b] + w]
        xs.append(xa.flip(-1) if flip[b] else xa)
        ds.append(d.flip(-1) if flip[b] else d)
    x_aug, delta = torch.stack(xs), torch.stack(ds).clone().requires_grad_(True)
    loss = F.cross_entropy(model(x_aug + delta), y, reduction="sum")
    (grad,) = torch.autograd.grad(loss, delta)
    step = (delta.detach() + alpha * grad.sign()).clamp(-eps, eps)
    step = (x_aug + step).clamp(0, 1) - x_aug
    new = memory.clone()
    for b in range(n):
        new[idx[b], :, i[b]:i[b] + h, j[b]:j[b] + w] = step[b].flip(-1) if flip[b] else step[b]
    return x_aug + step, new, delta.detach(), step, grad


def test_fast_attacker_step_matches_the_documented_rule():
    cfg = config("fast", **{"attack.steps": 1, "attack.alpha": "4/255"})
    model = build_model(cfg).train()
    obj = FastTraining(cfg, n=12, image_shape=(3, 8, 8), device=torch.device("cpu"))
    assert obj.memory.shape == (12, 3, 16, 16) and obj.memory.abs().max() <= cfg.attack.eps
    x, y, _ = batch(5, seed=3)
    idx = torch.tensor([7, 2, 11, 0, 5])  # the memory is keyed by dataset position, not batch slot
    old = obj.memory.clone()
    seen = []
    model.register_forward_hook(lambda m, inp, out: seen.append(inp[0].detach().clone()))
    torch.manual_seed(4)
    obj(model, model, x, y, idx)
    trained_on = seen[-1]
    # The attacker's own draws (global RNG, reseeded by the trainer every epoch): offsets 0..7, a flip.
    torch.manual_seed(4)
    i, j = torch.randint(0, 8, (5,)), torch.randint(0, 8, (5,))
    flip = torch.randint(0, 2, (5,)).bool()
    x_adv, expected, delta, step, grad = fast_step_by_hand(model, old, x, y, idx, i.tolist(), j.tolist(), flip.tolist(),
                                                     cfg.attack.eps, cfg.attack.alpha)
    assert torch.equal(obj.memory, expected)
    assert torch.equal(trained_on, x_adv)  # the training forward sees x_aug + the new δ
    # One signed step of size alpha: wherever neither clip applied, δ moved by exactly alpha·|sign g|.
    moved = (step - delta).abs()
    free = (step.abs() < cfg.attack.eps - 1e-6) & (x_adv > 1e-6) & (x_adv < 1 - 1e-6)
    assert free.float().mean() > 0.5
    assert torch.allclose(moved[free], cfg.attack.alpha * grad.sign().abs()[free], atol=1e-6)


def test_offsets_and_flips_cover_the_documented_range():
    """Offsets are drawn from {0..7} (the official code; torchvision would use 0..8), flips 50/50:
    a 1-px image's single pixel lands at every position of the 8×8 window of its padded canvas."""
    cfg = config("fast", **{"attack.steps": 1})
    model = build_model(cfg).train()
    n = 1000
    obj = FastTraining(cfg, n=n, image_shape=(1, 1, 1), device=torch.device("cpu"))
    obj.memory.zero_()
    torch.manual_seed(0)
    # 1-channel 1×1 images, upsampled to what the 3-channel network takes.
    wrapped = nn.Sequential(nn.Upsample(size=(8, 8)), nn.Conv2d(1, 3, 1), model).train()
    obj(wrapped, wrapped, torch.rand(n, 1, 1, 1), torch.randint(0, 10, (n,)), torch.arange(n))
    written = (obj.memory != 0).flatten(1).nonzero()[:, 1]  # the flat canvas position each sample wrote
    assert set(written.tolist()) == {r * 9 + c for r in range(8) for c in range(8)}


def test_repeated_indices_in_one_step_have_a_defined_winner():
    """Under torchrun, DistributedSampler pads a rank's share with samples another rank has: one
    step can gather the same index twice. The lowest rank's (first) update wins, on any device."""
    assert first_occurrence(torch.tensor([4, 1, 4, 4, 1, 0])).tolist() == [True, True, False, False, False, True]
    cfg = config("fast", **{"attack.steps": 1})
    obj = FastTraining(cfg, n=6, image_shape=(1, 2, 2), device=torch.device("cpu"))
    before = obj.memory.clone()
    canvases = torch.arange(3, dtype=torch.float32)[:, None, None, None].expand(3, 1, 10, 10) + 1
    obj._store(torch.tensor([3, 5, 3]), canvases.clone())
    assert torch.all(obj.memory[3] == 1) and torch.all(obj.memory[5] == 2)
    assert torch.equal(obj.memory[[0, 1, 2, 4]], before[[0, 1, 2, 4]])


# --- TRADES --------------------------------------------------------------------------------------


@pytest.mark.parametrize("compat", [False, True])
def test_trades_loss_is_ce_plus_beta_kl(compat):
    """CE(f(x), y) + β·(1/B)·Σ KL(softmax f(x) ‖ softmax f(x')) — the reference's KLDivLoss(sum)/B —
    written out by hand, with the KL target not detached (its gradient flows too)."""
    cfg = config("trades", compat, **{"attack.steps": 2, "trades_beta": 6.0})
    model = build_model(cfg).train()
    x, y, idx = batch(6, seed=5)
    calls = []
    model.register_forward_hook(lambda m, inp, out: calls.append((m.training, inp[0].detach().clone())))
    torch.manual_seed(0)  # the attack's start noise
    loss, _ = make_objective(cfg, 6, (3, 8, 8), torch.device("cpu"))(model, model, x, y, idx)
    assert [t for t, _ in calls[:3]] == [False] * 3  # the attack (target + 2 steps) runs in eval mode
    (x_adv,) = [inp for t, inp in calls if t and not torch.equal(inp, x)]
    scores = [p for p in model.parameters() if p.requires_grad]
    got = torch.autograd.grad(loss, scores)

    nat, adv = model(x), model(x_adv)  # train mode: batch statistics, so the same values as inside
    p = nat.softmax(1)
    kl = (p * (nat.log_softmax(1) - adv.log_softmax(1))).sum() / len(x)
    ce = -nat.log_softmax(1)[torch.arange(len(x)), y].mean()
    direct = ce + 6.0 * kl
    assert torch.allclose(loss, direct, rtol=1e-5, atol=1e-6)
    assert kl > 0 and 6.0 * kl > 1e-3 * ce  # the KL term is not negligible: a wrong reduction shows
    want = torch.autograd.grad(direct, scores)
    assert all((a - b).abs().max() <= 1e-5 * b.abs().max() + 1e-8 for a, b in zip(got, want))
