"""Two daphne processes behind nginx on Redis and PostgreSQL, and the faults a production deployment meets.

Every promise of the core must hold here: resume without gap or duplicate across processes, cancel from
anywhere, answers of a killed process swept to `interrupted`, restarts of Redis and PostgreSQL ridden out,
event streams unbuffered through nginx, and malformed requests refused without harming anyone else.
"""

import asyncio
import socket
import time
from typing import Any

import httpx
import pytest
import websockets
from websockets.exceptions import ConnectionClosed
from websockets.typing import Origin

from devllm.simulator import answer_text, parse_model
from tests.deploy.conftest import Deployment
from tests.deploy.harness import manage
from tests.support import ChatSocket, DevLLMThread, unique

pytestmark = pytest.mark.deploy

SLOW = "dev:tps=30,tokens=450"


def simulated(upstream: DevLLMThread, model: str, prompt: str) -> str:
    """The whole text the simulator streams for this model and prompt."""
    return answer_text([{"role": "user", "content": prompt}], parse_model(model, upstream.server.defaults)[1])


def connections(deployment: Deployment) -> list[int]:
    """How many WebSockets each daphne process has accepted so far (from their access logs)."""
    return [server.output().count("WSCONNECT /ws/chat/") for server in deployment.fleet.processes]


async def connect_to(deployment: Deployment, session: str, index: int) -> ChatSocket:
    """A socket through nginx that landed on process `index` (nginx takes turns; others are closed)."""
    for _ in range(6):
        before = connections(deployment)
        chat = await ChatSocket.connect(deployment.nginx, session)
        after = connections(deployment)
        if after[index] > before[index]:
            return chat
        await chat.close()
    raise AssertionError("nginx never sent a socket to that process")


def row(deployment: Deployment, message_id: str) -> tuple[str, str]:
    [(status, content)] = deployment.postgres.query(
        "SELECT status, content FROM conversations_message WHERE id = %s", message_id
    )
    return str(status), str(content)


async def follow_to_the_end(deployment: Deployment, session: str, chat: ChatSocket, answer: str) -> dict[str, Any]:
    """Reads an answer to its `done`, reconnecting through nginx and resuming whenever the socket breaks,
    as the browser client does. The ChatSocket checks every offset: a gap or a duplicate fails the test."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            return await chat.done(answer, timeout=30)
        except (ConnectionClosed, OSError, TimeoutError):
            await asyncio.sleep(0.5)
            texts, html, rendered = chat.texts, chat.html, chat.rendered
            try:
                chat = await ChatSocket.connect(deployment.nginx, session)
            except (ConnectionClosed, OSError, websockets.InvalidStatus):
                continue
            chat.texts, chat.html, chat.rendered = texts, html, rendered
            have = chat.texts.get(answer, "")
            await chat.send(
                {"type": "resume", "message": answer, "offset": len(have), "rendered": chat.rendered.get(answer, 0)}
            )
    raise AssertionError("the answer never ended")


async def test_a_reconnect_landing_on_the_other_process_resumes_exactly_and_a_second_tab_watches_live(
    deployment, upstream
):
    session = await asyncio.to_thread(deployment.session)
    writer = await connect_to(deployment, session, 0)
    key = unique()
    conversation, answer = await writer.send_message("across", client_id=unique(), model=f"{SLOW},key={key}")
    for _ in range(3):
        await writer.recv_until(lambda e: e["type"] == "delta")

    tab = await connect_to(deployment, session, 1)
    await tab.request({"type": "open", "conversation": conversation}, "history")
    before = len(tab.texts[answer])
    await tab.recv_until(lambda e: e["type"] == "delta" and e["message"] == answer)
    assert len(tab.texts[answer]) > before, "the second tab, on the other process, watches live"

    have, rendered = writer.texts[answer], writer.rendered.get(answer, 0)
    await writer.close()
    moved = await connect_to(deployment, session, 1)
    moved.texts[answer], moved.rendered[answer], moved.html[answer] = have, rendered, writer.html.get(answer, "")
    await moved.send({"type": "resume", "message": answer, "offset": len(have), "rendered": rendered})
    done = await moved.done(answer, timeout=30)
    await tab.done(answer, timeout=30)
    assert done["status"] == "complete"
    status, content = row(deployment, answer)
    assert (status, moved.texts[answer], tab.texts[answer]) == ("complete", content, content)
    assert moved.html[answer] == tab.html[answer]
    [record] = upstream.stats.find(key)
    assert record.outcome == "complete" and record.tokens_sent == 450
    for chat in (moved, tab):
        await chat.close()


async def test_cancel_from_the_other_process_stops_the_generation_and_its_upstream(deployment, upstream):
    session = await asyncio.to_thread(deployment.session)
    writer = await connect_to(deployment, session, 0)
    key = unique()
    conversation, answer = await writer.send_message("stop me", client_id=unique(), model=f"{SLOW},key={key}")
    await writer.recv_until(lambda e: e["type"] == "delta")
    other = await connect_to(deployment, session, 1)
    await other.request({"type": "open", "conversation": conversation}, "history")
    await other.send({"type": "cancel", "message": answer})
    assert (await other.done(answer))["status"] == "cancelled"
    assert (await writer.done(answer))["status"] == "cancelled"
    [record] = upstream.stats.find(key)
    for _ in range(50):
        if record.outcome != "streaming":
            break
        await asyncio.sleep(0.05)
    assert record.outcome == "client_disconnected" and record.tokens_sent < 450
    status, content = row(deployment, answer)
    assert status == "cancelled" and content == writer.texts[answer] == other.texts[answer]
    for chat in (writer, other):
        await chat.close()


async def test_sigkill_of_the_writing_process_ends_its_answer_interrupted_and_watchers_are_told(deployment):
    session = await asyncio.to_thread(deployment.session)
    writer = await connect_to(deployment, session, 0)
    conversation, answer = await writer.send_message("doomed", client_id=unique(), model="dev:tps=30,tokens=3000")
    watcher = await connect_to(deployment, session, 1)
    await watcher.request({"type": "open", "conversation": conversation}, "history")
    await watcher.recv_until(lambda e: e["type"] == "delta" and e["message"] == answer)
    await asyncio.sleep(1.5)  # a checkpoint or more
    killed_at = time.monotonic()
    await asyncio.to_thread(deployment.fleet.processes[0].kill)

    done = await watcher.done(answer, timeout=30)
    assert time.monotonic() - killed_at < 30
    assert done["status"] == "interrupted" and done["error"]["code"] == "interrupted"
    status, content = row(deployment, answer)
    assert status == "interrupted" and content, "the checkpointed text is kept"
    assert watcher.texts[answer] == content
    await watcher.close()
    await asyncio.to_thread(deployment.fleet.restart, 0)


async def test_redis_restarting_mid_answer_loses_nothing(deployment, upstream):
    session = await asyncio.to_thread(deployment.session)
    writer = await connect_to(deployment, session, 0)
    key = unique()
    conversation, answer = await writer.send_message("through redis", client_id=unique(), model=f"{SLOW},key={key}")
    watcher = await connect_to(deployment, session, 1)
    await watcher.request({"type": "open", "conversation": conversation}, "history")
    await watcher.recv_until(lambda e: e["type"] == "delta" and e["message"] == answer)

    await asyncio.to_thread(deployment.redis.restart, 1.0)

    done_writer = await follow_to_the_end(deployment, session, writer, answer)
    done_watcher = await follow_to_the_end(deployment, session, watcher, answer)
    assert done_writer["status"] == done_watcher["status"] == "complete"
    status, content = row(deployment, answer)
    assert status == "complete"
    [record] = upstream.stats.find(key)
    assert record.outcome == "complete" and record.tokens_sent == 450, "the generation went on"
    assert content == simulated(upstream, f"{SLOW},key={key}", "through redis"), "and all of it was saved"
    assert writer.texts[answer] == watcher.texts[answer] == content


async def test_postgresql_restarting_mid_answer_is_ridden_out(deployment, upstream):
    session = await asyncio.to_thread(deployment.session)
    writer = await connect_to(deployment, session, 0)
    key = unique()
    _, answer = await writer.send_message("through postgres", client_id=unique(), model=f"{SLOW},key={key}")
    await writer.recv_until(lambda e: e["type"] == "delta")
    await asyncio.sleep(1.2)

    await asyncio.to_thread(deployment.postgres.restart, 2.0)
    # Each process's connection pool has connections the restart killed: the next requests succeed anyway,
    # on either process (the pool checks a connection before handing it out).
    async with httpx.AsyncClient(timeout=10) as client:
        for server in deployment.fleet.processes:
            response = await client.get(f"http://127.0.0.1:{server.port}/readyz")
            assert response.status_code == 200, response.text

    done = await follow_to_the_end(deployment, session, writer, answer)
    assert done["status"] == "complete", done
    assert "error" not in done
    status, content = row(deployment, answer)
    assert status == "complete" and content == writer.texts[answer]
    [record] = upstream.stats.find(key)
    assert record.outcome == "complete" and record.tokens_sent == 450


async def test_nginx_passes_event_streams_unbuffered(deployment):
    user = f"api-{unique()[:8]}"
    code = (
        "from django.contrib.auth import get_user_model; from conversations import services; "
        f"user = get_user_model().objects.create_user({user!r}); "
        "print(services.api_token_create(user=user, name='harness')[1])"
    )
    token = (await asyncio.to_thread(manage, deployment.env, "shell", "--no-imports", "-c", code)).split()[-1]
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=deployment.nginx.origin, headers=headers, timeout=30) as client:
        created = await client.post("/api/v1/conversations/", json={})
        assert created.status_code == 201, (created.status_code, created.text)
        conversation = created.json()["id"]
        started = time.monotonic()
        body = {"content": "unbuffered", "stream": True, "model": "dev:tps=20,tokens=80,ttft=0.1"}
        async with client.stream("POST", f"/api/v1/conversations/{conversation}/messages/", json=body) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            arrivals = []
            async for line in response.aiter_lines():
                if line.startswith("event: delta"):
                    arrivals.append(time.monotonic() - started)
                if line.startswith("event: done"):
                    finished = time.monotonic() - started
                    break
    # 80 tokens at 20 a second take 4 s: a buffering proxy would deliver everything at the end.
    assert arrivals and arrivals[0] < finished - 2, (arrivals[:3], finished)
    assert len(arrivals) > 10


def raw_request(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(request)
        chunks = []
        try:
            while chunk := connection.recv(65536):
                chunks.append(chunk)
        except TimeoutError:
            pass
        return b"".join(chunks)


async def test_smuggling_and_oversized_probes_are_refused_without_harming_others(deployment, upstream):
    session = await asyncio.to_thread(deployment.session)
    bystander = await ChatSocket.connect(deployment.nginx, session)
    key = unique()
    _, answer = await bystander.send_message("bystander", client_id=unique(), model=f"dev:tps=40,tokens=200,key={key}")

    port = deployment.nginx.port
    head = b"POST /api/v1/conversations/ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    probes = {
        "CL and TE together": head + b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        b"GET /admin/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        "obfuscated TE": head + b"Transfer-Encoding: xchunked\r\nContent-Length: 5\r\n\r\nhello",
        "two Content-Lengths": head + b"Content-Length: 3\r\nContent-Length: 40\r\n\r\nabc",
        "space before colon": head + b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
        "oversized body": head + b"Content-Type: application/json\r\nContent-Length: 2000000\r\n\r\n{",
    }
    for name, probe in probes.items():
        response = await asyncio.to_thread(raw_request, port, probe)
        status_line = response.split(b"\r\n", 1)[0]
        # Refused outright (400, 411, 413, 501), or at most one plain answer for the first request: never a
        # second, smuggled response on the same connection.
        assert response.count(b"HTTP/1.1 ") <= 1, (name, response[:300])
        assert status_line.split()[1] in {b"400", b"401", b"403", b"411", b"413", b"501"}, (name, status_line)

    # A WebSocket frame of 2 MB: refused by the server (closed as too big), nobody else is affected.
    big = await websockets.connect(
        deployment.nginx.ws_url,
        origin=Origin(deployment.nginx.origin),
        additional_headers={"Cookie": f"sessionid={session}"},
        max_size=2**22,
    )
    await big.recv()  # ready

    async def send_then_read() -> None:
        # The server may fail the connection while the frame is still being sent (a reset seen by `send`) or
        # after (seen by `recv`): either way the connection ends.
        await big.send("x" * 2_000_000)
        await asyncio.wait_for(big.recv(), 10)

    with pytest.raises(ConnectionClosed) as closed:
        await send_then_read()
    # daphne fails the connection past --websocket-max-message-size (1009 when it gets to say so).
    assert closed.value.rcvd is None or closed.value.rcvd.code == 1009
    again = await ChatSocket.connect(deployment.nginx, session)  # the same user is not locked out
    assert (await again.request({"type": "ping", "id": "p"}, "pong"))["type"] == "pong"
    await again.close()

    done = await bystander.done(answer, timeout=30)
    assert done["status"] == "complete"
    [record] = upstream.stats.find(key)
    assert record.outcome == "complete"
    status, content = row(deployment, answer)
    assert (status, bystander.texts[answer]) == ("complete", content)
    await bystander.close()


async def test_the_socket_origin_check_holds_through_nginx(deployment):
    """nginx passes the Host as the client sent it (port included): the page's own origin opens a socket, the
    same host on another port or scheme does not."""
    session = deployment.session()
    chat = await ChatSocket.connect(deployment.nginx, session)  # Origin: the nginx origin itself
    await chat.close()
    port = deployment.nginx.port
    for wrong in (f"http://127.0.0.1:{port + 1}", f"https://127.0.0.1:{port}", "http://127.0.0.1"):
        with pytest.raises(websockets.InvalidStatus) as refused:
            await ChatSocket.connect(deployment.nginx, session, origin=wrong)
        assert refused.value.response.status_code == 403, wrong


async def test_nginx_limits_the_rate_of_login_attempts_per_address(deployment):
    async with httpx.AsyncClient(base_url=deployment.nginx.origin, timeout=10) as client:
        statuses = [(await client.get("/accounts/login/")).status_code for _ in range(25)]
        assert statuses[:10] == [200] * 10  # a burst of 10 passes
        assert 429 in statuses
        # The rest of the site is not limited with it.
        assert (await client.get("/healthz")).status_code == 200


async def test_an_oversized_body_is_refused_by_nginx_in_the_apis_json_shape(deployment):
    async with httpx.AsyncClient(base_url=deployment.nginx.origin, timeout=10) as client:
        response = await client.post("/v1/chat/completions", content=b"x" * 1_100_000)
    assert response.status_code == 413
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["error"]["code"] == "request_too_large"
