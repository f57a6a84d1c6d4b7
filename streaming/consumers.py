"""The chat WebSocket (`/ws/chat/`): protocol v1 in, actions and the Watcher, protocol out.

Nothing here streams inside `receive`: generations run in the engine and reach this socket through its
`Watcher`, so `cancel`, `ping` and disconnects are handled at once even while an answer is being written.
"""

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from channels.consumer import get_handler_name
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings

from conversations import selectors, services
from conversations.errors import ChatError
from conversations.models import Message
from conversations.payloads import conversation_payload, message_payload
from conversations.services import Turn
from streaming import access, events, lifecycle, metrics, protocol, sockets
from streaming.actions import (
    chat_cancel,
    chat_delete,
    chat_edit,
    chat_pin,
    chat_regenerate,
    chat_rename,
    chat_send,
)
from streaming.aio import Source, dispatch_in_order, orm
from streaming.events import get_bus, user_group
from streaming.lifecycle import get_engine
from streaming.protocol import (
    CLOSE_SERVICE_RESTART,
    CLOSE_TOO_MANY_SOCKETS,
    CLOSE_UNAUTHENTICATED,
    Cancel,
    Delete,
    Edit,
    Feedback,
    ListConversations,
    Older,
    Open,
    Pin,
    Ping,
    Regenerate,
    Rename,
    Request,
    Resume,
    Send,
)
from streaming.watch import Watcher

log = logging.getLogger(__name__)

# Changes to the user's list of conversations are sent at most this often (the first one at once): a user
# with many tabs starting answers would otherwise cost every tab a frame per answer start and end.
LIST_COALESCE_SECONDS = 0.25
LIST_FLUSH = "chat.list_flush"
# A session's expiry is checked again at least this often, so that a date far off (or one that is moved) is
# never a timer of weeks.
EXPIRY_RECHECK_MAX_SECONDS = 3600.0


class Allowance:
    """A token bucket: `burst` requests at once, then `per_second` on average."""

    def __init__(self, per_second: float, burst: int) -> None:
        self.per_second, self.burst = per_second, burst
        self.tokens, self.at = float(burst), time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.per_second)
        self.at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


# What a socket may ask without limit here: requests that start answers have the user's own limits (answers
# per minute, at once, tokens per day), a cancel must always get through, and a ping costs nothing.
UNMETERED = (Send, Regenerate, Edit, Cancel, Ping)


class ChatConsumer(AsyncWebsocketConsumer):
    watcher: Watcher | None = None
    shows_list = False  # the client asked for the list of conversations, so it gets its changes
    closed = False  # the client has gone: sends are dropped
    released = False

    async def __call__(self, scope: dict[str, Any], receive: Source, send: Callable[..., Awaitable[None]]) -> None:
        """Channels' AsyncConsumer.__call__ with the message loop of streaming.aio and no channel layer: events
        come from the bus (streaming.events), which puts them straight into this socket's inbox."""
        self.scope = scope
        self.base_send = send
        self.inbox: asyncio.Queue[Any] = asyncio.Queue()
        self.socket_id = uuid.uuid4().hex
        try:
            with contextlib.suppress(StopConsumer):
                await dispatch_in_order([receive], self.dispatch, self.inbox)
        finally:
            # Also when the loop ended otherwise than by a disconnect (a failure, daphne cancelling the
            # application): what the socket held is released in every case.
            await asyncio.shield(self.release())

    def deliver(self, event: dict[str, Any]) -> None:
        """Takes an event of the user group from the bus; list changes only if this socket shows the list.
        (Its watcher has a bus subscription of its own, for its conversation.)"""
        kind = event["type"]
        if kind in ("gen.conversation_deleted", events.ACCESS) or (kind == "gen.conversation" and self.shows_list):
            self.inbox.put_nowait(event)

    async def connect(self) -> None:
        user = self.scope.get("user")
        await self.accept()
        if user is None:
            # Who the client is could not be looked up (the database away): it reconnects, as after a restart.
            await self.close(code=CLOSE_SERVICE_RESTART, reason="try again")
            return
        if not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED, reason="authentication required")
            return
        if not await sockets.registry.claim(user.pk, self.socket_id):
            await self.close(code=CLOSE_TOO_MANY_SOCKETS, reason="too many connections")
            return
        self.user = user
        self.allowance = Allowance(settings.CHAT_SOCKET_REQUESTS_PER_SECOND, settings.CHAT_SOCKET_REQUEST_BURST)
        session = self.scope["session"]
        self.credential = access.Credential(user_id=user.pk, session_key=session.session_key)
        self.expiry: asyncio.TimerHandle | None = None
        self.arm_expiry(session.get_expiry_date())
        self.renewed_at = time.monotonic()
        self.list_changes: dict[str, dict[str, Any]] = {}
        self.list_sent_at = 0.0
        self.list_flush: asyncio.TimerHandle | None = None
        self.watcher = Watcher(emit=self.emit, emit_frame=self.send_frame, deliver=self.inbox.put_nowait)
        lifecycle.socket_opened(self)
        metrics.SOCKETS_OPEN.inc()
        bus = get_bus()
        self.bus_key = bus.register(self)
        # Not waited for: list changes are read from the database when the socket asks for the list, and the
        # handshake should not wait for Redis.
        await bus.join(user_group(user.pk), self.bus_key, wait=False)
        await get_engine().ensure_started()
        await self.emit(protocol.ready_event())

    async def disconnect(self, code: int) -> None:
        await self.release()

    async def release(self) -> None:
        """Gives up what the socket holds: its watcher, its subscriptions, its place in the user's count. The
        generations it watched keep running. Runs once, whatever calls it first."""
        self.closed = True
        if self.watcher is not None and not self.released:
            self.released = True
            lifecycle.socket_closed(self)
            metrics.SOCKETS_OPEN.dec()
            for timer in (self.list_flush, self.expiry):
                if timer is not None:
                    timer.cancel()
            await self.watcher.close()
            bus = get_bus()
            bus.leave(user_group(self.user.pk), self.bus_key)
            bus.unregister(self.bus_key)
            await sockets.registry.release(self.user.pk, self.socket_id)

    async def renew(self) -> None:
        """Renews the socket's entry in the count of the user's sockets, which expires without news from the
        client. Runs when the client is heard from, at most every RENEW_SECONDS."""
        self.renewed_at = time.monotonic()
        await sockets.registry.renew(self.user.pk, self.socket_id)

    async def dispatch(self, message: dict[str, Any]) -> None:
        """Routes a message: bus events by the tables of streaming.events, the client's as channels does.

        Unlike channels' dispatch there is no `aclose_old_connections()` before every message. That call is a
        hop to the one thread that runs every ORM call of the process, made for each delta of each socket:
        under load the database work queued behind it, and answers waited seconds to start. This consumer
        reaches the database only through streaming.aio.orm, and its bus events never touch it.
        """
        kind = message["type"]
        if kind == events.RESYNC:
            # Events crossing processes may have been lost meanwhile, a change of access among them.
            await self.on_access(message)
        if kind in events.WATCHER_HANDLERS or kind == events.RESYNC:
            if self.watcher is not None:
                try:
                    await self.watcher.handle(message)
                except Exception:
                    # The database away during a repair, say: it must not end the socket.
                    log.warning("handling an event failed", exc_info=True, extra={"kind": kind})
            return
        if kind in events.LIST_HANDLERS:
            await getattr(self, events.LIST_HANDLERS[kind])(message)
            return
        if kind == LIST_FLUSH:
            await self.flush_list()
            return
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {kind}")
        await handler(message)

    async def emit(self, event: dict[str, Any]) -> None:
        await self.send_frame(protocol.serialize(event))

    async def send_frame(self, frame: str) -> None:
        """Sends one text frame. A client that has gone is not an error: the frame is dropped, and the socket
        goes on until the server's disconnect arrives and `disconnect` runs."""
        if self.closed:
            return
        try:
            await self.base_send({"type": "websocket.send", "text": frame})
        except Exception:
            # The connection closed under us (the server refuses to send on a closing socket).
            self.closed = True
            log.debug("dropped a frame for a closed socket", exc_info=True)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.watcher is None:
            return
        if time.monotonic() - self.renewed_at > sockets.RENEW_SECONDS:
            await self.renew()
        ref: str | None = None
        try:
            if text_data is None:
                raise protocol.ProtocolError("binary_not_supported", "Frames must be JSON text, not binary.")
            request = protocol.parse_frame(text_data)
            ref = request.id
            if not isinstance(request, UNMETERED) and not self.allowance.take():
                raise protocol.ProtocolError(
                    "too_many_requests",
                    f"Too many requests on this connection: at most {settings.CHAT_SOCKET_REQUESTS_PER_SECOND:g} "
                    "a second on average; wait a moment and try again.",
                )
            await self.handle(request)
        except protocol.ProtocolError as exc:
            await self.emit(protocol.error_event(exc.code, exc.message, exc.ref or ref))
        except ChatError as exc:
            await self.emit(protocol.error_event(exc.code, exc.message, ref))
        except Exception:
            log.exception("request failed")
            await self.emit(protocol.error_event("internal_error", "The server failed to handle that request.", ref))

    async def handle(self, request: Request) -> None:
        assert self.watcher is not None  # noqa: S101 - set in connect for authenticated sockets
        watcher = self.watcher
        match request:
            case Send():
                await chat_send(
                    user=self.user,
                    client_id=request.id,
                    conversation_id=request.conversation,
                    content=request.content,
                    options=request.options,
                    before_start=self._subscriber(request.id),
                    retry=request.retry,
                )
            case Regenerate():
                await chat_regenerate(
                    user=self.user,
                    message_id=request.message,
                    client_id=request.id,
                    options=request.options,
                    before_start=self._subscriber(request.id or None),
                )
            case Edit():
                await chat_edit(
                    user=self.user,
                    message_id=request.message,
                    content=request.content,
                    client_id=request.id,
                    options=request.options,
                    before_start=self._subscriber(request.id or None),
                )
            case Open():
                await self.open(request)
            case Resume():
                await self.resume(request)
            case Older():
                await self.older(request)
            case Cancel():
                message = await chat_cancel(user=self.user, message_id=request.message)
                if message.status != Message.Status.STREAMING:
                    # Already over: tell this client how it ended (its text, if any, it has or will resume).
                    await watcher.send_final(message, len(message.content))
            case ListConversations():
                await self.list_conversations(request)
            case Rename():
                conversation = await chat_rename(
                    user=self.user, conversation_id=request.conversation, title=request.title
                )
                await self.emit(protocol.with_ref(protocol.conversation_event(conversation), request.id))
            case Pin():
                conversation = await chat_pin(
                    user=self.user, conversation_id=request.conversation, pinned=request.pinned
                )
                await self.emit(protocol.with_ref(protocol.conversation_event(conversation), request.id))
            case Delete():
                await chat_delete(user=self.user, conversation_id=request.conversation)
            case Feedback():
                message = await orm(services.message_set_feedback)(
                    user=self.user, message_id=request.message, rating=request.rating
                )
                await self.emit(protocol.with_ref(protocol.feedback_event(message), request.id))
            case Ping():
                await self.emit(protocol.with_ref({"type": "pong"}, request.id))

    def _subscriber(self, ref: str | None) -> Any:
        async def subscribe(turn: Turn) -> None:
            assert self.watcher is not None  # noqa: S101
            await self.watcher.join(turn, ref)

        return subscribe

    async def open(self, request: Open) -> None:
        assert self.watcher is not None  # noqa: S101
        conversation = await orm(selectors.conversation_get_for_user)(
            user=self.user, conversation_id=request.conversation
        )
        # Subscribe before reading, so nothing falls between the read and the subscription.
        await self.watcher.follow(str(conversation.pk))
        messages, has_more = await orm(selectors.conversation_messages_page)(conversation=conversation)
        payloads = [message_payload(message) for message in messages]
        await self.emit(protocol.history_event(conversation, payloads, has_more=has_more, ref=request.id))
        self.watcher.mark_announced(*(payload["id"] for payload in payloads))
        for payload in payloads:
            if payload["status"] == Message.Status.STREAMING:
                await self.watcher.watch(payload["id"], len(payload["content"]), payload["rendered"])

    async def older(self, request: Older) -> None:
        conversation = await orm(selectors.conversation_get_for_user)(
            user=self.user, conversation_id=request.conversation
        )
        messages, has_more = await orm(selectors.conversation_messages_page)(
            conversation=conversation, before=request.before
        )
        await self.emit(protocol.older_event(str(conversation.pk), messages, has_more=has_more, ref=request.id))

    async def resume(self, request: Resume) -> None:
        assert self.watcher is not None  # noqa: S101
        await self.watcher.resume(
            user=self.user, message_id=request.message, offset=request.offset, rendered=request.rendered
        )

    async def list_conversations(self, request: ListConversations) -> None:
        # From now on this socket shows the list, and gets its changes (see `deliver`).
        self.shows_list = True
        page, has_more = await orm(selectors.conversation_list_for_user)(
            user=self.user, query=request.query, offset=request.offset, source=request.source
        )
        event = {
            "type": "conversations",
            "query": request.query,
            "source": request.source,
            "offset": request.offset,
            "conversations": [conversation_payload(conversation, live=live) for conversation, live in page],
            "has_more": has_more,
        }
        await self.emit(protocol.with_ref(event, request.id))

    # --- access (streaming.access) -----------------------------------------------------------------------------

    def arm_expiry(self, moment: datetime) -> None:
        """Checks the session again when it expires (a session's expiry sends no event)."""
        if self.expiry is not None:
            self.expiry.cancel()
        delay = min(access.seconds_until(moment), EXPIRY_RECHECK_MAX_SECONDS)
        self.expiry = asyncio.get_running_loop().call_later(delay, self.inbox.put_nowait, {"type": events.ACCESS})

    async def on_access(self, event: dict[str, Any]) -> None:
        """What let this socket in may have changed: closes it (4401) unless the session still lets it in."""
        if self.closed or self.watcher is None:
            return
        try:
            expiry = await orm(access.session_valid_until)(self.credential)
        except Exception:
            # The database away: the socket stays (it was let in), and the next event or expiry checks again.
            log.warning("checking a socket's access failed", exc_info=True)
            return
        if expiry is None:
            log.info("closing a socket whose session no longer lets it in", extra={"user_id": self.user.pk})
            await self.close(code=CLOSE_UNAUTHENTICATED, reason="signed out")
            await self.release()
            return
        self.arm_expiry(expiry)

    # --- the user's list of conversations (user group events) ----------------------------------------------

    async def on_conversation(self, event: events.ConversationEvent) -> None:
        """Collects a change to the list: sent at once if none was sent lately, else with the next flush."""
        change = event["conversation"]
        self.list_changes[change["id"]] = {**self.list_changes.get(change["id"], {}), **change}
        if self.list_flush is not None:
            return
        wait = self.list_sent_at + LIST_COALESCE_SECONDS - time.monotonic()
        if wait <= 0:
            await self.flush_list()
        else:
            self.list_flush = asyncio.get_running_loop().call_later(wait, self.inbox.put_nowait, {"type": LIST_FLUSH})

    async def flush_list(self) -> None:
        self.list_flush = None
        self.list_sent_at = time.monotonic()
        changes, self.list_changes = self.list_changes, {}
        for change in changes.values():
            await self.emit({"type": "conversation", "conversation": change})

    async def on_conversation_deleted(self, event: events.ConversationDeletedEvent) -> None:
        self.list_changes.pop(event["conversation"], None)
        if self.watcher is not None and self.watcher.conversation_id == event["conversation"]:
            await self.watcher.unfollow()
        await self.emit({"type": "conversation_deleted", "conversation": event["conversation"]})
