"""A small Hugging Face Hub-protocol test server (standard library only).

It speaks enough of the Hub HTTP API for the real ``huggingface_hub`` client (0.36 / 1.x / 2.4) to
create repos, commit (regular files inline, large/binary files through the basic LFS protocol),
list, inspect and download files, over real HTTP on 127.0.0.1. See docs/hub-testing.md.

Storage (under ``root``): ``blobs/<sha256>`` is a content-addressed blob store shared by all repos;
``repos/<type>s/<org>/<name>.json`` holds a repo's commits (immutable snapshots path -> entry),
branches, tags and pull-request refs. A server started on an existing ``root`` reloads it.

The client must run with Xet disabled (``HF_HUB_DISABLE_XET=1`` or
``huggingface_hub.constants.HF_HUB_DISABLE_XET = True``): the Xet write path is not served.

Fault injection: :meth:`HubTestServer.fail_next`, :attr:`HubTestServer.truncate_downloads`,
:meth:`HubTestServer.corrupt_blob`. All requests are recorded in :attr:`HubTestServer.request_log`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import socket
import sys
import threading
import traceback
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

REPO_TYPES = ("model", "dataset", "space")
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".onnx", ".msgpack", ".pkl",
                ".npy", ".npz", ".gguf", ".zip", ".gz", ".tar", ".parquet", ".arrow", ".joblib", ".model")
GITATTRIBUTES = "".join(f"*{s} filter=lfs diff=lfs merge=lfs -text\n" for s in LFS_SUFFIXES).encode()
_HEX40 = re.compile(r"^[0-9a-f]{40}$")
_SHORT_SHA = re.compile(r"^[0-9a-f]{7,40}$")


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _truthy(v) -> bool:
    return str(v).lower() in ("1", "true", "yes")


def parse_card_data(text: str) -> dict:
    """Very small YAML front-matter reader: top-level scalars and lists of scalars only."""
    if not text.startswith("---"):
        return {}
    end = text.find("\n---", 3)
    if end < 0:
        return {}
    out: dict = {}
    key = None

    def scalar(s: str):
        s = s.strip()
        if len(s) >= 2 and s[0] == s[-1] and s[0] in "'\"":
            return s[1:-1]
        s = s.split(" #")[0].strip()
        return {"true": True, "false": False, "null": None, "~": None}.get(s.lower(), s)

    nested: set = set()  # keys with nested mappings: too complex for this reader, dropped
    for line in text[3:end].splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        item = line.strip()[2:] if line.strip().startswith("- ") else None
        if not line[0].isspace() and item is None and ":" in line:
            key, _, val = line.partition(":")
            key, val = key.strip(), val.strip()
            if val.startswith("[") and val.endswith("]"):
                out[key] = [scalar(x) for x in val[1:-1].split(",") if x.strip()]
            elif val:
                out[key] = scalar(val)
            else:
                out[key] = None  # filled by a following "- item" list, or nested (dropped)
        elif key is not None and item is not None and not re.match(r"^[\w-]+\s*:", item):
            out[key] = (out.get(key) or []) + [scalar(item)]
        elif key is not None:
            nested.add(key)
    return {k: v for k, v in out.items() if v is not None and k not in nested}



TEST_TOKEN = "hf_test_token"  # the token test servers accept by default

class HubServerError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}


class HubTestServer:
    """Hub-protocol server on 127.0.0.1:<free port>. Usable as a context manager.

    tokens: iterable of valid tokens (all map to ``user``) or a dict token -> username.
    """

    def __init__(self, root, tokens=(TEST_TOKEN,), *, user: str = "test-user", host: str = "127.0.0.1",
                 port: int = 0, lfs_threshold: int = 10_000, initial_gitattributes: bool = True,
                 verbose: bool = False):
        self.root = Path(root)
        (self.root / "blobs").mkdir(parents=True, exist_ok=True)
        (self.root / "repos").mkdir(parents=True, exist_ok=True)
        self.tokens: dict[str, str] = dict(tokens) if isinstance(tokens, dict) else {t: user for t in tokens}
        self.user = user
        self.lfs_threshold = lfs_threshold
        self.initial_gitattributes = initial_gitattributes
        self.verbose = verbose
        self.truncate_downloads: bool | int = False
        self.request_log: list[tuple[str, str]] = []
        self.errors: list[str] = []  # server-side tracebacks (bugs), for debugging tests
        self._lock = threading.RLock()
        self._faults: list[dict] = []
        self._tickets: dict[str, tuple[str, int]] = {}
        self._conns: set = set()
        self._repos: dict[tuple[str, str], dict] = {}
        for f in (self.root / "repos").glob("*/*/*.json"):
            repo = json.loads(f.read_text())
            self._repos[(repo["type"], repo["id"])] = repo
        self._httpd = ThreadingHTTPServer((host, port), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.hub = self  # type: ignore[attr-defined]
        self.port = self._httpd.server_address[1]
        self.url = f"http://{host}:{self.port}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), name="hub-test-server",
                                        daemon=True)
        self._stopped = False
        self._thread.start()

    # ----------------------------------------------------------------- lifecycle
    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._httpd.shutdown()
        self._httpd.server_close()
        with self._lock:
            conns = list(self._conns)
        for c in conns:  # also cut keep-alive connections still held by client pools
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._thread.join(timeout=5)

    def __enter__(self) -> "HubTestServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # ----------------------------------------------------------------- fault injection
    def fail_next(self, status: int = 500, count: int = 1, path_contains: str | None = None,
                  method: str | None = None) -> None:
        """Answer the next ``count`` requests matching (path substring, method) with ``status``."""
        with self._lock:
            self._faults.append({"status": status, "count": count, "path": path_contains, "method": method})

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()
            self.truncate_downloads = False

    def _take_fault(self, method: str, path: str) -> int | None:
        with self._lock:
            for f in self._faults:
                if f["count"] > 0 and (f["path"] is None or f["path"] in path) and f["method"] in (None, method):
                    f["count"] -= 1
                    return f["status"]
            self._faults = [f for f in self._faults if f["count"] > 0]
        return None

    def corrupt_blob(self, repo_id: str, path: str, revision: str = "main", repo_type: str = "model") -> Path:
        """Flip bytes of a stored file in place (same size; recorded sha256/etag untouched).

        Blobs are content-addressed and shared: every repo/commit with identical content is affected."""
        with self._lock:
            repo = self._get_repo(repo_type, repo_id)
            entry = repo["commits"][self._resolve(repo, revision)]["files"].get(path)
            if entry is None:
                raise KeyError(path)
            blob = self._blob_path(entry["sha256"])
            data = bytearray(blob.read_bytes())
            if not data:
                raise ValueError("cannot corrupt an empty file")
            for i in {0, len(data) // 2, len(data) - 1}:
                data[i] ^= 0xFF
            blob.write_bytes(bytes(data))
            return blob

    # ----------------------------------------------------------------- server-side helpers (seeding)
    def create_repo(self, repo_id: str, repo_type: str = "model", private: bool = False) -> dict:
        with self._lock:
            key = (repo_type, repo_id)
            if key in self._repos:
                raise FileExistsError(f"{repo_type} repo {repo_id} already exists")
            repo = {"type": repo_type, "id": repo_id, "private": bool(private), "created": _now(),
                    "branches": {}, "tags": {}, "prs": {}, "next_pr": 1, "commits": {}}
            self._repos[key] = repo
            files = {".gitattributes": GITATTRIBUTES} if self.initial_gitattributes else {}
            self.commit(repo_id, files, message="initial commit", repo_type=repo_type, author=self.user)
            return repo

    def commit(self, repo_id: str, files: dict, *, message: str = "Update", branch: str = "main",
               repo_type: str = "model", author: str | None = None, lfs: bool | None = None) -> str:
        """Commit ``{path: bytes | None}`` (None deletes) directly on a branch; returns the commit id.

        A branch that does not exist yet is created from main's head. ``lfs=None`` picks the storage
        mode like preupload does (size > lfs_threshold, LFS suffix, or NUL byte in the first 512 B)."""
        with self._lock:
            repo = self._get_repo(repo_type, repo_id)
            parent = repo["branches"].get(branch) or repo["branches"].get("main")
            tree = dict(repo["commits"][parent]["files"]) if parent else {}
            for p, data in files.items():
                if data is None:
                    tree.pop(p, None)
                else:
                    as_lfs = self._wants_lfs(p, len(data), data[:512]) if lfs is None else lfs
                    tree[p] = self._entry(self._put_blob(data), len(data), as_lfs, data)
            oid = self._new_commit(repo, parent, tree, message, "", author or self.user)
            repo["branches"][branch] = oid
            self._save(repo)
            return oid

    # ----------------------------------------------------------------- storage internals
    def _blob_path(self, sha256: str) -> Path:
        return self.root / "blobs" / sha256

    def _put_blob(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        dest = self._blob_path(sha)
        if not dest.exists():
            tmp = dest.with_name(f"{sha}.{secrets.token_hex(4)}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, dest)
        return sha

    def _entry(self, sha256: str, size: int, lfs: bool, data: bytes | None = None) -> dict:
        if lfs:
            ptr = lfs_pointer(sha256, size)
            return {"sha256": sha256, "size": size, "lfs": True, "oid": git_blob_sha1(ptr), "pointer_size": len(ptr)}
        if data is None:
            data = self._blob_path(sha256).read_bytes()
        return {"sha256": sha256, "size": size, "lfs": False, "oid": git_blob_sha1(data)}

    def _wants_lfs(self, path: str, size: int, sample: bytes) -> bool:
        if size == 0:
            return False
        return size > self.lfs_threshold or path.lower().endswith(LFS_SUFFIXES) or b"\0" in sample

    def _save(self, repo: dict) -> None:
        t, (org, name) = repo["type"], repo["id"].split("/")
        dest = self.root / "repos" / f"{t}s" / org / f"{name}.json"
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_suffix(f".{secrets.token_hex(4)}.tmp")
        tmp.write_text(json.dumps(repo))
        os.replace(tmp, dest)

    def _delete_saved(self, repo: dict) -> None:
        t, (org, name) = repo["type"], repo["id"].split("/")
        (self.root / "repos" / f"{t}s" / org / f"{name}.json").unlink(missing_ok=True)

    def _new_commit(self, repo, parent, tree, title, message, author) -> str:
        seed = json.dumps([repo["id"], parent, sorted(tree.items()), title, message, _now(), secrets.token_hex(8)],
                          sort_keys=True)
        oid = hashlib.sha1(seed.encode()).hexdigest()
        repo["commits"][oid] = {"parents": [parent] if parent else [], "files": tree, "title": title,
                                "message": message, "date": _now(), "author": author}
        return oid

    def _get_repo(self, repo_type: str, repo_id: str, user: str | None = None, check_private: bool = False) -> dict:
        repo = self._repos.get((repo_type, repo_id))
        if repo is None or (check_private and repo["private"] and user is None):
            raise HubServerError(404, "Repository not found", "RepoNotFound")
        return repo

    def _resolve(self, repo: dict, rev: str) -> str:
        for prefix, table in (("refs/heads/", "branches"), ("refs/tags/", "tags")):
            if rev.startswith(prefix) and rev[len(prefix):] in repo[table]:
                return repo[table][rev[len(prefix):]]
        if rev in repo["branches"]:
            return repo["branches"][rev]
        if rev in repo["tags"]:
            return repo["tags"][rev]
        m = re.fullmatch(r"refs/pr/(\d+)", rev)
        if m and m.group(1) in repo["prs"]:
            return repo["prs"][m.group(1)]
        if _HEX40.match(rev) and rev in repo["commits"]:
            return rev
        if _SHORT_SHA.match(rev):
            hits = [c for c in repo["commits"] if c.startswith(rev)]
            if len(hits) == 1:
                return hits[0]
        raise HubServerError(404, f"Invalid rev id: {rev}", "RevisionNotFound")

    def _history(self, repo: dict, oid: str) -> list[str]:
        out = []
        while oid:
            out.append(oid)
            parents = repo["commits"][oid]["parents"]
            oid = parents[0] if parents else None
        return out

    def _last_commit(self, repo: dict, head: str, path: str, is_dir: bool) -> dict:
        def view(oid):
            files = repo["commits"][oid]["files"] if oid else {}
            if is_dir:
                return sorted((p, e["oid"]) for p, e in files.items() if p.startswith(path + "/"))
            e = files.get(path)
            return e and e["oid"]
        found = head
        for oid in self._history(repo, head):
            parents = repo["commits"][oid]["parents"]
            if view(oid) != view(parents[0] if parents else None):
                found = oid
                break
        c = repo["commits"][found]
        return {"id": found, "title": c["title"], "date": c["date"]}

    def repo_url(self, repo: dict) -> str:
        prefix = "" if repo["type"] == "model" else f"{repo['type']}s/"
        return f"{self.url}/{prefix}{repo['id']}"


def _tree_items(hub: HubTestServer, repo: dict, oid: str, base: str, recursive: bool, expand: bool) -> list[dict]:
    files = repo["commits"][oid]["files"]
    base = base.strip("/")
    prefix = base + "/" if base else ""
    if base and not any(p.startswith(prefix) for p in files):
        raise HubServerError(404, f"Entry not found: {base}", "EntryNotFound", {"X-Repo-Commit": oid})
    dirs, out = set(), []
    for p in sorted(files):
        if not p.startswith(prefix):
            continue
        rest = p[len(prefix):].split("/")
        for i in range(1, len(rest)):
            if recursive or i == 1:
                dirs.add(prefix + "/".join(rest[:i]))
        if recursive or len(rest) == 1:
            out.append(_file_item(hub, repo, oid, p, expand))
    return [_dir_item(hub, repo, oid, d, expand) for d in sorted(dirs)] + out


def _file_item(hub, repo, oid, path, expand) -> dict:
    e = repo["commits"][oid]["files"][path]
    item = {"type": "file", "oid": e["oid"], "size": e["size"], "path": path}
    if e["lfs"]:
        item["lfs"] = {"oid": e["sha256"], "size": e["size"], "pointerSize": e["pointer_size"]}
    if expand:
        item["lastCommit"] = hub._last_commit(repo, oid, path, False)
    return item


def _dir_item(hub, repo, oid, path, expand) -> dict:
    files = repo["commits"][oid]["files"]
    listing = json.dumps(sorted((p, e["oid"]) for p, e in files.items() if p.startswith(path + "/")))
    item = {"type": "directory", "oid": hashlib.sha1(listing.encode()).hexdigest(), "size": 0, "path": path}
    if expand:
        item["lastCommit"] = hub._last_commit(repo, oid, path, True)
    return item


def _take_rev(segs: list[str]) -> tuple[str, list[str]]:
    """First segment is the (quoted) revision; tolerate an unquoted refs/pr/N."""
    if not segs:
        return "main", []
    if segs[0] == "refs" and len(segs) >= 3 and segs[1] in ("pr", "heads", "tags", "convert"):
        return "/".join(segs[:3]), segs[3:]
    return unquote(segs[0]), segs[1:]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 60
    server_version = "HubTestServer/1.0"

    @property
    def hub(self) -> HubTestServer:
        return self.server.hub  # type: ignore[attr-defined]

    def setup(self):
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no 40 ms Nagle stalls
        with self.hub._lock:
            self.hub._conns.add(self.connection)

    def finish(self):
        try:
            super().finish()
        finally:
            with self.hub._lock:
                self.hub._conns.discard(self.connection)

    def log_message(self, format, *args):  # noqa: A002
        if self.hub.verbose:
            sys.stderr.write("[hub] " + (format % args) + "\n")

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = lambda self: self._dispatch()  # noqa: E731

    # ----------------------------------------------------------------- plumbing
    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None,
              content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, str(v))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _json(self, obj, status: int = 200, headers: dict | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), headers)

    def _error(self, err: HubServerError) -> None:
        headers = dict(err.headers)
        headers["X-Error-Message"] = err.message
        if err.code:
            headers["X-Error-Code"] = err.code
        self._json({"error": err.message}, err.status, headers)

    def _user(self, write: bool) -> str | None:
        auth = self.headers.get("Authorization")
        if auth:
            token = auth[7:].strip() if auth.lower().startswith("bearer ") else auth.strip()
            if token not in self.hub.tokens:
                raise HubServerError(401, "Invalid credentials in Authorization header")
            return self.hub.tokens[token]
        if write:
            raise HubServerError(401, "Invalid username or password.")
        return None

    def _dispatch(self) -> None:
        hub = self.hub
        try:
            body = self._read_body() if self.command in ("POST", "PUT", "DELETE") else b""
            parts = urlsplit(self.path)
            with hub._lock:
                hub.request_log.append((self.command, self.path))
            status = hub._take_fault(self.command, self.path)
            if status is not None:
                return self._json({"error": f"Injected failure ({status})"}, status)
            query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
            self._route(self.command, [s for s in parts.path.split("/")[1:]], query, body)
        except HubServerError as err:
            self._error(err)
        except json.JSONDecodeError as err:
            self._error(HubServerError(400, f"Malformed JSON body: {err}"))
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception:  # a bug in the server: report it loudly
            tb = traceback.format_exc()
            hub.errors.append(tb)
            if hub.verbose:
                sys.stderr.write(tb)
            self.close_connection = True
            try:
                self._json({"error": "Internal test-server error: " + tb.splitlines()[-1]}, 500)
            except OSError:
                pass

    # ----------------------------------------------------------------- routing
    def _route(self, method: str, segs: list[str], q: dict, body: bytes) -> None:
        hub = self.hub
        if segs and segs[-1] == "" and len(segs) > 1:
            segs = segs[:-1]
        if segs[:2] == ["_lfs", "upload"] and len(segs) == 3 and method == "PUT":
            return self._lfs_put(segs[2], body)
        if segs[:2] == ["_lfs", "verify"] and method == "POST":
            self._user(write=True)
            req = json.loads(body or b"{}")
            p = hub._blob_path(req.get("oid", "x"))
            if not p.exists() or p.stat().st_size != req.get("size"):
                raise HubServerError(404, "LFS object not found")
            return self._json({"success": True})
        if segs and segs[0] == "api":
            return self._route_api(method, segs[1:], q, body)
        rtype = "model"
        if segs and segs[0] in ("datasets", "spaces"):
            rtype, segs = segs[0][:-1], segs[1:]
        if len(segs) >= 2 and segs[1].endswith(".git") and segs[2:] == ["info", "lfs", "objects", "batch"]:
            return self._lfs_batch(rtype, f"{unquote(segs[0])}/{unquote(segs[1][:-4])}", body)
        if len(segs) >= 5 and segs[2] == "resolve" and method in ("GET", "HEAD"):
            rev, rest = _take_rev(segs[3:])
            return self._resolve_file(rtype, f"{unquote(segs[0])}/{unquote(segs[1])}", rev,
                                      "/".join(unquote(s) for s in rest))
        raise HubServerError(404, "Not found")

    def _route_api(self, method: str, segs: list[str], q: dict, body: bytes) -> None:
        hub = self.hub
        head = segs[0] if segs else ""
        if head == "whoami-v2":
            user = self._user(write=True)
            return self._json({"type": "user", "id": hashlib.sha1(user.encode()).hexdigest()[:24], "name": user,
                               "fullname": user, "email": f"{user}@example.com", "emailVerified": True,
                               "canPay": False, "isPro": False, "orgs": [],
                               "auth": {"type": "access_token",
                                        "accessToken": {"displayName": "test", "role": "write"}}})
        if head == "validate-yaml" and method == "POST":
            return self._json({"errors": [], "warnings": []})
        if head == "repos" and len(segs) == 2 and segs[1] in ("create", "delete"):
            user = self._user(write=True)
            req = json.loads(body or b"{}")
            rtype = req.get("type") or "model"
            if rtype not in REPO_TYPES:
                raise HubServerError(400, f"Invalid repo type {rtype}")
            repo_id = f"{req.get('organization') or user}/{req['name']}"
            with hub._lock:
                if segs[1] == "delete":
                    repo = hub._get_repo(rtype, repo_id)
                    del hub._repos[(rtype, repo_id)]
                    hub._delete_saved(repo)
                    return self._json({})
                existing = hub._repos.get((rtype, repo_id))
                if existing is not None:
                    return self._json({"error": "You already created this model repo",
                                       "url": hub.repo_url(existing)}, 409)
                repo = hub.create_repo(repo_id, rtype, private=req.get("private") or req.get("visibility") == "private")
            return self._json({"url": hub.repo_url(repo), "name": repo_id, "id": repo_id})
        if head in ("models", "datasets", "spaces"):
            rtype = head[:-1]
            if len(segs) == 1 and method == "GET":
                return self._list_repos(rtype, q)
            if len(segs) >= 3:
                return self._repo_api(method, rtype, f"{unquote(segs[1])}/{unquote(segs[2])}", segs[3:], q, body)
        raise HubServerError(404, "Not found")

    def _repo_api(self, method, rtype, repo_id, rest, q, body) -> None:
        hub = self.hub
        action = rest[0] if rest else "revision"
        args = rest[1:]
        write = method in ("PUT", "DELETE") or (method == "POST" and action != "paths-info")
        user = self._user(write=write)
        with hub._lock:
            repo = hub._get_repo(rtype, repo_id, user, check_private=True)
            if action == "revision" and method == "GET":
                rev, _ = _take_rev(args)
                return self._json(self._info(repo, hub._resolve(repo, rev)))
            if action == "tree" and method == "GET":
                rev, path = _take_rev(args)
                oid = hub._resolve(repo, rev)
                return self._json(_tree_items(hub, repo, oid, "/".join(unquote(s) for s in path),
                                              _truthy(q.get("recursive")), _truthy(q.get("expand"))))
            if action == "paths-info" and method == "POST":
                oid = hub._resolve(repo, _take_rev(args)[0])
                form = parse_qs(body.decode())
                files = repo["commits"][oid]["files"]
                out = []
                for p in form.get("paths", []):
                    p = p.strip("/")
                    if p in files:
                        out.append(_file_item(hub, repo, oid, p, _truthy(form.get("expand", [""])[-1])))
                    elif any(f.startswith(p + "/") for f in files):
                        out.append(_dir_item(hub, repo, oid, p, _truthy(form.get("expand", [""])[-1])))
                return self._json(out)
            if action == "refs" and method == "GET":
                def refs(table, kind):
                    return [{"name": n, "ref": f"refs/{kind}/{n}", "targetCommit": c} for n, c in repo[table].items()]
                return self._json({"branches": refs("branches", "heads"), "tags": refs("tags", "tags"),
                                   "converts": [], "pullRequests": [
                                       {"name": f"refs/pr/{n}", "ref": f"refs/pr/{n}", "targetCommit": c}
                                       for n, c in repo["prs"].items()]})
            if action == "commits" and method == "GET":
                oid = hub._resolve(repo, _take_rev(args)[0])
                return self._json([{"id": c, "title": repo["commits"][c]["title"],
                                    "message": repo["commits"][c]["message"], "date": repo["commits"][c]["date"],
                                    "authors": [{"user": repo["commits"][c]["author"]}]}
                                   for c in hub._history(repo, oid)])
            if action == "preupload" and method == "POST":
                return self._preupload(repo, _take_rev(args)[0], json.loads(body or b"{}"))
            if action == "commit" and method == "POST":
                return self._commit(repo, _take_rev(args)[0], body, q, user)
            if action == "branch" and method in ("POST", "DELETE"):
                name = unquote("/".join(args))
                if method == "DELETE":
                    if name not in repo["branches"]:
                        raise HubServerError(404, f"Branch {name} not found", "RevisionNotFound")
                    if name == "main":
                        raise HubServerError(403, "Cannot delete the default branch")
                    del repo["branches"][name]
                else:
                    if name in repo["branches"]:
                        raise HubServerError(409, f"Branch {name} already exists")
                    start = json.loads(body or b"{}").get("startingPoint") or "main"
                    repo["branches"][name] = hub._resolve(repo, start)
                hub._save(repo)
                return self._json({})
            if action == "tag" and method in ("POST", "DELETE"):
                if method == "DELETE":
                    name = unquote("/".join(args))
                    if name not in repo["tags"]:
                        raise HubServerError(404, f"Tag {name} not found", "RevisionNotFound")
                    del repo["tags"][name]
                else:
                    req = json.loads(body or b"{}")
                    oid = hub._resolve(repo, _take_rev(args)[0])
                    if req["tag"] in repo["tags"]:
                        raise HubServerError(409, f"Tag {req['tag']} already exists")
                    repo["tags"][req["tag"]] = oid
                hub._save(repo)
                return self._json({})
            if action == "settings" and method == "PUT":
                req = json.loads(body or b"{}")
                if "private" in req:
                    repo["private"] = bool(req["private"])
                if req.get("visibility"):
                    repo["private"] = req["visibility"] == "private"
                hub._save(repo)
                return self._json({})
        raise HubServerError(404, "Not found")

    # ----------------------------------------------------------------- endpoints
    def _info(self, repo: dict, oid: str) -> dict:
        hub = self.hub
        files = repo["commits"][oid]["files"]
        card = {}
        if "README.md" in files:
            try:
                card = parse_card_data(hub._blob_path(files["README.md"]["sha256"]).read_text("utf-8"))
            except (OSError, UnicodeDecodeError):
                card = {}
        siblings = []
        for p, e in sorted(files.items()):
            s = {"rfilename": p, "size": e["size"], "blobId": e["oid"]}
            if e["lfs"]:
                s["lfs"] = {"size": e["size"], "sha256": e["sha256"], "pointerSize": e["pointer_size"]}
            siblings.append(s)
        org = repo["id"].split("/")[0]
        info = {"_id": hashlib.sha1(repo["id"].encode()).hexdigest()[:24], "id": repo["id"], "author": org,
                "sha": oid, "lastModified": repo["commits"][oid]["date"], "createdAt": repo["created"],
                "private": repo["private"], "gated": False, "disabled": False, "downloads": 0, "likes": 0,
                "tags": list(card.get("tags") or []) if isinstance(card.get("tags"), list) else [],
                "siblings": siblings, "cardData": card, "usedStorage": sum(e["size"] for e in files.values())}
        if repo["type"] == "model":
            info["modelId"] = repo["id"]
            for k in ("library_name", "pipeline_tag"):
                if isinstance(card.get(k), str):
                    info[k] = card[k]
        return info

    def _list_repos(self, rtype: str, q: dict) -> None:
        user = self._user(write=False)
        hub = self.hub
        with hub._lock:
            out = []
            for (t, rid), repo in sorted(hub._repos.items()):
                if t != rtype or (repo["private"] and user is None):
                    continue
                if q.get("author") and rid.split("/")[0] != q["author"]:
                    continue
                if q.get("search") and q["search"].lower() not in rid.lower():
                    continue
                head = repo["branches"].get("main")
                out.append({"id": rid, "private": repo["private"], "sha": head,
                            "lastModified": repo["commits"][head]["date"] if head else repo["created"]})
        limit = int(q.get("limit") or 0)
        return self._json(out[:limit] if limit else out)

    def _preupload(self, repo: dict, rev: str, req: dict) -> None:
        hub = self.hub
        try:
            files = repo["commits"][hub._resolve(repo, rev)]["files"]
        except HubServerError:
            files = {}  # e.g. a branch about to be created
        out = []
        for f in req.get("files", []):
            sample = base64.b64decode(f.get("sample") or "")
            mode = "lfs" if hub._wants_lfs(f["path"], int(f.get("size") or 0), sample) else "regular"
            item = {"path": f["path"], "uploadMode": mode, "shouldIgnore": False}
            existing = files.get(f["path"])
            if existing is not None:
                item["oid"] = existing["sha256"] if mode == "lfs" else existing["oid"]
            out.append(item)
        return self._json({"files": out})

    def _lfs_batch(self, rtype: str, repo_id: str, body: bytes) -> None:
        hub = self.hub
        user = self._user(write=True)
        req = json.loads(body or b"{}")
        with hub._lock:
            hub._get_repo(rtype, repo_id, user, check_private=True)
            objects = []
            for o in req.get("objects", []):
                oid, size = o["oid"], int(o["size"])
                p = hub._blob_path(oid)
                if p.exists() and p.stat().st_size == size:
                    objects.append({"oid": oid, "size": size})
                    continue
                ticket = secrets.token_hex(16)
                hub._tickets[ticket] = (oid, size)
                objects.append({"oid": oid, "size": size, "authenticated": True, "actions": {
                    "upload": {"href": f"{hub.url}/_lfs/upload/{ticket}", "expires_in": 3600},
                    "verify": {"href": f"{hub.url}/_lfs/verify", "expires_in": 3600}}})
        return self._json({"transfer": "basic", "objects": objects, "hash_algo": "sha256"})

    def _lfs_put(self, ticket: str, body: bytes) -> None:
        hub = self.hub
        with hub._lock:
            expected = hub._tickets.get(ticket)
        if expected is None:
            raise HubServerError(403, "Invalid or expired upload URL")
        oid, size = expected
        if len(body) != size or hashlib.sha256(body).hexdigest() != oid:
            raise HubServerError(400, f"Uploaded content does not match oid {oid} / size {size}")
        hub._put_blob(body)
        return self._send(200)

    def _commit(self, repo: dict, rev: str, body: bytes, q: dict, user: str) -> None:
        hub = self.hub
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubServerError(400, "First line of the commit payload must be the header")
        header = lines[0]["value"]
        parent_req = header.get("parentCommit")
        create_pr = _truthy(q.get("create_pr"))
        if create_pr:
            parent = hub._resolve(repo, parent_req) if parent_req else hub._resolve(repo, rev)
        else:
            m = re.fullmatch(r"refs/pr/(\d+)", rev)
            rev = rev[len("refs/heads/"):] if rev.startswith("refs/heads/") else rev
            if not (rev in repo["branches"] or (m and m.group(1) in repo["prs"])):
                raise HubServerError(404, f"Invalid rev id: {rev} (commits go to a branch or refs/pr/N)",
                               "RevisionNotFound")
            parent = repo["prs"][m.group(1)] if m else repo["branches"][rev]
            if parent_req and not parent.startswith(parent_req):
                raise HubServerError(412, "A commit has happened since. Please refresh and try again.")
        files = dict(repo["commits"][parent]["files"]) if parent else {}
        for line in lines[1:]:
            key, v = line.get("key"), line.get("value") or {}
            path = v.get("path", "").strip("/")
            if key == "file":
                raw = v.get("content", "")
                data = base64.b64decode(raw) if v.get("encoding", "base64") == "base64" else raw.encode()
                files[path] = hub._entry(hub._put_blob(data), len(data), False, data)
            elif key == "lfsFile":
                blob = hub._blob_path(v["oid"])
                if not blob.exists():
                    raise HubServerError(400, f"LFS object {v['oid']} for {path} was never uploaded")
                size = blob.stat().st_size
                if v.get("size") is not None and int(v["size"]) != size:
                    raise HubServerError(400, f"LFS object {v['oid']}: size mismatch")
                files[path] = hub._entry(v["oid"], size, True)
            elif key == "deletedFile":
                if files.pop(path, None) is None:
                    raise HubServerError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
            elif key == "deletedFolder":
                doomed = [p for p in files if p.startswith(path + "/") or not path]
                if not doomed:
                    raise HubServerError(404, f"A folder with this name doesn't exist: {path}", "EntryNotFound")
                for p in doomed:
                    del files[p]
            else:
                raise HubServerError(400, f"Unknown commit operation {key!r}")
        oid = hub._new_commit(repo, parent, files, header.get("summary") or "Update",
                              header.get("description") or "", user)
        pr_url = None
        if create_pr:
            num = str(repo["next_pr"])
            repo["next_pr"] += 1
            repo["prs"][num] = oid
            pr_url = f"{hub.repo_url(repo)}/discussions/{num}"
        elif rev.startswith("refs/pr/"):
            repo["prs"][rev.split("/")[-1]] = oid
        else:
            repo["branches"][rev] = oid
        hub._save(repo)
        return self._json({"success": True, "commitOid": oid, "commitUrl": f"{hub.repo_url(repo)}/commit/{oid}",
                           "pullRequestUrl": pr_url})

    def _resolve_file(self, rtype: str, repo_id: str, rev: str, path: str) -> None:
        hub = self.hub
        user = self._user(write=False)
        with hub._lock:
            repo = hub._get_repo(rtype, repo_id, user, check_private=True)
            oid = hub._resolve(repo, rev)
            entry = repo["commits"][oid]["files"].get(path)
            truncate = hub.truncate_downloads
        if entry is None:
            raise HubServerError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": oid})
        size = entry["size"]
        headers = {"X-Repo-Commit": oid, "Accept-Ranges": "bytes",
                   "Content-Disposition": f"inline; filename*=UTF-8''{quote(path.split('/')[-1])}"}
        if entry["lfs"]:
            headers.update({"ETag": f'"{entry["sha256"]}"', "X-Linked-Etag": f'"{entry["sha256"]}"',
                            "X-Linked-Size": str(size)})
        else:
            headers["ETag"] = f'"{entry["oid"]}"'
        start, end, status = 0, size - 1, 200
        rng = self.headers.get("Range")
        if rng:
            m = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", rng)
            if m and (m.group(1) or m.group(2)):
                if m.group(1):
                    start = int(m.group(1))
                    end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
                else:
                    start = max(size - int(m.group(2)), 0)
                if start > end or start >= size:
                    raise HubServerError(416, "Requested range not satisfiable", None,
                                   {"Content-Range": f"bytes */{size}", "X-Repo-Commit": oid})
                status = 206
                headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        length = max(end - start + 1, 0)
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        for k, v in headers.items():
            self.send_header(k, v)
        cut = None
        if truncate is not False and truncate is not None and self.command == "GET":
            cut = size // 2 if truncate is True else min(int(truncate), max(size - 1, 0))
            self.close_connection = True
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command == "HEAD" or length == 0:
            return
        stop = end + 1 if cut is None else min(end + 1, cut)
        with open(hub._blob_path(entry["sha256"]), "rb") as f:
            f.seek(start)
            remaining = stop - start
            while remaining > 0:
                chunk = f.read(min(remaining, 1 << 16))
                if not chunk:
                    break
                self.wfile.write(chunk)
                remaining -= len(chunk)
        self.wfile.flush()


def start_hub_server(root, tokens=(TEST_TOKEN,), **kwargs) -> HubTestServer:
    """Start a :class:`HubTestServer` storing its data under ``root``; call ``.stop()`` when done."""
    return HubTestServer(root, tokens=tokens, **kwargs)
