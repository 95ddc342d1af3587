"""In-process resume: `reseed()` at every epoch start is all the RNG state a resumed run needs.

The training state stores no RNG state: a run interrupted after an epoch and resumed with the
global generators in any other state must end bit-identical to an uninterrupted run.
"""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

import rbzoo
from rbzoo.config import load_config
from rbzoo.train import STATE_FILE, train


class _Stop(Exception):
    pass


def _cfg(root, objective):
    over = {"arch": "tiny_resnet", "width": 4, "data_dir": str(root), "epochs": 3, "batch_size": 32, "keep": 0.3,
            "p": 0.5, "valid_ratio": 0.2, "attack.steps": 1 if objective == "fast" else 2, "eval_attack.steps": 2,
            "eval_batch_size": 64, "cpu_threads": 1, "objective": objective}
    return load_config("rn18-cifar10-pgd", over)


def _stop_after_first_epoch(line: str) -> None:
    if line.startswith("epoch"):  # logged after the epoch's state is committed
        raise _Stop


def _scramble_global_rngs() -> None:
    random.seed(12345)
    np.random.seed(54321)
    torch.manual_seed(999)
    torch.rand(1000), np.random.rand(1000), random.random()


def _rows(run):
    drop = ("images_per_s", "wall_s", "elapsed_s")
    return [{k: v for k, v in json.loads(x).items() if k not in drop} for x in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("objective", ["pgd", "fast"])  # PGD random starts; the fast attacker's crops and flips
def test_resume_with_other_global_rng_state_is_bit_identical(cifar10_root, tmp_path, objective):
    cfg = _cfg(cifar10_root, objective)
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    train(cfg, ref, progress=False, log=lambda line: None)
    with pytest.raises(_Stop):
        train(cfg, cut, progress=False, log=_stop_after_first_epoch)
    state = torch.load(cut / STATE_FILE, weights_only=True)
    assert state["epoch"] == 1 and "rng" not in state
    _scramble_global_rngs()
    train(cfg, cut, resume=True, progress=False, log=lambda line: None)
    for name in ("last.safetensors", "best.safetensors"):
        a, b = rbzoo.read(ref / name), rbzoo.read(cut / name)
        assert a.digest == b.digest, name  # the whole-model digest: masks, signs and BN statistics
    assert _rows(cut) == _rows(ref)
