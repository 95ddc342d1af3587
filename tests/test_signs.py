import hashlib

import numpy as np
import pytest
import torch

from rbzoo.signs import sign_bits, signs, signs_key, splitmix64_blocks

GOLDEN = [
    (0, "layer1.0.conv1.weight", [64, 64, 3, 3], 0xE51D464DCC14024A, 0x72351FA430224CFA, "-+-+++++--++--+-", 18485, "cac67df76ff5bc597b2e7bb9e36c65fb"),
    (1, "conv1.weight", [64, 3, 3, 3], 0xA53D8EB2DF5CF0D4, 0x4F559C3D23BABC99, "+--++--+--++++-+", 874, "639c7c66468a92fc432ba8e44ec9dffb"),
    (18446744073709551615, "linear.weight", [10, 512], 0xCC7EF5C0EB5C9386, 0xF836CC74B3AC1D42, "-+----+-+-+++---", 2548, "8440fa8ac2e47ba58eb2013d80e3d2cc"),
    (42, "layer4.2.conv2.weight", [512, 512, 3, 3], 0x8BD468E627995639, 0x6117AD2E406DEBF5, "+-+-++++++-+-+++", 1179764, "7417ba1347aefd14658ca1dc32af17dc"),
]


@pytest.mark.parametrize("seed,name,shape,key,block0,first16,plus,sha", GOLDEN)
def test_golden_vectors(seed, name, shape, key, block0, first16, plus, sha):
    assert signs_key(seed, name, shape) == key
    assert int(splitmix64_blocks(key, 1)[0]) == block0
    bits = sign_bits(seed, name, shape)
    assert bits.shape == (int(np.prod(shape)),)
    assert "".join("+" if b else "-" for b in bits[:16]) == first16
    assert int(bits.sum()) == plus
    assert hashlib.sha256(np.packbits(bits, bitorder="little").tobytes()).hexdigest()[:32] == sha


def test_message_matches_coreutils_example():
    msg = b"rbzoo-signs-v1\x000\x00layer1.0.conv1.weight\x0064,64,3,3"
    assert hashlib.sha256(msg).hexdigest().startswith("4a0214cc4d461de5")


def test_signs_tensor_is_pm1_and_shaped():
    w = signs(3, "fc.weight", (10, 64, 1, 1))
    assert w.shape == (10, 64, 1, 1) and w.dtype == torch.float32
    assert set(w.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(w.flatten(), torch.from_numpy(sign_bits(3, "fc.weight", (10, 64, 1, 1))).float() * 2 - 1)


def test_names_and_seeds_decorrelate():
    a = sign_bits(0, "conv1.weight", (64, 3, 3, 3))
    b = sign_bits(0, "conv2.weight", (64, 3, 3, 3))
    c = sign_bits(1, "conv1.weight", (64, 3, 3, 3))
    assert (a != b).mean() > 0.4 and (a != c).mean() > 0.4


@pytest.mark.parametrize("seed", [-1, 2**64])
def test_seed_out_of_range(seed):
    with pytest.raises(ValueError):
        signs_key(seed, "x", (1,))
