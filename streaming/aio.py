"""The asyncio plumbing of the live side: database work from the event loop, a consumer's message loop, firm
cancellation, and tasks detached from a request.
"""

import asyncio
import contextvars
import functools
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

from django.conf import settings
from django.db import connections

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

# --- database work --------------------------------------------------------------------------------------------

_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def _database_executor() -> ThreadPoolExecutor:
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=settings.DB_THREADS, thread_name_prefix="orm")
        return _executor


# A kept connection idle this long is checked before it is used again: a database restart meanwhile would
# otherwise fail the next unit of work that used it. Busy connections are not checked (their failures are
# retried by their callers, or reported to the client, which retries with the same id).
RECHECK_IDLE_SECONDS = 1.0
_idle_since = threading.local()


def _unit_of_work(func: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    if time.monotonic() - getattr(_idle_since, "at", 0.0) > RECHECK_IDLE_SECONDS:
        for connection in connections.all(initialized_only=True):
            if connection.connection is not None and not connection.is_usable():
                connection.close()
    try:
        return func(*args, **kwargs)
    finally:
        for connection in connections.all(initialized_only=True):
            # Kept open for the next unit of work on this thread (the threads are few and long-lived, so the
            # connections are too), unless an error left it unusable or a caller left autocommit off.
            connection.close_at = None
            if connection.errors_occurred or connection.get_autocommit() != connection.settings_dict["AUTOCOMMIT"]:
                connection.close_if_unusable_or_obsolete()
        _idle_since.at = time.monotonic()


def orm(func: Callable[P, R]) -> Callable[P, Awaitable[R]]:
    """Runs an ORM function (a service or selector, each its own unit of work) on the database threads.

    This is the one way the live side reaches the database. The threads are a bounded pool of their own
    (DB_THREADS): not the event loop's default executor, which the upstream client and the loop itself use,
    and not the one "thread-sensitive" thread of database_sync_to_async, where every socket's requests, every
    checkpoint and every final write would queue one behind the other. Each thread keeps its connection open
    between calls (Django's own check after each unit of work still drops one that failed): opening one per
    call, or taking one from the pool with a health check, cost more than the short queries it served.
    """

    @functools.wraps(func)
    async def run(*args: P.args, **kwargs: P.kwargs) -> R:
        loop = asyncio.get_running_loop()
        call = functools.partial(_unit_of_work, func, *args, **kwargs)
        # A fresh context: the caller's context variables (asgiref's request context among them) stay behind.
        return await loop.run_in_executor(_database_executor(), contextvars.Context().run, call)

    return run


def close_database_connections() -> None:
    """Closes the connections the database threads hold (at the end of a test session, say): each thread
    closes its own, since a connection belongs to the thread that opened it."""
    global _executor
    with _executor_lock:
        executor, _executor = _executor, None
    if executor is None:
        return
    workers = len(executor._threads)
    barrier = threading.Barrier(workers) if workers else None

    def close() -> None:
        connections.close_all()
        if barrier is not None:
            barrier.wait(timeout=10)  # holds each thread until all have taken one close: one each

    for _ in range(workers):
        executor.submit(close)
    executor.shutdown(wait=True)


# --- a consumer's message loop ----------------------------------------------------------------------------------

Source = Callable[[], Awaitable[dict[str, Any]]]
Handler = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass(frozen=True)
class _Failed:
    error: BaseException


Inbox = asyncio.Queue[Any]


async def dispatch_in_order(sources: list[Source], handle: Handler, inbox: Inbox | None = None) -> None:
    """Handles every message of `sources` (and whatever is put into `inbox` meanwhile) with `handle`, one at a
    time, until a handler or a source raises.

    Channels' own loop (`await_many_dispatch`) waits on its sources with `asyncio.wait` and starts a new task
    for every message it takes, which for a socket receiving tens of deltas a second is a visible share of
    the server's CPU per token (docs/benchmarks.md). Here each source has one long-lived task that moves what
    it receives into a single queue, others may put messages into that queue directly (the bus does), and the
    loop handles the queue in arrival order; as with channels, a handler finishes before the next message is
    handled, and an exception (StopConsumer included) ends the loop.
    """
    if inbox is None:
        inbox = asyncio.Queue()

    async def pump(source: Source) -> None:
        try:
            while True:
                message = await source()
                inbox.put_nowait(message)
                if str(message.get("type", "")).endswith(".disconnect"):
                    # ASGI's last message. A server may answer every later receive at once (uvicorn does),
                    # and a pump that went on asking would never let the event loop run anything else.
                    return
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


def spawn(action: Coroutine[Any, Any, Any]) -> None:
    """Starts an action that must run to its end even though the request that wants it is being cancelled (a
    client that went away), in a fresh context as `detached` does, without waiting for it."""
    task = asyncio.create_task(action, context=contextvars.Context())
    _detached.add(task)
    task.add_done_callback(_detached.discard)
