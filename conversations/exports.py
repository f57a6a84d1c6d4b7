"""Conversations exported for review: JSON (every field, for programs) and Markdown (for people).

Both hold every message, superseded ones included and marked, with status, usage and errors, plus the
reviewer's flag and notes.
"""

import json
from typing import Any

from conversations.models import Conversation, Message
from streaming.protocol import usage_payload


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def _message(message: Message) -> dict[str, Any]:
    return {
        "id": str(message.pk),
        "seq": message.seq,
        "role": message.role,
        "status": message.status,
        "content": message.content,
        "model": message.model,
        "finish_reason": message.finish_reason or None,
        "usage": usage_payload(message),
        "error": {"code": message.error_code, "message": message.error_message} if message.error_code else None,
        "tool_calls": message.tool_calls,
        "feedback": message.feedback or None,
        "superseded": message.superseded_at is not None,
        "created_at": _iso(message.created_at),
    }


def conversation_record(conversation: Conversation) -> dict[str, Any]:
    """Precondition: `conversation.messages` is prefetched (selectors.conversations_for_export)."""
    return {
        "id": str(conversation.pk),
        "owner": conversation.owner.get_username(),
        "title": conversation.title,
        "model": conversation.model,
        "system_prompt": conversation.system_prompt,
        "temperature": conversation.temperature,
        "flagged": conversation.flagged,
        "reviewer_notes": conversation.reviewer_notes,
        "created_at": _iso(conversation.created_at),
        "updated_at": _iso(conversation.updated_at),
        "messages": [_message(message) for message in conversation.messages.all()],
    }


def export_json(conversations: list[Conversation]) -> str:
    return json.dumps({"conversations": [conversation_record(c) for c in conversations]}, ensure_ascii=False, indent=2)


def _heading(message: Message) -> str:
    parts = [message.status]
    if message.model:
        parts.append(message.model)
    usage = usage_payload(message)
    if usage is not None:
        parts.append(f"{usage['prompt_tokens']} + {usage['completion_tokens']} tokens")
    if message.feedback:
        parts.append(f"feedback: {message.feedback}")
    if message.superseded_at is not None:
        parts.append("superseded")
    return f"## {message.seq}. {message.role.capitalize()} ({', '.join(parts)})"


def export_markdown(conversations: list[Conversation]) -> str:
    sections = []
    for conversation in conversations:
        lines = [
            f"# {conversation.title or conversation.pk}",
            "",
            f"- Conversation: `{conversation.pk}`",
            f"- Owner: {conversation.owner.get_username()}",
            f"- Model: {conversation.model}",
            f"- Created: {_iso(conversation.created_at)}; updated: {_iso(conversation.updated_at)}",
            f"- Flagged: {'yes' if conversation.flagged else 'no'}",
        ]
        if conversation.reviewer_notes:
            lines.append(f"- Reviewer notes: {conversation.reviewer_notes}")
        if conversation.system_prompt:
            lines += ["", "System prompt:", "", conversation.system_prompt]
        for message in conversation.messages.all():
            lines += ["", _heading(message), "", message.content or "*(no text)*"]
            if message.error_code:
                lines += ["", f"> Error `{message.error_code}`: {message.error_message}"]
        sections.append("\n".join(lines))
    return "\n\n---\n\n".join(sections) + "\n"
