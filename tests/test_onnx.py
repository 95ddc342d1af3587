"""ONNX export: graphs verified by the real onnxruntime on the real digits test set."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import rbzoo
from rbzoo.cli import main
from rbzoo.data import dataset_metadata, get_dataset
from rbzoo.errors import VerificationError

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from rbzoo import onnx_export  # noqa: E402  (after the skips: it needs neither, but the tests do)


def _digits_model(seed: int = 3) -> torch.nn.Module:
    """A tiny 1-channel ResNet with random scores and BN statistics measured on digits."""
    spec = dataset_metadata("digits")
    m = rbzoo.create_model("tiny_resnet", in_channels=1, mean=spec["mean"], std=spec["std"], keep=0.3, p=0.5,
                           end_with_bn=True, seed=seed, score_init_scale=1.0)
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.momentum = None  # cumulative average over the calibration pass
    m.train()
    with torch.no_grad():
        m(get_dataset("digits", "train").tensors[0][:512])
    return m.eval()


@pytest.fixture(scope="module")
def digits_ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "digits.safetensors"
    rbzoo.save(_digits_model(), path, metadata={"rbzoo.dataset": json.dumps(dataset_metadata("digits"))})
    return path


def _run(path, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"images": x.numpy()})[0]


def test_export_cli_verified_metadata_dynamic_batch(digits_ckpt, tmp_path, capsys):
    out = tmp_path / "m.onnx"
    assert main(["export", str(digits_ckpt), "--format", "onnx", "--out", str(out), "--check-n", "200"]) == 0
    printed = capsys.readouterr().out
    assert "exact: all 200 predicted labels" in printed
    proto = onnx.load(str(out))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["rbzoo.model_digest"] == rbzoo.read(digits_ckpt).digest
    assert json.loads(meta["rbzoo.dataset"])["name"] == "digits"
    assert json.loads(meta["rbzoo.classes"]) == [str(i) for i in range(10)]
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [1, 8, 8]
    # Any batch size; labels identical to rbzoo's own on the whole test set, in odd-sized batches.
    model = rbzoo.load(digits_ckpt)
    x = get_dataset("digits", "test").tensors[0]
    for batch in (1, 7, 360):
        got = np.concatenate([_run(out, x[i:i + batch]) for i in range(0, 21 if batch < 360 else 360, batch)])
        with torch.no_grad():
            ref = model(x[:len(got)]).numpy()
        assert np.array_equal(got.argmax(1), ref.argmax(1))
        assert np.abs(got - ref).max() < 1e-4 * np.abs(ref).max()


@pytest.mark.parametrize("variant,bn", [("int8", "fold"), ("sparse", "fold"), ("dense", "explicit"), ("int8", "explicit")])
def test_compact_variants_identical_labels(digits_ckpt, tmp_path, variant, bn):
    dense = onnx_export.export_onnx(digits_ckpt, tmp_path / "dense.onnx")
    r = onnx_export.export_onnx(digits_ckpt, tmp_path / f"{variant}-{bn}.onnx", variant=variant, bn=bn)
    assert r.check.status == "exact" and r.check.n == 360
    assert r.check.onnx_predictions_sha256 == dense.check.onnx_predictions_sha256 == r.check.torch_predictions_sha256
    proto = onnx.load(str(tmp_path / f"{variant}-{bn}.onnx"))
    int8 = [t for t in proto.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    sparse = list(proto.graph.sparse_initializer)
    if variant == "int8":  # every prunable layer stored as int8, the file much smaller than dense
        assert len(int8) == len(rbzoo.read(digits_ckpt).layers) and not sparse
        assert r.file_size < 0.6 * dense.file_size
    elif variant == "sparse":
        assert len(sparse) == len(rbzoo.read(digits_ckpt).layers) and not int8
    else:
        assert any(n.op_type == "BatchNormalization" for n in proto.graph.node)
    assert os.path.getsize(tmp_path / f"{variant}-{bn}.onnx") == r.file_size


def test_in_memory_model_and_random_resnet18(tmp_path):
    """A module (not a file) with dense first/last layers: labels match torch on random images."""
    m = rbzoo.create_model("cifar_resnet18", keep=0.05, p=0.5, end_with_bn=True, first_layer_dense=True,
                           last_layer_dense=True, seed=5, score_init_scale=1.0).eval()
    r = onnx_export.export_onnx(m, tmp_path / "r18.onnx", variant="int8", check=False)
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = m(x).numpy()
    got = _run(tmp_path / "r18.onnx", x)
    assert np.array_equal(got.argmax(1), ref.argmax(1)) and np.abs(got - ref).max() < 1e-4 * np.abs(ref).max()
    assert r.image_size == 32 and r.check is None


def test_failed_verification_leaves_nothing(digits_ckpt, tmp_path):
    """A graph that disagrees with the torch model: VerificationError (exit 3), no file written,
    and an existing output replaced with force=True is left as it was."""
    model = rbzoo.load(digits_ckpt)
    forward = model.forward
    model.forward = lambda x: -forward(x)  # torch now disagrees with the exported graph
    out = tmp_path / "bad.onnx"
    with pytest.raises(VerificationError) as e:
        onnx_export.export_onnx(model, out, check_n=100)
    assert e.value.exit_code == 3 and "not written" in str(e.value)
    assert not out.exists() and not list(tmp_path.glob(".bad.onnx.*"))
    out.write_bytes(b"previous")
    with pytest.raises(VerificationError):
        onnx_export.export_onnx(model, out, check_n=100, force=True)
    assert out.read_bytes() == b"previous"


def test_writer_rules(digits_ckpt, tmp_path, capsys):
    """(The same rules for --format safetensors: tests/test_cli_info.py.)"""
    ckpt = tmp_path / "in.safetensors"
    ckpt.write_bytes(digits_ckpt.read_bytes())
    before = ckpt.read_bytes()
    base, fmt = ["export", str(ckpt), "--format", "onnx", "--check-n", "20"], "onnx"
    # The input as output: refused even with --force, input intact.
    assert main(base + ["--out", str(ckpt), "--force"]) == 2
    err = capsys.readouterr().err
    assert "input file" in err and err.count("\n") == 1 and ckpt.read_bytes() == before
    # An existing output needs --force.
    out = tmp_path / f"out.{fmt}"
    out.write_bytes(b"keep me")
    assert main(base + ["--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--force" in err and err.count("\n") == 1 and out.read_bytes() == b"keep me"
    assert main(base + ["--out", str(out), "--force"]) == 0
    assert out.read_bytes() != b"keep me"
    # A folder as output: one line, nothing created inside.
    folder = tmp_path / "folder"
    folder.mkdir()
    assert main(base + ["--out", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "folder" in err and err.count("\n") == 1 and not list(folder.iterdir())


def test_missing_onnx_is_one_line(digits_ckpt, tmp_path):
    """As on a machine without the extra: a folder ahead on sys.path whose onnx and onnxruntime
    packages fail to import (rbzoo itself is untouched)."""
    blocked = tmp_path / "blocked"
    for name in ("onnx", "onnxruntime"):
        (blocked / name).mkdir(parents=True)
        (blocked / name / "__init__.py").write_text(f"raise ImportError('No module named {name}')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocked), os.environ.get("PYTHONPATH", "")])}
    out = tmp_path / "m.onnx"
    r = subprocess.run([sys.executable, "-m", "rbzoo", "export", str(digits_ckpt), "--out", str(out)],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and "pip install onnx onnxruntime" in r.stderr and "onnx and onnxruntime" in r.stderr
    assert not out.exists()
    # The safetensors export does not need the extra.
    r = subprocess.run([sys.executable, "-m", "rbzoo", "export", str(digits_ckpt), str(tmp_path / "d.safetensors")],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
