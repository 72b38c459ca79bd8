"""Route alarms to an operator topic when one was given."""

from __future__ import annotations

from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cloudwatch_actions
from aws_cdk import aws_sns as sns


def route_alarm(alarm: cloudwatch.Alarm, topic: sns.ITopic | None) -> cloudwatch.Alarm:
    """Send the alarm's ALARM and OK transitions to ``topic`` (nothing when it is None)."""
    if topic is not None:
        action = cloudwatch_actions.SnsAction(topic)
        alarm.add_alarm_action(action)
        alarm.add_ok_action(action)
    return alarm
