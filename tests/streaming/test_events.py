"""The bus: direct delivery to this process's subscribers, the channel layer only for other processes, and
recovery when Redis goes away and comes back (a private redis-server that the tests kill and restart)."""

import asyncio
import time
from typing import Any

import pytest
from channels.layers import InMemoryChannelLayer
from channels_redis.pubsub import RedisPubSubChannelLayer

from streaming import events
from streaming.events import Bus
from tests.deploy.harness import PrivateRedis


class Inbox:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.arrived = asyncio.Event()

    def deliver(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        self.arrived.set()

    async def next(self, timeout: float = 5.0) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while not self.events:
                self.arrived.clear()
                await self.arrived.wait()
        return self.events.pop(0)

    def kinds(self) -> list[str]:
        return [event["type"] for event in self.events]


async def subscribe(bus: Bus, group: str) -> Inbox:
    inbox = Inbox()
    await bus.join(group, bus.register(inbox))
    return inbox


async def test_in_one_process_events_go_straight_to_the_subscribers_of_their_group():
    bus = Bus(InMemoryChannelLayer())
    mine, theirs = await subscribe(bus, "chat.user.1"), await subscribe(bus, "chat.user.2")
    event = events.conversation_live("c1", live=True)
    bus.publish("chat.user.1", event)
    # Delivered during the call, the same object, to that group only; nothing crosses an in-memory layer.
    assert mine.events == [event] and mine.events[0] is event
    assert theirs.events == []
    assert not bus.crosses and bus.channel == ""


async def test_a_reply_reaches_its_one_subscriber_by_address():
    bus = Bus(InMemoryChannelLayer())
    first, second = Inbox(), Inbox()
    bus.register(first)
    key = bus.register(second)
    bus.send(await bus.address(key), events.delta("m", 0, "hello"))
    assert first.events == [] and [e["text"] for e in second.events] == ["hello"]


async def test_leaving_the_last_subscriber_stops_delivery():
    bus = Bus(InMemoryChannelLayer())
    inbox = Inbox()
    key = bus.register(inbox)
    await bus.join("g", key)
    bus.leave("g", key)
    bus.publish("g", events.delta("m", 0, "lost"))
    assert inbox.events == [] and bus.members("g") == 0


@pytest.fixture
def redis():
    server = PrivateRedis().start()
    yield server
    server.stop()


@pytest.fixture
async def processes(redis):
    """Two buses on two layers over one Redis: two processes, as far as the bus can tell."""
    buses = [Bus(RedisPubSubChannelLayer(hosts=[redis.url], prefix="bus-test")) for _ in range(2)]
    for bus in buses:
        bus.PING_SECONDS = 0.1
        await bus.start()
    yield buses
    for bus in buses:
        await bus.stop()


async def test_events_cross_to_other_processes_and_not_back_to_their_own(processes):
    one, two = processes
    here, there = await subscribe(one, "chat.conversation.c"), await subscribe(two, "chat.conversation.c")
    one.publish("chat.conversation.c", events.message({"id": "m"}))
    assert here.kinds() == ["gen.message"]
    crossed = await there.next()
    assert (crossed["type"], crossed["message"]) == ("gen.message", {"id": "m"})
    await asyncio.sleep(0.3)
    assert here.kinds() == ["gen.message"], "its own publication must not come back to it"


async def test_what_is_not_for_other_processes_stays_in_this_one(processes):
    one, two = processes
    here, there = await subscribe(one, "chat.conversation.d"), await subscribe(two, "chat.conversation.d")
    one.publish("chat.conversation.d", events.delta("m", 0, "local"), cross=False)
    one.publish("chat.conversation.d", events.delta("m", 5, "shared"))
    assert [e["text"] for e in here.events] == ["local", "shared"]
    assert (await there.next())["text"] == "shared"


async def test_a_reply_crosses_to_its_subscriber_in_another_process(processes):
    one, two = processes
    inbox = Inbox()
    address = await two.address(two.register(inbox))
    one.send(address, events.delta("m", 3, "resumed"))
    reply = await inbox.next()
    assert (reply["offset"], reply["text"]) == (3, "resumed")


async def test_after_redis_returns_groups_are_joined_again_and_subscribers_told_to_catch_up(processes, redis):
    one, two = processes
    await subscribe(one, "chat.conversation.e")
    there = await subscribe(two, "chat.conversation.e")

    redis.stop()
    for _ in range(50):
        if not (one.up or two.up):
            break
        await asyncio.sleep(0.1)
    assert not one.up and not two.up, "both processes notice the layer is away"
    # Not an error: it crosses if the Redis client's retries outlast the outage, or it is lost (and repaired).
    one.publish("chat.conversation.e", events.delta("m", 0, "while away"))

    redis.start()
    back = time.monotonic()
    while (event := await there.next(timeout=5))["type"] != events.RESYNC:
        assert event["text"] == "while away"
    assert time.monotonic() - back < 1.0, "subscribers are told to catch up within a second"
    for _ in range(50):
        if one.up:
            break
        await asyncio.sleep(0.1)
    one.publish("chat.conversation.e", events.delta("m", 16, "after the return"))
    while (event := await there.next())["type"] == events.RESYNC or event["text"] == "while away":
        pass
    assert event["text"] == "after the return", "the group was joined again on the new Redis"


def slowed(bus: Bus, operation: str, seconds: float) -> None:
    """Makes one operation of the bus's layer (`group_add`, `group_send`) take `seconds` longer, as under load:
    channels-redis serialises joins and publications on one lock, a round trip each."""
    original = getattr(bus.layer, operation)

    async def slow(*args: Any) -> None:
        await asyncio.sleep(seconds)
        await original(*args)

    setattr(bus.layer, operation, slow)


async def crossed(bus: Bus, group: str, inbox: Inbox, text: str) -> bool:
    bus.publish(group, events.delta("m", 0, text))
    try:
        while (await inbox.next(timeout=1.0))["text"] != text:
            pass
    except TimeoutError:
        return False
    return True


@pytest.mark.parametrize("wait", [True, False])
async def test_a_slow_join_holds_the_caller_at_most_its_wait_and_is_kept_not_abandoned(processes, wait):
    one, two = processes
    two.JOIN_TIMEOUT = 0.1
    slowed(two, "group_add", 0.5)
    there = Inbox()
    began = time.monotonic()
    await two.join("chat.conversation.f", two.register(there), wait=wait)
    assert time.monotonic() - began < (0.4 if wait else 0.05), "the caller waits at most JOIN_TIMEOUT, or not at all"
    two.publish("chat.conversation.f", events.delta("m", 0, "local"), cross=False)
    assert there.kinds() == ["gen.delta"], "local delivery needs no layer"
    there.events.clear()
    await asyncio.sleep(0.6)
    assert await crossed(one, "chat.conversation.f", there, "from the other process")


async def test_leaving_while_the_join_is_under_way_leaves_the_layer_too(processes):
    one, two = processes
    slowed(two, "group_add", 0.3)
    inbox = Inbox()
    key = two.register(inbox)
    await two.join("chat.conversation.h", key, wait=False)
    two.leave("chat.conversation.h", key)
    await asyncio.sleep(0.8)
    assert two.channel not in two.layer.groups.get("chat.conversation.h", set()), "the discard came after the join"
    assert not await crossed(one, "chat.conversation.h", inbox, "to nobody")


async def test_a_backlog_of_publications_is_not_taken_for_an_outage(processes):
    """Under load the outbox holds seconds of publications; the ping must not wait behind them, or a healthy
    Redis would be reported gone (and every subscriber sent to the database on its 'return')."""
    one, _ = processes
    slowed(one, "group_send", 0.2)
    for number in range(20):  # four seconds of backlog
        one.publish("chat.conversation.i", events.delta("m", number, "x"))
    await asyncio.sleep(2.0)
    assert one.up, "Redis answered the pings all along"
