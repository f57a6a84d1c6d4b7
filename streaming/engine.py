"""The generations of one process: starting them, stopping them, their checkpoints, and the sweeper.

Each answer being written here is a `Generation` (streaming.generation) in `Engine.generations`, running
independently of the sockets that watch it. Watchers anywhere reach it through its control group
(`chat.generation.<id>`): `gen.cancel` stops it, `gen.resume` asks it for its text from an offset. The engine
saves the text of all its generations about once a second in one statement (never per token), and sweeps
answers abandoned by dead processes to `interrupted`. The process lifecycle (streaming.lifecycle) creates the
engine and stops it.
"""

import asyncio
import logging
import time
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.utils import timezone

from conversations import services
from conversations.models import Message
from streaming import events, metrics, upstream
from streaming.aio import cancel_firmly, orm
from streaming.events import Bus, get_bus
from streaming.generation import EarlyStart, Generation, Prepared, announce_swept, prepared_load

log = logging.getLogger(__name__)

SHUTDOWN_GRACE = 5.0  # seconds the background tasks get to end at shutdown


class Engine:
    """The generations of one process (one event loop) and its end of the control protocol."""

    def __init__(self, bus: Bus | None = None) -> None:
        self.bus = bus or get_bus()
        self.generations: dict[str, Generation] = {}
        # The engine is the bus subscriber of its generations' control groups; requests wait in `_inbox`.
        self.key = self.bus.register(self)
        self._inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._tasks: set[asyncio.Task[None]] = set()  # each generation's whole run, final write included
        self._background: set[asyncio.Task[None]] = set()
        self._started = False
        self.draining = False  # shutting down: no new generations (see streaming.lifecycle)

    async def ensure_started(self) -> None:
        """Starts the control loop, the checkpoints and the sweeper; the first sweep runs at once (start-up)."""
        if self._started:
            return
        self._started = True
        self._spawn(self._control_loop())
        self._spawn(self._sweep_loop())
        self._spawn(self._checkpoint_loop())

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def shutdown(self, *, grace: float = 0.0) -> None:
        """Stops every generation here and the background tasks.

        Generations get `grace` seconds to finish; those still running then end `interrupted`, text kept.
        """
        self.draining = True
        if self._tasks and grace > 0:
            await asyncio.wait(list(self._tasks), timeout=grace)
        for gen in list(self.generations.values()):
            gen.stop(cancelled=False)
        await asyncio.gather(*self._tasks, return_exceptions=True)
        background = list(self._background)
        for task in background:
            cancel_firmly(task)
        if background:
            # A task still blocked after the grace period is left to the event loop's own end.
            await asyncio.wait(background, timeout=SHUTDOWN_GRACE)
        self.bus.unregister(self.key)
        await self.bus.stop()
        await upstream.aclose_clients()

    def deliver(self, event: dict[str, Any]) -> None:
        """Takes a control request from the bus (see streaming.events.Bus)."""
        self._inbox.put_nowait(event)

    # --- starting and stopping ---------------------------------------------------------------------------

    async def start(self, message_id: str, prepared: Prepared | None = None, early: EarlyStart | None = None) -> None:
        """Runs the generation for a `streaming` assistant message in this process (read from the database
        unless its writer hands it over as `prepared`), on the upstream request `early` when one was started
        for it before its rows were written and it asks exactly what the answer asks (else `early` is closed)."""
        gen: Generation | None = None
        try:
            await self.ensure_started()
            if message_id in self.generations:
                return
            loaded = prepared or await orm(prepared_load)(message_id)
            if loaded is None or loaded.status != Message.Status.STREAMING or message_id in self.generations:
                return
            usable = early if early is not None and early.request == loaded.request else None
            gen = Generation.of(message_id, loaded, self.bus, usable)
            self.generations[message_id] = gen
            metrics.GENERATIONS_ACTIVE.inc()
            task = asyncio.create_task(self._run(gen))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            # Not waited for: a cancel from another process also arrives through the row's flag, read at each
            # checkpoint, and a resume request unanswered is asked again.
            await self.bus.join(events.control_group(message_id), self.key, wait=False)
        finally:
            if early is not None and (gen is None or gen.early is not early):
                await early.close()

    async def _run(self, gen: Generation) -> None:
        try:
            await gen.run()
        finally:
            self.generations.pop(gen.message_id, None)
            metrics.GENERATIONS_ACTIVE.dec()
            metrics.GENERATIONS.labels(gen.status).inc()
            self.bus.leave(events.control_group(gen.message_id), self.key)

    async def take_over(self, message_id: str) -> None:
        """Starts again (or ends) a streaming answer that no generation runs: one whose process died, or
        never started it. A generation renews its row at least every third of the lease, so a row not
        renewed for that long and two checkpoints more has none; the database decides, so two processes
        never both take it (see services.message_take_over)."""
        if message_id in self.generations:
            return
        stale = settings.CHAT_LEASE_SECONDS / 3 + 2 * settings.CHAT_CHECKPOINT_SECONDS
        stale_before = timezone.now() - timedelta(seconds=stale)
        row = await orm(services.message_take_over)(message_id=message_id, stale_before=stale_before)
        if row is None:
            return
        log.warning("took over an answer no generation was writing", extra={"message_id": message_id})
        if row.status == Message.Status.STREAMING:
            await self.start(message_id)
        else:
            announce_swept(self.bus, row)

    def answers_of(self, owner_id: str) -> int:
        """How many answers of a user this process is writing."""
        return sum(1 for gen in self.generations.values() if gen.owner_id == owner_id)

    async def cancel(self, message_id: str) -> None:
        """Stops the generation wherever it runs. The caller has already flagged the row (the durable half)."""
        gen = self.generations.get(message_id)
        if gen is not None:
            gen.stop(cancelled=True)
        else:
            self.bus.publish(events.control_group(message_id), events.cancel_request(message_id))

    async def request_resume(self, message_id: str, offset: int, rendered: int, reply_to: str) -> None:
        """Asks the generation's engine to send `reply_to` its text from `offset` and the finished blocks after
        `rendered` (see Generation.answer_resume)."""
        gen = self.generations.get(message_id)
        if gen is not None:
            gen.answer_resume(offset, rendered, reply_to)
        else:
            request = events.resume_request(message_id, offset, rendered, reply_to)
            self.bus.publish(events.control_group(message_id), request)

    # --- control channel, checkpoints and sweeper -------------------------------------------------------------

    async def _control_loop(self) -> None:
        """Handles the requests that other processes send this process's generations (local ones are
        handled directly: see `cancel` and `request_resume`)."""
        while True:
            message = await self._inbox.get()
            kind = message.get("type")
            handler = events.CONTROL_HANDLERS.get(str(kind))
            if handler is None:
                continue  # a resync: nothing to redo, a requester asks again
            try:
                await getattr(self, handler)(message)
            except Exception:
                log.warning("control message failed", exc_info=True, extra={"kind": kind})

    async def on_cancel(self, request: events.CancelRequest) -> None:
        gen = self.generations.get(str(request["message"]))
        if gen is not None:
            gen.stop(cancelled=True)

    async def on_resume(self, request: events.ResumeRequest) -> None:
        gen = self.generations.get(str(request["message"]))
        if gen is not None:
            # Asked from another process: from now on its deltas cross the channel layer too.
            gen.watched_elsewhere = True
            gen.answer_resume(int(request["offset"]), int(request["rendered"]), str(request["reply_to"]))

    async def _checkpoint_loop(self) -> None:
        """Saves the text of every generation of this process about once a second, in one statement.

        One write a second per process, whatever the number of answers, and never per token. An answer
        with nothing new renews its lease at least every third of it, so that no sweeper takes it for dead.
        A failed write (the database restarting, say) is retried at the next interval: the text is in
        memory, and the lease outlives several intervals.
        """
        renew_after = settings.CHAT_LEASE_SECONDS / 3
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
            if stopping is not None and not stopping.closing:
                stopping.stop(cancelled=cancelled)

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
            announce_swept(self.bus, message)
        return len(swept)
