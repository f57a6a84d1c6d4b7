"""The transport floor: a bare ASGI WebSocket relay, no Django, no Channels, no database.

It speaks just enough of the chat protocol for the load client (`send` in; `message`, `delta`, `done` out),
reads the upstream with the same client as the product (httpx-sse on httpx on aiohttp's transport) and
forwards every token as its own frame at once. Served by the same launcher (daphne on uvloop) under the same
load, it shows what Django, Channels, the engine, persistence and the channel layer cost on top of moving
bytes. Run by bench/suite.py; never part of the product.
"""

import json
import os
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport
from httpx_sse import aconnect_sse

UPSTREAM = os.environ.get("LLM_BASE_URL", "")
_client: httpx.AsyncClient | None = None

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


async def application(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    global _client
    if scope["type"] != "websocket":
        return
    if _client is None:
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        _client = httpx.AsyncClient(timeout=60, transport=AiohttpTransport(client=session))
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.send", "text": json.dumps({"type": "ready"})})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        request = json.loads(message.get("text") or "{}")
        await _relay(request, send)


async def _relay(request: dict[str, Any], send: Send) -> None:
    async def emit(event: dict[str, Any]) -> None:
        await send({"type": "websocket.send", "text": json.dumps(event, ensure_ascii=False)})

    assert _client is not None  # noqa: S101
    await emit({"type": "message", "message": {"id": "floor", "role": "assistant"}})
    body = {"model": request["model"], "stream": True, "messages": [{"role": "user", "content": request["content"]}]}
    offset = 0
    async with aconnect_sse(_client, "POST", f"{UPSTREAM}/chat/completions", json=body) as source:
        async for sse in source.aiter_sse():
            if sse.data == "[DONE]":
                break
            for choice in json.loads(sse.data).get("choices") or ():
                if text := (choice.get("delta") or {}).get("content"):
                    await emit({"type": "delta", "message": "floor", "offset": offset, "text": text})
                    offset += len(text)
    await emit({"type": "done", "message": "floor", "status": "complete"})
