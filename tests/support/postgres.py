"""A throwaway PostgreSQL 15 cluster for the test session.

initdb and the server refuse to run as root, and CI runs as root: in that case the cluster
directory is owned by the ``postgres`` system user and the binaries run as that user
(``runuser``). The cluster listens on a free loopback port only, trusts local connections,
and is removed when the session ends.

``start_postgres(tls=True)`` also serves TLS with a server certificate for ``127.0.0.1`` and
``localhost`` issued by a throwaway CA (``PostgresCluster.ca_bundle``, a PEM file), so clients
can be tested with ``sslmode=verify-full`` against a real server.
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
    ca_bundle: str | None = None  # the CA of the server certificate, when started with tls=True

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.dbname}"


def _as_cluster_owner(argv: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return argv
    return ["runuser", "-u", "postgres", "--", *argv]


def write_server_certificate(directory: Path, *, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")) -> Path:
    """A CA (ca.crt) and a server certificate for ``hosts`` signed by it (server.crt, server.key)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def name(common_name: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("export-runner test postgres CA"))
        .issuer_name(name("export-runner test postgres CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    alt_names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alt_names.append(x509.DNSName(host))
    cert = (
        x509.CertificateBuilder()
        .subject_name(name(hosts[0]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    (directory / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (directory / "server.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path = directory / "server.key"
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_path.chmod(0o600)  # the server refuses a key others can read
    return directory / "ca.crt"


def start_postgres(*, tls: bool = False) -> Iterator[PostgresCluster]:
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
        ca_bundle: str | None = None
        if tls:
            certs = workdir / "certs"
            certs.mkdir()
            ca_bundle = str(write_server_certificate(certs))
            if os.geteuid() == 0:
                for path in (certs, *certs.iterdir()):
                    os.chown(path, owner.pw_uid, owner.pw_gid)
            options += f" -c ssl=on -c ssl_cert_file={certs / 'server.crt'} -c ssl_key_file={certs / 'server.key'}"
        subprocess.run(
            _as_cluster_owner(
                [str(pg_bin / "pg_ctl"), "-D", str(data_dir), "-o", options, "-l", str(workdir / "log"), "-w", "start"]
            ),
            check=True,
            capture_output=True,
        )
        _wait_ready(pg_bin, port)
        yield PostgresCluster(host="127.0.0.1", port=port, user=user, dbname="postgres", ca_bundle=ca_bundle)
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
