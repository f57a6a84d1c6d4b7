"""Errors a request can end in, each with a stable code that the WebSocket and HTTP protocols share."""


class ChatError(Exception):
    """A request that cannot be served; `code` is part of the public protocol (see docs/protocol.md)."""

    code = "chat_error"
    default_message = "The request could not be served."

    def __init__(self, message: str | None = None, *, field: str | None = None, retry_after: int | None = None) -> None:
        self.message = message or self.default_message
        self.field = field  # the request field at fault, when there is one (HTTP errors name it)
        # For a limit: seconds after which the same request can succeed (HTTP sends it as Retry-After), and the
        # limit itself as OpenAI's x-ratelimit-* headers name it: {"requests" | "tokens": (limit, remaining)}.
        self.retry_after = retry_after
        self.limits: dict[str, tuple[int, int]] = {}
        super().__init__(self.message)


class NotFound(ChatError):
    # Deliberately identical for "does not exist" and "belongs to someone else": ids are not an oracle.
    code = "not_found"
    default_message = "No such conversation or message."


class InvalidRequest(ChatError):
    code = "invalid_request"
    default_message = "The request is not valid."


class InvalidJson(ChatError):
    code = "invalid_json"


class IdempotencyKeyReused(ChatError):
    code = "idempotency_key_reused"
    default_message = "This Idempotency-Key was used for a different request; use a new key for a new request."


class ContextLengthExceeded(ChatError):
    code = "context_length_exceeded"
    default_message = "The messages are longer than the model's context."


class ContentTooLong(ChatError):
    code = "content_too_long"
    default_message = "The message is too long."


class ModelNotAllowed(ChatError):
    code = "model_not_allowed"
    default_message = "That model is not available."


class ConversationBusy(ChatError):
    code = "conversation_busy"
    default_message = "An answer is still being written in this conversation; stop it or wait for it."


class TooManyGenerations(ChatError):
    code = "too_many_generations"
    default_message = "You have too many answers being written at once; wait for one to finish."


class InvalidState(ChatError):
    code = "invalid_state"
    default_message = "That message cannot be changed now."


class QuotaExceeded(ChatError):
    code = "quota_exceeded"
    default_message = "You have used your daily quota of tokens; it renews at midnight UTC."


class TooManyRequests(ChatError):
    code = "too_many_requests"
    default_message = "You are sending messages too fast; wait a moment."


class Unavailable(ChatError):
    # Only while a server process is shutting down: the same request succeeds on another one (or after a
    # restart), so clients retry it with the same id.
    code = "unavailable"
    default_message = "This server is restarting; the request will succeed in a moment."
