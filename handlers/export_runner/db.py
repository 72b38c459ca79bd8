"""Postgres connections from the deployment's settings (psycopg 3).

How to log in, ``DATABASE_AUTH`` (each a supported mode):
- ``iam`` (what the construct deploys): ``DATABASE_HOST``, ``DATABASE_PORT`` (default 5432),
  ``DATABASE_NAME`` and ``DATABASE_USER`` (the function's least-privilege role, e.g.
  ``export_runner``); the password is an IAM authentication token from RDS
  ``generate_db_auth_token``, signed locally with the function's credentials (it needs
  ``rds-db:connect`` on exactly that user), fresh for every connection (a token lives 15
  minutes). TLS is mandatory: ``DATABASE_SSLMODE`` may be ``require``, ``verify-ca`` or
  ``verify-full``.
- ``secret``: ``DATABASE_SECRET_ARN``, a Secrets Manager secret holding JSON with ``username``
  and ``password`` and optionally ``host``, ``port`` and ``dbname`` (the shape RDS writes), for
  an existing database without IAM authentication and for the admin login (migrations, the
  operator CLI). ``DATABASE_HOST`` and ``DATABASE_NAME`` override the secret's host and dbname.
  The secret is fetched once per container; after a password rotation the first failed login
  fetches it once more.
- ``url``: ``DATABASE_URL``, a libpq URL that carries everything (user, password, sslmode), for
  local runs against a local PostgreSQL (the tests, demos, benchmarks).
When ``DATABASE_AUTH`` is not set, ``url`` is used if DATABASE_URL is set, else ``secret``.

TLS (``iam`` and ``secret``): ``DATABASE_SSLMODE`` defaults to ``verify-full``: the server's
certificate must chain to the CA bundle in ``DATABASE_CA_BUNDLE`` (a PEM file, e.g. the RDS
global bundle) and name the host. ``require`` (encrypted, server not verified) only when set
explicitly; ``disable``/``allow``/``prefer`` only with ``secret`` (a local database).

Every connection runs its transactions at READ COMMITTED whatever the database's default: the
chain lock and the rate limit serialise their writers only there (migration 0003).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

from handlers.common.aws import client
from handlers.common.config import ConfigurationError, EnvReader

CONNECT_TIMEOUT_SECONDS = 10
AUTH_MODES = ("iam", "secret", "url")
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
TLS_SSL_MODES = ("require", "verify-ca", "verify-full")
VERIFYING_SSL_MODES = ("verify-ca", "verify-full")
DEFAULT_SSL_MODE = "verify-full"
DEFAULT_PORT = 5432
EITHER_LOGIN = "DATABASE_URL or DATABASE_SECRET_ARN"


@dataclass(frozen=True)
class DatabaseSettings:
    url: str | None
    secret_arn: str | None
    host: str | None
    name: str | None
    sslmode: str
    auth: str = ""  # "" -> url when url is set, else secret
    user: str | None = None
    port: int = DEFAULT_PORT
    ca_bundle: str | None = None

    @property
    def auth_mode(self) -> str:
        return self.auth or ("url" if self.url else "secret")


def read_database_settings(env: EnvReader) -> DatabaseSettings:
    """Read the database variables into ``env`` (the caller runs ``env.check()``)."""
    auth = env.parsed("DATABASE_AUTH", _choice("DATABASE_AUTH", AUTH_MODES)) or ""
    url = env.optional("DATABASE_URL")
    secret_arn = env.optional("DATABASE_SECRET_ARN")
    host = env.optional("DATABASE_HOST")
    name = env.optional("DATABASE_NAME")
    user = env.optional("DATABASE_USER")
    port = env.integer("DATABASE_PORT", DEFAULT_PORT, minimum=1, maximum=65535)
    if auth == "iam":
        host = env.require("DATABASE_HOST") or None
        name = env.require("DATABASE_NAME") or None
        user = env.require("DATABASE_USER") or None
    elif auth == "url" or (not auth and url):
        url = env.require("DATABASE_URL") or None
    elif auth == "secret":
        secret_arn = env.require("DATABASE_SECRET_ARN") or None
    elif not secret_arn:
        # Neither DATABASE_AUTH nor a login: either one would do, so the problem names both (a
        # name no variable has, so it reads as "not set").
        env.require(EITHER_LOGIN)
    sslmode = env.parsed("DATABASE_SSLMODE", _ssl_mode(auth)) or DEFAULT_SSL_MODE
    ca_bundle = env.parsed("DATABASE_CA_BUNDLE", _readable_file)
    mode = auth or ("url" if url else "secret")
    configured = mode == "iam" or (mode == "secret" and secret_arn)
    if configured and sslmode in VERIFYING_SSL_MODES and ca_bundle is None:
        # verify-full (the default) needs the CA that signed the server's certificate.
        env.require("DATABASE_CA_BUNDLE")
    return DatabaseSettings(
        url=url,
        secret_arn=secret_arn,
        host=host,
        name=name,
        sslmode=sslmode,
        auth=auth,
        user=user,
        port=port,
        ca_bundle=ca_bundle,
    )


def _choice(name: str, choices: tuple[str, ...]) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if raw not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, got {raw!r}")
        return raw

    return parse


def _ssl_mode(auth: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if raw not in SSL_MODES:
            raise ValueError(f"must be one of {', '.join(SSL_MODES)}, got {raw!r}")
        if auth == "iam" and raw not in TLS_SSL_MODES:
            raise ValueError(f"IAM authentication needs TLS: one of {', '.join(TLS_SSL_MODES)}, got {raw!r}")
        return raw

    return parse


def _readable_file(raw: str) -> str:
    if not os.path.isfile(raw) or not os.access(raw, os.R_OK):
        raise ValueError(f"no readable CA bundle file at {raw!r}")
    return raw


def _open(conninfo: str, autocommit: bool) -> psycopg.Connection[Any]:
    conn = psycopg.connect(conninfo, autocommit=autocommit)
    # Every transaction psycopg starts says READ COMMITTED, whatever the database's or role's
    # default_transaction_isolation: the chain lock and the rate limit serialise only there.
    conn.isolation_level = psycopg.IsolationLevel.READ_COMMITTED
    return conn


class Database:
    """Opens connections; holds the secret's login for the life of the container."""

    def __init__(
        self,
        settings: DatabaseSettings,
        secrets_client: Callable[[], Any] | None = None,
        rds_client: Callable[[], Any] | None = None,
    ) -> None:
        self._settings = settings
        self._secrets_client = secrets_client or (lambda: client("secretsmanager"))
        self._rds_client = rds_client or (lambda: client("rds"))
        self._lock = threading.Lock()
        self._secret_conninfo: str | None = None

    def connect(self, *, application_name: str, autocommit: bool = True) -> psycopg.Connection[Any]:
        options: dict[str, str | int] = {
            "application_name": application_name[:63],
            "connect_timeout": CONNECT_TIMEOUT_SECONDS,
            "client_encoding": "UTF8",
            # Also single statements outside a transaction block (autocommit) run at READ
            # COMMITTED, whatever the database's default.
            "options": r"-c default_transaction_isolation=read\ committed",
        }
        mode = self._settings.auth_mode
        if mode == "url":
            assert self._settings.url is not None
            return _open(make_conninfo(self._settings.url, **options), autocommit)
        if mode == "iam":
            return _open(make_conninfo(self._iam_conninfo(), **options), autocommit)
        conninfo = self._conninfo_from_secret(refresh=False)
        try:
            return _open(make_conninfo(conninfo, **options), autocommit)
        except psycopg.OperationalError:
            # A rotated password makes the cached login fail; fetch the secret once more and
            # retry only if it changed (anything else is a real outage, raised as is).
            refreshed = self._conninfo_from_secret(refresh=True)
            if refreshed == conninfo:
                raise
            return _open(make_conninfo(refreshed, **options), autocommit)

    def _tls(self) -> dict[str, str]:
        tls = {"sslmode": self._settings.sslmode}
        if self._settings.ca_bundle:
            tls["sslrootcert"] = self._settings.ca_bundle
        return tls

    def _iam_conninfo(self) -> str:
        settings = self._settings
        assert settings.host and settings.user and settings.name
        token = self._rds_client().generate_db_auth_token(
            DBHostname=settings.host, Port=settings.port, DBUsername=settings.user
        )
        return make_conninfo(
            host=settings.host,
            port=str(settings.port),
            dbname=settings.name,
            user=settings.user,
            password=token,
            **self._tls(),
        )

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
            **self._tls(),
        )
