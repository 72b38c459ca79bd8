"""Helpers for synth-level tests: apps that skip bundling, and the compliance packs."""

from __future__ import annotations

from typing import Any

import aws_cdk as cdk
from cdk_nag import AwsSolutionsChecks, HIPAASecurityChecks, NIST80053R5Checks, ServerlessChecks

NO_BUNDLING: dict[str, list[str]] = {"aws:cdk:bundling-stacks": []}


def app_without_bundling(**context: Any) -> cdk.App:
    return cdk.App(context={**NO_BUNDLING, **context})


def add_compliance_packs(app: cdk.App) -> None:
    from infra.checks import EventDrivenChecks

    cdk.Validations.of(app).add_plugins(
        AwsSolutionsChecks(app, write_suppressions_to_cloud_formation=True),
        ServerlessChecks(app, write_suppressions_to_cloud_formation=True),
        NIST80053R5Checks(app, write_suppressions_to_cloud_formation=True),
        HIPAASecurityChecks(app, write_suppressions_to_cloud_formation=True),
        EventDrivenChecks(),
    )
