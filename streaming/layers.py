"""The in-memory channel layer of a single process (no REDIS_URL), made to scale with its sockets.

Channels' own InMemoryChannelLayer walks every channel and group to expire old messages on each send and
receive, deep-copies a message for each member of a group, and creates a queue for every receive and for
every member of every group_send (`setdefault` builds its default first), dropping it again as soon as it is
empty. With hundreds of sockets that was a large share of the server's CPU per token. Here expiry runs at
most once a second, a group's members share one message (see group_send), and a channel keeps its queue
while anyone waits on it; the once-a-second sweep drops the queues nobody waits on and nothing is in.
Everything else is channels' own.
"""

import asyncio
import contextlib
import time
from collections import Counter
from typing import Any

from channels.layers import InMemoryChannelLayer as ChannelsInMemoryChannelLayer

CLEAN_EVERY = 1.0  # seconds between expiry sweeps


class InMemoryChannelLayer(ChannelsInMemoryChannelLayer):  # type: ignore[misc]
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._cleaned_at = 0.0
        self._waiting: Counter[str] = Counter()  # receivers waiting, per channel

    def _clean_expired(self) -> None:
        now = time.monotonic()
        if now - self._cleaned_at >= CLEAN_EVERY:
            self._cleaned_at = now
            super()._clean_expired()
            for channel, queue in list(self.channels.items()):
                if queue.empty() and not self._waiting[channel]:
                    del self.channels[channel]

    def _queue(self, channel: str) -> "asyncio.Queue[tuple[float, dict[str, Any]]]":
        queue: asyncio.Queue[tuple[float, dict[str, Any]]] | None = self.channels.get(channel)
        if queue is None:
            queue = self.channels[channel] = asyncio.Queue(maxsize=self.get_capacity(channel))
        return queue

    async def receive(self, channel: str) -> dict[str, Any]:
        self.require_valid_channel_name(channel)
        self._clean_expired()
        queue = self._queue(channel)
        self._waiting[channel] += 1
        try:
            _, message = await queue.get()
        finally:
            self._waiting[channel] -= 1
            if not self._waiting[channel]:
                del self._waiting[channel]
        return message

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        """Puts `message` on every member's queue.

        Unlike channels' send(), members share one message instead of each getting a deep copy: this
        project's consumers never change the events they receive (the Redis layer, for its part, gives each
        a decoded copy anyway).
        """
        assert isinstance(message, dict), "Message is not a dict"  # noqa: S101 - channels' own contract
        self.require_valid_group_name(group)
        self._clean_expired()
        expires = time.time() + self.expiry
        for channel in list(self.groups.get(group, ())):
            queue = self._queue(channel)
            # As channels does: a full channel misses this message (watchers repair by offset).
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait((expires, message))
