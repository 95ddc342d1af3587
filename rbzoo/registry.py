"""Small JSON registries (verified pulls, first downloads) that several processes may update at once.

Reads are lock-free: every write replaces the file atomically, so a reader sees an old or a new
version, never half of one. Updates are read-modify-write under an exclusive `flock` on a sidecar
`<name>.lock` file (the registry file itself is replaced on each write, so it cannot carry the
lock). A registry that cannot be parsed is never treated as empty and overwritten: it is moved
aside to `<name>.corrupt-<UTC timestamp>` with a warning, and a fresh one is started.

A leaf module: it imports only the standard library, `_io` and `errors`.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

from ._io import write_json
from .errors import RbzooWarning

try:
    import fcntl
except ImportError:  # not POSIX: updates are still atomic, only not serialized
    fcntl = None


class _Corrupt(Exception):
    pass


class Registry:
    """A JSON object of records (str → dict) in one file.

    With `envelope` (e.g. "rbzoo_registry") the file is `{envelope: 1, "entries": {...}}`; without,
    the file is the records object itself.
    """

    def __init__(self, path: str | os.PathLike, *, envelope: str | None = None) -> None:
        self.path = Path(path)
        self.envelope = envelope
        self.lock_path = self.path.with_name(self.path.name + ".lock")

    # -- reading ------------------------------------------------------------------------------

    def _parse(self) -> dict:
        """The records on disk ({} if there is no file); _Corrupt if the file is not a registry."""
        try:
            text = self.path.read_text("utf-8")
        except FileNotFoundError:
            return {}
        except (OSError, UnicodeDecodeError) as e:
            raise _Corrupt(str(e)) from None
        try:
            data = json.loads(text)
        except ValueError as e:
            raise _Corrupt(f"not JSON: {e}") from None
        if self.envelope is not None:
            if not isinstance(data, dict) or data.get(self.envelope) != 1:
                raise _Corrupt(f"no {self.envelope!r}: 1 marker")
            data = data.get("entries")
        if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
            raise _Corrupt("not an object of records")
        return data

    def entries(self) -> dict[str, dict]:
        """Every record (a copy). A corrupt file is moved aside (with a warning) and reads as empty."""
        try:
            return self._parse()
        except _Corrupt:
            with self._locked():
                return self._load_or_set_aside()

    def get(self, key: str) -> dict | None:
        return self.entries().get(key)

    # -- writing ------------------------------------------------------------------------------

    def update(self, key: str, record: dict | None, *, if_absent: bool = False) -> dict | None:
        """Set `key` to `record` (None: delete it) under the lock; returns what is stored afterwards.

        `if_absent`: keep an existing record instead (first writer wins).
        """
        with self._locked():
            data = self._load_or_set_aside()
            if if_absent and key in data:
                return data[key]
            if record is None:
                if key not in data:
                    return None
                del data[key]
            else:
                data[key] = record
            self._write(data)
            return record

    def _write(self, data: dict) -> None:
        doc = {self.envelope: 1, "entries": data} if self.envelope is not None else data
        write_json(self.path, doc)

    def _load_or_set_aside(self) -> dict:
        """Only with the lock held: parse, or move a corrupt file aside and start empty."""
        try:
            return self._parse()
        except _Corrupt as e:
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
            n = 1
            while aside.exists():  # two corruptions within a second keep both copies
                n += 1
                aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{n}")
            os.replace(self.path, aside)
            warnings.warn(f"{self.path} was unreadable ({e}); moved it to {aside.name} and started a new one",
                          RbzooWarning, stacklevel=4)
            return {}

    @contextmanager
    def _locked(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if fcntl is None:
            yield
            return
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock


__all__ = ["Registry"]
