"""`rbzoo eval` and rbzoo.evaluate / rbzoo.robust / rbzoo.resolve (in-process; tiny models, CIFAR files)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import rbzoo
import rbzoo.data
from rbzoo import resolve
from rbzoo.cli import main
from rbzoo.errors import CheckpointError, ConfigError, EvalStateError
from rbzoo.evaluate import EvalConfig, run_eval, select_indices
from rbzoo.exact import clean_accuracy, pack_flags, unpack_flags, wilson_interval
from rbzoo.robust import ChunkRecord, EvalState, chunk_seed, make_attack_spec, parse_eps

# One attack setting shared by the reference run, the direct pyautoattack comparison, the
# kill/resume test and the sharded test (tests/test_eval_processes.py): 32 points in 8 chunks.
N_POINTS, CHUNK, SEED, EPS = 32, 4, 5, 2 / 255
AA_ARGS = ["--n-examples", str(N_POINTS), "--device", "cpu", "--eps", "2/255", "--version", "custom",
           "--attacks", "apgd-ce,apgd-t", "--n-iter", "10", "--n-restarts", "1", "--chunk-size", str(CHUNK),
           "--seed", str(SEED)]


pytestmark = pytest.mark.usefixtures("one_thread")


def _train_tiny(root: Path, path: Path) -> Path:
    """A tiny_resnet whose scores are fitted to the 50 test images (most points clean-correct)."""
    ds = rbzoo.data.get_dataset("cifar10", "test", root)
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    y = torch.tensor([ds[i][1] for i in range(len(ds))])
    torch.manual_seed(0)
    model = rbzoo.create_model("tiny_resnet", keep=0.5, p=1.0, seed=3, score_init_scale=1.0).train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for _ in range(20):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    for m in model.modules():  # exact BN statistics of the data (not a running average)
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    with torch.no_grad():
        model(x)
    rbzoo.save(model.eval(), path, metadata={"rbzoo.dataset": rbzoo.data.dataset_metadata("cifar10")})
    return path


# tests/test_eval_processes.py imports these session fixtures too; pytest then holds one fixture
# definition per module, so the work is memoized here (per session temp dir) to run only once.
_MEMO: dict = {}


def _memo(key, make):
    if key not in _MEMO:
        saved = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            _MEMO[key] = make()
        finally:
            torch.set_num_threads(saved)
    return _MEMO[key]


@pytest.fixture(scope="session")
def trained_checkpoint(cifar10_root, tmp_path_factory) -> Path:
    base = tmp_path_factory.getbasetemp()
    return _memo(("trained", base), lambda: _train_tiny(cifar10_root, tmp_path_factory.mktemp("trained") / "trained.safetensors"))


@pytest.fixture(scope="session")
def reference(trained_checkpoint, cifar10_root, tmp_path_factory) -> dict:
    """An uninterrupted single-process AutoAttack run (results JSON, with its out/state paths)."""

    def make():
        out = tmp_path_factory.mktemp("reference") / "ref.json"
        state = out.with_name("ref.state")  # its own state: later runs of the same evaluation must not resume it
        assert main(["eval", str(trained_checkpoint), "--data-dir", str(cifar10_root), *AA_ARGS, "--out", str(out),
                     "--state", str(state)]) == 0
        return {"out": out, "results": json.loads(out.read_text())}

    return _memo(("reference", tmp_path_factory.getbasetemp()), make)


# --- small pieces ---------------------------------------------------------------------------------


def test_parse_eps_and_ranges():
    assert parse_eps("8/255") == 8 / 255
    assert parse_eps("0.0314") == 0.0314
    assert parse_eps(" 4 / 255 ") == 4 / 255
    for bad in ("abc", "8/", "1/0x", ""):
        with pytest.raises(ConfigError):
            parse_eps(bad)
    with pytest.raises(ConfigError, match="out of range"):
        make_attack_spec(eps="300/255")
    with pytest.raises(ConfigError, match="out of range"):
        make_attack_spec(eps="0")
    with pytest.raises(ConfigError, match="out of range"):
        make_attack_spec(norm="L2", eps=100.0, input_numel=3 * 32 * 32)
    assert make_attack_spec(norm="L2", eps=0.5).eps == 0.5
    assert make_attack_spec(eps="8/255").attacks == ("apgd-ce", "apgd-t", "fab-t", "square")
    assert make_attack_spec(eps="8/255", version="plus").attacks[-1] == "fab-t"
    with pytest.raises(ConfigError, match="unknown attack 'pgd-7'"):
        make_attack_spec(eps="8/255", version="custom", attacks=["apgd-ce", "pgd-7"])
    with pytest.raises(ConfigError, match="needs --version custom"):
        make_attack_spec(eps="8/255", attacks=["apgd-ce"])
    with pytest.raises(ConfigError, match="needs --attacks"):
        make_attack_spec(eps="8/255", version="custom")
    with pytest.raises(ConfigError, match="unknown AutoAttack version"):
        make_attack_spec(eps="8/255", version="fast")
    spec = make_attack_spec(eps="8/255", pgd_steps=10)
    assert (spec.version, spec.attacks, spec.pgd_alpha) == ("pgd", ("pgd",), 2 / 255)
    with pytest.raises(ConfigError, match="L∞ only"):
        make_attack_spec(norm="L2", eps=0.5, pgd_steps=10)


def test_wilson_pack_indices_and_chunk_seeds():
    lo, hi = wilson_interval(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-4) and hi == pytest.approx(0.5962, abs=1e-4)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    flags = np.random.default_rng(0).random(37) > 0.5
    assert np.array_equal(unpack_flags(pack_flags(flags), 37), flags)
    with pytest.raises(ValueError):
        unpack_flags(pack_flags(flags), 20)
    a = select_indices(1000, 100, "random", 3)
    assert np.array_equal(a, select_indices(1000, 100, "random", 3)) and np.all(np.diff(a) > 0)
    assert not np.array_equal(a, select_indices(1000, 100, "random", 4))
    assert np.array_equal(select_indices(1000, 5), np.arange(5))
    with pytest.raises(ConfigError, match="out of range"):
        select_indices(50, 51)
    seeds = [chunk_seed(0, i) for i in range(100)]
    assert len(set(seeds)) == 100 and seeds == [chunk_seed(0, i) for i in range(100)]
    assert chunk_seed(1, 0) != chunk_seed(0, 0) and all(0 <= s < 2**31 for s in seeds)


def test_resolve_checkpoint(tiny_checkpoint, tmp_path):
    assert resolve.resolve_checkpoint(str(tiny_checkpoint)) == tiny_checkpoint
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(CheckpointError, match="no such checkpoint or run folder"):
        resolve.resolve_checkpoint(str(run))
    (run / "last.safetensors").write_bytes(tiny_checkpoint.read_bytes())
    assert resolve.resolve_checkpoint(str(run)) == run / "last.safetensors"
    (run / "best.safetensors").write_bytes(tiny_checkpoint.read_bytes())
    assert resolve.resolve_checkpoint(str(run)) == run / "best.safetensors"
    with pytest.raises(CheckpointError, match="no such checkpoint or run folder: zoo/rn34"):
        resolve.resolve_checkpoint("zoo/rn34")  # pure: without a remote resolver, names are not looked up
    remote = lambda name: tiny_checkpoint if name == "zoo/rn34" else None  # noqa: E731
    assert resolve.resolve_checkpoint("zoo/rn34", remote) == tiny_checkpoint
    assert resolve.resolve_checkpoint(str(run), remote) == run / "best.safetensors"  # files first
    with pytest.raises(CheckpointError):
        resolve.resolve_checkpoint("zoo/other", remote)


def test_state_fingerprint_and_corrupt_chunk(tmp_path):
    fp = {"model_digest": "a" * 64, "eps": 0.1, "chunk_size": 4}
    state = EvalState.open(tmp_path / "s", fp)
    rec = ChunkRecord(0, 0, 4, chunk_seed(0, 0), np.array([True, False, True, True]))
    state.save_chunk(rec)
    assert EvalState.open(tmp_path / "s", fp).load_chunk(0).robust.tolist() == [True, False, True, True]
    with pytest.raises(EvalStateError, match=r"different evaluation \(eps 0.1 ≠ 0.2\)"):
        EvalState.open(tmp_path / "s", {**fp, "eps": 0.2})
    fresh = EvalState.open(tmp_path / "s", {**fp, "eps": 0.2}, replace="always")
    assert fresh.load_chunk(0) is None
    fresh.chunk_path(1).write_text("{not json")
    with pytest.raises(EvalStateError, match="unreadable"):
        fresh.load_chunk(1)


# --- clean accuracy -----------------------------------------------------------------------------------


def test_clean_accuracy_identical_across_runs_and_batch_sizes(trained_checkpoint, cifar10_root):
    model = rbzoo.load(trained_checkpoint)
    ds = rbzoo.data.get_dataset("cifar10", "test", cifar10_root)
    runs = [clean_accuracy(model, ds, batch_size=bs) for bs in (50, 50, 7, 1)]
    for r in runs[1:]:
        assert (r.clean_correct, r.predictions_sha256, r.data_sha256) == (runs[0].clean_correct, runs[0].predictions_sha256, runs[0].data_sha256)
        assert np.array_equal(r.predictions, runs[0].predictions)
    assert runs[0].n_examples == 50 and runs[0].clean_correct >= 35  # the fixture fits the test images

    # The CLI path (clean only) agrees with the library and across batch sizes, and records a subset's CI.
    results = [run_eval(EvalConfig(model=str(trained_checkpoint), data_dir=str(cifar10_root), device="cpu",
                                   clean_only=True, batch_size=bs)) for bs in (3, 64)]
    for r in results:
        assert (r["clean_correct"], r["predictions_sha256"], r["data_sha256"]) == (runs[0].clean_correct, runs[0].predictions_sha256, runs[0].data_sha256)
        assert r["robust_acc"] is None and r["attack"] is None and r["wilson95"] is None and r["robust_flags"] is None
    sub = run_eval(EvalConfig(model=str(trained_checkpoint), data_dir=str(cifar10_root), device="cpu", clean_only=True,
                              n_examples=20, subset="random", subset_seed=7))
    idx = select_indices(50, 20, "random", 7)
    expected = runs[0].predictions[idx] == runs[0].labels[idx]
    assert sub["clean_correct"] == int(expected.sum()) and sub["subset"] == {"mode": "random", "seed": 7}
    lo, hi = sub["wilson95"]["clean"]
    assert lo <= sub["clean_acc"] <= hi and sub["wilson95"]["robust"] is None


# --- AutoAttack ------------------------------------------------------------------------------------


def test_results_json_contract(reference, trained_checkpoint):
    r = reference["results"]
    for key in ("rbzoo_results", "model_digest", "model", "dataset", "split", "n_examples", "subset", "clean_correct",
                "clean_acc", "predictions_sha256", "data_sha256", "robust_correct", "robust_acc", "attack",
                "robust_acc_after", "wilson95", "robust_flags", "warnings", "wall_s", "versions", "device", "numerics"):
        assert key in r, key
    assert r["model_digest"] == rbzoo.read(trained_checkpoint).digest and r["model"]["arch"] == "tiny_resnet"
    assert r["attack"] == {"norm": "Linf", "eps": EPS, "version": "custom", "attacks": ["apgd-ce", "apgd-t"], "seed": SEED,
                           "chunk_size": CHUNK, "n_iter": 10, "n_restarts": 1, "numerics": "verify"}
    assert list(r["robust_acc_after"]) == ["apgd-ce", "apgd-t"]
    assert r["clean_acc"] >= r["robust_acc_after"]["apgd-ce"] >= r["robust_acc_after"]["apgd-t"] == r["robust_acc"]
    flags = unpack_flags(r["robust_flags"], N_POINTS)
    assert flags.sum() == r["robust_correct"] and 0 < r["robust_correct"] < r["clean_correct"]  # a non-trivial case
    assert r["wilson95"]["robust"][0] <= r["robust_acc"] <= r["wilson95"]["robust"][1]
    assert r["versions"]["pyautoattack"] == "0.2.0" and r["numerics"].startswith("rbzoo-pinned-v1")
    assert sorted(p.name for p in Path(r["state_dir"]).iterdir()) == [f"chunk-{i:06d}.json" for i in range(8)] + ["fingerprint.json"]


def test_autoattack_equals_pyautoattack_called_directly(reference, trained_checkpoint, cifar10_root):
    """Per chunk: pyautoattack on the chunk's clean-correct points with the chunk's seed, one batch."""
    from pyautoattack import AutoAttack

    model = rbzoo.load(trained_checkpoint)
    ds = rbzoo.data.get_dataset("cifar10", "test", cifar10_root)
    x = torch.stack([ds[i][0] for i in range(N_POINTS)])
    y = torch.tensor([ds[i][1] for i in range(N_POINTS)])
    with torch.no_grad():
        correct = (model(x).argmax(1) == y).numpy()
    direct = np.zeros(N_POINTS, dtype=bool)
    for c in range(N_POINTS // CHUNK):
        pos = np.arange(c * CHUNK, (c + 1) * CHUNK)
        pos = pos[correct[pos]]
        if len(pos) == 0:
            continue
        aa = AutoAttack(model, version="custom", attacks=["apgd-ce", "apgd-t"], eps=EPS, seed=chunk_seed(SEED, c), device="cpu")
        for attack in (aa.apgd, aa.apgd_targeted):  # --n-iter 10 --n-restarts 1, as APGDAttack(n_iter=10) derives them
            attack.n_iter = attack.n_iter_orig = 10
            attack.n_iter_2, attack.n_iter_min, attack.size_decr = 2, 1, 1
            attack.n_restarts = 1
        _, y_adv = aa.run_standard_evaluation(x[pos], y[pos], batch_size=CHUNK)
        direct[pos] = (y_adv == y[pos]).numpy()
    flags = unpack_flags(reference["results"]["robust_flags"], N_POINTS)
    assert np.array_equal(flags, direct)
    assert reference["results"]["robust_correct"] == int(direct.sum())


def test_standard_version_and_pgd_complete(trained_checkpoint, cifar10_root, tmp_path):
    common = dict(model=str(trained_checkpoint), data_dir=str(cifar10_root), device="cpu", n_examples=8, chunk_size=8)
    r = run_eval(EvalConfig(**common, eps="1/255", n_iter=3, n_queries=20, out=tmp_path / "std.json",
                            state=tmp_path / "std.state"))
    assert list(r["robust_acc_after"]) == ["apgd-ce", "apgd-t", "fab-t", "square"]
    accs = [r["clean_acc"], *r["robust_acc_after"].values()]
    assert accs == sorted(accs, reverse=True) and accs[-1] == r["robust_acc"]
    assert isinstance(r["warnings"], list) and (tmp_path / "std.state" / "chunk-000000.json").exists()
    pgd_runs = [run_eval(EvalConfig(**common, pgd_steps=5, seed=1, out=tmp_path / f"pgd{i}.json",
                                    state=tmp_path / f"pgd{i}.state")) for i in range(2)]  # two runs, not a resume
    a = pgd_runs[0]
    assert a["attack"]["version"] == "pgd" and a["attack"]["alpha"] == pytest.approx(8 / 255 / 4)
    assert a["robust_correct"] <= a["clean_correct"] and list(a["robust_acc_after"]) == ["pgd"]
    assert a["robust_flags"] == pgd_runs[1]["robust_flags"]


def test_autoattack_check_warnings_are_recorded(trained_checkpoint, cifar10_root, tmp_path):
    """AutoAttack's checks (here: softmax outputs instead of logits) land in the chunk state and the result."""
    import logging

    from rbzoo.robust import robust_evaluation

    model = nn.Sequential(rbzoo.load(trained_checkpoint), nn.Softmax(dim=1)).eval()
    ds = rbzoo.data.get_dataset("cifar10", "test", cifar10_root)
    idx = np.arange(8)
    clean = clean_accuracy(model, ds, indices=idx)
    spec = make_attack_spec(eps="2/255", version="custom", attacks=["apgd-ce"], n_iter=2, n_restarts=1, chunk_size=8)
    state = EvalState.open(tmp_path / "state", {"test": "warnings"})
    res = robust_evaluation(model, ds, idx, clean.correct_mask, spec, state)
    assert any("probability distribution" in w for w in res.warnings), res.warnings
    assert state.load_chunk(0).warnings == res.warnings and res.n_chunks == 1
    logger = logging.getLogger("auto-attack")
    assert logger.propagate and not logger.handlers  # the capture is undone


# --- bad input: one line, non-zero exit, nothing written -------------------------------------------


@pytest.fixture
def corrupted_checkpoint(tiny_checkpoint, tmp_path) -> Path:
    data = bytearray(tiny_checkpoint.read_bytes())
    data[-40] ^= 0xFF  # a BatchNorm statistic: caught by the state digest
    path = tmp_path / "corrupt.safetensors"
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("case", ["missing", "corrupted", "truncated", "eps", "attack", "classes", "l2-no-eps", "n-examples"])
def test_bad_input_is_one_line_error_and_writes_nothing(case, tiny_checkpoint, corrupted_checkpoint, cifar10_root,
                                                          cifar100_root, tmp_path, capsys):
    ckpt, data, extra = str(tiny_checkpoint), str(cifar10_root), []
    if case == "missing":
        ckpt = str(tmp_path / "nope.safetensors")
    elif case == "corrupted":
        ckpt = str(corrupted_checkpoint)
    elif case == "truncated":
        (tmp_path / "t.safetensors").write_bytes(tiny_checkpoint.read_bytes()[:100])
        ckpt = str(tmp_path / "t.safetensors")
    elif case == "eps":
        extra = ["--eps", "300/255"]
    elif case == "attack":
        extra = ["--version", "custom", "--attacks", "apgd-ce,deepfool"]
    elif case == "classes":
        extra, data = ["--dataset", "cifar100"], str(cifar100_root)
    elif case == "l2-no-eps":
        extra = ["--norm", "L2"]
    elif case == "n-examples":
        extra = ["--n-examples", "51"]
    out = tmp_path / "out" / "results.json"
    capsys.readouterr()
    rc = main(["eval", ckpt, "--data-dir", data, "--device", "cpu", "--out", str(out), *extra])
    err = capsys.readouterr().err.strip()
    assert rc != 0
    assert err.startswith("error:") and "\n" not in err, err
    assert not out.parent.exists() or not any(out.parent.iterdir())
    expected = {"missing": "no such checkpoint or run folder", "corrupted": "digest mismatch", "truncated": "not a valid safetensors",
                "eps": "out of range", "attack": "unknown attack 'deepfool'", "classes": "has 10 classes but cifar100 has 100",
                "l2-no-eps": "give --eps for L2", "n-examples": "out of range"}[case]
    assert expected in err


def test_resume_with_other_eps_or_model_is_refused(reference, trained_checkpoint, tiny_checkpoint, cifar10_root, tmp_path, capsys):
    state = reference["results"]["state_dir"]
    before = {p.name: p.read_bytes() for p in Path(state).iterdir()}
    cases = [(trained_checkpoint, ["--eps", "3/255"], "eps 0.0078"), (tiny_checkpoint, [], "model_digest")]
    for ckpt, override, message in cases:
        args = list(AA_ARGS)
        if override:
            args[args.index("--eps") + 1] = override[1]
        out = tmp_path / "refused.json"
        capsys.readouterr()
        rc = main(["eval", str(ckpt), "--data-dir", str(cifar10_root), *args, "--state", state, "--out", str(out)])
        err = capsys.readouterr().err.strip()
        assert rc != 0 and "belongs to a different evaluation" in err and message in err and "\n" not in err, err
        assert not out.exists()
    assert {p.name: p.read_bytes() for p in Path(state).iterdir()} == before  # the state is left as it was
