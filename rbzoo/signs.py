"""`rbzoo-signs-v1`: the portable generator of a layer's fixed ±1 weights (format.md §2).

The sign of every weight is a pure function of (seed, weight key, shape): SHA-256 derives a key,
SplitMix64 expands it into 64-bit blocks, and bit i of the stream is the sign of flat element i.
This does not depend on torch's RNG, the device, or the order in which layers are built.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import torch

SIGNS_V1 = "rbzoo-signs-v1"

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def _check_seed(seed: int) -> int:
    seed = int(seed)
    if not 0 <= seed < 2**64:
        raise ValueError(f"seed must satisfy 0 <= seed < 2**64, got {seed}")
    return seed


def signs_key(seed: int, name: str, shape: Sequence[int]) -> int:
    """The 64-bit SplitMix64 key of one layer: first 8 bytes (little-endian) of SHA-256(msg)."""
    seed = _check_seed(seed)
    if "\0" in name:
        raise ValueError("a weight key may not contain NUL")
    msg = b"\0".join(
        [
            SIGNS_V1.encode(),
            str(seed).encode("ascii"),
            name.encode("utf-8"),
            b",".join(str(int(d)).encode("ascii") for d in shape),
        ]
    )
    return int.from_bytes(hashlib.sha256(msg).digest()[:8], "little")


def splitmix64_blocks(key: int, count: int) -> np.ndarray:
    """The first `count` outputs of SplitMix64 seeded with `key` (uint64 array)."""
    with np.errstate(over="ignore"):
        z = np.uint64(key) + np.arange(1, count + 1, dtype=np.uint64) * _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _MIX1
        z = (z ^ (z >> np.uint64(27))) * _MIX2
        return z ^ (z >> np.uint64(31))


def sign_bits(seed: int, name: str, shape: Sequence[int]) -> np.ndarray:
    """One uint8 bit (1 = +1, 0 = -1) per flat element of the weight, in C order."""
    n = int(np.prod(shape, dtype=np.int64)) if len(shape) else 1
    blocks = splitmix64_blocks(signs_key(seed, name, shape), (n + 63) // 64)
    # '<u8' first so a big-endian host unpacks the same bits.
    raw = blocks.astype("<u8", copy=False).view(np.uint8)
    return np.unpackbits(raw, bitorder="little")[:n]


def signs(seed: int, name: str, shape: Sequence[int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The ±1 weight tensor of one layer, on the CPU."""
    bits = torch.from_numpy(sign_bits(seed, name, shape))
    return (bits.to(dtype) * 2 - 1).reshape(tuple(shape))
