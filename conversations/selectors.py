"""Reads: every query the app makes about conversations and messages, scoped to their owner."""

import functools
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.models import AnonymousUser
from django.core.exceptions import ValidationError
from django.db import connection
from django.db.models import Count, Exists, F, OuterRef, Prefetch, Q, Sum
from django.db.models.functions import Coalesce, TruncDate
from django.utils import timezone

from conversations import budget
from conversations.errors import NotFound
from conversations.models import ApiToken, Conversation, Message, Preferences, SharedConversation, UserQuota
from conversations.payloads import chat_message

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


@dataclass(frozen=True)
class Activity:
    """What the limits on starting an answer look at."""

    streaming: int  # the user's answers being written
    busy: bool  # one of them is in the conversation asked about
    started: int  # answers the user started since the time asked about
    daily_tokens: int | None  # the user's daily token quota (None: no limit)
    max_concurrent_streams: int  # answers the user may have streaming at once


def user_activity(*, user: User, conversation_id: Any, since: datetime, lock: bool = False) -> Activity:
    """The user's activity and limits, in one statement: answers streaming (in the given conversation too),
    answers started since `since` (each counted through its own index), and the quota staff set, if any.

    With `lock`, the user's row is locked until the caller's transaction ends (precondition: inside one), which
    serialises one user's turn-creating requests across processes and so makes the limits exact.

    It runs before every answer, so it is written in SQL: built with the ORM (five subqueries), composing the
    statement cost 15 times the CPU of running it (2.4 ms against 0.15 ms, docs/benchmarks.md).
    """
    user_id = get_user_model()._meta.pk.get_db_prep_value(user.pk, connection)
    conversation = Message._meta.get_field("conversation").get_db_prep_value(conversation_id, connection)
    params = [user_id, user_id, conversation, user_id, connection.ops.adapt_datetimefield_value(since), user_id]
    cursor: Any
    with connection.cursor() as cursor:
        cursor.execute(_activity_sql(connection.vendor, lock), params)
        streaming, busy, started, daily_tokens, concurrent = cursor.fetchone()
    return Activity(
        streaming=streaming,
        busy=bool(busy),
        started=started,
        daily_tokens=daily_tokens,
        max_concurrent_streams=concurrent if concurrent is not None else settings.CHAT_MAX_CONCURRENT_PER_USER,
    )


@functools.cache
def _activity_sql(vendor: str, lock: bool) -> str:
    """The statement of `user_activity` for a database vendor. The statuses are literals, so that PostgreSQL
    uses the partial index on streaming answers; every value from outside is a parameter."""
    quote = connection.ops.quote_name
    users, message, quota = get_user_model()._meta, Message._meta, UserQuota._meta

    def column(meta: Any, name: str) -> str:
        return f"{quote(meta.db_table)}.{quote(meta.get_field(name).column)}"

    messages, user_id = quote(message.db_table), f"{quote(users.db_table)}.{quote(users.pk.column)}"
    owner, status = column(message, "owner"), column(message, "status")
    users_table, quotas = quote(users.db_table), quote(quota.db_table)
    conversation, role, created, model = (
        column(message, name) for name in ("conversation", "role", "created_at", "model")
    )
    # Identifiers from the models, literals from their choices; values are parameters.
    streaming, assistant = f"'{Message.Status.STREAMING}'", f"'{Message.Role.ASSISTANT}'"
    sql = " ".join(
        [
            f"SELECT (SELECT COUNT(*) FROM {messages} WHERE {owner} = %s AND {status} = {streaming}),",  # noqa: S608
            f"EXISTS(SELECT 1 FROM {messages} WHERE {owner} = %s AND {status} = {streaming}",  # noqa: S608
            f"AND {conversation} = %s),",
            f"(SELECT COUNT(*) FROM {messages} WHERE {owner} = %s AND {role} = {assistant}",  # noqa: S608
            # Imported history (the earlier turns a /v1 client sends) has no model: it was not answered here.
            f"AND {created} >= %s AND {model} <> ''),",
            f"{column(quota, 'daily_tokens')}, {column(quota, 'max_concurrent_streams')}",
            f"FROM {users_table} LEFT JOIN {quotas} ON {column(quota, 'user')} = {user_id}",
            f"WHERE {user_id} = %s",
        ]
    )
    if lock and connection.features.has_select_for_update_of:
        # Only the user's row: the quota is on the nullable side of the join. (SQLite has no row locks: its
        # IMMEDIATE transactions take the write lock up front.)
        sql += f" FOR UPDATE OF {users_table}"
    elif lock and connection.features.has_select_for_update:
        sql += " FOR UPDATE"
    return sql


def conversation_prompt(
    *, conversation: Conversation, before_seq: int | None = None, system: str | None = None
) -> list[dict[str, Any]]:
    """The chat messages sent upstream for the next answer of a conversation: its system prompt, then its live
    turns (before `before_seq`, when given), oldest first, in one query whatever the history's length."""
    prompt: list[dict[str, Any]] = []
    system_prompt = conversation.system_prompt if system is None else system
    if system_prompt:
        prompt.append({"role": "system", "content": system_prompt})
    earlier = Message.objects.filter(conversation_id=conversation.pk, superseded_at__isnull=True)
    if before_seq is not None:
        earlier = earlier.filter(seq__lt=before_seq)
    rows = earlier.order_by("seq").values_list("role", "content", "tool_calls", "tool_call_id")
    # An empty answer (failed before its first token) carries nothing the model needs to see; one that only
    # called tools does.
    prompt.extend(chat_message(*row) for row in rows if row[1] or row[2])
    return prompt


def message_prompt(*, message: Message) -> list[dict[str, Any]]:
    """The chat messages sent upstream to produce `message`: system prompt, then the live turns before it, less
    the earliest ones it was created without (to fit the model's context, see conversations.budget)."""
    prompt = conversation_prompt(conversation=message.conversation, before_seq=message.seq)
    return budget.without_left_out(prompt, message.context_left_out)


HISTORY_PAGE = 50
CONVERSATION_PAGE = 50


def conversation_messages_page(
    *, conversation: Conversation, before: int | None = None, limit: int = HISTORY_PAGE
) -> tuple[list[Message], bool]:
    """A page of the live transcript, oldest first: the latest `limit` messages, or those before seq `before`.

    Also whether older messages remain.
    """
    messages = conversation.messages.filter(superseded_at__isnull=True)
    if before is not None:
        messages = messages.filter(seq__lt=before)
    page = list(messages.order_by("-seq")[: limit + 1])
    return page[:limit][::-1], len(page) > limit


def conversation_list_for_user(
    *, user: User, query: str = "", offset: int = 0, limit: int = CONVERSATION_PAGE, source: str = ""
) -> tuple[list[tuple[Conversation, bool]], bool]:
    """The user's conversations, the pinned ones first (the latest pinned first), then the most recently
    active, each with whether an answer is being written in it; `query` matches titles and the text of live
    messages, `source` keeps those made in the chat ("chat") or through an API token ("api"). Also whether
    more remain after this page."""
    conversations = Conversation.objects.filter(owner_id=user.pk)
    if source:
        conversations = conversations.filter(api_token__isnull=source == "chat")
    conversations = conversations.annotate(
        live=Exists(Message.objects.filter(conversation=OuterRef("pk"), status=Message.Status.STREAMING))
    )
    if query:
        in_messages = Message.objects.filter(
            owner_id=user.pk, superseded_at__isnull=True, content__icontains=query
        ).values("conversation_id")
        conversations = conversations.filter(Q(title__icontains=query) | Q(pk__in=in_messages))
    order = (F("pinned_at").desc(nulls_last=True), "-updated_at", "-pk")
    page = list(conversations.order_by(*order)[offset : offset + limit + 1])
    return [(conversation, conversation.live) for conversation in page[:limit]], len(page) > limit


def conversation_continued(
    *, user: User, token_id: Any, opening_hash: str, system: str, history: list[tuple[str, str]]
) -> Conversation | None:
    """The conversation this token made whose live transcript is exactly `history` (with this system prompt),
    with no answer being written: the one a client's next call continues. The most recent, if several."""
    if token_id is None or not history:
        return None
    wanted = [(role, text) for role, text in history if text]
    candidates = Conversation.objects.filter(
        owner_id=user.pk, api_token_id=token_id, opening_hash=opening_hash, system_prompt=system
    ).order_by("-updated_at")[:5]
    for conversation in candidates:
        live = Message.objects.filter(conversation=conversation, superseded_at__isnull=True).order_by("seq")
        rows = list(live.values_list("role", "content", "status"))
        if any(status == Message.Status.STREAMING for _, _, status in rows):
            continue
        if [(role, content) for role, content, _ in rows if content] == wanted:
            return conversation
    return None


# --- API tokens, quotas, usage and review (added with the HTTP API and the admin workflow) ---------------------


def _pk(user: User) -> Any:
    # Only authenticated users get here; their primary key type is the user model's choice.
    return user.pk


def api_token_list_for_user(*, user: User) -> list[ApiToken]:
    """The user's tokens that still work (neither revoked nor expired), newest first."""
    working = ApiToken.objects.filter(user_id=_pk(user), revoked_at__isnull=True)
    return list(working.exclude(expires_at__lte=timezone.now()))


def api_token_get_for_user(*, user: User, token_id: str) -> ApiToken:
    """One of the user's working tokens, or NotFound (someone else's looks exactly the same)."""
    try:
        return ApiToken.objects.get(pk=token_id, user_id=_pk(user), revoked_at__isnull=True)
    except (ApiToken.DoesNotExist, ValidationError, ValueError) as exc:
        raise NotFound("No such token.") from exc


def api_token_get_by_hash(*, key_hash: str) -> ApiToken | None:
    """The working token with this key hash, with its user, if any."""
    return ApiToken.objects.select_related("user").filter(key_hash=key_hash, revoked_at__isnull=True).first()


def day_start(moment: datetime | None = None) -> datetime:
    """Midnight UTC of the day of `moment` (now by default): quotas and usage are counted per UTC day."""
    moment = (moment or timezone.now()).astimezone(UTC)
    return moment.replace(hour=0, minute=0, second=0, microsecond=0)


def user_tokens_today(*, user: User) -> int:
    """Prompt plus completion tokens of the user's answers started since midnight UTC."""
    totals = Message.objects.filter(owner_id=user.pk, created_at__gte=day_start()).aggregate(
        prompt=Sum("prompt_tokens"), completion=Sum("completion_tokens")
    )
    return (totals["prompt"] or 0) + (totals["completion"] or 0)


def usage_per_user_per_day(*, since: date, owner_id: Any = None) -> list[dict[str, Any]]:
    """Answers and tokens per user and UTC day from `since` on, newest day first."""
    answers = Message.objects.filter(role=Message.Role.ASSISTANT, created_at__date__gte=since)
    if owner_id is not None:
        answers = answers.filter(owner_id=owner_id)
    rows = (
        answers.annotate(day=TruncDate("created_at", tzinfo=UTC))
        .values("day", "owner_id", "owner__username")
        .annotate(
            answers=Count("id"),
            prompt_tokens=Coalesce(Sum("prompt_tokens"), 0),
            completion_tokens=Coalesce(Sum("completion_tokens"), 0),
        )
        .order_by("-day", "owner__username")
    )
    return [{**row, "total_tokens": row["prompt_tokens"] + row["completion_tokens"]} for row in rows]


def share_get_for_user(*, user: User, share_id: str) -> SharedConversation:
    """One of the user's shares; NotFound for another's (or one that does not exist)."""
    try:
        return SharedConversation.objects.get(pk=int(share_id), owner_id=user.pk)
    except (SharedConversation.DoesNotExist, ValueError, TypeError) as exc:
        raise NotFound from exc


def shares_for_conversation(*, user: User, conversation_id: str) -> list[SharedConversation]:
    conversation = conversation_get_for_user(user=user, conversation_id=conversation_id)
    return list(SharedConversation.objects.filter(conversation=conversation))


def share_get_public(*, token: str) -> SharedConversation | None:
    """The share at an address, for anyone who has it; None when there is none (never shared, or stopped)."""
    return SharedConversation.objects.filter(token=token).first()


def conversations_for_export(*, conversation_ids: list[Any]) -> list[Conversation]:
    """Conversations with their owner and every message, superseded ones included (a review sees them all)."""
    return list(
        Conversation.objects.filter(pk__in=conversation_ids)
        .select_related("owner")
        .prefetch_related(Prefetch("messages", queryset=Message.objects.order_by("seq")))
        .order_by("created_at")
    )


def message_state(*, message_id: str) -> Message | None:
    """An answer's row as it stands, for the engine (not user-scoped: the engine owns the generation)."""
    return Message.objects.filter(pk=message_id).only("status", "content").first()


def preferences_for(*, user: User) -> Preferences:
    """The user's defaults for new conversations; unsaved empty ones if they never set any."""
    return Preferences.objects.filter(user_id=_pk(user)).first() or Preferences(user_id=_pk(user))
