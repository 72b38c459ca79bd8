"""What every subsystem stack starts with: its KMS key and the topic its alarms go to."""

from __future__ import annotations

from typing import Any

from aws_cdk import Stack
from aws_cdk import aws_sns as sns
from constructs import Construct

from infra.constructs.alarm_topic import AlarmTopic
from infra.constructs.encryption_key import SubsystemKey


class SubsystemStack(Stack):
    """A stack with ``self.encryption_key`` and ``self.alarm_topic``.

    Alarms go to the operator topic given by ARN (shared across subsystems), or else to a topic
    this stack creates: an alarm with no action is one nobody hears.
    """

    def __init__(
        self, scope: Construct, construct_id: str, *, subsystem: str, alarm_topic_arn: str | None, **kwargs: Any
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        self.encryption_key = SubsystemKey(self, "EncryptionKey", subsystem=subsystem).key
        self.alarm_topic: sns.ITopic
        if alarm_topic_arn is not None:
            self.alarm_topic = sns.Topic.from_topic_arn(self, "AlarmTopic", alarm_topic_arn)
        else:
            self.alarm_topic = AlarmTopic(
                self, "AlarmTopic", encryption_key=self.encryption_key, subsystem=subsystem
            ).topic
