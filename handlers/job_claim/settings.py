"""JobClaim settings, read once at cold start: each handler asks only for the variables it uses.

``load(component, *names)`` returns the values of the named variables (``schema.ENV_*``); a
missing one fails the cold start with a ``ConfigurationError`` naming every missing variable.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from handlers.common.config import EnvReader
from handlers.job_claim import schema

SERVICE = "job-claim"


@dataclass(frozen=True)
class Settings:
    values: Mapping[str, str]
    email_domain: str | None = None

    def __getitem__(self, name: str) -> str:
        return self.values[name]


def load(component: str, *names: str, environ: Mapping[str, str] | None = None) -> Settings:
    env = EnvReader(environ)
    values = {name: env.require(name) for name in names}
    domain = env.optional(schema.ENV_EMAIL_DOMAIN)
    env.check(f"JobClaim {component}")
    return Settings(values=values, email_domain=domain)
