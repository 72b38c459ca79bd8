"""Powertools Logger, Metrics and Tracer with the product's defaults.

Service name and namespace come from the standard Powertools variables
(POWERTOOLS_SERVICE_NAME, POWERTOOLS_METRICS_NAMESPACE) that the construct sets; the
defaults here only apply to local runs.
"""

from __future__ import annotations

import os

from aws_lambda_powertools import Logger, Metrics, Tracer

METRICS_NAMESPACE = "EventDrivenSubsystems"


def observability(service: str) -> tuple[Logger, Metrics, Tracer]:
    logger = Logger(service=os.environ.get("POWERTOOLS_SERVICE_NAME", service))
    metrics = Metrics(namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", METRICS_NAMESPACE), service=service)
    tracer = Tracer(service=service)
    return logger, metrics, tracer
