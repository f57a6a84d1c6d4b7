"""The chat WebSocket (`/ws/chat/`): protocol v1 in, service calls, protocol out.

Nothing here streams inside `receive`: generations run in the engine and reach this socket through its
`Watcher`, so `cancel`, `ping` and disconnects are handled at once even while an answer is being written.
"""

import contextlib
import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from channels.consumer import get_handler_name
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.layers import get_channel_layer

from conversations import selectors, services
from conversations.errors import ChatError
from conversations.models import Message
from conversations.payloads import conversation_payload, message_payload
from conversations.services import Turn
from streaming import events, lifecycle, protocol, sockets
from streaming.actions import chat_cancel, chat_delete, chat_edit, chat_regenerate, chat_rename, chat_send
from streaming.aio import Source, dispatch_in_order, orm
from streaming.events import user_group
from streaming.lifecycle import get_engine
from streaming.protocol import (
    CLOSE_TOO_MANY_SOCKETS,
    CLOSE_UNAUTHENTICATED,
    Cancel,
    Delete,
    Edit,
    Feedback,
    ListConversations,
    Older,
    Open,
    Ping,
    Regenerate,
    Rename,
    Request,
    Resume,
    Send,
)
from streaming.watch import Watcher

log = logging.getLogger(__name__)


class ChatConsumer(AsyncWebsocketConsumer):
    watcher: Watcher | None = None

    async def connect(self) -> None:
        user = self.scope.get("user")
        await self.accept()
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED, reason="authentication required")
            return
        if not await sockets.registry.claim(user.pk, self.channel_name):
            await self.close(code=CLOSE_TOO_MANY_SOCKETS, reason="too many connections")
            return
        self.user = user
        self.renewed_at = time.monotonic()
        self.watcher = Watcher(channel_name=self.channel_name, emit=self.emit)
        lifecycle.socket_opened(self)
        await self.channel_layer.group_add(user_group(user.pk), self.channel_name)
        await get_engine().ensure_started()
        await self.emit(protocol.ready_event())

    async def disconnect(self, code: int) -> None:
        # The generations this socket watched keep running; only the subscriptions go.
        if self.watcher is not None:
            lifecycle.socket_closed(self)
            await self.watcher.close()
            await self.channel_layer.group_discard(user_group(self.user.pk), self.channel_name)
            await sockets.registry.release(self.user.pk, self.channel_name)

    async def renew(self) -> None:
        """Renews what expires or is forgotten (a Redis restart forgets every group): the socket's count and
        its group memberships. Runs when the client is heard from, at most every RENEW_SECONDS."""
        assert self.watcher is not None  # noqa: S101 - only for authenticated sockets
        self.renewed_at = time.monotonic()
        await sockets.registry.renew(self.user.pk, self.channel_name)
        try:
            await self.channel_layer.group_add(user_group(self.user.pk), self.channel_name)
            await self.watcher.refollow()
        except Exception:
            log.warning("renewing group memberships failed", exc_info=True)

    async def __call__(self, scope: dict[str, Any], receive: Source, send: Callable[..., Awaitable[None]]) -> None:
        """Channels' AsyncConsumer.__call__, with the message loop of streaming.dispatch."""
        self.scope = scope
        self.channel_layer = get_channel_layer(self.channel_layer_alias)
        self.channel_name = await self.channel_layer.new_channel()
        self.channel_receive = functools.partial(self.channel_layer.receive, self.channel_name)
        self.base_send = send
        with contextlib.suppress(StopConsumer):
            await dispatch_in_order([receive, self.channel_receive], self.dispatch)

    async def dispatch(self, message: dict[str, Any]) -> None:
        """Routes a message: `gen.*` events by the table of streaming.events, the rest as channels does.

        Unlike channels' dispatch there is no `aclose_old_connections()` before every message. That call is a
        hop to the one thread that runs every ORM call of the process, made for each delta of each socket:
        under load the database work queued behind it, and answers waited seconds to start. This consumer
        reaches the database only through streaming.aio.orm, which closes stale connections itself, and its
        layer events never touch the database.
        """
        kind = message["type"]
        if kind in events.WATCHER_HANDLERS:
            if self.watcher is not None:
                try:
                    await self.watcher.handle(message)
                except Exception:
                    # The database away during a repair, say: it must not end the socket.
                    log.warning("handling a layer event failed", exc_info=True, extra={"kind": kind})
            return
        if kind in events.LIST_HANDLERS:
            await getattr(self, events.LIST_HANDLERS[kind])(message)
            return
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {kind}")
        await handler(message)

    async def emit(self, event: dict[str, Any]) -> None:
        await self.send(text_data=json.dumps(event, ensure_ascii=False))

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
                await self.emit(
                    protocol.with_ref(
                        {"type": "conversation", "conversation": conversation_payload(conversation)},
                        request.id,
                    )
                )
            case Delete():
                await chat_delete(user=self.user, conversation_id=request.conversation)
            case Feedback():
                message = await orm(services.message_set_feedback)(
                    user=self.user, message_id=request.message, value=request.value
                )
                event = {"type": "feedback", "message": str(message.pk), "value": message.feedback or None}
                await self.emit(protocol.with_ref(event, request.id))
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
        page, has_more = await orm(selectors.conversation_list_for_user)(
            user=self.user, query=request.query, offset=request.offset
        )
        event = {
            "type": "conversations",
            "query": request.query,
            "offset": request.offset,
            "conversations": [conversation_payload(conversation, live=live) for conversation, live in page],
            "has_more": has_more,
        }
        await self.emit(protocol.with_ref(event, request.id))

    # --- the user's list of conversations (user group events) ----------------------------------------------

    async def on_conversation(self, event: events.ConversationEvent) -> None:
        await self.emit({"type": "conversation", "conversation": event["conversation"]})

    async def on_conversation_deleted(self, event: events.ConversationDeletedEvent) -> None:
        if self.watcher is not None and self.watcher.conversation_id == event["conversation"]:
            await self.watcher.unfollow()
        await self.emit({"type": "conversation_deleted", "conversation": event["conversation"]})
