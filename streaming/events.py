"""The internal events between generations, actions and watchers (`gen.*`), and the groups they travel in.

These never reach a client as they are: a `Watcher` turns them into protocol events (streaming.protocol).
Each event has a TypedDict and one constructor; the tables at the end say who handles which. Only the
actions (streaming.actions, after their write has committed) and the generations (streaming.generation)
announce events; control requests (`gen.cancel`, `gen.resume`) go to a generation through the engine.

Groups:
- `chat.conversation.<id>`: every watcher of a conversation; the announcements of its rows and answers.
- `chat.user.<id>`: every socket of a user; changes to the user's list of conversations.
- `chat.generation.<message id>`: the engine running that answer; cancel and resume requests.
"""

from typing import Any, Literal, NotRequired, TypedDict

from conversations.markdown import BlockPayload
from conversations.payloads import ErrorPayload

# --- groups ---------------------------------------------------------------------------------------------------


def conversation_group(conversation_id: object) -> str:
    """Every watcher of a conversation joins this group; generations publish their events to it."""
    return f"chat.conversation.{conversation_id}"


def user_group(user_id: object) -> str:
    """Every socket of a user joins this group: changes to the list of conversations go to it."""
    return f"chat.user.{user_id}"


def control_group(message_id: object) -> str:
    """The engine running a generation joins this group; cancel and resume requests go to it."""
    return f"chat.generation.{message_id}"


# --- payloads inside events (blocks and errors come from conversations.markdown and .payloads) ----------------


class ToolCallPayload(TypedDict):
    index: int
    id: str
    name: str
    arguments: str


# --- conversation group -----------------------------------------------------------------------------------------


class MessageEvent(TypedDict):
    """A new row (a user message, or an answer that starts `streaming`); `message` is its payload."""

    type: Literal["gen.message"]
    message: dict[str, Any]


class DeltaEvent(TypedDict):
    """Text of an answer from `offset` on, and the markdown blocks that text finished."""

    type: Literal["gen.delta"]
    message: str
    offset: int
    text: str
    blocks: NotRequired[list[BlockPayload]]


class ToolsEvent(TypedDict):
    """The tool calls of an answer so far, whole (each grows until the answer ends)."""

    type: Literal["gen.tools"]
    message: str
    tool_calls: list[ToolCallPayload]


class DoneEvent(TypedDict):
    """An answer ended; its row was written first. `length` is the saved text's length (-1: the row is gone)."""

    type: Literal["gen.done"]
    message: str
    status: str
    length: int
    finish_reason: str | None
    usage: dict[str, int] | None
    error: ErrorPayload | None
    blocks: list[BlockPayload]


class SupersededEvent(TypedDict):
    """Messages that a regenerate or an edit took out of the transcript."""

    type: Literal["gen.superseded"]
    conversation: str
    messages: list[str]


def message(payload: dict[str, Any]) -> MessageEvent:
    return {"type": "gen.message", "message": payload}


def delta(message_id: str, offset: int, text: str, blocks: list[BlockPayload] | None = None) -> DeltaEvent:
    event: DeltaEvent = {"type": "gen.delta", "message": message_id, "offset": offset, "text": text}
    if blocks:
        event["blocks"] = blocks
    return event


def tools(message_id: str, tool_calls: list[ToolCallPayload]) -> ToolsEvent:
    return {"type": "gen.tools", "message": message_id, "tool_calls": tool_calls}


def done(
    message_id: str,
    status: str,
    *,
    length: int,
    finish_reason: str | None = None,
    usage: dict[str, int] | None = None,
    error: ErrorPayload | None = None,
    blocks: list[BlockPayload] | None = None,
) -> DoneEvent:
    return {
        "type": "gen.done",
        "message": message_id,
        "status": status,
        "length": length,
        "finish_reason": finish_reason,
        "usage": usage,
        "error": error,
        "blocks": blocks or [],
    }


def superseded(conversation_id: str, message_ids: list[str]) -> SupersededEvent:
    return {"type": "gen.superseded", "conversation": conversation_id, "messages": message_ids}


# --- user group ---------------------------------------------------------------------------------------------------


class ConversationEvent(TypedDict):
    """A conversation of the user's list changed: new, renamed, or an answer in it started or stopped (`live`).
    `conversation` is its payload, or only `{"id", "live"}` for a change of `live`."""

    type: Literal["gen.conversation"]
    conversation: dict[str, Any]


class ConversationDeletedEvent(TypedDict):
    type: Literal["gen.conversation_deleted"]
    conversation: str


def conversation(payload: dict[str, Any]) -> ConversationEvent:
    return {"type": "gen.conversation", "conversation": payload}


def conversation_live(conversation_id: object, *, live: bool) -> ConversationEvent:
    """An answer started or stopped being written in a conversation."""
    return {"type": "gen.conversation", "conversation": {"id": str(conversation_id), "live": live}}


def conversation_deleted(conversation_id: str) -> ConversationDeletedEvent:
    return {"type": "gen.conversation_deleted", "conversation": conversation_id}


# --- control group ------------------------------------------------------------------------------------------------


class CancelRequest(TypedDict):
    type: Literal["gen.cancel"]
    message: str


class ResumeRequest(TypedDict):
    """Asks a generation to send `reply_to` one `gen.delta` with its text from `offset` and the finished
    blocks after `rendered` (and its tool calls, if any)."""

    type: Literal["gen.resume"]
    message: str
    offset: int
    rendered: int
    reply_to: str


def cancel_request(message_id: str) -> CancelRequest:
    return {"type": "gen.cancel", "message": message_id}


def resume_request(message_id: str, offset: int, rendered: int, reply_to: str) -> ResumeRequest:
    return {"type": "gen.resume", "message": message_id, "offset": offset, "rendered": rendered, "reply_to": reply_to}


# --- routing --------------------------------------------------------------------------------------------------------

WatcherEvent = MessageEvent | DeltaEvent | ToolsEvent | DoneEvent | SupersededEvent
ListEvent = ConversationEvent | ConversationDeletedEvent
ControlRequest = CancelRequest | ResumeRequest

# The one routing table: the handler of each event, on the Watcher (conversation group, resume replies) or on
# the socket (the user's list); control requests go to the engine.
WATCHER_HANDLERS = {
    "gen.message": "on_message",
    "gen.delta": "on_delta",
    "gen.tools": "on_tools",
    "gen.done": "on_done",
    "gen.superseded": "on_superseded",
}
LIST_HANDLERS = {
    "gen.conversation": "on_conversation",
    "gen.conversation_deleted": "on_conversation_deleted",
}
CONTROL_HANDLERS = {
    "gen.cancel": "on_cancel",
    "gen.resume": "on_resume",
}
