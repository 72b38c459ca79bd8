"""FanOutConsumer: the one reader of the task-events stream, fanning out to Slack, GitHub, email.

DynamoDB Streams supports about two concurrent readers per shard; every channel runs inside
this one reader, so adding a channel never costs a reader (EventDriven-SingleStreamReader
enforces it at synth).

Each optional integration (task table, repo table, GitHub token, per-repository GitHub token
secrets, Slack secrets, email sender, API base URLs) adds its environment variable and its grant
if and only if its prop is given.

Customer-managed keys: a given table's ``encryption_key`` (``Table.from_table_attributes(...,
encryption_key=...)`` for an imported one) is granted for use through DynamoDB only, and
``secrets_encryption_keys`` (the keys of Slack and per-repository GitHub secrets, which are named
by prefix so their keys cannot be looked up) through Secrets Manager only. The stack-wide GitHub
secret's own key comes with ``grant_read``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from urllib.parse import urlparse

from aws_cdk import ArnFormat, Duration, Stack, Token
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_secretsmanager as secretsmanager
from aws_cdk import aws_sns as sns
from constructs import Construct

from infra.acknowledge import acknowledge
from infra.constructs.dead_letter_queue import DeadLetterQueue
from infra.constructs.function_alarms import FunctionAlarms
from infra.constructs.handler_function import HandlerFunction
from infra.constructs.stream_source import stream_event_source

# The characters a Secrets Manager secret name may hold (a prefix of them, no wildcard).
_SECRET_NAME_PREFIX = re.compile(r"^[A-Za-z0-9/_+=.@-]{1,256}$")
_USABLE_VIEW_TYPES = frozenset(
    {dynamodb.StreamViewType.NEW_IMAGE.value, dynamodb.StreamViewType.NEW_AND_OLD_IMAGES.value}
)


def _stream_view_type(table: dynamodb.ITable) -> str | None:
    """The stream view type of ``table`` when it is known at synth, else None.

    Known for a table defined in this app (its CloudFormation resource says it); unknown for a
    table imported by ARN (``Table.from_table_attributes``) or a value that is a token, which
    are accepted as they are.
    """
    resource = table.node.default_child
    if not isinstance(resource, (dynamodb.CfnTable, dynamodb.CfnGlobalTable)):
        return None
    try:
        specification = resource.stream_specification
    except RuntimeError:  # TableV2 renders it lazily: not readable before synthesis
        return None
    view_type = getattr(specification, "stream_view_type", None)
    if isinstance(specification, dict):
        view_type = specification.get("streamViewType", specification.get("stream_view_type"))
    if not isinstance(view_type, str) or Token.is_unresolved(view_type):
        return None
    return view_type


class FanOutConsumer(Construct):
    """The fan-out function, its one stream mapping, DLQ and alarms; grants only what its props need.

    ``github_repo_secret_prefix`` (keyword-only, optional; needs ``repo_table``): a repo row's
    ``github_token_secret_arn`` may name a secret of this account and region whose name starts
    with this prefix (e.g. ``bgagent/github/``); the role may read ``secret:<prefix>*`` and the
    handler refuses (terminal for GitHub, logged with the repo and the secret) a repo secret
    outside it. Without it the role reads only ``github_token_secret`` and a repo row that
    names a secret is refused the same way.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        task_events_table: dynamodb.ITable,
        encryption_key: kms.IKey,
        task_table: dynamodb.ITable | None = None,
        repo_table: dynamodb.ITable | None = None,
        github_token_secret: secretsmanager.ISecret | None = None,
        github_repo_secret_prefix: str | None = None,
        slack_secret_prefix: str | None = None,
        email_sender: str | None = None,
        # GitHub Enterprise Server: its REST base, e.g. https://github.example.com/api/v3.
        github_api_url: str | None = None,
        # Slack's Web API base (Enterprise Grid proxies, GovSlack: https://slack-gov.com/api/).
        slack_api_url: str | None = None,
        secrets_encryption_keys: Sequence[kms.IKey] = (),
        alarm_topic: sns.ITopic | None = None,
        batch_size: int = 100,
        max_batching_window: Duration = Duration.seconds(1),
        retry_attempts: int = 10,
        # Records older than this go to the DLQ (with its alarm) instead of blocking the shard;
        # a notification more than six hours late is better handled by an operator.
        max_record_age: Duration = Duration.hours(6),
        # TRIM_HORIZON: events written while the mapping is created or replaced are still
        # delivered (LATEST would silently skip them); the dedup markers make replays harmless.
        starting_position: lambda_.StartingPosition = lambda_.StartingPosition.TRIM_HORIZON,
        timeout: Duration = Duration.seconds(60),
        memory_size: int = 512,
        reserved_concurrency: int = 10,
        # Tasks processed at once inside one batch (records of one task stay in order).
        max_concurrency: int = 32,
    ) -> None:
        super().__init__(scope, construct_id)
        if task_events_table.table_stream_arn is None:
            raise ValueError("FanOutConsumer: task_events_table must have a stream (NEW_IMAGE or NEW_AND_OLD_IMAGES)")
        view_type = _stream_view_type(task_events_table)
        if view_type is not None and view_type not in _USABLE_VIEW_TYPES:
            # The handler parses the event from the record's NewImage: a KEYS_ONLY or OLD_IMAGE
            # stream would deploy fine and then fail every record into the DLQ.
            raise ValueError(
                f"FanOutConsumer: the stream view type is {view_type}; the handler reads each event from "
                "the new image, so task_events_table needs a stream of NEW_IMAGE or NEW_AND_OLD_IMAGES"
            )
        if slack_secret_prefix is not None and not slack_secret_prefix.strip():
            raise ValueError("FanOutConsumer: slack_secret_prefix must not be empty")
        # The handler refuses to start in these shapes (handlers/fanout/settings.py); saying so at
        # synth is kinder than a function that fails every cold start after deploy.
        if github_token_secret is None and slack_secret_prefix is None and email_sender is None:
            raise ValueError(
                "FanOutConsumer: configure at least one channel (slack_secret_prefix, github_token_secret "
                "or email_sender); without one every event would be dropped"
            )
        if task_table is None:
            raise ValueError("FanOutConsumer: task_table is required: every channel reads the task row")
        if repo_table is not None and github_token_secret is None:
            raise ValueError(
                "FanOutConsumer: repo_table only serves the GitHub channel (per-repo tokens); "
                "give github_token_secret too, or leave repo_table out"
            )

        if github_repo_secret_prefix is not None:
            if Token.is_unresolved(github_repo_secret_prefix) or not _SECRET_NAME_PREFIX.match(
                github_repo_secret_prefix
            ):
                raise ValueError(
                    "FanOutConsumer: github_repo_secret_prefix must be a secret name prefix such as bgagent/github/ "
                    f"(a literal of letters, digits and /_+=.@-, no wildcard), got {github_repo_secret_prefix!r}"
                )
            if repo_table is None:
                raise ValueError(
                    "FanOutConsumer: github_repo_secret_prefix needs repo_table (the repo rows name the secrets)"
                )
            if slack_secret_prefix is not None and (
                slack_secret_prefix.startswith(github_repo_secret_prefix)
                or github_repo_secret_prefix.startswith(slack_secret_prefix)
            ):
                # One grant would then cover the other channel's tokens.
                raise ValueError(
                    f"FanOutConsumer: github_repo_secret_prefix {github_repo_secret_prefix!r} and slack_secret_prefix "
                    f"{slack_secret_prefix!r} overlap; give each channel's secrets a prefix of their own"
                )

        for name, url, needs in (
            ("github_api_url", github_api_url, github_token_secret),
            ("slack_api_url", slack_api_url, slack_secret_prefix),
        ):
            if url is None:
                continue
            parsed = urlparse(url)
            if parsed.scheme != "https" or not parsed.netloc or parsed.query or parsed.fragment:
                raise ValueError(f"FanOutConsumer: {name} must be an https:// base URL without query, got {url!r}")
            if needs is None:
                channel = "github_token_secret" if name == "github_api_url" else "slack_secret_prefix"
                raise ValueError(f"FanOutConsumer: {name} is for a configured channel; give {channel} too")
        if secrets_encryption_keys and slack_secret_prefix is None and github_repo_secret_prefix is None:
            raise ValueError(
                "FanOutConsumer: secrets_encryption_keys are the keys of prefixed secrets; give slack_secret_prefix "
                "or github_repo_secret_prefix (the stack-wide GitHub secret brings its own key)"
            )

        self.dlq = DeadLetterQueue(
            self, "Dlq", encryption_key=encryption_key, alarm_topic=alarm_topic, purpose="the task-event fan-out"
        )
        if not 1 <= max_concurrency <= 64:
            raise ValueError("FanOutConsumer: max_concurrency must be between 1 and 64")
        environment: dict[str, str] = {"FANOUT_MAX_CONCURRENCY": str(max_concurrency)}
        if task_table is not None:
            environment["TASK_TABLE_NAME"] = task_table.table_name
        if repo_table is not None:
            environment["REPO_TABLE_NAME"] = repo_table.table_name
        if github_token_secret is not None:
            environment["GITHUB_TOKEN_SECRET_ARN"] = github_token_secret.secret_arn
        if github_repo_secret_prefix is not None:
            environment["GITHUB_REPO_SECRET_ARN_PREFIX"] = self._secret_arn(github_repo_secret_prefix)
        if slack_secret_prefix is not None:
            environment["SLACK_SECRET_PREFIX"] = slack_secret_prefix
        if email_sender is not None:
            environment["EMAIL_SENDER"] = email_sender
        if github_api_url is not None:
            environment["GITHUB_API_URL"] = github_api_url.rstrip("/")
        if slack_api_url is not None:
            environment["SLACK_API_URL"] = slack_api_url if slack_api_url.endswith("/") else slack_api_url + "/"

        self.handler_function = HandlerFunction(
            self,
            "Handler",
            handler="handlers.fanout.handler.handler",
            description="Fans task events out to Slack, GitHub and email",
            service_name="fanout",
            encryption_key=encryption_key,
            timeout=timeout,
            memory_size=memory_size,
            reserved_concurrency=reserved_concurrency,
            environment=environment,
            dead_letter_queue=self.dlq.queue,
        )
        self.function = self.handler_function.function
        self.handler_function.acknowledge_key_grants()
        # Only inserts and updates carry an event; REMOVE records (TTL expiry) never reach the
        # function. Event types are NOT filtered further: a record with a missing or unknown type
        # must reach the handler so it is reported (and DLQ'd) instead of vanishing.
        self.event_source = stream_event_source(
            task_events_table,
            dead_letter_queue=self.dlq.queue,
            event_names=("INSERT", "MODIFY"),
            starting_position=starting_position,
            batch_size=batch_size,
            max_batching_window=max_batching_window,
            retry_attempts=retry_attempts,
            max_record_age=max_record_age,
        )
        self.function.add_event_source(self.event_source)
        self.alarms = FunctionAlarms(
            self,
            "Alarms",
            function=self.function,
            purpose="task-event fan-out",
            alarm_topic=alarm_topic,
            max_iterator_age=Duration.minutes(5),
        )
        self._grant_integrations(
            task_table=task_table,
            repo_table=repo_table,
            github_token_secret=github_token_secret,
            github_repo_secret_prefix=github_repo_secret_prefix,
            slack_secret_prefix=slack_secret_prefix,
            email_sender=email_sender,
        )
        self._grant_keys(task_table=task_table, repo_table=repo_table, secrets_keys=secrets_encryption_keys)
        acknowledge(
            self.handler_function.role.node.find_child("DefaultPolicy"),
            "AwsSolutions-IAM5[Resource::*]",
            "dynamodb:ListStreams (added by the DynamoDB event source) and the X-Ray trace actions have no "
            "resource-level permissions; every other action here is scoped to a named resource.",
        )
        for rule_id in ("NIST.800.53.R5-LambdaInsideVPC", "HIPAA.Security-LambdaInsideVPC", "CKV_AWS_117"):
            acknowledge(
                self.function,
                rule_id,
                "The fan-out calls the public Slack and GitHub APIs and reads only DynamoDB, Secrets Manager "
                "and SES; it holds no private-network data, so a VPC would add NAT cost without isolation.",
            )

    def _grant_integrations(
        self,
        *,
        task_table: dynamodb.ITable | None,
        repo_table: dynamodb.ITable | None,
        github_token_secret: secretsmanager.ISecret | None,
        github_repo_secret_prefix: str | None,
        slack_secret_prefix: str | None,
        email_sender: str | None,
    ) -> None:
        role = self.handler_function.role
        if task_table is not None:
            # Reads the task row, writes dedup markers and message ids with conditional updates.
            task_table.grant(role, "dynamodb:GetItem", "dynamodb:UpdateItem")
        if repo_table is not None:
            repo_table.grant(role, "dynamodb:GetItem")
        if github_token_secret is not None:
            github_token_secret.grant_read(role)
        if github_repo_secret_prefix is not None:
            # The handler accepts a repo row's secret only under this same ARN prefix.
            role.add_to_principal_policy(
                iam.PolicyStatement(
                    actions=["secretsmanager:GetSecretValue"],
                    resources=[self._secret_arn(f"{github_repo_secret_prefix}*")],
                )
            )
            acknowledge(
                role.node.find_child("DefaultPolicy"),
                f"AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:secretsmanager:<AWS::Region>:<AWS::AccountId>:secret:{github_repo_secret_prefix}*]",
                "One GitHub token secret per repository, named by this prefix and listed in the repo table; "
                "repositories are onboarded at run time and Secrets Manager appends a random suffix to each "
                "ARN, so the grant covers the prefix and the handler refuses any repo secret outside it.",
            )
        if slack_secret_prefix is not None:
            role.add_to_principal_policy(
                iam.PolicyStatement(
                    actions=["secretsmanager:GetSecretValue"],
                    resources=[self._secret_arn(f"{slack_secret_prefix}*")],
                )
            )
            acknowledge(
                role.node.find_child("DefaultPolicy"),
                f"AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:secretsmanager:<AWS::Region>:<AWS::AccountId>:secret:{slack_secret_prefix}*]",
                "One bot-token secret per Slack workspace, named by this prefix plus the team id; workspaces "
                "are onboarded at run time, so the grant covers the prefix and nothing outside it.",
            )
        if email_sender is not None:
            stack = Stack.of(self)
            domain = email_sender.rsplit("@", 1)[-1]
            identities = sorted({email_sender, domain})
            role.add_to_principal_policy(
                iam.PolicyStatement(
                    actions=["ses:SendEmail"],
                    resources=[
                        stack.format_arn(service="ses", resource="identity", resource_name=i) for i in identities
                    ],
                )
            )

    def _grant_keys(
        self, *, task_table: dynamodb.ITable, repo_table: dynamodb.ITable | None, secrets_keys: Sequence[kms.IKey]
    ) -> None:
        """Customer-managed keys of what the function reads and writes, each only through its service."""
        region = Stack.of(self).region
        role = self.handler_function.role
        # The task table takes conditional updates (markers, message ids): encrypt and decrypt.
        table_keys: list[tuple[kms.IKey, list[str]]] = []
        if task_table.encryption_key is not None:
            table_keys.append((task_table.encryption_key, ["kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey"]))
        if repo_table is not None and repo_table.encryption_key is not None:
            table_keys.append((repo_table.encryption_key, ["kms:Decrypt"]))
        for key, actions in table_keys:
            role.add_to_principal_policy(
                iam.PolicyStatement(
                    actions=[*actions, "kms:DescribeKey"],
                    resources=[key.key_arn],
                    conditions={"StringEquals": {"kms:ViaService": f"dynamodb.{region}.amazonaws.com"}},
                )
            )
        for key in secrets_keys:
            role.add_to_principal_policy(
                iam.PolicyStatement(
                    actions=["kms:Decrypt"],
                    resources=[key.key_arn],
                    conditions={"StringEquals": {"kms:ViaService": f"secretsmanager.{region}.amazonaws.com"}},
                )
            )

    def _secret_arn(self, name: str) -> str:
        """The ARN of secret ``name`` (or a ``prefix*`` pattern) in this stack's account and region."""
        return Stack.of(self).format_arn(
            service="secretsmanager",
            resource="secret",
            resource_name=name,
            arn_format=ArnFormat.COLON_RESOURCE_NAME,
        )
