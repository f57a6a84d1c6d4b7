"""The upstream client: OpenAI-compatible streaming chat completions, read as typed events.

`stream_chat()` posts to `{LLM_BASE_URL}/chat/completions` (or to the embedded dev simulator when
LLM_BASE_URL is empty) and yields `TextDelta` and `ToolCallDelta` events, then one `StreamEnd`. Every failure
is an `UpstreamError` whose `code` is stable (clients and the wire protocol rely on it) and whose `message` a
user can read:

=========================  ===================================================================  ================
code                       cause                                                                retried
=========================  ===================================================================  ================
``upstream_auth``          401/403: the server's API key was refused (check LLM_API_KEY)        never
``model_not_found``        404, or an error whose code is ``model_not_found``                   never
``rate_limited``           429; waits ``Retry-After``, capped by LLM_RETRY_MAX_WAIT             before 1st token
``upstream_unavailable``   5xx                                                                  before 1st token
``upstream_connection``    cannot connect, or the connection broke before the first token      before 1st token
``upstream_error``         an error object inside the stream, or another 4xx (its message)      never
``bad_upstream_response``  a 200 that is not ``text/event-stream``                              never
``upstream_dropped``       the connection broke or the body was cut after the first token       never
``upstream_stalled``       no data event for ``stall_seconds``, keep-alive comments or not      never
=========================  ===================================================================  ================

Retries (at most LLM_MAX_RETRIES, with exponential backoff unless the server says when) happen only before
the generator has yielded its first `TextDelta` or `ToolCallDelta`: after that a retry would repeat text.

Closing the generator (`aclose()`, or cancelling the task iterating it) closes the HTTP response at once, and
with it the connection, so the model server stops generating.
"""

import asyncio
import codecs
import contextlib
import email.utils
import functools
import itertools
import json
import logging
import re
import time
import urllib.request
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import Any, cast

import aiohttp
import httpx
import orjson
from django.conf import settings

# httpx-sse's own parser (its line splitting and its event fields, as the specification has them) fed with the
# body's bytes directly: its EventSource reads through httpx's text decoding, three generators more per event.
from httpx_sse._decoders import SSEDecoder, SSELineDecoder

from streaming.transport import AiohttpTransport, Body

log = logging.getLogger(__name__)

BACKOFF_FIRST_WAIT = 0.5  # seconds before the first retry of a failure that names no wait; doubles after
ERROR_BODY_LIMIT = 16 * 1024  # bytes of an error response read for its message
# A JSON escape like "\ud83d" with no partner decodes to a lone surrogate, which UTF-8 (the database, Redis,
# the socket) cannot carry: it is replaced, as an undecodable byte would be.
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
MESSAGE_LIMIT = 300  # characters of an upstream error message passed on
# After [DONE], how long to wait for the end of the HTTP body: read to its end, the connection goes back to
# the pool for the next request instead of being closed (a new TLS handshake costs the next first token).
DRAIN_SECONDS = 0.25
KEEPALIVE_SECONDS = 30  # an idle connection to the model server is kept this long for the next answer


@dataclass(frozen=True)
class ChatRequest:
    model: str
    messages: list[dict[str, Any]]  # OpenAI chat messages
    temperature: float | None = None
    max_tokens: int | None = None
    parameters: dict[str, Any] = field(default_factory=dict)  # further request fields, sent as they are


@dataclass(slots=True)  # not frozen: one is made per token, and a frozen dataclass is slower to make
class TextDelta:
    text: str
    # The token log probabilities the model sent with this text (OpenAI's logprobs.content), when asked for.
    logprobs: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class ToolCallDelta:
    """The state of one tool call so far, emitted each time it grows."""

    index: int
    id: str
    name: str
    arguments: str  # JSON text, complete only once the stream has ended


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int | None
    completion_tokens: int | None
    total_tokens: int | None


@dataclass(frozen=True)
class StreamEnd:
    """Always the last event of a stream that ended normally."""

    finish_reason: str | None
    usage: Usage | None
    malformed_chunks: int  # chunks that were not JSON objects, skipped


UpstreamEvent = TextDelta | ToolCallDelta | StreamEnd


class UpstreamError(Exception):
    """A failure of the upstream, with a stable `code` and a `message` a user can read."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        status: int | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status  # the HTTP status, when the failure was one
        self.retryable = retryable  # whether trying again may succeed (it is done only before the first token)
        self.retry_after = retry_after  # the wait the server asked for, in seconds

    def __repr__(self) -> str:
        return f"UpstreamError({self.code!r}, {self.message!r}, status={self.status!r})"


async def base_url() -> str:
    """LLM_BASE_URL, or without it the URL of the simulator embedded in this process.

    The simulator is a dev app (`devllm`): it is imported here, on first use, and only when no model server
    is configured, so a production process never loads it.
    """
    if settings.LLM_BASE_URL:
        return str(settings.LLM_BASE_URL)
    from devllm.simulator import embedded_base_url

    return await embedded_base_url()


# --- the shared transport ---------------------------------------------------------------------------------

_transports: dict[asyncio.AbstractEventLoop, AiohttpTransport] = {}


def _transport() -> AiohttpTransport:
    """The connection pool of the running event loop: one per process under daphne.

    httpx's transport interface on aiohttp's connections (streaming.transport). Requests go to the
    transport directly, without an httpx.AsyncClient around it: a client's per-request work (merging
    defaults, the auth and redirect flows, a cookie jar that parses every response) is all unneeded here, and
    cost a visible share of each answer's CPU. No pool-wide cap: concurrency is bounded per user by the
    engine, and a cap would queue whole answers behind each other. The environment (proxy variables) is read
    once, here: with `trust_env` aiohttp read it, and ~/.netrc, on a thread of the loop's executor for every
    request, which put each answer's first byte behind whatever else that executor was doing.

    Connections belong to the loop that opened them, so a process running several loops (the tests) needs
    a pool for each.
    """
    loop = asyncio.get_running_loop()
    transport = _transports.get(loop)
    if transport is None:
        _forget_closed_loops()
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=KEEPALIVE_SECONDS), trust_env=False
        )
        transport = _transports[loop] = AiohttpTransport(session, proxy=_proxy_from_environment())
    return transport


def _proxy_from_environment() -> str | None:
    """The proxy the environment names for the model server (HTTPS_PROXY, HTTP_PROXY, ALL_PROXY and
    NO_PROXY, as httpx and curl read them), if any."""
    url = httpx.URL(settings.LLM_BASE_URL or "http://127.0.0.1")
    if urllib.request.proxy_bypass(url.host):
        return None
    proxies = urllib.request.getproxies()
    return proxies.get(url.scheme) or proxies.get("all")


def _forget_closed_loops() -> None:
    for loop in [loop for loop in _transports if loop.is_closed()]:
        del _transports[loop]


async def aclose_clients() -> None:
    """Closes the running event loop's connection pool (call it at shutdown) and forgets those of closed loops."""
    transport = _transports.pop(asyncio.get_running_loop(), None)
    _forget_closed_loops()
    if transport is not None:
        await transport.aclose()


def _timeout(stall: float) -> httpx.Timeout:
    """Connecting and sending are bounded by LLM_CONNECT_TIMEOUT; waiting for bytes by the stall limit.

    The read timeout only covers the wait for the response head and bytes in general; the stall limit proper
    (data events, not comments) is enforced around each event in `stream_chat`.
    """
    connect = settings.LLM_CONNECT_TIMEOUT
    return httpx.Timeout(connect=connect, read=stall, write=connect, pool=connect)


@functools.lru_cache(maxsize=8)
def _parsed(url: str) -> httpx.URL:
    """The URL parsed once (httpx parses a URL given as a string on every request)."""
    return httpx.URL(url)


@contextlib.asynccontextmanager
async def _post(url: str, body: dict[str, Any], stall: float) -> AsyncIterator[httpx.Response]:
    """POSTs `body` as JSON and yields the streamed response, closed on the way out (closing it before its end
    closes the connection, which is how the model server learns that it may stop)."""
    request = httpx.Request(
        "POST",
        _parsed(url),
        json=body,
        headers=_headers(),
        extensions={"timeout": _timeout(stall).as_dict()},
    )
    response = await _transport().handle_async_request(request)
    try:
        yield response
    finally:
        await response.aclose()


# --- streaming -------------------------------------------------------------------------------------------


async def stream_chat(
    request: ChatRequest, *, stall_seconds: float | None = None, pace: float = 0.0
) -> AsyncGenerator[UpstreamEvent, None]:
    """Streams one chat completion as events; see the module docstring for failures and retries.

    The body is read here, in one loop, chunk by chunk with httpx-sse's parser: every layer of generators
    between the connection and the generation costs CPU for every token.

    `pace`: once the first text has been yielded, the body is read at most once per `pace` seconds, and each
    read takes every event that arrived meanwhile. A consumer that sends text on in batches of that window
    (the generation coalesces its deltas) loses nothing by it, and the process is woken once per window
    instead of once per token.
    """
    url = f"{await base_url()}/chat/completions"
    stall = settings.LLM_STALL_SECONDS if stall_seconds is None else stall_seconds
    body = _body(request)
    started = False  # whether a token has been yielded: from then on, never retry
    for attempt in itertools.count():
        assembler = _Assembler()
        try:
            try:
                async with _post(url, body, stall) as response:
                    await _check_response(response, request.model)
                    chunks = cast(Body, response.stream)
                    lines, fields = SSELineDecoder(), SSEDecoder()
                    text = codecs.getincrementaldecoder("utf-8")(errors="replace")
                    guard = _StallGuard(stall)
                    loop = asyncio.get_running_loop()
                    read_at = 0.0
                    try:
                        done = False
                        while not done:
                            if guard.reading_since is None:
                                # After an event (or first): a read begins, in the task that now reads.
                                guard.reading()
                            try:
                                if started and pace and (wait := read_at + pace - loop.time()) > 0:
                                    # Part of the wait for the next event, as far as the stall guard goes.
                                    await asyncio.sleep(wait)
                                chunk = await anext(chunks)
                                read_at = loop.time()
                                received = lines.decode(text.decode(chunk))
                            except StopAsyncIteration:
                                received, done = lines.decode(text.decode(b"", final=True)) + lines.flush(), True
                            except asyncio.CancelledError:
                                guard.raise_if_stalled()
                                raise
                            for line in received:
                                sse = fields.decode(line)
                                if sse is None:
                                    continue  # a field, a comment (keep-alive): no event yet
                                guard.idle()
                                if sse.data == "[DONE]":
                                    await _drain(chunks)
                                    done = True
                                    break
                                for event in assembler.feed(sse.data):
                                    started = True
                                    yield event
                    finally:
                        guard.close()
            except httpx.RequestError as exc:
                raise _transport_error(exc, started=started, stall=stall) from exc
        except UpstreamError as exc:
            if started or not exc.retryable or attempt >= settings.LLM_MAX_RETRIES:
                raise
            wait = exc.retry_after if exc.retry_after is not None else BACKOFF_FIRST_WAIT * 2**attempt
            wait = min(wait, settings.LLM_RETRY_MAX_WAIT)
            log.warning(
                "upstream request failed; retrying",
                extra={"code": exc.code, "status": exc.status, "attempt": attempt + 1, "wait": wait},
            )
            await asyncio.sleep(wait)
            continue
        yield assembler.end()
        return


def _token_logprobs(choice: dict[str, Any]) -> tuple[dict[str, Any], ...]:
    """OpenAI's `logprobs.content` of a chunk's choice (present only when the request asked for them)."""
    logprobs = choice.get("logprobs")
    entries = logprobs.get("content") if isinstance(logprobs, dict) else None
    return tuple(entry for entry in entries if isinstance(entry, dict)) if isinstance(entries, list) else ()


def _body(request: ChatRequest) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": request.model,
        "messages": request.messages,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.max_tokens is not None:
        body["max_tokens"] = request.max_tokens
    # Checked where they were accepted (streaming.api.openai_compat): none of them is one of the fields above.
    body.update(request.parameters)
    return body


def _headers() -> dict[str, str]:
    # A new dict each time: aconnect_sse adds its own headers to the one it is given.
    return {"Authorization": f"Bearer {settings.LLM_API_KEY}"} if settings.LLM_API_KEY else {}


class _StallGuard:
    """Ends a read of the event stream that has waited `stall` seconds for an event, with `upstream_stalled`.

    Keep-alive comments do not count as data: the guard measures exactly how long no event came. It only
    ever interrupts a read, never the consumer's work between reads (the `yield` of stream_chat). Unlike an
    `asyncio.timeout` around each read, which schedules and cancels a timer per event (a visible share of the
    CPU per streamed token), it keeps one timer per stream that wakes about once per `stall` seconds and
    looks at when the current read began. The task it interrupts is whichever is reading at the time (an
    answer's first event may be read by another task than the rest).
    """

    def __init__(self, stall: float) -> None:
        self.stall = stall
        self.reading_since: float | None = None  # loop time the current read began; None between reads
        self.fired = False
        self._loop = asyncio.get_running_loop()
        self._task: asyncio.Task[Any] | None = None
        self._cancelling = 0
        self._timer: asyncio.TimerHandle | None = self._loop.call_at(self._loop.time() + stall, self._check)

    def reading(self) -> None:
        """A read begins, in the current task."""
        task = asyncio.current_task()
        if task is not self._task:
            self._task = task
            self._cancelling = task.cancelling() if task is not None else 0
        self.reading_since = self._loop.time()

    def idle(self) -> None:
        self.reading_since = None

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check(self) -> None:
        # Runs from the loop, so the reading task is suspended: if a read is under way, it is waiting in it.
        now = self._loop.time()
        if self.reading_since is not None and now - self.reading_since >= self.stall and self._task is not None:
            self.fired = True
            self._timer = None
            self._task.cancel()
            return
        since = self.reading_since if self.reading_since is not None else now
        self._timer = self._loop.call_at(since + self.stall, self._check)

    def raise_if_stalled(self) -> None:
        """In the reading task's CancelledError: the stall's, and nobody else's (a stop, a shutdown) on top of
        it, becomes `upstream_stalled` (as asyncio.timeout turns its own cancellation into TimeoutError)."""
        self.reading_since = None
        if self.fired and self._task is not None and self._task.uncancel() <= self._cancelling:
            raise _stalled(self.stall) from None


async def _drain(chunks: AsyncIterator[bytes]) -> None:
    """Reads what follows [DONE] (normally only the end of the chunked body), ignoring it, for a bounded time."""
    try:
        async with asyncio.timeout(DRAIN_SECONDS):
            async for _ in chunks:
                pass
    except (TimeoutError, httpx.RequestError):
        # The answer is complete either way; the connection is then closed instead of reused.
        pass


def _stalled(stall: float) -> UpstreamError:
    return UpstreamError("upstream_stalled", f"The model server sent nothing for {stall:g} seconds.")


def _transport_error(exc: httpx.RequestError, *, started: bool, stall: float) -> UpstreamError:
    if isinstance(exc, httpx.ReadTimeout):
        return _stalled(stall)
    if started:
        return UpstreamError(
            "upstream_dropped", "The connection to the model server broke in the middle of the answer."
        )
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        message = "Could not connect to the model server."
    else:
        message = "The model server closed the connection before answering."
    return UpstreamError("upstream_connection", message, retryable=True)


async def _check_response(response: httpx.Response, model: str) -> None:
    """Raises the UpstreamError for a response that is not a 200 event stream."""
    status = response.status_code
    if status == httpx.codes.OK:
        content_type = response.headers.get("content-type", "")
        if content_type.partition(";")[0].strip().lower() != "text/event-stream":
            raise UpstreamError(
                "bad_upstream_response",
                f"The model server answered with {content_type or 'no content type'} instead of an event stream; "
                "check LLM_BASE_URL.",
                status=status,
            )
        return
    message, code = await _error_body(response)
    if status in (401, 403):
        raise UpstreamError(
            "upstream_auth",
            f"The model server refused this server's API key (HTTP {status}); check LLM_API_KEY.",
            status=status,
        )
    if status == 404 or code == "model_not_found":
        raise UpstreamError(
            "model_not_found", f"The model server has no model {model!r} (HTTP {status}): {message}", status=status
        )
    if status == 429:
        raise UpstreamError(
            "rate_limited",
            "The model server is rate limiting requests; try again in a moment.",
            status=status,
            retryable=True,
            retry_after=_retry_after(response.headers.get("retry-after")),
        )
    if status >= 500:
        raise UpstreamError(
            "upstream_unavailable",
            f"The model server is unavailable (HTTP {status}); try again in a moment.",
            status=status,
            retryable=True,
        )
    raise UpstreamError(
        "upstream_error", f"The model server refused the request (HTTP {status}): {message}", status=status
    )


async def _error_body(response: httpx.Response) -> tuple[str, str]:
    """The message and code of an error response (OpenAI's shape, or any text), read up to a bound."""
    raw = b""
    try:
        # The transport bounds only the wait for the head (streaming.transport).
        async with asyncio.timeout(settings.LLM_CONNECT_TIMEOUT):
            async for piece in response.aiter_bytes():
                raw += piece
                if len(raw) >= ERROR_BODY_LIMIT:
                    break
    except (httpx.TransportError, TimeoutError):
        pass  # the status says enough
    text = raw[:ERROR_BODY_LIMIT].decode("utf-8", "replace")
    try:
        payload = json.loads(text)
    except ValueError:
        return _clip(text) or "no details", ""
    error = payload.get("error", payload) if isinstance(payload, dict) else payload
    return _error_fields(error)


def _error_fields(error: Any) -> tuple[str, str]:
    """The message and code of an error object, however loosely shaped."""
    if isinstance(error, dict):
        message = error.get("message") or error.get("detail") or "no details"
        return _clip(str(message)), str(error.get("code") or "")
    return _clip(str(error)) or "no details", ""


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MESSAGE_LIMIT else text[: MESSAGE_LIMIT - 1] + "…"


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header: a number of seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class _Assembler:
    """Turns chunks into events: text deltas, tool calls assembled per index, the finish reason and usage."""

    def __init__(self) -> None:
        self.calls: dict[int, ToolCallDelta] = {}
        self.finish_reason: str | None = None
        self.usage: Usage | None = None
        self.malformed = 0

    def feed(self, data: str) -> list[UpstreamEvent]:
        try:
            # orjson: a chunk is parsed per token, in a quarter of json's time. It refuses what json takes
            # (a lone surrogate escape, an integer beyond 64 bits), hence the second try.
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            try:
                chunk = json.loads(data)
            except ValueError:
                chunk = None
        if not isinstance(chunk, dict):
            self.malformed += 1
            if self.malformed == 1:
                # Never the contents: they are model output.
                log.warning("skipping a malformed chunk from the model server", extra={"size": len(data)})
            return []
        # OpenAI sends {"error": {...}}; vLLM has also sent the error object itself as the chunk.
        error = chunk.get("error") or (chunk if chunk.get("object") == "error" else None)
        if error:
            message, code = _error_fields(error)
            if code == "model_not_found":
                raise UpstreamError("model_not_found", f"The model server has no such model: {message}")
            raise UpstreamError("upstream_error", f"The model server reported an error: {message}")
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.usage = Usage(
                prompt_tokens=_int_or_none(usage.get("prompt_tokens")),
                completion_tokens=_int_or_none(usage.get("completion_tokens")),
                total_tokens=_int_or_none(usage.get("total_tokens")),
            )
        events: list[UpstreamEvent] = []
        for choice in chunk.get("choices") or ():
            # One answer is requested; a server that sends more choices gets only the first one read.
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta")
            if isinstance(delta, dict):
                content = delta.get("content")
                if isinstance(content, str) and content:
                    events.append(TextDelta(_LONE_SURROGATE.sub("\ufffd", content), _token_logprobs(choice)))
                for position, piece in enumerate(delta.get("tool_calls") or ()):
                    if isinstance(piece, dict) and (call := self._grow(position, piece)) is not None:
                        events.append(call)
            if choice.get("finish_reason"):
                self.finish_reason = str(choice["finish_reason"])
        return events

    def _grow(self, position: int, piece: dict[str, Any]) -> ToolCallDelta | None:
        """Adds a piece to its tool call: id and name come with the first piece, arguments in any number."""
        index = piece.get("index", position)
        index = index if isinstance(index, int) else position
        function = piece.get("function")
        function = function if isinstance(function, dict) else {}
        call = self.calls.get(index) or ToolCallDelta(index=index, id="", name="", arguments="")
        grown = ToolCallDelta(
            index=index,
            id=call.id or str(piece.get("id") or ""),
            name=call.name or str(function.get("name") or ""),
            arguments=call.arguments + str(function.get("arguments") or ""),
        )
        if grown == call:
            return None
        self.calls[index] = grown
        return grown

    def end(self) -> StreamEnd:
        return StreamEnd(finish_reason=self.finish_reason, usage=self.usage, malformed_chunks=self.malformed)


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
