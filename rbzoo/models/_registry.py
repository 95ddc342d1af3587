"""Model registry and factory (in the spirit of timm's `_registry` / `_factory`)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..constants import NORMALIZATION
from ..layers import SubnetConv2d
from ..pruning import init_scores, layer_generator, set_model_keep, subnet_layers
from .resnet import BasicBlock, Bottleneck, ResNet


@dataclass(frozen=True)
class Architecture:
    name: str
    build: Callable[..., nn.Module]
    num_classes: int
    normalize: str
    input_size: int
    description: str
    # Weight key of the layer the official code builds with last_layer=True (None on ImageNet nets).
    last_layer: str | None = "fc.weight"


ARCHITECTURES: dict[str, Architecture] = {}


def register_model(arch: Architecture) -> Architecture:
    ARCHITECTURES[arch.name] = arch
    return arch


def _cifar(block, blocks):
    return lambda **kw: ResNet(block, blocks, **kw)


def _imagenet(block, blocks):
    return lambda **kw: ResNet(block, blocks, imagenet_stem=True, **kw)


def _tiny(width: int = 8, **kw):
    return ResNet(BasicBlock, [1, 1], widths=(width, 2 * width), **kw)


for _depth, _block, _blocks in [(18, BasicBlock, [2, 2, 2, 2]), (34, BasicBlock, [3, 4, 6, 3]), (50, Bottleneck, [3, 4, 6, 3])]:
    register_model(Architecture(f"cifar_resnet{_depth}", _cifar(_block, _blocks), 10, "cifar10", 32,
                                f"CIFAR ResNet{_depth} (3×3 stem), official cResNet{_depth}"))
    register_model(Architecture(f"imagenet_resnet{_depth}", _imagenet(_block, _blocks), 100, "imagenet", 224,
                                f"ImageNet-style ResNet{_depth} (7×7 stem, max-pool), official ResNet{_depth}_imagenet100",
                                last_layer=None))
register_model(Architecture("tiny_resnet", _tiny, 10, "cifar10", 32,
                            "Two-stage binary ResNet of width `width` (default 8), for tests and quickstart"))

ARCH_KEYS = ("num_classes", "in_channels", "mean", "std", "end_with_bn", "first_layer_dense",
             "last_layer_dense", "nonlinearity", "width")


def list_models() -> list[str]:
    return sorted(ARCHITECTURES)


def create_model(
    name: str,
    *,
    num_classes: int | None = None,
    normalize: str | None = None,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    in_channels: int = 3,
    end_with_bn: bool = False,
    first_layer_dense: bool = False,
    last_layer_dense: bool = False,
    nonlinearity: str = "relu",
    width: int | None = None,
    seed: int = 0,
    keep: float = 1.0,
    p: float = 1.0,
    score_init_scale: float = 0.01,
    score_mode: str = "none",
    materialize: bool = True,
) -> nn.Module:
    """Build a registered architecture with seeded ±1 weights, adaptive keep ratios and scores.

    `normalize` names a constant set of method.md §1.1 (cifar10, cifar100, imagenet); `mean`/`std`
    override it. With `materialize=False` signs and scores are left unset (the checkpoint loader
    fills the effective weights itself). The returned module carries `.arch` (the JSON-able
    constructor arguments stored as `rbzoo.arch`), `.seed`, `.keep_ratio`, `.p` and
    `.prunable_keys` (weight keys of the prunable layers, registration order).
    """
    if name not in ARCHITECTURES:
        raise KeyError(f"unknown architecture {name!r}; known: {', '.join(list_models())}")
    spec = ARCHITECTURES[name]
    mean, std = _normalization(spec, normalize, mean, std, in_channels)
    arch = {
        "id": name,
        "num_classes": spec.num_classes if num_classes is None else int(num_classes),
        "in_channels": int(in_channels),
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        "end_with_bn": bool(end_with_bn),
        "first_layer_dense": bool(first_layer_dense),
        "last_layer_dense": bool(last_layer_dense),
        "nonlinearity": nonlinearity,
    }
    if name == "tiny_resnet":
        arch["width"] = int(width or 8)
    elif width is not None:
        raise ValueError(f"{name} has no width option")
    model = spec.build(**{k: v for k, v in arch.items() if k != "id"})
    model.arch = arch
    model.seed = int(seed)
    model.keep_ratio = float(keep)
    model.p = float(p)
    model.prunable_keys = [key for key, _ in subnet_layers(model)]
    set_model_keep(model, keep, p)
    if materialize:
        for key, m in subnet_layers(model):
            m.set_signs(seed, key)
        init_scores(model, seed, score_init_scale, score_mode, spec.last_layer)
        _init_dense(model, seed)
    return model


def _normalization(spec: Architecture, normalize, mean, std, in_channels: int) -> tuple:
    """mean/std: given, or a named constant set (method.md §1.1), or 0.5 for non-RGB inputs."""
    if mean is None or std is None:
        norm = normalize or (spec.normalize if in_channels == 3 else None)
        if norm is None:
            mean, std = (0.5,) * in_channels, (0.5,) * in_channels
        elif norm not in NORMALIZATION:
            raise KeyError(f"unknown normalization {norm!r}; known: {', '.join(NORMALIZATION)}")
        else:
            mean, std = NORMALIZATION[norm]
    if len(mean) != in_channels or len(std) != in_channels:
        raise ValueError(f"mean/std need {in_channels} values")
    return mean, std


def create_model_from_arch(arch: dict, **kwargs) -> nn.Module:
    """Rebuild a model from a stored `rbzoo.arch` object (unknown keys are an error)."""
    arch = dict(arch)
    name = arch.pop("id", None)
    if name is None:
        raise KeyError("architecture object has no 'id'")
    unknown = set(arch) - set(ARCH_KEYS)
    if unknown:
        raise KeyError(f"unknown architecture options {sorted(unknown)}")
    return create_model(name, **arch, **kwargs)


def _init_dense(model: nn.Module, seed: int) -> None:
    """Kaiming-uniform init of the optional dense layers, each from its own seeded generator."""
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d) and not isinstance(m, SubnetConv2d):
            g = layer_generator("rbzoo-dense", seed, f"{name}.weight")
            bound = 1.0 / math.sqrt(m.weight[0].numel())
            with torch.no_grad():
                m.weight.copy_((torch.rand(m.weight.shape, generator=g) * 2 - 1) * bound)
                if m.bias is not None:
                    m.bias.copy_((torch.rand(m.bias.shape, generator=g) * 2 - 1) * bound)


def prunable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(weight key, module) for every prunable layer, SubnetConv2d or folded `nn.Conv2d`."""
    modules = dict(model.named_modules())
    return [(key, modules[key[: -len(".weight")]]) for key in model.prunable_keys]


def fold(model: nn.Module, weights: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """Replace every SubnetConv2d by a plain `nn.Conv2d` holding sign ⊙ mask (inference path).

    `weights` maps weight keys to precomputed effective weights (used by the checkpoint loader).
    Module names are unchanged, so state_dict keys stay the same.
    """
    for key, m in subnet_layers(model):
        if weights is not None:
            conv = nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, bias=False, device="meta")
            conv.weight = nn.Parameter(weights[key], requires_grad=False)
        else:
            conv = m.folded()
        parent_name, _, child = key[: -len(".weight")].rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, conv)
    return model
