"""ExportRunner: compliance exports of the audit log, from Postgres to S3, one SQS message per job.

What it builds:

- the request queue (SSE-KMS, TLS only, 1 day retention) and its DLQ (14 days, depth alarm);
- the runner function, in the VPC, consuming the queue one message at a time with batch item
  failures; the sweeper function on an EventBridge schedule, failing jobs stuck in ``running``;
- the exports bucket (SSE-KMS, public access blocked, TLS only, versioned, objects expire after
  7 days, incomplete multipart uploads aborted after 1 day) and its access-log bucket, unless a
  bucket is given;
- unless an existing database is given: an Aurora PostgreSQL Serverless v2 cluster (encrypted,
  IAM authentication, TLS only, logs exported, deletion protection configurable) with a
  generated, rotated secret, and, unless a VPC is given, a VPC with isolated subnets only.

Migrations on deploy: the migrator function (handlers/export_runner/migrator.py), in the VPC
with the functions' security group, applies the product's migrations through a CDK trigger that
runs after the database, its security-group rules and the Secrets Manager endpoint exist, and
before the runner and the sweeper are created or updated. The trigger runs on every deploy that
changes the migrator's version; the migrations' digest is in its environment
(``MIGRATIONS_SHA256``), so a new or edited migration always re-runs it (running it with
nothing new is a no-op). It logs in with the database secret (the cluster's admin, owner of the
schema; with an existing database, the secret given in cdk.json, which must be the owner's), the
only function that reads that secret with IAM logins. A failed migration raises, the trigger
reports the function error, and the deployment fails with the migration's message.

Network: the VPC this construct creates has no internet gateway and no NAT. The functions reach
S3 through a gateway endpoint, and Secrets Manager and SQS through interface endpoints; nothing
else is reachable, so audit rows can only leave through this account's endpoints (and the
gateway endpoint's policy only admits this bucket's objects). No other endpoint is needed:
Lambda ships the functions' logs and EMF metrics itself, X-Ray segments go over UDP to Lambda's
own daemon, presigned URLs are computed locally, and S3 and Secrets Manager call KMS on the
caller's behalf. A VPC given by the caller must provide its own route to S3, SQS and Secrets
Manager (endpoints or NAT): endpoints with private DNS cannot be added twice to one VPC.

IAM, the whole of it for the runner: object write/read/multipart actions on this bucket's
objects, an explicit deny of object actions on every other bucket, the database login (below),
consume of the queue, the KMS use those encrypted resources need, plus what every function has
(its log group, X-Ray, the network interfaces Lambda creates in the VPC, its async DLQ).

Database login (``database_auth``):

- ``"iam"`` (the default): the runner and the sweeper log in as the least-privilege role
  ``export_runner`` (created by the migrations, handlers/export_runner/migrations/0004) with an
  IAM authentication token; their roles hold ``rds-db:connect`` on exactly
  ``dbuser:<cluster resource id>/export_runner`` and cannot read the admin secret.
  ``grant_produce`` gives a producer ``rds-db:connect`` as ``export_producer``. An existing
  cluster needs its resource id (``rds.DatabaseCluster.from_database_cluster_attributes(...,
  cluster_resource_identifier=...)``) and IAM authentication switched on.
- ``"secret"``: the functions read the given secret and log in with its username and password
  (an existing database without IAM authentication; that login should then be one of the
  least-privilege roles, not the admin).

TLS to the database (``database_sslmode``, ``database_ca_bundle``): by default
``verify-full``: the server's certificate must chain to the CA bundle the operator gives
(``database_ca_bundle``, a local PEM file such as the RDS global bundle from
https://truststore.pem.amazonaws.com/global/global-bundle.pem) and carry the endpoint's name.
The bundle ships to the functions as a Lambda layer (``/opt/<file name>``, named by
``DATABASE_CA_BUNDLE``). Without a bundle the construct refuses to build, unless
``database_sslmode="require"`` is chosen explicitly: encrypted, but the server is not verified.
The created cluster refuses clients without TLS either way (``rds.force_ssl``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aws_cdk import ArnFormat, Duration, Names, RemovalPolicy, Stack, triggers
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_lambda_event_sources as event_sources
from aws_cdk import aws_logs as logs
from aws_cdk import aws_rds as rds
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_secretsmanager as secretsmanager
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from handlers.export_runner.migration_digest import migrations_digest
from infra.acknowledge import acknowledge
from infra.constructs.alarm_routing import route_alarm
from infra.constructs.dead_letter_queue import DeadLetterQueue
from infra.constructs.function_alarms import FunctionAlarms
from infra.constructs.handler_function import HandlerFunction
from infra.constructs.logged_bucket import LoggedBucket

RUNNER_HANDLER = "handlers.export_runner.runner.handler"
SWEEPER_HANDLER = "handlers.export_runner.sweeper.handler"
MIGRATOR_HANDLER = "handlers.export_runner.migrator.handler"
MIGRATOR_TIMEOUT = Duration.minutes(5)
MAX_PRESIGN_TTL = Duration.days(7)  # SigV4's limit for a presigned URL
# The stack-wide construct of CDK's triggers module that invokes every trigger's function.
TRIGGER_PROVIDER = "AWSCDK.TriggerCustomResourceProviderCustomResourceProvider"
POSTGRES_PORT = 5432
# The least-privilege database roles of migration 0004 the functions log in as.
RUNNER_DB_USER = "export_runner"
PRODUCER_DB_USER = "export_producer"
DATABASE_AUTH_MODES = ("iam", "secret")
# TLS is never optional between the functions and the audit database.
DATABASE_SSL_MODES = ("require", "verify-ca", "verify-full")
# Lambda's own guidance for SQS event sources, enforced by EventDriven-SqsVisibility.
VISIBILITY_TO_TIMEOUT_RATIO = 6
QUEUE_RETENTION = Duration.days(1)
# A job still `queued` one hour past the queue's retention has no message left to run it (it
# expired, or was parked in the DLQ after 3 receives): the sweeper fails it. A later redrive from
# the DLQ then finds the job failed and is a no-op (the runner claims only `queued` jobs).
QUEUED_EXPIRY = QUEUE_RETENTION.plus(Duration.hours(1))
# What the runner does with its bucket: multipart upload (CreateMultipartUpload, UploadPart and
# CompleteMultipartUpload are all authorised by s3:PutObject, as is the single PutObject of a
# small export), abort on failure, and the presigned GET it signs (S3 checks the signer's
# s3:GetObject when the URL is used), and deleting an export it finished after the sweeper had
# already failed the job (the job says failed, so the object must not linger as a download),
# with the version it wrote (the bucket is versioned: a plain delete would keep the export as a
# noncurrent version). It never lists parts, versions or buckets.
OBJECT_ACTIONS = (
    "s3:PutObject",
    "s3:GetObject",
    "s3:AbortMultipartUpload",
    "s3:DeleteObject",
    "s3:DeleteObjectVersion",
)
# Denied on every other bucket, so no policy attached later (a managed read-only policy, a
# careless grant) can let the runner copy audit rows elsewhere or read other data.
DENIED_ELSEWHERE = (
    *OBJECT_ACTIONS,
    "s3:ListMultipartUploadParts",
    "s3:GetObjectVersion",
    "s3:PutObjectAcl",
    "s3:RestoreObject",
)
# ENI management Lambda performs with the execution role when the function is in a VPC (what
# the AWS managed AWSLambdaVPCAccessExecutionRole holds, minus its log permissions). The two
# Describe actions have no resource-level permissions; the others are scoped (_grant_vpc_access).
VPC_DESCRIBE_ACTIONS = ("ec2:DescribeNetworkInterfaces", "ec2:DescribeSubnets")
NETWORK_INTERFACE_ACTIONS = (
    "ec2:DeleteNetworkInterface",
    "ec2:AssignPrivateIpAddresses",
    "ec2:UnassignPrivateIpAddresses",
)


@dataclass(frozen=True)
class ExportDatabase:
    """An existing PostgreSQL cluster the exporter uses instead of creating one.

    ``cluster`` gives the endpoint (DATABASE_HOST) and the security group that is opened to the
    functions on the cluster's port, and, for IAM logins (``database_auth="iam"``), its resource
    id (``cluster_resource_identifier``), which the rds-db:connect ARN names; ``secret`` holds
    username/password (and optionally host, port, dbname), read by the functions only with
    ``database_auth="secret"``; the functions run in ``vpc`` (``vpc_subnets``, default: its
    private subnets).
    """

    cluster: rds.IDatabaseCluster
    secret: secretsmanager.ISecret
    vpc: ec2.IVpc
    database_name: str
    vpc_subnets: ec2.SubnetSelection | None = None


class ExportRunner(Construct):
    """The compliance export subsystem (see the module docstring); built resources are attributes."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        encryption_key: kms.IKey,
        database: ExportDatabase | None = None,
        vpc: ec2.IVpc | None = None,
        bucket: s3.IBucket | None = None,
        alarm_topic: sns.ITopic | None = None,
        database_name: str = "audit",
        deletion_protection: bool = True,
        engine_version: rds.AuroraPostgresEngineVersion = rds.AuroraPostgresEngineVersion.VER_16_13,
        min_capacity: float = 0.5,
        max_capacity: float = 4,
        backup_retention: Duration = Duration.days(7),
        runner_timeout: Duration = Duration.minutes(15),
        runner_memory_size: int = 1024,
        runner_concurrency: int = 5,
        presign_ttl: Duration = Duration.minutes(15),
        export_expiry: Duration = Duration.days(7),
        sweep_interval: Duration = Duration.minutes(5),
        # How long past the runner's timeout a job may stay `running` before the sweeper fails it.
        stuck_margin: Duration = Duration.minutes(5),
        access_log_retention: Duration = Duration.days(365),
        # How the functions log in ("iam" or "secret") and how they verify the server (see the
        # module docstring); the CA bundle is a local PEM file.
        database_auth: str = "iam",
        database_sslmode: str = "verify-full",
        database_ca_bundle: str | None = None,
        code: lambda_.Code | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        self.database_auth = database_auth
        self.database_sslmode = database_sslmode
        if database is not None and vpc is not None and vpc is not database.vpc:
            raise ValueError("ExportRunner: give vpc or database (whose vpc is used), not both")
        if not 2 <= runner_concurrency <= 1000:
            # 2 is the smallest maximum concurrency an SQS event source accepts.
            raise ValueError(f"ExportRunner: runner_concurrency must be between 2 and 1000, got {runner_concurrency}")
        if runner_timeout.to_seconds() * VISIBILITY_TO_TIMEOUT_RATIO > Duration.hours(12).to_seconds():
            raise ValueError("ExportRunner: runner_timeout x 6 must fit the 12 h maximum SQS visibility timeout")
        problems = []
        if not 1 <= presign_ttl.to_seconds() <= MAX_PRESIGN_TTL.to_seconds():
            problems.append("presign_ttl must be between 1 second and 7 days (the longest presigned URL S3 accepts)")
        if database_auth not in DATABASE_AUTH_MODES:
            problems.append(f"database_auth must be one of {', '.join(DATABASE_AUTH_MODES)}, got {database_auth!r}")
        if database_sslmode not in DATABASE_SSL_MODES:
            problems.append(
                f"database_sslmode must be one of {', '.join(DATABASE_SSL_MODES)}, got {database_sslmode!r}"
            )
        elif database_sslmode.startswith("verify-") and database_ca_bundle is None:
            problems.append(
                f"database_sslmode {database_sslmode} needs database_ca_bundle (a PEM file with the CA that signed the "
                "database's certificate, e.g. the RDS global bundle); choose database_sslmode='require' explicitly to "
                "encrypt without verifying the server"
            )
        if database_ca_bundle is not None and not Path(database_ca_bundle).is_file():
            problems.append(f"database_ca_bundle {database_ca_bundle!r} is not a file")
        if problems:
            raise ValueError("ExportRunner: " + "; ".join(problems))

        self.encryption_key = encryption_key
        self.alarm_topic = alarm_topic
        self._creates_network = database is None and vpc is None
        self.vpc: ec2.IVpc = database.vpc if database else (vpc or self._create_vpc(encryption_key))
        # Functions prefer subnets with egress (a caller's VPC may reach AWS through NAT); the
        # database prefers isolated ones. The VPC created here has isolated subnets only.
        self.function_subnets = (
            database.vpc_subnets
            if database is not None and database.vpc_subnets is not None
            else _subnets(self.vpc.private_subnets or self.vpc.isolated_subnets, "the functions")
        )

        self.function_security_group = ec2.SecurityGroup(
            self,
            "FunctionSecurityGroup",
            vpc=self.vpc,
            description="Export runner and sweeper: HTTPS to AWS endpoints, PostgreSQL to the audit database",
            allow_all_outbound=False,
        )
        # HTTPS to anywhere: the S3 gateway endpoint is addressed by a managed prefix list that
        # cannot be named in a template without a lookup; in the VPC created here there is no
        # route beyond the endpoints, so "anywhere" is the endpoints.
        self.function_security_group.add_egress_rule(ec2.Peer.any_ipv4(), ec2.Port.tcp(443), "HTTPS to AWS endpoints")

        self.bucket: s3.IBucket
        self.access_log_bucket: s3.Bucket | None = None
        if bucket is None:
            self.bucket = self._create_bucket(encryption_key, export_expiry, access_log_retention)
        else:
            self.bucket = bucket

        self.cluster: rds.DatabaseCluster | None = None
        self.rotation_security_group: ec2.SecurityGroup | None = None
        if database is None:
            self.cluster, self.database_secret = self._create_cluster(
                encryption_key=encryption_key,
                database_name=database_name,
                deletion_protection=deletion_protection,
                engine_version=engine_version,
                min_capacity=min_capacity,
                max_capacity=max_capacity,
                backup_retention=backup_retention,
            )
            cluster: rds.IDatabaseCluster = self.cluster
            self.database_name = database_name
        else:
            cluster = database.cluster
            self.database_secret = database.secret
            self.database_name = database.database_name
        self.database_endpoint = cluster.cluster_endpoint
        # PostgreSQL from the functions only; the rule lands on the database's security group.
        # The port is named literally (a created cluster's own port attribute is a token, which
        # the compliance rules cannot read).
        self.database_port = ec2.Port.tcp(database.cluster.cluster_endpoint.port if database else POSTGRES_PORT)
        cluster.connections.allow_from(
            self.function_security_group, self.database_port, "PostgreSQL from the export functions"
        )

        if self._creates_network:
            self._add_endpoints()

        self._cluster: rds.IDatabaseCluster = cluster
        if database_auth == "iam" and database is not None:
            try:
                cluster.cluster_resource_identifier  # noqa: B018 - raises for an import without it
            except RuntimeError as error:
                raise ValueError(
                    "ExportRunner: database_auth='iam' on an existing cluster needs its resource id "
                    "(from_database_cluster_attributes(cluster_resource_identifier=...)), or database_auth='secret'"
                ) from error
        self.ca_bundle_layer: lambda_.LayerVersion | None = None
        database_environment = {
            "DATABASE_AUTH": database_auth,
            "DATABASE_HOST": self.database_endpoint.hostname,
            "DATABASE_PORT": str(database.cluster.cluster_endpoint.port if database else POSTGRES_PORT),
            "DATABASE_NAME": self.database_name,
            "DATABASE_SSLMODE": database_sslmode,
        }
        if database_auth == "iam":
            database_environment["DATABASE_USER"] = RUNNER_DB_USER
        else:
            database_environment["DATABASE_SECRET_ARN"] = self.database_secret.secret_arn
        if database_ca_bundle is not None:
            bundle = Path(database_ca_bundle).resolve()
            self.ca_bundle_layer = lambda_.LayerVersion(
                self,
                "DatabaseCaBundle",
                # Only the bundle file: Lambda unpacks it to /opt/<file name>.
                code=lambda_.Code.from_asset(str(bundle.parent), exclude=["*", f"!{bundle.name}"]),
                compatible_architectures=[lambda_.Architecture.ARM_64],
                description="CA bundle the export functions verify the audit database's TLS certificate with",
            )
            database_environment["DATABASE_CA_BUNDLE"] = f"/opt/{bundle.name}"
        self._build_queue_and_runner(
            encryption_key=encryption_key,
            alarm_topic=alarm_topic,
            runner_timeout=runner_timeout,
            runner_memory_size=runner_memory_size,
            runner_concurrency=runner_concurrency,
            presign_ttl=presign_ttl,
            database_environment=database_environment,
            code=code,
        )
        self._build_sweeper(
            encryption_key=encryption_key,
            alarm_topic=alarm_topic,
            sweep_interval=sweep_interval,
            stuck_after=runner_timeout.plus(stuck_margin),
            database_environment=database_environment,
            code=code,
        )
        migrator_environment = {
            key: value for key, value in database_environment.items() if key not in ("DATABASE_USER", "DATABASE_AUTH")
        }
        migrator_environment.update({"DATABASE_AUTH": "secret", "DATABASE_SECRET_ARN": self.database_secret.secret_arn})
        self._build_migrator(
            encryption_key=encryption_key,
            alarm_topic=alarm_topic,
            database_environment=migrator_environment,
            code=code,
        )

    # --- Network -------------------------------------------------------------------------------

    def _create_vpc(self, encryption_key: kms.IKey) -> ec2.Vpc:
        vpc = ec2.Vpc(
            self,
            "Vpc",
            max_azs=2,
            nat_gateways=0,
            subnet_configuration=[
                ec2.SubnetConfiguration(name="isolated", subnet_type=ec2.SubnetType.PRIVATE_ISOLATED, cidr_mask=24)
            ],
            # Closing the default group needs CDK's custom-resource Lambda; nothing here uses it.
            restrict_default_security_group=False,
        )
        flow_log_group = logs.LogGroup(
            self,
            "FlowLogGroup",
            retention=logs.RetentionDays.ONE_YEAR,
            encryption_key=encryption_key,
            removal_policy=RemovalPolicy.RETAIN,
        )
        flow_log = ec2.FlowLog(
            self,
            "FlowLog",
            resource_type=ec2.FlowLogResourceType.from_vpc(vpc),
            destination=ec2.FlowLogDestination.to_cloud_watch_logs(flow_log_group),
            traffic_type=ec2.FlowLogTrafficType.ALL,
        )
        for rule_id in ("NIST.800.53.R5-IAMNoInlinePolicy", "HIPAA.Security-IAMNoInlinePolicy"):
            acknowledge(
                flow_log.node.find_child("IAMRole"),
                rule_id,
                "The VPC flow log's delivery role holds one generated policy (write to its own log group, pass "
                "itself) that lives and dies with it; a managed policy would only add a reusable object.",
            )
        for rule_id in ("NIST.800.53.R5-VPCDefaultSecurityGroupClosed", "HIPAA.Security-VPCDefaultSecurityGroupClosed"):
            acknowledge(
                vpc,
                rule_id,
                "Every network interface in this VPC (functions, endpoints, database, rotation) has its own "
                "security group; closing the unused default group needs a custom-resource Lambda that would "
                "bring more findings than it removes. The VPC has no internet or NAT gateway.",
            )
        return vpc

    def _add_endpoints(self) -> None:
        isolated = ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_ISOLATED)
        self.s3_endpoint = self.vpc.add_gateway_endpoint(
            "S3Endpoint", service=ec2.GatewayVpcEndpointAwsService.S3, subnets=[isolated]
        )
        # The only bucket reachable from this VPC is the exports bucket: even a role with
        # broader rights cannot move data to another bucket from here.
        self.s3_endpoint.add_to_policy(
            iam.PolicyStatement(
                principals=[iam.AnyPrincipal()],
                actions=list(OBJECT_ACTIONS),
                resources=[self.bucket.arn_for_objects("*")],
                conditions={"StringEquals": {"aws:PrincipalAccount": Stack.of(self).account}},
            )
        )
        self.endpoint_security_group = ec2.SecurityGroup(
            self,
            "EndpointSecurityGroup",
            vpc=self.vpc,
            description="Interface endpoints of the export runner VPC: HTTPS from its functions",
            allow_all_outbound=False,
        )
        self.interface_endpoints = {
            name: self.vpc.add_interface_endpoint(
                f"{name}Endpoint",
                service=service,
                subnets=isolated,
                private_dns_enabled=True,
                open=False,
                security_groups=[self.endpoint_security_group],
            )
            for name, service in (
                # Secrets Manager: the functions read the database secret, the rotation function
                # rotates it.
                ("SecretsManager", ec2.InterfaceVpcEndpointAwsService.SECRETS_MANAGER),
                # SQS: the event source mapping polls from Lambda's own network, but the producer
                # (API layer or operator CLI) running in this VPC sends job messages through it.
                ("Sqs", ec2.InterfaceVpcEndpointAwsService.SQS),
            )
        }
        self.endpoint_security_group.add_ingress_rule(
            self.function_security_group, ec2.Port.tcp(443), "HTTPS from the export functions"
        )
        if self.rotation_security_group is not None:
            self.endpoint_security_group.add_ingress_rule(
                self.rotation_security_group, ec2.Port.tcp(443), "HTTPS from the secret rotation function"
            )

    # --- Bucket --------------------------------------------------------------------------------

    def _create_bucket(self, encryption_key: kms.IKey, expiry: Duration, log_retention: Duration) -> s3.Bucket:
        # SSE-KMS with the subsystem key: every read is a logged kms:Decrypt. A presigned GET is
        # signed by the runner's role, so that role holds kms:Decrypt on this key (it needs it
        # anyway to complete a multipart upload under SSE-KMS). Versioned (LoggedBucket's
        # default): a discarded export is deleted with its version (export_job._delete_quietly).
        self.logged_bucket = LoggedBucket(
            self,
            "Exports",
            encryption_key=encryption_key,
            purpose="the compliance exports bucket",
            replication_reason=(
                "export files are derived copies that expire after days and can be regenerated from the audit "
                "log in Postgres, the record of who exported what; a cross-region replica would duplicate audit "
                "data into a second region for no recovery benefit."
            ),
            lifecycle_rules=[
                s3.LifecycleRule(
                    id="expire-exports",
                    expiration=expiry,
                    # Versioning keeps an expired export as a noncurrent version: drop it a day later.
                    noncurrent_version_expiration=Duration.days(1),
                    # A runner that died mid-upload leaves parts that are billed but invisible.
                    abort_incomplete_multipart_upload_after=Duration.days(1),
                ),
                s3.LifecycleRule(id="remove-expired-delete-markers", expired_object_delete_marker=True),
            ],
            access_log_retention=log_retention,
            log_prefix="exports/",
        )
        self.access_log_bucket = self.logged_bucket.access_log_bucket
        return self.logged_bucket.bucket

    # --- Database ------------------------------------------------------------------------------

    def _create_cluster(
        self,
        *,
        encryption_key: kms.IKey,
        database_name: str,
        deletion_protection: bool,
        engine_version: rds.AuroraPostgresEngineVersion,
        min_capacity: float,
        max_capacity: float,
        backup_retention: Duration,
    ) -> tuple[rds.DatabaseCluster, secretsmanager.ISecret]:
        isolated = _subnets(self.vpc.isolated_subnets or self.vpc.private_subnets, "the database")
        database_security_group = ec2.SecurityGroup(
            self,
            "DatabaseSecurityGroup",
            vpc=self.vpc,
            description="Audit database of the export runner: PostgreSQL from its functions and secret rotation",
            allow_all_outbound=False,
        )
        # A fixed identifier lets the PostgreSQL log group exist (with retention and encryption)
        # before the cluster starts exporting to it; RDS would otherwise create it unencrypted
        # with no expiry.
        cluster_identifier = Names.unique_resource_name(self, max_length=50, separator="-").lower()
        if not cluster_identifier[0].isalpha():  # identifiers start with a letter
            cluster_identifier = f"db-{cluster_identifier}"
        postgres_log_group = logs.LogGroup(
            self,
            "DatabaseLogGroup",
            log_group_name=f"/aws/rds/cluster/{cluster_identifier}/postgresql",
            retention=logs.RetentionDays.ONE_YEAR,
            encryption_key=encryption_key,
            removal_policy=RemovalPolicy.RETAIN,
        )
        cluster = rds.DatabaseCluster(
            self,
            "Database",
            cluster_identifier=cluster_identifier,
            port=POSTGRES_PORT,
            engine=rds.DatabaseClusterEngine.aurora_postgres(version=engine_version),
            writer=rds.ClusterInstance.serverless_v2(
                "Writer", publicly_accessible=False, auto_minor_version_upgrade=True
            ),
            serverless_v2_min_capacity=min_capacity,
            serverless_v2_max_capacity=max_capacity,
            vpc=self.vpc,
            vpc_subnets=isolated,
            security_groups=[database_security_group],
            credentials=rds.Credentials.from_generated_secret("audit_admin", encryption_key=encryption_key),
            default_database_name=database_name,
            storage_encrypted=True,
            storage_encryption_key=encryption_key,
            iam_authentication=True,
            deletion_protection=deletion_protection,
            cloudwatch_logs_exports=["postgresql"],
            # Clients that do not negotiate TLS are refused.
            parameters={"rds.force_ssl": "1"},
            backup=rds.BackupProps(retention=backup_retention),
            copy_tags_to_snapshot=True,
            monitoring_interval=Duration.seconds(60),
            removal_policy=RemovalPolicy.SNAPSHOT,
        )
        cluster.node.add_dependency(postgres_log_group)

        self.rotation_security_group = ec2.SecurityGroup(
            self,
            "RotationSecurityGroup",
            vpc=self.vpc,
            description="Secret rotation of the audit database: PostgreSQL to it, HTTPS to Secrets Manager",
            allow_all_outbound=False,
        )
        self.rotation_security_group.add_egress_rule(ec2.Peer.any_ipv4(), ec2.Port.tcp(443), "HTTPS to Secrets Manager")
        cluster.connections.allow_from(
            self.rotation_security_group, ec2.Port.tcp(POSTGRES_PORT), "PostgreSQL from secret rotation"
        )
        secret = cluster.secret
        if secret is None:  # generated credentials always give the cluster a secret
            raise ValueError("ExportRunner: the created cluster has no secret")
        # Single-user rotation of the generated admin secret. The functions read the secret at
        # cold start; a container started before a rotation reconnects with the new password
        # only after it re-reads the secret.
        secret.add_rotation_schedule(
            "Rotation",
            automatically_after=Duration.days(30),
            # In the functions' subnets: they reach Secrets Manager (endpoint or the caller's NAT).
            hosted_rotation=secretsmanager.HostedRotation.postgre_sql_single_user(
                vpc=self.vpc, vpc_subnets=self.function_subnets, security_groups=[self.rotation_security_group]
            ),
        )
        for rule_id in ("NIST.800.53.R5-RDSInBackupPlan", "HIPAA.Security-RDSInBackupPlan"):
            acknowledge(
                cluster,
                rule_id,
                "Aurora keeps continuous, point-in-time restorable backups of this cluster for the configured "
                "retention; an AWS Backup plan is an organisation-level choice left to the deploying account.",
            )
        acknowledge(
            cluster,
            "AwsSolutions-RDS11",
            "The audit database listens on PostgreSQL's port, is not publicly accessible and admits only the "
            "export functions' and secret rotation's security groups, so a different port would hide nothing.",
        )
        acknowledge(
            cluster,
            "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AmazonRDSEnhancedMonitoringRole]",
            "The enhanced-monitoring role is assumed by RDS only and holds the AWS-maintained policy RDS requires "
            "to write OS metrics to its RDSOSMetrics log group.",
        )
        if not deletion_protection:
            for rule_id in (
                "AwsSolutions-RDS10",
                "NIST.800.53.R5-RDSInstanceDeletionProtectionEnabled",
                "HIPAA.Security-RDSInstanceDeletionProtectionEnabled",
            ):
                acknowledge(
                    cluster,
                    rule_id,
                    "Deletion protection of the audit database was turned off in the deploying configuration "
                    "(context export_runner.deletion_protection = false), for a disposable environment.",
                )
        return cluster, secret

    # --- Runner --------------------------------------------------------------------------------

    def _build_queue_and_runner(
        self,
        *,
        encryption_key: kms.IKey,
        alarm_topic: sns.ITopic | None,
        runner_timeout: Duration,
        runner_memory_size: int,
        runner_concurrency: int,
        presign_ttl: Duration,
        database_environment: dict[str, str],
        code: lambda_.Code | None,
    ) -> None:
        self.dlq = DeadLetterQueue(
            self, "Dlq", encryption_key=encryption_key, alarm_topic=alarm_topic, purpose="the compliance export runner"
        )
        # The spec asks for a 900 s visibility timeout, equal to the runner's timeout. We use 6 x
        # the timeout (5400 s): a message that is delivered while Lambda retries a throttled or
        # slow invocation must not become visible (and start a second export) before the first
        # attempt has certainly ended. Retry window: a failed message comes back after the
        # visibility timeout, so 3 receives span up to 4.5 h before the DLQ, inside the 1 day
        # retention. A redelivered job that was already claimed is a no-op (CAS on status).
        self.queue = sqs.Queue(
            self,
            "Queue",
            encryption=sqs.QueueEncryption.KMS,
            encryption_master_key=encryption_key,
            enforce_ssl=True,
            retention_period=QUEUE_RETENTION,
            visibility_timeout=Duration.seconds(runner_timeout.to_seconds() * VISIBILITY_TO_TIMEOUT_RATIO),
            dead_letter_queue=sqs.DeadLetterQueue(max_receive_count=3, queue=self.dlq.queue),
        )
        self.runner = HandlerFunction(
            self,
            "Runner",
            handler=RUNNER_HANDLER,
            description="Streams the audit rows of one export job from Postgres to S3",
            service_name="export_runner",
            encryption_key=encryption_key,
            timeout=runner_timeout,
            memory_size=runner_memory_size,
            reserved_concurrency=runner_concurrency,
            environment={
                "COMPLIANCE_EXPORTS_BUCKET": self.bucket.bucket_name,
                "PRESIGN_TTL_SECONDS": str(int(presign_ttl.to_seconds())),
                **database_environment,
            },
            vpc=self.vpc,
            vpc_subnets=self.function_subnets,
            security_groups=[self.function_security_group],
            dead_letter_queue=self.dlq.queue,
            code=code,
        )
        self.runner_function = self.runner.function
        if self.ca_bundle_layer is not None:
            self.runner_function.add_layers(self.ca_bundle_layer)
        self.runner_function.add_event_source(
            event_sources.SqsEventSource(
                self.queue,
                batch_size=1,
                report_batch_item_failures=True,
                # Polling stops at the reserved concurrency instead of being throttled by it: a
                # throttled delivery still counts as a receive and could push a valid job to the DLQ.
                max_concurrency=runner_concurrency,
            )
        )
        (self.event_source_mapping,) = (
            child for child in self.runner_function.node.children if isinstance(child, lambda_.EventSourceMapping)
        )
        acknowledge(
            self.event_source_mapping,
            "Serverless-LambdaEventSourceMappingDestination",
            "Lambda supports on-failure destinations only for stream and Kafka sources; for this SQS source the "
            "queue's redrive policy moves a message to the alarmed DLQ after 3 receives.",
        )
        role = self.runner.role
        self._grant_vpc_access(self.runner)
        self._grant_bucket(role)
        self._grant_database_login(role, RUNNER_DB_USER)
        self.runner_alarms = FunctionAlarms(
            self,
            "RunnerAlarms",
            function=self.runner_function,
            purpose="compliance export runner",
            alarm_topic=alarm_topic,
        )
        # A job message older than one visibility window has been retried or is waiting behind
        # a backlog: exports are stuck or too slow.
        self.queue_age_alarm = route_alarm(
            cloudwatch.Alarm(
                self,
                "QueueAgeAlarm",
                alarm_description=(
                    "Compliance export requests have waited longer than the queue's visibility timeout: the runner "
                    "is failing, throttled or behind."
                ),
                metric=self.queue.metric_approximate_age_of_oldest_message(
                    period=Duration.minutes(5), statistic="Maximum"
                ),
                threshold=runner_timeout.to_seconds() * VISIBILITY_TO_TIMEOUT_RATIO,
                evaluation_periods=1,
                comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
                treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
            ),
            alarm_topic,
        )
        self._acknowledge_function_wildcards(self.runner)

    def _grant_vpc_access(self, function: HandlerFunction) -> None:
        """Lambda creates and deletes the function's network interfaces with its execution role.

        It may create them only in the functions' subnets with their security group; the
        interfaces get their ids at run time, so deleting them and assigning their IPs name every
        network interface of this account and region (Lambda's guide scopes DeleteNetworkInterface
        the same way, by account and region).
        """
        stack = Stack.of(self)
        network_interfaces = stack.format_arn(service="ec2", resource="network-interface", resource_name="*")
        subnets = [
            stack.format_arn(service="ec2", resource="subnet", resource_name=subnet_id)
            for subnet_id in _subnet_ids(self.vpc, self.function_subnets)
        ]
        security_group = stack.format_arn(
            service="ec2", resource="security-group", resource_name=self.function_security_group.security_group_id
        )
        role = function.role
        role.add_to_principal_policy(iam.PolicyStatement(actions=list(VPC_DESCRIBE_ACTIONS), resources=["*"]))
        role.add_to_principal_policy(
            iam.PolicyStatement(
                actions=["ec2:CreateNetworkInterface"], resources=[network_interfaces, *subnets, security_group]
            )
        )
        role.add_to_principal_policy(
            iam.PolicyStatement(actions=list(NETWORK_INTERFACE_ACTIONS), resources=[network_interfaces])
        )

    def _grant_database_login(self, grantee: iam.IGrantable, db_user: str) -> None:
        """IAM: rds-db:connect as exactly ``db_user`` on this cluster; secret: read of the login secret."""
        if self.database_auth == "iam":
            self._cluster.grant_connect(grantee, db_user)
        else:
            self._grant_secret_read(grantee)

    def _grant_secret_read(self, grantee: iam.IGrantable) -> None:
        self.database_secret.grant_read(grantee)
        key = self.database_secret.encryption_key
        if key is not None and not isinstance(key, kms.Key):
            # CDK writes the decrypt right into the policy of a key defined in this app; the
            # policy of an imported key cannot be changed from here, so the role gets it, usable
            # through Secrets Manager only.
            grantee.grant_principal.add_to_principal_policy(
                iam.PolicyStatement(
                    actions=["kms:Decrypt"],
                    resources=[key.key_arn],
                    conditions={
                        "StringEquals": {"kms:ViaService": f"secretsmanager.{Stack.of(self).region}.amazonaws.com"}
                    },
                )
            )

    def _grant_bucket(self, role: iam.IRole) -> None:
        objects = self.bucket.arn_for_objects("*")
        role.add_to_principal_policy(iam.PolicyStatement(actions=list(OBJECT_ACTIONS), resources=[objects]))
        role.add_to_principal_policy(
            iam.PolicyStatement(effect=iam.Effect.DENY, actions=list(DENIED_ELSEWHERE), not_resources=[objects])
        )
        if self.bucket.encryption_key is not None:
            # Encrypt the parts, decrypt them to complete the upload, and decrypt on the presigned GET.
            self.bucket.encryption_key.grant(role, "kms:GenerateDataKey", "kms:Decrypt")
        acknowledge(
            role.node.find_child("DefaultPolicy"),
            f"AwsSolutions-IAM5[Resource::{_flattened(Stack.of(self).resolve(objects))}]",
            "Export objects are named by tenant and job id at run time, so the object actions name every object "
            "of this one exports bucket; every other bucket is explicitly denied.",
        )

    # --- Sweeper -------------------------------------------------------------------------------

    def _build_sweeper(
        self,
        *,
        encryption_key: kms.IKey,
        alarm_topic: sns.ITopic | None,
        sweep_interval: Duration,
        stuck_after: Duration,
        database_environment: dict[str, str],
        code: lambda_.Code | None,
    ) -> None:
        self.sweeper_dlq = DeadLetterQueue(
            self,
            "SweeperDlq",
            encryption_key=encryption_key,
            alarm_topic=alarm_topic,
            purpose="the compliance export sweeper",
        )
        self.stuck_after = stuck_after
        self.sweeper = HandlerFunction(
            self,
            "Sweeper",
            handler=SWEEPER_HANDLER,
            description="Fails compliance export jobs stuck in running, or queued with no message left",
            service_name="export_sweeper",
            encryption_key=encryption_key,
            timeout=Duration.seconds(60),
            memory_size=256,
            # One sweep at a time: a second one would find nothing left to do.
            reserved_concurrency=1,
            environment={
                "EXPORT_STUCK_AFTER_SECONDS": str(int(stuck_after.to_seconds())),
                "EXPORT_QUEUED_EXPIRY_SECONDS": str(int(QUEUED_EXPIRY.to_seconds())),
                **database_environment,
            },
            vpc=self.vpc,
            vpc_subnets=self.function_subnets,
            security_groups=[self.function_security_group],
            dead_letter_queue=self.sweeper_dlq.queue,
            code=code,
        )
        self.sweeper_function = self.sweeper.function
        if self.ca_bundle_layer is not None:
            self.sweeper_function.add_layers(self.ca_bundle_layer)
        # Retry window: Lambda's default for asynchronous invocations (2 retries, 1 and 2 minutes
        # apart, then the DLQ with its alarm). A sweep is one idempotent UPDATE, so a retry that
        # runs next to the following scheduled sweep changes nothing twice; reserved concurrency 1
        # makes them queue rather than overlap.
        self._grant_vpc_access(self.sweeper)
        self._grant_database_login(self.sweeper.role, RUNNER_DB_USER)

        stack = Stack.of(self)
        # A fixed rule name lets the key policy name the rule without a dependency cycle
        # (key -> rule -> function -> log group -> key).
        rule_name = Names.unique_resource_name(self, max_length=58, separator="-") + "-sweep"
        self.sweep_schedule = events.Rule(
            self,
            "SweepSchedule",
            rule_name=rule_name,
            description="Fails compliance export jobs that can no longer finish",
            schedule=events.Schedule.rate(sweep_interval),
            targets=[
                targets.LambdaFunction(
                    self.sweeper_function,
                    dead_letter_queue=self.sweeper_dlq.queue,
                    retry_attempts=2,
                    max_event_age=sweep_interval,
                )
            ],
        )
        # EventBridge writes undeliverable sweep events to the KMS-encrypted DLQ only if the key
        # lets it, for this rule alone.
        encryption_key.add_to_resource_policy(
            iam.PolicyStatement(
                principals=[iam.ServicePrincipal("events.amazonaws.com")],
                actions=["kms:Decrypt", "kms:GenerateDataKey"],
                resources=["*"],
                conditions={
                    "ArnEquals": {
                        "aws:SourceArn": stack.format_arn(
                            service="events",
                            resource="rule",
                            resource_name=rule_name,
                            arn_format=ArnFormat.SLASH_RESOURCE_NAME,
                        )
                    }
                },
            )
        )
        self.sweeper_alarms = FunctionAlarms(
            self,
            "SweeperAlarms",
            function=self.sweeper_function,
            purpose="compliance export sweeper",
            alarm_topic=alarm_topic,
        )
        self._acknowledge_function_wildcards(self.sweeper)

    # --- Migrations on deploy ------------------------------------------------------------------

    def _build_migrator(
        self,
        *,
        encryption_key: kms.IKey,
        alarm_topic: sns.ITopic | None,
        database_environment: dict[str, str],
        code: lambda_.Code | None,
    ) -> None:
        """The product's migrations, applied on deploy by a function in the VPC.

        CDK's trigger invokes the migrator synchronously once the database, its network path and
        the migrator's grants exist, and again whenever the function changes: its configuration
        carries the digest of the migrations directory (``MIGRATIONS_SHA256``), so a new or changed
        migration is a new function version and re-runs it. A failing migration is a function
        error, which fails the deployment with the migration's message. It is the only function
        that reads the admin secret (the schema owner's login).
        """
        self.migrations_digest = migrations_digest()
        # The trigger invokes synchronously; only an operator's asynchronous invoke lands here.
        self.migrator_dlq = DeadLetterQueue(
            self,
            "MigratorDlq",
            encryption_key=encryption_key,
            alarm_topic=alarm_topic,
            purpose="the audit database migrator",
        )
        self.migrator = HandlerFunction(
            self,
            "Migrator",
            handler=MIGRATOR_HANDLER,
            description="Applies the audit database migrations on deploy (CDK trigger)",
            service_name="export_migrator",
            encryption_key=encryption_key,
            timeout=MIGRATOR_TIMEOUT,
            memory_size=256,
            # One migrator at a time (the advisory lock would serialise a second one anyway).
            reserved_concurrency=1,
            environment={"MIGRATIONS_SHA256": self.migrations_digest, **database_environment},
            vpc=self.vpc,
            vpc_subnets=self.function_subnets,
            security_groups=[self.function_security_group],
            dead_letter_queue=self.migrator_dlq.queue,
            code=code,
        )
        self.migrator_function = self.migrator.function
        if self.ca_bundle_layer is not None:
            self.migrator_function.add_layers(self.ca_bundle_layer)
        self._grant_vpc_access(self.migrator)
        self._grant_secret_read(self.migrator.role)
        self.migrator_alarms = FunctionAlarms(
            self,
            "MigratorAlarms",
            function=self.migrator_function,
            purpose="audit database migrator",
            alarm_topic=alarm_topic,
        )
        self._acknowledge_function_wildcards(self.migrator)
        # After the database, the rules that let the migrator reach it (they live on the database's
        # and the endpoints' security groups), and the Secrets Manager endpoint it reads the secret through.
        run_after: list[Construct] = [self.migrator, self.function_security_group]
        if self.cluster is not None:
            run_after.append(self.cluster)
        if self._creates_network:
            run_after.append(self.endpoint_security_group)
            run_after.extend(self.interface_endpoints.values())
        self.migration_trigger = triggers.Trigger(
            self,
            "MigrateOnDeploy",
            handler=self.migrator_function,
            invocation_type=triggers.InvocationType.REQUEST_RESPONSE,
            timeout=MIGRATOR_TIMEOUT,
            execute_on_handler_change=True,
            execute_after=run_after,
        )
        # (an imported group holds the ingress rule this stack adds to it)
        self.migration_trigger.node.add_dependency(*self._cluster.connections.security_groups)
        provider = Stack.of(self).node.find_child(TRIGGER_PROVIDER).node.find_child("Handler")
        for check_id, reason in (
            (
                "CKV_AWS_116",
                "CDK's trigger provider is invoked by CloudFormation, which reports its failure as a failed "
                "deployment; a dead-letter queue would keep an event nobody replays.",
            ),
            (
                "CKV_AWS_117",
                "CDK's trigger provider only calls the Lambda API to invoke the migrator and answers "
                "CloudFormation; it never reaches the database, which only the migrator in the VPC does.",
            ),
            (
                "CKV_AWS_115",
                "CDK's trigger provider runs once per deployment that changes the migrator, invoked by "
                "CloudFormation only, so its concurrency is bounded by the deployments themselves.",
            ),
        ):
            acknowledge(provider, check_id, reason)
        # The runner and the sweeper start only once the schema they use exists.
        for function in (self.runner, self.sweeper):
            function.node.add_dependency(self.migration_trigger)

    def _acknowledge_function_wildcards(self, function: HandlerFunction) -> None:
        stack = Stack.of(self)
        policy = function.role.node.find_child("DefaultPolicy")
        acknowledge(
            policy,
            "AwsSolutions-IAM5[Resource::*]",
            "X-Ray PutTraceSegments/PutTelemetryRecords and the DescribeNetworkInterfaces/DescribeSubnets calls "
            "Lambda makes to place the function in its VPC have no resource-level scoping; every other action "
            "names its resource.",
        )
        network_interfaces = stack.format_arn(service="ec2", resource="network-interface", resource_name="*")
        acknowledge(
            policy,
            f"AwsSolutions-IAM5[Resource::{_flattened(stack.resolve(network_interfaces))}]",
            "Lambda creates the function's network interfaces at deploy and scale time, so their ids are unknown "
            "here; creation is limited to the functions' subnets and security group, and deletion and IP "
            "assignment to network interfaces of this account and region.",
        )

    # --- Grants for callers --------------------------------------------------------------------

    def grant_enqueue(self, grantee: iam.IGrantable) -> iam.Grant:
        """Let the producer (API layer, operator CLI) send export requests."""
        return self.queue.grant_send_messages(grantee)

    def grant_produce(self, grantee: iam.IGrantable) -> None:
        """Let the producer (API layer, operator CLI) create jobs: send to the queue and log in to
        the database as ``export_producer`` (IAM) or read the login secret (secret)."""
        self.grant_enqueue(grantee)
        self._grant_database_login(grantee, PRODUCER_DB_USER)

    def grant_download(self, grantee: iam.IGrantable) -> None:
        """Let a caller re-issue a presigned download URL: read the export objects, decrypt them."""
        iam.Grant.add_to_principal(
            grantee=grantee, actions=["s3:GetObject"], resource_arns=[self.bucket.arn_for_objects("*")]
        )
        if self.bucket.encryption_key is not None:
            self.bucket.encryption_key.grant_decrypt(grantee)


def _subnets(subnets: list[ec2.ISubnet], purpose: str) -> ec2.SubnetSelection:
    if not subnets:
        raise ValueError(f"ExportRunner: the VPC has no private or isolated subnet for {purpose}")
    return ec2.SubnetSelection(subnets=subnets)


def _subnet_ids(vpc: ec2.IVpc, selection: ec2.SubnetSelection) -> list[str]:
    if selection.subnets is not None:
        # Read as given: jsii cannot return a selection of subnets imported without their AZ.
        return [subnet.subnet_id for subnet in selection.subnets]
    return vpc.select_subnets(
        availability_zones=selection.availability_zones,
        one_per_az=selection.one_per_az,
        subnet_filters=selection.subnet_filters,
        subnet_group_name=selection.subnet_group_name,
        subnet_type=selection.subnet_type,
    ).subnet_ids


def _flattened(value: Any) -> str:
    """A resolved CloudFormation value as cdk-nag names it in a finding (its flattenCfnReference)."""
    if isinstance(value, str):
        return value.replace("${", "<").replace("}", ">")
    if isinstance(value, dict) and len(value) == 1:
        ((function, argument),) = value.items()
        if function == "Fn::Join":
            delimiter, items = argument
            return delimiter.join(_flattened(item) for item in items)
        if function in ("Fn::Sub", "Fn::ImportValue"):
            return _flattened(argument)
        if function == "Fn::GetAtt":
            return f"<{_flattened(argument[0])}.{_flattened(argument[1])}>"
        if function == "Ref":
            return f"<{_flattened(argument)}>"
    return json.dumps(value, separators=(",", ":"))
