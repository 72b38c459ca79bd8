"""exec_package: exec.zip round trip, determinism, size limits and unsafe entries (local files only)."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import stat
import warnings
import zipfile
from pathlib import Path

import pytest

from handlers.execution_engine import schema
from handlers.execution_engine.exec_package import (
    ExecPackageError,
    PackageLimits,
    build_exec_zip,
    read_exec_zip,
    safe_relative_path,
)

MANIFEST = {
    "schema_version": schema.SCHEMA_VERSION,
    "run_id": "0" * 32,
    "order_num": "0001",
    "order_name": "deploy",
    "cmds": ["./run.sh", "echo ünïcode"],
    "timeout": 300,
}
BUNDLE = b'{"sops": {"age": [{"recipient": "age1..."}]}, "data": "ENC[AES256_GCM,data:...]"}\n'


def _make_code(root: Path, order: list[str] | None = None) -> Path:
    files = {
        "run.sh": ("#!/bin/sh\necho hi\n", 0o755),
        "src/app/main.py": ("print('hi')\n", 0o644),
        "src/app/data.bin": ("\x00\x01\x02" * 1000, 0o600),
        "README.md": ("readme\n", 0o644),
    }
    root.mkdir(parents=True)
    for name in order or list(files):
        text, mode = files[name]
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(mode)
    os.symlink("app/main.py", root / "src" / "main-link.py")
    (root / "empty-dir").mkdir()
    return root


def _zip(entries: list[tuple[str, bytes]], *, symlinks: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate names are written on purpose
        with zipfile.ZipFile(buffer, "w") as archive:
            for name, data in entries:
                archive.writestr(name, data)
            for name, target in (symlinks or {}).items():
                info = zipfile.ZipInfo(name)
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
                archive.writestr(info, target)
    return buffer.getvalue()


BASE = [(schema.ORDER_MANIFEST, json.dumps(MANIFEST).encode()), (schema.SEALED_BUNDLE, BUNDLE)]


# -- round trip ---------------------------------------------------------------------------------


def test_round_trip_keeps_manifest_bundle_files_modes_and_symlinks(tmp_path: Path) -> None:
    code = _make_code(tmp_path / "code")
    data = build_exec_zip(manifest=MANIFEST, sealed_bundle=BUNDLE, code_dir=code)

    package = read_exec_zip(data)
    assert package.manifest == MANIFEST
    assert package.sealed_bundle == BUNDLE
    assert package.code_paths == ("README.md", "run.sh", "src/app/data.bin", "src/app/main.py", "src/main-link.py")

    dest = tmp_path / "work"
    assert package.extract_code(dest) == 5
    assert (dest / "run.sh").read_text() == "#!/bin/sh\necho hi\n"
    assert (dest / "src/app/data.bin").read_bytes() == b"\x00\x01\x02" * 1000
    assert stat.S_IMODE((dest / "run.sh").stat().st_mode) == 0o755
    assert stat.S_IMODE((dest / "src/app/main.py").stat().st_mode) == 0o644
    assert stat.S_IMODE((dest / "src/app/data.bin").stat().st_mode) == 0o600
    assert os.readlink(dest / "src/main-link.py") == "app/main.py"
    assert (dest / "src/main-link.py").read_text() == "print('hi')\n"


def test_the_layout_uses_the_schema_names(tmp_path: Path) -> None:
    data = build_exec_zip(manifest=MANIFEST, sealed_bundle=BUNDLE, code_dir=_make_code(tmp_path / "c"))
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        names = archive.namelist()
        assert names[:2] == [schema.ORDER_MANIFEST, schema.SEALED_BUNDLE]
        assert all(name.startswith(schema.CODE_DIR) for name in names[2:])
        assert names[2:] == sorted(names[2:])
        # Fixed timestamps and Unix attributes: nothing of the machine or the moment leaks in.
        assert {info.date_time for info in archive.infolist()} == {(1980, 1, 1, 0, 0, 0)}
        assert {info.create_system for info in archive.infolist()} == {3}
        assert json.loads(archive.read(schema.ORDER_MANIFEST)) == MANIFEST
        assert archive.read(schema.SEALED_BUNDLE) == BUNDLE


def test_an_order_without_code(tmp_path: Path) -> None:
    package = read_exec_zip(build_exec_zip(manifest=MANIFEST, sealed_bundle=BUNDLE, code_dir=None))
    assert package.code_paths == ()
    assert package.extract_code(tmp_path / "work") == 0
    assert list((tmp_path / "work").iterdir()) == []


# -- determinism --------------------------------------------------------------------------------


def test_the_same_input_gives_the_same_bytes(tmp_path: Path) -> None:
    first = _make_code(tmp_path / "a")
    second = _make_code(tmp_path / "b", order=["src/app/data.bin", "README.md", "src/app/main.py", "run.sh"])
    os.utime(second / "run.sh", (1_000_000, 1_000_000))
    reordered = dict(reversed(list(MANIFEST.items())))

    one = build_exec_zip(manifest=MANIFEST, sealed_bundle=BUNDLE, code_dir=first)
    assert build_exec_zip(manifest=MANIFEST, sealed_bundle=BUNDLE, code_dir=first) == one
    assert build_exec_zip(manifest=reordered, sealed_bundle=BUNDLE, code_dir=second) == one


def test_any_change_changes_the_bytes(tmp_path: Path) -> None:
    code = _make_code(tmp_path / "a")
    one = build_exec_zip(manifest=MANIFEST, sealed_bundle=BUNDLE, code_dir=code)
    assert build_exec_zip(manifest={**MANIFEST, "timeout": 301}, sealed_bundle=BUNDLE, code_dir=code) != one
    assert build_exec_zip(manifest=MANIFEST, sealed_bundle=BUNDLE + b" ", code_dir=code) != one
    (code / "run.sh").chmod(0o644)
    assert build_exec_zip(manifest=MANIFEST, sealed_bundle=BUNDLE, code_dir=code) != one


# -- size limits --------------------------------------------------------------------------------


def test_size_limits_when_building(tmp_path: Path) -> None:
    code = _make_code(tmp_path / "a")
    cases = [
        (PackageLimits(max_manifest_bytes=10), "order.json is larger than 10 bytes"),
        (PackageLimits(max_bundle_bytes=10), "secrets.sops.json is larger than 10 bytes"),
        (PackageLimits(max_code_bytes=100), "code is larger than 100 bytes"),
        (PackageLimits(max_code_entries=3), "code has more than 3 entries"),
        (PackageLimits(max_zip_bytes=200), "exec.zip is larger than 200 bytes"),
    ]
    for limits, message in cases:
        with pytest.raises(ExecPackageError, match=message):
            build_exec_zip(manifest=MANIFEST, sealed_bundle=BUNDLE, code_dir=code, limits=limits)


def test_size_limits_when_reading(tmp_path: Path) -> None:
    data = build_exec_zip(manifest=MANIFEST, sealed_bundle=BUNDLE, code_dir=_make_code(tmp_path / "a"))
    cases = [
        (PackageLimits(max_zip_bytes=len(data) - 1), "exec.zip is larger than"),
        (PackageLimits(max_code_bytes=100), "code is larger than 100 bytes"),
        (PackageLimits(max_code_entries=2), "code has more than 2 entries"),
        (PackageLimits(max_manifest_bytes=10), "order.json is larger than 10 bytes"),
        (PackageLimits(max_bundle_bytes=10), "secrets.sops.json is larger than 10 bytes"),
    ]
    for limits, message in cases:
        with pytest.raises(ExecPackageError, match=message):
            read_exec_zip(data, limits=limits)


def test_a_compression_bomb_is_stopped_by_the_uncompressed_size(tmp_path: Path) -> None:
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, body in BASE:
            archive.writestr(name, body)
        archive.writestr("code/zeros.bin", b"\0" * (8 * 1024 * 1024))
    assert len(bomb.getvalue()) < 64 * 1024
    with pytest.raises(ExecPackageError, match="code is larger than 1048576 bytes"):
        read_exec_zip(bomb.getvalue(), limits=PackageLimits(max_code_bytes=1024 * 1024))


# -- unsafe entries -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([*BASE, ("code/../escape.txt", b"x")], r"unsafe path '\.\./escape\.txt'"),
        ([*BASE, ("code/a/../../escape.txt", b"x")], "unsafe path 'a/../../escape.txt'"),
        ([*BASE, ("code//etc/passwd", b"x")], "unsafe path '/etc/passwd': absolute"),
        ([*BASE, ("code/C:/windows.txt", b"x")], "absolute"),
        ([*BASE, ("code/a\\..\\b", b"x")], "backslash"),
        ([*BASE, ("/etc/passwd", b"x")], "unexpected entry '/etc/passwd'"),
        ([*BASE, ("../escape.txt", b"x")], "unexpected entry"),
        ([*BASE, ("code/a.txt", b"1"), ("code/a.txt", b"2")], "duplicate entries"),
        ([BASE[1]], "no order.json"),
        ([BASE[0]], "no secrets.sops.json"),
        ([(schema.ORDER_MANIFEST, b"[1, 2]"), BASE[1]], "not a JSON object"),
        ([(schema.ORDER_MANIFEST, b"{nope"), BASE[1]], "not JSON"),
    ],
)
def test_unsafe_or_malformed_packages_are_refused_when_read(entries: list[tuple[str, bytes]], message: str) -> None:
    with pytest.raises(ExecPackageError, match=message):
        read_exec_zip(_zip(entries))


def test_not_a_zip_is_refused() -> None:
    with pytest.raises(ExecPackageError, match="not a zip archive"):
        read_exec_zip(b"plain text")


@pytest.mark.parametrize(
    ("symlinks", "message"),
    [
        ({"code/up": "../../etc"}, "escapes the tree"),
        ({"code/abs": "/etc/passwd"}, "is absolute"),
        ({"code/sub/up": "..", "code/chain": "sub/up/../.."}, "'chain' -> 'sub/up/../..' escapes the tree"),
    ],
)
def test_escaping_symlinks_are_refused_on_extract(tmp_path: Path, symlinks: dict[str, str], message: str) -> None:
    package = read_exec_zip(_zip([*BASE, ("code/sub/keep.txt", b"k")], symlinks=symlinks))
    dest = tmp_path / "box" / "work"
    with pytest.raises(ExecPackageError, match=message):
        package.extract_code(dest)
    assert not any(path.is_symlink() for path in dest.rglob("*"))


def test_nothing_is_written_through_a_symlink(tmp_path: Path) -> None:
    # "link" -> "." is harmless itself; a later file "link/x" must not be written through it.
    outside = tmp_path / "outside"
    outside.mkdir()
    package = read_exec_zip(_zip([*BASE, ("code/file.txt", b"x")]))
    dest = tmp_path / "work"
    dest.mkdir()
    os.symlink(outside, dest / "file.txt")
    with pytest.raises(ExecPackageError, match=re.escape("duplicate entry 'file.txt'")):
        package.extract_code(dest)
    nested = read_exec_zip(_zip([*BASE, ("code/link/x.txt", b"x")]))
    os.symlink(outside, dest / "link")
    with pytest.raises(ExecPackageError, match=re.escape("'link/x.txt': a parent is a symlink")):
        nested.extract_code(dest)
    assert list(outside.iterdir()) == []


def test_building_refuses_an_escaping_symlink_or_a_special_file(tmp_path: Path) -> None:
    code = _make_code(tmp_path / "a")
    os.symlink("../../outside", code / "escape")
    with pytest.raises(
        ExecPackageError, match=re.escape("code symlink 'escape' -> '../../outside' escapes the code directory")
    ):
        build_exec_zip(manifest=MANIFEST, sealed_bundle=BUNDLE, code_dir=code)
    (code / "escape").unlink()
    os.mkfifo(code / "pipe")
    with pytest.raises(ExecPackageError, match="'pipe' is not a file, directory or symlink"):
        build_exec_zip(manifest=MANIFEST, sealed_bundle=BUNDLE, code_dir=code)
    (code / "pipe").unlink()
    shutil.rmtree(code / "empty-dir")
    assert read_exec_zip(build_exec_zip(manifest=MANIFEST, sealed_bundle=BUNDLE, code_dir=code)).manifest == MANIFEST


@pytest.mark.parametrize("name", ["", "/a", "a/../b", "./a", "a//b", "..", "a\\b", "C:x", "a\x00b", "x" * 300])
def test_safe_relative_path_refuses(name: str) -> None:
    with pytest.raises(ExecPackageError, match="unsafe path"):
        safe_relative_path(name)


@pytest.mark.parametrize(
    ("name", "parts"), [("a/b.txt", ("a", "b.txt")), ("dir/", ("dir",)), (".hidden", (".hidden",))]
)
def test_safe_relative_path_accepts(name: str, parts: tuple[str, ...]) -> None:
    assert safe_relative_path(name).parts == parts
