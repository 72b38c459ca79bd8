"""code_source against real things on this machine: bare git repositories made here (the git
binary only builds the fixtures; fetching is dulwich's), a git HTTP server on 127.0.0.1 that
checks a token, and S3 archives in the moto server."""

from __future__ import annotations

import base64
import io
import logging
import os
import re
import stat
import tarfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import boto3
import pytest
from dulwich.repo import Repo
from dulwich.server import BackendRepo, DictBackend
from dulwich.web import make_wsgi_chain

from handlers.execution_engine.code_source import (
    CodeCache,
    CodeSourceError,
    FetchLimits,
    fetch_git,
    fetch_s3,
)
from tests.support.git_fixture import git
from tests.support.moto_server import MotoServer, free_port

TOKEN = "ghp_s3cr3tT0kenValue_0123456789abcdef"
WRONG_TOKEN = "ghp_wrongT0kenValue_9876543210fedcba"


# -- fixture repository ---------------------------------------------------------------------------


@dataclass(frozen=True)
class FixtureRepo:
    bare: Path
    first: str
    second: str


@pytest.fixture(scope="module")
def fixture_repo(tmp_path_factory: pytest.TempPathFactory) -> FixtureRepo:
    """A bare repository with two commits on main, pushed from a work tree."""
    root = tmp_path_factory.mktemp("git-fixture")
    bare = root / "origin.git"
    work = root / "work"
    git(root, "init", "--bare", "--initial-branch=main", str(bare))
    git(root, "init", "--initial-branch=main", str(work))
    (work / "README.md").write_text("version one\n")
    (work / "app").mkdir()
    (work / "app" / "run.sh").write_text("#!/bin/sh\necho one\n")
    (work / "app" / "run.sh").chmod(0o755)
    (work / "app" / "lib").mkdir()
    (work / "app" / "lib" / "util.py").write_text("ONE = 1\n")
    git(work, "add", "-A")
    git(work, "commit", "-m", "first")
    first = git(work, "rev-parse", "HEAD")
    (work / "README.md").write_text("version two\n")
    (work / "app" / "lib" / "util.py").write_text("TWO = 2\n")
    (work / "docs").mkdir()
    (work / "docs" / "guide.txt").write_text("guide\n")
    os.symlink("lib/util.py", work / "app" / "util-link.py")
    git(work, "add", "-A")
    git(work, "commit", "-m", "second")
    second = git(work, "rev-parse", "HEAD")
    git(work, "push", str(bare), "main")
    return FixtureRepo(bare=bare, first=first, second=second)


def _files(root: Path) -> dict[str, str]:
    found: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            found[rel] = "-> " + os.readlink(path)
        elif path.is_file():
            found[rel] = path.read_text()
    return found


FIRST_TREE = {
    "README.md": "version one\n",
    "app/lib/util.py": "ONE = 1\n",
    "app/run.sh": "#!/bin/sh\necho one\n",
}
SECOND_TREE = {
    "README.md": "version two\n",
    "app/lib/util.py": "TWO = 2\n",
    "app/run.sh": "#!/bin/sh\necho one\n",
    "app/util-link.py": "-> lib/util.py",
    "docs/guide.txt": "guide\n",
}


# -- local paths and file:// --------------------------------------------------------------------


def test_each_commit_by_hash_from_a_file_url(fixture_repo: FixtureRepo, tmp_path: Path) -> None:
    url = fixture_repo.bare.as_uri()
    fetch_git(url, fixture_repo.first, tmp_path / "one", token=None, ssh_key=None, folder=None)
    fetch_git(url, fixture_repo.second, tmp_path / "two", token=None, ssh_key=None, folder=None)

    assert _files(tmp_path / "one") == FIRST_TREE
    assert _files(tmp_path / "two") == SECOND_TREE
    assert os.access(tmp_path / "one" / "app" / "run.sh", os.X_OK)
    assert stat.S_IMODE((tmp_path / "one" / "README.md").stat().st_mode) == 0o644
    assert not (tmp_path / "two" / ".git").exists()


def test_a_plain_local_path_works_and_a_folder_becomes_the_root(fixture_repo: FixtureRepo, tmp_path: Path) -> None:
    fetch_git(str(fixture_repo.bare), fixture_repo.second, tmp_path / "app", token=None, ssh_key=None, folder="app")

    assert _files(tmp_path / "app") == {
        "lib/util.py": "TWO = 2\n",
        "run.sh": "#!/bin/sh\necho one\n",
        "util-link.py": "-> lib/util.py",
    }


def test_a_folder_missing_at_that_commit_is_an_error(fixture_repo: FixtureRepo, tmp_path: Path) -> None:
    with pytest.raises(CodeSourceError, match=r"folder 'docs' not found"):
        fetch_git(str(fixture_repo.bare), fixture_repo.first, tmp_path / "d", token=None, ssh_key=None, folder="docs")
    with pytest.raises(CodeSourceError, match=r"'README.md' is not a folder"):
        fetch_git(
            str(fixture_repo.bare), fixture_repo.first, tmp_path / "e", token=None, ssh_key=None, folder="README.md"
        )
    with pytest.raises(CodeSourceError, match=r"git_folder unsafe path"):
        fetch_git(
            str(fixture_repo.bare), fixture_repo.first, tmp_path / "f", token=None, ssh_key=None, folder="app/../.."
        )


def test_an_unknown_commit_is_an_error(fixture_repo: FixtureRepo, tmp_path: Path) -> None:
    unknown = "0123456789abcdef0123456789abcdef01234567"
    with pytest.raises(CodeSourceError, match=rf"commit {unknown} not found"):
        fetch_git(fixture_repo.bare.as_uri(), unknown, tmp_path / "x", token=None, ssh_key=None, folder=None)


def test_an_abbreviated_commit_or_a_missing_repository_is_an_error(fixture_repo: FixtureRepo, tmp_path: Path) -> None:
    with pytest.raises(CodeSourceError, match="not a full hexadecimal commit id"):
        fetch_git(
            str(fixture_repo.bare), fixture_repo.first[:12], tmp_path / "x", token=None, ssh_key=None, folder=None
        )
    with pytest.raises(CodeSourceError, match="no such repository"):
        fetch_git(str(tmp_path / "nope.git"), fixture_repo.first, tmp_path / "y", token=None, ssh_key=None, folder=None)


def test_the_clone_size_limit_and_the_timeout(fixture_repo: FixtureRepo, tmp_path: Path) -> None:
    with pytest.raises(CodeSourceError, match="larger than the clone limit of 100 bytes"):
        fetch_git(
            str(fixture_repo.bare),
            fixture_repo.second,
            tmp_path / "x",
            token=None,
            ssh_key=None,
            folder=None,
            limits=FetchLimits(max_download_bytes=100),
        )
    with pytest.raises(CodeSourceError, match=r"timed out after 0 s"):
        fetch_git(
            str(fixture_repo.bare),
            fixture_repo.second,
            tmp_path / "y",
            token=None,
            ssh_key=None,
            folder=None,
            limits=FetchLimits(timeout_seconds=0),
        )
    with pytest.raises(CodeSourceError, match="too many entries: more than 2"):
        fetch_git(
            str(fixture_repo.bare),
            fixture_repo.second,
            tmp_path / "z",
            token=None,
            ssh_key=None,
            folder=None,
            limits=FetchLimits(max_entries=2),
        )


def test_a_symlink_escaping_the_tree_is_refused(tmp_path: Path) -> None:
    work = tmp_path / "evil"
    git(tmp_path, "init", "--initial-branch=main", str(work))
    (work / "ok.txt").write_text("ok\n")
    os.symlink("../../../etc/passwd", work / "escape")
    git(work, "add", "-A")
    git(work, "commit", "-m", "evil")
    commit = git(work, "rev-parse", "HEAD")

    with pytest.raises(CodeSourceError, match="escapes the tree"):
        fetch_git(str(work), commit, tmp_path / "out", token=None, ssh_key=None, folder=None)
    assert not (tmp_path / "out" / "escape").is_symlink()


def test_ssh_only_sources_fail_clearly(fixture_repo: FixtureRepo, tmp_path: Path) -> None:
    key = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\n"
    with pytest.raises(CodeSourceError) as caught:
        fetch_git(
            "git@git.example.invalid:team/repo.git",
            fixture_repo.first,
            tmp_path / "x",
            token=None,
            ssh_key=key,
            folder=None,
        )
    assert "SSH is not available in this runtime" in str(caught.value)
    assert "ssh://git@git.example.invalid/team/repo.git" in str(caught.value)
    assert "b3BlbnNzaC1rZXktdjEAAAAA" not in str(caught.value)


# -- HTTP with a token ----------------------------------------------------------------------------


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass
class GitHttpServer:
    url: str
    authorizations: list[str | None]


def _require_token(app: Callable[..., Iterable[bytes]], token: str, seen: list[str | None]) -> Callable[..., Any]:
    expected = "Basic " + base64.b64encode(f"x-access-token:{token}".encode()).decode()

    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        header = environ.get("HTTP_AUTHORIZATION")
        seen.append(header)
        if header != expected:
            start_response("401 Unauthorized", [("WWW-Authenticate", 'Basic realm="git"'), ("Content-Length", "0")])
            return [b""]
        return app(environ, start_response)

    return guarded


@pytest.fixture
def git_http_server(fixture_repo: FixtureRepo) -> Iterator[GitHttpServer]:
    """dulwich's smart-HTTP git server on 127.0.0.1, behind a check of the Authorization header."""
    repo = Repo(str(fixture_repo.bare))
    seen: list[str | None] = []
    repos: dict[str, BackendRepo] = {"/team/repo.git": repo}
    app = _require_token(make_wsgi_chain(DictBackend(repos)), TOKEN, seen)
    server: WSGIServer = make_server("127.0.0.1", 0, app, handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, name="git-http", daemon=True)
    thread.start()
    try:
        yield GitHttpServer(url=f"http://127.0.0.1:{server.server_port}/team/repo.git", authorizations=seen)
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()
        repo.close()


def test_http_with_the_right_token_fetches_each_commit(
    git_http_server: GitHttpServer, fixture_repo: FixtureRepo, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    fetch_git(git_http_server.url, fixture_repo.first, tmp_path / "one", token=TOKEN, ssh_key=None, folder=None)
    fetch_git(git_http_server.url, fixture_repo.second, tmp_path / "two", token=TOKEN, ssh_key=None, folder="docs")

    assert _files(tmp_path / "one") == FIRST_TREE
    assert _files(tmp_path / "two") == {"guide.txt": "guide\n"}
    assert git_http_server.authorizations and all(h is not None for h in git_http_server.authorizations)
    assert "dulwich" in caplog.text  # the fetch's own debug logging was captured, and holds no form of the token
    assert TOKEN not in caplog.text
    assert base64.b64encode(f"x-access-token:{TOKEN}".encode()).decode() not in caplog.text


def test_http_with_a_token_embedded_in_the_url(
    git_http_server: GitHttpServer, fixture_repo: FixtureRepo, tmp_path: Path
) -> None:
    for number, userinfo in enumerate((f"x-access-token:{TOKEN}", TOKEN)):
        url = git_http_server.url.replace("http://", f"http://{userinfo}@")
        fetch_git(url, fixture_repo.second, tmp_path / f"{number}", token=None, ssh_key=None, folder=None)
        assert _files(tmp_path / f"{number}") == SECOND_TREE
    wrong = git_http_server.url.replace("http://", f"http://x-access-token:{WRONG_TOKEN}@")
    with pytest.raises(CodeSourceError, match="authentication failed") as caught:
        fetch_git(wrong, fixture_repo.second, tmp_path / "wrong", token=None, ssh_key=None, folder=None)
    assert WRONG_TOKEN not in str(caught.value)
    assert git_http_server.url in str(caught.value)


def test_http_with_a_wrong_token_is_a_clear_error_without_the_token(
    git_http_server: GitHttpServer, fixture_repo: FixtureRepo, tmp_path: Path
) -> None:
    with pytest.raises(CodeSourceError) as caught:
        fetch_git(git_http_server.url, fixture_repo.first, tmp_path / "x", token=WRONG_TOKEN, ssh_key=None, folder=None)
    message = str(caught.value)
    assert "authentication failed (HTTP 401" in message
    assert git_http_server.url in message
    assert WRONG_TOKEN not in message
    assert base64.b64encode(f"x-access-token:{WRONG_TOKEN}".encode()).decode() not in message
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    chained: BaseException | None = caught.value
    while chained is not None:  # nothing chained below it holds the token either
        assert WRONG_TOKEN not in f"{chained!s} {chained!r} {chained.args!r}"
        chained = chained.__context__


def test_a_token_that_also_appears_in_the_url_is_masked(
    git_http_server: GitHttpServer, fixture_repo: FixtureRepo, tmp_path: Path
) -> None:
    url = f"{git_http_server.url}?access_token={WRONG_TOKEN}"
    with pytest.raises(CodeSourceError) as caught:
        fetch_git(url, fixture_repo.first, tmp_path / "x", token=WRONG_TOKEN, ssh_key=None, folder=None)
    message = str(caught.value)
    assert WRONG_TOKEN not in message
    assert f"{git_http_server.url}?access_token=***" in message


def test_http_without_a_token_and_an_ssh_fallback_names_both_failures(
    git_http_server: GitHttpServer, fixture_repo: FixtureRepo, tmp_path: Path
) -> None:
    with pytest.raises(CodeSourceError) as caught:
        fetch_git(git_http_server.url, fixture_repo.first, tmp_path / "x", token=None, ssh_key="KEYDATA", folder=None)
    message = str(caught.value)
    assert "authentication failed" in message
    assert "ssh://git@127.0.0.1/team/repo.git: SSH is not available" in message


def test_http_unknown_commit_is_an_error(git_http_server: GitHttpServer, tmp_path: Path) -> None:
    unknown = "fedcba9876543210fedcba9876543210fedcba98"
    with pytest.raises(CodeSourceError, match=rf"commit {unknown} not found"):
        fetch_git(git_http_server.url, unknown, tmp_path / "x", token=TOKEN, ssh_key=None, folder=None)


def test_a_token_is_never_sent_over_plain_http_to_a_remote_host(fixture_repo: FixtureRepo, tmp_path: Path) -> None:
    with pytest.raises(CodeSourceError, match=r"refusing to send a token over plain http://") as caught:
        fetch_git(
            "http://git.example.invalid/team/repo.git",
            fixture_repo.first,
            tmp_path / "x",
            token=TOKEN,
            ssh_key=None,
            folder=None,
        )
    assert TOKEN not in str(caught.value)


# -- the job cache --------------------------------------------------------------------------------


def test_code_cache_fetches_each_repo_and_commit_once(
    git_http_server: GitHttpServer, fixture_repo: FixtureRepo, tmp_path: Path
) -> None:
    with CodeCache(work_dir=tmp_path) as cache:
        for order in ("0001", "0002", "0003"):
            cache.git(
                git_http_server.url, fixture_repo.second, tmp_path / order, token=TOKEN, ssh_key=None, folder=None
            )
        requests_after_one_commit = len(git_http_server.authorizations)
        cache.git(git_http_server.url, fixture_repo.second, tmp_path / "app", token=TOKEN, ssh_key=None, folder="app")
        assert len(git_http_server.authorizations) == requests_after_one_commit
        cache.git(git_http_server.url, fixture_repo.first, tmp_path / "first", token=TOKEN, ssh_key=None, folder=None)
        assert cache.fetches == 2

        assert _files(tmp_path / "0001") == _files(tmp_path / "0003") == SECOND_TREE
        assert "run.sh" in _files(tmp_path / "app")
        assert _files(tmp_path / "first") == FIRST_TREE
    assert not any(p.name.startswith("code-cache-") for p in tmp_path.iterdir())


def test_code_cache_remembers_a_failure(
    git_http_server: GitHttpServer, fixture_repo: FixtureRepo, tmp_path: Path
) -> None:
    with CodeCache(work_dir=tmp_path) as cache:
        for order in ("0001", "0002"):
            with pytest.raises(CodeSourceError, match="authentication failed") as caught:
                cache.git(
                    git_http_server.url,
                    fixture_repo.first,
                    tmp_path / order,
                    token=WRONG_TOKEN,
                    ssh_key=None,
                    folder=None,
                )
            assert WRONG_TOKEN not in str(caught.value)
        assert cache.fetches == 1


# -- S3 -------------------------------------------------------------------------------------------


def _zip(entries: dict[str, bytes], *, symlinks: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = (stat.S_IFREG | 0o755) << 16 if name.endswith(".sh") else (stat.S_IFREG | 0o644) << 16
            archive.writestr(info, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, target)
    return buffer.getvalue()


def _tar_gz(entries: dict[str, bytes], *, symlinks: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o755 if name.endswith(".sh") else 0o644
            archive.addfile(info, io.BytesIO(data))
        for name, target in (symlinks or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            archive.addfile(info)
    return buffer.getvalue()


@pytest.fixture
def s3(aws: MotoServer) -> Any:
    client = boto3.client("s3", endpoint_url=aws.endpoint, region_name="us-east-1")
    client.create_bucket(Bucket="code")
    return client


CODE = {"run.sh": b"#!/bin/sh\necho hi\n", "src/main.py": b"print('hi')\n"}


@pytest.mark.parametrize(("key", "pack"), [("job/code.zip", _zip), ("job/code.tar.gz", _tar_gz)])
def test_s3_archives_are_unpacked(s3: Any, tmp_path: Path, key: str, pack: Callable[..., bytes]) -> None:
    s3.put_object(Bucket="code", Key=key, Body=pack(CODE, symlinks={"src/link.py": "main.py"}))

    fetch_s3(f"s3://code/{key}", tmp_path / "out", s3_client=s3)

    assert _files(tmp_path / "out") == {
        "run.sh": "#!/bin/sh\necho hi\n",
        "src/link.py": "-> main.py",
        "src/main.py": "print('hi')\n",
    }
    assert os.access(tmp_path / "out" / "run.sh", os.X_OK)


def test_s3_tar_made_from_dot_and_an_empty_directory(s3: Any, tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name in ("./", "./empty/"):
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            archive.addfile(info)
        info = tarfile.TarInfo("./run.sh")
        info.size, info.mode = 3, 0o700
        archive.addfile(info, io.BytesIO(b"ok\n"))
    s3.put_object(Bucket="code", Key="dot.tgz", Body=buffer.getvalue())

    fetch_s3("s3://code/dot.tgz", tmp_path / "out", s3_client=s3)

    assert _files(tmp_path / "out") == {"run.sh": "ok\n"}
    assert (tmp_path / "out" / "empty").is_dir()
    assert stat.S_IMODE((tmp_path / "out" / "run.sh").stat().st_mode) == 0o700


def test_s3_single_file(s3: Any, tmp_path: Path) -> None:
    s3.put_object(Bucket="code", Key="scripts/deploy.sh", Body=b"echo deploy\n")
    fetch_s3("s3://code/scripts/deploy.sh", tmp_path / "out", s3_client=s3)
    assert _files(tmp_path / "out") == {"deploy.sh": "echo deploy\n"}


@pytest.mark.parametrize(
    ("key", "body", "message"),
    [
        ("evil.zip", _zip({"../outside.txt": b"x"}), "unsafe path '../outside.txt'"),
        ("evil.tar.gz", _tar_gz({"a/../../outside.txt": b"x"}), "unsafe path 'a/../../outside.txt'"),
        ("abs.tar.gz", _tar_gz({"/etc/cron.d/x": b"x"}), "unsafe path '/etc/cron.d/x': absolute"),
        ("link.zip", _zip({"ok": b"1"}, symlinks={"up": "../../etc"}), "escapes the tree"),
        ("link.tar.gz", _tar_gz({}, symlinks={"abs": "/etc/passwd"}), "is absolute"),
        ("notzip.zip", b"just text", "not a valid zip archive"),
    ],
)
def test_s3_malicious_archives_are_refused(s3: Any, tmp_path: Path, key: str, body: bytes, message: str) -> None:
    s3.put_object(Bucket="code", Key=key, Body=body)
    dest = tmp_path / "sandbox" / "out"
    with pytest.raises(CodeSourceError, match=message.replace(".", r"\.").replace("(", r"\(")):
        fetch_s3(f"s3://code/{key}", dest, s3_client=s3)
    assert not (tmp_path / "sandbox" / "outside.txt").exists()
    assert not (tmp_path / "outside.txt").exists()
    assert not any(p.is_symlink() for p in dest.rglob("*"))


def test_s3_a_symlink_chain_that_really_escapes_is_refused(s3: Any, tmp_path: Path) -> None:
    # Lexically "sub/up/../.." is ".", but sub/up -> ".." makes it resolve above the root.
    body = _zip({"sub/keep.txt": b"k"}, symlinks={"sub/up": "..", "chain": "sub/up/../.."})
    s3.put_object(Bucket="code", Key="chain.zip", Body=body)
    with pytest.raises(CodeSourceError, match=re.escape("'chain' -> 'sub/up/../..' escapes the tree")):
        fetch_s3("s3://code/chain.zip", tmp_path / "out", s3_client=s3)
    assert not (tmp_path / "out" / "chain").is_symlink()


def test_s3_size_limits_and_errors(s3: Any, tmp_path: Path) -> None:
    bomb = _zip({"big.bin": b"\0" * (4 * 1024 * 1024)})
    s3.put_object(Bucket="code", Key="bomb.zip", Body=bomb)
    assert len(bomb) < 100_000
    with pytest.raises(CodeSourceError, match="too large: more than 1000000 bytes"):
        fetch_s3("s3://code/bomb.zip", tmp_path / "a", s3_client=s3, limits=FetchLimits(max_tree_bytes=1_000_000))
    with pytest.raises(CodeSourceError, match="larger than the download limit of 1000 bytes"):
        fetch_s3("s3://code/bomb.zip", tmp_path / "b", s3_client=s3, limits=FetchLimits(max_download_bytes=1000))
    with pytest.raises(CodeSourceError, match=r"s3://code/missing.zip: (NoSuchKey|404)"):
        fetch_s3("s3://code/missing.zip", tmp_path / "c", s3_client=s3)
    with pytest.raises(CodeSourceError, match="is not s3://bucket/key"):
        fetch_s3("https://code/x.zip", tmp_path / "d", s3_client=s3)


def test_code_cache_fetches_an_s3_location_once(s3: Any, tmp_path: Path) -> None:
    s3.put_object(Bucket="code", Key="job/code.zip", Body=_zip(CODE))
    with CodeCache(s3_client=s3, work_dir=tmp_path) as cache:
        cache.s3("s3://code/job/code.zip", tmp_path / "0001")
        s3.delete_object(Bucket="code", Key="job/code.zip")  # a second fetch would now fail
        cache.s3("s3://code/job/code.zip", tmp_path / "0002")
        assert cache.fetches == 1
    assert _files(tmp_path / "0001") == _files(tmp_path / "0002") == {k: v.decode() for k, v in CODE.items()}


def test_the_whole_fetch_is_bounded_in_time(s3: Any, tmp_path: Path) -> None:
    s3.put_object(Bucket="code", Key="job/code.zip", Body=_zip(CODE))
    started = time.monotonic()
    with pytest.raises(CodeSourceError, match="timed out"):
        fetch_s3("s3://code/job/code.zip", tmp_path / "x", s3_client=s3, limits=FetchLimits(timeout_seconds=0))
    assert time.monotonic() - started < 10


def test_http_unknown_repository_and_unreachable_host(
    git_http_server: GitHttpServer, fixture_repo: FixtureRepo, tmp_path: Path
) -> None:
    missing = git_http_server.url.replace("/team/repo.git", "/team/missing.git")
    with pytest.raises(CodeSourceError, match=re.escape(f"{missing}: repository not found, or no access to it")):
        fetch_git(missing, fixture_repo.first, tmp_path / "x", token=TOKEN, ssh_key=None, folder=None)
    closed = f"http://127.0.0.1:{free_port()}/team/repo.git"
    with pytest.raises(CodeSourceError, match=re.escape(f"{closed}: could not connect")) as caught:
        fetch_git(closed, fixture_repo.first, tmp_path / "y", token=TOKEN, ssh_key=None, folder=None)
    assert TOKEN not in str(caught.value)
