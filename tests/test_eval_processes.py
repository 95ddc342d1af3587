"""`rbzoo eval` across processes: SIGKILL then Ctrl-C mid-run, each resumed, and a 2-process torchrun (gloo) shard.

Both must reproduce the uninterrupted single-process reference run of tests/test_eval.py exactly,
its evidence file (the adversarial input of every break) byte for byte.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import pytest

from rbzoo.cli import main
from rbzoo.exact import unpack_flags

from test_eval import AA_ARGS, CHUNK, N_POINTS, reference, trained_checkpoint  # noqa: F401 (fixtures)

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


def _chunks(state: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in state.glob("chunk-*.json")}


def _finished(state: Path) -> int:
    return sum(json.loads(data)["done"] == ["apgd-ce", "apgd-t"] for data in _chunks(state).values())


def _catches_sigint(pid: int) -> bool:
    """Python's SIGINT handler is installed in process `pid` (Linux: /proc says; elsewhere assumed)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True
    caught = next(int(line.split()[1], 16) for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(caught >> (signal.SIGINT - 1) & 1)


def _start(cmd: list[str]) -> subprocess.Popen:
    # SIGINT at its default in the child (a shell's background job inherits it ignored, and Python
    # then installs no handler of its own): Ctrl-C must reach rbzoo's handling.
    return subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait(proc: subprocess.Popen, ready, what: str) -> None:
    deadline = time.monotonic() + 120
    while not ready():
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def test_sigkill_then_ctrl_c_then_resume_gives_identical_evidence(reference, trained_checkpoint, cifar10_root, tmp_path):
    """SIGKILL mid-run, resume; Ctrl-C that resumed run mid-run (exit 130), resume again: the flags
    and the evidence file are those of the uninterrupted reference, byte for byte."""
    out = tmp_path / "killed.json"
    state = tmp_path / "killed.state"
    args = ["eval", str(trained_checkpoint), "--data-dir", str(cifar10_root), *AA_ARGS, "--out", str(out),
            "--state", str(state)]
    cmd = [sys.executable, "-m", "rbzoo", *args]
    proc = _start(cmd)
    try:
        _wait(proc, lambda: _chunks(state), "a chunk")  # the first chunk's first attack has been saved
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()
    killed_at = _chunks(state)
    assert _finished(state) < N_POINTS // CHUNK, "the run finished before it was killed: nothing was resumed"

    # The resumed run, interrupted by Ctrl-C once it has saved state of its own (a chunk new or
    # advanced since the kill), not merely found the killed run's.
    proc = _start(cmd)
    try:
        _wait(proc, lambda: any(killed_at.get(k) != v for k, v in _chunks(state).items()), "the resumed run's own chunk")
        _wait(proc, lambda: _catches_sigint(proc.pid), "the SIGINT handler")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert err.splitlines()[-1] == f"error: interrupted; resume with: {shlex.join(['rbzoo', *args])}", err
    assert not out.exists() and not list(tmp_path.glob("killed.evidence*"))
    interrupted_at = _chunks(state)
    assert interrupted_at != killed_at and _finished(state) < N_POINTS // CHUNK, "nothing left to resume after Ctrl-C"
    assert all(interrupted_at[k] == v for k, v in killed_at.items() if json.loads(v)["done"] == ["apgd-ce", "apgd-t"])

    assert main(args) == 0
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
