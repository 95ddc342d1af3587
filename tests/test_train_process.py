"""`rbzoo train` as real processes: SIGKILL + --resume, a 2-process gloo torchrun, and quickstart."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import torch

import rbzoo
from rbzoo.cli import main


def _train_cmd(root, out, *extra):
    return [sys.executable, "-m", "rbzoo", "train", "-c", "rn18-cifar10-fast", "--arch", "tiny_resnet", "--set", "width=4",
            "--set", "cpu_threads=1", "--data-dir", str(root), "--keep", "0.3", "--batch-size", "20", "--set", "valid_ratio=0.2",
            "--test-subset", "20", "--set", "eval_attack.steps=2", "-o", str(out), *extra]


def _digests(path):
    ck = rbzoo.read(path)
    return ck.digest, ck.weights_digest


def test_killed_run_resumes_to_the_same_masks(cifar10_root, tmp_path):
    """SIGKILL mid-run, `--resume`: masks (and BN statistics) equal those of an uninterrupted run."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one core each: the reference and the resume run side by side
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    epochs = ["--epochs", "4"]
    proc = subprocess.Popen(_train_cmd(cifar10_root, killed, *epochs), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    reference = subprocess.Popen(_train_cmd(cifar10_root, ref, *epochs), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (killed / "state.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    done = torch.load(killed / "state.pt", weights_only=True)["epoch"]
    assert 1 <= done < 4
    assert len((killed / "metrics.jsonl").read_text().splitlines()) >= done
    res = subprocess.run([sys.executable, "-m", "rbzoo", "train", "--resume", str(killed)], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert reference.wait() == 0, reference.stderr.read()
    assert f"epochs {done + 1}..4" in res.stdout
    for name in ("last.safetensors", "best.safetensors"):
        assert _digests(killed / name) == _digests(ref / name)
    strip = lambda r: {k: v for k, v in r.items() if k not in ("images_per_s", "wall_s", "elapsed_s")}  # noqa: E731
    rows = lambda d: [strip(json.loads(x)) for x in (d / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert rows(killed) == rows(ref)


def test_torchrun_two_processes_gloo(cifar10_root, tmp_path):
    """DDP on CPU (gloo): the "fast" objective also shares its perturbation memory across ranks, and
    the trainer checks after each epoch that scores and memory are identical on both ranks."""
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "rbzoo", "train",
           "-c", "rn18-cifar10-fast", "--arch", "tiny_resnet", "--set", "width=4", "--data-dir", str(cifar10_root),
           "--keep", "0.3", "--pr-scale", "0.5", "--epochs", "1", "--batch-size", "32",
           "--set", "eval_attack.steps=2", "--set", "valid_ratio=0.2", "-o", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "×2" in res.stdout and res.stdout.count("epoch 1/1") == 1  # rank 0 alone prints
    net = rbzoo.load(out / "best.safetensors")
    assert net(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    rec = json.loads((out / "metrics.jsonl").read_text())
    assert rec["val_n"] == 20 and rec["test_n"] == 50  # evaluation sharded over ranks, then summed


def test_quickstart_learns_digits(tmp_path, capsys, monkeypatch):
    """The README's main job, shortened: offline digits, clean accuracy far above chance, robust > 0."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "quickstart").mkdir(parents=True)
    (tmp_path / "runs" / "quickstart" / "old.txt").write_text("an earlier run")  # the default folder moves on
    assert main(["train", "--config", "quickstart", "--epochs", "3", "--device", "cpu"]) == 0
    out = tmp_path / "runs" / "quickstart-2"
    stdout = capsys.readouterr().out
    assert "keep=" in stdout and "done: best epoch" in stdout
    best = rbzoo.read(out / "best.safetensors")
    metrics = best.meta_json("rbzoo.metrics")
    assert metrics["test_clean_acc"] >= 0.7 and metrics["test_robust_acc"] > 0.0
    assert best.meta_json("rbzoo.dataset")["name"] == "digits" and best.arch["in_channels"] == 1
    net = rbzoo.load(out / "best.safetensors")
    x = torch.rand(3, 1, 8, 8)
    assert net(x).shape == (3, 10)
    assert main(["info", str(out / "best.safetensors")]) == 0
    assert "tiny_resnet" in capsys.readouterr().out
