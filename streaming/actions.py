"""Chat actions shared by every transport (WebSocket, REST, /v1): write, then announce, then start or stop.

The database writes live in `conversations.services`; these functions run them off the event loop and,
once they have committed, announce the changes to the watchers of the conversation and to the user's other
sockets (streaming.events), and start or stop generations.
"""

from collections.abc import Awaitable, Callable

from conversations import services
from conversations.errors import InvalidState, Unavailable
from conversations.models import Conversation, Message
from conversations.options import GenerationOptions
from conversations.payloads import conversation_payload, message_payload
from conversations.services import Turn, User
from streaming import events
from streaming.aio import orm
from streaming.events import get_bus
from streaming.generation import Prepared
from streaming.lifecycle import get_engine

# Called once the rows have committed and before the generation starts, so the caller can subscribe to the
# conversation and miss nothing; it also runs for a retried request that found its earlier rows.
BeforeStart = Callable[[Turn], Awaitable[None]] | None


def _refuse_while_draining() -> None:
    if get_engine().draining:
        raise Unavailable


async def _begin(turn: Turn, before_start: BeforeStart) -> Turn:
    """After the rows of a turn committed: subscribe the caller, start the answer, then announce the rows.

    The generation starts before anything is announced, so that an announcement that cannot reach other
    processes (the channel layer away) never keeps an answer from being written: announcements are
    best-effort (the bus logs what it could not deliver), and watchers that missed them find the rows when
    they open the conversation or resume.
    """
    if before_start is not None:
        await before_start(turn)
    if turn.created:
        answer = turn.assistant_message
        prepared = Prepared.new(answer, turn.prompt) if turn.prompt is not None else None
        await get_engine().start(str(answer.pk), prepared)
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
    return turn


async def chat_send(
    *,
    user: User,
    client_id: str,
    conversation_id: str | None,
    content: str,
    options: GenerationOptions,
    before_start: BeforeStart = None,
) -> Turn:
    _refuse_while_draining()
    turn = await orm(services.message_send)(
        user=user, client_id=client_id, conversation_id=conversation_id, content=content, options=options
    )
    return await _begin(turn, before_start)


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


async def chat_rename(*, user: User, conversation_id: str, title: str) -> Conversation:
    conversation: Conversation = await orm(services.conversation_rename)(
        user=user, conversation_id=conversation_id, title=title
    )
    get_bus().publish(events.user_group(conversation.owner_id), events.conversation(conversation_payload(conversation)))
    return conversation


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
    history: list[tuple[str, str]],
    content: str,
    options: GenerationOptions,
    before_start: BeforeStart = None,
) -> Turn:
    """Starts an answer to a conversation given whole (the OpenAI-compatible endpoint), recorded as a new one."""
    _refuse_while_draining()
    turn = await orm(services.conversation_import)(
        user=user, client_id=client_id, system=system, history=history, content=content, options=options
    )
    return await _begin(turn, before_start)
