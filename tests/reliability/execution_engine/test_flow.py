"""ExecutionEngine end to end: the synthesized construct in moto, our four handlers inside it.

A job goes in through the init function (the event API Gateway sends for POST /init), its orders
are packaged from a local git repository with SOPS-sealed credentials, the orchestrator runs on
every result.json S3 writes, the worker runs each order's commands for real (bash), and the
watchdog runs in moto's ASL interpreter. Assertions are on what each order and the job ended as,
on the events and the done marker, and on where secrets did not go.
"""

from __future__ import annotations

import base64
import io
import json
import time
import zipfile
from pathlib import Path
from typing import Any

import boto3
import pytest

from handlers.execution_engine import schema
from tests.support.execution_engine_deployment import CREDENTIAL_PARAMETER_PREFIX, EngineDeployment
from tests.support.git_fixture import LocalRepository, make_repository

pytest_plugins = ["tests.support.execution_engine_deployment"]

SECRET_VALUE = "s3cr3t-token-value-9f2c"


@pytest.fixture
def repository(tmp_path: Path) -> LocalRepository:
    return make_repository(tmp_path, [{"README.md": "hello from the repo\n", "scripts/build.sh": "echo built\n"}])


def order(name: str, cmds: list[str], *, deps: tuple[str, ...] = (), **extra: Any) -> dict[str, Any]:
    return {
        "order_name": name,
        "cmds": cmds,
        "timeout": 60,
        "execution_target": "lambda",
        "dependencies": list(deps),
        **extra,
    }


def job(repository: LocalRepository, orders: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {
        "username": "ana",
        "git_repo": repository.url,
        "commit_hash": repository.commits[-1],
        "orders": orders,
        **extra,
    }


def events_of(engine: EngineDeployment, trace_id: str, event_type: str) -> list[dict[str, Any]]:
    return [e for e in engine.events(trace_id) if e["type"] == event_type]


def test_a_diamond_and_a_chain_all_succeed(engine: EngineDeployment, repository: LocalRepository) -> None:
    ssm = boto3.client("ssm")
    ssm.put_parameter(Name=f"{CREDENTIAL_PARAMETER_PREFIX}deploy/API_TOKEN", Value=SECRET_VALUE, Type="SecureString")
    orders = [
        order("build", ["cat README.md", "sh scripts/build.sh"]),
        order("test-a", ["echo a"], deps=("build",)),
        order("test-b", ["echo b"], deps=("build",)),
        order(
            "deploy",
            ['test "$API_TOKEN" = "' + SECRET_VALUE + '" && echo token-ok', 'test "$STAGE" = prod && echo stage-ok'],
            deps=("test-a", "test-b"),
            ssm_paths=[f"{CREDENTIAL_PARAMETER_PREFIX}deploy/API_TOKEN"],
            env_vars={"STAGE": "prod"},
        ),
        order("c1", ["echo one"]),
        order("c2", ["echo two"], deps=("c1",)),
        order("c3", ["echo three"], deps=("c2",)),
    ]
    answer = engine.submit(job(repository, orders))
    assert answer["status"] == "ok"
    run_id = answer["run_id"]
    assert answer["flow_id"] == f"ana:{answer['trace_id']}-exec"
    assert answer["done_endpt"] == f"s3://{engine.done_bucket}/{run_id}/done"

    done = engine.wait_for_done(run_id)

    assert done["status"] == schema.JOB_SUCCEEDED
    items = engine.items(run_id)
    assert {num: item["status"] for num, item in items.items() if num != "0000"} == {
        schema.order_num(n): schema.SUCCEEDED for n in range(1, 8)
    }
    assert items["0000"]["status"] == schema.JOB_SUCCEEDED
    assert "hello from the repo" in items["0001"]["log"] and "built" in items["0001"]["log"]
    assert "token-ok" in items["0004"]["log"] and "stage-ok" in items["0004"]["log"]
    assert SECRET_VALUE not in items["0004"]["log"]
    # Dependencies were honoured: every order finished after each of its dependencies.
    finished_at = {num: int(item["finished_at_ms"]) for num, item in items.items() if num != "0000"}
    dispatched_at = {num: int(item["dispatched_at_ms"]) for num, item in items.items() if num != "0000"}
    for num, deps in {
        "0002": ["0001"],
        "0003": ["0001"],
        "0004": ["0002", "0003"],
        "0006": ["0005"],
        "0007": ["0006"],
    }.items():
        assert all(dispatched_at[num] >= finished_at[dep] for dep in deps), (num, deps)
    assert len(events_of(engine, answer["trace_id"], schema.EVENT_JOB_COMPLETED)) == 1
    assert len(events_of(engine, answer["trace_id"], schema.EVENT_ORDER_DISPATCHED)) == 7
    # The run's age identity is gone.
    with pytest.raises(ssm.exceptions.ParameterNotFound):
        ssm.get_parameter(Name=f"{engine.sops_key_prefix}{run_id}")
    engine.harness.wait_for_background()
    assert not engine.harness.async_failures


def test_a_failed_order_that_must_succeed_fails_its_dependents_and_the_job(
    engine: EngineDeployment, repository: LocalRepository
) -> None:
    orders = [
        order("build", ["echo building", "exit 3"]),
        order("test", ["echo never"], deps=("build",)),
        order("deploy", ["echo never"], deps=("test",)),
        order("lint", ["echo linted"]),
    ]
    run_id = engine.submit(job(repository, orders))["run_id"]
    done = engine.wait_for_done(run_id)
    assert done["status"] == schema.JOB_FAILED
    assert engine.statuses(run_id) == {
        "0000": schema.JOB_FAILED,
        "0001": schema.FAILED,
        "0002": schema.DEPENDENCY_FAILED,
        "0003": schema.DEPENDENCY_FAILED,
        "0004": schema.SUCCEEDED,
    }


def test_a_failed_order_that_need_not_succeed_lets_its_dependents_run(
    engine: EngineDeployment, repository: LocalRepository
) -> None:
    orders = [
        order("optional", ["exit 1"], must_succeed=False),
        order("after", ["echo ran anyway"], deps=("optional",)),
    ]
    run_id = engine.submit(job(repository, orders))["run_id"]
    done = engine.wait_for_done(run_id)
    assert done["status"] == schema.JOB_SUCCEEDED
    assert engine.statuses(run_id) == {"0000": schema.JOB_SUCCEEDED, "0001": schema.FAILED, "0002": schema.SUCCEEDED}


def test_every_validation_error_comes_back_as_a_400(engine: EngineDeployment) -> None:
    bad = {
        "username": "ana",
        "orders": [{"cmds": [], "timeout": 0}, {"cmds": ["x"], "timeout": 5, "dependencies": ["nope"]}],
    }
    status, body = engine.submit_raw(
        json.dumps({"job_parameters_b64": base64.b64encode(json.dumps(bad).encode()).decode()})
    )
    assert status == 400 and body["status"] == "error"
    assert len(body["errors"]) >= 4, body["errors"]
    for raw in (None, "not json", json.dumps({"job_parameters_b64": "!!!"}), json.dumps([1])):
        status, body = engine.submit_raw(raw)
        assert status == 400 and body["status"] == "error" and body["errors"], raw


def test_two_callbacks_at_once_are_both_processed(engine: EngineDeployment, repository: LocalRepository) -> None:
    """Eight independent orders finish together: their callbacks meet the lock; none is dropped."""
    orders = [order(f"o{n}", ["echo done"]) for n in range(8)] + [
        order("join", ["echo joined"], deps=tuple(f"o{n}" for n in range(8)))
    ]
    run_id = engine.submit(job(repository, orders))["run_id"]
    done = engine.wait_for_done(run_id)
    assert done["status"] == schema.JOB_SUCCEEDED
    assert set(engine.statuses(run_id).values()) == {schema.SUCCEEDED}


def test_secrets_never_reach_logs_items_or_objects_in_plaintext(
    engine: EngineDeployment, repository: LocalRepository, capfd: pytest.CaptureFixture[str]
) -> None:
    secrets_manager = boto3.client("secretsmanager")
    secrets_manager.create_secret(Name="jobs/deploy", SecretString=json.dumps({"DEPLOY_KEY": SECRET_VALUE}))
    orders = [
        order(
            "uses-secret",
            ['echo "key is $DEPLOY_KEY"', 'test -n "$DEPLOY_KEY"'],
            secret_manager_paths=["jobs/deploy"],
        )
    ]
    run_id = engine.submit(job(repository, orders))["run_id"]
    assert engine.wait_for_done(run_id)["status"] == schema.JOB_SUCCEEDED
    engine.harness.wait_for_background()

    captured = capfd.readouterr()
    assert SECRET_VALUE not in captured.out + captured.err
    dynamodb = boto3.client("dynamodb")
    for table in (engine.table("orders"), engine.table("order_events"), engine.table("locks")):
        assert SECRET_VALUE not in json.dumps(dynamodb.scan(TableName=table)["Items"])
    s3 = boto3.client("s3")
    for bucket in (engine.internal_bucket, engine.done_bucket):
        for entry in s3.list_objects_v2(Bucket=bucket).get("Contents", []):
            body = s3.get_object(Bucket=bucket, Key=entry["Key"])["Body"].read()
            assert SECRET_VALUE.encode() not in body, entry["Key"]
            if entry["Key"].endswith("exec.zip"):
                with zipfile.ZipFile(io.BytesIO(body)) as archive:
                    for name in archive.namelist():
                        assert SECRET_VALUE.encode() not in archive.read(name), name
    assert "key is" in engine.items(run_id)["0001"]["log"]


def test_an_order_that_never_reports_is_timed_out_by_the_watchdog(
    engine: EngineDeployment, repository: LocalRepository
) -> None:
    """The worker is lost (it never reports): the watchdog writes timed_out, the job finalizes."""
    orders = [order("hangs", ["sleep 1"], timeout=5), order("after", ["echo x"], deps=("hangs",))]
    engine.harness.lose_async_invocations(engine.function("Worker"))
    run_id = engine.submit(job(repository, orders))["run_id"]
    done = engine.wait_for_done(run_id, within=60)
    assert done["status"] == schema.JOB_TIMED_OUT
    assert engine.statuses(run_id) == {
        "0000": schema.JOB_TIMED_OUT,
        "0001": schema.TIMED_OUT,
        "0002": schema.DEPENDENCY_FAILED,
    }
    result = engine.result(run_id, "0001")
    assert result is not None and result["written_by"] == "watchdog"


def test_a_hard_cap_result_is_terminal_and_the_job_finalizes(
    engine: EngineDeployment, repository: LocalRepository
) -> None:
    """A watchdog check that comes after 2 x the timeout writes the hard-cap result (the seed's
    job never finalized on it)."""
    engine.harness.lose_async_invocations(engine.function("Worker"))
    run_id = engine.submit(job(repository, [order("lost", ["echo x"], timeout=600)]))["run_id"]
    wait_for_status(engine, run_id, "0001", schema.RUNNING)
    late_check = {"run_id": run_id, "order_num": "0001", "timeout": 600, "started_at_ms": 0, "dispatch_generation": 1}
    answer = boto3.client("lambda").invoke(
        FunctionName=engine.function("WatchdogCheck"), Payload=json.dumps(late_check)
    )
    assert json.loads(answer["Payload"].read())["outcome"] == schema.HARD_CAP_REACHED
    done = engine.wait_for_done(run_id)
    assert done["status"] == schema.JOB_TIMED_OUT
    assert engine.statuses(run_id)["0001"] == schema.HARD_CAP_REACHED


def wait_for_status(engine: EngineDeployment, run_id: str, num: str, status: str, *, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if engine.statuses(run_id).get(num) == status:
            return
        time.sleep(0.05)
    raise AssertionError(f"order {num} never reached {status}: {engine.statuses(run_id)}")


def s3_event(bucket: str, key: str) -> dict[str, Any]:
    return {"Records": [{"eventSource": "aws:s3", "s3": {"bucket": {"name": bucket}, "object": {"key": key}}}]}


def test_the_orchestrator_invoked_twice_for_the_same_callback_changes_nothing(
    engine: EngineDeployment, repository: LocalRepository
) -> None:
    orders = [order("first", ["echo 1"]), order("second", ["echo 2"], deps=("first",))]
    run_id = engine.submit(job(repository, orders))["run_id"]
    engine.wait_for_done(run_id)
    engine.harness.wait_for_background()
    worker_runs = len(engine.harness.invocations_of(engine.function("Worker")))
    before = engine.items(run_id)
    for num in ("0000", "0001", "0002", "0001"):
        event = s3_event(engine.internal_bucket, schema.callback_key(run_id, num))
        answer = boto3.client("lambda").invoke(
            FunctionName=engine.function("Orchestrator"), InvocationType="RequestResponse", Payload=json.dumps(event)
        )
        assert json.loads(answer["Payload"].read())["passes"][0]["outcome"] == "already_finalized"
    assert engine.items(run_id) == before
    assert len(engine.harness.invocations_of(engine.function("Worker"))) == worker_runs == 2
    assert len(events_of(engine, before["0000"]["trace_id"], schema.EVENT_JOB_COMPLETED)) == 1


def test_a_failing_target_call_fails_that_order_not_the_run(
    engine: EngineDeployment, repository: LocalRepository
) -> None:
    """The worker function is gone (deleted): the invoke fails, the order is failed with the reason."""
    boto3.client("lambda").delete_function(FunctionName=engine.function("Worker"))
    orders = [order("cannot-run", ["echo x"], must_succeed=False), order("after", ["echo y"], deps=("cannot-run",))]
    run_id = engine.submit(job(repository, orders))["run_id"]
    done = engine.wait_for_done(run_id)
    items = engine.items(run_id)
    assert items["0001"]["status"] == schema.FAILED
    assert "lambda target call failed" in items["0001"]["reason"]
    # the dependent was dispatched too, and failed the same way: nothing is stuck in dispatching
    assert items["0002"]["status"] == schema.FAILED
    assert done["status"] == schema.JOB_FAILED
    result = engine.result(run_id, "0001")
    assert result is not None and result["written_by"] == "orchestrator"


def test_a_crash_between_the_reservation_and_the_target_call_is_recovered(
    engine: EngineDeployment, repository: LocalRepository, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first StartExecution (the dispatch ticket) fails: that pass dies with the order reserved
    (dispatching). Lambda's async retry runs a new pass, which finds no ticket and dispatches it:
    once."""
    from moto.stepfunctions.parser.models import StepFunctionsParserBackend

    original = StepFunctionsParserBackend.start_execution
    failures = {"left": 1}

    def start_execution(self: Any, *args: Any, **kwargs: Any) -> Any:
        if failures["left"]:
            failures["left"] -= 1
            raise RuntimeError("the orchestrator's container died here")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(StepFunctionsParserBackend, "start_execution", start_execution)
    run_id = engine.submit(job(repository, [order("only", ["echo ran"])]))["run_id"]
    done = engine.wait_for_done(run_id)
    assert done["status"] == schema.JOB_SUCCEEDED
    engine.harness.wait_for_background()
    assert len(engine.harness.invocations_of(engine.function("Worker"))) == 1
    assert failures["left"] == 0


def test_a_dead_lock_holder_is_taken_over_when_its_lease_ends(
    engine: EngineDeployment, repository: LocalRepository
) -> None:
    """A holder died with the run's lock; the next callback waits out its lease and goes on."""
    run_id = engine.submit(
        job(repository, [order("slow", ["sleep 3", "echo done"]), order("next", ["echo n"], deps=("slow",))])
    )["run_id"]
    wait_for_status(engine, run_id, "0001", schema.RUNNING)
    now_ms = time.time_ns() // 1_000_000
    boto3.client("dynamodb").put_item(
        TableName=engine.table("locks"),
        Item={
            "pk": {"S": schema.lock_pk(run_id)},
            "state": {"S": "pending"},
            "token": {"S": "a-holder-that-died"},
            "generation": {"N": "99"},
            "lease_until_ms": {"N": str(now_ms + 5_000)},
            "claimed_at_ms": {"N": str(now_ms)},
            "first_claimed_at_ms": {"N": str(now_ms)},
        },
    )
    done = engine.wait_for_done(run_id, within=90)
    assert done["status"] == schema.JOB_SUCCEEDED
    assert engine.statuses(run_id)["0002"] == schema.SUCCEEDED


def test_a_credential_outside_the_prefixes_or_an_unknown_commit_is_a_400(
    engine: EngineDeployment, repository: LocalRepository
) -> None:
    def post(document: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        encoded = base64.b64encode(json.dumps(document).encode()).decode()
        return engine.submit_raw(json.dumps({"job_parameters_b64": encoded}))

    status, body = post(job(repository, [order("o", ["true"], ssm_paths=["/prod/db/password"])]))
    assert status == 400 and "outside the prefixes" in body["errors"][0]
    status, body = post(job(repository, [order("o", ["true"])], commit_hash="0" * 40))
    assert status == 400 and body["status"] == "error" and body["errors"]
    # nothing of either attempt was started, and the second attempt's key is gone
    assert not boto3.client("stepfunctions").list_executions(stateMachineArn=engine.watchdog_arn)["executions"]
    keys = boto3.client("ssm").get_parameters_by_path(Path=engine.sops_key_prefix.rstrip("/"), Recursive=True)
    assert not keys["Parameters"]
