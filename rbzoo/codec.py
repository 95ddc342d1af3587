"""Mask codec: ``golomb-gaps`` v1 (format.md §3).

A layer's boolean keep-mask (flattened in C order, ``n`` elements) is stored as one byte blob::

    offset 0   u8   version = 1
    offset 1   u8   flags: bit0 = complemented (coded positions are the ZEROS of the mask)
    offset 2   u64  k = number of coded positions (little-endian)
    offset 10  u64  m = Golomb parameter (little-endian), m >= 1
    offset 18  stream A | stream B | stream C, each zero-padded to a whole byte

The gaps between consecutive coded positions are Golomb coded with parameter ``m``: the
quotient in unary (stream C), the remainder in truncated binary, split over a fixed-width part
(stream A, ``b - 1`` bits per gap) and an optional extra bit (stream B). All bits are LSB first.

Conventions this implementation fixes where the spec leaves room (all consistent with it):

* A stream of zero bits occupies zero bytes (so with ``m = 2`` stream A is empty, with ``m = 1``
  A and B are empty, and with ``k = 0`` the blob is the 18-byte header alone).
* Canonical form only: padding bits of A and B must be zero, and C must end with the byte that
  holds its k-th one-bit (anything after it, or any one-bit after it, is trailing garbage).
* ``m`` may exceed ``n`` (then every quotient must be 0), but ``m > 2**62`` is rejected: no
  mask that fits in memory can need it, and the bound keeps all arithmetic in int64.
* ``n`` must be below ``2**52`` (a mask that size cannot be allocated anyway).

Every malformed blob raises :class:`~rbzoo.errors.CodecError` before anything proportional to
the header's ``k`` is allocated; the decoder only allocates in proportion to the blob length and
to the caller-declared ``n``.
"""

from __future__ import annotations

import math

import numpy as np

from .errors import CodecError

__all__ = [
    "VERSION",
    "HEADER_SIZE",
    "encode_mask",
    "decode_mask",
    "coded_bits",
    "entropy_bound_bits",
    "pack_bits",
]

VERSION = 1
HEADER_SIZE = 18
FLAG_COMPLEMENTED = 0x01
MAX_M = 1 << 62
MAX_N = 1 << 52

_LN2 = math.log(2.0)
_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)  # numpy < 2 too


# --------------------------------------------------------------------------------------------
# helpers


def _params(m: int) -> tuple[int, int]:
    """Return ``(b, c)`` for Golomb parameter m: b = bit length of m-1, c = 2**b - m."""
    b = (m - 1).bit_length()
    return b, (1 << b) - m


def _nbytes(nbits: int) -> int:
    return (nbits + 7) >> 3


def pack_bits(bits: np.ndarray) -> bytes:
    """Pack a 0/1 (or bool) array, flattened, 8 bits a byte, least significant bit first (the
    "little" bit order of every packed stream in format.md); an empty array packs to zero bytes."""
    bits = np.asarray(bits)
    if bits.size == 0:
        return b""
    return np.packbits(bits.astype(np.uint8, copy=False).reshape(-1), bitorder="little").tobytes()


def _field_dtype(width: int) -> np.dtype:
    """Smallest little-endian unsigned dtype holding a ``width``-bit field (width <= 64)."""
    for size in (1, 2, 4, 8):
        if width <= 8 * size:
            return np.dtype(f"<u{size}")
    raise AssertionError(width)


def _fields_to_bits(v: np.ndarray, width: int) -> np.ndarray:
    """(k,) non-negative ints < 2**width -> (k, width) uint8 bits, least significant first."""
    as_bytes = v.astype(_field_dtype(width)).view(np.uint8).reshape(v.size, -1)
    return np.unpackbits(as_bytes, axis=1, count=width, bitorder="little")


def _gaps_from_positions(positions: np.ndarray) -> np.ndarray:
    pos = np.asarray(positions, dtype=np.int64).ravel()
    if pos.size == 0:
        return pos
    gaps = np.empty_like(pos)
    gaps[0] = pos[0]
    np.subtract(pos[1:], pos[:-1], out=gaps[1:])
    gaps -= 1
    gaps[0] += 1
    if gaps.min() < 0:
        raise CodecError("coded positions must be distinct, ascending and non-negative")
    return gaps


def _encode_streams(gaps: np.ndarray, m: int) -> tuple[bytes, bytes, bytes]:
    """Golomb-code ``gaps`` (int64, all >= 0) with parameter ``m``; return streams (A, B, C)."""
    if not 1 <= m <= MAX_M:
        raise CodecError(f"Golomb parameter m={m} out of range [1, 2**62]")
    k = gaps.size
    if m == 1:
        q = gaps
        a = b_ = b""
    else:
        q, r = np.divmod(gaps, np.int64(m))
        b, c = _params(m)
        big = r >= c
        v = np.where(big, (r + c) >> 1, r)
        width = b - 1
        if width > 0 and k > 0:
            a = pack_bits(_fields_to_bits(v, width).ravel())
        else:
            a = b""
        b_ = pack_bits(((r[big] + c) & 1).astype(np.uint8))
    # stream C: q zeros then a one, for every gap; the one-bits sit at cumsum(q + 1) - 1
    if k:
        ends = np.cumsum(q + 1) - 1
        c_bits = np.zeros(int(ends[-1]) + 1, dtype=np.uint8)
        c_bits[ends] = 1
        c_stream = pack_bits(c_bits)
    else:
        c_stream = b""
    return a, b_, c_stream


def _blob_from_gaps(gaps: np.ndarray, m: int, complemented: bool) -> bytes:
    header = (
        bytes([VERSION, FLAG_COMPLEMENTED if complemented else 0])
        + int(gaps.size).to_bytes(8, "little")
        + int(m).to_bytes(8, "little")
    )
    return header + b"".join(_encode_streams(gaps, int(m)))


def _gvv_m(k: int, n: int) -> int:
    """Gallager–Van Voorhis parameter m = ceil(log(2 - p) / -log(1 - p)), p = k / n."""
    if k <= 0 or n <= 0:
        return 1
    p = k / n
    if p >= 0.5:  # formula gives <= 1 (and divides by zero at p = 1)
        return 1
    m = math.ceil(math.log(2.0 - p) / -math.log1p(-p))
    return max(1, min(m, MAX_M))


class _CostModel:
    """Exact blob payload size (bytes) for the given gaps and any m, vectorized."""

    def __init__(self, gaps: np.ndarray):
        self.k = int(gaps.size)
        gmax = int(gaps.max()) if self.k else 0
        # Dense masks have small gaps: work on a histogram of gap values instead of the gaps.
        if self.k and gmax < 4 * self.k:
            counts = np.bincount(gaps)
            self.values = np.flatnonzero(counts).astype(np.int64)
            self.weights = counts[self.values].astype(np.int64)
        else:
            self.values = gaps
            self.weights = None
        self.gsum = int(gaps.sum()) if self.k else 0

    def size(self, m: int) -> tuple[int, int]:
        """Return (payload bytes, payload bits) of the streams for parameter m."""
        k = self.k
        if m == 1:
            cbits = self.gsum + k
            return _nbytes(cbits), cbits
        b, c = _params(m)
        q = self.values // m
        big = (self.values % m) >= c
        if self.weights is None:
            qsum = int(q.sum())
            nb = int(np.count_nonzero(big))
        else:
            qsum = int(np.dot(q, self.weights))
            nb = int(self.weights[big].sum())
        abits = k * (b - 1)
        cbits = qsum + k
        return (
            _nbytes(abits) + _nbytes(nb) + _nbytes(cbits),
            abits + nb + cbits,
        )

    def sizes(self, ms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Vectorized :meth:`size` over an int64 array of candidate parameters."""
        k = self.k
        ms = ms.astype(np.int64)
        b = np.frexp((ms - 1).astype(np.float64))[1].astype(np.int64)  # bit length of m - 1
        c = (np.int64(1) << b) - ms
        q = self.values[None, :] // ms[:, None]
        big = (self.values[None, :] % ms[:, None]) >= c[:, None]
        if self.weights is None:
            qsum = q.sum(axis=1)
            nb = big.sum(axis=1)
        else:
            qsum = q @ self.weights
            nb = big.astype(np.int64) @ self.weights
        nb = np.where(ms == 1, 0, nb)
        abits = k * np.maximum(b - 1, 0)
        cbits = qsum + k
        nbytes = ((abits + 7) >> 3) + ((nb + 7) >> 3) + ((cbits + 7) >> 3)
        return nbytes, abits + nb + cbits


_SCAN_BUDGET = 1 << 14  # candidate-gap pairs for the exhaustive scan of small layers


def _choose_m(gaps: np.ndarray, n: int) -> int:
    """GVV estimate, then an exact search of nearby values; returns the smallest-blob m.

    Ties are broken by fewer payload bits, then by the smaller m, so the choice is deterministic.
    """
    k = int(gaps.size)
    if k == 0:
        return 1
    model = _CostModel(gaps)
    m0 = _gvv_m(k, n)
    cache: dict[int, tuple[int, int, int]] = {}

    def cost(m: int) -> tuple[int, int, int]:
        if m not in cache:
            cache[m] = (*model.size(m), m)
        return cache[m]

    lo, hi = max(1, m0 // 2), 2 * m0 + 2
    if (hi - lo + 1) * model.values.size <= _SCAN_BUDGET:
        # Small layers: every m in [m0 / 2, 2 m0 + 2], exactly, in one vectorized pass.
        ms = np.arange(lo, hi + 1, dtype=np.int64)
        nbytes, nbits = model.sizes(ms)
        return int(ms[np.lexsort((ms, nbits, nbytes))[0]])
    # Large layers: a few candidates around m0, then hill-climb.
    cands = {m0 + d for d in range(-3, 4)}
    cands |= {int(round(m0 * f)) for f in (0.5, 0.65, 0.8, 0.9, 1.1, 1.25, 1.5, 2.0)}
    cands = {min(max(1, m), MAX_M) for m in cands}
    best = min(cost(m) for m in cands)
    # hill-climb by +-1 from the best candidate (bounded)
    for _ in range(64):
        m = best[2]
        nxt = min(cost(x) for x in (max(1, m - 1), m, min(m + 1, MAX_M)))
        if nxt == best:
            break
        best = nxt
    return best[2]


# --------------------------------------------------------------------------------------------
# public API


def encode_mask(mask: np.ndarray) -> bytes:
    """Encode a keep-mask (any shape, bool or 0/1, flattened in C order) as a golomb-gaps blob.

    The zeros are coded instead of the ones (``complemented``) when more than half the mask is
    kept; the Golomb parameter is the GVV estimate refined by an exact search for the smallest
    blob.
    """
    arr = np.asarray(mask)
    if arr.dtype != np.bool_:
        if arr.size and not np.isin(arr, (0, 1)).all():
            raise CodecError("mask must be boolean or contain only 0 and 1")
        arr = arr != 0
    flat = arr.reshape(-1)
    n = int(flat.size)
    if n >= MAX_N:
        raise CodecError(f"mask too large: n={n}")
    kept = int(np.count_nonzero(flat))
    complemented = 2 * kept > n
    positions = np.flatnonzero(~flat if complemented else flat)
    gaps = _gaps_from_positions(positions)
    m = _choose_m(gaps, n)
    return _blob_from_gaps(gaps, m, complemented)


def _as_bytes(blob: bytes | bytearray | memoryview | np.ndarray) -> bytes:
    if isinstance(blob, np.ndarray):
        if blob.dtype.itemsize != 1 or blob.dtype.kind not in "ui":
            raise CodecError(f"mask blob must be a uint8 array, got dtype {blob.dtype}")
        return np.ascontiguousarray(blob).reshape(-1).view(np.uint8).tobytes()
    if isinstance(blob, (bytes, bytearray, memoryview)):
        return bytes(blob)
    raise CodecError(f"mask blob must be bytes or a uint8 array, got {type(blob).__name__}")


def decode_mask(
    blob: bytes | np.ndarray, n: int, expected_kept: int | None = None
) -> np.ndarray:
    """Decode a golomb-gaps blob into a 1-D bool mask of length ``n`` (the kept positions).

    Raises :class:`CodecError` for any malformed blob (see the module docstring), and when
    ``expected_kept`` is given and differs from the decoded number of ones.
    """
    n = int(n)
    if not 0 <= n < MAX_N:
        raise CodecError(f"mask length n={n} out of range")
    data = _as_bytes(blob)
    complemented, k, m = _read_header(data, n, expected_kept)
    payload = np.frombuffer(data, dtype=np.uint8, offset=HEADER_SIZE)
    width = _params(m)[0] - 1 if m > 1 else 0
    # Every gap costs at least one bit in C and `width` bits in A: bound k by the blob length
    # before allocating anything proportional to it.
    if k * (width + 1) > 8 * payload.size:
        raise CodecError(f"mask blob too short to hold k={k} gaps with m={m}")

    out = np.zeros(n, dtype=np.bool_)
    if k == 0:
        if payload.size:
            raise CodecError(f"mask blob has {payload.size} trailing bytes")
    else:
        r, pos = _read_remainders(payload, k, m)  # streams A and B
        c_bytes = payload[pos:]  # stream C: the rest of the blob
        c_nbits = _check_unary(c_bytes, k)
        if m == 1:
            # Every gap is pure unary, so stream C is the bitmap of the coded positions itself.
            if c_nbits > n:
                raise CodecError(f"decoded mask index >= n={n}")
            out[:c_nbits] = np.unpackbits(c_bytes, count=c_nbits, bitorder="little").view(np.bool_)
        else:
            out[_positions(c_bytes, c_nbits, r, m, n)] = True
    if complemented:
        np.logical_not(out, out=out)
    return out


def _read_header(data: bytes, n: int, expected_kept: int | None) -> tuple[bool, int, int]:
    """Validate the 18-byte header against ``n`` (and ``expected_kept``); return (complemented, k, m)."""
    if len(data) < HEADER_SIZE:
        raise CodecError(f"mask blob truncated: {len(data)} bytes, header needs {HEADER_SIZE}")
    version, flags = data[0], data[1]
    if version != VERSION:
        raise CodecError(f"unknown mask codec version {version} (expected {VERSION})")
    if flags & ~FLAG_COMPLEMENTED:
        raise CodecError(f"unknown mask flag bits 0x{flags & ~FLAG_COMPLEMENTED:02x}")
    complemented = bool(flags & FLAG_COMPLEMENTED)
    k = int.from_bytes(data[2:10], "little")
    m = int.from_bytes(data[10:18], "little")
    if k > n:
        raise CodecError(f"mask blob codes k={k} positions but the layer has only n={n}")
    if m == 0:
        raise CodecError("Golomb parameter m=0 is invalid")
    if m > MAX_M:
        raise CodecError(f"Golomb parameter m={m} is too large")
    kept = n - k if complemented else k
    if expected_kept is not None and kept != int(expected_kept):
        raise CodecError(f"mask blob keeps {kept} weights but {int(expected_kept)} were declared")
    return complemented, k, m


def _read_remainders(payload: np.ndarray, k: int, m: int) -> tuple[np.ndarray | None, int]:
    """The k Golomb remainders from streams A and B (None when m = 1) and the offset of stream C."""
    if m == 1:
        return None, 0
    b, c = _params(m)
    width = b - 1
    v = np.zeros(k, dtype=np.int64)
    pos = 0
    if width > 0:  # stream A: `width` bits per gap
        a_len = _nbytes(k * width)
        a_bits = np.unpackbits(payload[:a_len], bitorder="little")
        if a_bits[k * width :].any():
            raise CodecError("nonzero padding bits in stream A")
        a_bits = a_bits[: k * width].reshape(k, width)
        for j in range(width):  # a loop over bit positions (<= 61), not over gaps
            v |= a_bits[:, j].astype(np.int64) << j
        del a_bits
        pos = a_len
    # stream B: one extra bit for each gap whose A field is >= c
    big = v >= c
    nb = int(np.count_nonzero(big))
    b_len = _nbytes(nb)
    if pos + b_len > payload.size:
        raise CodecError("mask blob truncated in stream B")
    b_bits = np.unpackbits(payload[pos : pos + b_len], bitorder="little")
    if b_bits[nb:].any():
        raise CodecError("nonzero padding bits in stream B")
    v[big] = ((v[big] << 1) | b_bits[:nb].astype(np.int64)) - c
    return v, pos + b_len


def _check_unary(c_bytes: np.ndarray, k: int) -> int:
    """Stream C must hold exactly k one-bits and end in the byte of the last; return its bit length."""
    ones = int(_POPCOUNT[c_bytes].sum(dtype=np.int64))
    if ones != k:
        which = "too few" if ones < k else "too many"
        raise CodecError(f"{which} unary ends in stream C: {ones}, expected {k}")
    if c_bytes[-1] == 0:
        raise CodecError("mask blob has trailing bytes after stream C")
    return 8 * (c_bytes.size - 1) + int(c_bytes[-1]).bit_length()  # through the k-th one


def _positions(c_bytes: np.ndarray, c_nbits: int, r: np.ndarray, m: int, n: int) -> np.ndarray:
    """Coded positions idx_i = Q_i·m + R_i + i, with Q = cumsum(q) = ends − i and R = cumsum(r).

    Each term is bounded before it is formed so that nothing overflows int64; `r` is consumed.
    """
    ramp = np.arange(r.size, dtype=np.int64)
    idx = np.flatnonzero(np.unpackbits(c_bytes, count=c_nbits, bitorder="little"))
    idx -= ramp
    if int(idx[-1]) > (n - 1) // m:
        raise CodecError(f"decoded mask index >= n={n}")
    if float(r.sum(dtype=np.float64)) > n:
        raise CodecError(f"decoded mask index >= n={n}")
    idx *= m
    idx += np.cumsum(r, out=r)
    idx += ramp
    if int(idx[-1]) >= n:
        raise CodecError(f"decoded mask index >= n={n}")
    return idx


def coded_bits(blob: bytes | np.ndarray) -> int:
    """Size of a mask blob in bits (header included)."""
    return 8 * len(_as_bytes(blob))


def entropy_bound_bits(n: int, k: int) -> float:
    """log2 C(n, k): the information content of a k-of-n mask, in bits."""
    n, k = int(n), int(k)
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    return (math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)) / _LN2
