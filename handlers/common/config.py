"""Typed settings read once at cold start.

Every handler module builds its settings object at import time, so a missing or malformed
variable fails the cold start (the Lambda init error is visible in the function's Errors
metric and log) instead of silently disabling a feature at the first event.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import TypeVar

T = TypeVar("T")


class ConfigurationError(RuntimeError):
    """A required setting is missing or malformed: the deployment is broken."""


class EnvReader:
    """Reads variables from an environment mapping and collects every problem.

    Use ``require``/``optional``/``integer`` for each field, then ``check()`` once: it raises
    a single ConfigurationError naming every missing or malformed variable, so an operator
    fixes the deployment in one round instead of one variable per cold start.
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ = os.environ if environ is None else environ
        self._problems: list[str] = []

    def require(self, name: str) -> str:
        value = self._environ.get(name, "").strip()
        if not value:
            self._problems.append(f"{name} is required but not set")
        return value

    def optional(self, name: str, default: str | None = None) -> str | None:
        value = self._environ.get(name, "").strip()
        return value or default

    def integer(self, name: str, default: int, *, minimum: int = 0, maximum: int | None = None) -> int:
        raw = self._environ.get(name, "").strip()
        if not raw:
            return default
        try:
            value = int(raw)
        except ValueError:
            self._problems.append(f"{name} must be an integer, got {raw!r}")
            return default
        if value < minimum or (maximum is not None and value > maximum):
            bound = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
            self._problems.append(f"{name} must be {bound}, got {value}")
        return value

    def parsed(self, name: str, parse: Callable[[str], T], *, required: bool = False) -> T | None:
        """Apply ``parse`` to the variable; a ValueError from it becomes a named problem."""
        raw = self._environ.get(name, "").strip()
        if not raw:
            if required:
                self._problems.append(f"{name} is required but not set")
            return None
        try:
            return parse(raw)
        except ValueError as exc:
            self._problems.append(f"{name} is malformed: {exc}")
            return None

    def check(self, component: str) -> None:
        if self._problems:
            raise ConfigurationError(f"{component}: invalid configuration: " + "; ".join(self._problems))
