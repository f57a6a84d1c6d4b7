"""Generations: one task per streaming answer, running independently of the sockets that watch it.

A generation reads the upstream, publishes deltas (with offsets) to its conversation's group, checkpoints
the text to the database about once a second, and ends with exactly one final write and one `gen.done`.
Watchers anywhere reach it through its control group: `gen.cancel` stops it, `gen.resume` asks it for the
text from an offset. The channel layer is lossy; the database and the offsets make it exact.
"""

import asyncio
import bisect
import contextlib
import functools
import logging
import time
import weakref
from collections.abc import Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

from channels.layers import BaseChannelLayer, get_channel_layer
from django.conf import settings

from conversations import selectors, services
from conversations.markdown import Block, BlockSplitter
from conversations.models import Message
from streaming import lifecycle, metrics, upstream
from streaming.db import orm
from streaming.upstream import ChatRequest, StreamEnd, TextDelta, ToolCallDelta, UpstreamError

log = logging.getLogger(__name__)

Status = Message.Status
FINAL_WRITE_FIRST_WAIT = 0.25  # seconds before retrying a failed final write; doubles up to 5 s
CANCEL_REPEAT_SECONDS = 0.2  # see cancel_firmly
CANCEL_PERSISTENCE = 10.0
SHUTDOWN_GRACE = 5.0  # seconds the background tasks get to end at shutdown
REJOIN_SECONDS = 10.0  # how often a generation renews its control group membership


def conversation_group(conversation_id: object) -> str:
    """Every watcher of a conversation joins this group; generations publish their events to it."""
    return f"chat.conversation.{conversation_id}"


def user_group(user_id: object) -> str:
    """Every socket of a user joins this group: changes to the list of conversations go to it."""
    return f"chat.user.{user_id}"


def conversation_live_event(conversation_id: object, *, live: bool) -> dict[str, Any]:
    """Tells a user's sockets that an answer started or stopped being written in a conversation."""
    return {"type": "gen.conversation", "conversation": {"id": str(conversation_id), "live": live}}


def control_group(message_id: object) -> str:
    """The engine running a generation joins this group; cancel and resume requests go to it."""
    return f"chat.generation.{message_id}"


class OutputLimitExceeded(Exception):
    pass


@dataclass(eq=False)
class Generation:
    message_id: str
    conversation_id: str
    owner_id: str
    request: ChatRequest
    cancel_requested: bool = False
    content: str = ""  # the text published so far
    pending: list[str] = field(default_factory=list)  # text received but not yet published
    pending_length: int = 0
    saved_length: int = 0
    # The published text cut into finished markdown blocks, each rendered once (see conversations.markdown).
    splitter: BlockSplitter = field(default_factory=BlockSplitter)
    blocks: list[Block] = field(default_factory=list)
    tool_calls: dict[int, ToolCallDelta] = field(default_factory=dict)
    tools_dirty: bool = False
    end: StreamEnd | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    started_at: float = field(default_factory=time.monotonic)
    published_at: float | None = None  # when the last delta went out
    task: "asyncio.Task[None] | None" = None  # the whole generation, final write included
    reader: "asyncio.Task[Outcome] | None" = None  # reading the upstream: the only part a stop cancels
    saved_at: float = field(default_factory=time.monotonic)  # when the last checkpoint (or the insert) was
    # The publisher is never cancelled in the middle of a channel-layer call (a cancelled Redis command can
    # swallow the cancellation and leave its connection unusable): `closing` asks it to return after the call
    # in flight. A closing generation also takes no more checkpoints: its final write is on the way.
    closing: bool = False
    publishing: bool = False

    @property
    def length(self) -> int:
        return len(self.content) + self.pending_length

    def text(self) -> str:
        return self.content + "".join(self.pending)

    def blocks_after(self, rendered: int) -> list[Block]:
        """The finished blocks a client that has the HTML of the first `rendered` code points lacks."""
        index = bisect.bisect_right([block.end for block in self.blocks], rendered)
        return self.blocks[index:]

    def tool_calls_payload(self) -> list[dict[str, Any]]:
        return [
            {"index": call.index, "id": call.id, "name": call.name, "arguments": call.arguments}
            for call in sorted(self.tool_calls.values(), key=lambda call: call.index)
        ]


Outcome = tuple[str, tuple[str, str] | None]  # status, and (error code, message) unless it succeeded


@dataclass(frozen=True)
class Prepared:
    """What a generation needs to start: read from the database, or handed over by whoever just wrote it."""

    conversation_id: str
    owner_id: str
    request: ChatRequest
    status: str
    cancel_requested: bool

    @classmethod
    def new(cls, answer: Message, prompt: list[dict[str, Any]]) -> "Prepared":
        """A `streaming` answer just created, with the prompt its service built: nothing to read again."""
        request = ChatRequest(
            model=answer.model, messages=prompt, temperature=answer.temperature, max_tokens=answer.max_tokens
        )
        return cls(str(answer.conversation_id), str(answer.owner_id), request, Status.STREAMING, False)


def _load(message_id: str) -> Prepared | None:
    message = Message.objects.select_related("conversation").filter(pk=message_id).first()
    if message is None:
        return None
    request = ChatRequest(
        model=message.model,
        messages=selectors.message_prompt(message=message),
        temperature=message.temperature,
        max_tokens=message.max_tokens,
    )
    return Prepared(
        conversation_id=str(message.conversation_id),
        owner_id=str(message.owner_id),
        request=request,
        status=message.status,
        cancel_requested=message.cancel_requested_at is not None,
    )


class Engine:
    """The generations of one process (one event loop) and its end of the control protocol."""

    def __init__(self) -> None:
        self.layer: BaseChannelLayer = get_channel_layer()
        self.generations: dict[str, Generation] = {}
        self.control_channel = ""
        self._background: set[asyncio.Task[None]] = set()
        self._started = False
        self.draining = False  # shutting down: no new generations (see streaming.lifecycle)

    # --- lifecycle ---------------------------------------------------------------------------------------

    async def ensure_started(self) -> None:
        """Opens the control channel and starts the sweeper; the first sweep runs at once (start-up)."""
        if self._started:
            return
        self._started = True
        # The default prefix matters: channels-redis serves all of a process's channels with one blocking pop
        # on one key per prefix, behind one lock, so a channel with its own prefix would hold up the
        # consumers' receives for seconds at a time.
        self.control_channel = await self.layer.new_channel()
        self._spawn(self._control_loop())
        self._spawn(self._sweep_loop())
        self._spawn(self._checkpoint_loop())
        lifecycle.install(self)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def shutdown(self, *, grace: float = 0.0) -> None:
        """Stops every generation here and the background tasks.

        Generations get `grace` seconds to finish; those still running then end `interrupted`, text kept.
        """
        self.draining = True
        running = [gen.task for gen in self.generations.values() if gen.task is not None]
        if running and grace > 0:
            await asyncio.wait(running, timeout=grace)
        generations = list(self.generations.values())
        for gen in generations:
            if gen.reader is not None:
                cancel_firmly(gen.reader)
        await asyncio.gather(*(gen.task for gen in generations if gen.task is not None), return_exceptions=True)
        background = list(self._background)
        for task in background:
            cancel_firmly(task)
        if background:
            # A task still blocked after the grace period is left to the event loop's own end.
            await asyncio.wait(background, timeout=SHUTDOWN_GRACE)
        await upstream.aclose_clients()

    # --- starting and stopping ---------------------------------------------------------------------------

    async def start(self, message_id: str, prepared: Prepared | None = None) -> None:
        """Runs the generation for a `streaming` assistant message in this process (read from the database
        unless its writer hands it over as `prepared`)."""
        await self.ensure_started()
        if message_id in self.generations:
            return
        loaded = prepared or await orm(_load)(message_id)
        if loaded is None or loaded.status != Status.STREAMING:
            return
        gen = Generation(
            message_id=message_id,
            conversation_id=loaded.conversation_id,
            owner_id=loaded.owner_id,
            request=loaded.request,
            cancel_requested=loaded.cancel_requested,
        )
        self.generations[message_id] = gen
        metrics.GENERATIONS_ACTIVE.inc()
        gen.task = asyncio.create_task(self._run(gen))
        try:
            await self.layer.group_add(control_group(message_id), self.control_channel)
        except Exception:
            # Cancels from other processes still arrive through the row's flag, read at each checkpoint; the
            # subscription is renewed every REJOIN_SECONDS.
            log.warning("subscribing a generation to its control group failed", exc_info=True)

    async def cancel(self, message_id: str) -> None:
        """Stops the generation wherever it runs. The caller has already flagged the row (the durable half)."""
        if message_id in self.generations:
            self._cancel_local(message_id)
        else:
            await self.layer.group_send(control_group(message_id), {"type": "gen.cancel", "message": message_id})

    def _cancel_local(self, message_id: str) -> None:
        gen = self.generations.get(message_id)
        if gen is not None and not gen.cancel_requested:
            gen.cancel_requested = True
            if gen.reader is not None:
                # A reader that has already finished is not affected: the answer ended on its own.
                cancel_firmly(gen.reader)

    async def request_resume(self, message_id: str, offset: int, rendered: int, reply_to: str) -> None:
        """Asks the generation's engine to send `reply_to` one `gen.delta`: the text from `offset` and the
        finished blocks after `rendered`."""
        if message_id in self.generations:
            await self._reply_resume(message_id, offset, rendered, reply_to)
        else:
            await self.layer.group_send(
                control_group(message_id),
                {
                    "type": "gen.resume",
                    "message": message_id,
                    "offset": offset,
                    "rendered": rendered,
                    "reply_to": reply_to,
                },
            )

    async def _reply_resume(self, message_id: str, offset: int, rendered: int, reply_to: str) -> None:
        gen = self.generations.get(message_id)
        if gen is None:
            return
        # The reply carries unpublished text too; later deltas that overlap it are trimmed by offset.
        text = gen.text()
        start = min(offset, len(text))
        await self.layer.send(
            reply_to,
            _delta_event(gen.message_id, start, text[start:], gen.blocks_after(rendered)),
        )
        if gen.tool_calls:
            await self.layer.send(reply_to, self._tools_event(gen))

    # --- the generation ----------------------------------------------------------------------------------

    async def _run(self, gen: Generation) -> None:
        publisher = asyncio.create_task(self._publish_loop(gen))
        gen.reader = asyncio.create_task(self._read(gen))
        try:
            status, error = await gen.reader
        finally:
            gen.closing = True
            if not gen.publishing:
                publisher.cancel()
            await asyncio.gather(publisher, return_exceptions=True)
        await self._finish(gen, status, error)

    async def _read(self, gen: Generation) -> Outcome:
        """Reads the upstream into `gen` until the answer ends; cancelling this task is how a stop stops it."""
        try:
            if gen.cancel_requested:
                return Status.CANCELLED, None
            async with asyncio.timeout(settings.CHAT_MAX_DURATION_SECONDS):
                async with aclosing(upstream.stream_chat(gen.request)) as events:
                    async for event in events:
                        self._apply(gen, event)
        except asyncio.CancelledError:
            # Cancelled on purpose (stop) or by a shutting-down process; either way the text so far is kept.
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()
            if gen.cancel_requested:
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
            log.exception("generation failed", extra={"message_id": gen.message_id})
            return Status.ERROR, ("internal_error", "The server failed while writing this answer.")
        return Status.COMPLETE, None

    def _apply(self, gen: Generation, event: upstream.UpstreamEvent) -> None:
        if isinstance(event, TextDelta):
            if gen.length + len(event.text) > settings.CHAT_MAX_OUTPUT_CHARS:
                raise OutputLimitExceeded
            gen.pending.append(event.text)
            gen.pending_length += len(event.text)
            gen.wake.set()
        elif isinstance(event, ToolCallDelta):
            gen.tool_calls[event.index] = event
            gen.tools_dirty = True
            gen.wake.set()
        elif isinstance(event, StreamEnd):
            gen.end = event

    async def _publish_loop(self, gen: Generation) -> None:
        """Publishes the first text at once, then at most one batch per coalescing window."""
        window = settings.CHAT_COALESCE_MS / 1000
        while True:
            await gen.wake.wait()
            gen.wake.clear()
            gen.publishing = True
            try:
                await self._flush(gen)
            finally:
                gen.publishing = False
            if gen.closing:
                return
            await asyncio.sleep(window)

    async def _flush(self, gen: Generation) -> None:
        group = conversation_group(gen.conversation_id)
        try:
            if gen.pending:
                now = time.monotonic()
                metrics.TOKENS.inc(len(gen.pending))
                if gen.published_at is None:
                    metrics.TIME_TO_FIRST_TOKEN.observe(now - gen.started_at)
                else:
                    metrics.DELTA_INTERVAL.observe(now - gen.published_at)
                gen.published_at = now
                chunk = "".join(gen.pending)
                offset = len(gen.content)
                gen.content += chunk
                gen.pending.clear()
                gen.pending_length = 0
                blocks = gen.splitter.feed(chunk)
                gen.blocks.extend(blocks)
                await self.layer.group_send(group, _delta_event(gen.message_id, offset, chunk, blocks))
            if gen.tools_dirty:
                gen.tools_dirty = False
                await self.layer.group_send(group, self._tools_event(gen))
        except Exception:
            # A lost publication is a gap the watchers repair by offset; the generation carries on.
            log.warning("publishing a delta failed", exc_info=True, extra={"message_id": gen.message_id})

    def _tools_event(self, gen: Generation) -> dict[str, Any]:
        return {"type": "gen.tools", "message": gen.message_id, "tool_calls": gen.tool_calls_payload()}

    async def _checkpoint_loop(self) -> None:
        """Saves the text of every generation of this process about once a second, in one statement.

        One write a second per process, whatever the number of answers, and never per token. An answer
        with nothing new renews its lease at least every third of it, so that no sweeper takes it for dead.
        A failed write (the database restarting, say) is retried at the next interval: the text is in
        memory, and the lease outlives several intervals. Every REJOIN_SECONDS the control subscriptions are
        renewed too (a Redis restart forgets every group).
        """
        renew_after = settings.CHAT_LEASE_SECONDS / 3
        joined = time.monotonic()
        while True:
            await asyncio.sleep(settings.CHAT_CHECKPOINT_SECONDS)
            now = time.monotonic()
            due = [
                gen
                for gen in self.generations.values()
                if not gen.closing and (gen.length != gen.saved_length or now - gen.saved_at >= renew_after)
            ]
            if due:
                await self._checkpoint(due)
            if now - joined > REJOIN_SECONDS:
                joined = now
                await self._rejoin()

    async def _checkpoint(self, due: list[Generation]) -> None:
        texts = {gen.message_id: gen.text() for gen in due}
        try:
            stopped = await orm(services.messages_checkpoint)(contents=texts)
        except Exception:
            log.warning("saving checkpoints failed; retrying", exc_info=True, extra={"answers": len(texts)})
            return
        now = time.monotonic()
        for gen in due:
            gen.saved_length, gen.saved_at = len(texts[gen.message_id]), now
        for message_id, cancelled in stopped.items():
            # Flagged for cancellation by a request whose layer message never reached us, swept, or deleted.
            stopping = self.generations.get(message_id)
            if stopping is not None and stopping.reader is not None and not stopping.closing:
                stopping.cancel_requested = cancelled
                cancel_firmly(stopping.reader)

    async def _rejoin(self) -> None:
        for message_id in list(self.generations):
            try:
                await self.layer.group_add(control_group(message_id), self.control_channel)
            except Exception:
                log.warning("renewing a control subscription failed", exc_info=True)
                return

    async def _finish(self, gen: Generation, status: str, error: tuple[str, str] | None) -> None:
        await self._flush(gen)
        last = gen.splitter.finish()
        if last is not None:
            gen.blocks.append(last)
        end = gen.end
        usage = end.usage if end is not None else None
        finish = functools.partial(
            services.message_finish,
            message_id=gen.message_id,
            status=status,
            content=gen.content,
            content_html="".join(block.html for block in gen.blocks),
            finish_reason=(end.finish_reason or "") if end is not None else "",
            prompt_tokens=usage.prompt_tokens if usage is not None else None,
            completion_tokens=usage.completion_tokens if usage is not None else None,
            tool_calls=gen.tool_calls_payload(),
            error_code=error[0] if error else "",
            error_message=error[1] if error else "",
        )
        saved = await self._write_final(gen, finish)
        done: dict[str, Any] = {
            "type": "gen.done",
            "message": gen.message_id,
            "status": status,
            "length": len(gen.content),
            "finish_reason": end.finish_reason if end is not None else None,
            "usage": _usage_payload(usage),
            "error": {"code": error[0], "message": error[1]} if error else None,
            "blocks": [last.payload()] if last is not None else [],
        }
        if saved is False:
            # Swept during a database outage, or deleted: the row's version stands, and watchers read it.
            row = await orm(selectors.message_state)(message_id=gen.message_id)
            status = row.status if row is not None else Status.CANCELLED
            done |= {"status": status, "length": len(row.content) if row is not None else -1, "blocks": []}
        log.info(
            "generation ended",
            extra={"message_id": gen.message_id, "status": status, "chars": len(gen.content), "saved": saved},
        )
        if saved is not None:
            # Unsaved (the database stayed away), the answer is left to the sweeper, which tells watchers.
            with contextlib.suppress(Exception):
                await self.layer.group_send(conversation_group(gen.conversation_id), done)
        with contextlib.suppress(Exception):
            await self.layer.group_send(
                user_group(gen.owner_id), conversation_live_event(gen.conversation_id, live=False)
            )
        with contextlib.suppress(Exception):
            await self.layer.group_discard(control_group(gen.message_id), self.control_channel)
        self.generations.pop(gen.message_id, None)
        metrics.GENERATIONS_ACTIVE.dec()
        metrics.GENERATIONS.labels(status).inc()
        if error:
            metrics.ERRORS.labels(error[0]).inc()

    async def _write_final(self, gen: Generation, finish: Callable[[], bool]) -> bool | None:
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
                    log.exception("saving a finished answer failed", extra={"message_id": gen.message_id})
                    return None
                log.warning("saving a finished answer failed; retrying", extra={"message_id": gen.message_id})
            await asyncio.sleep(wait)
            wait = min(wait * 2, 5.0)

    # --- control channel and sweeper ---------------------------------------------------------------------

    async def _control_loop(self) -> None:
        while True:
            try:
                message = await self.layer.receive(self.control_channel)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("control channel receive failed", exc_info=True)
                await asyncio.sleep(1)
                continue
            kind, message_id = message.get("type"), str(message.get("message", ""))
            try:
                if kind == "gen.cancel":
                    self._cancel_local(message_id)
                elif kind == "gen.resume":
                    await self._reply_resume(
                        message_id, int(message["offset"]), int(message["rendered"]), str(message["reply_to"])
                    )
            except Exception:
                log.warning("control message failed", exc_info=True, extra={"kind": kind})

    async def _sweep_loop(self) -> None:
        while True:
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("sweep failed", exc_info=True)
            await asyncio.sleep(settings.CHAT_SWEEP_SECONDS)

    async def sweep(self) -> int:
        """Marks answers abandoned by dead processes `interrupted` and tells their watchers."""
        swept = await orm(services.messages_sweep_expired)()
        for message in swept:
            log.info("swept abandoned answer", extra={"message_id": str(message.pk)})
            await self.layer.group_send(
                conversation_group(message.conversation_id),
                {
                    "type": "gen.done",
                    "message": str(message.pk),
                    "status": Status.INTERRUPTED,
                    "length": len(message.content),
                    "finish_reason": None,
                    "usage": None,
                    "error": {"code": message.error_code, "message": message.error_message},
                },
            )
            await self.layer.group_send(
                user_group(message.owner_id), conversation_live_event(message.conversation_id, live=False)
            )
        return len(swept)


_cancellers: set["asyncio.Task[None]"] = set()


def cancel_firmly(task: "asyncio.Task[Any]") -> None:
    """Cancels `task`, repeating the request until it ends (for at most CANCEL_PERSISTENCE seconds).

    On Python 3.11, `asyncio.wait_for` (which redis-py and others wrap around socket calls) swallows a
    cancellation that arrives just as the call completes, and the task carries on as if never cancelled. A
    stop must stop, so the request is repeated until the task has actually ended.
    """
    task.cancel()

    async def repeat() -> None:
        deadline = time.monotonic() + CANCEL_PERSISTENCE
        while not task.done() and time.monotonic() < deadline:
            await asyncio.sleep(CANCEL_REPEAT_SECONDS)
            if not task.done():
                task.cancel()

    canceller = asyncio.create_task(repeat())
    _cancellers.add(canceller)
    canceller.add_done_callback(_cancellers.discard)


def _delta_event(message_id: str, offset: int, text: str, blocks: list[Block]) -> dict[str, Any]:
    event: dict[str, Any] = {"type": "gen.delta", "message": message_id, "offset": offset, "text": text}
    if blocks:
        event["blocks"] = [block.payload() for block in blocks]
    return event


def _usage_payload(usage: upstream.Usage | None) -> dict[str, int] | None:
    if usage is None:
        return None
    prompt, completion = usage.prompt_tokens or 0, usage.completion_tokens or 0
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


_engines: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Engine]" = weakref.WeakKeyDictionary()


def get_engine() -> Engine:
    """The engine of the running event loop: one per process under daphne, one per test loop in tests."""
    loop = asyncio.get_running_loop()
    engine = _engines.get(loop)
    if engine is None:
        engine = _engines[loop] = Engine()
    return engine
