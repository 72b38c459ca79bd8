"""Alarms every function of this product carries: errors, and iterator age for stream readers."""

from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_sns as sns
from constructs import Construct

from infra.constructs.alarm_routing import route_alarm


class FunctionAlarms(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        function: lambda_.IFunction,
        purpose: str,
        alarm_topic: sns.ITopic | None = None,
        error_threshold: int = 1,
        max_iterator_age: Duration | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        self.errors = route_alarm(
            cloudwatch.Alarm(
                self,
                "Errors",
                alarm_description=f"The {purpose} function failed (init error, timeout or unhandled exception).",
                metric=function.metric_errors(period=Duration.minutes(5), statistic="Sum"),
                threshold=error_threshold,
                evaluation_periods=1,
                comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
                treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
            ),
            alarm_topic,
        )
        self.iterator_age: cloudwatch.Alarm | None = None
        if max_iterator_age is not None:
            self.iterator_age = route_alarm(
                cloudwatch.Alarm(
                    self,
                    "IteratorAge",
                    alarm_description=(
                        f"The {purpose} stream reader is falling behind: records older than "
                        f"{max_iterator_age.to_seconds()} s are waiting (stuck batch or too slow)."
                    ),
                    metric=cloudwatch.Metric(
                        namespace="AWS/Lambda",
                        metric_name="IteratorAge",
                        dimensions_map={"FunctionName": function.function_name},
                        period=Duration.minutes(1),
                        statistic="Maximum",
                    ),
                    threshold=max_iterator_age.to_milliseconds(),
                    evaluation_periods=5,
                    comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
                    treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
                ),
                alarm_topic,
            )
