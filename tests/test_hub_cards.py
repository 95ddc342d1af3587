"""The model-card schema (rbzoo.cards): one validator, every field checked, errors name the field."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from rbzoo.cards import RBZOO_KEYS, build_card, load_card, parse_card, render_card, validate_card
from rbzoo.errors import HubError

REPO_CARDS = Path(__file__).resolve().parent.parent / "cards"


def paper_block(**changes) -> dict:
    """The rbzoo block of an imported zoo entry (ResNet34, CIFAR10, PGD: 77.30 / 45.06)."""
    rb = {
        "name": "rn34-cifar10-pgd", "repo_id": "rbzoo/rn34-cifar10-pgd", "revision": "a" * 40,
        "checkpoint": "model.safetensors", "checkpoint_sha256": "b" * 64, "checkpoint_bytes": 123_456,
        "model_digest": "f" * 64, "float32_bytes": 85_100_000,
        "arch": {"id": "cifar_resnet34", "num_classes": 10, "end_with_bn": True},
        "keep": 0.01, "p": 0.1, "score_init_scale": 0.01, "objective": "pgd", "dataset": "cifar10",
        "eps": 8 / 255,
        "expected": {"n_examples": 10000, "clean_correct": 7730, "predictions_sha256": "c" * 64, "data_sha256": None,
                     "certificate_sha256": "e" * 64, "profile": "verify"},
        "source_url": "https://onedrive.live.com/download?cid=X", "source_sha256": "d" * 64,
        "claimed": {"clean_acc": 77.30, "robust_acc": 45.06},
    }
    rb.update(changes)
    return rb


@pytest.fixture
def meta() -> dict:
    return copy.deepcopy(build_card(paper_block()).meta)


def _set(d: dict, path: tuple, value=..., delete: bool = False) -> dict:
    for key in path[:-1]:
        d = d[key]
    if delete:
        del d[path[-1]]
    else:
        d[path[-1]] = value
    return d


def _error(meta: dict) -> str:
    with pytest.raises(HubError) as e:
        validate_card(meta, "x.md")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("x.md: invalid model card: ")
    return msg


def test_valid_card_round_trips(meta):
    card = build_card(paper_block())
    text = card.render()
    assert text.startswith("---\nlibrary_name: rbzoo\n")
    again = parse_card(text, "rn34.md")
    assert again.meta == card.meta and again.body == card.body
    assert again.name == "rn34-cifar10-pgd" and again.expected["clean_correct"] == 7730
    assert again.robust_args == {"norm": "Linf", "eps": pytest.approx(8 / 255), "version": "standard"}
    metrics = again.meta["model-index"][0]["results"][0]["metrics"]
    assert [m["type"] for m in metrics] == ["accuracy", "robust_accuracy"]
    assert "@inproceedings{liu2022robust" in again.body and "rbzoo pull rbzoo/rn34-cifar10-pgd@" in again.body
    assert "85,100,000 bytes" in again.body  # size against float32
    # A card without a robust result and not yet published is valid too.
    draft = build_card(paper_block(repo_id=None, revision=None, checkpoint_sha256=None, checkpoint_bytes=None,
                                   claimed={"clean_acc": 77.3, "robust_acc": None}))
    assert parse_card(draft.render()).repo_id is None


@pytest.mark.parametrize("path", [("library_name",), ("license",), ("tags",), ("datasets",), ("model-index",),
                                  ("rbzoo",)] + [("rbzoo", k) for k in RBZOO_KEYS]
                         + [("rbzoo", "expected", k) for k in ("n_examples", "clean_correct", "predictions_sha256",
                                                                "data_sha256", "certificate_sha256", "profile")]
                         + [("rbzoo", "claimed", "clean_acc"), ("rbzoo", "claimed", "robust_acc"),
                            ("rbzoo", "arch", "id"), ("rbzoo", "arch", "num_classes")])
def test_each_missing_field_is_named(meta, path):
    _set(meta, path, delete=True)
    assert f"`{'.'.join(path)}` is missing" in _error(meta)


BAD_VALUES = [
    (("library_name",), "transformers"), (("license",), ""), (("tags",), []), (("tags",), ["robust"]),
    (("datasets",), ["cifar100"]), (("model-index",), []),
    (("rbzoo", "name"), "RN34 CIFAR"), (("rbzoo", "repo_id"), "no-slash"), (("rbzoo", "revision"), "main"),
    (("rbzoo", "checkpoint"), "../model.safetensors"), (("rbzoo", "checkpoint"), "model.pth"),
    (("rbzoo", "checkpoint_sha256"), "xyz"), (("rbzoo", "checkpoint_bytes"), 0),
    (("rbzoo", "checkpoint_bytes"), True), (("rbzoo", "float32_bytes"), 1.5), (("rbzoo", "arch"), "cifar_resnet34"),
    (("rbzoo", "keep"), 0), (("rbzoo", "keep"), 1.5), (("rbzoo", "keep"), "1e-2"), (("rbzoo", "p"), 2),
    (("rbzoo", "score_init_scale"), -1), (("rbzoo", "objective"), "sgd"), (("rbzoo", "dataset"), "mnist"),
    (("rbzoo", "eps"), 0), (("rbzoo", "expected"), None), (("rbzoo", "expected", "n_examples"), 0),
    (("rbzoo", "expected", "clean_correct"), 10001), (("rbzoo", "expected", "predictions_sha256"), 7),
    (("rbzoo", "expected", "data_sha256"), "C" * 64), (("rbzoo", "expected", "certificate_sha256"), "e" * 63),
    (("rbzoo", "expected", "profile"), "tf32"), (("rbzoo", "model_digest"), "F" * 64), (("rbzoo", "source_url"), "ftp://x"),
    (("rbzoo", "source_sha256"), "d" * 63), (("rbzoo", "claimed"), [77.3]), (("rbzoo", "claimed", "clean_acc"), 101),
    (("rbzoo", "claimed", "robust_acc"), "45"), (("rbzoo", "arch", "num_classes"), "ten"),
]


@pytest.mark.parametrize("path,value", BAD_VALUES, ids=[".".join(p) + "=" + repr(v) for p, v in BAD_VALUES])
def test_each_invalid_field_is_named(meta, path, value):
    _set(meta, path, value)
    assert f"`{'.'.join(path)}`" in _error(meta)


def test_cross_field_consistency(meta):
    m = copy.deepcopy(meta)
    m["rbzoo"]["claimed"]["clean_acc"] = 77.5
    assert "`rbzoo.claimed.clean_acc` is 77.5 but rbzoo.expected gives 77.3000 (7730/10000)" in _error(m)
    m = copy.deepcopy(meta)
    m["model-index"][0]["results"][0]["metrics"][0]["value"] = 70.0
    assert "`model-index[0].results[0].metrics[0].value` is 70.0" in _error(m)
    m = copy.deepcopy(meta)
    m["rbzoo"]["claimed"]["robust_acc"] = None
    assert "`model-index[0].results[0].metrics[1]` is a robust_accuracy metric" in _error(m)
    m = copy.deepcopy(meta)
    m["model-index"][0]["results"][0]["metrics"][1]["args"]["eps"] = 4 / 255
    assert "metrics[1].args.eps` is" in _error(m)
    m = copy.deepcopy(meta)
    m["model-index"][0]["results"][0]["metrics"][1]["args"]["norm"] = "Linfinity"
    assert "metrics[1].args.norm`" in _error(m)
    m = copy.deepcopy(meta)
    m["model-index"][0]["name"] = "other"
    assert "`model-index[0].name` must equal rbzoo.name" in _error(m)
    m = copy.deepcopy(meta)
    m["model-index"][0]["results"][0]["dataset"]["type"] = "cifar100"
    assert "`model-index[0].results[0].dataset.type`" in _error(m)
    m = copy.deepcopy(meta)
    m["rbzoo"]["arch"]["num_classes"] = 100
    assert "`rbzoo.arch.num_classes` is 100 but cifar10 has 10 classes" in _error(m)
    m = copy.deepcopy(meta)
    m["rbzoo"]["repo_id"] = None
    assert "`rbzoo.revision` is set but rbzoo.repo_id is null" in _error(m)
    m = copy.deepcopy(meta)
    m["rbzoo"]["checkpoint_sha256"] = None
    assert "`rbzoo.checkpoint_sha256` must be set when rbzoo.repo_id is" in _error(m)
    m = copy.deepcopy(meta)
    m["rbzoo"]["checkpoint_sha_256"] = "b" * 64  # a typo is not silently ignored
    assert "`rbzoo.checkpoint_sha_256` is not a field of the rbzoo card schema" in _error(m)
    m = copy.deepcopy(meta)
    m["pipeline_tag"] = "image-classification"  # other Hub metadata is allowed
    validate_card(m, "x.md")


def test_front_matter_errors(meta):
    body = "# hi\n"
    for text, needle in [("# no front matter\n", "no YAML front matter"),
                         ("---\nlibrary_name: rbzoo\n", "not closed"),
                         ("---\nrbzoo: [unclosed\n---\n", "not valid YAML (line"),
                         ("---\n- a list\n---\n", "`front matter` must be a mapping")]:
        with pytest.raises(HubError) as e:
            parse_card(text, "bad.md")
        assert needle in str(e.value)
    # Hex strings that YAML would read as numbers are quoted when rendering.
    card = build_card(paper_block(revision="1" * 40, checkpoint_sha256="2" * 64))
    assert parse_card(card.render()).revision == "1" * 40
    # ... while an unquoted all-digit hash in a hand-written card is an error naming the field.
    m = copy.deepcopy(meta)
    text = render_card(m, body).replace(f"revision: {'a' * 40}", f"revision: {'1' * 40}")
    with pytest.raises(HubError, match="`rbzoo.revision` must be a 40-hex commit id"):
        parse_card(text, "x.md")
    assert yaml.safe_load(text.split("---")[1])["rbzoo"]["revision"] == int("1" * 40)


def test_zoo_cards_in_the_repository_are_valid():
    """Every card in the repository's cards/ folder passes the schema and is named after its file."""
    for path in sorted(REPO_CARDS.glob("*.md")):
        if path.name.lower() == "readme.md":
            continue
        card = load_card(path)
        assert card.name == path.stem, path
        assert card.render() == render_card(card.meta, card.body)


def test_card_tells_its_reader_commands_that_work():
    """Not `pip install rbzoo` (not on PyPI) nor a bare name only the pushing machine knows."""
    cases = [(paper_block(), "rbzoo/rn34-cifar10-pgd@" + "a" * 40),  # a pinned Hub repo
             (paper_block(revision=None), "rbzoo/rn34-cifar10-pgd"),
             (paper_block(repo_id=None, revision=None), "rn34-cifar10-pgd"),  # an imported entry shipped with rbzoo
             (paper_block(name="best", repo_id=None, revision=None, source_url=None, source_sha256=None), "FOLDER")]
    for rb, spec in cases:
        body = build_card(rb).body
        assert "pip install rbzoo" not in body and "pip install -e ." in body and "not on PyPI" in body
        assert f"rbzoo pull {spec} --data-dir data" in body and f'pull("{spec}"' in body, spec
    assert "written by `rbzoo push --to`" in body and "rbzoo pull best" not in body
    for path in sorted(REPO_CARDS.glob("*.md")):  # the shipped cards say the same
        text = path.read_text("utf-8")
        assert "pip install rbzoo" not in text and "pip install -e ." in text, path.name
