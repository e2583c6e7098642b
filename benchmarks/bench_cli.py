"""Command-line agents' child processes: what `run_process` adds to starting a child, and how
fast it streams lines.

Overhead: RUNS runs of `/bin/true`, one after another, per variant: bare
`asyncio.create_subprocess_exec` + `wait()` (no pipes), bare with stdout/stderr pipes read
to the end (`communicate()`), `run_process` without limits, and `run_process` with limits
(through `prlimit`, process watchdog on). Median and p95 per variant, and the difference of
the medians to the bare one.

Streaming: a child printing LINES short lines as fast as it can; lines per second through
`run_process` with an `on_line` appending to a list, against a bare `readline()` loop.

Run: python -m benchmarks.bench_cli
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Literal

from agentmill.agents.cli.process import Limits, ProcessSpec, run_process
from benchmarks._common import row

RUNS = 200
LINES = 200_000
TRUE = "/bin/true"
ENV = {"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"}
LIMITS = Limits(cpu_seconds=60, memory_bytes=1 << 32, processes=64, open_files=1024)
PRINTER = f"import sys; sys.stdout.write(''.join(f'line {{n}}\\n' for n in range({LINES})))"


async def _ignore(stream: Literal["stdout", "stderr"], line: str) -> None:
    return None


async def _bare() -> None:
    proc = await asyncio.create_subprocess_exec(TRUE, env=ENV)
    await proc.wait()


async def _bare_pipes() -> None:
    proc = await asyncio.create_subprocess_exec(
        TRUE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=ENV
    )
    await proc.communicate()


def _through_run_process(limits: Limits) -> Callable[[], Awaitable[None]]:
    spec = ProcessSpec(argv=(TRUE,), env=ENV, cwd=tempfile.gettempdir(), limits=limits)

    async def run() -> None:
        result = await run_process(spec, _ignore)
        assert result.exit_code == 0

    return run


async def _times(run: Callable[[], Awaitable[None]]) -> list[float]:
    for _ in range(10):  # warm up: page cache, the child watcher, prlimit's first exec
        await run()
    times: list[float] = []
    for _ in range(RUNS):
        start = time.perf_counter()
        await run()
        times.append(time.perf_counter() - start)
    return times


def _p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1]


async def _overhead() -> None:
    variants: list[tuple[str, Callable[[], Awaitable[None]]]] = [
        ("bare `create_subprocess_exec` + `wait()`", _bare),
        ("bare, with pipes + `communicate()`", _bare_pipes),
        ("`run_process`, no limits", _through_run_process(Limits())),
        ("`run_process`, limits (prlimit + watchdog)", _through_run_process(LIMITS)),
    ]
    print(f"\n`/bin/true`, {RUNS} sequential runs per variant\n")
    print("| variant | median | p95 | median - bare |")
    print("| --- | --- | --- | --- |")
    floor: float | None = None
    for name, run in variants:
        times = await _times(run)
        median = statistics.median(times)
        floor = median if floor is None else floor
        print(
            row(
                name,
                f"{median * 1000:.2f} ms",
                f"{_p95(times) * 1000:.2f} ms",
                f"{(median - floor) * 1000:+.2f} ms",
            )
        )


async def _stream_bare() -> int:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", PRINTER, stdout=asyncio.subprocess.PIPE, env=ENV
    )
    assert proc.stdout is not None
    lines: list[bytes] = []
    while line := await proc.stdout.readline():
        lines.append(line)
    await proc.wait()
    return len(lines)


async def _stream_run_process() -> int:
    lines: list[str] = []

    async def on_line(stream: Literal["stdout", "stderr"], line: str) -> None:
        lines.append(line)

    spec = ProcessSpec(
        argv=(sys.executable, "-c", PRINTER),
        env=ENV,
        cwd=tempfile.gettempdir(),
        max_output=64 * 1024 * 1024,
    )
    result = await run_process(spec, on_line)
    assert result.exit_code == 0
    assert not result.truncated
    return len(lines)


async def _streaming() -> None:
    print(f"\nA child printing {LINES:,} short lines (median of 5, child start-up included)\n")
    print("| reader | lines | seconds | lines/s |")
    print("| --- | --- | --- | --- |")
    readers = [
        ("bare `readline()` loop", _stream_bare),
        ("`run_process` + `on_line`", _stream_run_process),
    ]
    for name, read in readers:
        times: list[float] = []
        count = 0
        for _ in range(5):
            start = time.perf_counter()
            count = await read()
            times.append(time.perf_counter() - start)
        assert count == LINES, count
        seconds = statistics.median(times)
        print(row(name, f"{count:,}", f"{seconds:.3f}", f"{count / seconds:,.0f}"))


async def _main() -> None:
    await _overhead()
    await _streaming()


def main() -> None:
    asyncio.run(_main())


if __name__ == "__main__":
    main()
