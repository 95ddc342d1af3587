import hashlib
import json
import math
import random

import pytest
import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import rbzoo
from rbzoo.checkpoint import read, weights_digest
from rbzoo.codec import entropy_bound_bits
from rbzoo.errors import CheckpointError


def _trained_like(arch="tiny_resnet", seed=3, **kw):
    """A model with random scores and non-trivial BN statistics."""
    kw = {"keep": 0.1, "p": 0.5, "end_with_bn": True, "score_init_scale": 1.0, **kw}
    m = create = rbzoo.create_model(arch, seed=seed, **kw)
    m.train()
    with torch.no_grad():
        for _ in range(3):
            m(torch.rand(16, kw.get("in_channels", 3), 16, 16))
    return create.eval()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    m = _trained_like()
    path = tmp_path_factory.mktemp("ck") / "tiny.safetensors"
    digest = rbzoo.save(m, path, metadata={"dataset": "cifar10", "train": {"epochs": 1}})
    x = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = m(x)
    return m, path, digest, x, y


def test_round_trip_bit_identical(tiny):
    m, path, digest, x, y = tiny
    loaded = rbzoo.load(path)
    assert not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded(x), y)
    assert loaded.model_digest == digest and rbzoo.read(path).digest == digest
    meta = read(path).metadata
    assert meta["rbzoo.format"] == "1" and meta["rbzoo.signs"] == "rbzoo-signs-v1" and meta["rbzoo.seed"] == "3"
    assert json.loads(meta["train"]) == {"epochs": 1} and meta["dataset"] == "cifar10"
    assert json.loads(meta["rbzoo.arch"])["id"] == "tiny_resnet"


def test_resave_of_loaded_model_is_identical(tiny, tmp_path):
    _, path, digest, x, y = tiny
    again = tmp_path / "again.safetensors"
    assert rbzoo.save(rbzoo.load(path), again) == digest
    assert load_file(again).keys() == load_file(path).keys()


def test_explicit_signs_twin(tiny, tmp_path):
    m, path, digest, x, y = tiny
    twin = tmp_path / "explicit.safetensors"
    assert rbzoo.save(m, twin, signs="explicit") == digest
    ck = read(twin)
    assert ck.signs_mode == "explicit" and ck.seed is None
    with torch.no_grad():
        assert torch.equal(rbzoo.load(twin)(x), y)
    with safe_open(str(twin), "pt") as f:
        for rec in ck.layers:
            assert f.get_tensor(f"{rec.name}.signs").numel() == math.ceil(rec.kept / 8)


def _independent_model_digest(arch_json: str, model) -> str:
    """docs/format.md §8, re-implemented from the text with hashlib and numpy only."""
    def field(data: bytes) -> bytes:
        return len(data).to_bytes(8, "little") + data

    def pack(bits) -> bytes:
        return np.packbits(np.asarray(bits, dtype=np.uint8), bitorder="little").tobytes()

    out = [b"rbzoo-model-v1\0", field(arch_json.encode()), len(model.prunable_keys).to_bytes(8, "little")]
    for key in model.prunable_keys:
        w = model.get_submodule(key[:-7]).effective_weight().detach().flatten().numpy()
        shape = ",".join(map(str, model.get_submodule(key[:-7]).weight.shape)).encode()
        out += [field(key.encode()), field(shape), field(pack(w != 0)), field(pack(w[w != 0] > 0))]
    prunable = {k[:-7] for k in model.prunable_keys}
    rest = {k: v for k, v in model.state_dict().items()
            if k.rsplit(".", 1)[0] not in prunable and not k.endswith("num_batches_tracked")}
    out.append(len(rest).to_bytes(8, "little"))
    for key in sorted(rest, key=str.encode):
        v = rest[key].float().contiguous().numpy().astype("<f4")
        out += [field(key.encode()), field(b"F32"), field(",".join(map(str, v.shape)).encode()), field(v.tobytes())]
    return hashlib.sha256(b"".join(out)).hexdigest()


def test_digest_definition(tiny):
    m, path, digest, *_ = tiny
    parts = []
    for key in m.prunable_keys:
        w = m.get_submodule(key[:-7]).effective_weight().flatten().numpy()
        parts.append((w != 0, w[w != 0] > 0))
    ck = read(path)
    assert weights_digest(parts) == ck.weights_digest == ck.metadata["rbzoo.weights_sha256"]
    arch_json = json.dumps(m.arch, sort_keys=True, separators=(",", ":"))
    assert ck.metadata["rbzoo.arch"] == arch_json
    assert _independent_model_digest(arch_json, m) == digest == ck.digest == ck.metadata["rbzoo.model_sha256"]


def test_resnet34_size_and_bound(tmp_path):
    m = rbzoo.create_model("cifar_resnet34", keep=0.01, p=0.1, end_with_bn=True, seed=1234)
    path = tmp_path / "r34.safetensors"
    rbzoo.save(m, path)
    assert path.stat().st_size <= 300_000
    ck = read(path)
    assert sum(r.kept for r in ck.layers) == 212_685
    bound = sum(entropy_bound_bits(r.n, r.kept) for r in ck.layers)
    coded = sum(r.coded_bytes * 8 for r in ck.layers)
    assert coded <= 1.01 * bound
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(rbzoo.load(path)(x), m.eval()(x))


def _arch(meta, **changes) -> str:
    arch = {**json.loads(meta["rbzoo.arch"]), **changes}
    return json.dumps({k: v for k, v in arch.items() if v is not None}, sort_keys=True, separators=(",", ":"))


def _rewrite(path, out, tensors=None, meta=None):
    with safe_open(str(path), "pt") as f:
        t = {k: f.get_tensor(k) for k in f.keys()}
        md = dict(f.metadata())
    if tensors:
        tensors(t)
    if meta:
        meta(md)
    save_file(t, str(out), metadata=md)
    return out


@pytest.mark.parametrize(
    "edit,message",
    [
        (dict(meta=lambda m: m.update({"rbzoo.format": "2"})), "unknown rbzoo.format"),
        (dict(meta=lambda m: m.update({"rbzoo.signs": "torch-rng"})), "unknown rbzoo.signs"),
        (dict(meta=lambda m: m.pop("rbzoo.layers")), "missing metadata"),
        (dict(meta=lambda m: m.update({"rbzoo.seed": "4"})), "digest mismatch"),
        (dict(meta=lambda m: m.update({"rbzoo.weights_sha256": "0" * 64})), "digest mismatch"),
        (dict(meta=lambda m: m.update({"rbzoo.arch": _arch(m, num_classes=11)})), "fc"),
        (dict(meta=lambda m: m.update({"rbzoo.arch": _arch(m, id="nope")})), "bad rbzoo.arch"),
        (dict(meta=lambda m: m.update({"rbzoo.arch": _arch(m, num_classes=100_000_000)})), "num_classes must be"),
        (dict(meta=lambda m: m.update({"rbzoo.arch": _arch(m, id="cifar_resnet50", num_classes=100_000, width=None)})), "above rbzoo's limit"),
        (dict(meta=lambda m: m.update({"rbzoo.arch": _arch(m, width=10**9)})), "width must be"),
        (dict(meta=lambda m: m.update({"rbzoo.arch": _arch(m, std=[0.0, 1.0, 1.0])})), "std must be positive"),
        (dict(meta=lambda m: m.update({"rbzoo.arch": _arch(m, mean=[1.0, 2.0])})), "mean must be 3"),
        (dict(meta=lambda m: m.update({"rbzoo.arch": _arch(m, end_with_bn=1)})), "end_with_bn must be"),
        (dict(meta=lambda m: m.update({"rbzoo.arch": _arch(m, mean=[1.3053, 0.4822, 0.4465])})), "model digest mismatch"),
        (dict(meta=lambda m: m.update({"rbzoo.arch": json.dumps(json.loads(m["rbzoo.arch"]))})), "canonical"),
        (dict(meta=lambda m: m.update({"rbzoo.arch": m["rbzoo.arch"][:-1] + ',"num_classes":10}'})), "duplicate key"),
        (dict(meta=lambda m: m.update({"rbzoo.arch": m["rbzoo.arch"].replace('"mean":[', '"mean":[NaN,')})), "NaN"),
        (dict(meta=lambda m: m.pop("rbzoo.model_sha256")), "rbzoo 0.1"),
        (dict(meta=lambda m: m.update({"rbzoo.model_sha256": "0" * 64})), "model digest mismatch"),
        (dict(meta=lambda m: m.update({"rbzoo.seed": "007"})), "rbzoo.seed"),
        (dict(tensors=lambda t: t.pop("last.running_var")), "missing last.running_var"),
        (dict(tensors=lambda t: t.update({"extra.weight": torch.zeros(1)})), "unexpected extra.weight"),
        (dict(tensors=lambda t: t.update({"bn1.running_mean": torch.zeros(3)})), "bn1.running_mean"),
        (dict(tensors=lambda t: t.update({"bn1.running_mean": t["bn1.running_mean"] + 1})), "model digest mismatch"),
        (dict(tensors=lambda t: t.update({"conv1.weight.mask": t["conv1.weight.mask"][:-1]})), "conv1.weight"),
    ],
)
def test_strict_loading_errors(tiny, tmp_path, edit, message):
    _, path, *_ = tiny
    bad = _rewrite(path, tmp_path / "bad.safetensors", **edit)
    with pytest.raises(CheckpointError, match=message) as info:
        rbzoo.load(bad)
    assert "\n" not in str(info.value)


def test_kept_count_mismatch_names_layer(tiny, tmp_path):
    _, path, *_ = tiny

    def bump(md):
        layers = json.loads(md["rbzoo.layers"])
        layers[2]["kept"] += 1
        md["rbzoo.layers"] = json.dumps(layers)

    bad = _rewrite(path, tmp_path / "bad.safetensors", meta=bump)
    with pytest.raises(CheckpointError, match="layer1.0.conv2.weight"):
        rbzoo.load(bad)


def test_not_a_checkpoint(tmp_path):
    p = tmp_path / "x.safetensors"
    p.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":1}garbage")
    with pytest.raises(CheckpointError):
        rbzoo.load(p)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        rbzoo.load(tmp_path / "missing.safetensors")
    save_file({"a": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(CheckpointError, match="not an rbzoo checkpoint"):
        rbzoo.load(tmp_path / "plain.safetensors")
    huge = tmp_path / "huge.safetensors"  # header claims a tensor far beyond the file
    header = json.dumps({"__metadata__": {"rbzoo.format": "1"}, "a": {"dtype": "F32", "shape": [10**9], "data_offsets": [0, 4 * 10**9]}}).encode()
    huge.write_bytes(len(header).to_bytes(8, "little") + header)
    with pytest.raises(CheckpointError):
        rbzoo.load(huge)


@pytest.mark.parametrize("signs", ["explicit", "rbzoo-signs-v1"])
def test_every_byte_flip_fails_or_changes_nothing(tmp_path, signs):
    """Flip every byte of a small checkpoint, one at a time (XOR 0x01: '0'→'1' in a number, the
    smallest change): each either fails the load with a one-line CheckpointError, or leaves the
    logits and the model digest unchanged. Zero silent changes. The explicit-signs file is swept
    whole; for rbzoo-signs-v1 the header (seed, arch, digests) is what differs, so only it is swept."""
    m = _trained_like(num_classes=3, width=2, in_channels=1, mean=[0.3053], std=[0.25], keep=0.5)
    path = tmp_path / "small.safetensors"
    digest = rbzoo.save(m, path, metadata={"rbzoo.train": {"epochs": 1}}, signs=signs)
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = m.eval()(x)
    raw = path.read_bytes()
    flipped_path = tmp_path / "f.safetensors"
    failed = unchanged = 0
    end = len(raw) if signs == "explicit" else 8 + int.from_bytes(raw[:8], "little")
    for pos in range(end):
        flipped = bytearray(raw)
        flipped[pos] ^= 0x01
        flipped_path.write_bytes(flipped)
        try:
            ck = read(flipped_path)
        except CheckpointError as e:
            assert "\n" not in str(e), f"byte {pos}: multi-line error {e}"
            failed += 1
            continue
        assert ck.digest == digest, f"byte {pos}: loaded with another digest"
        with torch.no_grad():
            assert torch.equal(rbzoo.checkpoint.build(ck)(x), y), f"byte {pos}: same digest, other logits"
        unchanged += 1
    assert failed + unchanged == end and failed > 0.5 * end
    print(f"{signs}: {end} bytes flipped, {failed} load failures, {unchanged} unchanged, 0 silent changes")


def test_save_is_atomic_on_failure(tiny, tmp_path):
    m, path, *_ = tiny
    target = tmp_path / "keep.safetensors"
    target.write_bytes(b"old")
    with pytest.raises(CheckpointError):
        rbzoo.save(m, target, metadata={"rbzoo.format": "9"})
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.safetensors"]
