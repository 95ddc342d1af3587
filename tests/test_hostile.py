"""Hostile checkpoint files: random and mutated safetensors headers and rbzoo metadata.

Every case must end in a one-line CheckpointError (or load unchanged), within a bounded time and
without a large allocation: the reader bounds each field the builder reads, builds its skeleton on
the meta device, and lets safetensors bound tensor sizes by the file's length.
"""

from __future__ import annotations

import json
import resource
import struct
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rbzoo
from rbzoo.checkpoint import read
from rbzoo.errors import CheckpointError

MAX_SECONDS = 2.0  # per case, generous for a loaded 2-core machine
MAX_GROWTH = 256 << 20  # peak RSS growth over the whole run, bytes


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    m = rbzoo.create_model("tiny_resnet", width=2, num_classes=3, in_channels=1, keep=0.5, end_with_bn=True, seed=5)
    path = tmp_path_factory.mktemp("hostile") / "small.safetensors"
    digest = rbzoo.save(m, path)
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return raw, json.loads(raw[8:8 + n]), raw[8 + n:], digest


def _file(header: dict, data: bytes) -> bytes:
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


def _check(path, data: bytes, digest: str) -> None:
    path.write_bytes(data)
    t0 = time.perf_counter()
    try:
        ck = read(path)
    except CheckpointError as e:
        assert "\n" not in str(e)
    else:  # a mutation that left the function intact (e.g. provenance metadata)
        assert ck.digest == digest
    assert time.perf_counter() - t0 < MAX_SECONDS


def _rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


HOSTILE_ARCH_VALUES = st.one_of(
    st.integers(min_value=-2**70, max_value=2**70), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20), st.booleans(), st.none(), st.lists(st.integers(-10, 10**9), max_size=5),
    st.just(100_000_000), st.just(10**12))
ARCH_FIELDS = st.sampled_from(["id", "num_classes", "in_channels", "mean", "std", "width", "end_with_bn",
                               "first_layer_dense", "last_layer_dense", "nonlinearity", "extra"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=ARCH_FIELDS, value=HOSTILE_ARCH_VALUES)
def test_hostile_arch_fields_are_bounded(small, tmp_path, field, value):
    raw, header, data, digest = small
    before = _rss()
    meta = dict(header["__metadata__"])
    arch = json.loads(meta["rbzoo.arch"])
    arch[field] = value
    try:
        meta["rbzoo.arch"] = json.dumps(arch, sort_keys=True, separators=(",", ":"), allow_nan=True)
    except ValueError:
        return
    _check(tmp_path / "a.safetensors", _file({**header, "__metadata__": meta}, data), digest)
    assert _rss() - before < MAX_GROWTH


METADATA_KEYS = st.sampled_from(["rbzoo.format", "rbzoo.arch", "rbzoo.signs", "rbzoo.seed", "rbzoo.layers",
                                 "rbzoo.weights_sha256", "rbzoo.model_sha256", "rbzoo.train", "other"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=METADATA_KEYS, value=st.one_of(st.text(max_size=200), st.just("[" * 5000), st.just('{"a":' * 3000),
                                           st.just("1" * 5000), st.just('[{"name":"conv1.weight","shape":[1e30],"kept":1}]')))
def test_hostile_metadata_values(small, tmp_path, key, value):
    raw, header, data, digest = small
    meta = {**header["__metadata__"], key: value}
    _check(tmp_path / "m.safetensors", _file({**header, "__metadata__": meta}, data), digest)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(["conv1.weight.mask", "bn1.running_mean", "last.running_var", "fc.weight.mask"]),
       dtype=st.sampled_from(["U8", "F32", "F64", "I64", "BF16", "XX"]),
       shape=st.lists(st.integers(0, 2**40), max_size=4),
       offsets=st.tuples(st.integers(0, 2**63), st.integers(0, 2**63)))
def test_hostile_tensor_entries(small, tmp_path, name, dtype, shape, offsets):
    raw, header, data, digest = small
    before = _rss()
    entry = {"dtype": dtype, "shape": shape, "data_offsets": list(offsets)}
    _check(tmp_path / "t.safetensors", _file({**header, name: entry}, data), digest)
    assert _rss() - before < MAX_GROWTH


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(blob=st.binary(max_size=600), length=st.one_of(st.none(), st.integers(0, 2**64 - 1)))
def test_random_bytes_and_header_lengths(small, tmp_path, blob, length):
    *_, digest = small
    data = (struct.pack("<Q", length) + blob) if length is not None else blob
    _check(tmp_path / "r.safetensors", data, digest)


def test_the_200_byte_file_that_asked_for_204_gb(tmp_path):
    """The issue's case: rbzoo.arch says num_classes 100,000,000 → one line, nothing allocated."""
    arch = {"id": "cifar_resnet50", "num_classes": 100_000_000, "in_channels": 3, "mean": [0.5] * 3,
            "std": [0.5] * 3, "end_with_bn": False, "first_layer_dense": False, "last_layer_dense": False,
            "nonlinearity": "relu"}
    meta = {"rbzoo.format": "1", "rbzoo.arch": json.dumps(arch, sort_keys=True, separators=(",", ":")),
            "rbzoo.signs": "explicit", "rbzoo.layers": "[]", "rbzoo.weights_sha256": "0" * 64,
            "rbzoo.model_sha256": "0" * 64}
    path = tmp_path / "evil.safetensors"
    before = _rss()
    t0 = time.perf_counter()
    path.write_bytes(_file({"__metadata__": meta}, b""))
    with pytest.raises(CheckpointError, match="num_classes must be an integer in"):
        read(path)
    assert time.perf_counter() - t0 < MAX_SECONDS and _rss() - before < MAX_GROWTH


def test_read_builds_its_skeleton_on_the_meta_device(tmp_path, monkeypatch):
    """read() learns shapes from a meta-device network: no float weights or scores are allocated
    (a ResNet50's would be ~190 MB on every read)."""
    m = rbzoo.create_model("imagenet_resnet50", num_classes=100, keep=0.01, p=0.1, end_with_bn=True, seed=1)
    path = tmp_path / "r50.safetensors"
    rbzoo.save(m, path)
    built = []
    real = rbzoo.checkpoint.create_model_from_arch

    def spy(arch, **kwargs):
        net = real(arch, **kwargs)
        built.append({t.device.type for t in [*net.parameters(), *net.buffers()]})
        return net

    monkeypatch.setattr(rbzoo.checkpoint, "create_model_from_arch", spy)
    ck = read(path)
    assert built == [{"meta"}] and len(ck.layers) == len(m.prunable_keys)
