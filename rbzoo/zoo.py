"""The zoo workflow: resolve a name, fetch, import, verify, record.

`pull` is the whole path a user's `rbzoo pull` takes, in one module above :mod:`rbzoo.hub` (Hub
transport and push) and :mod:`rbzoo.convert` (official file → format-v1 checkpoint):

1. **resolve** — a zoo name (a card in the cards folder), `org/name[@rev]`, or a `--to` folder;
2. **fetch** — download at a pinned commit, take the folder, or download and convert the authors'
   file (imported entries);
3. **verify** — SHA-256 against the card and the server, strict load (the whole-model digest),
   the card's model digest, then the clean accuracy re-evaluated and compared with the card's
   reference under the rules of :mod:`rbzoo.verdict`: *exact*, *verified within numerical
   tolerance* (only near-ties of this evaluation differ), *count only* (the card has no per-sample
   reference; capped slack), or *failed*; then every number the card states is derived and checked;
4. **record** — the verdict in `$RBZOO_HOME/verified.json` (locked, atomic), keyed by the model's
   origin (zoo entry, Hub repo and commit, folder) and SHA-256 — never by the card's name — with a
   digest of everything published: a later pull skips the re-evaluation only while that is
   unchanged. Plus this machine's certificate when the card had none, so the next pull of the same
   model here is exact.

A publication never vouches for itself: the threat model is in docs/zoo.md, and
tests/test_attacker.py plays each row of it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ._io import canonical_json, check_output, file_sha256, read_json, write_bytes, write_json, write_text
from .cards import NAME_RE, REPO_RE, Card, build_card, load_card
from .checkpoint import build, checkpoint_dataset, load, read
from .config import parse_eps
from .constants import cards_dir as default_cards_dir
from .constants import rbzoo_home
from .convert import CONVERTER_VERSION, convert_official
from .data import get_spec
from .errors import ConfigError, HubError, RbzooError, VerificationError
from .evidence import Evidence, read_evidence, read_evidence_file
from .exact import check_profile, clean_accuracy
from .fetch import REGISTRY_NAME as DOWNLOADS_FILE
from .fetch import download
from .hub import CARD_FILE, EVIDENCE_FILE, RESULTS_FILE, Progress, fetch_hub, load_test_split, robust_evidence
from .labels import attack_label, card_attack, eps_label
from .registry import Registry
from .resolve import looks_local
from .robust_check import prove_breaks, published_attack, spot_check
from .verdict import TAU, Certificate, Verdict, check_claims, compare, compare_count, degenerate, tau_for
from .verdict import strict as strict_verdict
from .verified import folder_origin, hub_origin, registry_entries, zoo_origin
from .verified import registry_key as _key
from .verified import registry_put as _registry_put

CERTIFICATE_SUFFIX = ".certificate.json"  # beside a card in the cards folder: <name>.certificate.json
RESULTS_SUFFIX = ".results.json"  # beside an imported card: the results of its robust claim
EVIDENCE_SUFFIX = ".evidence.safetensors"  # beside an imported card: that claim's evidence


@dataclass
class Spec:
    kind: str  # "folder" | "card" | "repo"
    text: str
    repo_id: str | None = None
    revision: str | None = None
    card: Card | None = None
    card_path: Path | None = None
    folder: Path | None = None


@dataclass
class PullResult:
    card: Card
    path: Path
    sha256: str
    size: int
    repo_id: str | None
    revision: str | None  # the commit actually downloaded (None for a folder or an import)
    status: str  # "verified" (now), "cached" (verified before), "skipped" (--no-verify), "unpinned source"
    verdict: str | None = None  # "exact" | "tolerance" | "count only" (None when skipped)
    message: str = ""  # the verdict in one line
    clean_correct: int | None = None
    n_examples: int | None = None
    notes: list[str] = field(default_factory=list)
    card_block: dict | None = None  # the `expected` block a maintainer would publish (count-only cards)
    written_card: Path | None = None
    origin: str = ""  # where the model came from: zoo:NAME | hub:REPO@COMMIT | folder:PATH (the registry's key)
    robust: dict | None = None  # --robust: what was proved about the robust claim (RobustVerdict.to_json())
    robust_message: str = ""  # --robust: one line

    @functools.cached_property
    def model(self):
        """The pulled network, ready to use: loaded strictly from `path` (digest-verified, eval mode,
        folded), on the CPU, on first access."""
        return load(self.path)

    @property
    def label(self) -> str:
        if self.repo_id and self.revision:
            return f"{self.repo_id}@{self.revision[:12]}"
        return self.repo_id or self.card.name


@dataclass
class _Fetched:
    card: Card
    path: Path
    results: dict | None
    repo_id: str | None
    commit: str | None
    server_sha256: str | None = None
    purge: Callable[[], None] = lambda: None
    spec: str = ""
    certificate: dict | None = None  # the card's reference certificate, as published
    origin: str = ""
    source_sha256: str | None = None  # imported entries: the official file converted
    unpinned: bool = False  # imported from a --source FILE that no hash pins
    first_use: bool = False  # imported: this download pinned the official file (trust on first use)
    evidence: bytes | None = None  # the published evidence file (robust claims), if any


# ------------------------------------------------------------------------------------------ 1. resolve

_REV_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,199}$")


def parse_spec(spec: str, cards_dir: str | Path | None = None) -> Spec | None:
    """Classify NAME | REPO_ID[@REV] | DIR; None when `spec` is none of them."""
    p = Path(spec).expanduser()
    if p.is_dir():
        return Spec("folder", spec, folder=p)
    if NAME_RE.match(spec):
        card_path = default_cards_dir(cards_dir) / f"{spec}.md"
        if card_path.is_file():
            card = load_card(card_path)
            if card.name != spec:
                raise HubError(f"{card_path}: rbzoo.name is {card.name!r}, not the file's name {spec!r}")
            return Spec("card", spec, card.repo_id, card.revision, card=card, card_path=card_path)
    repo, sep, rev = spec.partition("@")
    if REPO_RE.match(repo) and (not sep or _REV_RE.match(rev)):
        return Spec("repo", spec, repo, rev or None)
    return None


# ------------------------------------------------------------------------------------------ 2. fetch

def _results_certificate(results) -> dict | None:
    return results.get("certificate") if isinstance(results, dict) else None


def _fetch_folder(s: Spec) -> _Fetched:
    folder = s.folder
    if not (folder / CARD_FILE).is_file():
        raise HubError(f"{folder}: not a zoo folder (no {CARD_FILE}); write one with `rbzoo push CKPT --to DIR`")
    card = load_card(folder / CARD_FILE)
    path = folder / card.rb["checkpoint"]
    if not path.is_file():
        raise HubError(f"{folder}: the card names {card.rb['checkpoint']}, which is missing")
    results = read_json(folder / RESULTS_FILE, "results JSON", VerificationError) if (folder / RESULTS_FILE).is_file() else None
    evidence = _read_evidence_file(folder / EVIDENCE_FILE, card) if (folder / EVIDENCE_FILE).is_file() else None
    return _Fetched(card, path, results, card.repo_id, None, spec=str(folder),
                    certificate=_results_certificate(results), origin=folder_origin(folder), evidence=evidence)


def _read_evidence_file(path: Path, card: Card) -> bytes:
    """A published evidence file, refused unread if larger than the card's evaluation can need."""
    return read_evidence_file(path, n_examples=card.expected["n_examples"], numel=get_spec(card.dataset).numel,
                              error=VerificationError)


def _fetch_hub(s: Spec, endpoint: str | None, token: str | None) -> _Fetched:
    local = s.card if s.kind == "card" else None
    repo, rev = (local.repo_id, local.revision or "main") if local else (s.repo_id, s.revision or "main")
    got = fetch_hub(repo, rev, endpoint=endpoint, token=token, local_card=local)
    return _Fetched(got.card, got.path, got.results, repo, got.commit, got.server_sha256, got.purge, spec=s.text,
                    certificate=_results_certificate(got.results), origin=hub_origin(repo, got.commit),
                    evidence=got.evidence)


def import_zoo_entry(card: dict, source: str | Path | None, *, cache_dir: str | Path, progress: bool = True,
                     bn_check: bool = True) -> Path:
    """Fetch (or take) an imported zoo entry's official file, convert it, and return the checkpoint.

    `card` is the card's front matter (or its `rbzoo` block). `source` is a local copy of the
    official file; without it the card's `source_url` is downloaded (resumable; its URL and SHA-256
    recorded on the first download, and later downloads must match) into `cache_dir/official/`. The
    conversion is cached under a key of every conversion input (the source's SHA-256, arch, keep,
    p, end_with_bn, the BN check, the converter version), so another conversion is never reused.
    `bn_check=False` skips the BN-statistics check of the card's keep/p (`rbzoo pull --no-bn-check`).
    What proves the result right is the clean-accuracy verification that `pull` runs next.
    """
    return _import(card, source, cache_dir=cache_dir, progress=progress, bn_check=bn_check)[0]


def _import(card: dict, source, *, cache_dir, progress: bool, bn_check: bool) -> tuple[Path, str, str | None]:
    """(checkpoint, the source's SHA-256, what pins that source: "card" | "recorded" | "first use" | None)."""
    rb = card.get("rbzoo", card) if isinstance(card, dict) else None
    if not isinstance(rb, dict) or "name" not in rb or "arch" not in rb:
        raise HubError("not a zoo card: no rbzoo block with name and arch")
    name, cache_dir = rb["name"], Path(cache_dir)
    source, sha, pinned = _official_source(rb, source, cache_dir, progress)
    if rb.get("p") is None or rb.get("keep") is None:
        raise HubError(f"{name}: the card does not say which keep and p the model was trained with")
    arch = rb["arch"]
    inputs = {"source_sha256": sha, "arch": arch, "keep": rb["keep"], "p": rb["p"],
              "end_with_bn": bool(arch.get("end_with_bn")), "bn_check": bool(bn_check),
              "dataset": rb["dataset"], "objective": rb.get("objective"), "converter": CONVERTER_VERSION}
    key = hashlib.sha256(canonical_json(inputs).encode("ascii")).hexdigest()
    out = cache_dir / f"{name}-{key[:16]}.safetensors"
    if not _converted_from(out, sha):
        convert_official(source, arch=arch["id"], keep=rb["keep"], p=rb["p"], end_with_bn=inputs["end_with_bn"],
                         num_classes=arch.get("num_classes"), dataset=rb["dataset"], out=out,
                         objective=rb.get("objective"), bn_consistency=bn_check,
                         force=True)  # a cache entry: replaced when its source changed
    return out, sha, pinned


def _official_source(rb: dict, source, cache_dir: Path, progress: bool) -> tuple[Path, str, str | None]:
    """(the official file, its SHA-256, what pins it). A download is pinned by the card's
    source_sha256 ("card") or, failing that, by the first download's record ("recorded"; "first use"
    when this download made it); a local `source` by the card's hash or that record, else None."""
    name, want = rb["name"], rb.get("source_sha256")
    url = rb.get("source_url")
    first = Registry(cache_dir / "official" / DOWNLOADS_FILE).get(url) if url else None
    if source is not None:
        source = Path(source)
        if not source.is_file():
            raise HubError(f"{name}: no such source file: {source}")
        sha, _ = file_sha256(source)
        for who, ref in (("the card says", want), (f"the first download from {url} was", (first or {}).get("sha256"))):
            if ref and sha != ref:
                raise VerificationError(f"{name}: {source} has SHA-256 {sha}, {who} {ref}: not the official file")
        return source, sha, "card" if want else "recorded" if first else None
    if url:
        fetched = download(url, cache_dir / "official" / f"{name}.pth", expected_sha256=want, progress=progress)
        return fetched.path, fetched.sha256, "card" if want else "recorded" if first else "first use"
    raise HubError(f"{name}: the card has no download URL for the official file; download it from the "
                   f"paper's model zoo (https://github.com/IVRL/RobustBinarySubNet#model-zoo) and pass it "
                   f"with --source FILE")


def _converted_from(out: Path, sha: str) -> bool:
    if not out.is_file():
        return False
    try:
        return read(out).meta_json("rbzoo.source", {}).get("sha256") == sha
    except RbzooError:
        return False


def _fetch_import(s: Spec, source: str | Path | None, bn_check: bool = True) -> _Fetched:
    """An imported entry: the authors' file, converted here. Its SHA-256 is the local reference;
    the card's model digest and the clean-accuracy verification are what prove it right."""
    path, source_sha, pinned = _import(s.card.meta, source, cache_dir=rbzoo_home() / "imports", progress=True,
                                       bn_check=bn_check)
    sha, _ = file_sha256(path)
    side = s.card_path.with_name(s.card.name + CERTIFICATE_SUFFIX) if s.card_path else None
    cert = read_json(side, "certificate JSON", VerificationError) if side is not None and side.is_file() else None
    by_digest = s.card.rb["model_digest"] is not None
    results = evidence = None
    if s.card_path is not None and s.card.rb["claimed"].get("evidence_sha256"):  # a robust claim rbzoo measured
        res_path, ev_path = (s.card_path.with_name(s.card.name + x) for x in (RESULTS_SUFFIX, EVIDENCE_SUFFIX))
        results = read_json(res_path, "results JSON", VerificationError) if res_path.is_file() else None
        evidence = _read_evidence_file(ev_path, s.card) if ev_path.is_file() else None
    return _Fetched(s.card, Path(path), results, None, None, sha, spec=s.text, certificate=cert,
                    origin=zoo_origin(s.card.name), source_sha256=source_sha,
                    unpinned=pinned is None and not by_digest, first_use=pinned == "first use" and not by_digest,
                    evidence=evidence)


# ------------------------------------------------------------------------------------------ 3. verify

def _check_identity(f: _Fetched, label: str):
    """SHA-256 against the card and the server, strict load, and the card's identity fields."""
    card = f.card
    sha, size = file_sha256(f.path)
    refs = [(who, ref) for who, ref in (("the card", card.rb["checkpoint_sha256"]), ("the server", f.server_sha256))
            if ref is not None]
    if not refs:
        raise VerificationError(f"{label}: no SHA-256 to check {f.path.name} against (the card's checkpoint_sha256 "
                                f"is null and the server gave none)")
    wrong = [f"{who} says {ref[:16]}…" for who, ref in refs if ref != sha]
    if wrong or (card.rb["checkpoint_bytes"] is not None and size != card.rb["checkpoint_bytes"]):
        f.purge()
        _registry_put(_key(f.origin, sha), None)
        fate = "the download was deleted" if f.repo_id else "the file was left as it is"  # a folder's is the user's
        raise VerificationError(f"{label}: {f.path if f.repo_id is None else f.path.name} is corrupted: SHA-256 "
                                f"{sha[:16]}… ({size:,} bytes), {'; '.join(wrong) or 'size differs from the card'}; {fate}")
    try:
        ck = read(f.path)  # strict: format, tensor set, shapes, the whole-model digest
    except RbzooError as e:  # a published file that fails a check is a failed verification, named
        raise VerificationError(f"{label}: the published {f.path.name} fails its checks: {e}") from None
    if card.rb["model_digest"] is not None and ck.digest != card.rb["model_digest"]:
        raise VerificationError(f"{label}: the checkpoint's model digest is {ck.digest[:16]}…, the card says "
                                f"{card.rb['model_digest'][:16]}…: not the model the card describes")
    for k, v in card.rb["arch"].items():
        if ck.arch.get(k) != v:
            raise VerificationError(f"{label}: the card says arch.{k} = {v!r}, the checkpoint has {ck.arch.get(k)!r}")
    ds_name = checkpoint_dataset(ck)
    if ds_name is not None and ds_name != card.dataset:
        raise VerificationError(f"{label}: the card is for {card.dataset}, the checkpoint was trained on {ds_name}")
    if isinstance(f.results, dict) and f.results.get("model_digest") not in (None, ck.digest):
        raise VerificationError(f"{label}: {RESULTS_FILE} describes another model (model_digest differs)")
    return ck, sha, size


def _published(f: _Fetched, sha: str) -> str:
    """One digest of everything published: card, results, certificate, checkpoint (and the official
    file an import was converted from). A registry hit counts only while this is unchanged."""
    # The card's front matter is what a pull checks (the body is prose); its revision is part of
    # the origin already, and the zoo's copy of a Hub card differs from the Hub's only there.
    card = dict(f.card.meta, rbzoo=dict(f.card.rb, revision=None))
    doc = {"card": card, "results": f.results, "certificate": f.certificate, "checkpoint_sha256": sha,
           "source_sha256": f.source_sha256}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def _card_reference(f: _Fetched, label: str) -> Certificate | None:
    """The card's published per-sample reference, checked against the card; None if it has none."""
    exp = f.card.expected
    if exp["certificate_sha256"] is None:
        return None
    if f.certificate is None:
        raise VerificationError(f"{label}: the card pins a certificate ({exp['certificate_sha256'][:16]}…) but none "
                                f"was published beside it")
    try:
        cert = Certificate.from_json(f.certificate, max_n=exp["n_examples"])
    except VerificationError as e:
        raise VerificationError(f"{label}: the published {RESULTS_FILE} holds no valid certificate ({e})") from None
    if cert.digest != exp["certificate_sha256"] or cert.labels_sha256 != exp["predictions_sha256"] \
            or cert.n != exp["n_examples"] or cert.profile != exp["profile"]:
        raise VerificationError(f"{label}: the published certificate does not match the card (digest, labels, "
                                f"size or profile); refusing to verify against it")
    return cert


def _local_reference(model_digest: str, data_sha256: str) -> Certificate | None:
    """A certificate this machine recorded in an earlier count-only pull of the same model and data."""
    path = _certificate_path(model_digest, data_sha256)
    if not path.is_file():
        return None
    try:
        return Certificate.from_json(read_json(path, "certificate JSON", VerificationError))
    except (OSError, ValueError, RbzooError):
        return None  # a cache: an unreadable one only means comparing counts again


def _certificate_path(model_digest: str, data_sha256: str) -> Path:
    return rbzoo_home() / "certificates" / f"{model_digest[:32]}-{data_sha256[:16]}.json"


def _count_tau(exp: dict, new: Certificate) -> float:
    """τ for a count-only reference: the larger of this evaluation's and the reference's profile.
    A card that does not say how its count was made (the paper's: the authors' GPUs, where
    PyTorch allows TF32 for convolutions by default) is taken to be a `fast` evaluation."""
    return max(new.tau, TAU[exp["profile"] or "fast"])


ADD_UP = "the card's numbers do not add up: "


def _judge(f: _Fetched, label: str, ck, clean, new: Certificate, strict: bool) -> tuple[Verdict, str]:
    """Compare a re-evaluation with the card, then derive every number the card states:
    (verdict, what the reference was)."""
    exp = f.card.expected
    if clean.n_examples != exp["n_examples"]:
        raise VerificationError(f"{label}: `rbzoo.expected.n_examples` says {exp['n_examples']}, this evaluation "
                                f"has {clean.n_examples} samples")
    ref, predicted = _card_reference(f, label), None
    if ref is not None:
        verdict, what = compare(ref, new), "the card's certificate"
    elif exp["predictions_sha256"] is not None and exp["predictions_sha256"] == clean.predictions_sha256:
        why = degenerate(new)
        verdict = Verdict("failed" if why else "exact", clean.n_examples, new.tau, reason=why or "")
        what, predicted = "the card's prediction digest", clean.predictions
    else:
        verdict, what = compare_count(exp["clean_correct"], clean.clean_correct, new, tau=_count_tau(exp, new)), \
            "the card's count"
        local = (_local_reference(ck.digest, clean.data_sha256)
                 if verdict.ok and exp["data_sha256"] in (None, clean.data_sha256) else None)
        if local is not None:  # the count allows it: compare sample by sample with this machine's past run
            verdict, what = compare(local, new), "this machine's earlier certificate; the card has counts only"
    if verdict.ok:
        same_data = exp["data_sha256"] in (None, clean.data_sha256)
        try:
            check_claims(f.card.meta, cert=ref, predicted=predicted, labels=clean.labels if same_data else None,
                         results=f.results)
        except VerificationError as e:
            verdict = Verdict("failed", verdict.n, verdict.tau, reason=ADD_UP + str(e))
    return (strict_verdict(verdict) if strict else verdict), what


def _verify(f: _Fetched, out: PullResult, ck, *, data_dir, device: str, numerics: str, strict: bool,
            progress: Progress | None, base: dict, keep: dict | None = None) -> PullResult:
    card, exp, label = f.card, f.card.expected, out.label
    hint = f"rerun `rbzoo pull {f.spec} --data-dir DIR`, or skip the check with --no-verify"
    ds, indices = load_test_split(card.dataset, data_dir, exp["n_examples"], f"verify {card.name}", hint)
    total = len(ds) if indices is None else len(indices)
    try:
        model = build(ck, device)
    except RbzooError as e:
        raise VerificationError(f"{label}: the published {f.path.name} does not build: {e}") from None
    wanted = set(keep.get("positions", ())) if keep is not None else set()
    kept_images: dict = {}

    def on_batch(start: int, x, y) -> None:  # the images of the published breaks, for --robust
        for j in range(len(y)):
            if start + j in wanted:
                kept_images[start + j] = (x[j], y[j])

    clean = clean_accuracy(model, ds, indices=indices, device=device, profile=numerics,
                           progress=progress(f"verifying {card.name}", total) if progress else None,
                           on_batch=on_batch if wanted else None)
    new = Certificate.of(clean)
    if keep is not None:  # what a robust check goes on with
        keep.update(model=model, dataset=ds, clean=clean, record=None, images=kept_images)
    verdict, what = _judge(f, label, ck, clean, new, strict)
    message = f"{verdict.message()} (against {what})"
    record = {**base, "clean_correct": clean.clean_correct, "n_examples": clean.n_examples,
              "predictions_sha256": clean.predictions_sha256, "data_sha256": clean.data_sha256,
              "numerics": clean.numerics, "profile": numerics, "device": str(device), "checked_at": _now(),
              "verdict": verdict.status, "message": message, "model_digest": ck.digest}
    if not verdict.ok:
        _registry_put(out_key(out), {**record, "status": "unverified", "reason": message})
        problem = verdict.reason[len(ADD_UP):] if verdict.reason.startswith(ADD_UP) else None
        raise VerificationError(f"{label}: " + (f"{ADD_UP}{problem}" if problem else
                                                f"clean accuracy does not reproduce: {message}")
                                + "; the cached copy is marked unverified")
    if verdict.status == "count only":  # keep this machine's reference: the next pull here is exact
        cert_path = _certificate_path(ck.digest, clean.data_sha256)
        write_json(cert_path, new.to_json())
        record["certificate"] = str(cert_path)
    if exp["certificate_sha256"] is None:
        out.card_block = maintainer_block(ck.digest, clean, new)
    if exp["data_sha256"] and clean.data_sha256 != exp["data_sha256"]:
        out.notes.append("your copy of the test data has another digest than the card's")
    status = "verified"
    if f.unpinned:  # the model is whatever the given file was: reproducible, but not the entry's
        status = "unpinned source"
        message = (f"unpinned source: no hash pins {card.name}'s official file (the card has no source_sha256 or "
                   f"model_digest, and it was never downloaded here), so this is not verified; {message}")
    _registry_put(out_key(out), {**record, "status": status})
    if keep is not None:
        keep["record"] = {**record, "status": status}
    out.status, out.verdict, out.message = status, verdict.status, message
    out.clean_correct, out.n_examples = clean.clean_correct, clean.n_examples
    return out


def _parsed_evidence(f: _Fetched) -> Evidence | None:
    """The published evidence, parsed, or None if there is none or it is unreadable: the robust check
    then parses it again to name what is wrong."""
    if f.evidence is None:
        return None
    try:
        return read_evidence(f.evidence, n_examples=f.card.expected["n_examples"], numel=get_spec(f.card.dataset).numel)
    except RbzooError:
        return None


def _verify_robust(f: _Fetched, out: PullResult, keep: dict, *, device: str, numerics: str, spot, spot_seed: int) -> None:
    """Check the card's robust claim against the published evidence (and re-attack chunks with `spot`)."""
    card, label = f.card, out.label
    claimed = card.rb["claimed"]
    if claimed["robust_acc"] is None:
        out.robust_message = "robust: the card claims no robust accuracy; nothing to check"
        return
    pin = claimed.get("evidence_sha256")
    if pin is None:
        out.robust_message = (f"robust: {claimed['robust_acc']:.2f} % is claimed without evidence (no stored adversarial "
                              f"examples): not checkable; `rbzoo eval` of this model keeps the evidence of every break")
        return
    if f.evidence is None:
        raise VerificationError(f"{label}: the card pins evidence {pin[:16]}… for its robust claim, but no "
                                f"{EVIDENCE_FILE} was published")
    if hashlib.sha256(f.evidence).hexdigest() != pin:
        raise VerificationError(f"{label}: {EVIDENCE_FILE} does not match the SHA-256 the card pins")
    res = f.results
    if not isinstance(res, dict) or (res.get("evidence") or {}).get("sha256") != pin \
            or res.get("robust_correct") != claimed["robust_correct"] or res.get("n_examples") != card.expected["n_examples"]:
        raise VerificationError(f"{label}: the published {RESULTS_FILE} does not state the card's robust claim "
                                f"(robust_correct, evidence or n_examples differ)")
    cert = _card_reference(f, label)
    if cert is None:
        raise VerificationError(f"{label}: a robust claim needs the per-sample certificate the card pins")
    clean, ds = keep["clean"], keep["dataset"]
    evidence = keep["evidence"] or read_evidence(f.evidence, n_examples=clean.n_examples,
                                                 numel=get_spec(card.dataset).numel)
    attack = published_attack(res)  # VerificationError if missing or invalid
    _same_threat_model(label, card.robust_args, attack, evidence.meta)
    tau = tau_for(numerics, attack.numerics)
    idx = np.arange(clean.n_examples)
    try:
        verdict = prove_breaks(keep["model"], ds, idx, res, evidence, cert, clean.labels, clean.correct_mask,
                               profile=numerics, tau=tau, device=device, images=keep.get("images"))
        if spot is not None:
            verdict.spot = spot_check(keep["model"], ds, idx, res, evidence, cert, k=None if spot == "all" else int(spot),
                                      seed=spot_seed, profile=numerics, tau=tau, device=device)
    except VerificationError as e:
        _registry_put(out_key(out), {**keep["record"], "robust": {"status": "failed", "evidence_sha256": pin,
                                                                  "message": str(e)}})
        raise VerificationError(f"{label}: robust claim refused: {e}") from None
    out.robust, out.robust_message = verdict.to_json(), verdict.message()
    _registry_put(out_key(out), {**keep["record"], "robust": {"status": "proved", "evidence_sha256": pin,
                                                              **verdict.to_json()}})


def _same_threat_model(label: str, args: dict | None, attack, evidence_meta: dict) -> None:
    """The card's robust metric (norm, ε, attack version) is the attack the results and the evidence
    state: else a claim at ε = 8/255 could stand on breaks and flags of a weaker attack."""
    args = args or {}
    try:
        eps = parse_eps(args.get("eps"))
    except (ConfigError, TypeError, ValueError):
        eps = None
    stated = f"{args.get('norm')} ε = {eps_label(eps)}, {attack_label(args)}"
    ran = f"{attack.norm} ε = {eps_label(attack.eps)}, {attack_label(attack.as_dict())}"
    for key in ("n_iter", "n_restarts", "n_queries"):
        if getattr(attack, key) is not None:
            ran += f", {key} {getattr(attack, key)}"
    if args.get("norm") != attack.norm or args.get("version") != card_attack(attack.as_dict())["version"] or eps is None \
            or not math.isclose(eps, attack.eps, rel_tol=1e-9):
        raise VerificationError(f"{label}: the card claims robust accuracy under {stated}, but the published results "
                                f"come from {ran}")
    meta_eps = evidence_meta.get("eps", attack.eps)
    if evidence_meta.get("norm", attack.norm) != attack.norm or not isinstance(meta_eps, (int, float)) \
            or not math.isclose(meta_eps, attack.eps, rel_tol=1e-9):
        raise VerificationError(f"{label}: {EVIDENCE_FILE} was made under another threat model than the results state ({ran})")


def maintainer_block(model_digest: str, clean, cert: Certificate) -> dict:
    """The card fields a maintainer would publish so that later pulls are exact, not count only."""
    return {"model_digest": model_digest,
            "expected": {"n_examples": clean.n_examples, "clean_correct": clean.clean_correct,
                         "predictions_sha256": clean.predictions_sha256, "data_sha256": clean.data_sha256,
                         "certificate_sha256": cert.digest, "profile": cert.profile},
            "certificate": cert.to_json()}


def out_key(out: PullResult) -> str:
    return _key(out.origin, out.sha256)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# ------------------------------------------------------------------------------------------ 4. the workflow

def _fetch(s: Spec, *, source, bn_check: bool, endpoint, token) -> _Fetched:
    if s.kind == "folder":
        return _fetch_folder(s)
    if s.kind == "card" and s.card.repo_id is None:  # an imported entry: convert the authors' file
        return _fetch_import(s, source, bn_check)
    return _fetch_hub(s, endpoint, token)


def pull(spec: str, *, data_dir: str | Path | None = None, verify: bool = True, endpoint: str | None = None,
         token: str | None = None, cards_dir: str | Path | None = None, device: str = "cpu",
         progress: Progress | None = None, source: str | Path | None = None, bn_check: bool = True,
         numerics: str = "verify", strict: bool = False, write_card: bool = False, force: bool = False,
         robust: bool = False, spot_check_chunks: int | str | None = None, spot_seed: int | None = None,
         robust_results: str | Path | None = None) -> PullResult:
    """Download a zoo model (card name, `org/name[@rev]`, or a `--to` folder) and verify it.

    Imported entries (cards without a repo_id) are fetched from the card's `source_url` (or the
    local official file `source`) and converted first. The verdict (`PullResult.verdict`) is
    "exact", "tolerance" (only near-ties of this evaluation differ, docs/numerics.md) or "count
    only" (the card has no per-sample reference; the count moved by no more than min(near-ties, cap));
    anything else, and any number of the card that does not add up, raises VerificationError.
    `strict` demands "exact". `numerics` is the profile of the re-evaluation. A `source` that no
    hash pins gives status "unpinned source", never "verified". `write_card` writes the card with
    this machine's reference into the cards folder (count-only entries; an existing card only
    with `force`).
    `robust` also checks the robust claim against its published evidence
    (:func:`rbzoo.robust_check.prove_breaks`); `spot_check_chunks` (a number or "all") re-attacks
    that many chunks (:func:`rbzoo.robust_check.spot_check`). With `write_card`, `robust_results`
    (an `rbzoo eval` results file of this model, evidence beside it) adds its robust claim to an
    imported entry's card, proved here first.
    """
    s = parse_spec(spec, cards_dir)
    if s is None:
        raise HubError(f"{spec!r} is not a zoo name (see `rbzoo pull --list`; cards in "
                       f"{default_cards_dir(cards_dir)}), a Hub repo id org/name[@revision], or a folder")
    if s.kind == "card" and s.card.kind == "reference":
        raise ConfigError(f"{spec} is a reference entry: no published model to pull; train and judge one with "
                          f"`rbzoo reproduce {spec} --out runs/{spec}`")
    imported = s.kind == "card" and s.card.repo_id is None
    if source is not None and not imported:
        raise ConfigError("--source is only for imported zoo entries that are not on the Hub (see `rbzoo pull --list`)")
    if not bn_check and not imported:
        raise ConfigError("--no-bn-check is only for imported zoo entries that are converted from the authors' file")
    check_profile(numerics)
    if spot_check_chunks is not None:
        robust = True
        if spot_check_chunks != "all" and (not isinstance(spot_check_chunks, int) or spot_check_chunks < 1):
            raise ConfigError(f"--spot-check takes a number of chunks >= 1 or 'all', got {spot_check_chunks!r}")
    if robust_results is not None and not (write_card and imported):
        raise ConfigError("--results publishes a robust claim with --write-card, for imported zoo entries")
    if robust and not verify:
        raise ConfigError("--robust checks the robust claim on the verified model; it cannot be combined with --no-verify")
    f = _fetch(s, source=source, bn_check=bn_check, endpoint=endpoint, token=token)
    label = f"{f.repo_id}@{f.commit[:12]}" if f.repo_id and f.commit else (f.repo_id or str(f.spec))
    ck, sha, size = _check_identity(f, label)
    out = PullResult(f.card, f.path, sha, size, f.repo_id, f.commit, "skipped", origin=f.origin)
    if f.first_use:
        out.notes.append(f"the card pins no hash of the official file: this first download pinned it (URL and "
                         f"SHA-256 {f.source_sha256[:16]}… recorded under {rbzoo_home()}); later pulls must match it")
    published = _published(f, sha)
    base = {"name": f.card.name, "origin": f.origin, "repo_id": f.repo_id, "revision": f.commit, "sha256": sha,
            "bytes": size, "path": str(f.path), "expected": f.card.expected, "published": published}
    rec = registry_entries().get(out_key(out))
    # History never replaces a check: a hit only while everything published is what was verified.
    if rec and rec.get("status") == "verified" and rec.get("published") == published and rec.get(
            "model_digest") == ck.digest and rec.get("profile") == numerics \
            and not (strict and rec.get("verdict") != "exact") and not write_card and not robust:
        out.status, out.verdict, out.message = "cached", rec.get("verdict"), rec.get("message", "")
        out.clean_correct, out.n_examples = rec["clean_correct"], rec["n_examples"]
        return out
    if not verify:
        # never overwrite a verified or an unverified mark (another process may have set one meanwhile)
        _registry_put(out_key(out), {**base, "status": "downloaded", "checked_at": _now()}, if_absent=True)
        return out
    if write_card and f.unpinned:
        raise ConfigError(f"{label}: --write-card would pin whatever {source} is; give the card a source_sha256 "
                          f"or download the official file first")
    evidence = _parsed_evidence(f) if robust else None
    keep: dict = {"evidence": evidence, "positions": [e.position for e in evidence.items] if evidence else ()}
    out = _verify(f, out, ck, data_dir=data_dir, device=device, numerics=numerics, strict=strict,
                  progress=progress, base=base, keep=keep)
    if robust:
        _verify_robust(f, out, keep, device=device, numerics=numerics, spot=spot_check_chunks,
                       spot_seed=spot_seed if spot_seed is not None else secrets.randbits(32))
    if write_card and robust_results is not None:
        out.written_card = _write_robust(s, f, out, keep, Path(robust_results), cards_dir, device=device,
                                         numerics=numerics, force=force)
    elif write_card:
        out.written_card = _write_card(s, f, out, cards_dir, force)
    return out


def _write_robust(s: Spec, f: _Fetched, out: PullResult, keep: dict, results_path: Path, cards_dir, *,
                  device: str, numerics: str, force: bool) -> Path:
    """An imported entry's card with the robust claim of an `rbzoo eval` of it (and its evidence),
    proved here first; the results and evidence are written beside the card."""
    res = read_json(Path(results_path), "results JSON", ConfigError)
    clean, ck_digest = keep["clean"], keep["record"]["model_digest"]
    if not isinstance(res, dict) or res.get("model_digest") != keep["record"]["model_digest"] \
            or res.get("n_examples") != clean.n_examples or res.get("predictions_sha256") != clean.predictions_sha256:
        raise ConfigError(f"{results_path}: not an `rbzoo eval` of this model on the card's {clean.n_examples} samples "
                          f"with the predictions verified here")
    cert = Certificate.of(clean)
    data = robust_evidence(res, Path(results_path), cert, f.card.dataset)
    if data is None:
        raise ConfigError(f"{results_path}: no robust result to publish (rerun `rbzoo eval` without --clean-only)")
    sha = hashlib.sha256(data).hexdigest()
    spec = get_spec(f.card.dataset)
    evidence = read_evidence(data, n_examples=clean.n_examples, numel=spec.numel)
    prove_breaks(keep["model"], keep["dataset"], np.arange(clean.n_examples), res, evidence, cert, clean.labels,
                 clean.correct_mask, profile=numerics, tau=tau_for(numerics, res["attack"].get("numerics", "verify")),
                 device=device)
    block = out.card_block or maintainer_block(ck_digest, clean, cert)
    n, rc = res["n_examples"], res["robust_correct"]
    claimed = dict(f.card.rb["claimed"], robust_acc=round(100.0 * rc / n, 2), robust_correct=rc, evidence_sha256=sha)
    rb = dict(f.card.rb, model_digest=block["model_digest"], expected=block["expected"], claimed=claimed)
    rargs = card_attack(res["attack"])
    card = build_card(rb, robust_args=rargs, license=f.card.meta.get("license") or "mit")
    path = s.card_path or default_cards_dir(cards_dir) / f"{f.card.name}.md"
    for target in (path, *(path.with_name(f.card.name + x) for x in (CERTIFICATE_SUFFIX, EVIDENCE_SUFFIX, RESULTS_SUFFIX))):
        check_output(target, inputs=(f.path, Path(results_path)), force=force, kind="--write-card")
    write_json(path.with_name(f.card.name + CERTIFICATE_SUFFIX), block["certificate"])
    write_bytes(path.with_name(f.card.name + EVIDENCE_SUFFIX), data)
    write_json(path.with_name(f.card.name + RESULTS_SUFFIX),
               dict(res, evidence=dict(res["evidence"], file=f.card.name + EVIDENCE_SUFFIX)))
    write_text(path, card.render())
    return path


def _write_card(s: Spec, f: _Fetched, out: PullResult, cards_dir, force: bool) -> Path:
    """Write the card with this evaluation's reference (and its certificate beside it), under the
    writer rule: an existing card or certificate is replaced only with `force`."""
    if out.card_block is None:
        raise ConfigError(f"{out.label}: the card already has a per-sample reference (certificate_sha256); "
                          f"--write-card is for cards without one")
    name = f.card.name
    if not NAME_RE.match(name):
        raise ConfigError(f"{name!r} is not a valid zoo name")
    block = out.card_block
    rb = dict(f.card.rb, model_digest=block["model_digest"], expected=block["expected"])
    card = build_card(rb, robust_args=f.card.robust_args, license=f.card.meta.get("license") or "mit")
    path = s.card_path or default_cards_dir(cards_dir) / f"{name}.md"
    side = path.with_name(name + CERTIFICATE_SUFFIX)
    for target in (path, side):
        check_output(target, inputs=(f.path,), force=force, kind="--write-card")
    write_json(side, block["certificate"])
    write_text(path, card.render())
    return path


def resolve_remote(spec: str) -> Path | None:
    """The local checkpoint for a zoo name or Hub repo id (downloaded and SHA-256-checked), else None.

    The remote resolver of `rbzoo eval NAME` and friends (:func:`rbzoo.resolve.resolve_checkpoint`
    takes it as `remote`): existing paths and `*.safetensors` names are not its own (None). The
    clean accuracy is not re-evaluated here (eval measures it), but a copy that `rbzoo pull` found
    not to reproduce its card is refused.
    """
    if looks_local(spec):
        return None
    s = parse_spec(spec)
    if s is None or s.kind == "folder":
        return None
    r = pull(spec, verify=False)
    rec = registry_entries().get(out_key(r))
    if rec and rec.get("status") == "unverified":
        raise VerificationError(f"{r.label}: `rbzoo pull` found that this model does not reproduce its card "
                                f"({rec.get('reason', 'clean accuracy mismatch')}); evaluate the file directly: {r.path}")
    return r.path


__all__ = ["CERTIFICATE_SUFFIX", "PullResult", "Spec", "import_zoo_entry", "maintainer_block", "parse_spec", "pull",
           "resolve_remote"]
