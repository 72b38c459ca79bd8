"""jobs: the request body, the job and order model, and every validation rule of the spec (pure logic)."""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from handlers.execution_engine import schema
from handlers.execution_engine.jobs import (
    DEFAULT_FLOW_LABEL,
    DEFAULT_JOB_TIMEOUT,
    DEFAULT_PRESIGN_EXPIRY,
    REQUEST_FIELD,
    CredentialReference,
    CredentialReferenceError,
    CredentialService,
    GitSource,
    Job,
    JobValidationError,
    S3Location,
    SsmTarget,
    parse_credential_reference,
    parse_job_request,
    validate_job_document,
)

INIT_TARGETS = frozenset({schema.TARGET_LAMBDA, schema.TARGET_CODEBUILD})
SSM_TARGETS = frozenset({schema.TARGET_SSM})
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def order(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"cmds": ["make build"], "timeout": 60, "execution_target": "lambda"}
    base.update(fields)
    return {key: value for key, value in base.items() if value is not _DROP}


_DROP = object()


def job(*orders: dict[str, Any], **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "username": "alice",
        "git_repo": "acme/infra",
        "commit_hash": COMMIT,
        "orders": list(orders) if orders else [order()],
    }
    base.update(fields)
    return {key: value for key, value in base.items() if value is not _DROP}


def body(document: object) -> str:
    encoded = base64.b64encode(json.dumps(document).encode("utf-8")).decode("ascii")
    return json.dumps({REQUEST_FIELD: encoded})


def valid(document: object, targets: frozenset[str] = INIT_TARGETS) -> Job:
    return validate_job_document(document, allowed_targets=targets)


def errors_of(document: object, targets: frozenset[str] = INIT_TARGETS) -> list[str]:
    with pytest.raises(JobValidationError) as caught:
        validate_job_document(document, allowed_targets=targets)
    assert caught.value.errors, "a JobValidationError without errors"
    return caught.value.errors


def request_errors(raw: str | bytes | None) -> list[str]:
    with pytest.raises(JobValidationError) as caught:
        parse_job_request(raw, allowed_targets=INIT_TARGETS)
    assert caught.value.errors
    return caught.value.errors


# -- the request body -----------------------------------------------------------------------


def test_a_request_body_decodes_to_the_job() -> None:
    parsed = parse_job_request(body(job()), allowed_targets=INIT_TARGETS)
    assert parsed == valid(job())
    assert parse_job_request(body(job()).encode("utf-8"), allowed_targets=INIT_TARGETS) == parsed


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, "request body is empty"),
        ("", "request body is empty"),
        (b"", "request body is empty"),
        (b"\xff\xfe", "not UTF-8"),
        ("not json", "request body is not valid JSON"),
        ("[1, 2]", "must be a JSON object, got an array"),
        ('"text"', "must be a JSON object, got a string"),
        ("{}", "job_parameters_b64 is required"),
        ('{"job_parameters_b64": 3}', "job_parameters_b64 must be a base64 string, got an integer"),
        ('{"job_parameters_b64": null}', "job_parameters_b64 is required"),
        ('{"job_parameters_b64": "not base64!"}', "job_parameters_b64 is not valid base64"),
        ('{"job_parameters_b64": "abc"}', "job_parameters_b64 is not valid base64"),
        ('{"job_parameters_b64": "\\u00e9\\u00e9\\u00e9\\u00e9"}', "job_parameters_b64 is not valid base64"),
        (json.dumps({REQUEST_FIELD: base64.b64encode(b"\xff\xff").decode()}), "does not decode to UTF-8"),
        (json.dumps({REQUEST_FIELD: base64.b64encode(b"{oops").decode()}), "job_parameters_b64 is not valid JSON"),
        (json.dumps({REQUEST_FIELD: base64.b64encode(b"[[" * 50_000).decode()}), "is not JSON we accept"),
        (json.dumps({REQUEST_FIELD: base64.b64encode(b"9" * 5000).decode()}), "is not JSON we accept"),
        (json.dumps({REQUEST_FIELD: base64.b64encode(b"[]").decode()}), "the job must be a JSON object, got an array"),
        (json.dumps({REQUEST_FIELD: base64.b64encode(b"null").decode()}), "the job must be a JSON object, got null"),
    ],
)
def test_a_bad_body_is_a_validation_error(raw: str | bytes | None, expected: str) -> None:
    assert any(expected in message for message in request_errors(raw)), request_errors(raw)


def test_the_envelope_refuses_unknown_fields_with_the_missing_one() -> None:
    errors = request_errors('{"job": "x"}')
    assert errors == [
        'request body: unknown field "job"',
        "request body: job_parameters_b64 is required (base64 of the job JSON)",
    ]


def test_a_request_with_many_problems_reports_them_all() -> None:
    errors = request_errors(body(job(order(timeout=0), order(cmds=[]), username=None)))
    assert errors == [
        "username is required",
        "orders[0] (order-0001): timeout must be a positive integer, got 0",
        "orders[1] (order-0002): cmds must be a non-empty list of commands, got []",
    ]


def test_a_misconfigured_deployment_is_not_a_request_error() -> None:
    with pytest.raises(ValueError, match="allowed_targets") as caught:
        parse_job_request(body(job()), allowed_targets=frozenset({"docker"}))
    assert not isinstance(caught.value, JobValidationError)
    with pytest.raises(ValueError, match="allowed_targets"):
        validate_job_document(job(), allowed_targets=frozenset())


# -- defaults and the model -----------------------------------------------------------------


def test_the_defaults() -> None:
    parsed = valid(job(order(), order(order_name="second")))
    assert parsed.flow_label == DEFAULT_FLOW_LABEL == "exec"
    assert parsed.job_timeout == DEFAULT_JOB_TIMEOUT == 3600
    assert parsed.presign_expiry == DEFAULT_PRESIGN_EXPIRY == 7200
    assert parsed.git_provider == "github"
    assert (parsed.pr_number, parsed.issue_number, parsed.git_token_location, parsed.git_ssh_key_location) == (
        None,
        None,
        None,
        None,
    )
    first, second = parsed.orders
    assert (first.num, first.name, second.num, second.name) == ("0001", "order-0001", "0002", "second")
    assert first.must_succeed is True and first.dependencies == () and first.dependency_nums == ()
    assert dict(first.env_vars) == {} and first.ssm_paths == () and first.secret_manager_paths == ()
    assert first.queue_id is None and first.ssm_targets == () and first.ssm_document_name is None
    assert first.source == GitSource("acme/infra", COMMIT, None)


def test_every_field_is_carried_into_the_model() -> None:
    document = job(
        order(order_name="build"),
        order(
            order_name="deploy",
            timeout=120,
            execution_target="codebuild",
            git_repo="https://github.com/acme/other.git",
            commit_hash="ABCDEF1",
            git_folder="stacks/prod",
            env_vars={"STAGE": "prod", "_X1": ""},
            ssm_paths=["/team/aws/creds"],
            secret_manager_paths=["team/db", "arn:aws:secretsmanager:eu-west-1:123456789012:secret:team/api-AbCdEf"],
            queue_id="q-1",
            dependencies=["build", "build"],
            must_succeed=False,
        ),
        order(order_name="upload", s3_location="s3://my-bucket/code/app.zip"),
        flow_label="plan.v2",
        job_timeout=600,
        presign_expiry=900,
        pr_number=7,
        issue_number=9,
        git_token_location="aws:::ssm:/ci/github/token",
        git_ssh_key_location="aws:::secretsmanager:ci/github-ssh",
    )
    parsed = valid(document)
    assert parsed.flow_id("t" * 32) == f"alice:{'t' * 32}-plan.v2"
    assert parsed.git_token_location == CredentialReference(CredentialService.SSM, "/ci/github/token")
    assert parsed.git_ssh_key_location == CredentialReference(CredentialService.SECRETS_MANAGER, "ci/github-ssh")
    assert (parsed.job_timeout, parsed.presign_expiry, parsed.pr_number, parsed.issue_number) == (600, 900, 7, 9)
    assert parsed.max_order_timeout == 120
    build, deploy, upload = parsed.orders
    assert deploy.num == "0002" and deploy.execution_target == "codebuild" and deploy.timeout == 120
    assert deploy.dependencies == ("build",) and deploy.dependency_nums == ("0001",)
    assert deploy.must_succeed is False and deploy.queue_id == "q-1"
    assert dict(deploy.env_vars) == {"STAGE": "prod", "_X1": ""}
    assert deploy.ssm_paths == ("/team/aws/creds",)
    assert deploy.secret_manager_paths[1].startswith("arn:aws:secretsmanager:")
    assert deploy.source == GitSource("https://github.com/acme/other.git", "ABCDEF1", "stacks/prod")
    assert upload.source == S3Location("my-bucket", "code/app.zip") == upload.s3_location
    assert str(upload.source) == "s3://my-bucket/code/app.zip"
    assert build.source == GitSource("acme/infra", COMMIT, None)


def test_the_model_is_frozen_and_its_env_vars_read_only() -> None:
    parsed = valid(job(order(env_vars={"A": "1"})))
    with pytest.raises(AttributeError):
        parsed.username = "mallory"  # type: ignore[misc]
    with pytest.raises(TypeError):
        parsed.orders[0].env_vars["A"] = "2"  # type: ignore[index]


def test_env_var_values_stay_out_of_repr_and_messages() -> None:
    parsed = valid(job(order(env_vars={"TOKEN": "s3cr3t-value"})))
    assert "s3cr3t-value" not in repr(parsed) and "s3cr3t-value" not in repr(parsed.orders[0])
    errors = errors_of(job(order(env_vars={"TOKEN": 12345678, "OK": "s3cr3t-value", "bad name": "s3cr3t-value"})))
    assert not any("12345678" in message or "s3cr3t-value" in message for message in errors)
    assert errors == [
        'orders[0] (order-0001): env_vars["TOKEN"] must be a string without NUL, got an integer',
        'orders[0] (order-0001): env_vars name "bad name" must match [A-Za-z_][A-Za-z0-9_]*',
    ]


def test_the_validation_does_not_change_its_input() -> None:
    document = job(order(dependencies=[]), order(order_name="b", dependencies=["order-0001"]))
    before = copy.deepcopy(document)
    valid(document)
    assert document == before


def test_ssm_orders_are_valid_on_the_ssm_endpoint() -> None:
    parsed = valid(
        job(
            order(
                execution_target="ssm",
                ssm_targets=[
                    "i-0123456789abcdef0",
                    {"Key": "tag:Role", "Values": ["web", "api"]},
                    "mi-0123456789abcdef0",
                ],
                ssm_document_name="AWS-RunShellScript",
            )
        ),
        SSM_TARGETS,
    )
    assert parsed.orders[0].ssm_targets == (
        SsmTarget("InstanceIds", ("i-0123456789abcdef0", "mi-0123456789abcdef0")),
        SsmTarget("tag:Role", ("web", "api")),
    )
    assert parsed.orders[0].ssm_document_name == "AWS-RunShellScript"


@pytest.mark.parametrize(
    "repo",
    [
        "acme/infra",
        "git@github.com:acme/infra.git",
        "https://github.com/acme/infra",
        "ssh://git@host/x.git",
        "file:///tmp/r",
    ],
)
def test_the_accepted_git_repo_forms(repo: str) -> None:
    assert valid(job(git_repo=repo)).orders[0].source == GitSource(repo, COMMIT, None)


def test_an_order_with_its_own_commit_uses_the_jobs_repo() -> None:
    parsed = valid(job(order(commit_hash="abcdef0"), commit_hash=_DROP))
    assert parsed.orders[0].source == GitSource("acme/infra", "abcdef0", None)


# -- credential references ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "service", "name"),
    [
        ("aws:::ssm:/path", CredentialService.SSM, "/path"),
        ("aws:::ssm:/a/b.c/d_e-f", CredentialService.SSM, "/a/b.c/d_e-f"),
        ("aws:::secretsmanager:team/db+x=y@z", CredentialService.SECRETS_MANAGER, "team/db+x=y@z"),
        (
            "aws:::secretsmanager:arn:aws:secretsmanager:us-east-1:123456789012:secret:db-AbCdEf",
            CredentialService.SECRETS_MANAGER,
            "arn:aws:secretsmanager:us-east-1:123456789012:secret:db-AbCdEf",
        ),
    ],
)
def test_a_credential_reference_parses(text: str, service: CredentialService, name: str) -> None:
    reference = parse_credential_reference(text)
    assert (reference.service, reference.name) == (service, name)
    assert str(reference) == text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/path", "must be aws:::ssm:/<parameter>"),
        ("aws::ssm:/path", "must be aws:::ssm:/<parameter>"),
        ("aws:::kms:/path", 'unknown service "kms"'),
        ("aws:::ssm", "names no ssm location"),
        ("aws:::ssm:", "names no ssm location"),
        ("aws:::ssm:path", "fully qualified SSM parameter"),
        ("aws:::ssm:/a//b", "fully qualified SSM parameter"),
        ("aws:::ssm:/a/", "fully qualified SSM parameter"),
        ("aws:::ssm:/a b", "fully qualified SSM parameter"),
        ("aws:::secretsmanager:has space", "Secrets Manager secret"),
        ("aws:::secretsmanager:arn:aws:s3:::bucket", "Secrets Manager secret"),
        ("aws:::secretsmanager:" + "x" * 513, "Secrets Manager secret"),
    ],
)
def test_a_bad_credential_reference_is_refused(text: str, expected: str) -> None:
    with pytest.raises(CredentialReferenceError) as caught:
        parse_credential_reference(text)
    assert expected in str(caught.value)


@pytest.mark.parametrize("key", ["git_token_location", "git_ssh_key_location"])
def test_a_bad_credential_location_names_its_field(key: str) -> None:
    assert errors_of(job(**{key: "ssm:/x"})) == [
        f"{key} must be aws:::ssm:/<parameter> or aws:::secretsmanager:<secret name or ARN>, "
        "got 6 characters that do not start with aws:::"
    ]
    assert errors_of(job(**{key: ["aws:::ssm:/x"]})) == [f"{key} must be a credential reference string, got an array"]


def test_a_credential_pasted_instead_of_its_location_is_not_echoed() -> None:
    errors = errors_of(job(git_token_location="ghp_S3cretTokenValue0123456789", git_ssh_key_location=["ghp_S3cret"]))
    assert len(errors) == 2 and not any("S3cret" in message for message in errors)


# -- each rule of the spec, on its own ------------------------------------------------------

TWO_ORDER_RULES: list[tuple[dict[str, Any], list[str]]] = [
    # no orders
    (job(orders=[]), ["orders is required: a job needs at least one order"]),
    (job(orders=_DROP), ["orders is required: a job needs at least one order"]),
    (job(orders={"a": 1}), ["orders must be a list of orders, got an object"]),
    (job(orders=[3]), ["orders[0] (order-0001): must be an object, got an integer"]),
    (job(orders=[order()] * 10_000), ["orders must hold at most 9999 orders, got 10000"]),
    # empty cmds
    (job(order(cmds=[])), ["orders[0] (order-0001): cmds must be a non-empty list of commands, got []"]),
    (job(order(cmds=_DROP)), ["orders[0] (order-0001): cmds is required (a non-empty list of commands)"]),
    (job(order(cmds="make")), ['orders[0] (order-0001): cmds must be a non-empty list of commands, got "make"']),
    (
        job(order(cmds=["ok", "", "  ", 3])),
        [
            'orders[0] (order-0001): cmds[1] must be a non-empty command string, got ""',
            'orders[0] (order-0001): cmds[2] must be a non-empty command string, got "  "',
            "orders[0] (order-0001): cmds[3] must be a non-empty command string, got 3",
        ],
    ),
    # bad timeout
    (job(order(timeout=0)), ["orders[0] (order-0001): timeout must be a positive integer, got 0"]),
    (job(order(timeout=-5)), ["orders[0] (order-0001): timeout must be a positive integer, got -5"]),
    (job(order(timeout=1.5)), ["orders[0] (order-0001): timeout must be a positive integer, got 1.5"]),
    (job(order(timeout="60")), ['orders[0] (order-0001): timeout must be a positive integer, got "60"']),
    (job(order(timeout=True)), ["orders[0] (order-0001): timeout must be a positive integer, got true"]),
    (job(order(timeout=_DROP)), ["orders[0] (order-0001): timeout is required (a positive integer)"]),
    # unknown target
    (
        job(order(execution_target="docker")),
        ['orders[0] (order-0001): execution_target must be one of codebuild, lambda, ssm, got "docker"'],
    ),
    (
        job(order(execution_target=_DROP)),
        ["orders[0] (order-0001): execution_target is required (one of codebuild, lambda)"],
    ),
    (
        job(order(execution_target=["lambda"])),
        ['orders[0] (order-0001): execution_target must be one of codebuild, lambda, ssm, got ["lambda"]'],
    ),
    (
        job(order(execution_target="ssm", ssm_targets=["i-0123456789abcdef0"])),
        ['orders[0] (order-0001): execution_target "ssm" is not accepted here: SSM orders go to POST /ssm'],
    ),
    # no code source
    (
        job(git_repo=_DROP, commit_hash=_DROP),
        [
            "orders[0] (order-0001): has no code source: give s3_location, or git_repo and commit_hash "
            "(here or on the job); missing git_repo and commit_hash"
        ],
    ),
    (
        job(commit_hash=_DROP),
        [
            "orders[0] (order-0001): has no code source: give s3_location, or git_repo and commit_hash "
            "(here or on the job); missing commit_hash"
        ],
    ),
    (
        job(order(s3_location="s3://b-1/k", git_repo="acme/x")),
        ["orders[0] (order-0001): s3_location and git_repo are exclusive: give the order one code source"],
    ),
    # presign expiry shorter than max order timeout + 300 s
    (
        job(order(timeout=100), order(timeout=3000), presign_expiry=3000),
        [
            "presign_expiry must be at least 3300 s (the longest order timeout, 3000 s of orders[1] (order-0002), "
            "plus 300 s), got 3000"
        ],
    ),
    (job(presign_expiry=0), ["presign_expiry must be a positive integer, got 0"]),
    (job(presign_expiry=700_000), ["presign_expiry must be at most 604800 s (7 days), got 700000"]),
    # job timeout shorter than the longest order
    (
        job(order(timeout=100), order(timeout=200), job_timeout=150),
        ["job_timeout must be at least the longest order timeout, 200 s of orders[1] (order-0002), got 150"],
    ),
    (job(job_timeout=-1), ["job_timeout must be a positive integer, got -1"]),
    # unknown dependency, self-dependency, duplicate names
    (
        job(order(order_name="build"), order(order_name="deploy", dependencies=["biuld"])),
        ['orders[1] (deploy): unknown dependency "biuld" (no order has that name)'],
    ),
    (job(order(order_name="build", dependencies=["build"])), ["orders[0] (build): depends on itself"]),
    (
        job(order(order_name="build"), order(order_name="build")),
        ['orders[1] (build): order_name "build" is already used by orders[0] (build)'],
    ),
    (
        job(order(), order(order_name="order-0001")),
        ['orders[1] (order-0001): order_name "order-0001" is already used by orders[0] (order-0001)'],
    ),
    (
        job(order(dependencies="build")),
        ['orders[0] (order-0001): dependencies must be a list of order names, got "build"'],
    ),
    (job(order(dependencies=[1])), ["orders[0] (order-0001): dependencies[0] must be order names, got 1"]),
]


@pytest.mark.parametrize(("document", "expected"), TWO_ORDER_RULES)
def test_each_rule(document: dict[str, Any], expected: list[str]) -> None:
    assert errors_of(document) == expected


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"username": _DROP}, "username is required"),
        (
            {"username": "bob:x"},
            'username must be 1..64 of [A-Za-z0-9._@-], starting with a letter or digit, got "bob:x"',
        ),
        ({"username": "-bob"}, 'starting with a letter or digit, got "-bob"'),
        ({"username": "a" * 65}, "username must be 1..64"),
        ({"username": 5}, "starting with a letter or digit, got 5"),
        ({"flow_label": "a b"}, 'flow_label must be 1..64 of [A-Za-z0-9._-], got "a b"'),
        ({"flow_label": ""}, 'flow_label must be 1..64 of [A-Za-z0-9._-], got ""'),
        ({"git_provider": "gitlab"}, 'git_provider must be one of github, got "gitlab"'),
        ({"commit_hash": "xyz1234"}, 'commit_hash must be 7 to 40 hexadecimal characters, got "xyz1234"'),
        ({"commit_hash": "abc12"}, "commit_hash must be 7 to 40 hexadecimal characters"),
        ({"commit_hash": "a" * 41}, "commit_hash must be 7 to 40 hexadecimal characters"),
        ({"git_repo": "http://github.com/a/b"}, "git_repo must be owner/repo"),
        ({"git_repo": "https://user:tok@github.com/a/b"}, "git_repo must be owner/repo"),
        ({"git_repo": "https://tok@github.com/a/b"}, "git_repo must be owner/repo"),
        ({"git_repo": "just-a-name"}, "git_repo must be owner/repo"),
        ({"git_repo": "acme/infra\n"}, "git_repo must be owner/repo"),
        ({"git_repo": ""}, "git_repo must be owner/repo"),
        ({"pr_number": 0}, "pr_number must be a positive integer, got 0"),
        ({"issue_number": "7"}, 'issue_number must be a positive integer, got "7"'),
        ({"colour": "blue"}, 'unknown field "colour"'),
    ],
)
def test_each_job_field_rule(fields: dict[str, Any], expected: str) -> None:
    errors = errors_of(job(**fields))
    assert any(expected in message for message in errors), errors


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"order_name": "bad name"}, 'order_name must be 1..64 of [A-Za-z0-9._-], got "bad name"'),
        ({"order_name": "x" * 65}, "order_name must be 1..64"),
        ({"order_name": 3}, "order_name must be 1..64 of [A-Za-z0-9._-], got 3"),
        ({"git_folder": "../etc"}, "git_folder must be a relative path without '..' or a leading '/'"),
        ({"git_folder": "a/../../b"}, "git_folder must be a relative path"),
        ({"git_folder": "/abs"}, "git_folder must be a relative path"),
        ({"git_folder": "a\\b"}, "git_folder must be a relative path"),
        ({"git_folder": 1}, "git_folder must be a relative path"),
        ({"commit_hash": "nothex!"}, "commit_hash must be 7 to 40 hexadecimal characters"),
        ({"env_vars": ["A=1"]}, "env_vars must be an object of name -> string, got an array"),
        ({"env_vars": {"A-B": "1"}}, 'env_vars name "A-B" must match'),
        ({"env_vars": {"9A": "1"}}, 'env_vars name "9A" must match'),
        ({"env_vars": {"A": "x\x00y"}}, 'env_vars["A"] must be a string without NUL, got a string'),
        ({"env_vars": {"A": None}}, 'env_vars["A"] must be a string without NUL, got null'),
        ({"ssm_paths": "/a"}, 'ssm_paths must be a list of SSM parameter names, got "/a"'),
        ({"ssm_paths": ["a/b"]}, 'ssm_paths[0] must be SSM parameter names, got "a/b"'),
        (
            {"secret_manager_paths": ["bad name"]},
            'secret_manager_paths[0] must be secret names or ARNs, got "bad name"',
        ),
        ({"secret_manager_paths": {}}, "secret_manager_paths must be a list of secret names or ARNs, got {}"),
        ({"queue_id": ""}, 'queue_id must be a non-empty single-line string, got ""'),
        ({"queue_id": 4}, "queue_id must be a non-empty single-line string, got 4"),
        ({"must_succeed": "true"}, 'must_succeed must be true or false, got "true"'),
        ({"must_succeed": 1}, "must_succeed must be true or false, got 1"),
        ({"s3_location": "https://b/k"}, 's3_location must be s3://<bucket>/<key>, got "https://b/k"'),
        ({"s3_location": "s3://bucket"}, "s3_location must be s3://<bucket>/<key>"),
        ({"s3_location": "s3://bucket/"}, "s3_location must be s3://<bucket>/<key>"),
        ({"s3_location": "s3://Bucket/k"}, "s3_location must be s3://<bucket>/<key>"),
        ({"s3_location": "s3://a..b/k"}, "s3_location must be s3://<bucket>/<key>"),
        ({"s3_location": 5}, "s3_location must be s3://<bucket>/<key>, got 5"),
        ({"ssm_targets": ["i-0123456789abcdef0"]}, "ssm_targets applies only to ssm orders, not to lambda"),
        ({"ssm_document_name": "AWS-RunShellScript"}, "ssm_document_name applies only to ssm orders, not to lambda"),
        ({"dependancies": ["x"]}, 'unknown field "dependancies"'),
    ],
)
def test_each_order_field_rule(fields: dict[str, Any], expected: str) -> None:
    errors = errors_of(job(order(**fields)))
    assert any(message.startswith("orders[0] (") and expected in message for message in errors), errors


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"ssm_targets": _DROP}, "ssm_targets is required for an ssm order"),
        ({"ssm_targets": []}, "ssm_targets must be a non-empty list of instance ids or targets, got []"),
        ({"ssm_targets": "i-0123456789abcdef0"}, "ssm_targets must be a non-empty list"),
        ({"ssm_targets": ["web-1"]}, 'ssm_targets[0] must be an instance id (i-...) or {"Key": ..., "Values": [...]}'),
        ({"ssm_targets": [{"Key": "tag:Role"}]}, "ssm_targets[0] must be an instance id"),
        ({"ssm_targets": [{"Key": "tag:Role", "Values": []}]}, "ssm_targets[0] must be an instance id"),
        ({"ssm_targets": [{"Key": "", "Values": ["a"]}]}, "ssm_targets[0] must be an instance id"),
        ({"ssm_targets": [{"Key": "k", "Values": [1]}]}, "ssm_targets[0] must be an instance id"),
        ({"ssm_document_name": "x"}, 'ssm_document_name must be an SSM document name, got "x"'),
        ({"ssm_document_name": "has space"}, "ssm_document_name must be an SSM document name"),
    ],
)
def test_each_ssm_field_rule(fields: dict[str, Any], expected: str) -> None:
    document = job(order(execution_target="ssm", ssm_targets=["i-0123456789abcdef0"]) | fields)
    document["orders"][0] = {key: value for key, value in document["orders"][0].items() if value is not _DROP}
    errors = errors_of(document, SSM_TARGETS)
    assert any(expected in message for message in errors), errors


def test_lambda_orders_on_the_ssm_endpoint_are_sent_to_init() -> None:
    assert errors_of(job(), SSM_TARGETS) == [
        'orders[0] (order-0001): execution_target "lambda" is not accepted here: such orders go to POST /init'
    ]


def test_a_target_the_deployment_lacks_is_named_with_what_it_supports() -> None:
    assert errors_of(job(order(execution_target="codebuild")), frozenset({"lambda"})) == [
        'orders[0] (order-0001): execution_target "codebuild" is not supported by this deployment (supported: lambda)'
    ]


def test_an_invalid_job_repo_is_not_also_a_missing_code_source() -> None:
    assert errors_of(job(git_repo="nope")) == [
        "git_repo must be owner/repo, git@host:path, or an https://, ssh:// or file:// URL without credentials, "
        'got "nope"'
    ]


def test_long_values_are_cut_short_in_messages() -> None:
    (message,) = errors_of(job(flow_label="x" * 500))
    assert len(message) < 200 and message.endswith("...")


def test_lone_surrogates_are_refused_not_crashed_on() -> None:
    raw = json.dumps({REQUEST_FIELD: base64.b64encode(b'{"username": "\\ud800"}').decode()})
    errors = request_errors(raw)
    assert errors[0].startswith("username must be")
    assert "cmds[0] must be a non-empty command string" in errors_of(job(order(cmds=["\ud800"])))[0]


# -- dependency cycles ----------------------------------------------------------------------


def test_a_cycle_is_named_with_its_path() -> None:
    document = job(
        order(order_name="build", dependencies=["deploy"]),
        order(order_name="test", dependencies=["build"]),
        order(order_name="deploy", dependencies=["test"]),
    )
    assert errors_of(document) == ["dependency cycle: build -> test -> deploy -> build"]


def test_a_two_order_cycle_and_a_separate_one_are_both_named() -> None:
    document = job(
        order(order_name="a", dependencies=["b"]),
        order(order_name="b", dependencies=["a"]),
        order(order_name="ok"),
        order(order_name="x", dependencies=["z", "ok"]),
        order(order_name="y", dependencies=["x"]),
        order(order_name="z", dependencies=["y"]),
    )
    assert errors_of(document) == ["dependency cycle: a -> b -> a", "dependency cycle: x -> y -> z -> x"]


def test_the_cycle_named_is_a_shortest_one_through_the_first_order() -> None:
    # build -> deploy directly and build -> test -> deploy; deploy -> build closes both.
    document = job(
        order(order_name="build", dependencies=["deploy"]),
        order(order_name="test", dependencies=["build"]),
        order(order_name="deploy", dependencies=["test", "build"]),
    )
    assert errors_of(document) == ["dependency cycle: build -> deploy -> build"]


def test_a_long_chain_and_a_long_cycle_need_no_recursion() -> None:
    chain = [order(order_name=f"o{i}", dependencies=[f"o{i - 1}"] if i else []) for i in range(3000)]
    assert len(valid(job(*chain)).orders) == 3000
    chain[0] = order(order_name="o0", dependencies=["o2999"])
    (message,) = errors_of(job(*chain))
    assert message.startswith("dependency cycle: o0 -> o1 -> o2 -> ") and message.endswith("o2998 -> o2999 -> o0")


def test_a_diamond_is_no_cycle_and_its_dependencies_resolve_to_nums() -> None:
    parsed = valid(
        job(
            order(order_name="top"),
            order(order_name="left", dependencies=["top"]),
            order(order_name="right", dependencies=["top"]),
            order(order_name="bottom", dependencies=["right", "left"]),
        )
    )
    assert [o.dependency_nums for o in parsed.orders] == [(), ("0001",), ("0001",), ("0003", "0002")]


# -- many problems at once ------------------------------------------------------------------


def test_every_error_of_every_order_is_reported_together() -> None:
    document = job(
        order(order_name="build", cmds=[], timeout=0, dependencies=["deploy"]),
        order(order_name="test", execution_target="docker", dependencies=["build", "ghost"]),
        order(order_name="deploy", timeout=5000, dependencies=["test", "deploy"], must_succeed="yes"),
        order(order_name="build"),
        username="x y",
        presign_expiry=1000,
        job_timeout=100,
    )
    assert errors_of(document) == [
        'username must be 1..64 of [A-Za-z0-9._@-], starting with a letter or digit, got "x y"',
        "orders[0] (build): cmds must be a non-empty list of commands, got []",
        "orders[0] (build): timeout must be a positive integer, got 0",
        'orders[1] (test): execution_target must be one of codebuild, lambda, ssm, got "docker"',
        'orders[2] (deploy): must_succeed must be true or false, got "yes"',
        'orders[3] (build): order_name "build" is already used by orders[0] (build)',
        'orders[1] (test): unknown dependency "ghost" (no order has that name)',
        "orders[2] (deploy): depends on itself",
        "dependency cycle: build -> test -> deploy -> build",
        "presign_expiry must be at least 5300 s (the longest order timeout, 5000 s of orders[2] (deploy), "
        "plus 300 s), got 1000",
        "job_timeout must be at least the longest order timeout, 5000 s of orders[2] (deploy), got 100",
    ]


WRONG_TYPES: list[object] = [None, True, 0, -1, 1.5, "", "x", [], [1], {}, {"a": 1}]
JOB_KEYS = sorted(
    [
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
    ]
)
ORDER_KEYS = sorted(
    [
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
    ]
)


@pytest.mark.parametrize("key", JOB_KEYS)
def test_a_wrong_type_in_any_job_field_is_a_validation_error(key: str) -> None:
    rejected = 0
    for value in WRONG_TYPES:
        document = job(order(timeout=60), **{key: value})
        try:
            parse_job_request(body(document), allowed_targets=INIT_TARGETS)
        except JobValidationError as error:
            assert all(isinstance(message, str) and message for message in error.errors)
            rejected += 1
    # Some values are valid for some fields (null for an optional one, "x" for a username).
    assert rejected >= len(WRONG_TYPES) - 2


@pytest.mark.parametrize("key", ORDER_KEYS)
@pytest.mark.parametrize("target", ["lambda", "ssm"])
def test_a_wrong_type_in_any_order_field_is_a_validation_error(key: str, target: str) -> None:
    rejected = 0
    for value in WRONG_TYPES:
        extra = {"ssm_targets": ["i-0123456789abcdef0"]} if target == "ssm" else {}
        document = job(order(execution_target=target, **extra) | {key: value})
        try:
            validate_job_document(document, allowed_targets=INIT_TARGETS | SSM_TARGETS)
        except JobValidationError as error:
            assert all(isinstance(message, str) and message for message in error.errors)
            rejected += 1
    # Every field refuses most of these: at most None and one or two shapes are acceptable.
    assert rejected >= len(WRONG_TYPES) - 4


def test_a_document_with_non_string_keys_is_a_validation_error() -> None:
    errors = errors_of({1: "x", "username": "a", "orders": [{2: "y", **order(s3_location="s3://bkt/k")}]})
    assert "unknown field 1" in errors and "orders[0] (order-0001): unknown field 2" in errors


# -- property: any JSON at all is a Job or a JobValidationError, never another exception --------

JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["lambda", "codebuild", "ssm", "aws:::ssm:/a", "s3://bkt/k", "acme/infra", COMMIT, "build"]),
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def fields_of(keys: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """Objects whose keys are mostly the model's own (so the validators, not the unknown-field rule, run)."""
    return st.dictionaries(st.sampled_from(keys) | st.text(max_size=6), JSON_VALUES, max_size=len(keys))


JOB_DOCUMENTS = st.one_of(
    JSON_VALUES,
    st.builds(
        lambda top, orders: {**top, "orders": orders},
        fields_of(JOB_KEYS),
        st.lists(fields_of(ORDER_KEYS) | JSON_VALUES, max_size=5) | JSON_VALUES,
    ),
)


@seed(20261203)
@settings(max_examples=200, database=None, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(document=JOB_DOCUMENTS)
def test_any_document_is_a_job_or_a_validation_error(document: object) -> None:
    try:
        parsed = validate_job_document(document, allowed_targets=INIT_TARGETS)
    except JobValidationError as error:
        assert error.errors and all(isinstance(message, str) and message for message in error.errors)
        return
    assert isinstance(parsed, Job) and parsed.orders


@seed(20261203)
@settings(max_examples=200, database=None, deadline=None)
@given(raw=st.binary(max_size=64) | st.text(max_size=64) | st.builds(lambda d: body(d), JSON_VALUES))
def test_any_body_is_a_job_or_a_validation_error(raw: bytes | str) -> None:
    try:
        parse_job_request(raw, allowed_targets=INIT_TARGETS)
    except JobValidationError as error:
        assert error.errors
