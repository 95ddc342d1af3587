"""Model cards: Hugging Face YAML front matter + markdown body, checked by ONE schema.

A card is `cards/<name>.md` in the zoo and `README.md` in a Hub repo. The front matter follows
the Hub's conventions (`library_name`, `license`, `tags`, `datasets`, `model-index` with the clean
and AutoAttack robust accuracy) and adds an `rbzoo` block: where the checkpoint lives, its SHA-256,
how it was made, and the *exact* clean result (`expected`) that `rbzoo pull` reproduces. The
schema is the one in `docs/contracts.md`; :func:`validate_card` is its only implementation, and
an invalid card is a :class:`HubError` naming the offending field.
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from .constants import NORMS, NUMERICS_PROFILES, OBJECTIVES
from .errors import HubError, RbzooError
from .labels import attack_label, eps_label

TAGS = ["rbzoo", "adversarial-robustness", "binary-neural-networks", "pruning", "autoattack"]
DATASET_NAMES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "imagenet100": "ImageNet-100",
                 "digits": "Digits (scikit-learn 8x8)"}
RBZOO_KEYS = ("name", "repo_id", "revision", "checkpoint", "checkpoint_sha256", "checkpoint_bytes",
              "model_digest", "float32_bytes", "arch", "keep", "p", "score_init_scale", "objective", "dataset", "eps",
              "expected", "source_url", "source_sha256", "claimed")
# `expected` is the reference a pull re-checks: the correct count, the per-sample labels' digest and,
# when published, the verification certificate (per-sample labels and top-2 margins, docs/numerics.md)
# with the numerics profile it was made under. Without a certificate a pull can compare counts only.
EXPECTED_KEYS = ("n_examples", "clean_correct", "predictions_sha256", "data_sha256", "certificate_sha256", "profile")
CLAIMED_KEYS = ("clean_acc", "robust_acc", "robust_correct", "evidence_sha256")
# `claimed.robust_correct` and `claimed.evidence_sha256` (optional) pin the evidence of a robust claim:
# the published `evidence.safetensors` holding the adversarial input of every broken sample.
# Optional `rbzoo` fields: `config`, the shipped training config that reproduces the entry (`rbzoo
# reproduce`); `kind`, "model" (the default) or "reference" (numbers to reproduce, no published
# file); `reproduction`, the summary of a reproduction report carried by `rbzoo push --reproduction`.
OPTIONAL_KEYS = ("config", "kind", "reproduction")
KINDS = ("model", "reference")

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,95}$")
REPO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
FILE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*\.safetensors$")
HEX40 = re.compile(r"^[0-9a-f]{40}$")
HEX64 = re.compile(r"^[0-9a-f]{64}$")
MAX_CARD_BYTES = 1 << 20  # a card is text; anything bigger is not one

CITATION = """@inproceedings{liu2022robust,
  title={Robust Binary Models by Pruning Randomly-initialized Networks},
  author={Chen Liu and Ziqi Zhao and Sabine S{\\"u}sstrunk and Mathieu Salzmann},
  booktitle={Advances in Neural Information Processing Systems},
  year={2022},
  url={https://openreview.net/forum?id=5g-h_DILemH}
}"""


@dataclass
class Card:
    """A validated card: `meta` is the whole front matter, `body` the markdown after it."""

    meta: dict
    body: str

    @property
    def rb(self) -> dict:
        return self.meta["rbzoo"]

    @property
    def name(self) -> str:
        return self.rb["name"]

    @property
    def repo_id(self) -> str | None:
        return self.rb["repo_id"]

    @property
    def revision(self) -> str | None:
        return self.rb["revision"]

    @property
    def dataset(self) -> str:
        return self.rb["dataset"]

    @property
    def kind(self) -> str:
        return self.rb.get("kind") or "model"

    @property
    def config(self) -> str | None:
        return self.rb.get("config")

    @property
    def expected(self) -> dict:
        return self.rb["expected"]

    @property
    def robust_args(self) -> dict | None:
        for m in self.meta["model-index"][0]["results"][0]["metrics"]:
            if m["type"] == "robust_accuracy":
                return dict(m["args"])
        return None

    def render(self) -> str:
        return render_card(self.meta, self.body)

    def with_rbzoo(self, **changes) -> "Card":
        """A copy with fields of the `rbzoo` block changed (validated; body kept)."""
        meta = copy.deepcopy(self.meta)
        meta["rbzoo"].update(changes)
        validate_card(meta, f"card {meta['rbzoo'].get('name')}")
        return Card(meta, self.body)


# ------------------------------------------------------------------------------------- validation

class _Fields:
    """Typed field checks that raise one-line HubErrors naming the field."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, field: str, problem: str):
        raise HubError(f"{self.source}: invalid model card: `{field}` {problem}")

    def get(self, d: dict, key: str, where: str):
        field = f"{where}.{key}" if where else key
        if key not in d:
            self.fail(field, "is missing")
        return d[key], field

    def mapping(self, v, field: str) -> dict:
        if not isinstance(v, dict):
            self.fail(field, f"must be a mapping, got {_show(v)}")
        return v

    def seq(self, v, field: str, min_len: int = 1) -> list:
        if not isinstance(v, list) or len(v) < min_len:
            self.fail(field, f"must be a list of at least {min_len} item(s), got {_show(v)}")
        return v

    def string(self, v, field: str, pattern: re.Pattern | None = None, what: str = "a string",
               nullable: bool = False):
        if v is None and nullable:
            return None
        if not isinstance(v, str) or not v or (pattern is not None and not pattern.match(v)):
            self.fail(field, f"must be {what}{' or null' if nullable else ''}, got {_show(v)}")
        return v

    def number(self, v, field: str, lo: float, hi: float, lo_open: bool = False, nullable: bool = False):
        if v is None and nullable:
            return None
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        if ok:
            ok = (v > lo if lo_open else v >= lo) and v <= hi
        if not ok:
            rng = f"{'(' if lo_open else '['}{lo:g}, {hi:g}]"
            self.fail(field, f"must be a number in {rng}{' or null' if nullable else ''}, got {_show(v)}")
        return v

    def integer(self, v, field: str, lo: int, hi: float = math.inf, nullable: bool = False):
        if v is None and nullable:
            return None
        if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
            bound = f"between {lo} and {hi}" if math.isfinite(hi) else f">= {lo}"
            self.fail(field, f"must be an integer {bound}{' or null' if nullable else ''}, got {_show(v)}")
        return v

    def exact_keys(self, d: dict, keys: tuple, field: str) -> None:
        extra = sorted(str(k) for k in d if k not in keys)
        if extra:
            self.fail(f"{field}.{extra[0]}", f"is not a field of the rbzoo card schema (known: {', '.join(keys)})")


def _show(v) -> str:
    s = repr(v)
    return (s[:60] + "…") if len(s) > 60 else s


def _close(a: float, b: float, tol: float = 0.005 + 1e-9) -> bool:
    return abs(a - b) <= tol


def validate_card(meta, source: str = "card") -> None:
    """Check every field of the card schema; raise HubError naming the first bad field."""
    f = _Fields(source)
    f.mapping(meta, "front matter")
    v, fld = f.get(meta, "library_name", "")
    if v != "rbzoo":
        f.fail(fld, f"must be 'rbzoo', got {_show(v)}")
    f.string(*f.get(meta, "license", ""))
    tags, fld = f.get(meta, "tags", "")
    for i, t in enumerate(f.seq(tags, fld)):
        f.string(t, f"{fld}[{i}]")
    if "rbzoo" not in tags:
        f.fail(fld, "must include 'rbzoo'")
    rb = f.mapping(*f.get(meta, "rbzoo", ""))
    f.exact_keys(rb, RBZOO_KEYS + OPTIONAL_KEYS, "rbzoo")

    def g(key):
        return f.get(rb, key, "rbzoo")

    _check_checkpoint_fields(f, g)
    _check_optional_fields(f, rb)
    dataset, eps = _check_model_fields(f, g)
    clean, robust = _check_result_fields(f, g)
    ds_list, fld = f.get(meta, "datasets", "")
    for i, d in enumerate(f.seq(ds_list, fld)):
        f.string(d, f"{fld}[{i}]")
    if dataset not in ds_list:
        f.fail(fld, f"must include the model's dataset {dataset!r}")
    res, where = _check_model_index(f, meta, rb["name"], dataset)
    metrics, mfld = f.get(res, "metrics", where)
    by_type: dict[str, list] = {}
    for i, m in enumerate(f.seq(metrics, mfld)):
        f.mapping(m, f"{mfld}[{i}]")
        t = f.string(*f.get(m, "type", f"{mfld}[{i}]"))
        f.number(*f.get(m, "value", f"{mfld}[{i}]"), lo=0.0, hi=100.0)
        by_type.setdefault(t, []).append((i, m))
    _check_metrics(f, by_type, mfld, clean, robust, eps)


def _check_checkpoint_fields(f: _Fields, g) -> None:
    """rbzoo.name … rbzoo.checkpoint_bytes: the name, and where the published file is, pinned."""
    f.string(*g("name"), pattern=NAME_RE, what="a lowercase name ([a-z0-9._-], up to 96 characters)")
    repo_id = f.string(*g("repo_id"), pattern=REPO_RE, what="a Hub repo id 'org/name'", nullable=True)
    revision = f.string(*g("revision"), pattern=HEX40, what="a 40-hex commit id", nullable=True)
    if revision is not None and repo_id is None:
        f.fail("rbzoo.revision", "is set but rbzoo.repo_id is null")
    f.string(*g("checkpoint"), pattern=FILE_RE, what="a file name ending in .safetensors")
    sha = f.string(*g("checkpoint_sha256"), pattern=HEX64, what="a 64-hex SHA-256", nullable=True)
    size = f.integer(*g("checkpoint_bytes"), lo=1, nullable=True)
    f.string(*g("model_digest"), pattern=HEX64, what="a 64-hex model digest (rbzoo.model_sha256)", nullable=True)
    if repo_id is not None and (sha is None or size is None):
        f.fail("rbzoo.checkpoint_sha256" if sha is None else "rbzoo.checkpoint_bytes",
               "must be set when rbzoo.repo_id is (a published file is pinned by hash and size)")


def _check_optional_fields(f: _Fields, rb: dict) -> None:
    """rbzoo.config, rbzoo.kind, rbzoo.reproduction (each may be absent)."""
    config = f.string(rb.get("config"), "rbzoo.config", pattern=NAME_RE, what="a shipped config name", nullable=True)
    kind = rb.get("kind") or "model"
    if kind not in KINDS:
        f.fail("rbzoo.kind", f"must be one of {', '.join(KINDS)}, got {_show(kind)}")
    if kind == "reference":  # the numbers to reproduce, and nothing to download
        for key in ("repo_id", "revision", "checkpoint_sha256", "checkpoint_bytes", "model_digest", "source_url",
                    "source_sha256"):
            if rb.get(key) is not None:
                f.fail(f"rbzoo.{key}", "must be null in a reference entry (kind: reference publishes no model)")
        if config is None:
            f.fail("rbzoo.config", "must name the config that reproduces a reference entry")
    rep = rb.get("reproduction")
    if rep is not None:
        f.mapping(rep, "rbzoo.reproduction")
        for key in ("by", "entry", "created"):
            f.string(*f.get(rep, key, "rbzoo.reproduction"))
        f.string(*f.get(rep, "report_sha256", "rbzoo.reproduction"), pattern=HEX64, what="a 64-hex SHA-256")
        for key in ("clean", "robust"):
            row, fld = f.get(rep, key, "rbzoo.reproduction")
            if row is None and key == "robust":
                continue
            f.mapping(row, fld)
            f.number(*f.get(row, "acc", fld), lo=0.0, hi=100.0)
            v, vfld = f.get(row, "verdict", fld)
            if v not in ("reproduced", "below", "above", "upper bound", None):
                f.fail(vfld, f"must be reproduced, below, above, upper bound or null, got {_show(v)}")


def _check_model_fields(f: _Fields, g) -> tuple[str, float]:
    """rbzoo.float32_bytes … rbzoo.eps: how the network was made; returns (dataset, eps)."""
    from .data import DATASETS, get_spec

    f.integer(*g("float32_bytes"), lo=1)
    arch, fld = g("arch")
    f.mapping(arch, fld)
    f.string(*f.get(arch, "id", fld))
    num_classes = f.integer(*f.get(arch, "num_classes", fld), lo=1)
    f.number(*g("keep"), lo=0.0, hi=1.0, lo_open=True)
    f.number(*g("p"), lo=0.0, hi=1.0, nullable=True)
    f.number(*g("score_init_scale"), lo=0.0, hi=math.inf, lo_open=True, nullable=True)
    obj, fld = g("objective")
    if obj is not None and obj not in OBJECTIVES:
        f.fail(fld, f"must be one of {', '.join(OBJECTIVES)} or null, got {_show(obj)}")
    dataset, fld = g("dataset")
    if dataset not in DATASETS:
        f.fail(fld, f"must be one of {', '.join(DATASETS)}, got {_show(dataset)}")
    if get_spec(dataset).num_classes != num_classes:
        f.fail("rbzoo.arch.num_classes", f"is {num_classes} but {dataset} has {get_spec(dataset).num_classes} classes")
    eps = f.number(*g("eps"), lo=0.0, hi=1.0, lo_open=True)
    return dataset, eps


def _check_result_fields(f: _Fields, g) -> tuple[float, float | None]:
    """rbzoo.expected … rbzoo.claimed: the exact clean result and the claims; returns (clean, robust) %."""
    exp, fld = g("expected")
    f.mapping(exp, fld)
    f.exact_keys(exp, EXPECTED_KEYS, fld)
    n = f.integer(*f.get(exp, "n_examples", fld), lo=1)
    correct = f.integer(*f.get(exp, "clean_correct", fld), lo=0, hi=n)
    for key in ("predictions_sha256", "data_sha256", "certificate_sha256"):
        f.string(*f.get(exp, key, fld), pattern=HEX64, what="a 64-hex SHA-256", nullable=True)
    profile, pfld = f.get(exp, "profile", fld)
    if profile is not None and profile not in NUMERICS_PROFILES:
        f.fail(pfld, f"must be one of {', '.join(NUMERICS_PROFILES)} or null, got {_show(profile)}")
    if exp["certificate_sha256"] is not None and (exp["predictions_sha256"] is None or profile is None):
        f.fail(f"{fld}.certificate_sha256", "needs predictions_sha256 and profile")
    url = f.string(*g("source_url"), nullable=True)
    if url is not None and not url.startswith(("https://", "http://")):
        f.fail("rbzoo.source_url", f"must be an http(s) URL or null, got {_show(url)}")
    f.string(*g("source_sha256"), pattern=HEX64, what="a 64-hex SHA-256", nullable=True)
    claimed, fld = g("claimed")
    f.mapping(claimed, fld)
    f.exact_keys(claimed, CLAIMED_KEYS, fld)
    clean = f.number(*f.get(claimed, "clean_acc", fld), lo=0.0, hi=100.0)
    robust = f.number(*f.get(claimed, "robust_acc", fld), lo=0.0, hi=100.0, nullable=True)
    if not _close(clean, 100.0 * correct / n):
        f.fail("rbzoo.claimed.clean_acc", f"is {clean} but rbzoo.expected gives {100.0 * correct / n:.4f} "
                                          f"({correct}/{n})")
    rc = f.integer(claimed.get("robust_correct"), f"{fld}.robust_correct", lo=0, hi=correct, nullable=True)
    ev = f.string(claimed.get("evidence_sha256"), f"{fld}.evidence_sha256", pattern=HEX64, what="a 64-hex SHA-256",
                  nullable=True)
    if (rc is None) != (ev is None) or (rc is not None and (robust is None or not _close(robust, 100.0 * rc / n))):
        f.fail(f"{fld}.robust_correct", f"must come with evidence_sha256 and agree with robust_acc ({rc}/{n} vs {robust})")
    return clean, robust


def _check_model_index(f: _Fields, meta: dict, name: str, dataset: str) -> tuple[dict, str]:
    """model-index: one entry named like the card, one test-split result; returns (result, its field)."""
    index, fld = f.get(meta, "model-index", "")
    if len(f.seq(index, fld)) != 1:
        f.fail(fld, "must hold exactly one entry")
    entry = f.mapping(index[0], "model-index[0]")
    v, efld = f.get(entry, "name", "model-index[0]")
    if v != name:
        f.fail(efld, f"must equal rbzoo.name {name!r}, got {_show(v)}")
    results, rfld = f.get(entry, "results", "model-index[0]")
    res = f.mapping(f.seq(results, rfld)[0], f"{rfld}[0]")
    where = f"{rfld}[0]"
    task = f.mapping(*f.get(res, "task", where))
    v, tfld = f.get(task, "type", f"{where}.task")
    if v != "image-classification":
        f.fail(tfld, f"must be 'image-classification', got {_show(v)}")
    dsm = f.mapping(*f.get(res, "dataset", where))
    v, dfld = f.get(dsm, "type", f"{where}.dataset")
    if v != dataset:
        f.fail(dfld, f"must equal rbzoo.dataset {dataset!r}, got {_show(v)}")
    v, dfld = f.get(dsm, "split", f"{where}.dataset")
    if v != "test":
        f.fail(dfld, f"must be 'test', got {_show(v)}")
    return res, where


def _check_metrics(f: _Fields, by_type: dict, mfld: str, clean: float, robust: float | None, eps: float) -> None:
    """One clean accuracy equal to the claim; one robust accuracy (with its norm and eps) iff claimed."""
    acc = by_type.get("accuracy", [])
    if len(acc) != 1:
        f.fail(mfld, f"must hold exactly one metric of type 'accuracy' (clean accuracy), found {len(acc)}")
    i, m = acc[0]
    if not _close(m["value"], clean):
        f.fail(f"{mfld}[{i}].value", f"is {m['value']} but rbzoo.claimed.clean_acc is {clean}")
    rob = by_type.get("robust_accuracy", [])
    if robust is None and rob:
        f.fail(f"{mfld}[{rob[0][0]}]", "is a robust_accuracy metric but rbzoo.claimed.robust_acc is null")
    if robust is None:
        return
    if len(rob) != 1:
        f.fail(mfld, f"must hold exactly one metric of type 'robust_accuracy' (rbzoo.claimed.robust_acc "
                     f"is set), found {len(rob)}")
    i, m = rob[0]
    if not _close(m["value"], robust):
        f.fail(f"{mfld}[{i}].value", f"is {m['value']} but rbzoo.claimed.robust_acc is {robust}")
    args = f.mapping(*f.get(m, "args", f"{mfld}[{i}]"))
    afld = f"{mfld}[{i}].args"
    v, nfld = f.get(args, "norm", afld)
    if v not in NORMS:
        f.fail(nfld, f"must be one of {', '.join(NORMS)}, got {_show(v)}")
    a_eps = f.number(*f.get(args, "eps", afld), lo=0.0, hi=math.inf, lo_open=True)
    if abs(a_eps - eps) > 1e-6 * max(1.0, eps):
        f.fail(f"{afld}.eps", f"is {a_eps} but rbzoo.eps is {eps}")
    f.string(*f.get(args, "version", afld))


# ------------------------------------------------------------------------------------- parse / render

def split_front_matter(text: str, source: str = "card", error: type[RbzooError] = HubError) -> tuple[object, str]:
    """(the `yaml.safe_load`ed front matter, the markdown body) of a card; `error` on malformed text."""
    lines = text.lstrip("\ufeff").splitlines(keepends=True)
    if not lines or lines[0].strip() != "---":
        raise error(f"{source}: invalid model card: no YAML front matter (the first line must be '---')")
    end = next((i for i in range(1, len(lines)) if lines[i].strip() == "---"), None)
    if end is None:
        raise error(f"{source}: invalid model card: the YAML front matter is not closed by a '---' line")
    try:
        meta = yaml.safe_load("".join(lines[1:end]))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 2})" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise error(f"{source}: invalid model card: front matter is not valid YAML{where}: {problem}") from None
    return meta, "".join(lines[end + 1:])


def parse_card(text: str, source: str = "card") -> Card:
    """Split YAML front matter from the body, `yaml.safe_load` it, and validate it."""
    if len(text) > MAX_CARD_BYTES:
        raise HubError(f"{source}: invalid model card: larger than {MAX_CARD_BYTES} bytes")
    meta, body = split_front_matter(text, source)
    validate_card(meta, source)
    return Card(meta, body)


def load_card(path: str | Path) -> Card:
    """Read and validate a card file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise HubError(f"cannot read model card {path}: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise HubError(f"{path}: invalid model card: not UTF-8 text") from None
    return parse_card(text, str(path))


def load_cards(folder: str | Path) -> list[tuple[Path, Card]]:
    """Every card of a zoo card folder, sorted by file name; each file must be `<rbzoo.name>.md`.

    A `README.md` there describes the folder and is skipped. A missing folder is an empty zoo.
    """
    folder = Path(folder)
    out = []
    for path in sorted(folder.glob("*.md")) if folder.is_dir() else []:
        if path.name.lower() == "readme.md":
            continue
        card = load_card(path)
        if card.name != path.stem:
            raise HubError(f"{path}: rbzoo.name is {card.name!r}, not the file's name {path.stem!r}")
        out.append((path, card))
    return out


def render_card(meta: dict, body: str) -> str:
    front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, default_flow_style=False, width=100)
    return f"---\n{front}---\n{body}"


def build_card(rb: dict, *, robust_args: dict | None = None, license: str = "mit",
               extra_tags: list[str] | None = None) -> Card:
    """A complete card from an `rbzoo` block: model-index, tags and body are derived from it.

    `robust_args` ({norm, eps, version}) describe the robust metric; default Linf at `rb["eps"]`,
    AutoAttack standard.
    """
    rb = {k: rb.get(k) for k in RBZOO_KEYS} | {k: rb[k] for k in OPTIONAL_KEYS if rb.get(k) is not None}
    ds = rb["dataset"]
    metrics = [{"type": "accuracy", "name": "Clean accuracy", "value": rb["claimed"]["clean_acc"]}]
    if rb["claimed"].get("robust_acc") is not None:
        args = {"norm": "Linf", "eps": rb["eps"], "version": "standard", **(robust_args or {})}
        kind = "PGD" if str(args["version"]).lower() == "pgd" else "AutoAttack"
        metrics.append({"type": "robust_accuracy", "name": f"{kind} robust accuracy",
                        "value": rb["claimed"]["robust_acc"],
                        "args": {"norm": args["norm"], "eps": args["eps"], "version": args["version"]}})
    meta = {
        "library_name": "rbzoo",
        "license": license,
        "tags": TAGS + [t for t in (extra_tags or []) if t not in TAGS],
        "datasets": [ds],
        "model-index": [{"name": rb["name"], "results": [{
            "task": {"type": "image-classification", "name": "Image Classification"},
            "dataset": {"type": ds, "name": DATASET_NAMES.get(ds, ds), "split": "test"},
            "metrics": metrics}]}],
        "rbzoo": rb,
    }
    validate_card(meta, f"card {rb.get('name')}")
    return Card(meta, card_body(meta))


def _pull_spec(rb: dict) -> tuple[str, str]:
    """What a card's reader passes to `rbzoo pull`, and a note on it: the pinned Hub repo; else the
    zoo name of an entry that ships with rbzoo (imported from its source); else the folder itself."""
    if rb["repo_id"]:
        return (f"{rb['repo_id']}@{rb['revision']}" if rb["revision"] else rb["repo_id"]), ""
    if rb["source_url"]:
        return rb["name"], ""
    return "FOLDER", (" — FOLDER is the folder that holds this card and its checkpoint "
                      "(written by `rbzoo push --to`)")


def _card_rows(meta: dict, spec: str) -> list[tuple[str, str]]:
    """The facts table of a card body: model, training, results, file sizes, provenance."""
    rb = meta["rbzoo"]
    exp, claimed, arch = rb["expected"], rb["claimed"], rb["arch"]
    rows = [("architecture", f"`{arch['id']}`, {arch['num_classes']} classes"
             + (", last-layer BatchNorm" if arch.get("end_with_bn") else "")),
            ("kept weights k, layer exponent p, score init a",
             f"{rb['keep']:g}, {'—' if rb['p'] is None else format(rb['p'], 'g')}, "
             f"{'—' if rb['score_init_scale'] is None else format(rb['score_init_scale'], 'g')}"),
            ("training objective", rb["objective"] or "—"),
            ("clean accuracy (re-checked by `rbzoo pull`)",
             f"{claimed['clean_acc']:.2f} % ({exp['clean_correct']:,} / {exp['n_examples']:,} test images)")]
    rargs = next((m.get("args") for m in meta["model-index"][0]["results"][0]["metrics"]
                  if m["type"] == "robust_accuracy"), None)
    if claimed.get("robust_acc") is not None and rargs:
        how = (f"an upper bound `rbzoo pull {spec} --robust` proves from the published adversarial example of every "
               f"break" if claimed.get("evidence_sha256") else "claimed; attacks are randomized, expect small differences")
        rows.append((f"robust accuracy ({attack_label(rargs)}, {rargs['norm']}, ε = {eps_label(rargs['eps'])})",
                     f"{claimed['robust_acc']:.2f} % ({how})"))
    else:
        rows.append(("robust accuracy", f"not measured yet (`rbzoo eval {spec}` at ε = {eps_label(rb['eps'])})"))
    if rb.get("reproduction"):
        rows.append(("reproduction", reproduction_text(rb["reproduction"])))
    if rb["checkpoint_bytes"]:
        ratio = rb["float32_bytes"] / rb["checkpoint_bytes"]
        rows.append(("checkpoint", f"`{rb['checkpoint']}`, {rb['checkpoint_bytes']:,} bytes, SHA-256 "
                                   f"`{rb['checkpoint_sha256'] or '—'}`"))
        rows.append(("same network as float32 weights", f"{rb['float32_bytes']:,} bytes ({ratio:,.0f}× larger)"))
    else:
        rows.append(("same network as float32 weights", f"{rb['float32_bytes']:,} bytes"))
    rows.append(("pinned by", pinned_by(rb)))
    if rb["source_url"]:
        rows.append(("converted from", f"<{rb['source_url']}>"
                     + (f" (SHA-256 `{rb['source_sha256']}`)" if rb["source_sha256"] else "")))
    return rows


def pinned_by(rb: dict) -> str:
    """What this card pins, in words (a pull checks each)."""
    pins = [what for what, v in (("checkpoint SHA-256", rb["checkpoint_sha256"]), ("model digest", rb["model_digest"]),
                                 ("official file SHA-256", rb["source_sha256"]),
                                 ("per-sample certificate", rb["expected"]["certificate_sha256"])) if v]
    if rb["checkpoint_sha256"] or rb["model_digest"] or rb["source_sha256"]:
        return ", ".join(pins)
    return ("no file hash: the first download of the official file is recorded (URL and SHA-256, trust on "
            "first use) and later pulls must match it; a pull from `--source FILE` says *unpinned source*"
            + (f"; {', '.join(pins)}" if pins else ""))
def reproduction_text(rep: dict) -> str:
    """One line of a card: who reproduced the entry, where, and each number's verdict."""
    parts = []
    for key, label in (("clean", "clean"), ("robust", "robust")):
        row = rep.get(key)
        if row is not None:
            lo, hi = row["wilson95"]
            parts.append(f"{label} {row['acc']:.2f} % [{lo:.2f}, {hi:.2f}] *{row['verdict'] or 'no paper number'}*")
    modified = f"; modified config: {', '.join(rep['modified'])}" if rep.get("modified") else ""
    attack = f" (robust: {rep['attack']})" if rep.get("attack") else ""
    return (f"reproduced by {rep['by']} on {rep.get('hardware') or 'unknown hardware'}, {rep['created'][:10]}, as `rbzoo reproduce "
            f"{rep['entry']}`: {', '.join(parts)}{attack}{modified}; report `reproduction.json`")


def card_body(meta: dict) -> str:
    """The markdown body: what the model is, how to pull and evaluate it, its size, the citation."""
    rb = meta["rbzoo"]
    ds, arch = DATASET_NAMES.get(rb["dataset"], rb["dataset"]), rb["arch"]
    spec, where = _pull_spec(rb)
    table = "\n".join(f"| {k} | {v} |" for k, v in _card_rows(meta, spec))
    return f"""
# {rb['name']}

A robust binary subnetwork for {ds} classification, found by pruning a randomly initialized
{arch['id']} whose weights are fixed to ±1 (*Robust Binary Models by Pruning Randomly-initialized
Networks*, Liu et al., NeurIPS 2022). The checkpoint (rbzoo format v1) stores one compressed mask
per layer, the signs of the kept weights (regenerated from a seed, or bit-packed) and the BatchNorm
statistics — no float weights.

| | |
|---|---|
{table}

## Pull, verify and evaluate

rbzoo is not on PyPI: install it from a checkout of its source repository{where}.

```bash
pip install -e .                    # in the rbzoo checkout
rbzoo pull {spec} --data-dir data   # download, check SHA-256 and model digest, re-check the clean accuracy
rbzoo eval {spec} --data-dir data   # AutoAttack robust accuracy
```

```python
import rbzoo
from rbzoo.zoo import pull

model = rbzoo.load(pull("{spec}", verify=False).path)  # eval-mode network, folded ±1 weights
```

`rbzoo pull` fails (exit 3) if the file's SHA-256 or model digest differs from this card, if the
file fails its own checks, if a number this card states does not follow from its certificate and
results, or if the re-evaluated predictions differ from `rbzoo.expected` beyond the near-ties of the
re-evaluation (it names the field or the samples). It says whether the check was *exact*, *within
numerical tolerance* or, for a card without a per-sample certificate, *count only*.

## Citation

```bibtex
{CITATION}
```
"""
