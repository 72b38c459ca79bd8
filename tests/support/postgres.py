"""A throwaway PostgreSQL 15 cluster for the test session.

initdb and the server refuse to run as root, and CI runs as root: in that case the cluster
directory is owned by the ``postgres`` system user and the binaries run as that user
(``runuser``). The cluster listens on a free loopback port only, trusts local connections,
and is removed when the session ends.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.support.moto_server import free_port

PG_BIN_CANDIDATES = ("/usr/lib/postgresql/15/bin",)
INSTALL_HINT = (
    "PostgreSQL 15 server binaries not found. `make test` installs them on Debian "
    "(apt-get install postgresql-15); elsewhere install PostgreSQL 15 and set PG_BIN to its bin directory."
)


def find_pg_bin() -> Path:
    candidates = [os.environ["PG_BIN"]] if os.environ.get("PG_BIN") else list(PG_BIN_CANDIDATES)
    for candidate in candidates:
        if (Path(candidate) / "initdb").exists():
            return Path(candidate)
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    raise RuntimeError(INSTALL_HINT)


@dataclass(frozen=True)
class PostgresCluster:
    host: str
    port: int
    user: str
    dbname: str

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.dbname}"


def _as_cluster_owner(argv: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return argv
    return ["runuser", "-u", "postgres", "--", *argv]


def start_postgres() -> Iterator[PostgresCluster]:
    pg_bin = find_pg_bin()
    workdir = Path(tempfile.mkdtemp(prefix="pgtest-"))
    data_dir = workdir / "data"
    port = free_port()
    if os.geteuid() == 0:
        owner = pwd.getpwnam("postgres")
        os.chown(workdir, owner.pw_uid, owner.pw_gid)
    user = "postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
    try:
        subprocess.run(
            _as_cluster_owner(
                [str(pg_bin / "initdb"), "-D", str(data_dir), "-U", user, "--auth=trust", "-E", "UTF8", "--no-sync"]
            ),
            check=True,
            capture_output=True,
        )
        options = f"-c listen_addresses=127.0.0.1 -p {port} -k {workdir} -c fsync=off -c synchronous_commit=off"
        subprocess.run(
            _as_cluster_owner(
                [str(pg_bin / "pg_ctl"), "-D", str(data_dir), "-o", options, "-l", str(workdir / "log"), "-w", "start"]
            ),
            check=True,
            capture_output=True,
        )
        _wait_ready(pg_bin, port)
        yield PostgresCluster(host="127.0.0.1", port=port, user=user, dbname="postgres")
    finally:
        if (data_dir / "postmaster.pid").exists():
            subprocess.run(
                _as_cluster_owner([str(pg_bin / "pg_ctl"), "-D", str(data_dir), "-m", "immediate", "stop"]),
                capture_output=True,
            )
        shutil.rmtree(workdir, ignore_errors=True)


def _wait_ready(pg_bin: Path, port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ready = subprocess.run([str(pg_bin / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)], capture_output=True)
        if ready.returncode == 0:
            return
        time.sleep(0.2)
    raise RuntimeError(f"PostgreSQL on port {port} did not become ready in 30 s")
