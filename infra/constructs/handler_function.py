"""A Lambda function of this product, with every setting stated rather than defaulted.

Latest Python runtime on ARM64, the shared Docker-free asset, explicit memory and timeout,
X-Ray active tracing, environment variables encrypted with the subsystem key, its own encrypted
log group with a fixed retention, and its own role (no AWS managed policy: the only permissions
are the log group's and what constructs grant).
"""

from __future__ import annotations

from collections.abc import Mapping

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from infra.acknowledge import acknowledge
from infra.constructs.lambda_asset import ARCHITECTURE, RUNTIME, handlers_code


class HandlerFunction(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        handler: str,
        description: str,
        encryption_key: kms.IKey,
        timeout: Duration,
        memory_size: int,
        reserved_concurrency: int,
        environment: Mapping[str, str] | None = None,
        service_name: str,
        log_retention: logs.RetentionDays = logs.RetentionDays.ONE_YEAR,
        vpc: ec2.IVpc | None = None,
        vpc_subnets: ec2.SubnetSelection | None = None,
        security_groups: list[ec2.ISecurityGroup] | None = None,
        dead_letter_queue: sqs.IQueue | None = None,
        code: lambda_.Code | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        self.log_group = logs.LogGroup(
            self,
            "LogGroup",
            retention=log_retention,
            encryption_key=encryption_key,
            removal_policy=RemovalPolicy.RETAIN,
        )
        self.role = iam.Role(
            self,
            "Role",
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description=f"Execution role of {service_name}: {description}",
        )
        self.function = lambda_.Function(
            self,
            "Function",
            runtime=RUNTIME,
            architecture=ARCHITECTURE,
            handler=handler,
            code=code or handlers_code(),
            description=description,
            timeout=timeout,
            memory_size=memory_size,
            reserved_concurrent_executions=reserved_concurrency,
            tracing=lambda_.Tracing.ACTIVE,
            log_group=self.log_group,
            logging_format=lambda_.LoggingFormat.JSON,
            role=self.role,
            environment={
                "POWERTOOLS_SERVICE_NAME": service_name,
                "POWERTOOLS_METRICS_NAMESPACE": "EventDrivenSubsystems",
                **(environment or {}),
            },
            # Lambda itself grants the execution role decrypt on this key (a KMS grant made when
            # the function is created), so the role's policy needs no kms:Decrypt for it.
            environment_encryption=encryption_key,
            vpc=vpc,
            vpc_subnets=vpc_subnets,
            security_groups=security_groups,
            # Only asynchronous invocations land here (event source mappings have their own
            # on-failure destination); giving it anyway means an operator's manual async
            # invoke cannot lose an event either.
            dead_letter_queue=dead_letter_queue,
        )
        # The role has no managed policy, so Lambda can write the function's logs only through
        # this grant on its own log group.
        self.log_group.grant_write(self.role)
        # Lambda delivers failed asynchronous events to the DLQ with this role; the function's
        # dead-letter grant covers sqs:SendMessage only, not the queue's KMS key.
        if dead_letter_queue is not None and dead_letter_queue.encryption_master_key is not None:
            dead_letter_queue.encryption_master_key.grant(self.role, "kms:GenerateDataKey", "kms:Decrypt")
        for rule_id in ("NIST.800.53.R5-IAMNoInlinePolicy", "HIPAA.Security-IAMNoInlinePolicy"):
            acknowledge(
                self.role,
                rule_id,
                "The role's policy is generated from the grants of this one function, lives and dies with "
                "the role, and is attached to nothing else; a managed policy would only add a reusable object.",
            )

    def acknowledge_key_grants(self) -> None:
        """Acknowledge the KMS wildcard actions CDK's grant helpers write for one named key."""
        for action in ("kms:ReEncrypt*", "kms:GenerateDataKey*"):
            acknowledge(
                self.role,
                f"AwsSolutions-IAM5[Action::{action}]",
                f"{action} comes from CDK's encrypt grant on the subsystem's own KMS key, needed to write to "
                "its encrypted queue; the statement names that single key, not every key.",
            )
