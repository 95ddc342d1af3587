"""AutoAttack (or a quick PGD check) on the clean-correct points: chunked, resumable, shardable.

The evaluated points are split into fixed chunks of `chunk_size` positions. Chunk i is attacked
with its own seed `chunk_seed(seed, i)`, as ONE AutoAttack batch, one attack at a time on the points
still robust, so its flags depend on nothing but (model, data, chunk, seed): the result is the
same interrupted or not, on one process or sharded. This is exactly what
``pyautoattack.AutoAttack(..., seed=chunk_seed(seed, i)).run_standard_evaluation(x, y,
batch_size=len(x))`` computes on the chunk's clean-correct points (every attack reseeds the
global generator with the same seed at the start of each batch); pyautoattack's defense checks run
once per chunk, before its first attack.

Every point an attack breaks keeps its adversarial input as evidence (:mod:`rbzoo.evidence`:
quantized, re-checked, compressed), saved with the chunk, so resumed and sharded runs give the same
evidence byte for byte. The attack runs under the spec's numerics profile (`verify` by default).

After every attack on a chunk, the chunk's robust flags, evidence and finished attacks are written
atomically to `STATE/chunk-NNNNNN.json`; `STATE/fingerprint.json` pins what the state belongs to
(model, data, indices, norm, eps, version, attacks, seed, chunk size, ...), and a resume with
anything different is refused. pyautoattack's own `state_path` is not used: it cannot reload the
files it writes.

Under `torchrun`, chunk i belongs to rank i % WORLD_SIZE; the ranks exchange their finished
chunk records with `all_gather_object`, so rank 0 can merge whether or not the state folder is
shared.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import Dataset

from . import __version__
from ._io import write_json
from .constants import AA_ATTACKS as ATTACKS
from .constants import AA_VERSIONS as VERSIONS
from .config import check_eps, parse_eps  # noqa: F401 (torch-free: the CLI checks --eps with them)
from .constants import NORMS, choose
from .attacks import pgd
from .errors import ConfigError, EvalStateError
from .evidence import Encoded, encode_breaks
from .exact import check_profile, numerics, ordered_batches, pack_flags, unpack_flags

VERSION_ATTACKS = {
    "standard": ("apgd-ce", "apgd-t", "fab-t", "square"),
    "plus": ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"),
    "rand": ("apgd-ce", "apgd-dlr"),
}
STATE_FORMAT = 1


# --- what to run ---------------------------------------------------------------------------------


def chunk_seed(seed: int, index: int) -> int:
    """The seed of chunk `index`: a 31-bit hash of (seed, index), independent of scheduling."""
    digest = hashlib.sha256(f"rbzoo-chunk-seed-v1:{int(seed)}:{int(index)}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


@dataclass(frozen=True)
class AttackSpec:
    """A fully resolved robust evaluation (what the state fingerprint and the results record)."""

    norm: str
    eps: float
    version: str  # standard | plus | rand | custom | pgd
    attacks: tuple[str, ...]
    seed: int = 0
    chunk_size: int = 500
    n_iter: int | None = None  # override: APGD/FAB iterations
    n_restarts: int | None = None  # override: APGD/FAB/Square restarts (FAB-T always runs 1)
    n_queries: int | None = None  # override: Square queries
    pgd_steps: int | None = None
    pgd_alpha: float | None = None
    numerics: str = "verify"  # the rbzoo.exact profile the attack runs under

    def as_dict(self) -> dict:
        """The results' `attack` object."""
        d = {"norm": self.norm, "eps": self.eps, "version": self.version, "attacks": list(self.attacks),
             "seed": self.seed, "chunk_size": self.chunk_size, "numerics": self.numerics}
        for key in ("n_iter", "n_restarts", "n_queries"):
            if getattr(self, key) is not None:
                d[key] = getattr(self, key)
        if self.version == "pgd":
            d.update(steps=self.pgd_steps, alpha=self.pgd_alpha, select="best", random_start=True)
        return d


def make_attack_spec(*, norm: str = "Linf", eps: float | str, version: str = "standard",
                     attacks: Sequence[str] | None = None, seed: int = 0, chunk_size: int = 500,
                     n_iter: int | None = None, n_restarts: int | None = None, n_queries: int | None = None,
                     pgd_steps: int | None = None, pgd_alpha: float | str | None = None,
                     input_numel: int | None = None, numerics: str = "verify") -> AttackSpec:
    """Validate the options of a robust evaluation; any bad value is a one-line ConfigError."""
    check_profile(numerics)
    norm = choose("norm", norm, NORMS)
    eps = parse_eps(eps)
    check_eps(eps, norm, input_numel)
    if not 0 <= int(seed) < 2**63:
        raise ConfigError(f"seed {seed} out of range")
    if int(chunk_size) < 1:
        raise ConfigError(f"chunk size must be >= 1, got {chunk_size}")
    for name, value in (("n_iter", n_iter), ("n_restarts", n_restarts), ("n_queries", n_queries)):
        if value is not None and int(value) < 1:
            raise ConfigError(f"{name} must be >= 1, got {value}")
    attacks = [a.strip() for a in attacks] if attacks else []
    if pgd_steps is not None:
        if int(pgd_steps) < 1:
            raise ConfigError(f"PGD steps must be >= 1, got {pgd_steps}")
        if norm != "Linf":
            raise ConfigError("the quick PGD check is L∞ only; use AutoAttack (--version) for L2")
        if attacks:
            raise ConfigError("--attacks chooses AutoAttack attacks; it cannot be combined with --pgd")
        alpha = eps / 4 if pgd_alpha is None else parse_eps(pgd_alpha)
        if not 0 < alpha <= 1:
            raise ConfigError(f"PGD step size {alpha:g} out of range (0, 1]")
        return AttackSpec(norm, eps, "pgd", ("pgd",), int(seed), int(chunk_size), pgd_steps=int(pgd_steps), pgd_alpha=alpha,
                          numerics=numerics)
    if pgd_alpha is not None:
        raise ConfigError("--alpha is the step of the quick PGD check; give --pgd STEPS too")
    if version not in VERSIONS:
        raise ConfigError(f"unknown AutoAttack version {version!r}; known: {', '.join(VERSIONS)}")
    if version == "custom":
        if not attacks:
            raise ConfigError(f"--version custom needs --attacks, a comma-separated list from {', '.join(ATTACKS)}")
        unknown = [a for a in attacks if a not in ATTACKS]
        if unknown:
            raise ConfigError(f"unknown attack {unknown[0]!r}; known: {', '.join(ATTACKS)}")
        if len(set(attacks)) != len(attacks):
            raise ConfigError(f"attack listed twice in {','.join(attacks)}")
        chosen = tuple(attacks)
    else:
        if attacks:
            raise ConfigError(f"--attacks needs --version custom (version {version} runs {', '.join(VERSION_ATTACKS[version])})")
        chosen = VERSION_ATTACKS[version]
    return AttackSpec(norm, eps, version, chosen, int(seed), int(chunk_size), n_iter=n_iter, n_restarts=n_restarts,
                      n_queries=n_queries, numerics=numerics)


def _set_apgd_iters(attack, n_iter: int) -> None:
    """What APGDAttack.__init__ derives from n_iter (checkpoint schedule included)."""
    attack.n_iter = attack.n_iter_orig = n_iter
    attack.n_iter_2 = max(int(0.22 * n_iter), 1)
    attack.n_iter_min = max(int(0.06 * n_iter), 1)
    attack.size_decr = max(int(0.03 * n_iter), 1)


def build_autoattack(model: nn.Module, spec: AttackSpec, seed: int, device: str | torch.device):
    """A `pyautoattack.AutoAttack` configured as `spec` says (version settings, then overrides)."""
    from pyautoattack import AutoAttack

    aa = AutoAttack(model, attacks=list(spec.attacks) if spec.version == "custom" else None, device=device,
                    eps=spec.eps, norm=spec.norm, seed=seed, version=spec.version)
    if spec.n_iter is not None:
        _set_apgd_iters(aa.apgd, spec.n_iter)
        _set_apgd_iters(aa.apgd_targeted, spec.n_iter)
        aa.fab.n_iter = spec.n_iter
    if spec.n_restarts is not None:
        for attack in (aa.apgd, aa.apgd_targeted, aa.fab, aa.square):
            attack.n_restarts = spec.n_restarts
    if spec.n_queries is not None:
        aa.square.n_queries = spec.n_queries
    return aa


# --- per-chunk records and the state folder ------------------------------------------------------


@dataclass
class ChunkRecord:
    """One chunk's progress: robust flags over its positions after the attacks in `done`."""

    index: int
    start: int
    stop: int
    seed: int
    robust: np.ndarray  # bool over positions start..stop-1; starts as the clean-correct mask
    done: list[str] = field(default_factory=list)
    after: dict[str, int] = field(default_factory=dict)  # robust count in the chunk after each attack
    warnings: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    device: str = ""
    evidence: list[dict] = field(default_factory=list)  # Encoded.to_json() of every break, in attack order

    def complete(self, attacks: Sequence[str]) -> bool:
        return list(self.done) == list(attacks)

    def to_json(self) -> dict:
        d = asdict(self)
        d["robust"] = pack_flags(self.robust)
        return d

    @classmethod
    def from_json(cls, d: dict) -> ChunkRecord:
        d = dict(d)
        d["robust"] = unpack_flags(d["robust"], d["stop"] - d["start"])
        return cls(**d)


def _fingerprint_diff(saved: dict, wanted: dict) -> str:
    def short(v):
        s = json.dumps(v) if not isinstance(v, str) else v
        return s if len(s) <= 20 else s[:16] + "…"

    parts = []
    for key in sorted(set(saved) | set(wanted)):
        if saved.get(key) != wanted.get(key):
            parts.append(f"{key} {short(saved.get(key))} ≠ {short(wanted.get(key))}")
    return ", ".join(parts)


class EvalState:
    """A folder holding `fingerprint.json` and one `chunk-NNNNNN.json` per started chunk."""

    def __init__(self, folder: Path, fingerprint: dict) -> None:
        self.folder = Path(folder)
        self.fingerprint = fingerprint

    @classmethod
    def open(cls, folder: str | os.PathLike, fingerprint: dict, *, replace: str = "never") -> EvalState:
        """Open (or create) the state for `fingerprint`; a state of another evaluation is refused.

        `replace`: "never" refuses a mismatch, "mismatch" discards only a mismatched state,
        "always" discards any existing state (a fresh start).
        """
        folder = Path(folder)
        if folder.exists() and not folder.is_dir():
            raise EvalStateError(f"state path {folder} exists and is not a folder")
        fp_path = folder / "fingerprint.json"
        saved = None
        if fp_path.exists():
            try:
                saved = json.loads(fp_path.read_text())["fingerprint"]
            except (OSError, ValueError, KeyError, TypeError):
                raise EvalStateError(f"{fp_path} is unreadable; delete {folder} or pass --fresh") from None
        elif folder.is_dir() and any(folder.glob("chunk-*.json")):
            saved = {}  # chunk files without a fingerprint: nothing proves what they belong to
        if saved is not None:
            diff = _fingerprint_diff(saved, fingerprint)
            if replace == "always" or (diff and replace == "mismatch"):
                cls._clear(folder)
                saved = None
            elif diff:
                raise EvalStateError(
                    f"state folder {folder} belongs to a different evaluation ({diff}); "
                    f"delete it, pass --fresh, or choose another --state")
        if saved is None:
            write_json(fp_path, {"rbzoo_eval_state": STATE_FORMAT, "rbzoo_version": __version__,
                                 "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                 "fingerprint": fingerprint})
        return cls(folder, fingerprint)

    @staticmethod
    def _clear(folder: Path) -> None:
        for p in list(folder.glob("chunk-*.json")) + [folder / "fingerprint.json"]:
            p.unlink(missing_ok=True)

    def chunk_path(self, index: int) -> Path:
        return self.folder / f"chunk-{index:06d}.json"

    def load_chunk(self, index: int) -> ChunkRecord | None:
        path = self.chunk_path(index)
        if not path.exists():
            return None
        try:
            rec = ChunkRecord.from_json(json.loads(path.read_text()))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise EvalStateError(f"{path} is unreadable ({e}); delete {self.folder} or pass --fresh") from None
        if rec.index != index:
            raise EvalStateError(f"{path} holds chunk {rec.index}")
        return rec

    def save_chunk(self, rec: ChunkRecord) -> None:
        write_json(self.chunk_path(rec.index), rec.to_json())


# --- sharding --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shard:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def shard_from_env() -> Shard:
    """This process's place under torchrun (WORLD_SIZE, RANK, LOCAL_RANK); (0, 1) otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"bad torchrun environment: RANK={rank} WORLD_SIZE={world}")
    return Shard(rank, world, local)


@contextmanager
def process_group(shard: Shard, device: torch.device):
    """Initialize torch.distributed for a sharded run (gloo on CPU, nccl on CUDA) and tear it down."""
    import torch.distributed as dist

    if shard.world == 1 or dist.is_initialized():
        yield
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    # Attacks run for hours; a rank that finishes its chunks early waits at the merge.
    dist.init_process_group(backend, timeout=timedelta(hours=48))
    try:
        yield
    finally:
        dist.destroy_process_group()


def all_gather(obj, shard: Shard) -> list:
    """Every rank's `obj`, in rank order ([obj] when not sharded)."""
    if shard.world == 1:
        return [obj]
    import torch.distributed as dist

    out = [None] * shard.world
    dist.all_gather_object(out, obj)
    return out


def agree(error: str | None, shard: Shard) -> None:
    """Raise the first rank's error on every rank, so no rank waits for one that gave up."""
    errors = [e for e in all_gather(error, shard) if e]
    if errors:
        raise EvalStateError(errors[0])


def open_state(folder: Path, fingerprint: dict, shard: Shard, *, fresh: bool = False) -> EvalState:
    """Rank 0 opens (or resets) the state first; the other ranks then check (or create) theirs."""
    state, err = None, None
    if shard.is_main:
        try:
            state = EvalState.open(folder, fingerprint, replace="always" if fresh else "never")
        except EvalStateError as e:
            err = str(e)
    agree(err, shard)
    if not shard.is_main:
        try:  # a shared folder now holds rank 0's fingerprint; a private one may hold an old state
            state = EvalState.open(folder, fingerprint, replace="mismatch" if fresh else "never")
        except EvalStateError as e:
            err = str(e)
    agree(err, shard)
    return state


# --- running ----------------------------------------------------------------------------------------


class _Captured(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextmanager
def capture_warnings(sink: list[str]):
    """AutoAttack's check flags (logged on 'auto-attack') and Python warnings, into `sink`."""
    logger = logging.getLogger("auto-attack")
    handler, propagate, caught = _Captured(), logger.propagate, []
    logger.addHandler(handler)
    logger.propagate = False  # keep them off stderr: they go to the results instead
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate
        sink.extend(f"autoattack: {m}" for m in handler.messages)
        sink.extend(f"{w.category.__name__}: {w.message}" for w in caught)


def _load_points(dataset: Dataset, indices: Sequence[int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    for x, y in ordered_batches(dataset, [int(i) for i in indices], batch_size=max(len(indices), 1)):
        xs.append(x)
        ys.append(y)
    return torch.cat(xs).to(device, torch.float32), torch.cat(ys).to(device, torch.int64)


def _autoattack_checks(aa, x: torch.Tensor, y: torch.Tensor) -> None:
    """pyautoattack's own checks of the defense (randomized, probabilities, dynamic, too few classes),
    as `run_standard_evaluation` runs them; logged on 'auto-attack'. Once per chunk: they cost
    several forward passes and do not change any result."""
    from pyautoattack import checks

    bs = len(x)
    if aa.version != "rand":
        checks.check_randomized(aa.get_logits, x, y, bs=bs, logger=aa.logger)
    n_cls = checks.check_range_output(aa.get_logits, x, logger=aa.logger)
    checks.check_dynamic(aa.model, x, False, logger=aa.logger)
    checks.check_n_classes(n_cls, aa.attacks_to_run, aa.apgd_targeted.n_target_classes, aa.fab.n_target_classes,
                           logger=aa.logger)


def _perturb(aa, attack: str, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """One attack of `run_standard_evaluation` on one batch: the same object, settings and seed."""
    if attack in ("apgd-ce", "apgd-dlr"):
        aa.apgd.loss = attack[5:]
        aa.apgd.seed = aa.get_seed()
        return aa.apgd.perturb(x, y)
    if attack in ("fab", "fab-t"):
        aa.fab.targeted = attack == "fab-t"
        if aa.fab.targeted:
            aa.fab.n_restarts = 1
        aa.fab.seed = aa.get_seed()
        return aa.fab.perturb(x, y)
    if attack == "square":
        aa.square.seed = aa.get_seed()
        return aa.square.perturb(x, y)
    aa.apgd_targeted.seed = aa.get_seed()
    return aa.apgd_targeted.perturb(x, y)


def _attack_points(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: str, spec: AttackSpec,
                   seed: int, device: torch.device, checks: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(robust flags (bool, CPU), adversarial inputs, their logits) of the points (x, y) against one
    attack with the chunk's seed. Where a flag is False, the adversarial input is what broke the point.

    AutoAttack: what ``run_standard_evaluation(x, y, batch_size=len(x))`` computes for one attack
    (each attack skips the points it finds misclassified, as the evaluation's own filter would),
    without its per-call checks (`checks`: run them here) and clean pass."""
    if attack == "pgd":
        g = torch.Generator().manual_seed(seed)
        with torch.enable_grad():
            x_adv = pgd(model, x, y, eps=spec.eps, alpha=spec.pgd_alpha, steps=spec.pgd_steps, select="best", generator=g)
        with torch.no_grad():
            logits = model(x_adv)
        return (logits.argmax(1) == y).cpu(), x_adv, logits
    aa = build_autoattack(model, spec, seed, device)
    aa.attacks_to_run = list(spec.attacks)
    with torch.no_grad():
        if checks:
            _autoattack_checks(aa, x, y)
        adv = _perturb(aa, attack, x, y)
        logits = aa.get_logits(adv)
        robust = logits.argmax(1) == y
    return robust.cpu(), torch.where(robust.view(-1, *[1] * (x.ndim - 1)), x, adv), logits


def run_chunk(model: nn.Module, dataset: Dataset, chunk_indices: np.ndarray, rec: ChunkRecord, spec: AttackSpec,
              device: torch.device, save: Callable[[ChunkRecord], None],
              step: Callable[[ChunkRecord, str], None] | None = None) -> ChunkRecord:
    """Run the attacks `rec` has not finished on its still-robust points, saving after each one."""
    pending = [a for a in spec.attacks if a not in rec.done]
    if not pending:
        return rec
    live = np.flatnonzero(rec.robust)  # chunk positions of the loaded points
    x = y = None
    if len(live):
        x, y = _load_points(dataset, chunk_indices[live], device)
    cur = torch.ones(len(live), dtype=torch.bool)
    rng_devices = [device.index or 0] if device.type == "cuda" else []
    for attack in pending:
        t0 = time.perf_counter()
        sel = torch.nonzero(cur).flatten()
        messages: list[str] = []
        enc: list[Encoded] = []
        if len(sel):
            # pyautoattack reseeds the global generators; keep the caller's streams untouched.
            with torch.random.fork_rng(devices=rng_devices), numerics(spec.numerics, device), capture_warnings(messages):
                flags, x_adv, logits = _attack_points(model, x[sel], y[sel], attack, spec, rec.seed, device,
                                                      checks=not rec.done)
                cur[sel] = flags
                # Keep what broke each newly broken point (checked within the threat model and
                # still misclassified after encoding), in the same profile as the attack.
                broken = torch.nonzero(~flags).flatten()
                b = sel[broken]
                bd = broken.to(x_adv.device)
                enc = encode_breaks(model, x[b], x_adv[bd], y[b], rec.start + live[b.numpy()], attack, spec.norm,
                                    spec.eps, adv_logits=logits[bd])
            rec.evidence.extend(e.to_json() for e in enc)
        rec.robust[live] = cur.numpy()
        rec.done.append(attack)
        rec.after[attack] = int(rec.robust.sum())
        rec.warnings.extend(m for m in dict.fromkeys(messages) if m not in rec.warnings)
        rec.wall_s += time.perf_counter() - t0
        rec.device = str(device)
        save(rec)
        if step is not None:
            step(rec, attack)
    return rec


@dataclass(frozen=True)
class ChunkProgress:
    """What `robust_evaluation` tells its progress callback about a chunk (besides stage, done, total)."""

    chunk: int  # 0-based
    n_chunks: int
    size: int  # points in the chunk
    attack: str | None  # None: the chunk starts; else the attack that just finished on it
    done: tuple[str, ...]  # attacks finished on the chunk so far (earlier sessions included)
    robust: int  # the chunk's points still correct (before any attack: the clean-correct ones)
    wall_s: float  # the chunk's attack time so far, earlier sessions included


@dataclass
class RobustResult:
    flags: np.ndarray  # bool per evaluated point: still correct after every attack
    robust_correct: int
    after: dict[str, int]  # cumulative robust count after each attack, in attack order
    warnings: list[str]
    n_chunks: int
    attack_wall_s: float  # summed over chunks (all ranks)
    evidence: list[Encoded] = field(default_factory=list)  # one per broken point, by position


def robust_evaluation(model: nn.Module, dataset: Dataset, indices: Sequence[int], clean_correct: np.ndarray,
                      spec: AttackSpec, state: EvalState, *, device: str | torch.device = "cpu",
                      shard: Shard = Shard(), progress: Callable[[str, int, int], None] | None = None) -> RobustResult | None:
    """Attack the clean-correct points chunk by chunk, resuming from `state`.

    Returns the merged result on rank 0 and None on the other ranks. `progress(stage, done, total,
    info)` is called when a chunk starts and after each attack on it: `done`/`total` count
    point-attacks of this rank's chunks, `info` is a :class:`ChunkProgress`. Nothing is printed here.
    """
    device = torch.device(device)
    indices = np.asarray(indices, dtype=np.int64)
    clean_correct = np.asarray(clean_correct, dtype=bool)
    n, cs = len(indices), spec.chunk_size
    n_chunks = (n + cs - 1) // cs
    mine = [i for i in range(n_chunks) if i % shard.world == shard.rank]
    total = sum(min(cs, n - i * cs) for i in mine) * len(spec.attacks)
    done = 0
    records: dict[int, dict] = {}
    for i in mine:
        start, stop = i * cs, min((i + 1) * cs, n)
        rec = state.load_chunk(i)
        if rec is None:
            rec = ChunkRecord(i, start, stop, chunk_seed(spec.seed, i), clean_correct[start:stop].copy())
        elif (rec.start, rec.stop, rec.seed) != (start, stop, chunk_seed(spec.seed, i)) or \
                list(rec.done) != list(spec.attacks[: len(rec.done)]) or (rec.robust & ~clean_correct[start:stop]).any():
            raise EvalStateError(f"{state.chunk_path(i)} does not fit this evaluation; delete {state.folder} or pass --fresh")
        done += len(rec.done) * (stop - start)

        def report(r: ChunkRecord, attack: str | None) -> None:
            if progress is not None:
                info = ChunkProgress(r.index, n_chunks, r.stop - r.start, attack, tuple(r.done), int(r.robust.sum()),
                                     r.wall_s)
                progress(f"chunk {r.index + 1}/{n_chunks}" + (f" {attack}" if attack else ""), done, total, info)

        def step(r: ChunkRecord, attack: str, _n=stop - start) -> None:
            nonlocal done
            done += _n
            report(r, attack)

        report(rec, None)

        rec = run_chunk(model, dataset, indices[start:stop], rec, spec, device, state.save_chunk, step)
        records[i] = rec.to_json()
    gathered = all_gather(records, shard)
    if not shard.is_main:
        return None
    merged: dict[int, ChunkRecord] = {}
    for part in gathered:
        for i, d in part.items():
            merged[int(i)] = ChunkRecord.from_json(d)
            if not state.chunk_path(int(i)).exists():  # a private (unshared) state folder: keep it complete
                state.save_chunk(merged[int(i)])
    if sorted(merged) != list(range(n_chunks)):
        raise EvalStateError(f"merge is missing chunks {sorted(set(range(n_chunks)) - set(merged))[:5]}")
    flags = np.concatenate([merged[i].robust for i in range(n_chunks)]) if n_chunks else np.zeros(0, bool)
    after = {a: sum(merged[i].after[a] for i in range(n_chunks)) for a in spec.attacks}
    warns = list(dict.fromkeys(w for i in range(n_chunks) for w in merged[i].warnings))
    evidence = sorted((Encoded.from_json(e) for i in range(n_chunks) for e in merged[i].evidence), key=lambda e: e.position)
    broken = np.flatnonzero(clean_correct & ~flags)
    if [e.position for e in evidence] != broken.tolist():
        raise EvalStateError(f"the saved chunks hold evidence for {len(evidence)} of {len(broken)} broken points; "
                             f"delete {state.folder} or pass --fresh")
    return RobustResult(flags, int(flags.sum()), after, warns, n_chunks, sum(r.wall_s for r in merged.values()), evidence)
