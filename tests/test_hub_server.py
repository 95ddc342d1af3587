"""Exercise tests/hub_server.py with the REAL huggingface_hub client over real HTTP (no patching).

huggingface_hub 2.4 facts these tests pin down (see also docs/hub-testing.md):
- Xet must be disabled (HF_HUB_DISABLE_XET=1 before import, or constants.HF_HUB_DISABLE_XET = True).
- HfApi JSON calls (model_info/repo_info, create_repo, create_commit's final POST, refs, branches, tags)
  do NOT retry: a 5xx raises HfHubHTTPError at once.
- Paginated listings (list_repo_files/list_repo_tree/list_repo_commits), preupload, LFS batch/PUT/verify
  go through http_backoff: 408/429/500/502/503/504 and network errors are retried up to 5 times,
  sleeping 1, 2, 4, 8, 8 s.
- hf_hub_download: first HEAD without retry; on a 5xx/network error it falls back to the local cache for
  that revision; only if nothing is cached does it HEAD again *with* backoff (6 tries, ~23 s of sleep),
  then raises LocalEntryNotFoundError (from the HfHubHTTPError), not HfHubHTTPError.
- The GET body stream is resumed with a Range request after a dropped connection (1 s sleep per try,
  5 tries without progress), then httpx2.RemoteProtocolError propagates.
- Downloads are not checksum-verified by the client.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import httpx2
import pytest

from huggingface_hub import (
    CommitOperationAdd,
    HfApi,
    get_hf_file_metadata,
    hf_hub_download,
    hf_hub_url,
    snapshot_download,
)
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from hub_server import TEST_TOKEN, HubTestServer

TOKEN = TEST_TOKEN
REPO = "test-user/tiny"
README = b"---\nlicense: mit\ntags:\n- rbzoo\n- test\nlibrary_name: rbzoo\n---\n# tiny\n"


@pytest.fixture
def api(server):
    return HfApi(endpoint=server.url, token=TOKEN)


@pytest.fixture
def cache(hf_env):
    return str(hf_env / "hf_cache")


def _dl(server, cache, filename, revision=None, token=TOKEN, **kw):
    return hf_hub_download(REPO, filename, revision=revision, endpoint=server.url, token=token,
                           cache_dir=cache, **kw)


@pytest.fixture
def seeded(api):
    """Repo with README.md (regular) + model.safetensors (100 kB, LFS) in ONE commit; tag v1 on it."""
    api.create_repo(REPO)
    weights = os.urandom(100_000)
    info = api.create_commit(REPO, operations=[
        CommitOperationAdd("README.md", README),
        CommitOperationAdd("model.safetensors", weights),
    ], commit_message="first")
    api.create_tag(REPO, tag="v1", revision=info.oid)
    return {"oid": info.oid, "weights": weights}


def test_xet_disabled_and_whoami(api):
    from huggingface_hub.utils._runtime import is_xet_available

    assert not is_xet_available()
    assert api.whoami()["name"] == "test-user"


def test_create_repo_exist_ok(api, server):
    url = api.create_repo(REPO)
    assert url.repo_id == REPO and url.startswith(server.url)
    with pytest.raises(HfHubHTTPError) as e:
        api.create_repo(REPO)
    assert e.value.response.status_code == 409
    assert api.create_repo(REPO, exist_ok=True).repo_id == REPO
    api.delete_repo(REPO)
    with pytest.raises(RepositoryNotFoundError):
        api.repo_info(REPO)


def test_commit_regular_and_lfs_in_one_commit(api, server, seeded):
    calls = [f"{m} {p}" for m, p in server.request_log]
    assert any("/preupload/main" in c for c in calls)
    assert any(c.startswith("POST /test-user/tiny.git/info/lfs/objects/batch") for c in calls)
    assert any(c.startswith("PUT /_lfs/upload/") for c in calls)
    assert any(c.startswith("POST /_lfs/verify") for c in calls)
    assert not any("xet" in c for c in calls)
    assert sorted(api.list_repo_files(REPO)) == [".gitattributes", "README.md", "model.safetensors"]
    info = api.model_info(REPO, files_metadata=True)
    assert info.sha == seeded["oid"]
    sib = {s.rfilename: s for s in info.siblings}
    assert sib["model.safetensors"].lfs.sha256 == hashlib.sha256(seeded["weights"]).hexdigest()
    assert sib["README.md"].lfs is None and sib["README.md"].size == len(README)
    assert info.card_data.license == "mit" and info.tags == ["rbzoo", "test"]
    tree = {f.path: f for f in api.list_repo_tree(REPO, recursive=True)}
    assert tree["model.safetensors"].lfs.size == 100_000
    assert [p.path for p in api.get_paths_info(REPO, ["README.md", "nope"])] == ["README.md"]
    assert [c.title for c in api.list_repo_commits(REPO)] == ["first", "initial commit"]


def test_download_by_branch_commit_tag_and_old_commit(api, server, cache, seeded):
    for rev in (None, "main", seeded["oid"], "v1"):
        assert Path(_dl(server, cache, "model.safetensors", rev)).read_bytes() == seeded["weights"]
    assert Path(_dl(server, cache, "README.md", "v1")).read_bytes() == README
    second = api.upload_file(path_or_fileobj=b"# changed\n", path_in_repo="README.md", repo_id=REPO)
    assert api.repo_info(REPO).sha == second.oid != seeded["oid"]
    assert Path(_dl(server, cache, "README.md")).read_bytes() == b"# changed\n"
    assert Path(_dl(server, cache, "README.md", seeded["oid"])).read_bytes() == README
    folder = Path(snapshot_download(REPO, endpoint=server.url, token=TOKEN, cache_dir=cache))
    assert folder.name == second.oid
    assert (folder / "model.safetensors").read_bytes() == seeded["weights"]
    old = Path(snapshot_download(REPO, revision="v1", endpoint=server.url, token=TOKEN, cache_dir=cache))
    assert (old / "README.md").read_bytes() == README


def test_file_metadata_and_range(server, seeded):
    url = hf_hub_url(REPO, "model.safetensors", endpoint=server.url)
    meta = get_hf_file_metadata(url, token=TOKEN, endpoint=server.url)
    assert meta.commit_hash == seeded["oid"]
    assert meta.etag == hashlib.sha256(seeded["weights"]).hexdigest()
    assert meta.size == 100_000
    readme = get_hf_file_metadata(hf_hub_url(REPO, "README.md", endpoint=server.url), token=TOKEN)
    assert readme.etag == hashlib.sha1(b"blob %d\0" % len(README) + README).hexdigest()
    r = httpx2.get(url, headers={"Range": "bytes=10-19"})
    assert r.status_code == 206 and r.content == seeded["weights"][10:20]
    assert r.headers["Content-Range"] == "bytes 10-19/100000"


def test_create_pr_branches_tags(api, server, cache, seeded):
    pr = api.create_commit(REPO, operations=[CommitOperationAdd("extra.txt", b"pr content")],
                           commit_message="pr", create_pr=True)
    assert pr.pr_revision == "refs/pr/1" and pr.pr_num == 1
    assert "extra.txt" not in api.list_repo_files(REPO)
    assert "extra.txt" in api.list_repo_files(REPO, revision="refs/pr/1")
    assert Path(_dl(server, cache, "extra.txt", "refs/pr/1")).read_bytes() == b"pr content"
    refs = api.list_repo_refs(REPO, include_pull_requests=True)
    assert [r.ref for r in refs.pull_requests] == ["refs/pr/1"]
    assert [t.name for t in refs.tags] == ["v1"]
    api.create_branch(REPO, branch="dev", revision="v1")
    with pytest.raises(HfHubHTTPError) as e:
        api.create_branch(REPO, branch="dev")
    assert e.value.response.status_code == 409
    api.upload_file(path_or_fileobj=b"dev", path_in_repo="dev.txt", repo_id=REPO, revision="dev")
    assert "dev.txt" not in api.list_repo_files(REPO)
    api.delete_branch(REPO, branch="dev")
    api.delete_tag(REPO, tag="v1")
    assert api.list_repo_refs(REPO).tags == []
    with pytest.raises(RevisionNotFoundError):
        api.repo_info(REPO, revision="v1")


def test_delete_file_and_folder(api, seeded):
    api.upload_file(path_or_fileobj=b"x", path_in_repo="sub/dir/a.txt", repo_id=REPO)
    api.delete_file("model.safetensors", REPO)
    api.delete_folder("sub", REPO)
    assert sorted(api.list_repo_files(REPO)) == [".gitattributes", "README.md"]
    with pytest.raises(RemoteEntryNotFoundError):
        api.delete_file("model.safetensors", REPO)
    # The old commit still has the deleted file (commits are immutable snapshots).
    assert "model.safetensors" in api.list_repo_files(REPO, revision=seeded["oid"])


def test_noop_commit_is_skipped(api, seeded):
    info = api.upload_file(path_or_fileobj=README, path_in_repo="README.md", repo_id=REPO)
    assert info.oid == seeded["oid"]


def test_auth_and_not_found_errors(api, server, cache, seeded):
    bad = HfApi(endpoint=server.url, token="hf_wrong")
    for call in (lambda: bad.model_info(REPO),
                 lambda: bad.upload_file(path_or_fileobj=b"x", path_in_repo="x", repo_id=REPO),
                 lambda: _dl(server, cache, "README.md", token="hf_wrong")):
        with pytest.raises(HfHubHTTPError) as e:
            call()
        assert e.value.response.status_code == 401
        assert not isinstance(e.value, RepositoryNotFoundError)
    anon = HfApi(endpoint=server.url, token=False)
    assert anon.model_info(REPO).sha == seeded["oid"]  # public reads need no token
    with pytest.raises(HfHubHTTPError) as e:
        anon.upload_file(path_or_fileobj=b"x", path_in_repo="x", repo_id=REPO)
    assert e.value.response.status_code == 401
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("test-user/missing")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("test-user/missing", "README.md", endpoint=server.url, token=TOKEN, cache_dir=cache)
    with pytest.raises(RevisionNotFoundError):
        _dl(server, cache, "README.md", "no-such-branch")
    with pytest.raises(RevisionNotFoundError):
        api.model_info(REPO, revision="0" * 40)
    with pytest.raises(RemoteEntryNotFoundError) as e:
        _dl(server, cache, "missing.bin")
    assert isinstance(e.value, EntryNotFoundError) and e.value.response.status_code == 404
    api.create_repo("test-user/secret", private=True)
    assert api.model_info("test-user/secret").private is True
    with pytest.raises(RepositoryNotFoundError):
        anon.model_info("test-user/secret")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("test-user/secret", ".gitattributes", endpoint=server.url, token=False, cache_dir=cache)


def test_injected_500(api, server, cache, seeded):
    server.fail_next(500, path_contains="/api/models/")
    server.request_log.clear()
    with pytest.raises(HfHubHTTPError) as e:
        api.model_info(REPO)  # HfApi JSON calls: no retry
    assert e.value.response.status_code == 500 and len(server.request_log) == 1
    # snapshot_download: repo_info is not retried; with nothing cached -> LocalEntryNotFoundError.
    server.fail_next(500, count=1, path_contains="/revision/")
    with pytest.raises(LocalEntryNotFoundError):
        snapshot_download(REPO, endpoint=server.url, token=TOKEN, cache_dir=cache)
    # hf_hub_download: first HEAD (no retry) fails, nothing cached -> second HEAD with backoff succeeds.
    server.request_log.clear()
    server.fail_next(500, count=1, path_contains="/resolve/")
    assert Path(_dl(server, cache, "README.md")).read_bytes() == README
    assert [m for m, p in server.request_log if "/resolve/" in p] == ["HEAD", "HEAD", "GET"]
    # A non-retried status (501) with nothing cached -> LocalEntryNotFoundError from the HTTP error.
    server.fail_next(501, count=1, path_contains="/resolve/")
    with pytest.raises(LocalEntryNotFoundError) as e:
        _dl(server, cache, "model.safetensors")
    assert isinstance(e.value.__cause__, HfHubHTTPError) and e.value.__cause__.response.status_code == 501
    # Paginated listings go through http_backoff: one 500 costs a 1 s sleep, then succeed.
    server.fail_next(500, count=1, path_contains="/tree/")
    server.request_log.clear()
    assert "README.md" in api.list_repo_files(REPO)
    assert [m for m, p in server.request_log if "/tree/" in p] == ["GET", "GET"]  # the failed one, then the retry
    # Persistent 5xx but the revision is cached -> the client silently serves the cached copy.
    server.fail_next(503, count=100, path_contains="/resolve/")
    assert Path(_dl(server, cache, "README.md")).read_bytes() == README
    # ... and snapshot_download returns the PARTIAL cached snapshot (only README.md, no tree listing cached).
    server.fail_next(500, count=1, path_contains="/revision/")
    partial = Path(snapshot_download(REPO, endpoint=server.url, token=TOKEN, cache_dir=cache))
    assert sorted(p.name for p in partial.iterdir()) == ["README.md"]
    server.clear_faults()


def test_truncated_download_raises(server, cache, seeded):
    server.truncate_downloads = 1000
    with pytest.raises(httpx2.RemoteProtocolError):
        _dl(server, cache, "model.safetensors")
    gets = [p for m, p in server.request_log if m == "GET" and "/resolve/" in p]
    assert len(gets) == 6  # first GET + 5 Range resumes without progress
    snap = Path(cache) / "models--test-user--tiny" / "snapshots"
    assert not list(snap.rglob("model.safetensors"))
    assert not list(Path(cache).rglob("*.incomplete"))  # partial temp file removed
    server.truncate_downloads = False
    assert Path(_dl(server, cache, "model.safetensors")).read_bytes() == seeded["weights"]


def test_corrupt_blob_is_not_detected_by_client(server, cache, seeded):
    server.corrupt_blob(REPO, "model.safetensors")
    path = Path(_dl(server, cache, "model.safetensors"))
    data = path.read_bytes()
    assert len(data) == 100_000 and data != seeded["weights"]
    meta = get_hf_file_metadata(hf_hub_url(REPO, "model.safetensors", endpoint=server.url), token=TOKEN)
    assert meta.etag == hashlib.sha256(seeded["weights"]).hexdigest() != hashlib.sha256(data).hexdigest()


def test_cache_reads_after_server_stop(server, cache, seeded):
    first = _dl(server, cache, "README.md")
    snap = snapshot_download(REPO, endpoint=server.url, token=TOKEN, cache_dir=cache)
    server.stop()
    assert _dl(server, cache, "README.md", local_files_only=True) == first
    assert snapshot_download(REPO, endpoint=server.url, token=TOKEN, cache_dir=cache, local_files_only=True) == snap
    assert _dl(server, cache, "README.md") == first  # connection refused -> cached ref is used
    with pytest.raises(LocalEntryNotFoundError):
        _dl(server, cache, "never-downloaded.txt", local_files_only=True)


def test_dataset_repo_and_restart_persistence(api, server, hf_env, cache):
    api.create_repo("test-user/data", repo_type="dataset")
    api.upload_file(path_or_fileobj=b"a,b\n1,2\n", path_in_repo="data/train.csv",
                    repo_id="test-user/data", repo_type="dataset")
    server.stop()
    with HubTestServer(hf_env / "hub", tokens={TOKEN}) as again:
        p = hf_hub_download("test-user/data", "data/train.csv", repo_type="dataset", endpoint=again.url,
                            token=TOKEN, cache_dir=cache)
        assert Path(p).read_bytes() == b"a,b\n1,2\n"
        assert HfApi(endpoint=again.url, token=TOKEN).dataset_info("test-user/data").sha
