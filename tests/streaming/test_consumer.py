"""The chat consumer in-process, with Channels' WebsocketCommunicator (the end-to-end tests run real daphne).

Each test drives `ChatConsumer` directly with an authenticated scope; the engine, the in-memory channel layer
and the database are the real ones, and the test upstream (the simulator) is the model server.
"""

import asyncio
import json
import uuid
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AnonymousUser, update_last_login
from django.contrib.sessions.backends.base import SessionBase

from conversations import services
from conversations.models import Conversation, Message
from streaming.consumers import ChatConsumer
from streaming.protocol import CLOSE_UNAUTHENTICATED
from tests.support import logged_in_session, unique

pytestmark = pytest.mark.django_db(transaction=True)


class Client:
    """A communicator speaking protocol v1: JSON frames in and out."""

    def __init__(self, user: Any) -> None:
        self.communicator = WebsocketCommunicator(ChatConsumer.as_asgi(), "/ws/chat/")
        self.communicator.scope["user"] = user

    async def connect(self) -> dict[str, Any]:
        scope = self.communicator.scope
        if "session" not in scope:  # what the session middleware would have found: a logged-in session
            scope["session"] = await sync_to_async(logged_in_session)(scope["user"])
        connected, _ = await self.communicator.connect()
        assert connected
        return await self.recv()

    async def send(self, frame: dict[str, Any]) -> None:
        await self.communicator.send_to(text_data=json.dumps(frame))

    async def recv(self, timeout: float = 10) -> dict[str, Any]:
        event: dict[str, Any] = json.loads(await self.communicator.receive_from(timeout))
        return event

    async def until(self, kind: str, timeout: float = 10) -> dict[str, Any]:
        while True:
            event = await self.recv(timeout)
            if event["type"] in (kind, "error"):
                return event

    async def answer(self, content: str, model: str, client_id: str | None = None) -> tuple[str, str, str]:
        """Sends; returns (answer id, the text streamed to the client, the done status)."""
        await self.send({"type": "send", "id": client_id or unique(), "content": content, "model": model})
        answer, text = "", ""
        while True:
            event = await self.recv()
            if event["type"] == "message" and event["message"]["role"] == "assistant":
                answer = event["message"]["id"]
            elif event["type"] == "delta" and event["message"] == answer:
                assert event["offset"] == len(text)
                text += event["text"]
            elif event["type"] == "done" and event["message"] == answer:
                return answer, text, event["status"]
            elif event["type"] == "error":
                raise AssertionError(event)

    async def close(self) -> None:
        await self.communicator.disconnect()


@pytest.fixture
def user(transactional_db):
    return get_user_model().objects.create_user(username=f"u-{unique()[:8]}")


@pytest.fixture
async def client(engine, user):
    chat = Client(user)
    ready = await chat.connect()
    assert (ready["type"], ready["protocol"], ready["models"]) == ("ready", 1, ["dev"])
    yield chat
    await chat.close()


async def test_an_anonymous_socket_is_closed_with_the_unauthenticated_code(engine):
    communicator = WebsocketCommunicator(ChatConsumer.as_asgi(), "/ws/chat/")
    communicator.scope["user"] = AnonymousUser()
    connected, _ = await communicator.connect()
    assert connected
    closed = await communicator.receive_output(5)
    assert closed == {"type": "websocket.close", "code": CLOSE_UNAUTHENTICATED, "reason": "authentication required"}


async def test_ping_is_answered_with_its_id(client):
    await client.send({"type": "ping", "id": "p1"})
    assert await client.recv() == {"type": "pong", "ref": "p1"}


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("not json", "invalid_json"),
        ("[1, 2]", "invalid_frame"),
        ('{"type": "teleport"}', "unknown_type"),
        ('{"type": "send", "id": "s", "content": "   "}', "invalid_request"),
        ('{"type": "send", "id": "s", "content": "hi", "model": "secret"}', "model_not_allowed"),
        # Nested past what a parser should follow (a 30,000-deep array): refused, not a server fault.
        ("[" * 30_000 + "]" * 30_000, "invalid_json"),
        ('{"type": "send", "id": "s", "content": ' + "[" * 5_000 + "]" * 5_000 + "}", "invalid_json"),
        # Text no database can store: NUL, and an unpaired surrogate (each valid JSON).
        ('{"type": "send", "id": "s", "content": "a\\u0000b"}', "invalid_request"),
        ('{"type": "rename", "id": "r", "conversation": "x", "title": "\\ud800"}', "invalid_request"),
        ('{"type": "conversations", "id": "l", "query": "\\udfff"}', "invalid_request"),
    ],
)
async def test_a_malformed_frame_gets_an_error_and_the_socket_goes_on(client, frame, code):
    await client.communicator.send_to(text_data=frame)
    error = await client.recv()
    assert (error["type"], error["code"]) == ("error", code)
    await client.send({"type": "ping", "id": "after"})
    assert await client.recv() == {"type": "pong", "ref": "after"}


async def test_a_binary_frame_is_refused(client):
    await client.communicator.send_to(bytes_data=b"\x00\x01")
    assert (await client.recv())["code"] == "binary_not_supported"


async def test_send_streams_the_answer_and_the_database_holds_the_same_text(client, user):
    answer, text, status = await client.answer("hello", "dev:tokens=30,ttft=0,tps=2000")
    assert status == "complete"
    row = await sync_to_async(Message.objects.get)(pk=answer)
    assert (row.status, row.content, row.owner_id) == ("complete", text, user.pk)
    assert text


async def test_a_repeated_send_id_creates_nothing_new(client, user):
    client_id = unique()
    first, text, _ = await client.answer("once", "dev:tokens=10,ttft=0,tps=2000", client_id)
    await client.send({"type": "send", "id": client_id, "content": "once", "model": "dev"})
    again = await client.until("done")
    assert (again["message"], again["status"], again["length"]) == (first, "complete", len(text))
    assert await sync_to_async(Message.objects.filter(owner=user).count)() == 2


async def test_cancel_before_the_first_token_stops_the_answer(client, llm):
    key = unique()
    await client.send({"type": "send", "id": unique(), "content": "slow", "model": f"dev:ttft=30,key={key}"})
    await client.until("message")  # the user's
    answer = (await client.until("message"))["message"]["id"]
    for _ in range(50):  # the model server has the request, and will not answer for 30 s
        if llm.stats.find(key):
            break
        await asyncio.sleep(0.05)
    await client.send({"type": "cancel", "message": answer})
    done = await client.until("done")
    assert (done["message"], done["status"], done["length"]) == (answer, "cancelled", 0)
    row = await sync_to_async(Message.objects.get)(pk=answer)
    assert row.status == "cancelled"
    # The simulator saw its client hang up: the model stopped.
    for _ in range(50):
        if [record.outcome for record in llm.stats.find(key)] == ["client_disconnected"]:
            break
        await asyncio.sleep(0.1)
    assert [record.outcome for record in llm.stats.find(key)] == ["client_disconnected"]


async def test_someone_elses_conversation_is_not_found(client):
    stranger = await sync_to_async(get_user_model().objects.create_user)(username=f"s-{unique()[:8]}")
    other = Client(stranger)
    await other.connect()
    answer, _, _ = await other.answer("mine", "dev:tokens=5,ttft=0,tps=2000")
    row = await sync_to_async(Message.objects.get)(pk=answer)
    for frame in (
        {"type": "open", "conversation": str(row.conversation_id)},
        {"type": "resume", "message": answer, "offset": 0},
        {"type": "cancel", "message": answer},
        {"type": "open", "conversation": str(uuid.uuid4())},
    ):
        await client.send(frame)
        assert (await client.recv())["code"] == "not_found", frame
    await other.close()


async def test_disconnecting_leaves_the_answer_running_to_its_end(engine, user):
    chat = Client(user)
    await chat.connect()
    await chat.send({"type": "send", "id": unique(), "content": "go on", "model": "dev:tokens=20,ttft=0.2,tps=200"})
    await chat.until("message")  # the user's
    answer = (await chat.until("message"))["message"]["id"]
    await chat.close()
    for _ in range(100):
        row = await sync_to_async(Message.objects.get)(pk=answer)
        if row.status != "streaming":
            break
        await asyncio.sleep(0.05)
    assert row.status == "complete" and row.content


async def test_list_changes_reach_only_that_users_sockets_that_show_the_list(engine, user):
    stranger = await sync_to_async(get_user_model().objects.create_user)(username=f"s-{unique()[:8]}")
    sender, listing, silent, theirs = Client(user), Client(user), Client(user), Client(stranger)
    for chat in (sender, listing, silent, theirs):
        await chat.connect()
    for chat in (listing, theirs):
        await chat.send({"type": "conversations", "id": "shown"})
        assert (await chat.until("conversations"))["ref"] == "shown"
    answer, _, _ = await sender.answer("hello", "dev:tokens=5,ttft=0,tps=2000")
    change = await listing.until("conversation")
    row = await sync_to_async(Message.objects.get)(pk=answer)
    assert change["conversation"]["id"] == str(row.conversation_id)
    await asyncio.sleep(0.5)  # the coalescing window: nothing more is on its way
    for chat in (silent, theirs, sender):
        assert await chat.communicator.receive_nothing(0.3), "only the user's sockets that show the list"
    for chat in (sender, listing, silent, theirs):
        await chat.close()


async def test_a_late_announcement_from_another_process_is_taken_as_the_row_now_is(engine, user):
    """An announcement crossing from another process can arrive after its answer ended (it waits in that
    process's queue to Redis); a watcher there must not restart the answer at offset 0 for its client."""
    from conversations.payloads import message_payload
    from streaming.watch import Watcher

    chat = Client(user)
    await chat.connect()
    answer, text, _ = await chat.answer("hello", "dev:tokens=30,ttft=0,tps=2000")
    await chat.close()
    row = await sync_to_async(Message.objects.get)(pk=answer)
    emitted: list[dict[str, Any]] = []

    async def emit(event: dict[str, Any]) -> None:
        emitted.append(event)

    watcher = Watcher(emit=emit, deliver=lambda event: None)
    await watcher.follow(str(row.conversation_id))
    stale = {**message_payload(row), "status": "streaming", "content": "", "html": "", "rendered": 0}
    await watcher.on_message({"type": "gen.message", "message": stale, "_origin": "another process"})  # type: ignore[typeddict-unknown-key]
    assert [(e["type"], e["message"]["status"], e["message"]["content"]) for e in emitted] == [
        ("message", "complete", text)
    ]
    assert not watcher.watches, "an ended answer is not watched again"
    await watcher.close()


# --- access that ends while the socket is open (streaming.access) ---------------------------------------------


async def closed_with(chat: Client, timeout: float = 5) -> int:
    """Reads the socket's output up to its close; returns the close code."""
    while True:
        output = await chat.communicator.receive_output(timeout)
        if output["type"] == "websocket.close":
            code: int = output["code"]
            return code


async def test_deactivating_a_user_closes_their_sockets_as_signed_out(engine, user):
    chat = Client(user)
    await chat.connect()
    user.is_active = False
    await sync_to_async(user.save)()
    assert await closed_with(chat) == CLOSE_UNAUTHENTICATED


async def test_a_password_change_closes_the_sockets_of_sessions_opened_before_it(engine, user):
    chat = Client(user)
    await chat.connect()
    user.set_password("a new one")
    await sync_to_async(user.save)()
    assert await closed_with(chat) == CLOSE_UNAUTHENTICATED


async def test_a_login_elsewhere_leaves_open_sockets_alone(engine, user):
    chat = Client(user)
    await chat.connect()
    await sync_to_async(update_last_login)(type(user), user)  # what every login saves
    await sync_to_async(logged_in_session)(user)  # and another session of the same user
    await chat.send({"type": "ping", "id": "still"})
    assert await chat.recv() == {"type": "pong", "ref": "still"}
    await chat.close()


async def test_a_socket_is_closed_when_its_session_expires(engine, user):
    def short_session() -> SessionBase:
        session = logged_in_session(user)
        session.set_expiry(1)
        session.save()
        return session

    chat = Client(user)
    chat.communicator.scope["session"] = await sync_to_async(short_session)()
    await chat.connect()
    await chat.send({"type": "ping", "id": "before"})
    assert await chat.recv() == {"type": "pong", "ref": "before"}
    assert await closed_with(chat) == CLOSE_UNAUTHENTICATED


async def test_revoking_an_unrelated_token_or_another_users_change_leaves_the_socket_open(engine, user):
    chat = Client(user)
    await chat.connect()
    stranger = await sync_to_async(get_user_model().objects.create_user)(username=f"s-{unique()[:8]}")
    stranger.is_active = False
    await sync_to_async(stranger.save)()
    token, _ = await sync_to_async(services.api_token_create)(user=user, name="cli")
    await sync_to_async(services.api_tokens_revoke)(token_ids=[token.pk])  # the socket's session is untouched
    await chat.send({"type": "ping", "id": "still"})
    assert await chat.recv() == {"type": "pong", "ref": "still"}
    await chat.close()


async def test_requests_that_start_no_answer_are_limited_per_socket_but_cancel_and_ping_are_not(engine, user, settings):
    settings.CHAT_SOCKET_REQUESTS_PER_SECOND = 0.01
    settings.CHAT_SOCKET_REQUEST_BURST = 3
    chat = Client(user)
    await chat.connect()
    for n in range(3):
        await chat.send({"type": "conversations", "id": f"l{n}", "query": "x"})
        assert (await chat.recv())["type"] == "conversations"
    await chat.send({"type": "conversations", "id": "l3", "query": "x"})
    refused = await chat.recv()
    assert (refused["type"], refused["code"], refused["ref"]) == ("error", "too_many_requests", "l3")
    await chat.send({"type": "ping", "id": "p"})
    assert await chat.recv() == {"type": "pong", "ref": "p"}
    await chat.send({"type": "cancel", "id": "c", "message": str(uuid.uuid4())})
    assert (await chat.recv())["code"] == "not_found"  # handled, not refused
    await chat.close()


async def test_a_renamed_title_loses_direction_overrides_and_a_blank_one_is_refused(client):
    answer, _, _ = await client.answer("hello", "dev:tokens=3,ttft=0,tps=2000")
    conversation = str((await sync_to_async(Message.objects.get)(pk=answer)).conversation_id)
    await client.send({"type": "rename", "id": "r", "conversation": conversation, "title": "report\u202efdp.exe"})
    renamed = await client.until("conversation")
    assert renamed["conversation"]["title"] == "reportfdp.exe"
    await client.send({"type": "rename", "id": "r2", "conversation": conversation, "title": "\u202e\u2066"})
    assert (await client.until("conversation"))["code"] == "invalid_request"


async def test_a_long_conversation_sends_the_model_what_fits_and_says_how_much_was_left_out(client, llm, settings):
    settings.LLM_CONTEXT_TOKENS, settings.CHAT_ANSWER_RESERVE_TOKENS = 600, 100
    settings.CHAT_MAX_MESSAGES_PER_MINUTE = 100
    conversation: str | None = None
    for number in range(6):
        key = unique()
        frame: dict[str, Any] = {"type": "send", "id": unique(), "content": f"turn {number} " + "w" * 400}
        frame |= {"model": f"dev:tokens=5,ttft=0,tps=2000,key={key}", "conversation": conversation}
        await client.send(frame)
        announced = await client.until("message")
        while announced["message"]["role"] != "assistant":
            announced = await client.until("message")
        conversation = announced["message"]["conversation"]
        assert (await client.until("done"))["status"] == "complete"
    [record] = llm.stats.find(key)
    left_out = announced["message"]["context_left_out"]
    assert left_out > 0, "the last turns no longer fit 500 tokens"
    assert record.messages == 2 * 6 - 1 - left_out
    assert record.prompt.startswith("turn 5 ")


async def test_the_list_can_show_only_conversations_made_through_the_api(client, user):
    def make() -> tuple[str, str]:
        token, _ = services.api_token_create(user=user, name="script")
        from_api = Conversation.objects.create(owner=user, title="from a script", model="dev", api_token=token)
        in_chat = Conversation.objects.create(owner=user, title="typed here", model="dev")
        return str(from_api.pk), str(in_chat.pk)

    from_api, in_chat = await sync_to_async(make)()
    for source, expected in (("api", [from_api]), ("chat", [in_chat]), ("", [in_chat, from_api])):
        await client.send({"type": "conversations", "id": f"l-{source}", "source": source})
        listed = await client.until("conversations")
        assert listed["source"] == source
        assert [c["id"] for c in listed["conversations"]] == expected, source
        assert all((c["api_token"] is None) == (c["id"] == in_chat) for c in listed["conversations"])
    await client.send({"type": "conversations", "id": "bad", "source": "email"})
    assert (await client.until("conversations"))["code"] == "invalid_request"
