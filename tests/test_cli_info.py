import json
import subprocess
import sys

import torch
from safetensors.torch import load_file

import rbzoo
from rbzoo.cli import main


def _ckpt(tmp_path):
    m = rbzoo.create_model("tiny_resnet", keep=0.1, p=0.5, end_with_bn=True, seed=9, score_init_scale=1.0).eval()
    path = tmp_path / "m.safetensors"
    rbzoo.save(m, path)
    return m, path


def test_info_json(tmp_path, capsys):
    m, path = _ckpt(tmp_path)
    assert main(["info", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["seed"] == 9 and report["arch"]["id"] == "tiny_resnet"
    assert [r["name"] for r in report["layers"]] == m.prunable_keys
    assert report["totals"]["kept"] == sum(r["kept"] for r in report["layers"])
    assert report["file_size"] == path.stat().st_size
    assert report["model_digest"] == rbzoo.read(path).digest and report["weights_sha256"] == rbzoo.read(path).weights_digest


def test_info_table_and_list(tmp_path, capsys):
    _, path = _ckpt(tmp_path)
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "tiny_resnet" in out and "layer1.0.conv1.weight" in out and "total" in out
    assert main(["info", "--list-models"]) == 0
    assert "cifar_resnet34" in capsys.readouterr().out


def test_export_dense(tmp_path):
    m, path = _ckpt(tmp_path)
    out = tmp_path / "dense.safetensors"
    assert main(["export", str(path), str(out)]) == 0
    state = load_file(out)
    assert torch.equal(state["layer1.0.conv1.weight"], m.layer1[0].conv1.effective_weight())
    assert "last.running_mean" in state


def test_export_dense_writer_rules(tmp_path, capsys):
    """`rbzoo export CKPT OUT` and `--out`: never over the input, an existing output needs --force,
    a folder is a one-line error; the input and any existing output are left intact."""
    m, path = _ckpt(tmp_path)
    before = path.read_bytes()
    for args in (["export", str(path), str(path), "--force"], ["export", str(path), "--out", str(path), "--force"]):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert "input file" in err and err.count("\n") == 1 and path.read_bytes() == before
    out = tmp_path / "dense.safetensors"
    out.write_bytes(b"keep me")
    assert main(["export", str(path), "--out", str(out), "--format", "safetensors"]) == 2
    assert "--force" in capsys.readouterr().err and out.read_bytes() == b"keep me"
    assert main(["export", str(path), "--out", str(out), "--format", "safetensors", "--force"]) == 0
    assert torch.equal(load_file(out)["layer1.0.conv1.weight"], m.layer1[0].conv1.effective_weight())
    folder = tmp_path / "folder"
    folder.mkdir()
    assert main(["export", str(path), str(folder)]) == 2
    err = capsys.readouterr().err
    assert "folder" in err and err.count("\n") == 1 and not list(folder.iterdir())
    # Options of the ONNX format only, and an output given twice, are one-line errors too.
    assert main(["export", str(path), str(tmp_path / "x.safetensors"), "--variant", "int8"]) == 2
    assert main(["export", str(path), str(tmp_path / "x.safetensors"), "--out", str(tmp_path / "y.safetensors")]) == 2
    assert not (tmp_path / "x.safetensors").exists() and not (tmp_path / "y.safetensors").exists()


def test_console_script_errors(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint at all")
    r = subprocess.run([sys.executable, "-m", "rbzoo", "info", str(bad)], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "error:" in r.stderr
    r = subprocess.run([sys.executable, "-m", "rbzoo", "export", str(tmp_path / "missing"), str(tmp_path / "o")], capture_output=True, text=True)
    assert r.returncode == 2 and "no such checkpoint" in r.stderr
    assert not (tmp_path / "o").exists()


def test_version_and_help(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"rbzoo {rbzoo.__version__}"
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("train", "eval", "push", "pull", "convert", "plot", "info", "export", "data"):
        assert command in out
