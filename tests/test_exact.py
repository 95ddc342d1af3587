"""rbzoo.exact: numerics profiles, bit packing, margins, the verification certificate and verdicts,
and a cross-profile re-evaluation of a small trained digits model."""

from __future__ import annotations

import base64
import copy
import json
import tracemalloc

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import ConcatDataset, TensorDataset

import rbzoo
import rbzoo.data
from rbzoo.errors import ConfigError, VerificationError
from rbzoo.exact import (TAU, Certificate, certify, clean_accuracy, compare, compare_count, label_bits, numerics,
                         pack_uint, predictions_digest, relative_margins, round_tf32, tf32_emulated, unpack_uint)


pytestmark = pytest.mark.usefixtures("one_thread")


# --- packing, margins, profiles ---------------------------------------------------------------------


@pytest.mark.parametrize("width", [1, 3, 4, 7, 8, 16, 17])
def test_pack_uint_round_trip_and_layout(width):
    v = np.random.default_rng(width).integers(0, 1 << width, size=29)
    data = pack_uint(v, width)
    assert len(data) == (29 * width + 7) // 8
    assert np.array_equal(unpack_uint(data, 29, width), v)
    # Field i, bit j lives at stream bit i*width + j, bytes filled from their lowest bit.
    bits = np.unpackbits(np.frombuffer(data, np.uint8), bitorder="little")
    assert all(bits[i * width + j] == (v[i] >> j) & 1 for i in range(29) for j in range(width))
    with pytest.raises(ValueError):
        unpack_uint(data + b"\0", 29, width)
    with pytest.raises(ValueError):
        pack_uint([1 << width], width)


def test_pack_uint_16_is_little_endian_uint16_and_padding_must_be_zero():
    v = np.array([0, 1, 9, 300, 65535])
    assert pack_uint(v, 16) == v.astype("<u2").tobytes()
    packed = bytearray(pack_uint([5, 2, 7], 3))  # 9 bits: 7 padding bits in the second byte
    packed[-1] |= 0x80
    with pytest.raises(ValueError, match="padding"):
        unpack_uint(bytes(packed), 3, 3)


def test_relative_margin_definition():
    z = torch.tensor([[3.0, 1.0, 0.0], [-1.0, -4.0, -2.0], [0.0, 0.0, 0.0], [2.0, 2.0, -8.0],
                      [float("nan"), 1.0, 0.0]])
    m = relative_margins(z)
    assert m[:4].tolist() == pytest.approx([2 / 3, 1 / 4, 0.0, 0.0])
    assert m[4].item() == 2.0  # a NaN row is never excused as a near-tie
    assert torch.allclose(relative_margins(z[:4] * 37.5), m[:4])  # scale-invariant
    with pytest.raises(ConfigError):
        relative_margins(torch.zeros(4, 1))


def test_numerics_profiles_set_and_restore_backend_flags():
    before = (torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark, torch.are_deterministic_algorithms_enabled())
    with numerics("fast"):
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.benchmark
        assert not torch.are_deterministic_algorithms_enabled()
    with numerics("verify"):
        assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
        assert torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.benchmark
    with numerics("bf16"):
        assert nn.Linear(4, 3)(torch.ones(2, 4)).dtype == torch.bfloat16
    assert (torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark,
            torch.are_deterministic_algorithms_enabled()) == before
    with pytest.raises(ConfigError, match="unknown numerics profile"):
        with numerics("fp8"):
            pass


def test_round_tf32_keeps_ten_mantissa_bits_ties_to_even():
    one = 1.0
    x = torch.tensor([one, one + 2 ** -10, one + 2 ** -11, one + 3 * 2 ** -11, -(one + 2 ** -12),
                      float("inf"), 3e-39])
    r = round_tf32(x)
    assert r[:5].tolist() == [one, one + 2 ** -10, one, one + 2 ** -9, -one]
    assert r[5].item() == float("inf") and torch.isnan(round_tf32(torch.tensor([float("nan")]))).all()
    y = torch.randn(10000)
    assert ((round_tf32(y) - y).abs() <= y.abs() * 2 ** -11).all()
    assert not torch.equal(round_tf32(y), y)


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


# --- verdicts -----------------------------------------------------------------------------------------


def _reference() -> Certificate:
    """Eight samples over 3 classes; samples 2 and 5 are near-ties (margin 1e-3 and 0)."""
    z = torch.tensor([[5.0, 1, 0], [0, 4, 1], [2.0, 1.998, 0], [0, 1, 3], [1, 6, 2],
                      [1.0, 1.0, 0], [0, 0, 9], [7, 1, 1]])
    return certify(z, tau=1e-2)


def test_compare_exact_tolerance_failed():
    ref = _reference()
    assert list(ref.near_ties()) == [2, 5]
    labels = ref.labels.copy()
    v = compare(ref, labels)
    assert v.status == "exact" and v.ok and v.message().startswith("exact: all 8")
    labels[[2, 5]] = [1, 1]
    v = compare(ref, labels)
    assert v.status == "tolerance" and list(v.near_tie_differing) == [2, 5] and not len(v.outside)
    assert "within numerical tolerance: 2 of 8" in v.message() and "2, 5" in v.message()
    labels[6] = 0
    v = compare(ref, labels)
    assert v.status == "failed" and not v.ok and list(v.outside) == [6] and list(v.differing) == [2, 5, 6]
    assert v.message().startswith("failed: 1 of 8") and "indices 6" in v.message()


def test_compare_new_margin_and_profile_tau():
    ref = _reference()
    labels = ref.labels.copy()
    labels[0] = 1  # confident in the reference (margin 0.8) ...
    assert compare(ref, labels).status == "failed"
    margins = np.full(8, 0.5, np.float32)
    margins[0] = 1e-3  # ... but a near-tie in the new evaluation: may differ
    assert compare(ref, labels, margins).status == "tolerance"
    labels = ref.labels.copy()
    labels[3] = 1  # margin (3-1)/3 ≈ 0.67: differs under any τ below it
    assert compare(ref, labels, profile="bf16").tau == max(ref.tau, TAU["bf16"])
    assert compare(ref, labels, tau=0.7).status == "tolerance" and compare(ref, labels, tau=0.6).status == "failed"
    with pytest.raises(VerificationError, match="certifies 8 samples"):
        compare(ref, labels[:7])


def test_compare_count_only():
    ref = _reference()  # 2 near-ties at its τ
    v = compare_count(100, 102, ref)
    assert v.status == "count only" and v.ok and "exact" not in v.message()
    assert "count only" in v.message() and "+2" in v.message()
    v = compare_count(100, 97, ref)
    assert v.status == "failed" and "count only" in v.message() and "-3" in v.message()
    assert compare_count(50, 50, 0, n=60, tau=1e-2).status == "count only"
    assert compare_count(50, 51, np.array([], np.int64), n=60, tau=1e-2).status == "failed"


# --- cross-profile re-evaluation of a small trained model -----------------------------------------------


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory) -> nn.Module:
    """A tiny_resnet whose scores are fitted to the digits training split, loaded folded from its
    checkpoint exactly as `rbzoo eval` loads it."""
    spec = rbzoo.data.get_spec("digits")
    ds = rbzoo.data.get_dataset("digits", "train", None)
    x, y = ds.tensors if isinstance(ds, TensorDataset) else map(torch.stack, zip(*ds))
    torch.manual_seed(0)
    model = rbzoo.create_model("tiny_resnet", num_classes=10, in_channels=1, mean=spec.mean, std=spec.std,
                               keep=0.5, p=0.5, seed=5, end_with_bn=True, score_init_scale=1.0).train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.05)
    for step in range(30):
        i = torch.arange(step * 256, step * 256 + 256) % len(x)
        loss = F.cross_entropy(model(x[i]), y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    for m in model.modules():  # exact BN statistics of the training data
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    with torch.no_grad():
        model(x)
    path = tmp_path_factory.mktemp("digits") / "digits.safetensors"
    rbzoo.save(model.eval(), path, metadata={"rbzoo.dataset": rbzoo.data.dataset_metadata("digits")})
    return rbzoo.load(path)


def _boundary_points(model: nn.Module, x: torch.Tensor, pairs: int = 24) -> torch.Tensor:
    """Points on segments between two differently-classified images, bisected (under the
    verification profile, all segments at once) to where the label changes: their top-2 margins
    are nearly zero."""
    with numerics("verify"), torch.no_grad():
        pred = model(x).argmax(1)
        a = x[:pairs]
        b = torch.stack([x[int(torch.nonzero(pred != pred[i])[i % 7])] for i in range(pairs)])
        lo, hi = torch.zeros(pairs, 1, 1, 1), torch.ones(pairs, 1, 1, 1)
        for _ in range(30):
            mid = (lo + hi) / 2
            same = (model((1 - mid) * a + mid * b).argmax(1) == pred[:pairs]).view(-1, 1, 1, 1)
            lo, hi = torch.where(same, mid, lo), torch.where(same, hi, mid)
        return (1 - lo) * a + lo * b


@pytest.fixture(scope="module")
def probe_set(digits_model) -> TensorDataset:
    """The digits test split plus 24 near-decision-boundary points (labelled 0: accuracy is not the
    point here, agreement between profiles is)."""
    test = rbzoo.data.get_dataset("digits", "test", None)
    x = torch.stack([test[i][0] for i in range(len(test))])
    edge = _boundary_points(digits_model, x)
    return ConcatDataset([test, TensorDataset(edge, torch.zeros(len(edge), dtype=torch.int64))])


def test_trained_model_is_accurate_and_certificate_matches_logits(digits_model, probe_set):
    ref = clean_accuracy(digits_model, probe_set, batch_size=64)
    assert ref.clean_correct / 360 > 0.8 and ref.profile == "verify"
    x = torch.stack([probe_set[i][0] for i in range(len(probe_set))])
    with numerics("verify"), torch.no_grad():
        z = digits_model(x)
    cert = ref.certificate()
    assert np.array_equal(cert.labels, ref.predictions) and cert.labels_sha256 == ref.predictions_sha256
    assert np.allclose(ref.margins, relative_margins(z).numpy(), rtol=1e-5, atol=1e-7)
    assert len(cert.near_ties(1e-4)) >= 20  # the boundary points
    bare = clean_accuracy(digits_model, probe_set, batch_size=64, margins=False)
    assert bare.margins is None and bare.predictions_sha256 == ref.predictions_sha256
    with pytest.raises(ConfigError):
        bare.certificate()


@pytest.mark.parametrize("profile", ["bf16", "tf32-emulated"])
def test_cross_profile_flips_only_near_ties(digits_model, probe_set, profile):
    """Re-evaluated under bf16 autocast or TF32 emulation, some boundary points flip; every flip is
    a near-tie, so the verdict is "tolerance", never "failed"."""
    ref = clean_accuracy(digits_model, probe_set, batch_size=64).certificate()
    if profile == "bf16":
        new = clean_accuracy(digits_model, probe_set, batch_size=64, profile="bf16").certificate()
    else:
        with tf32_emulated(copy.deepcopy(digits_model)) as m:
            new = clean_accuracy(m, probe_set, batch_size=64, profile="fast").certificate()
    v = compare(ref, new)
    assert v.status == "tolerance", v.message()
    assert len(v.differing) >= 1 and set(v.differing) <= set(range(360, len(probe_set)))
    assert v.tau == TAU[new.profile] and "within numerical tolerance" in v.message()


def test_one_changed_bn_value_fails(digits_model, probe_set):
    ref = clean_accuracy(digits_model, probe_set, batch_size=64).certificate()
    broken = copy.deepcopy(digits_model)
    last = [m for m in broken.modules() if isinstance(m, nn.BatchNorm2d)][-1]
    with torch.no_grad():
        last.running_mean[3] += 2.0  # one value of the logit BN: class 3's logit drops
    new = clean_accuracy(broken, probe_set, batch_size=64).certificate()
    v = compare(ref, new)
    assert v.status == "failed" and len(v.outside) >= 5
    assert (ref.labels[v.outside] == 3).all() and v.message().startswith("failed: ")
    assert compare(ref, new, profile="bf16").status == "failed"  # even under the widest τ


def test_certificate_states_its_near_ties_and_a_tampered_list_is_refused():
    margins = np.array([0.5, 5e-5, 0.2, 9e-5, 1e-3], dtype=np.float32)
    cert = Certificate(5, 10, np.array([1, 2, 3, 4, 5]), margins, 1e-4, "verify")
    d = cert.to_json()
    assert d["near_ties"] == [1, 3] and Certificate.from_json(d).near_ties().tolist() == [1, 3]
    for bad in ([1], [1, 3, 4], "1,3", [1, 3] * 10):
        with pytest.raises(VerificationError, match="near_ties"):
            Certificate.from_json(dict(d, near_ties=bad))


def test_profile_names_are_one_list():
    """cards and the CLI name the profiles without torch (rbzoo.constants); exact defines them."""
    from rbzoo.constants import NUMERICS_PROFILES
    from rbzoo.exact import PROFILE_DESCRIPTIONS

    assert tuple(PROFILE_DESCRIPTIONS) == NUMERICS_PROFILES == tuple(TAU)


def test_every_model_that_loads_can_be_certified(tmp_path):
    # One MAX_CLASSES bounds both the reader and the certificate: a 70,000-class model (over the
    # 16-bit labels a uint16 would hold) loads, evaluates and its certificate round-trips in 17 bits.
    from rbzoo.constants import MAX_CLASSES

    classes = 70_000
    model = rbzoo.create_model("tiny_resnet", num_classes=classes, in_channels=1, mean=(0.5,), std=(0.25,),
                               width=2, seed=3, keep=0.5)
    path = tmp_path / "wide.safetensors"
    rbzoo.save(model, path)
    net = rbzoo.load(path)
    x = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    data = TensorDataset(x, torch.tensor([0, 1, 69_999, 5, 6]))
    result = clean_accuracy(net, data, batch_size=5)
    d = json.loads(json.dumps(result.certificate().to_json()))
    assert result.num_classes == classes <= MAX_CLASSES and d["label_bits"] == label_bits(classes) == 17
    assert np.array_equal(Certificate.from_json(d).labels, result.predictions)
