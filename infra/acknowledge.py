"""The one door through which every compliance finding is acknowledged.

An acknowledgement names the rule, the construct it applies to (and its children), and a reason
specific to that resource. It is written into the template metadata (cdk-nag's
``write_suppressions_to_cloud_formation``), so a reviewer can count and read every one in
``cdk.out``.
"""

from __future__ import annotations

import re

from aws_cdk import Acknowledgment, Validations
from constructs import IConstruct

_RULE_ID = re.compile(r"^[A-Za-z0-9]+(?:[.-][A-Za-z0-9.]+)+(?:\[[^\]]+\])?$")
_MIN_REASON_WORDS = 6
_GENERIC_REASONS = {"not needed", "not applicable", "n/a", "false positive", "suppressed", "ok", "todo"}


class AcknowledgementError(ValueError):
    pass


def acknowledge(construct: IConstruct, rule_id: str, reason: str) -> None:
    """Acknowledge ``rule_id`` on ``construct`` with a reason a reviewer can check."""
    if not _RULE_ID.match(rule_id):
        raise AcknowledgementError(f"{rule_id!r} is not a rule id such as 'AwsSolutions-IAM5[Resource::*]'")
    text = " ".join(reason.split())
    if text.lower().strip(".") in _GENERIC_REASONS or len(text.split()) < _MIN_REASON_WORDS:
        raise AcknowledgementError(
            f"acknowledgement of {rule_id} on {construct.node.path} needs a reason specific to the resource "
            f"(at least {_MIN_REASON_WORDS} words saying why the rule does not apply here), got {reason!r}"
        )
    Validations.of(construct).acknowledge(Acknowledgment(id=rule_id, reason=text))
