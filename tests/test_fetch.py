"""rbzoo.fetch.download against a real loopback HTTP server that can drop connections mid-body."""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from rbzoo.errors import HubError, RbzooError, VerificationError
from rbzoo.fetch import REGISTRY_NAME, download


class FileServer:
    """Serves `content` at any path on 127.0.0.1 (free port), with switches for the failure modes.

    `ranges`: honour `Range` (and `If-Range` against a strong ETag of the content);
    `drop_after`: for the next `drops` responses, send the headers of the full response and only
    this many body bytes, then close the connection; `status`: answer every request with it.
    `requests` records (method, Range, If-Range) of each request and `sent` the body bytes.
    """

    def __init__(self, content: bytes, *, ranges: bool = True):
        self.content, self.ranges = content, ranges
        self.drop_after: int | None = None
        self.drops = 0
        self.status: int | None = None
        self.requests: list[tuple[str, str | None, str | None]] = []
        self.sent: list[int] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_GET(self):  # noqa: N802
                server.requests.append((self.command, self.headers.get("Range"), self.headers.get("If-Range")))
                if server.status is not None:
                    self.send_response(server.status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body, etag = server.content, server.etag
                start, status = 0, 200
                rng = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
                if_range = self.headers.get("If-Range")
                if server.ranges and rng and (if_range is None or if_range == etag):
                    start = int(rng.group(1))
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    status = 206
                chunk = body[start:]
                self.send_response(status)
                self.send_header("Content-Length", str(len(chunk)))
                self.send_header("ETag", etag)
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.end_headers()
                if server.drops > 0 and server.drop_after is not None:
                    server.drops -= 1
                    self.wfile.write(chunk[: server.drop_after])
                    self.wfile.flush()
                    server.sent.append(min(server.drop_after, len(chunk)))
                    self.close_connection = True
                    return
                self.wfile.write(chunk)
                server.sent.append(len(chunk))

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/rn34_cifar10_n.pth"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def etag(self) -> str:
        return '"' + hashlib.sha256(self.content).hexdigest()[:16] + '"'

    def __enter__(self) -> "FileServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _payload(n: int = 300_000, seed: int = 0) -> bytes:
    return b"".join(hashlib.sha256(f"{seed}:{i}".encode()).digest() for i in range(n // 32 + 1))[:n]


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name not in (REGISTRY_NAME, REGISTRY_NAME + ".lock"))


def test_download_records_size_and_sha(tmp_path):
    data = _payload()
    with FileServer(data) as srv:
        res = download(srv.url, tmp_path / "f.pth", progress=False)
        assert res.path.read_bytes() == data
        assert (res.sha256, res.size, res.resumed, res.cached) == (hashlib.sha256(data).hexdigest(), len(data), False, False)
        reg = json.loads((tmp_path / REGISTRY_NAME).read_text())
        assert reg[srv.url]["sha256"] == res.sha256 and reg[srv.url]["size"] == len(data)
        assert _leftovers(tmp_path) == ["f.pth"]
        # Second call: the recorded file is already there, no request is made.
        n = len(srv.requests)
        again = download(srv.url, tmp_path / "f.pth", progress=False)
        assert again.cached and again.sha256 == res.sha256 and len(srv.requests) == n


def test_interrupted_download_resumes_automatically(tmp_path):
    data = _payload()
    with FileServer(data) as srv:
        srv.drop_after, srv.drops = 100_000, 1
        res = download(srv.url, tmp_path / "f.pth", progress=False, retries=2)
        assert res.path.read_bytes() == data and res.resumed
        (m1, r1, _), (m2, r2, ir2) = srv.requests
        assert r1 is None and r2 is not None and ir2 == srv.etag
        start = int(re.fullmatch(r"bytes=(\d+)-", r2).group(1))
        assert 0 < start <= 100_000 and srv.sent[1] == len(data) - start  # only the rest was sent again
        assert _leftovers(tmp_path) == ["f.pth"]


def test_interrupted_download_leaves_only_part_then_resumes_next_call(tmp_path):
    data = _payload()
    dest = tmp_path / "f.pth"
    with FileServer(data) as srv:
        srv.drop_after, srv.drops = 120_000, 1
        with pytest.raises(HubError, match=r"interrupted after .* run again to resume") as e:
            download(srv.url, dest, progress=False, retries=0)
        assert "\n" not in str(e.value)
        assert not dest.exists() and (tmp_path / "f.pth.part").is_file()
        have = (tmp_path / "f.pth.part").stat().st_size
        assert 0 < have <= 120_000
        res = download(srv.url, dest, progress=False, retries=0)
        assert dest.read_bytes() == data and res.resumed
        assert srv.requests[-1][1] == f"bytes={have}-" and srv.sent[-1] == len(data) - have
        assert _leftovers(tmp_path) == ["f.pth"]


def test_server_without_range_support_restarts(tmp_path):
    data = _payload()
    dest = tmp_path / "f.pth"
    with FileServer(data, ranges=False) as srv:
        srv.drop_after, srv.drops = 150_000, 1
        with pytest.raises(HubError):
            download(srv.url, dest, progress=False, retries=0)
        assert (tmp_path / "f.pth.part").stat().st_size > 0
        res = download(srv.url, dest, progress=False, retries=0)
        assert srv.requests[-1][1] is not None  # asked to resume, got the whole file: restarted cleanly
        assert dest.read_bytes() == data and not res.resumed and srv.sent[-1] == len(data)


def test_file_changed_during_interruption_restarts_via_if_range(tmp_path):
    old, new = _payload(seed=1), _payload(seed=2)
    dest = tmp_path / "f.pth"
    with FileServer(old) as srv:
        srv.drop_after, srv.drops = 150_000, 1
        with pytest.raises(HubError):
            download(srv.url, dest, progress=False, retries=0)
        assert (tmp_path / "f.pth.part").stat().st_size > 0
        srv.content = new  # the server now has another file: the old prefix must not be spliced in
        res = download(srv.url, dest, progress=False, retries=0)
        assert srv.requests[-1][2] is not None  # If-Range was sent, and did its job
        assert dest.read_bytes() == new and not res.resumed


def test_changed_file_on_later_download_is_detected(tmp_path):
    old, new = _payload(seed=1), _payload(seed=2)
    dest = tmp_path / "f.pth"
    with FileServer(old) as srv:
        first = download(srv.url, dest, progress=False)
        srv.content = new
        with pytest.raises(VerificationError) as e:
            download(srv.url, dest, progress=False, force=True)
        msg = str(e.value)
        assert first.sha256 in msg and hashlib.sha256(new).hexdigest() in msg and "changed" in msg
        assert dest.read_bytes() == old  # the earlier file is kept
        # Into a fresh destination beside the same registry: refused too, nothing left behind.
        with pytest.raises(VerificationError):
            download(srv.url, tmp_path / "other.pth", progress=False)
        assert _leftovers(tmp_path) == ["f.pth"]


def test_expected_sha_and_size_mismatch(tmp_path):
    data = _payload()
    with FileServer(data) as srv:
        with pytest.raises(VerificationError, match="expected 0000"):
            download(srv.url, tmp_path / "f.pth", progress=False, expected_sha256="0" * 64)
        with pytest.raises(VerificationError, match="expected 12"):
            download(srv.url, tmp_path / "g.pth", progress=False, expected_size=12)
        assert _leftovers(tmp_path) == [] and not (tmp_path / REGISTRY_NAME).exists()
        ok = download(srv.url, tmp_path / "f.pth", progress=False, expected_sha256=hashlib.sha256(data).hexdigest(),
                      expected_size=len(data))
        assert ok.size == len(data)


@pytest.mark.parametrize("status", [404, 500])
def test_http_errors_are_one_line(tmp_path, status):
    with FileServer(b"x") as srv:
        srv.status = status
        with pytest.raises(HubError, match=f"HTTP {status}") as e:
            download(srv.url, tmp_path / "f.pth", progress=False, retries=0)
        assert "\n" not in str(e.value) and isinstance(e.value, RbzooError)
    assert _leftovers(tmp_path) == []


def test_unreachable_server(tmp_path):
    with FileServer(b"x") as srv:
        url = srv.url
    with pytest.raises(HubError) as e:
        download(url, tmp_path / "f.pth", progress=False, retries=1, timeout=(2, 2))
    # short and whole: the URL once, the host, the cause's full name (not requests' 400-character text)
    assert str(e.value) == f"cannot download {url}: cannot connect to 127.0.0.1 (NewConnectionError)"
    assert not (tmp_path / "f.pth").exists()


def test_no_partial_final_file_while_downloading(tmp_path):
    """The destination appears only by the final rename: interrupting at any point leaves none."""
    data = _payload()
    dest = tmp_path / "f.pth"
    with FileServer(data) as srv:
        for cut in (0, 1, 64_000, len(data) - 1):
            srv.drop_after, srv.drops = cut, 1
            with pytest.raises(HubError):
                download(srv.url, dest, progress=False, retries=0)
            assert not dest.exists()
            os.remove(tmp_path / "f.pth.part") if (tmp_path / "f.pth.part").exists() else None
        assert download(srv.url, dest, progress=False).path.read_bytes() == data


def test_stale_part_longer_than_the_file_restarts(tmp_path):
    data = _payload()
    (tmp_path / "f.pth.part").write_bytes(b"x" * (len(data) + 10))  # left by some other, larger file
    with FileServer(data) as srv:
        res = download(srv.url, tmp_path / "f.pth", progress=False, retries=1)
        assert srv.requests[0][1] == f"bytes={len(data) + 10}-"  # answered 416: the part was dropped
        assert res.path.read_bytes() == data and not res.resumed
    assert _leftovers(tmp_path) == ["f.pth"]


def test_offline_uses_the_cache_or_says_so(tmp_path, monkeypatch):
    """HF_HUB_OFFLINE=1: a complete recorded copy is returned; otherwise one HubError, no request."""
    data = _payload()
    with FileServer(data) as srv:
        download(srv.url, tmp_path / "f.pth", progress=False)
        n = len(srv.requests)
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        assert download(srv.url, tmp_path / "f.pth", progress=False).cached
        with pytest.raises(HubError, match="HF_HUB_OFFLINE is set and .*g.pth holds no complete copy"):
            download(srv.url + "?other", tmp_path / "g.pth", progress=False)
        (tmp_path / "f.pth").write_bytes(b"changed")
        with pytest.raises(HubError, match="does not match the recorded SHA-256"):
            download(srv.url, tmp_path / "f.pth", progress=False)
        assert len(srv.requests) == n and (tmp_path / "f.pth").read_bytes() == b"changed"
