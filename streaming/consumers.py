"""The chat WebSocket (`/ws/chat/`): protocol v1 in, service calls, protocol out.

Nothing here streams inside `receive`: generations run in the engine and reach this socket through its
`Watcher`, so `cancel`, `ping` and disconnects are handled at once even while an answer is being written.
"""

import json
import logging
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer

from conversations import selectors
from conversations.errors import ChatError
from conversations.models import Message
from conversations.services import Turn
from streaming import protocol
from streaming.engine import get_engine
from streaming.protocol import Cancel, Edit, Open, Ping, Regenerate, Request, Resume, Send
from streaming.services import chat_cancel, chat_edit, chat_regenerate, chat_send
from streaming.watch import Watcher

log = logging.getLogger(__name__)

# An application close code (RFC 6455 reserves 4000-4999 for applications; servers may not send 1008 from an
# application through daphne). 4401 reads as HTTP 401: log in, then reconnect.
CLOSE_UNAUTHENTICATED = 4401


class ChatConsumer(AsyncWebsocketConsumer):
    watcher: Watcher | None = None

    async def connect(self) -> None:
        user = self.scope.get("user")
        await self.accept()
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED, reason="authentication required")
            return
        self.user = user
        self.watcher = Watcher(channel_name=self.channel_name, emit=self.emit)
        await get_engine().ensure_started()
        await self.emit(protocol.ready_event())

    async def disconnect(self, code: int) -> None:
        # The generations this socket watched keep running; only the subscription goes.
        if self.watcher is not None:
            await self.watcher.close()

    async def emit(self, event: dict[str, Any]) -> None:
        await self.send(text_data=json.dumps(event, ensure_ascii=False))

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.watcher is None:
            return
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
            case Cancel():
                message = await chat_cancel(user=self.user, message_id=request.message)
                if message.status != Message.Status.STREAMING:
                    # Already over: tell this client how it ended (its text, if any, it has or will resume).
                    await watcher.send_final(message, len(message.content))
            case Ping():
                await self.emit({"type": "pong"} | ({"ref": request.id} if request.id else {}))

    def _subscriber(self, ref: str | None) -> Any:
        async def subscribe(turn: Turn) -> None:
            assert self.watcher is not None  # noqa: S101
            await self.watcher.follow(str(turn.conversation.pk))
            answer = turn.assistant_message
            for message in (turn.user_message, answer):
                if message is not None:
                    self.watcher.mark_announced(str(message.pk))
                    await self.emit(protocol.message_event(message, ref))
            if answer.status == Message.Status.STREAMING:
                # A retried request joins an answer that may be well under way: ask for what it has.
                await self.watcher.watch(str(answer.pk), len(answer.content), ask=not turn.created)
            else:
                await self.watcher.send_final(answer, len(answer.content))

        return subscribe

    async def open(self, request: Open) -> None:
        assert self.watcher is not None  # noqa: S101
        conversation = await database_sync_to_async(selectors.conversation_get_for_user)(
            user=self.user, conversation_id=request.conversation
        )
        await self.watcher.follow(str(conversation.pk))
        messages = await database_sync_to_async(selectors.conversation_messages)(conversation=conversation)
        await self.emit(protocol.history_event(conversation, messages, request.id))
        self.watcher.mark_announced(*(str(m.pk) for m in messages))
        for message in messages:
            if message.status == Message.Status.STREAMING:
                await self.watcher.watch(str(message.pk), len(message.content))

    async def resume(self, request: Resume) -> None:
        assert self.watcher is not None  # noqa: S101
        get = database_sync_to_async(selectors.message_get_for_user)
        message = await get(user=self.user, message_id=request.message)
        await self.watcher.follow(str(message.conversation_id))
        # Read again after subscribing, so an answer that ended in between is seen as ended.
        message = await get(user=self.user, message_id=request.message)
        self.watcher.mark_announced(str(message.pk))
        if message.status == Message.Status.STREAMING:
            await self.watcher.watch(str(message.pk), request.offset)
        elif request.offset > len(message.content):
            raise protocol.ProtocolError(
                "invalid_offset", f"The message has only {len(message.content)} characters.", request.id
            )
        else:
            await self.watcher.send_final(message, request.offset)

    # --- layer events (from generations, via the conversation group or a direct resume reply) ------------

    async def gen_message(self, event: dict[str, Any]) -> None:
        if self.watcher is not None:
            await self.watcher.on_message(event["message"])

    async def gen_delta(self, event: dict[str, Any]) -> None:
        if self.watcher is not None:
            await self.watcher.on_delta(event)

    async def gen_tools(self, event: dict[str, Any]) -> None:
        if self.watcher is not None:
            await self.watcher.on_tools(event)

    async def gen_done(self, event: dict[str, Any]) -> None:
        if self.watcher is not None:
            await self.watcher.on_done(event)
