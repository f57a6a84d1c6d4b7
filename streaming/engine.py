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
from typing import Any

from channels.layers import BaseChannelLayer, get_channel_layer
from django.conf import settings

from conversations import services
from conversations.models import Message
from streaming import events, metrics, upstream
from streaming.aio import cancel_firmly, orm
from streaming.generation import Generation, Prepared, announce_swept, prepared_load

log = logging.getLogger(__name__)

SHUTDOWN_GRACE = 5.0  # seconds the background tasks get to end at shutdown
REJOIN_SECONDS = 10.0  # how often a generation renews its control group membership


class Engine:
    """The generations of one process (one event loop) and its end of the control protocol."""

    def __init__(self) -> None:
        self.layer: BaseChannelLayer = get_channel_layer()
        self.generations: dict[str, Generation] = {}
        self.control_channel = ""
        self._tasks: set[asyncio.Task[None]] = set()  # each generation's whole run, final write included
        self._background: set[asyncio.Task[None]] = set()
        self._started = False
        self.draining = False  # shutting down: no new generations (see streaming.lifecycle)

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
        await upstream.aclose_clients()

    # --- starting and stopping ---------------------------------------------------------------------------

    async def start(self, message_id: str, prepared: Prepared | None = None) -> None:
        """Runs the generation for a `streaming` assistant message in this process (read from the database
        unless its writer hands it over as `prepared`)."""
        await self.ensure_started()
        if message_id in self.generations:
            return
        loaded = prepared or await orm(prepared_load)(message_id)
        if loaded is None or loaded.status != Message.Status.STREAMING or message_id in self.generations:
            return
        gen = Generation.of(message_id, loaded, self.layer)
        self.generations[message_id] = gen
        metrics.GENERATIONS_ACTIVE.inc()
        task = asyncio.create_task(self._run(gen))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        try:
            await self.layer.group_add(events.control_group(message_id), self.control_channel)
        except Exception:
            # Cancels from other processes still arrive through the row's flag, read at each checkpoint; the
            # subscription is renewed every REJOIN_SECONDS.
            log.warning("subscribing a generation to its control group failed", exc_info=True)

    async def _run(self, gen: Generation) -> None:
        try:
            await gen.run()
        finally:
            self.generations.pop(gen.message_id, None)
            metrics.GENERATIONS_ACTIVE.dec()
            metrics.GENERATIONS.labels(gen.status).inc()
            try:
                await self.layer.group_discard(events.control_group(gen.message_id), self.control_channel)
            except Exception:
                log.warning("leaving a control group failed", exc_info=True)

    async def cancel(self, message_id: str) -> None:
        """Stops the generation wherever it runs. The caller has already flagged the row (the durable half)."""
        gen = self.generations.get(message_id)
        if gen is not None:
            gen.stop(cancelled=True)
        else:
            await self.layer.group_send(events.control_group(message_id), events.cancel_request(message_id))

    async def request_resume(self, message_id: str, offset: int, rendered: int, reply_to: str) -> None:
        """Asks the generation's engine to send `reply_to` its text from `offset` and the finished blocks after
        `rendered` (see Generation.answer_resume)."""
        if message_id in self.generations:
            await self._reply_resume(message_id, offset, rendered, reply_to)
        else:
            await self.layer.group_send(
                events.control_group(message_id), events.resume_request(message_id, offset, rendered, reply_to)
            )

    async def _reply_resume(self, message_id: str, offset: int, rendered: int, reply_to: str) -> None:
        gen = self.generations.get(message_id)
        if gen is not None:
            await gen.answer_resume(offset, rendered, reply_to)

    # --- control channel, checkpoints and sweeper -------------------------------------------------------------

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
            kind = message.get("type")
            try:
                await getattr(self, events.CONTROL_HANDLERS[kind])(message)
            except Exception:
                log.warning("control message failed", exc_info=True, extra={"kind": kind})

    async def on_cancel(self, request: events.CancelRequest) -> None:
        gen = self.generations.get(str(request["message"]))
        if gen is not None:
            gen.stop(cancelled=True)

    async def on_resume(self, request: events.ResumeRequest) -> None:
        await self._reply_resume(
            str(request["message"]), int(request["offset"]), int(request["rendered"]), str(request["reply_to"])
        )

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
            if stopping is not None and not stopping.closing:
                stopping.stop(cancelled=cancelled)

    async def _rejoin(self) -> None:
        for message_id in list(self.generations):
            try:
                await self.layer.group_add(events.control_group(message_id), self.control_channel)
            except Exception:
                log.warning("renewing a control subscription failed", exc_info=True)
                return

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
            await announce_swept(self.layer, message)
        return len(swept)
