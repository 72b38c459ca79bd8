"""A local stand-in for Slack's Web API: a real threaded HTTP server on 127.0.0.1.

It answers the methods the fan-out Slack dispatcher uses -- chat.postMessage, chat.delete,
reactions.add, reactions.remove, conversations.replies, conversations.history -- the way Slack
does: form-encoded or JSON bodies, a bearer token, ``{"ok": false, "error": ...}`` answers,
HTTP 429 with ``Retry-After``, 5xx with a non-JSON body. It keeps the state a channel would
show (messages, thread replies, message metadata, reactions), so tests assert on what was
delivered and what is left after deletes, not on call counts.

Faults are scripted per method as a queue: each call of the method takes the next ``Reply``
(a canned failure, a delay, a hook to run first) and falls back to normal behaviour when the
queue is empty. Every call is recorded in arrival order.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from tests.support.http_stub import HttpStub, StubRequest, StubResponse, json_response


@dataclass(frozen=True)
class Reply:
    """One scripted answer. Defaults mean: behave normally."""

    error: str | None = None  # ok:false error code
    status: int = 200  # HTTP status; >= 500 answers with a non-JSON body like a failing gateway
    retry_after: int | None = None  # Retry-After header (seconds)
    delay: float = 0.0  # seconds to wait before answering
    deliver: bool = False  # with an error/status: perform the effect anyway (Slack posted, the answer got lost)
    before: Callable[[Call], None] | None = None  # run before answering (e.g. a competing writer)


def ok_false(error: str) -> Reply:
    return Reply(error=error)


def rate_limited(retry_after: int = 1) -> Reply:
    return Reply(error="ratelimited", status=429, retry_after=retry_after)


def server_error(status: int = 503, *, deliver: bool = False) -> Reply:
    return Reply(status=status, deliver=deliver)


@dataclass
class Call:
    method: str
    token: str | None
    params: dict[str, Any]
    status: int = 200
    error: str | None = None

    @property
    def channel(self) -> str | None:
        return self.params.get("channel")

    @property
    def thread_ts(self) -> str | None:
        return self.params.get("thread_ts")

    @property
    def text(self) -> str | None:
        return self.params.get("text")

    @property
    def blocks(self) -> list[dict[str, Any]] | None:
        return self.params.get("blocks")


@dataclass
class Message:
    channel: str
    ts: str
    text: str | None
    blocks: list[dict[str, Any]] | None = None
    thread_ts: str | None = None
    metadata: dict[str, Any] | None = None
    token: str | None = None
    reactions: set[str] = field(default_factory=set)


class SlackStub(HttpStub[Call]):
    protocol_version = "HTTP/1.1"

    def __init__(self, *, delay_seconds: float = 0.0) -> None:
        super().__init__(name="slack-stub", delay_seconds=delay_seconds)
        self._messages: dict[tuple[str, str], Message] = {}  # (channel, ts) -> message
        self._scripts: dict[str, deque[Reply]] = defaultdict(deque)
        self._dm_channels: dict[str, str] = {}  # user id -> DM channel id
        self._last_ts_micros = 0

    @property
    def base_url(self) -> str:
        """The Web API root, as slack-sdk's ``base_url`` wants it."""
        return f"{self.url}/api/"

    # -- arranging ---------------------------------------------------------------------------

    def script(self, method: str, *replies: Reply) -> None:
        with self._lock:
            self._scripts[method].extend(replies)

    def open_dm(self, user_id: str, channel_id: str) -> None:
        """Posting to ``user_id`` lands in DM channel ``channel_id`` (as Slack resolves user ids)."""
        with self._lock:
            self._dm_channels[user_id] = channel_id

    def add_message(
        self, channel: str, text: str, *, thread_ts: str | None = None, metadata: dict[str, Any] | None = None
    ) -> str:
        """A message already in the channel (a user's @mention, an earlier post). Returns its ts."""
        with self._lock:
            ts = self._next_ts()
            self._messages[(channel, ts)] = Message(channel, ts, text, thread_ts=thread_ts, metadata=metadata)
            return ts

    def remove_message(self, channel: str, ts: str) -> None:
        """Someone else (a user, another cleaner) deleted the message."""
        with self._lock:
            self._messages.pop((channel, ts), None)

    # -- observing ---------------------------------------------------------------------------

    @property
    def calls(self) -> list[Call]:
        return self._recorded()

    def calls_to(self, method: str) -> list[Call]:
        return [call for call in self.calls if call.method == method]

    def messages(self, channel: str | None = None) -> list[Message]:
        """Messages present now (deleted ones are gone), oldest first."""
        with self._lock:
            found = [m for m in self._messages.values() if channel is None or m.channel == channel]
        return sorted(found, key=lambda m: float(m.ts))

    def replies(self, channel: str, thread_ts: str) -> list[Message]:
        return [m for m in self.messages(channel) if m.thread_ts == thread_ts and m.ts != thread_ts]

    def reactions(self, channel: str, ts: str) -> set[str]:
        with self._lock:
            message = self._messages.get((channel, ts))
            return set(message.reactions) if message else set()

    # -- Slack behaviour ---------------------------------------------------------------------

    def _next_ts(self) -> str:
        micros = max(int(time.time() * 1_000_000), self._last_ts_micros + 1)
        self._last_ts_micros = micros
        return f"{micros // 1_000_000}.{micros % 1_000_000:06d}"

    def _respond(self, request: StubRequest) -> StubResponse:
        call = Call(
            method=request.path.rsplit("/", 1)[-1].split("?", 1)[0],
            token=request.bearer_token,
            params=_parse_body(request.body.decode(), request.headers.get("Content-Type", "")),
        )
        status, headers, body = self._answer(call)
        if isinstance(body, dict):
            return json_response(status, body, headers, content_type="application/json; charset=utf-8")
        return StubResponse(status, str(body).encode(), {"Content-Type": "text/html", **headers})

    def _answer(self, call: Call) -> tuple[int, dict[str, str], Any]:
        with self._lock:
            self._record(call)
            scripted = self._scripts[call.method].popleft() if self._scripts[call.method] else Reply()
        if scripted.before is not None:
            scripted.before(call)
        if scripted.delay:
            time.sleep(scripted.delay)
        failing = scripted.error is not None or scripted.status != 200
        if failing and not scripted.deliver:
            return self._failure(call, scripted)
        if call.token is None:
            call.error = "not_authed"
            return 200, {}, {"ok": False, "error": "not_authed"}
        with self._lock:
            body = self._perform(call)
        call.error = None if body.get("ok") else body.get("error")
        return self._failure(call, scripted) if failing else (200, {}, body)

    def _failure(self, call: Call, scripted: Reply) -> tuple[int, dict[str, str], Any]:
        call.status, call.error = scripted.status, scripted.error
        headers = {"Retry-After": str(scripted.retry_after)} if scripted.retry_after is not None else {}
        if scripted.status >= 500:
            return scripted.status, headers, f"<html>{scripted.status} upstream failure</html>"
        return scripted.status, headers, {"ok": False, "error": scripted.error or "unknown_error"}

    def _perform(self, call: Call) -> dict[str, Any]:
        method = getattr(self, "_" + call.method.replace(".", "_"), None)
        if method is None:
            return {"ok": False, "error": "unknown_method"}
        result: dict[str, Any] = method(call.params, call.token)
        return result

    def _chat_postMessage(self, params: dict[str, Any], token: str | None) -> dict[str, Any]:
        if not params.get("channel") or not (params.get("text") or params.get("blocks")):
            return {"ok": False, "error": "invalid_arguments"}
        channel = self._dm_channels.get(params["channel"], params["channel"])
        thread_ts = params.get("thread_ts")
        if thread_ts and (channel, thread_ts) not in self._messages:
            return {"ok": False, "error": "thread_not_found"}
        ts = self._next_ts()
        message = Message(
            channel, ts, params.get("text"), params.get("blocks"), thread_ts, params.get("metadata"), token
        )
        self._messages[(channel, ts)] = message
        return {"ok": True, "channel": channel, "ts": ts, "message": {"text": message.text, "ts": ts}}

    def _chat_delete(self, params: dict[str, Any], token: str | None) -> dict[str, Any]:
        if self._messages.pop((params.get("channel", ""), params.get("ts", "")), None) is None:
            return {"ok": False, "error": "message_not_found"}
        return {"ok": True, "channel": params["channel"], "ts": params["ts"]}

    def _reactions_add(self, params: dict[str, Any], token: str | None) -> dict[str, Any]:
        message = self._messages.get((params.get("channel", ""), params.get("timestamp", "")))
        if message is None:
            return {"ok": False, "error": "message_not_found"}
        if params["name"] in message.reactions:
            return {"ok": False, "error": "already_reacted"}
        message.reactions.add(params["name"])
        return {"ok": True}

    def _reactions_remove(self, params: dict[str, Any], token: str | None) -> dict[str, Any]:
        message = self._messages.get((params.get("channel", ""), params.get("timestamp", "")))
        if message is None:
            return {"ok": False, "error": "message_not_found"}
        if params["name"] not in message.reactions:
            return {"ok": False, "error": "no_reaction"}
        message.reactions.discard(params["name"])
        return {"ok": True}

    def _conversations_replies(self, params: dict[str, Any], token: str | None) -> dict[str, Any]:
        channel, parent = params.get("channel", ""), params.get("ts", "")
        if (channel, parent) not in self._messages:
            return {"ok": False, "error": "thread_not_found"}
        thread = [m for m in self._messages.values() if m.channel == channel and parent in (m.ts, m.thread_ts)]
        return self._page(sorted(thread, key=lambda m: float(m.ts)), params)

    def _conversations_history(self, params: dict[str, Any], token: str | None) -> dict[str, Any]:
        channel = params.get("channel", "")
        top_level = [m for m in self._messages.values() if m.channel == channel and m.thread_ts in (None, m.ts)]
        return self._page(sorted(top_level, key=lambda m: float(m.ts), reverse=True), params)

    @staticmethod
    def _page(messages: list[Message], params: dict[str, Any]) -> dict[str, Any]:
        oldest = float(params.get("oldest") or 0)
        selected = [m for m in messages if float(m.ts) >= oldest]
        start, limit = int(params.get("cursor") or 0), int(params.get("limit") or 100)
        page, more = selected[start : start + limit], start + limit < len(selected)
        with_metadata = str(params.get("include_all_metadata")).lower() in ("1", "true")
        rendered = []
        for m in page:
            item: dict[str, Any] = {"type": "message", "ts": m.ts, "text": m.text}
            if m.thread_ts:
                item["thread_ts"] = m.thread_ts
            if with_metadata and m.metadata:
                item["metadata"] = m.metadata
            rendered.append(item)
        cursor = str(start + limit) if more else ""
        return {"ok": True, "messages": rendered, "has_more": more, "response_metadata": {"next_cursor": cursor}}


def _parse_body(raw: str, content_type: str) -> dict[str, Any]:
    """slack-sdk sends JSON for chat.postMessage and form fields for the other methods."""
    if not raw:
        return {}
    if "application/json" in content_type:
        parsed: dict[str, Any] = json.loads(raw)
        return parsed
    params: dict[str, Any] = dict(parse_qsl(raw, keep_blank_values=True))
    for name in ("blocks", "metadata"):  # structured fields arrive JSON-encoded inside a form
        if isinstance(params.get(name), str):
            params[name] = json.loads(params[name])
    return params


@contextmanager
def running_slack_stub(*, delay_seconds: float = 0.0) -> Iterator[SlackStub]:
    stub = SlackStub(delay_seconds=delay_seconds).start()
    try:
        yield stub
    finally:
        stub.stop()
