"""The in-memory channel layer of a single process (no REDIS_URL), made to scale with its sockets.

Channels' own InMemoryChannelLayer walks every channel and group to expire old messages on each group_send
and starts a task per recipient; with hundreds of sockets that dominated the server's CPU. Here expiry runs
at most once a second, and a group's members are served in turn without a copy each (see group_send).
Everything else is channels' own.
"""

import asyncio
import contextlib
import time
from typing import Any

from channels.layers import InMemoryChannelLayer as ChannelsInMemoryChannelLayer

CLEAN_EVERY = 1.0  # seconds between expiry sweeps


class InMemoryChannelLayer(ChannelsInMemoryChannelLayer):  # type: ignore[misc]
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._cleaned_at = 0.0

    def _clean_expired(self) -> None:
        now = time.monotonic()
        if now - self._cleaned_at >= CLEAN_EVERY:
            self._cleaned_at = now
            super()._clean_expired()

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
            queue = self.channels.setdefault(channel, asyncio.Queue(maxsize=self.get_capacity(channel)))
            # As channels does: a full channel misses this message (watchers repair by offset).
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait((expires, message))
