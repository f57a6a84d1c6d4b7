"""The load client: streams over the WebSocket, the SSE API, a blocking POST, or straight from the upstream,
each recording when every piece of text arrived.

What a stream measures:
- time to first token: from sending the request to the first text;
- token lateness: the simulator sends token i at (first token + i / tps). Token i "arrives" with the first
  delta that covers it, and its lateness is how much later than that schedule it arrived. For clients of the
  upstream itself this is the floor (scheduling noise); through the app it also holds the coalescing window
  and every hop. Added inter-token delay = lateness through the app minus the floor.
"""

import asyncio
import json
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import websockets
from httpx_sse import aconnect_sse
from websockets.typing import Origin

from devllm.simulator import DevOptions, answer_text, tokenize


@dataclass
class Stream:
    started: float = 0.0
    arrivals: list[tuple[float, int]] = field(default_factory=list)  # (time, code points received so far)
    frames: int = 0
    bytes: int = 0
    length: int = 0
    error: str | None = None

    @property
    def ttft(self) -> float | None:
        return self.arrivals[0][0] - self.started if self.arrivals else None

    def add(self, text: str) -> None:
        self.length += len(text)
        self.arrivals.append((time.perf_counter(), self.length))


def token_ends(prompt: str, options: DevOptions) -> list[int]:
    """Where each of the simulator's tokens ends in its answer to `prompt`, in code points."""
    ends, position = [], 0
    for token in tokenize(answer_text([{"role": "user", "content": prompt}], options)):
        position += len(token)
        ends.append(position)
    return ends


def token_arrivals(stream: Stream, ends: list[int]) -> list[float]:
    """When each of the simulator's tokens reached the client: with the first delta that covered it."""
    times: list[float] = []
    arrivals, index = stream.arrivals, 0
    for end in ends:
        while index < len(arrivals) and arrivals[index][1] < end:
            index += 1
        if index == len(arrivals):
            break
        times.append(arrivals[index][0])
    return times


def lateness(times: list[float], tps: float) -> list[float]:
    """Each token's arrival minus its place in the simulator's schedule (see the module docstring)."""
    return [arrived - (times[0] + number / tps) for number, arrived in enumerate(times)]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "p50": percentile(values, 0.50),
        "p99": percentile(values, 0.99),
        "mean": statistics.fmean(values) if values else float("nan"),
    }


# --- clients ----------------------------------------------------------------------------------------------


async def upstream_stream(base_url: str, model: str, prompt: str, stream: Stream, client: httpx.AsyncClient) -> None:
    """Straight from the simulator: the floor every other path is compared with."""
    body = {"model": model, "stream": True, "messages": [{"role": "user", "content": prompt}]}
    stream.started = time.perf_counter()
    async with aconnect_sse(client, "POST", f"{base_url}/chat/completions", json=body) as source:
        async for sse in source.aiter_sse():
            stream.frames += 1
            stream.bytes += len(sse.data)
            if sse.data == "[DONE]":
                return
            for choice in json.loads(sse.data).get("choices") or ():
                if text := (choice.get("delta") or {}).get("content"):
                    stream.add(text)


class Socket:
    """One logged-in WebSocket, opened ahead of the measurement and used for one answer."""

    def __init__(self, url: str, origin: str, session: str) -> None:
        self.url, self.origin, self.session = url, origin, session
        self.ws: Any = None

    async def open(self) -> None:
        self.ws = await websockets.connect(
            self.url,
            origin=Origin(self.origin),
            additional_headers={"Cookie": f"sessionid={self.session}"},
            max_size=None,
            open_timeout=60,
        )
        ready = json.loads(await self.ws.recv())
        if ready["type"] != "ready":
            raise RuntimeError(ready)

    async def answer(self, model: str, prompt: str, stream: Stream, conversation: str | None = None) -> None:
        """Sends `prompt` (in a new conversation, or as the next turn of `conversation`) and reads its answer."""
        frame = {
            "type": "send",
            "id": uuid.uuid4().hex,
            "content": prompt,
            "model": model,
            "conversation": conversation,
        }
        stream.started = time.perf_counter()
        await self.ws.send(json.dumps(frame))
        answer = None
        async for raw in self.ws:
            stream.frames += 1
            stream.bytes += len(raw)
            event = json.loads(raw)
            kind = event["type"]
            if kind == "delta" and event["message"] == answer:
                stream.add(event["text"])
            elif kind == "message" and event["message"]["role"] == "assistant":
                answer = event["message"]["id"]
            elif kind == "done" and event["message"] == answer:
                if event["status"] != "complete":
                    stream.error = event["status"]
                return
            elif kind == "error":
                stream.error = event["code"]
                return

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()


async def sse_stream(client: httpx.AsyncClient, model: str, prompt: str, stream: Stream) -> None:
    """The REST API with `stream: true`: server-sent events of the WebSocket's vocabulary."""
    conversation = (await client.post("/api/v1/conversations/", json={})).json()["id"]
    body = {"content": prompt, "model": model, "stream": True}
    stream.started = time.perf_counter()
    async with aconnect_sse(client, "POST", f"/api/v1/conversations/{conversation}/messages/", json=body) as source:
        answer = None
        async for sse in source.aiter_sse():
            stream.frames += 1
            stream.bytes += len(sse.data)
            event = json.loads(sse.data)
            if event["type"] == "message" and event["message"]["role"] == "assistant":
                answer = event["message"]["id"]
            elif event["type"] == "delta" and event["message"] == answer:
                stream.add(event["text"])
            elif event["type"] == "done" and event["message"] == answer:
                return


async def blocking_post(client: httpx.AsyncClient, model: str, prompt: str, stream: Stream) -> None:
    """The REST API with `stream: false`: nothing until the whole answer is there."""
    conversation = (await client.post("/api/v1/conversations/", json={})).json()["id"]
    stream.started = time.perf_counter()
    response = await client.post(
        f"/api/v1/conversations/{conversation}/messages/", json={"content": prompt, "model": model}
    )
    stream.frames, stream.bytes = 1, len(response.content)
    stream.add(response.json()["content"])


async def run_staggered(count: int, spread: float, start: Callable[[int], Awaitable[None]]) -> float:
    """Starts `count` coroutines evenly over `spread` seconds; returns the wall time until all ended."""
    began = time.perf_counter()

    async def later(index: int) -> None:
        await asyncio.sleep(spread * index / max(count, 1))
        await start(index)

    results = await asyncio.gather(*(later(index) for index in range(count)), return_exceptions=True)
    failures = [result for result in results if isinstance(result, BaseException)]
    if failures:
        raise RuntimeError(f"{len(failures)} of {count} streams failed, first: {failures[0]!r}")
    return time.perf_counter() - began
