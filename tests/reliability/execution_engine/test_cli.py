"""The operator CLI end to end: submit signs like any IAM caller, status and logs read the run.

moto's HTTP API routes nothing, so a local stand-in for API Gateway on 127.0.0.1 verifies the SigV4
signature (recomputed with the caller's credentials; a request that is unsigned or signed wrongly
gets the 403 API Gateway gives) and hands the request to the init function as payload format 2.0.
"""

from __future__ import annotations

import io
import json
import re
import urllib.error
import urllib.request
from pathlib import Path

import boto3
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest

from handlers.execution_engine import schema
from handlers.execution_engine.cli import main
from tests.support.execution_engine_deployment import EngineDeployment
from tests.support.git_fixture import make_repository
from tests.support.http_stub import HttpStub, StubRequest, StubResponse, json_response

pytest_plugins = ["tests.support.execution_engine_deployment"]

_AUTHORIZATION = re.compile(
    r"^AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/(?P<scope>[^,]+), SignedHeaders=(?P<signed>[^,]+), "
    r"Signature=(?P<signature>[0-9a-f]{64})$"
)


class SigV4Api(HttpStub[str]):
    """POST /init, IAM authorization, forwarded to the init function (what API Gateway does)."""

    def __init__(self, engine: EngineDeployment) -> None:
        super().__init__(name="execute-api")
        self.engine = engine

    def _respond(self, request: StubRequest) -> StubResponse:
        if not self._signature_valid(request):
            self._record("refused")
            return json_response(403, {"message": "Forbidden"})
        self._record("accepted")
        status, body = self.engine.submit_raw(request.body.decode())
        return json_response(status, body)

    def _signature_valid(self, request: StubRequest) -> bool:
        match = _AUTHORIZATION.match(request.headers.get("Authorization") or "")
        if match is None or request.method != "POST" or request.path != "/init":
            return False
        credentials = boto3.session.Session().get_credentials()
        assert credentials is not None
        _, region, service, _ = match["scope"].split("/", 3)
        signed = {name: request.headers.get(name, "") for name in match["signed"].split(";")}
        replay = AWSRequest(method="POST", url=f"{self.url}{request.path}", data=request.body, headers=signed)
        replay.context["timestamp"] = request.headers.get("X-Amz-Date", "")
        auth = SigV4Auth(credentials.get_frozen_credentials(), service, region)
        expected = auth.signature(auth.string_to_sign(replay, auth.canonical_request(replay)), replay)
        return service == "execute-api" and match["key"] == credentials.access_key and expected == match["signature"]


def run_cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(args), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def test_submit_status_and_logs(engine: EngineDeployment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repository = make_repository(tmp_path, [{"hello.txt": "hi there\n"}])
    job = {
        "username": "ana",
        "git_repo": repository.url,
        "commit_hash": repository.commits[0],
        "orders": [
            {"order_name": "greet", "cmds": ["cat hello.txt"], "timeout": 30, "execution_target": "lambda"},
            {
                "order_name": "after",
                "cmds": ["echo next"],
                "timeout": 30,
                "execution_target": "lambda",
                "dependencies": ["greet"],
            },
        ],
    }
    job_file = tmp_path / "job.json"
    job_file.write_text(json.dumps(job))
    with SigV4Api(engine) as api:
        code, out, err = run_cli("submit", "--api-url", api.url, str(job_file))
        assert code == 0, err
        answer = json.loads(out)
        assert answer["status"] == "ok" and api._recorded() == ["accepted"]
        # a job the API refuses: exit 1, the errors printed
        job_file.write_text(json.dumps({"username": "ana", "orders": []}))
        code, out, _ = run_cli("submit", "--api-url", api.url, str(job_file))
        assert code == 1 and json.loads(out)["status"] == "error"

    engine.wait_for_done(answer["run_id"])
    monkeypatch.setenv(schema.ENV_ORDERS_TABLE, engine.table("orders"))
    code, out, err = run_cli("status", answer["run_id"])
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert lines[0]["kind"] == "job" and lines[0]["status"] == schema.JOB_SUCCEEDED
    assert [(line["order_name"], line["status"]) for line in lines[1:]] == [
        ("greet", schema.SUCCEEDED),
        ("after", schema.SUCCEEDED),
    ]
    code, out, _ = run_cli("logs", answer["run_id"], "--order", "0001")
    assert code == 0 and "== 0001 greet succeeded ==" in out and "hi there" in out and "next" not in out


def test_an_unsigned_or_wrongly_signed_request_is_refused(engine: EngineDeployment) -> None:
    with SigV4Api(engine) as api:
        body = json.dumps({"job_parameters_b64": ""}).encode()
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(urllib.request.Request(f"{api.url}/init", data=body, method="POST"), timeout=10)
        assert refused.value.code == 403
        forged = "AWS4-HMAC-SHA256 Credential=testing/20261203/us-east-1/execute-api/aws4_request, " + (
            "SignedHeaders=host;x-amz-date, Signature=" + "0" * 64
        )
        headers = {"Authorization": forged, "X-Amz-Date": "20261203T000000Z"}
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(
                urllib.request.Request(f"{api.url}/init", data=body, method="POST", headers=headers), timeout=10
            )
        assert refused.value.code == 403
        assert api._recorded() == ["refused", "refused"]


def test_usage_and_lookup_errors_are_one_line(engine: EngineDeployment, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(schema.ENV_ORDERS_TABLE, engine.table("orders"))
    code, _, err = run_cli("status", "not-a-run")
    assert code == 1 and "is not a run id" in err and len(err.splitlines()) == 1
    code, _, err = run_cli("status", "0" * 32)
    assert code == 1 and "not found" in err
    code, _, err = run_cli("frobnicate")
    assert code == 2 and "usage error" in err
