"""Protocol v1: the client requests the server accepts and the events it emits (see docs/protocol.md).

Parsing is strict and total: any input either becomes one of the request dataclasses or raises
`ProtocolError` with a stable code, so a consumer never has to guess what a frame meant.
"""

import json
import math
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from conversations.errors import ChatError, ModelNotAllowed
from conversations.markdown import render_blocks, render_markdown
from conversations.models import Conversation, Message
from conversations.services import GenerationOptions

PROTOCOL_VERSION = 1
MAX_ID_LENGTH = 64
MAX_SYSTEM_CHARS = 8_000
TITLE_MAX_LENGTH = 200


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


@dataclass(frozen=True)
class Rename:
    conversation: str
    title: str
    id: str | None = None


@dataclass(frozen=True)
class Delete:
    conversation: str
    id: str | None = None


@dataclass(frozen=True)
class Feedback:
    message: str
    value: str  # "up", "down" or "" to clear
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
    Send | Open | Resume | Cancel | Regenerate | Edit | Ping | Older | ListConversations | Rename | Delete | Feedback
)


# --- Parsing ----------------------------------------------------------------------------------------------


class _Fields:
    """Typed access to a request object's fields, raising ProtocolError that names the field."""

    def __init__(self, data: dict[str, Any], ref: str | None) -> None:
        self.data = data
        self.ref = ref

    def fail(self, field: str, problem: str) -> ProtocolError:
        return ProtocolError("invalid_request", f"'{field}' {problem}.", self.ref, field=field)

    def string(self, field: str, *, required: bool = True, max_length: int | None = None) -> str | None:
        value = self.data.get(field)
        if value is None:
            if required:
                raise self.fail(field, "is required")
            return None
        if not isinstance(value, str):
            raise self.fail(field, "must be a string")
        if max_length is not None and len(value) > max_length:
            raise self.fail(field, f"must be at most {max_length} characters")
        return value

    def required_string(self, field: str, *, max_length: int | None = None) -> str:
        value = self.string(field, max_length=max_length)
        assert value is not None  # noqa: S101 - guaranteed by required=True
        return value

    def identifier(self, field: str, *, required: bool = True) -> str | None:
        value = self.string(field, required=required, max_length=MAX_ID_LENGTH)
        if value is not None and not value:
            raise self.fail(field, "must not be empty")
        return value

    def number(self, field: str, *, low: float, high: float, integer: bool = False) -> float | None:
        value = self.data.get(field)
        if value is None:
            return None
        # bool is an int in Python; true/false is never a valid number here.
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise self.fail(field, "must be a number")
        if integer and not isinstance(value, int):
            raise self.fail(field, "must be an integer")
        if not low <= value <= high:
            raise self.fail(field, f"must be between {low:g} and {high:g}")
        number: float = value
        return number

    def content(self, field: str = "content") -> str:
        value = self.required_string(field)
        if not value.strip():
            raise self.fail(field, "must not be blank")
        limit = settings.CHAT_MAX_CONTENT_CHARS
        if len(value) > limit:
            raise ProtocolError(
                "content_too_long", f"The message is longer than {limit} characters.", self.ref, field=field
            )
        return value

    def options(self) -> GenerationOptions:
        model = self.string("model", required=False, max_length=200)
        if model is not None:
            try:
                model_check(model)
            except ModelNotAllowed as exc:
                raise ProtocolError(exc.code, exc.message, self.ref, field="model") from None
        temperature = self.number("temperature", low=0, high=2)
        max_tokens = self.number("max_tokens", low=1, high=settings.CHAT_MAX_TOKENS_LIMIT, integer=True)
        return GenerationOptions(
            model=model,
            temperature=temperature,
            max_tokens=int(max_tokens) if max_tokens is not None else None,
            system=self.string("system", required=False, max_length=MAX_SYSTEM_CHARS),
        )


def using_simulator() -> bool:
    return bool(settings.LLM_SIMULATOR)


def model_check(model: str) -> None:
    """Raises ModelNotAllowed unless the model is configured.

    With the dev upstream, a configured name may carry simulator options (`dev:tps=5,fault=drop`, see
    docs/devllm.md); those exist only in the simulator and are how tests select its fault modes.
    """
    allowed = settings.LLM_MODELS
    if model in allowed or (using_simulator() and model.split(":", 1)[0] in allowed):
        return
    raise ModelNotAllowed(f"Model {model!r} is not available; choose one of: {', '.join(allowed)}.")


def parse_request(data: object) -> Request:
    """Turns a decoded JSON value into a request, or raises ProtocolError."""
    if not isinstance(data, dict):
        raise ProtocolError("invalid_frame", "A frame must be a JSON object with a 'type'.")
    raw_ref = data.get("id")
    ref = raw_ref if isinstance(raw_ref, str) and len(raw_ref) <= MAX_ID_LENGTH else None
    fields = _Fields(data, ref)
    kind = data.get("type")
    if kind == "send":
        conversation = fields.identifier("conversation", required=False)
        content = fields.content()
        client_id = fields.identifier("id")
        assert client_id is not None  # noqa: S101 - required
        return Send(id=client_id, conversation=conversation, content=content, options=fields.options())
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
        return ListConversations(query=query.strip(), offset=int(offset), id=ref)
    if kind == "rename":
        title = fields.required_string("title", max_length=TITLE_MAX_LENGTH).strip()
        if not title:
            raise fields.fail("title", "must not be blank")
        return Rename(conversation=_required_id(fields, "conversation"), title=title, id=ref)
    if kind == "delete":
        return Delete(conversation=_required_id(fields, "conversation"), id=ref)
    if kind == "feedback":
        value = fields.data.get("value")
        if value not in ("up", "down", None):
            raise fields.fail("value", 'must be "up", "down" or null')
        return Feedback(message=_required_id(fields, "message"), value=value or "", id=ref)
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


def parse_options(data: dict[str, Any]) -> GenerationOptions:
    """The generation settings of a request object (`model`, `temperature`, `max_tokens`, `system`), checked as
    in `send`; for the HTTP API, which takes the same fields."""
    return _Fields(data, None).options()


def parse_content(data: dict[str, Any], field: str = "content") -> str:
    """A message text checked as in `send` (not blank, at most CHAT_MAX_CONTENT_CHARS)."""
    return _Fields(data, None).content(field)


def _required_id(fields: _Fields, name: str) -> str:
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
    return parse_request(data)


# --- Events -----------------------------------------------------------------------------------------------


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def conversation_payload(conversation: Conversation, *, live: bool | None = None) -> dict[str, Any]:
    """`live` (whether an answer is being written in it) is included when the caller knows it."""
    payload = {
        "id": str(conversation.pk),
        "title": conversation.title,
        "model": conversation.model,
        "system": conversation.system_prompt,
        "temperature": conversation.temperature,
        "created_at": _iso(conversation.created_at),
        "updated_at": _iso(conversation.updated_at),
    }
    if live is not None:
        payload["live"] = live
    return payload


def usage_payload(message: Message) -> dict[str, int] | None:
    if message.prompt_tokens is None and message.completion_tokens is None:
        return None
    prompt, completion = message.prompt_tokens or 0, message.completion_tokens or 0
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def error_payload(code: str, message: str) -> dict[str, str] | None:
    return {"code": code, "message": message} if code else None


def rendered_html(message: Message) -> tuple[str, int]:
    """The sanitized HTML of an answer so far and how many code points of its content it covers.

    A finished answer has all its HTML (saved at the end); a streaming one has the HTML of its finished
    blocks, and the rest of its content is an unfinished tail that clients show as plain text.
    """
    if message.status != Message.Status.STREAMING:
        return message.content_html or render_markdown(message.content), len(message.content)
    blocks, _tail = render_blocks(message.content)
    return "".join(block.html for block in blocks), blocks[-1].end if blocks else 0


def message_payload(message: Message) -> dict[str, Any]:
    html, rendered = rendered_html(message) if message.role == Message.Role.ASSISTANT else ("", 0)
    return {
        "id": str(message.pk),
        "conversation": str(message.conversation_id),
        "seq": message.seq,
        "role": message.role,
        "content": message.content,
        "html": html,
        "rendered": rendered,
        "status": message.status,
        "model": message.model,
        "finish_reason": message.finish_reason or None,
        "usage": usage_payload(message),
        "error": error_payload(message.error_code, message.error_message),
        "tool_calls": message.tool_calls,
        "feedback": message.feedback or None,
        "created_at": _iso(message.created_at),
    }


def ready_event() -> dict[str, Any]:
    return {
        "type": "ready",
        "protocol": PROTOCOL_VERSION,
        "models": settings.LLM_MODELS,
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


def delta_event(message_id: str, offset: int, text: str, blocks: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """`blocks` are finished markdown blocks ({start, end, html}) that the text completed."""
    event: dict[str, Any] = {"type": "delta", "message": message_id, "offset": offset, "text": text}
    if blocks:
        event["blocks"] = blocks
    return event


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
    error: dict[str, str] | None = None,
    finish_reason: str | None = None,
    blocks: list[dict[str, Any]] | None = None,
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


def tool_calls_event(message_id: str, tool_calls: list[dict[str, Any]]) -> dict[str, Any]:
    return {"type": "tool_calls", "message": message_id, "tool_calls": tool_calls}
