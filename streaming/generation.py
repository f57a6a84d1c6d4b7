"""One answer being written: read the upstream → publish deltas → one final write, then `gen.done`.

A generation publishes its text (with offsets) to its conversation's group: the first text at once, then at
most one batch per coalescing window. The engine of its process checkpoints the text about once a second
(streaming.engine); at the end the generation writes the row once and only then announces the end, so a
watcher that gets `gen.done` can always read the whole answer from the database.
"""

import asyncio
import bisect
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

from conversations import selectors, services
from conversations.markdown import Block, BlockSplitter
from conversations.models import Message
from conversations.payloads import usage
from streaming import events, metrics, protocol, upstream
from streaming.aio import cancel_firmly, orm
from streaming.events import Bus
from streaming.upstream import ChatRequest, StreamEnd, TextDelta, ToolCallDelta, UpstreamError

log = logging.getLogger(__name__)

Status = Message.Status
FINAL_WRITE_FIRST_WAIT = 0.25  # seconds before retrying a failed final write; doubles up to 5 s

Outcome = tuple[str, tuple[str, str] | None]  # status, and (error code, message) unless it succeeded


class OutputLimitExceeded(Exception):
    pass


@dataclass(frozen=True)
class Prepared:
    """What a generation needs to start: read from the database, or handed over by whoever just wrote it."""

    conversation_id: str
    owner_id: str
    request: ChatRequest
    status: str
    cancel_requested: bool

    @classmethod
    def new(cls, answer: Message, prompt: list[dict[str, object]]) -> "Prepared":
        """A `streaming` answer just created, with the prompt its service built: nothing to read again."""
        request = ChatRequest(
            model=answer.model,
            messages=prompt,
            temperature=answer.temperature,
            max_tokens=answer.max_tokens,
            parameters=answer.parameters,
        )
        return cls(str(answer.conversation_id), str(answer.owner_id), request, Status.STREAMING, False)


class EarlyStart:
    """An answer's upstream request, started before its rows are written (see streaming.actions.chat_send).

    Asking the model while the opening transaction runs takes the database off the path to the first token:
    the model's time to its first token covers the transaction's. The first event is read by a task of its
    own meanwhile; the generation, once it exists, takes over the same stream. If the rows are not written
    (a limit refused them, say), `close` ends the request before the model has answered anything.
    """

    def __init__(self, request: ChatRequest) -> None:
        self.request = request
        self.stream = upstream.stream_chat(request, pace=settings.CHAT_COALESCE_MS / 1000)
        self.first: asyncio.Task[upstream.UpstreamEvent | None] = asyncio.create_task(self._first())

    async def _first(self) -> upstream.UpstreamEvent | None:
        try:
            return await anext(self.stream)
        except StopAsyncIteration:
            return None

    async def close(self) -> None:
        """Ends the request (and its connection), whatever it had read."""
        if not self.first.done():
            self.first.cancel()
            await asyncio.gather(self.first, return_exceptions=True)
        await self.stream.aclose()


def prepared_load(message_id: str) -> Prepared | None:
    """Reads what a generation of `message_id` needs (its row and prompt); None if the row is gone."""
    message = Message.objects.select_related("conversation").filter(pk=message_id).first()
    if message is None:
        return None
    request = ChatRequest(
        model=message.model,
        messages=selectors.message_prompt(message=message),
        temperature=message.temperature,
        max_tokens=message.max_tokens,
        parameters=message.parameters,
    )
    return Prepared(
        conversation_id=str(message.conversation_id),
        owner_id=str(message.owner_id),
        request=request,
        status=message.status,
        cancel_requested=message.cancel_requested_at is not None,
    )


@dataclass(eq=False)
class Generation:
    message_id: str
    conversation_id: str
    owner_id: str
    request: ChatRequest
    bus: Bus
    cancel_requested: bool = False
    # Whether a watcher in another process has asked for this answer: only then do its deltas cross the
    # channel layer (see streaming.events.Bus).
    watched_elsewhere: bool = False
    content: str = ""  # the text published so far
    pending: list[str] = field(default_factory=list)  # text received but not yet published
    pending_length: int = 0
    pending_logprobs: list[dict[str, Any]] = field(default_factory=list)  # theirs, when the request asked
    saved_length: int = 0
    # The published text cut into finished markdown blocks, each rendered once (see conversations.markdown).
    splitter: BlockSplitter = field(default_factory=BlockSplitter)
    blocks: list[Block] = field(default_factory=list)
    tool_calls: dict[int, ToolCallDelta] = field(default_factory=dict)
    tools_dirty: bool = False
    end: StreamEnd | None = None
    publishing: asyncio.Handle | None = None  # the publication of what the current read brought, scheduled
    started_at: float = field(default_factory=time.monotonic)
    published_at: float | None = None  # when the last delta went out
    reader: "asyncio.Task[Outcome] | None" = None  # reading the upstream: the only part a stop cancels
    saved_at: float = field(default_factory=time.monotonic)  # when the last checkpoint (or the insert) was
    # Reading is over and the final write is on the way: no more checkpoints.
    closing: bool = False
    early: EarlyStart | None = None  # the upstream request, when it was started before the rows were written
    status: str = Status.STREAMING  # the final status, once written

    @classmethod
    def of(cls, message_id: str, prepared: Prepared, bus: Bus, early: EarlyStart | None = None) -> "Generation":
        return cls(
            message_id=message_id,
            conversation_id=prepared.conversation_id,
            owner_id=prepared.owner_id,
            request=prepared.request,
            bus=bus,
            cancel_requested=prepared.cancel_requested,
            early=early,
        )

    @property
    def stopped_by_user(self) -> bool:
        """Whether a user stopped the answer (set by `stop` from another task while this one reads)."""
        return self.cancel_requested

    @property
    def length(self) -> int:
        return len(self.content) + self.pending_length

    def text(self) -> str:
        return self.content + "".join(self.pending)

    def blocks_after(self, rendered: int) -> list[Block]:
        """The finished blocks a client that has the HTML of the first `rendered` code points lacks."""
        index = bisect.bisect_right([block.end for block in self.blocks], rendered)
        return self.blocks[index:]

    def tool_calls_payload(self) -> list[events.ToolCallPayload]:
        return [
            {"index": call.index, "id": call.id, "name": call.name, "arguments": call.arguments}
            for call in sorted(self.tool_calls.values(), key=lambda call: call.index)
        ]

    # --- control ---------------------------------------------------------------------------------------------

    def stop(self, *, cancelled: bool) -> None:
        """Ends the reading of the upstream (which closes its HTTP response); the text so far is kept.

        `cancelled`: a user's stop (status `cancelled`); otherwise the process is going away (`interrupted`).
        """
        if cancelled:
            self.cancel_requested = True
        if self.reader is not None and not self.reader.done():
            # A reader that has already finished is not affected: the answer ended on its own.
            cancel_firmly(self.reader)

    def answer_resume(self, offset: int, rendered: int, reply_to: str) -> None:
        """Sends the watcher at `reply_to` (a bus address) what a client that has `offset` code points (the
        HTML of `rendered` of them) lacks: one delta with the rest of the text (unpublished text too; later
        deltas that overlap it are trimmed by offset), then the tool calls so far."""
        text = self.text()
        start = min(offset, len(text))
        blocks = [block.payload() for block in self.blocks_after(rendered)]
        self.bus.send(reply_to, events.delta(self.message_id, start, text[start:], blocks))
        if self.tool_calls:
            self.bus.send(reply_to, events.tools(self.message_id, self.tool_calls_payload()))

    # --- the pipeline ------------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Reads, publishes and finally writes the answer; returns once `gen.done` is out (or left to the
        sweeper when the database stayed away)."""
        self.reader = asyncio.create_task(self._read())
        try:
            status, error = await self.reader
        finally:
            self.closing = True
        await self._finish(status, error)

    async def _read(self) -> Outcome:
        """Reads the upstream until the answer ends; cancelling this task is how a stop stops it."""
        if self.cancel_requested:
            if self.early is not None:
                await self.early.close()
            return Status.CANCELLED, None
        early = self.early or EarlyStart(self.request)
        try:
            async with asyncio.timeout(settings.CHAT_MAX_DURATION_SECONDS):
                # Cancelling this task while it waits for the first event cancels that read too.
                first = await early.first
                if first is not None:
                    self._apply(first)
                    async for event in early.stream:
                        self._apply(event)
        except asyncio.CancelledError:
            # Cancelled on purpose (stop) or by a shutting-down process; either way the text so far is kept.
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()
            if self.stopped_by_user:
                return Status.CANCELLED, None
            return Status.INTERRUPTED, (services.INTERRUPTED_CODE, services.INTERRUPTED_MESSAGE)
        except TimeoutError:
            limit = settings.CHAT_MAX_DURATION_SECONDS
            return Status.ERROR, ("max_duration", f"The answer took longer than {limit:g} seconds.")
        except OutputLimitExceeded:
            limit = settings.CHAT_MAX_OUTPUT_CHARS
            return Status.ERROR, ("max_output", f"The answer reached the limit of {limit} characters.")
        except UpstreamError as exc:
            return Status.ERROR, (exc.code, exc.message)
        except Exception:
            log.exception("generation failed", extra={"message_id": self.message_id})
            return Status.ERROR, ("internal_error", "The server failed while writing this answer.")
        finally:
            await early.close()
        return Status.COMPLETE, None

    def _apply(self, event: upstream.UpstreamEvent) -> None:
        if isinstance(event, TextDelta):
            if self.length + len(event.text) > settings.CHAT_MAX_OUTPUT_CHARS:
                raise OutputLimitExceeded
            self.pending.append(event.text)
            self.pending_length += len(event.text)
            if event.logprobs:
                self.pending_logprobs.extend(event.logprobs)
            self._publish_soon()
        elif isinstance(event, ToolCallDelta):
            self.tool_calls[event.index] = event
            self.tools_dirty = True
            self._publish_soon()
        elif isinstance(event, StreamEnd):
            self.end = event

    def _publish_soon(self) -> None:
        """Publishes what arrived once the reader has taken every event of its read (the stream reads at most
        once per coalescing window after the first text; see upstream.stream_chat's `pace`): one delta per
        read, the first at once, later ones at most one per window."""
        if self.publishing is None:
            self.publishing = asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self.publishing = None
        group = events.conversation_group(self.conversation_id)
        try:
            if self.pending:
                now = time.monotonic()
                metrics.TOKENS.inc(len(self.pending))
                if self.published_at is None:
                    metrics.TIME_TO_FIRST_TOKEN.observe(now - self.started_at)
                else:
                    metrics.DELTA_INTERVAL.observe(now - self.published_at)
                self.published_at = now
                chunk = "".join(self.pending)
                offset = len(self.content)
                self.content += chunk
                self.pending.clear()
                self.pending_length = 0
                logprobs, self.pending_logprobs = self.pending_logprobs, []
                blocks = self.splitter.feed(chunk)
                self.blocks.extend(blocks)
                payloads = [block.payload() for block in blocks]
                # What every client that has exactly `offset` code points receives, serialised once for all.
                frame = protocol.serialize(protocol.delta_event(self.message_id, offset, chunk, payloads, logprobs))
                delta = events.delta(self.message_id, offset, chunk, payloads, frame=frame, logprobs=logprobs)
                self.bus.publish(group, delta, cross=self.watched_elsewhere)
            if self.tools_dirty:
                self.tools_dirty = False
                tools = events.tools(self.message_id, self.tool_calls_payload())
                self.bus.publish(group, tools, cross=self.watched_elsewhere)
        except Exception:
            # A lost publication is a gap the watchers repair by offset; the generation carries on.
            log.warning("publishing a delta failed", exc_info=True, extra={"message_id": self.message_id})

    async def _finish(self, status: str, error: tuple[str, str] | None) -> None:
        if self.publishing is not None:
            self.publishing.cancel()
        self._flush()
        last = self.splitter.finish()
        if last is not None:
            self.blocks.append(last)
        end = self.end
        used = end.usage if end is not None else None
        finish = functools.partial(
            services.message_finish,
            message_id=self.message_id,
            status=status,
            content=self.content,
            content_html="".join(block.html for block in self.blocks),
            finish_reason=(end.finish_reason or "") if end is not None else "",
            prompt_tokens=used.prompt_tokens if used is not None else None,
            completion_tokens=used.completion_tokens if used is not None else None,
            tool_calls=[dict(call) for call in self.tool_calls_payload()],
            error_code=error[0] if error else "",
            error_message=error[1] if error else "",
        )
        saved = await self._write_final(finish)
        done = events.done(
            self.message_id,
            status,
            length=len(self.content),
            finish_reason=end.finish_reason if end is not None else None,
            usage=usage(used.prompt_tokens, used.completion_tokens) if used is not None else None,
            error={"code": error[0], "message": error[1]} if error else None,
            blocks=[last.payload()] if last is not None else [],
        )
        if saved is False:
            # Swept during a database outage, or deleted: the row's version stands, and watchers read it.
            row = await orm(selectors.message_state)(message_id=self.message_id)
            status = row.status if row is not None else Status.CANCELLED
            done = done | {"status": status, "length": len(row.content) if row is not None else -1, "blocks": []}
        self.status = status
        if error:
            metrics.ERRORS.labels(error[0]).inc()
        log.info(
            "generation ended",
            extra={"message_id": self.message_id, "status": status, "chars": len(self.content), "saved": saved},
        )
        # Unsaved (the database stayed away), the answer is left to the sweeper, which tells watchers.
        announce_end(
            self.bus,
            conversation_id=self.conversation_id,
            owner_id=self.owner_id,
            done=done if saved is not None else None,
        )

    async def _write_final(self, finish: Callable[[], bool]) -> bool | None:
        """The final write, retried through a database outage of up to CHAT_DB_RETRY_SECONDS.

        Watchers read the end of the answer from the database once `gen.done` arrives, so it is published
        only after this. Returns whether the row took it (see message_finish), or None when the database
        stayed away: then the sweeper ends the answer `interrupted` with the last checkpoint.
        """
        deadline = time.monotonic() + settings.CHAT_DB_RETRY_SECONDS
        wait = FINAL_WRITE_FIRST_WAIT
        while True:
            try:
                saved: bool = await orm(finish)()
                return saved
            except Exception:
                if time.monotonic() + wait > deadline:
                    log.exception("saving a finished answer failed", extra={"message_id": self.message_id})
                    return None
                log.warning("saving a finished answer failed; retrying", extra={"message_id": self.message_id})
            await asyncio.sleep(wait)
            wait = min(wait * 2, 5.0)


def announce_end(bus: Bus, *, conversation_id: str, owner_id: str, done: events.DoneEvent | None) -> None:
    """Tells an answer's watchers that it ended (`done`, unless it is left to the sweeper) and its owner's
    sockets that the conversation is no longer live. Best-effort across processes: watchers also check the
    database."""
    if done is not None:
        bus.publish(events.conversation_group(conversation_id), done)
    bus.publish(events.user_group(owner_id), events.conversation_live(conversation_id, live=False))


def announce_swept(bus: Bus, message: Message) -> None:
    """Announces the end of an answer that a sweep found abandoned (its process died) and saved `interrupted`."""
    done = events.done(
        str(message.pk),
        Status.INTERRUPTED,
        length=len(message.content),
        error={"code": message.error_code, "message": message.error_message},
    )
    announce_end(bus, conversation_id=str(message.conversation_id), owner_id=str(message.owner_id), done=done)
