"""The worker: runs one order's commands and reports its result.json (Lambda now, CodeBuild next).

One codebase, two entrypoints with the same fields (schema.py: a location and the SSM name of
the key, never a secret):
- Lambda: ``handler(event, context)``, event ``{"run_id", "order_num", "exec_bucket",
  "exec_key", "sops_key_parameter"}`` (the orchestrator's asynchronous invoke);
- CodeBuild (and any shell): ``python -m handlers.execution_engine.worker`` with the same
  fields in ``EXECUTION_ENGINE_RUN_ID``, ``EXECUTION_ENGINE_ORDER_NUM``,
  ``EXECUTION_ENGINE_EXEC_BUCKET``, ``EXECUTION_ENGINE_EXEC_KEY`` and
  ``EXECUTION_ENGINE_SOPS_KEY_PARAMETER``. Exit status: 0 the order succeeded, 1 it failed
  (its result.json says why; also when another result had already won), 2 the worker could
  not run it (no result written: the watchdog will time the order out).

Steps (``run_order``):
1. GetObject exec.zip (at most ``PackageLimits.max_zip_bytes``, kept in memory), read and
   check it (``exec_package.read_exec_zip``: the same module init builds it with); order.json
   must name this very run and order;
2. GetParameter WithDecryption: the job's age identity; unseal secrets.sops.json (sops, stdin
   to stdout, the key only in sops' own environment): the order's env and its callback URL.
   A failure up to here raises (nothing can be reported without the callback URL; the watchdog
   times the order out); from here on every outcome is reported;
3. unpack code/ into a fresh private directory (mkdtemp, 0700) with
   ``ExecPackage.extract_code``: no absolute paths, no "..", nothing written through a symlink,
   symlinks only when they really resolve inside it, sizes counted on the bytes written;
4. ``run_commands``: each cmd with ``bash -c`` in that directory, one after the other, stopping
   at the first that fails; the order's timeout covers all of them together (on Lambda also
   capped by the invocation's remaining time, less a margin to report), and a command that
   overruns has its whole process group killed. Output is streamed line by line as it arrives
   (to the function log, prefixed with the order) and kept for result.json up to
   ``schema.LOG_LIMIT_BYTES`` (from the start; a truncation is said in the log);
5. PUT result.json ``{schema_version, status succeeded|failed, log, reason, written_by
   "worker"}`` to the callback URL with ``If-None-Match: *``: 412 means another result (the
   watchdog's) won; that is logged, not an error. The directory is removed in every case.

The commands' environment is a minimal base (PATH, HOME and TMPDIR inside the private
directory, LANG, the region) plus the bundle's env. The worker's own AWS credentials are not
passed on: the commands get exactly the credentials init resolved for the order, not the
worker role's (which can read the job's key).

Secrets never reach a log: every bundle env value of at least 4 characters (and each line of a
multi-line value) is replaced by ``***`` in the streamed output and in the result log. A
command can print its credentials (``env``, ``set -x``, a tool's debug output), and result.json
is stored in S3 and copied to DynamoDB by the orchestrator, where the spec forbids plaintext.
Shorter values are left alone: a value of 1-3 characters ("1", "us", "dev") is not a credential
and masking it would blank out ordinary words throughout the log. The callback URL (a bearer
credential for result.json) is never logged either.
"""

from __future__ import annotations

import contextlib
import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from handlers.common.aws import client
from handlers.common.config import ConfigurationError, EnvReader
from handlers.common.observability import observability
from handlers.execution_engine import schema
from handlers.execution_engine.exec_package import (
    DEFAULT_PACKAGE_LIMITS,
    ExecPackage,
    ExecPackageError,
    PackageLimits,
    read_exec_zip,
)
from handlers.execution_engine.results import OrderResult
from handlers.execution_engine.sealed_bundle import OrderBundle, SealedBundleError, open_order_bundle

SERVICE = "execution-engine"
WRITTEN_BY = "worker"

# -- the CLI entrypoint's variables (the CodeBuild environment carries the event's fields) ----
ENV_RUN_ID = "EXECUTION_ENGINE_RUN_ID"
ENV_ORDER_NUM = "EXECUTION_ENGINE_ORDER_NUM"
ENV_EXEC_BUCKET = "EXECUTION_ENGINE_EXEC_BUCKET"
ENV_EXEC_KEY = "EXECUTION_ENGINE_EXEC_KEY"
ENV_SOPS_KEY_PARAMETER = "EXECUTION_ENGINE_SOPS_KEY_PARAMETER"
EVENT_FIELDS = {
    "run_id": ENV_RUN_ID,
    "order_num": ENV_ORDER_NUM,
    "exec_bucket": ENV_EXEC_BUCKET,
    "exec_key": ENV_EXEC_KEY,
    "sops_key_parameter": ENV_SOPS_KEY_PARAMETER,
}

# Seconds kept back from the Lambda invocation's remaining time: stop the commands, remove the
# directory and PUT result.json before Lambda ends the invocation.
REPORT_MARGIN_SECONDS = 15.0
# After SIGTERM to a timed-out command's process group, this long before SIGKILL.
KILL_GRACE_SECONDS = 1.0
# After a command's shell exits: how long to keep reading output from what it left running
# (its process group is killed first; only a process that left the group can hold the pipe).
DRAIN_SECONDS = 2.0
# A line longer than this is passed on in pieces (the buffer stays bounded).
MAX_LINE_BYTES = 16 * 1024
MASK = "***"
MIN_MASKED_LENGTH = 4
# Room kept at the end of the collected log for the truncation notice.
_TRUNCATION_RESERVE = 128
RESULT_PUT_ATTEMPTS = 3
RESULT_PUT_TIMEOUT_SECONDS = 10.0
_RETRYABLE_HTTP = frozenset({409, 429, 500, 502, 503, 504})
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
# Copied from the worker's environment into the commands' base environment when set.
_PASSED_THROUGH = ("AWS_REGION", "AWS_DEFAULT_REGION", "TZ")

OnLine = Callable[[str], None]


class WorkerError(RuntimeError):
    """The order cannot be run and no result can be reported (malformed input, missing key)."""


class ResultDeliveryError(RuntimeError):
    """result.json could not be stored at the callback URL (not a 412)."""


logger, metrics, tracer = observability(SERVICE)


# -- inputs -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkRequest:
    """Where the order is (the invocation event / the CodeBuild environment)."""

    run_id: str
    order_num: str
    exec_bucket: str
    exec_key: str
    sops_key_parameter: str

    @classmethod
    def from_event(cls, event: Mapping[str, Any]) -> WorkRequest:
        missing = [name for name in EVENT_FIELDS if not isinstance(event.get(name), str) or not event.get(name)]
        if missing:
            raise WorkerError(f"the worker's event lacks {', '.join(missing)}")
        request = cls(**{name: str(event[name]) for name in EVENT_FIELDS})
        if not schema.is_run_id(request.run_id) or not schema.is_order_num(request.order_num):
            raise WorkerError("run_id must be 32 hex characters and order_num four digits")
        if request.exec_key != schema.exec_key(request.run_id, request.order_num):
            raise WorkerError(f"exec_key must be {schema.exec_key(request.run_id, request.order_num)}")
        return request

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> WorkRequest:
        env = EnvReader(environ)
        values = {name: env.require(variable) for name, variable in EVENT_FIELDS.items()}
        env.check("ExecutionEngine worker (CLI)")
        return cls.from_event(values)


@dataclass(frozen=True)
class OrderManifest:
    """order.json."""

    run_id: str
    order_num: str
    order_name: str
    cmds: tuple[str, ...]
    timeout: float


def parse_manifest(body: Mapping[str, Any]) -> OrderManifest:
    """order.json's fields, checked (every problem named)."""
    problems = []
    if body.get("schema_version") != schema.SCHEMA_VERSION:
        problems.append(f"schema_version must be {schema.SCHEMA_VERSION!r}")
    cmds, timeout = body.get("cmds"), body.get("timeout")
    if not isinstance(cmds, list) or not cmds or not all(isinstance(c, str) and c.strip() for c in cmds):
        problems.append("cmds must be a non-empty list of non-empty strings")
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
        problems.append("timeout must be a positive number of seconds")
    for name in ("run_id", "order_num", "order_name"):
        if not isinstance(body.get(name), str) or not body.get(name):
            problems.append(f"{name} must be a non-empty string")
    if problems:
        raise WorkerError(f"{schema.ORDER_MANIFEST}: " + "; ".join(problems))
    return OrderManifest(
        run_id=body["run_id"],
        order_num=body["order_num"],
        order_name=body["order_name"],
        cmds=tuple(str(command) for command in body["cmds"]),
        timeout=float(body["timeout"]),
    )


# -- masking and the collected log ----------------------------------------------------------------


class Masker:
    """Replaces each secret of at least MIN_MASKED_LENGTH characters (and each such line of a
    multi-line secret, since output is masked line by line) with MASK."""

    def __init__(self, secrets: Iterable[str]) -> None:
        needles: set[str] = set()
        for secret in secrets:
            for candidate in (secret, *secret.splitlines()):
                if len(candidate) >= MIN_MASKED_LENGTH:
                    needles.add(candidate)
        # Longest first: a secret that contains another is masked whole.
        ordered = sorted(needles, key=len, reverse=True)
        self._pattern = re.compile("|".join(re.escape(n) for n in ordered)) if ordered else None

    def __call__(self, text: str) -> str:
        return self._pattern.sub(MASK, text) if self._pattern is not None else text


class LogCollector:
    """The first ``limit`` bytes of the output (UTF-8), then a notice of how much was not kept."""

    def __init__(self, limit: int = schema.LOG_LIMIT_BYTES) -> None:
        if limit <= _TRUNCATION_RESERVE:
            raise ValueError(f"the log limit must exceed {_TRUNCATION_RESERVE} bytes")
        self._room = limit - _TRUNCATION_RESERVE
        self._parts: list[str] = []
        self._used = 0
        self.dropped_bytes = 0

    @property
    def truncated(self) -> bool:
        return self.dropped_bytes > 0

    def add(self, line: str) -> None:
        data = (line + "\n").encode()
        room = self._room - self._used
        if not self.truncated and len(data) <= room:
            self._parts.append(line + "\n")
            self._used += len(data)
            return
        kept = data[: max(room, 0)].decode("utf-8", errors="ignore") if not self.truncated else ""
        if kept:
            self._parts.append(kept)
            self._used += len(kept.encode())
        self.dropped_bytes += len(data) - len(kept.encode())

    def text(self) -> str:
        log = "".join(self._parts)
        if self.truncated:
            if log and not log.endswith("\n"):
                log += "\n"
            log += f"[log truncated: the last {self.dropped_bytes} bytes of output are not kept]\n"
        return log


# -- running the commands -------------------------------------------------------------------------


@dataclass(frozen=True)
class RunOutcome:
    status: str  # schema.SUCCEEDED or schema.FAILED
    log: str = field(repr=False)
    reason: str | None = None
    exit_code: int | None = None
    failed_command: int | None = None  # 1-based index of the command that failed or overran
    timed_out: bool = False
    log_truncated: bool = False

    @property
    def succeeded(self) -> bool:
        return self.status == schema.SUCCEEDED


def _kill_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


class _LineSplitter:
    def __init__(self, emit: Callable[[str], None]) -> None:
        self._emit = emit
        self._buffer = bytearray()

    def feed(self, chunk: bytes) -> None:
        self._buffer += chunk
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                break
            self._emit_bytes(bytes(self._buffer[:end]))
            del self._buffer[: end + 1]
        while len(self._buffer) >= MAX_LINE_BYTES:
            self._emit_bytes(bytes(self._buffer[:MAX_LINE_BYTES]))
            del self._buffer[:MAX_LINE_BYTES]

    def flush(self) -> None:
        if self._buffer:
            self._emit_bytes(bytes(self._buffer))
            self._buffer.clear()

    def _emit_bytes(self, data: bytes) -> None:
        self._emit(data.rstrip(b"\r").decode("utf-8", errors="replace"))


def _read_available(fd: int, splitter: _LineSplitter, *, max_chunks: int = 16) -> bool:
    """Read what the pipe holds now, at most ``max_chunks`` x 64 KiB (a command writing without
    pause must not keep the caller from its deadline); False at EOF."""
    for _ in range(max_chunks):
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return True
        if not chunk:
            return False
        splitter.feed(chunk)
    return True


def _run_one(command: str, cwd: Path, env: Mapping[str, str], deadline: float, splitter: _LineSplitter) -> int | None:
    """Run one command, streaming its output; its exit code, or None when the deadline passed.

    The command is done when its shell has exited; then whatever it left running in its process
    group is killed and the pipe is read to its end (for at most DRAIN_SECONDS, in case a
    process that left the group still holds it). A shell that closes its output early is
    waited for all the same, up to the deadline."""
    process = subprocess.Popen(
        [_bash(), "-c", command],
        cwd=cwd,
        env=dict(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: a timeout kills everything it started
    )
    assert process.stdout is not None
    fd = process.stdout.fileno()
    os.set_blocking(fd, False)
    selector = selectors.DefaultSelector()
    selector.register(fd, selectors.EVENT_READ)
    eof, drain_until = False, None
    try:
        while True:
            now = time.monotonic()
            if drain_until is None and process.poll() is not None:
                _kill_group(process.pid, signal.SIGKILL)
                drain_until = now + DRAIN_SECONDS
            if drain_until is not None and (eof or now >= drain_until):
                return process.returncode
            if drain_until is None and now >= deadline:
                break
            wait = min((drain_until if drain_until is not None else deadline) - now, 0.25)
            if eof:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=max(wait, 0.0))
            elif selector.select(timeout=max(wait, 0.0)):
                eof = not _read_available(fd, splitter)
        # The deadline passed: the whole group goes, politely first.
        _kill_group(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=KILL_GRACE_SECONDS)
        _kill_group(process.pid, signal.SIGKILL)
        process.wait()
        if not eof:  # what was written before the kill is still in the pipe
            with contextlib.suppress(OSError):
                _read_available(fd, splitter)
        return None
    finally:
        if process.poll() is None:  # only on an exception above: never leave the group running
            _kill_group(process.pid, signal.SIGKILL)
            process.wait()
        selector.close()
        process.stdout.close()
        splitter.flush()


def _bash() -> str:
    return shutil.which("bash") or "/bin/bash"


def run_commands(
    cmds: Sequence[str],
    cwd: str | os.PathLike[str],
    env: Mapping[str, str],
    timeout: float,
    on_line: OnLine,
    *,
    secrets: Iterable[str] = (),
    log_limit: int = schema.LOG_LIMIT_BYTES,
    timeout_reason: str | None = None,
) -> RunOutcome:
    """Run ``cmds`` one after the other with ``bash -c`` in ``cwd``, within ``timeout`` seconds
    for all of them, stopping at the first that fails.

    Each line of output (stdout and stderr together) goes to ``on_line`` as soon as it arrives,
    and into the outcome's log (a ``$ <cmd>`` line before each command), both with ``secrets``
    masked. ``timeout_reason`` replaces the reason given when the deadline passes.
    """
    if not cmds:
        raise ValueError("no commands to run")
    mask = Masker(secrets)
    collected = LogCollector(log_limit)

    def emit(line: str) -> None:
        masked = mask(line)
        collected.add(masked)
        on_line(masked)

    splitter = _LineSplitter(emit)
    deadline = time.monotonic() + timeout
    workdir = Path(cwd)
    for index, command in enumerate(cmds, start=1):
        if time.monotonic() >= deadline:
            return _outcome(collected, mask, timeout_reason or _timed_out(timeout, index, len(cmds)), index, None, True)
        emit(f"$ {command}")
        code = _run_one(command, workdir, env, deadline, splitter)
        if code is None:
            return _outcome(collected, mask, timeout_reason or _timed_out(timeout, index, len(cmds)), index, None, True)
        if code != 0:
            how = f"was killed by signal {-code}" if code < 0 else f"exited with {code}"
            return _outcome(collected, mask, f"command {index} of {len(cmds)} {how}", index, code, False)
    return RunOutcome(status=schema.SUCCEEDED, log=collected.text(), exit_code=0, log_truncated=collected.truncated)


def _timed_out(timeout: float, index: int, count: int) -> str:
    return f"timed out after {timeout:g} s (the order's timeout) in command {index} of {count}"


def _outcome(
    collected: LogCollector, mask: Masker, reason: str, index: int, code: int | None, timed_out: bool
) -> RunOutcome:
    return RunOutcome(
        status=schema.FAILED,
        log=collected.text(),
        reason=mask(reason),
        exit_code=code,
        failed_command=index,
        timed_out=timed_out,
        log_truncated=collected.truncated,
    )


def base_environment(root: Path, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The commands' environment before the bundle's env is laid over it."""
    source = os.environ if environ is None else environ
    env = {
        "PATH": source.get("PATH") or DEFAULT_PATH,
        "HOME": str(root / "home"),
        "TMPDIR": str(root / "tmp"),
        "LANG": "C.UTF-8",
    }
    env.update({name: source[name] for name in _PASSED_THROUGH if source.get(name)})
    return env


# -- exec.zip -----------------------------------------------------------------------------------


def fetch_exec_zip(s3: Any, bucket: str, key: str, max_bytes: int) -> bytes:
    try:
        response = s3.get_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NoSuchBucket"):
            raise WorkerError(f"s3://{bucket}/{key} does not exist") from None
        raise
    body = response["Body"]
    try:
        if int(response.get("ContentLength", 0)) > max_bytes:
            raise WorkerError(f"{schema.EXEC_FILE} is larger than {max_bytes} bytes")
        data: bytes = body.read(max_bytes + 1)
    finally:
        body.close()
    if len(data) > max_bytes:
        raise WorkerError(f"{schema.EXEC_FILE} is larger than {max_bytes} bytes")
    return data


def read_identity(ssm: Any, name: str) -> str:
    try:
        return str(ssm.get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"])
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "ParameterNotFound":
            raise WorkerError(f"the job's key {name} does not exist (the job was finalized?)") from None
        raise


# -- the result -------------------------------------------------------------------------------


def deliver_result(
    callback_url: str,
    result: OrderResult,
    *,
    attempts: int = RESULT_PUT_ATTEMPTS,
    timeout: float = RESULT_PUT_TIMEOUT_SECONDS,
    sleep: Callable[[float], None] = time.sleep,
) -> bool:
    """PUT result.json with ``If-None-Match: *``: True when stored, False when another result
    already won (412). Throttling, 5xx and connection errors are retried; anything else raises
    ResultDeliveryError (whose message never holds the URL: it is a credential)."""
    body = result.document()
    for attempt in range(1, attempts + 1):
        request = urllib.request.Request(
            callback_url,
            data=body,
            method="PUT",
            headers={"If-None-Match": "*", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                response.read()
            return True
        except urllib.error.HTTPError as exc:
            code = exc.code
            exc.close()
            if code == 412:
                return False
            if code not in _RETRYABLE_HTTP or attempt == attempts:
                raise ResultDeliveryError(f"the result PUT was refused with HTTP {code}") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            if attempt == attempts:
                reason = getattr(exc, "reason", exc)
                raise ResultDeliveryError(f"the result PUT failed: {type(reason).__name__}") from None
        sleep(0.5 * 2 ** (attempt - 1))
    raise AssertionError("unreachable")


# -- one order ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkReport:
    run_id: str
    order_num: str
    order_name: str
    status: str
    reason: str | None
    delivered: bool  # False: another result had already won (412)

    def as_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "order_num": self.order_num,
            "order_name": self.order_name,
            "status": self.status,
            "reason": self.reason,
            "delivered": self.delivered,
        }


def _remove_tree(path: Path) -> None:
    """Remove ``path`` even where a command took away write or search permission."""

    def retry(function: Callable[..., Any], name: str, *_: Any) -> None:
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(name), 0o700)
            if os.path.isdir(name) and not os.path.islink(name):
                os.chmod(name, 0o700)
            function(name)

    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=retry)
    else:
        shutil.rmtree(path, onerror=retry)


def execute(
    manifest: OrderManifest,
    bundle: OrderBundle,
    package: ExecPackage,
    *,
    on_line: OnLine,
    time_limit: float | None = None,
    environ: Mapping[str, str] | None = None,
) -> RunOutcome:
    """Unpack code/ into a fresh private directory, run the commands there, remove it."""
    mask = Masker(bundle.env.values())
    root = Path(tempfile.mkdtemp(prefix=f"order-{manifest.order_num}-"))  # 0700
    try:
        workdir, home, tmp = root / "code", root / "home", root / "tmp"
        for directory in (workdir, home, tmp):
            directory.mkdir(mode=0o700)
        try:
            package.extract_code(workdir)
        except (ExecPackageError, OSError) as exc:
            reason = mask(f"the order's {schema.CODE_DIR} could not be unpacked: {exc}")
            return RunOutcome(status=schema.FAILED, log=reason + "\n", reason=reason)
        env = base_environment(root, environ)
        env.update(bundle.env)
        timeout, limited_by = manifest.timeout, None
        if time_limit is not None and time_limit < timeout:
            timeout, limited_by = max(time_limit, 0.0), "the worker's own time limit (Lambda)"
        return run_commands(
            manifest.cmds,
            workdir,
            env,
            timeout,
            on_line,
            secrets=bundle.env.values(),
            timeout_reason=(
                f"stopped after {timeout:g} s at {limited_by}, before the order's timeout of {manifest.timeout:g} s"
                if limited_by
                else None
            ),
        )
    finally:
        _remove_tree(root)


def run_order(
    request: WorkRequest,
    *,
    s3: Any,
    ssm: Any,
    limits: PackageLimits = DEFAULT_PACKAGE_LIMITS,
    time_limit: Callable[[], float] | None = None,
    on_line: OnLine | None = None,
) -> WorkReport:
    """Fetch, unseal, run and report one order (see the module docstring).

    ``time_limit()``: seconds the worker may still spend on the commands (Lambda: the remaining
    time less REPORT_MARGIN_SECONDS), asked just before they start. ``on_line`` gets each
    (masked) line of output too, after the function log."""
    data = fetch_exec_zip(s3, request.exec_bucket, request.exec_key, limits.max_zip_bytes)
    try:
        package = read_exec_zip(data, limits=limits)
    except ExecPackageError as exc:
        raise WorkerError(f"{schema.EXEC_FILE} is refused: {exc}") from None
    manifest = parse_manifest(package.manifest)
    if (manifest.run_id, manifest.order_num) != (request.run_id, request.order_num):
        raise WorkerError(f"{schema.ORDER_MANIFEST} is not the manifest of {request.run_id}:{request.order_num}")
    try:
        bundle = open_order_bundle(package.sealed_bundle, read_identity(ssm, request.sops_key_parameter))
    except SealedBundleError as exc:
        raise WorkerError(f"the order's bundle cannot be opened: {exc}") from None
    prefix = f"[{manifest.order_num} {manifest.order_name}] "

    def stream(line: str) -> None:
        logger.info(prefix + line)
        if on_line is not None:
            on_line(line)

    logger.info("Running the order", extra={"order_name": manifest.order_name, "commands": len(manifest.cmds)})
    outcome = execute(
        manifest,
        bundle,
        package,
        on_line=stream,
        time_limit=time_limit() if time_limit is not None else None,
    )
    result = OrderResult(status=outcome.status, log=outcome.log, reason=outcome.reason, written_by=WRITTEN_BY)
    delivered = deliver_result(bundle.callback_url, result)
    if delivered:
        logger.info("Result stored", extra={"status": outcome.status, "reason": outcome.reason})
    else:
        logger.info(
            "Another result of this order was stored first (412); ours is dropped",
            extra={"status": outcome.status, "reason": outcome.reason},
        )
    return WorkReport(
        run_id=request.run_id,
        order_num=request.order_num,
        order_name=manifest.order_name,
        status=outcome.status,
        reason=outcome.reason,
        delivered=delivered,
    )


# -- entrypoints --------------------------------------------------------------------------------


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler(capture_response=False)
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    request = WorkRequest.from_event(event)
    logger.append_keys(run_id=request.run_id, order_num=request.order_num)

    def time_limit() -> float:
        return float(context.get_remaining_time_in_millis()) / 1000.0 - REPORT_MARGIN_SECONDS

    report = run_order(request, s3=client("s3"), ssm=client("ssm"), time_limit=time_limit)
    return report.as_dict()


def main(environ: Mapping[str, str] | None = None) -> int:
    try:
        request = WorkRequest.from_environment(environ)
    except (ConfigurationError, WorkerError) as exc:
        logger.error(str(exc))
        return 2
    logger.append_keys(run_id=request.run_id, order_num=request.order_num)
    try:
        report = run_order(request, s3=client("s3"), ssm=client("ssm"))
    except (WorkerError, ResultDeliveryError) as exc:
        logger.error(str(exc))
        return 2
    return 0 if report.status == schema.SUCCEEDED else 1


if __name__ == "__main__":
    sys.exit(main())
