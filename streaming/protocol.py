"""Protocol v1 (docs/protocol.md): the requests a WebSocket client sends, the events every client receives,
and the WebSocket close codes.

Parsing is strict and total: any frame either becomes one of the request dataclasses or raises
`ProtocolError` with a stable code, so a consumer never has to guess what a frame meant. The events are the
one vocabulary of the WebSocket and of the HTTP event streams (streaming.api.sse); the records inside them
take their JSON form from conversations.payloads.
"""

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from django.conf import settings

from conversations.errors import ChatError
from conversations.markdown import BlockPayload
from conversations.models import Conversation, Message
from conversations.options import (
    MAX_ID_LENGTH,
    TITLE_MAX_LENGTH,
    Fields,
    GenerationOptions,
    Rating,
    allowed_models,
    using_simulator,
)
from conversations.payloads import ErrorPayload, conversation_payload, message_payload
from conversations.text import UnstorableText, check_document, clean_title, may_need_check

PROTOCOL_VERSION = 1

# Close codes. RFC 6455 leaves 4000-4999 to applications, and daphne lets an application send only 1000 and
# 3000-4999, so each is an application code that reads as the HTTP status it resembles.
CLOSE_UNAUTHENTICATED = 4401  # log in, then reconnect
CLOSE_TOO_MANY_SOCKETS = 4429  # the user has CHAT_MAX_SOCKETS_PER_USER sockets open already
# "The server is restarting; reconnect" (RFC 6455's 1012, which an application cannot send through daphne).
CLOSE_SERVICE_RESTART = 4503


class ProtocolError(ChatError):
    """A frame that is not a valid request; `code` is one of the documented protocol error codes."""

    def __init__(self, code: str, message: str, ref: str | None = None, *, field: str | None = None) -> None:
        super().__init__(message, field=field)
        self.code = code
        self.ref = ref


@dataclass(frozen=True)
class Send:
    id: str
    conversation: str | None
    content: str
    options: GenerationOptions
    retry: bool = False  # the client sends it again with the same id (after a reconnect)


@dataclass(frozen=True)
class Open:
    conversation: str
    id: str | None = None


@dataclass(frozen=True)
class Resume:
    message: str
    offset: int
    rendered: int | None = None  # how much of the text the client has as HTML blocks
    id: str | None = None


@dataclass(frozen=True)
class Older:
    conversation: str
    before: int  # a message `seq`: the page holds the live messages before it
    id: str | None = None


@dataclass(frozen=True)
class ListConversations:
    query: str
    offset: int
    id: str | None = None
    source: str = ""  # "chat" or "api" (made through /v1): only those; "" for all


@dataclass(frozen=True)
class Rename:
    conversation: str
    title: str
    id: str | None = None


@dataclass(frozen=True)
class Pin:
    conversation: str
    pinned: bool
    id: str | None = None


@dataclass(frozen=True)
class Delete:
    conversation: str
    id: str | None = None


@dataclass(frozen=True)
class Feedback:
    message: str
    rating: Rating  # "up", "down" or "" to clear; with "down", an optional reason and comment
    id: str | None = None


@dataclass(frozen=True)
class Cancel:
    message: str
    id: str | None = None


@dataclass(frozen=True)
class Regenerate:
    message: str
    id: str
    options: GenerationOptions


@dataclass(frozen=True)
class Edit:
    message: str
    content: str
    id: str
    options: GenerationOptions


@dataclass(frozen=True)
class Ping:
    id: str | None = None


Request = (
    Send
    | Open
    | Resume
    | Cancel
    | Regenerate
    | Edit
    | Ping
    | Older
    | ListConversations
    | Rename
    | Pin
    | Delete
    | Feedback
)


# --- Parsing ----------------------------------------------------------------------------------------------


def parse_request(data: object) -> Request:
    """Turns a decoded JSON value into a request, or raises ProtocolError (naming the request's id, when it
    has a usable one, as `ref`)."""
    if not isinstance(data, dict):
        raise ProtocolError("invalid_frame", "A frame must be a JSON object with a 'type'.")
    raw_ref = data.get("id")
    ref = raw_ref if isinstance(raw_ref, str) and len(raw_ref) <= MAX_ID_LENGTH else None
    try:
        return _request(data, ref)
    except ProtocolError:
        raise
    except ChatError as exc:
        raise ProtocolError(exc.code, exc.message, ref, field=exc.field) from None


def _request(data: dict[str, Any], ref: str | None) -> Request:
    fields = Fields(data)
    kind = data.get("type")
    if kind == "send":
        conversation = fields.identifier("conversation", required=False)
        content = fields.content()
        client_id = fields.identifier("id")
        assert client_id is not None  # noqa: S101 - required
        retry = fields.data.get("retry", False)
        if not isinstance(retry, bool):
            raise fields.fail("retry", "must be true or false")
        return Send(id=client_id, conversation=conversation, content=content, options=fields.options(), retry=retry)
    if kind == "open":
        return Open(conversation=_required_id(fields, "conversation"), id=ref)
    if kind == "resume":
        offset = fields.number("offset", low=0, high=2**31, integer=True)
        if offset is None:
            raise fields.fail("offset", "is required")
        rendered = fields.number("rendered", low=0, high=offset, integer=True)
        return Resume(
            message=_required_id(fields, "message"),
            offset=int(offset),
            rendered=int(rendered) if rendered is not None else None,
            id=ref,
        )
    if kind == "older":
        before = fields.number("before", low=1, high=2**31, integer=True)
        if before is None:
            raise fields.fail("before", "is required")
        return Older(conversation=_required_id(fields, "conversation"), before=int(before), id=ref)
    if kind == "conversations":
        query = fields.string("query", required=False, max_length=200) or ""
        offset = fields.number("offset", low=0, high=2**31, integer=True) or 0
        source = fields.string("source", required=False, max_length=8) or ""
        if source not in SOURCES:
            raise fields.fail("source", 'must be "chat", "api" or absent')
        return ListConversations(query=query.strip(), offset=int(offset), id=ref, source=source)
    if kind == "rename":
        title = clean_title(fields.required_string("title", max_length=TITLE_MAX_LENGTH))
        if not title:
            raise fields.fail("title", "must not be blank")
        return Rename(conversation=_required_id(fields, "conversation"), title=title, id=ref)
    if kind == "pin":
        pinned = fields.data.get("pinned")
        if not isinstance(pinned, bool):
            raise fields.fail("pinned", "must be true or false")
        return Pin(conversation=_required_id(fields, "conversation"), pinned=pinned, id=ref)
    if kind == "delete":
        return Delete(conversation=_required_id(fields, "conversation"), id=ref)
    if kind == "feedback":
        rating = fields.rating("value", Message.FeedbackReason.values)
        return Feedback(message=_required_id(fields, "message"), rating=rating, id=ref)
    if kind == "cancel":
        return Cancel(message=_required_id(fields, "message"), id=ref)
    if kind == "regenerate":
        return Regenerate(message=_required_id(fields, "message"), id=ref or "", options=fields.options())
    if kind == "edit":
        message = _required_id(fields, "message")
        return Edit(message=message, content=fields.content(), id=ref or "", options=fields.options())
    if kind == "ping":
        return Ping(id=ref)
    raise ProtocolError("unknown_type", f"Unknown request type {kind!r}.", ref)


SOURCES = ("", "chat", "api")  # where conversations were made: anywhere, in the chat, through /v1


def _required_id(fields: Fields, name: str) -> str:
    value = fields.identifier(name)
    assert value is not None  # noqa: S101 - required
    return value


def parse_frame(text: str) -> Request:
    """Decodes and parses one WebSocket text frame."""
    limit = settings.CHAT_MAX_FRAME_BYTES
    # len(text) <= bytes; checking the cheap bound first avoids encoding every frame.
    if len(text) > limit or len(text.encode()) > limit:
        raise ProtocolError("frame_too_large", f"Frames are limited to {limit} bytes.")
    try:
        data = json.loads(text)
    except ValueError:
        raise ProtocolError("invalid_json", "The frame is not valid JSON.") from None
    except RecursionError:
        raise ProtocolError("invalid_json", "The frame is nested too deeply.") from None
    if may_need_check(text):
        try:
            check_document(data)
        except UnstorableText as exc:
            raise ProtocolError("invalid_request", str(exc)) from None
    return parse_request(data)


# --- Events -----------------------------------------------------------------------------------------------


def serialize(event: Any) -> str:
    """The JSON text of an event, compact and with non-ASCII characters as they are.

    orjson, because a frame is serialised for every delta (about a tenth of the time json.dumps takes);
    json.dumps for what orjson refuses (integers beyond 64 bits, say, in an upstream's log probabilities).
    """
    try:
        return orjson.dumps(event).decode()
    except TypeError:
        return json.dumps(event, ensure_ascii=False, separators=(",", ":"))


def ready_event() -> dict[str, Any]:
    return {
        "type": "ready",
        "protocol": PROTOCOL_VERSION,
        "models": allowed_models(),
        "simulator": using_simulator(),
    }


def history_event(
    conversation: Conversation, messages: list[dict[str, Any]], *, has_more: bool, ref: str | None
) -> dict[str, Any]:
    """The latest page of a conversation; `has_more` says whether `older` would return more."""
    event = {
        "type": "history",
        "conversation": conversation_payload(conversation),
        "messages": messages,
        "has_more": has_more,
    }
    return with_ref(event, ref)


def older_event(conversation_id: str, messages: list[Message], *, has_more: bool, ref: str | None) -> dict[str, Any]:
    event = {
        "type": "older",
        "conversation": conversation_id,
        "messages": [message_payload(m) for m in messages],
        "has_more": has_more,
    }
    return with_ref(event, ref)


def message_event(message: Message, ref: str | None = None) -> dict[str, Any]:
    return with_ref({"type": "message", "message": message_payload(message)}, ref)


def delta_event(
    message_id: str,
    offset: int,
    text: str,
    blocks: list[BlockPayload] | None = None,
    logprobs: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """`blocks` are finished markdown blocks ({start, end, html}) that the text completed; `logprobs`, the
    log probabilities of its tokens, when a /v1 client asked for them."""
    event: dict[str, Any] = {"type": "delta", "message": message_id, "offset": offset, "text": text}
    if blocks:
        event["blocks"] = blocks
    if logprobs:
        event["logprobs"] = list(logprobs)
    return event


def conversation_event(conversation: Conversation) -> dict[str, Any]:
    """A conversation as it now is (the reply to `rename` and `pin`)."""
    return {"type": "conversation", "conversation": conversation_payload(conversation)}


def feedback_event(message: Message) -> dict[str, Any]:
    """An answer's feedback as it now is (the reply to `feedback`)."""
    return {
        "type": "feedback",
        "message": str(message.pk),
        "value": message.feedback or None,
        "reason": message.feedback_reason or None,
        "comment": message.feedback_comment or None,
    }


def error_event(code: str, message: str, ref: str | None = None) -> dict[str, Any]:
    return with_ref({"type": "error", "code": code, "message": message}, ref)


def with_ref(event: dict[str, Any], ref: str | None) -> dict[str, Any]:
    """Adds `ref`, the id of the request an event answers, when there is one."""
    if ref is not None:
        event["ref"] = ref
    return event


def done_event(
    message_id: str,
    status: str,
    *,
    length: int,
    usage: dict[str, int] | None = None,
    error: ErrorPayload | None = None,
    finish_reason: str | None = None,
    blocks: list[BlockPayload] | None = None,
    html: str | None = None,
) -> dict[str, Any]:
    """The end of an answer, `length` code points long. Its last markdown blocks come as `blocks` when the
    client has all the others, or as `html`, the whole answer's HTML, to replace what the client shows."""
    event: dict[str, Any] = {"type": "done", "message": message_id, "status": status, "length": length}
    if usage is not None:
        event["usage"] = usage
    if error is not None:
        event["error"] = error
    if finish_reason:
        event["finish_reason"] = finish_reason
    if blocks:
        event["blocks"] = blocks
    if html is not None:
        event["html"] = html
    return event


def tool_calls_event(message_id: str, tool_calls: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    return {"type": "tool_calls", "message": message_id, "tool_calls": tool_calls}
