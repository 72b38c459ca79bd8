"""Our own policy-validation rule packs."""

from infra.checks.event_driven_checks import EventDrivenChecks

__all__ = ["EventDrivenChecks"]
