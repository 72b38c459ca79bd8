"""Typed view of the cdk.json context: which subsystems are on, and their optional integrations.

Every malformed value raises ConfigError with one line naming the key and what is expected;
app.py prints that line and exits 1 instead of a jsii stack trace.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

SUBSYSTEMS = ("fanout", "export_runner", "stream_recovery", "job_claim", "execution_engine")
_ARN = re.compile(r"^arn:aws[a-z-]*:[a-z0-9-]+:[a-z0-9-]*:(\d{12})?:.+$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
# The characters a Secrets Manager secret name may hold; a prefix of them, no wildcard.
_SECRET_NAME_PREFIX = re.compile(r"^[A-Za-z0-9/_+=.@-]{1,256}$")
# An SSM parameter name prefix: a hierarchy path, no wildcard (infra/constructs/execution_engine.py checks the same).
_PARAMETER_NAME_PREFIX = re.compile(r"^/[A-Za-z0-9_.-]+(?:/[A-Za-z0-9_.-]*)*$")
_S3_BUCKET_ARN = re.compile(r"^arn:aws[a-z-]*:s3:::[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class FanOutConfig:
    slack_secret_prefix: str | None = None
    github_token_secret_arn: str | None = None
    email_sender: str | None = None
    # Per-repository token secrets the function may read: names starting with this prefix.
    github_repo_secret_prefix: str | None = None
    github_api_url: str | None = None  # GitHub Enterprise Server REST base
    slack_api_url: str | None = None
    # The application's own tables (None: the stack creates that table).
    task_events_table_arn: str | None = None
    task_events_stream_arn: str | None = None
    task_table_arn: str | None = None
    repo_table_arn: str | None = None
    # Customer-managed keys of those tables, and of the prefixed Slack / per-repository secrets.
    tables_kms_key_arn: str | None = None
    secrets_kms_key_arn: str | None = None


@dataclass(frozen=True)
class ExistingDatabaseConfig:
    """Where an existing PostgreSQL cluster lives, so the exporter uses it instead of creating one."""

    secret_arn: str
    cluster_identifier: str
    endpoint: str
    port: int
    security_group_id: str
    vpc_id: str
    subnet_ids: tuple[str, ...]
    secret_kms_key_arn: str | None = None
    # With it the functions log in with IAM as their least-privilege role; without it, with the secret.
    cluster_resource_id: str | None = None


@dataclass(frozen=True)
class ExportRunnerConfig:
    # None: the stack creates an Aurora PostgreSQL Serverless v2 cluster in a VPC of its own.
    existing_database: ExistingDatabaseConfig | None = None
    database_name: str = "audit"
    # Only for a created cluster; an existing cluster keeps whatever protection it has.
    deletion_protection: bool = True
    # TLS to the database: a local PEM file with the CA of the database's certificate (the
    # functions then use verify-full), and the sslmode (require | verify-ca | verify-full;
    # default verify-full with a bundle, else require: encrypted, server unverified).
    database_ca_bundle: str | None = None
    database_sslmode: str | None = None


@dataclass(frozen=True)
class ExistingStreamRecoveryTables:
    """The application's own five StreamRecovery tables, by ARN (keys as handlers/stream_recovery/schema.py)."""

    tasks_table_arn: str
    task_events_table_arn: str
    push_configs_table_arn: str
    pending_dispatches_table_arn: str
    pending_dispatches_stream_arn: str
    deliveries_table_arn: str
    # The tables' customer-managed KMS key, when they have one (the roles get it through DynamoDB only).
    kms_key_arn: str | None = None


@dataclass(frozen=True)
class StreamRecoveryConfig:
    # None: the stack creates the five tables.
    existing_tables: ExistingStreamRecoveryTables | None = None


@dataclass(frozen=True)
class JobClaimConfig:
    # Only mail to <project>+<user>@<email_domain> is routed; None: any domain.
    email_domain: str | None = None


@dataclass(frozen=True)
class ExecutionEngineConfig:
    # SSM parameter / Secrets Manager name prefixes init may resolve job credentials from.
    credential_parameter_prefixes: tuple[str, ...] = ()
    credential_secret_prefixes: tuple[str, ...] = ()
    # Buckets init may read orders' S3 code locations from.
    code_bucket_arns: tuple[str, ...] = ()
    # SSM name prefix of the per-job SOPS age identities (<prefix><run_id>).
    sops_key_parameter_prefix: str = "/execution-engine/sops-keys/"


@dataclass(frozen=True)
class AppConfig:
    subsystems: tuple[str, ...]
    alarm_topic_arn: str | None
    fanout: FanOutConfig
    export_runner: ExportRunnerConfig
    stream_recovery: StreamRecoveryConfig = StreamRecoveryConfig()
    job_claim: JobClaimConfig = JobClaimConfig()
    execution_engine: ExecutionEngineConfig = ExecutionEngineConfig()


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
    "fanout": {
        "slack_secret_prefix",
        "github_token_secret_arn",
        "github_repo_secret_prefix",
        "email_sender",
        "github_api_url",
        "slack_api_url",
        "task_events_table_arn",
        "task_events_stream_arn",
        "task_table_arn",
        "repo_table_arn",
        "tables_kms_key_arn",
        "secrets_kms_key_arn",
    },
    "export_runner": {
        "database_secret_arn",
        "database_cluster_identifier",
        "database_endpoint",
        "database_port",
        "database_security_group_id",
        "database_secret_kms_key_arn",
        "database_name",
        "vpc_id",
        "subnet_ids",
        "deletion_protection",
        "database_cluster_resource_id",
        "database_ca_bundle",
        "database_sslmode",
    },
    "stream_recovery": {
        "tasks_table_arn",
        "task_events_table_arn",
        "push_configs_table_arn",
        "pending_dispatches_table_arn",
        "pending_dispatches_stream_arn",
        "deliveries_table_arn",
        "tables_kms_key_arn",
    },
    "job_claim": {"email_domain"},
    "execution_engine": {
        "credential_parameter_prefixes",
        "credential_secret_prefixes",
        "code_bucket_arns",
        "sops_key_parameter_prefix",
    },
}
# The keys that together name the application's own StreamRecovery tables: all of them or none.
_EXISTING_STREAM_RECOVERY_KEYS = (
    "tasks_table_arn",
    "task_events_table_arn",
    "push_configs_table_arn",
    "pending_dispatches_table_arn",
    "pending_dispatches_stream_arn",
    "deliveries_table_arn",
)
_TABLE_RESOURCE = re.compile(r"^table/[A-Za-z0-9_.-]{3,255}$")
_STREAM_RESOURCE = re.compile(r"^table/[A-Za-z0-9_.-]{3,255}/stream/[^/]+$")
# The keys that together describe an existing database: all of them or none.
_EXISTING_DATABASE_KEYS = (
    "database_secret_arn",
    "database_cluster_identifier",
    "database_endpoint",
    "database_security_group_id",
    "vpc_id",
    "subnet_ids",
)
_CLUSTER_IDENTIFIER = re.compile(r"^[a-zA-Z](?:-?[a-zA-Z0-9])*$")
_HOST_LABEL = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?"
_HOSTNAME = re.compile(rf"^(?=.{{1,253}}$){_HOST_LABEL}(?:\.{_HOST_LABEL})*$")
_DATABASE_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]{0,62}$")


def _resource_id(section: Mapping[str, Any], key: str, where: str, prefix: str) -> str | None:
    value = _optional_str(section, key, where)
    if value is not None and not re.fullmatch(rf"{prefix}-[0-9a-f]{{8,17}}", value):
        raise ConfigError(f"context {where}.{key} must be an id like {prefix}-0123456789abcdef0, got {value!r}")
    return value


def _subnet_ids(section: Mapping[str, Any], where: str) -> tuple[str, ...] | None:
    value = section.get("subnet_ids")
    if value is None or value == []:
        return None
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ConfigError(f'context {where}.subnet_ids must be a list of subnet ids, e.g. ["subnet-0123456789abcdef0"]')
    for item in value:
        if not re.fullmatch(r"subnet-[0-9a-f]{8,17}", item):
            raise ConfigError(f"context {where}.subnet_ids: {item!r} is not a subnet id like subnet-0123456789abcdef0")
    if len(set(value)) != len(value):
        raise ConfigError(f"context {where}.subnet_ids lists a subnet twice: {value}")
    return tuple(value)


def _export_runner(context: Mapping[str, Any]) -> ExportRunnerConfig:
    where = "export_runner"
    export = _section(context, where)
    deletion_protection = export.get("deletion_protection", True)
    if not isinstance(deletion_protection, bool):
        raise ConfigError(f"context {where}.deletion_protection must be true or false")
    database_name = _optional_str(export, "database_name", where) or "audit"
    if not _DATABASE_NAME.match(database_name):
        raise ConfigError(
            f"context {where}.database_name must be a PostgreSQL identifier (letters, digits, _), got {database_name!r}"
        )
    secret_arn = _optional_arn(export, "database_secret_arn", where, "secretsmanager")
    cluster_id = _optional_str(export, "database_cluster_identifier", where)
    if cluster_id is not None and (not _CLUSTER_IDENTIFIER.match(cluster_id) or len(cluster_id) > 63):
        raise ConfigError(f"context {where}.database_cluster_identifier is not a DB cluster identifier: {cluster_id!r}")
    endpoint = _optional_str(export, "database_endpoint", where)
    if endpoint is not None and not _HOSTNAME.match(endpoint):
        raise ConfigError(f"context {where}.database_endpoint must be a host name, got {endpoint!r}")
    raw_port = export.get("database_port")
    port = 5432 if raw_port is None else raw_port
    if isinstance(port, bool) or not isinstance(port, int) or not 1150 <= port <= 65535:
        raise ConfigError(f"context {where}.database_port must be an integer between 1150 and 65535, got {port!r}")
    security_group_id = _resource_id(export, "database_security_group_id", where, "sg")
    vpc_id = _resource_id(export, "vpc_id", where, "vpc")
    subnet_ids = _subnet_ids(export, where)
    key_arn = _optional_arn(export, "database_secret_kms_key_arn", where, "kms")
    resource_id = _optional_str(export, "database_cluster_resource_id", where)
    if resource_id is not None and not re.fullmatch(r"cluster-[A-Z0-9]{10,40}", resource_id):
        raise ConfigError(
            f"context {where}.database_cluster_resource_id must be a cluster resource id like "
            f"cluster-ABCDEFGHIJKLMNOPQRSTUVWXY0, got {resource_id!r}"
        )
    ca_bundle = _optional_str(export, "database_ca_bundle", where)
    sslmode = _optional_str(export, "database_sslmode", where)
    if sslmode not in (None, "require", "verify-ca", "verify-full"):
        raise ConfigError(
            f"context {where}.database_sslmode must be require, verify-ca or verify-full, got {sslmode!r}"
        )
    if secret_arn and cluster_id and endpoint and security_group_id and vpc_id and subnet_ids:
        existing = ExistingDatabaseConfig(
            secret_arn=secret_arn,
            cluster_identifier=cluster_id,
            endpoint=endpoint,
            port=port,
            security_group_id=security_group_id,
            vpc_id=vpc_id,
            subnet_ids=subnet_ids,
            secret_kms_key_arn=key_arn,
            cluster_resource_id=resource_id,
        )
        return ExportRunnerConfig(
            existing_database=existing,
            database_name=database_name,
            deletion_protection=deletion_protection,
            database_ca_bundle=ca_bundle,
            database_sslmode=sslmode,
        )
    given = [key for key in _EXISTING_DATABASE_KEYS if export.get(key) not in (None, "", [])]
    if given:
        missing = [key for key in _EXISTING_DATABASE_KEYS if key not in given]
        raise ConfigError(
            f"context {where}: an existing database needs {', '.join(_EXISTING_DATABASE_KEYS)}; "
            f"missing {', '.join(missing)} (give none of them to create a database)"
        )
    if key_arn is not None or raw_port is not None or resource_id is not None:
        raise ConfigError(
            f"context {where}: database_port, database_secret_kms_key_arn and database_cluster_resource_id describe "
            f"an existing database; give them together with {', '.join(_EXISTING_DATABASE_KEYS)}"
        )
    return ExportRunnerConfig(
        database_name=database_name,
        deletion_protection=deletion_protection,
        database_ca_bundle=ca_bundle,
        database_sslmode=sslmode,
    )


def _https_url(section: Mapping[str, Any], key: str, where: str) -> str | None:
    value = _optional_str(section, key, where)
    if value is not None and not re.fullmatch(r"https://[A-Za-z0-9.-]+(:\d+)?(/[^\s?#]*)?", value):
        raise ConfigError(f"context {where}.{key} must be an https:// base URL, got {value!r}")
    return value


def _dynamodb_arn(section: Mapping[str, Any], key: str, where: str, *, stream: bool = False) -> str | None:
    arn = _optional_arn(section, key, where, "dynamodb")
    pattern = _STREAM_RESOURCE if stream else _TABLE_RESOURCE
    if arn is not None and not pattern.match(arn.split(":", 5)[5]):
        shape = "table/<name>/stream/<label>" if stream else "table/<name>"
        raise ConfigError(f"context {where}.{key} must be a DynamoDB ARN ending in {shape}, got {arn!r}")
    return arn


def _fanout_integrations(fanout: Mapping[str, Any], channels: FanOutConfig) -> FanOutConfig:
    where = "fanout"
    github_api_url = _https_url(fanout, "github_api_url", where)
    slack_api_url = _https_url(fanout, "slack_api_url", where)
    if github_api_url is not None and channels.github_token_secret_arn is None:
        raise ConfigError(f"context {where}.github_api_url needs {where}.github_token_secret_arn")
    if slack_api_url is not None and channels.slack_secret_prefix is None:
        raise ConfigError(f"context {where}.slack_api_url needs {where}.slack_secret_prefix")
    events_arn = _dynamodb_arn(fanout, "task_events_table_arn", where)
    stream_arn = _dynamodb_arn(fanout, "task_events_stream_arn", where, stream=True)
    if (events_arn is None) != (stream_arn is None):
        raise ConfigError(
            f"context {where}: task_events_table_arn and task_events_stream_arn go together (the function reads "
            "the stream, the ARN names the table); give both or neither"
        )
    if events_arn is not None and stream_arn is not None and not stream_arn.startswith(f"{events_arn}/stream/"):
        raise ConfigError(f"context {where}.task_events_stream_arn must be a stream of task_events_table_arn")
    task_arn = _dynamodb_arn(fanout, "task_table_arn", where)
    repo_arn = _dynamodb_arn(fanout, "repo_table_arn", where)
    if repo_arn is not None and channels.github_token_secret_arn is None:
        raise ConfigError(f"context {where}.repo_table_arn serves the GitHub channel: give github_token_secret_arn too")
    tables_key = _optional_arn(fanout, "tables_kms_key_arn", where, "kms")
    if tables_key is not None and not (events_arn or task_arn or repo_arn):
        raise ConfigError(f"context {where}.tables_kms_key_arn is the key of existing tables; name at least one table")
    secrets_key = _optional_arn(fanout, "secrets_kms_key_arn", where, "kms")
    if secrets_key is not None and not (channels.slack_secret_prefix or channels.github_repo_secret_prefix):
        raise ConfigError(
            f"context {where}.secrets_kms_key_arn is the key of the prefixed secrets: set slack_secret_prefix "
            "or github_repo_secret_prefix"
        )
    return dataclasses.replace(
        channels,
        github_api_url=github_api_url,
        slack_api_url=slack_api_url,
        task_events_table_arn=events_arn,
        task_events_stream_arn=stream_arn,
        task_table_arn=task_arn,
        repo_table_arn=repo_arn,
        tables_kms_key_arn=tables_key,
        secrets_kms_key_arn=secrets_key,
    )


def _stream_recovery(context: Mapping[str, Any]) -> StreamRecoveryConfig:
    where = "stream_recovery"
    section = _section(context, where)
    arns = {
        key: _dynamodb_arn(section, key, where, stream=key.endswith("_stream_arn"))
        for key in _EXISTING_STREAM_RECOVERY_KEYS
    }
    key_arn = _optional_arn(section, "tables_kms_key_arn", where, "kms")
    given = [key for key, arn in arns.items() if arn is not None]
    if not given:
        if key_arn is not None:
            raise ConfigError(
                f"context {where}.tables_kms_key_arn is the key of existing tables; give it together with "
                f"{', '.join(_EXISTING_STREAM_RECOVERY_KEYS)}"
            )
        return StreamRecoveryConfig()
    missing = [key for key in _EXISTING_STREAM_RECOVERY_KEYS if key not in given]
    if missing:
        raise ConfigError(
            f"context {where}: existing tables need {', '.join(_EXISTING_STREAM_RECOVERY_KEYS)}; "
            f"missing {', '.join(missing)} (give none of them to create the tables)"
        )
    markers_table = arns["pending_dispatches_table_arn"] or ""
    stream_arn = arns["pending_dispatches_stream_arn"] or ""
    if not stream_arn.startswith(f"{markers_table}/stream/"):
        raise ConfigError(
            f"context {where}.pending_dispatches_stream_arn must be a stream of pending_dispatches_table_arn, "
            f"got {stream_arn!r}"
        )
    return StreamRecoveryConfig(
        existing_tables=ExistingStreamRecoveryTables(
            tasks_table_arn=arns["tasks_table_arn"] or "",
            task_events_table_arn=arns["task_events_table_arn"] or "",
            push_configs_table_arn=arns["push_configs_table_arn"] or "",
            pending_dispatches_table_arn=markers_table,
            pending_dispatches_stream_arn=stream_arn,
            deliveries_table_arn=arns["deliveries_table_arn"] or "",
            kms_key_arn=key_arn,
        )
    )


def _job_claim(context: Mapping[str, Any]) -> JobClaimConfig:
    section = _section(context, "job_claim")
    domain = _optional_str(section, "email_domain", "job_claim")
    if domain is not None and (not _HOSTNAME.match(domain) or "." not in domain):
        raise ConfigError(f"context job_claim.email_domain must be a domain name, got {domain!r}")
    return JobClaimConfig(email_domain=domain.lower() if domain else None)


def _string_list(section: Mapping[str, Any], key: str, where: str, example: str) -> tuple[str, ...]:
    value = section.get(key)
    if value is None or value == []:
        return ()
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ConfigError(f'context {where}.{key} must be a list of strings, e.g. ["{example}"]')
    if len(set(value)) != len(value):
        raise ConfigError(f"context {where}.{key} lists an entry twice: {value}")
    return tuple(value)


def _execution_engine(context: Mapping[str, Any]) -> ExecutionEngineConfig:
    where = "execution_engine"
    section = _section(context, where)
    parameters = _string_list(section, "credential_parameter_prefixes", where, "/app/credentials/")
    for prefix in parameters:
        if not _PARAMETER_NAME_PREFIX.match(prefix):
            raise ConfigError(
                f"context {where}.credential_parameter_prefixes: {prefix!r} is not an SSM parameter name prefix "
                "such as /app/credentials/ (starting with /, then letters, digits and _.-/, no wildcard)"
            )
    secrets = _string_list(section, "credential_secret_prefixes", where, "app/credentials/")
    for prefix in secrets:
        if not _SECRET_NAME_PREFIX.match(prefix):
            raise ConfigError(
                f"context {where}.credential_secret_prefixes: {prefix!r} is not a secret name prefix such as "
                "app/credentials/ (letters, digits and /_+=.@-, no wildcard)"
            )
    buckets = _string_list(section, "code_bucket_arns", where, "arn:aws:s3:::my-code-bucket")
    for arn in buckets:
        if not _S3_BUCKET_ARN.match(arn):
            raise ConfigError(
                f"context {where}.code_bucket_arns: {arn!r} is not an S3 bucket ARN such as "
                "arn:aws:s3:::my-code-bucket (the bucket only, no key)"
            )
    default_prefix = ExecutionEngineConfig.sops_key_parameter_prefix
    sops_prefix = _optional_str(section, "sops_key_parameter_prefix", where) or default_prefix
    if not _PARAMETER_NAME_PREFIX.match(sops_prefix) or not sops_prefix.endswith("/"):
        raise ConfigError(
            f"context {where}.sops_key_parameter_prefix must be an SSM parameter path that starts and ends with /, "
            f"such as /execution-engine/sops-keys/, got {sops_prefix!r}"
        )
    return ExecutionEngineConfig(
        credential_parameter_prefixes=parameters,
        credential_secret_prefixes=secrets,
        code_bucket_arns=buckets,
        sops_key_parameter_prefix=sops_prefix,
    )


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
    alarm_topic_arn = _optional_arn(context, "alarm_topic_arn", "", "sns")
    github_token_secret_arn = _optional_arn(fanout, "github_token_secret_arn", "fanout", "secretsmanager")
    github_repo_secret_prefix = _optional_str(fanout, "github_repo_secret_prefix", "fanout")
    if github_repo_secret_prefix is not None:
        if not _SECRET_NAME_PREFIX.match(github_repo_secret_prefix):
            raise ConfigError(
                "context fanout.github_repo_secret_prefix must be a secret name prefix such as bgagent/github/ "
                f"(letters, digits and /_+=.@-, no wildcard), got {github_repo_secret_prefix!r}"
            )
        if github_token_secret_arn is None:
            raise ConfigError(
                "context fanout.github_repo_secret_prefix needs fanout.github_token_secret_arn "
                "(per-repository tokens are part of the GitHub channel)"
            )
    slack_secret_prefix = _optional_str(fanout, "slack_secret_prefix", "fanout")
    channels = FanOutConfig(
        slack_secret_prefix=slack_secret_prefix,
        github_token_secret_arn=github_token_secret_arn,
        email_sender=email_sender,
        github_repo_secret_prefix=github_repo_secret_prefix,
    )
    fanout_config = _fanout_integrations(fanout, channels)
    export_runner_config = _export_runner(context)
    if "fanout" in raw_subsystems and channels == FanOutConfig():
        raise ConfigError(
            "context fanout: set at least one of slack_secret_prefix, github_token_secret_arn, email_sender "
            "(or leave fanout out of subsystems)"
        )
    return AppConfig(
        subsystems=tuple(dict.fromkeys(raw_subsystems)),
        alarm_topic_arn=alarm_topic_arn,
        fanout=fanout_config,
        export_runner=export_runner_config,
        stream_recovery=_stream_recovery(context),
        job_claim=_job_claim(context),
        execution_engine=_execution_engine(context),
    )
