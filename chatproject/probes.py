"""Endpoints for operators: liveness, readiness and Prometheus metrics (keep them off the public internet;
deploy/nginx.conf does)."""

import asyncio
import time
from typing import Any

import httpx
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from streaming import upstream
from streaming.aio import orm

CHECK_TIMEOUT = 2.0  # seconds each readiness check may take


async def healthz(request: HttpRequest) -> HttpResponse:
    """The process is up and its event loop answers."""
    return JsonResponse({"status": "ok"})


async def readyz(request: HttpRequest) -> HttpResponse:
    """Whether this process can serve chats: the database, the channel layer and the model server answer."""
    names = ("database", "channel_layer", "upstream")
    results = await asyncio.gather(_timed(_check_database()), _timed(_check_channel_layer()), _timed(_check_upstream()))
    checks = dict(zip(names, results, strict=True))
    ready = all(check["ok"] for check in checks.values())
    return JsonResponse({"status": "ok" if ready else "unavailable", "checks": checks}, status=200 if ready else 503)


async def metrics(request: HttpRequest) -> HttpResponse:
    return HttpResponse(generate_latest(), content_type=CONTENT_TYPE_LATEST)


async def _timed(check: Any) -> dict[str, Any]:
    started = time.monotonic()
    try:
        async with asyncio.timeout(CHECK_TIMEOUT):
            detail = await check
        ok = True
    except Exception as exc:
        ok, detail = False, f"{type(exc).__name__}: {exc}"[:300]
    return {"ok": ok, "ms": round((time.monotonic() - started) * 1000, 1), "detail": detail}


def _select_one() -> str:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    finally:
        connection.close()  # a health check must not keep a connection open (CONN_MAX_AGE = 0 everywhere)
    return connection.vendor


async def _check_database() -> str:
    return await orm(_select_one)()


async def _check_channel_layer() -> str:
    """A message sent to a new channel of this process's layer comes back: the layer (Redis) works."""
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.send(channel, {"type": "ops.ping"})
    await layer.receive(channel)
    return type(layer).__name__


async def _check_upstream() -> str:
    """The model server answers HTTP at its models endpoint (any status: reachable is what is checked)."""
    base_url = await upstream.base_url()
    headers = {"Authorization": f"Bearer {settings.LLM_API_KEY}"} if settings.LLM_API_KEY else {}
    async with httpx.AsyncClient(timeout=CHECK_TIMEOUT) as client:
        response = await client.get(f"{base_url}/models", headers=headers)
    return f"HTTP {response.status_code}"
