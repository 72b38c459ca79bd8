"""Typed view of the cdk.json context: which subsystems are on, and their optional integrations.

Every malformed value raises ConfigError with one line naming the key and what is expected;
app.py prints that line and exits 1 instead of a jsii stack trace.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

SUBSYSTEMS = ("fanout", "export_runner")
_ARN = re.compile(r"^arn:aws[a-z-]*:[a-z0-9-]+:[a-z0-9-]*:(\d{12})?:.+$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class FanOutConfig:
    slack_secret_prefix: str | None = None
    github_token_secret_arn: str | None = None
    email_sender: str | None = None


@dataclass(frozen=True)
class ExportRunnerConfig:
    database_secret_arn: str | None = None
    database_cluster_identifier: str | None = None
    deletion_protection: bool = True


@dataclass(frozen=True)
class AppConfig:
    subsystems: tuple[str, ...]
    alarm_topic_arn: str | None
    fanout: FanOutConfig
    export_runner: ExportRunnerConfig


def _optional_str(section: Mapping[str, Any], key: str, where: str) -> str | None:
    value = section.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ConfigError(f"context {where}.{key} must be a string, got {type(value).__name__}")
    return value


def _optional_arn(section: Mapping[str, Any], key: str, where: str, service: str) -> str | None:
    value = _optional_str(section, key, where)
    if value is not None and (not _ARN.match(value) or value.split(":")[2] != service):
        name = f"{where}.{key}" if where else key
        raise ConfigError(f"context {name} must be an ARN of {service}, got {value!r}")
    return value


def _section(context: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = context.get(key) or {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"context {key} must be an object, got {type(value).__name__}")
    unknown = sorted(set(value) - _KNOWN_KEYS[key])
    if unknown:
        raise ConfigError(f"context {key} has unknown keys {unknown}; known: {sorted(_KNOWN_KEYS[key])}")
    return value


_KNOWN_KEYS = {
    "fanout": {"slack_secret_prefix", "github_token_secret_arn", "email_sender"},
    "export_runner": {"database_secret_arn", "database_cluster_identifier", "deletion_protection"},
}


def load_config(context: Mapping[str, Any]) -> AppConfig:
    raw_subsystems = context.get("subsystems", list(SUBSYSTEMS))
    if isinstance(raw_subsystems, str):
        raw_subsystems = [part.strip() for part in raw_subsystems.split(",") if part.strip()]
    if not isinstance(raw_subsystems, list) or not all(isinstance(s, str) for s in raw_subsystems):
        raise ConfigError('context subsystems must be a list of names, e.g. ["fanout"]')
    unknown = [name for name in raw_subsystems if name not in SUBSYSTEMS]
    if unknown:
        raise ConfigError(f"context subsystems: unknown subsystem {unknown[0]!r}; known: {', '.join(SUBSYSTEMS)}")

    fanout = _section(context, "fanout")
    email_sender = _optional_str(fanout, "email_sender", "fanout")
    if email_sender is not None and not _EMAIL.match(email_sender):
        raise ConfigError(f"context fanout.email_sender must be an email address, got {email_sender!r}")
    export = _section(context, "export_runner")
    deletion_protection = export.get("deletion_protection", True)
    if not isinstance(deletion_protection, bool):
        raise ConfigError("context export_runner.deletion_protection must be true or false")
    secret_arn = _optional_arn(export, "database_secret_arn", "export_runner", "secretsmanager")
    cluster_id = _optional_str(export, "database_cluster_identifier", "export_runner")
    if (secret_arn is None) != (cluster_id is None):
        raise ConfigError(
            "context export_runner: give both database_secret_arn and database_cluster_identifier "
            "(use an existing database) or neither (create one)"
        )
    return AppConfig(
        subsystems=tuple(dict.fromkeys(raw_subsystems)),
        alarm_topic_arn=_optional_arn(context, "alarm_topic_arn", "", "sns"),
        fanout=FanOutConfig(
            slack_secret_prefix=_optional_str(fanout, "slack_secret_prefix", "fanout"),
            github_token_secret_arn=_optional_arn(fanout, "github_token_secret_arn", "fanout", "secretsmanager"),
            email_sender=email_sender,
        ),
        export_runner=ExportRunnerConfig(
            database_secret_arn=secret_arn,
            database_cluster_identifier=cluster_id,
            deletion_protection=deletion_protection,
        ),
    )
