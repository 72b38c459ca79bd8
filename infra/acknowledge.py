"""The one door through which every compliance finding is acknowledged.

An acknowledgement names the rule, the construct it applies to (and its children), and a reason
specific to that resource. It is written into the template metadata, so a reviewer can count and
read every one in ``cdk.out``:

- a cdk-nag or EventDrivenChecks rule (``AwsSolutions-IAM5[Resource::*]``) goes through
  ``Validations.acknowledge`` and lands in ``Metadata.cdk_nag`` (cdk-nag's
  ``write_suppressions_to_cloud_formation``);
- a checkov check id (``CKV_AWS_117``, ``CKV2_AWS_5``) lands in ``Metadata.checkov.skip`` as
  ``{id, comment}``, checkov's inline skip, on the same resources.

A finding both tools report is acknowledged once per rule id, with the same reason.
"""

from __future__ import annotations

import re

from aws_cdk import Acknowledgment, CfnResource, Validations
from constructs import IConstruct

_RULE_ID = re.compile(r"^[A-Za-z0-9]+(?:[.-][A-Za-z0-9.]+)+(?:\[[^\]]+\])?$")
_CHECKOV_ID = re.compile(r"^CKV2?_[A-Z0-9]+_[0-9]+$")
_MIN_REASON_WORDS = 6
_GENERIC_REASONS = {"not needed", "not applicable", "n/a", "false positive", "suppressed", "ok", "todo"}


class AcknowledgementError(ValueError):
    pass


def acknowledge(construct: IConstruct, rule_id: str, reason: str) -> None:
    """Acknowledge ``rule_id`` on ``construct`` with a reason a reviewer can check."""
    checkov = bool(_CHECKOV_ID.match(rule_id))
    if not checkov and not _RULE_ID.match(rule_id):
        raise AcknowledgementError(
            f"{rule_id!r} is not a rule id such as 'AwsSolutions-IAM5[Resource::*]' or a checkov id ('CKV_AWS_117')"
        )
    text = " ".join(reason.split())
    if text.lower().strip(".") in _GENERIC_REASONS or len(text.split()) < _MIN_REASON_WORDS:
        raise AcknowledgementError(
            f"acknowledgement of {rule_id} on {construct.node.path} needs a reason specific to the resource "
            f"(at least {_MIN_REASON_WORDS} words saying why the rule does not apply here), got {reason!r}"
        )
    if checkov:
        _skip_in_checkov(construct, rule_id, text)
    else:
        Validations.of(construct).acknowledge(Acknowledgment(id=rule_id, reason=text))


def _skip_in_checkov(construct: IConstruct, check_id: str, comment: str) -> None:
    # Like a cdk-nag acknowledgement, the skip covers the construct's CloudFormation resources
    # and those of its children; checkov ignores a skip on a resource type its check does not read.
    resources = [child for child in construct.node.find_all() if isinstance(child, CfnResource)]
    if not resources:
        raise AcknowledgementError(
            f"{construct.node.path} holds no CloudFormation resource to carry the checkov skip of {check_id}"
        )
    entry = {"id": check_id, "comment": comment}
    for resource in resources:
        metadata = resource.get_metadata("checkov") or {}
        skips = list(metadata.get("skip", []))
        if entry not in skips:
            resource.add_metadata("checkov", {**metadata, "skip": [*skips, entry]})
