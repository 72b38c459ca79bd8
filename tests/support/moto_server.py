"""One moto server per test session, spoken to over real HTTP -- made faithful where it is not.

The handlers never learn they talk to moto: the fixture sets the standard
``AWS_ENDPOINT_URL`` (which boto3 honours natively) and dummy credentials, exactly as an
operator would for a local run.

What this module adds to the stock ``ThreadedMotoServer`` (the harness, never the handlers, is
where moto is made faithful):

- **Atomic DynamoDB.** moto evaluates a ConditionExpression and then applies the write as two
  separate steps on a threaded server, so two concurrent conditional writers on one item can
  both win (16 of 300 races here). Real DynamoDB never lets that happen: every single-item
  write, every transaction and every read is atomic. ``SerialisedDynamoDB`` runs DynamoDB and
  DynamoDB Streams requests one at a time, which makes each of them atomic and every read see
  a whole item -- strictly linearizable, stronger than nothing, and the same answers AWS gives.
  Step Functions' service integrations reach DynamoDB over this same HTTP server, so they are
  serialised too. Other services keep running concurrently.
- Two emulator costs removed (they change no answer): werkzeug's per-request log line, and
  moto listing its own package directory from disk on every request.

``start_moto_server()`` is the one way tests and benchmarks start it: in this process (tests:
fixtures can patch moto's models, e.g. to run our Lambda handlers), or in a process of its own
(benchmarks: moto's CPU must not compete with the measured code for this process's GIL).
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

# DynamoDB's JSON protocol names the operation in X-Amz-Target; every operation of both
# services is serialised (reads too: an item is mutated in place by moto, and a read racing a
# write could otherwise see half of it).
SERIALISED_TARGET_PREFIXES = ("DynamoDB_20120810.", "DynamoDBStreams_20120810.")
# A request that waits this long for the lock means a DynamoDB request re-entered the server
# while holding it (e.g. moto's own DynamoDB stream -> Lambda mapping running a handler inside
# PutItem): fail that request loudly instead of hanging the test run.
LOCK_WAIT_SECONDS = 30.0

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class SerialisedDynamoDB:
    """WSGI middleware: DynamoDB requests run one at a time, each to completion.

    The response body is produced inside the lock (moto builds it eagerly; joining the
    iterable guarantees it), so no other DynamoDB request can interleave with any part of one.
    """

    def __init__(self, app: WSGIApp, *, lock_wait_seconds: float = LOCK_WAIT_SECONDS) -> None:
        self._app = app
        self._lock = threading.Lock()
        self._lock_wait_seconds = lock_wait_seconds
        self.serialised_requests = 0

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if not str(environ.get("HTTP_X_AMZ_TARGET", "")).startswith(SERIALISED_TARGET_PREFIXES):
            return self._app(environ, start_response)
        if not self._lock.acquire(timeout=self._lock_wait_seconds):
            body = json.dumps(
                {
                    "__type": "com.amazonaws.dynamodb.v20120810#InternalServerError",
                    "message": "test harness: the DynamoDB lock was held for "
                    f"{self._lock_wait_seconds:.0f} s; a DynamoDB request re-entered the server",
                }
            ).encode()
            start_response("500 Internal Server Error", [("Content-Type", "application/x-amz-json-1.0")])
            return [body]
        try:
            self.serialised_requests += 1
            result = self._app(environ, start_response)
            try:
                return [b"".join(result)]
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
        finally:
            self._lock.release()


def _remove_emulator_overheads() -> None:
    import moto.backends

    # moto lists its package directory on every request to resolve the service; the listing
    # never changes while the process runs.
    if not hasattr(moto.backends.list_of_moto_modules, "cache_info"):
        listing = moto.backends.list_of_moto_modules
        moto.backends.list_of_moto_modules = functools.cache(lambda: tuple(listing()))  # type: ignore[assignment]
    logging.getLogger("werkzeug").setLevel(logging.ERROR)


class _FaithfulServer:
    """``ThreadedMotoServer`` with the DynamoDB middleware in front of moto's dispatcher."""

    def __init__(self, port: int) -> None:
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

        _remove_emulator_overheads()
        self.app = SerialisedDynamoDB(DomainDispatcherApplication(create_backend_app))
        self._port = port
        self._ready = threading.Event()
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def _serve(self) -> None:
        from moto.moto_server.werkzeug_app import MotoRequestHandler
        from werkzeug.serving import make_server

        self._server = make_server("127.0.0.1", self._port, self.app, True, request_handler=MotoRequestHandler)
        self._ready.set()
        self._server.serve_forever()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._serve, name="moto-server", daemon=True)
        self._thread.start()
        self._ready.wait()

    def serve_forever(self) -> None:
        self._serve()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
        if self._thread is not None:
            self._thread.join()


@dataclass(frozen=True)
class MotoServer:
    port: int
    # The in-process server's middleware (None when the server runs in its own process).
    dynamodb_gate: SerialisedDynamoDB | None = None
    pid: int | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _post(self, path: str, body: dict[str, object] | None = None) -> None:
        data = json.dumps(body or {}).encode()
        request = urllib.request.Request(f"{self.endpoint}{path}", data=data, method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()

    def reset(self) -> None:
        self._post("/moto-api/reset")

    def enable_state_machine_execution(self) -> None:
        self._post("/moto-api/config", {"stepfunctions": {"execute_state_machine": True}})


def start_moto_server(
    *, own_process: bool = False, command: Callable[[int], list[str]] | None = None
) -> Iterator[MotoServer]:
    """Start the faithful moto server on a free loopback port; stop it when the generator ends.

    ``own_process``: in a process of its own, started with ``command(port)`` (default: this
    module's ``--port``), e.g. a benchmark's launcher that patches one more emulator cost first.
    """
    port = free_port()
    if own_process:
        launch = command or (lambda port: [sys.executable, "-m", "tests.support.moto_server", "--port", str(port)])
        yield from _in_own_process(port, launch(port))
        return
    server = _FaithfulServer(port)
    server.start()
    try:
        yield MotoServer(port=port, dynamodb_gate=server.app)
    finally:
        server.stop()


def _in_own_process(port: int, command: list[str]) -> Iterator[MotoServer]:
    process = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/data.json", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.1)
        yield MotoServer(port=port, pid=process.pid)
    finally:
        process.terminate()
        process.wait(timeout=10)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="The test harness's faithful moto server, in the foreground.")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    _FaithfulServer(args.port).serve_forever()


if __name__ == "__main__":
    main()
