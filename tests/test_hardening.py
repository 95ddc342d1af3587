"""Nothing lost, nothing silent (issue 11): bad input, Ctrl-C, a full disk and concurrent updates.

Every CLI failure must be ONE line on stderr, no traceback, the documented exit code, and leave
every file as it was. The commands run in-process through `rbzoo.cli.main` (fast), except where a
real process is the point (SIGINT, two pulls at once, a full filesystem).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import warnings
from pathlib import Path

import pytest

from rbzoo.errors import RbzooWarning
from rbzoo.registry import Registry

# ------------------------------------------------------------------------------------------ registry


def test_corrupt_registry_is_moved_aside_with_a_warning(tmp_path):
    path = tmp_path / "verified.json"
    reg = Registry(path, envelope="rbzoo_registry")
    reg.update("a", {"status": "verified"})
    assert json.loads(path.read_text()) == {"rbzoo_registry": 1, "entries": {"a": {"status": "verified"}}}
    for junk in (b'{"rbzoo_registry": 1, "entries": {"a": ', b"\xff\xfe", b'{"entries": {}}', b"[1, 2]"):
        path.write_bytes(junk)
        with pytest.warns(RbzooWarning, match="verified.json was unreadable .* moved it to verified.json.corrupt-"):
            assert reg.entries() == {}
        aside = sorted(tmp_path.glob("verified.json.corrupt-*"))
        assert aside and aside[-1].read_bytes() == junk  # the old bytes are kept, not emptied
        assert not path.exists()
    path.write_bytes(b"not json")
    with pytest.warns(RbzooWarning):
        reg.update("b", {"status": "downloaded"})  # an update keeps nothing of a corrupt file but warns
    assert reg.entries() == {"b": {"status": "downloaded"}}
    assert len(list(tmp_path.glob("verified.json.corrupt-*"))) == 5


def test_first_writer_wins_and_delete(tmp_path):
    reg = Registry(tmp_path / "r.json")
    assert reg.update("k", {"v": 1}, if_absent=True) == {"v": 1}
    assert reg.update("k", {"v": 2}, if_absent=True) == {"v": 1}
    assert reg.update("k", None) is None and reg.get("k") is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a missing or valid file never warns
        assert Registry(tmp_path / "none.json").entries() == {}


def _hammer(path: str, worker: int, n: int, barrier) -> None:
    reg = Registry(path, envelope="rbzoo_registry")
    barrier.wait()  # both start together
    for i in range(n):
        reg.update(f"{worker}-{i}", {"worker": worker, "i": i})


def test_concurrent_updates_lose_nothing(tmp_path):
    """Two processes updating at once: every record survives (an unlocked read-modify-write loses some)."""
    path = str(tmp_path / "verified.json")
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_hammer, args=(path, w, 150, barrier)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    entries = Registry(path, envelope="rbzoo_registry").entries()
    assert sorted(entries) == sorted(f"{w}-{i}" for w in range(2) for i in range(150))
    assert not list(tmp_path.glob("*.corrupt-*")) and not list(tmp_path.glob(".*.tmp"))


# ------------------------------------------------------------------------------------------ bad input

import hashlib  # noqa: E402
import pickle  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

from rbzoo.cli import main  # noqa: E402

from test_convert import make_official, save_official  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


class _Hostile:
    """Unpickling this runs os.mkdir(marker): what a malicious CIFAR batch file would do."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (self.marker,)


@pytest.fixture(scope="module")
def ws(tmp_path_factory, tiny_checkpoint, cifar10_root):
    """A workspace: a checkpoint, an official file, a run folder, a zoo folder, a hostile data dir."""
    root = tmp_path_factory.mktemp("ws")
    shutil.copy(tiny_checkpoint, root / "ckpt.safetensors")
    save_official(make_official(), root / "official.pth")
    (root / "existing.safetensors").write_bytes(b"keep me")
    (root / "folder").mkdir()
    (root / "run").mkdir()
    shutil.copy(tiny_checkpoint, root / "run" / "best.safetensors")
    assert main(["push", str(root / "ckpt.safetensors"), "--to", str(root / "zoo"), "--data-dir", str(cifar10_root)]) == 0
    hostile = root / "hostile" / "cifar-10-batches-py"
    shutil.copytree(cifar10_root / "cifar-10-batches-py", hostile)
    (hostile / "test_batch").write_bytes(pickle.dumps({"data": _Hostile(str(root / "PWNED")), "labels": []}))
    # a plain pickle (protocol 5): torch warns about its protocol before refusing it
    (root / "evil.pth").write_bytes(pickle.dumps({"state_dict": _Hostile(str(root / "PWNED"))}, protocol=5))
    shutil.copytree(root / "zoo", root / "zoo-bad")  # a --to folder whose model no longer matches its card
    model = bytearray((root / "zoo-bad" / "model.safetensors").read_bytes())
    model[-1] ^= 1
    (root / "zoo-bad" / "model.safetensors").write_bytes(bytes(model))
    return {"root": root, "data": cifar10_root}


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


CONVERT = ["convert", "{root}/official.pth", "--arch", "tiny_resnet", "--keep", "0.2", "--p", "0.5", "--end-with-bn",
           "--dataset", "cifar10"]
EVAL = ["eval", "{root}/ckpt.safetensors", "--data-dir", "{data}", "--n-examples", "4", "--device", "cpu"]

# (id, argv, exit code, a piece of the one-line message). The bad-input table of issue 11.
BAD_INPUT = [
    ("markup-in-error", ["info", "[/x]"], 2, "no such checkpoint or run folder: [/x]"),
    ("markup-in-missing-file", ["eval", "[bold]x[/bold].safetensors"], 2, "[bold]x[/bold].safetensors"),
    ("eps-division-by-zero", EVAL + ["--eps", "1/0"], 2, "bad eps '1/0': division by zero"),
    ("alpha-division-by-zero", EVAL + ["--pgd", "2", "--alpha", "2/0"], 2, "bad eps '2/0': division by zero"),
    ("eps-not-a-number", EVAL + ["--eps", "eight"], 2, "bad eps 'eight'"),
    ("eps-infinite", EVAL + ["--eps", "1e999"], 2, "bad eps '1e999'"),
    ("eps-out-of-range", EVAL + ["--eps", "2"], 2, "out of range for Linf"),
    ("norm-unknown", EVAL + ["--norm", "L3"], 2, "unknown --norm 'L3'; choose from Linf, L2"),
    ("norm-l2-needs-eps", EVAL + ["--norm", "l2"], 2, "give --eps for L2 (the default radius"),
    ("batch-size-not-int", EVAL + ["--batch-size", "abc"], 2, "Invalid value for '--batch-size'"),
    ("eval-missing-model", ["eval"], 2, "Missing argument 'MODEL'"),
    ("eval-out-is-folder", EVAL + ["--clean-only", "--out", "{root}/folder"], 2, "is a folder"),
    ("eval-no-data", EVAL + ["--clean-only", "--data-dir", "{root}/folder"], 2, "cifar10 not found in"),
    ("eval-hostile-cifar", EVAL + ["--clean-only", "--data-dir", "{root}/hostile"], 2,
     "test_batch is not a valid CIFAR batch file (UnpicklingError: forbidden global posix.mkdir)"),
    ("info-junk-file", ["info", "{root}/official.pth"], 2, "official.pth"),
    ("unknown-command", ["frobnicate"], 2, "No such command 'frobnicate'"),
    ("convert-out-is-input", CONVERT + ["--out", "{root}/official.pth"], 2, "is the input file"),
    ("convert-out-is-input-force", CONVERT + ["--out", "{root}/official.pth", "--force"], 2,
     "refused even with --force"),
    ("convert-out-exists", CONVERT + ["--out", "{root}/existing.safetensors"], 2, "exists; pass --force"),
    ("convert-out-is-folder", CONVERT + ["--out", "{root}/folder"], 2, "is a folder"),
    ("convert-missing-input", ["convert", "{root}/nope.pth", "--arch", "tiny_resnet", "--out", "{root}/n.safetensors"],
     2, "no such file"),
    ("push-to-existing-zoo", ["push", "{root}/ckpt.safetensors", "--to", "{root}/zoo", "--data-dir", "{data}"], 2,
     "model.safetensors exists; pass --force"),
    ("push-to-own-folder", ["push", "{root}/zoo/model.safetensors", "--to", "{root}/zoo", "--data-dir", "{data}",
                            "--force"], 2, "is the input file"),
    ("pull-no-bn-check-not-imported", ["pull", "{root}/zoo", "--no-bn-check"], 2, "only for imported zoo entries"),
    ("pull-unknown-name", ["pull", "no-such-model"], 2, "is not a zoo name"),
    ("pull-folder-corrupted", ["pull", "{root}/zoo-bad"], 3,
     "zoo-bad/model.safetensors is corrupted"),  # and says the file was left as it is (nothing was downloaded)
    ("convert-plain-pickle", ["convert", "{root}/evil.pth", "--arch", "tiny_resnet", "--out", "{root}/e.safetensors"], 2,
     "evil.pth: refused: not a weights-only checkpoint"),  # one line: torch's protocol warning is not shown
    ("train-unknown-config", ["train", "--config", "no-such-config", "--out", "{root}/t"], 2, "no-such-config"),
    ("train-set-division-by-zero", ["train", "-c", "quickstart", "--set", "attack.eps=1/0", "--out", "{root}/t"], 2,
     "attack.eps: expected a number"),
    ("train-keep-nan", ["train", "-c", "quickstart", "--keep", "nan", "--out", "{root}/t"], 2, "keep"),
    ("train-out-is-file", ["train", "-c", "quickstart", "--out", "{root}/existing.safetensors", "--epochs", "1"], 2,
     "exists and is not a folder"),
    ("train-batch-beyond-data", ["train", "-c", "quickstart", "--batch-size", "100000000000000", "--out", "{root}/t"],
     2, "batch_size 100000000000000 is larger than the training set (1,294 images)"),
    ("train-resume-not-a-run", ["train", "--resume", "{root}/folder"], 2, "not an rbzoo run folder"),
    ("write-under-a-file", EVAL + ["--clean-only", "--out", "{root}/existing.safetensors/r.json"], 2,
     "existing.safetensors: not a folder, cannot write r.json in it"),
]


@pytest.mark.parametrize("case,argv,code,message", BAD_INPUT, ids=[c[0] for c in BAD_INPUT])
def test_bad_input_is_one_line_and_changes_nothing(ws, capsys, case, argv, code, message):
    root = ws["root"]
    before = _snapshot(root)
    rc = main([a.format(root=root, data=ws["data"]) for a in argv])
    out, err = capsys.readouterr()
    assert rc == code, (case, err)
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert "Traceback" not in err + out and message in err, err
    assert _snapshot(root) == before  # nothing written, replaced or left behind
    print(f"TABLE | {' '.join(argv)} | {rc} | {err.strip()}", file=sys.__stdout__)


def test_norm_names_match_in_any_case(ws, capsys):
    """`--norm linf` is L∞ (its default radius included), not an unknown norm."""
    out = ws["root"].parent / "linf.json"
    assert main([a.format(root=ws["root"], data=ws["data"]) for a in EVAL] + ["--norm", "linf", "--pgd", "1",
                                                                             "--out", str(out)]) == 0
    attack = json.loads(out.read_text())["attack"]
    assert attack["norm"] == "Linf" and attack["eps"] == 8 / 255


def test_a_test_subset_beyond_the_split_says_so():
    """Numbers beyond the data: a --test-subset larger than the test split is noted, not silently used."""
    from rbzoo.config import load_config
    from rbzoo.train import build_data

    with pytest.warns(RbzooWarning, match=r"test_subset 100,000 is larger than the digits test split \(360 images\)"):
        data = build_data(load_config("quickstart", {"test_subset": 100_000}))
    assert len(data.test_indices) == 360


def test_folder_source_mismatch_does_not_claim_a_download(ws, capsys):
    assert main(["pull", str(ws["root"] / "zoo-bad")]) == 3
    err = capsys.readouterr().err
    assert "the file was left as it is" in err and "download" not in err, err


def test_an_unwritable_folder_names_the_output_not_the_temp_file(ws, tmp_path, monkeypatch, capsys):
    """What a read-only folder does to the temp file beside the output (root cannot be refused by
    chmod, so the refusal is simulated where the temp file is made)."""
    import errno
    import tempfile

    def denied(prefix="", suffix="", dir=None, **_):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.path.join(dir, f"{prefix}x1y2z3{suffix}"))

    monkeypatch.setattr(tempfile, "mkstemp", denied)
    out = tmp_path / "dense.safetensors"
    assert main(["export", str(ws["root"] / "ckpt.safetensors"), str(out)]) == 1
    assert capsys.readouterr().err == f"error: {out}: Permission denied\n"
    assert list(tmp_path.iterdir()) == []


def test_force_replaces_an_output_but_never_an_input(ws, tmp_path, cifar10_root):
    out = tmp_path / "c.safetensors"
    out.write_bytes(b"old")
    args = [a.format(root=ws["root"]) for a in CONVERT] + ["--out", str(out)]
    assert main(args) == 2 and out.read_bytes() == b"old"
    assert main(args + ["--force"]) == 0 and out.read_bytes() != b"old"
    zoo = tmp_path / "zoo"
    push = ["push", str(ws["root"] / "ckpt.safetensors"), "--to", str(zoo), "--data-dir", str(cifar10_root)]
    assert main(push) == 0
    (zoo / "README.md").write_text("edited by hand")
    assert main(push) == 2 and (zoo / "README.md").read_text() == "edited by hand"
    assert main(push + ["--force"]) == 0 and (zoo / "README.md").read_text().startswith("---\n")


def test_push_to_a_folder_names_the_model_after_its_run(ws, tmp_path, capsys):
    """`push RUN --to DIR` publishes the run's best.safetensors under the run folder's name (not "best"),
    with its card in DIR/README.md, which `pull DIR` reads."""
    from rbzoo.cards import load_card

    out = tmp_path / "exchange"
    assert main(["push", str(ws["root"] / "run"), "--to", str(out), "--data-dir", str(ws["data"])]) == 0
    assert "wrote run to" in capsys.readouterr().out
    assert load_card(out / "README.md").name == "run"
    assert (out / "model.safetensors").read_bytes() == (ws["root"] / "run" / "best.safetensors").read_bytes()


def test_info_takes_a_run_folder_like_eval(ws, capsys):
    assert main(["info", str(ws["root"] / "run")]) == 0
    assert "best.safetensors" in " ".join(capsys.readouterr().out.split())


def test_results_record_an_absolute_model_path(ws, tmp_path, monkeypatch):
    """`rbzoo eval` run with relative paths; the results are read from another folder."""
    from rbzoo.figures import results_point

    monkeypatch.chdir(ws["root"])
    (tmp_path / "out").mkdir()
    assert main(["eval", "ckpt.safetensors", "--clean-only", "--data-dir", str(ws["data"]), "--device", "cpu",
                 "--out", str(tmp_path / "out" / "r.json")]) == 0
    model = json.loads((tmp_path / "out" / "r.json").read_text())["model"]
    assert model["path"] == str(ws["root"] / "ckpt.safetensors")
    monkeypatch.chdir(tmp_path)
    point = results_point(tmp_path / "out" / "r.json")
    assert point["size_source"] == "file" and point["checkpoint_bytes"] == (ws["root"] / "ckpt.safetensors").stat().st_size


def test_cifar_pickles_are_read_only_by_the_restricted_unpickler(cifar10_root, monkeypatch):
    """torchvision's own pickle.load is never used, so no file is checked by one reader and used by another."""
    import torchvision.datasets.cifar as tv_cifar

    import rbzoo.data

    class NoPickle:
        def __getattr__(self, name):
            raise AssertionError(f"torchvision's pickle.{name} was used")

    monkeypatch.setattr(tv_cifar, "pickle", NoPickle())
    ds = rbzoo.data.get_dataset("cifar10", "test", cifar10_root)
    with open(cifar10_root / "cifar-10-batches-py" / "test_batch", "rb") as f:
        ref = pickle.load(f, encoding="latin1")
    assert len(ds) == 50 and ds.targets == ref["labels"] and ds.classes[0] == "airplane"
    assert (ds.data == ref["data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)).all()


# ------------------------------------------------------------------------------------------ full disk

def test_disk_full_is_one_line_and_keeps_the_old_file(ws, tmp_path, monkeypatch, capsys):
    """A patched fsync fails with ENOSPC while results are written: the previous file stays whole."""
    import errno

    out = tmp_path / "r.json"
    out.write_text("previous results")

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    args = ["eval", str(ws["root"] / "ckpt.safetensors"), "--clean-only", "--data-dir", str(ws["data"]),
            "--device", "cpu", "--out", str(out)]
    assert main(args) == 2 and "exists; pass --force" in capsys.readouterr().err  # the writer rule first
    rc = main(args + ["--force"])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1, err
    assert err.startswith(f"error: {out}: No space left on device; nothing was corrupted"), err
    assert out.read_text() == "previous results" and sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


def _can_mount_tmpfs() -> bool:
    try:
        return subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                              capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
            "PYTHONUNBUFFERED": "1", "COLUMNS": "400"}


@pytest.mark.skipif(sys.platform != "linux" or not _can_mount_tmpfs(), reason="needs `unshare -rm` to mount a tmpfs")
def test_training_on_a_full_disk_then_resume(tmp_path):
    """A real full file system (a 120 KiB tmpfs): state.pt does not fit. One line, nothing half-written;
    after the disk grows, `--resume` finishes the run."""
    script = f"""
set -u
mount -t tmpfs -o size=120k tmpfs /mnt || exit 99
{sys.executable} -m rbzoo train -c quickstart -o /mnt/run --epochs 1 --test-subset 20 >/dev/null 2>{tmp_path}/err1
echo "rc1=$?"; ls -A /mnt/run | tr '\\n' ' '; echo
mount -o remount,size=20m /mnt
{sys.executable} -m rbzoo train --resume /mnt/run >/dev/null 2>{tmp_path}/err2
echo "rc2=$?"; ls -A /mnt/run | tr '\\n' ' '; echo
"""
    r = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, env=_env(), timeout=600)
    lines = r.stdout.splitlines()
    err = (tmp_path / "err1").read_text()
    assert lines[0] == "rc1=1", (r.stdout, r.stderr, err)
    assert err == ("error: /mnt/run/state.pt: No space left on device; nothing was corrupted (rbzoo writes every "
                   "file atomically): free some space, then resume with: rbzoo train --resume /mnt/run\n"), err
    assert ".tmp" not in lines[1] and "state.pt" not in lines[1] and "config.yaml" in lines[1]
    assert lines[2] == "rc2=0", (tmp_path / "err2").read_text()
    assert "state.pt" in lines[3] and ".tmp" not in lines[3]


# ------------------------------------------------------------------------------------------ Ctrl-C

def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "rbzoo", *args], cwd=cwd, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait_for(proc: subprocess.Popen, ready, timeout: float = 300) -> None:
    t0 = time.monotonic()
    while not ready():
        assert proc.poll() is None, f"exited early ({proc.returncode}): {proc.stderr.read()}"
        assert time.monotonic() - t0 < timeout, "timed out"
        time.sleep(0.01)


def _interrupt(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err, err
    return err


def test_ctrl_c_exits_130_and_says_how_to_resume(tmp_path):
    import shlex

    run = tmp_path / "run"
    proc = _start(["train", "-c", "quickstart", "-o", str(run), "--epochs", "4", "--test-subset", "20"], tmp_path)
    metrics = run / "metrics.jsonl"
    # after the first epoch, so the signal lands in a busy run (a finished one would just die of it)
    _wait_for(proc, lambda: metrics.is_file() and metrics.read_text().count("\n") >= 1)
    err = _interrupt(proc)
    assert err.splitlines()[-1] == f"error: interrupted; resume with: rbzoo train --resume {run}", err
    assert not list(run.glob(".*.tmp")) and 1 <= metrics.read_text().count("\n") < 4
    assert main(["train", "--resume", str(run)]) == 0
    assert len(metrics.read_text().splitlines()) == 4 and (run / "best.safetensors").is_file()

    # eval: the same command continues from the chunks saved before Ctrl-C
    out = tmp_path / "r.json"
    # enough chunks that the run is still busy when the signal lands (a finished one dies of it)
    cmd = ["eval", str(run), "--n-examples", "40", "--chunk-size", "2", "--pgd", "100", "--out", str(out),
           "--device", "cpu"]
    states = Path(os.environ["RBZOO_HOME"]) / "eval-state"  # keyed by the evaluation, not by --out
    earlier = set(states.glob("*/chunk-*.json"))  # other tests' evaluations share RBZOO_HOME
    proc = _start(cmd, tmp_path)
    _wait_for(proc, lambda: set(states.glob("*/chunk-*.json")) - earlier)
    (state,) = {p.parent for p in set(states.glob("*/chunk-*.json")) - earlier}
    err = _interrupt(proc)
    assert err.splitlines()[-1] == f"error: interrupted; resume with: {shlex.join(['rbzoo', *cmd])}", err
    saved = {p.name: p.read_bytes() for p in state.glob("chunk-*.json")}
    assert not out.exists() and 0 < len(saved) < 20
    assert main(cmd) == 0
    assert all((state / name).read_bytes() == data for name, data in saved.items())  # kept, not redone
    res = json.loads(out.read_text())
    assert res["n_examples"] == 40 and isinstance(res["robust_correct"], int)


# ------------------------------------------------------------------------------------------ two pulls

def test_two_pulls_at_once_share_one_cache_entry(server, tiny_checkpoint, cifar10_root, monkeypatch, tmp_path):
    from hub_server import TEST_TOKEN

    from rbzoo import hub

    monkeypatch.setenv("RBZOO_HOME", str(tmp_path / "rbzoo_home"))
    monkeypatch.setenv("RBZOO_CARDS", str(tmp_path / "cards"))
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    hub.push(tiny_checkpoint, "test-user/tiny", data_dir=cifar10_root, endpoint=server.url, token=TEST_TOKEN)
    procs = [_start(["pull", "test-user/tiny", "--data-dir", str(cifar10_root)], tmp_path) for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    blobs = list((tmp_path / "hf_cache" / "models--test-user--tiny" / "blobs").iterdir())
    sha = hashlib.sha256(tiny_checkpoint.read_bytes()).hexdigest()
    assert sorted(b.name for b in blobs if b.name == sha) == [sha] and len(blobs) == 3  # card, results, model
    assert not [b for b in blobs if b.name.endswith(".incomplete")]
    doc = json.loads((tmp_path / "rbzoo_home" / "verified.json").read_text())
    assert [r["status"] for r in doc["entries"].values()] == ["verified"]
    assert not list((tmp_path / "rbzoo_home").glob("*.corrupt-*"))
