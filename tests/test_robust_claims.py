"""A robust claim a pull can check: eval → push --to → pull --robust, spot checks, and forged evidence.

One cheap evaluation (12 points in 3 chunks, APGD-CE with 3 iterations) is published honestly and
in forged variants, each re-published through `rbzoo push --to` so that every hash the card pins
stays consistent: only the checks of `pull --robust` / `--spot-check` can catch them.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import rbzoo
import rbzoo.data
from rbzoo import hub, zoo
from rbzoo.cli import main
from rbzoo.errors import ConfigError, VerificationError
from rbzoo.evaluate import EvalConfig, run_eval
from rbzoo.evidence import EXACT, Encoded, Evidence, _deflate, read_evidence
from rbzoo.exact import pack_flags, unpack_flags
from rbzoo.robust_check import RobustVerdict, catch_probability
from rbzoo.verdict import spot_cap

from test_eval import trained_checkpoint  # noqa: F401 (fixtures)

pytestmark = pytest.mark.usefixtures("one_thread")
N, EPS = 12, 2 / 255


@pytest.fixture(scope="module")
def evaluated(trained_checkpoint, cifar10_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("robust_eval") / "r.json"
    r = run_eval(EvalConfig(model=str(trained_checkpoint), data_dir=str(cifar10_root), device="cpu", n_examples=N,
                            chunk_size=4, eps=EPS, version="custom", attacks=["apgd-ce"], n_iter=3, n_restarts=1, seed=1,
                            out=out, state=out.with_name("r.state")))
    assert 0 < r["robust_correct"] < r["clean_correct"] - 1  # some broken, some robust: a non-trivial claim
    return out


@pytest.fixture(scope="module")
def evaluated_fast(trained_checkpoint, cifar10_root, tmp_path_factory) -> Path:
    """The same evaluation under the `fast` profile: on a CPU `verify`'s arithmetic, so a `verify`
    spot check is a cross-profile one whose honest outcome is known (no re-run break)."""
    out = tmp_path_factory.mktemp("robust_eval_fast") / "r.json"
    run_eval(EvalConfig(model=str(trained_checkpoint), data_dir=str(cifar10_root), device="cpu", n_examples=N,
                        chunk_size=4, eps=EPS, version="custom", attacks=["apgd-ce"], n_iter=3, n_restarts=1, seed=1,
                        numerics="fast", out=out, state=out.with_name("r.state")))
    return out


def publish(ckpt: Path, src: Path, folder: Path, mutate=None) -> Path:
    """Copy results + evidence, let `mutate(results, items)` forge them, fix every count and hash, push --to."""
    work = folder.with_name(folder.name + ".src")
    work.mkdir()
    r = json.loads(src.read_text())
    ev = read_evidence((src.parent / r["evidence"]["file"]).read_bytes(), n_examples=r["n_examples"], numel=3 * 32 * 32)
    items = list(ev.items)
    if mutate is not None:
        items = mutate(r, items)
    data = Evidence(items, ev.meta).to_bytes()
    (work / "r.evidence.safetensors").write_bytes(data)
    r["evidence"] = dict(r["evidence"], file="r.evidence.safetensors", sha256=hashlib.sha256(data).hexdigest(), n=len(items))
    (work / "r.json").write_text(json.dumps(r))
    hub.push(ckpt, to=folder, results=work / "r.json", cards_dir=work / "cards")
    return folder


def _pull(folder: Path, cifar10_root: Path, **kw):
    return zoo.pull(str(folder), data_dir=cifar10_root, cards_dir=folder / "no-cards", **kw)


def test_honest_round_trip_proves_every_break(evaluated, trained_checkpoint, cifar10_root, tmp_path, capsys):
    folder = publish(trained_checkpoint, evaluated, tmp_path / "pub")
    r = json.loads(evaluated.read_text())
    card = zoo.load_card(folder / "README.md")
    assert card.rb["claimed"]["evidence_sha256"] == hashlib.sha256((folder / "evidence.safetensors").read_bytes()).hexdigest()
    assert card.rb["claimed"]["robust_correct"] == r["robust_correct"]
    breaks = r["clean_correct"] - r["robust_correct"]
    p = _pull(folder, cifar10_root, robust=True)
    assert p.robust["proved"] == breaks and p.robust["bound_correct"] == r["robust_correct"]
    assert p.robust_message.startswith(f"robust ≤ {100 * r['robust_correct'] / N:.2f} %: {breaks}/{breaks} breaks proved")
    capsys.readouterr()
    assert main(["pull", str(folder), "--data-dir", str(cifar10_root), "--spot-check", "all"]) == 0
    out = capsys.readouterr().out
    assert "3 of 3 chunks reproduced exactly" in out and "probability 100 %" in out, out
    rec = [v for v in zoo.registry_entries().values() if v.get("path") == str(folder / "model.safetensors")]
    assert rec and rec[-1]["robust"]["status"] == "proved" and rec[-1]["robust"]["spot_check"]["chunks"] == [0, 1, 2]


@pytest.mark.parametrize("field, value, stated", [("eps", 8 / 255, "Linf ε = 8/255, AutoAttack custom"),
                                                    ("norm", "L2", "L2 ε = 2/255, AutoAttack custom"),
                                                    ("version", "standard", "Linf ε = 2/255, AutoAttack standard")])
def test_card_claiming_another_threat_model_than_the_attack_is_refused(field, value, stated, evaluated, trained_checkpoint,
                                                                       cifar10_root, tmp_path, capsys):
    """The evidence proves breaks of the attack the results state; a card that claims its robust
    accuracy under a larger ε, another norm or a stronger attack than that is refused, naming both."""
    from rbzoo.cards import render_card

    folder = publish(trained_checkpoint, evaluated, tmp_path / "pub")
    card = zoo.load_card(folder / "README.md")
    metric = next(m for m in card.meta["model-index"][0]["results"][0]["metrics"] if m["type"] == "robust_accuracy")
    metric["args"][field] = value
    if field == "eps":
        card.meta["rbzoo"]["eps"] = value  # the card's own fields agree: only the attack behind them differs
    (folder / "README.md").write_text(render_card(card.meta, card.body))
    capsys.readouterr()
    assert main(["pull", str(folder), "--data-dir", str(cifar10_root), "--robust"]) == 3
    err = capsys.readouterr().err.strip()
    assert f"the card claims robust accuracy under {stated}" in err and \
        "but the published results come from Linf ε = 2/255, AutoAttack custom (apgd-ce)" in err and "\n" not in err, err


def test_a_named_suite_with_changed_iterations_is_published_as_custom(evaluated, trained_checkpoint, cifar10_root,
                                                                       tmp_path, capsys):
    """AutoAttack "standard" run with 3 iterations is not AutoAttack standard: push writes the card's
    robust metric as "custom", and a card that calls it "standard" is refused on pull --robust."""
    from rbzoo.cards import render_card
    from rbzoo.labels import card_attack

    assert card_attack({"norm": "Linf", "eps": EPS, "version": "standard"})["version"] == "standard"
    assert card_attack({"norm": "Linf", "eps": EPS, "version": "plus", "n_queries": 10})["version"] == "custom"

    def as_standard(r, items):
        r["attack"]["version"] = "standard"  # n_iter 3, n_restarts 1 stay: a weakened suite
        return items

    folder = publish(trained_checkpoint, evaluated, tmp_path / "pub", as_standard)
    card = zoo.load_card(folder / "README.md")
    assert card.robust_args["version"] == "custom"
    assert _pull(folder, cifar10_root, robust=True).robust["proved"] > 0
    metric = next(m for m in card.meta["model-index"][0]["results"][0]["metrics"] if m["type"] == "robust_accuracy")
    metric["args"]["version"] = "standard"
    (folder / "README.md").write_text(render_card(card.meta, card.body))
    capsys.readouterr()
    assert main(["pull", str(folder), "--data-dir", str(cifar10_root), "--robust"]) == 3
    err = capsys.readouterr().err.strip()
    assert ("the card claims robust accuracy under Linf ε = 2/255, AutoAttack standard, but the published results come "
            "from Linf ε = 2/255, AutoAttack standard, n_iter 3, n_restarts 1") in err, err


def test_invalid_attack_settings_are_refused_on_push_and_pull(evaluated, trained_checkpoint, cifar10_root, tmp_path,
                                                              capsys):
    """A spot check replays the attack the results state: settings it cannot replay are refused when
    published (exit 2) and when pulled (exit 3), in one line, never a traceback."""
    def drop_seed(r, items):
        del r["attack"]["seed"]
        return items

    with pytest.raises(ConfigError, match=r"refusing to publish an inconsistent robust claim: results: the attack "
                                          r"settings are not valid \('seed' is missing\)"):
        publish(trained_checkpoint, evaluated, tmp_path / "bad", drop_seed)
    folder = publish(trained_checkpoint, evaluated, tmp_path / "pub")
    r = json.loads((folder / "results.json").read_text())
    r["attack"]["chunk_size"] = 0
    (folder / "results.json").write_text(json.dumps(r))
    capsys.readouterr()
    assert main(["pull", str(folder), "--data-dir", str(cifar10_root), "--robust"]) == 3
    err = capsys.readouterr().err.strip()
    assert "results: the attack settings are not valid (chunk size must be >= 1, got 0)" in err and "\n" not in err, err


def test_hidden_break_is_caught_by_spot_check_all(evaluated, trained_checkpoint, cifar10_root, tmp_path, capsys):
    hidden = {}

    def hide(r, items):  # flip one broken sample to "robust" and drop its evidence: counts stay consistent
        flags = unpack_flags(r["robust_flags"], N)
        e = items[0]
        hidden["p"] = e.position
        flags[e.position] = True
        r.update(robust_flags=pack_flags(flags), robust_correct=r["robust_correct"] + 1,
                 robust_acc=(r["robust_correct"] + 1) / N)
        return items[1:]

    folder = publish(trained_checkpoint, evaluated, tmp_path / "hidden", hide)
    assert _pull(folder, cifar10_root, robust=True).robust["proved"] >= 1  # the evidence alone cannot see it
    capsys.readouterr()
    assert main(["pull", str(folder), "--data-dir", str(cifar10_root), "--spot-check", "all"]) == 3
    err = capsys.readouterr().err
    assert "robust claim refused" in err and str(hidden["p"]) in err and "\n" not in err.strip(), err


def _hide(k: int, hidden: list):
    """A forgery: flip `k` broken samples to "robust" and drop their evidence (counts kept consistent)."""

    def mutate(r, items):
        flags = unpack_flags(r["robust_flags"], N)
        hidden.extend(e.position for e in items[:k])
        flags[hidden] = True
        r.update(robust_flags=pack_flags(flags), robust_correct=r["robust_correct"] + k, robust_acc=(r["robust_correct"] + k) / N)
        return items[k:]

    return mutate


def test_cross_profile_spot_check_counts_rerun_breaks_up_to_the_cap(evaluated_fast, trained_checkpoint, cifar10_root,
                                                                      tmp_path, capsys):
    """Published under `fast`, re-run under `verify`: an honest claim passes with no re-run break;
    breaks hidden up to the cap are found, counted into the bound and named; beyond it, refused."""
    r = json.loads(evaluated_fast.read_text())
    robust, breaks = r["robust_correct"], r["clean_correct"] - r["robust_correct"]
    p = _pull(publish(trained_checkpoint, evaluated_fast, tmp_path / "honest"), cifar10_root, robust=True,
              spot_check_chunks="all")
    cap = spot_cap(robust)
    assert (f"3 of 3 chunks reproduced within tolerance (another numerics profile, fast → verify: 0 re-run breaks of "
            f"robust-flagged samples, counted; cap {cap})") in p.robust_message, p.robust_message
    assert p.robust["bound_correct"] == robust and p.robust["spot_check"]["rerun_breaks"] == []
    within = spot_cap(robust + 1)
    assert within >= 1, "the measured cap allows one re-run break among this many robust-flagged samples"
    hidden: list = []
    p = _pull(publish(trained_checkpoint, evaluated_fast, tmp_path / "within", _hide(1, hidden)), cifar10_root,
              robust=True, spot_check_chunks="all")
    assert p.robust["rerun_breaks"] == 1 and p.robust["spot_check"]["rerun_breaks"] == hidden
    assert p.robust["bound_correct"] == robust  # the hidden break is counted: the bound is the honest count
    assert (f"{breaks - 1}/{breaks - 1} breaks proved, 1 more by the spot check's re-run (samples {hidden[0]})"
            in p.robust_message), p.robust_message
    assert f"1 re-run break of a robust-flagged sample, counted; cap {within})" in p.robust_message
    k = next(h for h in range(1, breaks + 1) if h > spot_cap(robust + h))  # the fewest hidden breaks beyond the cap
    hidden = []
    folder = publish(trained_checkpoint, evaluated_fast, tmp_path / "beyond", _hide(k, hidden))
    capsys.readouterr()
    assert main(["pull", str(folder), "--data-dir", str(cifar10_root), "--spot-check", "all"]) == 3
    err = capsys.readouterr().err.strip()
    assert (f"breaks {k} samples the claim calls robust" in err and f"cap {spot_cap(robust + k)} of {robust + k}" in err
            and f"samples {', '.join(map(str, sorted(hidden)))}" in err and "\n" not in err), err


def _exact(e: Encoded, image: torch.Tensor) -> Encoded:
    return Encoded(e.position, e.label, e.adv_label, e.attack, EXACT, 0.0, _deflate(image.numpy().astype("<f4").tobytes()))


def test_same_profile_other_example_bytes_are_reported_not_refused(evaluated, trained_checkpoint, cifar10_root, tmp_path):
    """The same adversarial input stored another way (exactly, not quantized): the flags reproduce,
    the bytes do not. Other kernels on the same profile do that (docs/numerics.md); the stored
    example is proved on its own, so the spot check reports it and passes."""
    from rbzoo.evidence import decode_one

    ds = rbzoo.data.get_dataset("cifar10", "test", cifar10_root)
    moved = []

    def restore(r, items):
        e = items[0]
        moved.append(e.position)
        return [_exact(e, decode_one(ds[e.position][0], e))] + items[1:]

    p = _pull(publish(trained_checkpoint, evaluated, tmp_path / "bytes", restore), cifar10_root, robust=True,
              spot_check_chunks="all")
    r = json.loads(evaluated.read_text())
    assert p.robust["bound_correct"] == r["robust_correct"] and p.robust["spot_check"]["evidence_differs"] == moved
    assert (f"3 of 3 chunks reproduced exactly (robust flags; the re-run's adversarial examples of samples {moved[0]} "
            f"differ from the stored ones") in p.robust_message, p.robust_message


@pytest.mark.parametrize("forgery", ["clean image", "outside eps", "outside [0, 1]"])
def test_forged_examples_are_refused(forgery, evaluated, trained_checkpoint, cifar10_root, tmp_path, capsys):
    ds = rbzoo.data.get_dataset("cifar10", "test", cifar10_root)

    def forge(r, items):
        e = items[0]
        x = ds[e.position][0]
        if forgery == "clean image":
            adv = x
        elif forgery == "outside eps":
            adv = (x + 3 * EPS * torch.where(x < 0.5, 1.0, -1.0)).clamp(0, 1)
        else:
            adv = x - 0.9 * EPS  # inside the ball, below 0 where x < 0.9 ε
            assert adv.min() < 0
        return [_exact(e, adv)] + items[1:]

    folder = publish(trained_checkpoint, evaluated, tmp_path / "forged", forge)
    first = read_evidence((folder / "evidence.safetensors").read_bytes(), n_examples=N, numel=3072).items[0].position
    capsys.readouterr()
    assert main(["pull", str(folder), "--data-dir", str(cifar10_root), "--robust"]) == 3
    err = capsys.readouterr().err.strip()
    expected = {"clean image": "classified correctly", "outside eps": "outside the Linf ball", "outside [0, 1]": "outside [0, 1]"}
    assert expected[forgery] in err and f"samples {first}" in err and "\n" not in err, err


def test_broken_flag_without_evidence_is_refused(evaluated, trained_checkpoint, cifar10_root, tmp_path):
    def drop(r, items):
        return items[1:]  # the flag still says broken

    with pytest.raises(ConfigError, match="inconsistent robust claim"):
        publish(trained_checkpoint, evaluated, tmp_path / "dropped", drop)
    # The same forgery written by hand (no push to refuse it): the pull refuses it, naming the sample.
    folder = publish(trained_checkpoint, evaluated, tmp_path / "hand")
    ev = read_evidence((folder / "evidence.safetensors").read_bytes(), n_examples=N, numel=3072)
    lost, kept = ev.items[0].position, ev.items[1:]
    moved = Encoded(int(np.flatnonzero(unpack_flags(json.loads(evaluated.read_text())["robust_flags"], N))[0]),
                    *[getattr(ev.items[0], k) for k in ("label", "adv_label", "attack", "level", "scale", "payload")])
    data = Evidence(sorted(kept + [moved], key=lambda e: e.position), ev.meta).to_bytes()  # counts kept
    (folder / "evidence.safetensors").write_bytes(data)
    r = json.loads((folder / "results.json").read_text())
    r["evidence"]["sha256"] = hashlib.sha256(data).hexdigest()
    (folder / "results.json").write_text(json.dumps(r))
    card = (folder / "README.md").read_text()
    pin = zoo.load_card(folder / "README.md").rb["claimed"]["evidence_sha256"]
    (folder / "README.md").write_text(card.replace(pin, r["evidence"]["sha256"]))
    with pytest.raises(VerificationError, match=rf"samples {lost} are flagged broken without evidence"):
        _pull(folder, cifar10_root, robust=True)


def test_near_ties_are_reported_not_failed(evaluated, trained_checkpoint, cifar10_root, tmp_path):
    """Under bf16 (τ = 0.25) weak breaks are near-ties: reported, not counted, never a failure."""
    folder = publish(trained_checkpoint, evaluated, tmp_path / "near")
    p = _pull(folder, cifar10_root, robust=True, numerics="bf16", spot_check_chunks=1, spot_seed=0)
    r = json.loads(evaluated.read_text())
    assert "1 of 3 chunks reproduced within tolerance (another numerics profile, verify → bf16: " in p.robust_message
    assert "caught with probability 33 %" in p.robust_message
    near = p.robust["near_ties"]
    assert near and "near-ties (adversarial margin < τ, not counted)" in p.robust_message
    assert p.robust["proved"] + len(near) == r["clean_correct"] - r["robust_correct"]
    assert p.robust["bound_correct"] >= r["robust_correct"] + len(near) - 1  # the bound loosens, nothing fails


def test_official_entry_without_evidence_says_so_and_catch_probability():
    from rbzoo.cards import load_cards
    from rbzoo.constants import cards_dir

    cards = [c for _, c in load_cards(cards_dir()) if c.kind != "reference"]  # the paper's nine
    assert len(cards) == 9 and all(c.rb["claimed"].get("evidence_sha256") is None for c in cards)
    assert catch_probability(20, 2, 2) == pytest.approx(1 - (18 * 17) / (20 * 19))
    assert catch_probability(8, 1, 8) == 1.0 and catch_probability(8, 0, 3) == 0.0


def test_bound_counts_each_sample_shown_non_robust_once():
    """Wrong on the clean pass here, a proved published break, a proved re-run break: a sample in
    two of these sets still lowers the bound by one."""
    v = RobustVerdict(10, 7, 3, proved=np.array([1, 2]), near_ties=np.array([3]), incorrect_here=np.array([2, 5]),
                      spot={"rerun_breaks": [7, 5], "message": "checked"})
    assert v.bound == 10 - len({1, 2, 5, 7})
    assert v.message().startswith("robust ≤ 60.00 %: 2/3 breaks proved, 2 more by the spot check's re-run (samples 7, 5)")
    assert v.to_json()["rerun_breaks"] == 2 and v.to_json()["bound_correct"] == 6


# --- sizes are bounded before anything is read ---------------------------------------------------

HUGE = 1 << 40  # a sparse file: reading it whole would exhaust memory, refusing it costs a stat


def _grow(path: Path, size: int = HUGE) -> None:
    with open(path, "r+b") as f:
        f.truncate(size)


@pytest.mark.parametrize("name", ["evidence.safetensors", "results.json"])
def test_oversized_published_file_is_refused_unread_on_pull(name, evaluated, trained_checkpoint, cifar10_root, tmp_path,
                                                            capsys):
    from rbzoo._io import MAX_RESULTS_BYTES
    from rbzoo.evidence import max_evidence_bytes

    folder = publish(trained_checkpoint, evaluated, tmp_path / "big")
    _grow(folder / name)
    capsys.readouterr()
    assert main(["pull", str(folder), "--data-dir", str(cifar10_root), "--robust"]) == 3
    err = capsys.readouterr().err.strip()
    limit = max_evidence_bytes(N, 3 * 32 * 32) if name == "evidence.safetensors" else MAX_RESULTS_BYTES
    assert f"{name}: {HUGE:,} bytes is more than {limit:,}" in err and "\n" not in err, err


@pytest.mark.parametrize("name", ["evidence", "results"])
def test_oversized_local_input_is_refused_unread_on_push(name, evaluated, trained_checkpoint, tmp_path, capsys):
    from rbzoo._io import MAX_RESULTS_BYTES
    from rbzoo.evidence import max_evidence_bytes

    work = tmp_path / "in"
    work.mkdir()
    r = json.loads(evaluated.read_text())
    shutil.copy(evaluated.parent / r["evidence"]["file"], work / r["evidence"]["file"])
    shutil.copy(evaluated, work / "r.json")
    big = work / (r["evidence"]["file"] if name == "evidence" else "r.json")
    _grow(big)
    capsys.readouterr()
    assert main(["push", str(trained_checkpoint), "--to", str(tmp_path / "pub"), "--results", str(work / "r.json"),
                 "--cards-dir", str(work / "cards")]) == 2
    err = capsys.readouterr().err.strip()
    limit = max_evidence_bytes(N, 3 * 32 * 32) if name == "evidence" else MAX_RESULTS_BYTES
    assert f"{big}: {HUGE:,} bytes is more than {limit:,}" in err and "\n" not in err, err
    assert not (tmp_path / "pub").exists()


def test_oversized_evidence_on_the_hub_is_refused_unread(server, evaluated, trained_checkpoint, cifar10_root, tmp_path):
    """The same bound on a Hub download: an evidence file one byte past what the card's evaluation can
    need is refused (exit 3), naming the repo, the commit and both sizes, on the size the server
    states, before a byte of it is downloaded."""
    from huggingface_hub import CommitOperationAdd, HfApi
    from hub_server import TEST_TOKEN

    from rbzoo.evidence import max_evidence_bytes

    repo = "test-user/big-evidence"
    hub.push(trained_checkpoint, repo, results=evaluated, endpoint=server.url, token=TEST_TOKEN,
             cards_dir=tmp_path / "cards")
    limit = max_evidence_bytes(N, 3 * 32 * 32)
    commit = HfApi(endpoint=server.url, token=TEST_TOKEN).create_commit(
        repo, operations=[CommitOperationAdd("evidence.safetensors", b"\0" * (limit + 1))], commit_message="grow").oid
    with pytest.raises(VerificationError) as e:
        zoo.pull(repo, data_dir=cifar10_root, endpoint=server.url, token=TEST_TOKEN, cards_dir=tmp_path / "cards",
                 robust=True)
    assert str(e.value).startswith(f"{repo}@{commit[:12]}: the published evidence.safetensors: {limit + 1:,} bytes is "
                                   f"more than {limit:,}") and str(e.value).endswith("refusing to download it"), e.value
    from rbzoo.constants import hf_cache_dir

    assert not [p for p in Path(hf_cache_dir()).rglob("evidence.safetensors") if p.stat().st_size > limit]
