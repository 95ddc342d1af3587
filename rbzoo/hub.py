"""The zoo on the Hugging Face Hub: push, pull (verified exactly), names, and a registry of verified pulls.

A zoo repo — on the Hub or in a folder for air-gapped exchange — holds three files, written in one
commit: `README.md` (the model card, :mod:`rbzoo.cards`), `model.safetensors` (the checkpoint) and
`results.json` (the `rbzoo eval` results, plus `predictions_b64`, the per-sample predicted labels as
base64 int16 little-endian, so a mismatch can name the samples that disagree).

`pull` trusts nothing it downloads: the file's SHA-256 must equal the card's (and the server's LFS
hash), the checkpoint must load strictly, and the clean accuracy is re-evaluated under the pinned
numerics profile and compared sample by sample (count + prediction digest) with the card. A
verified pull is recorded in `$RBZOO_HOME/verified.json` keyed by repo, commit and file SHA-256,
so repeating it is instant and works offline from the download cache.

Every Hub call passes `endpoint=`, `token=` and `cache_dir=` explicitly: huggingface_hub reads its
environment once, at import, while rbzoo honours `--endpoint`/`HF_ENDPOINT` etc. on every call.
The token is never printed or logged.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import __version__
from ._io import file_sha256 as sha256_file
from ._io import write_bytes, write_json, write_text
from .cards import HEX40, HEX64, NAME_RE, OBJECTIVES, REPO_RE, Card, build_card, load_card
from .checkpoint import Checkpoint, build, read
from .constants import cards_dir as default_cards_dir
from .constants import hf_cache_dir, hf_endpoint, hf_offline, hf_token, rbzoo_home
from .errors import CheckpointError, ConfigError, DataError, HubError, RbzooError, VerificationError
from .evaluate import checkpoint_dataset
from .exact import clean_accuracy, pack_uint, predictions_digest, unpack_uint

CARD_FILE = "README.md"
CHECKPOINT_FILE = "model.safetensors"
RESULTS_FILE = "results.json"
REGISTRY_FILE = "verified.json"
MAX_LISTED = 10  # disagreeing sample indices named in a mismatch message

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


@dataclass
class PullResult:
    card: Card
    path: Path
    sha256: str
    size: int
    repo_id: str | None
    revision: str | None  # the commit actually downloaded (None for a folder)
    status: str  # "verified" (now), "cached" (verified before), "skipped" (--no-verify)
    clean_correct: int | None = None
    n_examples: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        if self.repo_id and self.revision:
            return f"{self.repo_id}@{self.revision[:12]}"
        return self.repo_id or self.card.name


@dataclass
class ZooEntry:
    card: Card
    path: Path
    status: str  # "verified" | "unverified" | "downloaded" | "not pulled" | "import from source" | "import: --source FILE"


# ------------------------------------------------------------------------------------------ helpers



def encode_predictions(predictions) -> str:
    """Per-sample predicted labels as base64 of 16-bit fields, i.e. uint16 little-endian
    (results.json `predictions_b64`)."""
    return base64.b64encode(pack_uint(predictions, 16)).decode("ascii")


def decode_predictions(text: str) -> np.ndarray:
    try:
        raw = base64.b64decode(text, validate=True)
    except (ValueError, TypeError):
        raise ConfigError("results.json: `predictions_b64` is not valid base64") from None
    if len(raw) % 2:
        raise ConfigError("results.json: `predictions_b64` does not hold int16 values")
    return unpack_uint(raw, len(raw) // 2, 16)


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


def _registry_path() -> Path:
    return rbzoo_home() / REGISTRY_FILE


def _registry() -> dict:
    path = _registry_path()
    try:
        data = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        return {}  # a cache: an unreadable registry only means re-verifying
    return data if isinstance(data, dict) and isinstance(data.get("entries"), dict) else {}


def registry_entries() -> dict[str, dict]:
    """The verified-pull registry: key `repo@commit:sha256` -> record."""
    return dict(_registry().get("entries", {}))


def _registry_put(key: str, record: dict | None) -> None:
    data = _registry() or {"rbzoo_registry": 1, "entries": {}}
    if record is None:
        if key not in data["entries"]:
            return
        del data["entries"][key]
    else:
        data["entries"][key] = record
    write_json(_registry_path(), data)


def _key(repo_id: str | None, commit: str | None, sha256: str) -> str:
    return f"{repo_id or '(folder)'}@{commit or '-'}:{sha256}"


# ------------------------------------------------------------------------------------------ names

@dataclass
class Spec:
    kind: str  # "folder" | "card" | "repo"
    text: str
    repo_id: str | None = None
    revision: str | None = None
    card: Card | None = None
    folder: Path | None = None


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
            return Spec("card", spec, card.repo_id, card.revision, card=card)
    repo, sep, rev = spec.partition("@")
    if REPO_RE.match(repo) and (not sep or _REV_RE.match(rev)):
        return Spec("repo", spec, repo, rev or None)
    return None


# ------------------------------------------------------------------------------------------ push

def _find_results(ckpt: Path, results: str | Path | None) -> tuple[dict | None, Path | None]:
    candidates = [Path(results)] if results is not None else [
        ckpt.with_name(f"{ckpt.stem}.results.json"), ckpt.with_name("results.json")]
    for path in candidates:
        if path.is_file():
            try:
                return json.loads(path.read_text("utf-8")), path
            except (OSError, ValueError) as e:
                raise ConfigError(f"{path}: not a readable results JSON ({e})") from None
        if results is not None:
            raise ConfigError(f"no such results file: {path}")
    return None, None


def _check_results(res, src: str, digest: str, dataset: str | None) -> dict:
    """The fields of an `rbzoo eval` results JSON that a push relies on."""
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
    if res.get("predictions_b64") is not None:
        preds = decode_predictions(res["predictions_b64"])
        if len(preds) != n or predictions_digest(preds) != res["predictions_sha256"]:
            bad("predictions_b64", "does not match n_examples / predictions_sha256")
    return res


def _results_from_clean(clean, ck: Checkpoint, sha: str, dataset: str, device: str, wall: float) -> dict:
    import torch

    import huggingface_hub

    return {
        "rbzoo_results": 1, "model_digest": ck.digest,
        "model": {"path": CHECKPOINT_FILE, "arch": ck.arch.get("id"), "file_sha256": sha},
        "dataset": dataset, "split": "test", "n_examples": clean.n_examples,
        "subset": {"mode": "first", "seed": None},
        "clean_correct": clean.clean_correct, "clean_acc": clean.clean_acc,
        "predictions_sha256": clean.predictions_sha256, "data_sha256": clean.data_sha256,
        "robust_correct": None, "robust_acc": None, "attack": None, "robust_acc_after": {},
        "wilson95": None, "robust_flags": None,
        "warnings": ["clean accuracy computed by `rbzoo push --data-dir`; no robust evaluation"],
        "wall_s": round(wall, 3),
        "versions": {"rbzoo": __version__, "torch": torch.__version__, "huggingface_hub": huggingface_hub.__version__},
        "device": str(device), "numerics": clean.numerics,
    }


def _test_set(dataset: str, data_dir, n: int | None, what: str, spec_hint: str):
    """The test split and the indices evaluated (all, or the first `n`); DataError says how to get it."""
    from .data import get_dataset

    try:
        ds = get_dataset(dataset, "test", data_dir)
    except DataError as e:
        raise DataError(f"cannot {what}: {e}; then {spec_hint}") from None
    if n is not None and n > len(ds):
        raise DataError(f"cannot {what}: it needs {n} {dataset} test samples, your copy has {len(ds)}")
    return ds, (None if n is None or n == len(ds) else range(n))


def _card_block(ck: Checkpoint, data: bytes, sha: str, res: dict, name: str, repo_id: str | None,
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
        robust, rargs, eps = round(100.0 * res["robust_acc"], 2), {k: att[k] for k in ("norm", "eps", "version")}, att["eps"]
    elif brb.get("claimed", {}).get("robust_acc") is not None:
        robust, rargs, eps = brb["claimed"]["robust_acc"], base.robust_args, brb["eps"]
    else:
        from .data import DEFAULT_EPS

        attack = train.get("attack") if isinstance(train.get("attack"), dict) else {}
        robust, rargs, eps = None, None, attack.get("eps", brb.get("eps", DEFAULT_EPS.get(dataset, 8 / 255)))
    rb = {
        "name": name, "repo_id": repo_id, "revision": None, "checkpoint": CHECKPOINT_FILE,
        "checkpoint_sha256": sha, "checkpoint_bytes": len(data), "float32_bytes": float32_bytes,
        "arch": ck.arch, "keep": keep, "p": train.get("p", brb.get("p")),
        "score_init_scale": train.get("score_init_scale", brb.get("score_init_scale")),
        "objective": objective if objective in OBJECTIVES else None,
        "dataset": dataset, "eps": eps,
        "expected": {"n_examples": n, "clean_correct": correct, "predictions_sha256": res["predictions_sha256"],
                     "data_sha256": res.get("data_sha256")},
        "source_url": brb.get("source_url"), "source_sha256": brb.get("source_sha256"),
        "claimed": {"clean_acc": round(100.0 * correct / n, 2), "robust_acc": robust},
    }
    return rb, rargs, (base.meta.get("license") if base is not None else None) or "mit"


def push(checkpoint: str | Path, repo_id: str | None = None, *, results: str | Path | None = None,
         data_dir: str | Path | None = None, revision: str | None = None, private: bool = False,
         create_pr: bool = False, endpoint: str | None = None, token: str | None = None,
         name: str | None = None, to: str | Path | None = None, cards_dir: str | Path | None = None,
         device: str = "cpu", progress: Progress | None = None) -> PushResult:
    """Publish a checkpoint with its card and results: one Hub commit, or a folder with `to`.

    Refuses a checkpoint that does not load, results for another model, and a push without a
    clean-accuracy result (from `results`, `<stem>.results.json` / `results.json` beside the
    checkpoint, or computed on `data_dir`'s test split). After a Hub push the zoo's local card
    `<cards_dir>/<name>.md` is created or updated with the pinned commit.
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
    dataset = checkpoint_dataset(ck)
    res, res_path = _find_results(ckpt, results)
    if res is not None:
        res = copy.deepcopy(_check_results(res, str(res_path), ck.digest, dataset))
        dataset = dataset or res.get("dataset")
    if dataset is None:
        raise ConfigError(f"{ckpt}: no `rbzoo.dataset` metadata and no results naming the dataset")
    from .data import get_spec

    get_spec(dataset)
    evaluated = False
    if data_dir is not None:
        n = res["n_examples"] if res is not None else None
        ds, indices = _test_set(dataset, data_dir, n, f"evaluate {ckpt.name}", "rerun with --data-dir DIR")
        t0 = time.monotonic()
        total = len(ds) if indices is None else len(indices)
        clean = clean_accuracy(model, ds, indices=indices, device=device,
                               progress=progress(f"clean accuracy of {ckpt.name}", total) if progress else None)
        if res is None:
            res = _results_from_clean(clean, ck, sha, dataset, device, time.monotonic() - t0)
        else:
            got = (clean.clean_correct, clean.predictions_sha256, clean.data_sha256)
            want = (res["clean_correct"], res["predictions_sha256"], res.get("data_sha256") or clean.data_sha256)
            if got != want:
                what = "the test data differs" if got[2] != want[2] else "the predictions differ"
                raise VerificationError(
                    f"{res_path} does not reproduce on {data_dir}: {clean.clean_correct}/{clean.n_examples} correct "
                    f"now, the results say {res['clean_correct']}/{res['n_examples']} ({what}); refusing to publish")
        res.setdefault("predictions_b64", encode_predictions(clean.predictions))
        evaluated = True
    elif res is None:
        raise ConfigError(f"no clean-accuracy result for {ckpt}: run `rbzoo eval {ckpt} --out "
                          f"{ckpt.with_name(ckpt.stem + '.results.json')}`, or pass --results FILE or --data-dir DIR")
    if name is None:
        name = re.sub(r"[^a-z0-9._-]+", "-", (repo_id.split("/")[1] if repo_id else ckpt.stem).lower()).strip("-._")
    if not NAME_RE.match(name or ""):
        raise ConfigError(f"{name!r} is not a valid zoo name ([a-z0-9._-], starting with a letter or digit)")
    local_path = default_cards_dir(cards_dir) / f"{name}.md"
    base = load_card(local_path) if local_path.is_file() else None

    from .inspect import describe

    f32 = describe(ckpt)["totals"]["float32_bytes"]
    rb, rargs, license = _card_block(ck, data, sha, res, name, repo_id, dataset, f32, base)
    card = build_card(rb, robust_args=rargs, license=license)
    res = dict(res, model={**(res.get("model") or {}), "path": CHECKPOINT_FILE, "file_sha256": sha})
    files = {CHECKPOINT_FILE: data, RESULTS_FILE: (json.dumps(res, indent=2) + "\n").encode(),
             CARD_FILE: card.render().encode("utf-8")}

    if to is not None:
        out = Path(to)
        if out.exists() and not out.is_dir():
            raise ConfigError(f"--to {out}: exists and is not a folder")
        for fname in (CHECKPOINT_FILE, RESULTS_FILE, CARD_FILE):  # the card last: it marks a complete folder
            write_bytes(out / fname, files[fname])
        return PushResult(card, repo_id, folder=out, evaluated=evaluated)

    from huggingface_hub import CommitOperationAdd, HfApi

    endpoint, token = hf_endpoint(endpoint), hf_token(token)
    if not token:
        raise HubError("pushing needs a Hugging Face token: set HF_TOKEN, pass --token, or run `hf auth login`")
    api = HfApi(endpoint=endpoint, token=token)
    with _hub_errors(f"push to {repo_id}", endpoint, token):
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if revision and revision != "main":
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        info = api.create_commit(
            repo_id, operations=[CommitOperationAdd(path_in_repo=p, path_or_fileobj=files[p]) for p in files],
            commit_message=f"rbzoo push {name}",
            commit_description=f"{ck.arch.get('id')} on {dataset}: clean {card.rb['claimed']['clean_acc']:.2f} % "
                               f"({res['clean_correct']}/{res['n_examples']}), checkpoint SHA-256 {sha}",
            revision=revision, create_pr=create_pr)
    commit = info.oid
    local = build_card(dict(rb, revision=commit), robust_args=rargs, license=license)
    write_text(local_path, local.render())
    return PushResult(local, repo_id, commit, info.commit_url, getattr(info, "pr_url", None),
                      local_card=local_path, evaluated=evaluated)


# ------------------------------------------------------------------------------------------ pull

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


def _fetch_folder(s: Spec) -> _Fetched:
    folder = s.folder
    card = load_card(folder / CARD_FILE) if (folder / CARD_FILE).is_file() else None
    if card is None:
        raise HubError(f"{folder}: not a zoo folder (no {CARD_FILE}); write one with `rbzoo push CKPT --to DIR`")
    path = folder / card.rb["checkpoint"]
    if not path.is_file():
        raise HubError(f"{folder}: the card names {card.rb['checkpoint']}, which is missing")
    results = None
    if (folder / RESULTS_FILE).is_file():
        try:
            results = json.loads((folder / RESULTS_FILE).read_text("utf-8"))
        except (OSError, ValueError) as e:
            raise HubError(f"{folder / RESULTS_FILE}: not valid JSON ({e})") from None
    return _Fetched(card, path, results, card.repo_id, None, spec=str(folder))


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


def _fetch_hub(s: Spec, endpoint: str | None, token: str | None) -> _Fetched:
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url

    endpoint, token, offline, cache = hf_endpoint(endpoint), hf_token(token), hf_offline(), str(hf_cache_dir())
    if s.kind == "card":
        local = s.card
        repo, rev = local.repo_id, local.revision or "main"
    else:
        local, repo, rev = None, s.repo_id, s.revision or "main"
    where = f"{repo}@{rev}"

    def metadata(filename: str, revision: str):
        # One HEAD without retries: a dead server or a 5xx fails at once, instead of after the
        # download's own ~23 s of backoff.
        with _hub_errors(f"{repo}@{revision}: {filename}", endpoint, token):
            return get_hf_file_metadata(hf_hub_url(repo, filename, revision=revision, endpoint=endpoint),
                                        token=token, endpoint=endpoint)

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
    # Download by the revision asked for (so the cache records the branch/tag for offline use);
    # the snapshot folder names the commit, and everything else is fetched at that commit.
    card_path = download(CARD_FILE, rev)
    commit = card_path.parent.name  # <cache>/snapshots/<commit>/README.md
    if not HEX40.match(commit):
        raise HubError(f"{where}: could not tell which commit was downloaded")
    hub_card = load_card(card_path)
    card = hub_card
    if local is not None:
        for k in ("checkpoint", "checkpoint_sha256", "dataset", "expected"):
            if hub_card.rb[k] != local.rb[k]:
                raise VerificationError(f"{repo}@{commit[:12]}: the Hub's card and the zoo card {local.name} disagree "
                                        f"on rbzoo.{k}; refusing to guess which one is right")
        card = local
    fname = card.rb["checkpoint"]
    server_sha = None
    if not offline:
        meta = metadata(fname, commit)
        etag = (meta.etag or "").strip('"').lower()
        server_sha = etag if HEX64.match(etag) else None
    results_path = download(RESULTS_FILE, commit, optional=True)
    path = download(fname, commit)
    results = None
    if results_path is not None:
        try:
            results = json.loads(results_path.read_text("utf-8"))
        except (OSError, ValueError):
            results = None  # the card is authoritative; results only name disagreeing samples
    return _Fetched(card, path, results, repo, commit, server_sha, lambda: _purge_cached(path), spec=s.text)


def _fetch_import(s: Spec, source: str | Path | None) -> _Fetched:
    """An imported zoo entry not published on the Hub: fetch the authors' file and convert it.

    The converted file is produced here, by `rbzoo convert`, from a source whose SHA-256 is
    checked against the card (or recorded on first download); its own SHA-256 is therefore the
    local reference. What proves it right is the exact clean-accuracy check that follows.
    """
    from .convert import import_zoo_entry

    card = s.card
    path = import_zoo_entry(card.meta, source, cache_dir=rbzoo_home() / "imports", progress=True)
    sha, _ = sha256_file(path)
    return _Fetched(card, Path(path), None, None, None, sha, spec=s.text)


def _mismatch(card: Card, clean, results: dict | None, label: str) -> str:
    """Describe how a re-evaluation differs from the card: counts, and which samples disagree."""
    exp = card.expected
    n = exp["n_examples"]
    msg = (f"{label}: clean accuracy does not reproduce: {clean.clean_correct}/{n} correct, "
           f"the card says {exp['clean_correct']}/{n}")
    want = None
    if isinstance(results, dict) and isinstance(results.get("predictions_b64"), str):
        try:
            want = decode_predictions(results["predictions_b64"])
        except ConfigError:
            want = None
        if want is not None and (len(want) != n or (exp["predictions_sha256"] is not None
                                                    and predictions_digest(want) != exp["predictions_sha256"])):
            want = None  # results.json does not belong to this card: do not name samples from it
    if want is not None:
        diff = np.flatnonzero(want != clean.predictions)
        shown = ", ".join(str(i) for i in diff[:MAX_LISTED]) + (", …" if len(diff) > MAX_LISTED else "")
        msg += f"; {len(diff)} of {n} samples are predicted differently (indices {shown})"
    else:
        msg += f"; at least {abs(clean.clean_correct - exp['clean_correct'])} of {n} samples differ"
    if exp["data_sha256"] and clean.data_sha256 != exp["data_sha256"]:
        msg += "; your copy of the test data differs from the one the card was made with (data digest)"
    return msg + "; the cached copy is marked unverified"


def _check(f: _Fetched, *, verify: bool, data_dir, device: str, progress: Progress | None) -> PullResult:
    card = f.card
    label = f"{f.repo_id}@{f.commit[:12]}" if f.repo_id and f.commit else (f.repo_id or str(f.spec))
    sha, size = sha256_file(f.path)
    refs = [(who, ref) for who, ref in (("the card", card.rb["checkpoint_sha256"]), ("the server", f.server_sha256))
            if ref is not None]
    if not refs:
        raise VerificationError(f"{label}: no SHA-256 to check {f.path.name} against (the card's checkpoint_sha256 "
                                f"is null and the server gave none)")
    wrong = [f"{who} says {ref[:16]}…" for who, ref in refs if ref != sha]
    if wrong or (card.rb["checkpoint_bytes"] is not None and size != card.rb["checkpoint_bytes"]):
        f.purge()
        _registry_put(_key(f.repo_id, f.commit, sha), None)
        raise VerificationError(f"{label}: {f.path.name} is corrupted: SHA-256 {sha[:16]}… ({size:,} bytes), "
                                f"{'; '.join(wrong) or 'size differs from the card'}; the download was deleted")
    ck = read(f.path)  # strict: format, tensor set, shapes, weights and state digests
    for k, v in card.rb["arch"].items():
        if ck.arch.get(k) != v:
            raise VerificationError(f"{label}: the card says arch.{k} = {v!r}, the checkpoint has {ck.arch.get(k)!r}")
    ds_name = checkpoint_dataset(ck)
    if ds_name is not None and ds_name != card.dataset:
        raise VerificationError(f"{label}: the card is for {card.dataset}, the checkpoint was trained on {ds_name}")
    if isinstance(f.results, dict) and f.results.get("model_digest") not in (None, ck.digest):
        raise VerificationError(f"{label}: {RESULTS_FILE} describes another model (model_digest differs)")

    key = _key(f.repo_id, f.commit, sha)
    rec = registry_entries().get(key)
    out = PullResult(card, f.path, sha, size, f.repo_id, f.commit, "skipped")
    base = {"name": card.name, "repo_id": f.repo_id, "revision": f.commit, "sha256": sha, "bytes": size,
            "path": str(f.path), "expected": card.expected}
    if rec and rec.get("status") == "verified" and rec.get("expected") == card.expected:
        out.status, out.clean_correct, out.n_examples = "cached", rec["clean_correct"], rec["n_examples"]
        return out
    if not verify:
        if rec is None:  # never overwrite a verified or an unverified mark
            _registry_put(key, {**base, "status": "downloaded", "checked_at": _now()})
        return out

    exp = card.expected
    hint = f"rerun `rbzoo pull {f.spec} --data-dir DIR`, or skip the check with --no-verify"
    ds, indices = _test_set(card.dataset, data_dir, exp["n_examples"], f"verify {card.name}", hint)
    model = build(ck, device)
    total = len(ds) if indices is None else len(indices)
    clean = clean_accuracy(model, ds, indices=indices, device=device,
                           progress=progress(f"verifying {card.name}", total) if progress else None)
    ok = clean.clean_correct == exp["clean_correct"] and clean.n_examples == exp["n_examples"] and (
        exp["predictions_sha256"] is None or clean.predictions_sha256 == exp["predictions_sha256"])
    result = {"clean_correct": clean.clean_correct, "n_examples": clean.n_examples,
              "predictions_sha256": clean.predictions_sha256, "data_sha256": clean.data_sha256,
              "numerics": clean.numerics, "device": str(device), "checked_at": _now()}
    if not ok:
        msg = _mismatch(card, clean, f.results, label)
        _registry_put(key, {**base, **result, "status": "unverified", "reason": msg})
        raise VerificationError(msg)
    if exp["data_sha256"] and clean.data_sha256 != exp["data_sha256"]:
        out.notes.append("predictions match exactly, but your copy of the test data has a different digest")
    if exp["predictions_sha256"] is None:
        out.notes.append("the card has no prediction digest: only the correct count was compared")
    _registry_put(key, {**base, **result, "status": "verified"})
    out.status, out.clean_correct, out.n_examples = "verified", clean.clean_correct, clean.n_examples
    return out


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def pull(spec: str, *, data_dir: str | Path | None = None, verify: bool = True, endpoint: str | None = None,
         token: str | None = None, cards_dir: str | Path | None = None, device: str = "cpu",
         progress: Progress | None = None, source: str | Path | None = None) -> PullResult:
    """Download a zoo model (card name, `org/name[@rev]`, or a `--to` folder) and verify it exactly.

    Imported entries whose card has no repo_id are fetched from the card's `source_url` (or the
    local official file `source`) and converted first. Checks the file's SHA-256 against the card
    (and the server), loads it strictly, and unless
    `verify=False` re-evaluates the clean accuracy on `data_dir`'s test split and compares the
    correct count and prediction digest with the card. Raises VerificationError on any mismatch.
    """
    s = parse_spec(spec, cards_dir)
    if s is None:
        raise HubError(f"{spec!r} is not a zoo name (see `rbzoo pull --list`; cards in "
                       f"{default_cards_dir(cards_dir)}), a Hub repo id org/name[@revision], or a folder")
    if source is not None and not (s.kind == "card" and s.card.repo_id is None):
        raise ConfigError("--source is only for imported zoo entries that are not on the Hub (see `rbzoo pull --list`)")
    if s.kind == "folder":
        fetched = _fetch_folder(s)
    elif s.kind == "card" and s.card.repo_id is None:  # an imported entry: convert the authors' file
        fetched = _fetch_import(s, source)
    else:
        fetched = _fetch_hub(s, endpoint, token)
    return _check(fetched, verify=verify, data_dir=data_dir, device=device, progress=progress)


def resolve_remote(spec: str) -> Path | None:
    """The local checkpoint for a zoo name or Hub repo id (downloaded and SHA-256-checked), else None.

    For `rbzoo eval NAME` and friends: existing paths and `*.safetensors` names are left to the
    local resolvers (None). The clean accuracy is not re-evaluated here (eval measures it), but a
    copy that `rbzoo pull` found not to reproduce its card is refused.
    """
    path = Path(spec).expanduser()
    if path.exists() or spec.endswith((".safetensors", ".pth", ".pt")) or (
            len(path.parts) > 1 and Path(path.parts[0]).is_dir()):  # "runs/typo": a local path, not org/name
        return None
    s = parse_spec(spec)
    if s is None or s.kind == "folder":
        return None
    f = _fetch_import(s, None) if s.kind == "card" and s.card.repo_id is None else _fetch_hub(s, None, None)
    r = _check(f, verify=False, data_dir=None, device="cpu", progress=None)
    rec = registry_entries().get(_key(r.repo_id, r.revision, r.sha256))
    if rec and rec.get("status") == "unverified":
        raise VerificationError(f"{r.label}: `rbzoo pull` found that this model does not reproduce its card "
                                f"({rec.get('reason', 'clean accuracy mismatch')}); evaluate the file directly: {r.path}")
    return r.path


# ------------------------------------------------------------------------------------------ the zoo

def list_zoo(cards_dir: str | Path | None = None) -> list[ZooEntry]:
    """Every card of the zoo's card folder (validated), with its local verification status."""
    folder = default_cards_dir(cards_dir)
    entries = registry_entries()
    out = []
    for path in sorted(folder.glob("*.md")) if folder.is_dir() else []:
        if path.name.lower() == "readme.md":
            continue  # a folder description, not a card
        card = load_card(path)
        if card.name != path.stem:
            raise HubError(f"{path}: rbzoo.name is {card.name!r}, not the file's name {path.stem!r}")
        if card.repo_id is None:  # imported entry: pull converts the authors' file
            recs = [r for r in entries.values() if r.get("name") == card.name and r.get("repo_id") is None]
            status = next((r["status"] for r in recs if r.get("status") in ("verified", "unverified")), None) or (
                "import from source" if card.rb["source_url"] else "import: --source FILE")
        else:
            recs = [r for k, r in entries.items()
                    if r.get("repo_id") == card.repo_id and r.get("sha256") == card.rb["checkpoint_sha256"]
                    and (card.revision is None or r.get("revision") == card.revision)]
            order = ("verified", "unverified", "downloaded")
            status = next((st for st in order if any(r.get("status") == st for r in recs)), "not pulled")
        out.append(ZooEntry(card, path, status))
    return out


__all__ = ["CARD_FILE", "CHECKPOINT_FILE", "RESULTS_FILE", "PullResult", "PushResult", "ZooEntry", "Spec",
           "decode_predictions", "encode_predictions", "list_zoo", "parse_spec", "pull", "push",
           "registry_entries", "resolve_remote", "sha256_file"]
