"""Regenerate and edit: what they create, what they keep, and what the transcript shows afterwards."""

import pytest
from asgiref.sync import sync_to_async

from conversations.models import Message
from tests.support import ChatSocket, unique

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


async def test_regenerate_replaces_the_last_answer_and_keeps_the_old_one_superseded(daphne, make_user, upstream):
    _, session = await sync_to_async(make_user)()
    chat = await ChatSocket.connect(daphne, session)
    conversation, first = await chat.send_message("question", client_id=unique(), model="dev:tokens=20")
    await chat.done(first)

    key = unique()
    await chat.send({"type": "regenerate", "message": first, "id": "regen-1", "model": f"dev:tokens=30,key={key}"})
    created = await chat.recv_until(lambda e: e["type"] in ("message", "error"))
    assert created["type"] == "message" and created["ref"] == "regen-1"
    second = created["message"]["id"]
    assert second != first
    assert (await chat.done(second))["status"] == "complete"
    assert len(upstream.stats.find(key)) == 1

    history = await chat.request({"type": "open", "conversation": conversation}, "history")
    assert [(m["role"], m["id"]) for m in history["messages"]][-1] == ("assistant", second)
    assert first not in {m["id"] for m in history["messages"]}
    old = await sync_to_async(Message.objects.get)(pk=first)
    assert old.superseded_at is not None and old.content, "the old answer is kept for review"

    # Only the latest answer can be regenerated; the superseded one cannot.
    error = await chat.request({"type": "regenerate", "message": first, "id": "regen-2"}, "message")
    assert error["code"] == "invalid_state"
    await chat.close()


async def test_edit_supersedes_the_message_and_what_followed_then_answers_again(daphne, make_user):
    _, session = await sync_to_async(make_user)()
    chat = await ChatSocket.connect(daphne, session)
    conversation, answer = await chat.send_message("first question", client_id=unique(), model="dev:tokens=10")
    await chat.done(answer)
    question = next(
        e["message"]["id"] for e in chat.events if e["type"] == "message" and e["message"]["role"] == "user"
    )

    await chat.send({"type": "edit", "message": question, "content": "better question", "id": "edit-1"})
    new_user = await chat.recv_until(lambda e: e["type"] in ("message", "error"))
    assert new_user["type"] == "message", new_user
    assert (new_user["message"]["role"], new_user["message"]["content"]) == ("user", "better question")
    new_answer = (await chat.recv_until(lambda e: e["type"] == "message"))["message"]["id"]
    assert (await chat.done(new_answer))["status"] == "complete"

    history = await chat.request({"type": "open", "conversation": conversation}, "history")
    assert [m["content"] for m in history["messages"] if m["role"] == "user"] == ["better question"]
    assert [m["id"] for m in history["messages"]][-1] == new_answer
    superseded = await sync_to_async(
        lambda: set(Message.objects.filter(superseded_at__isnull=False).values_list("pk", flat=True))
    )()
    assert {str(pk) for pk in superseded} == {question, answer}

    error = await chat.request({"type": "edit", "message": new_answer, "content": "no", "id": "edit-2"}, "message")
    assert error["code"] == "invalid_state"
    await chat.close()


async def test_a_second_tab_sees_new_messages_and_the_live_answer(daphne, make_user):
    _, session = await sync_to_async(make_user)()
    first = await ChatSocket.connect(daphne, session)
    conversation, answer = await first.send_message("hello", client_id=unique(), model="dev:tokens=5")
    await first.done(answer)
    second = await ChatSocket.connect(daphne, session)
    await second.request({"type": "open", "conversation": conversation}, "history")

    await first.send(
        {
            "type": "send",
            "id": unique(),
            "conversation": conversation,
            "content": "more",
            "model": "dev:tps=100,tokens=60",
        }
    )
    announced = await second.recv_until(lambda e: e["type"] == "message" and e["message"]["role"] == "assistant")
    live = announced["message"]["id"]
    await second.done(live)
    await first.done(live)
    assert first.texts[live] == second.texts[live] == (await sync_to_async(Message.objects.get)(pk=live)).content
    for socket in (first, second):
        await socket.close()
