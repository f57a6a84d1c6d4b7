"""Answers followed over HTTP: one `Watcher` per response, and the event-stream (SSE) encoding of its events.

An HTTP client is one more watcher of a generation, like a WebSocket: a `Watcher` of its own turns the events
of the bus into an exact stream (trimmed by offset, gaps resumed, the end read from the database), and the
events are the WebSocket's (`message`, `delta`, `tool_calls`, `done`). When the client goes away only the
watcher stops: the generation runs on until it ends or is cancelled.
"""

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from django.conf import settings
from django.http import StreamingHttpResponse
from rest_framework import exceptions

from conversations.models import Message
from conversations.services import Turn, User
from streaming import events, protocol
from streaming.access import Credential, still_valid
from streaming.aio import detached, orm
from streaming.watch import Watcher

log = logging.getLogger(__name__)

KEEPALIVE = b": keep-alive\n\n"
CHECK_ACCESS = "stream.check_access"
SIGNED_OUT = "The session or API token of this request no longer lets it in; the answer goes on being written."


class AnswerStream:
    """One HTTP client following one answer: a Watcher, the queue of bus events it handles, and the queue of
    what it emits. `offset` is how much of the answer the client has been given, the `id:` of each event.

    Opened with the request's credential, the stream ends with an `unauthenticated` error as soon as that no
    longer lets the client in (streaming.access); the answer itself goes on."""

    credential: Credential | None = None
    revoked = False
    turn: Turn | None = None  # the turn it follows, when it started one

    def __init__(self) -> None:
        self.answer = ""  # the message whose `done` ends the stream
        self.offset = 0
        self.logprobs: list[dict[str, Any]] = []  # of the answer's tokens, when the request asked for them
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()  # what the client gets
        self._inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()  # what the bus delivers
        self._receiver: asyncio.Task[None] | None = None
        self._closed = False

    async def open(self, credential: Credential | None = None) -> "AnswerStream":
        self.watcher = Watcher(emit=self._queue.put, deliver=self._inbox.put_nowait)
        if credential is not None:
            self.credential = credential
            bus = events.get_bus()
            self._bus_key = bus.register(self)
            await bus.join(events.user_group(credential.user_id), self._bus_key, wait=False)
        return self

    def deliver(self, event: dict[str, Any]) -> None:
        """Takes an event of the user's group from the bus: a change of access (or an outage of the layer, which
        may have lost one) makes the stream check its credential."""
        if event["type"] in (events.ACCESS, events.RESYNC) and not self._closed:
            self._inbox.put_nowait({"type": CHECK_ACCESS})

    async def join(self, turn: Turn, ref: str | None) -> None:
        """Announces a turn's rows (with `ref`) and follows its answer."""
        self.turn = turn
        self.answer = str(turn.assistant_message.pk)
        await self.watcher.join(turn, ref)

    async def resume(self, *, user: User, message_id: str, offset: int) -> None:
        """Follows a message from `offset`: the rest of a finished one, or the live text of one being written."""
        self.answer, self.offset = message_id, offset
        message = await self.watcher.resume(user=user, message_id=message_id, offset=offset)
        self.answer = str(message.pk)

    async def watch_until_done(self, message: Message) -> None:
        """Follows a message being written (already subscribed to its conversation) only to see it end."""
        self.answer = str(message.pk)
        self.watcher.mark_announced(self.answer)
        await self.watcher.watch(self.answer, len(message.content), len(message.content), ask=False)

    async def events(self, keepalive: float) -> AsyncIterator[dict[str, Any] | None]:
        """The client's events up to the answer's `done`, and None after each `keepalive` seconds without one."""
        if self._receiver is None:
            self._receiver = asyncio.create_task(self._receive())
        while True:
            try:
                async with asyncio.timeout(keepalive):
                    event = await self._queue.get()
            except TimeoutError:
                yield None
                continue
            self._advance(event)
            yield event
            if (event["type"] == "done" and event["message"] == self.answer) or self.revoked:
                return

    async def wait(self) -> None:
        """Waits for the answer's `done`, discarding the events before it; fails (401) if the request's access
        ends first."""
        async for _ in self.events(settings.API_KEEPALIVE_SECONDS):
            pass
        if self.revoked:
            raise exceptions.AuthenticationFailed(SIGNED_OUT)

    async def finish(self) -> None:
        """Waits for the answer's `done`, then stops watching."""
        try:
            await self.wait()
        finally:
            await self.close()

    def _advance(self, event: dict[str, Any]) -> None:
        if event["type"] == "delta" and event["message"] == self.answer:
            self.offset = event["offset"] + len(event["text"])
            self.logprobs.extend(event.get("logprobs", ()))
        elif event["type"] == "message" and event["message"]["id"] == self.answer:
            self.offset = len(event["message"]["content"])

    async def _receive(self) -> None:
        while not self._closed:
            event = await self._inbox.get()
            if event["type"] == CHECK_ACCESS:
                await self._check_access()
                continue
            try:
                await self.watcher.handle(event)
            except Exception:
                log.warning("event stream dispatch failed", exc_info=True, extra={"kind": event.get("type")})

    async def _check_access(self) -> None:
        if self.credential is None or self.revoked:
            return
        try:
            valid = await orm(still_valid)(self.credential)
        except Exception:
            # The database away: the stream goes on (it was let in), and the next change checks again.
            log.warning("checking an event stream's access failed", exc_info=True)
            return
        if not valid:
            self.revoked = True
            await self._queue.put({"type": "error", "code": "unauthenticated", "message": SIGNED_OUT})

    async def close(self) -> None:
        """Stops watching (the generation goes on). Safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        if self._receiver is not None:
            self._receiver.cancel()
        if self.credential is not None:
            bus = events.get_bus()
            bus.leave(events.user_group(self.credential.user_id), self._bus_key)
            bus.unregister(self._bus_key)
        await self.watcher.close()


# Only CR and LF end a line of an event stream, but many clients split lines like `str.splitlines()` (httpx's
# `iter_lines`, for one), which also breaks at these characters: JSON leaves them raw, so they are escaped.
_LINE_BREAKERS = str.maketrans({"\u0085": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def sse_json(value: Any) -> str:
    """JSON for a `data:` line: UTF-8 as is, except what some clients would take for a line break."""
    return protocol.serialize(value).translate(_LINE_BREAKERS)


def sse_event(event: dict[str, Any], event_id: int) -> bytes:
    """One server-sent event: `id` is the answer's length the client then has (send it back as Last-Event-ID)."""
    return f"id: {event_id}\nevent: {event['type']}\ndata: {sse_json(event)}\n\n".encode()


async def _sse_body(stream: AnswerStream) -> AsyncIterator[bytes]:
    finished = False
    try:
        async for event in stream.events(settings.API_KEEPALIVE_SECONDS):
            yield KEEPALIVE if event is None else sse_event(event, stream.offset)
        finished = True
    finally:
        if not finished:
            log.info("event stream closed before the end of the answer", extra={"message_id": stream.answer})
        await stream.close()


async def start_and_follow(
    start: Callable[..., Coroutine[Any, Any, Turn]], *, ref: str | None, credential: Credential
) -> AnswerStream:
    """Starts an answer with a chat action and follows it: the one way the HTTP API (REST and /v1) does both.

    `start` is the action with its arguments bound (functools.partial), short of `before_start`: that one
    subscribes the follower once the rows have committed and before the generation starts, so that it misses
    nothing; the rows are announced to it with `ref`. The action runs detached (see streaming.aio.detached).
    The caller owns the returned stream and closes it (an SSE response does). The stream ends when
    `credential` no longer lets the client in.
    """
    follower = await AnswerStream().open(credential)

    async def join(turn: Turn) -> None:
        await follower.join(turn, ref)

    try:
        await detached(start(before_start=join))
    except BaseException:
        await follower.close()
        raise
    return follower


def sse_response(stream: AnswerStream) -> StreamingHttpResponse:
    response = StreamingHttpResponse(_sse_body(stream), content_type="text/event-stream; charset=utf-8")
    response["Cache-Control"] = "no-cache"
    # nginx buffers proxied responses unless told not to, which would hold every token back.
    response["X-Accel-Buffering"] = "no"
    return response
