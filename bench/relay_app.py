"""A bare relay, as a peer for the benchmark: raw ASGI, no Django, no Channels, no database.

It speaks just enough of the chat protocol for the load client (`send` in; `ready`, `message`, `delta`,
`done` out), reads the upstream with httpx and httpx-sse, and coalesces as the product does: the first text
at once, then at most one frame per 40 ms window. It shows what moving tokens costs with nothing else around
it. Run by bench/suite.py on uvicorn; never part of the product.
"""

import asyncio
import json
import os
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from httpx_sse import aconnect_sse

UPSTREAM = os.environ.get("LLM_BASE_URL", "")
WINDOW = 0.040
_client: httpx.AsyncClient | None = None
_tasks: set[asyncio.Task[None]] = set()

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


async def application(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    global _client
    if scope["type"] != "websocket":
        return
    if _client is None:
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
        _client = httpx.AsyncClient(timeout=60, limits=limits)
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.send", "text": json.dumps({"type": "ready"})})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        request = json.loads(message.get("text") or "{}")
        if request.get("type") == "send":
            task = asyncio.create_task(_relay(request, send))
            _tasks.add(task)
            task.add_done_callback(_tasks.discard)


async def _relay(request: dict[str, Any], send: Send) -> None:
    async def emit(event: dict[str, Any]) -> None:
        await send({"type": "websocket.send", "text": json.dumps(event, ensure_ascii=False)})

    assert _client is not None  # noqa: S101
    await emit({"type": "message", "message": {"id": "relay", "role": "assistant"}})
    body = {"model": request["model"], "stream": True, "messages": [{"role": "user", "content": request["content"]}]}
    pending: list[str] = []
    offset = 0
    wake = asyncio.Event()
    ended = False

    async def publish() -> None:
        nonlocal offset
        while True:
            await wake.wait()
            wake.clear()
            if pending:
                text = "".join(pending)
                pending.clear()
                await emit({"type": "delta", "message": "relay", "offset": offset, "text": text})
                offset += len(text)
            if ended:
                return
            await asyncio.sleep(WINDOW)

    publisher = asyncio.create_task(publish())
    async with aconnect_sse(_client, "POST", f"{UPSTREAM}/chat/completions", json=body) as source:
        async for sse in source.aiter_sse():
            if sse.data == "[DONE]":
                break
            for choice in json.loads(sse.data).get("choices") or ():
                if text := (choice.get("delta") or {}).get("content"):
                    pending.append(text)
                    wake.set()
    ended = True
    wake.set()
    await publisher
    await emit({"type": "done", "message": "relay", "status": "complete"})
