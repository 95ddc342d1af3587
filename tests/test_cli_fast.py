"""A CLI that answers at once: help, version and the zoo listing never import torch.

Each check runs a fresh interpreter (this test process has torch loaded already). The console
entry point is checked with `-X importtime`, which names every module the process imported; the
other commands run in one interpreter through `rbzoo.cli.main`, checking `sys.modules` after each.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "torchvision", "numpy", "matplotlib", "huggingface_hub")


def _env(tmp_path: Path) -> dict:
    env = dict(os.environ, RBZOO_HOME=str(tmp_path / "home"), COLUMNS="120")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def _imported(importtime_stderr: str) -> set[str]:
    """Module names from `-X importtime` lines: 'import time: self | cumulative | [indent]name'."""
    return {line.rsplit("|", 1)[1].strip() for line in importtime_stderr.splitlines()
            if line.startswith("import time:") and line.count("|") == 2}


def test_help_entry_point_imports_no_torch(tmp_path):
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "rbzoo", "--help"], env=_env(tmp_path),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "pull" in proc.stdout and "eval" in proc.stdout  # the real help, not an early exit
    modules = _imported(proc.stderr)
    assert "rbzoo.cli" in modules  # the parser saw the import log
    assert not {m for m in modules if m.split(".")[0] in HEAVY}, sorted(m for m in modules if m.split(".")[0] in HEAVY)[:5]


_PROBE = """
import sys
from rbzoo.cli import main
heavy = {heavy!r}
for argv in {commands!r}:
    rc = main(argv)
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in heavy)
    print("RESULT", " ".join(argv), rc, ",".join(loaded[:3]) or "-", flush=True)
"""


def test_every_help_version_and_zoo_list_import_no_torch(tmp_path):
    cards = tmp_path / "cards"
    cards.mkdir()
    shutil.copy(ROOT / "cards" / "rn34-cifar10-pgd.md", cards)
    commands = [["--version"], ["pull", "--list", "--cards-dir", str(cards)], ["data", "imagenet100", "--help"]]
    commands += [[c, "--help"] for c in ("train", "eval", "info", "export", "push", "pull", "convert", "plot", "data",
                                               "reproduce")]
    code = _PROBE.format(heavy=HEAVY, commands=commands)
    proc = subprocess.run([sys.executable, "-c", code], env=_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = [line.split(" ")[1:] for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert len(results) == len(commands)
    for fields, argv in zip(results, commands):
        assert fields[-2:] == ["0", "-"], f"rbzoo {' '.join(argv)}: exit {fields[-2]}, imported {fields[-1]}"
    assert "rn34-cifar10-pgd" in proc.stdout and "rbzoo 0." in proc.stdout  # the listing and version printed


_LAZY_PROBE = """
import sys, rbzoo
assert "torch" not in sys.modules, "import rbzoo imported torch"
assert issubclass(rbzoo.RbzooError, Exception) and "torch" not in sys.modules, "RbzooError imported torch"
names = ["create_model", "load", "read", "save", "list_models", "pull", "push"]
print(" ".join(getattr(rbzoo, n).__module__ for n in names), "torch" in sys.modules, set(names) <= set(dir(rbzoo)))
try:
    rbzoo.no_such_name
except AttributeError as e:
    print("AttributeError", e)
"""


def test_package_names_load_on_first_use(tmp_path):
    proc = subprocess.run([sys.executable, "-c", _LAZY_PROBE], env=_env(tmp_path), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    first, second = proc.stdout.splitlines()
    assert first == ("rbzoo.models._registry rbzoo.checkpoint rbzoo.checkpoint rbzoo.checkpoint rbzoo.models._registry "
                     "rbzoo.zoo rbzoo.hub True True")
    assert second.startswith("AttributeError") and "no_such_name" in second


def _commands(cmd, path=()):
    yield path, cmd
    for name, sub in sorted(getattr(cmd, "commands", {}).items()):
        yield from _commands(sub, (*path, name))


def test_every_help_is_readable(capsys, monkeypatch):
    """Every command's --help at 80 columns: flags without `<bool>`, usage lines without typer's
    `{model}` / `[[OUT]]`, and help text for every option and argument."""
    import re

    import typer.main
    from typer.core import TyperArgument, TyperOption

    from rbzoo.cli import app, main

    monkeypatch.setenv("COLUMNS", "80")
    seen = []
    for path, cmd in _commands(typer.main.get_command(app)):
        assert main([*path, "--help"]) == 0
        text = capsys.readouterr().out
        where = f"rbzoo {' '.join(path)} --help"
        assert "Usage: rbzoo" in text, where
        assert "<bool>" not in text and "[[" not in text and not re.search(r"\{\w+\}", text), (where, text)
        undocumented = [p.name for p in cmd.params if isinstance(p, (TyperOption, TyperArgument)) and not p.help]
        assert not undocumented, (where, undocumented)
        seen.append(" ".join(path))
    assert {"", "eval", "train", "pull", "push", "data", "data imagenet100"} <= set(seen)
    for group in ([], ["data"]):  # a group without a command shows its help, as --help does
        assert main(group) == 0
        out, err = capsys.readouterr()
        assert "Usage: rbzoo" in out and err == "", (group, err)


_TYPO_PROBE = """
import contextlib, io, json, sys
from rbzoo.cli import main
heavy = {heavy!r}
for argv, code, message in {cases!r}:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(argv)
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in heavy)
    print(json.dumps([argv, rc, err.getvalue(), loaded[:3]]), flush=True)
"""


def test_option_typos_are_refused_before_torch_loads(tmp_path):
    """Every option is checked before the library (and torch) is imported: one line, exit 2, and no
    heavy module in sys.modules afterwards. Names match ignoring case ("LINF", "Sparse")."""
    ck = tmp_path / "m.safetensors"
    ck.write_bytes(b"not read: the options fail first")
    (tmp_path / "empty.yaml").write_text("")
    (tmp_path / "done.json").write_text("{}")
    t = str(tmp_path)
    eval_ = ["eval", str(ck)]
    cases = [
        (["export", str(ck), f"{t}/m.onnx", "--variant", "sparce"], 2, "unknown --variant 'sparce'; choose from dense, int8, sparse"),
        (["export", str(ck), f"{t}/m.onnx", "--variant", "Sparse", "--bn", "fold", "--check-n", "0"], 2, "--check-n"),
        (["export", str(ck), str(ck)], 2, "is the input file"),
        (["export", str(ck), f"{t}/m.st", "--variant", "int8"], 2, "apply to --format onnx"),
        (eval_ + ["--subset", "randm"], 2, "unknown --subset 'randm'; choose from first, random"),
        (eval_ + ["--norm", "LINF", "--subset", "Random", "--version", "standrd"], 2, "unknown --version 'standrd'"),
        (eval_ + ["--norm", "L3"], 2, "unknown --norm 'L3'; choose from Linf, L2"),
        (eval_ + ["--eps", "eight"], 2, "bad eps 'eight'"),
        (eval_ + ["--alpha", "1/0", "--pgd", "3"], 2, "division by zero"),
        (eval_ + ["--device", "gpu"], 2, "unknown --device 'gpu'"),
        (eval_ + ["--numerics", "fats"], 2, "unknown --numerics 'fats'; choose from verify, fast, bf16"),
        (eval_ + ["--dataset", "cifar11"], 2, "unknown --dataset 'cifar11'"),
        (eval_ + ["--batch-size", "0"], 2, "--batch-size"),
        (eval_ + ["--out", f"{t}/done.json"], 2, "done.json exists; pass --force"),
        (["eval", f"{t}/missing.safetensors"], 2, "no such checkpoint or run folder"),
        (["eval", f"{t}/typo-run"], 2, "no such checkpoint or run folder"),
        (["eval", "no-such-zoo-name"], 2, "no such checkpoint or run folder: no-such-zoo-name"),
        (["info", f"{t}/missing"], 2, "no such checkpoint or run folder"),
        (["train", "-c", "quickstart", "--objective", "pgdd"], 2, "unknown --objective 'pgdd'"),
        (["train", "-c", "quickstart", "--arch", "resnet"], 2, "unknown --arch 'resnet'"),
        (["train", "-c", f"{t}/empty.yaml"], 2, "the config is empty"),
        (["train", "-c", "quickstart", "--keep", "nan", "--out", f"{t}/run"], 2, "keep must be in (0, 1]"),
        (["train", "-c", "quickstart", "--out", str(ck)], 2, "exists and is not a folder"),
        (["train", "-c", "quickstart", "--batch-size", "1"], 2, "--batch-size"),
        (["convert", f"{t}/missing.pth", "--arch", "tiny_resnet", "--out", f"{t}/c.safetensors"], 2, "no such file"),
        (["convert", str(ck), "--arch", "TINY_resnet", "--out", str(ck), "--force"], 2, "is the input file"),
        (["plot", "layerz", str(ck), "--out", f"{t}/p.png"], 2, "unknown plot kind 'layerz'"),
        (["plot", "layers", f"{t}/missing", "--out", f"{t}/p.png"], 2, "no such file or folder"),
        (["pull", "no-such-model"], 2, "is not a zoo name"),
        (["pull", "org/name", "--numerics", "fats"], 2, "unknown --numerics 'fats'"),
        (["push", f"{t}/missing.safetensors", "org/name"], 2, "no such checkpoint or run folder"),
        (["data", "imagenet100", "--imagenet", t, "--out", f"{t}/d", "--link", "hardd"], 2, "unknown --link 'hardd'"),
        (["data", "imagenet100", "--imagenet", f"{t}/missing", "--out", f"{t}/d"], 2, "does not exist"),
    ]
    code = _TYPO_PROBE.format(heavy=HEAVY, cases=cases)
    proc = subprocess.run([sys.executable, "-c", code], env=_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(lines) == len(cases)
    for (argv, rc, err, loaded), (_, code_, message) in zip(lines, cases):
        where = f"rbzoo {' '.join(argv)}"
        assert rc == code_ and err.count("\n") == 1 and err.startswith("error: ") and message in err, (where, rc, err)
        assert loaded == [], (where, loaded)


def test_a_library_warning_is_one_line(monkeypatch, capsys):
    import warnings

    import rbzoo.config
    from rbzoo.cli import main

    def noisy():
        warnings.warn("something a library says\nover two lines", UserWarning)
        return ["quickstart"]

    monkeypatch.setattr(rbzoo.config, "list_configs", noisy)
    assert main(["train", "--list-configs"]) == 0
    assert capsys.readouterr().err == "warning: UserWarning: something a library says over two lines\n"


_BUG_PROBE = """
import sys
import rbzoo.config
def broken():
    raise {exc}("an internal bug")
rbzoo.config.list_configs = broken
from rbzoo.cli import run
sys.argv = ["rbzoo", "train", "--list-configs"]
run()
"""


def test_a_bug_keeps_its_traceback(tmp_path):
    """Only rbzoo's typed errors (and click's usage errors, OSError) become one-line messages: a
    ValueError or KeyError from inside the library is a bug and shows its traceback, exit 1."""
    for exc in ("ValueError", "KeyError"):
        proc = subprocess.run([sys.executable, "-c", _BUG_PROBE.format(exc=exc)], env=_env(tmp_path),
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 1, (exc, proc.stderr)
        assert "Traceback (most recent call last)" in proc.stderr and f"{exc}: " in proc.stderr, proc.stderr
        assert "in broken" in proc.stderr  # where the bug is


def test_the_cli_knows_every_registered_architecture():
    """--arch is checked against a torch-free list of names: it must be the registry's."""
    from rbzoo.constants import BUILTIN_ARCHITECTURES
    from rbzoo.models import ARCHITECTURES

    assert sorted(BUILTIN_ARCHITECTURES) == sorted(ARCHITECTURES)


def test_zoo_list_fits_80_columns(tmp_path):
    """On an 80-column terminal the listing drops the columns a name already says; no name is cut."""
    env = dict(_env(tmp_path), COLUMNS="80")
    proc = subprocess.run([sys.executable, "-m", "rbzoo", "pull", "--list", "--cards-dir", str(ROOT / "cards")],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80, proc.stdout
    names = sorted(p.stem for p in (ROOT / "cards").glob("*.md"))
    assert names and all(any(line.split()[:1] == [name] for line in lines) for name in names), proc.stdout
    assert "…" not in proc.stdout
