"""JobClaim: email instructions routed to the worker that owns their (project, user) pair."""

from __future__ import annotations

from typing import Any

from aws_cdk import CfnOutput
from constructs import Construct

from infra.config import JobClaimConfig
from infra.constructs.job_claim import INCOMING_PREFIX, JobClaim
from infra.stacks.subsystem_stack import SubsystemStack


class JobClaimStack(SubsystemStack):
    def __init__(
        self, scope: Construct, construct_id: str, *, config: JobClaimConfig, alarm_topic_arn: str | None, **kwargs: Any
    ) -> None:
        super().__init__(scope, construct_id, subsystem="JobClaim", alarm_topic_arn=alarm_topic_arn, **kwargs)
        self.job_claim = JobClaim(
            self,
            "JobClaim",
            encryption_key=self.encryption_key,
            alarm_topic=self.alarm_topic,
            email_domain=config.email_domain,
        )
        # Where the SES receipt rule stores mail, and what workers need.
        CfnOutput(self, "EmailBucket", value=self.job_claim.email_bucket.bucket_name)
        CfnOutput(self, "EmailPrefix", value=INCOMING_PREFIX)
        for name, value in self.job_claim.worker_environment().items():
            CfnOutput(self, name.title().replace("_", ""), value=value, description=f"Set {name} to this value")
        CfnOutput(self, "InterruptsTopicArn", value=self.job_claim.interrupts_topic.topic_arn)
