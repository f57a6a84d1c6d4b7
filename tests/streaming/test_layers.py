"""The single-process channel layer: channels' semantics with less work per message."""

import asyncio

import pytest

from streaming import layers
from streaming.layers import InMemoryChannelLayer


@pytest.fixture
def sweep_always(monkeypatch):
    monkeypatch.setattr(layers, "CLEAN_EVERY", 0.0)


async def test_group_members_each_get_the_message_and_other_groups_none():
    layer = InMemoryChannelLayer()
    first, second, outsider = [await layer.new_channel() for _ in range(3)]
    await layer.group_add("g", first)
    await layer.group_add("g", second)
    await layer.group_add("other", outsider)

    await layer.group_send("g", {"type": "gen.delta", "text": "hi"})

    assert await asyncio.wait_for(layer.receive(first), 1) == {"type": "gen.delta", "text": "hi"}
    assert await asyncio.wait_for(layer.receive(second), 1) == {"type": "gen.delta", "text": "hi"}
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(layer.receive(outsider), 0.05)


async def test_a_waiting_receiver_keeps_its_queue_through_sweeps(sweep_always):
    layer = InMemoryChannelLayer()
    channel = await layer.new_channel()
    await layer.group_add("g", channel)
    waiting = asyncio.create_task(layer.receive(channel))
    await asyncio.sleep(0)
    idle = await layer.new_channel()
    layer.channels[idle] = asyncio.Queue()  # a queue nobody waits on and nothing is in

    layer._clean_expired()  # a sweep while the receiver waits
    await layer.group_send("g", {"type": "gen.delta"})

    assert await asyncio.wait_for(waiting, 1) == {"type": "gen.delta"}
    assert idle not in layer.channels, "the sweep drops queues nobody waits on"


async def test_expired_messages_are_dropped_with_their_channel_s_memberships(sweep_always):
    layer = InMemoryChannelLayer(expiry=0)
    channel = await layer.new_channel()
    await layer.group_add("g", channel)
    await layer.group_send("g", {"type": "gen.delta"})
    await asyncio.sleep(0.01)

    layer._clean_expired()

    assert channel not in layer.channels
    assert channel not in layer.groups.get("g", {})


async def test_a_full_channel_misses_messages_instead_of_blocking_the_sender():
    layer = InMemoryChannelLayer(capacity=2)
    channel = await layer.new_channel()
    await layer.group_add("g", channel)
    for number in range(5):
        await layer.group_send("g", {"type": "gen.delta", "n": number})

    received = [await asyncio.wait_for(layer.receive(channel), 1) for _ in range(2)]
    assert [event["n"] for event in received] == [0, 1]
