"""`rbzoo eval` when piped: plain progress lines; and the default state folder follows the evaluation,
not --out, so adding --out to an interrupted command resumes it instead of starting over."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from rbzoo.cli import main

from test_eval import trained_checkpoint  # noqa: F401 (fixtures)

pytestmark = pytest.mark.usefixtures("one_thread")

ARGS = ["--n-examples", "8", "--chunk-size", "4", "--device", "cpu", "--eps", "2/255", "--version", "custom",
        "--attacks", "apgd-ce,apgd-t", "--n-iter", "2", "--n-restarts", "1", "--seed", "3"]


def _chunk_files(home: Path) -> dict[str, tuple[int, bytes]]:
    return {str(p.relative_to(home)): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(home.glob("eval-state/*/chunk-*.json"))}


def test_piped_progress_lines_and_state_reused_when_out_is_added(trained_checkpoint, cifar10_root, tmp_path,
                                                                    monkeypatch, capsys):
    home = tmp_path / "home"
    monkeypatch.setenv("RBZOO_HOME", str(home))
    cmd = ["eval", str(trained_checkpoint), "--data-dir", str(cifar10_root), *ARGS]

    capsys.readouterr()
    assert main(cmd) == 0  # no --out: the state goes to $RBZOO_HOME/eval-state/<key>
    first = capsys.readouterr().out
    lines = first.splitlines()
    # One plain line when the clean pass ends, one per chunk, one per attack on each chunk.
    assert any(re.fullmatch(r"clean: 8/8 examples \(\d+\.\d s\)", ln) for ln in lines), first
    starts = [ln for ln in lines if re.match(r"chunk \d/2: 4 points, \d clean-correct to attack$", ln)]
    attacks = [ln for ln in lines if re.match(r"chunk \d/2 apgd-(ce|t): \d/4 still robust \(\d+\.\d s\); \d+/\d+ point-attacks done", ln)]
    assert len(starts) == 2 and len(attacks) == 4, first
    assert attacks[-1].endswith("16/16 point-attacks done") and "ETA" in attacks[0]
    saved = _chunk_files(home)
    assert len(saved) == 2 and len({Path(k).parent for k in saved}) == 1
    state_dir = home / Path(next(iter(saved))).parent

    out = tmp_path / "results" / "r.json"
    assert main([*cmd, "--out", str(out)]) == 0  # the same evaluation, now with --out: resumed, not redone
    second = capsys.readouterr().out
    assert second.count("resumed after apgd-ce, apgd-t") == 2 and "point-attacks done" not in second, second
    assert _chunk_files(home) == saved  # no chunk was attacked or rewritten
    r = json.loads(out.read_text())
    assert Path(r["state_dir"]) == state_dir and not out.with_name("r.state").exists()
    assert r["n_chunks"] == 2 and list(r["robust_acc_after"]) == ["apgd-ce", "apgd-t"]
