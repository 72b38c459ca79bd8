"""JobClaim: each email instruction routed to the one worker that owns its (project, user) pair.

SES stores incoming mail in the email bucket (``incoming/``); the intake function starts one
execution per message (named from its Message-ID, so a duplicate notification starts nothing);
the state machine (STANDARD, built with CDK's Step Functions constructs, logging ALL, X-Ray on)::

    ParseEmail -> CheckAttachments -> [ProcessAttachments (Map)] -> CheckOwnership (getItem)
      -> ReadActiveJob (getItem) -> HasOtherActiveJob? -> [CheckActiveJob (interrupts it)]
      -> DetermineRouting
           owned:   RouteToProjectQueue   (sqs:sendMessage.waitForTaskToken, group = pair)
           unowned: RouteUnowned (Parallel: the same send | RequestClaim, rate limited)
      -> JobCompleted
    catches: States.Timeout -> HandleTimeout -> JobTimedOut; PREEMPTED -> HandleInterruption
             -> InterruptionComplete; anything else -> SendToEmailDlq -> IntakeProcessingFailed

Lambdas run only where there is logic (parsing, attachments, the interrupt decision, the rate
limited claim announcement, the interruption and timeout records); ownership and the active
job are read with direct DynamoDB integrations and the message is sent with a direct SQS one,
so the happy path of an owned message without attachments costs one Lambda invocation.

Queues: one input FIFO queue with a message group per pair (the seed made a queue per pair at
run time and never removed them), content-based deduplication plus the message id as the
deduplication id. Visibility timeout (5 min, a prop): the reference worker extends it with
every heartbeat while a job runs, so a live job is never redelivered, and a crashed worker's
message is visible again within 5 minutes -- the next worker's token call then fails as lost
and it deletes the message, so the pair's group is blocked for minutes, not for the hour a
visibility timeout equal to the task timeout would cost. Interrupts go to one SNS topic
addressed by the ``container_id`` message attribute (subscribers filter on it) and are also
written on the active-job row the worker heartbeats on, so an interrupt is not lost when a
worker has no subscription. Unclaimed work is announced on the unclaimed queue.
"""

from __future__ import annotations

from dataclasses import dataclass

from aws_cdk import Duration, Names, RemovalPolicy, Stack
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sqs as sqs
from aws_cdk import aws_stepfunctions as sfn
from aws_cdk import aws_stepfunctions_tasks as tasks
from constructs import Construct

from handlers.job_claim import schema
from infra.acknowledge import acknowledge
from infra.constructs.alarm_routing import route_alarm
from infra.constructs.bucket_notification import notify_on_object_created
from infra.constructs.dead_letter_queue import DeadLetterQueue
from infra.constructs.encrypted_table import encrypted_table
from infra.constructs.function_alarms import FunctionAlarms
from infra.constructs.handler_function import HandlerFunction
from infra.constructs.logged_bucket import LoggedBucket

INCOMING_PREFIX = "incoming/"
ATTACHMENTS_PREFIX = "attachments/"


@dataclass(frozen=True)
class _Function:
    construct_id: str
    handler: str
    description: str


_INTAKE = _Function(
    "IntakeFunction", "handlers.job_claim.intake.handler", "Starts one JobClaim execution per stored email"
)
_PARSE = _Function("ParseEmailFunction", "handlers.job_claim.parse_email.handler", "Parses a JobClaim email")
_ATTACHMENT = _Function(
    "ProcessAttachmentFunction", "handlers.job_claim.attachments.handler", "Stores one attachment of a JobClaim email"
)
_CHECK_ACTIVE = _Function(
    "CheckActiveJobFunction", "handlers.job_claim.check_active_job.handler", "Interrupts another thread's active job"
)
_CLAIM_REQUEST = _Function(
    "RequestClaimFunction", "handlers.job_claim.rate_limited_claim.handler", "Announces unclaimed work, rate limited"
)
_INTERRUPTION = _Function(
    "RecordInterruptionFunction", "handlers.job_claim.record_interruption.handler", "Records an interrupted job"
)
_TIMEOUT = _Function("HandleTimeoutFunction", "handlers.job_claim.handle_timeout.handler", "Records a timed-out job")


class JobClaim(Construct):
    """Tables, queues, topic, email bucket, functions and the state machine, with alarms.

    Attributes: ``tables`` (role -> table, roles of ``handlers/job_claim/schema.py``),
    ``email_bucket``, ``input_queue``, ``unclaimed_queue``, ``interrupts_topic``, ``email_dlq``,
    ``functions`` (construct id -> ``HandlerFunction``), ``state_machine``, ``alarms``.
    ``grant_worker(grantee)`` gives a worker what the reference worker calls.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        encryption_key: kms.IKey,
        alarm_topic: sns.ITopic | None = None,
        # Only mail for this domain is routed (the recipient's project+user local part names the pair).
        email_domain: str | None = None,
        heartbeat: Duration = Duration.seconds(60),
        task_timeout: Duration = Duration.hours(1),
        attachment_concurrency: int = 4,
        lambda_retry_attempts: int = 3,
        input_visibility_timeout: Duration = Duration.minutes(5),
        intake_reserved_concurrency: int = 10,
        email_retention: Duration = Duration.days(30),
    ) -> None:
        super().__init__(scope, construct_id)
        if not 1 <= attachment_concurrency <= 40:
            raise ValueError("JobClaim: attachment_concurrency must be between 1 and 40")
        if not heartbeat.to_seconds() < task_timeout.to_seconds():
            raise ValueError("JobClaim: heartbeat must be shorter than task_timeout")
        if not input_visibility_timeout.to_seconds() > heartbeat.to_seconds():
            # The worker extends the visibility with each heartbeat; a shorter visibility would
            # let a live job's message reappear between two heartbeats.
            raise ValueError("JobClaim: input_visibility_timeout must exceed heartbeat")
        if not 0 <= lambda_retry_attempts <= 10:
            raise ValueError("JobClaim: lambda_retry_attempts must be between 0 and 10")
        self._encryption_key = encryption_key
        self._alarm_topic = alarm_topic

        self.tables = {
            table_schema.role: encrypted_table(self, table_schema, encryption_key=encryption_key)
            for table_schema in schema.ALL_TABLES
        }
        stack = Stack.of(self)
        # A fixed name: the intake's invoke permission must name the bucket before it exists.
        self._email_bucket_stem = Names.unique_resource_name(self, max_length=24, separator="-").lower()
        self.email_bucket_name = f"{self._email_bucket_stem}-email-{stack.account}-{stack.region}"
        self.email = LoggedBucket(
            self,
            "Email",
            bucket_name=self.email_bucket_name,
            encryption_key=encryption_key,
            purpose="the JobClaim email bucket",
            replication_reason=(
                "incoming instructions are processed within the hour and expire after "
                f"{int(email_retention.to_days())} days; the senders keep the originals."
            ),
            log_prefix="email/",
            lifecycle_rules=[
                s3.LifecycleRule(
                    id="expire-email",
                    expiration=email_retention,
                    noncurrent_version_expiration=Duration.days(1),
                    abort_incomplete_multipart_upload_after=Duration.days(1),
                )
            ],
        )
        self.email_bucket = self.email.bucket
        self._allow_ses_delivery()
        self.input_queue = sqs.Queue(
            self,
            "InputQueue",
            fifo=True,
            content_based_deduplication=True,
            visibility_timeout=input_visibility_timeout,
            retention_period=Duration.days(4),
            encryption=sqs.QueueEncryption.KMS,
            encryption_master_key=encryption_key,
            enforce_ssl=True,
        )
        self.unclaimed_queue = sqs.Queue(
            self,
            "UnclaimedQueue",
            visibility_timeout=Duration.minutes(1),
            retention_period=Duration.days(1),
            encryption=sqs.QueueEncryption.KMS,
            encryption_master_key=encryption_key,
            enforce_ssl=True,
        )
        for queue, reason in (
            (
                self.input_queue,
                "A message here carries a task token: when no worker finishes it, the state machine's heartbeat "
                "and timeout catch it (HandleTimeout sends it to the email DLQ), and the worker deletes a message "
                "whose token is lost; a queue DLQ would only hold dead tokens.",
            ),
            (
                self.unclaimed_queue,
                "Announcements of unclaimed work are hints (the message itself waits in the input queue with its "
                "task token); a lost announcement costs nothing, a DLQ would only keep stale hints.",
            ),
        ):
            for rule_id in ("AwsSolutions-SQS3", "Serverless-SQSRedrivePolicy"):
                acknowledge(queue, rule_id, reason)
        self.interrupts_topic = sns.Topic(
            self, "InterruptsTopic", master_key=encryption_key, enforce_ssl=True, display_name="JobClaim interrupts"
        )
        self.email_dlq = DeadLetterQueue(
            self,
            "EmailDlq",
            encryption_key=encryption_key,
            alarm_topic=alarm_topic,
            purpose="JobClaim (unprocessable emails and timed-out jobs)",
        )
        self.functions: dict[str, HandlerFunction] = {}
        self.alarms: dict[str, cloudwatch.Alarm] = {}
        self._build_functions(email_domain=email_domain)
        self.state_machine = self._build_state_machine(
            heartbeat=heartbeat,
            task_timeout=task_timeout,
            attachment_concurrency=attachment_concurrency,
            lambda_retry_attempts=lambda_retry_attempts,
        )
        self._build_intake(reserved_concurrency=intake_reserved_concurrency, email_domain=email_domain)
        self._build_state_machine_alarms()

    # --- storage -------------------------------------------------------------------------------

    def _allow_ses_delivery(self) -> None:
        """SES receipt rules of this account may store mail under ``incoming/`` (encrypted with our key)."""
        stack = Stack.of(self)
        self.email_bucket.add_to_resource_policy(
            iam.PolicyStatement(
                principals=[iam.ServicePrincipal("ses.amazonaws.com")],
                actions=["s3:PutObject"],
                resources=[self.email_bucket.arn_for_objects(f"{INCOMING_PREFIX}*")],
                conditions={"StringEquals": {"aws:SourceAccount": stack.account}},
            )
        )
        self._encryption_key.add_to_resource_policy(
            iam.PolicyStatement(
                principals=[iam.ServicePrincipal("ses.amazonaws.com")],
                actions=["kms:GenerateDataKey", "kms:Decrypt"],
                resources=["*"],
                conditions={"StringEquals": {"aws:SourceAccount": stack.account}},
            )
        )

    # --- functions -----------------------------------------------------------------------------

    def _environment(self) -> dict[str, str]:
        return {
            schema.ENV_OWNERSHIP_TABLE: self.tables["ownership"].table_name,
            schema.ENV_ACTIVE_JOBS_TABLE: self.tables["active_jobs"].table_name,
            schema.ENV_INTERRUPTIONS_TABLE: self.tables["interruptions"].table_name,
            schema.ENV_THREADS_TABLE: self.tables["threads"].table_name,
            schema.ENV_CLAIM_REQUESTS_TABLE: self.tables["claim_requests"].table_name,
            schema.ENV_INPUT_QUEUE_URL: self.input_queue.queue_url,
            schema.ENV_UNCLAIMED_QUEUE_URL: self.unclaimed_queue.queue_url,
            schema.ENV_INTERRUPTS_TOPIC_ARN: self.interrupts_topic.topic_arn,
            schema.ENV_EMAIL_DLQ_URL: self.email_dlq.queue.queue_url,
        }

    def _function(
        self, spec: _Function, *, environment: dict[str, str], reserved_concurrency: int = 10, timeout: int = 30
    ) -> HandlerFunction:
        function = HandlerFunction(
            self,
            spec.construct_id,
            handler=spec.handler,
            description=spec.description,
            service_name="job-claim",
            encryption_key=self._encryption_key,
            timeout=Duration.seconds(timeout),
            memory_size=512,
            reserved_concurrency=reserved_concurrency,
            environment=environment,
        )
        self.functions[spec.construct_id] = function
        alarms = FunctionAlarms(
            self,
            f"{spec.construct_id}Alarms",
            function=function.function,
            purpose=f"JobClaim {spec.construct_id}",
            alarm_topic=self._alarm_topic,
        )
        self.alarms[f"{spec.construct_id}Errors"] = alarms.errors
        acknowledge(
            function.role.node.find_child("DefaultPolicy"),
            "AwsSolutions-IAM5[Resource::*]",
            "The X-Ray trace actions have no resource-level permissions; every other action names its resource.",
        )
        for rule_id in ("NIST.800.53.R5-LambdaInsideVPC", "HIPAA.Security-LambdaInsideVPC", "CKV_AWS_117"):
            acknowledge(
                function.function,
                rule_id,
                "Reads and writes only S3, DynamoDB, SQS, SNS and Step Functions through their public endpoints "
                "and holds no private-network data: a VPC would add NAT cost without isolation.",
            )
        # Synchronous invokes from the state machine: Step Functions' retries and catches are the
        # failure path; nothing invokes these functions asynchronously.
        for rule_id in ("Serverless-LambdaDLQ", "NIST.800.53.R5-LambdaDLQ", "HIPAA.Security-LambdaDLQ", "CKV_AWS_116"):
            acknowledge(
                function.function,
                rule_id,
                "Invoked synchronously by the state machine only, whose retries and catches (to the email DLQ) "
                "handle every failure; an asynchronous DLQ would never receive anything.",
            )
        return function

    def _build_functions(self, *, email_domain: str | None) -> None:
        env = self._environment()
        tables = self.tables
        domain_env = {schema.ENV_EMAIL_DOMAIN: email_domain} if email_domain else {}
        parse = self._function(_PARSE, environment=domain_env)
        self._grant_objects(parse.role, ["s3:GetObject"], INCOMING_PREFIX, decrypt=True)
        attachment = self._function(_ATTACHMENT, environment={}, timeout=60)
        self._grant_objects(attachment.role, ["s3:GetObject"], INCOMING_PREFIX, decrypt=True)
        self._grant_objects(attachment.role, ["s3:PutObject"], ATTACHMENTS_PREFIX, decrypt=False)
        check = self._function(
            _CHECK_ACTIVE,
            environment={
                schema.ENV_ACTIVE_JOBS_TABLE: env[schema.ENV_ACTIVE_JOBS_TABLE],
                schema.ENV_INTERRUPTS_TOPIC_ARN: env[schema.ENV_INTERRUPTS_TOPIC_ARN],
            },
        )
        _grant(check.role, tables["active_jobs"], "dynamodb:GetItem", "dynamodb:UpdateItem")
        _allow(check.role, ["sns:Publish"], self.interrupts_topic.topic_arn)
        claim = self._function(
            _CLAIM_REQUEST,
            environment={
                schema.ENV_CLAIM_REQUESTS_TABLE: env[schema.ENV_CLAIM_REQUESTS_TABLE],
                schema.ENV_UNCLAIMED_QUEUE_URL: env[schema.ENV_UNCLAIMED_QUEUE_URL],
            },
        )
        _grant(claim.role, tables["claim_requests"], "dynamodb:GetItem", "dynamodb:UpdateItem")
        _allow(claim.role, ["sqs:SendMessage"], self.unclaimed_queue.queue_arn)
        interruption = self._function(
            _INTERRUPTION,
            environment={
                schema.ENV_ACTIVE_JOBS_TABLE: env[schema.ENV_ACTIVE_JOBS_TABLE],
                schema.ENV_INTERRUPTIONS_TABLE: env[schema.ENV_INTERRUPTIONS_TABLE],
                schema.ENV_THREADS_TABLE: env[schema.ENV_THREADS_TABLE],
            },
        )
        _grant(interruption.role, tables["active_jobs"], "dynamodb:GetItem", "dynamodb:DeleteItem")
        _grant(interruption.role, tables["interruptions"], "dynamodb:PutItem")
        _grant(interruption.role, tables["threads"], "dynamodb:UpdateItem")
        timeout = self._function(
            _TIMEOUT,
            environment={
                schema.ENV_ACTIVE_JOBS_TABLE: env[schema.ENV_ACTIVE_JOBS_TABLE],
                schema.ENV_INTERRUPTIONS_TABLE: env[schema.ENV_INTERRUPTIONS_TABLE],
                schema.ENV_EMAIL_DLQ_URL: env[schema.ENV_EMAIL_DLQ_URL],
            },
        )
        _grant(timeout.role, tables["active_jobs"], "dynamodb:DeleteItem")
        _grant(timeout.role, tables["interruptions"], "dynamodb:PutItem")
        _allow(timeout.role, ["sqs:SendMessage"], self.email_dlq.queue.queue_arn)
        for function in self.functions.values():
            _grant_key_through(function.role, self._encryption_key)

    def _grant_objects(self, role: iam.IRole, actions: list[str], prefix: str, *, decrypt: bool) -> None:
        """Object actions under one prefix of the email bucket (object keys are message ids)."""
        # By name, not by reference: the bucket's notification needs the intake (and so, through
        # the state machine, every function) to exist first.
        resource = f"arn:{Stack.of(self).partition}:s3:::{self.email_bucket_name}/{prefix}*"
        _allow(role, actions, resource)
        flattened = f"arn:<AWS::Partition>:s3:::{self._email_bucket_stem}-email-<AWS::AccountId>-<AWS::Region>"
        acknowledge(
            role.node.find_child("DefaultPolicy"),
            f"AwsSolutions-IAM5[Resource::{flattened}/{prefix}*]",
            f"Objects under {prefix} are named by message id at run time; the grant covers that one prefix of "
            "the email bucket and nothing else.",
        )

    def _build_intake(self, *, reserved_concurrency: int, email_domain: str | None) -> None:
        self.intake_dlq = DeadLetterQueue(
            self,
            "IntakeDlq",
            encryption_key=self._encryption_key,
            alarm_topic=self._alarm_topic,
            purpose="the JobClaim email intake",
        )
        environment = {schema.ENV_STATE_MACHINE_ARN: self.state_machine.state_machine_arn}
        if email_domain:
            environment[schema.ENV_EMAIL_DOMAIN] = email_domain
        intake = HandlerFunction(
            self,
            _INTAKE.construct_id,
            handler=_INTAKE.handler,
            description=_INTAKE.description,
            service_name="job-claim",
            encryption_key=self._encryption_key,
            timeout=Duration.seconds(30),
            memory_size=512,
            reserved_concurrency=reserved_concurrency,
            environment=environment,
            dead_letter_queue=self.intake_dlq.queue,
        )
        self.functions[_INTAKE.construct_id] = intake
        intake.acknowledge_key_grants()
        self.alarms["IntakeFunctionErrors"] = FunctionAlarms(
            self,
            "IntakeFunctionAlarms",
            function=intake.function,
            purpose="JobClaim intake",
            alarm_topic=self._alarm_topic,
        ).errors
        # Retry window: S3 invokes asynchronously; Lambda retries a failed intake twice (1 and 2
        # minutes later), then the record lands in the intake DLQ with its alarm. A retry of an
        # intake whose execution started is answered by ExecutionAlreadyExists: nothing twice.
        intake.function.configure_async_invoke(retry_attempts=2, max_event_age=Duration.hours(1))
        acknowledge(
            intake.function.node.find_child("EventInvokeConfig"),
            "Serverless-LambdaAsyncFailureDestination",
            "Failed asynchronous invocations go to the function's dead-letter queue (with its depth alarm); an "
            "on-failure destination would deliver the same events a second time.",
        )
        self._grant_objects(intake.role, ["s3:GetObject"], INCOMING_PREFIX, decrypt=True)
        _allow(intake.role, ["states:StartExecution"], self.state_machine.state_machine_arn)
        _grant_key_through(intake.role, self._encryption_key)
        stack = Stack.of(self)
        notify_on_object_created(
            self,
            "IntakeInvokePermission",
            bucket=self.email_bucket,
            bucket_arn=f"arn:{stack.partition}:s3:::{self.email_bucket_name}",
            function=intake.function,
            prefix=INCOMING_PREFIX,
        )
        acknowledge(
            intake.role.node.find_child("DefaultPolicy"),
            "AwsSolutions-IAM5[Resource::*]",
            "The X-Ray trace actions have no resource-level permissions; every other action names its resource.",
        )
        for rule_id in ("NIST.800.53.R5-LambdaInsideVPC", "HIPAA.Security-LambdaInsideVPC", "CKV_AWS_117"):
            acknowledge(
                intake.function,
                rule_id,
                "Reads the stored email from S3 and starts an execution: no private-network data, so a VPC would "
                "add NAT cost without isolation.",
            )

    # --- state machine -------------------------------------------------------------------------

    def _invoke(
        self,
        construct_id: str,
        spec: _Function,
        retry_attempts: int,
        *,
        payload: dict[str, str] | None = None,
        result_path: str | None = None,
    ) -> tasks.LambdaInvoke:
        """A Lambda step whose output is the function's answer (at ``result_path``, or the whole state)."""
        task = tasks.LambdaInvoke(
            self,
            construct_id,
            lambda_function=self.functions[spec.construct_id].function,
            payload=sfn.TaskInput.from_object(payload) if payload is not None else None,
            result_selector={"value.$": "$.Payload"} if result_path is not None else None,
            result_path=f"{result_path}" if result_path is not None else None,
            output_path=None if result_path is not None else "$.Payload",
            retry_on_service_exceptions=False,
        )
        # Retry window: Lambda service errors and throttles only (our own errors are answers the
        # catches route), 2 s doubling, so a transient outage costs seconds, not the message.
        task.add_retry(
            errors=[
                "Lambda.ServiceException",
                "Lambda.AWSLambdaException",
                "Lambda.SdkClientException",
                "Lambda.TooManyRequestsException",
            ],
            interval=Duration.seconds(2),
            backoff_rate=2,
            max_attempts=retry_attempts,
        )
        return task

    def _build_state_machine(
        self, *, heartbeat: Duration, task_timeout: Duration, attachment_concurrency: int, lambda_retry_attempts: int
    ) -> sfn.StateMachine:
        retries = lambda_retry_attempts
        email_fields = {
            "messageId.$": "$.messageId",
            "pair.$": "$.pair",
            "threadId.$": "$.threadId",
            "project.$": "$.project",
            "user.$": "$.user",
        }

        # Failure path: the whole story goes to the email DLQ, then the execution fails.
        send_to_dlq = tasks.SqsSendMessage(
            self,
            "SendToEmailDlq",
            queue=self.email_dlq.queue,
            message_body=sfn.TaskInput.from_object(
                {
                    "error.$": "$.error",
                    "input.$": "$$.Execution.Input",
                    "execution.$": "$$.Execution.Id",
                    "timestamp.$": "$$.State.EnteredTime",
                }
            ),
            result_path=sfn.JsonPath.DISCARD,
        )
        send_to_dlq.next(sfn.Fail(self, "IntakeProcessingFailed", error="IntakeProcessingFailed"))

        parse = self._invoke(
            "ParseEmail",
            _PARSE,
            retries,
            payload={"bucket.$": "$.bucket", "key.$": "$.key", "messageId.$": "$.messageId"},
        )
        parse.add_catch(send_to_dlq, errors=["States.ALL"], result_path="$.error")

        attachments = sfn.Map(
            self,
            "ProcessAttachments",
            items_path="$.attachments",
            max_concurrency=attachment_concurrency,
            item_selector={
                "bucket.$": "$.bucket",
                "key.$": "$.key",
                "messageId.$": "$.messageId",
                "attachment.$": "$$.Map.Item.Value",
            },
            result_path="$.storedAttachments",
        )
        attachments.item_processor(self._invoke("ProcessAttachment", _ATTACHMENT, retries))
        attachments.add_catch(send_to_dlq, errors=["States.ALL"], result_path="$.error")

        check_ownership = tasks.DynamoGetItem(
            self,
            "CheckOwnership",
            table=self.tables["ownership"],
            key={schema.PAIR: tasks.DynamoAttributeValue.from_string(sfn.JsonPath.string_at("$.pair"))},
            consistent_read=True,
            result_path="$.ownership",
        )
        check_ownership.add_catch(send_to_dlq, errors=["States.ALL"], result_path="$.error")
        read_active = tasks.DynamoGetItem(
            self,
            "ReadActiveJob",
            table=self.tables["active_jobs"],
            key={schema.PAIR: tasks.DynamoAttributeValue.from_string(sfn.JsonPath.string_at("$.pair"))},
            consistent_read=True,
            result_path="$.activeJob",
        )
        read_active.add_catch(send_to_dlq, errors=["States.ALL"], result_path="$.error")
        check_active = self._invoke(
            "CheckActiveJob",
            _CHECK_ACTIVE,
            retries,
            payload={"pair.$": "$.pair", "threadId.$": "$.threadId", "messageId.$": "$.messageId"},
            result_path="$.activeCheck",
        )
        check_active.add_catch(send_to_dlq, errors=["States.ALL"], result_path="$.error")

        def send(construct_id: str) -> tasks.SqsSendMessage:
            return tasks.SqsSendMessage(
                self,
                construct_id,
                queue=self.input_queue,
                integration_pattern=sfn.IntegrationPattern.WAIT_FOR_TASK_TOKEN,
                message_group_id=sfn.JsonPath.string_at("$.pair"),
                message_deduplication_id=sfn.JsonPath.string_at("$.messageId"),
                message_body=sfn.TaskInput.from_object(
                    {
                        "taskToken": sfn.JsonPath.task_token,
                        **email_fields,
                        "subject.$": "$.subject",
                        "body.$": "$.body",
                        "attachments.$": "$.attachments",
                    }
                ),
                heartbeat_timeout=sfn.Timeout.duration(heartbeat),
                task_timeout=sfn.Timeout.duration(task_timeout),
                result_path="$.result",
            )

        # The caught error's Cause may be absent (moto drops it, AWS may give none): only the
        # error name is passed; partial work is on the active-job row the worker wrote.
        handle_timeout = self._invoke(
            "HandleTimeout",
            _TIMEOUT,
            retries,
            payload={
                **email_fields,
                "error.$": "$.error.Error",
                "email.$": "$",
                "execution.$": "$$.Execution.Id",
                "timestamp.$": "$$.State.EnteredTime",
            },
            result_path="$.timeoutRecord",
        )
        handle_timeout.next(sfn.Fail(self, "JobTimedOut", error="JobTimedOut"))
        handle_timeout.add_catch(send_to_dlq, errors=["States.ALL"], result_path="$.error")
        handle_interruption = self._invoke(
            "HandleInterruption",
            _INTERRUPTION,
            retries,
            payload={**email_fields, "error.$": "$.error.Error"},
            result_path="$.interruptionRecord",
        )
        handle_interruption.next(sfn.Succeed(self, "InterruptionComplete"))
        handle_interruption.add_catch(send_to_dlq, errors=["States.ALL"], result_path="$.error")

        def with_catches(state: tasks.SqsSendMessage | sfn.Parallel) -> None:
            state.add_catch(handle_timeout, errors=["States.Timeout"], result_path="$.error")
            state.add_catch(handle_interruption, errors=[schema.PREEMPTED], result_path="$.error")
            state.add_catch(send_to_dlq, errors=["States.ALL"], result_path="$.error")

        completed = sfn.Succeed(self, "JobCompleted")
        owned = send("RouteToProjectQueue")
        owned.add_retry(errors=["SQS.SdkClientException", "SQS.AmazonSQSException"], max_attempts=retries)
        with_catches(owned)
        owned.next(completed)
        unowned = sfn.Parallel(self, "RouteUnowned", result_path="$.result")
        unowned.branch(send("RouteUnownedToProjectQueue"))
        unowned.branch(
            self._invoke(
                "RequestClaim",
                _CLAIM_REQUEST,
                retries,
                payload={"pair.$": "$.pair", "messageId.$": "$.messageId"},
                result_path="$.claimRequest",
            )
        )
        with_catches(unowned)
        unowned.next(completed)

        routing = (
            sfn.Choice(self, "DetermineRouting")
            .when(
                sfn.Condition.and_(
                    sfn.Condition.is_present("$.ownership.Item"),
                    sfn.Condition.string_equals("$.ownership.Item.state.S", "pending"),
                ),
                owned,
            )
            .otherwise(unowned)
        )
        other_active = (
            sfn.Choice(self, "HasOtherActiveJob")
            .when(
                sfn.Condition.and_(
                    sfn.Condition.is_present("$.activeJob.Item"),
                    sfn.Condition.not_(
                        sfn.Condition.string_equals_json_path("$.activeJob.Item.thread_id.S", "$.threadId")
                    ),
                ),
                check_active.next(routing),
            )
            .otherwise(routing)
        )
        check_ownership.next(read_active).next(other_active)
        attachments.next(check_ownership)
        definition = parse.next(
            sfn.Choice(self, "CheckAttachments")
            .when(sfn.Condition.is_present("$.attachments[0]"), attachments)
            .otherwise(check_ownership)
        )
        self.log_group = logs.LogGroup(
            self,
            "StateMachineLogs",
            retention=logs.RetentionDays.ONE_YEAR,
            encryption_key=self._encryption_key,
            removal_policy=RemovalPolicy.RETAIN,
        )
        state_machine = sfn.StateMachine(
            self,
            "StateMachine",
            definition_body=sfn.DefinitionBody.from_chainable(definition),
            state_machine_type=sfn.StateMachineType.STANDARD,
            tracing_enabled=True,
            logs=sfn.LogOptions(destination=self.log_group, level=sfn.LogLevel.ALL, include_execution_data=True),
        )
        _grant_key_through(state_machine.role, self._encryption_key)
        policy = state_machine.role.node.find_child("DefaultPolicy")
        for finding, reason in (
            (
                "AwsSolutions-IAM5[Resource::*]",
                "X-Ray and the CloudWatch Logs delivery actions Step Functions needs for logging have no "
                "resource-level permissions; every task action names its function, table or queue.",
            ),
            (
                "AwsSolutions-IAM5[Action::kms:GenerateDataKey*]",
                "From CDK's send grant on the encrypted input queue and email DLQ; it names the subsystem's key.",
            ),
        ):
            acknowledge(policy, finding, reason)
        for spec in (_PARSE, _ATTACHMENT, _CHECK_ACTIVE, _CLAIM_REQUEST, _INTERRUPTION, _TIMEOUT):
            logical_id = Stack.of(self).get_logical_id(self.functions[spec.construct_id].function.node.default_child)  # type: ignore[arg-type]
            acknowledge(
                policy,
                f"AwsSolutions-IAM5[Resource::<{logical_id}.Arn>:*]",
                "CDK's invoke grant covers the function and its versions; the functions publish none, so the "
                "state machine invokes exactly its own functions.",
            )
        for rule_id in ("NIST.800.53.R5-IAMNoInlinePolicy", "HIPAA.Security-IAMNoInlinePolicy"):
            acknowledge(
                state_machine.role,
                rule_id,
                "The state machine role's policy holds exactly this state machine's task grants and lives and "
                "dies with the role; a managed policy would only add a reusable object.",
            )
        return state_machine

    def _build_state_machine_alarms(self) -> None:
        for metric_name, description in (
            ("ExecutionsFailed", "JobClaim executions failed (unprocessable email or a broken step)"),
            ("ExecutionsTimedOut", "JobClaim executions timed out"),
            ("ExecutionsAborted", "JobClaim executions were aborted"),
        ):
            self.alarms[metric_name] = route_alarm(
                cloudwatch.Alarm(
                    self,
                    f"{metric_name}Alarm",
                    alarm_description=f"{description}: see the email DLQ and the execution history.",
                    metric=self.state_machine.metric(metric_name, period=Duration.minutes(5), statistic="Sum"),
                    threshold=1,
                    evaluation_periods=1,
                    comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
                    treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
                ),
                self._alarm_topic,
            )

    # --- grants for workers --------------------------------------------------------------------

    def grant_worker(self, grantee: iam.IGrantable) -> None:
        """What the reference worker calls: its queue, the token calls, ownership and active jobs."""
        self.input_queue.grant_consume_messages(grantee)
        iam.Grant.add_to_principal(
            grantee=grantee,
            actions=["states:SendTaskSuccess", "states:SendTaskFailure", "states:SendTaskHeartbeat"],
            resource_arns=[self.state_machine.state_machine_arn],
        )
        _grant(grantee, self.tables["ownership"], "dynamodb:GetItem", "dynamodb:UpdateItem")
        _grant(
            grantee,
            self.tables["active_jobs"],
            "dynamodb:GetItem",
            "dynamodb:PutItem",
            "dynamodb:UpdateItem",
            "dynamodb:DeleteItem",
        )
        _grant_key_through(grantee, self._encryption_key)

    def worker_environment(self) -> dict[str, str]:
        return {
            schema.ENV_OWNERSHIP_TABLE: self.tables["ownership"].table_name,
            schema.ENV_ACTIVE_JOBS_TABLE: self.tables["active_jobs"].table_name,
            schema.ENV_INPUT_QUEUE_URL: self.input_queue.queue_url,
        }


def _grant(grantee: iam.IGrantable, table: dynamodb.ITable, *actions: str) -> None:
    iam.Grant.add_to_principal(grantee=grantee, actions=list(actions), resource_arns=[table.table_arn])


def _allow(grantee: iam.IGrantable, actions: list[str], resource: str) -> None:
    iam.Grant.add_to_principal(grantee=grantee, actions=actions, resource_arns=[resource])


def _grant_key_through(grantee: iam.IGrantable, key: kms.IKey) -> None:
    """The subsystem key for the encrypted tables, queues and topic this principal uses."""
    iam.Grant.add_to_principal(
        grantee=grantee, actions=["kms:Decrypt", "kms:GenerateDataKey"], resource_arns=[key.key_arn]
    )
