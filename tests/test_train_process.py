"""`rbzoo train` as real processes: SIGKILL + --resume, a 2-process gloo torchrun, and quickstart."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

import rbzoo
from rbzoo.cli import main


# Share of the 2-process run's kept weights also kept by the 1-process run (measured: 0.472 with
# torch 2.14 on CPU; two independent masks of the same per-layer keep would share ≈ 0.3).
AGREEMENT = 0.42


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


def _masks(path):
    return torch.cat([torch.as_tensor(layer.mask) for layer in rbzoo.read(path).layers])


def test_torchrun_two_processes_match_one_process(cifar10_root, tmp_path, capsys):
    """DDP on CPU (gloo) with the "fast" objective, 2 epochs, global batch 32, against the same
    command in one process: the same global batches in the same order and the same number of steps
    (recorded per epoch), identical masks on both ranks (the trainer checks scores and the attack
    memory bit for bit after every epoch), and masks close to the 1-process run's."""
    args = ["train", "-c", "rn18-cifar10-fast", "--arch", "tiny_resnet", "--set", "width=4", "--data-dir", str(cifar10_root),
            "--keep", "0.3", "--pr-scale", "0.5", "--epochs", "2", "--batch-size", "32", "--test-subset", "20",
            "--set", "eval_attack.steps=2", "--set", "valid_ratio=0.2", "--set", "cpu_threads=1"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "rbzoo",
           *args, "-o", str(tmp_path / "ddp")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "×2" in res.stdout and res.stdout.count("epoch 1/2") == 1  # rank 0 alone prints
    assert main([*args, "-o", str(tmp_path / "one")]) == 0
    capsys.readouterr()
    rows = {k: [json.loads(x) for x in (tmp_path / k / "metrics.jsonl").read_text().splitlines()] for k in ("ddp", "one")}
    for two, one in zip(rows["ddp"], rows["one"]):
        assert two["train_steps"] == one["train_steps"] == 3  # 80 images, global batch 32
        assert two["train_order_sha256"] == one["train_order_sha256"]
        assert (two["val_n"], two["test_n"]) == (20, 20)  # evaluation sharded over ranks, then summed
    assert rows["ddp"][0]["train_order_sha256"] != rows["ddp"][1]["train_order_sha256"]  # reshuffled per epoch
    net = rbzoo.load(tmp_path / "ddp" / "last.safetensors")
    assert net(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    # 1 vs 2 processes: per-rank BN batch statistics (16 vs 32 images) and per-rank attack crops
    # differ, so the masks differ by more than rounding (see AGREEMENT).
    a, b = _masks(tmp_path / "ddp" / "last.safetensors"), _masks(tmp_path / "one" / "last.safetensors")
    agreement = (a & b).sum().item() / a.sum().item()
    print(f"1- vs 2-process kept-weight agreement: {agreement:.4f}")
    assert a.sum() == b.sum() and agreement >= AGREEMENT


def test_quickstart_learns_digits_without_torchvision(tmp_path, capsys):
    """The README's main job, shortened, as a real process whose `import torchvision` fails: offline
    digits need no torchvision; clean accuracy far above chance, robust > 0."""
    (tmp_path / "runs" / "quickstart").mkdir(parents=True)
    (tmp_path / "runs" / "quickstart" / "old.txt").write_text("an earlier run")  # the default folder moves on
    broken = tmp_path / "site" / "torchvision"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise ImportError('a broken torchvision install')\n")
    root = str(Path(rbzoo.__file__).resolve().parent.parent)
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), root, os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run([sys.executable, "-m", "rbzoo", "train", "--config", "quickstart", "--epochs", "3",
                          "--device", "cpu"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    assert "keep=" in res.stdout and "done: best epoch" in res.stdout
    check = subprocess.run([sys.executable, "-c", "import torchvision"], env=env, capture_output=True, text=True)
    assert "a broken torchvision install" in check.stderr  # the process above really had no torchvision
    out = tmp_path / "runs" / "quickstart-2"
    best = rbzoo.read(out / "best.safetensors")
    metrics = best.meta_json("rbzoo.metrics")
    assert metrics["test_clean_acc"] >= 0.7 and metrics["test_robust_acc"] > 0.0
    assert best.meta_json("rbzoo.dataset")["name"] == "digits" and best.arch["in_channels"] == 1
    net = rbzoo.load(out / "best.safetensors")
    x = torch.rand(3, 1, 8, 8)
    assert net(x).shape == (3, 10)
    assert main(["info", str(out / "best.safetensors")]) == 0
    assert "tiny_resnet" in capsys.readouterr().out
