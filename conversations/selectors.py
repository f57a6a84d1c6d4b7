"""Reads: every query the app makes about conversations and messages, scoped to their owner."""

from typing import Any

from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.models import AnonymousUser
from django.core.exceptions import ValidationError

from conversations.errors import NotFound
from conversations.models import Conversation, Message

User = AbstractBaseUser | AnonymousUser


def conversation_get_for_user(*, user: User, conversation_id: str) -> Conversation:
    """The user's conversation, or NotFound, whether it is missing, malformed or someone else's."""
    try:
        return Conversation.objects.get(pk=conversation_id, owner_id=user.pk)
    except (Conversation.DoesNotExist, ValidationError, ValueError) as exc:
        raise NotFound from exc


def message_get_for_user(*, user: User, message_id: str) -> Message:
    """The user's message, or NotFound, whether it is missing, malformed or someone else's."""
    try:
        return Message.objects.select_related("conversation").get(pk=message_id, owner_id=user.pk)
    except (Message.DoesNotExist, ValidationError, ValueError) as exc:
        raise NotFound from exc


def message_get_by_client_id(*, user: User, client_id: str) -> Message | None:
    return Message.objects.filter(owner_id=user.pk, client_id=client_id).first()


def conversation_messages(*, conversation: Conversation) -> list[Message]:
    """The live transcript (superseded messages are left out), oldest first."""
    return list(conversation.messages.filter(superseded_at__isnull=True).order_by("seq"))


def conversation_answer_after(*, message: Message) -> Message | None:
    """The live assistant message that answers the given user message, if any."""
    return (
        Message.objects.filter(
            conversation_id=message.conversation_id,
            seq__gt=message.seq,
            role=Message.Role.ASSISTANT,
            superseded_at__isnull=True,
        )
        .order_by("seq")
        .first()
    )


def conversation_is_busy(*, conversation: Conversation) -> bool:
    return conversation.messages.filter(status=Message.Status.STREAMING).exists()


def user_streaming_count(*, user: User) -> int:
    return Message.objects.filter(owner_id=user.pk, status=Message.Status.STREAMING).count()


def message_prompt(*, message: Message) -> list[dict[str, Any]]:
    """The chat messages sent upstream to produce `message`: system prompt, then the live turns before it."""
    conversation = message.conversation
    prompt: list[dict[str, Any]] = []
    if conversation.system_prompt:
        prompt.append({"role": "system", "content": conversation.system_prompt})
    earlier = conversation.messages.filter(seq__lt=message.seq, superseded_at__isnull=True).order_by("seq")
    for turn in earlier.only("role", "content"):
        # An empty answer (failed before its first token) carries nothing the model needs to see.
        if turn.content:
            prompt.append({"role": turn.role, "content": turn.content})
    return prompt
