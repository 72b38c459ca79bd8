"""Settings validation: every problem is named at once, nothing is silently defaulted."""

from __future__ import annotations

import pytest

from handlers.common.config import ConfigurationError, EnvReader


def test_reads_present_values_and_defaults() -> None:
    reader = EnvReader({"TABLE": " tasks ", "TTL": "900", "EMPTY": "  "})
    assert reader.require("TABLE") == "tasks"
    assert reader.integer("TTL", 60) == 900
    assert reader.integer("MISSING_INT", 60) == 60
    assert reader.optional("EMPTY") is None
    assert reader.optional("EMPTY", "fallback") == "fallback"
    assert reader.parsed("TTL", lambda raw: int(raw) * 2) == 1800
    reader.check("test")  # nothing wrong: no exception


def test_collects_every_problem_into_one_error() -> None:
    reader = EnvReader({"TTL": "soon", "PORT": "70000", "URL": "nope"})
    reader.require("TABLE")
    reader.integer("TTL", 900)
    reader.integer("PORT", 5432, minimum=1, maximum=65535)

    def must_be_url(raw: str) -> str:
        if "://" not in raw:
            raise ValueError("expected a URL")
        return raw

    reader.parsed("URL", must_be_url)
    reader.parsed("OTHER", must_be_url, required=True)
    with pytest.raises(ConfigurationError) as raised:
        reader.check("export runner")
    message = str(raised.value)
    assert message.startswith("export runner: invalid configuration: ")
    for expected in (
        "TABLE is required but not set",
        "TTL must be an integer, got 'soon'",
        "PORT must be between 1 and 65535, got 70000",
        "URL is malformed: expected a URL",
        "OTHER is required but not set",
    ):
        assert expected in message
