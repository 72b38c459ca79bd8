"""One digest of the migrations directory, computed the same way at synth and in the function.

The deploy-time migrator (handlers/export_runner/migrator.py) carries the digest of the
migrations it was synthesized with in ``MIGRATIONS_SHA256``: a changed, added or removed
migration changes the function's configuration, so CDK's trigger runs it again on that deploy.
No psycopg here: the CDK app imports this module.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def migrations_digest(directory: Path = MIGRATIONS_DIR) -> str:
    """SHA-256 over the name and content of every ``.sql`` file, in name order."""
    digest = hashlib.sha256()
    for path in sorted(directory.glob("*.sql")):
        content = path.read_bytes()
        digest.update(f"{path.name}\0{len(content)}\0".encode())
        digest.update(content)
    return digest.hexdigest()
