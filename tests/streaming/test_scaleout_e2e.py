"""Several processes: watchers and cancels across the Redis layer, and answers orphaned by a crash."""

import asyncio
import os
import signal

import pytest
from asgiref.sync import sync_to_async
from websockets.exceptions import ConnectionClosed

from conversations.models import Message
from streaming.protocol import CLOSE_SERVICE_RESTART
from tests.reachability import reachable
from tests.support import ChatSocket, require, unique

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

REDIS_URL = os.environ.get("REDIS_URL") or os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture
def redis_env() -> dict[str, str]:
    require("Redis", reachable(REDIS_URL, 6379))
    return {"REDIS_URL": REDIS_URL, "CHANNEL_PREFIX": f"test-{unique()[:12]}"}


async def test_watcher_on_another_process_gets_live_deltas_and_can_cancel(
    daphne_factory, make_user, upstream, redis_env
):
    one = daphne_factory(fresh=True, **redis_env)
    two = daphne_factory(fresh=True, **redis_env)
    _, session = await sync_to_async(make_user)()
    writer = await ChatSocket.connect(one, session)
    key = unique()
    conversation, answer = await writer.send_message(
        "far away", client_id=unique(), model=f"dev:tps=40,tokens=400,key={key}"
    )

    watcher = await ChatSocket.connect(two, session)
    await watcher.request({"type": "open", "conversation": conversation}, "history")
    before = len(watcher.texts[answer])
    for _ in range(3):
        await watcher.recv_until(lambda e: e["type"] == "delta" and e["message"] == answer)
    assert len(watcher.texts[answer]) > before, "live deltas must cross processes"

    await watcher.send({"type": "cancel", "message": answer})
    assert (await watcher.done(answer))["status"] == "cancelled"
    assert (await writer.done(answer))["status"] == "cancelled"
    saved = await sync_to_async(Message.objects.get)(pk=answer)
    assert saved.status == Message.Status.CANCELLED
    assert writer.texts[answer] == watcher.texts[answer] == saved.content
    [record] = upstream.stats.find(key)
    assert record.outcome == "client_disconnected"
    for socket in (writer, watcher):
        await socket.close()


async def test_answer_of_a_crashed_process_is_swept_to_interrupted_with_its_text(daphne_factory, make_user):
    lease = {"CHAT_LEASE_SECONDS": "6", "CHAT_SWEEP_SECONDS": "0.5", "CHAT_CHECKPOINT_SECONDS": "0.3"}
    doomed = daphne_factory(fresh=True, **lease)
    _, session = await sync_to_async(make_user)()
    chat = await ChatSocket.connect(doomed, session)
    conversation, answer = await chat.send_message("crash", client_id=unique(), model="dev:tps=30,tokens=1000")
    for _ in range(20):
        await chat.recv_until(lambda e: e["type"] == "delta")
    doomed.kill()

    survivor = daphne_factory(fresh=True, **lease)
    watcher = await ChatSocket.connect(survivor, session)
    history = await watcher.request({"type": "open", "conversation": conversation}, "history")
    [orphan] = [m for m in history["messages"] if m["id"] == answer]
    # The lease outlives the survivor's start-up, so the answer still looks live until the sweep.
    assert orphan["status"] == "streaming"
    assert orphan["content"]
    done = await watcher.done(answer, timeout=15)
    assert done["status"] == "interrupted"
    assert done["error"]["code"] == "interrupted"
    saved = await sync_to_async(Message.objects.get)(pk=answer)
    assert saved.status == Message.Status.INTERRUPTED
    assert saved.content == orphan["content"], "the checkpointed text is kept"
    await watcher.close()


async def test_sigterm_lets_short_answers_finish_and_saves_long_ones_as_interrupted(
    daphne_factory, make_user, upstream
):
    server = daphne_factory(fresh=True, CHAT_SHUTDOWN_GRACE_SECONDS="3")
    _, session = await sync_to_async(make_user)()
    chat = await ChatSocket.connect(server, session)
    short_key, long_key = unique(), unique()
    _, short = await chat.send_message("short", client_id=unique(), model=f"dev:tps=40,tokens=60,key={short_key}")
    _, long = await chat.send_message("long", client_id=unique(), model=f"dev:tps=40,tokens=1000,key={long_key}")
    await chat.recv_until(lambda e: e["type"] == "delta" and e["message"] == long)
    started = asyncio.get_running_loop().time()
    await asyncio.get_running_loop().run_in_executor(None, server.process.send_signal, signal.SIGTERM)

    # The sockets are closed at once with "service restart", so clients reconnect elsewhere right away,
    # well before the grace period is over.
    closed = await closing_code(chat)
    assert closed == CLOSE_SERVICE_RESTART
    assert asyncio.get_running_loop().time() - started < 3
    # No new connections meanwhile.
    with pytest.raises(ConnectionRefusedError):
        await ChatSocket.connect(server, session)
    await asyncio.get_running_loop().run_in_executor(None, server.process.wait, 15)

    short_row = await sync_to_async(Message.objects.get)(pk=short)
    long_row = await sync_to_async(Message.objects.get)(pk=long)
    assert short_row.status == Message.Status.COMPLETE, "an answer that ends within the grace period completes"
    assert short_row.content
    assert long_row.status == Message.Status.INTERRUPTED
    assert long_row.content and long_row.content_html
    [record] = upstream.stats.find(long_key)
    assert record.outcome == "client_disconnected"
    assert [r.outcome for r in upstream.stats.find(short_key)] == ["complete"]


async def closing_code(chat: ChatSocket) -> int | None:
    """Reads until the server closes the socket; the close code it sent."""
    try:
        while True:
            await chat.recv(timeout=5)
    except ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd is not None else None
