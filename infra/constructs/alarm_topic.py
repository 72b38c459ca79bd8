"""The operator topic alarms are routed to: KMS-encrypted and reachable over TLS only."""

from __future__ import annotations

from aws_cdk import aws_kms as kms
from aws_cdk import aws_sns as sns
from constructs import Construct


class AlarmTopic(Construct):
    def __init__(self, scope: Construct, construct_id: str, *, encryption_key: kms.IKey, subsystem: str) -> None:
        super().__init__(scope, construct_id)
        self.topic = sns.Topic(
            self,
            "Topic",
            display_name=f"{subsystem} alarms",
            master_key=encryption_key,
            enforce_ssl=True,
        )
