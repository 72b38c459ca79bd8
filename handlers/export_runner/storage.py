"""The S3 client of the export runner: the shared retry config, plus Signature Version 4.

botocore still presigns S3 URLs with Signature Version 2 in us-east-1 unless told otherwise;
SigV2 URLs are refused for SSE-KMS objects and in regions opened since 2014. The endpoint,
as for every client, comes from AWS_ENDPOINT_URL (boto3 reads it itself).
"""

from __future__ import annotations

import functools
from typing import Any

import boto3
from botocore.config import Config

from handlers.common.aws import DEFAULT_RETRY_CONFIG

S3_CONFIG = DEFAULT_RETRY_CONFIG.merge(Config(signature_version="s3v4"))


@functools.cache
def s3_client() -> Any:
    """The container-wide S3 client (created on first use)."""
    return boto3.session.Session().client("s3", config=S3_CONFIG)
