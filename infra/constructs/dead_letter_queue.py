"""An encrypted, TLS-only dead-letter queue with its own depth alarm."""

from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_kms as kms
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from infra.acknowledge import acknowledge
from infra.constructs.alarm_routing import route_alarm


class DeadLetterQueue(Construct):
    """Where records that could not be processed wait for an operator.

    The depth alarm fires on the first message: anything here is lost work until someone
    looks, so there is no threshold to tune.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        encryption_key: kms.IKey,
        alarm_topic: sns.ITopic | None = None,
        retention: Duration = Duration.days(14),
        purpose: str,
    ) -> None:
        super().__init__(scope, construct_id)
        self.queue = sqs.Queue(
            self,
            "Queue",
            encryption=sqs.QueueEncryption.KMS,
            encryption_master_key=encryption_key,
            enforce_ssl=True,
            retention_period=retention,
        )
        self.depth_alarm = route_alarm(
            cloudwatch.Alarm(
                self,
                "DepthAlarm",
                alarm_description=f"Messages are waiting in the dead-letter queue of {purpose}: work was not done.",
                metric=self.queue.metric_approximate_number_of_messages_visible(
                    period=Duration.minutes(1), statistic="Maximum"
                ),
                threshold=1,
                evaluation_periods=1,
                comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
                treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
            ),
            alarm_topic,
        )
        for rule_id in ("AwsSolutions-SQS3", "Serverless-SQSRedrivePolicy"):
            acknowledge(
                self.queue,
                rule_id,
                f"This queue is itself the dead-letter queue of {purpose}; a second-level DLQ would only move "
                "the same messages again, and its depth alarm already pages an operator.",
            )
