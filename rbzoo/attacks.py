"""L∞ attacks on images in [0, 1] (normalization is inside the model).

Attack iterations take gradients with respect to the input only (`torch.autograd.grad`), so no
weight or score gradients are computed, and at fixed scores the masked layers reuse their cached
masks: an attack costs what it costs on a dense network.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def _uniform_like(x: torch.Tensor, eps: float, generator: torch.Generator | None) -> torch.Tensor:
    if generator is None:
        return torch.empty_like(x).uniform_(-eps, eps)
    r = torch.rand(x.shape, generator=generator, device=generator.device, dtype=x.dtype)
    return (r * 2 - 1).mul_(eps).to(x.device)


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    alpha: float,
    steps: int,
    random_start: bool = True,
    select: str = "final",
    generator: torch.Generator | None = None,
    loss_fn=None,
) -> torch.Tensor:
    """PGD-`steps` under the L∞ ball of radius `eps`, step `alpha`; returns adversarial images.

    `select="final"` returns the last iterate, `"best"` the per-sample highest-loss iterate among
    the start and all `steps` iterates (rbzoo's corrected rule), and `"paper"` the official rule:
    the best among the start and the first steps−1 iterates (the final step is never evaluated,
    method.md §5.2 / §12.11). The model's train/eval mode is left as the caller set it.
    """
    if select not in ("final", "best", "paper"):
        raise ValueError(f"unknown PGD selection rule {select!r}")
    loss_fn = loss_fn or (lambda logits, target: F.cross_entropy(logits, target, reduction="none"))
    x = x.detach()
    x_adv = (x + _uniform_like(x, eps, generator)).clamp_(0, 1) if random_start else x.clone()
    best = x_adv.clone()
    best_loss = torch.zeros(len(x), device=x.device)
    for t in range(steps + 1):
        if t == steps and select != "best":
            break  # "final" needs no extra forward; "paper" never evaluates the last iterate
        track = select != "final"
        x_adv.requires_grad_(t < steps)
        with torch.set_grad_enabled(t < steps):
            losses = loss_fn(model(x_adv), y)
        if track:
            improved = losses.detach() > best_loss
            best[improved] = x_adv.detach()[improved]
            best_loss = torch.where(improved, losses.detach(), best_loss)
        if t == steps:
            break
        (grad,) = torch.autograd.grad(losses.sum(), x_adv)
        x_adv = x_adv.detach() + alpha * grad.sign()
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp_(0, 1)
    return (x_adv if select == "final" else best).detach()


def fgsm_rs(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    alpha: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """FGSM with a fresh uniform random start (Wong, Rice & Kolter, 2020): one signed step of size
    `alpha` (they use 1.25·eps) from δ ~ U(−eps, eps), projected to the eps-ball and to [0, 1]."""
    x = x.detach()
    delta = _uniform_like(x, eps, generator)
    delta = ((x + delta).clamp(0, 1) - x).requires_grad_(True)
    loss = F.cross_entropy(model(x + delta), y, reduction="sum")
    (grad,) = torch.autograd.grad(loss, delta)
    delta = (delta.detach() + alpha * grad.sign()).clamp_(-eps, eps)
    return (x + delta).clamp_(0, 1).detach()


def trades_kl(
    model: nn.Module,
    x: torch.Tensor,
    *,
    eps: float,
    alpha: float,
    steps: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The TRADES inner maximization (method.md §5.4): start at x + 0.001·N(0, I), then `steps`
    signed ascent steps on KL(f(x') ‖ f(x)) (summed), projected to the eps-ball and [0, 1].
    The caller chooses the model mode (the reference runs it in eval mode)."""
    x = x.detach()
    with torch.no_grad():
        target = F.softmax(model(x).float(), dim=1)
    if generator is None:
        noise = torch.randn_like(x)
    else:
        noise = torch.randn(x.shape, generator=generator, device=generator.device, dtype=x.dtype).to(x.device)
    x_adv = x + 0.001 * noise
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = F.kl_div(F.log_softmax(model(x_adv).float(), dim=1), target, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x_adv)
        x_adv = x_adv.detach() + alpha * grad.sign()
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp_(0, 1)
    return x_adv.detach()
