"""JobClaim's tables in moto, created from ``handlers.job_claim.schema`` (as the construct does)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from handlers.job_claim import schema
from tests.support.stream_recovery_tables import create_table_kwargs


@dataclass(frozen=True)
class JobClaimTables:
    ownership: str = "JcOwnership"
    active_jobs: str = "JcActiveJobs"
    interruptions: str = "JcInterruptions"
    threads: str = "JcThreads"
    claim_requests: str = "JcClaimRequests"

    def name_of(self, table: schema.TableSchema) -> str:
        return {
            schema.OWNERSHIP.role: self.ownership,
            schema.ACTIVE_JOBS.role: self.active_jobs,
            schema.INTERRUPTIONS.role: self.interruptions,
            schema.THREADS.role: self.threads,
            schema.CLAIM_REQUESTS.role: self.claim_requests,
        }[table.role]

    def environment(self) -> dict[str, str]:
        return {
            schema.ENV_OWNERSHIP_TABLE: self.ownership,
            schema.ENV_ACTIVE_JOBS_TABLE: self.active_jobs,
            schema.ENV_INTERRUPTIONS_TABLE: self.interruptions,
            schema.ENV_THREADS_TABLE: self.threads,
            schema.ENV_CLAIM_REQUESTS_TABLE: self.claim_requests,
        }


def create_job_claim_tables(ddb: Any, tables: JobClaimTables | None = None) -> JobClaimTables:
    """The five tables in the moto server ``ddb`` talks to, TTL enabled where the schema has one."""
    tables = tables or JobClaimTables()
    for table in schema.ALL_TABLES:
        name = tables.name_of(table)
        ddb.create_table(**create_table_kwargs(name, table))
        if table.ttl_attribute is not None:
            ddb.update_time_to_live(
                TableName=name, TimeToLiveSpecification={"Enabled": True, "AttributeName": table.ttl_attribute}
            )
    return tables
