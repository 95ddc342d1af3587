"""Shared fixtures: small datasets in the real on-disk formats, and a tiny checkpoint."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

import datagen  # noqa: E402

import rbzoo  # noqa: E402
import rbzoo.data  # noqa: E402


@pytest.fixture(scope="session")
def cifar10_root(tmp_path_factory) -> Path:
    """A data dir holding `cifar-10-batches-py/` (100 train, 50 test images)."""
    return datagen.write_cifar10(tmp_path_factory.mktemp("cifar10"))


@pytest.fixture(scope="session")
def cifar100_root(tmp_path_factory) -> Path:
    """A data dir holding `cifar-100-python/` (200 train, 100 test images)."""
    return datagen.write_cifar100(tmp_path_factory.mktemp("cifar100"))


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A tiny_resnet (CIFAR10 normalization, last BN) with random scores and real BN statistics."""
    model = rbzoo.create_model("tiny_resnet", keep=0.2, p=0.5, end_with_bn=True, seed=11, score_init_scale=1.0)
    model.train()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _ in range(4):
            model(torch.rand(32, 3, 32, 32, generator=g))
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    rbzoo.save(model.eval(), path, metadata={"rbzoo.dataset": rbzoo.data.dataset_metadata("cifar10")})
    return path
