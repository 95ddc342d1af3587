"""`rbzoo plot`: the numbers behind each figure, and every kind rendered from real small inputs."""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import rbzoo
from rbzoo import figures as F
from rbzoo import plot as P
from rbzoo.cli import main
from rbzoo.errors import CheckpointError, ConfigError, DataError
import rbzoo.data

EPS = 8 / 255


# --------------------------------------------------------------------------------------------
# Small real inputs: a tiny run (a few real score updates), its metrics.jsonl, a results file, cards


def _train_config(keep, p, seed):
    return {"arch": "tiny_resnet", "dataset": "cifar10", "keep": keep, "p": p, "score_init_scale": 1.0,
            "score_mode": "none", "objective": "pgd", "epochs": 3, "batch_size": 16, "lr": 0.5, "seed": seed,
            "attack": {"eps": EPS, "alpha": 2 / 255, "steps": 1}, "end_with_bn": True, "paper_compat": False}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny_resnet trained for three 'epochs' of SGD on the scores (random data), with its
    initial and final checkpoints, metrics.jsonl, a results JSON and two model cards."""
    root = tmp_path_factory.mktemp("plotrun")
    keep, p, seed = 0.2, 0.5, 5
    model = rbzoo.create_model("tiny_resnet", keep=keep, p=p, end_with_bn=True, seed=seed, score_init_scale=1.0)
    rbzoo.save(model.eval(), root / "initial.safetensors", metadata={"rbzoo.train": _train_config(keep, p, seed)})
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(16, 3, 16, 16, generator=g), torch.randint(0, 10, (16,), generator=g)
    opt = torch.optim.SGD([prm for prm in model.parameters() if prm.requires_grad], lr=0.5)
    records = []
    for epoch in range(3):
        model.train()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        rec = {"epoch": epoch, "lr": 0.5 * (1 + math.cos(math.pi * epoch / 3)) / 2, "train_loss": loss.item()}
        if epoch != 1:  # epochs without evaluation carry nulls or leave the fields out
            model.eval()
            with torch.no_grad():
                acc = float((model(x).argmax(1) == y).float().mean())
            rec.update(val_clean_acc=acc, val_robust_acc=acc / 2, test_clean_acc=acc, test_robust_acc=None)
        records.append(rec)
    ckpt = root / "model.safetensors"
    rbzoo.save(model.eval(), ckpt, metadata={"rbzoo.train": _train_config(keep, p, seed),
                                             "rbzoo.dataset": rbzoo.data.dataset_metadata("cifar10")})
    (root / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    sha = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    results = _results(str(ckpt), sha)
    (root / "results.json").write_text(json.dumps(results, indent=2))
    (root / "c10.md").write_text(_card("rn34-cifar10-pgd", "cifar10", 77.30, 45.06, 270_000, 85_060_352))
    (root / "c100.md").write_text(_card("rn34-cifar100-pgd", "cifar100", 50.10, 22.50, 275_000, 85_244_672))
    return {"root": root, "ckpt": ckpt, "initial": root / "initial.safetensors", "sha": sha, "records": records}


def _results(path, sha, robust_after=None):
    after = {"apgd-ce": 0.3125, "apgd-t": 0.25, "fab-t": 0.25, "square": 0.1875} if robust_after is None else robust_after
    return {
        "rbzoo_results": 1, "model_digest": "0" * 64, "model": {"path": path, "arch": "tiny_resnet", "file_sha256": sha},
        "dataset": "cifar10", "split": "test", "n_examples": 16, "subset": {"mode": "first", "seed": None},
        "clean_correct": 7, "clean_acc": 0.4375, "predictions_sha256": "1" * 64, "data_sha256": "2" * 64,
        "robust_correct": 3 if after else None, "robust_acc": 0.1875 if after else None,
        "attack": {"norm": "Linf", "eps": EPS, "version": "standard", "attacks": list(after), "seed": 0, "chunk_size": 16} if after else None,
        "robust_acc_after": after, "wilson95": {"clean": [0.23, 0.67], "robust": [0.07, 0.43]},
        "robust_flags": None, "warnings": [], "wall_s": 1.0, "versions": {}, "device": "cpu", "numerics": "fp32",
    }


def _card(name, dataset, clean, robust, size, f32, sha=None):
    return f"""---
library_name: rbzoo
license: mit
tags: [rbzoo, adversarial-robustness, binary-neural-networks, pruning, autoattack]
datasets: [{dataset}]
model-index:
- name: {name}
  results:
  - task: {{type: image-classification, name: Image Classification}}
    dataset: {{type: {dataset}, name: {dataset.upper()}, split: test}}
    metrics:
    - {{type: accuracy, name: Clean accuracy, value: {clean}}}
    - {{type: robust_accuracy, name: AutoAttack robust accuracy, value: {robust},
       args: {{norm: Linf, eps: 0.031372549, version: standard}}}}
rbzoo:
  name: {name}
  repo_id: null
  revision: null
  checkpoint: model.safetensors
  checkpoint_sha256: {sha or 'null'}
  checkpoint_bytes: {size if size is not None else 'null'}
  float32_bytes: {f32}
  arch: {{id: cifar_resnet34, num_classes: 10, end_with_bn: true}}
  keep: 0.01
  p: 0.1
  score_init_scale: 0.01
  objective: pgd
  dataset: {dataset}
  eps: 0.031372549
  expected: {{n_examples: 10000, clean_correct: 7730, predictions_sha256: null, data_sha256: null}}
  source_url: null
  source_sha256: null
  claimed: {{clean_acc: {clean}, robust_acc: {robust}}}
---

# {name}

A card body.
"""


# --------------------------------------------------------------------------------------------
# Image checks


def _assert_image(path: Path, fmt: str) -> None:
    data = path.read_bytes()
    assert len(data) > 2000
    if fmt == "png":
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        img = Image.open(io.BytesIO(data))
        assert img.format == "PNG"
        px = np.asarray(img.convert("L"))
        assert px.shape[0] > 200 and px.shape[1] > 200
        assert px.std() > 5 and (px < 128).mean() > 0.002  # not blank: dark ink on white
    elif fmt == "pdf":
        assert data.startswith(b"%PDF") and data.rstrip().endswith(b"%%EOF")
    else:
        root = ET.fromstring(data)
        assert root.tag.endswith("svg")
        assert sum(1 for el in root.iter() if el.tag.endswith(("path", "use"))) > 20


def _no_leftovers(folder: Path) -> None:
    assert not [p for p in folder.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp")]


# --------------------------------------------------------------------------------------------
# Numbers: pure functions


def _random_mask(shape, kept, seed):
    m = np.zeros(int(np.prod(shape)), bool)
    m[np.random.default_rng(seed).choice(m.size, kept, replace=False)] = True
    return m.reshape(shape)


def test_channel_and_kernel_counts():
    mask = _random_mask((6, 4, 3, 3), 50, 1)
    out, inp = F.channel_counts(mask)
    assert out.sum() == inp.sum() == 50
    assert [int(mask[o].sum()) for o in range(6)] == out.tolist()
    assert [int(mask[:, i].sum()) for i in range(4)] == inp.tolist()
    hist = F.occupancy_histogram(mask)
    assert len(hist) == 10 and hist.sum() == 6 * 4 and (np.arange(10) * hist).sum() == 50
    mask[2] = False
    mask[:, 3] = False
    assert F.empty_channels(mask) == (1, 1)
    with pytest.raises(ValueError):
        F.channel_counts(np.zeros((3, 3), bool))


def test_random_baseline():
    shape, kept = (8, 5, 3, 3), 70
    r = F.random_statistics(shape, kept, trials=400, seed=3)
    assert (r["out"].sum(1) == kept).all() and (r["in"].sum(1) == kept).all()
    assert (r["hist"].sum(1) == 8 * 5).all() and ((r["hist"] * np.arange(10)).sum(1) == kept).all()
    # Uniform placement: every output channel expects kept/Cout, every input channel kept/Cin.
    assert np.allclose(r["out"].mean(0), kept / 8, atol=0.6)
    assert np.allclose(r["in"].mean(0), kept / 5, atol=0.8)
    # Expected kernel occupancy is hypergeometric: E[#kernels with j kept] = Cout·Cin·P(j).
    n, kk = int(np.prod(shape)), 9
    expect = [40 * math.comb(kk, j) * math.comb(n - kk, kept - j) / math.comb(n, kept) for j in range(kk + 1)]
    assert np.allclose(r["hist"].mean(0), expect, atol=0.8)
    again = F.random_statistics(shape, kept, trials=400, seed=3)
    assert all(np.array_equal(r[k], again[k]) for k in r)
    assert not np.array_equal(F.random_statistics(shape, kept, 400, seed=4)["out"], r["out"])
    b = F.band(r["out"])
    assert all(lo <= m <= hi for lo, m, hi in zip(b["lo"], b["mean"], b["hi"]))
    full = F.random_statistics(shape, n, trials=2, seed=0)
    assert (full["empty_out"] == 0).all() and (full["hist"][:, -1] == 40).all()
    with pytest.raises(ValueError):
        F.random_statistics(shape, n + 1, 1, 0)


def test_spy_matrix_and_pooling():
    mask = _random_mask((3, 2, 3, 3), 20, 2)
    spy = F.spy_matrix(mask)
    assert spy.shape == (9, 6) and spy.sum() == 20
    for o, i, a, b in np.ndindex(mask.shape):
        assert spy[o * 3 + a, i * 3 + b] == mask[o, i, a, b]
    big = np.zeros((1000, 700), bool)
    big[999, 0] = big[10, 650] = True
    pooled, f = F.pool_spy(big, max_side=256)
    assert f == 4 and pooled.shape == (250, 175) and pooled.sum() == 2 and pooled[249, 0] and pooled[2, 162]
    same, f1 = F.pool_spy(spy)
    assert f1 == 1 and np.array_equal(same, spy)


def test_jaccard_and_random_expectation():
    a = _random_mask((4, 4, 3, 3), 30, 5)
    assert F.jaccard(a, a) == 1.0
    assert F.jaccard(a, ~a) == 0.0
    assert F.jaccard(np.zeros(5, bool), np.zeros(5, bool)) == 1.0
    assert F.jaccard(np.array([1, 1, 0, 0], bool), np.array([0, 1, 1, 0], bool)) == pytest.approx(1 / 3)
    assert F.random_jaccard(100, 10, 10) == pytest.approx(1 / 19)
    assert F.random_jaccard(50, 50, 50) == 1.0
    js = [F.jaccard(_random_mask((100,), 20, s), _random_mask((100,), 30, s + 1000)) for s in range(300)]
    assert np.mean(js) == pytest.approx(F.random_jaccard(100, 20, 30), rel=0.1)


def test_pareto_front_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(1, 12))
        sizes = rng.integers(1, 6, n).astype(float).tolist()  # many ties
        accs = rng.integers(0, 6, n).astype(float).tolist()
        front = F.pareto_front(sizes, accs)
        dominated = {i for i in range(n) for j in range(n)
                     if sizes[j] <= sizes[i] and accs[j] >= accs[i] and (sizes[j] < sizes[i] or accs[j] > accs[i])}
        firsts = {min(j for j in range(n) if (sizes[j], accs[j]) == (sizes[i], accs[i])) for i in range(n)}
        assert set(front) == (set(range(n)) - dominated) & firsts
        assert [sizes[i] for i in front] == sorted(sizes[i] for i in front)
    assert F.pareto_front([10, 5, 20, 5, 30], [50, 30, 60, 45, 55]) == [3, 0, 2]


def test_keep_allocation_and_ps():
    ns = [100, 10_000, 1_000_000]
    alloc = F.keep_allocation(ns, 0.01, 0.1)  # method.md §4 worked example
    assert alloc["keep"][0] == 1.0 and alloc["kept"][:2] == [100, 3870] and sum(alloc["kept"]) == pytest.approx(10_100, abs=2)
    assert F.keep_allocation(ns, 0.3, 1.0)["keep"] == pytest.approx([0.3] * 3)
    assert F.parse_ps("0, 0.5,1") == [0.0, 0.5, 1.0] and F.parse_ps(None) == list(F.DEFAULT_PS)
    for bad in ("0.5,x", "1.5", "-0.1", ""):
        with pytest.raises(ConfigError):
            F.parse_ps(bad)


# --------------------------------------------------------------------------------------------
# Numbers from real files


def test_layers_data(run, tiny_checkpoint):
    d = F.layers_data(run["ckpt"], [0.0, 1.0])
    ck = rbzoo.read(run["ckpt"])
    assert d["keep_source"] == "rbzoo.train" and d["keep"] == 0.2 and d["p"] == 0.5
    assert [r["kept"] for r in d["layers"]] == [rec.kept for rec in ck.layers]
    assert set(d["allocations"]) == {"0.0", "1.0", "0.5"}  # the trained p is always overlaid
    assert d["realised_matches_config"] is True
    assert d["allocations"]["0.5"]["kept"] == [r["kept"] for r in d["layers"]]
    assert d["allocations"]["1.0"]["keep"] == pytest.approx([0.2] * len(ck.layers), rel=0.01)  # int truncations
    # Without a training config keep is inferred and only the requested overlays are drawn.
    inf = F.layers_data(tiny_checkpoint)
    ck2 = rbzoo.read(tiny_checkpoint)
    assert inf["keep_source"] == "inferred" and inf["p"] is None and inf["realised_matches_config"] is None
    assert inf["keep"] == pytest.approx(sum(r.kept for r in ck2.layers) / sum(r.n for r in ck2.layers))
    assert set(inf["allocations"]) == {"0.0", "0.5", "1.0"}


def test_structure_data(run):
    ck = rbzoo.read(run["ckpt"])
    d = F.structure_data(ck, ["layer2.0.conv2", "fc.weight"], trials=30, seed=7)
    assert [L["name"] for L in d["layers"]] == ["layer2.0.conv2", "fc"] and d["seed"] == 7 and d["trials"] == 30
    L = d["layers"][0]
    rec = next(r for r in ck.layers if r.name == "layer2.0.conv2.weight")
    assert sum(L["out_channel"]["pruned"]) == sum(L["in_channel"]["pruned"]) == rec.kept
    assert L["out_channel"]["pruned"] == sorted(L["out_channel"]["pruned"], reverse=True)
    assert sum(L["out_channel"]["random"]["mean"]) == pytest.approx(rec.kept)
    assert sum(L["occupancy"]["pruned"]) == 16 * 16 and len(L["occupancy"]["bins"]) == 10
    assert len(L["spy"]["kept_rc"]) == rec.kept and L["spy"]["shape"] == [48, 48]
    assert d["layers"][1]["occupancy"]["bins"] == [0, 1]
    default = F.structure_data(ck, None, trials=2)
    names = [x["name"] for x in default["layers"]]
    assert 1 <= len(names) <= 3 and len(set(names)) == len(names)
    assert all(x["shape"][2] > 1 and 0 < x["kept"] < x["n"] for x in default["layers"])
    with pytest.raises(ConfigError, match="unknown layer 'layer9.conv'.*valid layers: conv1, layer1.0.conv1"):
        F.structure_data(ck, ["layer9.conv"])


def test_curves_data(run, tmp_path):
    d = F.curves_data(run["root"])
    assert d["epochs"] == 3 and d["accuracy_input_scale"] == "fraction"
    assert d["loss"]["train_loss"]["epoch"] == [0, 1, 2]
    assert d["accuracy_percent"]["val_clean_acc"]["epoch"] == [0, 2]
    assert d["accuracy_percent"]["val_clean_acc"]["value"][0] == pytest.approx(100 * run["records"][0]["val_clean_acc"])
    assert "test_robust_acc" not in d["accuracy_percent"]  # null everywhere
    assert d["lr"]["value"][0] == pytest.approx(0.5)
    # Unsorted epochs, a repeated epoch (resume: the last wins), percent input and a cut-off last line.
    f = tmp_path / "metrics.jsonl"
    f.write_text('{"epoch": 1, "val_robust_acc": 40.0}\n{"epoch": 0, "val_robust_acc": 30.0}\n'
                 '{"epoch": 1, "val_robust_acc": 45.0}\n{"epoch": 2, "val_rob')
    d = F.curves_data(f)
    assert d["accuracy_input_scale"] == "percent" and d["accuracy_percent"]["val_robust_acc"]["value"] == [30.0, 45.0]
    f.write_text('{"epoch": 0, "lr": 0.1}\nnot json\n{"epoch": 2, "lr": 0.1}\n')
    with pytest.raises(DataError, match="line 2 is not JSON"):
        F.curves_data(f)
    f.write_text('{"lr": 0.1}\n')
    with pytest.raises(DataError, match="no numeric 'epoch'"):
        F.curves_data(f)
    with pytest.raises(DataError, match="no metrics.jsonl"):
        F.curves_data(tmp_path / "..")
    with pytest.raises(DataError, match="binary|not JSON"):
        F.curves_data(run["ckpt"])


def test_attack_data(run, tmp_path):
    d = F.attack_data(run["root"] / "results.json")
    assert d["stages"] == ["clean", "apgd-ce", "apgd-t", "fab-t", "square"]
    assert d["acc_percent"] == pytest.approx([43.75, 31.25, 25.0, 25.0, 18.75])
    assert d["eps_label"] == "8/255" and d["wilson95_percent"]["clean"] == pytest.approx([23.0, 67.0])
    clean_only = tmp_path / "clean.json"
    clean_only.write_text(json.dumps(_results("x", "y", robust_after={})))
    with pytest.raises(DataError, match="clean only"):
        F.attack_data(clean_only)
    with pytest.raises(DataError, match="not a JSON"):
        F.attack_data(run["root"] / "c10.md")
    (tmp_path / "other.json").write_text('{"a": 1}')
    with pytest.raises(DataError, match="not an rbzoo results file"):
        F.attack_data(tmp_path / "other.json")


def test_zoo_data(run, tmp_path, monkeypatch):
    root = run["root"]
    # model.path as `rbzoo eval` wrote it, relative: found beside the results file from any cwd.
    (root / "rel.json").write_text(json.dumps(_results("model.safetensors", run["sha"])))
    monkeypatch.chdir(tmp_path)
    rel = F.zoo_data([root / "rel.json"])["points"][0]
    assert rel["checkpoint_bytes"] == run["ckpt"].stat().st_size and rel["name"] == "model"
    d = F.zoo_data([root / "c10.md", root / "c100.md", root / "results.json"])
    names = [p["name"] for p in d["points"]]
    assert names == ["rn34-cifar10-pgd", "rn34-cifar100-pgd", f"{root.name}/model"]
    res = d["points"][2]
    ck = rbzoo.read(run["ckpt"])
    assert res["checkpoint_bytes"] == run["ckpt"].stat().st_size and res["size_source"] == "file"
    assert res["float32_bytes"] == 4 * (sum(r.n for r in ck.layers) + sum(t.numel() for t in ck.tensors.values()))
    assert res["robust_acc"] == pytest.approx(18.75) and d["points"][0]["robust_acc"] == pytest.approx(45.06)
    assert d["pareto"] == {"cifar10": [2, 0], "cifar100": [1]}
    # A results file whose checkpoint is gone takes its size from the card with the same sha256.
    moved = tmp_path / "moved.json"
    moved.write_text(json.dumps(_results(str(tmp_path / "gone.safetensors"), run["sha"])))
    card = tmp_path / "mine.md"
    card.write_text(_card("mine", "cifar10", 43.75, 18.75, 4321, 99_999, sha=run["sha"]))
    d = F.zoo_data([moved, card])
    assert d["points"][1]["checkpoint_bytes"] == 4321 and d["points"][1]["float32_bytes"] == 99_999
    # ... and without such a card it is left out with a reason.
    d = F.zoo_data([moved, root / "c10.md"])
    assert [p["name"] for p in d["points"]] == ["rn34-cifar10-pgd"] and "size unknown" in d["skipped"][0]["reason"]
    with pytest.raises(DataError, match="no input has both"):
        F.zoo_data([moved])
    unconverted = tmp_path / "unconverted.md"
    unconverted.write_text(_card("later", "cifar10", 70.0, 40.0, None, 99_999))
    with pytest.raises(DataError, match=r"checkpoint_bytes: null \(not converted yet\) \(and 1 more\)"):
        F.zoo_data([unconverted, moved])
    with pytest.raises(DataError, match="expected a model card"):
        F.zoo_data([run["ckpt"]])
    (tmp_path / "plain.md").write_text("# just markdown\n")
    with pytest.raises(DataError, match="no YAML front matter"):
        F.zoo_data([tmp_path / "plain.md"])
    (tmp_path / "other.md").write_text("---\ntitle: hi\n---\n")
    with pytest.raises(DataError, match="not an rbzoo model card"):
        F.zoo_data([tmp_path / "other.md"])


def test_compare_data(run, tmp_path):
    d = F.compare_data(run["ckpt"], run["ckpt"])
    assert all(r["jaccard"] == 1.0 for r in d["layers"]) and d["total"]["jaccard"] == 1.0
    d = F.compare_data(run["initial"], run["ckpt"])
    ck_a, ck_b = rbzoo.read(run["initial"]), rbzoo.read(run["ckpt"])
    for row, ra, rb in zip(d["layers"], ck_a.layers, ck_b.layers):
        assert row["jaccard"] == pytest.approx(F.jaccard(ra.mask, rb.mask))
        assert row["intersection"] == int((ra.mask & rb.mask).sum())
    assert d["total"]["jaccard"] < 1.0  # training moved the masks
    other = rbzoo.create_model("tiny_resnet", width=4, keep=0.2, seed=1)
    rbzoo.save(other.eval(), tmp_path / "w4.safetensors")
    with pytest.raises(CheckpointError, match="same architecture"):
        F.compare_data(run["ckpt"], tmp_path / "w4.safetensors")


# --------------------------------------------------------------------------------------------
# Rendering every kind through the CLI


@pytest.mark.parametrize("kind,args,fmt", [
    ("layers", ["model.safetensors", "--p", "0,0.25,1"], "png"),
    ("structure", ["model.safetensors", "--layers", "conv1,fc", "--layers", "layer2.0.conv2", "--trials", "20"], "png"),
    ("structure", ["model.safetensors", "--layers", "fc", "--trials", "5"], "svg"),
    ("curves", ["."], "png"),
    ("curves", ["metrics.jsonl"], "pdf"),
    ("attack", ["results.json"], "png"),
    ("zoo", ["c10.md", "c100.md", "results.json"], "png"),
    ("zoo", ["c10.md", "results.json"], "svg"),
    ("compare", ["initial.safetensors", "model.safetensors"], "png"),
    ("compare", ["initial.safetensors", "model.safetensors"], "pdf"),
])
def test_render_every_kind(run, tmp_path, monkeypatch, capsys, kind, args, fmt):
    monkeypatch.chdir(run["root"])
    out, data = tmp_path / f"{kind}.{fmt}", tmp_path / f"{kind}.json"
    assert main(["plot", kind, *args, "--out", str(out), "--data", str(data)]) == 0, capsys.readouterr().err
    _assert_image(out, fmt)
    numbers = json.loads(data.read_text())
    assert numbers["kind"] == kind
    _no_leftovers(tmp_path)
    assert f"wrote {out}" in capsys.readouterr().out


def test_python_api_matches_data_file(run, tmp_path):
    data = P.plot_layers(run["ckpt"], tmp_path / "l.png", ps="0,1", data_out=tmp_path / "l.json")
    assert json.loads((tmp_path / "l.json").read_text()) == json.loads(json.dumps(data))
    png = (tmp_path / "l.png").read_bytes()
    P.plot_layers(run["ckpt"], tmp_path / "l.png", ps="0,1")
    assert (tmp_path / "l.png").read_bytes() == png  # no timestamps: same input, same bytes


@pytest.mark.parametrize("argv,message", [
    (["layers", "results.json"], "not a valid safetensors file"),
    (["structure", "model.safetensors", "--layers", "conv9"], "unknown layer 'conv9'; valid layers: conv1,"),
    (["curves", "model.safetensors"], "metrics.jsonl"),
    (["attack", "model.safetensors"], "not a JSON file"),
    (["attack", "c10.md"], "not a JSON file"),
    (["zoo", "model.safetensors"], "expected a model card (.md), a results file or a reproduction report (.json)"),
    (["compare", "model.safetensors"], "plot compare takes 2 inputs, got 1"),
    (["compare", "model.safetensors", "results.json"], "not a valid safetensors file"),
    (["heatmap", "model.safetensors"], "unknown plot kind 'heatmap'"),
    (["layers", "model.safetensors", "--p", "2"], "outside [0, 1]"),
    (["layers", "model.safetensors", "--layers", "fc"], "--layers only applies"),
])
def test_bad_input_one_line(run, tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(run["root"])
    out = tmp_path / "fig.png"
    assert main(["plot", *argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not out.exists()
    _no_leftovers(tmp_path)


def test_zoo_cli_warns_about_left_out_inputs(run, tmp_path, capsys):
    moved = tmp_path / "moved.json"
    moved.write_text(json.dumps(_results(str(tmp_path / "gone.safetensors"), run["sha"])))
    assert main(["plot", "zoo", str(run["root"] / "c10.md"), str(moved), "--out", str(tmp_path / "z.png")]) == 0
    err = capsys.readouterr().err
    assert "warning" in err and "moved.json" in err and "left out" in err
    _assert_image(tmp_path / "z.png", "png")


def test_usage_error_is_not_a_traceback(run, capsys):
    assert main(["plot", "layers", str(run["ckpt"])]) == 2
    assert "Missing option '--out'" in capsys.readouterr().err


def test_bad_suffix(run, tmp_path):
    with pytest.raises(ConfigError, match="use .png, .pdf or .svg"):
        P.plot_layers(run["ckpt"], tmp_path / "fig.jpg")
    assert not list(tmp_path.iterdir())


def test_failed_render_keeps_previous_file(run, tmp_path, monkeypatch):
    out = tmp_path / "fig.png"
    out.write_bytes(b"previous")

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr("matplotlib.figure.Figure.savefig", boom)
    with pytest.raises(RuntimeError):
        P.plot_attack(run["root"] / "results.json", out)
    assert out.read_bytes() == b"previous"
    _no_leftovers(tmp_path)


# --------------------------------------------------------------------------------------------
# Figures say what they show


def _legend_texts(ax) -> list[str]:
    legend = ax.get_legend()
    return [t.get_text() for t in legend.get_texts()] if legend else []


def test_curves_say_clean_or_adversarial(run, tmp_path):
    d = F.curves_data(run["root"])
    assert d["labels"]["train_loss"] == "train, on adversarial batches"  # rbzoo trains on attacked batches only
    assert d["labels"]["val_clean_acc"] == "validation, clean" and d["labels"]["val_robust_acc"] == "validation, robust (PGD)"
    f = tmp_path / "metrics.jsonl"
    f.write_text('{"epoch": 0, "objective": "pgd", "train_acc": 0.5, "train_loss": 1.0, "test_clean_acc": 0.6}\n'
                 '{"epoch": 1, "objective": "trades", "train_acc": 0.6, "train_loss": 0.9}\n')
    d = F.curves_data(f)
    assert d["objective"] == "trades" and d["labels"]["train_acc"] == "train, on adversarial batches (TRADES training attack)"
    assert d["labels"]["train_loss"].startswith("train, TRADES loss")
    fig = P.draw_curves(d)
    ax_loss, ax_acc, _ = fig.axes
    legend = _legend_texts(ax_loss) + _legend_texts(ax_acc)
    assert set(legend) == {d["labels"]["train_loss"], d["labels"]["train_acc"], "test, clean"}
    assert "train" not in legend and "adversarial" in ax_acc.get_title()


def test_compare_top_panel_shows_what_the_masks_share(run):
    d = F.compare_data(run["initial"], run["ckpt"])
    rows = d["layers"]
    assert all(r["kept_a"] == r["kept_b"] for r in rows)  # one training setting: equal counts per layer
    fig = P.draw_compare(d)
    top = fig.axes[0]
    heights = [[p.get_height() for p in c] for c in top.containers]
    both, one_only = [r["intersection"] for r in rows], [r["kept_a"] - r["intersection"] for r in rows]
    assert heights == [both, one_only]  # no longer two identical "kept" bars side by side
    assert any(v > 0 for v in one_only) and any(v > 0 for v in both)  # the fixture moved some weights
    assert _legend_texts(top)[0] == "kept in both" and "|A∖B| = |B∖A|" in _legend_texts(top)[1]
    # Different kept counts (another keep): A-only and B-only are shown apart.
    other = {**d, "layers": [{**r, "kept_b": r["kept_b"] + 1} for r in rows]}
    assert len(P.draw_compare(other).axes[0].containers) == 3


def test_zoo_counts_models_and_labels_sizes_one_way(run):
    one = F.zoo_data([run["root"] / "c10.md"])
    fig = P.draw_zoo(one)
    ax = fig.axes[0]
    assert "(1 model)" in ax.get_title()
    assert "(2 models)" in P.draw_zoo(F.zoo_data([run["root"] / "c10.md", run["root"] / "c100.md"])).axes[0].get_title()
    fig.canvas.draw()  # a narrow range (270 kB to 85 MB is wide; zoom in to one decade as well)
    for lim in (None, (15_000, 90_000)):
        if lim:
            ax.set_xlim(*lim)
            fig.canvas.draw()
        ticks = [t.get_text() for t in ax.xaxis.get_ticklabels(which="both") if t.get_visible() and t.get_text()]
        assert ticks and all(re.fullmatch(r"\d+(\.\d+)? (B|kB|MB|GB)", t) for t in ticks), ticks
    assert "20 kB" in ticks  # the minor ticks of a narrow range are labelled, in the same style


def test_attack_names_pgd_with_its_steps(run, tmp_path):
    r = _results("x", "y", robust_after={"pgd": 0.25})
    r["attack"] = {"norm": "Linf", "eps": EPS, "version": "pgd", "attacks": ["pgd"], "seed": 0, "chunk_size": 16,
                   "steps": 20, "alpha": EPS / 4, "select": "best", "random_start": True}
    d = F.attack_data(r)
    assert d["attack_label"] == "PGD-20" and d["stages"] == ["clean", "PGD-20"]
    assert "PGD-20, Linf" in P.draw_attack(d).axes[0].get_title()
    assert F.attack_data(run["root"] / "results.json")["attack_label"] == "AutoAttack standard"
    custom = {**r, "attack": {**r["attack"], "version": "custom", "attacks": ["apgd-ce"]}, "robust_acc_after": {"apgd-ce": 0.25}}
    assert F.attack_data(custom)["attack_label"] == "AutoAttack custom (apgd-ce)"


def test_plot_follows_the_writer_rule(run, tmp_path, monkeypatch, capsys):
    """An existing image is replaced only with --force; an input is never an output."""
    monkeypatch.chdir(run["root"])
    out = tmp_path / "l.png"
    assert main(["plot", "layers", "model.safetensors", "--out", str(out)]) == 0
    before = out.read_bytes()
    capsys.readouterr()
    assert main(["plot", "layers", "model.safetensors", "--out", str(out), "--p", "0,1"]) == 2
    assert "exists; pass --force" in capsys.readouterr().err and out.read_bytes() == before
    assert main(["plot", "layers", "model.safetensors", "--out", str(out), "--p", "0,1", "--force"]) == 0
    assert out.read_bytes() != before
    capsys.readouterr()
    results = run["root"] / "results.json"
    text = results.read_text()
    assert main(["plot", "attack", "results.json", "--out", str(out), "--data", "results.json", "--force"]) == 2
    assert "is the input file" in capsys.readouterr().err and results.read_text() == text
