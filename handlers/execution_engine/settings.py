"""ExecutionEngine settings, read once at cold start: each handler asks only for what it uses.

``load(component, *names)`` returns the named variables (``schema.ENV_*``); a missing one fails
the cold start with one ``ConfigurationError`` naming every missing variable.
"""

from __future__ import annotations

from collections.abc import Mapping

from handlers.common.config import EnvReader

SERVICE = "execution-engine"


def load(component: str, *names: str, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    env = EnvReader(environ)
    values = {name: env.require(name) for name in names}
    env.check(f"ExecutionEngine {component}")
    return values


def prefixes(raw: str | None) -> tuple[str, ...]:
    """A comma-separated list of name prefixes (empty entries dropped)."""
    return tuple(part.strip() for part in (raw or "").split(",") if part.strip())
