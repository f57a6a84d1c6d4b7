"""What a request may ask of an answer, and the limits every transport checks it against.

The WebSocket, the REST API and the OpenAI-compatible endpoint take the same fields (`model`,
`temperature`, `max_tokens`, `system`, `content`); they are read and checked here, once, so that the three
accept and refuse exactly the same things with the same error codes.
"""

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from conversations.errors import ContentTooLong, InvalidRequest, ModelNotAllowed

MAX_ID_LENGTH = 64  # client ids (idempotency keys) and the ids of requests; Message.client_id holds this many
MAX_SYSTEM_CHARS = 8_000
TITLE_MAX_LENGTH = 200  # Conversation.title holds this many
FEEDBACK_COMMENT_MAX_CHARS = 2_000


@dataclass(frozen=True)
class GenerationOptions:
    """Per-request settings; `None` keeps the conversation's current value."""

    model: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    system: str | None = None


@dataclass(frozen=True)
class Rating:
    """A user's feedback on an answer: "up", "down" or "" (cleared); with "down", optionally a reason (one of
    Message.FeedbackReason) and a comment."""

    value: str
    reason: str = ""
    comment: str = ""


def using_simulator() -> bool:
    """Whether the model server is the dev simulator (the UI and the API label answers as simulated)."""
    return bool(settings.LLM_SIMULATOR)


def allowed_models() -> list[str]:
    """The models users may pick, the default first."""
    return list(settings.LLM_MODELS)


def model_within(model: str, permitted: Sequence[str]) -> None:
    """Raises ModelNotAllowed unless `permitted` (an API token's models; empty: all) includes the model (its
    name before any simulator options)."""
    if permitted and model.partition(":")[0] not in permitted:
        raise ModelNotAllowed(f"This API token may use only: {', '.join(permitted)}.", field="model")


def model_check(model: str) -> None:
    """Raises ModelNotAllowed unless the model is configured.

    With the dev upstream, a configured name may carry simulator options (`dev:tps=5,fault=drop`, see
    docs/devllm.md); those exist only in the simulator and are how tests select its fault modes.
    """
    allowed = settings.LLM_MODELS
    if model in allowed or (using_simulator() and model.split(":", 1)[0] in allowed):
        return
    raise ModelNotAllowed(f"Model {model!r} is not available; choose one of: {', '.join(allowed)}.", field="model")


class Fields:
    """Typed access to the fields of a request object, raising InvalidRequest that names the field at fault."""

    def __init__(self, data: Mapping[str, Any]) -> None:
        self.data = data

    def fail(self, field: str, problem: str) -> InvalidRequest:
        return InvalidRequest(f"'{field}' {problem}.", field=field)

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
        """A message text: not blank, at most CHAT_MAX_CONTENT_CHARS."""
        value = self.required_string(field)
        if not value.strip():
            raise self.fail(field, "must not be blank")
        limit = settings.CHAT_MAX_CONTENT_CHARS
        if len(value) > limit:
            raise ContentTooLong(f"The message is longer than {limit} characters.", field=field)
        return value

    def rating(self, field: str, reasons: Sequence[str]) -> Rating:
        """A thumbs up or down in `field` ("up", "down" or null to clear), and with a down an optional `reason`
        (one of `reasons`) and `comment`."""
        value = self.data.get(field)
        if value not in ("up", "down", None):
            raise self.fail(field, 'must be "up", "down" or null')
        reason = self.string("reason", required=False, max_length=32) or ""
        comment = (self.string("comment", required=False, max_length=FEEDBACK_COMMENT_MAX_CHARS) or "").strip()
        if reason and reason not in reasons:
            raise self.fail("reason", f"must be one of {', '.join(reasons)}")
        if (reason or comment) and value != "down":
            raise self.fail("reason" if reason else "comment", 'goes only with "down"')
        return Rating(value or "", reason, comment)

    def options(self) -> GenerationOptions:
        """`model`, `temperature`, `max_tokens` and `system`, each optional."""
        model = self.string("model", required=False, max_length=200)
        if model is not None:
            model_check(model)
        temperature = self.number("temperature", low=0, high=2)
        max_tokens = self.number("max_tokens", low=1, high=settings.CHAT_MAX_TOKENS_LIMIT, integer=True)
        return GenerationOptions(
            model=model,
            temperature=temperature,
            max_tokens=int(max_tokens) if max_tokens is not None else None,
            system=self.string("system", required=False, max_length=MAX_SYSTEM_CHARS),
        )


def options_from(data: Mapping[str, Any]) -> GenerationOptions:
    """The generation settings of a request object, checked (see Fields.options)."""
    return Fields(data).options()


def content_from(data: Mapping[str, Any], field: str = "content") -> str:
    """A message text of a request object, checked (see Fields.content)."""
    return Fields(data).content(field)
