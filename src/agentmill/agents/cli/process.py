"""Running one command-line agent as a contained child process.

    run_process(spec, on_line)
      ├─ resolve argv[0] on the child's PATH, then the worker's      -> MissingBinary
      ├─ [prlimit --cpu= --as= --nofile= --] argv                     (no shell, ever)
      ├─ create_subprocess_exec(start_new_session=True)               own session and group
      ├─ tasks: stdin writer, stdout/stderr readers -> on_line, [process-count watchdog],
      │         a scan of processes that leave the session (see `escapes`)
      ├─ until the leader exits, the timeout, the watchdog or a cancellation
      └─ end_session: SIGTERM group and session, grace, SIGKILL, reap (shielded);
         then the same for the processes that left it

Resource limits are applied by exec'ing util-linux `prlimit`, which sets them on itself and
execs the command (same pid, so the agent stays the session leader), not by `preexec_fn`:
Python code between fork and exec can deadlock in a process with threads (the worker has
DBOS and sqlite threads), as a lock held by another thread at fork is never released.

`Limits.processes` is enforced by a watchdog counting the session's processes every 50 ms
(see `reap`), not by RLIMIT_NPROC: root ignores that, and for other users it counts every
process and thread of the user, the worker's included. The end of a run never depends on
`Process.wait()` alone: since Python 3.12 it also waits for the pipes, which a leftover
grandchild may hold open; the leader's exit is seen through a pidfd instead.
"""

from __future__ import annotations

import asyncio
import errno
import math
import os
import shutil
import signal
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from agentmill.agents.cli import reap
from agentmill.agents.cli.escapes import SCAN_EVERY, Escapes, identity_entry
from agentmill.errors import MissingDependencyError, UserError

__all__ = [
    "Limits",
    "MissingBinary",
    "OnLine",
    "OnLines",
    "OnStart",
    "OnStopped",
    "ProcessResult",
    "ProcessSpec",
    "run_process",
]

OnLine = Callable[[Literal["stdout", "stderr"], str], Awaitable[None]]
OnLines = Callable[[Literal["stdout", "stderr"], list[str], bool], Awaitable[None]]
"""Lines in batches: the complete lines of one read from the pipe, in order. The flag says
the lines come after the stream's `max_output`: not kept, still there to be parsed (a
tool's final result and cost come last)."""
OnStart = Callable[[int], Awaitable[None]]
OnStopped = Callable[["ProcessResult"], None]
"""What a run had done when it was cancelled (a timeout, a cancel, a shutdown)."""

_CHUNK = 64 * 1024  # bytes read from a pipe at a time
_LINE_MAX = 4 * 1024 * 1024  # a longer line is passed on in pieces of at most this size
_TAIL = 20  # stderr lines kept for the result
_TAIL_LINE = 4096  # characters kept of each (the end: where the error usually is)
_WATCH_EVERY = 0.05  # seconds between two counts of the session's processes
_DRAIN_IDLE = 0.5  # once every process is gone, how long a pipe may stay open and silent
_DRAIN_MAX = 2.0  # and how long an escaped process may keep writing into it
_MEMORY_SIGNS = ("MemoryError", "Cannot allocate memory", "out of memory")
_T = TypeVar("_T")


@dataclass(frozen=True, kw_only=True)
class Limits:
    """Kernel resource limits for the child (None: inherited from the worker)."""

    cpu_seconds: float | None = None  # RLIMIT_CPU: SIGXCPU, then SIGKILL a second later
    memory_bytes: int | None = None  # RLIMIT_AS: allocations past it fail
    processes: int | None = None  # the session watchdog (not RLIMIT_NPROC, see above)
    open_files: int | None = None  # RLIMIT_NOFILE

    def any_set(self) -> bool:
        return any(
            value is not None
            for value in (self.cpu_seconds, self.memory_bytes, self.processes, self.open_files)
        )


@dataclass(frozen=True, kw_only=True)
class ProcessSpec:
    """One command to run: argv (no shell), its whole environment, and how far it may go."""

    argv: tuple[str, ...]
    env: Mapping[str, str]  # the child's WHOLE environment (nothing inherited)
    cwd: str
    stdin: bytes | None = None  # written then closed; None -> /dev/null
    timeout: float | None = None
    max_output: int = 1_000_000  # bytes of stdout kept in the result
    grace: float = 5.0  # SIGTERM -> grace -> SIGKILL
    limits: Limits = field(default_factory=Limits)
    identity: str | None = None
    """The name of a variable of `env` whose value only this run's processes carry: a
    descendant that left the session and was orphaned is recognised by it."""

    def __post_init__(self) -> None:
        if not self.argv:
            raise UserError("the command is empty: give at least the program to run")


@dataclass(frozen=True, kw_only=True)
class ProcessResult:
    """How a run ended and what it printed (stdout capped, stderr as a tail)."""

    exit_code: int | None  # negative = killed by that signal
    duration: float
    stdout: str  # kept stdout, decoded utf-8 'replace'; the marker appended when cut
    stderr_tail: tuple[str, ...]  # last 20 stderr lines
    truncated: bool
    limit_hit: str | None  # "timeout" | "cpu" | "memory" | "processes" | None
    pid: int


class MissingBinary(MissingDependencyError):
    """The program of a command is not installed (or not on PATH)."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(
            f"command '{name}' was not found (looked on the agent's PATH and the worker's):"
            " install it, or fix `command` in the agent's config"
        )


def _resolve(name: str, env: Mapping[str, str], cwd: str) -> str:
    """The absolute path of the program: a relative path is taken from the child's cwd, a
    bare name looked up on the child's PATH first, then on the worker's."""
    if os.sep in name:
        found = shutil.which(os.path.join(cwd, name))
    else:
        child_path = env.get("PATH")
        found = shutil.which(name, path=child_path) if child_path else None
        found = found or shutil.which(name)
    if found is None:
        raise MissingBinary(name)
    return os.path.abspath(found)


def _prlimit_options(limits: Limits) -> list[str]:
    options: list[str] = []
    if limits.cpu_seconds is not None:
        soft = max(1, math.ceil(limits.cpu_seconds))
        options.append(f"--cpu={soft}:{soft + 1}")  # SIGXCPU first, SIGKILL a second later
        options.append("--core=0")  # SIGXCPU dumps core by default: none in the worktree
    if limits.memory_bytes is not None:
        options.append(f"--as={limits.memory_bytes}")
    # No --nproc: RLIMIT_NPROC counts every process of the user (the worker's threads too)
    # and root ignores it; the session watchdog enforces `processes` instead.
    if limits.open_files is not None:
        options.append(f"--nofile={limits.open_files}")
    return options


def _command(spec: ProcessSpec) -> list[str]:
    """The argv to exec: the resolved program, behind `prlimit` when limits are set."""
    if not os.path.isdir(spec.cwd):
        raise UserError(f"the agent's working directory {spec.cwd} does not exist")
    argv = [_resolve(spec.argv[0], spec.env, spec.cwd), *spec.argv[1:]]
    if not spec.limits.any_set():
        return argv
    prlimit = shutil.which("prlimit")
    if prlimit is None:
        raise MissingDependencyError(
            "`prlimit` (from util-linux) is needed to apply the agent's resource limits:"
            " install util-linux, or remove the limits"
        )
    return [prlimit, *_prlimit_options(spec.limits), "--", *argv]


def _cut_point(data: bytes) -> int:
    """Where to cut an over-long line: at _LINE_MAX, moved back off a UTF-8 continuation."""
    cut = _LINE_MAX
    while cut > _LINE_MAX - 3 and data[cut] & 0xC0 == 0x80:
        cut -= 1
    return cut


class _Sink:
    """One output stream: split into lines for `on_line` until its byte budget is spent,
    then one marker line; what comes after is read and dropped so the child never blocks
    (stderr's is still split, to keep its last lines)."""

    def __init__(
        self, name: Literal["stdout", "stderr"], on_lines: OnLines, budget: int, marker: str
    ) -> None:
        self.name: Literal["stdout", "stderr"] = name
        self.kept = bytearray()
        self.tail: deque[str] = deque(maxlen=_TAIL)
        self.truncated = False
        self.idle_since: float | None = None  # when the reader began waiting for data
        self._on_lines = on_lines
        self._room = budget
        self._marker = marker
        self._pending = b""
        self._keep_tail = name == "stderr"

    async def feed(self, chunk: bytes) -> None:
        head = chunk[: self._room] if len(chunk) > self._room else chunk
        if head:
            self._room -= len(head)
            if self.name == "stdout":
                self.kept += head
            await self._split(head, dropped=False)
        if len(head) == len(chunk):
            return
        if not self.truncated:
            self.truncated = True
            if self._pending:  # the line cut by the budget, shown as far as it goes; it is
                # still completed below and passed on whole for parsing
                await self._on_lines(self.name, [_text(self._pending)], False)
            await self._on_lines(self.name, [self._marker], False)
        await self._split(chunk[len(head) :], dropped=True)

    async def flush(self) -> None:
        """Pass on a last line that has no newline."""
        if self._pending:
            line, self._pending = self._pending, b""
            await self._deliver([line], dropped=self.truncated)

    async def _split(self, data: bytes, *, dropped: bool) -> None:
        lines = (self._pending + data if self._pending else data).split(b"\n")
        self._pending = lines.pop()
        while len(self._pending) > _LINE_MAX:
            cut = _cut_point(self._pending)
            lines.append(self._pending[:cut])
            self._pending = self._pending[cut:]
        await self._deliver(lines, dropped=dropped)

    async def _deliver(self, raw: list[bytes], *, dropped: bool) -> None:
        if not raw:
            return
        texts = [_text(line) for line in raw]
        if self._keep_tail:
            self.tail.extend(text[-_TAIL_LINE:] for text in texts)
        await self._on_lines(self.name, texts, dropped)


def _text(line: bytes) -> str:
    return line.removesuffix(b"\r").decode("utf-8", "replace")


async def _pump(stream: asyncio.StreamReader, sink: _Sink) -> None:
    loop = asyncio.get_running_loop()
    while True:
        sink.idle_since = loop.time()
        chunk = await stream.read(_CHUNK)
        sink.idle_since = None
        if not chunk:
            break
        await sink.feed(chunk)
    await sink.flush()


async def _feed_stdin(stdin: asyncio.StreamWriter, data: bytes) -> None:
    """Write the whole input, then close: in its own task, so a child that writes before it
    reads never deadlocks against us. A child that exits without reading is not an error."""
    try:
        stdin.write(data)
        await stdin.drain()
    except (BrokenPipeError, ConnectionResetError):
        pass
    finally:
        stdin.close()


async def _leader_exit(proc: asyncio.subprocess.Process) -> None:
    """Returns when the leader exits, whether or not its pipes are still open: a pidfd turns
    readable when its process exits (reaping stays with asyncio's child watcher)."""
    try:
        fd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):  # not Linux 5.3+, or already exited and reaped
        if proc.returncode is None:
            await proc.wait()
        return
    loop = asyncio.get_running_loop()
    exited: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not exited.done():
            exited.set_result(None)

    loop.add_reader(fd, readable)
    try:
        await exited
    finally:
        loop.remove_reader(fd)
        os.close(fd)


async def _track(escapes: Escapes) -> None:
    """Record the processes that leave the session, while the run lasts."""
    while True:
        await asyncio.sleep(SCAN_EVERY)
        escapes.scan()


async def _watch(sid: int, limit: int) -> None:
    """Returns once the session holds more than `limit` processes."""
    while True:
        await asyncio.sleep(_WATCH_EVERY)
        if reap.count_session(sid) > limit:
            return


@dataclass(kw_only=True)
class _Run:
    """The tasks around one child; `supervise` waits for the end, `finish` cleans up."""

    proc: asyncio.subprocess.Process
    spec: ProcessSpec
    out: _Sink
    err: _Sink
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    exited: asyncio.Task[None] | None = None
    watchdog: asyncio.Task[None] | None = None
    tracker: asyncio.Task[None] | None = None
    escapes: Escapes | None = None
    signalled: bool = False

    def start(self) -> None:
        proc = self.proc
        assert proc.stdout is not None
        assert proc.stderr is not None
        self.exited = asyncio.ensure_future(_leader_exit(proc))
        self.tasks = [
            asyncio.ensure_future(_pump(proc.stdout, self.out)),
            asyncio.ensure_future(_pump(proc.stderr, self.err)),
        ]
        if proc.stdin is not None and self.spec.stdin is not None:
            self.tasks.append(asyncio.ensure_future(_feed_stdin(proc.stdin, self.spec.stdin)))
        if self.spec.limits.processes is not None:
            self.watchdog = asyncio.ensure_future(_watch(proc.pid, self.spec.limits.processes))
        identity = identity_entry(self.spec.env, self.spec.identity)
        self.escapes = Escapes(proc.pid, identity=identity)
        self.tracker = asyncio.ensure_future(_track(self.escapes))

    async def supervise(self) -> str | None:
        """Wait for the leader's exit; the limit that ended the run early, if one did."""
        deadline = asyncio.timeout(self.spec.timeout)
        try:
            async with deadline:
                return await self._until_end()
        except TimeoutError:
            if deadline.expired():
                return "timeout"
            raise

    async def _until_end(self) -> str | None:
        assert self.exited is not None
        pending: set[asyncio.Task[None]] = {self.exited, *self.tasks}
        if self.watchdog is not None:
            pending.add(self.watchdog)
        while True:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # an error of on_line (or ours) ends the run, and is raised
            if self.watchdog in done:
                return "processes"
            if self.exited in done:
                return None

    async def finish(self, *, drain: bool) -> None:
        """Kill what is left of the session and reap it. With `drain`, read the pipes to
        their end first; without (cancelled, or on_line failed), stop reading at once."""
        helpers = [t for t in (self.watchdog, self.exited, self.tracker) if t is not None]
        for task in helpers:
            task.cancel()
        if not drain:
            self._stop_reading()
        pid = self.proc.pid
        assert self.escapes is not None
        self.escapes.scan()  # while the session's members still lead to what they started
        self.signalled = await reap.end_session(pid, leader=pid, grace=self.spec.grace)
        await self.escapes.end(grace=self.spec.grace)
        if drain:
            await self._drain()
        await self.proc.wait()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, *helpers, return_exceptions=True)

    async def _drain(self) -> None:
        """Let the readers reach end-of-file. A pipe still open and silent once every process
        of the session is gone is held by one that escaped it (setsid): cut it off."""
        readers = self.tasks[:2]
        loop = asyncio.get_running_loop()
        started = loop.time()
        while not all(task.done() for task in readers):
            await asyncio.wait(readers, timeout=_DRAIN_IDLE / 4)
            if loop.time() - started > _DRAIN_MAX:
                break
            waiting = [s.idle_since for s in (self.out, self.err) if s.idle_since is not None]
            silent = [loop.time() - max(since, started) > _DRAIN_IDLE for since in waiting]
            if silent and all(silent):
                break
        if not all(task.done() for task in readers):
            self._stop_reading()

    def _stop_reading(self) -> None:
        for task in self.tasks:
            task.cancel()
        # Closing our ends lets Process.wait() return (3.12+ waits for the pipes too).
        transport: Any = getattr(self.proc, "_transport", None)
        for fd in (1, 2):
            pipe = transport.get_pipe_transport(fd) if transport is not None else None
            if pipe is not None:
                pipe.close()

    def raise_errors(self) -> None:
        """Raise an error of a reader or the stdin writer (on_line's, most likely)."""
        for task in self.tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                task.result()


async def _shielded(coro: Coroutine[Any, Any, _T]) -> _T:
    """Run `coro` to its end even if we are cancelled meanwhile (worker shutdown cancels
    twice); the cancellation is raised once it is done."""
    task = asyncio.ensure_future(coro)
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.done():
                raise
            cancelled = True
            continue
        if cancelled:
            raise asyncio.CancelledError
        return result


def _inferred_limit(spec: ProcessSpec, run: _Run, exit_code: int | None) -> str | None:
    """A limit the kernel enforced, read from how the child ended."""
    limits = spec.limits
    if limits.cpu_seconds is not None and exit_code is not None:
        if exit_code == -signal.SIGXCPU:
            return "cpu"
        if exit_code == -signal.SIGKILL and not run.signalled:
            return "cpu"  # the hard limit, a second after an ignored SIGXCPU
    failed = exit_code not in (0, None)
    if limits.memory_bytes is not None and failed and _says_out_of_memory(run.err.tail):
        return "memory"
    return None


def _says_out_of_memory(lines: deque[str]) -> bool:
    return any(sign in line for line in lines for sign in _MEMORY_SIGNS)


def _stdout_text(sink: _Sink, marker: str) -> str:
    text = sink.kept.decode("utf-8", "replace")
    if not sink.truncated:
        return text
    return text + ("" if not text or text.endswith("\n") else "\n") + marker


async def _spawn(argv: list[str], spec: ProcessSpec) -> asyncio.subprocess.Process:
    """Start the child as the leader of a new session; an exec failure is the user's to fix."""
    try:
        return await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL if spec.stdin is None else asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=dict(spec.env),
            cwd=spec.cwd,
            start_new_session=True,
        )
    except OSError as exc:
        if exc.errno not in _USER_ERRNOS:
            raise  # EAGAIN, ENOMEM, EMFILE ...: the machine's state, worth a retry
        raise UserError(_spawn_failure(spec.argv, exc)) from None


_USER_ERRNOS = {errno.E2BIG, errno.ENOEXEC, errno.EACCES, errno.ENOENT, errno.ENOTDIR}


def _spawn_failure(argv: tuple[str, ...], exc: OSError) -> str:
    program = argv[0]
    if exc.errno == errno.E2BIG:
        longest = max(len(arg.encode()) for arg in argv)
        return (
            f"cannot start {program}: its arguments or environment are too long (the longest"
            f" argument is {longest:,} bytes; Linux allows 128 KiB per argument). Pass the"
            ' prompt on stdin (`stdin: "{{ prompt }}"`) instead of in `command`'
        )
    if exc.errno == errno.ENOEXEC:
        return f"cannot start {program}: it is not a program (a script needs a #! line)"
    if exc.errno == errno.EACCES:
        return f"cannot start {program}: permission denied (is it executable? chmod +x)"
    return f"cannot start {program}: {exc.strerror or exc}"


def _one_by_one(on_line: OnLine | None) -> OnLines:
    async def deliver(stream: Literal["stdout", "stderr"], lines: list[str], dropped: bool) -> None:
        if on_line is not None and not dropped:
            for line in lines:
                await on_line(stream, line)

    return deliver


async def run_process(
    spec: ProcessSpec,
    on_line: OnLine | None = None,
    *,
    on_lines: OnLines | None = None,
    on_start: OnStart | None = None,
    on_stopped: OnStopped | None = None,
) -> ProcessResult:
    """Run `spec` to its end, streaming its output lines to `on_line` one by one, or to
    `on_lines` in batches (the lines of one pipe read: fewer, larger events for a fast
    writer). `on_start` learns the child's pid (its session id) first, e.g. to record it
    for a clean-up after a crash.

    Timeouts and the process watchdog end the run with `limit_hit` set; a cancellation
    kills and reaps the whole session first, tells `on_stopped` how the child ended, then
    propagates. Raises `MissingBinary` when the program is not installed.
    """
    deliver = on_lines if on_lines is not None else _one_by_one(on_line)
    argv = _command(spec)
    reap.become_subreaper()
    started = time.monotonic()
    proc = await _spawn(argv, spec)
    marker = f"[agentmill: output truncated at {spec.max_output} bytes]"
    out = _Sink("stdout", deliver, spec.max_output, marker)
    err = _Sink(
        "stderr",
        deliver,
        spec.max_output,
        f"[agentmill: stderr truncated at {spec.max_output} bytes]",
    )
    run = _Run(proc=proc, spec=spec, out=out, err=err)
    run.start()
    try:
        if on_start is not None:
            await on_start(proc.pid)
        limit_hit = await run.supervise()
    except BaseException:
        await _shielded(run.finish(drain=False))
        if on_stopped is not None:
            on_stopped(_result(run, started, marker, None))
        raise
    await _shielded(run.finish(drain=True))
    run.raise_errors()
    return _result(run, started, marker, limit_hit)


def _result(run: _Run, started: float, marker: str, limit_hit: str | None) -> ProcessResult:
    proc = run.proc
    return ProcessResult(
        exit_code=proc.returncode,
        duration=time.monotonic() - started,
        stdout=_stdout_text(run.out, marker),
        stderr_tail=tuple(run.err.tail),
        truncated=run.out.truncated,
        limit_hit=limit_hit or _inferred_limit(run.spec, run, proc.returncode),
        pid=proc.pid,
    )
