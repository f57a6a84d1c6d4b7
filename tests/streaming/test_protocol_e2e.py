"""Bad input, foreign ids and unauthenticated or cross-origin sockets: each has a defined outcome."""

import json
import uuid

import pytest
import websockets
from asgiref.sync import sync_to_async
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.support import ChatSocket, unique

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


async def assert_still_usable(chat: ChatSocket) -> None:
    pong = await chat.request({"type": "ping", "id": "p"}, "pong")
    assert pong == {"type": "pong", "ref": "p"}


async def test_no_session_is_closed_with_the_unauthenticated_code(daphne):
    ws = await websockets.connect(daphne.ws_url, origin=daphne.origin)
    with pytest.raises(ConnectionClosed) as closed:
        await ws.recv()
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 4401


async def test_a_forged_session_is_closed_with_the_unauthenticated_code(daphne):
    ws = await websockets.connect(
        daphne.ws_url,
        origin=daphne.origin,
        additional_headers={"Cookie": "sessionid=forged"},
    )
    with pytest.raises(ConnectionClosed) as closed:
        await ws.recv()
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 4401


@pytest.mark.parametrize("origin", ["http://evil.example", None])
async def test_foreign_or_missing_origin_is_rejected(daphne, make_user, origin):
    _, session = await sync_to_async(make_user)()
    headers = {"Cookie": f"sessionid={session}"}
    with pytest.raises(InvalidStatus) as rejected:
        await websockets.connect(daphne.ws_url, origin=origin, additional_headers=headers)
    assert rejected.value.response.status_code == 403


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("not json", "invalid_json"),
        ("[1, 2]", "invalid_frame"),
        ('"send"', "invalid_frame"),
        ('{"no": "type"}', "unknown_type"),
        ('{"type": "dance"}', "unknown_type"),
        ('{"type": "send", "id": "a", "content": 5}', "invalid_request"),
        ('{"type": "send", "id": "a", "content": "   "}', "invalid_request"),
        ('{"type": "send", "content": "hi"}', "invalid_request"),
        ('{"type": "send", "id": "a", "content": "hi", "temperature": "hot"}', "invalid_request"),
        ('{"type": "send", "id": "a", "content": "hi", "temperature": 9}', "invalid_request"),
        ('{"type": "send", "id": "a", "content": "hi", "max_tokens": 1.5}', "invalid_request"),
        ('{"type": "send", "id": "a", "content": "hi", "max_tokens": true}', "invalid_request"),
        ('{"type": "send", "id": "a", "content": "hi", "model": "gpt-secret"}', "model_not_allowed"),
        ('{"type": "resume", "message": "x", "offset": -1}', "invalid_request"),
        ('{"type": "resume", "message": "x"}', "invalid_request"),
        ('{"type": "cancel"}', "invalid_request"),
        ('{"type": "open", "conversation": 12}', "invalid_request"),
    ],
)
async def test_malformed_frames_get_an_error_and_the_socket_stays_usable(daphne, make_user, frame, code):
    _, session = await sync_to_async(make_user)()
    chat = await ChatSocket.connect(daphne, session)
    await chat.ws.send(frame)
    error = await chat.recv()
    assert error["type"] == "error"
    assert error["code"] == code, error
    assert error["message"]
    await assert_still_usable(chat)
    await chat.close()


async def test_error_carries_the_request_id_as_ref(daphne, make_user):
    _, session = await sync_to_async(make_user)()
    chat = await ChatSocket.connect(daphne, session)
    error = await chat.request({"type": "send", "id": "abc", "content": "hi", "model": "nope"}, "pong")
    assert (error["code"], error["ref"]) == ("model_not_allowed", "abc")
    await chat.close()


async def test_oversized_binary_and_overlong_content_get_errors(daphne, make_user):
    _, session = await sync_to_async(make_user)()
    chat = await ChatSocket.connect(daphne, session)
    await chat.ws.send(json.dumps({"type": "send", "id": "big", "content": "x" * 70_000}))
    assert (await chat.recv())["code"] == "frame_too_large"
    await chat.ws.send(b"\x00\x01binary")
    assert (await chat.recv())["code"] == "binary_not_supported"
    await chat.send({"type": "send", "id": "long", "content": "y" * 40_000})
    error = await chat.recv()
    assert (error["code"], error["ref"]) == ("content_too_long", "long")
    await assert_still_usable(chat)
    await chat.close()


async def test_foreign_and_missing_ids_look_the_same(daphne, make_user):
    _, owner_session = await sync_to_async(make_user)()
    owner = await ChatSocket.connect(daphne, owner_session)
    conversation, answer = await owner.send_message("mine", client_id=unique(), model="dev:tokens=5")
    await owner.done(answer)

    _, other_session = await sync_to_async(make_user)()
    other = await ChatSocket.connect(daphne, other_session)
    for ident in (conversation, str(uuid.uuid4()), "not-a-uuid"):
        error = await other.request({"type": "open", "conversation": ident, "id": "o"}, "history")
        assert (error["type"], error["code"]) == ("error", "not_found")
    for kind in ("cancel", "regenerate"):
        for ident in (answer, str(uuid.uuid4())):
            error = await other.request({"type": kind, "message": ident, "id": "r"}, "done")
            assert (error["type"], error["code"]) == ("error", "not_found")
    error = await other.request({"type": "resume", "message": answer, "offset": 0}, "done")
    assert error["code"] == "not_found"
    error = await other.request({"type": "edit", "message": answer, "content": "mine now", "id": "e"}, "message")
    assert error["code"] == "not_found"
    error = await other.request(
        {"type": "send", "id": unique(), "conversation": conversation, "content": "hi"}, "message"
    )
    assert error["code"] == "not_found"
    assert other.texts == {}, "nothing of the owner's conversation may leak"
    await assert_still_usable(other)
    for socket in (owner, other):
        await socket.close()
