"""The chat protocol end to end: real daphne processes, real sockets, the dev upstream on loopback."""

import asyncio

import pytest
from asgiref.sync import sync_to_async

from conversations.models import Message
from devllm.simulator import answer_text, parse_model
from tests.support import ChatSocket, unique

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

# Emoji (with a ZWJ sequence and a flag), CJK, combining marks, a right-to-left run and U+2028.
HARD_TEXT = "Grüße 👩‍💻 and 🇺🇳 — 中文字符 and 日本語, e\u0301 a\u0308, שלום, line\u2028separator, done."


async def row(message_id: str) -> Message:
    return await sync_to_async(Message.objects.get)(pk=message_id)


async def wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await sync_to_async(predicate)():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_send_streams_deltas_equal_to_persisted_and_upstream_text(daphne, make_user, upstream):
    _, session = await sync_to_async(make_user)()
    chat = await ChatSocket.connect(daphne, session)
    key = unique()
    _, answer = await chat.send_message(HARD_TEXT, client_id=unique(), model=f"dev:echo=1,key={key},tps=200")
    deltas_before_done = 0
    while True:
        event = await chat.recv()
        if event["type"] == "delta":
            deltas_before_done += 1
        if event["type"] == "done":
            break
    assert event == {**event, "message": answer, "status": "complete"}
    assert deltas_before_done > 1, "the answer should arrive in several deltas, not all at once"
    assert chat.texts[answer] == HARD_TEXT
    saved = await row(answer)
    assert saved.content == HARD_TEXT
    assert saved.status == Message.Status.COMPLETE
    assert saved.completion_tokens and saved.completion_tokens > 0
    assert event["usage"]["completion_tokens"] == saved.completion_tokens
    [record] = upstream.stats.find(key)
    assert record.outcome == "complete"
    await chat.close()


async def test_generated_markdown_answer_matches_the_upstream_exactly(daphne, make_user, upstream):
    _, session = await sync_to_async(make_user)()
    chat = await ChatSocket.connect(daphne, session)
    prompt, model = f"Explain streaming {unique()}", f"dev:tokens=250,key={unique()}"
    _, answer = await chat.send_message(prompt, client_id=unique(), model=model)
    await chat.done(answer)
    expected = answer_text([{"role": "user", "content": prompt}], parse_model(model, upstream.server.defaults)[1])
    assert "```" in expected
    assert chat.texts[answer] == expected
    assert (await row(answer)).content == expected
    await chat.close()


async def test_disconnect_mid_answer_then_open_gets_whole_text_once(daphne, make_user, upstream):
    _, session = await sync_to_async(make_user)()
    chat = await ChatSocket.connect(daphne, session)
    key = unique()
    conversation, answer = await chat.send_message(
        "tell me", client_id=unique(), model=f"dev:tps=40,tokens=300,key={key}"
    )
    await chat.recv_until(lambda e: e["type"] == "delta")
    await chat.close()
    await asyncio.sleep(1.2)  # the generation goes on with nobody watching, past a checkpoint

    again = await ChatSocket.connect(daphne, session)
    history = await again.request({"type": "open", "conversation": conversation}, "history")
    [assistant] = [m for m in history["messages"] if m["id"] == answer]
    assert assistant["status"] == "streaming"
    assert assistant["content"], "the checkpoint should already hold part of the answer"
    done = await again.done(answer)
    assert done["status"] == "complete"
    saved = await row(answer)
    assert again.texts[answer] == saved.content
    [record] = upstream.stats.find(key)
    assert record.outcome == "complete", "the upstream must not have been cut when the socket went away"
    assert record.tokens_sent == 300
    await again.close()


async def test_resume_from_client_offset_sends_the_rest_exactly_once(daphne, make_user):
    _, session = await sync_to_async(make_user)()
    chat = await ChatSocket.connect(daphne, session)
    _, answer = await chat.send_message("go", client_id=unique(), model=f"dev:tps=80,tokens=120,key={unique()}")
    for _ in range(3):
        await chat.recv_until(lambda e: e["type"] == "delta")
    have = chat.texts[answer]
    await chat.close()

    again = await ChatSocket.connect(daphne, session)
    again.texts[answer] = have
    await again.send({"type": "resume", "message": answer, "offset": len(have)})
    done = await again.done(answer)
    assert done["status"] == "complete"
    assert again.texts[answer] == (await row(answer)).content

    # Resuming a finished answer replays only what the client lacks, then its `done`.
    late = await ChatSocket.connect(daphne, session)
    late.texts[answer] = have[:5]
    await late.send({"type": "resume", "message": answer, "offset": 5})
    assert (await late.done(answer))["status"] == "complete"
    assert late.texts[answer] == (await row(answer)).content
    for socket in (again, late):
        await socket.close()


async def test_cancel_from_second_socket_stops_both_and_closes_upstream(daphne, make_user, upstream):
    _, session = await sync_to_async(make_user)()
    first = await ChatSocket.connect(daphne, session)
    key = unique()
    conversation, answer = await first.send_message(
        "long one", client_id=unique(), model=f"dev:tps=40,tokens=400,key={key}"
    )
    second = await ChatSocket.connect(daphne, session)
    await second.request({"type": "open", "conversation": conversation}, "history")
    await second.recv_until(lambda e: e["type"] == "delta" and e["message"] == answer)
    await second.send({"type": "cancel", "message": answer})
    done_second = await second.done(answer)
    done_first = await first.done(answer)
    assert done_first["status"] == done_second["status"] == "cancelled"
    saved = await row(answer)
    assert saved.status == Message.Status.CANCELLED
    assert saved.content, "the partial answer is kept"
    assert first.texts[answer] == saved.content == second.texts[answer]
    [record] = upstream.stats.find(key)
    await wait_for(lambda: record.outcome == "client_disconnected", timeout=3)
    assert record.tokens_sent < 400
    for socket in (first, second):
        await socket.close()


async def test_cancel_before_first_token(daphne, make_user, upstream):
    _, session = await sync_to_async(make_user)()
    chat = await ChatSocket.connect(daphne, session)
    key = unique()
    _, answer = await chat.send_message("slow start", client_id=unique(), model=f"dev:ttft=20,key={key}")
    await wait_for(lambda: len(upstream.stats.find(key)) == 1)
    await chat.send({"type": "cancel", "message": answer})
    done = await chat.done(answer, timeout=5)
    assert done["status"] == "cancelled"
    saved = await row(answer)
    assert (saved.status, saved.content) == (Message.Status.CANCELLED, "")
    [record] = upstream.stats.find(key)
    await wait_for(lambda: record.outcome == "client_disconnected", timeout=3)
    assert record.tokens_sent == 0
    await chat.close()


async def test_retried_send_with_same_client_id_makes_one_message_and_one_upstream_call(daphne, make_user, upstream):
    _, session = await sync_to_async(make_user)()
    chat = await ChatSocket.connect(daphne, session)
    key, client_id = unique(), unique()
    frame = {
        "type": "send",
        "id": client_id,
        "conversation": None,
        "content": "once",
        "model": f"dev:tps=100,tokens=80,key={key}",
    }
    await chat.send(frame)
    first = await chat.recv_until(lambda e: e["type"] == "message" and e["message"]["role"] == "assistant")
    answer = first["message"]["id"]
    await chat.recv_until(lambda e: e["type"] == "delta")
    await chat.close()

    # The client reconnects and retries the send it never saw acknowledged.
    again = await ChatSocket.connect(daphne, session)
    await again.send(frame)
    user_msg = await again.recv_until(lambda e: e["type"] == "message")
    assert user_msg["ref"] == client_id
    assert user_msg["message"]["role"] == "user"
    retried = await again.recv_until(lambda e: e["type"] == "message")
    assert retried["message"]["id"] == answer
    await again.done(answer)
    assert again.texts[answer] == (await row(answer)).content
    count = await sync_to_async(Message.objects.filter(client_id=client_id).count)()
    assert count == 1
    assert len(upstream.stats.find(key)) == 1
    await again.close()
