"""ExecutionEngine: jobs of dependent orders behind an IAM-authorized HTTP API."""

from __future__ import annotations

from typing import Any

from aws_cdk import CfnOutput
from constructs import Construct

from handlers.execution_engine import schema
from infra.config import ExecutionEngineConfig
from infra.constructs.execution_engine import ExecutionEngine
from infra.stacks.subsystem_stack import SubsystemStack


class ExecutionEngineStack(SubsystemStack):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: ExecutionEngineConfig,
        alarm_topic_arn: str | None,
        **kwargs: Any,
    ) -> None:
        super().__init__(scope, construct_id, subsystem="ExecutionEngine", alarm_topic_arn=alarm_topic_arn, **kwargs)
        self.execution_engine = ExecutionEngine(
            self,
            "ExecutionEngine",
            encryption_key=self.encryption_key,
            alarm_topic=self.alarm_topic,
            credential_parameter_prefixes=config.credential_parameter_prefixes,
            credential_secret_prefixes=config.credential_secret_prefixes,
            code_bucket_arns=config.code_bucket_arns,
            sops_key_parameter_prefix=config.sops_key_parameter_prefix,
        )
        engine = self.execution_engine
        # What a caller (and the CLI) needs: where to POST, and where a job's state lives.
        CfnOutput(self, "ApiUrl", value=engine.api_url, description="Base URL of the ExecutionEngine HTTP API")
        CfnOutput(self, "InitUrl", value=engine.init_url, description="POST a job here (SigV4-signed, IAM auth)")
        CfnOutput(self, "DoneBucket", value=engine.done_bucket.bucket_name, description="s3://<this>/<run_id>/done")
        for name, table in (
            (schema.ENV_ORDERS_TABLE, engine.orders_table),
            (schema.ENV_ORDER_EVENTS_TABLE, engine.order_events_table),
        ):
            CfnOutput(
                self, name.title().replace("_", ""), value=table.table_name, description=f"Set {name} to this value"
            )
