"""Writes: creating turns, regenerating and editing answers, cancellation flags and generation checkpoints.

Each service validates, then writes; the caller notifies watchers once the write has committed.
"""

import functools
import hashlib
import json
import secrets
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.apps import apps
from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.models import AnonymousUser
from django.core.exceptions import ValidationError
from django.db import DEFAULT_DB_ALIAS, IntegrityError, connection, connections, transaction
from django.db.models import OuterRef, Subquery
from django.db.models.functions import Coalesce
from django.utils import timezone

from conversations import budget, selectors, signals
from conversations.errors import (
    ChatError,
    ConversationBusy,
    IdempotencyKeyReused,
    InvalidRequest,
    InvalidState,
    NotFound,
    QuotaExceeded,
    TooManyGenerations,
    TooManyRequests,
)
from conversations.markdown import render_markdown
from conversations.models import ApiToken, Conversation, Message, Preferences, SharedConversation
from conversations.options import (
    MAX_SYSTEM_CHARS,
    TITLE_MAX_LENGTH,
    GenerationOptions,
    Rating,
    allowed_models,
    model_within,
)
from conversations.payloads import chat_message, rendered_html
from conversations.text import clean_title

User = AbstractBaseUser | AnonymousUser

TITLE_LENGTH = 60  # a title derived from the first message
INTERRUPTED_CODE = "interrupted"
INTERRUPTED_MESSAGE = "The server stopped while writing this answer; the text so far is kept."


@dataclass(frozen=True)
class Turn:
    """What a send, regenerate or edit produced: the rows to announce and the answer to generate."""

    conversation: Conversation
    user_message: Message | None
    assistant_message: Message
    created: bool  # False when a retried request found the rows its first attempt made
    superseded: tuple[str, ...] = ()  # ids of the messages this turn took out of the transcript
    prompt: list[dict[str, Any]] | None = None  # what the new answer is asked, when the turn created one
    opened: bool = False  # the turn created its conversation (an import that continued none)


def title_from_content(content: str) -> str:
    words = clean_title(content)
    if len(words) <= TITLE_LENGTH:
        return words
    cut = words[:TITLE_LENGTH].rsplit(" ", 1)[0] or words[:TITLE_LENGTH]
    return cut + "…"


def _owner_pk(user: User) -> Any:
    # Only authenticated users reach the services; their primary key type is the user model's choice.
    return user.pk


def _lease_deadline() -> Any:
    return timezone.now() + timedelta(seconds=settings.CHAT_LEASE_SECONDS)


def _check_can_generate(*, user: User, conversation_id: Any) -> None:
    """Locks the user's row and refuses an answer the limits do not allow; precondition: inside a transaction.

    The lock serialises one user's turn-creating requests across processes, so concurrent sends count each
    other and the limits are exact.
    """
    since = timezone.now() - timedelta(minutes=1)
    activity = selectors.user_activity(user=user, conversation_id=conversation_id, since=since, lock=True)
    if activity.busy:
        raise ConversationBusy
    per_minute = settings.CHAT_MAX_MESSAGES_PER_MINUTE
    if activity.started >= per_minute:
        # A minute from now the window surely has room again (sooner, if the oldest answer in it is older).
        busy = TooManyRequests(
            f"You can start {per_minute} answers a minute; wait a moment and try again.", retry_after=60
        )
        busy.limits["requests"] = (per_minute, 0)
        raise busy
    limit = activity.max_concurrent_streams
    if activity.streaming >= limit:
        # When one of them ends is not known; answers usually take seconds.
        raise TooManyGenerations(
            f"You already have {limit} answers being written; wait for one to finish or stop it.", retry_after=5
        )
    if activity.daily_tokens is not None:
        # Usage is known only once an answer ends, so an answer started under the quota may finish past it.
        used = selectors.user_tokens_today(user=user)
        if used >= activity.daily_tokens:
            renewal = selectors.day_start() + timedelta(days=1)
            spent = QuotaExceeded(
                f"You have used {used} of your {activity.daily_tokens} tokens for today; "
                "the quota renews at midnight UTC.",
                retry_after=max(1, int((renewal - timezone.now()).total_seconds()) + 1),
            )
            spent.limits["tokens"] = (activity.daily_tokens, 0)
            raise spent


def _conversation_pk(conversation_id: str | None) -> uuid.UUID | None:
    """A conversation id as the database keys it; NotFound for one that cannot be an id (like someone else's)."""
    try:
        return uuid.UUID(conversation_id) if conversation_id is not None else None
    except (TypeError, ValueError) as exc:
        raise NotFound from exc


def _lock_conversation(*, user: User, conversation_id: str) -> tuple[Conversation, int]:
    """The user's conversation, locked until the transaction ends, and the highest `seq` of its messages."""
    last = Message.objects.filter(conversation_id=OuterRef("pk")).order_by("-seq").values("seq")[:1]
    try:
        conversation = (
            Conversation.objects.select_for_update(of=("self",))
            .annotate(last_seq=Coalesce(Subquery(last), 0))
            .get(pk=conversation_id, owner_id=_owner_pk(user))
        )
    except (Conversation.DoesNotExist, ValidationError, ValueError) as exc:
        raise NotFound from exc
    return conversation, int(conversation.last_seq)


def _new_user_message(
    *, conversation: Conversation, seq: int, content: str, client_id: str, request_hash: str = ""
) -> Message:
    return Message(
        conversation=conversation,
        owner_id=conversation.owner_id,
        seq=seq,
        role=Message.Role.USER,
        content=content,
        status=Message.Status.COMPLETE,
        client_id=client_id,
        request_hash=request_hash,
    )


def _new_answer(*, conversation: Conversation, seq: int, max_tokens: int | None, client_id: str) -> Message:
    """A `streaming` answer; its prompt is fitted to the model's context (_fit_prompt) before it is saved."""
    return Message(
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


def _fit_prompt(answer: Message, prompt: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The prompt of `answer` within its model's budget; the answer records how many earlier messages it left
    out, so that whoever builds its prompt again (the generation) leaves out the same ones."""
    fitted = budget.fit(prompt, model=answer.model, max_tokens=answer.max_tokens)
    answer.context_left_out = fitted.left_out
    return fitted.messages


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


def _idempotent(user: User, client_id: str, create: Callable[[], Turn], request_hash: str = "") -> Turn:
    """Runs `create` in a transaction, unless `client_id` already made its rows: then returns those (or, when
    the request that made them had another `request_hash`, refuses the key's reuse).

    The unique key on (owner, client_id) decides, without a look-up first: a repeated request either fails
    its insert (IntegrityError), or is refused by a limit its first attempt now counts against (a busy
    conversation, say); only then are the rows of the first attempt looked up. A retry racing its first
    attempt waits for the user's row lock, then takes one of those two paths.
    """
    try:
        with transaction.atomic():
            return create()
    except (IntegrityError, ChatError):
        existing = selectors.message_get_by_client_id(user=user, client_id=client_id) if client_id else None
        if existing is None:
            raise
        if request_hash and existing.request_hash != request_hash:
            raise IdempotencyKeyReused from None
        return _existing_turn(existing)


@dataclass(frozen=True)
class AnswerRequest:
    """What an answer asks the model: the model, its settings and the chat messages."""

    model: str
    temperature: float | None
    max_tokens: int | None
    messages: list[dict[str, Any]]


def _new_conversation(*, user: User, content: str, options: GenerationOptions) -> Conversation:
    conversation = Conversation(owner_id=_owner_pk(user), title=title_from_content(content))
    conversation.model = settings.LLM_MODELS[0]
    _apply_options(conversation, options)
    return conversation


def _opening_prompt(conversation: Conversation, content: str) -> list[dict[str, Any]]:
    """The prompt of the first answer of a new conversation: nothing came before it."""
    system = [{"role": "system", "content": conversation.system_prompt}] if conversation.system_prompt else []
    return [*system, {"role": "user", "content": content}]


def first_answer_request(*, user: User, content: str, options: GenerationOptions) -> AnswerRequest:
    """What the answer to a message that starts a new conversation will ask the model, known before anything
    is written (message_send asks exactly this), so that the model can be asked while the rows are written."""
    conversation = _new_conversation(user=user, content=content, options=options)
    messages = _opening_prompt(conversation, content)
    return AnswerRequest(conversation.model, conversation.temperature, options.max_tokens, messages)


def message_send(
    *,
    user: User,
    client_id: str,
    conversation_id: str | None,
    content: str,
    options: GenerationOptions,
    request_hash: str = "",
    permitted_models: Sequence[str] = (),
) -> Turn:
    """Adds a user message (creating the conversation when none is given) and a `streaming` answer to it.
    `request_hash` identifies the HTTP request behind an explicit Idempotency-Key (see _idempotent);
    `permitted_models` are those an API token may use (empty: all).

    A new conversation takes five statements (the transaction, the user's lock with the limits, the
    conversation, both messages at once); a follow-up turn seven, whatever the length of its history.
    """

    def create() -> Turn:
        _check_can_generate(user=user, conversation_id=_conversation_pk(conversation_id))
        if conversation_id is None:
            conversation, seq = _new_conversation(user=user, content=content, options=options), 0
            model_within(conversation.model, permitted_models)
            _insert([conversation])
            prompt = _opening_prompt(conversation, content)
        else:
            conversation, seq = _lock_conversation(user=user, conversation_id=conversation_id)
            if not conversation.title:
                conversation.title = title_from_content(content)
            _apply_options(conversation, options)
            model_within(conversation.model, permitted_models)
            # Read while the conversation is locked: exactly the turns the new answer follows.
            prompt = [*selectors.conversation_prompt(conversation=conversation), {"role": "user", "content": content}]
            conversation.save(update_fields=["title", "model", "temperature", "system_prompt", "updated_at"])
        user_message = _new_user_message(
            conversation=conversation, seq=seq + 1, content=content, client_id=client_id, request_hash=request_hash
        )
        answer = _new_answer(conversation=conversation, seq=seq + 2, max_tokens=options.max_tokens, client_id="")
        prompt = _fit_prompt(answer, prompt)
        _insert([user_message, answer])
        return Turn(
            conversation=conversation, user_message=user_message, assistant_message=answer, created=True, prompt=prompt
        )

    return _idempotent(user, client_id, create, request_hash)


def message_regenerate(*, user: User, message_id: str, client_id: str, options: GenerationOptions) -> Turn:
    """Answers the last user turn again. The old answer is kept, marked superseded, and leaves the transcript."""

    def create() -> Turn:
        message = selectors.message_get_for_user(user=user, message_id=message_id)
        _check_can_generate(user=user, conversation_id=message.conversation_id)
        conversation, seq = _lock_conversation(user=user, conversation_id=str(message.conversation_id))
        live = selectors.conversation_messages(conversation=conversation)
        if message.role != Message.Role.ASSISTANT or not live or live[-1].pk != message.pk:
            raise InvalidState("Only the latest answer can be regenerated.")
        _apply_options(conversation, options)
        conversation.save()
        Message.objects.filter(pk=message.pk).update(superseded_at=timezone.now())
        answer = _new_answer(
            conversation=conversation,
            seq=seq + 1,
            max_tokens=options.max_tokens if options.max_tokens is not None else message.max_tokens,
            client_id=client_id,
        )
        prompt = _fit_prompt(answer, selectors.conversation_prompt(conversation=conversation, before_seq=answer.seq))
        answer.save(force_insert=True)
        return Turn(
            conversation=conversation,
            user_message=None,
            assistant_message=answer,
            created=True,
            superseded=(str(message.pk),),
            prompt=prompt,
        )

    return _idempotent(user, client_id, create)


def message_edit(*, user: User, message_id: str, content: str, client_id: str, options: GenerationOptions) -> Turn:
    """Replaces a user message and answers it again.

    The edited message and everything after it are kept, marked superseded, and leave the transcript; the new
    text becomes a new user message at the end, followed by a new answer.
    """

    def create() -> Turn:
        message = selectors.message_get_for_user(user=user, message_id=message_id)
        _check_can_generate(user=user, conversation_id=message.conversation_id)
        conversation, seq = _lock_conversation(user=user, conversation_id=str(message.conversation_id))
        if message.role != Message.Role.USER or not message.is_active:
            raise InvalidState("Only a message you wrote, still in the transcript, can be edited.")
        _apply_options(conversation, options)
        conversation.save()
        replaced = conversation.messages.filter(seq__gte=message.seq, superseded_at__isnull=True)
        superseded = tuple(str(pk) for pk in replaced.values_list("pk", flat=True))
        replaced.update(superseded_at=timezone.now())
        user_message = _new_user_message(conversation=conversation, seq=seq + 1, content=content, client_id=client_id)
        answer = _new_answer(conversation=conversation, seq=seq + 2, max_tokens=options.max_tokens, client_id="")
        earlier = selectors.conversation_prompt(conversation=conversation, before_seq=user_message.seq)
        prompt = _fit_prompt(answer, [*earlier, {"role": "user", "content": content}])
        Message.objects.bulk_create([user_message, answer])
        return Turn(
            conversation=conversation,
            user_message=user_message,
            assistant_message=answer,
            created=True,
            superseded=superseded,
            prompt=prompt,
        )

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


def messages_checkpoint(*, contents: dict[str, str]) -> dict[str, bool]:
    """Saves partial answers (message id -> text so far) and renews their leases, in one transaction.

    Returns the answers that must stop, each with whether it was cancelled: their rows were deleted, swept or
    flagged for cancellation, so they took no write.

    One parametrised UPDATE, executed for every answer at once (`executemany`: a single round trip on
    PostgreSQL, which pipelines it): the same statement built with the ORM, a CASE with one branch per
    answer, cost more CPU to compose every second than the rest of the checkpoint.
    """
    now, deadline = timezone.now(), _lease_deadline()
    rows = [
        _db_values({"content": text, "lease_expires_at": deadline, "updated_at": now, "id": uuid.UUID(pk)})
        for pk, text in contents.items()
    ]
    sql = _update_sql(connection.vendor, ("content", "lease_expires_at", "updated_at", "id"), uncancelled=True)
    cursor: Any
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.executemany(sql, rows)
        updated = cursor.rowcount
    if updated == len(rows):
        return {}
    ids = list(contents)
    live = Message.objects.filter(status=Message.Status.STREAMING, cancel_requested_at__isnull=True)
    kept = {str(pk) for pk in live.filter(pk__in=ids).values_list("pk", flat=True)}
    stopped = [pk for pk in ids if pk not in kept]
    cancelled = {
        str(pk)
        for pk in Message.objects.filter(pk__in=stopped, cancel_requested_at__isnull=False).values_list("pk", flat=True)
    }
    return {pk: pk in cancelled for pk in stopped}


def message_finish(
    *,
    message_id: str,
    status: str,
    content: str,
    content_html: str = "",
    finish_reason: str = "",
    prompt_tokens: int | None = None,
    completion_tokens: int | None = None,
    tool_calls: list[dict[str, Any]] | None = None,
    error_code: str = "",
    error_message: str = "",
) -> bool:
    """Saves an answer's end. False when it was no longer `streaming`: swept by another process during a
    database outage, or deleted; the row is then left as it is, and the caller tells watchers what it says.

    Runs once per answer, as a statement built once (the ORM's `update()` composing it every time cost more
    CPU than running it)."""
    values = {
        "status": status,
        "content": content,
        "content_html": content_html,
        "finish_reason": finish_reason,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "tool_calls": tool_calls or [],
        "error_code": error_code,
        "error_message": error_message,
        "lease_expires_at": None,
        "updated_at": timezone.now(),
        "id": uuid.UUID(message_id),
    }
    cursor: Any
    with connection.cursor() as cursor:
        cursor.execute(_update_sql(connection.vendor, tuple(values)), _db_values(values))
        return bool(cursor.rowcount == 1)


def _connection() -> Any:
    """This thread's default connection itself. `django.db.connection` is a proxy that looks the connection
    up again at each attribute access, and converting a row's values for the database makes dozens."""
    return connections[DEFAULT_DB_ALIAS]


def _db_values(values: dict[str, Any]) -> list[Any]:
    """Values of Message fields as the database takes them (each field's own conversion)."""
    fields: Any = Message._meta
    db = _connection()
    return [fields.get_field(name).get_db_prep_save(value, db) for name, value in values.items()]


@functools.cache
def _update_sql(vendor: str, names: tuple[str, ...], *, uncancelled: bool = False) -> str:
    """UPDATE of a streaming Message's fields `names[:-1]` (and not flagged for cancellation, with
    `uncancelled`), for the row whose id is the last parameter."""
    quote, meta = connection.ops.quote_name, Message._meta

    def column(name: str) -> str:
        field: Any = meta.get_field(name)
        return quote(field.column)

    assignments = ", ".join(f"{column(name)} = %s" for name in names[:-1])
    # Identifiers from the model, the status from its choices; values are parameters.
    where = f"{column('id')} = %s AND {column('status')} = '{Message.Status.STREAMING}'"
    if uncancelled:
        where += f" AND {column('cancel_requested_at')} IS NULL"
    return f"UPDATE {quote(meta.db_table)} SET {assignments} WHERE {where}"  # noqa: S608


def _insert(objs: list[Any]) -> None:
    """Inserts new instances of one model in one round trip, as `bulk_create` does (each field's `pre_save`
    and conversion included), from a statement built once per model: composing it with the ORM for every
    answer cost more CPU than running it.

    One row per statement, executed for all of them at once (`executemany`, pipelined on PostgreSQL): psycopg
    caches its parse of a statement of at most 50 parameters, and two messages in one statement have 56."""
    meta = objs[0]._meta
    fields = meta.concrete_fields
    db = _connection()
    rows = [[field.get_db_prep_save(field.pre_save(obj, True), db) for field in fields] for obj in objs]
    cursor: Any
    with db.cursor() as cursor:
        if len(rows) == 1:
            cursor.execute(_insert_sql(db.vendor, meta.label), rows[0])
        else:
            cursor.executemany(_insert_sql(db.vendor, meta.label), rows)
    for obj in objs:
        obj._state.adding, obj._state.db = False, db.alias


@functools.cache
def _insert_sql(vendor: str, label: str) -> str:
    meta = apps.get_model(label)._meta
    quote = connection.ops.quote_name
    columns = ", ".join(quote(field.column) for field in meta.concrete_fields)
    row = "(" + ", ".join(["%s"] * len(meta.concrete_fields)) + ")"
    return f"INSERT INTO {quote(meta.db_table)} ({columns}) VALUES {row}"  # noqa: S608


SHARE_TOKEN_BYTES = 24  # 192 random bits in the address of a shared conversation


def share_create(*, user: User, conversation_id: str) -> SharedConversation:
    """Publishes a snapshot of the conversation's transcript as it is now (its live messages, as shown) at a
    new unguessable address. Refused while an answer is being written: the snapshot would hold half of it."""
    conversation = selectors.conversation_get_for_user(user=user, conversation_id=conversation_id)
    messages = selectors.conversation_messages(conversation=conversation)
    if any(message.status == Message.Status.STREAMING for message in messages):
        raise InvalidState("An answer is still being written; share once it has ended.")
    return SharedConversation.objects.create(
        token=secrets.token_urlsafe(SHARE_TOKEN_BYTES),
        conversation=conversation,
        owner_id=conversation.owner_id,
        title=conversation.title,
        messages=[share_message(message) for message in messages],
    )


def share_message(message: Message) -> dict[str, Any]:
    """A message as a shared snapshot keeps it: what the chat showed, nothing of the review or the usage."""
    html, _ = rendered_html(message) if message.role == Message.Role.ASSISTANT else ("", 0)
    return {"role": message.role, "content": message.content, "html": html, "model": message.model}


def share_revoke(*, user: User, share_id: str) -> None:
    """Stops sharing: the address answers 404 from now on (the snapshot is deleted, not kept hidden)."""
    share = selectors.share_get_for_user(user=user, share_id=share_id)
    share.delete()


def conversation_pin(*, user: User, conversation_id: str, pinned: bool) -> Conversation:
    """Pins a conversation to the top of its owner's list, or unpins it. Not activity: `updated_at` stays."""
    conversation = selectors.conversation_get_for_user(user=user, conversation_id=conversation_id)
    _pin(conversation, pinned)
    return conversation


def _pin(conversation: Conversation, pinned: bool) -> None:
    """Pins or unpins, written on its own so that `updated_at` (the conversation's last activity) stays."""
    if pinned != (conversation.pinned_at is not None):
        conversation.pinned_at = timezone.now() if pinned else None
        Conversation.objects.filter(pk=conversation.pk).update(pinned_at=conversation.pinned_at)


def conversation_rename(*, user: User, conversation_id: str, title: str) -> Conversation:
    conversation = selectors.conversation_get_for_user(user=user, conversation_id=conversation_id)
    conversation.title = clean_title(title)[:TITLE_MAX_LENGTH]
    conversation.save(update_fields=["title", "updated_at"])
    return conversation


@transaction.atomic
def conversation_delete(*, user: User, conversation_id: str) -> tuple[str, list[str]]:
    """Deletes a conversation and its messages; returns its id and those of its answers still streaming.

    The caller stops those (their generations would otherwise notice only at their next checkpoint).
    """
    # Locked, so that an answer being added concurrently is either listed here or refused for a missing row.
    conversation, _ = _lock_conversation(user=user, conversation_id=conversation_id)
    deleted = str(conversation.pk)
    streaming = [
        str(pk) for pk in conversation.messages.filter(status=Message.Status.STREAMING).values_list("pk", flat=True)
    ]
    conversation.delete()
    return deleted, streaming


def message_set_feedback(*, user: User, message_id: str, rating: Rating) -> Message:
    """Records the user's thumbs up or down on an answer (with a down, the reason and comment they gave), or
    clears it. A new rating replaces the whole previous one."""
    message = selectors.message_get_for_user(user=user, message_id=message_id)
    if message.role != Message.Role.ASSISTANT:
        raise InvalidState("Only answers take feedback.")
    message.feedback = rating.value
    down = rating.value == Message.Feedback.DOWN
    message.feedback_reason = rating.reason if down else ""
    message.feedback_comment = rating.comment if down else ""
    message.save(update_fields=["feedback", "feedback_reason", "feedback_comment", "updated_at"])
    return message


def messages_sweep_expired() -> list[Message]:
    """Marks `streaming` answers whose lease ran out (their process died) as `interrupted`, keeping the text."""
    now = timezone.now()
    expired = list(
        Message.objects.filter(status=Message.Status.STREAMING, lease_expires_at__lt=now).only(
            "id", "conversation_id", "owner_id", "content"
        )
    )
    swept = []
    for message in expired:
        message.status = Message.Status.INTERRUPTED
        message.error_code = INTERRUPTED_CODE
        message.error_message = INTERRUPTED_MESSAGE
        message.content_html = render_markdown(message.content)
        # The lease condition is repeated so a generation that renewed it meanwhile is left alone.
        updated = Message.objects.filter(
            pk=message.pk, status=Message.Status.STREAMING, lease_expires_at__lt=now
        ).update(
            status=message.status,
            content_html=message.content_html,
            error_code=message.error_code,
            error_message=message.error_message,
            lease_expires_at=None,
            updated_at=now,
        )
        if updated:
            swept.append(message)
    return swept


def message_take_over(*, message_id: str, stale_before: datetime) -> Message | None:
    """Claims a `streaming` answer that no generation has renewed since `stale_before`: its process died, or
    never started it. One with no text yet gets a new lease and stays `streaming`, for the caller to start
    again; one with text is saved `interrupted` (text kept), as the sweeper would do once its lease ran out.
    Returns the row as it now is, or None when it was not stale (a generation somewhere renews it).
    """
    now = timezone.now()
    stale = Message.objects.filter(pk=message_id, status=Message.Status.STREAMING, updated_at__lt=stale_before)
    if stale.filter(content="").update(lease_expires_at=_lease_deadline(), updated_at=now):
        return Message.objects.filter(pk=message_id).first()
    message = stale.only("id", "conversation_id", "owner_id", "content").first()
    if message is None:
        return None
    html = render_markdown(message.content)
    updated = stale.update(
        status=Message.Status.INTERRUPTED,
        content_html=html,
        error_code=INTERRUPTED_CODE,
        error_message=INTERRUPTED_MESSAGE,
        lease_expires_at=None,
        updated_at=now,
    )
    if not updated:
        return None
    message.status, message.content_html = Message.Status.INTERRUPTED, html
    message.error_code, message.error_message = INTERRUPTED_CODE, INTERRUPTED_MESSAGE
    return message


# --- The HTTP API and the admin review workflow ----------------------------------------------------------------

API_KEY_PREFIX = "chat_"
API_TOKEN_TOUCH_SECONDS = 60  # `last_used_at` is written at most this often per token, not on every request


def api_key_hash(key: str) -> str:
    # A key is 256 random bits, so a fast unsalted hash is enough: there is nothing to brute-force.
    return hashlib.sha256(key.encode()).hexdigest()


def api_token_create(
    *, user: User, name: str, expires_in_days: int | None = None, models: Sequence[str] = ()
) -> tuple[ApiToken, str]:
    """Creates a personal API token (working until revoked, or for `expires_in_days`; for every model, or for
    `models`); returns it and its key, which is not stored and cannot be shown again."""
    unknown = sorted(set(models) - set(allowed_models()))
    if unknown:
        raise InvalidRequest(f"Unknown models: {', '.join(unknown)}.", field="models")
    key = API_KEY_PREFIX + secrets.token_urlsafe(32)
    expires_at = timezone.now() + timedelta(days=expires_in_days) if expires_in_days is not None else None
    token = ApiToken.objects.create(
        user_id=_owner_pk(user),
        name=name,
        prefix=key[: len(API_KEY_PREFIX) + 6],
        key_hash=api_key_hash(key),
        expires_at=expires_at,
        allowed_models=sorted(set(models)),
    )
    return token, key


def api_token_revoke(*, user: User, token_id: str) -> None:
    token = selectors.api_token_get_for_user(user=user, token_id=token_id)
    api_tokens_revoke(token_ids=[token.pk])


def api_tokens_revoke(*, token_ids: list[Any]) -> int:
    """Revokes tokens (kept, for the record, but never accepted again); returns how many were still working.
    Requests streaming with them end once this has committed (see signals.access_changed)."""
    working = ApiToken.objects.filter(pk__in=token_ids, revoked_at__isnull=True)
    user_ids = sorted(set(working.values_list("user_id", flat=True)))
    revoked = working.update(revoked_at=timezone.now())
    if user_ids:
        transaction.on_commit(lambda: signals.access_changed.send(sender=ApiToken, user_ids=user_ids))
    return revoked


def api_token_authenticate(*, key: str) -> ApiToken | None:
    """The working token whose key this is (recording its use), or None."""
    token = selectors.api_token_get_by_hash(key_hash=api_key_hash(key))
    now = timezone.now()
    if token is None or not token.user.is_active or (token.expires_at is not None and token.expires_at <= now):
        return None
    if token.last_used_at is None or now - token.last_used_at > timedelta(seconds=API_TOKEN_TOUCH_SECONDS):
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        token.last_used_at = now
    return token


def conversation_create(*, user: User, title: str, options: GenerationOptions) -> Conversation:
    """An empty conversation with its settings; the first message sent to it gives it a title if it has none."""
    conversation = Conversation(owner_id=_owner_pk(user), title=title, model=settings.LLM_MODELS[0])
    _apply_options(conversation, options)
    conversation.save()
    return conversation


def conversation_update(
    *, user: User, conversation_id: str, title: str | None, options: GenerationOptions, pinned: bool | None = None
) -> Conversation:
    """Changes a conversation's title, settings and pin (`None` keeps a value); settings apply from the next
    answer on."""
    conversation = selectors.conversation_get_for_user(user=user, conversation_id=conversation_id)
    if pinned is not None:
        _pin(conversation, pinned)
    if title is None and options == GenerationOptions():
        return conversation  # only the pin changed: not activity
    if title is not None:
        conversation.title = clean_title(title)[:TITLE_MAX_LENGTH]
    _apply_options(conversation, options)
    conversation.save()
    return conversation


@dataclass(frozen=True)
class HistoryMessage:
    """A message an OpenAI-compatible client sends: its role, text, the tool calls of an assistant message (the
    product's {index, id, name, arguments}) and the call a tool message answers."""

    role: str
    content: str
    tool_calls: tuple[dict[str, Any], ...] = ()
    tool_call_id: str = ""


def conversation_import(
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
) -> Turn:
    """A conversation given whole (the OpenAI-compatible endpoint): the earlier messages (`history`), the new
    ones this call adds (a user message, or the results of the tools the last answer called) and a `streaming`
    answer to them, asked with the further request `parameters`. A repeated `client_id` finds the rows of its
    first attempt.

    One client thread is one conversation: when `history` is exactly the live transcript of a conversation the
    same token made (same system prompt), the new messages are added to it; otherwise a new conversation,
    which records the token that made it, holds them all.
    """
    texts = [message.content for message in [*history, *new] if message.role == Message.Role.USER]
    first_user_text = texts[0] if texts else ""
    opening = _opening_hash(system, first_user_text)

    def row(conversation: Conversation, seq: int, message: HistoryMessage) -> Message:
        return Message(
            conversation=conversation,
            owner_id=_owner_pk(user),
            seq=seq,
            role=message.role,
            content=message.content,
            tool_calls=list(message.tool_calls),
            tool_call_id=message.tool_call_id,
        )

    def create() -> Turn:
        _check_can_generate(user=user, conversation_id=None)
        continued = selectors.conversation_continued(
            user=user,
            token_id=token_id,
            opening_hash=opening,
            system=system,
            history=[(message.role, message.content) for message in history],
        )
        if continued is not None:
            conversation, seq = _lock_conversation(user=user, conversation_id=str(continued.pk))
            _apply_options(conversation, options)
            model_within(conversation.model, permitted_models)
            conversation.save(update_fields=["model", "temperature", "updated_at"])
            earlier: list[Message] = []
        else:
            conversation = Conversation(
                owner_id=_owner_pk(user),
                title=title_from_content(first_user_text),
                system_prompt=system,
                api_token_id=token_id,
                opening_hash=opening if token_id is not None else "",
            )
            conversation.model = settings.LLM_MODELS[0]
            _apply_options(conversation, options)
            model_within(conversation.model, permitted_models)
            conversation.save(force_insert=True)
            earlier = [row(conversation, number, message) for number, message in enumerate(history, start=1)]
            seq = len(history)
        added = [row(conversation, seq + number, message) for number, message in enumerate(new, start=1)]
        # The idempotency key (and the request's hash) go on the first new message, as a send's on its own.
        added[0].client_id, added[0].request_hash = client_id, request_hash
        answer = _new_answer(
            conversation=conversation, seq=seq + len(new) + 1, max_tokens=options.max_tokens, client_id=""
        )
        answer.parameters = parameters or {}
        Message.objects.bulk_create([*earlier, *added, answer])
        prompt = [{"role": "system", "content": system}] if system else []
        prompt += [
            chat_message(message.role, message.content, message.tool_calls, message.tool_call_id)
            for message in [*history, *new]
            if message.content or message.tool_calls
        ]
        return Turn(
            conversation=conversation,
            user_message=added[-1] if added[-1].role == Message.Role.USER else None,
            assistant_message=answer,
            created=True,
            prompt=prompt,
            opened=continued is None,
        )

    return _idempotent(user, client_id, create, request_hash)


def _opening_hash(system: str, first_user_text: str) -> str:
    return hashlib.sha256(json.dumps([system, first_user_text]).encode()).hexdigest()


def conversations_set_flagged(*, conversation_ids: list[Any], flagged: bool) -> int:
    """Flags conversations for follow-up (or clears the flag); returns how many changed.

    A review is not activity: `update()` leaves `updated_at`, and so the owner's list order, as it was.
    """
    return Conversation.objects.filter(pk__in=conversation_ids).exclude(flagged=flagged).update(flagged=flagged)


def conversation_review(*, conversation_id: Any, flagged: bool, reviewer_notes: str) -> None:
    """Saves a reviewer's flag and notes, without touching `updated_at` (see conversations_set_flagged)."""
    Conversation.objects.filter(pk=conversation_id).update(flagged=flagged, reviewer_notes=reviewer_notes)


def preferences_update(*, user: User, default_model: str, default_system_prompt: str) -> Preferences:
    """Sets the user's defaults for new conversations (the chat page starts a new chat with them)."""
    if default_model and default_model not in allowed_models():
        raise ValidationError({"default_model": "That model is not offered here."})
    if len(default_system_prompt) > MAX_SYSTEM_CHARS:
        raise ValidationError({"default_system_prompt": f"At most {MAX_SYSTEM_CHARS} characters."})
    preferences, _ = Preferences.objects.update_or_create(
        user_id=_owner_pk(user),
        defaults={"default_model": default_model, "default_system_prompt": default_system_prompt},
    )
    return preferences
