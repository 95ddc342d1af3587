"""`rbzoo train`: configs, objectives end to end, outputs, and bad input (tiny_resnet, CIFAR fixtures)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml

import rbzoo
from rbzoo.attacks import pgd
from rbzoo.cli import main
from rbzoo.distributed import DistContext
from rbzoo.evaluate import clean_accuracy
from rbzoo.config import list_configs, load_config
from rbzoo.errors import ConfigError
from rbzoo.objectives import FastTraining, _crop, _hflip, _uncrop_, attack_batchnorm
from rbzoo.train import STATE_FILE, build_data, build_network, lr_at, train

RECORD_KEYS = {"epoch", "lr", "train_loss", "val_clean_acc", "val_robust_acc", "test_clean_acc", "test_robust_acc",
               "keep", "images_per_s", "wall_s"}


def tiny(root, **over):
    """A seconds-long CIFAR10 run: tiny_resnet, 100 fixture images, 2-step attacks."""
    base = {"arch": "tiny_resnet", "width": 4, "data_dir": str(root), "epochs": 1, "batch_size": 32, "keep": 0.3, "p": 0.5,
            "valid_ratio": 0.2, "attack.steps": 2, "eval_attack.steps": 2, "eval_batch_size": 64, "cpu_threads": 1}
    base.update(over)
    return load_config("rn18-cifar10-pgd", base)


def run(cfg, out):
    lines = []
    result = train(cfg, out, progress=False, log=lines.append)
    return result, lines


# --- configs -------------------------------------------------------------------------------------


def test_shipped_configs_cover_method_settings():
    names = set(list_configs())
    expected = {f"rn{d}-{ds}-{o}" for d in (18, 34, 50) for ds in ("cifar10", "cifar100") for o in ("pgd", "fast")}
    expected |= {"rn34-cifar10-trades", "rn34-imagenet100-fast", "quickstart"}
    assert expected <= names
    for name in names:
        cfg = load_config(name)
        assert cfg.name == name and 0 < cfg.keep <= 1
    c = load_config("rn34-cifar100-pgd")
    assert (c.keep, c.p, c.epochs, c.batch_size, c.end_with_bn) == (0.01, 0.1, 400, 256, True)
    assert c.attack.eps == pytest.approx(4 / 255) and c.attack.alpha == pytest.approx(1 / 255) and c.attack.steps == 10
    f = load_config("rn34-cifar10-fast")
    assert f.objective == "fast" and f.attack.alpha == pytest.approx(4 / 255) and f.epochs == 100 and not f.resolved_augment()
    i = load_config("rn34-imagenet100-fast")
    assert (i.warmup_epochs, i.momentum, i.weight_decay) == (5, 0.875, 3.0517578125e-5)
    assert i.eval_attack.alpha == pytest.approx(0.5 / 255)
    assert load_config("rn34-cifar10-trades").trades_beta == 6.0


def test_overrides_keep_sparsity_and_errors(tmp_path):
    c = load_config("rn34-cifar10-pgd", {"attack.eps": "4/255", "lr": "0.05"}, sparsity=0.9)
    assert c.keep == 0.1 and c.sparsity == 0.9 and c.attack.eps == pytest.approx(4 / 255) and c.lr == 0.05
    assert load_config("rn34-cifar10-pgd", keep=0.2, sparsity=0.8).keep == 0.2  # consistent: fine
    with pytest.raises(ConfigError, match="contradict"):
        load_config("rn34-cifar10-pgd", keep=0.2, sparsity=0.5)
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ConfigError, match=r"keep must be in \(0, 1\]"):
            load_config("rn34-cifar10-pgd", keep=bad)
    with pytest.raises(ConfigError, match="unknown config key 'attack.epz'"):
        load_config("rn34-cifar10-pgd", {"attack.epz": 0.1})
    with pytest.raises(ConfigError, match="expected an integer"):
        load_config("rn34-cifar10-pgd", {"epochs": "many"})
    with pytest.raises(ConfigError, match="unknown config 'nope'"):
        load_config("nope")
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump({"dataset": "cifar10", "arch": "tiny_resnet", "sparsity": 0.75}))
    cfg = load_config(str(path))
    assert cfg.keep == 0.25 and cfg.name == "mine"
    # The resolved config round-trips through YAML exactly.
    assert load_config(base=yaml.safe_load(cfg.to_yaml())) == cfg


def test_lr_schedules():
    c = load_config("rn34-cifar10-pgd")
    assert lr_at(c, 0) == 0.1 and lr_at(c, 399) == pytest.approx(1.54e-6, rel=0.01)
    i = load_config("rn34-imagenet100-fast")
    assert [round(lr_at(i, e), 6) for e in range(6)] == [0.02, 0.04, 0.06, 0.08, 0.1, 0.1]
    assert lr_at(i, 99) == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 94 / 95)))
    m = load_config("rn34-cifar10-pgd", {"lr_schedule": "multistep", "lr_milestones": [200, 300]})
    assert [lr_at(m, e) for e in (199, 200, 300)] == pytest.approx([0.1, 0.01, 0.001])


# --- attack building blocks ----------------------------------------------------------------------


def test_attack_batchnorm_freezes_running_stats_only_by_default():
    model = rbzoo.create_model("tiny_resnet", keep=0.5, p=0.5, end_with_bn=True).train()
    x, y = torch.rand(8, 3, 32, 32), torch.randint(0, 10, (8,))
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}
    with attack_batchnorm(model, update_running_stats=False):
        pgd(model, x, y, eps=8 / 255, alpha=2 / 255, steps=2)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(m.track_running_stats for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    with attack_batchnorm(model, update_running_stats=True):  # paper-compat: the attack moves them
        pgd(model, x, y, eps=8 / 255, alpha=2 / 255, steps=2)
    assert not torch.equal(before["bn1.running_mean"], model.state_dict()["bn1.running_mean"])


def test_fast_attacker_memory_and_augmentation(cifar10_root):
    cfg = tiny(cifar10_root, objective="fast", **{"attack.steps": 1})
    obj = FastTraining(cfg, n=20, image_shape=(3, 32, 32), device=torch.device("cpu"))
    assert obj.memory.shape == (20, 3, 40, 40) and obj.memory.abs().max() <= cfg.attack.eps
    t = torch.arange(2 * 3 * 40 * 40, dtype=torch.float32).view(2, 3, 40, 40)
    i, j = torch.tensor([0, 7]), torch.tensor([3, 5])
    crop = _crop(t, i, j, 32, 32)
    assert torch.equal(crop[1], t[1, :, 7:39, 5:37])
    flipped = _hflip(crop, torch.tensor([True, False]))
    assert torch.equal(flipped[0], crop[0].flip(2)) and torch.equal(flipped[1], crop[1])
    t2 = torch.zeros_like(t)
    _uncrop_(t2, i, j, crop)
    assert torch.equal(t2[1, :, 7:39, 5:37], crop[1]) and t2[1, :, :7].abs().sum() == 0
    model = rbzoo.create_model("tiny_resnet", keep=0.5, p=0.5).train()
    x, y, idx = torch.rand(4, 3, 32, 32), torch.randint(0, 10, (4,)), torch.tensor([0, 5, 6, 19])
    old = obj.memory.clone()
    loss, logits = obj(model, model, x, y, idx)
    assert loss.requires_grad and logits.shape == (4, 10)
    changed = (obj.memory != old).flatten(1).any(1)
    assert changed.tolist() == [k in (0, 5, 6, 19) for k in range(20)]  # only the batch's canvases move
    assert obj.memory.abs().max() <= cfg.attack.eps + 1e-7
    state = obj.state_dict()
    other = FastTraining(cfg, n=20, image_shape=(3, 32, 32), device=torch.device("cpu"))
    other.load_state_dict(state)
    assert torch.equal(other.memory, obj.memory)
    with pytest.raises(ValueError):
        FastTraining(cfg, n=19, image_shape=(3, 32, 32), device=torch.device("cpu")).load_state_dict(state)


def test_fast_attacker_pooled_memory_for_large_images(cifar10_root):
    """Images over 160 px keep their canvas 8×8 average-pooled (ImageNet100, method.md §5.3)."""
    cfg = tiny(cifar10_root, objective="fast", **{"attack.steps": 1})
    obj = FastTraining(cfg, n=3, image_shape=(3, 168, 168), device=torch.device("cpu"))
    assert obj.memory.shape == (3, 3, 22, 22)  # (168 + 8) / 8
    model = rbzoo.create_model("tiny_resnet", width=4, keep=0.5, p=0.5).train()
    old = obj.memory.clone()
    loss, _ = obj(model, model, torch.rand(2, 3, 168, 168), torch.tensor([1, 2]), torch.tensor([0, 2]))
    assert torch.isfinite(loss)
    assert torch.equal(obj.memory[1], old[1]) and not torch.equal(obj.memory[0], old[0])
    assert obj.memory.abs().max() <= cfg.attack.eps + 1e-6


# --- end to end ----------------------------------------------------------------------------------


@pytest.mark.parametrize("objective", ["pgd", "fast", "fgsm_rs", "trades"])
def test_objectives_end_to_end(cifar10_root, tmp_path, objective):
    over = {"objective": objective}
    if objective == "fast":
        over["attack.steps"] = 1
    if objective == "pgd":
        over["epochs"] = 2
        over["test_every"] = 2
    cfg = tiny(cifar10_root, **over)
    out = tmp_path / "run"
    result, lines = run(cfg, out)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == cfg.epochs == result.epochs_done
    for r in records:
        assert RECORD_KEYS <= set(r) and r["keep"] == 0.3
        for k in ("val_clean_acc", "val_robust_acc", "test_clean_acc", "test_robust_acc"):
            assert r[k] is None or 0.0 <= r[k] <= 1.0
    assert records[-1]["test_clean_acc"] is not None and records[-1]["val_robust_acc"] is not None
    if objective == "pgd":
        assert records[0]["test_clean_acc"] is None  # test_every 2: epoch 1 skips the test split
    assert all("keep=0.3" in line for line in lines if line.startswith("epoch"))
    # Checkpoints: format v1, metadata says what was trained and how it scored.
    ck = rbzoo.read(out / "best.safetensors")
    assert ck.meta_json("rbzoo.dataset")["name"] == "cifar10"
    tr = ck.meta_json("rbzoo.train")
    assert (tr["objective"], tr["keep"], tr["arch"], tr["paper_compat"]) == (objective, 0.3, "tiny_resnet", False)
    assert tr["attack"]["steps"] == cfg.attack.steps and "data_dir" not in tr
    assert ck.meta_json("rbzoo.metrics")["epoch"] == result.best_epoch
    net = rbzoo.load(out / "last.safetensors")
    assert net(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    # The resolved config is in the folder; the state loads without unpickling code.
    assert load_config(str(out / "config.yaml")) == cfg
    state = torch.load(out / STATE_FILE, weights_only=True)
    assert state["epoch"] == cfg.epochs
    if objective == "fast":
        assert state["objective"]["memory"].shape == (80, 3, 40, 40)
    else:
        assert state["objective"] == {}
    # Default: only the training forwards move the BN statistics (TRADES: f(x) and f(x')).
    steps = sum(r["train_steps"] for r in records)
    assert steps == cfg.epochs * 3  # 80 images, batches of 32
    assert int(state["model"]["bn1.num_batches_tracked"]) == steps * (2 if objective == "trades" else 1)


def test_paper_compat_cifar100(cifar100_root, tmp_path):
    cfg = tiny(cifar100_root, paper_compat=True, dataset="cifar100", epochs=3, valid_ratio=0.25, test_every=3)
    result, lines = run(cfg, tmp_path / "run")
    ck = rbzoo.read(tmp_path / "run" / "best.safetensors")
    assert ck.meta_json("rbzoo.train")["paper_compat"] is True and ck.arch["num_classes"] == 100
    assert "paper-compat" in lines[0]
    # Selection by robust validation accuracy: the first epoch reaching the maximum.
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    scores = [r["val_robust_acc"] for r in records]
    assert result.best_epoch == scores.index(max(scores)) + 1 == ck.meta_json("rbzoo.metrics")["epoch"]
    assert [r["is_best"] for r in records].count(True) >= 1
    # Paper-compat PGD-2: every attack forward updates the BN statistics too, 3 updates per batch.
    state = torch.load(tmp_path / "run" / STATE_FILE, weights_only=True)
    assert sum(r["train_steps"] for r in records) == 3 * 5  # 150 images, batches of 32
    assert int(state["model"]["bn1.num_batches_tracked"]) == 3 * 5 * (cfg.attack.steps + 1)


def test_tensorboard_events_or_clear_notice(cifar10_root, tmp_path):
    _, lines = run(tiny(cifar10_root, tensorboard=True, valid_ratio=0.0), tmp_path / "run")
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        assert any("tensorboard is not installed" in line for line in lines)
    else:
        assert any((tmp_path / "run" / "tb").glob("events.out.tfevents.*"))


def test_fast_memory_is_carried_across_epochs_and_resumed(cifar10_root, tmp_path):
    """The δ memory lives for the whole run: in each epoch every sample's canvas changes inside one
    32×32 crop window of its 40×40 canvas, starting from where the previous epoch left it (a reset
    would change the union of two windows). A run interrupted after epoch 1 and resumed ends with
    the same memory and masks as an uninterrupted one."""
    cfg = tiny(cifar10_root, objective="fast", epochs=2, batch_size=20, test_subset=10,
               **{"attack.steps": 1, "attack.alpha": "4/255"})

    class Stop(Exception):
        pass

    def stop_after_epoch_1(line):
        if line.startswith("epoch 1/2"):
            raise Stop

    with pytest.raises(Stop):
        train(cfg, tmp_path / "cut", progress=False, log=stop_after_epoch_1)
    m1 = torch.load(tmp_path / "cut" / STATE_FILE, weights_only=True)["objective"]["memory"]
    train(cfg, tmp_path / "cut", resume=True, progress=False, log=lambda line: None)
    run(cfg, tmp_path / "ref")
    m0 = FastTraining(cfg, n=80, image_shape=(3, 32, 32), device=torch.device("cpu")).memory
    m2 = torch.load(tmp_path / "cut" / STATE_FILE, weights_only=True)["objective"]["memory"]
    assert torch.equal(m2, torch.load(tmp_path / "ref" / STATE_FILE, weights_only=True)["objective"]["memory"])
    assert rbzoo.read(tmp_path / "cut" / "last.safetensors").digest == rbzoo.read(tmp_path / "ref" / "last.safetensors").digest
    for before, after in ((m0, m1), (m1, m2)):
        changed = (before != after).any(1)  # (samples, 40, 40)
        rows, cols = changed.any(2), changed.any(1)
        assert bool(rows.any(1).all())  # every training sample was attacked, at its own position
        assert int(_span(rows).max()) <= 32 and int(_span(cols).max()) <= 32


def _span(flags: torch.Tensor) -> torch.Tensor:
    """Per row of a boolean (N, L) tensor: last True − first True + 1."""
    first = flags.float().argmax(1)
    last = flags.shape[1] - 1 - flags.flip(1).float().argmax(1)
    return last - first + 1


def test_bf16_and_channels_last_runs_load_and_evaluate(cifar10_root, tmp_path):
    """--bf16 (CPU autocast) and --channels-last: short runs whose checkpoints load and evaluate."""
    common = {"test_subset": 20, "attack.steps": 1, "eval_attack.steps": 1}
    digests = {}
    for name, over in (("fp32", {}), ("bf16", {"bf16": True}), ("cl", {"channels_last": True})):
        cfg = tiny(cifar10_root, **common, **over)
        result, _ = run(cfg, tmp_path / name)
        ck = rbzoo.read(tmp_path / name / "best.safetensors")
        digests[name] = ck.digest
        assert all(t.dtype == torch.float32 for k, t in ck.tensors.items() if "running" in k)  # format v1: float32 BN
        data = build_data(cfg)
        res = clean_accuracy(rbzoo.load(tmp_path / name / "best.safetensors"), data.test, indices=data.test_indices)
        assert res.n_examples == 20
        if name != "bf16":  # the trainer's own fp32 evaluation of the same network
            assert res.clean_acc == result.best["test_clean_acc"]
    assert digests["bf16"] != digests["fp32"]  # autocast really ran the training in bfloat16
    cfg = tiny(cifar10_root, channels_last=True)
    net = build_network(cfg, DistContext(0, 1, 0, torch.device("cpu")))
    assert net.conv1.scores.is_contiguous(memory_format=torch.channels_last)


def test_sync_bn_on_cpu_is_a_one_line_error(cifar10_root, tmp_path, capsys):
    """torch's SyncBatchNorm refuses CPU tensors once a process group exists (checked here, so this
    test notices a torch that lifts the limit); rbzoo says so up front, before writing anything."""
    import torch.distributed as dist

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        with pytest.raises(ValueError, match="GPU"):
            torch.nn.SyncBatchNorm(3).train()(torch.rand(2, 3, 4, 4))
    finally:
        dist.destroy_process_group()
    out = tmp_path / "run"
    code, _, err = _cli(["-c", "rn18-cifar10-pgd", "--arch", "tiny_resnet", "--set", "width=4", "--data-dir", str(cifar10_root),
                         "--epochs", "1", "--test-subset", "10", "--set", "attack.steps=1", "--set", "eval_attack.steps=1",
                         "-o", str(out), "--sync-bn"], capsys)
    assert code != 0 and "sync_bn needs CUDA" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


# --- the command line and bad input --------------------------------------------------------------


def _cli(args, capsys):
    code = main(["train", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("args, message", [
    (["--set", "attack.epz=0.1"], "unknown config key"),
    (["--keep", "0"], "keep must be in (0, 1]"),
    (["--keep", "1.5"], "keep must be in (0, 1]"),
    (["--keep", "0.1", "--sparsity", "0.5"], "contradict"),
    (["--sparsity", "1.0"], "sparsity must be in [0, 1)"),
    (["--objective", "free"], "unknown --objective 'free'; choose from"),
])
def test_bad_flags_fail_cleanly(cifar10_root, tmp_path, capsys, args, message):
    out = tmp_path / "run"
    code, _, err = _cli(["-c", "rn18-cifar10-pgd", "--arch", "tiny_resnet", "--data-dir", str(cifar10_root), "-o", str(out), *args], capsys)
    assert code != 0 and message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_bad_config_file_missing_data_and_busy_folder(cifar10_root, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset: cifar10\nlearning_rate: 0.1\n")
    out = tmp_path / "run"
    code, _, err = _cli(["-c", str(bad), "-o", str(out)], capsys)
    assert code != 0 and "unknown config key 'learning_rate'" in err and not out.exists()
    # Missing data: one line saying where to put the files, and no run folder.
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = _cli(["-c", "rn18-cifar10-pgd", "--arch", "tiny_resnet", "--data-dir", str(empty), "-o", str(out)], capsys)
    assert code != 0 and "cifar-10-batches-py" in err and str(empty) in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
    # A non-empty folder is never overwritten without --resume or --force.
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    code, _, err = _cli(["-c", "rn18-cifar10-pgd", "--data-dir", str(cifar10_root), "-o", str(out)], capsys)
    assert code != 0 and "not empty" in err and sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    code, _, err = _cli(["--resume", str(out)], capsys)
    assert code != 0 and "not an rbzoo run folder" in err
    code, _, err = _cli(["--resume", str(tmp_path / "run"), "--lr", "0.5"], capsys)
    assert code != 0 and "cannot change lr" in err


def test_cli_train_force_and_resume_finished(cifar10_root, tmp_path, capsys):
    out = tmp_path / "run"
    common = ["-c", "rn18-cifar10-pgd", "--arch", "tiny_resnet", "--set", "width=4", "--set", "cpu_threads=1",
              "--data-dir", str(cifar10_root), "-o", str(out), "--test-subset", "20",
              "--epochs", "1", "--batch-size", "50", "--keep", "0.4", "--set", "attack.steps=1", "--set", "eval_attack.steps=1"]
    code, stdout, _ = _cli(common, capsys)
    assert code == 0 and "keep=0.4" in stdout and (out / "best.safetensors").is_file()
    first = rbzoo.read(out / "last.safetensors").digest
    code, _, err = _cli(common, capsys)
    assert code != 0 and "--resume" in err
    code, _, _ = _cli([*common, "--force"], capsys)  # same seed: same result
    assert code == 0 and rbzoo.read(out / "last.safetensors").digest == first
    code, stdout, _ = _cli(["--resume", str(out)], capsys)  # already complete: nothing to redo
    assert code == 0 and rbzoo.read(out / "last.safetensors").digest == first
    code, stdout, _ = _cli(["-c", "quickstart", "--print-config", "--sparsity", "0.8"], capsys)
    assert code == 0 and yaml.safe_load(stdout)["keep"] == 0.2
