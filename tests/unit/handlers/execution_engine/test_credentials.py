from __future__ import annotations

import pytest

from handlers.execution_engine.credentials import CredentialError, _secret_variables, env_name


@pytest.mark.parametrize(
    ("path", "name"),
    [("/deploy/prod/AWS_ACCESS_KEY_ID", "AWS_ACCESS_KEY_ID"), ("/a/b/api-token", "API_TOKEN"), ("/x/1key", "_1KEY")],
)
def test_an_ssm_path_names_its_variable_by_its_last_segment(path: str, name: str) -> None:
    assert env_name(path) == name


def test_a_json_secret_gives_one_variable_per_key_and_a_plain_one_its_name() -> None:
    assert _secret_variables("jobs/deploy", '{"USER": "u", "PORT": 5432}') == {"USER": "u", "PORT": "5432"}
    assert _secret_variables("jobs/deploy-token", "plain-value") == {"DEPLOY_TOKEN": "plain-value"}


def test_a_json_secret_key_that_is_no_variable_name_is_refused_without_its_value() -> None:
    with pytest.raises(CredentialError) as refused:
        _secret_variables("jobs/deploy", '{"not a name": "hunter2"}')
    assert "hunter2" not in str(refused.value)
