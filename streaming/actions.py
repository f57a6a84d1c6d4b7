"""Chat actions shared by every transport (WebSocket, REST, /v1): write, then announce, then start or stop.

The database writes live in `conversations.services`; these functions run them off the event loop and,
once they have committed, announce the changes to the watchers of the conversation and to the user's other
sockets (streaming.events), and start or stop generations.
"""

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from django.conf import settings

from conversations import services
from conversations.errors import ChatError, InvalidState, Unavailable
from conversations.models import Conversation, Message
from conversations.options import GenerationOptions
from conversations.payloads import conversation_payload, message_payload
from conversations.services import HistoryMessage, Turn, User
from streaming import events
from streaming.aio import orm
from streaming.events import get_bus
from streaming.generation import EarlyStart, Prepared
from streaming.lifecycle import get_engine
from streaming.upstream import ChatRequest

# Called once the rows have committed and before the generation starts, so the caller can subscribe to the
# conversation and miss nothing; it also runs for a retried request that found its earlier rows.
BeforeStart = Callable[[Turn], Awaitable[None]] | None


def _refuse_while_draining() -> None:
    if get_engine().draining:
        raise Unavailable


async def _begin(turn: Turn, before_start: BeforeStart, early: EarlyStart | None = None) -> Turn:
    """After the rows of a turn committed: subscribe the caller, start the answer, then announce the rows.

    Rows that committed always get their answer started, whatever happens to the caller meanwhile (it fails,
    it goes away) and whatever the channel layer does: the start is shielded, and comes before anything is
    announced. Announcements are best-effort (the bus logs what it could not deliver); watchers that missed
    them find the rows when they open the conversation or resume.
    """
    if not turn.created:
        if early is not None:
            await early.close()
        if before_start is not None:
            await before_start(turn)
        return turn
    try:
        if before_start is not None:
            await before_start(turn)
    finally:
        await asyncio.shield(_start(turn, early))
    return turn


async def _start(turn: Turn, early: EarlyStart | None) -> None:
    answer = turn.assistant_message
    prepared = Prepared.new(answer, turn.prompt) if turn.prompt is not None else None
    await get_engine().start(str(answer.pk), prepared, early)
    bus = get_bus()
    group = events.conversation_group(turn.conversation.pk)
    if turn.superseded:
        bus.publish(group, events.superseded(str(turn.conversation.pk), list(turn.superseded)))
    for message in (turn.user_message, answer):
        if message is not None:
            bus.publish(group, events.message(message_payload(message)))
    bus.publish(
        events.user_group(turn.conversation.owner_id),
        events.conversation(conversation_payload(turn.conversation, live=True)),
    )


async def chat_send(
    *,
    user: User,
    client_id: str,
    conversation_id: str | None,
    content: str,
    options: GenerationOptions,
    before_start: BeforeStart = None,
    retry: bool = False,
    request_hash: str = "",
    permitted_models: Sequence[str] = (),
) -> Turn:
    """Adds a user message and starts its answer. The first message of a new conversation also asks the model
    at once, while its rows are written, unless the client says it is sending it again (`retry`; see
    `_may_start_early`)."""
    _refuse_while_draining()
    early = None
    if conversation_id is None and not retry and _may_start_early(user, client_id):
        asked = services.first_answer_request(user=user, content=content, options=options)
        early = EarlyStart(ChatRequest(asked.model, asked.messages, asked.temperature, asked.max_tokens))
    try:
        turn = await orm(services.message_send)(
            user=user,
            client_id=client_id,
            conversation_id=conversation_id,
            content=content,
            options=options,
            request_hash=request_hash,
            permitted_models=permitted_models,
        )
    except BaseException as error:
        if early is not None:
            await early.close()
        if isinstance(error, ChatError):
            _refused[str(user.pk)] = time.monotonic()
        raise
    return await _begin(turn, before_start, early)


# Who was refused an answer lately (a limit, a quota): their next sends wait for the database's yes before
# the model is asked, so that sends beyond a limit never reach the model server.
REFUSED_MEMORY_SECONDS = 60.0
SENT_MEMORY = 10_000
_refused: dict[str, float] = {}
_sent: OrderedDict[tuple[str, str], None] = OrderedDict()


def _may_start_early(user: User, client_id: str) -> bool:
    """Whether a send may ask the model before its rows are written. Not when this process has seen the
    send's id before (a retry: its answer exists), nor when the user was refused lately or already has the
    default number of answers being written here. (A retry the client does not mark as one, reaching another
    process, is stopped by the unique key a few milliseconds later, before the model has answered.)"""
    user_id, now = str(user.pk), time.monotonic()
    key = (user_id, client_id)
    if key in _sent:
        return False
    _sent[key] = None
    if len(_sent) > SENT_MEMORY:
        _sent.popitem(last=False)
    refused_at = _refused.get(user_id)
    if refused_at is not None and now - refused_at < REFUSED_MEMORY_SECONDS:
        return False
    _refused.pop(user_id, None)
    engine = get_engine()
    return not engine.draining and engine.answers_of(user_id) < settings.CHAT_MAX_CONCURRENT_PER_USER


async def chat_regenerate(
    *,
    user: User,
    message_id: str,
    client_id: str,
    options: GenerationOptions,
    before_start: BeforeStart = None,
) -> Turn:
    _refuse_while_draining()
    turn = await orm(services.message_regenerate)(
        user=user, message_id=message_id, client_id=client_id, options=options
    )
    return await _begin(turn, before_start)


async def chat_edit(
    *,
    user: User,
    message_id: str,
    content: str,
    client_id: str,
    options: GenerationOptions,
    before_start: BeforeStart = None,
) -> Turn:
    _refuse_while_draining()
    turn = await orm(services.message_edit)(
        user=user, message_id=message_id, content=content, client_id=client_id, options=options
    )
    return await _begin(turn, before_start)


async def chat_cancel(*, user: User, message_id: str) -> Message:
    """Stops a streaming answer wherever it runs: a durable flag in the row, then a direct word to its engine."""
    message: Message = await orm(services.message_request_cancel)(user=user, message_id=message_id)
    if message.role != Message.Role.ASSISTANT:
        raise InvalidState("Only an answer can be stopped.")
    if message.status == Message.Status.STREAMING:
        await get_engine().cancel(str(message.pk))
    return message


def _announce(conversation: Conversation) -> Conversation:
    """Tells the owner's sockets that show the list how a conversation now is."""
    get_bus().publish(events.user_group(conversation.owner_id), events.conversation(conversation_payload(conversation)))
    return conversation


async def chat_rename(*, user: User, conversation_id: str, title: str) -> Conversation:
    return _announce(await orm(services.conversation_rename)(user=user, conversation_id=conversation_id, title=title))


async def chat_update(
    *, user: User, conversation_id: str, title: str | None, options: GenerationOptions, pinned: bool | None = None
) -> Conversation:
    """Changes a conversation's title, settings or pin (REST), and tells the user's sockets that show the list."""
    update = orm(services.conversation_update)
    return _announce(
        await update(user=user, conversation_id=conversation_id, title=title, options=options, pinned=pinned)
    )


async def chat_pin(*, user: User, conversation_id: str, pinned: bool) -> Conversation:
    """Pins or unpins a conversation, and tells the user's sockets that show the list."""
    return _announce(await orm(services.conversation_pin)(user=user, conversation_id=conversation_id, pinned=pinned))


async def chat_delete(*, user: User, conversation_id: str) -> None:
    """Deletes a conversation, stopping its running answer at once, and tells the user's sockets."""
    deleted, streaming = await orm(services.conversation_delete)(user=user, conversation_id=conversation_id)
    engine = get_engine()
    for message_id in streaming:
        await engine.cancel(message_id)
    get_bus().publish(events.user_group(user.pk), events.conversation_deleted(deleted))


async def chat_import(
    *,
    user: User,
    client_id: str,
    system: str,
    history: list[HistoryMessage],
    new: list[HistoryMessage],
    options: GenerationOptions,
    parameters: dict[str, Any] | None = None,
    token_id: Any = None,
    request_hash: str = "",
    permitted_models: Sequence[str] = (),
    before_start: BeforeStart = None,
) -> Turn:
    """Starts an answer to a conversation given whole (the OpenAI-compatible endpoint): a new one, or the one of
    the token's that the history continues."""
    _refuse_while_draining()
    turn = await orm(services.conversation_import)(
        user=user,
        client_id=client_id,
        system=system,
        history=history,
        new=new,
        options=options,
        parameters=parameters,
        token_id=token_id,
        request_hash=request_hash,
        permitted_models=permitted_models,
    )
    return await _begin(turn, before_start)
