"""What operators rely on: health and readiness, metrics, logs without message contents, abuse limits."""

import json

import httpx
import pytest
from asgiref.sync import sync_to_async
from websockets.exceptions import ConnectionClosed

from streaming.protocol import CLOSE_TOO_MANY_SOCKETS
from tests.support import ChatSocket, unique

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


async def test_health_and_readiness_report_each_dependency(daphne):
    async with httpx.AsyncClient(base_url=daphne.origin) as client:
        health = await client.get("/healthz")
        ready = await client.get("/readyz")
    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    assert ready.status_code == 200
    body = ready.json()
    assert body["status"] == "ok"
    assert set(body["checks"]) == {"database", "channel_layer", "upstream"}
    assert all(check["ok"] for check in body["checks"].values()), body
    assert body["checks"]["upstream"]["detail"] == "HTTP 200"


async def test_readiness_fails_clearly_when_the_model_server_is_unreachable(daphne_factory):
    server = daphne_factory(LLM_BASE_URL="http://127.0.0.1:9/v1")
    async with httpx.AsyncClient(base_url=server.origin) as client:
        ready = await client.get("/readyz")
    assert ready.status_code == 503
    checks = ready.json()["checks"]
    assert checks["upstream"]["ok"] is False and "Connect" in checks["upstream"]["detail"]
    assert checks["database"]["ok"] and checks["channel_layer"]["ok"]


async def test_metrics_count_generations_tokens_and_latencies(daphne_factory, make_user):
    server = daphne_factory(CHAT_COALESCE_MS="41")  # a process of its own: its counters start at zero
    _, session = await sync_to_async(make_user)()
    chat = await ChatSocket.connect(server, session)
    _, answer = await chat.send_message("count me", client_id=unique(), model="dev:tokens=120,tps=400")
    await chat.done(answer)
    _, failed = await chat.send_message("fail me", client_id=unique(), model="dev:fault=http_401")
    await chat.done(failed)
    async with httpx.AsyncClient(base_url=server.origin) as client:
        text = (await client.get("/metrics")).text
    samples = dict(
        line.rsplit(" ", 1) for line in text.splitlines() if line.startswith("chat_") and not line.startswith("#")
    )
    assert float(samples["chat_tokens_total"]) == 120
    assert float(samples['chat_generations_total{status="complete"}']) == 1
    assert float(samples['chat_generations_total{status="error"}']) == 1
    assert float(samples['chat_generation_errors_total{code="upstream_auth"}']) == 1
    assert float(samples["chat_time_to_first_token_seconds_count"]) == 1
    assert float(samples["chat_inter_delta_seconds_count"]) >= 1
    assert float(samples["chat_generations_active"]) == 0
    assert float(samples["chat_watchers_active"]) == 1
    await chat.close()


async def test_json_logs_carry_fields_but_never_message_contents(daphne_factory, make_user):
    server = daphne_factory(LOG_FORMAT="json", LOG_LEVEL="INFO")
    _, session = await sync_to_async(make_user)()
    chat = await ChatSocket.connect(server, session)
    secret = f"secret-{unique()}"
    _, answer = await chat.send_message(secret, client_id=unique(), model="dev:echo,tps=400")
    await chat.done(answer)
    _, failed = await chat.send_message(f"{secret} again", client_id=unique(), model="dev:fault=drop,fault_after=2")
    await chat.done(failed)
    await chat.close()
    output = server.output()
    assert secret not in output, "message contents must never reach the logs"
    records = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    ended = [record for record in records if record["message"] == "generation ended"]
    assert {record["message_id"] for record in ended} == {answer, failed}
    assert {record["status"] for record in ended} == {"complete", "error"}
    assert all({"time", "level", "logger"} <= set(record) for record in records)


async def test_starting_answers_is_rate_limited_per_user(daphne_factory, make_user):
    server = daphne_factory(CHAT_MAX_MESSAGES_PER_MINUTE="3")
    _, session = await sync_to_async(make_user)()
    chat = await ChatSocket.connect(server, session)
    for number in range(3):
        _, answer = await chat.send_message(f"n{number}", client_id=unique(), model="dev:tokens=3")
        await chat.done(answer)
    error = await chat.request({"type": "send", "id": "fourth", "content": "n3", "model": "dev"}, "message")
    assert (error["type"], error["code"], error["ref"]) == ("error", "too_many_requests", "fourth")
    # Another user is not affected.
    _, other_session = await sync_to_async(make_user)()
    other = await ChatSocket.connect(server, other_session)
    _, answer = await other.send_message("mine", client_id=unique(), model="dev:tokens=3")
    assert (await other.done(answer))["status"] == "complete"
    for socket in (chat, other):
        await socket.close()


async def test_open_sockets_are_limited_per_user(daphne_factory, make_user):
    server = daphne_factory(CHAT_MAX_SOCKETS_PER_USER="2")
    _, session = await sync_to_async(make_user)()
    first = await ChatSocket.connect(server, session)
    second = await ChatSocket.connect(server, session)
    with pytest.raises(ConnectionClosed) as refused:
        await ChatSocket.connect(server, session)
    assert refused.value.rcvd is not None and refused.value.rcvd.code == CLOSE_TOO_MANY_SOCKETS
    _, other_session = await sync_to_async(make_user)()
    other = await ChatSocket.connect(server, other_session)  # per user: someone else still gets in
    await first.close()
    third = await ChatSocket.connect(server, session)  # a closed socket frees its place
    pong = await third.request({"type": "ping", "id": "p"}, "pong")
    assert pong["type"] == "pong"
    for socket in (second, third, other):
        await socket.close()
