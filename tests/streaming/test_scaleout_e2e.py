"""Several processes: watchers and cancels across the Redis layer, and answers orphaned by a crash."""

import os

import pytest
from asgiref.sync import sync_to_async

from conversations.models import Message
from tests.services import reachable
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


async def test_sigterm_saves_running_answers_as_interrupted(daphne_factory, make_user, upstream):
    server = daphne_factory(fresh=True)
    _, session = await sync_to_async(make_user)()
    chat = await ChatSocket.connect(server, session)
    key = unique()
    _, answer = await chat.send_message(
        "stop the server", client_id=unique(), model=f"dev:tps=40,tokens=1000,key={key}"
    )
    for _ in range(5):
        await chat.recv_until(lambda e: e["type"] == "delta")
    received = chat.texts[answer]
    server.stop()  # SIGTERM, then wait for the process to exit

    saved = await sync_to_async(Message.objects.get)(pk=answer)
    assert saved.status == Message.Status.INTERRUPTED
    assert saved.content.startswith(received)
    [record] = upstream.stats.find(key)
    assert record.outcome == "client_disconnected"
