"""``lambda_runs_handlers`` (tests/support/moto_lambda.py): moto's Lambda runs real handler code.

The invoked code is tests/support/sample_handlers.py, reached through each function's Handler
string, over moto's real HTTP API (Invoke, S3 notifications, SQS mappings, Step Functions).
"""

from __future__ import annotations

import base64
import json
import os
import sys
import threading
import time
from typing import Any
from urllib.parse import quote_plus, unquote_plus

import boto3
import pytest
from botocore.exceptions import ClientError
from moto.awslambda.models import LambdaFunction

from tests.support.fast_stepfunctions import wait_for_execution
from tests.support.moto_lambda import LambdaHarness, lambda_handlers_in_process
from tests.support.moto_server import MotoServer

SAMPLE = "tests.support.sample_handlers"
RECORDS = "harness-records"


def invoke(name: str, payload: Any = None, **kwargs: Any) -> tuple[dict[str, Any], Any]:
    response = boto3.client("lambda").invoke(FunctionName=name, Payload=json.dumps(payload or {}), **kwargs)
    raw = response["Payload"].read()
    return response, (json.loads(raw) if raw else None)


def records(prefix: str) -> list[dict[str, Any]]:
    s3 = boto3.client("s3")
    listed = s3.list_objects_v2(Bucket=RECORDS, Prefix=prefix).get("Contents", [])
    return [json.loads(s3.get_object(Bucket=RECORDS, Key=o["Key"])["Body"].read()) for o in listed]


@pytest.fixture
def record_bucket(aws: MotoServer) -> str:
    boto3.client("s3").create_bucket(Bucket=RECORDS)
    return RECORDS


def test_request_response_returns_the_handler_result_with_a_lambda_context(
    lambda_runs_handlers: LambdaHarness,
) -> None:
    arn = lambda_runs_handlers.create_function("echo", f"{SAMPLE}.echo", memory_size=512)

    response, body = invoke("echo", {"hello": "world"}, LogType="Tail")

    assert response["StatusCode"] == 200
    assert "FunctionError" not in response
    assert response["ExecutedVersion"] == "$LATEST"
    assert body["event"] == {"hello": "world"}
    context = body["context"]
    assert context["function_name"] == "echo"
    assert context["function_version"] == "$LATEST"
    assert context["invoked_function_arn"] == arn
    assert context["memory_limit_in_mb"] == "512"  # a string, as the Python runtime gives it
    assert context["log_group_name"] == "/aws/lambda/echo"
    assert "[$LATEST]" in context["log_stream_name"]
    assert context["aws_request_id"] in base64.b64decode(response["LogResult"]).decode()
    assert body["module"].startswith(f"{SAMPLE}__lambda_")  # a fresh module per container


def test_the_function_environment_is_seen_by_the_handler_and_not_leaked(lambda_runs_handlers: LambdaHarness) -> None:
    lambda_runs_handlers.create_function(
        "env-a", f"{SAMPLE}.echo", environment={"SAMPLE_GREETING": "hello", "SAMPLE_COLOUR": "blue"}
    )
    names = ["SAMPLE_GREETING", "SAMPLE_COLOUR", "AWS_LAMBDA_FUNCTION_NAME", "AWS_REGION", "AWS_ENDPOINT_URL"]

    _, body = invoke("env-a", {"env": names})

    assert body["greeting"] == "hello"  # read at import: the cold start ran under the function's env
    assert body["env"]["SAMPLE_COLOUR"] == "blue"
    assert body["env"]["AWS_LAMBDA_FUNCTION_NAME"] == "env-a"
    assert body["env"]["AWS_REGION"] == "us-east-1"
    assert body["env"]["AWS_ENDPOINT_URL"] == os.environ["AWS_ENDPOINT_URL"]  # the test process env below it
    for name in ("SAMPLE_GREETING", "SAMPLE_COLOUR", "AWS_LAMBDA_FUNCTION_NAME"):
        assert name not in os.environ
    assert SAMPLE not in sys.modules or sys.modules[SAMPLE].GREETING == ""


def test_a_handlers_own_environment_writes_stay_in_its_container(lambda_runs_handlers: LambdaHarness) -> None:
    lambda_runs_handlers.create_function("setter", f"{SAMPLE}.set_env")
    lambda_runs_handlers.create_function("other", f"{SAMPLE}.set_env")
    change = {"name": "SAMPLE_MARK", "value": "set"}

    assert invoke("setter", change)[1] == {"before": None}
    assert invoke("setter", change)[1] == {"before": "set"}  # the same warm container
    assert invoke("other", change)[1] == {"before": None}  # another container
    assert "SAMPLE_MARK" not in os.environ  # nor the test process


def test_each_function_configuration_is_its_own_container(lambda_runs_handlers: LambdaHarness) -> None:
    lambda_runs_handlers.create_function("hello", f"{SAMPLE}.echo", environment={"SAMPLE_GREETING": "hello"})
    lambda_runs_handlers.create_function("hola", f"{SAMPLE}.echo", environment={"SAMPLE_GREETING": "hola"})

    greetings = [invoke(name)[1]["greeting"] for name in ("hello", "hola", "hello", "hola")]
    assert greetings == ["hello", "hola", "hello", "hola"]
    assert lambda_runs_handlers.cold_starts == 2  # the second calls were warm

    boto3.client("lambda").update_function_configuration(
        FunctionName="hello", Environment={"Variables": {"SAMPLE_GREETING": "bonjour"}}
    )
    assert invoke("hello")[1]["greeting"] == "bonjour"  # a new configuration is a new container
    assert lambda_runs_handlers.cold_starts == 3


def test_remaining_time_counts_down_the_configured_timeout(lambda_runs_handlers: LambdaHarness) -> None:
    lambda_runs_handlers.create_function("timed", f"{SAMPLE}.remaining_after_sleep", timeout=7)

    _, body = invoke("timed", {"seconds": 0.3})

    assert 6000 < body["before"] <= 7000
    assert body["after"] <= body["before"] - 250


def test_a_handler_that_overruns_its_timeout_is_a_timeout_error(lambda_runs_handlers: LambdaHarness) -> None:
    lambda_runs_handlers.create_function("slow", f"{SAMPLE}.remaining_after_sleep", timeout=1)

    response, body = invoke("slow", {"seconds": 1.1})

    assert response["FunctionError"] == "Unhandled"
    assert body["errorType"] == "Sandbox.Timedout"
    assert "Task timed out after 1.00 seconds" in body["errorMessage"]


def test_an_exception_is_an_unhandled_function_error(lambda_runs_handlers: LambdaHarness) -> None:
    lambda_runs_handlers.create_function("fail", f"{SAMPLE}.fail")

    response, body = invoke("fail", {"message": "no such task"})

    assert response["StatusCode"] == 200
    assert response["FunctionError"] == "Unhandled"
    assert body["errorType"] == "SampleError"
    assert body["errorMessage"] == "no such task"
    assert body["requestId"]
    assert any("sample_handlers.py" in frame and "in fail" in frame for frame in body["stackTrace"])
    assert not any("moto_lambda.py" in frame for frame in body["stackTrace"])


def test_cold_start_failures_are_reported_as_the_runtime_reports_them(lambda_runs_handlers: LambdaHarness) -> None:
    lambda_runs_handlers.create_function("no-module", "tests.support.no_such_module.handler")
    lambda_runs_handlers.create_function("no-handler", f"{SAMPLE}.no_such_handler")
    lambda_runs_handlers.create_function("bad-init", f"{SAMPLE}.echo", environment={"SAMPLE_FAIL_AT_INIT": "1"})

    assert invoke("no-module")[1]["errorType"] == "Runtime.ImportModuleError"
    assert invoke("no-handler")[1]["errorType"] == "Runtime.HandlerNotFound"
    response, body = invoke("bad-init")
    assert response["FunctionError"] == "Unhandled"
    assert (body["errorType"], body["errorMessage"]) == (
        "RuntimeError",
        "SAMPLE_FAIL_AT_INIT is set: this cold start fails",
    )

    # A failed cold start leaves no container: once the configuration is fixed, the function runs.
    boto3.client("lambda").update_function_configuration(FunctionName="bad-init", Environment={"Variables": {}})
    response, body = invoke("bad-init")
    assert "FunctionError" not in response
    assert body["greeting"] == ""


def test_a_project_handler_cold_starts_under_the_function_environment(lambda_runs_handlers: LambdaHarness) -> None:
    # handlers.export_runner.sweeper reads its settings at import: without DATABASE_URL or
    # DATABASE_SECRET_ARN in the function's configuration the cold start fails loudly.
    lambda_runs_handlers.create_function("sweeper", "handlers.export_runner.sweeper.handler")

    response, body = invoke("sweeper")

    assert response["FunctionError"] == "Unhandled"
    assert body["errorType"] == "ConfigurationError"
    assert "export sweeper: invalid configuration" in body["errorMessage"]


def test_event_invocation_runs_the_handler_and_dry_run_does_not(
    lambda_runs_handlers: LambdaHarness, record_bucket: str
) -> None:
    lambda_runs_handlers.create_function("recorder", f"{SAMPLE}.record", environment={"SAMPLE_RECORD_BUCKET": RECORDS})

    response, body = invoke("recorder", {"job": 1}, InvocationType="Event")
    assert response["StatusCode"] == 202
    assert body is None  # AWS answers an async invoke with an empty body
    assert records("invocations/") == [{"function_name": "recorder", "event": {"job": 1}}]  # ran before 202

    response, _ = invoke("recorder", {"job": 2}, InvocationType="DryRun")
    assert response["StatusCode"] == 204
    assert len(records("invocations/")) == 1


def test_an_async_failure_is_not_an_error_for_the_caller_but_is_recorded(lambda_runs_handlers: LambdaHarness) -> None:
    lambda_runs_handlers.create_function("fail", f"{SAMPLE}.fail")

    response, _ = invoke("fail", {"message": "async boom"}, InvocationType="Event")

    assert response["StatusCode"] == 202
    assert "FunctionError" not in response
    (failed,) = lambda_runs_handlers.invocations_of("fail")
    assert failed.invocation_type == "Event"
    assert failed.error is not None and failed.error["errorMessage"] == "async boom"


def test_an_s3_object_created_notification_runs_the_handler_with_the_key_url_encoded(
    lambda_runs_handlers: LambdaHarness, record_bucket: str
) -> None:
    arn = lambda_runs_handlers.create_function(
        "on-upload", f"{SAMPLE}.record", environment={"SAMPLE_RECORD_BUCKET": RECORDS}
    )
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="uploads")
    s3.put_bucket_notification_configuration(
        Bucket="uploads",
        NotificationConfiguration={
            "LambdaFunctionConfigurations": [{"LambdaFunctionArn": arn, "Events": ["s3:ObjectCreated:*"]}]
        },
    )
    key = "reports/2024 Q1/a+b ü.csv"

    s3.put_object(Bucket="uploads", Key=key, Body=b"id\n1\n")

    (stored,) = records("invocations/")  # the handler ran inside PutObject
    (s3_record,) = stored["event"]["Records"]
    assert s3_record["eventSource"] == "aws:s3"
    assert s3_record["eventName"] == "ObjectCreated:Put"
    assert s3_record["s3"]["bucket"]["name"] == "uploads"
    raw_key = s3_record["s3"]["object"]["key"]
    # moto quote_plus-encodes the whole key, "/" included (AWS leaves "/" as it is): a handler
    # that unquote_plus-es the key gets it back from both.
    assert raw_key == quote_plus(key) == "reports%2F2024+Q1%2Fa%2Bb+%C3%BC.csv"
    assert unquote_plus(raw_key) == key


def test_an_sns_subscription_runs_the_handler(lambda_runs_handlers: LambdaHarness, record_bucket: str) -> None:
    arn = lambda_runs_handlers.create_function(
        "on-notice", f"{SAMPLE}.record", environment={"SAMPLE_RECORD_BUCKET": RECORDS}
    )
    sns = boto3.client("sns")
    topic = sns.create_topic(Name="notices")["TopicArn"]
    sns.subscribe(TopicArn=topic, Protocol="lambda", Endpoint=arn)

    sns.publish(TopicArn=topic, Message="task 7 done", Subject="done")

    (stored,) = records("invocations/")  # ran inside Publish
    (sns_record,) = stored["event"]["Records"]
    assert sns_record["EventSource"] == "aws:sns"
    assert (sns_record["Sns"]["Message"], sns_record["Sns"]["Subject"]) == ("task 7 done", "done")
    # moto's SNS event is canned around the message: a fixed TopicArn and MessageId, fake
    # MessageAttributes (the published ones are dropped), a 1970 Timestamp. Pinned here.
    assert sns_record["Sns"]["TopicArn"] == "arn:aws:sns:EXAMPLE"
    assert set(sns_record["Sns"]["MessageAttributes"]) == {"Test", "TestBinary"}


def test_an_sqs_event_source_mapping_delivers_messages_to_the_handler(
    lambda_runs_handlers: LambdaHarness, record_bucket: str
) -> None:
    """What moto 5.2.5's SQS mapping does (pinned, so an upgrade that changes it is noticed):
    it invokes inside SendMessage, one invocation per message whatever the BatchSize; a returned
    batchItemFailures is ignored (the message is deleted); a function error makes the messages
    received with it visible again, but nothing polls: they come again with the next SendMessage."""
    arn = lambda_runs_handlers.create_function(
        "consumer", f"{SAMPLE}.sqs_batch", environment={"SAMPLE_RECORD_BUCKET": RECORDS}
    )
    sqs = boto3.client("sqs")
    url = sqs.create_queue(QueueName="jobs", Attributes={"VisibilityTimeout": "60"})["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    boto3.client("lambda").create_event_source_mapping(
        EventSourceArn=queue_arn, FunctionName=arn, BatchSize=10, FunctionResponseTypes=["ReportBatchItemFailures"]
    )

    def visible() -> int:
        attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])
        return int(attributes["Attributes"]["ApproximateNumberOfMessages"])

    sqs.send_message(QueueUrl=url, MessageBody="ok-1")
    assert [r["body"] for r in records("messages/")] == ["ok-1"]  # delivered before SendMessage returned
    (delivered,) = lambda_runs_handlers.invocations_of("consumer")
    assert delivered.event["Records"][0]["eventSource"] == "aws:sqs"
    assert delivered.result == {"batchItemFailures": []}
    assert visible() == 0

    sqs.send_message(QueueUrl=url, MessageBody="fail-1")
    assert lambda_runs_handlers.invocations_of("consumer")[-1].result["batchItemFailures"]  # reported...
    assert visible() == 0  # ...and ignored: moto deleted the message (AWS would redeliver it)

    sqs.send_message(QueueUrl=url, MessageBody="raise-1")
    assert lambda_runs_handlers.invocations_of("consumer")[-1].error is not None
    assert visible() == 1  # a function error puts it back at once (visibility 0)...
    time.sleep(0.2)
    assert len(lambda_runs_handlers.invocations_of("consumer")) == 3  # ...but nothing polls the queue

    sqs.send_message(QueueUrl=url, MessageBody="ok-2")  # the next send delivers both, one by one
    invocations = lambda_runs_handlers.invocations_of("consumer")[3:]
    assert sorted(len(i.event["Records"]) for i in invocations) == [1, 1]
    assert sorted(i.event["Records"][0]["body"] for i in invocations) == ["ok-2", "raise-1"]
    # The event always says ApproximateReceiveCount "1", even on the second delivery.
    assert {i.event["Records"][0]["attributes"]["ApproximateReceiveCount"] for i in invocations} == {"1"}
    # One failed invocation puts every message received with it back, the processed ok-2 too.
    assert visible() == 2


def test_a_state_machine_lambda_invoke_task_runs_the_handler_and_catches_its_error(
    lambda_runs_handlers: LambdaHarness, sfn_executes: MotoServer
) -> None:
    echo_arn = lambda_runs_handlers.create_function("echo", f"{SAMPLE}.echo")
    fail_arn = lambda_runs_handlers.create_function("fail", f"{SAMPLE}.fail")
    definition = {
        "StartAt": "Echo",
        "States": {
            "Echo": {
                "Type": "Task",
                "Resource": "arn:aws:states:::lambda:invoke",
                "Parameters": {"FunctionName": echo_arn, "Payload.$": "$"},
                "ResultSelector": {"echoed.$": "$.Payload.event", "function.$": "$.Payload.context.function_name"},
                "ResultPath": "$.echo",
                "Next": "Fail",
            },
            "Fail": {
                "Type": "Task",
                "Resource": "arn:aws:states:::lambda:invoke",
                "Parameters": {"FunctionName": fail_arn, "Payload": {"message": "task 42 is gone"}},
                "Catch": [{"ErrorEquals": ["SampleError"], "ResultPath": "$.error", "Next": "Handled"}],
                "End": True,
            },
            "Handled": {"Type": "Pass", "End": True},
        },
    }
    sfn = boto3.client("stepfunctions")
    machine = sfn.create_state_machine(
        name="harness", definition=json.dumps(definition), roleArn="arn:aws:iam::123456789012:role/sfn"
    )["stateMachineArn"]

    execution = sfn.start_execution(stateMachineArn=machine, input=json.dumps({"task": 42}))["executionArn"]
    described = wait_for_execution(sfn, execution)

    assert described["status"] == "SUCCEEDED"
    output = json.loads(described["output"])
    assert output["echo"] == {"echoed": {"task": 42}, "function": "echo"}
    assert output["error"]["Error"] == "SampleError"
    cause = json.loads(output["error"]["Cause"])
    assert (cause["errorType"], cause["errorMessage"]) == ("SampleError", "task 42 is gone")


def test_nested_and_concurrent_invocations_each_see_their_own_environment(lambda_runs_handlers: LambdaHarness) -> None:
    lambda_runs_handlers.create_function("outer", f"{SAMPLE}.invoke_other", environment={"SAMPLE_COLOUR": "red"})
    lambda_runs_handlers.create_function("inner", f"{SAMPLE}.echo", environment={"SAMPLE_COLOUR": "green"})
    lambda_runs_handlers.create_function("slow-a", f"{SAMPLE}.echo", environment={"SAMPLE_COLOUR": "a"})
    lambda_runs_handlers.create_function("slow-b", f"{SAMPLE}.echo", environment={"SAMPLE_COLOUR": "b"})

    # outer waits on its Invoke of inner (another moto thread): no lock may stand between them.
    _, body = invoke("outer", {"function": "inner", "payload": {"env": ["SAMPLE_COLOUR"]}})
    assert body["mine"] == {"SAMPLE_COLOUR": "red"}
    assert body["inner"]["env"] == {"SAMPLE_COLOUR": "green"}

    seen: dict[str, list[str | None]] = {"slow-a": [], "slow-b": []}

    def call(name: str) -> None:
        for _ in range(5):
            seen[name].append(invoke(name, {"env": ["SAMPLE_COLOUR"]})[1]["env"]["SAMPLE_COLOUR"])

    threads = [threading.Thread(target=call, args=(name,)) for name in seen for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert seen == {"slow-a": ["a"] * 10, "slow-b": ["b"] * 10}


def test_dynamodb_stream_mappings_are_refused(lambda_runs_handlers: LambdaHarness) -> None:
    arn = lambda_runs_handlers.create_function("stream", f"{SAMPLE}.echo")
    table = boto3.client("dynamodb").create_table(
        TableName="events",
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
        StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
    )["TableDescription"]

    with pytest.raises(ClientError) as refused:
        boto3.client("lambda").create_event_source_mapping(
            EventSourceArn=table["LatestStreamArn"], FunctionName=arn, StartingPosition="TRIM_HORIZON"
        )
    assert "GetRecords" in refused.value.response["Error"]["Message"]


def test_everything_is_undone_when_the_harness_ends(aws: MotoServer) -> None:
    original_invoke = LambdaFunction.invoke
    original_environ = os.environ
    original_start = threading.Thread.start

    with lambda_handlers_in_process() as harness:
        assert LambdaFunction.invoke is not original_invoke
        harness.create_function("echo", f"{SAMPLE}.echo", environment={"SAMPLE_GREETING": "hi"})
        module_name = invoke("echo")[1]["module"]
        assert module_name in sys.modules

    assert LambdaFunction.invoke is original_invoke
    assert os.environ is original_environ
    assert threading.Thread.start is original_start
    assert module_name not in sys.modules
    response = boto3.client("lambda").invoke(FunctionName="echo", Payload=b"{}")
    assert b"error running docker" in response["Payload"].read()  # moto's own behaviour is back
