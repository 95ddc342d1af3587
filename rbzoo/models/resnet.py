"""ResNets with exactly the module names of the official code (method.md §1).

The signs of every layer are keyed by its state_dict name, so these names are part of the
checkpoint format: renaming a module changes the network.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers import NonAffineBatchNorm2d, Normalize, SubnetConv2d, dense_conv


def _act(nonlinearity: str) -> nn.Module:
    if nonlinearity == "relu":
        return nn.ReLU(inplace=True)
    if nonlinearity == "leaky_relu":
        return nn.LeakyReLU(inplace=True)
    raise ValueError(f"unknown nonlinearity {nonlinearity!r} (relu, leaky_relu)")


def conv3x3(cin: int, cout: int, stride: int = 1) -> SubnetConv2d:
    return SubnetConv2d(cin, cout, 3, stride, 1)


def conv1x1(cin: int, cout: int, stride: int = 1) -> SubnetConv2d:
    return SubnetConv2d(cin, cout, 1, stride, 0)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin, planes, stride=1, *, nonlinearity="relu", shortcut_name="shortcut"):
        super().__init__()
        self.conv1 = conv3x3(cin, planes, stride)
        self.bn1 = NonAffineBatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = NonAffineBatchNorm2d(planes)
        self.act = _act(nonlinearity)
        self.shortcut_name = shortcut_name
        if stride != 1 or cin != planes:
            setattr(self, shortcut_name, nn.Sequential(conv1x1(cin, planes, stride), NonAffineBatchNorm2d(planes)))
        else:
            setattr(self, shortcut_name, nn.Identity())

    def forward(self, x):
        out = self.act(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act(out + getattr(self, self.shortcut_name)(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin, planes, stride=1, *, nonlinearity="relu", shortcut_name="shortcut"):
        super().__init__()
        self.conv1 = conv1x1(cin, planes)
        self.bn1 = NonAffineBatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = NonAffineBatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * 4)
        self.bn3 = NonAffineBatchNorm2d(planes * 4)
        self.act = _act(nonlinearity)
        self.shortcut_name = shortcut_name
        if stride != 1 or cin != planes * 4:
            setattr(self, shortcut_name, nn.Sequential(conv1x1(cin, planes * 4, stride), NonAffineBatchNorm2d(planes * 4)))
        else:
            setattr(self, shortcut_name, nn.Identity())

    def forward(self, x):
        out = self.act(self.bn1(self.conv1(x)))
        out = self.act(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.act(out + getattr(self, self.shortcut_name)(x))


class ResNet(nn.Module):
    """CIFAR-style (3×3 stem, no max-pool) or ImageNet-style (7×7 stem, max-pool) ResNet.

    The classifier `fc` is a 1×1 convolution over the pooled features; with `end_with_bn` a
    non-affine BatchNorm `last` normalizes the logits (the paper's "last BN").
    """

    def __init__(
        self,
        block: type[nn.Module],
        num_blocks: list[int],
        *,
        num_classes: int,
        widths: tuple[int, ...] = (64, 128, 256, 512),
        imagenet_stem: bool = False,
        in_channels: int = 3,
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
        end_with_bn: bool = False,
        first_layer_dense: bool = False,
        last_layer_dense: bool = False,
        nonlinearity: str = "relu",
    ) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        # CIFAR Bottlenecks always use ReLU in the official code (method.md §1.2).
        block_act = "relu" if (block is Bottleneck and not imagenet_stem) else nonlinearity
        shortcut_name = "downsample" if imagenet_stem else "shortcut"
        stem_width = widths[0]
        if imagenet_stem:
            self.conv1 = dense_conv(in_channels, stem_width, 7, 2, 3) if first_layer_dense else SubnetConv2d(in_channels, stem_width, 7, 2, 3)
        else:
            self.conv1 = dense_conv(in_channels, stem_width, 3, 1, 1) if first_layer_dense else conv3x3(in_channels, stem_width)
        self.bn1 = NonAffineBatchNorm2d(stem_width)
        self.act = _act(nonlinearity)
        self.maxpool = nn.MaxPool2d(3, 2, 1) if imagenet_stem else nn.Identity()
        cin = stem_width
        for i, (width, count) in enumerate(zip(widths, num_blocks)):
            stride = 1 if i == 0 else 2
            blocks = []
            for j in range(count):
                blocks.append(block(cin, width, stride if j == 0 else 1, nonlinearity=block_act, shortcut_name=shortcut_name))
                cin = width * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.num_stages = len(widths)
        self.imagenet_stem = imagenet_stem
        # The official ImageNet dense classifier has a bias (method.md §1.4).
        if last_layer_dense:
            self.fc = dense_conv(cin, num_classes, 1, bias=imagenet_stem)
        else:
            self.fc = conv1x1(cin, num_classes)
        self.last = NonAffineBatchNorm2d(num_classes) if end_with_bn else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.normalize(x)
        out = self.maxpool(self.act(self.bn1(self.conv1(x))))
        for i in range(self.num_stages):
            out = getattr(self, f"layer{i + 1}")(out)
        if self.imagenet_stem:
            out = F.adaptive_avg_pool2d(out, 1)
        else:
            # The official CIFAR head is avg_pool2d(4) on the 4×4 map of a 32×32 input; pooling over
            # the whole map keeps its exact summation order there and also works for other sizes.
            out = F.avg_pool2d(out, tuple(out.shape[-2:]))
        out = self.fc(out)
        if self.last is not None:
            out = self.last(out)
        return out.flatten(1)
