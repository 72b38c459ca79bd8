"""Credentials of one job, resolved once (init): SSM parameters and Secrets Manager secrets.

A deployment names the parameter and secret name prefixes jobs may resolve (the construct's
props, which are also the only resources its IAM policy allows); a reference outside them is
refused before any call, with the reference (never a value) in the message. Each reference is
read once per job however many orders name it.

Environment names: an SSM parameter ``/deploy/prod/AWS_ACCESS_KEY_ID`` becomes the variable named
by its last segment (upper-cased, anything outside ``[A-Z0-9_]`` -> ``_``); a secret whose value is
a JSON object gives one variable per key (keys must be valid variable names); any other secret
value becomes the variable named by the secret name's last ``/`` segment, the same way.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError

from handlers.execution_engine.jobs import CredentialReference, CredentialService

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_NOT_FOUND = {"ParameterNotFound", "ResourceNotFoundException"}
_DENIED = {"AccessDeniedException", "AccessDenied", "DecryptionFailure"}


class CredentialError(ValueError):
    """A reference the job may not use or that does not resolve: the job is refused (400)."""


def env_name(path: str) -> str:
    name = re.sub(r"[^A-Z0-9_]", "_", path.rstrip("/").rsplit("/", 1)[-1].upper())
    return name if _ENV_NAME.match(name) else f"_{name}"


def _allowed(name: str, prefixes: Iterable[str]) -> bool:
    return any(name.startswith(prefix) for prefix in prefixes)


@dataclass
class CredentialResolver:
    ssm: Any
    secretsmanager: Any
    parameter_prefixes: tuple[str, ...]
    secret_prefixes: tuple[str, ...]
    _cache: dict[tuple[str, str], str] = field(default_factory=dict, repr=False)

    def resolve(self, reference: CredentialReference) -> str:
        if reference.service is CredentialService.SSM:
            return self.parameter(reference.name)
        return self.secret(reference.name)

    def parameter(self, name: str) -> str:
        if not _allowed(name, self.parameter_prefixes):
            raise CredentialError(
                f"SSM parameter {name} is outside the prefixes this deployment may read "
                f"({', '.join(self.parameter_prefixes) or 'none configured'})"
            )
        key = ("ssm", name)
        if key not in self._cache:
            try:
                answer = self.ssm.get_parameter(Name=name, WithDecryption=True)
            except ClientError as exc:
                raise self._refused("SSM parameter", name, exc) from None
            self._cache[key] = str(answer["Parameter"]["Value"])
        return self._cache[key]

    def secret(self, name: str) -> str:
        secret_name = name.split(":secret:", 1)[1] if ":secret:" in name else name
        if not _allowed(secret_name, self.secret_prefixes):
            raise CredentialError(
                f"secret {name} is outside the prefixes this deployment may read "
                f"({', '.join(self.secret_prefixes) or 'none configured'})"
            )
        key = ("secret", name)
        if key not in self._cache:
            try:
                answer = self.secretsmanager.get_secret_value(SecretId=name)
            except ClientError as exc:
                raise self._refused("secret", name, exc) from None
            if "SecretString" not in answer:
                raise CredentialError(f"secret {name} has no string value (binary secrets are not supported)")
            self._cache[key] = str(answer["SecretString"])
        return self._cache[key]

    @staticmethod
    def _refused(kind: str, name: str, exc: ClientError) -> Exception:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in _NOT_FOUND:
            return CredentialError(f"{kind} {name} does not exist")
        if code in _DENIED:
            return CredentialError(f"{kind} {name} cannot be read by this deployment ({code})")
        return exc  # throttling, 5xx: not the caller's fault; the request fails and may be retried

    def order_env(self, ssm_paths: Iterable[str], secret_paths: Iterable[str]) -> dict[str, str]:
        """The variables an order's ``ssm_paths`` and ``secret_manager_paths`` give it."""
        env: dict[str, str] = {}
        for path in ssm_paths:
            env[env_name(path)] = self.parameter(path)
        for name in secret_paths:
            value = self.secret(name)
            env.update(_secret_variables(name, value))
        return env


def _secret_variables(name: str, value: str) -> Mapping[str, str]:
    try:
        document = json.loads(value)
    except json.JSONDecodeError:
        document = None
    if not isinstance(document, dict):
        return {env_name(name.split(":secret:", 1)[-1]): value}
    variables: dict[str, str] = {}
    for key, inner in document.items():
        if not _ENV_NAME.match(str(key)):
            raise CredentialError(f"secret {name} has a key that is not a variable name: {str(key)[:64]!r}")
        variables[str(key)] = inner if isinstance(inner, str) else json.dumps(inner)
    return variables
