"""Helpers for tests that run the dev simulator inside the test's own event loop (no threads, no mocks)."""

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
from httpx_sse import aconnect_sse

from devllm.simulator import DevLLM, DevOptions, answer_text, parse_model, tokenize
from streaming import upstream
from streaming.upstream import ChatRequest, StreamEnd, TextDelta, ToolCallDelta, UpstreamError, UpstreamEvent

# Fast enough that a whole test file runs in seconds: no wait for the first token, no sleeps between tokens.
FAST = {"ttft": 0.0, "tps": 5000.0, "tokens": 40}


@asynccontextmanager
async def running_devllm(**defaults: Any) -> AsyncIterator[DevLLM]:
    """A simulator serving the model "dev" on 127.0.0.1:<ephemeral>, closed with this loop's upstream client."""
    server = DevLLM(models=["dev"], defaults=DevOptions(**{**FAST, **defaults}))
    await server.start()
    try:
        yield server
    finally:
        await upstream.aclose_clients()
        await server.stop()


async def eventually(predicate: Callable[[], bool], timeout: float) -> None:
    """Waits until `predicate()` holds, failing the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"not true within {timeout} s"
        await asyncio.sleep(0.01)


def user(content: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": content}]


def expected_text(server: DevLLM, model: str, prompt: str) -> str:
    """What the simulator streams for `model` and `prompt`."""
    return answer_text(user(prompt), parse_model(model, server.defaults)[1])


def expected_prefix(server: DevLLM, model: str, prompt: str, deltas: int) -> str:
    """The text of the first `deltas` content deltas the simulator streams."""
    return "".join(tokenize(expected_text(server, model, prompt))[:deltas])


@dataclass
class Collected:
    events: list[UpstreamEvent]
    error: UpstreamError | None

    @property
    def text(self) -> str:
        return "".join(event.text for event in self.events if isinstance(event, TextDelta))

    @property
    def tool_calls(self) -> list[ToolCallDelta]:
        return [event for event in self.events if isinstance(event, ToolCallDelta)]

    @property
    def end(self) -> StreamEnd:
        last = self.events[-1]
        assert isinstance(last, StreamEnd), f"the stream did not end normally: {self.error!r}"
        return last


async def collect(
    model: str, prompt: str = "hello", *, stall_seconds: float | None = None, max_tokens: int | None = None
) -> Collected:
    """Runs `stream_chat` to its end, keeping the events and the error it ended with, if any."""
    events: list[UpstreamEvent] = []
    try:
        request = ChatRequest(model=model, messages=user(prompt), max_tokens=max_tokens)
        async for event in upstream.stream_chat(request, stall_seconds=stall_seconds):
            events.append(event)
    except UpstreamError as exc:
        return Collected(events, exc)
    return Collected(events, None)


async def raw_stream(base_url: str, body: dict[str, Any] | bytes) -> tuple[httpx.Response, list[str]]:
    """The response and the `data` of every event of a streamed completion, read with a plain client.

    A body given as bytes is sent as is (for JSON that httpx would refuse to encode).
    """
    url = f"{base_url}/chat/completions"
    content: dict[str, Any] = {"content": body} if isinstance(body, bytes) else {"json": body}
    async with httpx.AsyncClient() as client, aconnect_sse(client, "POST", url, **content) as source:
        return source.response, [sse.data async for sse in source.aiter_sse()]


async def raw_bytes(base_url: str, body: dict[str, Any]) -> tuple[httpx.Response, bytes]:
    """The response and its body exactly as sent (after de-chunking)."""
    url = f"{base_url}/chat/completions"
    async with httpx.AsyncClient() as client, client.stream("POST", url, json=body) as response:
        return response, b"".join([piece async for piece in response.aiter_raw()])
