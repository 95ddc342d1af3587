"""Checking a published robust-accuracy claim: the evidence of every break, and chunk spot-checks.

A results file says, per evaluated sample, whether it survived the attack (`robust_flags`), and
its evidence file holds the adversarial input of every sample it says was broken
(:mod:`rbzoo.evidence`). Three checks build on that:

- :func:`check_consistency` (push, pull): the counts agree with the flags, every broken sample has
  exactly one stored example, and every stored example belongs to a clean-correct sample.
- :func:`prove_breaks` (pull --robust): every stored example, rebuilt from the true test image, is
  inside the ε-ball and [0, 1] and misclassified by the pinned model. Each proved break shows a
  sample that is not robust, so the robust accuracy is **at most** the claim. It proves nothing
  about the samples flagged robust: a stronger attack may still break them.
- :func:`spot_check` (pull --spot-check K): K chunks re-attacked with their recorded seed and
  settings. On the same numerics profile the flags must come out identical (the attack is a
  deterministic function of model, data, chunk and seed; other kernels may still change the
  adversarial inputs it ends at, which are reported). On another profile the attack may take
  another path, so the re-run's proved breaks of robust-flagged samples are counted into the bound
  and refused only beyond `verdict.spot_cap` (measured, docs/numerics.md). This catches breaks
  hidden by flipping flags to robust, with the probability :func:`catch_probability` states.

Any failure is a :class:`VerificationError` naming the samples (exit 3).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import Dataset

from .errors import ConfigError, VerificationError
from .evidence import BreakCheck, Encoded, Evidence, check_breaks
from .exact import numerics, ordered_batches, unpack_flags
from .robust import AttackSpec, ChunkRecord, chunk_seed, make_attack_spec, run_chunk
from .verdict import MAX_NAMED, Certificate, named, spot_cap

def published_attack(results: dict) -> AttackSpec:
    """The attack a results file states, validated as `rbzoo eval` validates its options. Anything
    missing or invalid is a VerificationError: the file is published, not the user's input."""
    a = results.get("attack")
    try:
        if not isinstance(a, dict):
            raise ConfigError("no attack settings")
        common = dict(norm=a["norm"], eps=a["eps"], seed=a["seed"], chunk_size=a["chunk_size"],
                      numerics=a.get("numerics", "verify"))
        if a.get("version") == "pgd":
            return make_attack_spec(**common, pgd_steps=a["steps"], pgd_alpha=a["alpha"])
        return make_attack_spec(**common, version=a["version"], attacks=a["attacks"] if a["version"] == "custom" else None,
                                n_iter=a.get("n_iter"), n_restarts=a.get("n_restarts"), n_queries=a.get("n_queries"))
    except (ConfigError, KeyError, TypeError, ValueError, OverflowError) as e:
        what = f"{e} is missing" if isinstance(e, KeyError) else str(e)
        raise VerificationError(f"results: the attack settings are not valid ({what[:200]})") from None


def robust_flags(results: dict) -> np.ndarray:
    n = results["n_examples"]
    try:
        return unpack_flags(results["robust_flags"], n)
    except (ValueError, TypeError, KeyError):
        raise VerificationError(f"results: robust_flags do not hold {n} samples") from None


def check_consistency(results: dict, evidence: Evidence, cert: Certificate, labels: np.ndarray | None = None) -> np.ndarray:
    """Counts, flags and stored examples agree; returns the broken positions.

    `cert` holds the published clean predictions; `labels` (the true labels, when the data is at
    hand) make the clean-correct set exact, else the stored examples' labels stand in for them."""
    n = results["n_examples"]
    flags = robust_flags(results)
    robust = results.get("robust_correct")
    if robust != int(flags.sum()):
        raise VerificationError(f"results: robust_correct is {robust} but {int(flags.sum())} robust flags are set")
    if not isinstance(results.get("robust_acc"), (int, float)) or abs(results["robust_acc"] - robust / n) > 1e-9:
        raise VerificationError(f"results: robust_acc {results.get('robust_acc')} is not robust_correct / n = {robust}/{n}")
    clean_correct = results.get("clean_correct")
    items = evidence.by_position()
    stored = np.array(sorted(items), np.int64)
    if labels is not None:
        correct = cert.labels == np.asarray(labels)
        if int(correct.sum()) != clean_correct:
            raise VerificationError(f"results: clean_correct is {clean_correct}, the certificate's labels give "
                                    f"{int(correct.sum())} on this data")
        wrong_robust = np.flatnonzero(flags & ~correct)
        if len(wrong_robust):
            raise VerificationError(f"results: samples {named(wrong_robust)} are flagged robust but not even clean-correct")
        broken = np.flatnonzero(correct & ~flags)
    else:
        broken = np.flatnonzero(~flags & np.isin(np.arange(n), stored))
    if clean_correct - robust != len(evidence.items) or (labels is not None and len(broken) != clean_correct - robust):
        raise VerificationError(f"results: robust_correct {robust} ≠ clean_correct {clean_correct} − "
                                f"{len(evidence.items)} stored breaks")
    missing = np.setdiff1d(broken, stored)
    if len(missing):
        raise VerificationError(f"samples {named(missing)} are flagged broken without evidence (no stored adversarial example)")
    extra = np.setdiff1d(stored, broken)
    if len(extra):
        raise VerificationError(f"samples {named(extra)} have stored examples but are not flagged broken")
    for p in broken:
        e = items[int(p)]
        if cert.labels[p] != e.label:
            raise VerificationError(f"sample {p}: stored as broken from label {e.label}, but its clean prediction "
                                    f"was {int(cert.labels[p])} (not clean-correct)")
    return broken


def _images(dataset: Dataset, indices, positions) -> tuple[torch.Tensor, torch.Tensor]:
    pos = [int(indices[p]) for p in positions]
    if not pos:
        return torch.zeros(0), torch.zeros(0, dtype=torch.int64)
    xs, ys = zip(*ordered_batches(dataset, pos, batch_size=len(pos)))
    return torch.cat(xs).float(), torch.cat(ys).long()


@dataclass
class RobustVerdict:
    """What `pull --robust` proved about a robust-accuracy claim."""

    n: int
    claimed_correct: int
    breaks: int
    proved: np.ndarray
    near_ties: np.ndarray
    incorrect_here: np.ndarray  # positions classified wrong by this machine's clean pass
    spot: dict | None = None  # spot_check's result; its "rerun_breaks" are proved breaks too
    notes: list[str] = field(default_factory=list)

    @property
    def rerun_breaks(self) -> list[int]:
        return list((self.spot or {}).get("rerun_breaks", []))

    @property
    def bound(self) -> int:
        """Robust-correct samples at most: n minus every sample shown non-robust here (wrong on the
        clean pass, a published break proved, or a break the spot check's re-run proved)."""
        shown = np.union1d(np.union1d(self.incorrect_here, self.proved), np.asarray(self.rerun_breaks, np.int64))
        return self.n - len(shown)

    def message(self) -> str:
        line = (f"robust ≤ {100.0 * self.bound / self.n:.2f} %: {len(self.proved)}/{self.breaks} breaks proved")
        if self.rerun_breaks:
            line += f", {len(self.rerun_breaks)} more by the spot check's re-run (samples {named(self.rerun_breaks)})"
        if len(self.near_ties):
            line += f", {len(self.near_ties)} near-ties (adversarial margin < τ, not counted): {named(self.near_ties)}"
        if self.spot:
            line += f"; {self.spot['message']}"
        return line

    def to_json(self) -> dict:
        return {"claimed_correct": self.claimed_correct, "bound_correct": self.bound, "n": self.n, "breaks": self.breaks,
                "proved": len(self.proved), "rerun_breaks": len(self.rerun_breaks),
                "near_ties": [int(i) for i in self.near_ties], "spot_check": self.spot, "message": self.message()}


def prove_breaks(model: nn.Module, dataset: Dataset, indices, results: dict, evidence: Evidence, cert: Certificate,
                 true_labels: np.ndarray, clean_correct_here: np.ndarray, *, profile: str, tau: float,
                 device="cpu", images: dict | None = None) -> RobustVerdict:
    """Check every stored example against `model` and the true images (`dataset[indices[pos]]`).
    `true_labels` and `clean_correct_here` come from this machine's clean pass of the same samples;
    `images` ({position: (image, label)}), the images that pass kept, saves loading them again."""
    attack = published_attack(results)
    n = results["n_examples"]
    broken = check_consistency(results, evidence, cert, true_labels)
    stored = evidence.by_position()
    items = [stored[int(p)] for p in broken]
    if images is not None and all(int(p) in images for p in broken):
        x = torch.stack([images[int(p)][0] for p in broken]).float() if len(broken) else torch.zeros(0)
        y = torch.tensor([int(images[int(p)][1]) for p in broken], dtype=torch.int64)
    else:
        x, y = _images(dataset, indices, broken)
    with numerics(profile, device):
        chk: BreakCheck = check_breaks(model, x.to(device), y.to(device), items, norm=attack.norm, eps=attack.eps, tau=tau)
    bad_label = chk.positions[~chk.label_ok]
    if len(bad_label):
        raise VerificationError(f"samples {named(bad_label)}: the stored true label is not the test data's")
    outside = chk.positions[~chk.ball]
    if len(outside):
        raise VerificationError(f"samples {named(outside)}: the stored adversarial example is outside the "
                                f"{attack.norm} ball of radius {attack.eps:.6g}")
    box = chk.positions[~chk.box]
    if len(box):
        raise VerificationError(f"samples {named(box)}: the stored adversarial example is outside [0, 1]")
    invalid = chk.invalid
    if len(invalid):
        raise VerificationError(f"samples {named(invalid)}: the stored adversarial example is classified correctly "
                                f"by the model (adversarial margin ≤ −τ = {-tau:.0e}): not a break")
    return RobustVerdict(n, int(results["robust_correct"]), len(broken), chk.proved, chk.near_ties,
                         np.flatnonzero(~np.asarray(clean_correct_here, bool)))


def catch_probability(n_chunks: int, hidden: int, k: int) -> float:
    """P(at least one of `hidden` chunks among `k` drawn without replacement from `n_chunks`)."""
    if hidden <= 0 or k <= 0:
        return 0.0
    if k > n_chunks - hidden:
        return 1.0
    return 1.0 - math.comb(n_chunks - hidden, k) / math.comb(n_chunks, k)


def spot_check(model: nn.Module, dataset: Dataset, indices, results: dict, evidence: Evidence, cert: Certificate, *,
               k: int | None, seed: int, profile: str, tau: float, device="cpu") -> dict:
    """Re-attack `k` random chunks (None: all) with their recorded seeds and settings; compare flags.

    Same numerics profile as the attack: the flags must be identical (re-run examples that differ
    from the stored ones are reported: other kernels can end at another input). Another profile: the
    re-run's breaks of samples the claim calls robust are checked like published evidence; each one
    proved is a real break (returned as "rerun_breaks", which :class:`RobustVerdict` counts into
    its bound), and more of them than `verdict.spot_cap` of the checked robust-flagged samples is a
    refusal (docs/numerics.md, "The spot-check cap")."""
    attack = published_attack(results)
    spec = dataclasses.replace(attack, numerics=profile)  # re-run under this pull's profile
    n, cs = results["n_examples"], spec.chunk_size
    n_chunks = (n + cs - 1) // cs
    flags = robust_flags(results)
    published_correct = flags | np.isin(np.arange(n), [e.position for e in evidence.items])
    chosen = list(range(n_chunks)) if k is None or k >= n_chunks else sorted(
        np.random.default_rng(seed).choice(n_chunks, size=k, replace=False).tolist())
    published = attack.numerics
    same_profile = published == profile
    idx = np.asarray(indices, dtype=np.int64)
    mismatch, other_bytes, breaks, near, back, robust_checked = [], [], [], [], 0, 0
    stored = evidence.by_position()
    for c in chosen:
        start, stop = c * cs, min((c + 1) * cs, n)
        rec = ChunkRecord(c, start, stop, chunk_seed(spec.seed, c), published_correct[start:stop].copy())
        rec = run_chunk(model, dataset, idx[start:stop], rec, spec, torch.device(device), save=lambda r: None)
        differ = np.flatnonzero(rec.robust != flags[start:stop]) + start
        robust_checked += int(flags[start:stop].sum())
        if same_profile:
            mismatch += differ.tolist()
            # Other kernels on the same profile (another CPU, a GPU) can end an attack at another
            # adversarial input with the same flags (measured: docs/numerics.md). The stored
            # example is proved on its own, so differing bytes are reported, not refused.
            other_bytes += [e["position"] for e in rec.evidence
                            if e["position"] in stored and bytes.fromhex(e["payload"]) != stored[e["position"]].payload]
            continue
        # Another profile: the attack may take another path. A published break it misses is still
        # proved by the published evidence; a robust-flagged sample it breaks is checked here.
        newly = {int(p) for p in differ if flags[p]}
        back += len(differ) - len(newly)
        if newly:
            items = [Encoded.from_json(e) for e in rec.evidence if e["position"] in newly]
            x, y = _images(dataset, idx, [e.position for e in items])
            with numerics(profile, device):
                chk = check_breaks(model, x.to(device), y.to(device), items, norm=spec.norm, eps=spec.eps, tau=tau)
            breaks += chk.proved.tolist()
            near += chk.near_ties.tolist()
    hide = max(1, round(n_chunks / 10))
    p = catch_probability(n_chunks, hide, len(chosen))
    if mismatch:
        raise VerificationError(f"spot check: re-attacking chunks {chosen[:MAX_NAMED]} on the same numerics profile gives "
                                f"other robust flags for samples {named(sorted(set(mismatch)))}")
    breaks = sorted(breaks)
    cap = 0 if same_profile else spot_cap(robust_checked)
    pair = f"{published} → {profile}"
    if len(breaks) > cap:
        raise VerificationError(f"spot check ({pair}): the re-run attack breaks {len(breaks)} samples the claim calls robust "
                                f"(proved, margin ≥ τ), more than another numerics profile explains (cap {cap} of "
                                f"{robust_checked} robust-flagged samples): breaks were hidden: samples {named(breaks)}")
    if same_profile:
        how, hidden = "exactly", f"breaks hidden in {hide} of the {n_chunks} chunks"
        if other_bytes:
            how += (f" (robust flags; the re-run's adversarial examples of samples {named(sorted(other_bytes))} differ "
                    f"from the stored ones, which are checked on their own)")
    else:
        what = "1 re-run break of a robust-flagged sample" if len(breaks) == 1 else \
            f"{len(breaks)} re-run breaks of robust-flagged samples"
        ties = f"; {len(near)} near-ties (margin < τ), not counted" if near else ""
        how = f"within tolerance (another numerics profile, {pair}: {what}, counted{ties}; cap {cap})"
        hidden = f"more than the cap of breaks hidden in {hide} of the {n_chunks} chunks"
    message = (f"{len(chosen)} of {n_chunks} chunks reproduced {how}; {hidden} would have been caught with "
               f"probability {100 * p:.0f} %")
    return {"chunks": chosen, "seed": int(seed), "n_chunks": n_chunks, "same_profile": same_profile, "profiles": [published, profile],
            "catch_probability": p, "hidden_chunks_assumed": hide, "robust_checked": robust_checked, "cap": cap,
            "rerun_breaks": [int(i) for i in breaks], "near_ties": sorted(int(i) for i in near),
            "published_breaks_missed": back, "evidence_differs": sorted(int(i) for i in other_bytes), "message": message}
