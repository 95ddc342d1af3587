"""rbzoo.verdict: the certificate as hostile input, the τ table against docs/numerics.md and at its
boundary, the per-sample rule (near-ties from the evaluation made here only), the count-only cap,
degenerate models, and the ONNX logits gate."""

from __future__ import annotations

import base64
import json
import re
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

from rbzoo.errors import VerificationError
from rbzoo.exact import label_bits, pack_uint, predictions_digest, relative_margins
from rbzoo.verdict import (CAP_RATE, DEGENERATE_SHARE, DEGENERATE_TAU, MAX_GRAPH_DEVIATION, MEASURED_FLIPS, SAFETY,
                           SPOT_MEASURED, SPOT_RATE, TAU, Certificate, certify, compare, compare_count, compare_logits,
                           count_cap, degenerate, spot_cap, strict, tau_for)

NUMERICS_MD = Path(__file__).resolve().parent.parent / "docs" / "numerics.md"


# --- the certificate ----------------------------------------------------------------------------------


def test_certificate_round_trip():
    z = torch.randn(37, 100, generator=torch.Generator().manual_seed(0))
    cert = certify(z, profile="fast")
    d = json.loads(json.dumps(cert.to_json()))
    assert d["label_bits"] == label_bits(100) == 7 and d["tau"] == TAU["fast"] and d["profile"] == "fast"
    assert d["labels_sha256"] == predictions_digest(z.argmax(1).numpy())
    back = Certificate.from_json(d)
    assert np.array_equal(back.labels, z.argmax(1).numpy()) and np.array_equal(back.margins, cert.margins)
    assert (back.n, back.num_classes, back.tau, back.profile) == (37, 100, TAU["fast"], "fast")
    assert np.allclose(cert.margins, relative_margins(z).numpy(), rtol=2 ** -11)  # float16 storage
    assert back.to_json() == d
    empty = certify(torch.zeros(0, 10))
    assert Certificate.from_json(empty.to_json()).n == 0


def _valid() -> dict:
    z = torch.randn(10, 10, generator=torch.Generator().manual_seed(1))
    return certify(z).to_json()


def _with(**changes) -> dict:
    d = _valid()
    d.update(changes)
    return d


def _label_out_of_range() -> dict:
    """Label 9 among 9 classes, with a consistent digest (only the range check can catch it)."""
    labels = Certificate.from_json(_valid()).labels.copy()
    labels[0] = 9
    return _with(num_classes=9, labels=_b64(pack_uint(labels, 4)), labels_sha256=predictions_digest(labels))


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


HOSTILE = {
    "not an object": [1, 2],
    "extra field": _with(note="hi"),
    "missing field": {k: v for k, v in _valid().items() if k != "margins"},
    "future version": _with(rbzoo_certificate=2),
    "bool n": _with(n=True),
    "negative n": _with(n=-1),
    "huge n, short data": _with(n=1_000_000),
    "n over the bound": _with(n=10 ** 12),
    "one class": _with(num_classes=1),
    "wrong label_bits": _with(label_bits=8),
    "labels not base64": _with(labels="!!!!!!!!"),
    "labels too short": _with(labels=_valid()["labels"][:4]),
    "label digest": _with(labels_sha256="0" * 64),
    "label out of range": _label_out_of_range(),
    "margins NaN": _with(margins=_b64(np.full(10, np.nan, "<f2").tobytes())),
    "margins negative": _with(margins=_b64(np.full(10, -1.0, "<f2").tobytes())),
    "margins above 2": _with(margins=_b64(np.full(10, 3.0, "<f2").tobytes())),
    "margins length": _with(margins="AAAA"),
    "margins dtype": _with(margins_dtype="float32"),
    "tau NaN": _with(tau=float("nan")),
    "tau string": _with(tau="0.1"),
    "tau above 1": _with(tau=5),
    "tau widened (B1)": _with(tau=1.0),
    "tau of another profile": _with(tau=TAU["bf16"]),
    "tau true": _with(tau=True),
    "profile": _with(profile="fp8"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_certificate_rejects_hostile_json(case):
    with pytest.raises(VerificationError) as e:
        Certificate.from_json(HOSTILE[case])
    msg = str(e.value)
    assert msg.startswith("certificate: ") and "\n" not in msg and len(msg) < 200


def test_certificate_bounds_sizes_before_decoding():
    with pytest.raises(VerificationError, match="n must be an integer in 0..100"):
        Certificate.from_json(_with(n=101), max_n=100)
    huge = _with(labels="A" * 40_000_000, margins="A" * 40_000_000)  # 30 MB each if decoded
    tracemalloc.start()
    try:
        with pytest.raises(VerificationError, match="labels must be base64 of 5 bytes"):
            Certificate.from_json(huge)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000


def test_certificate_states_its_near_ties_and_a_tampered_list_is_refused():
    margins = np.array([0.5, 5e-5, 0.2, 9e-5, 1e-3], dtype=np.float32)
    cert = Certificate(5, 10, np.array([1, 2, 3, 4, 5]), margins, "verify")
    d = cert.to_json()
    assert d["near_ties"] == [1, 3] and Certificate.from_json(d).near_ties().tolist() == [1, 3]
    for bad in ([1], [1, 3, 4], "1,3", [1, 3] * 10):
        with pytest.raises(VerificationError, match="near_ties"):
            Certificate.from_json(dict(d, near_ties=bad))


def test_a_certificate_tau_is_its_profile_table_value():
    """B1: a publisher cannot widen the tolerance by writing another `tau`."""
    d = certify(torch.randn(6, 10, generator=torch.Generator().manual_seed(2))).to_json()
    assert d["tau"] == TAU["verify"] == Certificate.from_json(d).tau
    with pytest.raises(VerificationError, match=r"tau is 1.0, but profile 'verify' has tau 0.0001"):
        Certificate.from_json(dict(d, tau=1.0))


# --- the numbers, against docs/numerics.md -------------------------------------------------------------


def _section(title: str) -> str:
    text = NUMERICS_MD.read_text("utf-8")
    start = text.index(f"## {title}")
    end = text.find("\n## ", start + 3)
    return text[start:end if end > 0 else None]


def test_tau_table_is_the_one_the_doc_states():
    rows = re.findall(r"^\| (verify|fast|bf16)\b[^|]*\|.*\*\*([0-9.e-]+)\*\* \|", _section("τ and its safety factor"), re.M)
    assert {p: float(v) for p, v in rows} == TAU
    assert len(rows) == 3
    profiles = re.findall(r"^\| `(verify|fast|bf16)`.*\| ([0-9.e-]+) \|$", _section("Profiles"), re.M)
    assert {p: float(v) for p, v in profiles} == TAU


def test_count_cap_is_the_one_the_doc_states():
    cap = _section("The count-only cap")
    rows = re.findall(r"^\| (verify|fast|bf16) \| (\d+) \| ([\d,]+) \|", cap, re.M)
    assert {p: (int(k), int(n.replace(",", ""))) for p, k, n in rows} == MEASURED_FLIPS
    assert f"safety factor **{SAFETY}**" in cap
    assert f"**{CAP_RATE:.2%}**".replace("%", " %") in cap
    assert count_cap(10_000) == 52 and count_cap(50) == 1 and count_cap(0) == 0
    assert f"{count_cap(10_000)} of 10,000" in cap
    assert f"below {DEGENERATE_TAU:g}, more than {DEGENERATE_SHARE:.0%}".replace("%", " %") in cap


def test_spot_cap_is_the_one_the_doc_states():
    """SPOT_MEASURED is the doc's table: k = the proved re-run breaks of every cross-profile row
    (a variant is named by its profile, then "-" and how it runs it), T = each model's robust-flagged
    samples counted once (its first row); the rate and examples in the text follow from them."""
    sec = _section("The spot-check cap")
    rows = re.findall(r"^\| (\w+) \(([\d, ]+)\) \| ([\w-]+) ↔ ([\w-]+) \| (\d+) \| (\d+) \| (\d+) \| (\d+) \((\d+)\) "
                      r"\| (\d+) \((\d+)\) \| ([\d.]+|—) \|$", sec, re.M)
    assert len(rows) >= 10
    k = sum(int(r[8]) + int(r[10]) for r in rows if r[2].split("-")[0] != r[3].split("-")[0])
    first = {}
    for r in rows:
        first.setdefault(r[0], int(r[5]))
    assert SPOT_MEASURED == (k, sum(first.values()))
    assert SPOT_RATE == SAFETY * max(k, 3) / SPOT_MEASURED[1]
    assert f"4 × max({k}, 3) / {SPOT_MEASURED[1]} = **{SPOT_RATE:.2%}**".replace("%", " %") in sec
    assert f"That is {spot_cap(100)} of 100 robust-flagged samples, {spot_cap(5000)} of 5,000" in sec
    assert spot_cap(0) == 0 and spot_cap(1) == 1 and spot_cap(100) >= 1
    tops = [(float(r[11]), tau_for(r[2].split("-")[0], r[3].split("-")[0])) for r in rows if r[11] != "—"]
    assert all(top < tau for top, tau in tops)  # every re-run break measured was a near-tie of its pair
    assert f"at most {max(t for t, _ in tops):g}, far below τ" in sec


# --- τ at its boundary ---------------------------------------------------------------------------------


def _pair(profile: str, margin: float) -> tuple[Certificate, Certificate]:
    """A claimed certificate that differs from `here` on sample 0 only, where `here` has `margin`;
    nine confident samples around it keep the model far from degenerate."""
    margins = np.array([margin] + [0.5] * 9, np.float32)
    here = Certificate(10, 10, np.arange(10), margins, profile)
    labels = np.arange(10)
    labels[0] = 1
    return Certificate(10, 10, labels, np.full(10, 0.5, np.float32), profile), here


@pytest.mark.parametrize("profile", ["verify", "fast", "bf16"])
def test_tau_boundary(profile):
    """A sample may differ iff this evaluation's margin is strictly below the table's τ."""
    tau = TAU[profile]
    below = float(np.nextafter(np.float16(tau), np.float16(0)))  # the largest stored margin below τ
    assert compare(*_pair(profile, below)).status == "tolerance"
    at = float(np.float16(tau))
    if at == tau:  # τ itself is a stored margin (0.25): exactly at τ is NOT a near-tie (`<`, not `≤`)
        assert compare(*_pair(profile, at)).status == "failed"
    above = float(np.nextafter(np.float16(tau), np.float16(2)))
    assert compare(*_pair(profile, above)).status == "failed"


def test_exactly_at_tau_fails():
    claimed, here = _pair("bf16", 0.25)
    v = compare(claimed, here)
    assert v.status == "failed" and list(v.outside) == [0] and "margin ≥ 2e-01" in v.message()


def test_verify_tau_is_1e_4_not_1e_3():
    """A flip at a margin of 5e-4 is outside verify's near-ties (it would be inside a τ of 1e-3)."""
    assert compare(*_pair("verify", 5e-4)).status == "failed"
    assert compare(*_pair("verify", 9e-5)).status == "tolerance"
    assert tau_for("verify", "fast") == TAU["fast"]


# --- verdicts -----------------------------------------------------------------------------------------


def _here() -> Certificate:
    """Eight samples over 3 classes, evaluated here under `fast` (τ 2e-2): samples 2 and 5 are
    near-ties (margin 1e-3 and 0)."""
    z = torch.tensor([[5.0, 1, 0], [0, 4, 1], [2.0, 1.998, 0], [0, 1, 3], [1, 6, 2],
                      [1.0, 1.0, 0], [0, 0, 9], [7, 1, 1]])
    return certify(z, profile="fast")


def _claim(labels, margins=None, profile="fast") -> Certificate:
    return Certificate(len(labels), 3, labels, np.full(len(labels), 0.5) if margins is None else margins, profile)


def test_compare_exact_tolerance_failed():
    here = _here()
    assert list(here.near_ties()) == [2, 5]
    labels = here.labels.copy()
    v = compare(_claim(labels), here)
    assert v.status == "exact" and v.ok and v.message().startswith("exact: all 8")
    labels[[2, 5]] = [1, 1]
    v = compare(_claim(labels), here)
    assert v.status == "tolerance" and list(v.near_tie_differing) == [2, 5] and not len(v.outside)
    assert "within numerical tolerance: 2 of 8" in v.message() and "2, 5" in v.message()
    labels[6] = 0
    v = compare(_claim(labels), here)
    assert v.status == "failed" and not v.ok and list(v.outside) == [6] and list(v.differing) == [2, 5, 6]
    assert v.message().startswith("failed: 1 of 8") and "indices 6" in v.message()
    with pytest.raises(VerificationError, match="certifies 7 samples"):
        compare(_claim(labels[:7]), here)


def test_the_claim_margins_are_reported_never_trusted():
    """B2: labels changed where the file says the margin is 0 still fail when the evaluation made
    here is confident there; the message reports what the file claimed."""
    here = _here()
    labels, margins = here.labels.copy(), np.full(8, 0.5, np.float32)
    labels[[0, 3]] = 1
    margins[[0, 3]] = 0.0
    v = compare(_claim(labels, margins), here)
    assert v.status == "failed" and list(v.outside) == [0, 3]
    assert "the reference's own margins call 2 of them near-ties (reported, not trusted)" in v.message()


def test_tau_is_the_larger_of_the_two_profiles():
    here = _here()
    labels = here.labels.copy()
    labels[3] = 1  # margin here (3-1)/3 ≈ 0.67: differs under every τ
    assert compare(_claim(labels, profile="bf16"), here).tau == TAU["bf16"]
    assert compare(_claim(labels, profile="verify"), here).tau == TAU["fast"]
    assert compare(_claim(labels, profile="bf16"), here).status == "failed"


def test_compare_count_only_and_its_cap():
    here = _here()  # 2 near-ties at fast's τ; cap for 8 samples: 1
    assert count_cap(8) == 1
    v = compare_count(5, 6, here)
    assert v.status == "count only" and v.ok and "exact" not in v.message()
    assert "+1" in v.message() and "min(2 near-ties in this evaluation, cap 1)" in v.message()
    v = compare_count(5, 7, here)  # two near-ties, but the cap allows one
    assert v.status == "failed" and "failed (count only)" in v.message() and "+2" in v.message()
    assert compare_count(5, 5, here, tau=0.0).status == "count only"
    assert compare_count(5, 6, here, tau=0.0).status == "failed"  # no near-tie below τ = 0


def _degenerate_logits(n=40, offset=1e4) -> torch.Tensor:
    """C: trained-looking logits plus a large constant: same argmax, every relative margin tiny."""
    z = torch.randn(n, 10, generator=torch.Generator().manual_seed(3))
    return z + offset


@pytest.mark.parametrize("kind", ["offset", "constant"])
def test_degenerate_models_are_not_certified(kind):
    z = _degenerate_logits() if kind == "offset" else torch.zeros(40, 10)
    here = certify(z)
    assert degenerate(here) and "numerically degenerate" in degenerate(here)
    for v in (compare_count(int((here.labels == 0).sum()) + 1, int((here.labels == 0).sum()), here),
              compare(_claim10(here.labels), here)):
        assert v.status == "failed" and v.message().startswith("failed: numerically degenerate: 40 of 40")
    assert degenerate(certify(torch.randn(40, 10, generator=torch.Generator().manual_seed(3)))) is None


def _claim10(labels) -> Certificate:
    return Certificate(len(labels), 10, labels, np.full(len(labels), 0.5), "verify")


def test_strict_demands_exact():
    here = _here()
    labels = here.labels.copy()
    labels[2] = 1
    v = strict(compare(_claim(labels), here))
    assert v.status == "failed" and "--strict demands exact" in v.message()
    assert strict(compare(_claim(here.labels), here)).status == "exact"


def test_compare_logits_gates_the_deviation_and_degenerate_graphs():
    """ONNX: near-ties from rbzoo's own logits; the largest relative deviation is gated."""
    ours = torch.randn(30, 10, generator=torch.Generator().manual_seed(4)).numpy()
    v, dev = compare_logits(ours * (1 + 1e-6), ours)
    assert v.status == "exact" and dev < 2e-6
    v, dev = compare_logits(ours + 3 * MAX_GRAPH_DEVIATION * np.abs(ours).max(1, keepdims=True) * (ours > 0), ours)
    assert v.status == "failed" and "deviate" in v.message() and dev > MAX_GRAPH_DEVIATION
    v, _ = compare_logits(np.zeros_like(ours), ours)  # a graph with equal logits everywhere
    assert v.status == "failed"
