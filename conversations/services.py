"""Writes: creating turns, regenerating and editing answers, cancellation flags and generation checkpoints.

Each service validates, then writes; the caller notifies watchers once the write has committed.
"""

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.models import AnonymousUser
from django.db import IntegrityError, transaction
from django.db.models import Max
from django.utils import timezone

from conversations import selectors
from conversations.errors import ConversationBusy, InvalidState, TooManyGenerations
from conversations.models import Conversation, Message

User = AbstractBaseUser | AnonymousUser

TITLE_LENGTH = 60
INTERRUPTED_CODE = "interrupted"
INTERRUPTED_MESSAGE = "The server stopped while writing this answer; the text so far is kept."


@dataclass(frozen=True)
class GenerationOptions:
    """Per-request settings; `None` keeps the conversation's current value."""

    model: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    system: str | None = None


@dataclass(frozen=True)
class Turn:
    """What a send, regenerate or edit produced: the rows to announce and the answer to generate."""

    conversation: Conversation
    user_message: Message | None
    assistant_message: Message
    created: bool  # False when a retried request found the rows its first attempt made


def title_from_content(content: str) -> str:
    words = " ".join(content.split())
    if len(words) <= TITLE_LENGTH:
        return words
    cut = words[:TITLE_LENGTH].rsplit(" ", 1)[0] or words[:TITLE_LENGTH]
    return cut + "…"


def _owner_pk(user: User) -> Any:
    # Only authenticated users reach the services; their primary key type is the user model's choice.
    return user.pk


def _lease_deadline() -> Any:
    return timezone.now() + timedelta(seconds=settings.CHAT_LEASE_SECONDS)


def _next_seq(conversation: Conversation) -> int:
    current = conversation.messages.aggregate(top=Max("seq"))["top"]
    return (current or 0) + 1


def _check_can_generate(*, user: User, conversation: Conversation) -> None:
    """Precondition: the caller holds the user's row lock, so concurrent sends count each other."""
    if selectors.conversation_is_busy(conversation=conversation):
        raise ConversationBusy
    limit = settings.CHAT_MAX_CONCURRENT_PER_USER
    if selectors.user_streaming_count(user=user) >= limit:
        raise TooManyGenerations(f"You already have {limit} answers being written; wait for one to finish or stop it.")


def _lock_user(user: User) -> None:
    # Serialises one user's turn-creating requests across processes, which makes the concurrency limit exact.
    get_user_model().objects.select_for_update().filter(pk=_owner_pk(user)).first()


def _lock_conversation(*, user: User, conversation_id: str) -> Conversation:
    conversation = selectors.conversation_get_for_user(user=user, conversation_id=conversation_id)
    return Conversation.objects.select_for_update().get(pk=conversation.pk)


def _assistant_create(*, conversation: Conversation, seq: int, max_tokens: int | None, client_id: str) -> Message:
    return Message.objects.create(
        conversation=conversation,
        owner_id=conversation.owner_id,
        seq=seq,
        role=Message.Role.ASSISTANT,
        status=Message.Status.STREAMING,
        model=conversation.model,
        temperature=conversation.temperature,
        max_tokens=max_tokens,
        client_id=client_id,
        lease_expires_at=_lease_deadline(),
    )


def _apply_options(conversation: Conversation, options: GenerationOptions) -> None:
    if options.model is not None:
        conversation.model = options.model
    if options.temperature is not None:
        conversation.temperature = options.temperature
    if options.system is not None:
        conversation.system_prompt = options.system


def _existing_turn(message: Message) -> Turn:
    if message.role == Message.Role.ASSISTANT:
        return Turn(conversation=message.conversation, user_message=None, assistant_message=message, created=False)
    answer = selectors.conversation_answer_after(message=message)
    if answer is None:  # pragma: no cover - every user message is created together with its answer
        raise InvalidState("That message has no answer.")
    return Turn(conversation=message.conversation, user_message=message, assistant_message=answer, created=False)


def _idempotent(user: User, client_id: str, create: Any) -> Turn:
    """Runs `create` unless `client_id` already made its rows; a concurrent twin loses on the unique key."""
    if client_id:
        existing = selectors.message_get_by_client_id(user=user, client_id=client_id)
        if existing is not None:
            return _existing_turn(existing)
    try:
        with transaction.atomic():
            turn: Turn = create()
            return turn
    except IntegrityError:
        existing = selectors.message_get_by_client_id(user=user, client_id=client_id) if client_id else None
        if existing is None:
            raise
        return _existing_turn(existing)


def message_send(
    *,
    user: User,
    client_id: str,
    conversation_id: str | None,
    content: str,
    options: GenerationOptions,
) -> Turn:
    """Adds a user message (creating the conversation when none is given) and a `streaming` answer to it."""

    def create() -> Turn:
        _lock_user(user)
        if conversation_id is None:
            conversation = Conversation(owner_id=_owner_pk(user), title=title_from_content(content))
            conversation.model = settings.LLM_MODELS[0]
        else:
            conversation = _lock_conversation(user=user, conversation_id=conversation_id)
            if not conversation.title:
                conversation.title = title_from_content(content)
        _apply_options(conversation, options)
        conversation.save()
        _check_can_generate(user=user, conversation=conversation)
        seq = _next_seq(conversation)
        user_message = Message.objects.create(
            conversation=conversation,
            owner_id=_owner_pk(user),
            seq=seq,
            role=Message.Role.USER,
            content=content,
            status=Message.Status.COMPLETE,
            client_id=client_id,
        )
        answer = _assistant_create(conversation=conversation, seq=seq + 1, max_tokens=options.max_tokens, client_id="")
        return Turn(conversation=conversation, user_message=user_message, assistant_message=answer, created=True)

    return _idempotent(user, client_id, create)


def message_regenerate(*, user: User, message_id: str, client_id: str, options: GenerationOptions) -> Turn:
    """Answers the last user turn again. The old answer is kept, marked superseded, and leaves the transcript."""

    def create() -> Turn:
        _lock_user(user)
        message = selectors.message_get_for_user(user=user, message_id=message_id)
        conversation = _lock_conversation(user=user, conversation_id=str(message.conversation_id))
        live = selectors.conversation_messages(conversation=conversation)
        if message.role != Message.Role.ASSISTANT or not live or live[-1].pk != message.pk:
            raise InvalidState("Only the latest answer can be regenerated.")
        _apply_options(conversation, options)
        conversation.save()
        _check_can_generate(user=user, conversation=conversation)
        Message.objects.filter(pk=message.pk).update(superseded_at=timezone.now())
        answer = _assistant_create(
            conversation=conversation,
            seq=_next_seq(conversation),
            max_tokens=options.max_tokens if options.max_tokens is not None else message.max_tokens,
            client_id=client_id,
        )
        return Turn(conversation=conversation, user_message=None, assistant_message=answer, created=True)

    return _idempotent(user, client_id, create)


def message_edit(*, user: User, message_id: str, content: str, client_id: str, options: GenerationOptions) -> Turn:
    """Replaces a user message and answers it again.

    The edited message and everything after it are kept, marked superseded, and leave the transcript; the new
    text becomes a new user message at the end, followed by a new answer.
    """

    def create() -> Turn:
        _lock_user(user)
        message = selectors.message_get_for_user(user=user, message_id=message_id)
        conversation = _lock_conversation(user=user, conversation_id=str(message.conversation_id))
        if message.role != Message.Role.USER or not message.is_active:
            raise InvalidState("Only a message you wrote, still in the transcript, can be edited.")
        _apply_options(conversation, options)
        conversation.save()
        _check_can_generate(user=user, conversation=conversation)
        conversation.messages.filter(seq__gte=message.seq, superseded_at__isnull=True).update(
            superseded_at=timezone.now()
        )
        seq = _next_seq(conversation)
        user_message = Message.objects.create(
            conversation=conversation,
            owner_id=_owner_pk(user),
            seq=seq,
            role=Message.Role.USER,
            content=content,
            status=Message.Status.COMPLETE,
            client_id=client_id,
        )
        answer = _assistant_create(conversation=conversation, seq=seq + 1, max_tokens=options.max_tokens, client_id="")
        return Turn(conversation=conversation, user_message=user_message, assistant_message=answer, created=True)

    return _idempotent(user, client_id, create)


def message_request_cancel(*, user: User, message_id: str) -> Message:
    """Flags a streaming answer for cancellation (the durable half of a cancel; the engine is told directly)."""
    message = selectors.message_get_for_user(user=user, message_id=message_id)
    if message.status == Message.Status.STREAMING:
        Message.objects.filter(pk=message.pk, status=Message.Status.STREAMING).update(
            cancel_requested_at=timezone.now()
        )
    return message


# --- Engine-side writes (the caller owns the generation; these are not user-scoped) --------------------------


def message_checkpoint(*, message_id: str, content: str) -> bool:
    """Saves the partial answer and renews the lease.

    Returns False when the generation must stop: its row was deleted, swept, or flagged for cancellation.
    """
    now = timezone.now()
    updated = Message.objects.filter(
        pk=message_id, status=Message.Status.STREAMING, cancel_requested_at__isnull=True
    ).update(content=content, lease_expires_at=_lease_deadline(), updated_at=now)
    return updated == 1


def message_is_cancel_requested(*, message_id: str) -> bool:
    return Message.objects.filter(pk=message_id, cancel_requested_at__isnull=False).exists()


def message_finish(
    *,
    message_id: str,
    status: str,
    content: str,
    finish_reason: str = "",
    prompt_tokens: int | None = None,
    completion_tokens: int | None = None,
    tool_calls: list[dict[str, Any]] | None = None,
    error_code: str = "",
    error_message: str = "",
) -> None:
    Message.objects.filter(pk=message_id).update(
        status=status,
        content=content,
        finish_reason=finish_reason,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        tool_calls=tool_calls or [],
        error_code=error_code,
        error_message=error_message,
        lease_expires_at=None,
        updated_at=timezone.now(),
    )


def messages_sweep_expired() -> list[Message]:
    """Marks `streaming` answers whose lease ran out (their process died) as `interrupted`, keeping the text."""
    now = timezone.now()
    expired = list(
        Message.objects.filter(status=Message.Status.STREAMING, lease_expires_at__lt=now).only(
            "id", "conversation_id", "content"
        )
    )
    swept = []
    for message in expired:
        message.status = Message.Status.INTERRUPTED
        message.error_code = INTERRUPTED_CODE
        message.error_message = INTERRUPTED_MESSAGE
        # The lease condition is repeated so a generation that renewed it meanwhile is left alone.
        updated = Message.objects.filter(
            pk=message.pk, status=Message.Status.STREAMING, lease_expires_at__lt=now
        ).update(
            status=message.status,
            error_code=message.error_code,
            error_message=message.error_message,
            lease_expires_at=None,
            updated_at=now,
        )
        if updated:
            swept.append(message)
    return swept
