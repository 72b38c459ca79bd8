"""Resolve requirements-lambda.txt into the full pinned set for the Lambda platform.

Usage: python -m infra.lock_lambda requirements-lambda.txt requirements-lambda.lock
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from infra.constructs.lambda_asset import PLATFORM_TAGS, PROJECT_ROOT, PYTHON_VERSION

# The versions the tests run with: the asset must bundle the same (e.g. boto3 and botocore as a pair).
CONSTRAINTS = PROJECT_ROOT / "constraints.txt"

HEADER = """# Full pinned set installed into the Lambda asset (--no-deps): requirements-lambda.txt plus
# every transitive dependency, resolved for cp314 / manylinux aarch64. Regenerate with
# `make lock-lambda` after changing requirements-lambda.txt.
"""


def main(argv: list[str]) -> int:
    requirements, lock = Path(argv[1]), Path(argv[2])
    platforms = [arg for tag in PLATFORM_TAGS for arg in ("--platform", tag)]
    report = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--dry-run", "--ignore-installed", "--report", "-",
         "--only-binary=:all:", "--implementation", "cp", "--python-version", PYTHON_VERSION, *platforms,
         "--target", "/nonexistent-dry-run", "-c", str(CONSTRAINTS), "-r", str(requirements)],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    pins = sorted(
        f"{item['metadata']['name'].lower().replace('_', '-')}=={item['metadata']['version']}"
        for item in json.loads(report)["install"]
    )
    lock.write_text(HEADER + "\n".join(pins) + "\n")
    print(f"wrote {len(pins)} pins to {lock}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
