"""A CLI that answers at once: help, version and the zoo listing never import torch.

Each check runs a fresh interpreter (this test process has torch loaded already). The console
entry point is checked with `-X importtime`, which names every module the process imported; the
other commands run in one interpreter through `rbzoo.cli.main`, checking `sys.modules` after each.
"""

from __future__ import annotations

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
