"""rbzoo.exact: numerics profiles, bit packing, margins, and a cross-profile re-evaluation of a small
trained digits model judged by rbzoo.verdict (whose own rules are tested in test_verdict.py)."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import ConcatDataset, TensorDataset

import rbzoo
import rbzoo.data
from rbzoo.errors import ConfigError, VerificationError
from rbzoo.exact import (clean_accuracy, label_bits, numerics, pack_uint, relative_margins, round_tf32,
                         tf32_emulated, unpack_uint)
from rbzoo.verdict import TAU, Certificate, compare


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
    cert = Certificate.of(ref)
    assert np.array_equal(cert.labels, ref.predictions) and cert.labels_sha256 == ref.predictions_sha256
    assert np.allclose(ref.margins, relative_margins(z).numpy(), rtol=1e-5, atol=1e-7)
    assert len(cert.near_ties(1e-4)) >= 20  # the boundary points
    bare = clean_accuracy(digits_model, probe_set, batch_size=64, margins=False)
    assert bare.margins is None and bare.predictions_sha256 == ref.predictions_sha256
    with pytest.raises(VerificationError):
        Certificate.of(bare)


@pytest.mark.parametrize("profile", ["bf16", "tf32-emulated"])
def test_cross_profile_flips_only_near_ties(digits_model, probe_set, profile):
    """Re-evaluated under bf16 autocast or TF32 emulation, some boundary points flip; every flip is
    a near-tie, so the verdict is "tolerance", never "failed"."""
    ref = Certificate.of(clean_accuracy(digits_model, probe_set, batch_size=64))
    if profile == "bf16":
        new = Certificate.of(clean_accuracy(digits_model, probe_set, batch_size=64, profile="bf16"))
    else:
        with tf32_emulated(copy.deepcopy(digits_model)) as m:
            new = Certificate.of(clean_accuracy(m, probe_set, batch_size=64, profile="fast"))
    v = compare(ref, new)
    assert v.status == "tolerance", v.message()
    assert len(v.differing) >= 1 and set(v.differing) <= set(range(360, len(probe_set)))
    assert v.tau == TAU[new.profile] and "within numerical tolerance" in v.message()


def test_one_changed_bn_value_fails(digits_model, probe_set):
    ref = Certificate.of(clean_accuracy(digits_model, probe_set, batch_size=64))
    broken = copy.deepcopy(digits_model)
    last = [m for m in broken.modules() if isinstance(m, nn.BatchNorm2d)][-1]
    with torch.no_grad():
        last.running_mean[3] += 2.0  # one value of the logit BN: class 3's logit drops
    new = Certificate.of(clean_accuracy(broken, probe_set, batch_size=64))
    v = compare(ref, new)
    assert v.status == "failed" and len(v.outside) >= 5
    assert (ref.labels[v.outside] == 3).all() and v.message().startswith("failed: ")
    as_bf16 = Certificate(new.n, new.num_classes, new.labels, new.margins, "bf16")
    assert compare(ref, as_bf16).status == "failed"  # even under the widest τ


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
    d = json.loads(json.dumps(Certificate.of(result).to_json()))
    assert result.num_classes == classes <= MAX_CLASSES and d["label_bits"] == label_bits(classes) == 17
    assert np.array_equal(Certificate.from_json(d).labels, result.predictions)
