"""init: a validated job becomes a run -- keys, packaged orders, rows, and the first callback.

Order of the writes, and what a crash between them leaves (init is not retried by anyone but the
caller, who gets an error and submits again as a new run):
1. the run's age identity, an SSM Advanced SecureString with an Expiration policy (so a run that
   never finalizes still loses its key: presign expiry + job timeout + a day);
2. every order's exec.zip (code + sealed bundle) under ``tmp/exec/<run>/<num>/``;
3. the order items (queued), then the job item (a job item means its orders all exist);
4. the job_started event and the init result ``tmp/callbacks/runs/<run>/0000/result.json``,
   which starts the first orchestration pass.
A crash before 4 leaves objects and rows that the 1-day lifecycle and TTLs remove, and nothing
runs (no pass was triggered). Credentials are resolved once per job; plaintext exists only in
this process's memory and inside the sealed bundle's encrypted values.
"""

from __future__ import annotations

import datetime
import secrets
import tempfile
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from handlers.execution_engine import schema
from handlers.execution_engine.code_source import CodeCache
from handlers.execution_engine.credentials import CredentialResolver
from handlers.execution_engine.exec_package import build_exec_zip
from handlers.execution_engine.jobs import GitSource, Job, Order
from handlers.execution_engine.results import OrderResult, write_result_once
from handlers.execution_engine.run_store import RunRecord, RunStore, job_item, order_item
from handlers.execution_engine.sealed_bundle import new_identity, seal_order_bundle

# sops runs once per order (a subprocess each): a few at a time keep a large job's init short.
PACKAGING_CONCURRENCY = 8
KEY_EXPIRATION_MARGIN_SECONDS = 24 * 3600


@dataclass(frozen=True)
class InitSettings:
    internal_bucket: str
    done_bucket: str
    sops_key_parameter_prefix: str
    sops_key_kms_key_id: str


@dataclass(frozen=True)
class InitResult:
    run_id: str
    trace_id: str
    flow_id: str
    done_endpt: str

    def response(self) -> dict[str, str]:
        return {"status": "ok", **vars(self)}


@dataclass
class RunInitializer:
    settings: InitSettings
    store: RunStore
    # A fresh resolver per job: credentials are resolved (and cached) once per job, never across jobs.
    credential_source: Callable[[], CredentialResolver]
    s3: Any
    ssm: Any
    clock_ms: Callable[[], int]
    work_dir: Path | None = None

    def initialize(self, job: Job) -> InitResult:
        run_id = uuid.uuid4().hex
        trace_id = secrets.token_hex(8)
        flow_id = job.flow_id(trace_id)
        now_ms = self.clock_ms()
        credentials = self.credential_source()
        git_token = credentials.resolve(job.git_token_location) if job.git_token_location else None
        ssh_key = credentials.resolve(job.git_ssh_key_location) if job.git_ssh_key_location else None
        order_env = {
            order.num: {
                **credentials.order_env(order.ssm_paths, order.secret_manager_paths),
                **dict(order.env_vars),
            }
            for order in job.orders
        }
        identity = new_identity()
        key_parameter = f"{self.settings.sops_key_parameter_prefix}{run_id}"
        expires = datetime.datetime.fromtimestamp(
            now_ms / 1000 + job.presign_expiry + job.job_timeout + KEY_EXPIRATION_MARGIN_SECONDS, tz=datetime.UTC
        )
        self.ssm.put_parameter(
            Name=key_parameter,
            Value=identity.secret,
            Type="SecureString",
            KeyId=self.settings.sops_key_kms_key_id,
            Tier="Advanced",
            Policies=(
                '[{"Type":"Expiration","Version":"1.0","Attributes":{"Timestamp":"'
                + expires.strftime("%Y-%m-%dT%H:%M:%S.000Z")
                + '"}}]'
            ),
        )
        try:
            self._package_orders(job, run_id, identity.recipient, order_env, git_token, ssh_key)
        except BaseException:
            # The run never started: its key goes now rather than at its expiration.
            self.ssm.delete_parameter(Name=key_parameter)
            raise

        expires_at = now_ms // 1000 + schema.ORDERS_TTL_SECONDS
        job_row = job_item(
            run_id,
            order_count=len(job.orders),
            trace_id=trace_id,
            flow_id=flow_id,
            username=job.username,
            job_timeout=job.job_timeout,
            sops_key_parameter=key_parameter,
            done_bucket=self.settings.done_bucket,
            created_at_ms=now_ms,
            expires_at=expires_at,
        )
        for optional in ("pr_number", "issue_number"):
            if getattr(job, optional) is not None:
                job_row[optional] = getattr(job, optional)
        order_rows = [
            order_item(
                run_id,
                order.num,
                name=order.name,
                execution_target=order.execution_target,
                timeout=order.timeout,
                must_succeed=order.must_succeed,
                dependency_nums=order.dependency_nums,
                expires_at=expires_at,
            )
            for order in job.orders
        ]
        self.store.insert_run(job_row, order_rows)
        run = RunRecord(run_id=run_id, job=job_row, orders={})
        self.store.put_event(
            run,
            order_name=schema.JOB_EVENT_ORDER_NAME,
            event_type=schema.EVENT_JOB_STARTED,
            data={"orders": len(job.orders), "username": job.username},
            epoch_ms=now_ms,
        )
        write_result_once(
            self.s3,
            self.settings.internal_bucket,
            schema.callback_key(run_id, schema.JOB_ORDER_NUM),
            OrderResult(status=schema.SUCCEEDED, log="initialized", written_by="init"),
        )
        return InitResult(
            run_id=run_id,
            trace_id=trace_id,
            flow_id=flow_id,
            done_endpt=f"s3://{self.settings.done_bucket}/{schema.done_key(run_id)}",
        )

    def _package_orders(
        self,
        job: Job,
        run_id: str,
        recipient: str,
        order_env: Mapping[str, Mapping[str, str]],
        git_token: str | None,
        ssh_key: str | None,
    ) -> None:
        with CodeCache(s3_client=self.s3, work_dir=self.work_dir) as cache:

            def package(order: Order) -> None:
                callback_url = self.s3.generate_presigned_url(
                    "put_object",
                    Params={
                        "Bucket": self.settings.internal_bucket,
                        "Key": schema.callback_key(run_id, order.num),
                        "IfNoneMatch": "*",
                    },
                    ExpiresIn=job.presign_expiry,
                )
                bundle = seal_order_bundle(order_env[order.num], callback_url, recipient)
                manifest = {
                    "schema_version": schema.SCHEMA_VERSION,
                    schema.RUN_ID: run_id,
                    schema.ORDER_NUM: order.num,
                    schema.ORDER_NAME: order.name,
                    "cmds": list(order.cmds),
                    "timeout": order.timeout,
                }
                with tempfile.TemporaryDirectory(prefix="order-code-", dir=self.work_dir) as code:
                    code_dir = Path(code) / "code"
                    if isinstance(order.source, GitSource):
                        cache.git(
                            order.source.repo,
                            order.source.commit_hash,
                            code_dir,
                            token=git_token,
                            ssh_key=ssh_key,
                            folder=order.source.folder,
                        )
                    else:
                        cache.s3(str(order.source), code_dir)
                    archive = build_exec_zip(manifest=manifest, sealed_bundle=bundle, code_dir=code_dir)
                self.s3.put_object(
                    Bucket=self.settings.internal_bucket, Key=schema.exec_key(run_id, order.num), Body=archive
                )

            with ThreadPoolExecutor(max_workers=min(PACKAGING_CONCURRENCY, len(job.orders))) as pool:
                list(pool.map(package, job.orders))
