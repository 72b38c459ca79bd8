"""`make bench`: every benchmark in turn, each as its own process (clean memory figures).

Speed and memory goals live here, never in the tests. Each benchmark measures its baseline in
the same run and prints ratios, so the figures are comparable across machines.
Pass names to run a subset: `python -m benchmarks fanout`.
"""

from __future__ import annotations

import subprocess
import sys

BENCHMARKS = {
    "fanout": ["benchmarks.fanout_bench"],
    "export": ["benchmarks.export_bench"],
    "stream_recovery": ["benchmarks.stream_recovery_bench"],
    "job_claim": ["benchmarks.job_claim_bench"],
    "execution_engine": ["benchmarks.execution_engine_bench"],
}


def main(argv: list[str]) -> int:
    names = argv or list(BENCHMARKS)
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark {unknown[0]!r}; known: {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    status = 0
    for name in names:
        print(f"=== {name} ===", flush=True)
        module, *args = BENCHMARKS[name]
        status |= subprocess.run([sys.executable, "-m", module, *args]).returncode
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
