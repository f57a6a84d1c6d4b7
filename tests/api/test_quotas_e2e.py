"""Per-user quotas set by staff, enforced where every answer starts, with a clear error on every protocol."""

import asyncio

import httpx
import pytest
from asgiref.sync import sync_to_async

from conversations.models import Message, UserQuota
from tests.support import ChatSocket, unique

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


async def test_daily_token_quota_refuses_new_answers_once_reached(daphne, principal, upstream):
    owner = await sync_to_async(principal)()
    await sync_to_async(UserQuota.objects.create)(user=owner.user, daily_tokens=50)
    async with httpx.AsyncClient(base_url=daphne.origin, headers=owner.bearer, timeout=20) as client:
        conversation = (await client.post("/api/v1/conversations/", json={})).json()["id"]
        url = f"/api/v1/conversations/{conversation}/messages/"
        first = await client.post(
            url, json={"content": "one two three", "model": f"dev:tps=400,tokens=60,key={unique()}"}
        )
        # Usage is known when an answer ends: one started under the quota runs to its end.
        assert (first.status_code, first.json()["status"]) == (200, "complete")
        used = first.json()["usage"]["total_tokens"]
        assert used > 50
        key = unique()
        refused = await client.post(url, json={"content": "more", "model": f"dev:key={key}"})
    assert refused.status_code == 429
    assert refused.json()["error"] == {
        "code": "quota_exceeded",
        "message": f"You have used {used} of your 50 tokens for today; the quota renews at midnight UTC.",
    }
    assert upstream.stats.find(key) == [], "a refused answer never reaches the model"

    chat = await ChatSocket.connect(daphne, owner.session)
    await chat.send({"type": "send", "id": unique(), "conversation": None, "content": "and now?"})
    error = await chat.recv_until(lambda e: e["type"] == "error")
    assert (error["code"], error["message"]) == ("quota_exceeded", refused.json()["error"]["message"])
    await chat.close()


async def test_concurrent_stream_quota_overrides_the_server_default(daphne, principal):
    owner = await sync_to_async(principal)()
    quota = await sync_to_async(UserQuota.objects.create)(user=owner.user, max_concurrent_streams=1)
    async with httpx.AsyncClient(base_url=daphne.origin, headers=owner.bearer, timeout=20) as client:

        async def start() -> httpx.Response:
            conversation = (await client.post("/api/v1/conversations/", json={})).json()["id"]
            body = {"content": "slow", "model": f"dev:ttft=20,key={unique()}"}
            return await client.post(f"/api/v1/conversations/{conversation}/messages/", json=body)

        async def streaming() -> list[Message]:
            return await sync_to_async(lambda: list(Message.objects.filter(owner=owner.user, status="streaming")))()

        async def until_streaming(count: int) -> None:
            deadline = asyncio.get_running_loop().time() + 10
            while len(await streaming()) < count:
                assert asyncio.get_running_loop().time() < deadline, f"{count} answers did not start"
                await asyncio.sleep(0.05)

        first = asyncio.create_task(start())
        await until_streaming(1)
        second = await start()
        assert second.status_code == 429
        assert second.json()["error"] == {
            "code": "too_many_generations",
            "message": "You already have 1 answers being written; wait for one to finish or stop it.",
        }
        # Raised above the default (2), the limit lets three run at once.
        quota.max_concurrent_streams = 3
        await sync_to_async(quota.save)()
        more = [asyncio.create_task(start()) for _ in range(2)]
        await until_streaming(3)
        for message in await streaming():
            assert (await client.post(f"/api/v1/messages/{message.pk}/cancel/")).status_code == 200
        assert {(await task).json()["status"] for task in (first, *more)} == {"cancelled"}
