"""Atomic file writes: every artifact is written to a temp file in the same folder, then renamed."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .errors import OutputExistsError

# The most bytes a results JSON (or a certificate JSON) may have; larger files are refused before
# they are read (read_json). Real ones are small: a 50,000-sample evaluation's per-sample
# certificate (17-bit labels, float16 margins, base64) and robust flags take about 0.3 MB, so 256 MiB
# is headroom no honest file meets, while a hostile one cannot make a reader allocate more.
MAX_RESULTS_BYTES = 256 << 20


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside `path`; on success it replaces `path`, on error it vanishes.

    A failed write surfaces as an OSError naming `path` (ENOSPC when the disk is full), never the
    temporary name; `path` itself is untouched."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as e:  # a file where a folder must be
        raise NotADirectoryError(errno.ENOTDIR, f"not a folder, cannot write {path.name} in it", e.filename) from None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:  # e.g. a read-only folder: name the file asked for, not the temp
        raise OSError(e.errno, e.strerror or str(e), str(path)) from None
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file normal permissions
        os.replace(tmp, path)
    except BaseException as e:
        # torch.save reports a full disk as a RuntimeError without errno: look before the
        # partial file is deleted (which frees its space).
        full = isinstance(e, RuntimeError) and _no_space(path.parent)
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from e
        if isinstance(e, OSError) and e.filename in (None, tmp, str(tmp)):  # name the file asked for, not the temp
            raise OSError(e.errno, e.strerror or str(e), str(path)) from e
        raise


def _no_space(folder: Path) -> bool:
    """True when the file system holding `folder` is (nearly) full."""
    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError):  # AttributeError: no statvfs (Windows)
        return False
    blocks = st.f_bfree if os.geteuid() == 0 else st.f_bavail  # root may use the reserved blocks
    return blocks * st.f_frsize < (64 << 10)


def check_output(out: str | os.PathLike, *, inputs: tuple = (), force: bool = False, kind: str = "output") -> Path:
    """The one writer rule: never write over an input (even with --force), never replace an existing
    output without --force, never write a file where a folder is. Returns `out` as a Path."""
    out = Path(out)
    for src in (Path(s) for s in inputs if s is not None):
        # resolve() catches symlinks and `..`; samefile also catches hard links
        if src.resolve() == out.resolve() or (src.exists() and out.exists() and os.path.samefile(out, src)):
            raise OutputExistsError(f"{kind} {out} is the input file; choose another path (this is refused even with --force)")
    if out.is_dir():
        raise OutputExistsError(f"{kind} {out} is a folder; give a file path")
    if out.exists() and not force:
        raise OutputExistsError(f"{kind} {out} exists; pass --force to replace it")
    return out


def canonical_json(obj) -> str:
    """The one JSON spelling rbzoo hashes (docs/format.md §8): sorted keys, no spaces, ASCII only,
    no NaN/Infinity. The same object always gives the same bytes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def file_sha256(path: str | os.PathLike, algorithm: str = "sha256") -> tuple[str, int]:
    """(hex digest, size in bytes) of a file, read in 1 MiB chunks."""
    h, n = hashlib.new(algorithm), 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
            n += len(chunk)
    return h.hexdigest(), n


def check_size(size: int, limit: int, error: type[Exception], *, what: str, name: str, action: str = "read") -> None:
    """Refuse (with `error`, one line naming `name`, its size and the limit) a file of `size` bytes
    larger than `limit`, before it is read or downloaded (`action`)."""
    if size > limit:
        raise error(f"{name}: {size:,} bytes is more than {limit:,}, the most {what} can be; refusing to {action} it")


def _read_at_most(path: str | os.PathLike, limit: int, error: type[Exception], what: str, name: str) -> bytes:
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        check_size(size, limit, error, what=what, name=name)
        data = f.read(size + 1)  # one byte more than the size seen: a file that grew since shows it
    if len(data) > size:
        raise error(f"{name}: grew while being read (from {size:,} bytes; {what} can be at most {limit:,}); "
                    f"refusing it")
    return data


def read_bounded(path: str | os.PathLike, limit: int, error: type[Exception], *, what: str = "this file",
                 name: str | None = None) -> bytes:
    """The bytes of `path`, never more than `limit`: its size is checked before anything is read (an
    oversized file is refused without being loaded) and again on what was read. A larger file, or
    one that cannot be read, raises `error` with one line naming the file (`name`, default its
    path), its size and the limit; `what` says what the file is ("a results JSON")."""
    name = str(path) if name is None else name
    try:
        return _read_at_most(path, limit, error, what, name)
    except OSError as e:
        raise error(f"{name}: cannot read {what} ({e.strerror or e})") from None


def read_json(path: str | os.PathLike, what: str, error: type[Exception], *, limit: int = MAX_RESULTS_BYTES,
              name: str | None = None):
    """The JSON value in `path` (at most `limit` bytes, checked before reading, see :func:`read_bounded`);
    an unreadable file or invalid JSON raises `error` with one line naming the file (`name`, default
    its path) and `what` it should hold."""
    label = str(path) if name is None else name
    try:
        return json.loads(_read_at_most(path, limit, error, f"a {what}", label).decode("utf-8"))
    except (OSError, ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        raise error(f"{label}: not a readable {what} ({str(e).splitlines()[0][:120] if str(e) else type(e).__name__})") from None


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")
