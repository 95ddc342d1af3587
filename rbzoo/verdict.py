"""The verdict: what a re-evaluation made here may conclude about a published claim.

Every security decision of `rbzoo pull` (and of the ONNX export check) is in this module, and
nothing else: the certificate a publisher ships (parsed and validated as hostile input), the
near-tie tolerance τ per numerics profile, the per-sample comparison, and the count-only rule with
its hard ceiling and its refusal of numerically degenerate models. docs/numerics.md gives the
argument and the measurements behind each number; tests/test_verdict.py holds the numbers to it.

Four rules, each closing a way a publication could vouch for itself:

1. τ is the table value of a certificate's profile: a `tau` field that is not is refused.
2. Which samples may differ is decided by the margins of the evaluation made *here* (`here`), never
   by the margins a file states: an honest label flip between two machines implies the new margin
   is at most the deviation D between them, and D < τ (docs/numerics.md), so nothing is lost.
3. A count without per-sample labels moves by at most min(near-ties here, cap), cap = the worst
   measured flip rate × SAFETY × n; a model whose margins are mostly near-ties is "numerically
   degenerate" and not certified at all.
4. A robust claim's chunks re-attacked under another numerics profile may break at most
   `spot_cap` of the samples it flags robust (the measured rate, at least its rule-of-three bound,
   × SAFETY); each such break is a proved break all the same, counted against the claim.

Imports only `exact` (margins, packing, digests), `_io`, `errors` and numpy.
"""

from __future__ import annotations

import base64
import hashlib
import math
from dataclasses import dataclass, field

import numpy as np
import torch

from ._io import canonical_json
from .constants import MAX_CLASSES
from .errors import VerificationError
from .exact import check_profile, label_bits, pack_uint, predictions_digest, relative_margins, unpack_flags, unpack_uint

# --- the numbers (docs/numerics.md states each one; tests/test_verdict.py parses it) ----------------

# Near-tie tolerance τ per profile: the largest margin deviation D measured for the profile's
# family × a safety factor of at least 4, rounded up.
TAU = {"verify": 1e-4, "fast": 2e-2, "bf16": 0.25}

# Label flips measured against the float32 CPU reference (quickstart model, 10,782 inputs):
# (flips, inputs) per profile. The count-only cap uses the worst of them.
MEASURED_FLIPS = {"verify": (0, 10_782), "fast": (1, 10_782), "bf16": (14, 10_782)}
SAFETY = 4
CAP_RATE = SAFETY * max(k / n for k, n in MEASURED_FLIPS.values())  # 14/10,782 × 4 ≈ 0.52 %

# Cross-profile spot checks: a chunk re-attacked under another numerics profile may take another
# path and break a sample an honest run left robust. Measured (bench/bench_spot_profiles.py):
# (k, T) = (proved re-run breaks over every pair of profiles, robust-flagged samples counted once).
# The rate is max(k, 3)/T (3/T: the rule of three, the 95 % bound of a rate never seen) × SAFETY.
SPOT_MEASURED = (0, 946)
SPOT_RATE = SAFETY * max(SPOT_MEASURED[0], 3) / SPOT_MEASURED[1]  # 4 × 3/946 ≈ 1.27 %

# A model is numerically degenerate when more than this share of its samples have a relative margin
# below `fast`'s τ here (trained models: 0.65 %; offset or constant logits: ~100 %).
DEGENERATE_TAU = TAU["fast"]
DEGENERATE_SHARE = 0.5


def tau_for(*profiles: str) -> float:
    """τ for comparing evaluations made under `profiles`: the largest of theirs."""
    return max(TAU[check_profile(p)] for p in profiles)


def count_cap(n: int) -> int:
    """The most a correct count of `n` samples may move between honest evaluations."""
    return math.ceil(CAP_RATE * n)


def spot_cap(robust_checked: int) -> int:
    """The most proved breaks a spot check's re-run on another numerics profile may find among
    `robust_checked` samples an honest claim flags robust (more: breaks were hidden)."""
    return math.ceil(SPOT_RATE * robust_checked)


# --- the certificate (untrusted when it comes from a file) ------------------------------------------

CERTIFICATE_VERSION = 1
MAX_CERT_SAMPLES = 2_000_000  # above any test split (ImageNet's validation set: 50,000)
_CERT_KEYS = {"rbzoo_certificate", "n", "num_classes", "profile", "tau", "label_bits", "labels", "labels_sha256",
              "margins", "margins_dtype", "near_ties"}


def _bad(what: str) -> VerificationError:
    return VerificationError(f"certificate: {what}")


def _quantize(margins: np.ndarray) -> np.ndarray:
    """Margins as stored (float16, values in [0, 2]) so that JSON round trips lose nothing."""
    return np.asarray(margins, dtype=np.float32).astype("<f2").astype(np.float32)


@dataclass(frozen=True, eq=False)
class Certificate:
    """Per sample, the predicted label and the relative top-2 margin (stored as float16), made
    under a numerics `profile`; its τ is that profile's table value. Margins < τ are near-ties."""

    n: int
    num_classes: int
    labels: np.ndarray  # int64 [n]
    margins: np.ndarray  # float32 [n], float16-exact
    profile: str

    def __post_init__(self) -> None:
        labels = np.asarray(self.labels).reshape(-1).astype(np.int64)
        margins = _quantize(np.asarray(self.margins).reshape(-1))
        if len(labels) != self.n or len(margins) != self.n:
            raise _bad(f"{len(labels)} labels and {len(margins)} margins for n = {self.n}")
        if not 2 <= self.num_classes <= MAX_CLASSES:
            raise _bad(f"num_classes {self.num_classes} out of range 2..{MAX_CLASSES}")
        if self.n and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise _bad(f"a label is outside 0..{self.num_classes - 1}")
        if not (np.isfinite(margins).all() and (margins >= 0).all() and (margins <= 2).all()):
            raise _bad("margins must be finite and in [0, 2]")
        check_profile(self.profile)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "margins", margins)

    @property
    def tau(self) -> float:
        return TAU[self.profile]

    @classmethod
    def of(cls, clean) -> Certificate:
        """The certificate of an `exact.clean_accuracy` result (made with margins)."""
        if clean.margins is None or clean.num_classes is None:
            raise VerificationError("this result recorded no margins (clean_accuracy(..., margins=False))")
        return cls(clean.n_examples, clean.num_classes, clean.predictions, clean.margins, clean.profile)

    def near_ties(self, tau: float | None = None) -> np.ndarray:
        """Indices of the samples whose margin is below τ (this certificate's by default)."""
        return np.flatnonzero(self.margins < (self.tau if tau is None else tau))

    @property
    def digest(self) -> str:
        """SHA-256 of the canonical JSON of :meth:`to_json`: what a card pins as
        `expected.certificate_sha256`. Independent of how the JSON was spelled when read."""
        return hashlib.sha256(canonical_json(self.to_json()).encode("ascii")).hexdigest()

    @property
    def labels_sha256(self) -> str:
        """Equal to the results' `predictions_sha256` of the same labels."""
        return predictions_digest(self.labels)

    def to_json(self) -> dict:
        bits = label_bits(self.num_classes)
        return {"rbzoo_certificate": CERTIFICATE_VERSION, "n": self.n, "num_classes": self.num_classes,
                "profile": self.profile, "tau": self.tau, "label_bits": bits,
                "labels": base64.b64encode(pack_uint(self.labels, bits)).decode("ascii"),
                "labels_sha256": self.labels_sha256,
                "margins": base64.b64encode(self.margins.astype("<f2").tobytes()).decode("ascii"),
                "margins_dtype": "float16",
                # Redundant with margins and τ, stated so a reader sees which samples may differ.
                "near_ties": [int(i) for i in self.near_ties()]}

    @classmethod
    def from_json(cls, d: object, *, max_n: int = MAX_CERT_SAMPLES) -> Certificate:
        """Validate every field of an untrusted certificate, bounding sizes before decoding."""
        if not isinstance(d, dict):
            raise _bad(f"expected a JSON object, got {type(d).__name__}")
        if set(d) != _CERT_KEYS:
            extra, missing = sorted(set(d) - _CERT_KEYS), sorted(_CERT_KEYS - set(d))
            raise _bad(f"unexpected fields {extra}" if extra else f"missing fields {missing}")
        if _int(d, "rbzoo_certificate", 0, 1 << 31) != CERTIFICATE_VERSION:
            raise _bad(f"version {d['rbzoo_certificate']} is not supported (this rbzoo reads {CERTIFICATE_VERSION})")
        n, classes = _int(d, "n", 0, max_n), _int(d, "num_classes", 2, MAX_CLASSES)
        bits = label_bits(classes)
        if _int(d, "label_bits", 1, 32) != bits:
            raise _bad(f"label_bits must be {bits} for {classes} classes")
        if d["margins_dtype"] != "float16":
            raise _bad("margins_dtype must be 'float16'")
        profile = d["profile"]
        if not isinstance(profile, str) or profile not in TAU:
            raise _bad(f"unknown profile {str(profile)[:40]!r}")
        if isinstance(d["tau"], bool) or d["tau"] != TAU[profile]:  # rule 1: τ is the table's, never the file's
            raise _bad(f"tau is {str(d['tau'])[:40]}, but profile {profile!r} has tau {TAU[profile]:g} "
                       f"(docs/numerics.md)")
        try:
            labels = unpack_uint(_b64(d, "labels", (n * bits + 7) // 8), n, bits)
        except ValueError as e:
            raise _bad(f"labels: {e}") from None
        if labels.size and labels.max() >= classes:
            raise _bad(f"a label is outside 0..{classes - 1}")
        if predictions_digest(labels) != d["labels_sha256"]:
            raise _bad("labels do not match labels_sha256")
        margins = np.frombuffer(_b64(d, "margins", 2 * n), dtype="<f2").astype(np.float32)
        cert = cls(n, classes, labels, margins, profile)
        near = d["near_ties"]
        if not isinstance(near, list) or len(near) > n or near != cert.near_ties().tolist():
            raise _bad("near_ties must list exactly the samples whose margin is below tau")
        return cert


def _int(d: dict, key: str, lo: int, hi: int) -> int:
    v = d[key]
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise _bad(f"{key} must be an integer in {lo}..{hi}")
    return v


def _b64(d: dict, key: str, nbytes: int) -> bytes:
    """Decode base64 field `key` that must hold exactly `nbytes` bytes; the text length is checked
    first, so a hostile field cannot make us allocate more than the header promised."""
    text = d[key]
    if not isinstance(text, str) or len(text) != 4 * ((nbytes + 2) // 3):
        raise _bad(f"{key} must be base64 of {nbytes} bytes")
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError:
        raise _bad(f"{key} is not valid base64") from None
    if len(raw) != nbytes:
        raise _bad(f"{key} must be base64 of {nbytes} bytes")
    return raw


def certify(logits, *, profile: str = "verify") -> Certificate:
    """The certificate of a batch of logits [N, classes] computed under `profile`."""
    z = torch.as_tensor(logits)
    labels = z.argmax(1).cpu().numpy()
    return Certificate(len(labels), z.shape[1], labels, relative_margins(z).cpu().numpy(), check_profile(profile))


# --- verdicts ---------------------------------------------------------------------------------------

MAX_NAMED = 10  # sample indices a message names
STATUSES = ("exact", "tolerance", "count only", "failed")


def named(idx) -> str:
    """Sample indices for a message: the first MAX_NAMED, then "…"."""
    p = [int(i) for i in idx]
    return ", ".join(map(str, p[:MAX_NAMED])) + (", …" if len(p) > MAX_NAMED else "")


@dataclass(frozen=True, eq=False)
class Verdict:
    """The outcome of checking a claim against an evaluation made here.

    exact: every label equals the claim; tolerance: only near-ties of this evaluation differ;
    count only: the claim has no per-sample labels and its correct count moved by no more than
    min(near-ties here, cap); failed: anything else (`reason` says why when no sample does)."""

    status: str
    n: int
    tau: float
    differing: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    near_tie_differing: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    outside: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    counts: tuple[int, int, int, int, int] | None = None  # count only: (expected, got, allowed, near-ties, cap)
    claimed_near: int = 0  # of `outside`, how many the claim's own margins call near-ties (reported only)
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.status != "failed"

    def message(self) -> str:
        """One line saying which of the outcomes this is, and the samples or counts behind it."""
        if self.reason:
            return f"failed: {self.reason}"
        if self.counts is not None:
            exp, got, allowed, near, cap = self.counts
            head = "count only" if self.ok else "failed (count only)"
            return (f"{head}: {got}/{self.n} correct, the reference says {exp}/{self.n} (difference {got - exp:+d}; "
                    f"allowed ±{allowed} = min({near} near-ties in this evaluation, cap {cap})); "
                    f"no per-sample reference")
        if self.status == "exact":
            return f"exact: all {self.n} predicted labels equal the reference"
        k = len(self.differing)
        if self.status == "tolerance":
            return (f"verified within numerical tolerance: {k} of {self.n} samples differ, all near-ties of this "
                    f"evaluation (relative top-2 margin < {self.tau:.0e}): indices {named(self.differing)}")
        told = (f"; the reference's own margins call {self.claimed_near} of them near-ties (reported, not trusted)"
                if self.claimed_near else "")
        return (f"failed: {len(self.outside)} of {self.n} samples differ outside this evaluation's near-ties "
                f"(margin ≥ {self.tau:.0e}): indices {named(self.outside)}; {k} differ in all{told}")


def degenerate(here: Certificate) -> str | None:
    """Why `here` (an evaluation made here) is numerically degenerate, or None if it is not."""
    k = len(here.near_ties(DEGENERATE_TAU))
    if here.n and k > DEGENERATE_SHARE * here.n:
        return (f"numerically degenerate: {k} of {here.n} samples have a relative top-2 margin below "
                f"{DEGENERATE_TAU:g} in this evaluation (more than {DEGENERATE_SHARE:.0%}: offset or constant "
                f"logits); its accuracy cannot be certified")
    return None


def compare(claimed: Certificate, here: Certificate) -> Verdict:
    """Check a claimed certificate (a file, an exported graph) against `here`, an evaluation rbzoo
    made itself. A sample may differ only if *here*'s margin is below τ = the larger τ of the two
    profiles; the claim's margins are reported, never trusted."""
    if here.n != claimed.n:
        raise VerificationError(f"the reference certifies {claimed.n} samples, this evaluation has {here.n}")
    tau = max(claimed.tau, here.tau)
    why = degenerate(here)
    if why:
        return Verdict("failed", here.n, tau, reason=why)
    near = here.margins < tau
    diff = np.flatnonzero(here.labels != claimed.labels)
    inside, outside = diff[near[diff]], diff[~near[diff]]
    status = "exact" if not len(diff) else "tolerance" if not len(outside) else "failed"
    return Verdict(status, here.n, tau, diff, inside, outside,
                   claimed_near=int((claimed.margins[outside] < tau).sum()))


def compare_count(expected_correct: int, got_correct: int, here: Certificate, *, tau: float | None = None) -> Verdict:
    """A claim that gives a correct count only (e.g. a paper's table): accept iff the count moved by
    no more than min(near-ties of `here` below τ (default here's), count_cap(n)). Never "exact"."""
    tau = here.tau if tau is None else float(tau)
    why = degenerate(here)
    if why:
        return Verdict("failed", here.n, tau, reason=why)
    near, cap = len(here.near_ties(tau)), count_cap(here.n)
    allowed = min(near, cap)
    status = "count only" if abs(int(got_correct) - int(expected_correct)) <= allowed else "failed"
    return Verdict(status, here.n, tau, counts=(int(expected_correct), int(got_correct), allowed, near, cap))


# An exported graph is one more float32 evaluation of the same network: its logits may deviate from
# rbzoo's by at most half of `verify`'s τ relative to ‖z‖∞ (so that no margin moves by τ or more;
# measured onnxruntime vs torch: ~3e-6, docs/deploy.md).
MAX_GRAPH_DEVIATION = TAU["verify"] / 2


def compare_logits(claimed, here) -> tuple[Verdict, float]:
    """Judge logits [N, classes] computed elsewhere (an ONNX graph) against rbzoo's own logits of
    the same inputs under `verify` numerics: :func:`compare` with near-ties from `here`, plus a gate
    on the largest relative logit deviation. Returns (verdict, that deviation)."""
    claimed, here = np.asarray(claimed, np.float64), np.asarray(here, np.float64)
    if claimed.shape != here.shape:
        raise VerificationError(f"logits of shape {claimed.shape} to check against {here.shape}")
    dev = 0.0
    if here.size:
        scale = np.maximum(np.abs(here).max(axis=1), np.finfo(np.float32).tiny)
        dev = float(np.nan_to_num((np.abs(claimed - here).max(axis=1) / scale), nan=np.inf).max())
    verdict = compare(certify(claimed), certify(here))
    if verdict.ok and dev > MAX_GRAPH_DEVIATION:
        verdict = Verdict("failed", verdict.n, verdict.tau, verdict.differing, reason=(
            f"the logits deviate by up to {dev:.3g} of their largest magnitude, more than the {MAX_GRAPH_DEVIATION:g} "
            f"one more float32 evaluation may ({len(verdict.differing)} labels differ)"))
    return verdict, dev


# --- the numbers a card states ---------------------------------------------------------------------


def _close(a, b, tol: float = 0.005 + 1e-9) -> bool:  # percentages are published to 2 decimals
    return isinstance(a, (int, float)) and not isinstance(a, bool) and abs(a - b) <= tol


def _differ(field: str, stated, derived, source: str) -> VerificationError:
    return VerificationError(f"`{field}` says {stated}, but {source} gives {derived}")


def check_claims(meta: dict, *, cert: Certificate | None = None, labels: np.ndarray | None = None,
                 predicted: np.ndarray | None = None, results: dict | None = None) -> None:
    """Derive every number a (schema-valid) card states and check it: the correct count from its
    certificate's labels (or, for a card pinning only a prediction digest, the `predicted` labels
    that matched it) against the test labels `labels`, the percentages (`claimed`, model-index)
    from the count, and the results file's counts, digests and robust flags. VerificationError
    names the first field that disagrees and both numbers."""
    rb = meta["rbzoo"]
    exp, claimed = rb["expected"], rb["claimed"]
    n, correct = exp["n_examples"], exp["clean_correct"]
    if cert is not None and cert.n != n:
        raise _differ("rbzoo.expected.n_examples", n, cert.n, "its certificate")
    reference = cert.labels if cert is not None else predicted
    if reference is not None and labels is not None:
        derived = int((np.asarray(reference) == np.asarray(labels)).sum())
        if derived != correct:
            raise _differ("rbzoo.expected.clean_correct", correct, derived,
                          f"its {'certificate' if cert is not None else 'prediction digest'}'s labels against "
                          f"the test labels")
    if not _close(claimed["clean_acc"], 100.0 * correct / n):
        raise _differ("rbzoo.claimed.clean_acc", claimed["clean_acc"], f"{100.0 * correct / n:.2f}",
                      f"rbzoo.expected ({correct}/{n})")
    robust = claimed["robust_acc"]
    for i, m in enumerate(meta["model-index"][0]["results"][0]["metrics"]):
        want = {"accuracy": claimed["clean_acc"], "robust_accuracy": robust}.get(m["type"])
        if want is not None and not _close(m["value"], want):
            raise _differ(f"model-index metrics[{i}].value", m["value"], want, "rbzoo.claimed")
    if isinstance(results, dict):
        _check_results_numbers(results, exp, robust)


def _check_results_numbers(res: dict, exp: dict, robust: float | None) -> None:
    n = exp["n_examples"]
    for key in ("n_examples", "clean_correct", "predictions_sha256", "data_sha256"):
        if exp[key] is not None and res.get(key) != exp[key]:
            raise _differ(f"results.json: {key}", str(res.get(key))[:64], exp[key], f"the card's rbzoo.expected.{key}")
    acc = res.get("clean_acc")
    if acc is not None and (not isinstance(acc, (int, float)) or isinstance(acc, bool)
                            or abs(acc - exp["clean_correct"] / n) > 1e-9):
        raise _differ("results.json: clean_acc", str(acc)[:40], exp["clean_correct"] / n, "its clean_correct / n_examples")
    if res.get("robust_flags") is not None:
        try:
            k = int(unpack_flags(res["robust_flags"], n).sum()) if isinstance(res["robust_flags"], str) else None
        except ValueError:
            k = None
        if k is None:
            raise VerificationError(f"`results.json: robust_flags` is not {n} packed per-sample flags")
        if res.get("robust_correct") != k:
            raise _differ("results.json: robust_correct", str(res.get("robust_correct"))[:40], k, "its robust_flags")
        stated = res.get("robust_acc")
    else:
        stated = res.get("robust_acc")
        k = res.get("robust_correct")
        if stated is not None and (not isinstance(k, int) or not isinstance(stated, (int, float))
                                   or abs(stated - k / n) > 1e-9):
            raise _differ("results.json: robust_acc", str(stated)[:40], f"{k}/{n}", "its robust_correct")
    if stated is not None and (not isinstance(stated, (int, float)) or abs(stated - k / n) > 1e-9):
        raise _differ("results.json: robust_acc", str(stated)[:40], k / n, "its robust_flags")
    if stated is not None and robust is not None and not _close(robust, 100.0 * k / n):
        raise _differ("rbzoo.claimed.robust_acc", robust, f"{100.0 * k / n:.2f}", f"the results ({k}/{n} robust)")


def strict(verdict: Verdict) -> Verdict:
    """--strict: anything short of exact fails."""
    if not verdict.ok or verdict.status == "exact":
        return verdict
    return Verdict("failed", verdict.n, verdict.tau, verdict.differing, verdict.near_tie_differing, verdict.differing,
                   verdict.counts, reason=f"--strict demands exact, this is {verdict.message()}")


__all__ = ["CAP_RATE", "DEGENERATE_SHARE", "DEGENERATE_TAU", "MEASURED_FLIPS", "SAFETY", "SPOT_MEASURED", "SPOT_RATE", "TAU",
           "Certificate", "MAX_GRAPH_DEVIATION", "Verdict", "certify", "check_claims", "compare", "compare_count",
           "compare_logits", "count_cap", "degenerate", "spot_cap", "strict", "tau_for"]
