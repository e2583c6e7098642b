"""`agentmill --help` start-up time against a bare interpreter start (target < 300 ms).

Run: python benchmarks/bench_cli_startup.py
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

RUNS = 15


def _median_seconds(command: list[str]) -> float:
    subprocess.run(command, capture_output=True, check=True)  # warm the page cache and .pyc
    times: list[float] = []
    for _ in range(RUNS):
        start = time.perf_counter()
        subprocess.run(command, capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    floor = _median_seconds([sys.executable, "-c", "pass"])
    cli = _median_seconds([sys.executable, "-m", "agentmill", "--help"])
    print("| benchmark | workload | agentmill | floor | result |")
    print("| --- | --- | --- | --- | --- |")
    print(
        f"| CLI start-up | `agentmill --help`, median of {RUNS} | {cli * 1000:.0f} ms "
        f"| {floor * 1000:.0f} ms (`python -c pass`) | **{cli * 1000:.0f} ms** (target < 300) |"
    )


if __name__ == "__main__":
    main()
