"""Answers over HTTP against real daphne processes: event streams, resume, cancel, blocking mode, keep-alives."""

import asyncio
import json
import os
from typing import Any

import httpx
import pytest
from asgiref.sync import sync_to_async

from conversations.models import Conversation, Message
from tests.api.conftest import EventReader
from tests.reachability import reachable
from tests.support import require, unique

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

REDIS_URL = os.environ.get("REDIS_URL") or os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
TIMEOUT = httpx.Timeout(20.0)


async def row(message_id: str) -> Message:
    return await sync_to_async(Message.objects.get)(pk=message_id)


async def new_conversation(client: httpx.AsyncClient, **fields) -> str:
    response = await client.post("/api/v1/conversations/", json=fields)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await sync_to_async(predicate)():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


def api(server, who) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=server.origin, headers=who.bearer, timeout=TIMEOUT)


async def test_stream_sends_the_websocket_vocabulary_with_offsets_as_event_ids(daphne, principal, upstream):
    owner = await sync_to_async(principal)()
    key = unique()
    async with api(daphne, owner) as client:
        conversation = await new_conversation(client)
        body = {"content": "Stream this, please.", "stream": True, "model": f"dev:tps=200,tokens=120,key={key}"}
        async with client.stream("POST", f"/api/v1/conversations/{conversation}/messages/", json=body) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            assert set(response.headers["cache-control"].split(", ")) >= {"no-cache", "no-store"}
            assert response.headers["x-accel-buffering"] == "no"
            reader = EventReader(response)
            mine = await reader.next()
            answer_event = await reader.next()
            assert (mine.type, mine.data["message"]["role"]) == ("message", "user")
            assert (answer_event.type, answer_event.data["message"]["status"]) == ("message", "streaming")
            answer = answer_event.data["message"]["id"]
            done = await reader.done(answer)
    deltas = [e for e in reader.events if e.type == "delta"]
    assert len(deltas) > 1, "the answer arrives in several deltas"
    # Each event's id is the length of the answer the client has once it has read the event.
    assert [e.id for e in deltas] == [e.data["offset"] + len(e.data["text"]) for e in deltas]
    assert done.data["status"] == "complete"
    assert done.data["usage"]["completion_tokens"] == 120
    saved = await row(answer)
    assert reader.texts[answer] == saved.content
    assert done.id == len(saved.content)
    [record] = upstream.stats.find(key)
    assert record.outcome == "complete"


async def test_dropped_stream_resumes_with_last_event_id_and_gets_the_rest_exactly_once(daphne, principal, upstream):
    owner = await sync_to_async(principal)()
    key = unique()
    async with api(daphne, owner) as client:
        conversation = await new_conversation(client)
        body = {"content": "A long one.", "stream": True, "model": f"dev:tps=40,tokens=200,key={key}"}
        async with client.stream("POST", f"/api/v1/conversations/{conversation}/messages/", json=body) as response:
            first = EventReader(response)
            answer = await first.answer_id()
            for _ in range(3):
                await first.until(lambda e: e.type == "delta")
        # The connection is gone; the answer goes on without anyone watching.
        have, last_id = first.texts[answer], first.last_id
        assert last_id == len(have)
        await asyncio.sleep(0.5)

        headers = {"Last-Event-ID": str(last_id)}
        async with client.stream("GET", f"/api/v1/messages/{answer}/stream/", headers=headers) as response:
            assert response.status_code == 200
            second = EventReader(response)
            second.texts[answer] = have
            resumed = await second.until(lambda e: e.type == "delta")
            assert resumed.data["offset"] == last_id, "the rest starts exactly where the client was"
            done = await second.done(answer)
    assert done.data["status"] == "complete"
    saved = await row(answer)
    assert second.texts[answer] == saved.content
    [record] = upstream.stats.find(key)
    assert record.outcome == "complete", "a dropped stream must not stop the generation"
    assert record.tokens_sent == 200


async def test_resume_of_a_finished_answer_by_offset_and_beyond_its_end(daphne, principal):
    owner = await sync_to_async(principal)()
    async with api(daphne, owner) as client:
        conversation = await new_conversation(client)
        body = {"content": "short", "model": f"dev:tps=400,tokens=30,key={unique()}"}
        answer = (await client.post(f"/api/v1/conversations/{conversation}/messages/", json=body)).json()
        text = answer["content"]
        async with client.stream("GET", f"/api/v1/messages/{answer['id']}/stream/?offset=5") as response:
            reader = EventReader(response)
            reader.texts[answer["id"]] = text[:5]
            done = await reader.done(answer["id"])
        assert reader.texts[answer["id"]] == text
        assert done.data["status"] == "complete"
        # Beyond its end (a client holding live text its crashed process never saved): only the `done`, whose
        # `length` says how much of the client's text is the answer.
        async with client.stream("GET", f"/api/v1/messages/{answer['id']}/stream/?offset={len(text) + 7}") as beyond:
            assert beyond.status_code == 200
            events = [line async for line in beyond.aiter_lines() if line.startswith("data: ")]
        [final] = [json.loads(line.removeprefix("data: ")) for line in events]
        assert (final["type"], final["status"], final["length"]) == ("done", "complete", len(text))
        bad = await client.get(f"/api/v1/messages/{answer['id']}/stream/", headers={"Last-Event-ID": "x"})
        assert (bad.status_code, bad.json()["error"]["field"]) == (400, "Last-Event-ID")
        # A client that accepts only event streams (EventSource) gets its error as one protocol `error` event.
        missing = await client.get(f"/api/v1/messages/{unique()}/stream/", headers={"Accept": "text/event-stream"})
        assert missing.status_code == 404
        assert missing.headers["content-type"].startswith("text/event-stream")
        assert missing.text == (
            'event: error\ndata: {"type":"error","code":"not_found","message":"No such conversation or message."}\n\n'
        )


async def test_cancel_endpoint_stops_the_generation_and_the_stream_ends_cancelled(daphne, principal, upstream):
    owner = await sync_to_async(principal)()
    key = unique()
    async with api(daphne, owner) as client:
        conversation = await new_conversation(client)
        body = {"content": "Go on and on.", "stream": True, "model": f"dev:tps=40,tokens=400,key={key}"}
        async with client.stream("POST", f"/api/v1/conversations/{conversation}/messages/", json=body) as response:
            reader = EventReader(response)
            answer = await reader.answer_id()
            await reader.until(lambda e: e.type == "delta")
            async with api(daphne, owner) as other:
                cancelled = await other.post(f"/api/v1/messages/{answer}/cancel/")
            done = await reader.done(answer)
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["status"] == "cancelled"
        assert done.data["status"] == "cancelled"
        saved = await row(answer)
        assert saved.status == Message.Status.CANCELLED
        assert saved.content and reader.texts[answer] == saved.content == cancelled.json()["content"]
        [record] = upstream.stats.find(key)
        await wait_for(lambda: record.outcome == "client_disconnected", timeout=3)
        assert record.tokens_sent < 400
        # Cancelling what has ended answers with it as it is; a user message cannot be cancelled.
        again = await client.post(f"/api/v1/messages/{answer}/cancel/")
        assert (again.status_code, again.json()["status"]) == (200, "cancelled")
        mine = (await client.get(f"/api/v1/conversations/{conversation}/messages/")).json()["results"][0]
        refused = await client.post(f"/api/v1/messages/{mine['id']}/cancel/")
        assert (refused.status_code, refused.json()["error"]["code"]) == (409, "invalid_state")


async def test_blocking_mode_returns_the_finished_answer(daphne, principal, upstream):
    owner = await sync_to_async(principal)()
    key = unique()
    async with api(daphne, owner) as client:
        conversation = await new_conversation(client, system="Be brief.")
        body = {"content": "Say it back: zebra 🦓", "stream": False, "model": f"dev:echo=1,key={key}"}
        response = await client.post(f"/api/v1/conversations/{conversation}/messages/", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert (answer["role"], answer["status"], answer["content"]) == ("assistant", "complete", "Say it back: zebra 🦓")
    assert answer["usage"]["completion_tokens"] > 0
    saved = await row(answer["id"])
    assert saved.content == answer["content"]
    [record] = upstream.stats.find(key)
    assert record.outcome == "complete"


async def test_keep_alive_comments_while_the_upstream_is_slow(daphne_factory, principal):
    server = daphne_factory(API_KEEPALIVE_SECONDS="0.3")
    owner = await sync_to_async(principal)()
    async with api(server, owner) as client:
        conversation = await new_conversation(client)
        body = {"content": "Take your time.", "stream": True, "model": f"dev:ttft=2,tokens=5,key={unique()}"}
        async with client.stream("POST", f"/api/v1/conversations/{conversation}/messages/", json=body) as response:
            reader = EventReader(response)
            answer = await reader.answer_id()
            await reader.until(lambda e: e.type == "delta")
            await reader.done(answer)
    kinds = [e.type for e in reader.events]
    first_delta = kinds.index("delta")
    assert kinds[:first_delta].count("comment") >= 3, kinds
    assert {e.data["text"] for e in reader.events if e.type == "comment"} == {"keep-alive"}


async def test_repeated_idempotency_key_returns_the_same_answer_and_calls_upstream_once(daphne, principal, upstream):
    owner = await sync_to_async(principal)()
    key, idem = unique(), unique()
    async with api(daphne, owner) as client:
        conversation = await new_conversation(client)
        body = {"content": "Only once.", "model": f"dev:tps=200,tokens=40,key={key}"}
        url = f"/api/v1/conversations/{conversation}/messages/"
        first = await client.post(url, json=body, headers={"Idempotency-Key": idem})
        again = await client.post(url, json={**body, "client_id": idem})
        clash = await client.post(url, json={**body, "client_id": "other"}, headers={"Idempotency-Key": idem})
    assert first.status_code == again.status_code == 200
    assert first.json()["id"] == again.json()["id"]
    assert again.json()["content"] == (await row(first.json()["id"])).content
    assert len(upstream.stats.find(key)) == 1
    assert await sync_to_async(Message.objects.filter(client_id=idem).count)() == 1
    assert (clash.status_code, clash.json()["error"]["field"]) == (400, "client_id")


async def subscribers(store: Any, channel: str) -> int:
    [(_, count)] = await store.pubsub_numsub(channel)
    return int(count)


async def test_client_leaving_a_stream_stops_its_watcher_but_not_the_generation(daphne_factory, principal, upstream):
    require("Redis", reachable(REDIS_URL, 6379))
    prefix = f"test-{unique()[:12]}"
    server = daphne_factory(fresh=True, REDIS_URL=REDIS_URL, CHANNEL_PREFIX=prefix)
    import redis.asyncio as redis

    store = redis.from_url(REDIS_URL)
    owner = await sync_to_async(principal)()
    key = unique()
    async with api(server, owner) as client:
        conversation = await new_conversation(client)
        # The pub/sub layer's group is a Redis channel the server subscribes to while a member is in it.
        group = f"{prefix}__group__chat.conversation.{conversation}"
        body = {"content": "Keep going.", "stream": True, "model": f"dev:tps=40,tokens=160,key={key}"}
        async with client.stream("POST", f"/api/v1/conversations/{conversation}/messages/", json=body) as response:
            reader = EventReader(response)
            answer = await reader.answer_id()
            await reader.until(lambda e: e.type == "delta")
            assert await subscribers(store, group) == 1, "the stream watches the conversation"
    deadline = asyncio.get_running_loop().time() + 5
    while await subscribers(store, group):
        assert asyncio.get_running_loop().time() < deadline, "the watcher of a closed stream must leave its group"
        await asyncio.sleep(0.05)
    await store.aclose()
    await wait_for(lambda: Message.objects.get(pk=answer).status == Message.Status.COMPLETE, timeout=15)
    [record] = upstream.stats.find(key)
    assert (record.outcome, record.tokens_sent) == ("complete", 160)


async def test_request_errors_are_json_with_stable_codes_and_fields(daphne, principal):
    owner = await sync_to_async(principal)()
    async with api(daphne, owner) as client:
        conversation = await new_conversation(client)
        url = f"/api/v1/conversations/{conversation}/messages/"
        cases = [
            ({"content": "hi", "temperature": 5}, 400, "invalid_request", "temperature"),
            ({"content": "   "}, 400, "invalid_request", "content"),
            ({}, 400, "invalid_request", "content"),
            ({"content": "hi", "model": "gpt-9"}, 400, "model_not_allowed", "model"),
            ({"content": "x" * 32_001}, 400, "content_too_long", "content"),
            ({"content": "hi", "stream": "yes"}, 400, "invalid_request", "stream"),
        ]
        for body, status, code, field in cases:
            response = await client.post(url, json=body)
            assert (response.status_code, response.json()["error"]["code"]) == (status, code), body
            assert response.json()["error"]["field"] == field
        broken = await client.post(url, content=b"{not json", headers={"Content-Type": "application/json"})
        assert (broken.status_code, broken.json()["error"]["code"]) == (400, "invalid_json")
        listed = await client.post(url, json=["content"])
        assert (listed.status_code, listed.json()["error"]["code"]) == (400, "invalid_request")

        # One answer at a time in a conversation.
        slow = {"content": "slow", "stream": False, "model": f"dev:ttft=5,key={unique()}"}
        first = asyncio.create_task(client.post(url, json=slow))
        await wait_for(lambda: Message.objects.filter(conversation_id=conversation, status="streaming").exists())
        busy = await client.post(url, json={"content": "now"})
        assert (busy.status_code, busy.json()["error"]["code"]) == (409, "conversation_busy")
        streaming = await sync_to_async(Message.objects.get)(conversation_id=conversation, status="streaming")
        await client.post(f"/api/v1/messages/{streaming.pk}/cancel/")
        assert (await first).json()["status"] == "cancelled"
    assert await sync_to_async(Conversation.objects.filter(pk=conversation).exists)()
