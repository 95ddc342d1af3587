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


@pytest.fixture(scope="session", autouse=True)
def rbzoo_home(tmp_path_factory):
    """rbzoo's cache (pull registry, eval states keyed by the evaluation) in a per-session folder:
    a test never reads or writes the user's, nor resumes an evaluation of an earlier session."""
    with pytest.MonkeyPatch.context() as mp:
        home = tmp_path_factory.mktemp("rbzoo_home")
        mp.setenv("RBZOO_HOME", str(home))
        yield home


@pytest.fixture(scope="session")
def cifar10_root(tmp_path_factory) -> Path:
    """A data dir holding `cifar-10-batches-py/` (100 train, 50 test images)."""
    return datagen.write_cifar10(tmp_path_factory.mktemp("cifar10"))


@pytest.fixture(scope="session")
def cifar100_root(tmp_path_factory) -> Path:
    """A data dir holding `cifar-100-python/` (200 train, 100 test images)."""
    return datagen.write_cifar100(tmp_path_factory.mktemp("cifar100"))


def make_tiny_checkpoint(path: Path, *, keep: float, seed: int, data_seed: int) -> Path:
    """A tiny_resnet (CIFAR10 normalization, last BN) with random scores and real BN statistics."""
    model = rbzoo.create_model("tiny_resnet", keep=keep, p=0.5, end_with_bn=True, seed=seed, score_init_scale=1.0)
    model.train()
    g = torch.Generator().manual_seed(data_seed)
    with torch.no_grad():
        for _ in range(4):
            model(torch.rand(32, 3, 32, 32, generator=g))
    rbzoo.save(model.eval(), path, metadata={"rbzoo.dataset": rbzoo.data.dataset_metadata("cifar10")})
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors", keep=0.2, seed=11, data_seed=0)


@pytest.fixture
def one_thread():
    """Tiny convolutions run fastest, and identically, on one thread (modules opt in with
    `pytestmark = pytest.mark.usefixtures("one_thread")`)."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture
def hf_env(tmp_path, monkeypatch) -> Path:
    """Isolate huggingface_hub: Xet off, a per-test HF_HOME and cache, no token/offline/endpoint
    inherited from the environment (an unknown HF_TOKEN would be sent even on anonymous calls)."""
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_XET", True)  # read at import: set the constant too
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf_cache"))
    for var in ("HF_TOKEN", "HF_HUB_OFFLINE", "HF_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


@pytest.fixture
def server(hf_env):
    """A Hub-protocol test server on 127.0.0.1 accepting `hub_server.TEST_TOKEN`."""
    from hub_server import TEST_TOKEN, start_hub_server

    srv = start_hub_server(hf_env / "hub", tokens={TEST_TOKEN})
    yield srv
    srv.stop()
    assert not srv.errors, srv.errors[0]
