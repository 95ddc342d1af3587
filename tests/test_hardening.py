"""Nothing lost, nothing silent (issue 11): bad input, Ctrl-C, a full disk and concurrent updates.

Every CLI failure must be ONE line on stderr, no traceback, the documented exit code, and leave
every file as it was. The commands run in-process through `rbzoo.cli.main` (fast), except where a
real process is the point (SIGINT, two pulls at once, a full filesystem).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import warnings
from pathlib import Path

import pytest

from rbzoo.errors import RbzooWarning
from rbzoo.registry import Registry

# ------------------------------------------------------------------------------------------ registry


def test_corrupt_registry_is_moved_aside_with_a_warning(tmp_path):
    path = tmp_path / "verified.json"
    reg = Registry(path, envelope="rbzoo_registry")
    reg.update("a", {"status": "verified"})
    assert json.loads(path.read_text()) == {"rbzoo_registry": 1, "entries": {"a": {"status": "verified"}}}
    for junk in (b'{"rbzoo_registry": 1, "entries": {"a": ', b"\xff\xfe", b'{"entries": {}}', b"[1, 2]"):
        path.write_bytes(junk)
        with pytest.warns(RbzooWarning, match="verified.json was unreadable .* moved it to verified.json.corrupt-"):
            assert reg.entries() == {}
        aside = sorted(tmp_path.glob("verified.json.corrupt-*"))
        assert aside and aside[-1].read_bytes() == junk  # the old bytes are kept, not emptied
        assert not path.exists()
    path.write_bytes(b"not json")
    with pytest.warns(RbzooWarning):
        reg.update("b", {"status": "downloaded"})  # an update keeps nothing of a corrupt file but warns
    assert reg.entries() == {"b": {"status": "downloaded"}}
    assert len(list(tmp_path.glob("verified.json.corrupt-*"))) == 5


def test_first_writer_wins_and_delete(tmp_path):
    reg = Registry(tmp_path / "r.json")
    assert reg.update("k", {"v": 1}, if_absent=True) == {"v": 1}
    assert reg.update("k", {"v": 2}, if_absent=True) == {"v": 1}
    assert reg.update("k", None) is None and reg.get("k") is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a missing or valid file never warns
        assert Registry(tmp_path / "none.json").entries() == {}


def _hammer(path: str, worker: int, n: int, barrier) -> None:
    reg = Registry(path, envelope="rbzoo_registry")
    barrier.wait()  # both start together
    for i in range(n):
        reg.update(f"{worker}-{i}", {"worker": worker, "i": i})


def test_concurrent_updates_lose_nothing(tmp_path):
    """Two processes updating at once: every record survives (an unlocked read-modify-write loses some)."""
    path = str(tmp_path / "verified.json")
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_hammer, args=(path, w, 150, barrier)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    entries = Registry(path, envelope="rbzoo_registry").entries()
    assert sorted(entries) == sorted(f"{w}-{i}" for w in range(2) for i in range(150))
    assert not list(tmp_path.glob("*.corrupt-*")) and not list(tmp_path.glob(".*.tmp"))
