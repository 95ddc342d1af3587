"""Resumable, verified HTTP downloads (the official checkpoints the zoo imports live on OneDrive).

`download` streams into `DEST.part`, resumes an interrupted transfer with an HTTP Range request
(guarded by If-Range, so a file that changed on the server restarts instead of being spliced),
restarts from zero when the server ignores Range, and renames the finished file onto `DEST` only
after its size and SHA-256 are checked. The first successful download of a URL records both in a
small JSON registry beside `DEST`; a later download of the same URL that yields other bytes is an
error naming both hashes, and the earlier file is kept.
"""

from __future__ import annotations

import os
import re
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests

from ._io import file_sha256 as sha256_file  # (hex digest, size); part of this module's API
from ._io import read_json, write_json
from .constants import hf_offline
from .errors import HubError, VerificationError
from .registry import Registry

REGISTRY_NAME = "downloads.json"
CHUNK = 1 << 20
# Network reads: a connection that breaks mid-read loses the read in flight, so keep it small.
NET_CHUNK = 1 << 16


@dataclass(frozen=True)
class FetchResult:
    path: Path
    sha256: str
    size: int
    resumed: bool = False  # a Range request continued an earlier, interrupted transfer
    cached: bool = False  # DEST already held the recorded file: no network used


class _Interrupted(Exception):
    """The transfer stopped early; what arrived is in the .part file."""


@contextmanager
def _bar(label: str, enabled: bool):
    """A rich progress bar, silent when disabled or when stdout is not a terminal."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
    with Progress(*columns, disable=not (enabled and sys.stdout.isatty())) as progress:
        yield progress, progress.add_task(label, total=None)


def _content_range(value: str | None) -> tuple[int, int | None] | None:
    m = re.fullmatch(r"\s*bytes\s+(\d+)-\d+/(\d+|\*)\s*", value or "")
    if not m:
        return None
    return int(m.group(1)), (None if m.group(2) == "*" else int(m.group(2)))


def _transfer(session: requests.Session, url: str, part: Path, side: Path, timeout, bar) -> bool:
    """One HTTP request appending to (or restarting) `part`; True if it resumed earlier bytes."""
    have = part.stat().st_size if part.exists() else 0
    record = read_json(side, "resume record; delete it to start the download afresh", HubError) if have and side.exists() else {}
    validator = record.get("validator") if isinstance(record, dict) else None
    headers = {"Accept-Encoding": "identity"}  # byte offsets must refer to the file itself
    if have:
        headers["Range"] = f"bytes={have}-"
        if validator:
            headers["If-Range"] = validator
    try:
        with session.get(url, headers=headers, stream=True, timeout=timeout) as r:
            if r.status_code == 416 and have:  # the part is no prefix of the current file: start over
                part.unlink()
                raise _Interrupted(f"the server cannot continue at byte {have:,}; restarting")
            if r.status_code >= 400:
                raise HubError(f"download of {url} failed: HTTP {r.status_code} {r.reason or ''}".rstrip())
            if r.status_code not in (200, 206):
                raise HubError(f"download of {url} failed: unexpected HTTP {r.status_code} {r.reason or ''}".rstrip())
            if r.status_code == 206:
                rng = _content_range(r.headers.get("Content-Range"))
                if rng is None or rng[0] != have:  # not the continuation we asked for: start over
                    part.unlink(missing_ok=True)
                    raise _Interrupted(f"the server did not continue at byte {have:,}; restarting")
                mode, total = "ab", rng[1]
            else:  # the whole file: a fresh start, a server without Range, or If-Range saw a change
                mode, have = "wb", 0
                length = r.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
                etag = r.headers.get("ETag")
                # If-Range needs a strong validator; weak ETags would restart every resume.
                tag = etag if etag and not etag.startswith("W/") else r.headers.get("Last-Modified")
                write_json(side, {"url": url, "validator": tag})
            bar[0].update(bar[1], total=total, completed=have)
            with open(part, mode) as f:
                for chunk in r.iter_content(NET_CHUNK):
                    f.write(chunk)
                    bar[0].advance(bar[1], len(chunk))
    except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as e:
        raise _Interrupted(str(e).splitlines()[0][:200]) from None
    size = part.stat().st_size
    if total is not None and size != total:
        raise _Interrupted(f"got {size:,} of {total:,} bytes")
    return mode == "ab"


def download(url: str, dest: str | Path, *, expected_sha256: str | None = None, expected_size: int | None = None,
             progress: bool = True, session: requests.Session | None = None, registry: str | Path | None = None,
             retries: int = 3, timeout: tuple[float, float] = (30.0, 120.0), force: bool = False) -> FetchResult:
    """Download `url` to `dest` (resumable, verified, atomic); see the module docstring.

    If `dest` already holds the file recorded for `url` (or `expected_sha256`), it is returned
    without network use unless `force`; with HF_HUB_OFFLINE set that is the only way (HubError
    otherwise). Network and HTTP errors are HubError; a size or SHA-256
    that differs from `expected_*` or from the registry is VerificationError. An interrupted
    transfer is resumed up to `retries` times; after that its bytes stay in `DEST.part` for the
    next call.
    """
    dest = Path(dest)
    part, side = dest.with_name(dest.name + ".part"), dest.with_name(dest.name + ".part.json")
    registry = Registry(Path(registry) if registry is not None else dest.parent / REGISTRY_NAME)
    record = registry.get(url)
    want = expected_sha256 or (record or {}).get("sha256")
    if dest.is_file() and not force and want:
        sha, size = sha256_file(dest)
        if sha == want:
            return FetchResult(dest, sha, size, cached=True)
    if hf_offline():
        have = ("no complete copy" if not dest.is_file() else "a file with no recorded SHA-256 to check" if not want
                else "a copy that does not match the recorded SHA-256")
        raise HubError(f"HF_HUB_OFFLINE is set and {dest} holds {have}: unset HF_HUB_OFFLINE to download "
                       f"{url}, or give a local copy of the file (e.g. `rbzoo pull NAME --source FILE`)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    session = session or requests.Session()
    resumed = False
    with _bar(dest.name, progress) as bar:
        for attempt in range(retries + 1):
            try:
                resumed = _transfer(session, url, part, side, timeout, bar) or resumed
                break
            except _Interrupted as e:
                got = part.stat().st_size if part.exists() else 0
                if attempt == retries:
                    raise HubError(f"download of {url} interrupted after {got:,} bytes ({e}); run again to resume "
                                   f"from {part}") from None
                time.sleep(min(0.25 * 2**attempt, 4.0))
    sha, size = sha256_file(part)
    problems = []
    if expected_size is not None and size != expected_size:
        problems.append(f"{size:,} bytes, expected {expected_size:,}")
    if expected_sha256 is not None and sha != expected_sha256:
        problems.append(f"SHA-256 {sha}, expected {expected_sha256}")
    if record is not None and (record.get("sha256") != sha or record.get("size") != size):
        problems.append(f"SHA-256 {sha} ({size:,} bytes) differs from {record.get('sha256')} "
                        f"({record.get('size', 0):,} bytes) recorded on the first download ({record.get('recorded', '?')}): "
                        f"the file at the URL changed")
    if problems:
        part.unlink(missing_ok=True)
        side.unlink(missing_ok=True)
        raise VerificationError(f"download of {url}: {'; '.join(problems)}; the download was deleted"
                                + (f" and {dest} kept" if dest.is_file() else ""))
    with open(part, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(part, dest)
    side.unlink(missing_ok=True)
    if record is None:  # the first download of a URL fixes its bytes (first writer wins)
        registry.update(url, {"sha256": sha, "size": size, "file": dest.name,
                              "recorded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, if_absent=True)
    return FetchResult(dest, sha, size, resumed=resumed)


__all__ = ["FetchResult", "download", "sha256_file"]
