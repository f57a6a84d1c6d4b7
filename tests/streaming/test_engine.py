"""The engine in-process: checkpoint writes per answer, coalescing and the sweeper."""

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model
from django.db.backends.signals import connection_created
from django.utils import timezone

from conversations import services
from conversations.models import Message
from conversations.options import GenerationOptions
from streaming.aio import close_database_connections
from streaming.events import conversation_group, get_bus
from tests.support import unique

pytestmark = pytest.mark.django_db(transaction=True)


def new_turn(model: str) -> services.Turn:
    user = get_user_model().objects.create_user(username=unique()[:20])
    return services.message_send(
        user=user,
        client_id=unique(),
        conversation_id=None,
        content="count writes",
        options=GenerationOptions(model=model),
    )


class WriteCounter:
    """Counts the statements that write message rows, on every connection opened while it listens.

    The engine's ORM calls run on the database threads, each with a connection of its own that it keeps: the
    counter closes those first, then wraps each connection as it is created (and unwraps them all at the end).
    """

    def __init__(self) -> None:
        self.writes: list[str] = []
        self.wrapped: list[Any] = []

    def __enter__(self) -> "WriteCounter":
        close_database_connections()
        connection_created.connect(self.wrap)
        return self

    def __exit__(self, *exc: object) -> None:
        connection_created.disconnect(self.wrap)
        for wrapper in self.wrapped:
            wrapper.execute_wrappers.remove(self)

    def wrap(self, sender: Any, connection: Any, **kwargs: Any) -> None:
        if self not in connection.execute_wrappers:
            connection.execute_wrappers.append(self)
            self.wrapped.append(connection)

    def __call__(self, execute, sql, params, many, context):
        head = sql.lstrip().split(None, 1)[0].upper()
        if head in {"UPDATE", "INSERT"} and "conversations_message" in sql:
            self.writes.append(head)
        return execute(sql, params, many, context)


class Collector:
    """A bus subscriber of a conversation's group, as a watcher is, keeping what it gets."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    def deliver(self, event: dict[str, Any]) -> None:
        self.queue.put_nowait(event)

    async def next(self) -> dict[str, Any]:
        return await asyncio.wait_for(self.queue.get(), 15)


async def subscribe(conversation_id: object) -> Collector:
    collector = Collector()
    bus = get_bus()
    await bus.join(conversation_group(conversation_id), bus.register(collector))
    return collector


async def collect(collector: Collector, until_done: str) -> list[dict[str, Any]]:
    events = []
    while True:
        event = await collector.next()
        events.append(event)
        if event["type"] == "gen.done" and event["message"] == until_done:
            return events


async def test_a_1000_token_answer_writes_about_once_a_second(engine):
    turn = await sync_to_async(new_turn)("dev:tokens=1000,tps=400,ttft=0")
    collector = await subscribe(turn.conversation.pk)
    answer = str(turn.assistant_message.pk)
    started = asyncio.get_running_loop().time()
    with WriteCounter() as counter:
        await engine.start(answer)
        events = await collect(collector, answer)
    elapsed = asyncio.get_running_loop().time() - started
    saved = await sync_to_async(Message.objects.get)(pk=answer)
    assert saved.status == "complete" and saved.completion_tokens == 1000
    # One checkpoint per second of streaming, plus the final write.
    assert 2 <= len(counter.writes) <= elapsed / 1.0 + 2, (len(counter.writes), elapsed)

    deltas = [e for e in events if e["type"] == "gen.delta"]
    assert "".join(d["text"] for d in deltas) == saved.content
    # 1,000 tokens at 400/s in ~2.5 s: coalescing per 40 ms window gives tens of deltas, not a thousand.
    assert len(deltas) < 200, len(deltas)
    assert [d["offset"] for d in deltas] == [sum(len(x["text"]) for x in deltas[:i]) for i in range(len(deltas))]


async def test_first_delta_is_published_at_once_not_after_a_window(engine, settings):
    settings.CHAT_COALESCE_MS = 2000
    # Tokens 10 ms apart (each its own read), all within the 2 s window.
    turn = await sync_to_async(new_turn)("dev:tokens=40,tps=100,ttft=0")
    collector = await subscribe(turn.conversation.pk)
    answer = str(turn.assistant_message.pk)
    started = asyncio.get_running_loop().time()
    await engine.start(answer)
    first = await collector.next()
    assert first["type"] == "gen.delta" and first["offset"] == 0
    assert asyncio.get_running_loop().time() - started < 1.0, "the first delta must not wait for the window"
    events = await collect(collector, answer)
    later = [e for e in events if e["type"] == "gen.delta"]
    # With a 2 s window, everything after the first delta arrives in one coalesced batch.
    assert len(later) == 1


def test_sweep_marks_expired_leases_interrupted_and_leaves_live_ones(db):
    live = new_turn("dev").assistant_message
    dead = new_turn("dev").assistant_message
    Message.objects.filter(pk=dead.pk).update(content="partial", lease_expires_at=timezone.now() - timedelta(seconds=1))
    swept = services.messages_sweep_expired()
    assert [m.pk for m in swept] == [dead.pk]
    dead.refresh_from_db()
    live.refresh_from_db()
    assert (dead.status, dead.content, dead.error_code) == ("interrupted", "partial", "interrupted")
    assert live.status == "streaming"


async def test_engine_sweep_tells_watchers(engine):
    turn = await sync_to_async(new_turn)("dev")
    answer = turn.assistant_message
    await sync_to_async(Message.objects.filter(pk=answer.pk).update)(
        content="half", lease_expires_at=timezone.now() - timedelta(seconds=1)
    )
    collector = await subscribe(turn.conversation.pk)
    assert await engine.sweep() == 1
    done = await collector.next()
    assert (done["type"], done["status"], done["length"]) == ("gen.done", "interrupted", 4)


async def test_an_answer_swept_meanwhile_keeps_the_sweepers_version_and_watchers_are_told_so(engine):
    # A database outage longer than the lease: another process swept the answer before this one could save it.
    turn = await sync_to_async(new_turn)("dev:tokens=60,tps=40,ttft=0")
    answer = str(turn.assistant_message.pk)
    collector = await subscribe(turn.conversation.pk)
    await engine.start(answer)
    await collector.next()  # the first delta
    await sync_to_async(Message.objects.filter(pk=answer).update)(status="interrupted", content="swept text")
    events = await collect(collector, answer)
    done = events[-1]
    assert (done["status"], done["length"], done["blocks"]) == ("interrupted", len("swept text"), [])
    saved = await sync_to_async(Message.objects.get)(pk=answer)
    assert (saved.status, saved.content) == ("interrupted", "swept text")
