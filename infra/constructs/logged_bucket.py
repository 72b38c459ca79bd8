"""A KMS-encrypted, TLS-only, versioned bucket with its own server-access-log bucket."""

from __future__ import annotations

from collections.abc import Sequence

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from constructs import Construct

from infra.acknowledge import acknowledge


class LoggedBucket(Construct):
    """``bucket`` (SSE-KMS with ``encryption_key``) and ``access_log_bucket`` (SSE-S3).

    ``purpose`` and ``replication_reason`` go into the acknowledgements, which must say why this
    bucket's data needs no cross-region replica.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        encryption_key: kms.IKey,
        purpose: str,
        replication_reason: str,
        lifecycle_rules: Sequence[s3.LifecycleRule] = (),
        access_log_retention: Duration = Duration.days(365),
        log_prefix: str,
        bucket_name: str | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        # Server access logs are delivered under a bucket policy (AWS's recommendation) instead
        # of the log-delivery ACL, which would need ACLs on the log bucket; this context applies
        # to this construct's children only.
        self.node.set_context("@aws-cdk/aws-s3:serverAccessLogsUseBucketPolicy", True)
        self.access_log_bucket = s3.Bucket(
            self,
            "AccessLogBucket",
            # S3 server access logging delivers only to buckets encrypted with S3-managed keys.
            encryption=s3.BucketEncryption.S3_MANAGED,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            enforce_ssl=True,
            minimum_tls_version=1.2,
            versioned=True,
            lifecycle_rules=[
                s3.LifecycleRule(
                    id="expire-access-logs",
                    expiration=access_log_retention,
                    noncurrent_version_expiration=Duration.days(1),
                    abort_incomplete_multipart_upload_after=Duration.days(1),
                )
            ],
            removal_policy=RemovalPolicy.RETAIN,
        )
        for rule_id in ("NIST.800.53.R5-S3DefaultEncryptionKMS", "HIPAA.Security-S3DefaultEncryptionKMS"):
            acknowledge(
                self.access_log_bucket,
                rule_id,
                "S3 server access logging can only deliver to a bucket encrypted with S3-managed keys (SSE-S3); "
                "a KMS default encryption on this log bucket would stop log delivery.",
            )
        acknowledge(
            self.access_log_bucket,
            "CKV_AWS_18",
            f"This is the access-log bucket of {purpose}: logging its own requests into itself would log every "
            "log delivery without end, and a further log bucket would only move the same finding there.",
        )
        for rule_id in ("NIST.800.53.R5-S3BucketReplicationEnabled", "HIPAA.Security-S3BucketReplicationEnabled"):
            acknowledge(
                self.access_log_bucket,
                rule_id,
                f"Access logs of {purpose}; {replication_reason}",
            )
        self.bucket = s3.Bucket(
            self,
            "Bucket",
            bucket_name=bucket_name,
            encryption=s3.BucketEncryption.KMS,
            encryption_key=encryption_key,
            bucket_key_enabled=True,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            enforce_ssl=True,
            minimum_tls_version=1.2,
            versioned=True,
            server_access_logs_bucket=self.access_log_bucket,
            server_access_logs_prefix=log_prefix,
            lifecycle_rules=list(lifecycle_rules),
            removal_policy=RemovalPolicy.RETAIN,
        )
        for rule_id in ("NIST.800.53.R5-S3BucketReplicationEnabled", "HIPAA.Security-S3BucketReplicationEnabled"):
            acknowledge(self.bucket, rule_id, f"{purpose}: {replication_reason}")
