"""The internal events between generations, actions and watchers (`gen.*`), the groups they travel in, and
the bus that carries them.

These never reach a client as they are: a `Watcher` turns them into protocol events (streaming.protocol).
Each event has a TypedDict and one constructor; the tables below say who handles which. Only the actions
(streaming.actions, after their write has committed) and the generations (streaming.generation) announce
events; control requests (`gen.cancel`, `gen.resume`) go to a generation through the engine.

Groups:
- `chat.conversation.<id>`: every watcher of a conversation; the announcements of its rows and answers.
- `chat.user.<id>`: every socket and event stream of a user; changes to the user's list of conversations, and
  `gen.access` when what lets them in may have changed (streaming.access).
- `chat.generation.<message id>`: the engine running that answer; cancel and resume requests.

How they travel (`Bus`, one per process): an event is handed to the subscribers of its group in this process
directly, and crosses to other processes through the channel layer (Redis), where each process has one
channel subscribed to the groups its own subscribers are in. A generation's deltas cross only once a watcher
in another process has asked for its text: with every watcher in the process that runs the answer, as behind
a proxy that keeps a socket on one process, a token never leaves the process.
"""

import asyncio
import itertools
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Literal, NotRequired, Protocol, TypedDict

from asgiref.sync import async_to_sync
from channels.layers import BaseChannelLayer, InMemoryChannelLayer, get_channel_layer

from conversations.markdown import BlockPayload
from conversations.payloads import ErrorPayload
from streaming import metrics

# --- groups ---------------------------------------------------------------------------------------------------


def conversation_group(conversation_id: object) -> str:
    """Every watcher of a conversation joins this group; generations publish their events to it."""
    return f"chat.conversation.{conversation_id}"


def user_group(user_id: object) -> str:
    """Every socket of a user joins this group: changes to the list of conversations go to it."""
    return f"chat.user.{user_id}"


def control_group(message_id: object) -> str:
    """The engine running a generation joins this group; cancel and resume requests go to it."""
    return f"chat.generation.{message_id}"


# --- payloads inside events (blocks and errors come from conversations.markdown and .payloads) ----------------


class ToolCallPayload(TypedDict):
    index: int
    id: str
    name: str
    arguments: str


# --- conversation group -----------------------------------------------------------------------------------------


class MessageEvent(TypedDict):
    """A new row (a user message, or an answer that starts `streaming`); `message` is its payload."""

    type: Literal["gen.message"]
    message: dict[str, Any]


class DeltaEvent(TypedDict):
    """Text of an answer from `offset` on, and the markdown blocks that text finished. `frame`, when present,
    is the protocol `delta` a client that has exactly `offset` code points receives, serialised once for all
    of them."""

    type: Literal["gen.delta"]
    message: str
    offset: int
    text: str
    blocks: NotRequired[list[BlockPayload]]
    frame: NotRequired[str]
    logprobs: NotRequired[list[dict[str, Any]]]  # its tokens' log probabilities, when the request asked


class ToolsEvent(TypedDict):
    """The tool calls of an answer so far, whole (each grows until the answer ends)."""

    type: Literal["gen.tools"]
    message: str
    tool_calls: list[ToolCallPayload]


class DoneEvent(TypedDict):
    """An answer ended; its row was written first. `length` is the saved text's length (-1: the row is gone)."""

    type: Literal["gen.done"]
    message: str
    status: str
    length: int
    finish_reason: str | None
    usage: dict[str, int] | None
    error: ErrorPayload | None
    blocks: list[BlockPayload]


class SupersededEvent(TypedDict):
    """Messages that a regenerate or an edit took out of the transcript."""

    type: Literal["gen.superseded"]
    conversation: str
    messages: list[str]


def message(payload: dict[str, Any]) -> MessageEvent:
    return {"type": "gen.message", "message": payload}


def delta(
    message_id: str,
    offset: int,
    text: str,
    blocks: list[BlockPayload] | None = None,
    *,
    frame: str | None = None,
    logprobs: list[dict[str, Any]] | None = None,
) -> DeltaEvent:
    event: DeltaEvent = {"type": "gen.delta", "message": message_id, "offset": offset, "text": text}
    if blocks:
        event["blocks"] = blocks
    if frame is not None:
        event["frame"] = frame
    if logprobs:
        event["logprobs"] = logprobs
    return event


def tools(message_id: str, tool_calls: list[ToolCallPayload]) -> ToolsEvent:
    return {"type": "gen.tools", "message": message_id, "tool_calls": tool_calls}


def done(
    message_id: str,
    status: str,
    *,
    length: int,
    finish_reason: str | None = None,
    usage: dict[str, int] | None = None,
    error: ErrorPayload | None = None,
    blocks: list[BlockPayload] | None = None,
) -> DoneEvent:
    return {
        "type": "gen.done",
        "message": message_id,
        "status": status,
        "length": length,
        "finish_reason": finish_reason,
        "usage": usage,
        "error": error,
        "blocks": blocks or [],
    }


def superseded(conversation_id: str, message_ids: list[str]) -> SupersededEvent:
    return {"type": "gen.superseded", "conversation": conversation_id, "messages": message_ids}


# --- user group ---------------------------------------------------------------------------------------------------


class ConversationEvent(TypedDict):
    """A conversation of the user's list changed: new, renamed, or an answer in it started or stopped (`live`).
    `conversation` is its payload, or only `{"id", "live"}` for a change of `live`."""

    type: Literal["gen.conversation"]
    conversation: dict[str, Any]


class ConversationDeletedEvent(TypedDict):
    type: Literal["gen.conversation_deleted"]
    conversation: str


def conversation(payload: dict[str, Any]) -> ConversationEvent:
    return {"type": "gen.conversation", "conversation": payload}


def conversation_live(conversation_id: object, *, live: bool) -> ConversationEvent:
    """An answer started or stopped being written in a conversation."""
    return {"type": "gen.conversation", "conversation": {"id": str(conversation_id), "live": live}}


def conversation_deleted(conversation_id: str) -> ConversationDeletedEvent:
    return {"type": "gen.conversation_deleted", "conversation": conversation_id}


class AccessEvent(TypedDict):
    """The user's sessions, tokens or account changed (a logout, a password change, a deactivation, a revoked
    token): every connection of the user checks that what it was opened with still lets it in."""

    type: Literal["gen.access"]


ACCESS = "gen.access"


def access_changed() -> AccessEvent:
    return {"type": "gen.access"}


# --- control group ------------------------------------------------------------------------------------------------


class CancelRequest(TypedDict):
    type: Literal["gen.cancel"]
    message: str


class ResumeRequest(TypedDict):
    """Asks a generation to send `reply_to` (a bus address) one `gen.delta` with its text from `offset` and
    the finished blocks after `rendered` (and its tool calls, if any)."""

    type: Literal["gen.resume"]
    message: str
    offset: int
    rendered: int
    reply_to: str


def cancel_request(message_id: str) -> CancelRequest:
    return {"type": "gen.cancel", "message": message_id}


def resume_request(message_id: str, offset: int, rendered: int, reply_to: str) -> ResumeRequest:
    return {"type": "gen.resume", "message": message_id, "offset": offset, "rendered": rendered, "reply_to": reply_to}


# --- routing --------------------------------------------------------------------------------------------------------

WatcherEvent = MessageEvent | DeltaEvent | ToolsEvent | DoneEvent | SupersededEvent
ListEvent = ConversationEvent | ConversationDeletedEvent | AccessEvent
ControlRequest = CancelRequest | ResumeRequest

# The one routing table: the handler of each event, on the Watcher (conversation group, resume replies) or on
# the socket (the user's list, its access); control requests go to the engine.
WATCHER_HANDLERS = {
    "gen.message": "on_message",
    "gen.delta": "on_delta",
    "gen.tools": "on_tools",
    "gen.done": "on_done",
    "gen.superseded": "on_superseded",
}
LIST_HANDLERS = {
    "gen.conversation": "on_conversation",
    "gen.conversation_deleted": "on_conversation_deleted",
    ACCESS: "on_access",
}
CONTROL_HANDLERS = {
    "gen.cancel": "on_cancel",
    "gen.resume": "on_resume",
}
# Sent by the bus itself to every subscriber when the channel layer came back after an outage: whatever
# crossed processes meanwhile is lost, so watchers check their answers (see Watcher.on_resync).
RESYNC = "bus.resync"
PING = "bus.ping"  # what the bus sends itself through the layer to see that it works


# --- the bus ------------------------------------------------------------------------------------------------------

log = logging.getLogger(__name__)


class Subscriber(Protocol):
    """Something in this process that receives events: a watcher, a socket, the engine."""

    def deliver(self, event: dict[str, Any]) -> None:
        """Takes an event; must not block or fail (queue it, handle it later)."""


def _insist_on_cancellation() -> None:
    """Raises CancelledError if the running task was cancelled, even if the call it was in swallowed it.

    On Python 3.11, `asyncio.wait_for` (which redis-py wraps around socket calls) returns normally when a
    cancellation arrives just as the call completes; a loop that then goes on would never end (a process, or a
    test's event loop, would wait for it forever).
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class Bus:
    """Carries events between the subscribers of this process and, through the channel layer, other processes.

    Local delivery is a direct call on each subscriber of the group: no queue, no copy, no serialisation,
    whatever the layer. What crosses the layer goes out through one outbox, in order, from a task of its own,
    so that a slow or absent Redis never holds up a generation or a request; it carries the group it was
    published to and this process's channel as its origin, so a process drops its own publications when they
    come back to it. While the layer is away, what crosses is lost (watchers repair by offset and check the
    database); the bus notices its return within a second (it pings itself through the layer), joins its
    groups again and tells every subscriber to catch up (RESYNC).
    """

    OUTBOX_LIMIT = 10_000  # operations waiting for the layer; beyond, new ones are dropped (and repaired)
    PING_SECONDS = 0.25  # how often the bus pings itself through the layer
    DOWN_AFTER = 1.0  # no ping back for this long: the layer is away
    JOIN_TIMEOUT = 1.0  # a layer that takes longer to add a group is treated as away

    def __init__(self, layer: BaseChannelLayer) -> None:
        self.layer = layer
        # The in-memory layer is one process's: nothing ever needs to cross it.
        self.crosses = not isinstance(layer, InMemoryChannelLayer)
        self.channel = ""  # this process's layer channel, once started
        self.groups: dict[str, dict[int, Subscriber]] = {}  # group -> subscriber key -> subscriber
        self.subscribers: dict[int, Subscriber] = {}
        self.up = True  # whether the layer answered lately
        self._keys = itertools.count(1)
        self._outbox: asyncio.Queue[Callable[[], Awaitable[None]]] = asyncio.Queue(self.OUTBOX_LIMIT)
        self._tasks: set[asyncio.Task[None]] = set()
        self._joining: dict[str, asyncio.Task[None]] = {}  # groups whose join on the layer is under way
        self._started: asyncio.Future[None] | None = None
        self._pinged_back = 0.0
        self._failing = False

    async def start(self) -> None:
        """Opens this process's layer channel and starts the tasks that serve it (once). Never fails: with the
        layer away, the channel is named here and subscribed to once the layer is back."""
        if self._started is None:
            self._started = asyncio.get_running_loop().create_future()
            if self.crosses:
                try:
                    async with asyncio.timeout(self.JOIN_TIMEOUT):
                        self.channel = await self.layer.new_channel()
                    _insist_on_cancellation()
                except Exception:
                    log.warning("the channel layer is unreachable; events stay within this process until it is back")
                    self.channel = f"{getattr(self.layer, 'prefix', '')}specific.{uuid.uuid4().hex}"
                    self.up = False
                    metrics.BUS_OUTAGES.inc()
                self._pinged_back = asyncio.get_running_loop().time()
                for work in (self._receive(), self._send_out(), self._watch_layer()):
                    self._spawn(work)
            self._started.set_result(None)
        await asyncio.shield(self._started)

    async def stop(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._started = None

    def _spawn(self, work: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- subscribers ----------------------------------------------------------------------------------------

    def register(self, subscriber: Subscriber) -> int:
        """A key for a new subscriber, by which replies reach it (see `address`)."""
        key = next(self._keys)
        self.subscribers[key] = subscriber
        return key

    def unregister(self, key: int) -> None:
        self.subscribers.pop(key, None)

    async def address(self, key: int) -> str:
        """Where a reply to subscriber `key` goes, from any process."""
        await self.start()
        return f"{self.channel}|{key}"

    async def join(self, group: str, key: int, *, wait: bool = True) -> None:
        """Adds a subscriber to a group. With the first one, this process's channel joins the group on the
        layer. With `wait`, this returns once it has (or after JOIN_TIMEOUT): a caller that subscribes and then
        reads the database misses nothing that other processes announce after its read. Without, it returns at
        once: for callers whose group has no events elsewhere yet (a conversation or an answer this process
        just created), so that Redis is never on the way to an answer's start.

        The layer's join itself is never abandoned: a timeout only stops the waiting, and the process stays
        subscribed once Redis gets to it (the layer serialises joins behind its publications, so under load a
        join may take longer than JOIN_TIMEOUT; a join cancelled then would leave the group deaf here).
        """
        members = self.groups.setdefault(group, {})
        first = not members
        if key not in members:
            metrics.BUS_SUBSCRIPTIONS.inc()
        members[key] = self.subscribers[key]
        if not (first and self.crosses):
            joining = self._joining.get(group)
        else:
            joining = self._joining[group] = asyncio.ensure_future(self._join_layer(group))
            self._tasks.add(joining)
            joining.add_done_callback(self._tasks.discard)
        if wait and joining is not None and not joining.done():
            await asyncio.wait([joining], timeout=self.JOIN_TIMEOUT)

    async def _join_layer(self, group: str) -> None:
        try:
            await self.start()
            await self.layer.group_add(group, self.channel)
            _insist_on_cancellation()
        except asyncio.CancelledError:
            raise
        except Exception:
            # Local delivery works regardless; the group is joined again when the layer is back.
            log.warning("joining a group on the channel layer failed", exc_info=True, extra={"group": group})
        finally:
            if self._joining.get(group) is asyncio.current_task():
                del self._joining[group]

    def leave(self, group: str, key: int) -> None:
        members = self.groups.get(group)
        if members is None or members.pop(key, None) is None:
            return
        metrics.BUS_SUBSCRIPTIONS.dec()
        if members:
            return
        del self.groups[group]
        if self.crosses:
            joining = self._joining.get(group)

            async def discard() -> None:
                if joining is not None:  # a join still under way would otherwise land after the discard
                    await asyncio.wait([joining])
                if group not in self.groups:  # unless someone here joined it again meanwhile
                    await self.layer.group_discard(group, self.channel)

            self._out(discard)

    def members(self, group: str) -> int:
        return len(self.groups.get(group, ()))

    # --- sending ------------------------------------------------------------------------------------------------

    def publish(self, group: str, event: Any, *, cross: bool = True) -> None:
        """Hands `event` to the group's subscribers here and, with `cross`, sends it to those of other
        processes (in order, without waiting)."""
        members = self.groups.get(group)
        if members:
            for subscriber in list(members.values()):
                subscriber.deliver(event)
        if cross and self.crosses:
            self._out(lambda: self.layer.group_send(group, {**event, "_group": group, "_origin": self.channel}))

    def send(self, address: str, event: Any) -> None:
        """Hands `event` to the one subscriber at `address`, here or in another process."""
        channel, _, key = address.rpartition("|")
        if channel == self.channel or not self.crosses:
            subscriber = self.subscribers.get(int(key))
            if subscriber is not None:
                subscriber.deliver(event)
        else:
            self._out(lambda: self.layer.send(channel, {**event, "_to": int(key)}))

    def resync(self) -> None:
        """Tells every subscriber that events from other processes may have been lost (see RESYNC)."""
        for subscriber in list(self.subscribers.values()):
            subscriber.deliver({"type": RESYNC})

    def _out(self, operation: Callable[[], Awaitable[None]]) -> None:
        try:
            self._outbox.put_nowait(operation)
        except asyncio.QueueFull:
            metrics.BUS_DROPPED.inc()
            return
        if self._started is None:
            self._spawn(self.start())

    # --- the tasks that serve the layer -----------------------------------------------------------------------

    async def _send_out(self) -> None:
        while True:
            operation = await self._outbox.get()
            try:
                await operation()
                _insist_on_cancellation()
            except Exception:
                # Lost for other processes; their watchers repair by offset and by checking the database.
                metrics.BUS_DROPPED.inc()
                if self.up and not self._failing:
                    self._failing = True  # said once; the outage itself is reported by _watch_layer
                    log.warning("sending through the channel layer failed", exc_info=True)

    async def _receive(self) -> None:
        while True:
            try:
                event = await self.layer.receive(self.channel)
                _insist_on_cancellation()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("receiving from the channel layer failed", exc_info=True)
                await asyncio.sleep(self.PING_SECONDS)
                continue
            if event.get("type") == PING:
                self._pinged_back = asyncio.get_running_loop().time()
                if not self.up:
                    self._spawn(self._recover())
                continue
            if event.get("_origin") == self.channel:
                continue  # this process's own publication, already delivered here
            to = event.get("_to")
            if to is not None:
                subscriber = self.subscribers.get(to)
                if subscriber is not None:
                    subscriber.deliver(event)
                continue
            for subscriber in list(self.groups.get(event.get("_group", ""), {}).values()):
                subscriber.deliver(event)

    async def _watch_layer(self) -> None:
        """Pings this process's own channel through the layer, to notice when the layer goes away and returns.

        The ping does not queue in the outbox: under load the outbox may hold seconds of publications, and a
        ping behind them would report a healthy Redis as gone (and every return would send every subscriber
        to the database to catch up). One ping is out at a time.
        """
        loop = asyncio.get_running_loop()
        ping: asyncio.Task[None] | None = None
        while True:
            await asyncio.sleep(self.PING_SECONDS)
            if ping is None or ping.done():
                ping = asyncio.ensure_future(self._ping())
                self._tasks.add(ping)
                ping.add_done_callback(self._tasks.discard)
            if self.up and loop.time() - self._pinged_back > self.DOWN_AFTER:
                self.up = False
                metrics.BUS_OUTAGES.inc()
                log.warning("the channel layer is unreachable; events stay within this process until it is back")

    async def _ping(self) -> None:
        try:
            await self.layer.send(self.channel, {"type": PING})
            _insist_on_cancellation()
        except asyncio.CancelledError:
            raise
        except Exception:
            # The layer is away: no ping comes back, which is what _watch_layer looks for (and reports once).
            log.debug("pinging the channel layer failed", exc_info=True)

    async def _recover(self) -> None:
        """The layer is back: join every group with local subscribers again (a Redis restart forgets them all),
        then tell every subscriber to catch up on what crossed meanwhile (RESYNC)."""
        if self.up:
            return
        self.up, self._failing = True, False
        log.warning("the channel layer is back; rejoining groups and catching up")
        for group in list(self.groups):
            try:
                await self.layer.group_add(group, self.channel)
            except Exception:
                log.warning("rejoining a group failed", exc_info=True, extra={"group": group})
            _insist_on_cancellation()
        self.resync()


_buses: dict[asyncio.AbstractEventLoop, Bus] = {}


def publish_from_thread(group: str, event: Any) -> None:
    """Publishes from code outside the event loop (a Django view, a signal, a management command).

    The bus of each running loop of this process gets the event on its own thread, and sends it on to other
    processes; with no bus here (a management command, say), the event goes straight to the channel layer,
    which reaches every process with a subscriber in the group (nothing to reach with the in-memory layer).
    """
    buses = [(loop, bus) for loop, bus in list(_buses.items()) if loop.is_running()]
    for loop, bus in buses:
        loop.call_soon_threadsafe(bus.publish, group, event)
    layer = get_channel_layer()
    if not buses and layer is not None and not isinstance(layer, InMemoryChannelLayer):
        async_to_sync(layer.group_send)(group, {**event, "_group": group})


def get_bus() -> Bus:
    """The bus of the running event loop: one per process under daphne, one per test loop in tests."""
    loop = asyncio.get_running_loop()
    bus = _buses.get(loop)
    if bus is None:
        for closed in [other for other in _buses if other.is_closed()]:
            del _buses[closed]
        bus = _buses[loop] = Bus(get_channel_layer())
    return bus
