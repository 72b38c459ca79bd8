"""FanOutConsumer settings, read once at cold start.

A channel is configured when its deployment variable is set -- the construct sets it only
when the matching prop is given:

- Slack:  ``SLACK_SECRET_PREFIX`` (bot token of team T in the secret ``<prefix>T``);
  ``SLACK_API_URL`` optional (slack-sdk's default otherwise).
- GitHub: ``GITHUB_TOKEN_SECRET_ARN`` (the stack-wide token); ``REPO_TABLE_NAME`` optional
  (per-repo ``github_token_secret_arn`` overrides); ``GITHUB_REPO_SECRET_ARN_PREFIX`` optional
  (the ARN prefix, ``arn:<partition>:secretsmanager:<region>:<account>:secret:<prefix>``, of the
  per-repo secrets the role may read: the construct's ``github_repo_secret_prefix``; without it
  a repo row naming a secret is refused); ``GITHUB_API_URL`` optional (default https://api.github.com).
- Email:  ``EMAIL_SENDER`` (a verified SES identity).

``TASK_TABLE_NAME`` is required as soon as any channel is configured (every dispatcher reads
the task row and writes its markers there). A deployment with *no* channel configured fails
the cold start: such a consumer would acknowledge -- i.e. silently drop -- every event.

``FANOUT_MAX_CONCURRENCY`` (optional, default 32, 1..64): how many tasks are processed at once.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlparse

from aws_lambda_powertools import Logger

from handlers.common.config import ConfigurationError, EnvReader
from handlers.fanout.routing import CHANNELS, EMAIL, GITHUB, SLACK

SERVICE = "fanout"
DEFAULT_GITHUB_API_URL = "https://api.github.com"
DEFAULT_MAX_CONCURRENCY = 32  # tasks handled at once; the work is I/O-bound (HTTP and DynamoDB round trips)


def child_logger() -> Logger:
    """A logger for a fan-out module; its lines go through the handler's Logger (same JSON, same keys)."""
    return Logger(service=os.environ.get("POWERTOOLS_SERVICE_NAME", SERVICE), child=True)


@dataclass(frozen=True)
class SlackSettings:
    secret_prefix: str
    api_url: str | None


@dataclass(frozen=True)
class GitHubSettings:
    token_secret_arn: str
    repo_table_name: str | None
    api_url: str
    repo_secret_arn_prefix: str | None = None


@dataclass(frozen=True)
class EmailSettings:
    sender: str


@dataclass(frozen=True)
class FanOutSettings:
    task_table_name: str
    slack: SlackSettings | None
    github: GitHubSettings | None
    email: EmailSettings | None
    max_concurrency: int

    @property
    def configured_channels(self) -> tuple[str, ...]:
        enabled = {SLACK: self.slack, GITHUB: self.github, EMAIL: self.email}
        return tuple(channel for channel in CHANNELS if enabled[channel] is not None)


def load_settings(environ: Mapping[str, str] | None = None) -> FanOutSettings:
    env = EnvReader(environ)
    slack_prefix = env.optional("SLACK_SECRET_PREFIX")
    github_secret = env.optional("GITHUB_TOKEN_SECRET_ARN")
    email_configured = env.optional("EMAIL_SENDER") is not None
    if not (slack_prefix or github_secret or email_configured):
        raise ConfigurationError(
            "fanout: no channel is configured (set SLACK_SECRET_PREFIX, GITHUB_TOKEN_SECRET_ARN or "
            "EMAIL_SENDER); a consumer without channels would acknowledge and drop every event"
        )
    task_table = env.require("TASK_TABLE_NAME")

    slack = SlackSettings(slack_prefix, env.parsed("SLACK_API_URL", _http_url)) if slack_prefix else None
    github = None
    if github_secret:
        api_url = env.parsed("GITHUB_API_URL", _http_url) or DEFAULT_GITHUB_API_URL
        github = GitHubSettings(
            github_secret,
            env.optional("REPO_TABLE_NAME"),
            api_url.rstrip("/"),
            env.parsed("GITHUB_REPO_SECRET_ARN_PREFIX", _secret_arn_prefix),
        )
    email_sender = env.parsed("EMAIL_SENDER", _email_address)
    email = EmailSettings(email_sender) if email_sender else None
    max_concurrency = env.integer("FANOUT_MAX_CONCURRENCY", DEFAULT_MAX_CONCURRENCY, minimum=1, maximum=64)
    env.check("fanout")
    return FanOutSettings(task_table, slack, github, email, max_concurrency)


def _http_url(raw: str) -> str:
    parsed = urlparse(raw)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError(f"expected an http(s) URL, got {raw!r}")
    return raw


_SECRET_ARN_PREFIX = re.compile(r"^arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:\d{12}:secret:[A-Za-z0-9/_+=.@-]+$")


def _secret_arn_prefix(raw: str) -> str:
    if not _SECRET_ARN_PREFIX.match(raw):
        raise ValueError(
            f"expected a secret ARN prefix like arn:aws:secretsmanager:<region>:<account>:secret:bgagent/github/, "
            f"got {raw!r}"
        )
    return raw


def _email_address(raw: str) -> str:
    # SES accepts "Name <addr@domain>" too; only the obvious mistakes are caught here.
    if "@" not in raw:
        raise ValueError(f"expected an email address, got {raw!r}")
    return raw
