"""The S3 client of the export runner: the shared retry config, plus two S3 specifics.

- Signature Version 4: botocore still presigns S3 URLs with Signature Version 2 in us-east-1
  unless told otherwise, and SigV2 URLs are refused for SSE-KMS objects and in regions opened
  since 2014.
- A 60 s read timeout instead of 10 s: CompleteMultipartUpload of a large export can take
  S3 many seconds, during which it only trickles keep-alive whitespace.
The endpoint, as for every client, comes from AWS_ENDPOINT_URL (boto3 reads it itself).
"""

from __future__ import annotations

import functools
from typing import Any

import boto3
from botocore.config import Config

from handlers.common.aws import DEFAULT_RETRY_CONFIG

S3_CONFIG = DEFAULT_RETRY_CONFIG.merge(Config(signature_version="s3v4", read_timeout=60))


@functools.cache
def s3_client() -> Any:
    """The container-wide S3 client (created on first use)."""
    return boto3.session.Session().client("s3", config=S3_CONFIG)
