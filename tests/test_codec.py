"""Tests for the golomb-gaps v1 mask codec (format.md §3)."""

from __future__ import annotations

import math
import time
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rbzoo.codec import (
    HEADER_SIZE,
    _blob_from_gaps,
    _encode_streams,
    _gaps_from_positions,
    coded_bits,
    decode_mask,
    encode_mask,
    entropy_bound_bits,
    pack_bits,
)
from rbzoo.errors import CodecError


# ------------------------------------------------------------------------------------ helpers


def _encode_with_m(positions: np.ndarray, m: int) -> bytes:
    """Streams A | B | C (no header) for ascending coded ``positions`` with a pinned ``m``."""
    return b"".join(_encode_streams(_gaps_from_positions(positions), int(m)))


def _build_blob(positions: np.ndarray, m: int, complemented: bool) -> bytes:
    """Whole blob (header + streams) for ascending coded ``positions`` with a pinned ``m``."""
    return _blob_from_gaps(_gaps_from_positions(positions), m, complemented)


def _random_mask(n: int, density: float, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random(n) < density


def _exact_mask(n: int, k: int, seed: int) -> np.ndarray:
    mask = np.zeros(n, dtype=bool)
    mask[np.random.default_rng(seed).choice(n, k, replace=False)] = True
    return mask


def _header(blob: bytes) -> tuple[int, int, int, int]:
    return (
        blob[0],
        blob[1],
        int.from_bytes(blob[2:10], "little"),
        int.from_bytes(blob[10:18], "little"),
    )


def _with_header(blob: bytes, *, version=None, flags=None, k=None, m=None) -> bytes:
    v0, f0, k0, m0 = _header(blob)
    head = (
        bytes([v0 if version is None else version, f0 if flags is None else flags])
        + (k0 if k is None else k).to_bytes(8, "little")
        + (m0 if m is None else m).to_bytes(8, "little")
    )
    return head + blob[HEADER_SIZE:]


def _roundtrip(mask: np.ndarray) -> bytes:
    blob = encode_mask(mask)
    flat = np.asarray(mask, dtype=bool).reshape(-1)
    out = decode_mask(blob, flat.size, expected_kept=int(flat.sum()))
    assert out.dtype == np.bool_ and out.shape == (flat.size,)
    np.testing.assert_array_equal(out, flat)
    return blob


def _stream_lengths(k: int, m: int, gaps: np.ndarray) -> tuple[int, int, int]:
    a, b, c = _encode_streams(gaps, m)
    return len(a), len(b), len(c)


# ------------------------------------------------------------------------ spec test vector


def test_spec_test_vector_streams():
    positions = np.array([3, 10, 11, 40])
    gaps = _gaps_from_positions(positions)
    assert gaps.tolist() == [3, 6, 0, 28]
    a, b, c = _encode_streams(gaps, 5)
    assert (a.hex(), b.hex(), c.hex()) == ("c7", "00", "0d02")
    assert _encode_with_m(positions, 5) == bytes.fromhex("c7000d02")


def test_spec_test_vector_decodes():
    positions = [3, 10, 11, 40]
    blob = _build_blob(np.array(positions), 5, complemented=False)
    assert blob[HEADER_SIZE:] == bytes.fromhex("c7000d02")
    out = decode_mask(blob, 64, expected_kept=4)
    assert np.flatnonzero(out).tolist() == positions


def test_header_layout():
    mask = np.zeros(64, dtype=bool)
    mask[[3, 10, 11, 40]] = True
    blob = encode_mask(mask)
    version, flags, k, m = _header(blob)
    assert (version, flags, k) == (1, 0, 4)
    assert m >= 1
    assert blob[:2] == b"\x01\x00"
    assert blob[2:10] == (4).to_bytes(8, "little")
    assert blob[10:18] == m.to_bytes(8, "little")
    assert blob[HEADER_SIZE:] == _encode_with_m(np.array([3, 10, 11, 40]), m)
    # complemented: the coded positions are the zeros
    blob_c = encode_mask(~mask)
    version, flags, k, m = _header(blob_c)
    assert (version, flags, k) == (1, 1, 4)
    assert blob_c[HEADER_SIZE:] == _encode_with_m(np.array([3, 10, 11, 40]), m)
    assert np.array_equal(decode_mask(blob_c, 64, expected_kept=60), ~mask)


def test_empty_streams_occupy_zero_bytes():
    # k = 0: header only
    assert encode_mask(np.zeros(100, dtype=bool)) == _build_blob(np.array([], int), 1, False)
    assert len(encode_mask(np.zeros(100, dtype=bool))) == HEADER_SIZE
    assert len(encode_mask(np.ones(100, dtype=bool))) == HEADER_SIZE  # complemented, k = 0
    gaps = np.array([0, 5, 1, 2])
    # m = 1: no A or B stream, the payload is C alone
    assert _stream_lengths(4, 1, gaps)[:2] == (0, 0)
    # m = 2: b = 1 so A has 0 bits per gap; c = 0 so every gap has a B bit
    assert _stream_lengths(4, 2, gaps) == (0, 1, _stream_lengths(4, 2, gaps)[2])
    # m = 3: b = 2, c = 1; gaps 0 (r=0 < c) -> no B bit; A has 1 bit per gap
    a, b, _ = _encode_streams(np.array([0, 3, 6]), 3)  # all r = 0 -> B empty
    assert len(a) == 1 and b == b""


def test_encode_accepts_any_shape_and_01():
    rng = np.random.default_rng(3)
    mask = rng.random((4, 5, 3, 3)) < 0.3
    blob = encode_mask(mask)
    assert blob == encode_mask(mask.astype(np.uint8)) == encode_mask(mask.ravel())
    np.testing.assert_array_equal(decode_mask(blob, mask.size), mask.ravel())  # C order
    with pytest.raises(CodecError):
        encode_mask(np.array([0, 1, 2]))


# --------------------------------------------------------------------------- edge cases


@pytest.mark.parametrize("value", [False, True])
def test_n1(value):
    blob = _roundtrip(np.array([value]))
    assert len(blob) == HEADER_SIZE  # k = 0 either way (complemented when value is True)


def test_n1_blobs():
    assert _header(encode_mask(np.array([True])))[1:3] == (1, 0)  # complemented, k = 0
    assert _header(encode_mask(np.array([False])))[1:3] == (0, 0)
    assert len(encode_mask(np.array([True]))) == HEADER_SIZE


def test_n0():
    blob = encode_mask(np.zeros(0, dtype=bool))
    assert len(blob) == HEADER_SIZE
    assert decode_mask(blob, 0).shape == (0,)


@pytest.mark.parametrize("n", [1, 2, 7, 8, 9, 1000])
def test_all_zeros_all_ones(n):
    _roundtrip(np.zeros(n, dtype=bool))
    _roundtrip(np.ones(n, dtype=bool))
    assert _header(encode_mask(np.ones(n, dtype=bool)))[1:] == (1, 0, 1)
    assert _header(encode_mask(np.zeros(n, dtype=bool)))[1:] == (0, 0, 1)


@pytest.mark.parametrize("n", [1, 2, 63, 64, 65, 1000, 100_000])
@pytest.mark.parametrize("where", ["first", "last", "middle"])
def test_single_one_and_single_zero(n, where):
    i = {"first": 0, "last": n - 1, "middle": n // 2}[where]
    mask = np.zeros(n, dtype=bool)
    mask[i] = True
    _roundtrip(mask)
    _roundtrip(~mask)


def test_half_kept_is_not_complemented():
    mask = np.zeros(10, dtype=bool)
    mask[:5] = True
    assert _header(encode_mask(mask))[1] == 0
    mask[5] = True
    assert _header(encode_mask(mask))[1] == 1


@pytest.mark.parametrize("density", [0.0, 0.001, 0.01, 0.05, 0.2, 0.4, 0.5, 0.6, 0.9, 0.99, 1.0])
def test_densities(density):
    mask = _random_mask(20_000, density, seed=int(density * 1000))
    blob = _roundtrip(mask)
    assert _header(blob)[1] == (1 if 2 * mask.sum() > mask.size else 0)


@pytest.mark.parametrize("m", [1, 2, 3, 4, 5, 7, 8, 16, 31, 32, 33, 1000, 1024, 4097])
@pytest.mark.parametrize("complemented", [False, True])
def test_pinned_m_roundtrip(m, complemented):
    n = 5000
    mask = _random_mask(n, 0.03, seed=m)
    mask[[0, n - 1]] = True
    coded = ~mask if complemented else mask
    blob = _build_blob(np.flatnonzero(coded), m, complemented)
    assert _header(blob) == (1, int(complemented), int(coded.sum()), m)
    np.testing.assert_array_equal(decode_mask(blob, n, expected_kept=int(mask.sum())), mask)


@pytest.mark.parametrize("m", [101, 102, 1 << 20, 1 << 40, 1 << 62])
def test_m_larger_than_n_is_accepted(m):
    n = 100
    positions = np.array([0, 17, 18, 99])
    blob = _build_blob(positions, m, False)
    assert np.flatnonzero(decode_mask(blob, n)).tolist() == positions.tolist()


def test_power_of_two_m_every_gap_has_b_bit():
    gaps = np.array([0, 1, 2, 3, 9, 100])
    a, b, c = _encode_streams(gaps, 4)  # b = 2, c = 0: 1 A bit + 1 B bit per gap
    assert len(a) == 1 and len(b) == 1


def test_ndarray_blob_input():
    mask = _random_mask(3000, 0.05, seed=1)
    blob = encode_mask(mask)
    arr = np.frombuffer(blob, dtype=np.uint8).copy()
    np.testing.assert_array_equal(decode_mask(arr, 3000), mask)
    with pytest.raises(CodecError):
        decode_mask(arr.astype(np.int32), 3000)


def test_encoder_picks_best_m_near_gvv():
    mask = _exact_mask(100_000, 1000, seed=5)
    blob = encode_mask(mask)
    m = _header(blob)[3]
    gaps = _gaps_from_positions(np.flatnonzero(mask))
    best = len(blob) - HEADER_SIZE
    for other in range(max(1, m // 2), 2 * m + 3):
        assert sum(_stream_lengths(1000, other, gaps)) >= best


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(1, 10**5),
    density=st.one_of(st.floats(0.0, 1.0), st.sampled_from([0.0, 1.0, 0.5, 0.001, 0.999])),
    seed=st.integers(0, 2**32 - 1),
    clustered=st.booleans(),
)
def test_roundtrip_property(n, density, seed, clustered):
    if clustered:  # runs of ones and zeros, stressing very long and very short gaps
        rng = np.random.default_rng(seed)
        flips = np.zeros(n, dtype=bool)
        flips[rng.integers(0, n, size=max(1, int(density * 50)))] = True
        mask = np.logical_xor.accumulate(flips)
    else:
        mask = _random_mask(n, density, seed)
    _roundtrip(mask)


# -------------------------------------------------------------------------- malformed blobs


@pytest.fixture
def sample():
    n = 4000
    mask = _exact_mask(n, 60, seed=11)
    return encode_mask(mask), n, mask


def test_reject_truncated_header(sample):
    blob, n, _ = sample
    for cut in range(HEADER_SIZE):
        with pytest.raises(CodecError, match="truncated"):
            decode_mask(blob[:cut], n)


def test_reject_truncated_streams(sample):
    blob, n, _ = sample
    for cut in range(HEADER_SIZE, len(blob)):
        with pytest.raises(CodecError):
            decode_mask(blob[:cut], n)


@pytest.mark.parametrize("version", [0, 2, 255])
def test_reject_version(sample, version):
    blob, n, _ = sample
    with pytest.raises(CodecError, match="version"):
        decode_mask(_with_header(blob, version=version), n)


@pytest.mark.parametrize("flags", [2, 3, 0x80, 0xFF])
def test_reject_unknown_flags(sample, flags):
    blob, n, _ = sample
    with pytest.raises(CodecError, match="flag"):
        decode_mask(_with_header(blob, flags=flags), n)


@pytest.mark.parametrize("extra", [b"\x00", b"\x00\x00\x00", b"\x01", b"\xff"])
def test_reject_trailing_bytes(sample, extra):
    blob, n, _ = sample
    with pytest.raises(CodecError):
        decode_mask(blob + extra, n)
    with pytest.raises(CodecError, match="trailing"):
        decode_mask(encode_mask(np.zeros(n, dtype=bool)) + extra, n)


def test_reject_nonzero_c_padding():
    # one one-bit past the k-th unary end, inside the last byte
    blob = _build_blob(np.array([0]), 1, False)  # C = 0x01
    assert blob[HEADER_SIZE:] == b"\x01"
    with pytest.raises(CodecError, match="too many"):
        decode_mask(blob[:-1] + b"\x03", 10)


def test_reject_nonzero_a_b_padding():
    blob = _build_blob(np.array([3, 10, 11, 40]), 5, False)  # A = c7, B = 00 (2 bits used)
    body = bytearray(blob)
    body[HEADER_SIZE + 1] |= 0x80  # B padding bit
    with pytest.raises(CodecError, match="padding"):
        decode_mask(bytes(body), 64)
    blob = _build_blob(np.array([3, 10, 11]), 5, False)  # A = 6 bits, 2 padding bits
    body = bytearray(blob)
    body[HEADER_SIZE] |= 0x80
    with pytest.raises(CodecError, match="padding"):
        decode_mask(bytes(body), 64)


def test_reject_k_greater_than_n(sample):
    blob, n, _ = sample
    with pytest.raises(CodecError, match="k="):
        decode_mask(blob, 59)  # k = 60
    with pytest.raises(CodecError, match="k="):
        decode_mask(_with_header(blob, k=n + 1), n)


def test_reject_too_few_unary_ends(sample):
    blob, n, _ = sample
    body = bytearray(blob)
    last = len(body) - 1
    body[last] &= body[last] - 1  # clear the lowest one-bit of the last byte
    if body[last] == 0:
        body = body[:-1]
    with pytest.raises(CodecError):
        decode_mask(bytes(body), n)
    with pytest.raises(CodecError):
        decode_mask(_with_header(blob, k=61), n)
    # m = 1 (payload is C alone): exact diagnosis
    blob1 = _build_blob(np.array([0, 9, 10, 30]), 1, False)
    with pytest.raises(CodecError, match="too few"):
        decode_mask(_with_header(blob1, k=5), 64)
    blob5 = _build_blob(np.array([3, 10, 11, 40]), 5, False)
    with pytest.raises(CodecError, match="too few"):
        decode_mask(blob5[:-1] + b"\x00", 64)  # last unary end cleared, zero byte left


def test_reject_too_many_unary_ends(sample):
    blob, n, _ = sample
    with pytest.raises(CodecError):
        decode_mask(_with_header(blob, k=59), n)
    # set a zero bit inside C
    body = bytearray(blob)
    c_last = len(body) - 1
    for bit in range(8):
        if not body[c_last - 1] >> bit & 1:
            body[c_last - 1] |= 1 << bit
            break
    with pytest.raises(CodecError):
        decode_mask(bytes(body), n)
    blob1 = _build_blob(np.array([0, 9, 10, 30]), 1, False)
    with pytest.raises(CodecError, match="too many"):
        decode_mask(_with_header(blob1, k=3), 64)
    blob5 = _build_blob(np.array([3, 10, 11, 40]), 5, False)  # C = 0d02
    with pytest.raises(CodecError, match="too many"):
        decode_mask(blob5[:-2] + b"\x0f\x02", 64)


def test_reject_index_ge_n():
    positions = np.array([5, 20, 99])
    for m in (1, 2, 3, 8, 50, 1000):
        blob = _build_blob(positions, m, False)
        assert np.flatnonzero(decode_mask(blob, 100)).tolist() == [5, 20, 99]
        for n in (99, 50, 21, 3):
            with pytest.raises(CodecError, match="index"):
                decode_mask(blob, n)


def test_reject_expected_kept_mismatch(sample):
    blob, n, mask = sample
    kept = int(mask.sum())
    decode_mask(blob, n, expected_kept=kept)
    for bad in (kept - 1, kept + 1, 0, n):
        with pytest.raises(CodecError, match="kept|declared"):
            decode_mask(blob, n, expected_kept=bad)
    blob_c = encode_mask(~mask)
    decode_mask(blob_c, n, expected_kept=n - kept)
    with pytest.raises(CodecError):
        decode_mask(blob_c, n, expected_kept=kept)


@pytest.mark.parametrize("m", [0, (1 << 62) + 1, (1 << 64) - 1])
def test_reject_bad_m(sample, m):
    blob, n, _ = sample
    with pytest.raises(CodecError, match="m="):
        decode_mask(_with_header(blob, m=m), n)


@pytest.mark.parametrize(
    "k, n", [(2**60, 2**61), (2**62, 2**63), (2**49, 2**50), (10**9, 10**9), (2**64 - 1, 10**6)]
)
def test_reject_huge_k_without_allocating(sample, k, n):
    blob, _, _ = sample
    tracemalloc.start()
    try:
        t0 = time.perf_counter()
        with pytest.raises(CodecError):
            decode_mask(_with_header(blob, k=k), n)
        assert time.perf_counter() - t0 < 0.5
        assert tracemalloc.get_traced_memory()[1] < 1 << 20
    finally:
        tracemalloc.stop()


def test_huge_m_with_large_width_rejected_cheaply(sample):
    blob, n, _ = sample
    with pytest.raises(CodecError, match="too short"):
        decode_mask(_with_header(blob, m=1 << 61), n)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(1, 3000),
    density=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**32 - 1),
    pinned_m=st.one_of(st.none(), st.sampled_from([1, 2, 3, 4, 5, 8, 17, 64, 1000, 1 << 20])),
    flips=st.lists(
        st.one_of(st.integers(0, 8 * HEADER_SIZE - 1), st.integers(0, 10**6)),
        min_size=1,
        max_size=4,
    ),
    cut=st.integers(-3, 3),
    declared_n=st.one_of(st.none(), st.integers(0, 6000)),
    use_expected=st.booleans(),
)
def test_bit_flips_never_crash(
    n, density, seed, pinned_m, flips, cut, declared_n, use_expected
):
    """Corrupted blobs raise CodecError or decode to a length-n bool mask; nothing else.

    Whatever does decode is canonical: re-encoding it with the header's m and flag gives back
    exactly the same bytes (so the decoder accepts no padding/trailing garbage).
    """
    mask = _random_mask(n, density, seed)
    if pinned_m is None:
        body = bytearray(encode_mask(mask))
    else:
        body = bytearray(_build_blob(np.flatnonzero(mask), pinned_m, False))
    for f in flips:
        f %= 8 * len(body)
        body[f >> 3] ^= 1 << (f & 7)
    if cut < 0:
        body = body[:cut]
    elif cut > 0:
        body += bytes(np.random.default_rng(seed).integers(0, 256, cut, dtype=np.uint8))
    blob = bytes(body)
    n_dec = n if declared_n is None else declared_n
    tracemalloc.start()
    try:
        t0 = time.perf_counter()
        try:
            out = decode_mask(blob, n_dec, int(mask.sum()) if use_expected else None)
        except CodecError as exc:
            out = None
            assert str(exc) and "\n" not in str(exc)
        assert time.perf_counter() - t0 < 1.0
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * len(blob) + 64 * n_dec + (1 << 16)
    if out is not None:
        assert out.dtype == np.bool_ and out.shape == (n_dec,)
        _, flags, k, m = _header(blob)
        coded = ~out if flags & 1 else out
        assert int(coded.sum()) == k
        assert _build_blob(np.flatnonzero(coded), m, bool(flags & 1)) == blob


# ------------------------------------------------------------------------------------ sizes


def test_entropy_bound_bits():
    assert entropy_bound_bits(10, 0) == 0.0
    assert entropy_bound_bits(10, 10) == pytest.approx(0.0, abs=1e-9)
    assert entropy_bound_bits(10, 3) == pytest.approx(math.log2(120))
    assert entropy_bound_bits(1000, 17) == pytest.approx(math.log2(math.comb(1000, 17)))
    with pytest.raises(ValueError):
        entropy_bound_bits(5, 6)


def test_pack_bits_is_lsb_first_and_flat():
    bits = [1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1]  # byte 0: bit 0 set; byte 1: bits 1 and 2 set, zero-padded
    assert pack_bits(np.array(bits, dtype=np.uint8)) == b"\x01\x06"
    assert pack_bits(np.array(bits, dtype=bool).reshape(1, 11)) == b"\x01\x06"
    assert pack_bits(np.zeros(0, dtype=bool)) == b""
    assert pack_bits(np.ones((3, 3), dtype=bool)) == b"\xff\x01"


def test_coded_bits():
    blob = encode_mask(_random_mask(1000, 0.1, 0))
    assert coded_bits(blob) == 8 * len(blob)
    assert coded_bits(np.frombuffer(blob, np.uint8)) == 8 * len(blob)


@pytest.mark.parametrize("n, density", [(589_824, 0.0108), (2_359_296, 0.0031)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_size_bound_layers(n, density, seed):
    mask = _random_mask(n, density, seed)
    blob = _roundtrip(mask)
    assert coded_bits(blob) <= 1.01 * entropy_bound_bits(n, int(mask.sum()))


@pytest.mark.parametrize("density", [0.005, 0.01, 0.02, 0.05, 0.1])
def test_size_bound_densities(density):
    n = 2_359_296
    k = int(density * n)
    mask = _exact_mask(n, k, seed=7)
    assert coded_bits(encode_mask(mask)) <= 1.01 * entropy_bound_bits(n, k)


def _resnet34_shapes(num_classes: int = 10) -> list[tuple[int, ...]]:
    shapes: list[tuple[int, ...]] = [(64, 3, 3, 3)]
    cin = 64
    for cout, blocks, stride in [(64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)]:
        for i in range(blocks):
            shapes += [(cout, cin, 3, 3), (cout, cout, 3, 3)]
            if i == 0 and (stride != 1 or cin != cout):
                shapes.append((cout, cin, 1, 1))
            cin = cout
    shapes.append((num_classes, 512))
    return shapes


def _erk_densities(shapes, density: float) -> np.ndarray:
    sizes = np.array([math.prod(s) for s in shapes], dtype=float)
    raw = np.array([sum(s) / math.prod(s) for s in shapes])
    dense = np.zeros(len(shapes), dtype=bool)
    while True:
        c = (density * sizes.sum() - sizes[dense].sum()) / (raw * sizes)[~dense].sum()
        d = np.where(dense, 1.0, c * raw)
        if (d <= 1).all():
            return d
        dense |= d > 1


def test_size_bound_resnet34_network():
    """Whole CIFAR ResNet34 at 1% (ERK, first and last layer fully kept): ≤ 1.01 × Σ log2 C."""
    shapes = _resnet34_shapes()
    assert len(shapes) == 37
    dens = _erk_densities(shapes, 0.01)
    dens[0] = dens[-1] = 1.0  # fully kept layers cost one header each
    rng = np.random.default_rng(0)
    total_bits, bound, blobs = 0, 0.0, []
    for shape, p in zip(shapes, dens):
        n = math.prod(shape)
        k = int(round(p * n))
        mask = np.zeros(n, dtype=bool)
        mask[rng.choice(n, k, replace=False)] = True
        blob = encode_mask(mask.reshape(shape))
        blobs.append((blob, n, k, mask))
        total_bits += coded_bits(blob)
        bound += entropy_bound_bits(n, k)
    assert total_bits <= 1.01 * bound
    for blob, n, k, mask in blobs:
        np.testing.assert_array_equal(decode_mask(blob, n, expected_kept=k), mask)
    t0 = time.perf_counter()
    for blob, n, k, _ in blobs:
        decode_mask(blob, n, expected_kept=k)
    assert time.perf_counter() - t0 < 0.5  # ~5 ms expected; generous for loaded CI machines
