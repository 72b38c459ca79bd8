"""The synthesized JobClaim construct deployed into moto: tables, queues, topic, bucket, functions,
the state machine, the bucket notification -- all read from the template (tests/support/cfn_deploy.py).

Our handlers run inside moto (``lambda_runs_handlers``), executions run in moto's ASL interpreter
with waits compressed (``fast_stepfunctions``); reference workers run as threads in the test.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from typing import Any

import aws_cdk as cdk
import boto3
import pytest
from aws_cdk import aws_kms as kms
from aws_cdk.assertions import Template

from handlers.job_claim import schema
from infra.constructs.job_claim import INCOMING_PREFIX, JobClaim
from tests.support.cfn_deploy import ACCOUNT, REGION, Deployment, deploy
from tests.support.fast_stepfunctions import StepFunctionsClock
from tests.support.moto_lambda import LambdaHarness

EMAIL_DOMAIN = "jobs.example.com"


@cache
def job_claim_template() -> dict[str, Any]:
    """The construct as a user's app would synthesize it (heartbeat 60 s, timeout 1 h, ...)."""
    app = cdk.App(context={"aws:cdk:bundling-stacks": []})
    stack = cdk.Stack(app, "JobClaimUnderTest", env=cdk.Environment(account=ACCOUNT, region=REGION))
    JobClaim(
        stack, "JobClaim", encryption_key=kms.Key(stack, "Key", enable_key_rotation=True), email_domain=EMAIL_DOMAIN
    )
    return dict(Template.from_stack(stack).to_json())


@dataclass
class JobClaimDeployment:
    deployment: Deployment
    harness: LambdaHarness
    clock: StepFunctionsClock

    def name(self, resource_type: str, contains: str) -> str:
        return self.deployment.names[self.deployment.logical_id(resource_type, contains)]

    def ref(self, resource_type: str, contains: str) -> str:
        return self.deployment.refs[self.deployment.logical_id(resource_type, contains)]

    @property
    def bucket(self) -> str:
        return self.name("AWS::S3::Bucket", "EmailBucket")

    @property
    def state_machine_arn(self) -> str:
        return self.ref("AWS::StepFunctions::StateMachine", "StateMachine")

    @property
    def input_queue_url(self) -> str:
        return self.ref("AWS::SQS::Queue", "InputQueue")

    @property
    def email_dlq_url(self) -> str:
        return self.ref("AWS::SQS::Queue", "EmailDlq")

    def table(self, role: str) -> str:
        construct_id = "".join(part.title() for part in role.split("_")) + "Table"
        return self.name("AWS::DynamoDB::Table", construct_id)

    def worker_environment(self) -> dict[str, str]:
        return {
            schema.ENV_OWNERSHIP_TABLE: self.table("ownership"),
            schema.ENV_ACTIVE_JOBS_TABLE: self.table("active_jobs"),
            schema.ENV_INPUT_QUEUE_URL: self.input_queue_url,
        }

    def deliver_email(self, raw: bytes, key: str) -> None:
        """What SES does: store the message under incoming/ (S3 then notifies the intake)."""
        boto3.client("s3").put_object(Bucket=self.bucket, Key=f"{INCOMING_PREFIX}{key}", Body=raw)

    def executions(self) -> list[dict[str, Any]]:
        sfn = boto3.client("stepfunctions")
        return list(sfn.list_executions(stateMachineArn=self.state_machine_arn)["executions"])

    def dlq_messages(self) -> list[dict[str, Any]]:
        sqs = boto3.client("sqs")
        found: list[dict[str, Any]] = []
        while True:
            answer = sqs.receive_message(QueueUrl=self.email_dlq_url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
            batch = answer.get("Messages", [])
            if not batch:
                return found
            for message in batch:
                found.append(json.loads(message["Body"]))
                sqs.delete_message(QueueUrl=self.email_dlq_url, ReceiptHandle=message["ReceiptHandle"])


@pytest.fixture
def job_claim(
    aws: Any, lambda_runs_handlers: LambdaHarness, fast_stepfunctions: StepFunctionsClock
) -> Iterator[JobClaimDeployment]:
    deployment = deploy(job_claim_template(), lambda_runs_handlers)
    # 60 s heartbeats take 3 s: room for a worker thread on a loaded machine; 1 h timeouts 3 min.
    fast_stepfunctions.scale = 0.05
    yield JobClaimDeployment(deployment, lambda_runs_handlers, fast_stepfunctions)
