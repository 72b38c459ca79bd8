"""The plumbing the local stand-ins for Slack, GitHub and SES share: a real HTTP server on 127.0.0.1.

A stub subclasses ``HttpStub`` and implements ``_respond(request) -> StubResponse``; the base runs
a ``ThreadingHTTPServer`` on a free port in a daemon thread, reads each request, applies the
optional ``delay_seconds`` before answering (benchmarks), writes the response (or drops the
connection), keeps request logging quiet and shuts down cleanly. ``_record`` keeps what a stub
wants to remember of each request in ``requests``, in arrival order, under the stub's lock.

    with MyStub() as stub:  # or stub = MyStub().start() ... stub.stop()
        client(stub.url)
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Generic, Self, TypeVar

R = TypeVar("R")


@dataclass(frozen=True)
class StubRequest:
    method: str
    path: str  # with the query string
    headers: Message
    body: bytes

    @property
    def bearer_token(self) -> str | None:
        return (self.headers.get("Authorization") or "").removeprefix("Bearer ").strip() or None


@dataclass(frozen=True)
class StubResponse:
    status: int
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    drop_connection: bool = False  # close the socket without answering (a broken connection)


def json_response(
    status: int, payload: Any, headers: Mapping[str, str] | None = None, *, content_type: str = "application/json"
) -> StubResponse:
    """``payload`` as a JSON body; ``None`` is an empty body (e.g. 204)."""
    body = b"" if payload is None else json.dumps(payload).encode()
    return StubResponse(status, body, {"Content-Type": content_type, **(headers or {})})


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver listens with a backlog of 5. When 20+ workers connect at once (the fan-out
    # benchmark), the kernel drops the SYNs beyond it and each such call stalls for the 1 s SYN
    # retransmit -- a limit of the stand-in, not of Slack, GitHub or SES.
    request_queue_size = 128


class HttpStub(Generic[R]):
    protocol_version = "HTTP/1.0"

    def __init__(self, *, name: str, delay_seconds: float = 0.0) -> None:
        self.delay_seconds = delay_seconds  # applied to every answer (the benchmark's slow channel)
        self.requests: list[R] = []  # what the stub recorded, in arrival order; read it via _recorded()
        self._lock = threading.RLock()  # re-entrant: stubs record while holding it for their own state
        self._server = _Server(("127.0.0.1", 0), self._handler_class())
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name=name, daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread.is_alive():  # shutdown() would wait forever for a loop that never ran
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _record(self, entry: R) -> None:
        with self._lock:
            self.requests.append(entry)

    def _recorded(self) -> list[R]:
        with self._lock:
            return list(self.requests)

    def _respond(self, request: StubRequest) -> StubResponse:
        raise NotImplementedError

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = stub.protocol_version

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if stub.delay_seconds:
                    time.sleep(stub.delay_seconds)
                response = stub._respond(StubRequest(self.command, self.path, self.headers, body))
                if response.drop_connection:
                    self.close_connection = True
                    return
                self.send_response(response.status)
                for name, value in response.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(response.body)))
                self.end_headers()
                self.wfile.write(response.body)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler
