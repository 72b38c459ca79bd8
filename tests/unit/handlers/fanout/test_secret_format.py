"""One token-secret format for Slack and GitHub: the raw token, or JSON with ``token`` or ``bot_token``."""

from __future__ import annotations

import pytest

from handlers.fanout import github, slack
from handlers.fanout.model import MalformedRecordError
from handlers.fanout.secret_format import token_from_secret


@pytest.mark.parametrize(
    "secret",
    [
        "xoxb-1",
        "  xoxb-1\n",
        '{"token": "xoxb-1"}',
        '{"bot_token": "xoxb-1"}',
        '{"token": "xoxb-1", "bot_token": "xoxb-1"}',
    ],
    ids=["raw", "raw-with-whitespace", "json-token", "json-bot-token", "json-both-agreeing"],
)
def test_every_accepted_format_gives_the_token_to_both_channels(secret: str) -> None:
    assert token_from_secret(secret) == "xoxb-1"
    assert slack.parse_bot_token(secret) == "xoxb-1"
    assert github._token_from_secret(secret, "arn:secret") == "xoxb-1"


@pytest.mark.parametrize(
    ("secret", "reason"),
    [
        (None, "no SecretString"),
        ("   ", "empty"),
        ("{not json", "does not parse"),
        ('{"access_token": "xoxb-1"}', "neither"),
        ('{"token": "xoxb-1", "bot_token": "xoxb-2"}', "different values"),
        ('{"bot_token": 12345}', "not a non-empty string"),
        ('{"token": ""}', "not a non-empty string"),
    ],
)
def test_malformed_secrets_are_refused_without_echoing_the_value(secret: str | None, reason: str) -> None:
    with pytest.raises(ValueError, match=reason) as raised:
        token_from_secret(secret)
    assert "xoxb-2" not in str(raised.value)
    with pytest.raises(MalformedRecordError, match="arn:secret"):
        github._token_from_secret(secret, "arn:secret")
