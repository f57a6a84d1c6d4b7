"""Database work from the event loop."""

from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

from channels.db import database_sync_to_async

P = ParamSpec("P")
R = TypeVar("R")


def orm(func: Callable[P, R]) -> Callable[P, Awaitable[R]]:
    """Runs an ORM function (a service or selector, each its own unit of work) on a worker thread.

    Not on the one "thread-sensitive" thread that database_sync_to_async uses by default: every socket's
    requests, every generation's checkpoints and every final write would queue there one behind the other,
    and under load answers waited seconds to start. Connections are closed (returned to the pool) after each
    call, as with database_sync_to_async.
    """
    wrapped: Callable[P, Awaitable[R]] = database_sync_to_async(func, thread_sensitive=False)
    return wrapped
