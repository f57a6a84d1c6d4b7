"""Watching generations: turns the lossy, possibly reordered events of the bus into an exact stream per client.

A `Watcher` belongs to one client connection (a WebSocket, an SSE response). It follows one conversation
group and keeps, per streaming message, the offset the client has. Deltas behind that offset are trimmed, a
delta ahead of it means something was lost on the way (the channel layer drops what it cannot carry) and
triggers a resume request to the generation, and when a generation ends the remainder always comes from the
database. The client therefore sees every character exactly once, whatever was lost.

Events reach a watcher through its owner: the bus hands them to `deliver`, which passes them to the owner's
queue (the consumer's message loop, the SSE stream's reader), and the owner calls `handle` in order.
"""

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from conversations import selectors
from conversations.markdown import BlockPayload
from conversations.models import Message
from conversations.payloads import ErrorPayload, error_payload, message_payload, rendered_html, usage_payload
from conversations.services import Turn, User
from streaming import events, metrics, protocol
from streaming.aio import orm
from streaming.events import conversation_group, get_bus
from streaming.lifecycle import get_engine

log = logging.getLogger(__name__)

Emit = Callable[[dict[str, Any]], Awaitable[None]]
EmitFrame = Callable[[str], Awaitable[None]]
Deliver = Callable[[dict[str, Any]], None]

# A resume request unanswered this long is retried, after checking whether the answer ended meanwhile.
RESUME_TIMEOUT = 2.0
# A watched answer silent this long is checked against the database (its `done` may have been dropped).
IDLE_CHECK = 10.0
# Resume requests unanswered this long: maybe no generation runs the answer, and the engine may take it over.
TAKE_OVER_AFTER = 6.0
WATCHDOG_PERIOD = 1.0


@dataclass
class _Watch:
    offset: int  # code points of the content the client has
    rendered: int  # code points of the content whose HTML blocks the client has
    resume_requested_at: float | None = None
    unanswered_since: float | None = None  # when the resume requests began to go unanswered
    last_event_at: float = 0.0


def _row(message_id: str, conversation_id: str) -> Message | None:
    return Message.objects.filter(pk=message_id, conversation_id=conversation_id).first()


class Watcher:
    """One client's view of the answers of the conversation it follows.

    `emit` sends the client a protocol event; `emit_frame`, when the client takes them, sends it a frame
    already serialised (the delta every client at the same offset receives, serialised once); `deliver` is
    where the bus's events go: the owner's queue, whose reader calls `handle`.
    """

    def __init__(self, *, emit: Emit, deliver: Deliver, emit_frame: EmitFrame | None = None) -> None:
        self.emit = emit
        self.emit_frame = emit_frame
        self.deliver = deliver
        self.bus = get_bus()
        self.key = self.bus.register(self)
        self.conversation_id: str | None = None
        self.watches: dict[str, _Watch] = {}
        self.announced: set[str] = set()
        self._lock = asyncio.Lock()
        self._watchdog: asyncio.Task[None] | None = None
        self._closed = False
        metrics.WATCHERS_ACTIVE.inc()

    async def follow(self, conversation_id: str, *, wait: bool = True) -> None:
        """Makes `conversation_id` the one conversation this client watches.

        Call it before reading the conversation from the database, so no event falls between the read and
        the subscription. `wait=False` when nothing of it can happen elsewhere yet (see Bus.join).
        """
        if conversation_id == self.conversation_id:
            return
        await self.unfollow()
        self.conversation_id = conversation_id
        await self.bus.join(conversation_group(conversation_id), self.key, wait=wait)

    async def unfollow(self) -> None:
        if self.conversation_id is not None:
            self.bus.leave(conversation_group(self.conversation_id), self.key)
        self.conversation_id = None
        self.watches.clear()
        self.announced.clear()

    async def close(self) -> None:
        """Stops watching for good (the answers go on); safe to call more than once."""
        if not self._closed:
            self._closed = True
            metrics.WATCHERS_ACTIVE.dec()
        if self._watchdog is not None:
            self._watchdog.cancel()
            # Waited for, not awaited: a cancellation of close()'s own caller must not be swallowed here.
            await asyncio.wait([self._watchdog])
        await self.unfollow()
        self.bus.unregister(self.key)

    def mark_announced(self, *message_ids: str) -> None:
        self.announced.update(message_ids)

    async def join(self, turn: Turn, ref: str | None) -> None:
        """Follows the conversation of a turn just written, announces its rows and watches its answer.

        For the `before_start` of a chat action (see streaming.services): the generation has not started yet,
        so nothing is missed; a retried request's answer may be well under way, so it is asked what it has.
        """
        # A turn this request created is this process's own: its events start here, and the client's frames
        # must not wait for Redis. A retried one may be under way elsewhere, so its events are waited for.
        await self.follow(str(turn.conversation.pk), wait=not turn.created)
        answer = turn.assistant_message
        payload: dict[str, Any] = {}
        for message in (turn.user_message, answer):
            if message is not None:
                self.mark_announced(str(message.pk))
                payload = message_payload(message)
                await self.emit(protocol.with_ref({"type": "message", "message": payload}, ref))
        if answer.status == Message.Status.STREAMING:
            await self.watch(str(answer.pk), len(answer.content), payload["rendered"], ask=not turn.created)
        else:
            await self.send_final(answer, len(answer.content))

    async def resume(self, *, user: User, message_id: str, offset: int, rendered: int | None = None) -> Message:
        """Follows one of the user's messages from `offset` (the text the client has; `rendered`, the text whose
        HTML it has, defaults to all of it): the rest of a finished message and its `done`, or the live text of
        an answer being written. Returns the message as read. Raises NotFound for someone else's."""
        get = orm(selectors.message_get_for_user)
        message = await get(user=user, message_id=message_id)
        await self.follow(str(message.conversation_id))
        # Read again once subscribed, so an answer that ended in between is seen as ended.
        message = await get(user=user, message_id=message_id)
        self.mark_announced(str(message.pk))
        if message.status == Message.Status.STREAMING:
            await self.watch(str(message.pk), offset, offset if rendered is None else rendered)
        else:
            # Also beyond its end: a client can hold live text that was never saved (its process died after
            # the last checkpoint); the `done` carries the saved length.
            await self.send_final(message, offset)
        return message

    async def watch(self, message_id: str, offset: int, rendered: int, *, ask: bool = True) -> None:
        """Streams a `streaming` message to the client from `offset` (the text it has) and `rendered` (the
        text whose HTML blocks it has).

        With `ask`, the generation is asked for the text from `offset`, covering whatever the database
        checkpoint and the live deltas do not.
        """
        now = time.monotonic()
        self.watches[message_id] = _Watch(offset=offset, rendered=min(rendered, offset), last_event_at=now)
        self._ensure_watchdog()
        if ask:
            await self._ask(message_id)

    async def _ask(self, message_id: str) -> None:
        watch = self.watches.get(message_id)
        if watch is None:
            return
        watch.resume_requested_at = time.monotonic()
        if watch.unanswered_since is None:
            watch.unanswered_since = watch.resume_requested_at
        await get_engine().request_resume(message_id, watch.offset, watch.rendered, await self.bus.address(self.key))

    # --- layer events ------------------------------------------------------------------------------------

    async def handle(self, event: dict[str, Any]) -> None:
        """Hands a conversation event (or a resume reply) to its handler below (events.WATCHER_HANDLERS)."""
        if event["type"] == events.RESYNC:
            await self.on_resync()
        else:
            await getattr(self, events.WATCHER_HANDLERS[event["type"]])(event)

    async def on_resync(self) -> None:
        """Events from other processes may have been lost (the channel layer was away): every answer being
        watched is checked against the database, and those still being written are asked for their text."""
        for message_id in list(self.watches):
            if not await self._finish_from_database(message_id):
                await self._ask(message_id)

    async def on_message(self, event: events.MessageEvent) -> None:
        payload = event["message"]
        message_id = payload["id"]
        if payload["status"] == Message.Status.STREAMING and event.get("_origin"):
            # Announced by another process: it may arrive seconds late (it waits in that process's queue to
            # Redis), when the answer has moved on or ended, and its client may already have it from elsewhere.
            # The row says where the answer is now.
            row = await orm(_row)(message_id, payload["conversation"])
            if row is None:
                return
            payload = message_payload(row)
        async with self._lock:
            # Events of a conversation this client just left may still be queued for it.
            if payload["conversation"] != self.conversation_id or message_id in self.announced:
                return
            self.announced.add(message_id)
            await self.emit({"type": "message", "message": payload})
        if payload["status"] == Message.Status.STREAMING and message_id not in self.watches:
            # Asked even when new: the generation starts before its row is announced, and may have published
            # text already (and a generation in another process learns that it is watched from there).
            await self.watch(message_id, len(payload["content"]), payload.get("rendered", 0))

    async def on_delta(self, event: events.DeltaEvent) -> None:
        message_id, offset, text = event["message"], event["offset"], event["text"]
        async with self._lock:
            watch = self.watches.get(message_id)
            if watch is None:
                return
            now = time.monotonic()
            watch.last_event_at = now
            ask = offset > watch.offset
            if not ask:
                fresh = text[watch.offset - offset :]
                start = watch.offset
                watch.offset += len(fresh)
                sent = event.get("blocks", [])
                blocks, ask = _new_blocks(watch, sent)
                if not ask:
                    watch.resume_requested_at = watch.unanswered_since = None
                frame = event.get("frame")
                if frame is not None and self.emit_frame is not None and start == offset and len(blocks) == len(sent):
                    # The client had exactly what preceded this delta: the frame serialised for all such clients.
                    await self.emit_frame(frame)
                elif fresh or blocks:
                    # A delta trimmed to what the client lacks: its tokens' log probabilities no longer match it.
                    whole = start == offset
                    logprobs = event.get("logprobs", []) if whole else []
                    await self.emit(protocol.delta_event(message_id, start, fresh, blocks, logprobs))
            # Something before this event was dropped: ask for it unless a request is already out.
            ask = ask and not (
                watch.resume_requested_at is not None and now - watch.resume_requested_at <= RESUME_TIMEOUT
            )
        if ask:
            await self._ask(message_id)

    async def on_superseded(self, event: events.SupersededEvent) -> None:
        if event["conversation"] == self.conversation_id:
            await self.emit(
                {"type": "superseded", "conversation": event["conversation"], "messages": list(event["messages"])}
            )

    async def on_tools(self, event: events.ToolsEvent) -> None:
        if event["message"] in self.watches:
            await self.emit(protocol.tool_calls_event(event["message"], event["tool_calls"]))

    async def on_done(self, event: events.DoneEvent) -> None:
        message_id = event["message"]
        watch = self.watches.get(message_id)
        if watch is None:
            return
        blocks, missing = _new_blocks(watch, event.get("blocks"))
        if watch.offset != event["length"] or missing or watch.rendered < watch.offset:
            # The final text and HTML are in the database before `gen.done` is published. (The client may also
            # have more than was saved: the live text of a process that died after its last checkpoint.)
            await self._finish_from_database(message_id)
            return
        self.watches.pop(message_id, None)
        async with self._lock:
            await self.emit(
                protocol.done_event(
                    message_id,
                    event["status"],
                    length=event["length"],
                    usage=event.get("usage"),
                    error=event.get("error"),
                    finish_reason=event.get("finish_reason"),
                    blocks=blocks,
                )
            )

    async def send_final(self, message: Message, offset: int) -> None:
        """Sends a finished message's text from `offset`, then its `done` with the whole HTML.

        A client that has more text than was saved (`offset` beyond the end) learns the saved length from the
        `done` and drops the rest: what was not saved is not part of the answer.
        """
        html, _ = rendered_html(message)
        async with self._lock:
            if offset < len(message.content):
                await self.emit(protocol.delta_event(str(message.pk), offset, message.content[offset:]))
            await self.emit(
                protocol.done_event(
                    str(message.pk),
                    message.status,
                    length=len(message.content),
                    usage=usage_payload(message),
                    error=error_payload(message.error_code, message.error_message),
                    finish_reason=message.finish_reason or None,
                    html=html,
                )
            )

    async def _finish_from_database(self, message_id: str) -> bool:
        """Completes the watch from the database if the answer has ended; False while it still streams.

        An answer deleted meanwhile (its conversation was) ends the watch too, as stopped, so that no client
        waits for it forever.
        """
        if self.conversation_id is None:
            return False
        row = await orm(_row)(message_id, self.conversation_id)
        watch = self.watches.get(message_id)
        if watch is None or (row is not None and row.status == Message.Status.STREAMING):
            return False
        del self.watches[message_id]
        if row is None:
            gone: ErrorPayload = {"code": "not_found", "message": "The conversation was deleted."}
            async with self._lock:
                await self.emit(
                    protocol.done_event(message_id, Message.Status.CANCELLED, length=watch.offset, error=gone)
                )
        else:
            await self.send_final(row, watch.offset)
        return True

    # --- watchdog ----------------------------------------------------------------------------------------

    def _ensure_watchdog(self) -> None:
        if self._watchdog is None or self._watchdog.done():
            self._watchdog = asyncio.create_task(self._watch_dog())

    async def _watch_dog(self) -> None:
        """Repairs what lost events would otherwise leave hanging: resumes and `done`s.

        A failure (the database away) is logged and tried again next round: this is the recovery path, it
        must not end itself.
        """
        while self.watches:
            await asyncio.sleep(WATCHDOG_PERIOD)
            try:
                await self._repair()
            except Exception:
                log.warning("watchdog round failed; retrying", exc_info=True)

    async def _repair(self) -> None:
        now = time.monotonic()
        for message_id, watch in list(self.watches.items()):
            stale_resume = watch.resume_requested_at is not None and now - watch.resume_requested_at > RESUME_TIMEOUT
            idle = now - watch.last_event_at > IDLE_CHECK
            if not (stale_resume or idle):
                continue
            watch.last_event_at = now
            if await self._finish_from_database(message_id):
                continue
            if watch.unanswered_since is not None and now - watch.unanswered_since > TAKE_OVER_AFTER:
                await get_engine().take_over(message_id)
            await self._ask(message_id)


def _new_blocks(watch: _Watch, blocks: list[BlockPayload] | None) -> tuple[list[BlockPayload], bool]:
    """The blocks of an event that the client lacks, in order, advancing `watch.rendered`; and whether one is
    missing before them (then the generation must be asked again)."""
    fresh: list[BlockPayload] = []
    for block in blocks or ():
        if block["end"] <= watch.rendered:
            continue
        if block["start"] > watch.rendered or block["end"] > watch.offset:
            return fresh, True
        fresh.append(block)
        watch.rendered = block["end"]
    return fresh, False
