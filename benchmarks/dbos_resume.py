"""What a resume of pydantic-ai's DBOS integration repeats, measured with a real `kill -9`.

Each scenario runs a `DBOSAgent` in a child process under a fixed workflow id, kills it
with SIGKILL at a chosen point, then starts a second process with the same DBOS executor
id: `DBOS.launch()` recovers the pending workflow. Both processes append what they execute
(model requests, tool bodies, the tool results the model was given) to one log; the parent
counts them before and after the kill.

- sequential, model steps: 6 tool calls one per turn; the tool is a plain function (the
  integration's default); killed while the 4th tool call runs (after 3 finished).
- sequential, model + tool steps: the same with the tool's body a `@DBOS.step`.
- parallel: one model response with two calls, `a` and `b`, of a tool that makes one DBOS
  step (`fetch`, slower for `a`), or two (`fetch` then `store`); killed during the next model
  request; five runs each. Shows how DBOS's positional step numbering (a step is found by
  its position in the workflow and its name) treats concurrent tool calls on recovery.

Run: python -m benchmarks.dbos_resume [--pg]   (--pg: also on PostgreSQL at AGENTMILL_BENCH_PG)
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

from dbos import DBOS, DBOSConfig, SetWorkflowID
from pydantic_ai import Agent, Tool
from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
)
from pydantic_ai.models.function import AgentInfo, FunctionModel

from benchmarks._common import row
from benchmarks.tool_calls import postgres_url, sqlite_url

SEQUENTIAL_CALLS = 6
KILL_IN_CALL = 3
"""0-based: the 4th tool call is running when the process is killed (3 have finished)."""

_LOG = Path(os.environ.get("BENCH_RESUME_LOG", "/dev/null"))
_FIRST_PROCESS = os.environ.get("BENCH_RESUME_PHASE") == "first"


def _record(**entry: Any) -> None:
    """Append one line to the shared log (a killed process loses nothing it wrote)."""
    with _LOG.open("a") as log:
        log.write(json.dumps(entry) + "\n")


def _hang_if_first(where: str) -> None:
    """In the first process, stop here until the parent kills it."""
    if _FIRST_PROCESS:
        _record(event="hang", where=where)
        while True:
            time.sleep(1)


def _last_results(messages: list[ModelMessage]) -> list[ToolReturnPart]:
    last = messages[-1]
    if not isinstance(last, ModelRequest):
        return []
    return [part for part in last.parts if isinstance(part, ToolReturnPart)]


async def _sequential_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    results = _last_results(messages)
    done = int(str(results[0].content)) if results else -1
    _record(event="model", turn=done + 1)
    if done + 1 < SEQUENTIAL_CALLS:
        return ModelResponse(parts=[ToolCallPart("ping", {"i": done + 1})])
    return ModelResponse(parts=[TextPart("done")])


def _ping_body(i: int) -> int:
    _record(event="tool_start", call=i)
    if i == KILL_IN_CALL:
        _hang_if_first(f"tool call {i}")
    _record(event="tool_end", call=i)
    return i


def ping_plain(i: int) -> int:
    """The tool, unrecorded by DBOS (runs in workflow code)."""
    return _ping_body(i)


@DBOS.step(name="resume.ping")
async def _ping_step(i: int) -> int:
    return _ping_body(i)


async def ping_step(i: int) -> int:
    """The tool whose body is a DBOS step."""
    return await _ping_step(i)


@DBOS.step(name="resume.fetch")
async def _fetch(key: str) -> str:
    _record(event="step", name="fetch", key=key)
    await asyncio.sleep(0.2 if key == "a" else 0.01)  # a's service is slower
    return f"fetched {key}"


@DBOS.step(name="resume.store")
async def _store(key: str, fetched: str) -> str:
    _record(event="step", name="store", key=key)
    return f"stored {key} ({fetched})"


async def lookup(key: str) -> str:
    """A tool that makes two DBOS steps (fetch, then store)."""
    return await _store(key, await _fetch(key))


async def fetch(key: str) -> str:
    """A tool that makes one DBOS step."""
    return await _fetch(key)


async def _parallel_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    results = _last_results(messages)
    _record(event="model", turn=1 if results else 0)
    if not results:
        tool = info.function_tools[0].name
        calls = [ToolCallPart(tool, {"key": key}, tool_call_id=key) for key in ("a", "b")]
        return ModelResponse(parts=list[Any](calls))
    for part in results:
        _record(event="model_saw", call=part.tool_call_id, result=part.content)
    _hang_if_first("model request after the parallel calls")
    return ModelResponse(parts=[TextPart("done")])


def _agents() -> dict[str, Any]:
    from pydantic_ai.durable_exec.dbos import DBOSAgent  # pyright: ignore[reportDeprecated]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecated in favour of DBOSDurability
        return {
            "sequential, model steps": DBOSAgent(  # pyright: ignore[reportDeprecated]
                Agent(
                    FunctionModel(_sequential_model),
                    name="resume_model",
                    tools=[Tool(ping_plain, name="ping")],
                )
            ),
            "sequential, model + tool steps": DBOSAgent(  # pyright: ignore[reportDeprecated]
                Agent(
                    FunctionModel(_sequential_model),
                    name="resume_all",
                    tools=[Tool(ping_step, name="ping")],
                )
            ),
            "parallel, 2 steps per call": DBOSAgent(  # pyright: ignore[reportDeprecated]
                Agent(FunctionModel(_parallel_model), name="resume_parallel", tools=[lookup])
            ),
            "parallel, 1 step per call": DBOSAgent(  # pyright: ignore[reportDeprecated]
                Agent(FunctionModel(_parallel_model), name="resume_parallel_1", tools=[fetch])
            ),
        }


async def child(scenario: str, url: str, workflow_id: str, executor_id: str) -> None:
    """One process of a scenario: start the workflow (first) or recover it (second)."""
    agent = _agents()[scenario]
    config: DBOSConfig = {
        "name": "agentmill-bench-resume",
        "system_database_url": url,
        "executor_id": executor_id,
        "application_version": "bench",
        "log_level": "ERROR",
    }
    DBOS(config=config)
    DBOS.launch()
    if _FIRST_PROCESS:
        with SetWorkflowID(workflow_id):
            await agent.run("go")
    handle = await DBOS.retrieve_workflow_async(workflow_id)
    output = (await handle.get_result()).output
    _record(event="finished", output=output)
    DBOS.destroy()


def _spawn(scenario: str, url: str, workflow_id: str, executor: str, log: Path, phase: str):
    env = {**os.environ, "BENCH_RESUME_LOG": str(log), "BENCH_RESUME_PHASE": phase}
    argv = [sys.executable, "-m", "benchmarks.dbos_resume", "child", scenario, url, workflow_id]
    return subprocess.Popen([*argv, executor], env=env, cwd=Path(__file__).parent.parent)


def _entries(log: Path) -> list[dict[str, Any]]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line]


def _wait_for_hang(process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while not any(e["event"] == "hang" for e in _entries(log)):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the first process never reached its kill point: {_entries(log)}")
        time.sleep(0.02)


def run_scenario(scenario: str, url: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The log lines written before the kill, and after it (by the recovering process)."""
    with tempfile.TemporaryDirectory(prefix="agentmill-resume-") as home:
        log = Path(home) / "log.jsonl"
        workflow_id = f"resume-{uuid.uuid4().hex[:8]}"
        executor = f"bench-{uuid.uuid4().hex[:8]}"
        first = _spawn(scenario, url, workflow_id, executor, log, "first")
        _wait_for_hang(first, log)
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        before = _entries(log)
        second = _spawn(scenario, url, workflow_id, executor, log, "second")
        if second.wait(timeout=120) != 0:
            raise RuntimeError(f"recovery failed (exit {second.returncode})")
        return before, _entries(log)[len(before) :]


def _count(entries: list[dict[str, Any]], event: str) -> Counter[int]:
    key = "turn" if event == "model" else "call"
    return Counter(e[key] for e in entries if e["event"] == event)


def _sequential_row(scenario: str, backend: str, url: str) -> str:
    before, after = run_scenario(scenario, url)
    models_before, models_after = _count(before, "model"), _count(after, "model")
    tools_before, tools_after = _count(before, "tool_start"), _count(after, "tool_start")
    finished = sorted(_count(before, "tool_end"))
    return row(
        f"{scenario} ({backend})",
        f"{models_before.total()} / {models_after.total()}",
        f"{sorted(set(models_before) & set(models_after))}",
        f"{tools_before.total()} / {tools_after.total()}",
        f"{sorted(c for c in tools_after if c in finished)} of {finished}",
        f"{tools_after[KILL_IN_CALL]}x",
    )


def _swapped(scenario: str, url: str) -> bool:
    """One parallel run: whether the recovery gave a call the other call's recorded result."""
    before, after = run_scenario(scenario, url)
    saw_before = {e["call"]: e["result"] for e in before if e["event"] == "model_saw"}
    saw_after = {e["call"]: e["result"] for e in after if e["event"] == "model_saw"}
    assert all(e["event"] != "step" for e in after), "a recorded step ran again"
    assert all(f"fetched {key}" in saw_before[key] for key in ("a", "b")), saw_before
    return saw_after != saw_before


def _parallel_row(scenario: str, backend: str, url: str, runs: int = 5) -> str:
    swapped = sum(_swapped(scenario, url) for _ in range(runs))
    return row(
        f"{scenario}, 2 calls ({backend})",
        "",
        "",
        "",
        f"recovery swapped the two calls' results in {swapped} of {runs} runs",
        "",
    )


async def _main_async() -> None:
    print(
        row(
            "scenario",
            "model requests before / after kill",
            "repeated",
            "tool runs before / after",
            "finished calls run again",
            "interrupted call run again",
        )
    )
    print(row("---", "---", "---", "---", "---", "---"))
    with sqlite_url() as sqlite, postgres_url() as pg:
        backends = [("SQLite", sqlite)]
        if pg is not None and "--pg" in sys.argv:
            backends.append(("PostgreSQL", pg))
        for backend, url in backends:
            for scenario in ("sequential, model steps", "sequential, model + tool steps"):
                print(_sequential_row(scenario, backend, url), flush=True)
            for scenario in ("parallel, 1 step per call", "parallel, 2 steps per call"):
                print(_parallel_row(scenario, backend, url), flush=True)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        asyncio.run(child(*sys.argv[2:6]))
    else:
        asyncio.run(_main_async())


if __name__ == "__main__":
    main()
