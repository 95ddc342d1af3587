"""The Hugging Face Hub side of the zoo: push (one commit of card, checkpoint and results) and
fetching a zoo repo's files at a pinned commit. The pull workflow built on it is :mod:`rbzoo.zoo`.

A zoo repo — on the Hub or in a folder for air-gapped exchange — holds three files, written in one
commit: `README.md` (the model card, :mod:`rbzoo.cards`), `model.safetensors` (the checkpoint) and
`results.json` (the `rbzoo eval` results, with the per-sample verification certificate that the
card pins by `expected.certificate_sha256`).

Every Hub call passes `endpoint=`, `token=` and `cache_dir=` explicitly: huggingface_hub reads its
environment once, at import, while rbzoo honours `--endpoint`/`HF_ENDPOINT` etc. on every call.
The token is never printed or logged.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import __version__
from ._io import check_output, check_size, read_json, write_bytes, write_text
from .cards import HEX40, HEX64, NAME_RE, OBJECTIVES, REPO_RE, Card, build_card, load_card
from .checkpoint import Checkpoint, build, checkpoint_dataset, read
from .constants import cards_dir as default_cards_dir
from .constants import hf_cache_dir, hf_endpoint, hf_offline, hf_token
from .data import DEFAULT_EPS, get_dataset, get_spec
from .errors import CheckpointError, ConfigError, DataError, HubError, RbzooError, VerificationError
from .exact import clean_accuracy
from .evidence import max_evidence_bytes, read_evidence, read_evidence_file, results_evidence_file
from .inspection import describe
from .labels import card_attack
from .reproduction import for_card as reproduction_for_card
from .resolve import RUN_FOLDER_FILES
from .robust_check import check_consistency, published_attack
from .verdict import Certificate, check_claims, compare

CARD_FILE = "README.md"
CHECKPOINT_FILE = "model.safetensors"
RESULTS_FILE = "results.json"
REPRODUCTION_FILE = "reproduction.json"  # with `push --reproduction`: the report the card's row summarizes
EVIDENCE_FILE = "evidence.safetensors"  # the adversarial input of every broken sample (rbzoo.evidence)

# `progress(description, total)` returns a callback taking the number of items just done.
Progress = Callable[[str, int], Callable[[int], None]]


@dataclass
class PushResult:
    card: Card
    repo_id: str | None
    commit: str | None = None
    commit_url: str | None = None
    pr_url: str | None = None
    folder: Path | None = None
    local_card: Path | None = None
    evaluated: bool = False  # clean accuracy was recomputed (and checked) during the push

    @property
    def pin(self) -> str | None:
        return f"{self.repo_id}@{self.commit}" if self.repo_id and self.commit else None


# ------------------------------------------------------------------------------------------ helpers



def _scrub(text: str, token: str | None) -> str:
    first = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    return first.replace(token, "***") if token else first


def _is_network_error(e: BaseException) -> bool:
    # huggingface_hub 2.x raises httpx2 errors, 1.x httpx, 0.x requests: match them by module.
    mod = type(e).__module__.split(".")[0]
    return mod in ("httpx", "httpx2", "httpcore", "httpcore2", "requests", "urllib3") or isinstance(
        e, (ConnectionError, TimeoutError))


@contextmanager
def _hub_errors(action: str, endpoint: str, token: str | None, offline: bool = False) -> Iterator[None]:
    """Turn huggingface_hub / network exceptions into one-line HubErrors (token never shown)."""
    from huggingface_hub import errors as E

    remote_missing = getattr(E, "RemoteEntryNotFoundError", E.EntryNotFoundError)
    try:
        yield
    except RbzooError:
        raise
    except E.RepositoryNotFoundError:
        raise HubError(f"{action}: repository not found on {endpoint} (check the repo id; a private repo "
                       f"needs a token that can read it)") from None
    except E.RevisionNotFoundError:
        raise HubError(f"{action}: no such revision (branch, tag or commit) on {endpoint}") from None
    except E.LocalEntryNotFoundError as e:
        if offline:
            raise HubError(f"{action}: not in the local download cache and HF_HUB_OFFLINE is set "
                           f"(pull it once while online)") from None
        cause = e.__cause__ or e.__context__
        why = f" ({type(cause).__name__}: {_scrub(str(cause), token)})" if cause else ""
        raise HubError(f"{action}: cannot reach {endpoint} and nothing usable is cached{why}") from None
    except remote_missing:
        raise HubError(f"{action}: file not found in that revision") from None
    except E.HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        if status == 401:
            raise HubError(f"{action}: authentication failed (HTTP 401 from {endpoint}): the token was rejected; "
                           f"set HF_TOKEN or --token, or run `hf auth login`") from None
        if status == 403:
            raise HubError(f"{action}: permission denied (HTTP 403 from {endpoint}): the token cannot write "
                           f"to this repo") from None
        raise HubError(f"{action}: HTTP {status} from {endpoint}: {_scrub(str(e), token)}") from None
    except E.HFValidationError as e:
        raise HubError(f"{action}: {_scrub(str(e), token)}") from None
    except Exception as e:
        if _is_network_error(e):
            raise HubError(f"{action}: network error talking to {endpoint}: {type(e).__name__}: "
                           f"{_scrub(str(e), token) or 'connection lost'} (nothing was kept)") from None
        if isinstance(e, OSError):  # e.g. the client's size check after a short download
            raise HubError(f"{action}: {type(e).__name__}: {_scrub(str(e), token)}") from None
        raise


def _load_checkpoint(path: Path) -> tuple[Checkpoint, object]:
    """`read` (format + digest checks) and build the network: a push refuses anything less."""
    ck = read(path)
    return ck, build(ck)


# ------------------------------------------------------------------------------------------ push

def _find_results(ckpt: Path, results: str | Path | None) -> tuple[dict | None, Path | None]:
    candidates = [Path(results)] if results is not None else [
        ckpt.with_name(f"{ckpt.stem}.results.json"), ckpt.with_name("results.json")]
    for path in candidates:
        if path.is_file():
            return read_json(path, "results JSON", ConfigError), path
        if results is not None:
            raise ConfigError(f"no such results file: {path}")
    return None, None


def _check_results(res, src: str, digest: str, dataset: str | None) -> Certificate:
    """Check the fields of an `rbzoo eval` results JSON that a push relies on; returns its certificate."""
    def bad(fieldname: str, problem: str):
        raise ConfigError(f"{src}: results field `{fieldname}` {problem}")

    if not isinstance(res, dict) or res.get("rbzoo_results") != 1:
        raise ConfigError(f"{src}: not an rbzoo results JSON (`rbzoo_results` must be 1)")
    if res.get("model_digest") != digest:
        raise ConfigError(f"{src}: results are for another model (model_digest {str(res.get('model_digest'))[:16]}…, "
                          f"this checkpoint is {digest[:16]}…)")
    if dataset is not None and res.get("dataset") != dataset:
        bad("dataset", f"is {res.get('dataset')!r} but the checkpoint was trained on {dataset!r}")
    if res.get("split") != "test":
        bad("split", f"must be 'test', got {res.get('split')!r}")
    n, correct = res.get("n_examples"), res.get("clean_correct")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        bad("n_examples", f"must be a positive integer, got {n!r}")
    if not isinstance(correct, int) or isinstance(correct, bool) or not 0 <= correct <= n:
        bad("clean_correct", f"must be an integer in [0, n_examples]: no clean-accuracy result ({correct!r})")
    if not isinstance(res.get("predictions_sha256"), str) or not HEX64.match(res["predictions_sha256"]):
        bad("predictions_sha256", "must be a 64-hex SHA-256")
    if res.get("data_sha256") is not None and not (isinstance(res["data_sha256"], str) and HEX64.match(res["data_sha256"])):
        bad("data_sha256", "must be a 64-hex SHA-256 or null")
    subset = res.get("subset")
    whole = res.get("split_size") == n  # a "random" subset of every sample is the split, in order
    if subset is not None and (not isinstance(subset, dict) or (subset.get("mode") not in ("first", None)
                                                                 and not whole)):
        bad("subset", "must be the whole test split or its first N samples (a random subset cannot be "
                      "re-evaluated by `rbzoo pull`); rerun `rbzoo eval` without a random subset or use --data-dir")
    if res.get("robust_acc") is not None:
        ra, att = res["robust_acc"], res.get("attack")
        if not isinstance(ra, (int, float)) or not 0 <= ra <= 1:
            bad("robust_acc", f"must be a fraction in [0, 1], got {ra!r}")
        if not isinstance(att, dict) or not all(k in att for k in ("norm", "eps", "version")):
            bad("attack", "must give norm, eps and version when robust_acc is set")
    if res.get("certificate") is None:
        bad("certificate", "is missing: results made before rbzoo 0.2 carry no per-sample certificate; rerun `rbzoo eval`")
    try:
        cert = Certificate.from_json(res["certificate"], max_n=n)
    except RbzooError as e:
        bad("certificate", f"is not valid ({e})")
    if cert.n != n or cert.labels_sha256 != res["predictions_sha256"]:
        bad("certificate", "does not match n_examples / predictions_sha256")
    return cert


def robust_evidence(res: dict, res_path: Path | None, cert: Certificate, dataset: str) -> bytes | None:
    """The evidence file a robust claim stands on, checked (SHA-256, format, counts against the
    flags); None for results without a robust claim. A robust claim without evidence is refused."""
    if res.get("robust_acc") is None:
        return None
    src = str(res_path)
    ev = res.get("evidence")
    if res_path is None or not isinstance(ev, dict) or not isinstance(ev.get("file"), str):
        raise ConfigError(f"{src}: claims a robust accuracy but names no evidence file (results made before rbzoo kept "
                          f"the adversarial examples); rerun `rbzoo eval`")
    numel = get_spec(dataset).numel
    data = results_evidence_file(res, res_path, numel=numel, error=ConfigError)
    try:
        evidence = read_evidence(data, n_examples=res["n_examples"], numel=numel)
        published_attack(res)  # the settings a spot check will replay
        check_consistency(res, evidence, cert)
    except VerificationError as e:
        raise ConfigError(f"{src}: refusing to publish an inconsistent robust claim: {e}") from None
    return data


def _results_from_clean(clean, cert: Certificate, ck: Checkpoint, sha: str, dataset: str, device: str, wall: float) -> dict:
    import huggingface_hub  # the client is imported where it is needed: pulls from folders never use it
    import torch

    return {
        "rbzoo_results": 1, "model_digest": ck.digest,
        "model": {"path": CHECKPOINT_FILE, "arch": ck.arch.get("id"), "file_sha256": sha},
        "dataset": dataset, "split": "test", "n_examples": clean.n_examples,
        "subset": {"mode": "first", "seed": None},
        "clean_correct": clean.clean_correct, "clean_acc": clean.clean_acc,
        "predictions_sha256": clean.predictions_sha256, "data_sha256": clean.data_sha256,
        "certificate": cert.to_json(), "numerics_profile": clean.profile,
        "robust_correct": None, "robust_acc": None, "attack": None, "robust_acc_after": {},
        "wilson95": None, "robust_flags": None,
        "warnings": ["clean accuracy computed by `rbzoo push --data-dir`; no robust evaluation"],
        "wall_s": round(wall, 3),
        "versions": {"rbzoo": __version__, "torch": torch.__version__, "huggingface_hub": huggingface_hub.__version__},
        "device": str(device), "numerics": clean.numerics,
    }


def load_test_split(dataset: str, data_dir, n: int | None, what: str, spec_hint: str):
    """The test split and the indices evaluated (all, or the first `n`); DataError says how to get it."""
    try:
        ds = get_dataset(dataset, "test", data_dir)
    except DataError as e:
        raise DataError(f"cannot {what}: {e}; then {spec_hint}") from None
    if n is not None and n > len(ds):
        raise DataError(f"cannot {what}: it needs {n} {dataset} test samples, your copy has {len(ds)}")
    return ds, (None if n is None or n == len(ds) else range(n))


def _card_block(ck: Checkpoint, data: bytes, sha: str, res: dict, cert: Certificate, name: str, repo_id: str | None,
                dataset: str, float32_bytes: int, base: Card | None) -> tuple[dict, dict | None, str]:
    """The `rbzoo` card block of a push: checkpoint + results, provenance from training or the old card."""
    train = ck.meta_json("rbzoo.train") or {}
    if not isinstance(train, dict):
        train = {}
    # Claims and provenance of an existing zoo card (an imported entry: source URL, the paper's
    # robust accuracy, k/p/objective) carry over only if it describes the same measured model.
    same = base is not None and base.dataset == dataset and all(
        base.expected[k] == res.get(k) or base.expected[k] is None for k in ("n_examples", "clean_correct",
                                                                             "predictions_sha256", "data_sha256"))
    brb = base.rb if same else {}
    kept = sum(r.kept for r in ck.layers)
    total = sum(r.n for r in ck.layers) or 1
    keep = train.get("keep", brb.get("keep", round(kept / total, 6)))
    objective = train.get("objective", brb.get("objective"))
    n, correct = res["n_examples"], res["clean_correct"]
    if res.get("robust_acc") is not None:
        att = res["attack"]
        robust, rargs, eps = round(100.0 * res["robust_acc"], 2), card_attack(att), att["eps"]
    elif brb.get("claimed", {}).get("robust_acc") is not None:
        robust, rargs, eps = brb["claimed"]["robust_acc"], base.robust_args, brb["eps"]
    else:
        attack = train.get("attack") if isinstance(train.get("attack"), dict) else {}
        robust, rargs, eps = None, None, attack.get("eps", brb.get("eps", DEFAULT_EPS.get(dataset, 8 / 255)))
    rb = {
        "name": name, "repo_id": repo_id, "revision": None, "checkpoint": CHECKPOINT_FILE,
        "checkpoint_sha256": sha, "checkpoint_bytes": len(data), "model_digest": ck.digest,
        "float32_bytes": float32_bytes,
        "arch": ck.arch, "keep": keep, "p": train.get("p", brb.get("p")),
        "score_init_scale": train.get("score_init_scale", brb.get("score_init_scale")),
        "objective": objective if objective in OBJECTIVES else None,
        "dataset": dataset, "eps": eps,
        "expected": {"n_examples": n, "clean_correct": correct, "predictions_sha256": res["predictions_sha256"],
                     "data_sha256": res.get("data_sha256"), "certificate_sha256": cert.digest, "profile": cert.profile},
        "source_url": brb.get("source_url"), "source_sha256": brb.get("source_sha256"),
        "claimed": {"clean_acc": round(100.0 * correct / n, 2), "robust_acc": robust},
    }
    return rb, rargs, (base.meta.get("license") if base is not None else None) or "mit"


def _push_results(ckpt: Path, ck: Checkpoint, model, sha: str, results, data_dir, device: str,
                  progress: Progress | None) -> tuple[dict, Certificate, Path | None, str, np.ndarray | None]:
    """The results a push publishes: given (and checked), and/or computed on `data_dir`.
    Returns (results, their certificate, their file, dataset, the test labels when clean accuracy
    was evaluated here, else None)."""
    dataset = checkpoint_dataset(ck)
    res, res_path = _find_results(ckpt, results)
    cert = None
    if res is not None:
        cert = _check_results(res, str(res_path), ck.digest, dataset)
        res = copy.deepcopy(res)
        dataset = dataset or res.get("dataset")
    if dataset is None:
        raise ConfigError(f"{ckpt}: no `rbzoo.dataset` metadata and no results naming the dataset")
    get_spec(dataset)
    bundled = dataset == "digits"  # ships with scikit-learn: evaluated without a data folder
    if data_dir is None and not (bundled and res is None):
        if res is None:
            raise ConfigError(f"no clean-accuracy result for {ckpt}: run `rbzoo eval {ckpt} --out "
                              f"{ckpt.with_name(ckpt.stem + '.results.json')}`, or pass --results FILE or --data-dir DIR")
        return res, cert, res_path, dataset, None
    n = res["n_examples"] if res is not None else None
    ds, indices = load_test_split(dataset, data_dir, n, f"evaluate {ckpt.name}", "rerun with --data-dir DIR")
    t0 = time.monotonic()
    total = len(ds) if indices is None else len(indices)
    clean = clean_accuracy(model, ds, indices=indices, device=device,
                           progress=progress(f"clean accuracy of {ckpt.name}", total) if progress else None)
    new = Certificate.of(clean)
    if res is None:
        return (_results_from_clean(clean, new, ck, sha, dataset, device, time.monotonic() - t0), new, None, dataset,
                clean.labels)
    verdict = compare(cert, new)
    if not verdict.ok or (res.get("data_sha256") and res["data_sha256"] != clean.data_sha256):
        what = "the test data differs" if res.get("data_sha256") not in (None, clean.data_sha256) else verdict.message()
        raise VerificationError(f"{res_path} does not reproduce on {data_dir}: {clean.clean_correct}/{clean.n_examples} "
                                f"correct now, the results say {res['clean_correct']}/{res['n_examples']} ({what}); "
                                f"refusing to publish")
    return res, cert, res_path, dataset, clean.labels


def push(checkpoint: str | Path, repo_id: str | None = None, *, results: str | Path | None = None,
         data_dir: str | Path | None = None, revision: str | None = None, private: bool = False,
         create_pr: bool = False, endpoint: str | None = None, token: str | None = None,
         name: str | None = None, to: str | Path | None = None, cards_dir: str | Path | None = None,
         device: str = "cpu", progress: Progress | None = None, force: bool = False,
         reproduction: str | Path | None = None) -> PushResult:
    """Publish a checkpoint with its card and results: one Hub commit, or a folder with `to`.

    Refuses a checkpoint that does not load, results for another model, and a push without a
    clean-accuracy result (from `results`, `<stem>.results.json` / `results.json` beside the
    checkpoint, or computed on `data_dir`'s test split; with both, they must agree under the
    certificate rules). Files in `to` are replaced only with `force`, and never when one of them
    is an input. After a Hub push the zoo's local card `<cards_dir>/<name>.md` is created or
    updated with the pinned commit. `reproduction`: an `rbzoo reproduce` report of this model, uploaded
    beside the card, which then says who reproduced which entry, with what verdicts.
    """
    if repo_id is None and to is None:
        raise ConfigError("give a REPO_ID (org/name) to push to the Hub, or --to DIR to write a folder")
    if repo_id is not None and not REPO_RE.match(repo_id):
        raise ConfigError(f"{repo_id!r} is not a Hub repo id (org/name)")
    if to is not None and (revision or private or create_pr):
        raise ConfigError("--revision, --private and --create-pr apply to Hub pushes, not to --to DIR")
    ckpt = Path(checkpoint)
    if not ckpt.is_file():
        raise CheckpointError(f"no such checkpoint: {ckpt}")
    data = ckpt.read_bytes()  # hash and upload the same bytes, even if the file changes meanwhile
    sha = hashlib.sha256(data).hexdigest()
    ck, model = _load_checkpoint(ckpt)
    res, cert, res_path, dataset, labels = _push_results(ckpt, ck, model, sha, results, data_dir, device, progress)
    evaluated = labels is not None
    if name is None:  # the repo's name; for a folder, the run's (runs/qs/best.safetensors is "qs", not "best")
        stem = repo_id.split("/")[1] if repo_id else (
            ckpt.resolve().parent.name if ckpt.name in RUN_FOLDER_FILES else ckpt.stem)
        name = re.sub(r"[^a-z0-9._-]+", "-", stem.lower()).strip("-._")
    if not NAME_RE.match(name or ""):
        raise ConfigError(f"{name!r} is not a valid zoo name ([a-z0-9._-], starting with a letter or digit)")
    local_path = default_cards_dir(cards_dir) / f"{name}.md"
    base = load_card(local_path) if local_path.is_file() else None
    evidence = robust_evidence(res, res_path, cert, dataset)
    rb, rargs, license = _card_block(ck, data, sha, res, cert, name, repo_id, dataset, describe(ckpt)["totals"]["float32_bytes"], base)
    if evidence is not None:  # the card pins the evidence of its robust claim
        rb["claimed"].update(robust_correct=res["robust_correct"], evidence_sha256=hashlib.sha256(evidence).hexdigest())
        res = dict(res, evidence=dict(res["evidence"], file=EVIDENCE_FILE))
    if base is not None and base.config:  # the entry's training config outlives a re-push under its name
        rb["config"] = base.config
    extra = {}
    if reproduction is not None:
        extra[REPRODUCTION_FILE], rb["reproduction"] = reproduction_for_card(reproduction, ck.digest)
    card = build_card(rb, robust_args=rargs, license=license)
    # Every number the card states must follow from its certificate (and the test labels, when
    # evaluated here) and from the results: an inconsistent card is never written.
    check_claims(card.meta, cert=cert, labels=labels, results=res)
    res = dict(res, model={**(res.get("model") or {}), "path": CHECKPOINT_FILE, "file_sha256": sha})
    files = {CHECKPOINT_FILE: data, RESULTS_FILE: (json.dumps(res, indent=2) + "\n").encode(),
             CARD_FILE: card.render().encode("utf-8"), **extra}
    if evidence is not None:
        files[EVIDENCE_FILE] = evidence
    if to is not None:
        _write_folder(Path(to), files, inputs=(ckpt, res_path, reproduction), force=force)
        return PushResult(card, repo_id, folder=Path(to), evaluated=evaluated)
    description = (f"{ck.arch.get('id')} on {dataset}: clean {card.rb['claimed']['clean_acc']:.2f} % "
                   f"({res['clean_correct']}/{res['n_examples']}), checkpoint SHA-256 {sha}")
    info = _commit(repo_id, files, f"rbzoo push {name}", description, revision=revision, private=private,
                   create_pr=create_pr, endpoint=endpoint, token=token)
    local = build_card(dict(rb, revision=info.oid), robust_args=rargs, license=license)
    write_text(local_path, local.render())
    return PushResult(local, repo_id, info.oid, info.commit_url, getattr(info, "pr_url", None),
                      local_card=local_path, evaluated=evaluated)


def _write_folder(out: Path, files: dict[str, bytes], *, inputs: tuple, force: bool) -> None:
    """The repo layout in a folder (air-gapped exchange): every refusal before the first write."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--to {out}: exists and is not a folder")
    for fname in files:
        check_output(out / fname, inputs=inputs, force=force, kind="--to")
    for fname in sorted(files, key=lambda f: f == CARD_FILE):  # the card last: it marks a complete folder
        write_bytes(out / fname, files[fname])


def _commit(repo_id: str, files: dict[str, bytes], message: str, description: str, *, revision, private: bool,
            create_pr: bool, endpoint, token):
    """One Hub commit of `files` (the repo and branch created if needed)."""
    from huggingface_hub import CommitOperationAdd, HfApi

    endpoint, token = hf_endpoint(endpoint), hf_token(token)
    if not token:
        raise HubError("pushing needs a Hugging Face token: set HF_TOKEN, pass --token, or run `hf auth login`")
    api = HfApi(endpoint=endpoint, token=token)
    with _hub_errors(f"push to {repo_id}", endpoint, token):
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if revision and revision != "main":
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        return api.create_commit(
            repo_id, operations=[CommitOperationAdd(path_in_repo=p, path_or_fileobj=files[p]) for p in files],
            commit_message=message, commit_description=description, revision=revision, create_pr=create_pr)


# ------------------------------------------------------------------------------------------ fetch

@dataclass
class HubFiles:
    """A zoo repo's files downloaded at one commit (into the HF cache)."""

    card: Card
    path: Path  # the checkpoint
    results: dict | None
    commit: str
    server_sha256: str | None  # the checkpoint's LFS SHA-256 as the server states it
    purge: Callable[[], None]
    evidence: bytes | None = None  # evidence.safetensors, when the card pins one


def _purge_cached(path: Path) -> None:
    """Delete a downloaded file from the HF cache (snapshot link and its blob)."""
    try:
        target = path.resolve()
    except OSError:
        target = path
    for p in (path, target):
        try:
            p.unlink()
        except FileNotFoundError:
            pass


def fetch_hub(repo: str, rev: str, *, endpoint: str | None = None, token: str | None = None,
              local_card: Card | None = None) -> HubFiles:
    """Download a zoo repo's card, results and checkpoint at the commit `rev` resolves to.

    The card is fetched by `rev` (so the cache records the branch/tag for offline use), the rest at
    the commit the card came from. With `local_card` (the zoo's copy), the Hub's card must agree
    with it on what a pull checks. Honours HF_HUB_OFFLINE (cache only).
    """
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url

    endpoint, token, offline, cache = hf_endpoint(endpoint), hf_token(token), hf_offline(), str(hf_cache_dir())

    def metadata(filename: str, revision: str, optional: bool = False):
        # One HEAD without retries: a dead server or a 5xx fails at once, instead of after the
        # download's own ~23 s of backoff. `optional`: None if the file is not there.
        from huggingface_hub import errors as E

        remote_missing = getattr(E, "RemoteEntryNotFoundError", E.EntryNotFoundError)
        with _hub_errors(f"{repo}@{revision}: {filename}", endpoint, token):
            try:
                return get_hf_file_metadata(hf_hub_url(repo, filename, revision=revision, endpoint=endpoint),
                                            token=token, endpoint=endpoint)
            except remote_missing:
                if optional:
                    return None
                raise

    def download(filename: str, revision: str, optional: bool = False) -> Path | None:
        from huggingface_hub import errors as E

        remote_missing = getattr(E, "RemoteEntryNotFoundError", E.EntryNotFoundError)
        with _hub_errors(f"download {repo}@{revision[:12]}: {filename}", endpoint, token, offline):
            try:
                return Path(hf_hub_download(repo, filename, revision=revision, endpoint=endpoint, token=token,
                                            cache_dir=cache, local_files_only=offline))
            except (remote_missing, E.LocalEntryNotFoundError):
                if optional:
                    return None
                raise

    if not offline:
        metadata(CARD_FILE, rev)
    card_path = download(CARD_FILE, rev)
    commit = card_path.parent.name  # <cache>/snapshots/<commit>/README.md
    if not HEX40.match(commit):
        raise HubError(f"{repo}@{rev}: could not tell which commit was downloaded")
    card = load_card(card_path)
    if local_card is not None:
        for k in ("checkpoint", "checkpoint_sha256", "model_digest", "dataset", "expected"):
            if card.rb[k] != local_card.rb[k]:
                raise VerificationError(f"{repo}@{commit[:12]}: the Hub's card and the zoo card {local_card.name} "
                                        f"disagree on rbzoo.{k}; refusing to guess which one is right")
        card = local_card
    fname = card.rb["checkpoint"]
    server_sha = None
    if not offline:
        etag = (metadata(fname, commit).etag or "").strip('"').lower()
        server_sha = etag if HEX64.match(etag) else None
    results_path = download(RESULTS_FILE, commit, optional=True)
    evidence_path = None
    if card.rb["claimed"].get("evidence_sha256"):
        n, numel = card.expected["n_examples"], get_spec(card.dataset).numel
        ev_name = f"{repo}@{commit[:12]}: the published {EVIDENCE_FILE}"
        head = None if offline else metadata(EVIDENCE_FILE, commit, optional=True)
        if head is not None and isinstance(head.size, int):  # refused before a byte reaches the disk
            check_size(head.size, max_evidence_bytes(n, numel), VerificationError, what=f"the evidence of {n} samples",
                       name=ev_name, action="download")
        evidence_path = download(EVIDENCE_FILE, commit, optional=True)
    path = download(fname, commit)
    # A published file that fails a check (too large, not JSON) is exit 3, named; neither is read
    # whole before its size is checked.
    results = None
    if results_path is not None:
        results = read_json(results_path, "results JSON", VerificationError,
                            name=f"{repo}@{commit[:12]}: the published {RESULTS_FILE}")
    evidence = None
    if evidence_path is not None:
        evidence = read_evidence_file(evidence_path, n_examples=n, numel=numel, error=VerificationError, name=ev_name)
    return HubFiles(card, path, results, commit, server_sha, lambda: _purge_cached(path), evidence)


__all__ = ["CARD_FILE", "CHECKPOINT_FILE", "EVIDENCE_FILE", "RESULTS_FILE", "HubFiles", "PushResult", "fetch_hub", "push"]
