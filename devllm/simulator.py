"""The dev upstream: an OpenAI-compatible SIMULATOR of a model server, for development, tests and benchmarks.

It runs no model. It streams deterministic markdown answers at a configurable pace and can fail in every
way the upstream client must handle; options ride in the model name (`dev:tps=5,fault=drop`, see
`parse_model` and docs/devllm.md). Every response says what it is: the header `X-Simulator: devllm` and,
in completion bodies, `"system_fingerprint": "devllm-simulator"`.

It is a small HTTP/1.1 server on raw asyncio streams rather than an ASGI app because the fault modes need
byte-level control (split writes, aborted connections), because it must notice a client hanging up while it
sleeps between tokens, and because it must cost little CPU when benchmarks drive hundreds of streams.
"""

import asyncio
import dataclasses
import hashlib
import itertools
import json
import logging
import math
import random
import re
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Literal, NoReturn

from django.conf import settings

log = logging.getLogger(__name__)

FINGERPRINT = "devllm-simulator"
MAX_HEAD_BYTES = 64 * 1024
MAX_BODY_BYTES = 16 * 1024 * 1024
# Records kept for inspection; a long-running dev server must not grow without bound.
MAX_RECORDS = 10_000
# From this rate on, tokens go out back to back: sleeps shorter than a millisecond are mostly scheduler noise.
UNPACED_TPS = 1000.0

HTTP_FAULTS = {
    "http_401": (401, "invalid_request_error", "invalid_api_key", "Incorrect API key provided (simulated)."),
    "http_403": (403, "invalid_request_error", "forbidden", "This key may not use this model (simulated)."),
    "http_429": (429, "requests", "rate_limit_exceeded", "Rate limit reached, retry after 1 s (simulated)."),
    "http_500": (500, "server_error", "server_error", "The server had an error (simulated)."),
    "http_503": (503, "server_error", "overloaded", "The engine is currently overloaded (simulated)."),
    "model_not_found": (404, "invalid_request_error", "model_not_found", "The model does not exist (simulated)."),
}
MIDSTREAM_FAULTS = {"midstream_error", "malformed", "drop", "stall"}
FAULTS = {*HTTP_FAULTS, "close", "not_sse", *MIDSTREAM_FAULTS}
EOLS = {"lf": "\n", "cr": "\r", "crlf": "\r\n"}


# --- options -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DevOptions:
    """How the simulator answers a request. Timing and length default to the DEVLLM_* settings."""

    ttft: float = field(default_factory=lambda: float(settings.DEVLLM_TTFT))
    tps: float = field(default_factory=lambda: float(settings.DEVLLM_TPS))
    tokens: int = field(default_factory=lambda: int(settings.DEVLLM_TOKENS))
    fault: str | None = None
    fault_after: int = 3
    fail_times: int = 0
    key: str = ""
    eol: str = "lf"
    split: int = 0
    comments: float = 0.0
    nodone: bool = False
    nospace: bool = False
    echo: bool = False
    tools: bool = False

    def __post_init__(self) -> None:
        if self.fault is not None and self.fault not in FAULTS:
            raise ValueError(f"unknown fault {self.fault!r}; one of {', '.join(sorted(FAULTS))}")
        if self.eol not in EOLS:
            raise ValueError(f"eol must be one of {', '.join(EOLS)}")
        if not (math.isfinite(self.tps) and self.tps > 0):
            raise ValueError("tps must be a positive number")
        for name in ("ttft", "comments"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a number of seconds, not negative")
        for name in ("tokens", "fault_after", "fail_times", "split"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")


def _flag(value: str) -> bool:
    lowered = value.lower()
    if lowered in {"", "1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"not a yes/no value: {value!r}")


_OPTION_PARSERS: dict[str, Callable[[str], Any]] = {
    "ttft": float,
    "tps": float,
    "tokens": int,
    "fault": str,
    "fault_after": int,
    "fail_times": int,
    "key": str,
    "eol": str,
    "split": int,
    "comments": float,
    "nodone": _flag,
    "nospace": _flag,
    "echo": _flag,
    "tools": _flag,
}


def parse_model(model: str, defaults: DevOptions) -> tuple[str, DevOptions]:
    """Splits `name` or `name:opt=val,opt=val` into the model name and its options.

    A flag may be given bare (`dev:echo`). Raises ValueError for an unknown option or a bad value.
    """
    name, _, raw = model.partition(":")
    values: dict[str, Any] = {}
    for item in filter(None, raw.split(",")):
        option, _, value = item.partition("=")
        parse = _OPTION_PARSERS.get(option.strip())
        if parse is None:
            raise ValueError(f"unknown simulator option {option!r}")
        values[option.strip()] = parse(value.strip())
    return name, dataclasses.replace(defaults, **values)


# --- deterministic answers -----------------------------------------------------------------------------------

# An optional space and up to five other characters, or a run of whitespace: deltas of 1-6 characters,
# cut by code point, so graphemes (flags, ZWJ sequences, e + combining accent) do get split across deltas.
_TOKEN = re.compile(r"\s?\S{1,5}|\s+")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")

_TOPICS = [
    ("Streaming answers", "流式输出"),
    ("Offsets and resumes", "オフセット"),
    ("Checkpoints, not per-token writes", "检查点"),
    ("Back-pressure in practice", "배압"),
    ("Keep-alive pings", "心跳包"),
]
_WORDS = [
    "token", "socket", "offset", "delta", "stream", "answer", "browser", "server", "checkpoint", "frame", "window",
    "retry", "buffer", "model", "latency", "client", "watcher", "group", "message", "cursor", "chunk", "reload",
]  # fmt: skip
_ACCENTED = ["café", "naïve", "façade", "Grüße", "São Paulo", "crème brûlée", "smörgåsbord", "jalapeño", "Øresund"]
_CJK = ["中文字符", "日本語のテキスト", "한국어 문장", "漢字", "東京タワー"]
_RTL = ["שלום עולם", "مرحبا بالعالم"]
_EMOJI = ["🚀", "🎉", "🧪", "✨", "📦"]
_ZWJ = ["👩\u200d💻", "👨\u200d👩\u200d👧", "🧑\u200d🚀"]
_FLAGS = ["🇯🇵", "🇧🇷", "🇺🇳", "🇫🇷", "🇰🇪"]
_COMBINING = ["e\u0301tude", "re\u0301sume\u0301", "pin\u0303ata"]
_CODE = [
    'def greet(name: str) -> str:\n    return f"¡Hola, {name}! 👋"',
    'lengths = {"café": 4, "🇯🇵": 2}\nfor word, length in lengths.items():\n    assert len(word) == length',
    "async def relay(tokens):\n    async for token in tokens:\n        yield token  # 逐个发送",
]


def tokenize(text: str) -> list[str]:
    """How the simulator cuts text into content deltas (roughly 1-6 characters); they join back to `text`."""
    return _TOKEN.findall(text)


def _text_of(content: Any) -> str:
    """The text of a message's content: a string, or the text parts of a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


def _last_user_text(messages: list[Any]) -> str:
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return _text_of(message.get("content"))
    return ""


def _sentence(rng: random.Random, spice: str) -> str:
    words = [rng.choice(_WORDS) for _ in range(rng.randint(5, 11))]
    words.insert(rng.randint(1, len(words)), spice)
    text = " ".join(words)
    return text[0].upper() + text[1:] + "."


def _document(rng: random.Random) -> str:
    """One markdown answer with non-ASCII text in every block."""
    title, native = rng.choice(_TOPICS)
    opening = (
        f"## {title} — {native}"
        if rng.random() < 0.5
        else f"**{title}** ({native}): {_sentence(rng, rng.choice(_ACCENTED))}"
    )
    paragraph = " ".join(
        [_sentence(rng, rng.choice(_ACCENTED)), _sentence(rng, rng.choice(_CJK)), _sentence(rng, rng.choice(_EMOJI))]
    )
    spices = [rng.choice(_ZWJ), rng.choice(_FLAGS), rng.choice(_ACCENTED), rng.choice(_CJK)]
    numbered = rng.random() < 0.5
    items = "\n".join(
        f"{n}. {_sentence(rng, spice)}" if numbered else f"- **{rng.choice(_WORDS)}**: {_sentence(rng, spice)}"
        for n, spice in enumerate(spices, start=1)
    )
    code = f"```python\n{rng.choice(_CODE)}\n```"
    # U+2028 is a line separator inside one paragraph: JSON and SSE must carry it through untouched.
    closing = f"{_sentence(rng, f'({rng.choice(_RTL)})')}\u2028{_sentence(rng, rng.choice(_COMBINING))}"
    return "\n\n".join([opening, paragraph, items, code, closing])


def answer_text(messages: list[dict[str, Any]], options: DevOptions) -> str:
    """The exact content text the simulator streams for these messages and options (before `max_tokens`).

    With `echo` it is the last user message; after a tool's result (the last message has role `tool`), a
    sentence that quotes it; with `tools` there is no content (a tool call is streamed); otherwise generated
    markdown, seeded by the last user message and cut to `options.tokens` deltas.
    """
    prompt = _LONE_SURROGATE.sub("\ufffd", _last_user_text(messages))
    if options.echo:
        return prompt
    if _answers_tool_result(messages):
        return "The tool answered: " + _LONE_SURROGATE.sub("\ufffd", _text_of(messages[-1].get("content")))
    if options.tools:
        return ""
    rng = random.Random(hashlib.sha256(prompt.encode()).digest())  # noqa: S311 - filler text, not secrets
    pieces: list[str] = []
    while len(pieces) < options.tokens:
        pieces.extend(tokenize(("\n\n" if pieces else "") + _document(rng)))
    return "".join(pieces[: options.tokens])


def _answers_tool_result(messages: list[Any]) -> bool:
    return bool(messages) and isinstance(messages[-1], dict) and messages[-1].get("role") == "tool"


def _tool_call(messages: list[dict[str, Any]], tools: Any = None) -> tuple[str, str]:
    """The name and JSON arguments of the tool call streamed in `tools` mode: the first tool the request offers
    (`search_docs` if it offers none)."""
    query = _LONE_SURROGATE.sub("\ufffd", _last_user_text(messages))[:60]
    arguments = {"query": query, "language": "fr", "limit": 3, "note": "café ☕ 東京"}
    name = "search_docs"
    if isinstance(tools, list) and tools and isinstance(tools[0], dict):
        function = tools[0].get("function")
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            name = function["name"]
    return name, json.dumps(arguments, ensure_ascii=False)


# --- records -----------------------------------------------------------------------------------------------

Outcome = Literal["streaming", "complete", "client_disconnected", "fault", "error"]


@dataclass
class RequestRecord:
    """One chat completion request as the simulator saw it."""

    seq: int
    model: str
    key: str
    prompt: str  # the last user message
    started: float  # time.monotonic()
    messages: int = 0  # how many messages the request sent (system prompt included)
    # Each message's role, with "+tools" for an assistant message that calls tools: what the request sent.
    roles: list[str] = field(default_factory=list)
    # The request's other fields (stop, seed, top_p, response_format...), as received; not acted upon.
    parameters: dict[str, Any] = field(default_factory=dict)
    tokens_sent: int = 0
    outcome: Outcome = "streaming"
    ended: float | None = None

    def end(self, outcome: Outcome) -> None:
        """Records how the request ended; the first ending wins (a fault stays a fault when the client leaves)."""
        if self.outcome == "streaming":
            self.outcome, self.ended = outcome, time.monotonic()


@dataclass
class DevStats:
    """What the simulator saw. Written on its event loop; safe to read from another thread."""

    records: deque[RequestRecord] = field(default_factory=lambda: deque(maxlen=MAX_RECORDS))
    connections: int = 0  # TCP connections accepted
    requests: int = 0  # HTTP requests of any kind
    _seq: Iterator[int] = field(default_factory=lambda: itertools.count(1), repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(
        self,
        *,
        model: str,
        key: str,
        prompt: str,
        messages: int = 0,
        parameters: dict[str, Any] | None = None,
        roles: list[str] | None = None,
    ) -> RequestRecord:
        with self._lock:
            record = RequestRecord(
                next(self._seq),
                model,
                key,
                prompt,
                time.monotonic(),
                messages=messages,
                parameters=parameters or {},
                roles=roles or [],
            )
            self.records.append(record)
            return record

    def find(self, key: str) -> list[RequestRecord]:
        """The chat completion requests whose `key` option is `key`, oldest first."""
        with self._lock:
            return [record for record in self.records if record.key == key]


# --- HTTP plumbing -----------------------------------------------------------------------------------------


@dataclass
class _Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def wants_close(self) -> bool:
        return self.headers.get("connection", "").lower() == "close"


class _BadRequest(Exception):
    """A request that cannot be parsed; it is answered and the connection closed."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


async def _read_request(reader: asyncio.StreamReader) -> _Request | None:
    """The next request on the connection, or None when the client closed it between requests."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial.strip():
            raise
        return None
    except asyncio.LimitOverrunError:
        raise _BadRequest(431, "Request head too large.") from None
    request_line, *header_lines = head.decode("latin-1").split("\r\n")
    parts = request_line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise _BadRequest(400, "Malformed request line.")
    headers = {}
    for line in header_lines:
        name, colon, value = line.partition(":")
        if colon:
            headers[name.strip().lower()] = value.strip()
    if "transfer-encoding" in headers:
        raise _BadRequest(411, "Request bodies must have a Content-Length.")
    try:
        length = int(headers.get("content-length", "0"))
    except ValueError:
        raise _BadRequest(400, "Bad Content-Length.") from None
    if not 0 <= length <= MAX_BODY_BYTES:
        raise _BadRequest(413, "Request body too large.")
    body = await reader.readexactly(length) if length else b""
    return _Request(parts[0], parts[1].split("?", 1)[0], headers, body)


def _head(status: int, headers: dict[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", "X-Simulator: devllm"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def _send(
    writer: asyncio.StreamWriter, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None
) -> None:
    all_headers = {"Content-Type": content_type, "Content-Length": str(len(body)), **(headers or {})}
    writer.write(_head(status, all_headers) + body)
    await writer.drain()


async def _send_json(
    writer: asyncio.StreamWriter, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None
) -> None:
    await _send(writer, status, json.dumps(payload, ensure_ascii=False).encode(), "application/json", headers)


def _error(message: str, kind: str, code: str) -> dict[str, Any]:
    """An error body in OpenAI's shape."""
    return {"error": {"message": message, "type": kind, "code": code}}


class _Connection:
    """One client connection.

    A task reads requests ahead of the responses: that is how a client hanging up mid-stream is noticed at
    once (EOF on the socket) without losing the next request of a client that reuses the connection.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        # Unbounded, but a client sends its next request only after reading the answer (httpx never pipelines).
        self.requests: asyncio.Queue[_Request | _BadRequest | None] = asyncio.Queue()
        self.gone = asyncio.Event()

    async def read_requests(self) -> None:
        try:
            while (request := await _read_request(self.reader)) is not None:
                self.requests.put_nowait(request)
        except _BadRequest as exc:
            # Answered before the connection closes: the client is still there to read why.
            self.requests.put_nowait(exc)
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self.gone.set()
            self.requests.put_nowait(None)

    async def until_gone(self, writing: asyncio.Task[None]) -> bool:
        """Waits for a response writer, cancelling it if the client goes away first; whether it finished."""
        gone = asyncio.ensure_future(self.gone.wait())
        try:
            await asyncio.wait({writing, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not writing.done():
                writing.cancel()
                # Let it unwind before the connection closes under it.
                await asyncio.wait({writing})
        if writing.cancelled() or isinstance(writing.exception(), ConnectionError):
            return False
        writing.result()
        return True


# --- the server ----------------------------------------------------------------------------------------------


class DevLLM:
    """The simulator server. `start()` binds it and returns its base URL (ending in /v1)."""

    def __init__(self, *, models: list[str] | None = None, defaults: DevOptions | None = None) -> None:
        self.models = list(models) if models else ["dev"]
        self.defaults = defaults if defaults is not None else DevOptions()
        self.stats = DevStats()
        self.base_url = ""
        self._server: asyncio.Server | None = None
        self._handlers: dict[asyncio.Task[Any], asyncio.StreamWriter] = {}
        self._failures: Counter[str] = Counter()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        self._server = await asyncio.start_server(self._handle, host, port, limit=MAX_HEAD_BYTES)
        bound = self._server.sockets[0].getsockname()[1]
        netloc = f"[{host}]:{bound}" if ":" in host else f"{host}:{bound}"
        self.base_url = f"http://{netloc}/v1"
        return self.base_url

    async def stop(self) -> None:
        """Stops listening and cuts every open connection."""
        if self._server is None:
            return
        self._server.close()
        # Aborting the sockets ends each handler the way a vanished client does; cancelling the handlers
        # instead would make asyncio log their cancellation as an error.
        for writer in self._handlers.values():
            writer.transport.abort()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers[task] = writer
        self.stats.connections += 1
        connection = _Connection(reader, writer)
        reading = asyncio.create_task(connection.read_requests())
        try:
            while (request := await connection.requests.get()) is not None:
                self.stats.requests += 1
                if isinstance(request, _BadRequest):
                    kind = "invalid_request_error"
                    await _send_json(writer, request.status, _error(request.message, kind, "bad_request"))
                    break
                keep_open = await self._respond(request, connection)
                if not keep_open or request.wants_close:
                    break
        except ConnectionError:
            pass
        except Exception:
            log.exception("devllm simulator: a connection failed")
        finally:
            reading.cancel()
            writer.close()
            if task is not None:
                self._handlers.pop(task, None)

    async def _respond(self, request: _Request, connection: _Connection) -> bool:
        """Answers one request; whether the connection may serve another."""
        writer = connection.writer
        headers = {"Connection": "close"} if request.wants_close else None
        if request.method == "GET" and request.path == "/v1/models":
            models = [{"id": name, "object": "model", "created": 0, "owned_by": FINGERPRINT} for name in self.models]
            await _send_json(writer, 200, {"object": "list", "data": models}, headers)
            return True
        if request.method == "POST" and request.path == "/v1/chat/completions":
            return await self._chat(request, connection, headers)
        message = f"Unknown route {request.method} {request.path} (devllm simulator)."
        await _send_json(writer, 404, _error(message, "invalid_request_error", "not_found"), headers)
        return True

    async def _chat(self, request: _Request, connection: _Connection, headers: dict[str, str] | None) -> bool:
        writer = connection.writer
        try:
            body = json.loads(request.body)
        except ValueError:
            message = "The request body is not valid JSON (devllm simulator)."
            await _send_json(writer, 400, _error(message, "invalid_request_error", "invalid_json"), headers)
            return True
        if not (
            isinstance(body, dict) and isinstance(body.get("model"), str) and isinstance(body.get("messages"), list)
        ):
            message = "The body needs a `model` string and a `messages` list (devllm simulator)."
            await _send_json(writer, 400, _error(message, "invalid_request_error", "invalid_request"), headers)
            return True
        model: str = body["model"]
        messages: list[dict[str, Any]] = body["messages"]
        try:
            name, options = parse_model(model, self.defaults)
        except ValueError as exc:
            record = self.stats.add(model=model, key="", prompt=_last_user_text(messages))
            record.end("error")
            message = f"Bad simulator options in {model!r}: {exc}"
            await _send_json(writer, 400, _error(message, "invalid_request_error", "invalid_model_options"), headers)
            return True
        known = {"model", "messages", "stream", "stream_options", "temperature", "max_tokens"}
        record = self.stats.add(
            model=model,
            key=options.key,
            prompt=_last_user_text(messages),
            messages=len(messages),
            parameters={name: value for name, value in body.items() if name not in known},
            roles=[
                str(message.get("role")) + ("+tools" if message.get("tool_calls") else "")
                for message in messages
                if isinstance(message, dict)
            ],
        )
        if name not in self.models:
            record.end("error")
            message = f"The model {name!r} does not exist (devllm simulator serves {', '.join(self.models)})."
            await _send_json(writer, 404, _error(message, "invalid_request_error", "model_not_found"), headers)
            return True

        fault = self._fault(options)
        if fault in HTTP_FAULTS:
            record.end("fault")
            status, kind, code, message = HTTP_FAULTS[fault]
            retry_after = {"Retry-After": "1"} if status == 429 else {}
            await _send_json(writer, status, _error(message, kind, code), {**retry_after, **(headers or {})})
            return True
        if fault == "close":
            record.end("fault")
            writer.transport.abort()
            return False
        if fault == "not_sse":
            record.end("fault")
            page = b"<!doctype html><html><body><h1>502 Bad Gateway</h1><p>devllm simulator</p></body></html>"
            await _send(writer, 200, page, "text/html; charset=utf-8", headers)
            return True

        answer = _Answer(model, messages, options, body)
        if not body.get("stream"):
            await _send_json(writer, 200, answer.whole(), headers)
            record.tokens_sent = len(answer.deltas)
            record.end("complete")
            return True
        stream = _Stream(writer, answer, record, fault, close=bool(headers))
        try:
            finished = await connection.until_gone(asyncio.create_task(stream.run()))
        except Exception:
            record.end("error")
            raise
        if not finished:
            record.end("client_disconnected")
            return False
        return stream.reusable

    def _fault(self, options: DevOptions) -> str | None:
        """The fault to inject into this request: with `fail_times`, only into the first N with the same key."""
        if options.fault is None or options.fail_times == 0:
            return options.fault
        self._failures[options.key] += 1
        return options.fault if self._failures[options.key] <= options.fail_times else None


class _Answer:
    """What one request gets: the deltas, how it finishes, and its usage."""

    def __init__(self, model: str, messages: list[dict[str, Any]], options: DevOptions, body: dict[str, Any]) -> None:
        self.model = model
        self.options = options
        self.id = f"chatcmpl-devllm-{uuid.uuid4().hex[:16]}"
        self.created = int(time.time())
        self.include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        self.prompt_tokens = sum(
            len(_text_of(message.get("content")).split()) for message in messages if isinstance(message, dict)
        )
        deltas: list[dict[str, Any]]
        self.calls_tool = options.tools and not _answers_tool_result(messages)
        if self.calls_tool:
            self.tool_name, arguments = _tool_call(messages, body.get("tools"))
            function = {"name": self.tool_name, "arguments": ""}
            first = {"index": 0, "id": "call_devllm_0", "type": "function", "function": function}
            pieces = [{"index": 0, "function": {"arguments": piece}} for piece in tokenize(arguments)]
            deltas = [{"tool_calls": [first]}, *({"tool_calls": [piece]} for piece in pieces)]
            self.finish_reason = "tool_calls"
        else:
            deltas = [{"content": token} for token in tokenize(answer_text(messages, options))]
            self.finish_reason = "stop"
        # Made-up but well-formed log probabilities, when asked for: one entry per streamed piece of text.
        self.logprobs = body.get("logprobs") is True
        self.top_logprobs = body.get("top_logprobs") if isinstance(body.get("top_logprobs"), int) else 0
        max_tokens = body.get("max_tokens")
        if isinstance(max_tokens, int) and not isinstance(max_tokens, bool) and 0 < max_tokens < len(deltas):
            deltas, self.finish_reason = deltas[:max_tokens], "length"
        self.deltas = deltas

    def usage(self, completion_tokens: int) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": self.prompt_tokens + completion_tokens,
        }

    def token_logprob(self, token: str) -> dict[str, Any]:
        """A made-up log probability entry for one piece of text, with `top_logprobs` alternatives."""
        entry = {"token": token, "logprob": -0.25, "bytes": list(token.encode())}
        alternatives = [{"token": token, "logprob": -0.25, "bytes": list(token.encode())}]
        alternatives += [{"token": f"alt{n}", "logprob": -2.0 - n, "bytes": list(f"alt{n}".encode())} for n in range(8)]
        return {**entry, "top_logprobs": alternatives[: self.top_logprobs]}

    def whole(self) -> dict[str, Any]:
        """The non-streaming response body."""
        message: dict[str, Any] = {"role": "assistant", "content": None}
        if self.calls_tool:
            arguments = "".join(delta["tool_calls"][0]["function"].get("arguments", "") for delta in self.deltas)
            function = {"name": self.tool_name, "arguments": arguments}
            message["tool_calls"] = [{"id": "call_devllm_0", "type": "function", "function": function}]
        else:
            message["content"] = "".join(delta["content"] for delta in self.deltas)
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": FINGERPRINT,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": self.finish_reason,
                    "logprobs": {"content": [self.token_logprob(d["content"]) for d in self.deltas if d.get("content")]}
                    if self.logprobs
                    else None,
                }
            ],
            "usage": self.usage(len(self.deltas)),
        }


class _Stream:
    """Writes one answer as a server-sent event stream in a chunked HTTP body, one network write per event."""

    def __init__(
        self, writer: asyncio.StreamWriter, answer: _Answer, record: RequestRecord, fault: str | None, *, close: bool
    ) -> None:
        self.writer = writer
        self.answer = answer
        self.options = answer.options
        self.record = record
        self.fault = fault if fault in MIDSTREAM_FAULTS else None
        self.close = close
        self.reusable = False  # whether the body was ended properly, so the connection can serve another request
        self.clock = 0.0  # when the first content delta went out; later ones are paced from it
        eol = EOLS[self.options.eol]
        self.prefix = "data:" if self.options.nospace else "data: "
        self.event_end = eol + eol
        self.comment = f": keep-alive{eol}{eol}".encode()
        # Every chunk shares its envelope, serialised once without the closing brace; per token only the
        # delta is serialised, which keeps the simulator cheap when benchmarks drive many streams.
        envelope = {
            "id": answer.id,
            "object": "chat.completion.chunk",
            "created": answer.created,
            "model": answer.model,
            "system_fingerprint": FINGERPRINT,
        }
        self.envelope = json.dumps(envelope, ensure_ascii=False)[:-1]

    async def run(self) -> None:
        headers = {
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-cache",
            "Transfer-Encoding": "chunked",
        }
        if self.close:
            headers["Connection"] = "close"
        self.writer.write(_head(200, headers))
        await self._chunk({"role": "assistant", "content": ""})
        await self._pause(self.options.ttft)
        self.clock = time.monotonic()
        deltas = self.answer.deltas
        cut = min(self.options.fault_after, len(deltas)) if self.fault else len(deltas)
        await self._deltas(0, cut)
        if self.fault == "midstream_error":
            error = {"message": "The model crashed in the middle of the answer (simulated).", "type": "server_error"}
            await self._data(json.dumps({"error": error}))
            await self._end_body(done=False)
            self.record.end("fault")
            return
        if self.fault == "drop":
            self.record.end("fault")
            self.writer.transport.abort()
            return
        if self.fault == "stall":
            self.record.end("fault")
            await self._stall()
        if self.fault == "malformed":
            await self._data("{not json")
        await self._deltas(cut, len(deltas))
        await self._chunk({}, self.answer.finish_reason)
        if self.answer.include_usage:
            usage = json.dumps(self.answer.usage(self.record.tokens_sent))
            await self._data(f'{self.envelope}, "choices": [], "usage": {usage}}}')
        await self._end_body(done=not self.options.nodone)
        self.record.end("complete")

    async def _deltas(self, start: int, stop: int) -> None:
        paced = self.options.tps < UNPACED_TPS
        for index in range(start, stop):
            if paced:
                await self._pause(self.clock + index / self.options.tps - time.monotonic())
            await self._chunk(self.answer.deltas[index])
            self.record.tokens_sent += 1

    async def _end_body(self, *, done: bool) -> None:
        if done:
            await self._data("[DONE]")
        self.writer.write(b"0\r\n\r\n")
        await self.writer.drain()
        self.reusable = True

    async def _pause(self, seconds: float) -> None:
        """Sleeps; with `comments`, sends keep-alive comment lines meanwhile, as real servers and proxies do."""
        every = self.options.comments
        deadline = time.monotonic() + seconds
        while every > 0 and deadline - time.monotonic() > every:
            await asyncio.sleep(every)
            await self._write(self.comment)
        left = deadline - time.monotonic()
        if left > 0:
            await asyncio.sleep(left)

    async def _stall(self) -> NoReturn:
        """Sends no more data (only keep-alive comments, if asked for) until the client goes away."""
        while True:
            if self.options.comments > 0:
                await asyncio.sleep(self.options.comments)
                await self._write(self.comment)
            else:
                await asyncio.sleep(3600)

    async def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> None:
        delta_json, finish = json.dumps(delta, ensure_ascii=False), json.dumps(finish_reason)
        if self.answer.logprobs and delta.get("content"):
            entries = json.dumps({"content": [self.answer.token_logprob(delta["content"])]}, ensure_ascii=False)
            choice = f'{{"index": 0, "delta": {delta_json}, "logprobs": {entries}, "finish_reason": {finish}}}'
        else:
            choice = f'{{"index": 0, "delta": {delta_json}, "finish_reason": {finish}}}'
        await self._data(f'{self.envelope}, "choices": [{choice}]}}')

    async def _data(self, data: str) -> None:
        await self._write(f"{self.prefix}{data}{self.event_end}".encode())

    async def _write(self, payload: bytes) -> None:
        """One HTTP chunk and one write per event; with `split`, per piece of `split` bytes (UTF-8 cut too)."""
        size = self.options.split or len(payload)
        for start in range(0, len(payload), size):
            piece = payload[start : start + size]
            self.writer.write(b"%x\r\n%b\r\n" % (len(piece), piece))
            await self.writer.drain()


# --- the embedded instance -----------------------------------------------------------------------------------

_embedded: dict[asyncio.AbstractEventLoop, tuple[DevLLM, asyncio.Task[str]]] = {}


async def embedded_base_url() -> str:
    """The base URL of a simulator running inside this process, started on first use (once per event loop).

    This is the zero-configuration upstream, used when LLM_BASE_URL is empty. It listens on an ephemeral
    loopback port and serves the models named in LLM_MODELS.
    """
    loop = asyncio.get_running_loop()
    if loop not in _embedded:
        # Tests run one event loop each; a closed loop's simulator went with it.
        for stale in [other for other in _embedded if other.is_closed()]:
            del _embedded[stale]
        server = DevLLM(models=list(settings.LLM_MODELS))
        _embedded[loop] = (server, loop.create_task(server.start()))
    return await asyncio.shield(_embedded[loop][1])
