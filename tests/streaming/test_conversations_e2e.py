"""The conversation list over the socket: listing and search, live flags, rename and delete reaching every
tab, feedback, older pages, and messages superseded by regenerate and edit."""

import asyncio

import httpx
import pytest
from asgiref.sync import sync_to_async

from conversations import services
from conversations.models import Conversation, Message
from conversations.options import GenerationOptions
from tests.support import ChatSocket, unique

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


async def test_list_search_and_live_flags_reach_every_tab_that_shows_the_list(daphne, make_user):
    _, session = await sync_to_async(make_user)()
    chat = await ChatSocket.connect(daphne, session)
    other_tab = await ChatSocket.connect(daphne, session)
    await other_tab.request({"type": "conversations", "id": "shown"}, "conversations")
    first, answer = await chat.send_message("Tomatoes in pots", client_id=unique(), model="dev:tokens=5")
    await chat.done(answer)
    second, running = await chat.send_message("Saturn's moons", client_id=unique(), model="dev:tps=30,tokens=300")

    live = await other_tab.recv_until(lambda e: e["type"] == "conversation" and e["conversation"]["id"] == second)
    assert live["conversation"]["live"] is True and live["conversation"]["title"] == "Saturn's moons"
    listed = await other_tab.request({"type": "conversations", "id": "l"}, "conversations")
    assert [(c["id"], c["live"]) for c in listed["conversations"]] == [(second, True), (first, False)]
    found = await other_tab.request({"type": "conversations", "query": "TOMATO", "id": "s"}, "conversations")
    assert [c["id"] for c in found["conversations"]] == [first]

    await chat.send({"type": "cancel", "message": running})
    ended = await other_tab.recv_until(lambda e: e["type"] == "conversation" and e["conversation"].get("live") is False)
    assert ended["conversation"] == {"id": second, "live": False}
    # The sending tab never asked for the list, so it got none of its changes.
    assert not [e for e in chat.events if e["type"] == "conversation"]
    for socket in (chat, other_tab):
        await socket.close()


async def test_rename_and_delete_reach_every_tab_and_delete_stops_the_answer(daphne, make_user, upstream):
    _, session = await sync_to_async(make_user)()
    chat = await ChatSocket.connect(daphne, session)
    watcher = await ChatSocket.connect(daphne, session)
    await watcher.request({"type": "conversations", "id": "shown"}, "conversations")
    key = unique()
    conversation, _ = await chat.send_message("to delete", client_id=unique(), model=f"dev:tps=30,tokens=500,key={key}")
    await watcher.request({"type": "open", "conversation": conversation}, "history")

    await chat.send({"type": "rename", "conversation": conversation, "title": "Renamed", "id": "r"})
    renamed = await chat.recv_until(lambda e: e["type"] == "conversation" and e.get("ref") == "r")
    assert renamed["conversation"]["title"] == "Renamed"
    seen = await watcher.recv_until(
        lambda e: e["type"] == "conversation" and e["conversation"].get("title") == "Renamed"
    )
    assert seen["conversation"]["id"] == conversation

    await chat.send({"type": "delete", "conversation": conversation, "id": "d"})
    gone = await watcher.recv_until(lambda e: e["type"] == "conversation_deleted")
    assert gone["conversation"] == conversation
    assert not await sync_to_async(Conversation.objects.filter(pk=conversation).exists)()
    [record] = upstream.stats.find(key)
    for _ in range(60):
        if record.outcome != "streaming":
            break
        await asyncio.sleep(0.05)
    assert record.outcome == "client_disconnected", "deleting stops the answer's upstream request at once"
    error = await watcher.request({"type": "open", "conversation": conversation, "id": "o"}, "history")
    assert error["code"] == "not_found"
    assert (await watcher.request({"type": "ping", "id": "p"}, "pong"))["type"] == "pong"
    for socket in (chat, watcher):
        await socket.close()


async def test_feedback_is_saved_and_only_on_answers(daphne, make_user):
    _, session = await sync_to_async(make_user)()
    chat = await ChatSocket.connect(daphne, session)
    _, answer = await chat.send_message("rate me", client_id=unique(), model="dev:tokens=5")
    await chat.done(answer)
    reply = await chat.request({"type": "feedback", "message": answer, "value": "up", "id": "f"}, "feedback")
    assert (reply["message"], reply["value"], reply["ref"]) == (answer, "up", "f")
    assert (await sync_to_async(Message.objects.get)(pk=answer)).feedback == "up"
    cleared = await chat.request({"type": "feedback", "message": answer, "value": None, "id": "g"}, "feedback")
    assert cleared["value"] is None
    assert (await sync_to_async(Message.objects.get)(pk=answer)).feedback == ""
    [user_message] = [event["message"]["id"] for event in chat.events if event["type"] == "message"][:1]
    error = await chat.request({"type": "feedback", "message": user_message, "value": "up", "id": "h"}, "feedback")
    assert error["code"] == "invalid_state"
    await chat.close()


async def test_a_thumbs_down_takes_a_reason_and_a_comment_and_bad_ones_are_refused(daphne, make_user):
    _, session = await sync_to_async(make_user)()
    chat = await ChatSocket.connect(daphne, session)
    _, answer = await chat.send_message("rate me down", client_id=unique(), model="dev:tokens=5")
    await chat.done(answer)
    frame = {"type": "feedback", "message": answer, "value": "down", "reason": "incomplete", "comment": " Cut off. "}
    reply = await chat.request({**frame, "id": "d"}, "feedback")
    assert (reply["value"], reply["reason"], reply["comment"]) == ("down", "incomplete", "Cut off.")
    row = await sync_to_async(Message.objects.get)(pk=answer)
    assert (row.feedback, row.feedback_reason, row.feedback_comment) == ("down", "incomplete", "Cut off.")
    refused = [
        ({**frame, "reason": "boring"}, "reason"),
        ({**frame, "value": "up"}, "reason"),
        ({**frame, "comment": "x" * 2001}, "comment"),
    ]
    for number, (bad, field) in enumerate(refused):
        error = await chat.request({**bad, "id": f"bad{number}"}, "feedback")
        assert error["type"] == "error" and error["code"] == "invalid_request" and field in error["message"]
    # Nothing refused changed what was saved.
    row = await sync_to_async(Message.objects.get)(pk=answer)
    assert (row.feedback, row.feedback_reason) == ("down", "incomplete")
    await chat.close()


async def test_older_pages_go_back_to_the_first_message(daphne, make_user, settings):
    settings.CHAT_MAX_MESSAGES_PER_MINUTE = 100
    user, session = await sync_to_async(make_user)()
    conversation = await sync_to_async(_long_conversation)(user, 30)
    chat = await ChatSocket.connect(daphne, session)
    history = await chat.request({"type": "open", "conversation": conversation}, "history")
    assert (len(history["messages"]), history["has_more"]) == (50, True)
    assert history["messages"][0]["seq"] == 11 and history["messages"][-1]["seq"] == 60
    older = await chat.request({"type": "older", "conversation": conversation, "before": 11, "id": "o"}, "older")
    assert [m["seq"] for m in older["messages"]] == list(range(1, 11))
    assert older["has_more"] is False and older["ref"] == "o"
    await chat.close()


def _long_conversation(user, turns: int) -> str:
    from conversations import services

    conversation = None
    for number in range(turns):
        turn = services.message_send(
            user=user,
            client_id=unique(),
            conversation_id=str(conversation.pk) if conversation else None,
            content=f"q{number}",
            options=GenerationOptions(),
        )
        conversation = turn.conversation
        services.message_finish(message_id=str(turn.assistant_message.pk), status="complete", content=f"a{number}")
    assert conversation is not None
    return str(conversation.pk)


async def test_regenerate_and_edit_tell_every_tab_what_they_replaced(daphne, make_user):
    _, session = await sync_to_async(make_user)()
    chat = await ChatSocket.connect(daphne, session)
    conversation, answer = await chat.send_message("first", client_id=unique(), model="dev:tokens=5")
    await chat.done(answer)
    tab = await ChatSocket.connect(daphne, session)
    history = await tab.request({"type": "open", "conversation": conversation}, "history")
    question = history["messages"][0]["id"]

    await chat.send({"type": "regenerate", "message": answer, "id": unique()})
    replaced = await tab.recv_until(lambda e: e["type"] == "superseded")
    assert replaced == {"type": "superseded", "conversation": conversation, "messages": [answer]}
    regenerated = await tab.recv_until(lambda e: e["type"] == "message")
    await tab.done(regenerated["message"]["id"])

    await chat.send({"type": "edit", "message": question, "content": "better", "id": unique()})
    replaced = await tab.recv_until(lambda e: e["type"] == "superseded")
    assert set(replaced["messages"]) == {question, regenerated["message"]["id"]}
    history = await tab.request({"type": "open", "conversation": conversation}, "history")
    assert [m["content"] for m in history["messages"] if m["role"] == "user"] == ["better"]
    for socket in (chat, tab):
        await socket.close()


async def test_pin_moves_a_conversation_to_the_top_of_the_list_and_bad_pins_are_refused(daphne, make_user):
    _, session = await sync_to_async(make_user)()
    chat = await ChatSocket.connect(daphne, session)
    first, answer = await chat.send_message("the first", client_id=unique(), model="dev:tokens=3")
    await chat.done(answer)
    second, answer = await chat.send_message("the second", client_id=unique(), model="dev:tokens=3")
    await chat.done(answer)
    reply = await chat.request({"type": "pin", "conversation": first, "pinned": True, "id": "p"}, "conversation")
    assert (reply["conversation"]["id"], reply["conversation"]["pinned"], reply["ref"]) == (first, True, "p")
    listing = await chat.request({"type": "conversations", "id": "l"}, "conversations")
    assert [(c["id"], c["pinned"]) for c in listing["conversations"]] == [(first, True), (second, False)]
    bad_fields: list[dict[str, object]] = [{"pinned": "yes"}, {"pinned": None}, {"conversation": "not-an-id"}]
    for number, bad in enumerate(bad_fields):
        frame = {"type": "pin", "conversation": first, "pinned": True, **bad, "id": f"bad{number}"}
        error = await chat.request(frame, "conversation")
        assert error["type"] == "error" and error["code"] in ("invalid_request", "not_found"), error
    await chat.close()


async def test_a_rename_or_pin_through_the_rest_api_reaches_the_open_tabs(daphne, make_user):
    user, session = await sync_to_async(make_user)()
    _, key = await sync_to_async(services.api_token_create)(user=user, name="rest")
    tab = await ChatSocket.connect(daphne, session)
    conversation, answer = await tab.send_message("rename me elsewhere", client_id=unique(), model="dev:tokens=3")
    await tab.done(answer)
    await tab.request({"type": "conversations", "id": "shown"}, "conversations")
    async with httpx.AsyncClient(base_url=daphne.origin, headers={"Authorization": f"Bearer {key}"}) as api:
        response = await api.patch(
            f"/api/v1/conversations/{conversation}/", json={"title": "From REST", "pinned": True}
        )
    assert response.status_code == 200
    change = await tab.recv_until(
        lambda e: e["type"] == "conversation" and e["conversation"].get("title") == "From REST"
    )
    assert change["conversation"]["pinned"] is True
    await tab.close()
