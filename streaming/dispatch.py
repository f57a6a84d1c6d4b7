"""A consumer's message loop: the client's frames and the channel layer's events, handled one at a time.

Channels' own loop (`await_many_dispatch`) waits on both sources with `asyncio.wait` and starts a new task
for every message it takes, which for a socket receiving tens of deltas a second is a visible share of the
server's CPU per token (docs/benchmarks.md). Here each source has one long-lived task that moves what it
receives into a single queue, and the loop handles the queue in arrival order; as with channels, a handler
finishes before the next message is handled, and an exception (StopConsumer included) ends the loop.
"""

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

Source = Callable[[], Awaitable[dict[str, Any]]]
Handler = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass(frozen=True)
class _Failed:
    error: BaseException


async def dispatch_in_order(sources: list[Source], handle: Handler) -> None:
    """Handles every message of `sources` with `handle` until a handler or a source raises."""
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
