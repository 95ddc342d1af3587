"""`rbzoo convert`: official checkpoints (method.md §5.8) in, format-v1 out, with identical logits.

The official files are rebuilt here in their exact layout: a `torch.save` dict with `epoch`, `arch`,
`state_dict` (keys `module.1.*`: ±1 fp32 `weight` and `scores` per SubnetConv, BN running stats
and `num_batches_tracked`), an SGD `optimizer` state whose param_groups hold numpy float64
scalars, `best_*` accuracies and the string "Not evaluated".
"""

from __future__ import annotations

import io
import math
import os
import json
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import yaml

import rbzoo
import rbzoo.cards
import rbzoo.fetch
import rbzoo.pruning
from rbzoo.cli import main
from rbzoo.convert import OFFICIAL_ARCHS, convert_official, official_mask
from rbzoo.verdict import TAU, Certificate, count_cap
from rbzoo.zoo import import_zoo_entry
from rbzoo.data import DEFAULT_EPS, get_spec
from rbzoo.errors import CheckpointError, ConfigError, HubError, VerificationError
from topk_reference import sort_mask

CARDS = Path(__file__).resolve().parent.parent / "cards"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: these ops are small, and OpenMP spin-waiting on a shared 2-core machine
    made them ~20× slower with two."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


# ----------------------------------------------------------------------------------- official files

def _structured_scores(shape, kept: int, g: torch.Generator) -> torch.Tensor:
    """Scores whose top-`kept` leave a quarter of the output channels empty, as trained masks do."""
    rows, n = shape[0], math.prod(shape)
    per_row = n // rows
    if kept >= n:
        return (torch.rand(shape, generator=g) + 0.5) * 0.01
    empty = min(rows // 4, rows - math.ceil(kept / per_row))
    live_rows = torch.randperm(rows, generator=g)[empty:]
    slots = (live_rows.view(-1, 1) * per_row + torch.arange(per_row)).flatten()
    chosen = slots[torch.randperm(slots.numel(), generator=g)[:kept]]
    mag = torch.rand(n, generator=g) * 0.005  # pruned: below 0.005 …
    mag[chosen] = 0.005 + torch.rand(kept, generator=g) * 0.005  # … kept: at or above
    sign = torch.randint(0, 2, (n,), generator=g) * 2 - 1
    return (mag * sign).view(shape)


def _conv_before(bn: str) -> str:
    """The conv a BN normalizes: bnN → convN, shortcut.1 → shortcut.0, last → fc."""
    if bn == "last":
        return "fc"
    head, _, leaf = bn.rpartition(".")
    return f"{head}.0" if leaf == "1" else bn[: len(bn) - len(leaf)] + leaf.replace("bn", "conv")


def make_official(arch="tiny_resnet", *, keep=0.2, p=0.5, end_with_bn=True, dataset="cifar10", seed=0,
                  official_arch=None, structured=False, momentum=True, bn="forward", image=32,
                  np_lr=np.float64(0.0123)) -> dict:
    """An official-layout checkpoint dict.

    BN statistics: `bn="forward"` takes them from a train-mode pass (what training leaves, exact
    zeros for channels with no kept weight); "random" draws them at the scale a conv with that
    many kept weights per output channel produces (fast, for the big networks).
    """
    spec = get_spec(dataset)
    g = torch.Generator().manual_seed(seed)
    kw = dict(num_classes=spec.num_classes, mean=spec.mean, std=spec.std, end_with_bn=end_with_bn, keep=keep, p=p,
              materialize=False)
    with torch.device("meta" if bn == "random" else "cpu"):
        model = rbzoo.create_model(arch, **kw)
    mods = dict(model.named_modules())
    sd = {}
    for key in model.prunable_keys:
        name = key[: -len(".weight")]
        m = mods[name]
        sd[f"{name}.weight"] = torch.randint(0, 2, m.weight.shape, generator=g).float() * 2 - 1
        sd[f"{name}.scores"] = _structured_scores(m.weight.shape, m.kept, g) if structured else \
            (torch.rand(m.weight.shape, generator=g) * 2 - 1) * 0.01
    if bn == "forward":  # what training leaves: the statistics of train-mode batches
        model.load_state_dict(sd, strict=False)
        for b in model.modules():
            if isinstance(b, nn.BatchNorm2d):
                b.momentum = 1.0  # running stats = this batch's statistics
        with torch.no_grad():
            model.train()(torch.rand(4, 3, image, image, generator=g))
    for name, b in model.named_modules():
        if not isinstance(b, nn.BatchNorm2d):
            continue
        if bn == "forward":
            mean, var = b.running_mean.clone(), b.running_var.clone()
        else:  # the scale of a conv output with this many ±1 weights per channel
            scale = 0.5 * mods[_conv_before(name)].kept / b.num_features
            var = scale * (0.5 + torch.rand(b.num_features, generator=g))
            mean = 0.1 * scale**0.5 * torch.randn(b.num_features, generator=g)
        sd[f"{name}.running_mean"], sd[f"{name}.running_var"] = mean, var
        sd[f"{name}.num_batches_tracked"] = torch.tensor(78_400)
    sd = {"module.1." + k: v for k, v in sd.items()}
    scores = [k for k in sd if k.endswith(".scores")]
    state = {i: {"momentum_buffer": torch.full_like(sd[k], 1e-4)} for i, k in enumerate(scores)}
    return {
        "epoch": 312, "arch": official_arch or arch, "state_dict": sd,
        "best_valid_acc1": 46.0, "best_valid_acc5": 91.2, "best_test_acc1": 45.3, "best_test_acc5": 90.8,
        "best_train_acc1": 52.1, "best_train_acc5": 95.0,
        "optimizer": {"state": state if momentum else {}, "param_groups": [{
            "lr": np_lr, "momentum": 0.9, "dampening": 0, "weight_decay": 0.0005, "nesterov": False,
            "initial_lr": 0.1, "params": list(range(len(scores)))}]},
        "curr_valid_acc1": 44.9, "curr_test_acc1": "Not evaluated",
    }


class _Numpy1Pickler(pickle.Pickler):
    """Writes numpy scalars the way numpy 1.x did (GLOBAL numpy.core.multiarray.scalar), as in 2022."""

    def __init__(self, file, protocol=2, **kw):
        self._out, self._buf = file, io.BytesIO()
        super().__init__(self._buf, protocol, **kw)

    def dump(self, obj):
        super().dump(obj)
        data = self._buf.getvalue()
        assert b"cnumpy._core.multiarray\nscalar\n" in data
        self._out.write(data.replace(b"cnumpy._core.multiarray\nscalar\n", b"cnumpy.core.multiarray\nscalar\n"))


def save_official(obj: dict, path: Path, numpy1: bool = True) -> Path:
    if numpy1:
        mod = types.ModuleType("numpy1_pickle")
        mod.Pickler = _Numpy1Pickler
        torch.save(obj, path, pickle_module=mod)
    else:
        torch.save(obj, path)
    return path


def _unprefixed(obj):
    return {k[len("module.1."):]: v for k, v in obj["state_dict"].items()}


# ----------------------------------------------------------------------------------- tiny networks

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    obj = make_official()
    path = save_official(obj, tmp_path_factory.mktemp("official") / "tiny.pth")
    return obj, path


@pytest.mark.parametrize("numpy1", [True, False], ids=["numpy1-pickle", "numpy2-pickle"])
def test_tiny_converts_with_identical_logits(tmp_path, numpy1):
    obj = make_official(seed=1)
    src = save_official(obj, tmp_path / "official.pth", numpy1=numpy1)
    out = tmp_path / "tiny.safetensors"
    r = convert_official(src, arch="tiny_resnet", keep=0.2, p=0.5, end_with_bn=True, dataset="cifar10", out=out,
                         objective="pgd")
    assert r.max_abs_diff == 0.0 and r.out == out and r.out_bytes == out.stat().st_size
    assert r.source_bytes == src.stat().st_size and r.bn_check["ok"] and r.bn_check["sparse"] + r.bn_check["dense"] == 0

    # The file itself, checked against the official state dict without rbzoo's converter code.
    sd, ck = _unprefixed(obj), rbzoo.read(out)
    ref = rbzoo.create_model("tiny_resnet", keep=0.2, p=0.5, end_with_bn=True, materialize=False)
    modules = dict(ref.named_modules())
    assert ck.signs_mode == "explicit" and [rec.name for rec in ck.layers] == ref.prunable_keys
    for rec in ck.layers:
        name = rec.name[: -len(".weight")]
        want = sort_mask(sd[f"{name}.scores"], modules[name].keep).flatten().numpy()
        assert np.array_equal(rec.mask, want)
        assert np.array_equal(rec.signs, (sd[f"{name}.weight"].flatten().numpy() > 0)[want])
    for k, v in ck.tensors.items():
        assert torch.equal(v, sd[k]), k
    assert set(ck.tensors) == {k for k in sd if "running_" in k}
    train, source = ck.meta_json("rbzoo.train"), ck.meta_json("rbzoo.source")
    assert train == {"arch": "tiny_resnet", "dataset": "cifar10", "keep": 0.2, "p": 0.5, "end_with_bn": True,
                     "objective": "pgd", "source": "official", "official_arch": "tiny_resnet"}
    assert source["sha256"] == r.source_sha256 and source["size"] == r.source_bytes and source["file"] == "official.pth"
    assert source["record"]["epoch"] == 312 and source["record"]["curr_test_acc1"] == "Not evaluated"
    assert ck.meta_json("rbzoo.dataset")["name"] == "cifar10"


def test_cli_convert_prints_sizes_and_equivalence(tiny, tmp_path, capsys):
    _, src = tiny
    out = tmp_path / "c.safetensors"
    rc = main(["convert", str(src), "--arch", "tiny_resnet", "--keep", "0.2", "--p", "0.5", "--end-with-bn",
               "--dataset", "cifar10", "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert f"{src.stat().st_size:,} bytes" in text and f"{out.stat().st_size:,} bytes" in text
    assert "logits identical" in text and "max |Δ| = 0" in text
    assert rbzoo.read(out).digest in text


def test_equivalence_failure_aborts_and_writes_nothing(tiny, tmp_path, monkeypatch):
    """Flip one kept sign after the official logits are computed: the check must refuse the file."""
    import rbzoo.convert as conv

    real_fold = conv.fold

    def corrupting_fold(model, weights):
        w = weights["layer1.0.conv1.weight"].view(-1)
        i = int(torch.nonzero(w)[0])
        w[i] = -w[i]
        return real_fold(model, weights)

    monkeypatch.setattr(conv, "fold", corrupting_fold)
    out = tmp_path / "bad.safetensors"
    with pytest.raises(CheckpointError, match=r"equivalence check failed: .*max \|Δ\| = .*nothing written"):
        convert_official(tiny[1], arch="tiny_resnet", keep=0.2, p=0.5, end_with_bn=True, dataset="cifar10", out=out)
    assert list(tmp_path.iterdir()) == []


def test_end_with_bn_must_match(tiny, tmp_path):
    _, src = tiny
    out = tmp_path / "x.safetensors"
    with pytest.raises(ConfigError, match=r"has a final BN \(last\.\*\): pass --end-with-bn"):
        convert_official(src, arch="tiny_resnet", keep=0.2, p=0.5, end_with_bn=False, dataset="cifar10", out=out)
    plain = save_official(make_official(end_with_bn=False), tmp_path / "plain.pth")
    with pytest.raises(ConfigError, match=r"has no final BN \(last\.\*\): drop --end-with-bn"):
        convert_official(plain, arch="tiny_resnet", keep=0.2, p=0.5, end_with_bn=True, dataset="cifar10", out=out)
    assert not out.exists() and list(tmp_path.iterdir()) == [plain]
    assert convert_official(plain, arch="tiny_resnet", keep=0.2, p=0.5, end_with_bn=False, dataset="cifar10",
                            out=out).max_abs_diff == 0.0


def test_architecture_class_and_dataset_mismatches(tiny, tmp_path):
    _, src = tiny
    out = tmp_path / "x.safetensors"
    with pytest.raises(CheckpointError, match=r"does not fit cifar_resnet18 \(10 classes, with final BN\): \d+ missing key\(s\): layer1\.1\."):
        convert_official(src, arch="cifar_resnet18", end_with_bn=True, dataset="cifar10", out=out)
    with pytest.raises(CheckpointError, match=r"fc\.weight: checkpoint \[10, 16, 1, 1\], expected \[100, 16, 1, 1\].*10 outputs"):
        convert_official(src, arch="tiny_resnet", keep=0.2, p=0.5, end_with_bn=True, dataset="cifar100", out=out)
    with pytest.raises(ConfigError, match="cannot tell the dataset"):
        convert_official(src, arch="tiny_resnet", keep=0.2, p=0.5, end_with_bn=True, out=out)
    with pytest.raises(ConfigError, match="--num-classes 100 contradicts cifar10"):
        convert_official(src, arch="tiny_resnet", end_with_bn=True, dataset="cifar10", num_classes=100, out=out)
    with pytest.raises(ConfigError, match="keep must be in"):
        convert_official(src, arch="tiny_resnet", keep=1.5, end_with_bn=True, dataset="cifar10", out=out)
    official = make_official(official_arch="cResNet34")
    named = save_official(official, tmp_path / "named.pth")
    with pytest.raises(ConfigError, match=r"arch is 'cResNet34' \(rbzoo cifar_resnet34\), not --arch tiny_resnet"):
        convert_official(named, arch="tiny_resnet", keep=0.2, p=0.5, end_with_bn=True, dataset="cifar10", out=out)
    with pytest.raises(ConfigError, match="trained on cifar10, not --dataset cifar100"):
        convert_official(named, arch="cifar_resnet34", end_with_bn=True, dataset="cifar100", out=out)
    assert not out.exists()
    assert OFFICIAL_ARCHS["cResNet34_cifar100"] == ("cifar_resnet34", "cifar100")


def _evil_pickle(path: Path, marker: Path) -> None:
    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    torch.save({"state_dict": {}, "x": Evil()}, path)


@pytest.mark.parametrize("kind", ["truncated", "text", "empty", "tensor", "no-state-dict", "bare-keys", "code",
                                  "float32-scalar"])
def test_unusable_files_are_one_line_errors(tiny, tmp_path, kind):
    obj, src = tiny
    bad = tmp_path / "bad.pth"
    marker = tmp_path / "pwned"
    expect = {
        "truncated": "not a readable PyTorch checkpoint", "text": "not a PyTorch checkpoint|not a readable",
        "empty": "not a readable PyTorch checkpoint", "tensor": "expected a dict with a 'state_dict'",
        "no-state-dict": r"found a dict with keys \['a'\]", "bare-keys": "must all start with 'module.1.'",
        "code": r"refused: the pickle references (posix|nt)\.system", "float32-scalar": "refused: not a weights-only",
    }[kind]
    if kind == "truncated":
        data = src.read_bytes()
        bad.write_bytes(data[: len(data) // 2])
    elif kind == "text":
        bad.write_text("epoch: 3\nthis is not a checkpoint\n")
    elif kind == "empty":
        bad.write_bytes(b"")
    elif kind == "tensor":
        torch.save(torch.ones(3), bad)
    elif kind == "no-state-dict":
        torch.save({"a": torch.ones(2)}, bad)
    elif kind == "bare-keys":
        torch.save({**obj, "state_dict": _unprefixed(obj)}, bad)
    elif kind == "code":
        _evil_pickle(bad, marker)
    else:  # official files carry float64 scalars only; any other numpy type stays refused
        torch.save(make_official(np_lr=np.float32(0.1)), bad)
    with pytest.raises(CheckpointError, match=expect) as e:
        convert_official(bad, arch="tiny_resnet", keep=0.2, p=0.5, end_with_bn=True, dataset="cifar10",
                         out=tmp_path / "out.safetensors")
    assert "\n" not in str(e.value)
    assert not marker.exists() and not (tmp_path / "out.safetensors").exists()
    rc = main(["convert", str(bad), "--arch", "tiny_resnet", "--end-with-bn", "--dataset", "cifar10",
               "--out", str(tmp_path / "out.safetensors")])
    assert rc != 0 and not marker.exists()


def test_non_binary_weights_and_bad_scores(tmp_path):
    obj = make_official()
    obj["state_dict"]["module.1.layer1.0.conv1.weight"] *= 0.5
    src = save_official(obj, tmp_path / "fp.pth")
    with pytest.raises(CheckpointError, match=r"layer1\.0\.conv1\.weight: \d+ kept weights are not ±1"):
        convert_official(src, arch="tiny_resnet", keep=0.2, p=0.5, end_with_bn=True, dataset="cifar10", out=tmp_path / "o")
    obj = make_official()
    obj["state_dict"]["module.1.fc.scores"][0, 0] = float("nan")
    src = save_official(obj, tmp_path / "nan.pth")
    with pytest.raises(CheckpointError, match=r"fc\.scores: scores hold NaN"):
        convert_official(src, arch="tiny_resnet", keep=0.2, p=0.5, end_with_bn=True, dataset="cifar10", out=tmp_path / "o")
    obj = make_official()
    obj["state_dict"]["module.1.bn1.running_var"] = obj["state_dict"]["module.1.bn1.running_var"].double()
    src = save_official(obj, tmp_path / "f64.pth")
    with pytest.raises(CheckpointError, match=r"bn1\.running_var: float64 \(expected float32\)"):
        convert_official(src, arch="tiny_resnet", keep=0.2, p=0.5, end_with_bn=True, dataset="cifar10", out=tmp_path / "o")


def test_mask_rule_and_ties_follow_the_official_sort(tmp_path):
    g = torch.Generator().manual_seed(0)
    for n, levels in [(1, 2), (7, 2), (1000, 3), (5000, 40), (20_000, 5000)]:
        for keep in (1e-4, 0.01, 0.13, 0.5, 0.77, 0.999, 1.0):
            s = (torch.randint(0, levels, (n,), generator=g).float() - levels // 2) / levels  # many ties, ±0
            mask, tie = official_mask(s, keep)
            assert torch.equal(mask, sort_mask(s, keep)), (n, levels, keep)
            assert int(mask.sum()) == n - int((1 - keep) * n)
            j = int((1 - keep) * n)
            ordered = s.abs().sort().values
            assert tie == bool(0 < j < n and ordered[j - 1] == ordered[j])
    for keep in (0.3, 1.0):
        with pytest.raises(ValueError, match="NaN or infinite"):
            official_mask(torch.tensor([0.1, float("nan"), 0.2]), keep)
    # A layer whose cut falls inside a run of equal scores: the lowest indices are pruned first.
    obj = make_official()
    scores = obj["state_dict"]["module.1.layer2.0.conv2.scores"]
    keep = rbzoo.create_model("tiny_resnet", keep=0.2, p=0.5, end_with_bn=True, materialize=False).layer2[0].conv2.keep
    j = int((1 - keep) * scores.numel())
    order = scores.abs().flatten().argsort()
    around = order[j - 20: j + 20]  # 40 scores around the cut get the same magnitude (signs kept)
    flat = scores.view(-1)
    flat[around] = flat[around].sign() * flat.abs()[order[j]]
    src = save_official(obj, tmp_path / "ties.pth")
    r = convert_official(src, arch="tiny_resnet", keep=0.2, p=0.5, end_with_bn=True, dataset="cifar10",
                         out=tmp_path / "t.safetensors", bn_consistency=False)
    assert r.tied_layers == ["layer2.0.conv2.weight"] and r.max_abs_diff == 0.0
    rec = next(x for x in rbzoo.read(tmp_path / "t.safetensors").layers if x.name == "layer2.0.conv2.weight")
    assert np.array_equal(rec.mask, sort_mask(scores, keep).flatten().numpy())
    tied = rec.mask.reshape(-1)[np.sort(around.numpy())]
    assert not tied[:20].any() and tied[20:].all()  # the 20 lowest indices of the run are pruned


# ----------------------------------------------------------------------------------- allocation

def _official_allocation(counts: list[int], prune_rate: float, p: float) -> list[int]:
    """arch/net_utils.py: set_model_prune_rate, transcribed with numpy; returns kept counts."""
    order = sorted(range(len(counts)), key=lambda k: counts[k])
    sc = [counts[i] for i in order]
    total = int(prune_rate * np.sum(sc))
    c = prune_rate * np.sum(sc) / np.sum(np.power(sc, p))
    rates = {}
    with np.errstate(divide="ignore", invalid="ignore"):
        for idx, (i, n) in enumerate(zip(order, sc)):
            rate = c * np.power(n, p - 1.0)
            rate = 1.0 if rate > 1 else rate
            total -= int(rate * n)
            c = total / np.sum(np.power(sc[idx + 1:], p))
            rates[i] = rate
    return [n - int((1 - rates[i]) * n) for i, n in enumerate(counts)]


@pytest.mark.parametrize("arch,classes,total", [
    ("cifar_resnet18", 10, 111_662), ("cifar_resnet34", 10, 212_685), ("cifar_resnet50", 10, 234_729),
    ("cifar_resnet34", 100, 213_146), ("imagenet_resnet34", 100, 213_224)])
def test_allocation_matches_the_official_code(arch, classes, total):
    """Kept counts per layer equal the official numpy code's, and the totals of method.md §1.5."""
    m = rbzoo.create_model(arch, num_classes=classes, end_with_bn=True, keep=0.01, p=0.1, materialize=False)
    layers = [mod for _, mod in rbzoo.pruning.subnet_layers(m)]
    assert [x.kept for x in layers] == _official_allocation([x.numel for x in layers], 0.01, 0.1)
    assert sum(x.kept for x in layers) == total


# ----------------------------------------------------------------------------------- full-size networks

@pytest.fixture(scope="module")
def rn18(tmp_path_factory):
    """Full-size cResNet18 (CIFAR10, k = 0.01, p = 0.1, last BN) with channel-structured masks."""
    obj = make_official("cifar_resnet18", keep=0.01, p=0.1, structured=True, momentum=False,
                        official_arch="cResNet18")
    return save_official(obj, tmp_path_factory.mktemp("rn18") / "rn18_cifar10_n.pth")


def test_full_size_resnet18_converts_exactly(rn18, tmp_path):
    out = tmp_path / "rn18.safetensors"
    r = convert_official(rn18, arch="cifar_resnet18", keep=0.01, p=0.1, end_with_bn=True, out=out)
    assert r.dataset == "cifar10"  # from the file's arch 'cResNet18'
    assert r.max_abs_diff == 0.0 and r.kept == 111_662 and r.n_weights == 11_164_352
    assert r.bn_check["ok"] and r.bn_check["sparse"] == r.bn_check["dense"] == 0 and r.bn_check["checked"] == 4810
    assert r.official_pool_rel_diff is not None and r.official_pool_rel_diff < 1e-5


@pytest.mark.parametrize("option,value,kind", [("p", 1.0, "pruned whole"), ("keep", 0.05, "silent channels")])
def test_wrong_keep_or_p_contradicts_bn_statistics(rn18, tmp_path, option, value, kind):
    args = {"keep": 0.01, "p": 0.1, option: value}
    out = tmp_path / "x.safetensors"
    with pytest.raises(ConfigError, match="BatchNorm statistics contradict the masks") as e:
        convert_official(rn18, arch="cifar_resnet18", end_with_bn=True, out=out, **args)
    assert "--no-bn-check" in str(e.value) and kind in str(e.value) and not out.exists()


def test_bn_check_can_be_overridden(tmp_path, capsys):
    src = save_official(make_official(structured=True), tmp_path / "s.pth")
    args = ["convert", str(src), "--arch", "tiny_resnet", "--keep", "0.5", "--p", "0.5", "--end-with-bn",
            "--dataset", "cifar10", "--out", str(tmp_path / "o.safetensors")]
    assert main(args) == 2
    assert "BatchNorm statistics contradict" in capsys.readouterr().err
    assert not (tmp_path / "o.safetensors").exists()
    assert main(args + ["--no-bn-check"]) == 0
    assert "BN check: skipped" in capsys.readouterr().out
    # Nothing else can tell: the masks of keep 0.5 still give logits identical to the official
    # forward pass computed with keep 0.5; only `rbzoo pull`'s exact clean count would catch it.
    assert rbzoo.read(tmp_path / "o.safetensors").meta_json("rbzoo.train")["keep"] == 0.5


def test_full_size_resnet34_is_small(tmp_path, capsys):
    obj = make_official("cifar_resnet34", keep=0.01, p=0.1, official_arch="cResNet34", seed=3, bn="random",
                        momentum=False)
    src = save_official(obj, tmp_path / "rn34_cifar10_n.pth")
    r = convert_official(src, arch="cifar_resnet34", keep=0.01, p=0.1, end_with_bn=True, out=tmp_path / "rn34.safetensors")
    assert r.max_abs_diff == 0.0 and r.kept == 212_685
    assert r.out_bytes <= 350_000
    assert r.float32_bytes == 4 * (21_265_088 + 2 * 8_522)
    with capsys.disabled():
        print(f"\n[rn34 cifar10] official file {r.source_bytes:,} bytes -> converted {r.out_bytes:,} bytes "
              f"(float32 weights + BN {r.float32_bytes:,} bytes)")


def test_imagenet_downsample_layout(tmp_path):
    obj = make_official("imagenet_resnet18", keep=0.01, p=0.1, dataset="imagenet100", official_arch="ResNet18_imagenet100",
                        momentum=False, bn="random")
    assert "module.1.layer2.0.downsample.0.scores" in obj["state_dict"]
    assert "module.1.layer2.0.downsample.1.running_var" in obj["state_dict"]
    src = save_official(obj, tmp_path / "rn18_imagenet100.pth")
    r = convert_official(src, arch="imagenet_resnet18", end_with_bn=True, out=tmp_path / "i.safetensors", check_size=64)
    assert r.dataset == "imagenet100" and r.max_abs_diff == 0.0 and r.official_pool_rel_diff is None
    assert rbzoo.read(tmp_path / "i.safetensors").arch["mean"] == list(get_spec("imagenet100").mean)


# ----------------------------------------------------------------------------------- zoo import

def _card(name="tiny-cifar10", url=None, sha=None, n=50, correct=0) -> dict:
    return {"rbzoo": {"name": name, "arch": {"id": "tiny_resnet", "num_classes": 10, "end_with_bn": True},
                      "keep": 0.2, "p": 0.5, "objective": "pgd", "dataset": "cifar10", "source_url": url,
                      "source_sha256": sha, "expected": {"n_examples": n, "clean_correct": correct}}}


def test_import_zoo_entry_from_a_local_file(tiny, tmp_path):
    _, src = tiny
    path = import_zoo_entry(_card(), src, cache_dir=tmp_path)
    assert path.parent == tmp_path and path.name.startswith("tiny-cifar10-")
    assert rbzoo.read(path).meta_json("rbzoo.source")["file"] == src.name
    stamp = path.stat().st_mtime_ns
    assert import_zoo_entry(_card(), src, cache_dir=tmp_path) == path and path.stat().st_mtime_ns == stamp  # reused
    # The cache key covers every conversion input: another BN check or keep is another conversion.
    assert import_zoo_entry(_card(), src, cache_dir=tmp_path, bn_check=False) != path
    other = _card()
    other["rbzoo"]["p"] = 0.25
    assert import_zoo_entry(other, src, cache_dir=tmp_path, bn_check=False) not in (path,)
    with pytest.raises(VerificationError, match="not the official file"):
        import_zoo_entry(_card(sha="0" * 64), src, cache_dir=tmp_path)
    with pytest.raises(HubError, match="--source FILE"):
        import_zoo_entry(_card(), None, cache_dir=tmp_path)


def test_import_zoo_entry_downloads_the_source(tiny, tmp_path):
    sys.path.insert(0, str(Path(__file__).parent))
    from test_fetch import FileServer

    _, src = tiny
    data = src.read_bytes()
    with FileServer(data) as srv:
        srv.drop_after, srv.drops = 70_000, 1  # the first transfer breaks; the import resumes it
        path = import_zoo_entry(_card(url=srv.url), None, cache_dir=tmp_path, progress=False)
        assert (tmp_path / "official" / "tiny-cifar10.pth").read_bytes() == data
        assert any(r[1] for r in srv.requests)  # resumed with a Range request
        assert rbzoo.read(path).meta_json("rbzoo.source")["sha256"] == rbzoo.fetch.sha256_file(src)[0]


# ----------------------------------------------------------------------------------- the nine cards

ZOO = {  # method.md §10, the README's model zoo: (arch, dataset, objective, clean %, robust %)
    "rn34-cifar10-pgd": ("cifar_resnet34", "cifar10", "pgd", 77.30, 45.06),
    "rn34-cifar10-fast": ("cifar_resnet34", "cifar10", "fast", 81.63, 40.77),
    "rn34-cifar100-pgd": ("cifar_resnet34", "cifar100", "pgd", 60.16, 34.83),
    "rn34-cifar100-fast": ("cifar_resnet34", "cifar100", "fast", 63.73, 34.45),
    "rn34-imagenet100-fast": ("imagenet_resnet34", "imagenet100", "fast", 58.94, 33.04),
    "rn18-cifar10-pgd": ("cifar_resnet18", "cifar10", "pgd", 72.35, 39.65),
    "rn18-cifar10-fast": ("cifar_resnet18", "cifar10", "fast", 66.12, 30.86),
    "rn50-cifar10-pgd": ("cifar_resnet50", "cifar10", "pgd", 76.66, 42.72),
    "rn50-cifar10-fast": ("cifar_resnet50", "cifar10", "fast", 78.24, 37.93),
}


def _front_matter(path: Path) -> dict:
    text = path.read_text("utf-8")
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n", 2)[1])


def test_the_nine_cards():
    from rbzoo.cards import load_card

    assert sorted(p.stem for p in CARDS.glob("rn*-*.md")) == sorted(ZOO)
    urls = set()
    for name, (arch, dataset, objective, clean, robust) in ZOO.items():
        path = CARDS / f"{name}.md"
        load_card(path)  # the hub's schema validator
        rb = _front_matter(path)["rbzoo"]
        n = 5000 if dataset == "imagenet100" else 10_000
        exp = rb["expected"]
        assert (rb["name"], rb["dataset"], rb["objective"], rb["keep"], rb["p"]) == (name, dataset, objective, 0.01, 0.1)
        assert rb["claimed"] == {"clean_acc": clean, "robust_acc": robust}
        assert exp["n_examples"] == n and exp["clean_correct"] == round(clean * n / 100)
        assert f"{100 * exp['clean_correct'] / n:.2f}" == f"{clean:.2f}"  # an exact count behind the 2 decimals
        assert rb["eps"] == DEFAULT_EPS[dataset]
        assert rb["repo_id"] is rb["revision"] is rb["checkpoint_sha256"] is rb["checkpoint_bytes"] is None
        model = rbzoo.create_model(arch, num_classes=get_spec(dataset).num_classes, mean=get_spec(dataset).mean,
                                   std=get_spec(dataset).std, end_with_bn=True, materialize=False)
        assert rb["arch"] == model.arch  # what the converted checkpoint will record
        n_w = sum(mod.numel for _, mod in rbzoo.pruning.subnet_layers(model))
        bn = sum(v.numel() for k, v in model.state_dict().items() if "running_" in k)
        assert rb["float32_bytes"] == 4 * (n_w + bn)
        assert rb["source_url"].startswith("https://onedrive.live.com/download?cid=BDAB630C72C069ED")
        urls.add(rb["source_url"])
        body = path.read_text("utf-8").split("---\n", 2)[2]
        for needle in (f"rbzoo pull {name}", f"rbzoo eval {name}", "2021", "liu2022robust", "float32"):
            assert needle in body, (name, needle)
    assert len(urls) == 9
    assert "resid=BDAB630C72C069ED%2148431&authkey=AMvdxFxlNZ38r8A" in _front_matter(CARDS / "rn34-cifar10-pgd.md")["rbzoo"]["source_url"]


# ------------------------------------------------------------------- rbzoo pull of an imported entry

def _zoo_card(cards: Path, url, correct: int, name="tiny-import") -> Path:
    from rbzoo.cards import build_card

    arch = rbzoo.create_model("tiny_resnet", end_with_bn=True, materialize=False).arch
    rb = {"name": name, "repo_id": None, "revision": None, "checkpoint": "model.safetensors",
          "checkpoint_sha256": None, "checkpoint_bytes": None, "model_digest": None, "float32_bytes": 100_000, "arch": arch,
          "keep": 0.2, "p": 0.5, "score_init_scale": 0.01, "objective": "pgd", "dataset": "cifar10",
          "eps": 8 / 255, "expected": {"n_examples": 50, "clean_correct": correct, "predictions_sha256": None,
                                       "data_sha256": None, "certificate_sha256": None, "profile": None},
          "source_url": url, "source_sha256": None, "claimed": {"clean_acc": correct * 2.0, "robust_acc": None}}
    cards.mkdir(exist_ok=True)
    path = cards / f"{name}.md"
    path.write_text(build_card(rb).render())
    return path


def test_pull_of_an_imported_entry_downloads_converts_and_verifies(tiny, tmp_path, cifar10_root, monkeypatch, capsys):
    """`rbzoo pull NAME` for a card with no Hub repo: fetch the authors' file, convert, check the count."""
    sys.path.insert(0, str(Path(__file__).parent))
    from test_fetch import FileServer

    from rbzoo.data import get_dataset
    from rbzoo.exact import clean_accuracy

    monkeypatch.setenv("RBZOO_HOME", str(tmp_path / "home"))
    _, src = tiny
    probe = clean_accuracy(rbzoo.load(import_zoo_entry(_card(), src, cache_dir=tmp_path / "probe")),
                           get_dataset("cifar10", "test", cifar10_root))
    correct = probe.clean_correct
    # The paper's counts were made on the authors' GPUs (profile `fast`): its near-ties are excused.
    slack = min(len(Certificate.of(probe).near_ties(TAU["fast"])), count_cap(50)) + 1
    wrong = correct + slack if correct + slack <= 50 else correct - slack
    cards = tmp_path / "cards"
    with FileServer(src.read_bytes()) as srv:
        _zoo_card(cards, srv.url, correct)
        args = ["pull", "tiny-import", "--cards-dir", str(cards), "--data-dir", str(cifar10_root)]
        assert main(args) == 0
        out = " ".join(capsys.readouterr().out.split())
        assert f"verified (count only): {correct}/50" in out and "no per-sample reference" in out
        assert "--write-card" in out  # the paper's counts came from other hardware: offer this machine's reference
        assert main(args) == 0  # recorded: instant the second time
        assert "verified earlier (count only)" in " ".join(capsys.readouterr().out.split())
        # --write-card publishes this machine's reference beside the card (the writer rule: the card
        # exists, so only with --force); a fresh machine is then exact.
        before = (cards / "tiny-import.md").read_bytes()
        assert main(args + ["--write-card"]) == 2 and "pass --force" in capsys.readouterr().err
        assert (cards / "tiny-import.md").read_bytes() == before
        assert main(args + ["--write-card", "--force"]) == 0
        out = " ".join(capsys.readouterr().out.split())
        assert "wrote" in out and (cards / "tiny-import.certificate.json").is_file()
        written = rbzoo.cards.load_card(cards / "tiny-import.md")
        assert written.rb["model_digest"] is not None and written.expected["certificate_sha256"] is not None
        monkeypatch.setenv("RBZOO_HOME", str(tmp_path / "fresh-home"))
        assert main(args) == 0
        out = " ".join(capsys.readouterr().out.split())
        assert f"verified (exact): {correct}/50" in out and "the card's certificate" in out
        assert main(args + ["--robust"]) == 0  # no robust claim on this card: said, not failed
        assert "claims no robust accuracy" in capsys.readouterr().out
        # `rbzoo eval NAME` resolves the imported entry too; its evidence goes onto the card with
        # --write-card --results, proved first, and a later `pull --robust` proves it again.
        monkeypatch.setenv("RBZOO_CARDS", str(cards))
        assert main(["eval", "tiny-import", "--pgd", "1", "--chunk-size", "50", "--data-dir", str(cifar10_root),
                     "--out", str(tmp_path / "r.json")]) == 0
        r = json.loads((tmp_path / "r.json").read_text())
        assert r["clean_correct"] == correct and r["evidence"]["n"] == correct - r["robust_correct"]
        assert main(args + ["--write-card", "--results", str(tmp_path / "r.json"), "--force"]) == 0
        claimed = rbzoo.cards.load_card(cards / "tiny-import.md").rb["claimed"]
        assert claimed["robust_correct"] == r["robust_correct"] and claimed["evidence_sha256"] == r["evidence"]["sha256"]
        assert (cards / "tiny-import.evidence.safetensors").is_file() and (cards / "tiny-import.results.json").is_file()
        capsys.readouterr()
        assert main(args + ["--robust"]) == 0
        breaks = correct - r["robust_correct"]
        out = " ".join(capsys.readouterr().out.split())
        bound = f"{100 * r['robust_correct'] / 50:.2f} %"
        assert f"{breaks}/{breaks} breaks proved" in out and f"proved here: ≤ {bound}" in out, out
        # The zoo listing says what was proved about the evidence this card pins, and only that.
        from rbzoo.verified import list_zoo

        status = {e.card.name: e.status for e in list_zoo(cards)}
        assert status["tiny-import"] == f"verified; robust ≤ {bound}", status
    # A card claiming another count: the pull fails (exit 3) and says by how much.
    _zoo_card(cards, None, wrong, name="tiny-wrong")
    assert main(["pull", "tiny-wrong", "--cards-dir", str(cards), "--data-dir", str(cifar10_root),
                 "--source", str(src)]) == 3
    err = capsys.readouterr().err
    assert f"{correct}/50 correct, the reference says {wrong}/50 (difference {correct - wrong:+d}" in err
    assert err.count("\n") == 1
    # No URL and no --source: a one-line error saying what to do.
    assert main(["pull", "tiny-wrong", "--cards-dir", str(cards), "--data-dir", str(cifar10_root)]) == 2
    assert "--source FILE" in capsys.readouterr().err


def test_young_bn_statistics_are_not_blamed_on_keep_p(tmp_path, cifar10_root, monkeypatch, capsys):
    """Statistics with 8 updates cannot confirm or contradict keep/p: say so (not "wrong --keep/--p"),
    and let both `convert` and `pull` go on with --no-bn-check, saying what is then left unproven."""
    obj = make_official(structured=True)
    for k in obj["state_dict"]:
        if k.endswith("num_batches_tracked"):
            obj["state_dict"][k] = torch.tensor(8)
    src = save_official(obj, tmp_path / "young.pth")
    out = tmp_path / "y.safetensors"
    args = ["convert", str(src), "--arch", "tiny_resnet", "--keep", "0.2", "--p", "0.5", "--end-with-bn",
            "--dataset", "cifar10", "--out", str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "too young to judge (only 8 updates" in err and "contradict the masks" not in err and "--no-bn-check" in err
    assert err.count("\n") == 1 and not out.exists()
    assert main(args + ["--no-bn-check"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "does NOT prove: that these are the keep/p the model was trained with" in text
    assert "BN check: skipped" in text
    # `rbzoo pull` of an imported entry: the same refusal, and --no-bn-check reaches the conversion.
    monkeypatch.setenv("RBZOO_HOME", str(tmp_path / "home"))
    from rbzoo.data import get_dataset
    from rbzoo.exact import clean_accuracy

    correct = clean_accuracy(rbzoo.load(out), get_dataset("cifar10", "test", cifar10_root)).clean_correct
    _zoo_card(tmp_path / "cards", None, correct, name="tiny-young")
    pull = ["pull", "tiny-young", "--cards-dir", str(tmp_path / "cards"), "--data-dir", str(cifar10_root),
            "--source", str(src)]
    assert main(pull) == 2 and "too young to judge" in capsys.readouterr().err
    assert main(pull + ["--no-bn-check"]) == 0  # a --source no hash pins: reproduced, but never "verified"
    assert f"NOT verified: unpinned source (count only): {correct}/50" in " ".join(capsys.readouterr().out.split())
