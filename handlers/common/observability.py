"""Powertools Logger, Metrics and Tracer with the product's defaults.

Service name and namespace come from the standard Powertools variables
(POWERTOOLS_SERVICE_NAME, POWERTOOLS_METRICS_NAMESPACE) that the construct sets; the
defaults here only apply to local runs.

Powertools keeps the metric set of every ``Metrics`` instance in one class-level dict, which is
not thread-safe; stream handlers add metrics from several worker threads (and from more than
one module: the router, the Slack dispatcher). ``METRICS_LOCK`` is the one lock that guards
that dict: add metrics through ``add_count`` (or hold the lock), never behind a lock of one's own.
"""

from __future__ import annotations

import os
import threading

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit

METRICS_NAMESPACE = "EventDrivenSubsystems"
METRICS_LOCK = threading.Lock()


def observability(service: str) -> tuple[Logger, Metrics, Tracer]:
    logger = Logger(service=os.environ.get("POWERTOOLS_SERVICE_NAME", service))
    metrics = Metrics(namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", METRICS_NAMESPACE), service=service)
    tracer = Tracer(service=service)
    return logger, metrics, tracer


def add_count(metrics: Metrics, name: str, value: float = 1) -> None:
    """Add ``value`` to the Count metric ``name``, safe from any worker thread."""
    with METRICS_LOCK:
        metrics.add_metric(name=name, unit=MetricUnit.Count, value=value)
