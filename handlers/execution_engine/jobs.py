"""The job and order model of POST /init (and POST /ssm), and its validation.

Pure logic, no I/O: this decides what a submitted job *means*; init resolves credentials,
packages code and writes the orders.

Request body (our choice; the spec only says "base64 JSON"): a JSON object with exactly one
field, ``{"job_parameters_b64": "<standard base64, padded, of the UTF-8 job JSON>"}``. Base64
keeps the job opaque to API Gateway and to anything that logs or re-encodes bodies on the way.
``parse_job_request`` decodes it, ``validate_job_document`` validates an already-decoded job.

Errors: every problem of the request is collected -- every field of the job, every field of
every order, then the rules across orders -- and raised together as ``JobValidationError``
(``.errors``, one human sentence each), which init turns into a 400 with all of them. A body that
is not JSON, not base64, not UTF-8, nested too deep, or has a value of the wrong type anywhere
is such an error too, never another exception: a 500 on input is a defect. Messages about an
order start with ``orders[<0-based index>] (<its name>)``; a value is quoted as JSON, cut short,
and an env var's value is never quoted at all.

The job (defaults in brackets): ``username`` (required; ``[A-Za-z0-9][A-Za-z0-9._@-]{0,63}``,
because it becomes the ``<user>`` of flow_id ``<user>:<trace_id>-<label>``), ``flow_label``
[exec] (``[A-Za-z0-9._-]{1,64}``, the same reason), ``git_repo``, ``commit_hash`` (hex, 7..40),
``git_token_location``, ``git_ssh_key_location`` (credential references, below), ``git_provider``
[github] (the only provider), ``job_timeout`` [3600] (seconds, > 0, at least the longest order
timeout), ``presign_expiry`` [7200] (seconds the callback URLs stay valid: at least the longest
order timeout + 300, so a worker that uses its whole timeout can still report; at most 7 days,
the SigV4 limit), ``pr_number`` / ``issue_number`` (optional positive integers), ``orders``
(non-empty, at most 9999: the order numbers are four digits).

An order: ``cmds`` (required, non-empty list of non-empty strings), ``timeout`` (required,
seconds, > 0), ``execution_target`` (lambda | codebuild | ssm, and one this endpoint accepts:
SSM orders go to POST /ssm), ``order_name`` [order-NNNN, its 1-based number] (``[A-Za-z0-9._-]``,
at most 64, unique in the job), ``git_repo``, ``commit_hash``, ``git_folder`` (a relative path
inside the repository, no ``..``), ``s3_location`` (``s3://bucket/key`` of the code archive),
``env_vars`` (names ``[A-Za-z_][A-Za-z0-9_]*``, string values), ``ssm_paths`` (SSM parameter
names, ``/a/b``), ``secret_manager_paths`` (secret names or ARNs), ``queue_id``,
``dependencies`` (order names), ``must_succeed`` [true], and for SSM orders ``ssm_targets``
(instance ids, or ``{"Key": ..., "Values": [...]}`` targets as SendCommand takes them; required
for an SSM order, refused on the others) and ``ssm_document_name``.
Code source: an order's own ``s3_location``, else a git repository at a commit -- the order's
``git_repo`` / ``commit_hash``, each falling back to the job's. An order with neither is refused,
and one that names both its own ``s3_location`` and its own ``git_repo`` is ambiguous.
Unknown fields are refused (a misspelt ``dependancies`` must not silently mean "no dependencies");
a field given as JSON null is a field not given (its default, or "required").

Credential references (``parse_credential_reference``): ``aws:::ssm:<parameter name>`` -- a
fully qualified SSM parameter name, ``/`` then ``/``-separated segments of ``[A-Za-z0-9_.-]`` --
or ``aws:::secretsmanager:<secret name or ARN>``. Which parameters and secrets a deployment lets
a job resolve is init's check (its prefix settings), not this module's.

Dependency cycles are named with their path in execution order: ``build -> test -> deploy ->
build`` means test waits for build, deploy for test, and build for deploy. One cycle is named
per strongly connected group of orders, starting from its first order in the list.

Secrets: the model holds references only (credential locations, SSM parameter names, secret
names), never a resolved value, so a Job or an Order may be logged. ``env_vars`` are literal
values a caller may still have put a token in: they are kept out of ``repr`` and out of messages.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from handlers.execution_engine import schema

REQUEST_FIELD = "job_parameters_b64"
DEFAULT_FLOW_LABEL = "exec"
DEFAULT_JOB_TIMEOUT = 3600
DEFAULT_PRESIGN_EXPIRY = 7200
PRESIGN_MARGIN_SECONDS = 300
MAX_PRESIGN_EXPIRY = 7 * 24 * 3600
GIT_PROVIDERS = frozenset({"github"})
DEFAULT_GIT_PROVIDER = "github"
MAX_ORDERS = 9999
CREDENTIAL_PREFIX = "aws:::"

_USERNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
_LABEL = re.compile(r"[A-Za-z0-9._-]{1,64}")
_ORDER_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
_COMMIT = re.compile(r"[0-9a-fA-F]{7,40}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SSM_PARAMETER = re.compile(r"(/[A-Za-z0-9_.-]+)+")
_SECRET_NAME = re.compile(r"[A-Za-z0-9/_+=.@-]{1,512}")
_SECRET_ARN = re.compile(r"arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:[0-9]{12}:secret:[A-Za-z0-9/_+=.@-]{1,512}")
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_INSTANCE_ID = re.compile(r"(i|mi)-[0-9a-f]{8,17}")
_SSM_DOCUMENT = re.compile(r"[A-Za-z0-9_.:/-]{3,256}")
_GIT_SHORTHAND = re.compile(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+")
_GIT_SCP = re.compile(r"[A-Za-z0-9_.-]+@[A-Za-z0-9.-]+:[^\s:][^\s]*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SHOWN_CHARS = 60
MAX_SSM_PARAMETER_CHARS = 2048
MAX_TEXT_CHARS = 2048
MAX_S3_KEY_BYTES = 1024

JOB_FIELDS = frozenset(
    {
        "git_repo",
        "git_token_location",
        "username",
        "commit_hash",
        "flow_label",
        "job_timeout",
        "presign_expiry",
        "pr_number",
        "issue_number",
        "git_provider",
        "git_ssh_key_location",
        "orders",
    }
)
ORDER_FIELDS = frozenset(
    {
        "cmds",
        "timeout",
        "execution_target",
        "order_name",
        "git_repo",
        "git_folder",
        "commit_hash",
        "env_vars",
        "ssm_paths",
        "secret_manager_paths",
        "queue_id",
        "dependencies",
        "must_succeed",
        "s3_location",
        "ssm_targets",
        "ssm_document_name",
    }
)


class JobValidationError(ValueError):
    """The request is not a valid job; ``errors`` holds every problem found, one sentence each."""

    def __init__(self, errors: Sequence[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = list(errors)


class CredentialReferenceError(ValueError):
    """A credential reference that does not follow the ``aws:::<service>:<name>`` syntax."""


class CredentialService(StrEnum):
    SSM = "ssm"
    SECRETS_MANAGER = "secretsmanager"


@dataclass(frozen=True)
class CredentialReference:
    """Where a credential lives (an SSM parameter name, or a secret name / ARN); never its value."""

    service: CredentialService
    name: str

    def __str__(self) -> str:
        return f"{CREDENTIAL_PREFIX}{self.service.value}:{self.name}"


@dataclass(frozen=True)
class S3Location:
    bucket: str
    key: str

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


@dataclass(frozen=True)
class GitSource:
    """An order's code from git: the repository (order's, else the job's) at the commit."""

    repo: str
    commit_hash: str
    folder: str | None = None


CodeSource = S3Location | GitSource


@dataclass(frozen=True)
class SsmTarget:
    """One SendCommand target: ``InstanceIds`` with ids, or a tag / resource-group key."""

    key: str
    values: tuple[str, ...]


@dataclass(frozen=True)
class Order:
    num: str
    name: str
    cmds: tuple[str, ...]
    timeout: int
    execution_target: str
    source: CodeSource
    dependencies: tuple[str, ...] = ()
    dependency_nums: tuple[str, ...] = ()
    must_succeed: bool = True
    git_repo: str | None = None
    git_folder: str | None = None
    commit_hash: str | None = None
    s3_location: S3Location | None = None
    # Literal values a caller may have put a token in: never in a repr (or a log line).
    env_vars: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}), repr=False)
    ssm_paths: tuple[str, ...] = ()
    secret_manager_paths: tuple[str, ...] = ()
    queue_id: str | None = None
    ssm_targets: tuple[SsmTarget, ...] = ()
    ssm_document_name: str | None = None


@dataclass(frozen=True)
class Job:
    username: str
    orders: tuple[Order, ...]
    flow_label: str = DEFAULT_FLOW_LABEL
    job_timeout: int = DEFAULT_JOB_TIMEOUT
    presign_expiry: int = DEFAULT_PRESIGN_EXPIRY
    git_provider: str = DEFAULT_GIT_PROVIDER
    git_repo: str | None = None
    commit_hash: str | None = None
    git_token_location: CredentialReference | None = None
    git_ssh_key_location: CredentialReference | None = None
    pr_number: int | None = None
    issue_number: int | None = None

    def flow_id(self, trace_id: str) -> str:
        return f"{self.username}:{trace_id}-{self.flow_label}"

    @property
    def max_order_timeout(self) -> int:
        return max(order.timeout for order in self.orders)


# -- small helpers --------------------------------------------------------------------------


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _show(value: object) -> str:
    """The value as JSON, cut to a readable length (the caller sees its own input)."""
    try:
        text = json.dumps(value, ensure_ascii=True)
    except (TypeError, ValueError):
        return _json_type(value)
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 3] + "..."


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_text(value: object) -> bool:
    """A str that encodes to UTF-8 (JSON may carry lone surrogates, which boto3 cannot send)."""
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _is_plain(value: object, limit: int = MAX_TEXT_CHARS) -> bool:
    """Non-empty single-line text without control characters."""
    return _is_text(value) and 0 < len(str(value)) <= limit and not _CONTROL.search(str(value))


def _full(pattern: re.Pattern[str], value: object) -> bool:
    return isinstance(value, str) and pattern.fullmatch(value) is not None


def _is_commit(value: object) -> bool:
    return _full(_COMMIT, value)


class _Problems:
    """Collects messages; ``where`` is the order label, or "" for the job and the request."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def add(self, where: str, message: str) -> None:
        self.messages.append(f"{where}: {message}" if where else message)


# -- credential references, S3 locations, names -----------------------------------------------


def is_ssm_parameter_name(value: object) -> bool:
    return _full(_SSM_PARAMETER, value) and len(str(value)) <= MAX_SSM_PARAMETER_CHARS


def is_secret_reference(value: object) -> bool:
    """A Secrets Manager secret name or ARN."""
    if not isinstance(value, str):
        return False
    if value.startswith("arn:"):
        return _full(_SECRET_ARN, value)
    return _full(_SECRET_NAME, value)


def parse_credential_reference(value: str) -> CredentialReference:
    """``aws:::ssm:/a/b`` or ``aws:::secretsmanager:<name or ARN>``; else CredentialReferenceError."""
    if not value.startswith(CREDENTIAL_PREFIX):
        # Not quoted: a caller who got this wrong may have pasted the credential itself here.
        raise CredentialReferenceError(
            "must be aws:::ssm:/<parameter> or aws:::secretsmanager:<secret name or ARN>, "
            f"got {len(value)} characters that do not start with {CREDENTIAL_PREFIX}"
        )
    service_name, separator, name = value[len(CREDENTIAL_PREFIX) :].partition(":")
    try:
        service = CredentialService(service_name)
    except ValueError:
        raise CredentialReferenceError(
            f"names an unknown service {_show(service_name)} (ssm or secretsmanager), got {_show(value)}"
        ) from None
    if not separator or not name:
        raise CredentialReferenceError(f"names no {service.value} location, got {_show(value)}")
    if service is CredentialService.SSM and not is_ssm_parameter_name(name):
        raise CredentialReferenceError(
            "must name a fully qualified SSM parameter (/ then segments of letters, digits, '_', '.', '-'), "
            f"got {_show(value)}"
        )
    if service is CredentialService.SECRETS_MANAGER and not is_secret_reference(name):
        raise CredentialReferenceError(f"must name a Secrets Manager secret (name or ARN), got {_show(value)}")
    return CredentialReference(service, name)


def parse_s3_location(value: str) -> S3Location | None:
    """``s3://bucket/key`` with a valid bucket name and a non-empty key, else None."""
    if not value.startswith("s3://"):
        return None
    bucket, _, key = value[len("s3://") :].partition("/")
    if not _full(_BUCKET, bucket) or ".." in bucket or not key or _CONTROL.search(key):
        return None
    if len(key.encode("utf-8")) > MAX_S3_KEY_BYTES:
        return None
    return S3Location(bucket, key)


def is_git_repo(value: object) -> bool:
    """owner/repo, git@host:path, or an https://, ssh:// or file:// URL without a password.

    An https URL with user-info is refused: a token belongs in git_token_location, not in a URL
    that ends up in logs and in the orders table. Which hosts a token may be sent to is init's
    decision, not the model's.
    """
    if not _is_plain(value) or " " in str(value):
        return False
    text = str(value)
    if _full(_GIT_SHORTHAND, text) or _full(_GIT_SCP, text):
        return True
    try:
        parts = urlsplit(text)
    except ValueError:
        return False
    if parts.scheme == "https":
        return bool(parts.hostname) and "@" not in parts.netloc and len(parts.path) > 1
    if parts.scheme == "ssh":
        return bool(parts.hostname) and parts.password is None and len(parts.path) > 1
    if parts.scheme == "file":
        return not parts.netloc and parts.path.startswith("/") and len(parts.path) > 1
    return False


def is_relative_folder(value: object) -> bool:
    """A relative path inside the repository: no leading '/', no '..' segment, no '\\'."""
    if not _is_plain(value) or "\\" in str(value):
        return False
    text = str(value)
    return not text.startswith("/") and ".." not in text.split("/")


# -- the job's fields -----------------------------------------------------------------------


def _or_default(doc: Mapping[str, Any], key: str, default: Any) -> Any:
    """A field's value; absent and null both mean the default (as for every optional field)."""
    value = doc.get(key)
    return default if value is None else value


def _unknown_fields(doc: Mapping[Any, Any], known: frozenset[str], where: str, problems: _Problems) -> None:
    for key in doc:
        if key not in known:
            problems.add(where, f"unknown field {_show(key)}")


def _optional_text(
    doc: Mapping[str, Any], key: str, where: str, problems: _Problems, check: Callable[[object], bool], describe: str
) -> str | None:
    value = doc.get(key)
    if value is None:
        return None
    if not check(value):
        problems.add(where, f"{key} must be {describe}, got {_show(value)}")
        return None
    return str(value)


def _positive_int(
    doc: Mapping[str, Any], key: str, where: str, problems: _Problems, *, default: int | None = None
) -> int | None:
    value = doc.get(key)
    if value is None:
        if default is None:
            problems.add(where, f"{key} is required (a positive integer)")
        return default
    if not _is_int(value) or value <= 0:
        problems.add(where, f"{key} must be a positive integer, got {_show(value)}")
        return None
    return int(value)


def _optional_positive_int(doc: Mapping[str, Any], key: str, where: str, problems: _Problems) -> int | None:
    if doc.get(key) is None:
        return None
    return _positive_int(doc, key, where, problems)


def _credential(doc: Mapping[str, Any], key: str, where: str, problems: _Problems) -> CredentialReference | None:
    value = doc.get(key)
    if value is None:
        return None
    if not _is_plain(value):
        problems.add(where, f"{key} must be a credential reference string, got {_json_type(value)}")
        return None
    try:
        return parse_credential_reference(str(value))
    except CredentialReferenceError as error:
        problems.add(where, f"{key} {error}")
        return None


@dataclass(frozen=True)
class _JobFields:
    username: str | None
    flow_label: str | None
    job_timeout: int | None
    presign_expiry: int | None
    git_provider: str | None
    git_repo: str | None
    commit_hash: str | None
    git_token_location: CredentialReference | None
    git_ssh_key_location: CredentialReference | None
    pr_number: int | None
    issue_number: int | None
    # Whether the job named a repo / commit at all (valid or not): an order relying on an
    # invalid one already has its error, and "no code source" would be a second, wrong one.
    git_repo_given: bool
    commit_hash_given: bool


def _job_fields(doc: Mapping[str, Any], problems: _Problems) -> _JobFields:
    username = doc.get("username")
    if username is None:
        problems.add("", "username is required")
    elif not _full(_USERNAME, username):
        problems.add(
            "", f"username must be 1..64 of [A-Za-z0-9._@-], starting with a letter or digit, got {_show(username)}"
        )
        username = None
    flow_label = _or_default(doc, "flow_label", DEFAULT_FLOW_LABEL)
    if not _full(_LABEL, flow_label):
        problems.add("", f"flow_label must be 1..64 of [A-Za-z0-9._-], got {_show(flow_label)}")
        flow_label = None
    git_provider = _or_default(doc, "git_provider", DEFAULT_GIT_PROVIDER)
    if not isinstance(git_provider, str) or git_provider not in GIT_PROVIDERS:
        problems.add("", f"git_provider must be one of {', '.join(sorted(GIT_PROVIDERS))}, got {_show(git_provider)}")
        git_provider = None
    presign_expiry = _positive_int(doc, "presign_expiry", "", problems, default=DEFAULT_PRESIGN_EXPIRY)
    if presign_expiry is not None and presign_expiry > MAX_PRESIGN_EXPIRY:
        problems.add("", f"presign_expiry must be at most {MAX_PRESIGN_EXPIRY} s (7 days), got {presign_expiry}")
        presign_expiry = None
    return _JobFields(
        username=username,
        flow_label=flow_label,
        job_timeout=_positive_int(doc, "job_timeout", "", problems, default=DEFAULT_JOB_TIMEOUT),
        presign_expiry=presign_expiry,
        git_provider=git_provider,
        git_repo=_optional_text(doc, "git_repo", "", problems, is_git_repo, _GIT_REPO_FORMS),
        commit_hash=_optional_text(doc, "commit_hash", "", problems, _is_commit, _COMMIT_FORM),
        git_token_location=_credential(doc, "git_token_location", "", problems),
        git_ssh_key_location=_credential(doc, "git_ssh_key_location", "", problems),
        pr_number=_optional_positive_int(doc, "pr_number", "", problems),
        issue_number=_optional_positive_int(doc, "issue_number", "", problems),
        git_repo_given=doc.get("git_repo") is not None,
        commit_hash_given=doc.get("commit_hash") is not None,
    )


_GIT_REPO_FORMS = "owner/repo, git@host:path, or an https://, ssh:// or file:// URL without credentials"
_COMMIT_FORM = "7 to 40 hexadecimal characters"


# -- an order's fields ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Draft:
    """An order's fields as far as they are valid (None where not), before the rules across orders."""

    position: int
    label: str
    name: str
    timeout: int | None = None
    dependencies: tuple[str, ...] = ()
    fields: Mapping[str, Any] = field(default_factory=dict)


def _order_label(index: int, name: str) -> str:
    return f"orders[{index}] ({name})"


def _cmds(doc: Mapping[str, Any], where: str, problems: _Problems) -> tuple[str, ...] | None:
    value = doc.get("cmds")
    if value is None:
        problems.add(where, "cmds is required (a non-empty list of commands)")
        return None
    if not isinstance(value, list) or not value:
        problems.add(where, f"cmds must be a non-empty list of commands, got {_show(value)}")
        return None
    bad = [i for i, cmd in enumerate(value) if not _is_text(cmd) or not str(cmd).strip() or "\x00" in str(cmd)]
    for i in bad:
        problems.add(where, f"cmds[{i}] must be a non-empty command string, got {_show(value[i])}")
    return None if bad else tuple(value)


def _string_list(
    doc: Mapping[str, Any], key: str, where: str, problems: _Problems, check: Callable[[object], bool], describe: str
) -> tuple[str, ...] | None:
    value = doc.get(key)
    if value is None:
        return ()
    if not isinstance(value, list):
        problems.add(where, f"{key} must be a list of {describe}, got {_show(value)}")
        return None
    bad = [i for i, item in enumerate(value) if not check(item)]
    for i in bad:
        problems.add(where, f"{key}[{i}] must be {describe}, got {_show(value[i])}")
    return None if bad else tuple(value)


def _env_vars(doc: Mapping[str, Any], where: str, problems: _Problems) -> Mapping[str, str] | None:
    value = doc.get("env_vars")
    if value is None:
        return MappingProxyType({})
    if not isinstance(value, dict):
        problems.add(where, f"env_vars must be an object of name -> string, got {_json_type(value)}")
        return None
    ok = True
    for name, item in value.items():
        if not _full(_ENV_NAME, name):
            problems.add(where, f"env_vars name {_show(name)} must match [A-Za-z_][A-Za-z0-9_]*")
            ok = False
        elif not _is_text(item) or "\x00" in item:
            # Never quote the value: this is where a caller may have put a secret.
            problems.add(where, f"env_vars[{_show(name)}] must be a string without NUL, got {_json_type(item)}")
            ok = False
    return MappingProxyType(dict(value)) if ok else None


def _execution_target(doc: Mapping[str, Any], where: str, problems: _Problems, allowed: frozenset[str]) -> str | None:
    value = doc.get("execution_target")
    if value is None:
        problems.add(where, f"execution_target is required (one of {', '.join(sorted(allowed))})")
        return None
    if not isinstance(value, str) or value not in schema.EXECUTION_TARGETS:
        problems.add(
            where, f"execution_target must be one of {', '.join(sorted(schema.EXECUTION_TARGETS))}, got {_show(value)}"
        )
        return None
    if value in allowed:
        return str(value)
    if value == schema.TARGET_SSM:
        problems.add(where, f"execution_target {_show(value)} is not accepted here: SSM orders go to POST /ssm")
    elif allowed == {schema.TARGET_SSM}:
        problems.add(where, f"execution_target {_show(value)} is not accepted here: such orders go to POST /init")
    else:
        problems.add(
            where,
            f"execution_target {_show(value)} is not supported by this deployment "
            f"(supported: {', '.join(sorted(allowed))})",
        )
    return None


def _ssm_targets(doc: Mapping[str, Any], where: str, problems: _Problems) -> tuple[SsmTarget, ...] | None:
    value = doc.get("ssm_targets")
    if value is None:
        return ()
    if not isinstance(value, list) or not value:
        problems.add(where, f"ssm_targets must be a non-empty list of instance ids or targets, got {_show(value)}")
        return None
    instance_ids: list[str] = []
    targets: list[SsmTarget] = []
    ok = True
    for i, item in enumerate(value):
        if isinstance(item, str) and _full(_INSTANCE_ID, item):
            instance_ids.append(item)
            continue
        if isinstance(item, dict) and set(item) == {"Key", "Values"} and _is_plain(item["Key"], 163):
            values = item["Values"]
            if isinstance(values, list) and values and all(_is_plain(v) for v in values):
                targets.append(SsmTarget(str(item["Key"]), tuple(values)))
                continue
        problems.add(
            where,
            f'ssm_targets[{i}] must be an instance id (i-...) or {{"Key": ..., "Values": [...]}}, got {_show(item)}',
        )
        ok = False
    if not ok:
        return None
    return ((SsmTarget("InstanceIds", tuple(instance_ids)),) if instance_ids else ()) + tuple(targets)


def _must_succeed(doc: Mapping[str, Any], where: str, problems: _Problems) -> bool | None:
    value = _or_default(doc, "must_succeed", True)
    if not isinstance(value, bool):
        problems.add(where, f"must_succeed must be true or false, got {_show(value)}")
        return None
    return value


def _order_name(doc: Mapping[str, Any], position: int, index: int, problems: _Problems) -> str:
    """The order's name; an invalid one is reported and replaced by the default for the messages."""
    default = f"order-{schema.order_num(position)}"
    value = doc.get("order_name")
    if value is None:
        return default
    if not _full(_ORDER_NAME, value):
        problems.add(_order_label(index, default), f"order_name must be 1..64 of [A-Za-z0-9._-], got {_show(value)}")
        return default
    return str(value)


def _draft(doc: object, index: int, job: _JobFields, allowed: frozenset[str], problems: _Problems) -> _Draft:
    """One order's own fields; the rules across orders come after every order is read."""
    position = index + 1
    if not isinstance(doc, dict):
        name = f"order-{schema.order_num(position)}"
        problems.add(_order_label(index, name), f"must be an object, got {_json_type(doc)}")
        return _Draft(position, _order_label(index, name), name)
    name = _order_name(doc, position, index, problems)
    where = _order_label(index, name)
    _unknown_fields(doc, ORDER_FIELDS, where, problems)
    target = _execution_target(doc, where, problems, allowed)
    dependencies = _string_list(doc, "dependencies", where, problems, lambda v: _full(_ORDER_NAME, v), "order names")
    fields: dict[str, Any] = {
        "cmds": _cmds(doc, where, problems),
        "timeout": _positive_int(doc, "timeout", where, problems),
        "execution_target": target,
        "must_succeed": _must_succeed(doc, where, problems),
        "git_repo": _optional_text(doc, "git_repo", where, problems, is_git_repo, _GIT_REPO_FORMS),
        "commit_hash": _optional_text(doc, "commit_hash", where, problems, _is_commit, _COMMIT_FORM),
        "git_folder": _optional_text(
            doc, "git_folder", where, problems, is_relative_folder, "a relative path without '..' or a leading '/'"
        ),
        "env_vars": _env_vars(doc, where, problems),
        "ssm_paths": _string_list(doc, "ssm_paths", where, problems, is_ssm_parameter_name, "SSM parameter names"),
        "secret_manager_paths": _string_list(
            doc, "secret_manager_paths", where, problems, is_secret_reference, "secret names or ARNs"
        ),
        "queue_id": _optional_text(doc, "queue_id", where, problems, _is_plain, "a non-empty single-line string"),
        "ssm_targets": _ssm_targets(doc, where, problems),
        "ssm_document_name": _optional_text(
            doc, "ssm_document_name", where, problems, lambda v: _full(_SSM_DOCUMENT, v), "an SSM document name"
        ),
    }
    fields["s3_location"] = _s3_location(doc, where, problems)
    _ssm_rules(doc, target, fields, where, problems)
    fields["source"] = _source(doc, fields, job, where, problems)
    return _Draft(
        position=position,
        label=where,
        name=name,
        timeout=fields["timeout"],
        dependencies=tuple(dict.fromkeys(dependencies or ())),
        fields=fields,
    )


def _s3_location(doc: Mapping[str, Any], where: str, problems: _Problems) -> S3Location | None:
    value = doc.get("s3_location")
    if value is None:
        return None
    location = parse_s3_location(value) if _is_text(value) else None
    if location is None:
        problems.add(where, f"s3_location must be s3://<bucket>/<key>, got {_show(value)}")
    return location


def _ssm_rules(
    doc: Mapping[str, Any], target: str | None, fields: Mapping[str, Any], where: str, problems: _Problems
) -> None:
    """An SSM order needs somewhere to run; the SSM-only fields mean nothing on another target."""
    if target == schema.TARGET_SSM and doc.get("ssm_targets") is None:
        problems.add(where, "ssm_targets is required for an ssm order (instance ids or targets)")
    if target is not None and target != schema.TARGET_SSM:
        for key in ("ssm_targets", "ssm_document_name"):
            if doc.get(key) is not None:
                problems.add(where, f"{key} applies only to ssm orders, not to {target}")


def _source(
    doc: Mapping[str, Any], fields: Mapping[str, Any], job: _JobFields, where: str, problems: _Problems
) -> CodeSource | None:
    """The order's s3_location, else git: its repo and commit, each falling back to the job's."""
    if doc.get("s3_location") is not None:
        if doc.get("git_repo") is not None:
            problems.add(where, "s3_location and git_repo are exclusive: give the order one code source")
            return None
        location: S3Location | None = fields["s3_location"]
        return location
    own_repo, own_commit = doc.get("git_repo") is not None, doc.get("commit_hash") is not None
    missing = [
        key
        for key, given in (
            ("git_repo", own_repo or job.git_repo_given),
            ("commit_hash", own_commit or job.commit_hash_given),
        )
        if not given
    ]
    if missing:
        problems.add(
            where,
            "has no code source: give s3_location, or git_repo and commit_hash (here or on the job); "
            f"missing {' and '.join(missing)}",
        )
        return None
    repo = fields["git_repo"] if own_repo else job.git_repo
    commit = fields["commit_hash"] if own_commit else job.commit_hash
    if repo is None or commit is None:
        return None  # invalid, and already reported
    return GitSource(repo, commit, fields["git_folder"])


# -- rules across orders --------------------------------------------------------------------


def _names(drafts: Sequence[_Draft], problems: _Problems) -> dict[str, _Draft]:
    """name -> the first order of that name; a later one with the same name is an error."""
    by_name: dict[str, _Draft] = {}
    for draft in drafts:
        first = by_name.get(draft.name)
        if first is None:
            by_name[draft.name] = draft
        else:
            problems.add(draft.label, f"order_name {_show(draft.name)} is already used by {first.label}")
    return by_name


def _dependency_rules(drafts: Sequence[_Draft], by_name: Mapping[str, _Draft], problems: _Problems) -> None:
    for draft in drafts:
        for dependency in draft.dependencies:
            if dependency == draft.name:
                problems.add(draft.label, "depends on itself")
            elif dependency not in by_name:
                problems.add(draft.label, f"unknown dependency {_show(dependency)} (no order has that name)")


def _edges(drafts: Sequence[_Draft], by_name: Mapping[str, _Draft]) -> dict[str, list[str]]:
    """name -> the names that wait for it (execution order); self and unknown edges are left out."""
    edges: dict[str, list[str]] = {name: [] for name in by_name}
    for draft in drafts:
        if by_name.get(draft.name) is not draft:
            continue
        for dependency in draft.dependencies:
            if dependency != draft.name and dependency in by_name:
                edges[dependency].append(draft.name)
    return edges


def _components(names: Sequence[str], edges: Mapping[str, list[str]]) -> list[list[str]]:
    """Strongly connected components of more than one order (iterative Tarjan: no recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    for root in names:
        if root in index:
            continue
        work: list[tuple[str, int]] = [(root, 0)]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, i = work[-1]
            if i < len(edges[node]):
                work[-1] = (node, i + 1)
                nxt = edges[node][i]
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, 0))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(component)
    return found


def _cycle_path(start: str, members: set[str], edges: Mapping[str, list[str]]) -> list[str]:
    """A shortest cycle through ``start`` inside its component (breadth first)."""
    parent: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following: list[str] = []
        for node in frontier:
            for nxt in edges[node]:
                if nxt not in members:
                    continue
                if nxt == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    return [*reversed(path), start]
                if nxt not in parent:
                    parent[nxt] = node
                    following.append(nxt)
        frontier = following
    raise AssertionError(f"{start} is in a strongly connected component but on no cycle")


def _cycles(drafts: Sequence[_Draft], by_name: Mapping[str, _Draft], problems: _Problems) -> None:
    edges = _edges(drafts, by_name)
    position = {draft.name: draft.position for draft in by_name.values()}
    for component in _components(list(by_name), edges):
        start = min(component, key=position.__getitem__)
        path = _cycle_path(start, set(component), edges)
        problems.add("", f"dependency cycle: {' -> '.join(path)}")


def _timeout_rules(job: _JobFields, drafts: Sequence[_Draft], problems: _Problems) -> None:
    timed = [draft for draft in drafts if draft.timeout is not None]
    if not timed:
        return
    longest = max(timed, key=lambda draft: draft.timeout or 0)
    assert longest.timeout is not None
    minimum = longest.timeout + PRESIGN_MARGIN_SECONDS
    if job.presign_expiry is not None and job.presign_expiry < minimum:
        problems.add(
            "",
            f"presign_expiry must be at least {minimum} s (the longest order timeout, {longest.timeout} s "
            f"of {longest.label}, plus {PRESIGN_MARGIN_SECONDS} s), got {job.presign_expiry}",
        )
    if job.job_timeout is not None and job.job_timeout < longest.timeout:
        problems.add(
            "",
            f"job_timeout must be at least the longest order timeout, {longest.timeout} s of {longest.label}, "
            f"got {job.job_timeout}",
        )


# -- entry points ---------------------------------------------------------------------------


def _order(draft: _Draft, nums: Mapping[str, str]) -> Order:
    fields = dict(draft.fields)
    return Order(
        num=schema.order_num(draft.position),
        name=draft.name,
        dependencies=draft.dependencies,
        dependency_nums=tuple(nums[name] for name in draft.dependencies),
        **fields,
    )


def _check_allowed(allowed_targets: frozenset[str]) -> None:
    """A deployment error, not a request error: the caller passes its own configuration."""
    unknown = set(allowed_targets) - schema.EXECUTION_TARGETS
    if unknown or not allowed_targets:
        raise ValueError(f"allowed_targets must be a non-empty subset of {sorted(schema.EXECUTION_TARGETS)}")


def validate_job_document(doc: object, *, allowed_targets: frozenset[str]) -> Job:
    """The Job of an already-decoded job document, or JobValidationError with every problem."""
    _check_allowed(allowed_targets)
    problems = _Problems()
    if not isinstance(doc, dict):
        raise JobValidationError([f"the job must be a JSON object, got {_json_type(doc)}"])
    _unknown_fields(doc, JOB_FIELDS, "", problems)
    job = _job_fields(doc, problems)
    raw_orders = doc.get("orders")
    drafts: list[_Draft] = []
    if raw_orders is None or raw_orders == []:
        problems.add("", "orders is required: a job needs at least one order")
    elif not isinstance(raw_orders, list):
        problems.add("", f"orders must be a list of orders, got {_json_type(raw_orders)}")
    elif len(raw_orders) > MAX_ORDERS:
        problems.add("", f"orders must hold at most {MAX_ORDERS} orders, got {len(raw_orders)}")
    else:
        drafts = [_draft(order, i, job, allowed_targets, problems) for i, order in enumerate(raw_orders)]
        by_name = _names(drafts, problems)
        _dependency_rules(drafts, by_name, problems)
        _cycles(drafts, by_name, problems)
        _timeout_rules(job, drafts, problems)
    if problems.messages:
        raise JobValidationError(problems.messages)
    nums = {draft.name: schema.order_num(draft.position) for draft in drafts}
    assert job.username is not None and job.flow_label is not None and job.git_provider is not None
    assert job.job_timeout is not None and job.presign_expiry is not None
    return Job(
        username=job.username,
        orders=tuple(_order(draft, nums) for draft in drafts),
        flow_label=job.flow_label,
        job_timeout=job.job_timeout,
        presign_expiry=job.presign_expiry,
        git_provider=job.git_provider,
        git_repo=job.git_repo,
        commit_hash=job.commit_hash,
        git_token_location=job.git_token_location,
        git_ssh_key_location=job.git_ssh_key_location,
        pr_number=job.pr_number,
        issue_number=job.issue_number,
    )


def _decode_body(body: str | bytes | None) -> object:
    """The job document inside a request body (the format in the module docstring)."""
    if body is None or body == "" or body == b"":
        raise JobValidationError([f'request body is empty: send {{"{REQUEST_FIELD}": "<base64 of the job JSON>"}}'])
    if isinstance(body, bytes | bytearray):
        try:
            body = bytes(body).decode("utf-8")
        except UnicodeDecodeError:
            raise JobValidationError(["request body is not UTF-8 text"]) from None
    if not isinstance(body, str):
        raise JobValidationError([f"request body must be text, got {type(body).__name__}"])
    envelope = _loads(body, "request body")
    if not isinstance(envelope, dict):
        raise JobValidationError([f"request body must be a JSON object, got {_json_type(envelope)}"])
    problems = _Problems()
    _unknown_fields(envelope, frozenset({REQUEST_FIELD}), "request body", problems)
    encoded = envelope.get(REQUEST_FIELD)
    if encoded is None:
        problems.add("request body", f"{REQUEST_FIELD} is required (base64 of the job JSON)")
    elif not isinstance(encoded, str):
        problems.add("request body", f"{REQUEST_FIELD} must be a base64 string, got {_json_type(encoded)}")
    if problems.messages:
        raise JobValidationError(problems.messages)
    assert isinstance(encoded, str)
    try:
        raw = base64.b64decode(encoded.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error, ValueError):
        raise JobValidationError([f"{REQUEST_FIELD} is not valid base64"]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise JobValidationError([f"{REQUEST_FIELD} does not decode to UTF-8 text"]) from None
    return _loads(text, REQUEST_FIELD)


def _loads(text: str, what: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise JobValidationError(
            [f"{what} is not valid JSON: {error.msg} at line {error.lineno} column {error.colno}"]
        ) from None
    except (ValueError, RecursionError):
        # A number beyond the int conversion limit; arrays nested beyond the parser's stack.
        raise JobValidationError([f"{what} is not JSON we accept (a number too long, or nesting too deep)"]) from None


def parse_job_request(body: str | bytes | None, *, allowed_targets: frozenset[str]) -> Job:
    """The Job of a POST /init (or /ssm) body, or JobValidationError with every problem found."""
    _check_allowed(allowed_targets)
    return validate_job_document(_decode_body(body), allowed_targets=allowed_targets)
