"""Postgres connections from the deployment's settings (psycopg 3).

Two ways to reach the database:
- ``DATABASE_URL``: a libpq URL, for local runs and tests;
- ``DATABASE_SECRET_ARN``: a Secrets Manager secret holding JSON with ``username`` and
  ``password`` and optionally ``host``, ``port`` and ``dbname`` (the shape RDS writes).
  ``DATABASE_HOST`` and ``DATABASE_NAME`` override the secret's host and dbname when set (the
  construct points them at the cluster endpoint). The secret is fetched once per container;
  after a password rotation the first failed login fetches it once more.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

from handlers.common.aws import client
from handlers.common.config import ConfigurationError, EnvReader

CONNECT_TIMEOUT_SECONDS = 10
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


@dataclass(frozen=True)
class DatabaseSettings:
    url: str | None
    secret_arn: str | None
    host: str | None
    name: str | None
    sslmode: str


def read_database_settings(env: EnvReader) -> DatabaseSettings:
    """Read the database variables into ``env`` (the caller runs ``env.check()``)."""
    url = env.optional("DATABASE_URL")
    secret_arn = env.optional("DATABASE_SECRET_ARN")
    if not url and not secret_arn:
        env.require("DATABASE_SECRET_ARN")  # records the problem: one of the two is required
    sslmode = env.parsed("DATABASE_SSLMODE", _ssl_mode) or "require"
    return DatabaseSettings(
        url=url,
        secret_arn=secret_arn,
        host=env.optional("DATABASE_HOST"),
        name=env.optional("DATABASE_NAME"),
        sslmode=sslmode,
    )


def _ssl_mode(raw: str) -> str:
    if raw not in SSL_MODES:
        raise ValueError(f"must be one of {', '.join(SSL_MODES)}, got {raw!r}")
    return raw


class Database:
    """Opens connections; holds the secret's login for the life of the container."""

    def __init__(self, settings: DatabaseSettings, secrets_client: Callable[[], Any] | None = None) -> None:
        self._settings = settings
        self._secrets_client = secrets_client or (lambda: client("secretsmanager"))
        self._lock = threading.Lock()
        self._secret_conninfo: str | None = None

    def connect(self, *, application_name: str, autocommit: bool = True) -> psycopg.Connection[Any]:
        options: dict[str, str | int] = {
            "application_name": application_name[:63],
            "connect_timeout": CONNECT_TIMEOUT_SECONDS,
            "client_encoding": "UTF8",
        }
        if self._settings.url:
            return psycopg.connect(make_conninfo(self._settings.url, **options), autocommit=autocommit)
        conninfo = self._conninfo_from_secret(refresh=False)
        try:
            return psycopg.connect(make_conninfo(conninfo, **options), autocommit=autocommit)
        except psycopg.OperationalError:
            # A rotated password makes the cached login fail; fetch the secret once more and
            # retry only if it changed (anything else is a real outage, raised as is).
            refreshed = self._conninfo_from_secret(refresh=True)
            if refreshed == conninfo:
                raise
            return psycopg.connect(make_conninfo(refreshed, **options), autocommit=autocommit)

    def _conninfo_from_secret(self, *, refresh: bool) -> str:
        with self._lock:
            if self._secret_conninfo is None or refresh:
                self._secret_conninfo = self._fetch_secret_conninfo()
            return self._secret_conninfo

    def _fetch_secret_conninfo(self) -> str:
        arn = self._settings.secret_arn
        response = self._secrets_client().get_secret_value(SecretId=arn)
        try:
            secret = json.loads(response["SecretString"])
            user, password = secret["username"], secret["password"]
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigurationError(
                f"DATABASE_SECRET_ARN {arn}: secret must be JSON with username and password ({exc})"
            ) from exc
        host = self._settings.host or secret.get("host")
        if not host:
            raise ConfigurationError(f"no database host: set DATABASE_HOST or add host to secret {arn}")
        return make_conninfo(
            host=host,
            port=str(secret.get("port") or 5432),
            dbname=self._settings.name or secret.get("dbname") or "postgres",
            user=user,
            password=password,
            sslmode=self._settings.sslmode,
        )
