"""The consumer's message loop: arrival order, one handler at a time, failures end it and stop its sources."""

import asyncio
from typing import Any

import pytest
from channels.exceptions import StopConsumer

from streaming.aio import dispatch_in_order


def source_of(queue: "asyncio.Queue[dict[str, Any]]"):
    async def receive() -> dict[str, Any]:
        return await queue.get()

    return receive


async def test_messages_are_handled_in_arrival_order_one_at_a_time():
    client: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    layer: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    handled: list[str] = []
    running = 0

    async def handle(message: dict[str, Any]) -> None:
        nonlocal running
        running += 1
        assert running == 1, "one handler at a time"
        await asyncio.sleep(0.001)
        handled.append(message["n"])
        running -= 1
        if message["n"] == "stop":
            raise StopConsumer

    loop = asyncio.create_task(dispatch_in_order([source_of(client), source_of(layer)], handle))
    for name, queue in (("a", client), ("b", layer), ("c", client), ("d", layer)):
        queue.put_nowait({"n": name})
        await asyncio.sleep(0.01)
    layer.put_nowait({"n": "stop"})
    with pytest.raises(StopConsumer):
        await asyncio.wait_for(loop, 1)
    assert handled == ["a", "b", "c", "d", "stop"]


def cancellable_source(cancelled: asyncio.Event):
    """A source that never yields a message and records that it was cancelled."""
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def receive() -> dict[str, Any]:
        try:
            return await queue.get()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    return receive


async def ignore(message: dict[str, Any]) -> None:
    pass


async def test_a_failing_source_ends_the_loop_with_its_error_and_the_other_source_is_cancelled():
    waiting = asyncio.Event()
    cancelled = asyncio.Event()

    async def broken() -> dict[str, Any]:
        await waiting.wait()
        raise ConnectionError("gone")

    loop = asyncio.create_task(dispatch_in_order([broken, cancellable_source(cancelled)], ignore))
    await asyncio.sleep(0)
    waiting.set()
    with pytest.raises(ConnectionError, match="gone"):
        await asyncio.wait_for(loop, 1)
    assert cancelled.is_set()


async def test_cancelling_the_loop_cancels_its_sources():
    cancelled = asyncio.Event()
    loop = asyncio.create_task(dispatch_in_order([cancellable_source(cancelled)], ignore))
    await asyncio.sleep(0.01)
    loop.cancel()
    with pytest.raises(asyncio.CancelledError):
        await loop
    assert cancelled.is_set()


async def test_messages_put_into_the_inbox_directly_are_handled_in_order_with_the_sources():
    client: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    inbox: asyncio.Queue[Any] = asyncio.Queue()
    handled: list[str] = []

    async def handle(message: dict[str, Any]) -> None:
        handled.append(message["n"])
        if message["n"] == "stop":
            raise StopConsumer

    loop = asyncio.create_task(dispatch_in_order([source_of(client)], handle, inbox))
    client.put_nowait({"n": "from the client"})
    await asyncio.sleep(0.01)
    inbox.put_nowait({"n": "delivered"})
    inbox.put_nowait({"n": "stop"})
    with pytest.raises(StopConsumer):
        await asyncio.wait_for(loop, 1)
    assert handled == ["from the client", "delivered", "stop"]


async def test_a_source_that_answers_at_once_after_its_disconnect_is_not_asked_again():
    """Some ASGI servers answer every receive after `websocket.disconnect` at once, without suspending: a
    source asked again would hold the event loop for good."""
    asked = 0

    async def after_the_end() -> dict[str, Any]:
        nonlocal asked
        asked += 1
        if asked > 100:  # asked again and again: end the test with a failure instead of a hang
            raise RuntimeError("asked after the disconnect")
        return {"type": "websocket.disconnect", "code": 1000}

    handled: list[str] = []

    async def handle(message: dict[str, Any]) -> None:
        handled.append(message["type"])

    loop = asyncio.create_task(dispatch_in_order([after_the_end], handle))
    await asyncio.sleep(0.05)
    assert not loop.done(), loop.exception()
    assert (asked, handled) == (1, ["websocket.disconnect"])
    loop.cancel()
    with pytest.raises(asyncio.CancelledError):
        await loop
