"""Print one short summary of a synthesized cloud assembly: stacks, resources, acknowledgements.

Acknowledgements are read back from the templates' ``cdk_nag`` metadata (written because every
pack is registered with ``write_suppressions_to_cloud_formation``) and ``checkov.skip`` metadata
(written by ``infra.acknowledge`` for checkov ids), so the summary shows what a reviewer of
``cdk.out`` sees. An acknowledgement made on a construct is inherited by its children; it is
counted once per (construct path prefix, rule), i.e. once per distinct reason.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

PACK_PREFIXES = {
    "AwsSolutions-": "AwsSolutions",
    "Serverless-": "Serverless",
    "NIST.800.53.R5-": "NIST 800-53 R5",
    "HIPAA.Security-": "HIPAA Security",
    "EventDriven-": "EventDrivenChecks",
    "CKV_": "checkov",
    "CKV2_": "checkov",
}


def pack_of(rule_id: str) -> str:
    if rule_id.startswith("CloudFormation-Validate::"):
        return "CDK built-in"  # acknowledgements aws-cdk-lib writes itself (e.g. W3010 literal AZs)
    plugin, separator, rest = rule_id.partition("::")
    if separator and "[" not in plugin:  # 'Pack::Rule' form; '::' also appears inside '[Resource::*]'
        rule_id = rest
    return next((pack for prefix, pack in PACK_PREFIXES.items() if rule_id.startswith(prefix)), "other")


def summarize(assembly: Path) -> dict[str, Any]:
    manifest = json.loads((assembly / "manifest.json").read_text())
    stacks: dict[str, Any] = {}
    for name, artifact in sorted(manifest["artifacts"].items()):
        if artifact.get("type") != "aws:cloudformation:stack":
            continue
        template = json.loads((assembly / artifact["properties"]["templateFile"]).read_text())
        resources = template.get("Resources", {})
        acknowledgements = {
            (rule["id"], rule["reason"])
            for resource in resources.values()
            for rule in resource.get("Metadata", {}).get("cdk_nag", {}).get("rules_to_suppress", [])
        } | {
            (skip["id"], skip["comment"])
            for resource in resources.values()
            for skip in resource.get("Metadata", {}).get("checkov", {}).get("skip", [])
        }
        stacks[name] = {
            "resources": len(resources),
            "acknowledgements": Counter(pack_of(rule_id) for rule_id, _ in acknowledgements),
        }
    return stacks


def main(argv: list[str]) -> int:
    assembly = Path(argv[1] if len(argv) > 1 else "cdk.out")
    stacks = summarize(assembly)
    total: Counter[str] = Counter()
    print(
        f"synthesized {len(stacks)} stack(s) into {assembly}/ with AwsSolutions, Serverless, "
        "NIST 800-53 R5, HIPAA Security and EventDrivenChecks enforced"
    )
    for name, info in stacks.items():
        total.update(info["acknowledgements"])
        acks = ", ".join(f"{pack} {count}" for pack, count in sorted(info["acknowledgements"].items())) or "none"
        print(f"  {name}: {info['resources']} resources; acknowledgements: {acks}")
    print("  acknowledgements per pack: " + (", ".join(f"{p} {c}" for p, c in sorted(total.items())) or "none"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
