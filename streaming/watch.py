"""Watching generations: turns the lossy, possibly reordered layer events into an exact stream per client.

A `Watcher` belongs to one client connection (a WebSocket, later an SSE response). It follows one
conversation group and keeps, per streaming message, the offset the client has. Deltas behind that offset
are trimmed, a delta ahead of it means the layer dropped something and triggers a resume request to the
generation, and when a generation ends the remainder always comes from the database. The client therefore
sees every character exactly once, whatever the layer lost.
"""

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from channels.db import database_sync_to_async
from channels.layers import BaseChannelLayer, get_channel_layer

from conversations.models import Message
from streaming import protocol
from streaming.engine import conversation_group, get_engine

Emit = Callable[[dict[str, Any]], Awaitable[None]]

# A resume request unanswered this long is retried, after checking whether the answer ended meanwhile.
RESUME_TIMEOUT = 2.0
# A watched answer silent this long is checked against the database (its `done` may have been dropped).
IDLE_CHECK = 10.0
WATCHDOG_PERIOD = 1.0


@dataclass
class _Watch:
    offset: int
    resume_requested_at: float | None = None
    last_event_at: float = 0.0


def _final_row(message_id: str, conversation_id: str) -> Message | None:
    return (
        Message.objects.filter(pk=message_id, conversation_id=conversation_id)
        .exclude(status=Message.Status.STREAMING)
        .first()
    )


class Watcher:
    def __init__(self, *, channel_name: str, emit: Emit) -> None:
        self.channel_name = channel_name
        self.emit = emit
        self.layer: BaseChannelLayer = get_channel_layer()
        self.conversation_id: str | None = None
        self.watches: dict[str, _Watch] = {}
        self.announced: set[str] = set()
        self._lock = asyncio.Lock()
        self._watchdog: asyncio.Task[None] | None = None

    async def follow(self, conversation_id: str) -> None:
        """Makes `conversation_id` the one conversation this client watches.

        Call it before reading the conversation from the database, so no event falls between the read and
        the subscription.
        """
        if conversation_id == self.conversation_id:
            return
        await self.unfollow()
        self.conversation_id = conversation_id
        await self.layer.group_add(conversation_group(conversation_id), self.channel_name)

    async def unfollow(self) -> None:
        if self.conversation_id is not None:
            await self.layer.group_discard(conversation_group(self.conversation_id), self.channel_name)
        self.conversation_id = None
        self.watches.clear()
        self.announced.clear()

    async def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
        await self.unfollow()

    def mark_announced(self, *message_ids: str) -> None:
        self.announced.update(message_ids)

    async def watch(self, message_id: str, offset: int, *, ask: bool = True) -> None:
        """Streams a `streaming` message to the client from `offset` (what the client already has).

        With `ask`, the generation is asked for the text from `offset`, covering whatever the database
        checkpoint and the live deltas do not.
        """
        now = time.monotonic()
        self.watches[message_id] = _Watch(offset=offset, last_event_at=now)
        self._ensure_watchdog()
        if ask:
            await self._ask(message_id)

    async def _ask(self, message_id: str) -> None:
        watch = self.watches.get(message_id)
        if watch is None:
            return
        watch.resume_requested_at = time.monotonic()
        await get_engine().request_resume(message_id, watch.offset, self.channel_name)

    # --- layer events ------------------------------------------------------------------------------------

    async def on_message(self, payload: dict[str, Any]) -> None:
        message_id = payload["id"]
        async with self._lock:
            # Events of a conversation this client just left may still be queued for it.
            if payload["conversation"] != self.conversation_id or message_id in self.announced:
                return
            self.announced.add(message_id)
            await self.emit({"type": "message", "message": payload})
        if payload["status"] == Message.Status.STREAMING and message_id not in self.watches:
            await self.watch(message_id, len(payload["content"]), ask=bool(payload["content"]))

    async def on_delta(self, event: dict[str, Any]) -> None:
        message_id, offset, text = event["message"], event["offset"], event["text"]
        async with self._lock:
            watch = self.watches.get(message_id)
            if watch is None:
                return
            now = time.monotonic()
            watch.last_event_at = now
            if offset > watch.offset:
                # Something between watch.offset and offset was dropped: ask for it unless a request is out.
                pending = watch.resume_requested_at is not None and now - watch.resume_requested_at <= RESUME_TIMEOUT
                ask = not pending
            else:
                ask = False
                watch.resume_requested_at = None
                fresh = text[watch.offset - offset :]
                if fresh:
                    start = watch.offset
                    watch.offset += len(fresh)
                    await self.emit(protocol.delta_event(message_id, start, fresh))
        if ask:
            await self._ask(message_id)

    async def on_tools(self, event: dict[str, Any]) -> None:
        if event["message"] in self.watches:
            await self.emit(protocol.tool_calls_event(event["message"], event["tool_calls"]))

    async def on_done(self, event: dict[str, Any]) -> None:
        message_id = event["message"]
        watch = self.watches.get(message_id)
        if watch is None:
            return
        if watch.offset < event["length"]:
            # The final text is in the database before `gen.done` is published.
            await self._finish_from_database(message_id)
            return
        self.watches.pop(message_id, None)
        async with self._lock:
            await self.emit(
                protocol.done_event(
                    message_id,
                    event["status"],
                    usage=event.get("usage"),
                    error=event.get("error"),
                    finish_reason=event.get("finish_reason"),
                )
            )

    async def send_final(self, message: Message, offset: int) -> None:
        """Sends a finished message's text from `offset`, then its `done`."""
        async with self._lock:
            if offset < len(message.content):
                await self.emit(protocol.delta_event(str(message.pk), offset, message.content[offset:]))
            await self.emit(
                protocol.done_event(
                    str(message.pk),
                    message.status,
                    usage=protocol.usage_payload(message),
                    error=protocol.error_payload(message.error_code, message.error_message),
                    finish_reason=message.finish_reason or None,
                )
            )

    async def _finish_from_database(self, message_id: str) -> bool:
        """Completes the watch from the database if the answer has ended; False while it still streams."""
        if self.conversation_id is None:
            return False
        row = await database_sync_to_async(_final_row)(message_id, self.conversation_id)
        watch = self.watches.get(message_id)
        if row is None or watch is None:
            return False
        del self.watches[message_id]
        await self.send_final(row, watch.offset)
        return True

    # --- watchdog ----------------------------------------------------------------------------------------

    def _ensure_watchdog(self) -> None:
        if self._watchdog is None or self._watchdog.done():
            self._watchdog = asyncio.create_task(self._watch_dog())

    async def _watch_dog(self) -> None:
        """Repairs what lost layer messages would otherwise leave hanging: resumes and `done`s."""
        while self.watches:
            await asyncio.sleep(WATCHDOG_PERIOD)
            now = time.monotonic()
            for message_id, watch in list(self.watches.items()):
                stale_resume = (
                    watch.resume_requested_at is not None and now - watch.resume_requested_at > RESUME_TIMEOUT
                )
                idle = now - watch.last_event_at > IDLE_CHECK
                if not (stale_resume or idle):
                    continue
                watch.last_event_at = now
                if not await self._finish_from_database(message_id) and stale_resume:
                    await self._ask(message_id)
