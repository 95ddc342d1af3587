"""The attacker's side of `rbzoo pull`: one test per row of the threat table in docs/zoo.md.

Each publication is made by hand from an honest `rbzoo push --to` folder of a tiny model, keeping
every hash the card pins consistent, as a hostile publisher would. Each must end in exit 3 with one
line naming what is wrong (a name-squatting folder: no verified mark; `--write-card`: the shipped
card untouched), while the honest publication stays *exact* and a bf16 re-evaluation of it passes.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import rbzoo
import rbzoo.data
from rbzoo import hub, verified, zoo
from rbzoo._io import canonical_json
from rbzoo.cards import build_card, load_card
from rbzoo.cli import main
from rbzoo.errors import ConfigError, VerificationError
from rbzoo.exact import predictions_digest
from rbzoo.verdict import Certificate

from conftest import make_tiny_checkpoint

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = "rn18-cifar10-fast"  # a card that ships with rbzoo (an imported entry)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def env(tmp_path, monkeypatch):
    """A fresh RBZOO_HOME and a cards folder holding a copy of one shipped card."""
    monkeypatch.setenv("RBZOO_HOME", str(tmp_path / "home"))
    cards = tmp_path / "cards"
    cards.mkdir()
    shutil.copy(ROOT / "cards" / f"{SHIPPED}.md", cards)
    monkeypatch.setenv("RBZOO_CARDS", str(cards))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # a folder pull never touches the network
    return tmp_path


def _push(ckpt: Path, folder: Path, data: Path, name: str = "tiny") -> Path:
    hub.push(ckpt, to=folder, data_dir=data, name=name, cards_dir=folder.parent / "no-cards")
    return folder


@pytest.fixture(scope="module")
def honest_template(tiny_checkpoint, cifar10_root, tmp_path_factory) -> Path:
    return _push(tiny_checkpoint, tmp_path_factory.mktemp("pub") / "tiny", cifar10_root)


@pytest.fixture
def honest(honest_template, tmp_path) -> Path:
    """A fresh copy of the honest folder (each attack edits its own)."""
    return Path(shutil.copytree(honest_template, tmp_path / "pub"))


def _labels(data: Path) -> np.ndarray:
    return np.array([int(y) for _, y in rbzoo.data.get_dataset("cifar10", "test", data)])


def _pull(capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(["pull", *map(str, args)])
    out, err = capsys.readouterr()
    return rc, " ".join(out.split()), err.strip()


def _failed(capsys, *args) -> str:
    """Pull, expect exit 3 and exactly one line on stderr; return it."""
    rc, out, err = _pull(capsys, *args)
    assert rc == VerificationError.exit_code, (rc, out, err)
    assert len(err.splitlines()) == 1, err
    return err


def _rewrite(folder: Path, *, rb: dict | None = None, results: dict | None = None, drop_results: bool = False) -> None:
    """Edit the card's rbzoo block and results.json (the card re-rendered, so it stays schema-valid)."""
    card = load_card(folder / "README.md")
    new = dict(card.rb, **(rb or {}))
    (folder / "README.md").write_text(build_card(new, robust_args=card.robust_args).render())
    if drop_results:
        (folder / "results.json").unlink()
    elif results is not None:
        res = json.loads((folder / "results.json").read_text())
        res.update(results)
        (folder / "results.json").write_text(json.dumps(res))


def _forge(folder: Path, data: Path, cert_json: dict, labels: np.ndarray) -> None:
    """Publish `cert_json` as the reference, with every number and hash the card pins made to match."""
    correct = int((labels == _labels(data)).sum())
    card = load_card(folder / "README.md")
    digest = hashlib.sha256(canonical_json(cert_json).encode("ascii")).hexdigest()
    exp = dict(card.expected, clean_correct=correct, predictions_sha256=predictions_digest(labels),
               certificate_sha256=digest, profile=cert_json["profile"])
    _rewrite(folder, rb={"expected": exp, "claimed": dict(card.rb["claimed"], clean_acc=round(2.0 * correct, 2))},
             results={"certificate": cert_json, "clean_correct": correct, "clean_acc": correct / 50,
                      "predictions_sha256": predictions_digest(labels)})


def _honest_cert(folder: Path) -> Certificate:
    return Certificate.from_json(json.loads((folder / "results.json").read_text())["certificate"])


# ------------------------------------------------------------------------------------------ the baseline

def test_honest_publication_is_exact_and_bf16_passes(honest, cifar10_root, capsys):
    rc, out, _ = _pull(capsys, honest, "--data-dir", cifar10_root, "--strict")
    assert rc == 0 and "verified (exact)" in out
    r = zoo.pull(str(honest), data_dir=cifar10_root, numerics="bf16")
    assert r.status == "verified" and r.verdict in ("exact", "tolerance"), r.message


# ------------------------------------------------------------------------------------------ the card

def test_A_card_claims_more_than_its_certificate(honest, cifar10_root, capsys):
    """A: clean_correct, clean_acc and the model-index value all +5; model and certificate honest."""
    card = load_card(honest / "README.md")
    c = card.expected["clean_correct"]
    _rewrite(honest, rb={"expected": dict(card.expected, clean_correct=c + 5),
                         "claimed": dict(card.rb["claimed"], clean_acc=round(2.0 * (c + 5), 2))},
             results={"clean_correct": c + 5, "clean_acc": (c + 5) / 50})
    assert load_card(honest / "README.md").meta["model-index"][0]["results"][0]["metrics"][0]["value"] == 2.0 * (c + 5)
    for extra in ([], ["--strict"]):
        err = _failed(capsys, honest, "--data-dir", cifar10_root, *extra)
        assert f"`rbzoo.expected.clean_correct` says {c + 5}, but its certificate's labels" in err and f"{c}" in err


def test_A_card_pinning_only_a_prediction_digest(honest, cifar10_root, capsys):
    """A card with the honest prediction digest but no certificate, claiming 5 more correct."""
    card = load_card(honest / "README.md")
    c = card.expected["clean_correct"]
    _rewrite(honest, rb={"expected": dict(card.expected, clean_correct=c + 5, certificate_sha256=None, profile=None),
                         "claimed": dict(card.rb["claimed"], clean_acc=round(2.0 * (c + 5), 2))}, drop_results=True)
    err = _failed(capsys, honest, "--data-dir", cifar10_root)
    assert f"`rbzoo.expected.clean_correct` says {c + 5}, but its prediction digest's labels" in err


def test_push_refuses_an_inconsistent_card(tiny_checkpoint, tmp_path, cifar10_root):
    """Results whose count the certificate's labels contradict (checked on the test data), or whose
    robust count its flags contradict: push writes nothing."""
    from rbzoo.exact import pack_flags

    honest = _push(tiny_checkpoint, tmp_path / "pub", cifar10_root)
    res = json.loads((honest / "results.json").read_text())
    c = res["clean_correct"]
    bad = dict(res, clean_correct=c + 5, clean_acc=(c + 5) / 50)
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(VerificationError, match=f"`rbzoo.expected.clean_correct` says {c + 5}"):
        hub.push(tiny_checkpoint, to=tmp_path / "out1", results=tmp_path / "bad.json", data_dir=cifar10_root)
    flags = np.zeros(50, bool)
    flags[:3] = True
    bad = dict(res, robust_flags=pack_flags(flags), robust_correct=9, robust_acc=9 / 50,
               attack={"norm": "Linf", "eps": 8 / 255, "version": "standard"})
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    # a robust claim needs the evidence of its breaks (tests/test_hub.py: counts against flags and evidence)
    with pytest.raises(ConfigError, match="claims a robust accuracy but names no evidence file"):
        hub.push(tiny_checkpoint, to=tmp_path / "out2", results=tmp_path / "bad.json")
    assert not (tmp_path / "out1").exists() and not (tmp_path / "out2").exists()


def test_A2_results_file_disagrees_with_the_card(honest, cifar10_root, capsys):
    card = load_card(honest / "README.md")
    _rewrite(honest, results={"clean_correct": card.expected["clean_correct"] + 5})
    err = _failed(capsys, honest, "--data-dir", cifar10_root)
    assert "`results.json: clean_correct` says" in err and "rbzoo.expected.clean_correct" in err


def test_A3_robust_claim_against_the_results_robust_flags(honest, cifar10_root, capsys):
    """claimed.robust_acc must be what the results' per-sample robust flags give."""
    from rbzoo.exact import pack_flags

    flags = np.zeros(50, bool)
    flags[:3] = True
    _rewrite(honest, rb={"claimed": dict(load_card(honest / "README.md").rb["claimed"], robust_acc=40.0)},
             results={"robust_flags": pack_flags(flags), "robust_correct": 3, "robust_acc": 3 / 50,
                      "attack": {"norm": "Linf", "eps": 8 / 255, "version": "standard"}})
    err = _failed(capsys, honest, "--data-dir", cifar10_root)
    assert "`rbzoo.claimed.robust_acc` says 40.0, but the results (3/50 robust) gives 6.00" in err


# ------------------------------------------------------------------------------------------ the certificate

def test_B1_certificate_widens_tau(honest, cifar10_root, capsys):
    """B1: `tau` set to 1.0 and 20 labels changed, every hash made consistent."""
    good = _honest_cert(honest)
    labels = good.labels.copy()
    labels[:20] = (labels[:20] + 1) % 10
    d = Certificate(50, 10, labels, good.margins, "verify").to_json()
    d.update(tau=1.0, near_ties=[int(i) for i in np.flatnonzero(good.margins < 1.0)])
    _forge(honest, cifar10_root, d, labels)
    err = _failed(capsys, honest, "--data-dir", cifar10_root)
    assert "tau is 1.0, but profile 'verify' has tau 0.0001" in err


def test_B2_certificate_excuses_its_own_changes(honest, cifar10_root, capsys):
    """B2: 20 labels changed and *their* margins set to 0 in the certificate: the margins of this
    evaluation decide, and they are confident there."""
    good = _honest_cert(honest)
    labels, margins = good.labels.copy(), good.margins.copy()
    labels[:20] = (labels[:20] + 1) % 10
    margins[:20] = 0.0
    _forge(honest, cifar10_root, Certificate(50, 10, labels, margins, "verify").to_json(), labels)
    err = _failed(capsys, honest, "--data-dir", cifar10_root)
    assert "failed: 20 of 50 samples differ outside this evaluation's near-ties" in err
    assert "the reference's own margins call 20 of them near-ties (reported, not trusted)" in err


def test_B3_certificate_of_a_wider_profile(honest, cifar10_root, capsys):
    """A bf16 certificate (τ 0.25) may excuse only samples that are near-ties *here* under 0.25."""
    good = _honest_cert(honest)
    labels = good.labels.copy()
    far = int(np.argmax(good.margins))
    assert good.margins[far] >= 0.25
    labels[far] = (labels[far] + 1) % 10
    _forge(honest, cifar10_root, Certificate(50, 10, labels, np.zeros(50), "bf16").to_json(), labels)
    err = _failed(capsys, honest, "--data-dir", cifar10_root)
    assert f"indices {far}" in err and "outside this evaluation's near-ties" in err


# ------------------------------------------------------------------------------------------ the checkpoint

def _offset_checkpoint(path: Path, constant: bool) -> Path:
    """C's model: the last (logit) BN's mean moved by 10⁴·std: same argmax, every relative margin
    tiny. `constant`: its variance scaled too, so that every logit is ≈ 1 (a broken conversion)."""
    model = rbzoo.create_model("tiny_resnet", keep=0.2, p=0.5, end_with_bn=True, seed=11, score_init_scale=1.0)
    model.train()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _ in range(4):
            model(torch.rand(32, 3, 32, 32, generator=g))
        std = (model.last.running_var + 1e-5).sqrt()
        model.last.running_mean -= 1e4 * std
        if constant:
            model.last.running_var *= 1e8
    rbzoo.save(model.eval(), path, metadata={"rbzoo.dataset": rbzoo.data.dataset_metadata("cifar10")})
    return path


@pytest.mark.parametrize("constant", [False, True], ids=["offset", "constant"])
def test_C_count_only_card_for_a_degenerate_model(tmp_path, cifar10_root, capsys, constant):
    """C: a count-only card 30 samples off, for a model whose logits are all near-ties here."""
    ckpt = _offset_checkpoint(tmp_path / "offset.safetensors", constant)
    folder = _push(ckpt, tmp_path / "pub", cifar10_root)
    card = load_card(folder / "README.md")
    c = card.expected["clean_correct"]
    wrong = c + 30 if c + 30 <= 50 else c - 30
    exp = dict(card.expected, clean_correct=wrong, predictions_sha256=None, certificate_sha256=None, profile=None)
    _rewrite(folder, rb={"expected": exp, "claimed": dict(card.rb["claimed"], clean_acc=round(2.0 * wrong, 2))},
             drop_results=True)
    err = _failed(capsys, folder, "--data-dir", cifar10_root)
    assert "numerically degenerate" in err and "of 50 samples have a relative top-2 margin below 0.02" in err


def test_changed_checkpoint_with_updated_card_sha(honest, cifar10_root, capsys):
    """The file's bytes changed (one BN value), the card's SHA-256 and size updated to match: the
    whole-model digest stored in the file catches it, exit 3, the file named."""
    data = bytearray((honest / "model.safetensors").read_bytes())
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    start = 8 + n + header["last.running_mean"]["data_offsets"][0]
    data[start:start + 4] = struct.pack("<f", 123.0)
    (honest / "model.safetensors").write_bytes(bytes(data))
    _rewrite(honest, rb={"checkpoint_sha256": hashlib.sha256(data).hexdigest(), "checkpoint_bytes": len(data)})
    err = _failed(capsys, honest, "--data-dir", cifar10_root)
    assert "the published model.safetensors fails its checks" in err and "digest" in err


def test_corrupted_mask_is_named(honest, cifar10_root, capsys):
    data = bytearray((honest / "model.safetensors").read_bytes())
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    lo, hi = header["layer1.0.conv1.weight.mask"]["data_offsets"]
    for i in range(8 + n + lo, 8 + n + hi):
        data[i] ^= 0x5A
    (honest / "model.safetensors").write_bytes(bytes(data))
    _rewrite(honest, rb={"checkpoint_sha256": hashlib.sha256(data).hexdigest(), "checkpoint_bytes": len(data)})
    err = _failed(capsys, honest, "--data-dir", cifar10_root)
    assert "the published model.safetensors fails its checks" in err


def test_card_model_digest_of_another_model(honest, cifar10_root, capsys):
    _rewrite(honest, rb={"model_digest": "0" * 64})
    err = _failed(capsys, honest, "--data-dir", cifar10_root)
    assert "not the model the card describes" in err


def test_results_file_that_is_not_json(honest, cifar10_root, capsys):
    (honest / "results.json").write_text("{not json")
    err = _failed(capsys, honest, "--data-dir", cifar10_root)
    assert "results.json: not a readable results JSON" in err


# ------------------------------------------------------------------------------------------ names and history

def _squatter(template: Path, tmp_path: Path, data: Path, count_only: bool = False) -> Path:
    """A folder whose card is named like the shipped entry SHIPPED (an honest model otherwise)."""
    ckpt = template / "model.safetensors"
    folder = _push(ckpt, tmp_path / "squat" / SHIPPED, data, name=SHIPPED)
    if count_only:
        card = load_card(folder / "README.md")
        exp = dict(card.expected, predictions_sha256=None, certificate_sha256=None, profile=None)
        _rewrite(folder, rb={"expected": exp}, drop_results=True)
    return folder


def test_D_folder_named_like_a_shipped_entry_marks_nothing(honest_template, tmp_path, cifar10_root, capsys):
    folder = _squatter(honest_template, tmp_path, cifar10_root)
    rc, out, _ = _pull(capsys, folder, "--data-dir", cifar10_root)
    assert rc == 0 and "verified (exact)" in out  # the folder itself is honest ...
    (entry,) = [e for e in verified.list_zoo() if e.card.name == SHIPPED]
    assert entry.status == "import from source"  # ... and says nothing about the shipped entry
    rc, out, _ = _pull(capsys, "--list")
    assert rc == 0 and "verified" not in out


def test_D_hub_card_named_like_a_shipped_entry_marks_nothing(server, tiny_checkpoint, tmp_path, cifar10_root):
    from hub_server import TEST_TOKEN

    hub.push(tiny_checkpoint, "test-user/squat", data_dir=cifar10_root, name=SHIPPED, endpoint=server.url,
             token=TEST_TOKEN, cards_dir=tmp_path / "pusher-cards")
    r = zoo.pull("test-user/squat", data_dir=cifar10_root, endpoint=server.url, token=TEST_TOKEN)
    assert r.status == "verified" and r.card.name == SHIPPED and r.origin.startswith("hub:test-user/squat@")
    (entry,) = [e for e in verified.list_zoo() if e.card.name == SHIPPED]
    assert entry.status == "import from source"


def test_E_write_card_of_a_squatting_folder_leaves_the_shipped_card(honest_template, tmp_path, cifar10_root, capsys):
    folder = _squatter(honest_template, tmp_path, cifar10_root, count_only=True)
    shipped = tmp_path / "cards" / f"{SHIPPED}.md"
    before = shipped.read_bytes()
    rc, _, err = _pull(capsys, folder, "--data-dir", cifar10_root, "--write-card")
    assert rc != 0 and len(err.splitlines()) == 1 and "exists; pass --force to replace it" in err
    assert shipped.read_bytes() == before and not (tmp_path / "cards" / f"{SHIPPED}.certificate.json").exists()


def test_history_never_replaces_a_check(honest, tmp_path, cifar10_root, capsys, monkeypatch):
    """After an honest pull, an altered certificate (card untouched) fails in place, in a copy, and
    with a fresh RBZOO_HOME alike."""
    assert zoo.pull(str(honest), data_dir=cifar10_root).status == "verified"
    assert zoo.pull(str(honest), data_dir=cifar10_root).status == "cached"
    res = json.loads((honest / "results.json").read_text())
    good = Certificate.from_json(res["certificate"])
    labels = good.labels.copy()
    labels[0] = (labels[0] + 1) % 10
    res["certificate"] = Certificate(50, 10, labels, good.margins, "verify").to_json()
    copy = Path(shutil.copytree(honest, tmp_path / "copy"))
    (copy / "results.json").write_text(json.dumps(res))
    (honest / "results.json").write_text(json.dumps(res))
    for folder in (honest, copy):
        assert "the published certificate does not match the card" in _failed(capsys, folder, "--data-dir", cifar10_root)
    monkeypatch.setenv("RBZOO_HOME", str(tmp_path / "fresh"))
    assert "the published certificate does not match the card" in _failed(capsys, honest, "--data-dir", cifar10_root)


# ------------------------------------------------------------------------------------------ the source file

@pytest.fixture(scope="module")
def official(tmp_path_factory):
    from test_convert import make_official, save_official

    d = tmp_path_factory.mktemp("official")
    return save_official(make_official(), d / "a.pth"), save_official(make_official(seed=1), d / "b.pth")


def _imported_card(cards: Path, url, name="tiny-import") -> None:
    arch = rbzoo.create_model("tiny_resnet", end_with_bn=True, materialize=False).arch
    rb = {"name": name, "repo_id": None, "revision": None, "checkpoint": "model.safetensors",
          "checkpoint_sha256": None, "checkpoint_bytes": None, "model_digest": None, "float32_bytes": 100_000,
          "arch": arch, "keep": 0.2, "p": 0.5, "score_init_scale": 0.01, "objective": "pgd", "dataset": "cifar10",
          "eps": 8 / 255, "expected": {"n_examples": 50, "clean_correct": 0, "predictions_sha256": None,
                                       "data_sha256": None, "certificate_sha256": None, "profile": None},
          "source_url": url, "source_sha256": None, "claimed": {"clean_acc": 0.0, "robust_acc": None}}
    (cards / f"{name}.md").write_text(build_card(rb).render())


def _count_of(path: Path, data: Path) -> int:
    from rbzoo.exact import clean_accuracy

    ck = zoo.import_zoo_entry({"rbzoo": {"name": "probe", "arch": {"id": "tiny_resnet", "num_classes": 10,
                                                                   "end_with_bn": True},
                                         "keep": 0.2, "p": 0.5, "dataset": "cifar10"}}, path,
                              cache_dir=path.parent / "probe")
    return clean_accuracy(rbzoo.load(ck), rbzoo.data.get_dataset("cifar10", "test", data)).clean_correct


def test_unpinned_source_is_never_verified(official, tmp_path, cifar10_root, capsys):
    src, _ = official
    cards = tmp_path / "cards"
    _imported_card(cards, None)
    card = load_card(cards / "tiny-import.md")
    c = _count_of(src, cifar10_root)
    (cards / "tiny-import.md").write_text(build_card(dict(card.rb, expected=dict(card.expected, clean_correct=c),
                                                          claimed={"clean_acc": 2.0 * c, "robust_acc": None})).render())
    rc, out, _ = _pull(capsys, "tiny-import", "--source", src, "--data-dir", cifar10_root)
    assert rc == 0 and "NOT verified: unpinned source (count only)" in out and "verified (" not in out
    (entry,) = [e for e in verified.list_zoo() if e.card.name == "tiny-import"]
    assert entry.status == "unpinned source"
    # --write-card would launder the unpinned file into a card that pins it: refused
    rc, _, err = _pull(capsys, "tiny-import", "--source", src, "--data-dir", cifar10_root, "--write-card", "--force")
    assert rc == 2 and "--write-card would pin whatever" in err


def test_source_pinned_on_first_download(official, tmp_path, cifar10_root, capsys):
    """Trust on first use: the first download's SHA-256 is recorded; a later --source of another
    file is refused, naming both."""
    sys.path.insert(0, str(Path(__file__).parent))
    from test_fetch import FileServer

    src, other = official
    with FileServer(src.read_bytes()) as srv:
        _imported_card(tmp_path / "cards", srv.url)
        first = zoo.pull("tiny-import", verify=False)
        assert any("this first download pinned it" in n for n in first.notes)
        assert not zoo.pull("tiny-import", verify=False).notes  # pinned now: nothing to say
    err = _failed(capsys, "tiny-import", "--source", other, "--data-dir", cifar10_root)
    assert "the first download from" in err and "not the official file" in err


# ------------------------------------------------------------------------------------------ ONNX

def test_onnx_graph_of_a_degenerate_model_fails(tiny_checkpoint, tmp_path, cifar10_root):
    pytest.importorskip("onnxruntime")
    from rbzoo.onnx_export import build_proto, check_onnx

    offset = rbzoo.load(_offset_checkpoint(tmp_path / "offset.safetensors", constant=True))
    graph = build_proto(offset, image_size=32).SerializeToString()
    ds = rbzoo.data.get_dataset("cifar10", "test", cifar10_root)
    result = check_onnx(graph, rbzoo.load(tiny_checkpoint), ds)
    assert result.status == "failed" and not result.ok
    honest = check_onnx(build_proto(rbzoo.load(tiny_checkpoint), image_size=32).SerializeToString(),
                        rbzoo.load(tiny_checkpoint), ds)
    assert honest.ok and honest.max_rel_dev < 1e-5
