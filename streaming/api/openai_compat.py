"""An OpenAI-compatible endpoint: `POST /v1/chat/completions` (streaming or not) and `GET /v1/models`.

Programs written for OpenAI's API (its SDKs included) work unchanged with a personal API token as the key.
Each request runs through the same engine as the chat and is recorded as a conversation the user and staff
can see: its system messages become the system prompt, the earlier turns its history, the last user message
and the answer its last turn. Errors take OpenAI's shape (our `code`, plus `type` and `param`), so the SDKs
raise their own exception types: 401 AuthenticationError, 400 BadRequestError, 429 RateLimitError, …
"""

import asyncio
import functools
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.http import StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework import renderers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from conversations import budget, selectors
from conversations.errors import ChatError, ContextLengthExceeded, InvalidRequest
from conversations.models import Message
from conversations.options import MAX_SYSTEM_CHARS, GenerationOptions, allowed_models, content_from, options_from
from conversations.payloads import error_payload, openai_tool_call, usage_payload
from conversations.services import HistoryMessage
from streaming.access import credential_of
from streaming.actions import chat_cancel, chat_delete, chat_import
from streaming.aio import orm, spawn

from .authentication import ApiTokenAuthentication
from .base import AsyncAPIView
from .errors import ApiError, error_body
from .sse import KEEPALIVE, AnswerStream, sse_json, start_and_follow
from .views import _client_id, _flag, _object, _request_hash, permitted_models

ROLES = {"system", "developer", "user", "assistant", "tool"}
# The HTTP status of a completion whose answer failed, by the answer's error code; 502 for the others (the
# model server failed, not the client).
FAILURE_STATUS = {
    "rate_limited": 429,
    "cancelled": 409,
    "max_duration": 504,
    "upstream_stalled": 504,
    "interrupted": 503,
    "internal_error": 500,
}


@dataclass(frozen=True)
class Completion:
    system: str
    history: list[HistoryMessage]
    new: list[HistoryMessage]  # what this call adds: a user message, or tools' results
    options: GenerationOptions
    stream: bool
    include_usage: bool
    parameters: dict[str, Any]  # passed through to the model server (PASSED_THROUGH)


def _number(low: float, high: float, *, integer: bool = False) -> Callable[[Any], bool]:
    def valid(value: Any) -> bool:
        kinds = (int,) if integer else (int, float)
        return isinstance(value, kinds) and not isinstance(value, bool) and low <= value <= high

    return valid


def _stop(value: Any) -> bool:
    if isinstance(value, str):
        return len(value) <= 200
    return isinstance(value, list) and 0 < len(value) <= 4 and all(isinstance(v, str) and len(v) <= 200 for v in value)


def _logit_bias(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and len(value) <= 300
        and all(isinstance(k, str) and k.isdigit() and _number(-100, 100, integer=True)(v) for k, v in value.items())
    )


def _function(value: Any) -> bool:
    return isinstance(value, dict) and isinstance(value.get("name"), str) and 0 < len(value["name"]) <= 64


def _is_function_tool(tool: Any) -> bool:
    return isinstance(tool, dict) and tool.get("type") == "function" and _function(tool.get("function"))


def _tools(value: Any) -> bool:
    return (
        isinstance(value, list)
        and 0 < len(value) <= 128
        and all(
            isinstance(tool, dict) and tool.get("type") == "function" and _function(tool.get("function"))
            for tool in value
        )
    )


def _tool_choice(value: Any) -> bool:
    if value in ("none", "auto", "required"):
        return True
    return isinstance(value, dict) and value.get("type") == "function" and _function(value.get("function"))


def _functions(value: Any) -> bool:
    return isinstance(value, list) and 0 < len(value) <= 128 and all(_function(function) for function in value)


def _function_call(value: Any) -> bool:
    return value in ("none", "auto") or _function(value)


def _response_format(value: Any) -> bool:
    if not isinstance(value, dict) or value.get("type") not in ("text", "json_object", "json_schema"):
        return False
    return value["type"] != "json_schema" or isinstance(value.get("json_schema"), dict)


# The request fields sent on to the model server as they are, each with its check (what it must be): OpenAI's
# sampling and format controls. A null is the same as leaving a field out.
PASSED_THROUGH: dict[str, tuple[Callable[[Any], bool], str]] = {
    "stop": (_stop, "a string or a list of up to 4 strings"),
    "top_p": (_number(0, 1), "a number from 0 to 1"),
    "seed": (_number(-(2**63), 2**63 - 1, integer=True), "an integer"),
    "presence_penalty": (_number(-2, 2), "a number from -2 to 2"),
    "frequency_penalty": (_number(-2, 2), "a number from -2 to 2"),
    "logit_bias": (_logit_bias, "an object of token ids to integers from -100 to 100"),
    "response_format": (_response_format, 'an object of type "text", "json_object" or "json_schema"'),
    "user": (lambda v: isinstance(v, str) and len(v) <= 256, "a string of at most 256 characters"),
    "logprobs": (lambda v: isinstance(v, bool), "true or false"),
    "top_logprobs": (_number(0, 20, integer=True), "an integer from 0 to 20"),
    # Tool calling, as OpenAI defines it (and its legacy `functions`): the model's calls come back in the
    # answer (`delta.tool_calls`, `message.tool_calls`, finish_reason "tool_calls").
    "tools": (_tools, 'a list of up to 128 tools of type "function", each with a function name'),
    "tool_choice": (_tool_choice, '"none", "auto", "required" or a named function'),
    "parallel_tool_calls": (lambda v: isinstance(v, bool), "true or false"),
    "functions": (_functions, "a list of up to 128 functions, each with a name"),
    "function_call": (_function_call, '"none", "auto" or a named function'),
}


def parameters_from(body: dict[str, Any]) -> dict[str, Any]:
    """The pass-through fields of a request, checked; refused with a 400 that names the one at fault."""
    parameters = {}
    for name, (valid, expected) in PASSED_THROUGH.items():
        value = body.get(name)
        if value is None:
            continue
        if not valid(value):
            raise InvalidRequest(f"'{name}' must be {expected}.", field=name)
        parameters[name] = value
    return parameters


def _text(content: Any, field: str) -> str:
    """A message's text: a string, or OpenAI's list of content parts of which only text is supported."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(part, dict) and part.get("type") == "text" for part in content):
        texts = [part.get("text") for part in content]
        if all(isinstance(text, str) for text in texts):
            return "".join(str(text) for text in texts)
    raise InvalidRequest(f"'{field}' must be a string or a list of text parts.", field=field)


def _history_message(role: str, message: dict[str, Any], field: str) -> HistoryMessage:
    """One user, assistant or tool message of a request, checked: an assistant message may call tools (its
    content then may be null), a tool message answers one call (`tool_call_id`)."""
    if role == Message.Role.ASSISTANT and message.get("tool_calls") is not None:
        calls = message["tool_calls"]
        if not isinstance(calls, list) or not calls or not all(_is_call(call) for call in calls):
            raise InvalidRequest(
                f"'{field}.tool_calls' must be a list of calls with an id, type \"function\" and a function name "
                "and arguments.",
                field=f"{field}.tool_calls",
            )
        content = message.get("content")
        text = "" if content is None else _text(content, f"{field}.content")
        tool_calls = tuple(
            {
                "index": index,
                "id": call["id"],
                "name": call["function"]["name"],
                "arguments": call["function"]["arguments"],
            }
            for index, call in enumerate(calls)
        )
        return HistoryMessage(role, text, tool_calls)
    text = _text(message.get("content"), f"{field}.content")
    if role == Message.Role.TOOL:
        call_id = message.get("tool_call_id")
        if not isinstance(call_id, str) or not 0 < len(call_id) <= 64:
            raise InvalidRequest(f"'{field}.tool_call_id' must name the call answered.", field=f"{field}.tool_call_id")
        return HistoryMessage(role, text, tool_call_id=call_id)
    return HistoryMessage(role, text)


def _is_call(call: Any) -> bool:
    return (
        isinstance(call, dict)
        and isinstance(call.get("id"), str)
        and 0 < len(call["id"]) <= 64
        and call.get("type", "function") == "function"
        and _function(call.get("function"))
        and isinstance(call["function"].get("arguments"), str)
    )


def parse_completion(body: dict[str, Any]) -> Completion:
    """A chat completion request, checked with the chat's own rules (models, limits); unknown fields are ignored."""
    if not isinstance(body.get("model"), str):
        raise InvalidRequest("'model' is required.", field="model")
    if body.get("n") not in (None, 1):  # SDKs send null for "the default"
        raise InvalidRequest("Only one choice ('n': 1) is supported.", field="n")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    options = options_from({"model": body["model"], "temperature": body.get("temperature"), "max_tokens": max_tokens})
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty list.", field="messages")
    system: list[str] = []
    turns: list[HistoryMessage] = []
    for index, message in enumerate(messages):
        field = f"messages[{index}]"
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ROLES:
            raise InvalidRequest(f"'{field}.role' must be one of: {', '.join(sorted(ROLES))}.", field=f"{field}.role")
        if role in ("system", "developer"):
            system.append(_text(message.get("content"), f"{field}.content"))
        else:
            turns.append(_history_message(str(role), message, field))
    last = len(messages) - 1
    if not turns or turns[-1].role not in (Message.Role.USER, Message.Role.TOOL):
        raise InvalidRequest("The last message must be a user message or a tool's result.", field=f"messages[{last}]")
    if turns[-1].role == Message.Role.USER:
        try:
            content_from({"content": turns[-1].content})
        except ChatError as exc:
            exc.field = f"messages[{last}].content"
            raise
        new = turns[-1:]
    else:  # the results of the tools the last answer called
        start = len(turns)
        while start > 0 and turns[start - 1].role == Message.Role.TOOL:
            start -= 1
        new = turns[start:]
    system_prompt = "\n\n".join(system)
    if len(system_prompt) > MAX_SYSTEM_CHARS:
        raise InvalidRequest(f"System messages are limited to {MAX_SYSTEM_CHARS} characters.", field="messages")
    _check_context(options, [system_prompt, *(message.content for message in turns)])
    stream_options = body.get("stream_options") or {}
    return Completion(
        system=system_prompt,
        history=turns[: len(turns) - len(new)],
        new=new,
        options=options,
        stream=body.get("stream") is not None and _flag(body, "stream"),
        include_usage=isinstance(stream_options, dict) and stream_options.get("include_usage") is True,
        parameters=parameters_from(body),
    )


def _check_context(options: GenerationOptions, texts: list[str]) -> None:
    """A client's whole prompt must fit the model's context with room for the answer (conversations.budget):
    unlike the chat, whose own history is trimmed to fit, a client's messages are sent as given or refused."""
    model = options.model or ""
    room = budget.context_tokens(model) - budget.answer_reserve(model, options.max_tokens)
    used = sum(budget.estimate_tokens(text) for text in texts if text)
    if used > room:
        raise ContextLengthExceeded(
            f"The messages take about {used} tokens, and this model has room for {room} beside the answer "
            f"(a context of {budget.context_tokens(model)}); send fewer or shorter messages.",
            field="messages",
        )


def _failure(status: str, error: Mapping[str, Any] | None) -> ApiError:
    code = error["code"] if error else status
    message = error["message"] if error else "The answer was stopped before it was finished."
    return ApiError(code, message, status=FAILURE_STATUS.get(code, 502))


def _logprobs(tokens: list[Any] | None) -> dict[str, Any] | None:
    """A choice's `logprobs` as OpenAI shapes it: the tokens' entries, or null when none were asked for."""
    return {"content": tokens, "refusal": None} if tokens else None


class _Envelope:
    """The fields every chunk and completion of one answer repeats."""

    def __init__(self, answer: Message) -> None:
        self.id = f"chatcmpl-{answer.pk.hex}"
        self.created = int(answer.created_at.timestamp())
        self.model = answer.model

    def chunk(
        self, delta: dict[str, Any], finish_reason: str | None = None, logprobs: list[Any] | None = None
    ) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": _logprobs(logprobs), "finish_reason": finish_reason}
        return self.data({"choices": [choice]})

    def usage_chunk(self, usage: dict[str, int] | None) -> bytes:
        return self.data({"choices": [], "usage": usage})

    def data(self, fields: dict[str, Any]) -> bytes:
        body = {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model}
        return f"data: {sse_json({**body, 'system_fingerprint': None, **fields})}\n\n".encode()

    def completion(self, answer: Message, logprobs: list[Any] | None = None) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": answer.content, "refusal": None}
        if answer.tool_calls:
            message["content"] = answer.content or None
            message["tool_calls"] = [openai_tool_call(call) for call in answer.tool_calls]
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": _logprobs(logprobs),
                    "finish_reason": answer.finish_reason or "stop",
                }
            ],
            "usage": usage_payload(answer),
        }


class ChatCompletionsView(AsyncAPIView):
    authentication_classes = [ApiTokenAuthentication]
    renderer_classes = [renderers.JSONRenderer]
    openai_errors = True

    @extend_schema(
        summary="OpenAI-compatible chat completion (streaming or not)",
        description="OpenAI's request and response bodies; see https://platform.openai.com/docs/api-reference/chat.",
        request=OpenApiTypes.OBJECT,
        responses={(200, "application/json"): OpenApiTypes.OBJECT, (200, "text/event-stream"): OpenApiTypes.STR},
        tags=["openai"],
    )
    async def post(self, request: Request) -> Any:
        completion = parse_completion(_object(request.data))
        client_id = _client_id(request, {})
        start = functools.partial(
            chat_import,
            user=request.user,
            client_id=client_id,
            system=completion.system,
            history=completion.history,
            new=completion.new,
            options=completion.options,
            parameters=completion.parameters,
            token_id=request.auth.pk,
            request_hash=_request_hash(request, request.data),
            permitted_models=permitted_models(request),
        )
        follower = await start_and_follow(start, ref=None, credential=credential_of(request))
        if completion.stream:
            try:
                return await self._stream(request, follower, include_usage=completion.include_usage)
            except BaseException as exc:
                if isinstance(exc, asyncio.CancelledError):
                    _abandoned(request, follower)
                await follower.close()
                raise
        try:
            await follower.finish()
        except asyncio.CancelledError:
            _abandoned(request, follower)
            raise
        answer = await orm(selectors.message_get_for_user)(user=request.user, message_id=follower.answer)
        if answer.status != Message.Status.COMPLETE:
            _unanswered(request, follower, text=bool(answer.content))
            raise _failure(answer.status, error_payload(answer.error_code, answer.error_message))
        return self._located(Response(_Envelope(answer).completion(answer, follower.logprobs)), answer)

    async def _stream(self, request: Request, follower: AnswerStream, *, include_usage: bool) -> StreamingHttpResponse:
        """Answers at once, whatever the model's first token waits for: the status, the headers (with the
        message id) and the first chunk (the assistant's role) leave now, then keep-alive comments every
        API_KEEPALIVE_SECONDS until the text comes, so no proxy or load balancer times the request out. What
        the request itself does wrong (validation, limits) was refused before, with its HTTP status; a failure
        of the model from here on is an error object in the stream, which the SDKs raise as APIError."""
        answer = await orm(selectors.message_get_for_user)(user=request.user, message_id=follower.answer)
        events = follower.events(settings.API_KEEPALIVE_SECONDS)
        body = _chunks(request, follower, events, _Envelope(answer), include_usage=include_usage)
        response = StreamingHttpResponse(body, content_type="text/event-stream; charset=utf-8")
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"
        return self._located(response, answer)

    def _located(self, response: Any, answer: Message) -> Any:
        # Where the request was recorded, for the REST API (GET /api/v1/conversations/<id>/messages/).
        response["X-Conversation-Id"] = str(answer.conversation_id)
        response["X-Message-Id"] = str(answer.pk)
        return response


def _abandoned(request: Request, follower: AnswerStream) -> None:
    """The client went away before its answer ended (Django cancels a request whose client disconnects): the
    answer is cancelled, as closing an OpenAI stream stops the model. Its text so far is kept, the upstream
    request is closed and the user's concurrency slot is free again. A conversation the call opened whose
    client saw nothing goes altogether (see _unanswered)."""
    if _unanswered(request, follower, text=follower.offset > 0):
        return
    if follower.answer:
        spawn(chat_cancel(user=request.user, message_id=follower.answer))


def _unanswered(request: Request, follower: AnswerStream, *, text: bool) -> bool:
    """A call that ends before the model gave any text (it failed, or its client left) leaves no empty
    conversation behind: the conversation it opened is deleted (which also stops its answer). One it continued
    keeps its earlier turns and the failed answer, as a chat does."""
    turn = follower.turn
    if text or turn is None or not turn.opened:
        return False
    spawn(chat_delete(user=request.user, conversation_id=str(turn.conversation.pk)))
    return True


async def _chunks(
    request: Request,
    follower: AnswerStream,
    events: AsyncIterator[dict[str, Any] | None],
    envelope: _Envelope,
    *,
    include_usage: bool,
) -> AsyncIterator[bytes]:
    ended = False  # by the answer's end, or by the server (a revoked token): not by the client going away
    tools = _ToolCallFragments()
    try:
        yield envelope.chunk({"role": "assistant", "content": ""})
        async for event in events:
            if event is None:
                yield KEEPALIVE
            elif event["type"] == "error":  # the token was revoked: the stream ends, the answer goes on
                ended = True
                yield envelope.data(error_body(event["code"], event["message"], status=401, openai=True))
                return
            elif event["type"] == "delta" and event["message"] == follower.answer and event["text"]:
                yield envelope.chunk({"content": event["text"]}, logprobs=event.get("logprobs"))
            elif event["type"] == "tool_calls" and event["message"] == follower.answer:
                fragments = tools.deltas(event["tool_calls"])
                if fragments:
                    yield envelope.chunk({"tool_calls": fragments})
            elif event["type"] == "done" and event["message"] == follower.answer:
                ended = True
                if event["status"] != Message.Status.COMPLETE:
                    _unanswered(request, follower, text=follower.offset > 0)
                    failure = _failure(event["status"], event.get("error"))
                    yield envelope.data(error_body(failure.code, failure.message, status=failure.status, openai=True))
                    return
                yield envelope.chunk({}, event.get("finish_reason") or "stop")
                if include_usage:
                    yield envelope.usage_chunk(event.get("usage"))
                yield b"data: [DONE]\n\n"
                return
    finally:
        if not ended:
            _abandoned(request, follower)
        await follower.close()


class _ToolCallFragments:
    """Turns the product's `tool_calls` events (each call whole so far) into OpenAI's `delta.tool_calls`: a
    call's first fragment has its index, id, type and name; later ones only the arguments that are new."""

    def __init__(self) -> None:
        self.sent: dict[int, int] = {}  # index -> length of the arguments sent

    def deltas(self, calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
        fragments = []
        for call in calls:
            index, arguments = call["index"], call["arguments"]
            if index not in self.sent:
                function = {"name": call["name"], "arguments": arguments}
                fragments.append({"index": index, "id": call["id"], "type": "function", "function": function})
            elif len(arguments) > self.sent[index]:
                fragments.append({"index": index, "function": {"arguments": arguments[self.sent[index] :]}})
            self.sent[index] = len(arguments)
        return fragments


def _models_for(request: Request) -> list[str]:
    """The models the request's token may use, of those configured."""
    permitted = permitted_models(request)
    return [model for model in allowed_models() if not permitted or model in permitted]


def _model(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "system"}


class ModelListView(APIView):
    authentication_classes = [ApiTokenAuthentication]
    openai_errors = True

    @extend_schema(
        operation_id="v1_models_list",
        summary="OpenAI-compatible list of models",
        responses={200: OpenApiTypes.OBJECT},
        tags=["openai"],
    )
    def get(self, request: Request) -> Response:
        return Response({"object": "list", "data": [_model(model) for model in _models_for(request)]})


class ModelDetailView(APIView):
    authentication_classes = [ApiTokenAuthentication]
    openai_errors = True

    @extend_schema(
        operation_id="v1_models_retrieve",
        summary="OpenAI-compatible model (models.retrieve)",
        responses={200: OpenApiTypes.OBJECT},
        tags=["openai"],
    )
    def get(self, request: Request, model: str) -> Response:
        if model not in _models_for(request):
            raise ApiError("model_not_found", f"The model {model!r} does not exist here.", status=404)
        return Response(_model(model))


class NotFoundView(APIView):
    """Any other path under /v1/ or /api/v1/: a JSON 404 in the API's shape (never the site's HTML page), for
    every method, before any authentication."""

    authentication_classes: list[Any] = []
    permission_classes: list[Any] = []
    openai_errors = False
    schema = None  # not an endpoint of the schema

    def http_method_not_allowed(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        raise ApiError("not_found", f"No such endpoint: {request.method} {request.path}.", status=404)

    get = post = put = patch = delete = head = options = http_method_not_allowed


class OpenAINotFoundView(NotFoundView):
    openai_errors = True
