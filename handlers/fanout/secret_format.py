"""The one SecretString format of the fan-out's token secrets (Slack bot tokens, GitHub tokens).

A token secret holds either the token itself (surrounding whitespace ignored) or a JSON object
with the token under ``token`` or ``bot_token`` (either key, for either channel; both keys
present must agree). Anything else is malformed: ``ValueError`` with a reason that never
contains the secret's value.
"""

from __future__ import annotations

import json

TOKEN_KEYS = ("token", "bot_token")


def token_from_secret(secret_string: str | None) -> str:
    if secret_string is None:
        raise ValueError("the secret has no SecretString (binary secrets are not supported)")
    raw = secret_string.strip()
    if not raw:
        raise ValueError("the secret is empty")
    if not raw.startswith("{"):
        return raw
    try:
        document = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"SecretString looks like JSON but does not parse: {exc.msg}") from None
    if not isinstance(document, dict):
        raise ValueError("SecretString JSON is not an object")
    found = {key: document[key] for key in TOKEN_KEYS if key in document}
    if not found:
        raise ValueError("SecretString JSON has neither a 'token' nor a 'bot_token' field")
    values = {value.strip() if isinstance(value, str) else value for value in found.values()}
    if len(values) > 1:
        raise ValueError("SecretString JSON has both 'token' and 'bot_token', with different values")
    (token,) = values
    if not isinstance(token, str) or not token:
        raise ValueError(f"SecretString JSON field {'/'.join(found)} is not a non-empty string")
    return token
