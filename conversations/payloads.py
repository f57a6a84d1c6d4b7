"""The JSON form of a conversation, a message, token usage and an error: one form for every transport.

The WebSocket, the REST API and its event streams, the exports and the admin all show records through these
functions, so a field means the same thing wherever a client or a reviewer reads it.
"""

from collections.abc import Mapping, Sequence
from typing import Any, TypedDict

from conversations.markdown import render_blocks, render_markdown
from conversations.models import Conversation, Message


class ErrorPayload(TypedDict):
    """Why an answer failed or a request was refused: a stable `code` and a `message` a user can read."""

    code: str
    message: str


def iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def conversation_payload(conversation: Conversation, *, live: bool | None = None) -> dict[str, Any]:
    """`live` (whether an answer is being written in it) is included when the caller knows it."""
    payload: dict[str, Any] = {
        "id": str(conversation.pk),
        "title": conversation.title,
        "model": conversation.model,
        "system": conversation.system_prompt,
        "temperature": conversation.temperature,
        "api_token": conversation.api_token_id,  # the API token that made it (None: made in the chat)
        "pinned": conversation.pinned_at is not None,
        "created_at": iso(conversation.created_at),
        "updated_at": iso(conversation.updated_at),
    }
    if live is not None:
        payload["live"] = live
    return payload


def usage(prompt_tokens: int | None, completion_tokens: int | None) -> dict[str, int] | None:
    """Token usage as OpenAI reports it; None when the model server reported none."""
    if prompt_tokens is None and completion_tokens is None:
        return None
    prompt, completion = prompt_tokens or 0, completion_tokens or 0
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def usage_payload(message: Message) -> dict[str, int] | None:
    return usage(message.prompt_tokens, message.completion_tokens)


def error_payload(code: str, message: str) -> ErrorPayload | None:
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


def message_fields(message: Message) -> dict[str, Any]:
    """A message's own fields, without its rendering (the exports' form)."""
    return {
        "id": str(message.pk),
        "seq": message.seq,
        "role": message.role,
        "status": message.status,
        "content": message.content,
        "model": message.model,
        "finish_reason": message.finish_reason or None,
        "usage": usage_payload(message),
        "error": error_payload(message.error_code, message.error_message),
        "tool_calls": message.tool_calls,
        "tool_call_id": message.tool_call_id or None,
        "feedback": message.feedback or None,
        "feedback_reason": message.feedback_reason or None,
        "feedback_comment": message.feedback_comment or None,
        "context_left_out": message.context_left_out,
        "created_at": iso(message.created_at),
    }


def message_payload(message: Message) -> dict[str, Any]:
    """A message as clients see it: its fields, its conversation, and the HTML of an answer (`html`, covering
    the first `rendered` code points of its content)."""
    html, rendered = rendered_html(message) if message.role == Message.Role.ASSISTANT else ("", 0)
    return {**message_fields(message), "conversation": str(message.conversation_id), "html": html, "rendered": rendered}


def openai_tool_call(call: Mapping[str, Any]) -> dict[str, Any]:
    """A tool call as OpenAI shapes it, from the product's {index, id, name, arguments}."""
    return {"id": call["id"], "type": "function", "function": {"name": call["name"], "arguments": call["arguments"]}}


def chat_message(
    role: str, content: str, tool_calls: Sequence[Mapping[str, Any]] = (), tool_call_id: str = ""
) -> dict[str, Any]:
    """A stored message as the model server is sent it (OpenAI's chat message)."""
    message: dict[str, Any] = {"role": role, "content": content}
    if tool_calls:
        message["content"] = content or None
        message["tool_calls"] = [openai_tool_call(call) for call in tool_calls]
    if role == "tool":
        message["tool_call_id"] = tool_call_id
    return message
