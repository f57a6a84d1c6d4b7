"""Nothing lost when Redis blips or a client closes: real daphne processes on a private redis-server that the
tests stop and start again, and clients that leave at the worst moments."""

import asyncio
import time
from datetime import timedelta

import httpx
import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone

from conversations import services
from conversations.models import Message
from conversations.options import GenerationOptions
from tests.deploy.harness import PrivateRedis
from tests.deploy.test_deployment import simulated
from tests.support import ChatSocket, unique

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def redis():
    server = PrivateRedis().start()
    yield server
    server.stop()


@pytest.fixture
def on_redis(daphne_factory, redis):
    """Starts daphne processes sharing the private Redis."""
    prefix = f"faults-{unique()[:8]}"

    def start(**overrides: str):
        return daphne_factory(fresh=True, REDIS_URL=redis.url, CHANNEL_PREFIX=prefix, **overrides)

    return start


async def metrics_of(server) -> dict[str, float]:
    async with httpx.AsyncClient(base_url=server.origin) as client:
        text = (await client.get("/metrics")).text
    return {
        name: float(value)
        for name, value in (line.rsplit(" ", 1) for line in text.splitlines() if line.startswith("chat_"))
    }


async def test_a_message_sent_while_redis_is_down_gets_its_whole_answer(on_redis, redis, make_user, upstream):
    server = on_redis()
    _, session = await sync_to_async(make_user)()
    chat = await ChatSocket.connect(server, session)
    redis.stop()
    key = unique()
    model = f"dev:tokens=40,tps=200,key={key}"
    _, answer = await chat.send_message("while away", client_id=unique(), model=model)
    done = await chat.done(answer)
    assert done["status"] == "complete"
    assert chat.texts[answer] == simulated(upstream, model, "while away")
    saved = await sync_to_async(Message.objects.get)(pk=answer)
    assert (saved.status, saved.content) == ("complete", chat.texts[answer])
    assert [record.outcome for record in upstream.stats.find(key)] == ["complete"], "the model was asked once"
    await chat.close()


async def test_the_handshake_while_redis_is_down_is_answered(on_redis, redis, make_user):
    server = on_redis()
    _, session = await sync_to_async(make_user)()
    redis.stop()
    # Not an HTTP 500, nor a close: Redis only carries what crosses processes, so a socket opens and is served.
    chat = await ChatSocket.connect(server, session)
    pong = await chat.request({"type": "ping", "id": "p"}, "pong")
    assert pong["type"] == "pong"
    listed = await chat.request({"type": "conversations", "id": "l"}, "conversations")
    assert listed["type"] == "conversations"
    await chat.close()


async def test_after_redis_returns_watchers_elsewhere_catch_up_within_a_second(on_redis, redis, make_user, upstream):
    writer_process, watcher_process = on_redis(), on_redis()
    _, session = await sync_to_async(make_user)()
    writer = await ChatSocket.connect(writer_process, session)
    short_writer = await ChatSocket.connect(writer_process, session)
    model = "dev:tokens=400,tps=40"
    conversation, running = await writer.send_message("long", client_id=unique(), model=model)
    short_model = "dev:tokens=60,tps=40"
    short_conversation, short = await short_writer.send_message("short", client_id=unique(), model=short_model)

    watcher = await ChatSocket.connect(watcher_process, session)
    other = await ChatSocket.connect(watcher_process, session)
    await watcher.request({"type": "open", "conversation": conversation, "id": "o"}, "history")
    await other.request({"type": "open", "conversation": short_conversation, "id": "o"}, "history")
    await watcher.recv_until(lambda e: e["type"] == "delta" and e["message"] == running)

    redis.stop()
    await asyncio.sleep(2.0)  # the short answer ends meanwhile: its `done` cannot cross
    redis.start()
    back = time.monotonic()
    # The running answer's deltas reach the other process again, and the ended one's end, at once.
    caught_up = await watcher.recv_until(lambda e: e["type"] == "delta" and e["message"] == running, timeout=5)
    assert time.monotonic() - back < 1.5, caught_up
    ended = await other.done(short, timeout=5)
    assert time.monotonic() - back < 1.5
    assert ended["status"] == "complete"

    for socket in (writer, watcher):
        await socket.done(running, timeout=30)
    saved = await sync_to_async(
        lambda: {
            str(pk): content
            for pk, content in Message.objects.filter(pk__in=[running, short]).values_list("pk", "content")
        }
    )()
    assert watcher.texts[running] == writer.texts[running] == saved[running]
    assert other.texts[short] == saved[short]
    assert writer.texts[running] == simulated(upstream, model, "long")
    for socket in (writer, short_writer, watcher, other):
        await socket.close()


async def test_clients_closing_right_after_done_leave_nothing_behind(daphne_factory, make_user):
    server = daphne_factory(fresh=True)
    clients = []
    for _ in range(8):
        _, session = await sync_to_async(make_user)()
        clients.append(await ChatSocket.connect(server, session))
    sends = [c.send_message("quick", client_id=unique(), model="dev:tokens=5,tps=500,ttft=0") for c in clients]
    answers = [answer for _, answer in await asyncio.gather(*sends)]
    # Each client leaves the moment its answer is done, as the list update of that answer is on its way.
    await asyncio.gather(*(c.done(a) for c, a in zip(clients, answers, strict=True)))
    await asyncio.gather(*(c.ws.close() for c in clients))
    # And some leave with an answer under way.
    leaving = []
    for _ in range(4):
        _, session = await sync_to_async(make_user)()
        chat = await ChatSocket.connect(server, session)
        await chat.send({"type": "send", "id": unique(), "content": "bye", "model": "dev:tokens=50,tps=100"})
        leaving.append(chat)
    await asyncio.gather(*(c.ws.close() for c in leaving))

    for _ in range(50):
        metrics = await metrics_of(server)
        if metrics["chat_generations_active"] == 0 and metrics["chat_sockets_open"] == 0:
            break
        await asyncio.sleep(0.2)
    assert metrics["chat_watchers_active"] == 0
    assert metrics["chat_sockets_open"] == 0
    assert metrics["chat_bus_subscriptions"] == 0, "no group keeps a member of a closed socket or an ended answer"
    assert "Attempt to send on a closed protocol" not in server.output()
    # The process is fine: a new client is served.
    _, session = await sync_to_async(make_user)()
    chat = await ChatSocket.connect(server, session)
    _, answer = await chat.send_message("still here", client_id=unique(), model="dev:tokens=5,ttft=0")
    assert (await chat.done(answer))["status"] == "complete"
    await chat.close()


async def test_a_resent_id_whose_answer_no_process_started_is_started(daphne_factory, make_user, upstream):
    server = daphne_factory(fresh=True)
    user, session = await sync_to_async(make_user)()
    client_id, key = unique(), unique()
    model = f"dev:tokens=30,tps=300,ttft=0,key={key}"
    # The rows of a send whose process died between its commit and the start of the answer.
    turn = await sync_to_async(services.message_send)(
        user=user, client_id=client_id, conversation_id=None, content="orphan", options=GenerationOptions(model=model)
    )
    answer = str(turn.assistant_message.pk)
    await sync_to_async(Message.objects.filter(pk=answer).update)(updated_at=timezone.now() - timedelta(seconds=60))

    chat = await ChatSocket.connect(server, session)
    # Sent again after a reconnect, and said so: the model is asked only once the server knows it is new.
    frame = {"type": "send", "id": client_id, "content": "orphan", "conversation": None, "model": model}
    await chat.send({**frame, "retry": True})
    done = await chat.done(answer, timeout=20)
    assert done["status"] == "complete"
    assert chat.texts[answer] == simulated(upstream, model, "orphan")
    assert [record.outcome for record in upstream.stats.find(key)] == ["complete"]
    await chat.close()
