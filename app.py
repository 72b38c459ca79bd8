#!/usr/bin/env python3
"""CDK entry point: reads the context, builds one stack per enabled subsystem, attaches the checks."""

from __future__ import annotations

import sys

import aws_cdk as cdk

from infra.compliance import add_compliance_checks
from infra.config import AppConfig, ConfigError, load_config
from infra.stacks.execution_engine_stack import ExecutionEngineStack
from infra.stacks.export_runner_stack import ExportRunnerStack
from infra.stacks.fanout_stack import FanOutStack
from infra.stacks.job_claim_stack import JobClaimStack
from infra.stacks.stream_recovery_stack import StreamRecoveryStack


def build_app(app: cdk.App, config: AppConfig) -> cdk.App:
    if "fanout" in config.subsystems:
        FanOutStack(app, "FanOutConsumer", config=config.fanout, alarm_topic_arn=config.alarm_topic_arn)
    if "export_runner" in config.subsystems:
        ExportRunnerStack(app, "ExportRunner", config=config.export_runner, alarm_topic_arn=config.alarm_topic_arn)
    if "stream_recovery" in config.subsystems:
        StreamRecoveryStack(
            app, "StreamRecovery", config=config.stream_recovery, alarm_topic_arn=config.alarm_topic_arn
        )
    if "job_claim" in config.subsystems:
        JobClaimStack(app, "JobClaim", config=config.job_claim, alarm_topic_arn=config.alarm_topic_arn)
    if "execution_engine" in config.subsystems:
        ExecutionEngineStack(
            app, "ExecutionEngine", config=config.execution_engine, alarm_topic_arn=config.alarm_topic_arn
        )
    add_compliance_checks(app)
    return app


def main() -> int:
    app = cdk.App()
    try:
        config = load_config(_context(app))
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    build_app(app, config)
    app.synth()
    return 0


def _context(app: cdk.App) -> dict[str, object]:
    keys = (
        "subsystems",
        "alarm_topic_arn",
        "fanout",
        "export_runner",
        "stream_recovery",
        "job_claim",
        "execution_engine",
    )
    return {key: value for key in keys if (value := app.node.try_get_context(key)) is not None}


if __name__ == "__main__":
    sys.exit(main())
