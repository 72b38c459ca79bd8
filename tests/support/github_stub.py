"""A local HTTP server on 127.0.0.1 that answers like GitHub's issue-comments REST API.

Implements what the GitHub dispatcher uses -- create, list (paginated, with a ``Link`` header),
edit and delete issue comments -- keeps the comments in memory, records every request in
arrival order, and can be scripted to answer errors (401/403/404/429/5xx, with headers such as
Retry-After) for the next N matching requests. ``accepted_tokens`` makes every other token
answer 401, like a rotated credential. Scripting ``DROP_CONNECTION`` closes the socket without an
answer (what a client sees when a connection breaks or a proxy times out). ``delay_seconds``
slows every answer (benchmarks).

    with GitHubStub() as github:
        github.fail_next(429, method="PATCH", headers={"Retry-After": "7"})
        ...
        github.comments_on("o/r", 7)  # -> list of comment bodies
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.support.http_stub import HttpStub, StubRequest, StubResponse, json_response

DROP_CONNECTION = 0  # scripted "status": close the socket without answering (a broken connection)
_ISSUE_COMMENTS = re.compile(r"^/repos/(?P<repo>[^/]+/[^/]+)/issues/(?P<number>\d+)/comments$")
_COMMENT = re.compile(r"^/repos/(?P<repo>[^/]+/[^/]+)/issues/comments/(?P<id>\d+)$")


@dataclass(frozen=True)
class ReceivedRequest:
    method: str
    path: str
    token: str | None
    body: dict[str, Any] | None
    status: int  # what the stub answered


@dataclass
class Comment:
    id: int
    repo: str
    number: int
    body: str


@dataclass
class _Rule:
    status: int
    method: str | None
    path_contains: str | None
    remaining: int
    headers: dict[str, str] = field(default_factory=dict)
    message: str = "scripted failure"
    before: Callable[[], None] | None = None  # run before answering normally (a competing writer...)

    def matches(self, method: str, path: str) -> bool:
        return (
            self.remaining > 0
            and (self.method is None or self.method == method)
            and (self.path_contains is None or self.path_contains in path)
        )


class GitHubStub(HttpStub[ReceivedRequest]):
    """``requests`` holds every request with the status answered, in arrival order."""

    def __init__(self, *, delay_seconds: float = 0.0) -> None:
        super().__init__(name="github-stub", delay_seconds=delay_seconds)
        self.accepted_tokens: set[str] | None = None
        self._comments: dict[int, Comment] = {}
        self._ids = itertools.count(1001)
        self._rules: list[_Rule] = []

    # -- scripting and inspection -------------------------------------------------------------

    def fail_next(
        self,
        status: int,
        *,
        method: str | None = None,
        path_contains: str | None = None,
        times: int = 1,
        headers: dict[str, str] | None = None,
        message: str = "scripted failure",
    ) -> None:
        with self._lock:
            self._rules.append(_Rule(status, method, path_contains, times, dict(headers or {}), message))

    def run_before_next(
        self,
        action: Callable[[], None],
        *,
        method: str | None = None,
        path_contains: str | None = None,
    ) -> None:
        """Run ``action`` just before the next matching request is answered (normally)."""
        with self._lock:
            self._rules.append(_Rule(0, method, path_contains, 1, before=action))

    def add_comment(self, repo: str, number: int, body: str) -> int:
        """A comment that exists before the test (written by someone else, or by us earlier)."""
        with self._lock:
            comment = Comment(next(self._ids), repo, number, body)
            self._comments[comment.id] = comment
            return comment.id

    def delete_comment(self, comment_id: int) -> None:
        """Emulate a person deleting the comment in GitHub's UI."""
        with self._lock:
            del self._comments[comment_id]

    def comments_on(self, repo: str, number: int) -> list[str]:
        with self._lock:
            return [
                c.body
                for c in sorted(self._comments.values(), key=lambda c: c.id)
                if c.repo == repo and c.number == number
            ]

    def comment_ids_on(self, repo: str, number: int) -> list[int]:
        with self._lock:
            return sorted(c.id for c in self._comments.values() if c.repo == repo and c.number == number)

    def received(self, method: str | None = None) -> list[ReceivedRequest]:
        return [r for r in self._recorded() if method is None or r.method == method]

    # -- HTTP ----------------------------------------------------------------------------------

    def _respond(self, request: StubRequest) -> StubResponse:
        body = json.loads(request.body) if request.body else None
        token = request.bearer_token
        status, payload, headers = self._answer(request.method, request.path, token, body)
        self._record(ReceivedRequest(request.method, request.path, token, body, status))
        if status == DROP_CONNECTION:
            return StubResponse(status, drop_connection=True)
        return json_response(status, payload, headers)

    def _answer(
        self, method: str, raw_path: str, token: str | None, body: dict[str, Any] | None
    ) -> tuple[int, Any, dict[str, str]]:
        split = urlsplit(raw_path)
        path, query = split.path, parse_qs(split.query)
        with self._lock:
            rule = next((r for r in self._rules if r.matches(method, path)), None)
            if rule is not None:
                rule.remaining -= 1
        if rule is not None and rule.before is not None:
            rule.before()  # outside the lock: the action may call back into the stub
        elif rule is not None:
            return rule.status, {"message": rule.message}, rule.headers
        with self._lock:
            if self.accepted_tokens is not None and token not in self.accepted_tokens:
                return 401, {"message": "Bad credentials"}, {}

            issue = _ISSUE_COMMENTS.match(path)
            if issue and method == "POST":
                comment = Comment(next(self._ids), issue["repo"], int(issue["number"]), str((body or {})["body"]))
                self._comments[comment.id] = comment
                return 201, self._json(comment), {}
            if issue and method == "GET":
                return self._list(issue["repo"], int(issue["number"]), path, query)
            single = _COMMENT.match(path)
            if single:
                comment_id = int(single["id"])
                existing = self._comments.get(comment_id)
                if existing is None or existing.repo != single["repo"]:
                    return 404, {"message": "Not Found"}, {}
                if method == "PATCH":
                    existing.body = str((body or {})["body"])
                    return 200, self._json(existing), {}
                if method == "DELETE":
                    del self._comments[comment_id]
                    return 204, None, {}
            return 404, {"message": "Not Found"}, {}

    def _list(self, repo: str, number: int, path: str, query: dict[str, list[str]]) -> tuple[int, Any, dict[str, str]]:
        per_page = int(query.get("per_page", ["30"])[0])
        page = int(query.get("page", ["1"])[0])
        comments = sorted(
            (c for c in self._comments.values() if c.repo == repo and c.number == number), key=lambda c: c.id
        )
        chunk = comments[(page - 1) * per_page : page * per_page]
        headers = {}
        if page * per_page < len(comments):
            headers["Link"] = f'<{self.url}{path}?per_page={per_page}&page={page + 1}>; rel="next"'
        return 200, [self._json(c) for c in chunk], headers

    def _json(self, comment: Comment) -> dict[str, Any]:
        return {
            "id": comment.id,
            "body": comment.body,
            "html_url": f"https://github.com/{comment.repo}/issues/{comment.number}#issuecomment-{comment.id}",
        }
