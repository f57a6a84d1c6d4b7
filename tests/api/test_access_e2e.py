"""Access that ends while connections are open, against real daphne: a logout closes the sockets and event
streams of its session, a revoked token ends the streams that use it, "log out everywhere" reaches other
processes; the answers being written go on to their end."""

import asyncio
import json
import os

import httpx
import pytest
import websockets
from asgiref.sync import sync_to_async
from websockets.exceptions import ConnectionClosed
from websockets.typing import Origin

from conversations.models import Message
from streaming.protocol import CLOSE_UNAUTHENTICATED
from tests.api.conftest import EventReader, Principal
from tests.reachability import reachable
from tests.support import ChatSocket, logged_in_session, require, unique

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

REDIS_URL = os.environ.get("REDIS_URL") or os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
TIMEOUT = httpx.Timeout(20.0)
# How soon a connection must learn that its access ended (the promise).
WITHIN = 1.0
SLOW = "dev:tps=30,tokens=120"


async def closed_with(socket: ChatSocket, timeout: float) -> int:
    """Reads until the server closes the socket; returns its close code."""
    try:
        while True:
            await asyncio.wait_for(socket.ws.recv(), timeout)
    except ConnectionClosed:
        pass
    assert socket.ws.close_code is not None
    return socket.ws.close_code


async def log_out(server, who: Principal) -> None:
    """What the account menu's "Log out" button posts."""
    async with httpx.AsyncClient(base_url=server.origin, timeout=TIMEOUT) as client:
        response = await client.post("/accounts/logout/", headers={**who.session_headers, "Origin": server.origin})
    assert response.status_code in (200, 302), response.text


async def status_of(message_id: str) -> str:
    return str((await sync_to_async(Message.objects.get)(pk=message_id)).status)


async def ends_complete(message_id: str, timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while await status_of(message_id) == Message.Status.STREAMING:
        assert asyncio.get_running_loop().time() < deadline, "the answer never ended"
        await asyncio.sleep(0.1)
    assert await status_of(message_id) == Message.Status.COMPLETE


async def test_a_logout_closes_the_sockets_of_its_session_and_the_answer_being_written_finishes(daphne, principal):
    owner = await sync_to_async(principal)()
    elsewhere = (await sync_to_async(logged_in_session)(owner.user)).session_key  # another browser
    writer = await ChatSocket.connect(daphne, owner.session)
    other_tab = await ChatSocket.connect(daphne, owner.session)
    other_browser = await ChatSocket.connect(daphne, elsewhere)
    _, answer = await writer.send_message("Keep writing.", client_id=unique(), model=f"{SLOW},key={unique()}")
    await writer.recv_until(lambda e: e["type"] == "delta" and e["message"] == answer)

    await log_out(daphne, owner)
    assert await closed_with(writer, WITHIN) == CLOSE_UNAUTHENTICATED
    assert await closed_with(other_tab, WITHIN) == CLOSE_UNAUTHENTICATED
    assert await status_of(answer) == Message.Status.STREAMING  # kept, and written on
    # The user's other browser is still signed in, and its socket goes on.
    assert (await other_browser.request({"type": "ping", "id": "p"}, "pong"))["ref"] == "p"
    await ends_complete(answer)
    await other_browser.close()

    # The session is gone: a new socket with its cookie is refused at once.
    async with websockets.connect(
        daphne.ws_url, origin=Origin(daphne.origin), additional_headers={"Cookie": f"sessionid={owner.session}"}
    ) as refused:
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(refused.recv(), 5)
        assert refused.close_code == CLOSE_UNAUTHENTICATED


async def test_a_logout_ends_the_event_streams_of_its_session(daphne, principal):
    owner = await sync_to_async(principal)()
    async with httpx.AsyncClient(base_url=daphne.origin, headers=owner.session_headers, timeout=TIMEOUT) as client:
        created = await client.post("/api/v1/conversations/", json={}, headers={"Origin": daphne.origin})
        assert created.status_code == 201, created.text
        body = {"content": "Stream this.", "stream": True, "model": f"{SLOW},key={unique()}"}
        path = f"/api/v1/conversations/{created.json()['id']}/messages/"
        async with client.stream("POST", path, json=body, headers={"Origin": daphne.origin}) as response:
            assert response.status_code == 200
            reader = EventReader(response)
            answer = await reader.answer_id()
            await reader.until(lambda e: e.type == "delta")
            await log_out(daphne, owner)
            ended = await asyncio.wait_for(reader.until(lambda e: e.type == "error"), WITHIN)
            assert ended.data["code"] == "unauthenticated"
            with pytest.raises(EOFError):
                await asyncio.wait_for(reader.next(), WITHIN)  # and nothing after it
    await ends_complete(answer)


async def test_revoking_a_token_ends_the_v1_streams_that_use_it(daphne, principal):
    owner = await sync_to_async(principal)()
    body = {"model": f"{SLOW},key={unique()}", "stream": True, "messages": [{"role": "user", "content": "Go on."}]}
    async with (
        httpx.AsyncClient(base_url=daphne.origin, headers=owner.bearer, timeout=TIMEOUT) as api,
        httpx.AsyncClient(base_url=daphne.origin, headers=owner.session_headers, timeout=TIMEOUT) as browser,
        api.stream("POST", "/v1/chat/completions", json=body) as response,
    ):
        assert response.status_code == 200
        answer = response.headers["x-message-id"]
        lines = response.aiter_lines()
        async for line in lines:
            if line.startswith("data: ") and json.loads(line[6:])["choices"][0]["delta"].get("content"):
                break
        [token] = (await browser.get("/api/v1/tokens/")).json()
        revoked = await browser.delete(f"/api/v1/tokens/{token['id']}/", headers={"Origin": daphne.origin})
        assert revoked.status_code == 204, revoked.text

        async def error_line() -> dict[str, str]:
            async for line in lines:
                if line.startswith("data: ") and "error" in json.loads(line[6:]):
                    return dict(json.loads(line[6:])["error"])
            raise AssertionError("the stream ended without an error")

        error = await asyncio.wait_for(error_line(), WITHIN)
        assert (error["code"], error["type"]) == ("unauthenticated", "authentication_error")
    await ends_complete(answer)


async def test_log_out_everywhere_reaches_sockets_on_another_process(daphne_factory, principal):
    require("Redis", reachable(REDIS_URL, 6379))
    shared = {"REDIS_URL": REDIS_URL, "CHANNEL_PREFIX": f"test-{unique()[:12]}"}
    one, two = daphne_factory(fresh=True, **shared), daphne_factory(fresh=True, **shared)
    owner, staff = await sync_to_async(principal)(), await sync_to_async(principal)(staff=True)
    socket = await ChatSocket.connect(two, owner.session)
    async with httpx.AsyncClient(base_url=one.origin, headers=staff.session_headers, timeout=TIMEOUT) as admin:
        done = await admin.post(
            "/admin/auth/user/",
            data={"action": "log_out_everywhere", "_selected_action": [str(owner.user.pk)]},
            headers={"Origin": one.origin},
        )
        assert done.status_code == 302, done.text
    assert await closed_with(socket, WITHIN) == CLOSE_UNAUTHENTICATED
