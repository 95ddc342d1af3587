"""`rbzoo push` / `rbzoo pull` against the Hub-protocol test server, with the REAL huggingface_hub client.

Every test gets its own HF_HOME / HF_HUB_CACHE / RBZOO_HOME / RBZOO_CARDS under tmp_path, Xet
disabled, no HF_TOKEN in the environment, and a server on 127.0.0.1 (tests/hub_server.py).
Faults that make huggingface_hub sleep (dropped connections: ~1 s per resume attempt) are paid
twice in total; 5xx answers are caught by rbzoo's own un-retried HEAD and cost nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from huggingface_hub import CommitOperationAdd, HfApi

import rbzoo
import rbzoo.data
from rbzoo import hub, verified, zoo
from rbzoo.cards import build_card, load_card, parse_card
from rbzoo.cli import main
from rbzoo.errors import CheckpointError, ConfigError, HubError, VerificationError
from rbzoo.evaluate import EvalConfig, run_eval
from rbzoo.exact import clean_accuracy, predictions_digest
from rbzoo.verdict import TAU, Certificate, count_cap

from conftest import make_tiny_checkpoint
from hub_server import TEST_TOKEN

TOKEN = TEST_TOKEN
REPO = "test-user/tiny"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def env(hf_env, monkeypatch):
    """hf_env plus rbzoo's own state (verified-pull registry, card folder) under tmp_path."""
    monkeypatch.setenv("RBZOO_HOME", str(hf_env / "rbzoo_home"))
    monkeypatch.setenv("RBZOO_CARDS", str(hf_env / "cards"))
    return hf_env


@pytest.fixture(scope="module")
def second_checkpoint(tmp_path_factory) -> Path:
    """Another tiny_resnet (different seed and mask) for a second push to the same repo."""
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt2") / "tiny2.safetensors", keep=0.3, seed=12, data_seed=1)


@pytest.fixture
def pushed(server, tiny_checkpoint, cifar10_root):
    """The tiny checkpoint pushed to REPO (clean accuracy computed by push itself)."""
    r = hub.push(tiny_checkpoint, REPO, data_dir=cifar10_root, endpoint=server.url, token=TOKEN)
    return r


def sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def eval_results(ckpt: Path, data_dir: Path, out: Path) -> dict:
    """What `rbzoo eval --out` writes for the first 40 test images, with a cheap robust result (PGD-1) and its
    evidence beside `out`."""
    return run_eval(EvalConfig(model=str(ckpt), data_dir=str(data_dir), device="cpu", pgd_steps=1, chunk_size=40, n_examples=40,
                               out=out, state=out.with_name(out.stem + ".state")))


def assert_nothing_half_written(env: Path, ckpt: Path) -> None:
    """No partial download, no checkpoint (by name or by blob hash) in the download cache, no record."""
    cache = env / "hf_cache"
    files = list(cache.rglob("*")) if cache.exists() else []
    assert not [p for p in files if p.name.endswith(".incomplete")]
    assert not [p for p in files if p.name in ("model.safetensors", sha(ckpt))]
    assert verified.registry_entries() == {}


def precache(server, env: Path, *filenames: str) -> None:
    """Put some files of REPO@main in the download cache (so a fault hits the checkpoint itself)."""
    from huggingface_hub import hf_hub_download

    for f in filenames:
        hf_hub_download(REPO, f, endpoint=server.url, token=TOKEN, cache_dir=str(env / "hf_cache"))


# ------------------------------------------------------------------------------------------ push / pull

def test_push_one_commit_then_pull_by_repo_commit_and_name(server, env, tiny_checkpoint, cifar10_root, monkeypatch):
    server.request_log.clear()
    r = hub.push(tiny_checkpoint, REPO, data_dir=cifar10_root, endpoint=server.url, token=TOKEN)
    assert r.evaluated and len(r.commit) == 40 and r.commit_url.endswith(f"/commit/{r.commit}")
    assert r.pin == f"{REPO}@{r.commit}"
    commits = [p for m, p in server.request_log if m == "POST" and "/commit/" in p]
    assert commits == [f"/api/models/{REPO}/commit/main"]  # one commit for all three files
    api = HfApi(endpoint=server.url, token=TOKEN)
    assert [c.title for c in api.list_repo_commits(REPO)] == ["rbzoo push tiny", "initial commit"]
    info = api.model_info(REPO, files_metadata=True)
    files = {s.rfilename: s for s in info.siblings}
    assert sorted(files) == [".gitattributes", "README.md", "model.safetensors", "results.json"]
    assert files["model.safetensors"].lfs.sha256 == sha(tiny_checkpoint)
    assert info.card_data.library_name == "rbzoo"

    # The local zoo card pins the commit; the Hub's README is the same card without the pin.
    local = load_card(env / "cards" / "tiny.md")
    assert local.revision == r.commit and local.repo_id == REPO
    assert local.rb["checkpoint_sha256"] == sha(tiny_checkpoint)
    assert local.rb["checkpoint_bytes"] == tiny_checkpoint.stat().st_size
    assert local.rb["float32_bytes"] > local.rb["checkpoint_bytes"]
    readme = parse_card(_hub_text(server, "README.md"), "README.md")
    assert readme.revision is None and readme.expected == local.expected
    uploaded = json.loads(_hub_text(server, "results.json"))
    assert uploaded["model"]["path"] == "model.safetensors" and uploaded["model_digest"] == rbzoo.read(tiny_checkpoint).digest
    cert = Certificate.from_json(uploaded["certificate"])  # per-sample labels and margins, pinned by the card
    assert cert.n == 50 and predictions_digest(cert.labels) == local.expected["predictions_sha256"]
    assert cert.digest == local.expected["certificate_sha256"] and local.expected["profile"] == "verify"
    assert local.rb["model_digest"] == rbzoo.read(tiny_checkpoint).digest

    p1 = zoo.pull(REPO, data_dir=cifar10_root, endpoint=server.url, token=TOKEN)
    assert p1.status == "verified" and p1.revision == r.commit and sha(p1.path) == sha(tiny_checkpoint)
    assert p1.verdict == "exact" and p1.message.startswith("exact: all 50 predicted labels equal the reference")
    assert (p1.clean_correct, p1.n_examples) == (local.expected["clean_correct"], 50)
    server.request_log.clear()
    evaluated = []  # a verified copy is not evaluated again, nor downloaded again
    p2 = zoo.pull(f"{REPO}@{r.commit}", data_dir=cifar10_root, endpoint=server.url, token=TOKEN,
                  progress=lambda what, total: evaluated.append(what) or (lambda n: None))
    assert p2.status == "cached" and p2.path == p1.path and evaluated == []
    assert not [p for m, p in server.request_log if m == "GET" and p.endswith("/model.safetensors")]
    monkeypatch.setenv("HF_ENDPOINT", server.url)  # the environment is honoured on every call
    p3 = zoo.pull("tiny", data_dir=cifar10_root, token=TOKEN)
    assert p3.status == "cached" and p3.revision == r.commit
    # A fresh registry re-verifies (by card name, at the pinned commit) from the download cache.
    monkeypatch.setenv("RBZOO_HOME", str(env / "other_home"))
    assert zoo.pull("tiny", data_dir=cifar10_root, token=TOKEN).status == "verified"
    assert zoo.resolve_remote("tiny") == p1.path
    assert zoo.resolve_remote(REPO) == p1.path
    for not_remote in ("no-such-card", str(tiny_checkpoint), "runs/x.safetensors", "not a spec"):
        assert zoo.resolve_remote(not_remote) is None
    assert [e.status for e in verified.list_zoo()] == ["verified"]


def _hub_text(server, filename: str, revision: str = "main") -> str:
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(REPO, filename, revision=revision, endpoint=server.url, token=TOKEN,
                                cache_dir=str(server.root.parent / "peek"))).read_text()


def test_push_twice_pull_older_revision(server, env, tiny_checkpoint, second_checkpoint, cifar10_root, tmp_path):
    first = hub.push(tiny_checkpoint, REPO, data_dir=cifar10_root, endpoint=server.url, token=TOKEN)
    # Second push: results JSON from `rbzoo eval` found beside the checkpoint (no --data-dir), with a
    # robust result that goes into the card's model-index.
    ckpt2 = tmp_path / "second.safetensors"
    ckpt2.write_bytes(second_checkpoint.read_bytes())
    res2 = eval_results(ckpt2, cifar10_root, tmp_path / "second.results.json")
    second = hub.push(ckpt2, REPO, endpoint=server.url, token=TOKEN)
    assert not second.evaluated and second.commit != first.commit
    assert second.card.rb["claimed"]["robust_acc"] == round(100 * res2["robust_acc"], 2)
    assert second.card.rb["claimed"]["robust_correct"] == res2["robust_correct"]
    assert second.card.rb["claimed"]["evidence_sha256"] == res2["evidence"]["sha256"]
    assert second.card.robust_args == {"norm": "Linf", "eps": pytest.approx(8 / 255), "version": "pgd"}
    assert load_card(env / "cards" / "tiny.md").revision == second.commit  # the zoo card follows

    old = zoo.pull(f"{REPO}@{first.commit}", data_dir=cifar10_root, endpoint=server.url, token=TOKEN)
    assert old.status == "verified" and old.revision == first.commit and sha(old.path) == sha(tiny_checkpoint)
    new = zoo.pull(REPO, data_dir=cifar10_root, endpoint=server.url, token=TOKEN)
    assert new.status == "verified" and new.revision == second.commit and sha(new.path) == sha(ckpt2)
    assert len(verified.registry_entries()) == 2


def test_push_branch_pr_and_private(server, tiny_checkpoint, second_checkpoint, cifar10_root):
    api = HfApi(endpoint=server.url, token=TOKEN)
    dev = hub.push(tiny_checkpoint, "test-user/priv", data_dir=cifar10_root, revision="dev", private=True,
                   endpoint=server.url, token=TOKEN)
    assert api.model_info("test-user/priv").private is True
    assert "model.safetensors" not in api.list_repo_files("test-user/priv")  # main untouched
    assert api.model_info("test-user/priv", revision="dev").sha == dev.commit
    pr = hub.push(second_checkpoint, "test-user/priv", data_dir=cifar10_root, create_pr=True,
                  endpoint=server.url, token=TOKEN)
    assert pr.pr_url.endswith("/discussions/1") and pr.commit not in (dev.commit,)
    got = zoo.pull(f"test-user/priv@{pr.commit}", data_dir=cifar10_root, endpoint=server.url, token=TOKEN)
    assert got.status == "verified" and sha(got.path) == sha(second_checkpoint)
    with pytest.raises(HubError, match="repository not found"):  # private: anonymous reads see nothing
        zoo.pull("test-user/priv@dev", verify=False, endpoint=server.url, token=None)


def test_push_refusals(env, tiny_checkpoint, cifar10_root, tmp_path):
    url = "http://127.0.0.1:9"  # nothing listens: every refusal happens before any network call
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        hub.push(junk, REPO, data_dir=cifar10_root, endpoint=url, token=TOKEN)
    lonely = tmp_path / "lonely.safetensors"
    lonely.write_bytes(tiny_checkpoint.read_bytes())
    with pytest.raises(ConfigError, match="no clean-accuracy result .*rbzoo eval"):
        hub.push(lonely, REPO, endpoint=url, token=TOKEN)
    res = eval_results(lonely, cifar10_root, tmp_path / "results.json")
    (tmp_path / "results.json").write_text(json.dumps(dict(res, evidence=None)))
    with pytest.raises(ConfigError, match="claims a robust accuracy but names no evidence file"):
        hub.push(lonely, REPO, endpoint=url, token=TOKEN)
    (tmp_path / "results.json").write_text(json.dumps(dict(res, robust_correct=res["robust_correct"] + 1)))
    with pytest.raises(ConfigError, match="inconsistent robust claim"):
        hub.push(lonely, REPO, endpoint=url, token=TOKEN)
    (tmp_path / "results.json").write_text(json.dumps(dict(res, model_digest="0" * 64)))
    with pytest.raises(ConfigError, match="results are for another model"):
        hub.push(lonely, REPO, endpoint=url, token=TOKEN)
    (tmp_path / "results.json").write_text(json.dumps(dict(res, clean_correct=None)))
    with pytest.raises(ConfigError, match="`clean_correct`"):
        hub.push(lonely, REPO, endpoint=url, token=TOKEN)
    (tmp_path / "results.json").write_text(json.dumps(dict(res, subset={"mode": "random", "seed": 0})))
    with pytest.raises(ConfigError, match="`subset`"):
        hub.push(lonely, REPO, endpoint=url, token=TOKEN)
    (tmp_path / "results.json").write_text(json.dumps(dict(res, predictions_sha256="0" * 64)))
    with pytest.raises(ConfigError, match="`certificate` does not match"):
        hub.push(lonely, REPO, endpoint=url, token=TOKEN)
    cert = Certificate.from_json(res["certificate"])
    labels = cert.labels.copy()
    i = int(np.argmax(cert.margins))  # the most confident sample: no numerics excuse its flip
    labels[i] = (labels[i] + 1) % 10
    other = Certificate(cert.n, cert.num_classes, labels, cert.margins, cert.profile)
    wrong = dict(res, certificate=other.to_json(), predictions_sha256=other.labels_sha256)
    (tmp_path / "results.json").write_text(json.dumps(wrong))
    with pytest.raises(VerificationError, match=f"does not reproduce.*indices {i}"):
        hub.push(lonely, REPO, data_dir=cifar10_root, endpoint=url, token=TOKEN)
    (tmp_path / "results.json").write_text(json.dumps(res))
    with pytest.raises(HubError, match="needs a Hugging Face token"):
        hub.push(lonely, REPO, endpoint=url, token=None)
    with pytest.raises(HubError, match="network error"):
        hub.push(lonely, REPO, endpoint=url, token=TOKEN)
    with pytest.raises(ConfigError, match="REPO_ID"):
        hub.push(lonely, None)
    assert not (env / "cards").exists()


# ------------------------------------------------------------------------------------------ offline

def test_pull_offline_after_server_stop(server, env, pushed, cifar10_root, monkeypatch):
    first = zoo.pull(REPO, data_dir=cifar10_root, endpoint=server.url, token=TOKEN)
    assert first.status == "verified"
    assert zoo.pull("tiny", data_dir=cifar10_root, endpoint=server.url, token=TOKEN).status == "cached"
    server.stop()
    # In a fresh process with HF_HUB_OFFLINE=1 set before huggingface_hub is imported: instant, no data.
    proc = subprocess.run([sys.executable, "-m", "rbzoo", "pull", "tiny"], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": server.url,
                                            "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr
    assert f"verified earlier (exact): {first.clean_correct}/50" in " ".join(proc.stdout.split())
    # In this process, the variable set at run time is honoured too, and a fresh registry
    # re-verifies from the download cache (by repo id on a branch: the cached ref is used).
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("RBZOO_HOME", str(env / "fresh_home"))
    again = zoo.pull(REPO, data_dir=cifar10_root, endpoint=server.url, token=TOKEN)
    assert again.status == "verified" and again.path == first.path
    with pytest.raises(HubError, match="HF_HUB_OFFLINE is set"):
        zoo.pull("test-user/never-pulled", verify=False, endpoint=server.url)


# ------------------------------------------------------------------------------------------ faults

def test_corrupted_blob_fails_on_sha256_and_keeps_nothing(server, env, pushed, tiny_checkpoint, cifar10_root,
                                                          capsys):
    server.corrupt_blob(REPO, "model.safetensors")
    rc = main(["pull", REPO, "--data-dir", str(cifar10_root), "--endpoint", server.url, "--token", TOKEN])
    err = capsys.readouterr().err.strip()
    assert rc == VerificationError.exit_code and len(err.splitlines()) == 1
    assert "model.safetensors is corrupted: SHA-256" in err and "the card says" in err and "the server says" in err
    assert_nothing_half_written(env, tiny_checkpoint)  # the corrupted blob is gone from the cache too


def test_truncated_download(server, env, pushed, tiny_checkpoint, cifar10_root, capsys):
    precache(server, env, "README.md", "results.json")
    server.truncate_downloads = 1000
    server.request_log.clear()
    rc = main(["pull", REPO, "--data-dir", str(cifar10_root), "--endpoint", server.url, "--token", TOKEN])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and len(err.splitlines()) == 1 and "model.safetensors" in err, err
    gets = [p for m, p in server.request_log if m == "GET" and p.endswith("/model.safetensors")]
    assert len(gets) == 6  # bounded: the first GET and the client's 5 Range resumes, then it gives up
    assert_nothing_half_written(env, tiny_checkpoint)
    server.truncate_downloads = False
    assert zoo.pull(REPO, data_dir=cifar10_root, endpoint=server.url, token=TOKEN).status == "verified"


def test_server_gone_mid_download(server, env, pushed, tiny_checkpoint, cifar10_root, capsys):
    precache(server, env, "README.md", "results.json")
    server.truncate_downloads = 1000  # the first GET breaks off after 1000 bytes ...

    def stop_when_downloading():  # ... and the server is gone before the client resumes
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if any(m == "GET" and p.endswith("/model.safetensors") for m, p in list(server.request_log)):
                server.stop()
                return
            time.sleep(0.01)

    watcher = threading.Thread(target=stop_when_downloading, daemon=True)
    watcher.start()
    rc = main(["pull", REPO, "--data-dir", str(cifar10_root), "--endpoint", server.url, "--token", TOKEN])
    watcher.join(5)
    err = capsys.readouterr().err.strip()
    assert rc != 0 and len(err.splitlines()) == 1 and "model.safetensors" in err, err
    assert_nothing_half_written(env, tiny_checkpoint)


def test_server_error_auth_and_not_found(server, env, pushed, tiny_checkpoint, cifar10_root, capsys):
    def run(*args) -> tuple[int, str]:
        rc = main(["pull", *args, "--data-dir", str(cifar10_root), "--endpoint", server.url])
        out = capsys.readouterr()
        assert len(out.err.strip().splitlines()) == 1, out.err
        return rc, out.err
    server.request_log.clear()
    server.fail_next(500)
    rc, err = run(REPO, "--token", TOKEN)
    assert rc != 0 and "HTTP 500" in err
    assert len(server.request_log) == 1  # the failed request, not retried
    server.request_log.clear()
    server.fail_next(500, path_contains="model.safetensors")
    rc, err = run(REPO, "--token", TOKEN)
    assert rc != 0 and "HTTP 500" in err and "model.safetensors" in err
    assert [m for m, p in server.request_log if "model.safetensors" in p] == ["HEAD"]  # no retry
    rc, err = run(REPO, "--token", "hf_wrong_token")
    assert rc != 0 and "authentication failed (HTTP 401" in err and "hf_wrong_token" not in err
    rc, err = run("test-user/missing", "--token", TOKEN)
    assert rc != 0 and "repository not found" in err
    rc, err = run(f"{REPO}@no-such-branch", "--token", TOKEN)
    assert rc != 0 and "no such revision" in err
    rc, err = run(f"{REPO}@{'0' * 40}", "--token", TOKEN)
    assert rc != 0 and "no such revision" in err
    rc, err = run("nonexistent-card", "--token", TOKEN)
    assert rc != 0 and "is not a zoo name" in err
    assert_nothing_half_written(env, tiny_checkpoint)
    # A wrong token on push: 401, nothing committed.
    before = HfApi(endpoint=server.url, token=TOKEN).model_info(REPO).sha
    ckpt = rbzoo.zoo.pull(REPO, verify=False, endpoint=server.url, token=TOKEN).path
    with pytest.raises(HubError, match="HTTP 401"):
        hub.push(ckpt, "test-user/other", data_dir=cifar10_root, endpoint=server.url, token="hf_wrong")
    assert HfApi(endpoint=server.url, token=TOKEN).model_info(REPO).sha == before


def _republish(server, card, results, cert: Certificate, message: str) -> None:
    """Commit a card and results.json whose reference is `cert` (counts and digests made consistent)."""
    labels = np.array([int(y) for _, y in rbzoo.data.get_dataset("cifar10", "test", results["_root"])])
    correct = int((cert.labels == labels).sum())
    exp = dict(card.expected, clean_correct=correct, predictions_sha256=cert.labels_sha256,
               certificate_sha256=cert.digest, profile=cert.profile)
    rb = dict(card.rb, expected=exp, claimed={"clean_acc": round(100 * correct / 50, 2), "robust_acc": None})
    res = {k: v for k, v in results.items() if k != "_root"}
    res.update(certificate=cert.to_json(), clean_correct=correct, predictions_sha256=cert.labels_sha256)
    HfApi(endpoint=server.url, token=TOKEN).create_commit(REPO, operations=[
        CommitOperationAdd("README.md", build_card(rb).render().encode()),
        CommitOperationAdd("results.json", json.dumps(res).encode())], commit_message=message)


def test_card_accuracy_mismatch_names_the_samples(server, env, pushed, cifar10_root, capsys, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    card = parse_card(_hub_text(server, "README.md"), "README.md")
    results = dict(json.loads(_hub_text(server, "results.json")), _root=cifar10_root)
    good = Certificate.from_json(results["certificate"])
    confident = np.flatnonzero(good.margins > 1e-2)[:3]  # far from any tie: these must never flip
    preds = good.labels.copy()
    preds[confident] = (preds[confident] + 1) % 10
    _republish(server, card, results, Certificate(50, 10, preds, good.margins, good.profile), "wrong card")
    rc = main(["pull", REPO, "--data-dir", str(cifar10_root), "--endpoint", server.url, "--token", TOKEN])
    err = capsys.readouterr().err.strip()
    assert rc == VerificationError.exit_code and len(err.splitlines()) == 1
    assert "clean accuracy does not reproduce" in err
    shown = ", ".join(map(str, confident))
    assert "failed: 3 of 50 samples differ outside this evaluation's near-ties" in err and f"indices {shown}" in err
    (rec,) = verified.registry_entries().values()
    assert rec["status"] == "unverified" and rec["verdict"] == "failed"
    with pytest.raises(VerificationError, match="does not reproduce its card"):
        zoo.resolve_remote(REPO)  # `rbzoo eval test-user/tiny` refuses the unverified copy
    assert [e.status for e in verified.list_zoo()] == ["not pulled"]  # the zoo card pins the good commit


def test_near_tie_flips_verify_within_tolerance_and_strict_refuses(server, env, pushed, cifar10_root, capsys,
                                                                   monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    """A reference made under bf16 (another machine's profile) whose one near-tie sample came out
    with another label: the pull says "verified within numerical tolerance" and names it; --strict
    refuses it; a flip outside the near-ties still fails."""
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    card = parse_card(_hub_text(server, "README.md"), "README.md")
    results = dict(json.loads(_hub_text(server, "results.json")), _root=cifar10_root)
    good = Certificate.from_json(results["certificate"])
    tie = int(np.argmin(good.margins))
    assert good.margins[tie] < TAU["bf16"]  # a near-tie under bf16's tolerance
    preds = good.labels.copy()
    preds[tie] = (preds[tie] + 1) % 10
    _republish(server, card, results, Certificate(50, 10, preds, good.margins, "bf16"), "bf16 card")
    assert main(["pull", REPO, "--data-dir", str(cifar10_root), "--strict"]) == VerificationError.exit_code
    assert "--strict demands exact" in capsys.readouterr().err
    assert main(["pull", REPO, "--data-dir", str(cifar10_root)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "verified (verified within numerical tolerance)" in out
    assert "1 of 50 samples differ, all near-ties" in out and f"indices {tie}" in out
    rec = [r for r in verified.registry_entries().values() if r["status"] == "verified"]
    assert len(rec) == 1 and rec[0]["verdict"] == "tolerance"


def test_card_without_certificate_compares_counts_only(server, env, pushed, cifar10_root, capsys, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    card = parse_card(_hub_text(server, "README.md"), "README.md")
    results = json.loads(_hub_text(server, "results.json"))
    # A card silent on its profile counts as a GPU (`fast`) evaluation: this many near-ties are excused.
    slack = min(len(Certificate.from_json(results.pop("certificate")).near_ties(TAU["fast"])), count_cap(50))
    exp = dict(card.expected, predictions_sha256=None, certificate_sha256=None, profile=None)
    HfApi(endpoint=server.url, token=TOKEN).create_commit(REPO, operations=[
        CommitOperationAdd("README.md", build_card(dict(card.rb, expected=exp)).render().encode()),
        CommitOperationAdd("results.json", json.dumps(results).encode())], commit_message="count only")
    assert main(["pull", REPO, "--data-dir", str(cifar10_root)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "verified (count only)" in out and "no per-sample reference" in out
    assert "certificate_sha256:" in out  # the block a maintainer would publish
    # This machine kept its certificate: with the registry forgotten, the next pull here is exact.
    (Path(env) / "rbzoo_home" / "verified.json").unlink()
    r = zoo.pull(REPO, data_dir=cifar10_root)
    assert r.verdict == "exact" and "earlier certificate" in r.message
    # A count off by more than the near-ties allow fails, and says by how much.
    wrong = exp["clean_correct"] + slack + 1 if exp["clean_correct"] + slack + 1 <= 50 else exp["clean_correct"] - slack - 1
    assert 0 <= wrong <= 50
    exp = dict(exp, clean_correct=wrong)
    claimed = {"clean_acc": round(100 * exp["clean_correct"] / 50, 2), "robust_acc": None}
    HfApi(endpoint=server.url, token=TOKEN).create_commit(REPO, operations=[CommitOperationAdd(
        "README.md", build_card(dict(card.rb, expected=exp, claimed=claimed)).render().encode())],
        commit_message="wrong count")
    with pytest.raises(VerificationError, match=r"failed \(count only\)"):
        zoo.pull(REPO, data_dir=cifar10_root, strict=False, numerics="verify")


# ------------------------------------------------------------------------------------------ air-gapped

def test_folder_round_trip_without_server(env, tiny_checkpoint, cifar10_root, monkeypatch, capsys):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # any network call would fail
    out = env / "usb" / "tiny"
    rc = main(["push", str(tiny_checkpoint), "--to", str(out), "--data-dir", str(cifar10_root)])
    assert rc == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "model.safetensors", "results.json"]
    assert not (env / "cards").exists()  # a folder export does not touch the zoo
    card = load_card(out / "README.md")
    assert card.repo_id is None and card.rb["checkpoint_sha256"] == sha(tiny_checkpoint)
    capsys.readouterr()
    assert main(["pull", str(out), "--no-verify"]) == 0
    assert "NOT verified (--no-verify)" in " ".join(capsys.readouterr().out.split())
    r = zoo.pull(str(out), data_dir=cifar10_root)
    assert r.status == "verified" and r.path == out / "model.safetensors"
    assert zoo.pull(str(out), data_dir=cifar10_root).status == "cached"
    data = bytearray((out / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (out / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(VerificationError, match="corrupted"):
        zoo.pull(str(out), data_dir=cifar10_root)
    assert (out / "model.safetensors").exists()  # the user's folder is never deleted from


def test_push_keeps_provenance_of_the_same_imported_model_only(env, tiny_checkpoint, cifar10_root):
    """An existing zoo card (an imported entry) lends its source URL and claimed robust accuracy
    to a push of the model it describes (same expected result), and nothing to another model."""
    probe = hub.push(tiny_checkpoint, to=env / "probe", data_dir=cifar10_root, name="imported")
    rb = dict(probe.card.rb, checkpoint_sha256=None, checkpoint_bytes=None, objective="pgd", p=0.1,
              score_init_scale=0.01, source_url="https://example.org/official.pth", source_sha256="e" * 64,
              claimed=dict(probe.card.rb["claimed"], robust_acc=4.0))
    (env / "cards").mkdir()
    (env / "cards" / "imported.md").write_text(build_card(rb).render())
    same = hub.push(tiny_checkpoint, to=env / "out1", data_dir=cifar10_root, name="imported").card.rb
    assert (same["source_url"], same["claimed"]["robust_acc"], same["objective"], same["p"]) == (
        "https://example.org/official.pth", 4.0, "pgd", 0.1)
    other = dict(rb, expected=dict(rb["expected"], clean_correct=rb["expected"]["clean_correct"] + 1,
                                   predictions_sha256=None, certificate_sha256=None, profile=None),
                 claimed={"clean_acc": round(100 * (rb["expected"]["clean_correct"] + 1) / 50, 2), "robust_acc": 4.0})
    (env / "cards" / "imported.md").write_text(build_card(other).render())
    fresh = hub.push(tiny_checkpoint, to=env / "out2", data_dir=cifar10_root, name="imported").card.rb
    assert (fresh["source_url"], fresh["claimed"]["robust_acc"], fresh["objective"]) == (None, None, None)
    assert load_card(env / "cards" / "imported.md").rb["source_url"]  # --to leaves the zoo card alone


# ------------------------------------------------------------------------------------------ CLI

def test_cli_push_pull_list_and_missing_data(server, env, tiny_checkpoint, cifar10_root, capsys, tmp_path):
    rc = main(["push", str(tiny_checkpoint), REPO, "--data-dir", str(cifar10_root), "--endpoint", server.url,
               "--token", TOKEN, "--name", "tiny-c10"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    text = " ".join(out.out.split())
    commit = HfApi(endpoint=server.url, token=TOKEN).model_info(REPO).sha
    assert f"revision to pin: {REPO}@{commit}" in text and f"/commit/{commit}" in text
    assert TOKEN not in out.out + out.err
    rc = main(["pull", "tiny-c10", "--endpoint", server.url, "--data-dir", str(tmp_path / "nowhere")])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and len(err.splitlines()) == 1
    assert "cannot verify tiny-c10: cifar10 not found" in err and "--no-verify" in err
    assert main(["pull", "tiny-c10", "--endpoint", server.url, "--data-dir", str(cifar10_root)]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert f"verified (exact): {load_card(env / 'cards' / 'tiny-c10.md').expected['clean_correct']}/50" in text
    assert "smaller than float32" in text and "not measured" in text
    assert main(["pull", "--list"]) == 0
    text = capsys.readouterr().out
    assert "tiny-c10" in text and "verified" in text and "(1 model)" in text


def test_cli_push_reads_env_and_never_prints_the_token(server, env, tiny_checkpoint, cifar10_root, capsys,
                                                       monkeypatch):
    """HF_ENDPOINT and HF_TOKEN are read on every call (not at import); the token is never printed."""
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert main(["push", str(tiny_checkpoint), "test-user/envpush", "--data-dir", str(cifar10_root)]) == 0
    out = capsys.readouterr()
    assert "revision to pin: test-user/envpush@" in " ".join(out.out.split())
    assert TOKEN not in out.out + out.err
    assert load_card(env / "cards" / "envpush.md").repo_id == "test-user/envpush"
    monkeypatch.setenv("HF_TOKEN", "hf_not_valid")
    assert main(["push", str(tiny_checkpoint), "test-user/envpush", "--data-dir", str(cifar10_root)]) != 0
    out = capsys.readouterr()
    assert "HTTP 401" in out.err and "hf_not_valid" not in out.out + out.err


# ------------------------------------------------------------------------------------------ quickstart

def test_quickstart_train_eval_push_pull_and_eval_by_name(server, env, capsys, monkeypatch):
    """A reduced quickstart (1 epoch, digits) trained by rbzoo.train, evaluated by `rbzoo eval`,
    pushed, pulled and verified exactly, then evaluated again by its zoo name."""
    from rbzoo.config import load_config
    from rbzoo.train import train

    cfg = load_config("quickstart", {"epochs": 1, "width": 4, "attack.steps": 1, "eval_attack.steps": 1,
                                     "batch_size": 256, "test_subset": 50, "device": "cpu"})
    run = env / "run"
    train(cfg, run, progress=False, log=lambda line: None)
    ckpt = run / "best.safetensors"
    assert main(["eval", str(ckpt), "--pgd", "2", "--device", "cpu", "--out", str(run / "best.results.json")]) == 0
    capsys.readouterr()
    r = hub.push(ckpt, "test-user/quickstart", endpoint=server.url, token=TOKEN)  # results found beside it
    rb = r.card.rb
    assert (rb["dataset"], rb["keep"], rb["p"], rb["objective"]) == ("digits", 0.5, 0.5, "pgd")
    assert rb["expected"]["n_examples"] == 360 and r.card.robust_args["version"] == "pgd"
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert main(["pull", "quickstart"]) == 0  # digits ship with scikit-learn: no --data-dir needed
    text = " ".join(capsys.readouterr().out.split())
    assert f"verified (exact): {rb['expected']['clean_correct']}/360" in text and "PGD" in text
    out = env / "by-name.json"
    assert main(["eval", "quickstart", "--clean-only", "--device", "cpu", "--out", str(out)]) == 0
    again = json.loads(out.read_text())
    assert again["clean_correct"] == rb["expected"]["clean_correct"]
    assert again["predictions_sha256"] == rb["expected"]["predictions_sha256"]
