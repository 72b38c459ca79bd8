"""The README's JobClaim diagram is the one drawn from the synthesized definition."""

from __future__ import annotations

from pathlib import Path

from infra.state_machine_diagram import BEGIN, END, mermaid, readme_block, synthesized_definition

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_diagram_matches_the_synthesized_state_machine() -> None:
    text = README.read_text()
    start, end = text.index(BEGIN), text.index(END) + len(END)
    assert text[start:end] == readme_block(synthesized_definition()), (
        "the JobClaim state machine changed: run `python -m infra.state_machine_diagram` and paste its output "
        "into README.md"
    )


def test_every_state_and_catch_is_drawn() -> None:
    definition = synthesized_definition()
    drawn = mermaid(definition)
    for name in ("ParseEmail", "ProcessAttachment", "RouteUnownedToProjectQueue", "RequestClaim", "JobCompleted"):
        assert f"    {name}" in drawn
    assert "-->|PREEMPTED| HandleInterruption" in drawn and "-->|States.Timeout| HandleTimeout" in drawn
