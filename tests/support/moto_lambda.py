"""moto's Lambda runs our handlers in this process: the ``lambda_runs_handlers`` fixture.

Without Docker, moto 5.2.5 runs no function code (every invoke answers "error running docker").
``ThreadedMotoServer`` runs inside the test process, so this harness replaces
``moto.awslambda.models.LambdaFunction.invoke`` (the method, not the backend: S3 notifications,
SNS, SQS event source mappings and the Step Functions interpreter's ``lambda:invoke`` all reach
``func.invoke`` without the backend's ``invoke``) with one that imports the function's
``Handler`` string (``module.path.attribute``, any importable module) and calls it the way the
Python runtime does. What it does, and what it deliberately does not:

Invocation types (what moto's responses layer makes of our return value)
  - RequestResponse: the handler's result as JSON (``null`` for None, Decimal as a number);
    an exception is a function error like Lambda's: header ``x-amz-function-error: Unhandled``
    (moto itself says ``Handled``) and payload ``{"errorType", "errorMessage", "requestId",
    "stackTrace": [...]}``; ``LogType=Tail`` gets START/END/REPORT lines (and the error), last
    4 KB; ``X-Amz-Executed-Version`` is set. The handler's own log output goes to the test's
    stdout, not to CloudWatch Logs.
  - Event (202): the handler runs synchronously, before the Invoke call returns (moto's model;
    deterministic for tests), the body is empty and no error header is set, as on AWS. Lambda's
    two async retries, on-failure destinations and DLQs are not modelled: a failed async
    invocation is only logged and kept in ``harness.invocations``.
  - DryRun (204): nothing runs (AWS only checks permissions).
  - Internal callers (S3 and SNS notifications, SQS mappings) pass no headers: RequestResponse,
    run synchronously inside the request that triggered them (PutObject returns after the
    handler ran). moto's S3 swallows every error of that call.
  - ``harness.run_async_in_background(...)`` switches to Lambda's asynchronous model for Event
    invokes and S3 notifications (which S3 makes as asynchronous invokes on AWS): the call
    answers 202 at once and the handler runs on a thread of its own; a failed run is retried
    ``MaximumRetryAttempts`` times (the function's EventInvokeConfig, default 2) after the given
    delays (AWS: about 1 and 2 minutes), then the invocation record goes to the on-failure
    destination (an SQS queue), in Lambda's destination format. ``wait_for_background()``
    waits until every queued run and retry is done. Systems whose functions call each other
    asynchronously need this: run synchronously, an orchestrator that invokes a worker would
    wait inside that invoke for the worker, whose callback then meets the orchestrator's own
    lock.

Errors as the runtime reports them: an import failure is ``Runtime.ImportModuleError``, a
missing attribute ``Runtime.HandlerNotFound``, a malformed string ``Runtime.MalformedHandlerName``,
an exception in the module body (a failed cold start, e.g. ``ConfigurationError``) its class
name; a result that is not JSON ``Runtime.MarshalError``; ``sys.exit`` ``Runtime.ExitError``.
A handler that returns after its Timeout gets ``Sandbox.Timedout`` instead of its result (it
cannot be stopped mid-way, so its side effects happened; the container is discarded).

Context: ``function_name``, ``function_version``, ``invoked_function_arn``,
``memory_limit_in_mb`` (a string, as the runtime gives it), ``aws_request_id``,
``log_group_name``, ``log_stream_name``, ``identity``/``client_context`` (None fields), and
``get_remaining_time_in_millis()`` counting down the function's Timeout from the start of the
invoke (the cold start is not counted, like Lambda's separate init phase).

Containers (cold starts). A container is one fresh copy of the handler's module, executed
under the function's environment (its settings-at-import run then), registered in
``sys.modules`` under a private name (``<module>__lambda_<n>``) so dataclasses, typing and
pickling resolve; the module the tests import under its real name is never touched. Containers
are keyed by the function's ARN, version, handler, environment, timeout, memory and code hash,
so a second function with the same module but another env is its own container, and
UpdateFunctionConfiguration starts new ones. A container serves one invocation at a time; a
concurrent invocation cold-starts another, as Lambda does. A failed cold start leaves no
container (the next invoke retries it). Containers live as long as the fixture (one test).
The modules the handler module imports (``handlers.common.*``, boto3, Powertools) are shared by
every container, as a layer would be, so their module state is shared too:
``handlers.common.aws``'s client cache, Powertools' class-level Metrics store, the one
``logging.Logger`` and formatter behind every Powertools Logger of a service name (keys
appended in one container show in another's logs); a shared module first imported inside a
container reads that container's env at its import.

Environment, thread-safely. The process has one ``os.environ``, invocations run concurrently
(moto serves each request on its own thread; a Map or Parallel state invokes in parallel) and
nest (a handler's SendMessage runs the queue's mapped function inside that request, on another
thread, while the first handler waits). A lock serialising functions whose env differs would
deadlock on the nested case, so instead, while the fixture is on, ``os.environ`` is a mapping
that shows the running invocation's container environment over the test process environment
(a ``ContextVar``, set on the invoking thread for the cold start and each call, and carried
into threads the handler starts, e.g. a ThreadPoolExecutor's workers). Each container sees
``Environment.Variables`` from its configuration plus what the runtime sets
(``AWS_LAMBDA_FUNCTION_NAME``/``_VERSION``/``_MEMORY_SIZE``, ``AWS_LAMBDA_LOG_GROUP_NAME``/
``_STREAM_NAME``, ``AWS_REGION``, ``AWS_DEFAULT_REGION``, ``AWS_EXECUTION_ENV``, ``_HANDLER``,
``AWS_LAMBDA_INITIALIZATION_TYPE``) over the process env (endpoint, credentials); a handler's
own writes to ``os.environ`` stay in its container. Code outside an invocation (the test,
moto) sees the process env unchanged. Limits: only Python-level reads (``os.environ``,
``os.getenv``) see it; C ``getenv`` (libpq's ``PG*``), and subprocesses started without
``env=`` see the process env; a module that did ``from os import environ`` before the fixture
holds the real mapping. ``LAMBDA_TASK_ROOT`` is not set (it would switch Powertools' Tracer on).

Not supported: DynamoDB stream event source mappings. moto invokes them inside PutItem, ignores
BatchSize and batch item failures and restarts sequence numbers; while the fixture is on,
CreateEventSourceMapping for a DynamoDB stream is refused with an InvalidParameterValue error
naming the alternative (drive the stream handler from GetRecords). Container images
(PackageType Image) are not run either. moto's ``lambda.use_docker: false`` config (the
"simple" backend) bypasses ``LambdaFunction.invoke``; the fixture refuses to start under it.
"""

from __future__ import annotations

import base64
import contextlib
import contextvars
import decimal
import importlib.util
import io
import itertools
import json
import logging
import math
import os
import sys
import threading
import time
import traceback
import uuid
import zipfile
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import ModuleType
from typing import TYPE_CHECKING, Any

import boto3
import pytest

if TYPE_CHECKING:  # moto's Lambda is imported when a harness starts (pytest startup stays fast)
    from moto.awslambda.models import LambdaBackend, LambdaFunction

LOG = logging.getLogger(__name__)

# The container environment of the invocation running on this thread (None: the process env).
# Values of None are variables the handler deleted.
_CONTAINER_ENV: contextvars.ContextVar[dict[str, str | None] | None] = contextvars.ContextVar(
    "lambda_container_env", default=None
)


class ContainerEnviron(MutableMapping[str, str]):
    """``os.environ`` while the harness is on: the current container's variables over the process's.

    Outside an invocation every operation goes to the real process environment (so pytest's
    monkeypatch and moto behave as before, even after the fixture put the real one back).
    """

    def __init__(self, process_environ: MutableMapping[str, str]) -> None:
        self.process_environ = process_environ

    def __getitem__(self, key: str) -> str:
        overlay = _CONTAINER_ENV.get()
        if overlay is not None and key in overlay:
            value = overlay[key]
            if value is None:
                raise KeyError(key)
            return value
        return self.process_environ[key]

    def __setitem__(self, key: str, value: str) -> None:
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"str expected, not {type(key if not isinstance(key, str) else value).__name__}")
        overlay = _CONTAINER_ENV.get()
        if overlay is None:
            self.process_environ[key] = value
        else:
            overlay[key] = value

    def __delitem__(self, key: str) -> None:
        overlay = _CONTAINER_ENV.get()
        if overlay is None:
            del self.process_environ[key]
            return
        if key not in self:
            raise KeyError(key)
        overlay[key] = None

    def __iter__(self) -> Iterator[str]:
        overlay = _CONTAINER_ENV.get()
        if overlay is None:
            yield from list(self.process_environ)
            return
        for key in list(self.process_environ):
            if key not in overlay:
                yield key
        for key, value in list(overlay.items()):
            if value is not None:
                yield key

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def copy(self) -> dict[str, str]:
        return dict(self)

    def __repr__(self) -> str:
        return f"ContainerEnviron({self.copy()!r})"


def _start_carrying_container_env(original_start: Callable[[threading.Thread], None]) -> Callable[..., None]:
    """``Thread.start`` that hands the starting invocation's container env to the new thread."""

    def start(self: threading.Thread) -> None:
        overlay = _CONTAINER_ENV.get()
        if overlay is not None:
            run = self.run

            def run_in_container_env() -> None:
                _CONTAINER_ENV.set(overlay)  # a new thread starts with an empty context
                run()

            self.run = run_in_container_env  # type: ignore[method-assign]
        original_start(self)

    return start


class LambdaContext:
    """The ``context`` the Python runtime passes (awslambdaric's LambdaContext)."""

    def __init__(
        self,
        *,
        aws_request_id: str,
        function_name: str,
        function_version: str,
        invoked_function_arn: str,
        memory_limit_in_mb: str,
        log_group_name: str,
        log_stream_name: str,
        deadline: float,
    ) -> None:
        self.aws_request_id = aws_request_id
        self.function_name = function_name
        self.function_version = function_version
        self.invoked_function_arn = invoked_function_arn
        self.memory_limit_in_mb = memory_limit_in_mb
        self.log_group_name = log_group_name
        self.log_stream_name = log_stream_name
        self.identity = _CognitoIdentity()
        self.client_context = None
        self.tenant_id = None
        self._deadline = deadline  # time.monotonic() at which the Timeout expires

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))

    def log(self, message: str) -> None:
        sys.stdout.write(message)

    def __repr__(self) -> str:
        return f"LambdaContext({self.function_name}:{self.function_version}, request {self.aws_request_id})"


@dataclass(frozen=True)
class AsyncInvokeConfig:
    """Lambda's asynchronous invocation settings of one function (its EventInvokeConfig)."""

    maximum_retry_attempts: int = 2
    on_failure_queue_url: str | None = None


class _CognitoIdentity:
    cognito_identity_id = None
    cognito_identity_pool_id = None


@dataclass
class Invocation:
    """One invocation, as the harness saw it (for assertions and for debugging async failures)."""

    function_name: str
    function_version: str
    invocation_type: str
    request_id: str
    event: Any
    container: int | None
    cold_start: bool
    result: Any = None
    error: dict[str, Any] | None = None
    duration_s: float = 0.0


@dataclass
class _Container:
    number: int
    key: tuple[Any, ...]
    env: dict[str, str | None]
    handler: Callable[[Any, Any], Any]
    module_name: str
    log_stream_name: str
    broken: bool = False


class _InitError(Exception):
    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(error["errorMessage"])
        self.error = error


class _LambdaJSONEncoder(json.JSONEncoder):
    """The runtime's marshaller: Decimal (DynamoDB numbers) becomes a JSON number."""

    def default(self, o: Any) -> Any:
        if isinstance(o, decimal.Decimal):
            if o.is_nan():
                return math.nan
            return int(o) if o == o.to_integral_value() else float(o)
        return super().default(o)


def _header(headers: Any, name: str) -> str | None:
    if not headers:
        return None
    value = headers.get(name)
    if value is None and isinstance(headers, Mapping):
        lowered = name.lower()
        for key, candidate in headers.items():
            if str(key).lower() == lowered:
                return str(candidate)
    return None if value is None else str(value)


def _stack_trace(exc: BaseException) -> list[str]:
    frames = [frame for frame in traceback.extract_tb(exc.__traceback__) if frame.filename != __file__]
    return traceback.format_list(frames)


def _error(error_type: str, message: str, request_id: str, stack: list[str] | None = None) -> dict[str, Any]:
    return {"errorMessage": message, "errorType": error_type, "requestId": request_id, "stackTrace": stack or []}


def _load_handler(handler: str | None, container_module_name: str) -> tuple[Callable[[Any, Any], Any], str]:
    """Import a fresh copy of the handler's module (the cold start) and return the handler."""
    module_name, _, attribute = (handler or "").rpartition(".")
    if not module_name or not attribute:
        raise _InitError(
            _error("Runtime.MalformedHandlerName", f"Bad handler '{handler}': not enough values to unpack", "")
        )
    module_name = module_name.replace("/", ".")
    try:
        spec = importlib.util.find_spec(module_name)
    except ImportError as exc:
        raise _InitError(
            _error("Runtime.ImportModuleError", f"Unable to import module '{module_name}': {exc}", "")
        ) from exc
    if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
        raise _InitError(
            _error(
                "Runtime.ImportModuleError",
                f"Unable to import module '{module_name}': No module named '{module_name}'",
                "",
            )
        )
    fresh_spec = importlib.util.spec_from_file_location(container_module_name, spec.origin)
    assert fresh_spec is not None and fresh_spec.loader is not None
    module: ModuleType = importlib.util.module_from_spec(fresh_spec)
    sys.modules[container_module_name] = module
    try:
        fresh_spec.loader.exec_module(module)
    except ImportError as exc:
        sys.modules.pop(container_module_name, None)
        raise _InitError(
            _error(
                "Runtime.ImportModuleError", f"Unable to import module '{module_name}': {exc}", "", _stack_trace(exc)
            )
        ) from exc
    except SyntaxError as exc:
        sys.modules.pop(container_module_name, None)
        raise _InitError(
            _error("Runtime.UserCodeSyntaxError", f"Syntax error in module '{module_name}': {exc}", "")
        ) from exc
    except Exception as exc:
        sys.modules.pop(container_module_name, None)
        raise _InitError(_error(type(exc).__name__, str(exc), "", _stack_trace(exc))) from exc
    function = getattr(module, attribute, None)
    if not callable(function):
        sys.modules.pop(container_module_name, None)
        raise _InitError(
            _error("Runtime.HandlerNotFound", f"Handler '{attribute}' missing on module '{module_name}'", "")
        )
    return function, module_name


class LambdaHarness:
    """What ``lambda_runs_handlers`` yields: containers, the invocation log, and a helper to
    create functions in moto."""

    def __init__(self) -> None:
        self.invocations: list[Invocation] = []
        self._lock = threading.Lock()
        self._idle: dict[tuple[Any, ...], list[_Container]] = {}
        self._module_names: list[str] = []
        self._numbers = itertools.count(1)
        self._background = False
        self._retry_delays_s: tuple[float, ...] = ()
        self._async_configs: dict[str, AsyncInvokeConfig] = {}
        self._lost: set[str] = set()
        self._pending = 0
        self._idle_condition = threading.Condition(self._lock)
        self.async_failures: list[dict[str, Any]] = []  # destination records of exhausted runs

    # -- asynchronous invocations (opt-in) ---------------------------------------------------

    def run_async_in_background(self, *, retry_delays_s: tuple[float, float] = (1.0, 2.0)) -> None:
        self._background = True
        self._retry_delays_s = retry_delays_s

    def lose_async_invocations(self, function_name: str) -> None:
        """From now on, asynchronous invocations of ``function_name`` are accepted (202) and never
        run: the container died before doing or reporting anything (a fault to inject)."""
        self._lost.add(function_name)

    def configure_async(self, function_name: str, config: AsyncInvokeConfig) -> None:
        """What an AWS::Lambda::EventInvokeConfig says for ``function_name``."""
        self._async_configs[function_name] = config

    def wait_for_background(self, timeout_s: float = 60.0) -> None:
        """Wait until no asynchronous run or retry is queued (raises TimeoutError otherwise)."""
        deadline = time.monotonic() + timeout_s
        with self._idle_condition:
            while self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{self._pending} asynchronous invocations still running after {timeout_s} s")
                self._idle_condition.wait(left)

    def _runs_in_background(self, requested_type: str | None, event: Any) -> bool:
        """Event invokes, and S3's notifications (internal callers send no invocation type)."""
        if not self._background:
            return False
        if requested_type is not None:
            return requested_type == "Event"
        records = event.get("Records") if isinstance(event, Mapping) else None
        return bool(records) and isinstance(records[0], Mapping) and records[0].get("eventSource") == "aws:s3"

    def _start_background(self, function: LambdaFunction, event: Any) -> None:
        if function.function_name in self._lost:
            LOG.warning("async invocation of %s lost (injected)", function.function_name)
            return
        with self._lock:
            self._pending += 1
        config = self._async_configs.get(function.function_name, AsyncInvokeConfig())

        def run() -> None:
            try:
                attempts = config.maximum_retry_attempts + 1
                for attempt in range(attempts):
                    invocation, _ = self._run(function, event, "Event")
                    if invocation.error is None:
                        return
                    LOG.warning(
                        "async invocation %d/%d of %s failed: %s",
                        attempt + 1,
                        attempts,
                        function.function_name,
                        invocation.error,
                    )
                    if attempt + 1 < attempts:
                        delays = self._retry_delays_s or (0.0,)
                        time.sleep(delays[min(attempt, len(delays) - 1)])
                self._send_to_failure_destination(function, config, event, invocation, attempts)
            finally:
                with self._idle_condition:
                    self._pending -= 1
                    self._idle_condition.notify_all()

        threading.Thread(target=run, name=f"async-{function.function_name}", daemon=True).start()

    def _send_to_failure_destination(
        self, function: LambdaFunction, config: AsyncInvokeConfig, event: Any, invocation: Invocation, attempts: int
    ) -> None:
        record = {
            "version": "1.0",
            "timestamp": datetime.now(UTC).isoformat(),
            "requestContext": {
                "requestId": invocation.request_id,
                "functionArn": f"{function.function_arn}:$LATEST",
                "condition": "RetriesExhausted",
                "approximateInvokeCount": attempts,
            },
            "requestPayload": event,
            "responseContext": {"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled"},
            "responsePayload": invocation.error,
        }
        with self._lock:
            self.async_failures.append(record)
        if config.on_failure_queue_url:
            boto3.client("sqs").send_message(
                QueueUrl=config.on_failure_queue_url, MessageBody=json.dumps(record, cls=_LambdaJSONEncoder)
            )

    # -- for tests -------------------------------------------------------------------------

    def invocations_of(self, function_name: str) -> list[Invocation]:
        with self._lock:
            return [i for i in self.invocations if i.function_name == function_name]

    @property
    def cold_starts(self) -> int:
        with self._lock:
            return sum(1 for i in self.invocations if i.cold_start)

    def create_function(
        self,
        name: str,
        handler: str,
        *,
        environment: Mapping[str, str] | None = None,
        timeout: int = 30,
        memory_size: int = 256,
        runtime: str = "python3.14",
    ) -> str:
        """Create a function in moto (a placeholder zip: the code that runs is ``handler``); its ARN."""
        iam = boto3.client("iam")
        role_name = "lambda-harness"
        try:
            role_arn = iam.get_role(RoleName=role_name)["Role"]["Arn"]
        except iam.exceptions.NoSuchEntityException:
            trust = {
                "Version": "2012-10-17",
                "Statement": [
                    {"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}
                ],
            }
            role_arn = iam.create_role(RoleName=role_name, AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]
        archive = io.BytesIO()
        with zipfile.ZipFile(archive, "w") as zf:
            zf.writestr("README.txt", "code runs in the test process (tests/support/moto_lambda.py)\n")
        response = boto3.client("lambda").create_function(
            FunctionName=name,
            Runtime=runtime,
            Role=role_arn,
            Handler=handler,
            Code={"ZipFile": archive.getvalue()},
            Timeout=timeout,
            MemorySize=memory_size,
            Environment={"Variables": dict(environment or {})},
        )
        return str(response["FunctionArn"])

    # -- moto's entry point ----------------------------------------------------------------

    def invoke(self, function: LambdaFunction, body: Any, request_headers: Any, response_headers: Any) -> bytes:
        requested_type = _header(request_headers, "X-Amz-Invocation-Type")
        invocation_type = requested_type or "RequestResponse"
        if invocation_type == "DryRun":
            return b""
        event = self._parse_payload(body)
        response_headers["x-amz-executed-version"] = str(function.version)
        if self._runs_in_background(requested_type, event):
            self._start_background(function, event)
            return b""
        invocation, tail = self._run(function, event, invocation_type)
        if invocation_type == "Event":
            if invocation.error is not None:
                LOG.warning("async invocation of %s failed: %s", function.function_name, invocation.error)
            return b""
        response_headers["x-amz-log-result"] = base64.b64encode(tail.encode()[-4096:]).decode()  # the last 4 KB
        if invocation.error is not None:
            response_headers["x-amz-function-error"] = "Unhandled"
            return json.dumps(invocation.error).encode()
        return json.dumps(invocation.result, cls=_LambdaJSONEncoder, ensure_ascii=False).encode()

    @staticmethod
    def _parse_payload(body: Any) -> Any:
        if isinstance(body, bytes):
            body = body.decode("utf-8")
        if not body:
            return {}
        try:
            return json.loads(body)
        except json.JSONDecodeError as exc:
            from moto.awslambda.exceptions import LambdaClientError

            raise LambdaClientError(
                "InvalidRequestContentException", f"Could not parse request body into json: {exc}"
            ) from exc

    # -- containers ------------------------------------------------------------------------

    @staticmethod
    def _key(function: LambdaFunction) -> tuple[Any, ...]:
        env = tuple(sorted((str(k), str(v)) for k, v in (function.environment_vars or {}).items()))
        return (
            function.function_arn,
            str(function.version),
            function.handler,
            env,
            int(function.timeout),
            int(function.memory_size),
            getattr(function, "code_sha_256", ""),
        )

    def _cold_start(self, function: LambdaFunction, key: tuple[Any, ...]) -> _Container:
        if function.package_type == "Image":
            raise _InitError(_error("Runtime.InvalidEntrypoint", "the harness runs Zip functions only", ""))
        number = next(self._numbers)
        stream = f"{datetime.now(UTC):%Y/%m/%d}/[{function.version}]{uuid.uuid4().hex}"
        env: dict[str, str | None] = {str(k): str(v) for k, v in (function.environment_vars or {}).items()}
        env.update(
            {
                "AWS_LAMBDA_FUNCTION_NAME": function.function_name,
                "AWS_LAMBDA_FUNCTION_VERSION": str(function.version),
                "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(function.memory_size),
                "AWS_LAMBDA_LOG_GROUP_NAME": function.logs_group_name,
                "AWS_LAMBDA_LOG_STREAM_NAME": stream,
                "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
                "AWS_REGION": function.region,
                "AWS_DEFAULT_REGION": function.region,
                "AWS_EXECUTION_ENV": f"AWS_Lambda_{function.run_time or 'python'}",
                "_HANDLER": function.handler or "",
            }
        )
        module_name = f"{(function.handler or '').rpartition('.')[0].replace('/', '.')}__lambda_{number}"
        token = _CONTAINER_ENV.set(env)
        try:
            handler, _ = _load_handler(function.handler, module_name)
        finally:
            _CONTAINER_ENV.reset(token)
        with self._lock:
            self._module_names.append(module_name)
        return _Container(number, key, env, handler, module_name, stream)

    def _acquire(self, function: LambdaFunction) -> tuple[_Container, bool]:
        key = self._key(function)
        with self._lock:
            idle = self._idle.get(key)
            if idle:
                return idle.pop(), False
        return self._cold_start(function, key), True

    def _release(self, container: _Container) -> None:
        if container.broken:
            return
        with self._lock:
            self._idle.setdefault(container.key, []).append(container)

    # -- one invocation --------------------------------------------------------------------

    def _run(self, function: LambdaFunction, event: Any, invocation_type: str) -> tuple[Invocation, str]:
        request_id = str(uuid.uuid4())
        version = str(function.version)
        invocation = Invocation(
            function_name=function.function_name,
            function_version=version,
            invocation_type=invocation_type,
            request_id=request_id,
            event=event,
            container=None,
            cold_start=True,
        )
        with self._lock:
            self.invocations.append(invocation)
        lines = [f"START RequestId: {request_id} Version: {version}"]
        try:
            container, invocation.cold_start = self._acquire(function)
        except _InitError as failed:
            invocation.error = {**failed.error, "requestId": request_id}
            lines += [
                f"INIT_REPORT Status: error\tError Type: {failed.error['errorType']}",
                *failed.error["stackTrace"],
            ]
            lines.append(f"END RequestId: {request_id}")
            return invocation, "\n".join(lines) + "\n"
        invocation.container = container.number
        timeout = float(function.timeout)
        started = time.monotonic()
        context = LambdaContext(
            aws_request_id=request_id,
            function_name=function.function_name,
            function_version=version,
            invoked_function_arn=function.function_arn,
            memory_limit_in_mb=str(function.memory_size),
            log_group_name=function.logs_group_name,
            log_stream_name=container.log_stream_name,
            deadline=started + timeout,
        )
        token = _CONTAINER_ENV.set(container.env)
        try:
            result = container.handler(event, context)
            try:
                json.dumps(result, cls=_LambdaJSONEncoder)
                invocation.result = result
            except (TypeError, ValueError) as exc:
                invocation.error = _error("Runtime.MarshalError", f"Unable to marshal response: {exc}", request_id)
        except SystemExit as exc:
            container.broken = True
            invocation.error = _error(
                "Runtime.ExitError", f"RequestId: {request_id} Error: Runtime exited with error: {exc.code}", request_id
            )
        except Exception as exc:
            invocation.error = _error(type(exc).__name__, str(exc), request_id, _stack_trace(exc))
        finally:
            _CONTAINER_ENV.reset(token)
            invocation.duration_s = time.monotonic() - started
        if invocation.duration_s > timeout:
            container.broken = True  # Lambda stops a timed-out runtime; the next invoke cold-starts
            invocation.result = None
            invocation.error = _error(
                "Sandbox.Timedout", f"RequestId: {request_id} Error: Task timed out after {timeout:.2f} seconds", ""
            )
        self._release(container)
        if invocation.error is not None:
            lines.append(f"[ERROR] {invocation.error['errorType']}: {invocation.error['errorMessage']}")
            lines += invocation.error["stackTrace"]
        millis = invocation.duration_s * 1000
        lines.append(f"END RequestId: {request_id}")
        lines.append(
            f"REPORT RequestId: {request_id}\tDuration: {millis:.2f} ms\tBilled Duration: {math.ceil(millis)} ms"
            f"\tMemory Size: {function.memory_size} MB"
        )
        return invocation, "\n".join(lines) + "\n"

    def close(self) -> None:
        with self._lock:
            for name in self._module_names:
                sys.modules.pop(name, None)
            self._module_names.clear()
            self._idle.clear()


def _refuse_dynamodb_stream_mappings(
    original: Callable[[LambdaBackend, dict[str, Any]], Any],
) -> Callable[[LambdaBackend, dict[str, Any]], Any]:
    def create_event_source_mapping(self: LambdaBackend, spec: dict[str, Any]) -> Any:
        source = str(spec.get("EventSourceArn") or "")
        if ":dynamodb:" in source and "/stream/" in source:
            from moto.awslambda.exceptions import InvalidParameterValueException

            raise InvalidParameterValueException(
                "lambda_runs_handlers does not support DynamoDB stream event source mappings: moto invokes them "
                "inside PutItem, ignores BatchSize and batch item failures and restarts sequence numbers. Drive "
                "the stream handler from GetRecords in the test instead."
            )
        return original(self, spec)

    return create_event_source_mapping


_active = threading.Lock()


@contextlib.contextmanager
def lambda_handlers_in_process() -> Iterator[LambdaHarness]:
    """Patch moto so Lambda invokes run handlers in this process; everything is undone on exit."""
    from moto.awslambda.models import LambdaBackend, LambdaFunction
    from moto.core.config import default_user_config

    if default_user_config.get("lambda", {}).get("use_docker", True) is False:
        raise RuntimeError(
            "moto is configured with lambda.use_docker=false: its simple backend never calls "
            "LambdaFunction.invoke, so handlers cannot run; reset that config first"
        )
    if not _active.acquire(blocking=False):
        raise RuntimeError("lambda_handlers_in_process is already active (one harness at a time)")
    harness = LambdaHarness()

    def invoke(self: LambdaFunction, body: Any, request_headers: Any, response_headers: Any) -> bytes:
        return harness.invoke(self, body, request_headers, response_headers)

    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(LambdaFunction, "invoke", invoke)
            patch.setattr(
                LambdaBackend,
                "create_event_source_mapping",
                _refuse_dynamodb_stream_mappings(LambdaBackend.create_event_source_mapping),
            )
            patch.setattr(os, "environ", ContainerEnviron(os.environ))
            patch.setattr(threading.Thread, "start", _start_carrying_container_env(threading.Thread.start))
            try:
                yield harness
            finally:
                harness.close()
    finally:
        _active.release()
