"""Conversations exported: JSON (every field, for programs) and Markdown (for people).

For review (the admin), both hold every message, superseded ones included and marked, with status, usage
and errors, plus the reviewer's flag and notes. For the owner (`review=False`, the chat's export), they hold
the transcript as its owner sees it and nothing of the review.
"""

import json
from typing import Any

from conversations.models import Conversation, Message
from conversations.payloads import conversation_payload, iso, message_fields, usage_payload


def _messages(conversation: Conversation, *, review: bool) -> list[Message]:
    """Precondition: `conversation.messages` is prefetched (selectors.conversations_for_export)."""
    return [message for message in conversation.messages.all() if review or message.superseded_at is None]


def conversation_record(conversation: Conversation, *, review: bool = True) -> dict[str, Any]:
    """A conversation as the API shows it, with its owner and its messages, and for review the review fields
    and the superseded messages too."""
    record = {**conversation_payload(conversation), "owner": conversation.owner.get_username()}
    if review:
        record |= {"flagged": conversation.flagged, "reviewer_notes": conversation.reviewer_notes}
    record["messages"] = [
        {**message_fields(message), "superseded": message.superseded_at is not None}
        for message in _messages(conversation, review=review)
    ]
    return record


def export_json(conversations: list[Conversation], *, review: bool = True) -> str:
    records = [conversation_record(conversation, review=review) for conversation in conversations]
    return json.dumps({"conversations": records}, ensure_ascii=False, indent=2)


def _heading(message: Message) -> str:
    parts = [message.status]
    if message.model:
        parts.append(message.model)
    usage = usage_payload(message)
    if usage is not None:
        parts.append(f"{usage['prompt_tokens']} + {usage['completion_tokens']} tokens")
    if message.feedback:
        reason = f" ({message.get_feedback_reason_display()})" if message.feedback_reason else ""
        parts.append(f"feedback: {message.feedback}{reason}")
    if message.superseded_at is not None:
        parts.append("superseded")
    return f"## {message.seq}. {message.role.capitalize()} ({', '.join(parts)})"


def export_markdown(conversations: list[Conversation], *, review: bool = True) -> str:
    sections = []
    for conversation in conversations:
        lines = [
            f"# {conversation.title or conversation.pk}",
            "",
            f"- Conversation: `{conversation.pk}`",
            f"- Owner: {conversation.owner.get_username()}",
            f"- Model: {conversation.model}",
            f"- Created: {iso(conversation.created_at)}; updated: {iso(conversation.updated_at)}",
        ]
        if review:
            lines.append(f"- Flagged: {'yes' if conversation.flagged else 'no'}")
        if review and conversation.reviewer_notes:
            lines.append(f"- Reviewer notes: {conversation.reviewer_notes}")
        if conversation.system_prompt:
            lines += ["", "System prompt:", "", conversation.system_prompt]
        for message in _messages(conversation, review=review):
            lines += ["", _heading(message), "", message.content or "*(no text)*"]
            if message.error_code:
                lines += ["", f"> Error `{message.error_code}`: {message.error_message}"]
        sections.append("\n".join(lines))
    return "\n\n---\n\n".join(sections) + "\n"
