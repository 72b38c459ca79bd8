"""The synthesized ExecutionEngine construct deployed into moto, running end to end.

Everything comes from the template (tests/support/cfn_deploy.py): the tables, both buckets and the
internal bucket's notification of the orchestrator, the four functions with their environments and
async settings (retries, on-failure queue), and the watchdog state machine. Our handlers run inside
moto (``lambda_runs_handlers``) with Lambda's asynchronous model switched on
(``run_async_in_background``): S3 notifications and the orchestrator's invoke of the worker answer
at once and run on their own threads, failed runs are retried and then land in the on-failure
queue. The watchdog runs in moto's ASL interpreter with its 50-70 s waits compressed.

The API is not emulated (moto's HTTP API routes nothing): ``submit`` invokes the init function with
the payload-2.0 event API Gateway would send for ``POST /init``.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

import aws_cdk as cdk
import boto3
import pytest
from aws_cdk import aws_kms as kms
from aws_cdk.assertions import Template

from handlers.common.dynamo_items import to_plain
from handlers.execution_engine import schema
from infra.constructs.execution_engine import ExecutionEngine
from tests.support.cfn_deploy import ACCOUNT, REGION, Deployment, deploy
from tests.support.fast_stepfunctions import StepFunctionsClock
from tests.support.moto_lambda import LambdaHarness

CREDENTIAL_PARAMETER_PREFIX = "/jobs/"
CREDENTIAL_SECRET_PREFIX = "jobs/"


@cache
def execution_engine_template() -> dict[str, Any]:
    app = cdk.App(context={"aws:cdk:bundling-stacks": []})
    stack = cdk.Stack(app, "ExecutionEngineUnderTest", env=cdk.Environment(account=ACCOUNT, region=REGION))
    ExecutionEngine(
        stack,
        "Engine",
        encryption_key=kms.Key(stack, "Key", enable_key_rotation=True),
        credential_parameter_prefixes=(CREDENTIAL_PARAMETER_PREFIX,),
        credential_secret_prefixes=(CREDENTIAL_SECRET_PREFIX,),
    )
    return dict(Template.from_stack(stack).to_json())


@dataclass
class EngineDeployment:
    deployment: Deployment
    harness: LambdaHarness
    clock: StepFunctionsClock

    def name(self, resource_type: str, contains: str) -> str:
        return self.deployment.names[self.deployment.logical_id(resource_type, contains)]

    def function(self, contains: str) -> str:
        return self.name("AWS::Lambda::Function", contains)

    def table(self, role: str) -> str:
        return str(self._env("Init" if role != "locks" else "Orchestrator")[f"EXECUTION_ENGINE_{role.upper()}_TABLE"])

    def _env(self, function_contains: str) -> Mapping[str, Any]:
        logical_id = self.deployment.logical_id("AWS::Lambda::Function", function_contains)
        resource = self.deployment.template["Resources"][logical_id]
        return dict(self.deployment.resolve(resource["Properties"]["Environment"]["Variables"]))

    @property
    def internal_bucket(self) -> str:
        return str(self._env("Orchestrator")[schema.ENV_INTERNAL_BUCKET])

    @property
    def done_bucket(self) -> str:
        return str(self._env("Orchestrator")[schema.ENV_DONE_BUCKET])

    @property
    def sops_key_prefix(self) -> str:
        return str(self._env("Orchestrator")[schema.ENV_SOPS_KEY_PARAMETER_PREFIX])

    @property
    def watchdog_arn(self) -> str:
        return str(self._env("Orchestrator")[schema.ENV_WATCHDOG_STATE_MACHINE_ARN])

    def orchestrator_dlq_url(self) -> str:
        return self.deployment.refs[self.deployment.logical_id("AWS::SQS::Queue", "OrchestratorDlq")]

    # -- acting like a caller ---------------------------------------------------------------

    def submit_raw(self, body: str | None, *, base64_encoded: bool = False) -> tuple[int, dict[str, Any]]:
        """What API Gateway sends the init function for POST /init (payload format 2.0)."""
        event = {
            "version": "2.0",
            "routeKey": "POST /init",
            "rawPath": "/init",
            "headers": {"content-type": "application/json"},
            "requestContext": {"http": {"method": "POST", "path": "/init"}, "authorizer": {"iam": {}}},
            "body": body,
            "isBase64Encoded": base64_encoded,
        }
        answer = boto3.client("lambda").invoke(FunctionName=self.function("Init"), Payload=json.dumps(event).encode())
        payload = json.loads(answer["Payload"].read())
        if "FunctionError" in answer:
            raise AssertionError(f"init failed: {payload}")
        return int(payload["statusCode"]), json.loads(payload["body"])

    def submit(self, job: Mapping[str, Any]) -> dict[str, Any]:
        encoded = base64.b64encode(json.dumps(job).encode()).decode()
        status, body = self.submit_raw(json.dumps({"job_parameters_b64": encoded}))
        assert status == 200, body
        return body

    # -- reading what happened --------------------------------------------------------------

    def items(self, run_id: str) -> dict[str, dict[str, Any]]:
        dynamodb = boto3.client("dynamodb")
        table = self.table("orders")
        job = to_plain(dynamodb.get_item(TableName=table, Key={"pk": {"S": f"{run_id}:0000"}})["Item"]) or {}
        found = {"0000": job}
        for n in range(1, int(job["order_count"]) + 1):
            num = schema.order_num(n)
            item = dynamodb.get_item(TableName=table, Key={"pk": {"S": f"{run_id}:{num}"}}).get("Item")
            found[num] = to_plain(item) or {}
        return found

    def statuses(self, run_id: str) -> dict[str, str]:
        return {num: str(item.get("status")) for num, item in self.items(run_id).items()}

    @staticmethod
    def _json_object(bucket: str, key: str) -> dict[str, Any] | None:
        s3 = boto3.client("s3")
        try:
            body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        except s3.exceptions.NoSuchKey:
            return None
        return dict(json.loads(body))

    def done_marker(self, run_id: str) -> dict[str, Any] | None:
        return self._json_object(self.done_bucket, schema.done_key(run_id))

    def wait_for_done(self, run_id: str, *, within: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            marker = self.done_marker(run_id)
            if marker is not None:
                return marker
            time.sleep(0.1)
        raise AssertionError(f"run {run_id} did not finish within {within} s: {self.statuses(run_id)}")

    def events(self, trace_id: str) -> list[dict[str, Any]]:
        answer = boto3.client("dynamodb").query(
            TableName=self.table("order_events"),
            KeyConditionExpression="trace_id = :t",
            ExpressionAttributeValues={":t": {"S": trace_id}},
        )
        return [to_plain(item) or {} for item in answer["Items"]]

    def result(self, run_id: str, num: str) -> dict[str, Any] | None:
        return self._json_object(self.internal_bucket, schema.callback_key(run_id, num))


@pytest.fixture
def engine(
    aws: Any, lambda_runs_handlers: LambdaHarness, fast_stepfunctions: StepFunctionsClock
) -> Iterator[EngineDeployment]:
    lambda_runs_handlers.run_async_in_background(retry_delays_s=(0.5, 1.0))
    deployment = deploy(execution_engine_template(), lambda_runs_handlers)
    # The watchdog's 50-70 s waits take 0.5-0.7 s.
    fast_stepfunctions.scale = 0.01
    yield EngineDeployment(deployment, lambda_runs_handlers, fast_stepfunctions)
    lambda_runs_handlers.wait_for_background(timeout_s=60)
