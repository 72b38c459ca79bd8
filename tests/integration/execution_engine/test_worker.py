"""The worker against moto server over HTTP: exec.zip in S3, the identity in SSM, result.json by
presigned PUT with ``If-None-Match: *`` -- and the credentials in none of the logs or results."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import stat
import subprocess
import sys
import tempfile
import time
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from handlers.execution_engine import schema, worker
from handlers.execution_engine.exec_package import build_exec_zip
from handlers.execution_engine.results import OrderResult
from handlers.execution_engine.sealed_bundle import AgeIdentity, new_identity, seal_order_bundle
from tests.support.moto_lambda import LambdaContext
from tests.support.moto_server import MotoServer

BUCKET = "internal-bucket"
PROJECT_ROOT = Path(__file__).resolve().parents[3]
SECRET = "s3cr3t-credential-9d1e77"
MULTILINE_SECRET = "-----BEGIN KEY-----\nkey-body-line-one\nkey-body-line-two\n-----END KEY-----"


@dataclass
class Order:
    event: dict[str, Any]
    callback_url: str
    result_key: str
    identity: AgeIdentity


class CapturedLog(logging.Handler):
    """Every record of the worker's Powertools logger, formatted as Powertools writes it."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []
        self.setFormatter(worker.logger.registered_formatter)

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


@pytest.fixture
def captured() -> Iterator[CapturedLog]:
    handler = CapturedLog()
    underlying = logging.getLogger(worker.logger.name)  # the stdlib logger Powertools writes through
    underlying.addHandler(handler)
    try:
        yield handler
    finally:
        underlying.removeHandler(handler)


@pytest.fixture
def worker_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where the worker makes its private directories (checked empty afterwards)."""
    path = tmp_path / "worker-tmp"
    path.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(path))
    return path


@pytest.fixture
def s3(aws: MotoServer) -> Any:
    client = boto3.client("s3")
    client.create_bucket(Bucket=BUCKET)
    return client


@pytest.fixture
def ssm(aws: MotoServer) -> Any:
    return boto3.client("ssm")


def make_order(
    s3: Any,
    ssm: Any,
    tmp_path: Path,
    *,
    cmds: list[str],
    timeout: float = 30,
    env: dict[str, str] | None = None,
    files: dict[str, tuple[str, int]] | None = None,
    order_num: str = "0001",
) -> Order:
    run_id = uuid.uuid4().hex
    identity = new_identity()
    parameter = f"/execution-engine/sops-keys/{run_id}"
    ssm.put_parameter(Name=parameter, Value=identity.secret, Type="SecureString", Tier="Advanced")
    result_key = schema.callback_key(run_id, order_num)
    callback_url = s3.generate_presigned_url(
        "put_object", Params={"Bucket": BUCKET, "Key": result_key, "IfNoneMatch": "*"}, ExpiresIn=3600
    )
    code_dir = None
    if files:
        code_dir = tmp_path / f"code-{run_id}"
        for name, (text, mode) in files.items():
            path = code_dir / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            path.chmod(mode)
    manifest = {
        "schema_version": schema.SCHEMA_VERSION,
        "run_id": run_id,
        "order_num": order_num,
        "order_name": "deploy",
        "cmds": cmds,
        "timeout": timeout,
    }
    sealed = seal_order_bundle(env or {}, callback_url, identity.recipient)
    data = build_exec_zip(manifest=manifest, sealed_bundle=sealed, code_dir=code_dir)
    exec_key = schema.exec_key(run_id, order_num)
    s3.put_object(Bucket=BUCKET, Key=exec_key, Body=data)
    event = {
        "run_id": run_id,
        "order_num": order_num,
        "exec_bucket": BUCKET,
        "exec_key": exec_key,
        "sops_key_parameter": parameter,
    }
    return Order(event=event, callback_url=callback_url, result_key=result_key, identity=identity)


def context(seconds: float = 900) -> LambdaContext:
    return LambdaContext(
        aws_request_id=str(uuid.uuid4()),
        function_name="execution-engine-worker",
        function_version="$LATEST",
        invoked_function_arn="arn:aws:lambda:us-east-1:123456789012:function:execution-engine-worker",
        memory_limit_in_mb="1024",
        log_group_name="/aws/lambda/execution-engine-worker",
        log_stream_name="stream",
        deadline=time.monotonic() + seconds,
    )


def stored_result(s3: Any, order: Order) -> dict[str, Any]:
    body = s3.get_object(Bucket=BUCKET, Key=order.result_key)["Body"].read()
    return dict(json.loads(body))


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        assert SECRET not in text
        for line in MULTILINE_SECRET.splitlines():
            assert line not in text


def test_an_order_runs_and_its_result_is_stored_without_the_credentials(
    s3: Any, ssm: Any, tmp_path: Path, worker_tmp: Path, captured: CapturedLog, capfd: pytest.CaptureFixture[str]
) -> None:
    order = make_order(
        s3,
        ssm,
        tmp_path,
        cmds=[
            "./build.sh",
            'echo "token=$API_TOKEN short=$SHORT"; printf "%s\\n" "$SSH_KEY"; env | sort',
            "stat -c 'dir mode %a' .. && cat data/config.txt",
        ],
        env={"API_TOKEN": SECRET, "SHORT": "eu", "SSH_KEY": MULTILINE_SECRET},
        files={
            "build.sh": ("#!/bin/sh\necho building in $(basename $PWD)\n", 0o755),
            "data/config.txt": ("cfg\n", 0o644),
        },
    )

    report = worker.handler(order.event, context())

    assert report == {
        "run_id": order.event["run_id"],
        "order_num": "0001",
        "order_name": "deploy",
        "status": schema.SUCCEEDED,
        "reason": None,
        "delivered": True,
    }
    result = stored_result(s3, order)
    assert result["schema_version"] == "v1"
    assert result["status"] == "succeeded"
    assert result["written_by"] == "worker"
    assert "reason" not in result
    log = result["log"]
    assert "$ ./build.sh\nbuilding in code\n" in log
    assert "token=*** short=eu\n" in log
    assert "***\n***\n***\n***\n" in log  # every line of the multi-line key
    assert "API_TOKEN=***" in log and "SHORT=eu" in log
    assert "dir mode 700\ncfg\n" in log  # a private directory
    assert "AWS_SECRET_ACCESS_KEY" not in log and "AWS_SESSION_TOKEN" not in log  # the worker's own
    # Streamed to the function log, prefixed with the order.
    assert "[0001 deploy] building in code" in captured.text
    assert "[0001 deploy] token=*** short=eu" in captured.text
    out, err = capfd.readouterr()
    stored = s3.get_object(Bucket=BUCKET, Key=order.result_key)["Body"].read().decode()
    assert_no_secret(captured.text, out, err, stored, json.dumps(report))
    assert order.identity.secret not in captured.text + out + err + stored
    assert order.callback_url not in captured.text + out + err
    assert list(worker_tmp.iterdir()) == []  # the private directory is gone


def test_a_failing_command_stops_the_order_and_is_reported(s3: Any, ssm: Any, tmp_path: Path, worker_tmp: Path) -> None:
    order = make_order(s3, ssm, tmp_path, cmds=["echo before", "echo oops >&2; exit 5", "echo after"])

    report = worker.handler(order.event, context())

    assert report["status"] == schema.FAILED and report["delivered"] is True
    result = stored_result(s3, order)
    assert (result["status"], result["reason"], result["written_by"]) == (
        "failed",
        "command 2 of 3 exited with 5",
        "worker",
    )
    assert result["log"] == "$ echo before\nbefore\n$ echo oops >&2; exit 5\noops\n"
    assert list(worker_tmp.iterdir()) == []


def test_the_order_timeout_kills_the_command_and_is_reported(
    s3: Any, ssm: Any, tmp_path: Path, worker_tmp: Path
) -> None:
    order = make_order(s3, ssm, tmp_path, cmds=["echo started; sleep 60", "echo never"], timeout=1)
    started = time.monotonic()

    report = worker.handler(order.event, context())

    assert time.monotonic() - started < 10
    assert report["status"] == schema.FAILED
    result = stored_result(s3, order)
    assert result["status"] == "failed"
    assert result["reason"] == "timed out after 1 s (the order's timeout) in command 1 of 2"
    assert result["log"] == "$ echo started; sleep 60\nstarted\n"
    assert list(worker_tmp.iterdir()) == []


def test_the_lambda_time_limit_stops_the_commands_in_time_to_report(
    s3: Any, ssm: Any, tmp_path: Path, worker_tmp: Path
) -> None:
    order = make_order(s3, ssm, tmp_path, cmds=["sleep 60"], timeout=600)

    started = time.monotonic()
    report = worker.handler(order.event, context(seconds=worker.REPORT_MARGIN_SECONDS + 3))

    assert time.monotonic() - started < 4  # stopped with the margin still left to report
    assert report["status"] == schema.FAILED
    reason = stored_result(s3, order)["reason"]
    match = re.fullmatch(
        r"stopped after ([0-9.]+) s at the worker's own time limit \(Lambda\), before the order's timeout of 600 s",
        reason,
    )
    assert match is not None, reason
    assert 0 < float(match.group(1)) <= 3


def test_the_first_result_wins_a_second_write_gets_412(
    s3: Any, ssm: Any, tmp_path: Path, worker_tmp: Path, captured: CapturedLog
) -> None:
    order = make_order(s3, ssm, tmp_path, cmds=["echo done"])

    assert worker.handler(order.event, context())["delivered"] is True
    first = stored_result(s3, order)
    late = OrderResult(status=schema.TIMED_OUT, reason="late watchdog", written_by="watchdog")
    assert worker.deliver_result(order.callback_url, late) is False  # 412
    with pytest.raises(ClientError) as refused:
        s3.put_object(Bucket=BUCKET, Key=order.result_key, Body=b"{}", IfNoneMatch="*")
    assert refused.value.response["Error"]["Code"] == "PreconditionFailed"
    assert stored_result(s3, order) == first
    assert first["status"] == "succeeded"


def test_a_result_already_stored_by_the_watchdog_is_kept(
    s3: Any, ssm: Any, tmp_path: Path, worker_tmp: Path, captured: CapturedLog
) -> None:
    order = make_order(s3, ssm, tmp_path, cmds=["echo finished late"])
    watchdog = OrderResult(status=schema.TIMED_OUT, reason="no result within 1 s", written_by="watchdog")
    s3.put_object(Bucket=BUCKET, Key=order.result_key, Body=watchdog.document(), IfNoneMatch="*")

    report = worker.handler(order.event, context())  # not an error

    assert report["status"] == schema.SUCCEEDED and report["delivered"] is False
    assert stored_result(s3, order) == json.loads(watchdog.document())
    assert "Another result of this order was stored first (412)" in captured.text
    assert list(worker_tmp.iterdir()) == []


def test_a_symlink_leaving_the_code_directory_fails_the_order_and_writes_nothing_outside(
    s3: Any, ssm: Any, tmp_path: Path, worker_tmp: Path
) -> None:
    order = make_order(s3, ssm, tmp_path, cmds=["echo never"])
    original = s3.get_object(Bucket=BUCKET, Key=order.event["exec_key"])["Body"].read()
    buffer = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(original)) as source, zipfile.ZipFile(buffer, "w") as target:
        for info in source.infolist():
            target.writestr(info, source.read(info))
        link = zipfile.ZipInfo("code/escape")
        link.create_system = 3
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        target.writestr(link, "sub/../../../../../..")
    s3.put_object(Bucket=BUCKET, Key=order.event["exec_key"], Body=buffer.getvalue())

    report = worker.handler(order.event, context())

    assert report["status"] == schema.FAILED
    result = stored_result(s3, order)
    assert result["reason"].startswith("the order's code/ could not be unpacked: symlink 'escape'")
    assert "$ echo never" not in result["log"]
    assert list(worker_tmp.iterdir()) == []


def test_a_wrong_key_in_ssm_raises_and_reports_nothing_and_leaks_nothing(
    s3: Any, ssm: Any, tmp_path: Path, worker_tmp: Path, captured: CapturedLog, capfd: pytest.CaptureFixture[str]
) -> None:
    order = make_order(s3, ssm, tmp_path, cmds=["echo never"], env={"API_TOKEN": SECRET})
    other = new_identity()
    ssm.put_parameter(Name=order.event["sops_key_parameter"], Value=other.secret, Type="SecureString", Overwrite=True)

    with pytest.raises(worker.WorkerError, match="does not match the bundle's recipient") as raised:
        worker.handler(order.event, context())

    with pytest.raises(ClientError):
        s3.head_object(Bucket=BUCKET, Key=order.result_key)
    out, err = capfd.readouterr()
    assert_no_secret(str(raised.value), captured.text, out, err)
    assert other.secret not in str(raised.value) + captured.text + out + err


def test_a_missing_key_or_a_mismatched_event_is_refused(s3: Any, ssm: Any, tmp_path: Path) -> None:
    order = make_order(s3, ssm, tmp_path, cmds=["echo never"])
    ssm.delete_parameter(Name=order.event["sops_key_parameter"])
    with pytest.raises(worker.WorkerError, match="does not exist"):
        worker.handler(order.event, context())
    with pytest.raises(worker.WorkerError, match="exec_key must be"):
        worker.handler({**order.event, "order_num": "0002"}, context())
    with pytest.raises(worker.WorkerError, match="lacks sops_key_parameter"):
        worker.handler({k: v for k, v in order.event.items() if k != "sops_key_parameter"}, context())


def test_the_cli_entrypoint_runs_an_order_from_environment_variables(
    s3: Any, ssm: Any, tmp_path: Path, aws: MotoServer
) -> None:
    order = make_order(s3, ssm, tmp_path, cmds=["echo from codebuild $API_TOKEN"], env={"API_TOKEN": SECRET})
    env = {
        **os.environ,
        worker.ENV_RUN_ID: order.event["run_id"],
        worker.ENV_ORDER_NUM: order.event["order_num"],
        worker.ENV_EXEC_BUCKET: order.event["exec_bucket"],
        worker.ENV_EXEC_KEY: order.event["exec_key"],
        worker.ENV_SOPS_KEY_PARAMETER: order.event["sops_key_parameter"],
    }

    done = subprocess.run(
        [sys.executable, "-m", "handlers.execution_engine.worker"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert done.returncode == 0, done.stdout + done.stderr
    assert "[0001 deploy] from codebuild ***" in done.stdout
    assert_no_secret(done.stdout, done.stderr)
    result = stored_result(s3, order)
    assert (result["status"], result["log"]) == ("succeeded", "$ echo from codebuild $API_TOKEN\nfrom codebuild ***\n")


def test_the_cli_entrypoint_names_every_missing_variable() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXECUTION_ENGINE_")}
    done = subprocess.run(
        [sys.executable, "-m", "handlers.execution_engine.worker"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    for variable in worker.EVENT_FIELDS.values():
        assert f"{variable} is required but not set" in done.stdout
