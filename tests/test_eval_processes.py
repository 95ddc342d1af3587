"""`rbzoo eval` across processes: SIGKILL mid-run then resume, and a 2-process torchrun (gloo) shard.

Both must reproduce the uninterrupted single-process reference run of tests/test_eval.py exactly,
its evidence file (the adversarial input of every break) byte for byte.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import pytest

from rbzoo.cli import main
from rbzoo.exact import unpack_flags

from test_eval import AA_ARGS, N_POINTS, reference, trained_checkpoint  # noqa: F401 (fixtures)

pytestmark = pytest.mark.usefixtures("one_thread")

# Fields that must agree between runs of the same evaluation (not timing, paths, or process layout).
SAME = ("model_digest", "n_examples", "clean_correct", "clean_acc", "predictions_sha256", "data_sha256", "robust_correct",
        "robust_acc", "attack", "robust_acc_after", "robust_correct_after", "wilson95", "robust_flags", "warnings", "n_chunks")


def _same_evidence(out: Path, ref: dict) -> None:
    r = json.loads(out.read_text())
    ref_file = ref["out"].parent / ref["results"]["evidence"]["file"]
    assert r["evidence"]["n"] > 0 and r["evidence"]["sha256"] == ref["results"]["evidence"]["sha256"]
    assert (out.parent / r["evidence"]["file"]).read_bytes() == ref_file.read_bytes()


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("WORLD_SIZE", None)
    return env


def test_sigkill_mid_run_then_resume_gives_the_same_flags(reference, trained_checkpoint, cifar10_root, tmp_path):
    out = tmp_path / "killed.json"
    state = tmp_path / "killed.state"
    cmd = [sys.executable, "-m", "rbzoo", "eval", str(trained_checkpoint), "--data-dir", str(cifar10_root), *AA_ARGS,
           "--out", str(out), "--state", str(state)]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not list(state.glob("chunk-*.json")):  # the first chunk's first attack has been saved
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "no chunk written in time"
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()
    records = [json.loads(p.read_text()) for p in sorted(state.glob("chunk-*.json"))]
    finished = sum(r["done"] == ["apgd-ce", "apgd-t"] for r in records)
    assert finished < N_POINTS // 4, "the run finished before it was killed: nothing was resumed"

    assert main(["eval", str(trained_checkpoint), "--data-dir", str(cifar10_root), *AA_ARGS, "--out", str(out),
                 "--state", str(state)]) == 0
    resumed, ref = json.loads(out.read_text()), reference["results"]
    assert np.array_equal(unpack_flags(resumed["robust_flags"], N_POINTS), unpack_flags(ref["robust_flags"], N_POINTS))
    assert {k: resumed[k] for k in SAME} == {k: ref[k] for k in SAME}
    _same_evidence(out, reference)


def test_two_process_torchrun_equals_single_process(reference, trained_checkpoint, cifar10_root, tmp_path):
    out = tmp_path / "sharded.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "--monitor-interval", "0.2",
           "-m", "rbzoo", "eval", str(trained_checkpoint), "--data-dir", str(cifar10_root), *AA_ARGS, "--out", str(out),
           "--state", str(tmp_path / "sharded.state")]
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    sharded, ref = json.loads(out.read_text()), reference["results"]
    assert sharded["world_size"] == 2 and ref["world_size"] == 1
    assert {k: sharded[k] for k in SAME} == {k: ref[k] for k in SAME}
    _same_evidence(out, reference)
    # Each rank wrote its own chunks (i % 2) into the shared state folder; rank 0 merged them all.
    chunks = sorted(Path(sharded["state_dir"]).glob("chunk-*.json"))
    assert len(chunks) == N_POINTS // 4
    assert {json.loads(p.read_text())["device"] for p in chunks} == {"cpu"}
