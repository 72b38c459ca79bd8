"""Helpers for synth-level tests: apps that skip bundling."""

from __future__ import annotations

from typing import Any

import aws_cdk as cdk

NO_BUNDLING: dict[str, list[str]] = {"aws:cdk:bundling-stacks": []}


def app_without_bundling(**context: Any) -> cdk.App:
    return cdk.App(context={**NO_BUNDLING, **context})
