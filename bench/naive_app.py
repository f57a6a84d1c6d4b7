"""The naive design, as a peer for the benchmark: FastAPI on uvicorn, the way most tutorials build it.

One WebSocket per chat; each `send` starts one task that reads the upstream with httpx (its own transport,
with httpx-sse) and sends one JSON frame per token at once. No authentication, no database, no coalescing,
no resume, no cancel: what is left is the least a relay of tokens can do, which is what the product is
measured against. It speaks just enough of the chat protocol for the load client (`send` in; `ready`,
`message`, `delta`, `done` out). Run by bench/suite.py on uvicorn; never part of the product.
"""

import asyncio
import json
import os
import uuid
from typing import Any

import httpx
from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from httpx_sse import aconnect_sse

UPSTREAM = os.environ.get("LLM_BASE_URL", "")

app = FastAPI()
client = httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=None, max_keepalive_connections=None))
tasks: set[asyncio.Task[None]] = set()


@app.websocket("/ws/chat/")
async def chat(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_text(json.dumps({"type": "ready"}))
    try:
        while True:
            request = json.loads(await websocket.receive_text())
            if request.get("type") == "send":
                task = asyncio.create_task(answer(websocket, request))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
    except WebSocketDisconnect:
        return


async def answer(websocket: WebSocket, request: dict[str, Any]) -> None:
    answer_id = uuid.uuid4().hex
    await websocket.send_text(json.dumps({"type": "message", "message": {"id": answer_id, "role": "assistant"}}))
    body = {"model": request["model"], "stream": True, "messages": [{"role": "user", "content": request["content"]}]}
    offset = 0
    async with aconnect_sse(client, "POST", f"{UPSTREAM}/chat/completions", json=body) as source:
        async for sse in source.aiter_sse():
            if sse.data == "[DONE]":
                break
            for choice in json.loads(sse.data).get("choices") or ():
                if text := (choice.get("delta") or {}).get("content"):
                    delta = {"type": "delta", "message": answer_id, "offset": offset, "text": text}
                    await websocket.send_text(json.dumps(delta, ensure_ascii=False))
                    offset += len(text)
    await websocket.send_text(json.dumps({"type": "done", "message": answer_id, "status": "complete"}))
