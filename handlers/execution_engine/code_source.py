"""An order's code: a git repository at a commit, or an S3 location, written into a directory.

Runs inside Lambda's Python runtime, which has no ``git`` and no ``ssh`` binary: git is spoken by
dulwich (pure Python protocol code; its optional Rust speedups ship in its wheels), over HTTPS
(urllib3) or from a local path / ``file://`` URL (tests and local runs).

- ``fetch_git(repo_url, commit, dest, *, token, ssh_key, folder)`` -- exactly ``commit`` (a full
  hex object id): first a shallow fetch of that one commit (``want <commit>``, depth 1), which
  servers that allow any reachable commit in a want answer (GitHub, GitLab, local paths); when a
  server refuses a want that is not a ref tip (stock ``git`` and dulwich servers), one full fetch
  of the advertised refs, then the commit is looked up in it. Its tree (or only ``folder``,
  whose contents become ``dest``'s) is written into ``dest``; submodules are left out.
- ``fetch_s3(location, dest, *, s3_client)`` -- ``s3://bucket/key``: a ``.zip``, ``.tar.gz`` /
  ``.tgz`` / ``.tar`` archive unpacked safely into ``dest``, any other key written as the one
  file ``dest/<basename>``.
- ``CodeCache`` -- one job: each (repo, commit) and each S3 location is fetched once, and each
  order gets its own copy (credentials are resolved once per job for the same reason).
- ``CodeSourceError`` -- every failure, with a message fit for the job's result (never a
  credential in it).

Credentials. HTTPS with the token first (HTTP basic auth, user ``x-access-token``, which GitHub
expects and GitLab / Bitbucket accept for tokens; a token embedded in the URL is taken out and
used the same way). The token is handed to urllib3 as a header for the repository's origin only:
never in argv (there is no subprocess), never in a URL that is kept, logged or raised; every
message is masked (the token, its URL-quoted and basic-auth forms) before it leaves this module,
and exceptions are raised ``from None`` so no underlying exception (which could carry a request)
is chained. A token is refused over plain ``http://`` except to a loopback host.

SSH. The fallback is attempted when ``ssh_key`` is given (after HTTPS failed to authenticate or
connect, or when the URL is an SSH one and no token is given), but this runtime cannot speak SSH:
there is no ``ssh`` binary for dulwich's default SSH vendor, and its paramiko vendor would add
paramiko + cryptography + bcrypt + PyNaCl + invoke (native wheels, ~15 MB) to every function of
the asset for one fallback. So an SSH-only source fails with a clear ``CodeSourceError`` saying
so (use an HTTPS URL with a token); an SSH URL with a token is fetched over HTTPS from the same
host and path.

Bounds (``FetchLimits``): downloaded bytes (the pack, or the S3 object), written bytes and
entries, and a wall-clock timeout for the whole fetch (checked on every chunk; each HTTP request
also has a socket timeout), each failing with a ``CodeSourceError`` that names the limit.
"""

from __future__ import annotations

import base64
import ipaddress
import logging
import os
import re
import shutil
import stat
import tarfile
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any
from urllib.parse import quote, urlsplit, urlunsplit

from handlers.execution_engine.exec_package import (
    ExecPackageError,
    SafeTreeWriter,
    extract_zip_entries,
    safe_relative_path,
)

log = logging.getLogger(__name__)

MiB = 1024 * 1024
TOKEN_USERNAME = "x-access-token"
_CHUNK = 1024 * 1024
_MASK = "***"
_COMMIT = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")
_SCP_LIKE = re.compile(r"^(?:(?P<user>[^@/:]+)@)?(?P<host>[^@/:]+):(?P<path>(?!//).+)$")
_LOOPBACK_NAMES = frozenset({"localhost"})
_ARCHIVE_ZIP = (".zip",)
_ARCHIVE_TAR = (".tar.gz", ".tgz", ".tar")


class CodeSourceError(Exception):
    """The code of an order could not be fetched; the message is safe to log and to report."""


@dataclass(frozen=True)
class FetchLimits:
    """Bounds of one fetch (git or S3)."""

    max_download_bytes: int = 256 * MiB  # the git pack, or the S3 object
    max_tree_bytes: int = 512 * MiB  # bytes of files written
    max_entries: int = 50_000  # files, directories and symlinks written
    timeout_seconds: float = 300.0  # the whole fetch, wall clock
    request_timeout_seconds: float = 60.0  # one HTTP connect or read


DEFAULT_FETCH_LIMITS = FetchLimits()


# -- masking and deadlines ----------------------------------------------------------------------


class _Masker:
    def __init__(self, *secrets: str | None) -> None:
        forms: set[str] = set()
        for secret in secrets:
            if not secret:
                continue
            forms.add(secret)
            forms.add(quote(secret, safe=""))
            for user in (TOKEN_USERNAME, ""):
                forms.add(base64.b64encode(f"{user}:{secret}".encode()).decode())
        # Longest first, so a form containing another is replaced whole.
        self._forms = sorted((form for form in forms if len(form) >= 4), key=len, reverse=True)

    def __call__(self, text: object) -> str:
        result = str(text)
        for form in self._forms:
            result = result.replace(form, _MASK)
        return result


class _Deadline:
    def __init__(self, seconds: float, what: str) -> None:
        self._end = time.monotonic() + seconds
        self._seconds = seconds
        self._what = what

    def remaining(self) -> float:
        return self._end - time.monotonic()

    def check(self) -> None:
        if time.monotonic() > self._end:
            raise CodeSourceError(f"{self._what}: timed out after {self._seconds:g} s")


# -- repository URLs ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Source:
    kind: str  # "local" | "http" | "ssh"
    location: str  # a path (local) or a URL without credentials
    host: str = ""
    path: str = ""  # the repository path on the host, without a leading "/"


def _parse_repo_url(repo_url: str) -> tuple[_Source, str | None]:
    """The source and a password embedded in the URL (taken out of it), if any."""
    url = repo_url.strip()
    if not url:
        raise CodeSourceError("no git repository given")
    if "://" not in url:
        scp = _SCP_LIKE.match(url)
        if scp and not os.path.exists(url) and "/" not in url.split(":", 1)[0]:
            host, path = scp.group("host"), scp.group("path").lstrip("/")
            return _Source("ssh", f"ssh://{scp.group('user') or 'git'}@{host}/{path}", host, path), None
        return _Source("local", os.path.abspath(url)), None
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise CodeSourceError("file:// URLs must name a local path")
        return _Source("local", parts.path), None
    host = parts.hostname or ""
    if not host:
        raise CodeSourceError(f"git repository URL has no host ({scheme}://...)")
    netloc = host if ":" not in host else f"[{host}]"
    if parts.port:
        netloc += f":{parts.port}"
    path = parts.path.lstrip("/")
    if scheme in ("http", "https"):
        clean = urlunsplit((scheme, netloc, "/" + path, parts.query, ""))
        # "https://user:token@host/..." or "https://token@host/...": the secret is the password,
        # or the user name when there is no password (GitHub accepts a token either way).
        return _Source("http", clean, host, path), parts.password or parts.username
    if scheme in ("ssh", "git+ssh", "ssh+git"):
        user = parts.username or "git"
        return _Source("ssh", urlunsplit(("ssh", f"{user}@{netloc}", "/" + path, "", "")), host, path), None
    raise CodeSourceError(f"unsupported git URL scheme {scheme!r} (use https://, a local path or file://)")


def _is_loopback(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def display_repo_url(repo_url: str) -> str:
    """``repo_url`` without any credentials in it (for logs and messages)."""
    try:
        return _parse_repo_url(repo_url)[0].location
    except CodeSourceError:
        return "<invalid repository URL>"


# -- git -----------------------------------------------------------------------------------------


class _AuthFailed(CodeSourceError):
    """Authentication or connection failed: the next transport may be tried."""


def _ssh_unavailable(source: _Source) -> CodeSourceError:
    return _AuthFailed(
        f"{source.location}: SSH is not available in this runtime (no ssh binary, and paramiko is not "
        "bundled); use an https:// URL with a token"
    )


def _import_dulwich() -> Any:
    try:
        from dulwich import client as dulwich_client
    except ImportError:  # pragma: no cover - the asset always bundles it
        raise CodeSourceError("the dulwich package is not installed") from None
    return dulwich_client


def _dulwich_errors() -> tuple[type[BaseException], ...]:
    from dulwich.errors import GitProtocolError, HangupException, NotGitRepository

    return (GitProtocolError, HangupException, NotGitRepository)


class _PackSink:
    """Receives pack data from dulwich into the object store, counting bytes against the limits."""

    def __init__(self, repo: Any, limits: FetchLimits, deadline: _Deadline, what: str) -> None:
        # Spooled, then added as a (possibly thin) pack: servers may insist on thin-pack, and
        # with nothing on our side a thin pack has no external bases anyway.
        self._repo = repo
        self._file: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=16 * MiB, dir=repo.path)  # noqa: SIM115
        self._limits = limits
        self._deadline = deadline
        self._what = what
        self.received = 0

    def write(self, data: bytes) -> int:
        self._deadline.check()
        self.received += len(data)
        if self.received > self._limits.max_download_bytes:
            limit = self._limits.max_download_bytes
            raise CodeSourceError(f"{self._what}: the repository is larger than the clone limit of {limit} bytes")
        self._file.write(data)
        return len(data)

    def progress(self, _message: bytes) -> None:
        self._deadline.check()

    def close(self, ok: bool) -> None:
        try:
            if ok and self.received:
                self._file.seek(0)
                self._repo.object_store.add_thin_pack(self._file.read, None)
        finally:
            self._file.close()


def _make_client(source: _Source, token: str | None, limits: FetchLimits, deadline: _Deadline) -> tuple[Any, str]:
    dulwich_client = _import_dulwich()
    if source.kind == "local":
        if not os.path.isdir(source.location):
            raise CodeSourceError(f"{source.location}: no such repository")
        return dulwich_client.LocalGitClient(), source.location
    if source.kind == "http":
        if token and source.location.startswith("http://") and not _is_loopback(source.host):
            raise CodeSourceError(f"{source.location}: refusing to send a token over plain http://")
        timeout = max(1.0, min(limits.request_timeout_seconds, deadline.remaining()))
        client = dulwich_client.Urllib3HttpGitClient(
            source.location,
            username=TOKEN_USERNAME if token else None,
            password=token,
            timeout=timeout,
            quiet=True,
        )
        return client, ""
    raise _ssh_unavailable(source)


_CONNECT_FAILURES = ("max retries exceeded", "connection refused", "newconnectionerror", "timed out", "name or service")


def _before_refs_error(what: str, exc: BaseException) -> CodeSourceError:
    """An error raised before the server listed its refs: no such repository, no access, no route."""
    from dulwich.errors import NotGitRepository

    message = str(exc)
    lowered = message.lower()
    detail = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    if isinstance(exc, NotGitRepository) or "404" in message or "not found" in lowered:
        return _AuthFailed(f"{what}: repository not found, or no access to it ({detail})")
    if "401" in message or "403" in message:
        return _AuthFailed(f"{what}: access denied ({detail})")
    if isinstance(exc, OSError) or any(marker in lowered for marker in _CONNECT_FAILURES):
        return _AuthFailed(f"{what}: could not connect ({detail})")
    return CodeSourceError(f"{what}: git fetch failed ({detail})")


def _fetch_into(
    client: Any, path: str, repo: Any, commit: bytes, limits: FetchLimits, deadline: _Deadline, what: str
) -> None:
    """Fetch ``commit`` into ``repo``: shallow and by id first, all advertised refs if refused."""
    from dulwich.client import HTTPUnauthorized

    protocol_errors: tuple[type[BaseException], ...] = (*_dulwich_errors(), KeyError, OSError)
    listed: list[dict[bytes, bytes]] = []

    def want_commit(refs: dict[bytes, bytes], depth: int | None = None) -> list[bytes]:
        listed.append(dict(refs))
        return [commit]

    def want_all(refs: dict[bytes, bytes], depth: int | None = None) -> list[bytes]:
        listed.append(dict(refs))
        wants = {sha for name, sha in refs.items() if not name.endswith(b"^{}")}
        return [commit] if commit in wants else sorted(wants)

    attempts: list[tuple[Callable[..., list[bytes]], int | None]] = [(want_commit, 1), (want_all, None)]
    last_error = ""
    for determine_wants, depth in attempts:
        sink = _PackSink(repo, limits, deadline, what)
        ok = False
        before = len(listed)
        try:
            result = client.fetch_pack(
                path,
                determine_wants,
                repo.get_graph_walker(),
                sink.write,
                progress=sink.progress,
                depth=depth,
            )
            ok = True
        except HTTPUnauthorized:
            message = f"{what}: authentication failed (HTTP 401: the token is missing, wrong or expired)"
            raise _AuthFailed(message) from None
        except CodeSourceError:
            raise
        except protocol_errors as exc:
            if len(listed) == before:
                raise _before_refs_error(what, exc) from None
            # The server listed its refs and then refused: typically a want that is no ref tip.
            last_error = f"{type(exc).__name__}: {exc}"
            continue
        finally:
            sink.close(ok)
        if len(listed) == before or not listed[-1]:
            raise _AuthFailed(f"{what}: repository not found, empty, or no access to it (the server listed no refs)")
        if depth is not None and getattr(result, "new_shallow", None):
            repo.update_shallow(result.new_shallow, getattr(result, "new_unshallow", None))
        if commit in repo.object_store:
            return
    detail = f" (the server said: {last_error})" if last_error else ""
    raise CodeSourceError(f"{what}: commit {commit.decode()} not found in the repository{detail}")


def _write_tree(
    repo: Any, commit: bytes, dest: Path, folder: str | None, limits: FetchLimits, deadline: _Deadline, what: str
) -> None:
    from dulwich.objects import Commit, Tree

    obj = repo.object_store[commit]
    if not isinstance(obj, Commit):
        raise CodeSourceError(f"{what}: {commit.decode()} is not a commit")
    tree_id = obj.tree
    prefix = ""
    if folder and folder.strip("/"):
        try:
            rel = safe_relative_path(folder.strip("/"))
        except ExecPackageError as exc:
            raise CodeSourceError(f"{what}: git_folder {exc}") from None
        tree = repo.object_store[tree_id]
        try:
            mode, sub_id = tree.lookup_path(repo.object_store.__getitem__, str(rel).encode())
        except KeyError:
            raise CodeSourceError(f"{what}: folder {str(rel)!r} not found at commit {commit.decode()}") from None
        if not stat.S_ISDIR(mode) or not isinstance(repo.object_store[sub_id], Tree):
            raise CodeSourceError(f"{what}: {str(rel)!r} is not a folder at commit {commit.decode()}")
        tree_id, prefix = sub_id, str(rel)
    writer = SafeTreeWriter(dest, limits.max_tree_bytes, limits.max_entries, check=deadline.check)
    from dulwich.object_store import iter_tree_contents
    from dulwich.objects import S_ISGITLINK

    for entry in iter_tree_contents(repo.object_store, tree_id):
        name = entry.path.decode("utf-8", "surrogateescape")
        shown = f"{prefix}/{name}" if prefix else name
        if any(part.lower() == ".git" for part in name.split("/")):
            raise CodeSourceError(f"{what}: refusing a tree entry named .git ({shown!r})")
        rel = safe_relative_path(name)
        if S_ISGITLINK(entry.mode):
            log.info("skipping submodule %s of %s", shown, what)
            continue
        blob = repo.object_store[entry.sha]
        if stat.S_ISLNK(entry.mode):
            writer.add_symlink(rel, blob.as_raw_string().decode("utf-8", "surrogateescape"))
        else:
            writer.add_file(rel, 0o755 if entry.mode & 0o111 else 0o644, blob.as_raw_chunks())
    writer.finish()


def _candidates(source: _Source, token: str | None, ssh_key: str | None) -> list[_Source]:
    if source.kind == "local":
        return [source]
    if source.kind == "http":
        sources = [source]
        if ssh_key:
            sources.append(_Source("ssh", f"ssh://git@{source.host}/{source.path}", source.host, source.path))
        return sources
    sources = []
    if token:
        sources.append(_Source("http", f"https://{source.host}/{source.path}", source.host, source.path))
    sources.append(source)
    return sources


def _check_commit(commit: str) -> bytes:
    value = (commit or "").strip().lower()
    if not _COMMIT.match(value):
        raise CodeSourceError(f"commit {commit[:80]!r} is not a full hexadecimal commit id (40 or 64 characters)")
    return value.encode("ascii")


def _fetch_repo(
    repo_url: str,
    commit: bytes,
    store_dir: Path,
    *,
    token: str | None,
    ssh_key: str | None,
    limits: FetchLimits,
    deadline: _Deadline,
    mask: _Masker,
) -> Any:
    """A bare repository at ``store_dir`` holding ``commit`` and its tree."""
    from dulwich.repo import Repo

    source, embedded = _parse_repo_url(repo_url)
    token = token or embedded
    failures: list[str] = []
    for candidate in _candidates(source, token, ssh_key):
        what = candidate.location
        attempt_dir = store_dir / f"attempt-{len(failures)}"
        attempt_dir.mkdir(parents=True)
        repo = Repo.init_bare(str(attempt_dir))
        try:
            client, path = _make_client(candidate, token if candidate.kind == "http" else None, limits, deadline)
            _fetch_into(client, path, repo, commit, limits, deadline, what)
            return repo
        except _AuthFailed as exc:
            failures.append(mask(exc))
        except BaseException:
            repo.close()
            raise
        repo.close()
    raise CodeSourceError("; ".join(failures))


def fetch_git(
    repo_url: str,
    commit: str,
    dest: Path,
    *,
    token: str | None,
    ssh_key: str | None,
    folder: str | None,
    limits: FetchLimits = DEFAULT_FETCH_LIMITS,
) -> None:
    """Write the tree of ``commit`` of ``repo_url`` (or only ``folder`` of it) into ``dest``.

    ``dest`` is created if missing (it should be empty). See the module docstring for the
    transports, credentials and bounds. Raises CodeSourceError (the message never holds a
    credential).
    """
    mask = _Masker(token, ssh_key, _parse_embedded_password(repo_url))
    deadline = _Deadline(limits.timeout_seconds, f"fetching {mask(display_repo_url(repo_url))}")
    wanted = _check_commit(commit)
    with tempfile.TemporaryDirectory(prefix="code-git-") as tmp:
        try:
            repo = _fetch_repo(
                repo_url,
                wanted,
                Path(tmp),
                token=token,
                ssh_key=ssh_key,
                limits=limits,
                deadline=deadline,
                mask=mask,
            )
            try:
                _write_tree(repo, wanted, dest, folder, limits, deadline, display_repo_url(repo_url))
            finally:
                repo.close()
        except ExecPackageError as exc:
            raise CodeSourceError(mask(f"{display_repo_url(repo_url)}: {exc}")) from None
        except CodeSourceError as exc:
            raise CodeSourceError(mask(exc)) from None
        except Exception as exc:  # anything dulwich or urllib3 raised that is not mapped above
            raise CodeSourceError(
                mask(f"{display_repo_url(repo_url)}: git fetch failed ({type(exc).__name__}: {exc})")
            ) from None


def _parse_embedded_password(repo_url: str) -> str | None:
    try:
        return _parse_repo_url(repo_url)[1]
    except CodeSourceError:
        return None


# -- S3 ------------------------------------------------------------------------------------------


def _parse_s3(location: str) -> tuple[str, str]:
    parts = urlsplit(location.strip())
    if parts.scheme != "s3" or not parts.netloc or not parts.path.strip("/"):
        raise CodeSourceError(f"S3 location {location[:200]!r} is not s3://bucket/key")
    return parts.netloc, parts.path.lstrip("/")


def _download(s3_client: Any, bucket: str, key: str, out: IO[bytes], limits: FetchLimits, deadline: _Deadline) -> None:
    from botocore.exceptions import BotoCoreError, ClientError

    where = f"s3://{bucket}/{key}"
    try:
        head = s3_client.head_object(Bucket=bucket, Key=key)
        if int(head.get("ContentLength", 0)) > limits.max_download_bytes:
            raise CodeSourceError(f"{where}: larger than the download limit of {limits.max_download_bytes} bytes")
        body = s3_client.get_object(Bucket=bucket, Key=key)["Body"]
        received = 0
        try:
            while chunk := body.read(_CHUNK):
                deadline.check()
                received += len(chunk)
                if received > limits.max_download_bytes:
                    raise CodeSourceError(
                        f"{where}: larger than the download limit of {limits.max_download_bytes} bytes"
                    )
                out.write(chunk)
        finally:
            body.close()
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code = error.get("Code", "error")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        raise CodeSourceError(f"{where}: {code} (HTTP {status})") from None
    except BotoCoreError as exc:
        raise CodeSourceError(f"{where}: {type(exc).__name__}: {exc}") from None


def _tar_chunks(stream: IO[bytes]) -> Iterator[bytes]:
    while chunk := stream.read(_CHUNK):
        yield chunk


def _extract_tar(path: Path, writer: SafeTreeWriter, where: str) -> None:
    try:
        with tarfile.open(path, mode="r:*") as archive:
            for member in archive:
                try:
                    rel = safe_relative_path(member.name.removeprefix("./") + ("/" if member.isdir() else ""))
                except ExecPackageError:
                    if member.isdir() and member.name.strip("/") in (".", ""):
                        continue  # the archive's own root, "./"
                    raise
                if member.isdir():
                    writer.add_dir(rel)
                elif member.isreg():
                    stream = archive.extractfile(member)
                    if stream is None:
                        raise CodeSourceError(f"{where}: unreadable tar member {member.name!r}")
                    with stream:
                        writer.add_file(rel, member.mode, _tar_chunks(stream))
                elif member.issym():
                    writer.add_symlink(rel, member.linkname)
                else:
                    kind = "a hard link" if member.islnk() else "not a file, directory or symlink"
                    raise CodeSourceError(f"{where}: tar member {member.name[:200]!r} is {kind}")
    except tarfile.TarError as exc:
        raise CodeSourceError(f"{where}: not a valid tar archive ({exc})") from None
    except (EOFError, OSError, zipfile.BadZipFile) as exc:
        raise CodeSourceError(f"{where}: corrupt archive ({type(exc).__name__}: {exc})") from None


def _extract_zip(path: Path, writer: SafeTreeWriter, where: str) -> None:
    try:
        with zipfile.ZipFile(path) as archive:
            extract_zip_entries(archive, archive.infolist(), writer)
    except zipfile.BadZipFile as exc:
        raise CodeSourceError(f"{where}: not a valid zip archive ({exc})") from None
    except (EOFError, OSError, RuntimeError, UnicodeDecodeError) as exc:
        raise CodeSourceError(f"{where}: corrupt archive ({type(exc).__name__}: {exc})") from None


def fetch_s3(
    location: str,
    dest: Path,
    *,
    s3_client: Any,
    limits: FetchLimits = DEFAULT_FETCH_LIMITS,
) -> None:
    """Write the code at ``s3://bucket/key`` into ``dest`` (created if missing).

    A key ending in ``.zip``, ``.tar.gz``, ``.tgz`` or ``.tar`` is unpacked (safely: see
    ``exec_package``); any other key is written as ``dest/<basename of the key>``. Raises
    CodeSourceError.
    """
    bucket, key = _parse_s3(location)
    where = f"s3://{bucket}/{key}"
    deadline = _Deadline(limits.timeout_seconds, f"fetching {where}")
    lowered = key.lower()
    writer = SafeTreeWriter(dest, limits.max_tree_bytes, limits.max_entries, check=deadline.check)
    with tempfile.TemporaryDirectory(prefix="code-s3-") as tmp:
        archive_path = Path(tmp) / "object"
        with archive_path.open("wb") as out:
            _download(s3_client, bucket, key, out, limits, deadline)
        try:
            if lowered.endswith(_ARCHIVE_ZIP):
                _extract_zip(archive_path, writer, where)
            elif lowered.endswith(_ARCHIVE_TAR):
                _extract_tar(archive_path, writer, where)
            else:
                name = PurePosixPath(key).name
                with archive_path.open("rb") as source:
                    writer.add_file(safe_relative_path(name), 0o644, _tar_chunks(source))
            writer.finish()
        except ExecPackageError as exc:
            raise CodeSourceError(f"{where}: {exc}") from None


# -- one job's cache -----------------------------------------------------------------------------


@dataclass
class _Entry:
    lock: threading.Lock = field(default_factory=threading.Lock)
    path: Path | None = None
    repo: Any = None
    error: str | None = None


class CodeCache:
    """Code sources of one job: each fetched once, copied into each order's directory.

    Git: the commit's objects are fetched once per (repository, commit) into a private bare
    repository; every order then gets the tree (or its ``folder``) written from it. S3: the
    location is fetched and unpacked once; every order gets a copy. A failure is remembered
    too: the second order of a failed source gets the same CodeSourceError without another
    fetch. Thread-safe: one lock per source, so different sources are fetched and written in
    parallel. ``close()`` (or the ``with`` block) removes it all.
    """

    def __init__(
        self,
        *,
        s3_client: Any = None,
        work_dir: Path | None = None,
        limits: FetchLimits = DEFAULT_FETCH_LIMITS,
    ) -> None:
        self._root = Path(tempfile.mkdtemp(prefix="code-cache-", dir=work_dir))
        self._s3_client = s3_client
        self._limits = limits
        self._entries: dict[tuple[str, str], _Entry] = {}
        self._lock = threading.Lock()
        self.fetches = 0  # sources actually fetched (git repositories and S3 objects)

    def __enter__(self) -> CodeCache:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            for entry in self._entries.values():
                if entry.repo is not None:
                    entry.repo.close()
            self._entries.clear()
        shutil.rmtree(self._root, ignore_errors=True)

    def _entry(self, key: tuple[str, str]) -> _Entry:
        with self._lock:
            return self._entries.setdefault(key, _Entry())

    def git(
        self,
        repo_url: str,
        commit: str,
        dest: Path,
        *,
        token: str | None,
        ssh_key: str | None,
        folder: str | None,
    ) -> None:
        """Like ``fetch_git``, fetching each (repo_url, commit) once per cache."""
        mask = _Masker(token, ssh_key, _parse_embedded_password(repo_url))
        shown = display_repo_url(repo_url)
        wanted = _check_commit(commit)
        entry = self._entry((f"git:{shown}", wanted.decode()))
        with entry.lock:
            if entry.error is not None:
                raise CodeSourceError(entry.error)
            if entry.repo is None:
                store = self._root / f"git-{len(self._entries)}-{wanted.decode()[:12]}"
                deadline = _Deadline(self._limits.timeout_seconds, f"fetching {shown}")
                self.fetches += 1
                try:
                    entry.repo = _fetch_repo(
                        repo_url,
                        wanted,
                        store,
                        token=token,
                        ssh_key=ssh_key,
                        limits=self._limits,
                        deadline=deadline,
                        mask=mask,
                    )
                except CodeSourceError as exc:
                    entry.error = mask(exc)
                    raise CodeSourceError(entry.error) from None
                except Exception as exc:
                    entry.error = mask(f"{shown}: git fetch failed ({type(exc).__name__}: {exc})")
                    raise CodeSourceError(entry.error) from None
            # Still under the source's lock: dulwich's pack readers share file positions, so
            # one repository is read by one thread at a time.
            deadline = _Deadline(self._limits.timeout_seconds, f"writing {shown}")
            try:
                _write_tree(entry.repo, wanted, dest, folder, self._limits, deadline, shown)
            except ExecPackageError as exc:
                raise CodeSourceError(mask(f"{shown}: {exc}")) from None
            except CodeSourceError as exc:
                raise CodeSourceError(mask(exc)) from None

    def s3(self, location: str, dest: Path) -> None:
        """Like ``fetch_s3``, fetching each location once per cache."""
        if self._s3_client is None:
            raise CodeSourceError("CodeCache was created without an s3_client")
        entry = self._entry(("s3", location.strip()))
        with entry.lock:
            if entry.error is not None:
                raise CodeSourceError(entry.error)
            if entry.path is None:
                unpacked = self._root / f"s3-{len(self._entries)}"
                self.fetches += 1
                try:
                    fetch_s3(location, unpacked, s3_client=self._s3_client, limits=self._limits)
                except CodeSourceError as exc:
                    entry.error = str(exc)
                    raise
                entry.path = unpacked
            source = entry.path
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copytree(source, dest, symlinks=True, dirs_exist_ok=True)
