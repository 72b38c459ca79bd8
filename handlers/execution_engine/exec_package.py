"""exec.zip: one packaged order, built by init and read by the worker.

Layout (names from ``schema``): ``order.json`` (the order manifest as JSON), ``secrets.sops.json``
(the SOPS-sealed bundle, byte for byte) and ``code/...`` (the order's code; absent when the order
has none).

The API, for init and for the worker:

- ``build_exec_zip(manifest=..., sealed_bundle=..., code_dir=...) -> bytes`` -- deterministic:
  the same manifest, bundle and files (paths, contents, modes, symlink targets) give the same
  bytes (entries sorted by path, fixed timestamps, Unix attributes, one compression level).
- ``read_exec_zip(data) -> ExecPackage`` -- checks the layout, sizes and every entry name up
  front; ``ExecPackage.manifest`` (dict), ``.sealed_bundle`` (bytes), ``.code_paths`` and
  ``.extract_code(dest)``, which writes ``code/`` under ``dest`` safely.
- ``ExecPackageError`` -- every refusal (bad layout, unsafe name, a limit), with a clear message.
- ``PackageLimits`` / ``DEFAULT_PACKAGE_LIMITS`` -- the size limits, both sides.

What "safely" means, here and for ``code_source`` (which unpacks S3 archives and writes git
trees through the same ``SafeTreeWriter``): no absolute path, drive letter, backslash, NUL,
``.`` / ``..`` or empty component; nothing is written through a symlink or over an existing
path (``O_EXCL | O_NOFOLLOW``); symlinks are created last and only when both their target text
and their real resolved path stay inside the destination; regular files, directories and
symlinks only (no devices, FIFOs, hard links); permission bits kept as ``mode & 0o777`` (never
setuid/setgid/sticky); byte and entry counts enforced on the bytes actually written, never on a
size an archive header claims. On an error the destination may hold a partial tree: callers
write into a fresh directory and discard it.
"""

from __future__ import annotations

import io
import json
import os
import re
import stat
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any

from handlers.execution_engine.schema import CODE_DIR, ORDER_MANIFEST, SEALED_BUNDLE

MiB = 1024 * 1024

# 1980-01-01 00:00:00, the earliest time a zip entry can hold: every entry gets it.
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
_UNIX_SYSTEM = 3
_COMPRESS_LEVEL = 6
_CHUNK = 1024 * 1024
MAX_PATH_CHARS = 4096
MAX_COMPONENT_CHARS = 255
MAX_SYMLINK_TARGET_CHARS = 4096
_DRIVE = re.compile(r"^[A-Za-z]:")


class ExecPackageError(ValueError):
    """An exec.zip (or an archive / tree written through ``SafeTreeWriter``) was refused."""


@dataclass(frozen=True)
class PackageLimits:
    """Size limits of an exec.zip, enforced when building and when reading."""

    max_zip_bytes: int = 200 * MiB
    max_code_bytes: int = 512 * MiB  # uncompressed, all of code/
    max_code_entries: int = 50_000
    max_manifest_bytes: int = 1 * MiB
    max_bundle_bytes: int = 8 * MiB


DEFAULT_PACKAGE_LIMITS = PackageLimits()


# -- safe paths and the tree writer ------------------------------------------------------------


def safe_relative_path(name: str) -> PurePosixPath:
    """``name`` as a relative POSIX path that cannot leave its root, or ExecPackageError.

    A trailing ``/`` (a directory entry) is allowed; everything else listed in the module
    docstring is refused.
    """
    shown = repr(name[:200])
    if not name or "\x00" in name:
        raise ExecPackageError(f"unsafe path {shown}: empty or contains NUL")
    if len(name) > MAX_PATH_CHARS:
        raise ExecPackageError(f"unsafe path {shown}: longer than {MAX_PATH_CHARS} characters")
    if "\\" in name:
        raise ExecPackageError(f"unsafe path {shown}: contains a backslash")
    if name.startswith("/") or _DRIVE.match(name):
        raise ExecPackageError(f"unsafe path {shown}: absolute")
    parts = name[:-1].split("/") if name.endswith("/") else name.split("/")
    for part in parts:
        if part in ("", ".", ".."):
            raise ExecPackageError(f"unsafe path {shown}: has an empty, '.' or '..' component")
        if len(part) > MAX_COMPONENT_CHARS:
            raise ExecPackageError(f"unsafe path {shown}: a component is longer than {MAX_COMPONENT_CHARS}")
    return PurePosixPath(*parts)


def _is_within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


@dataclass
class SafeTreeWriter:
    """Writes a tree of files, directories and symlinks under ``dest``, refusing anything unsafe.

    Call ``add_dir`` / ``add_file`` / ``add_symlink`` in any order, then ``finish()`` (which
    creates the symlinks and checks where they really resolve). ``max_bytes`` and
    ``max_entries`` bound what is written; ``check`` (optional) is called before every entry and
    every chunk, e.g. to enforce a deadline.
    """

    dest: Path
    max_bytes: int
    max_entries: int
    check: Callable[[], None] | None = None
    bytes_written: int = 0
    entries: int = 0
    _symlinks: list[tuple[PurePosixPath, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.dest.mkdir(parents=True, exist_ok=True)
        self._root = os.path.realpath(self.dest)

    def _count_entry(self) -> None:
        if self.check is not None:
            self.check()
        self.entries += 1
        if self.entries > self.max_entries:
            raise ExecPackageError(f"too many entries: more than {self.max_entries}")

    def _make_parents(self, rel: PurePosixPath) -> Path:
        current = self.dest
        for part in rel.parts[:-1]:
            current = current / part
            if current.is_symlink():
                raise ExecPackageError(f"unsafe path {str(rel)!r}: a parent is a symlink")
            if not current.exists():
                current.mkdir()
            elif not current.is_dir():
                raise ExecPackageError(f"unsafe path {str(rel)!r}: a parent is not a directory")
        return current / rel.name

    def add_dir(self, rel: PurePosixPath) -> None:
        self._count_entry()
        target = self._make_parents(rel)
        if target.is_symlink() or (target.exists() and not target.is_dir()):
            raise ExecPackageError(f"{str(rel)!r} exists and is not a directory")
        target.mkdir(exist_ok=True)

    def add_file(self, rel: PurePosixPath, mode: int, chunks: Iterable[bytes]) -> None:
        self._count_entry()
        target = self._make_parents(rel)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
        try:
            fd = os.open(target, flags, 0o600)
        except FileExistsError:
            raise ExecPackageError(f"duplicate entry {str(rel)!r}") from None
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                if self.check is not None:
                    self.check()
                self.bytes_written += len(chunk)
                if self.bytes_written > self.max_bytes:
                    raise ExecPackageError(f"too large: more than {self.max_bytes} bytes of files")
                out.write(chunk)
            os.fchmod(out.fileno(), (mode & 0o777) | 0o600)

    def add_symlink(self, rel: PurePosixPath, link_target: str) -> None:
        self._count_entry()
        shown = repr(link_target[:200])
        if not link_target or "\x00" in link_target or len(link_target) > MAX_SYMLINK_TARGET_CHARS:
            raise ExecPackageError(f"symlink {str(rel)!r} has an invalid target {shown}")
        if link_target.startswith("/") or "\\" in link_target or _DRIVE.match(link_target):
            raise ExecPackageError(f"symlink {str(rel)!r} -> {shown} is absolute")
        resolved = os.path.normpath(os.path.join(os.path.dirname(str(rel)), link_target))
        if resolved == ".." or resolved.startswith("../") or os.path.isabs(resolved):
            raise ExecPackageError(f"symlink {str(rel)!r} -> {shown} escapes the tree")
        self._symlinks.append((rel, link_target))

    def finish(self) -> None:
        """Create the symlinks, then check that each really resolves inside ``dest``."""
        created: list[Path] = []
        for rel, link_target in sorted(self._symlinks):
            path = self._make_parents(rel)
            try:
                os.symlink(link_target, path)
            except FileExistsError:
                raise ExecPackageError(f"duplicate entry {str(rel)!r}") from None
            created.append(path)
        for path in created:
            if not _is_within(os.path.realpath(path), self._root):
                link_target = os.readlink(path)
                for other in created:
                    other.unlink(missing_ok=True)
                shown = path.relative_to(self.dest).as_posix()
                raise ExecPackageError(f"symlink {shown!r} -> {link_target!r} escapes the tree")
        self._symlinks.clear()


def _read_capped(stream: IO[bytes], limit: int, what: str) -> bytes:
    data = stream.read(limit + 1)
    if len(data) > limit:
        raise ExecPackageError(f"{what} is larger than {limit} bytes")
    return data


def _iter_chunks(stream: IO[bytes]) -> Iterator[bytes]:
    while chunk := stream.read(_CHUNK):
        yield chunk


def extract_zip_entries(
    archive: zipfile.ZipFile,
    infos: Iterable[zipfile.ZipInfo],
    writer: SafeTreeWriter,
    *,
    strip_prefix: str = "",
) -> None:
    """Write the given entries of ``archive`` through ``writer`` (names minus ``strip_prefix``).

    Directories, regular files and symlinks (Unix mode ``S_IFLNK``, the target as content);
    encrypted entries and other file types are refused. Call ``writer.finish()`` afterwards.
    """
    for info in infos:
        name = info.filename[len(strip_prefix) :]
        if not name:
            continue
        rel = safe_relative_path(name)
        if info.flag_bits & 0x1:
            raise ExecPackageError(f"encrypted entry {info.filename!r}")
        unix_mode = info.external_attr >> 16
        file_type = stat.S_IFMT(unix_mode)
        if info.is_dir():
            writer.add_dir(rel)
        elif file_type == stat.S_IFLNK:
            with archive.open(info) as stream:
                raw = _read_capped(stream, MAX_SYMLINK_TARGET_CHARS, f"symlink {info.filename!r}")
            writer.add_symlink(rel, raw.decode("utf-8", "strict"))
        elif file_type in (0, stat.S_IFREG):
            mode = stat.S_IMODE(unix_mode) if unix_mode else 0o644
            with archive.open(info) as stream:
                writer.add_file(rel, mode, _iter_chunks(stream))
        else:
            raise ExecPackageError(f"entry {info.filename!r} is not a file, directory or symlink")


# -- build --------------------------------------------------------------------------------------


def _zip_info(name: str, file_type: int, mode: int, compress: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=_ZIP_EPOCH)
    info.create_system = _UNIX_SYSTEM
    info.external_attr = (file_type | (mode & 0o777)) << 16
    info.compress_type = compress
    return info


def _walk_code(code_dir: Path, limits: PackageLimits) -> list[tuple[str, Path, os.stat_result]]:
    """(posix relative path, path, lstat) of every file and symlink under code_dir, sorted."""
    root = os.path.realpath(code_dir)
    found: list[tuple[str, Path, os.stat_result]] = []
    for dirpath, dirnames, filenames in os.walk(code_dir, followlinks=False):
        base = Path(dirpath)
        for name in [*dirnames, *filenames]:
            path = base / name
            st = path.lstat()
            if stat.S_ISDIR(st.st_mode):
                continue  # walked into (never a symlink here: os.walk lists those as entries)
            rel = path.relative_to(code_dir).as_posix()
            safe_relative_path(rel)
            if stat.S_ISLNK(st.st_mode):
                if not _is_within(os.path.realpath(path), root):
                    raise ExecPackageError(f"code symlink {rel!r} -> {os.readlink(path)!r} escapes the code directory")
            elif not stat.S_ISREG(st.st_mode):
                raise ExecPackageError(f"code entry {rel!r} is not a file, directory or symlink")
            found.append((rel, path, st))
            if len(found) > limits.max_code_entries:
                raise ExecPackageError(f"code has more than {limits.max_code_entries} entries")
    found.sort(key=lambda item: item[0])
    return found


def build_exec_zip(
    *,
    manifest: Mapping[str, Any],
    sealed_bundle: bytes,
    code_dir: Path | None,
    limits: PackageLimits = DEFAULT_PACKAGE_LIMITS,
) -> bytes:
    """The exec.zip of one order: ``order.json``, ``secrets.sops.json`` and ``code/...``.

    ``manifest`` is written as JSON (sorted keys, UTF-8); ``sealed_bundle`` as given;
    ``code_dir`` (None: no code) file by file with its permission bits, symlinks as symlinks
    (refused when they leave ``code_dir``); empty directories are not kept. Deterministic.
    Raises ExecPackageError on a limit of ``limits`` or an unsafe entry.
    """
    manifest_bytes = json.dumps(dict(manifest), sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()
    if len(manifest_bytes) > limits.max_manifest_bytes:
        raise ExecPackageError(f"{ORDER_MANIFEST} is larger than {limits.max_manifest_bytes} bytes")
    if len(sealed_bundle) > limits.max_bundle_bytes:
        raise ExecPackageError(f"{SEALED_BUNDLE} is larger than {limits.max_bundle_bytes} bytes")
    entries = _walk_code(code_dir, limits) if code_dir is not None else []
    buffer = io.BytesIO()
    code_bytes = 0
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=_COMPRESS_LEVEL) as archive:
        archive.writestr(_zip_info(ORDER_MANIFEST, stat.S_IFREG, 0o644, zipfile.ZIP_DEFLATED), manifest_bytes)
        archive.writestr(_zip_info(SEALED_BUNDLE, stat.S_IFREG, 0o600, zipfile.ZIP_STORED), bytes(sealed_bundle))
        for rel, path, st in entries:
            name = CODE_DIR + rel
            if stat.S_ISLNK(st.st_mode):
                link = os.readlink(path).encode()
                archive.writestr(_zip_info(name, stat.S_IFLNK, 0o777, zipfile.ZIP_STORED), link)
                continue
            code_bytes += st.st_size
            if code_bytes > limits.max_code_bytes:
                raise ExecPackageError(f"code is larger than {limits.max_code_bytes} bytes")
            info = _zip_info(name, stat.S_IFREG, stat.S_IMODE(st.st_mode), zipfile.ZIP_DEFLATED)
            with path.open("rb") as source, archive.open(info, "w", force_zip64=st.st_size > 2**31) as target:
                for chunk in _iter_chunks(source):
                    target.write(chunk)
            if buffer.tell() > limits.max_zip_bytes:
                raise ExecPackageError(f"exec.zip is larger than {limits.max_zip_bytes} bytes")
    data = buffer.getvalue()
    if len(data) > limits.max_zip_bytes:
        raise ExecPackageError(f"exec.zip is larger than {limits.max_zip_bytes} bytes")
    return data


# -- read ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExecPackage:
    """An exec.zip, read and checked: what the worker needs.

    ``manifest``: the order manifest (dict). ``sealed_bundle``: the SOPS bundle bytes.
    ``code_paths``: the paths under ``code/`` (files, directories with a trailing ``/``,
    symlinks), empty when the order has no code. ``extract_code(dest)`` writes them under dest.
    """

    manifest: dict[str, Any]
    sealed_bundle: bytes
    code_paths: tuple[str, ...]
    _data: bytes = field(repr=False)
    _limits: PackageLimits = field(repr=False)

    def extract_code(self, dest: Path) -> int:
        """Write ``code/`` under ``dest`` (created if missing; must hold nothing of the same
        names) and return the number of entries written. Raises ExecPackageError on an unsafe
        entry or a limit (on the bytes actually decompressed)."""
        writer = SafeTreeWriter(dest, self._limits.max_code_bytes, self._limits.max_code_entries)
        try:
            with zipfile.ZipFile(io.BytesIO(self._data)) as archive:
                infos = [info for info in archive.infolist() if info.filename.startswith(CODE_DIR)]
                extract_zip_entries(archive, infos, writer, strip_prefix=CODE_DIR)
        except (zipfile.BadZipFile, EOFError, RuntimeError, UnicodeDecodeError) as exc:
            raise ExecPackageError(f"corrupt code entry in exec.zip: {exc}") from None
        writer.finish()
        return writer.entries


def read_exec_zip(data: bytes, *, limits: PackageLimits = DEFAULT_PACKAGE_LIMITS) -> ExecPackage:
    """Open and check an exec.zip built by ``build_exec_zip`` (see the module docstring)."""
    if len(data) > limits.max_zip_bytes:
        raise ExecPackageError(f"exec.zip is larger than {limits.max_zip_bytes} bytes")
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise ExecPackageError(f"not a zip archive: {exc}") from None
    with archive:
        infos = archive.infolist()
        names = [info.filename for info in infos]
        if len(set(names)) != len(names):
            raise ExecPackageError("exec.zip has duplicate entries")
        code: list[str] = []
        claimed = 0
        for info in infos:
            if info.filename in (ORDER_MANIFEST, SEALED_BUNDLE):
                continue
            if not info.filename.startswith(CODE_DIR):
                raise ExecPackageError(f"unexpected entry {info.filename[:200]!r} (only {CODE_DIR}... besides the two)")
            rest = info.filename[len(CODE_DIR) :]
            if rest:
                safe_relative_path(rest)
                code.append(rest)
            claimed += info.file_size
        if len(code) > limits.max_code_entries:
            raise ExecPackageError(f"code has more than {limits.max_code_entries} entries")
        if claimed > limits.max_code_bytes:
            raise ExecPackageError(f"code is larger than {limits.max_code_bytes} bytes")
        for required in (ORDER_MANIFEST, SEALED_BUNDLE):
            if required not in names:
                raise ExecPackageError(f"exec.zip has no {required}")
        try:
            with archive.open(ORDER_MANIFEST) as stream:
                manifest_bytes = _read_capped(stream, limits.max_manifest_bytes, ORDER_MANIFEST)
            with archive.open(SEALED_BUNDLE) as stream:
                bundle = _read_capped(stream, limits.max_bundle_bytes, SEALED_BUNDLE)
        except (zipfile.BadZipFile, RuntimeError, OSError) as exc:
            raise ExecPackageError(f"unreadable exec.zip: {exc}") from None
    try:
        manifest = json.loads(manifest_bytes)
    except ValueError as exc:
        raise ExecPackageError(f"{ORDER_MANIFEST} is not JSON: {exc}") from None
    if not isinstance(manifest, dict):
        raise ExecPackageError(f"{ORDER_MANIFEST} is not a JSON object")
    return ExecPackage(manifest, bundle, tuple(code), data, limits)
