"""The JobClaim state machine as a Mermaid flowchart, drawn from the synthesized definition.

``python -m infra.state_machine_diagram`` prints it; the README holds the same text between the
``<!-- job-claim-diagram -->`` markers and a test checks that the two still match, so the
drawing cannot drift from what deploys.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Mapping
from typing import Any

import aws_cdk as cdk
from aws_cdk import aws_kms as kms
from aws_cdk.assertions import Template

BEGIN = "<!-- job-claim-diagram:begin -->"
END = "<!-- job-claim-diagram:end -->"


def synthesized_definition() -> dict[str, Any]:
    from infra.constructs.job_claim import JobClaim

    app = cdk.App(context={"aws:cdk:bundling-stacks": []})
    stack = cdk.Stack(app, "Diagram", env=cdk.Environment(account="123456789012", region="eu-west-1"))
    JobClaim(stack, "JobClaim", encryption_key=kms.Key(stack, "Key", enable_key_rotation=True))
    (machine,) = Template.from_stack(stack).find_resources("AWS::StepFunctions::StateMachine").values()
    delimiter, parts = machine["Properties"]["DefinitionString"]["Fn::Join"]
    return dict(json.loads(delimiter.join(part if isinstance(part, str) else "TOKEN" for part in parts)))


def _edges(name: str, state: Mapping[str, Any]) -> Iterator[tuple[str, str, str]]:
    if "Next" in state:
        yield name, state["Next"], ""
    for choice in state.get("Choices", []):
        yield name, choice["Next"], "when"
    if "Default" in state:
        yield name, state["Default"], "otherwise"
    for catch in state.get("Catch", []):
        yield name, catch["Next"], " / ".join(catch["ErrorEquals"])


def _shape(name: str, state: Mapping[str, Any]) -> str:
    kind = state["Type"]
    resource = str(state.get("Resource", ""))
    if kind == "Choice":
        return f"{name}{{{name}}}"
    if kind in ("Succeed", "Fail"):
        return f"{name}(({name}))"
    if kind in ("Map", "Parallel"):
        return f"{name}[[{name}: {kind}]]"
    if "lambda:invoke" in resource:
        return f"{name}[{name}: Lambda]"
    service = resource.rsplit(":::", 1)[-1] if ":::" in resource else kind
    return f"{name}[/{name}: {service}/]"


def mermaid(definition: Mapping[str, Any]) -> str:
    lines = ["flowchart TD", f"    Start([start]) --> {definition['StartAt']}"]

    def draw(states: Mapping[str, Any], indent: str) -> None:
        for name, state in states.items():
            lines.append(f"{indent}{_shape(name, state)}")
            for branch_number, branch in enumerate(state.get("Branches", []), start=1):
                lines.append(f"{indent}subgraph {name}_branch{branch_number} [{name} branch {branch_number}]")
                draw(branch["States"], indent + "    ")
                lines.append(f"{indent}end")
            processor = state.get("ItemProcessor") or state.get("Iterator")
            if processor:
                lines.append(f"{indent}subgraph {name}_items [{name}: each item]")
                draw(processor["States"], indent + "    ")
                lines.append(f"{indent}end")
            for source, target, label in _edges(name, state):
                arrow = f" -->|{label}| " if label else " --> "
                lines.append(f"{indent}{source}{arrow}{target}")

    draw(definition["States"], "    ")
    return "\n".join(lines) + "\n"


def readme_block(definition: Mapping[str, Any]) -> str:
    return f"{BEGIN}\n```mermaid\n{mermaid(definition)}```\n{END}"


def main() -> int:
    sys.stdout.write(readme_block(synthesized_definition()) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
