"""The asyncio plumbing of the live side: database work from the event loop, a consumer's message loop, firm
cancellation, and tasks detached from a request.
"""

import asyncio
import contextvars
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

from channels.db import database_sync_to_async

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

# --- database work --------------------------------------------------------------------------------------------


def orm(func: Callable[P, R]) -> Callable[P, Awaitable[R]]:
    """Runs an ORM function (a service or selector, each its own unit of work) on a worker thread.

    This is the one way the live side reaches the database. Not on the one "thread-sensitive" thread that
    database_sync_to_async uses by default: every socket's requests, every generation's checkpoints and every
    final write would queue there one behind the other, and under load answers waited seconds to start.
    Connections are closed (returned to the pool) after each call, as with database_sync_to_async.
    """
    wrapped: Callable[P, Awaitable[R]] = database_sync_to_async(func, thread_sensitive=False)
    return wrapped


# --- a consumer's message loop ----------------------------------------------------------------------------------

Source = Callable[[], Awaitable[dict[str, Any]]]
Handler = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass(frozen=True)
class _Failed:
    error: BaseException


async def dispatch_in_order(sources: list[Source], handle: Handler) -> None:
    """Handles every message of `sources` with `handle`, one at a time, until a handler or a source raises.

    Channels' own loop (`await_many_dispatch`) waits on both sources with `asyncio.wait` and starts a new task
    for every message it takes, which for a socket receiving tens of deltas a second is a visible share of
    the server's CPU per token (docs/benchmarks.md). Here each source has one long-lived task that moves what
    it receives into a single queue, and the loop handles the queue in arrival order; as with channels, a
    handler finishes before the next message is handled, and an exception (StopConsumer included) ends the
    loop.
    """
    inbox: asyncio.Queue[dict[str, Any] | _Failed] = asyncio.Queue()

    async def pump(source: Source) -> None:
        try:
            while True:
                inbox.put_nowait(await source())
        except asyncio.CancelledError:
            raise
        except BaseException as error:  # handed to the loop, which raises it
            inbox.put_nowait(_Failed(error))

    pumps = [asyncio.create_task(pump(source)) for source in sources]
    try:
        while True:
            message = await inbox.get()
            if isinstance(message, _Failed):
                raise message.error
            await handle(message)
    finally:
        for task in pumps:
            task.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)


# --- cancellation -------------------------------------------------------------------------------------------------

CANCEL_REPEAT_SECONDS = 0.2
CANCEL_PERSISTENCE = 10.0
_cancellers: set["asyncio.Task[None]"] = set()


def cancel_firmly(task: "asyncio.Task[Any]") -> None:
    """Cancels `task`, repeating the request until it ends (for at most CANCEL_PERSISTENCE seconds).

    On Python 3.11, `asyncio.wait_for` (which redis-py and others wrap around socket calls) swallows a
    cancellation that arrives just as the call completes, and the task carries on as if never cancelled. A
    stop must stop, so the request is repeated until the task has actually ended.
    """
    task.cancel()

    async def repeat() -> None:
        deadline = time.monotonic() + CANCEL_PERSISTENCE
        while not task.done() and time.monotonic() < deadline:
            await asyncio.sleep(CANCEL_REPEAT_SECONDS)
            if not task.done():
                task.cancel()

    canceller = asyncio.create_task(repeat())
    _cancellers.add(canceller)
    canceller.add_done_callback(_cancellers.discard)


_detached: set["asyncio.Task[Any]"] = set()


async def detached(action: Coroutine[Any, Any, T]) -> T:
    """Runs an action that may start a generation from an HTTP request, as a WebSocket consumer would.

    Django runs each request in an asgiref ThreadSensitiveContext. A task created inside inherits it, so a
    generation started from a request would do its database work on that request's private thread (and, once
    the request is over, on a new thread of its own) instead of the process's shared one. A fresh context
    starts it as a socket does. The action is shielded: a client leaving mid-way does not cut it between its
    write and the start of the generation.
    """
    task = asyncio.create_task(action, context=contextvars.Context())
    _detached.add(task)
    task.add_done_callback(_detached.discard)
    return await asyncio.shield(task)
