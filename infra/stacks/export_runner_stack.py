"""The ExportRunner with its database: an existing cluster named in cdk.json, or one it creates."""

from __future__ import annotations

from typing import Any

from aws_cdk import CfnOutput, Fn
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_kms as kms
from aws_cdk import aws_rds as rds
from aws_cdk import aws_secretsmanager as secretsmanager
from constructs import Construct

from infra.config import ExistingDatabaseConfig, ExportRunnerConfig
from infra.constructs.export_runner import ExportDatabase, ExportRunner
from infra.stacks.subsystem_stack import SubsystemStack


class ExportRunnerStack(SubsystemStack):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: ExportRunnerConfig,
        alarm_topic_arn: str | None,
        **kwargs: Any,
    ) -> None:
        super().__init__(scope, construct_id, subsystem="ExportRunner", alarm_topic_arn=alarm_topic_arn, **kwargs)
        database = self._existing_database(config.existing_database, config.database_name)
        # IAM logins as the least-privilege roles on a created cluster, and on an existing one
        # whose resource id is configured (the rds-db:connect ARN names it); otherwise the secret.
        existing = config.existing_database
        iam_auth = existing is None or existing.cluster_resource_id is not None
        # verify-full whenever the operator gives the CA bundle; cdk.json says "require" explicitly
        # until then (encrypted, the server unverified).
        sslmode = config.database_sslmode or ("verify-full" if config.database_ca_bundle else "require")
        self.export_runner = ExportRunner(
            self,
            "ExportRunner",
            encryption_key=self.encryption_key,
            database=database,
            alarm_topic=self.alarm_topic,
            database_name=config.database_name,
            deletion_protection=config.deletion_protection,
            database_auth="iam" if iam_auth else "secret",
            database_sslmode=sslmode,
            database_ca_bundle=config.database_ca_bundle,
        )
        # What operators and the API layer need to find: where to send jobs, where files land.
        CfnOutput(self, "ExportQueueUrl", value=self.export_runner.queue.queue_url)
        CfnOutput(self, "ExportsBucketName", value=self.export_runner.bucket.bucket_name)
        CfnOutput(self, "DatabaseSecretArn", value=self.export_runner.database_secret.secret_arn)
        CfnOutput(self, "DatabaseHost", value=self.export_runner.database_endpoint.hostname)

    def _existing_database(self, existing: ExistingDatabaseConfig | None, database_name: str) -> ExportDatabase | None:
        if existing is None:
            return None
        security_group = ec2.SecurityGroup.from_security_group_id(
            self, "DatabaseSecurityGroup", existing.security_group_id
        )
        cluster = rds.DatabaseCluster.from_database_cluster_attributes(
            self,
            "Database",
            cluster_identifier=existing.cluster_identifier,
            cluster_endpoint_address=existing.endpoint,
            port=existing.port,
            security_groups=[security_group],
            cluster_resource_identifier=existing.cluster_resource_id,
        )
        secret_key = (
            kms.Key.from_key_arn(self, "DatabaseSecretKey", existing.secret_kms_key_arn)
            if existing.secret_kms_key_arn
            else None
        )
        # The complete ARN (with the suffix Secrets Manager appends): a partial one cannot be told
        # apart from a name that happens to end in "-" and six letters.
        secret = secretsmanager.Secret.from_secret_attributes(
            self, "DatabaseSecret", secret_complete_arn=existing.secret_arn, encryption_key=secret_key
        )
        # Only the VPC's id is needed: the functions are placed in the configured subnets.
        vpc = ec2.Vpc.from_vpc_attributes(self, "Vpc", vpc_id=existing.vpc_id, availability_zones=Fn.get_azs())
        subnets = [
            ec2.Subnet.from_subnet_id(self, f"Subnet{index}", subnet_id)
            for index, subnet_id in enumerate(existing.subnet_ids)
        ]
        return ExportDatabase(
            cluster=cluster,
            secret=secret,
            vpc=vpc,
            database_name=database_name,
            vpc_subnets=ec2.SubnetSelection(subnets=subnets),
        )
