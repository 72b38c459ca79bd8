"""The compliance checks every synth of this product runs, registered in one place."""

from __future__ import annotations

import aws_cdk as cdk
from cdk_nag import AwsSolutionsChecks, HIPAASecurityChecks, NIST80053R5Checks, ServerlessChecks

from infra.checks import EventDrivenChecks


def add_compliance_checks(app: cdk.App) -> None:
    """AwsSolutions, Serverless, NIST 800-53 R5, HIPAA Security and EventDrivenChecks.

    Acknowledgements are written into the template metadata so a reviewer can read them in cdk.out.
    """
    cdk.Validations.of(app).add_plugins(
        AwsSolutionsChecks(app, write_suppressions_to_cloud_formation=True),
        ServerlessChecks(app, write_suppressions_to_cloud_formation=True),
        NIST80053R5Checks(app, write_suppressions_to_cloud_formation=True),
        HIPAASecurityChecks(app, write_suppressions_to_cloud_formation=True),
        EventDrivenChecks(),
    )
