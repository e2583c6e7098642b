"""Run every benchmark and print the markdown rows recorded in docs/benchmarks.md.

Run: python benchmarks/run_all.py   (or `make bench`)
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = [
    "bench_engine",
    "bench_cli_startup",
    "bench_local_model",
    "bench_webhook",
    "bench_sse",
    "bench_api",
    "dashboard_pages",
    "dashboard_live",
    "bench_cache",
    "bench_budget",
    "bench_ratelimit",
    "bench_cli",
    "bench_cli_steps",
    "tool_calls",
    "dbos_resume",
]


def main() -> int:
    failed = 0
    for name in SCRIPTS:
        print(f"\n## {name}\n", flush=True)
        result = subprocess.run(
            [sys.executable, "-m", f"benchmarks.{name}"], cwd=HERE.parent, check=False
        )
        failed += result.returncode != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
