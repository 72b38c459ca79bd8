import uuid

import pytest

from handlers.export_runner.export_job import MalformedMessageError, parse_job_message


def test_a_job_message_names_its_job() -> None:
    job_id = uuid.uuid4()
    assert parse_job_message(f'{{"jobId": "{job_id}"}}') == job_id


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("not json", "not JSON"),
        ("", "not JSON"),
        (None, "not JSON"),
        ("[1, 2]", "no jobId"),
        ('{"job_id": "0b8e9a4c-2f1d-4c3b-9a77-5d2e8f1c6a10"}', "no jobId"),
        ('{"jobId": "42"}', "not a UUID"),
        ('{"jobId": 42}', "not a UUID"),
        ('{"jobId": null}', "not a UUID"),
        ('{"jobId": "\'; DROP TABLE compliance.export_jobs; --"}', "not a UUID"),
    ],
)
def test_anything_else_is_malformed(body: str | None, reason: str) -> None:
    with pytest.raises(MalformedMessageError, match=reason):
        parse_job_message(body)
