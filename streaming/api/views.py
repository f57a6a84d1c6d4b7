"""The REST API (`/api/v1/`): conversations, messages, answers streamed as server-sent events, API tokens.

Views translate HTTP to the actions, services and selectors the WebSocket uses and build their bodies with
the payloads every transport shares (conversations.payloads); nothing here decides anything the chat
protocol does not.
"""

import asyncio
import functools
import hashlib
import json
import uuid
from typing import Any

from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import permissions, renderers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from conversations import selectors, services
from conversations.errors import InvalidRequest
from conversations.models import ApiToken, Message, SharedConversation
from conversations.options import (
    MAX_ID_LENGTH,
    TITLE_MAX_LENGTH,
    Fields,
    GenerationOptions,
    allowed_models,
    content_from,
    options_from,
    using_simulator,
)
from conversations.payloads import conversation_payload, message_payload
from conversations.text import clean_title
from streaming.access import credential_of
from streaming.actions import chat_cancel, chat_delete, chat_send, chat_update
from streaming.aio import orm

from . import schemas
from .base import AsyncAPIView
from .sse import AnswerStream, sse_json, sse_response, start_and_follow

# How long POST …/cancel/ waits for the answer to end before answering 202 with it still `streaming`.
CANCEL_WAIT_SECONDS = 10.0
CONVERSATION_PAGE = 20
MESSAGE_PAGE = 50
MAX_PAGE = 100

ERRORS = {
    400: OpenApiResponse(schemas.ErrorSchema, description="invalid_request, invalid_json, content_too_long, …"),
    401: OpenApiResponse(schemas.ErrorSchema, description="not_authenticated, authentication_failed"),
    404: OpenApiResponse(schemas.ErrorSchema, description="not_found: missing, or someone else's"),
}


class EventStreamRenderer(renderers.BaseRenderer):
    """Lets a client that accepts only `text/event-stream` reach the streaming views; their errors then come as
    one protocol `error` event (with the HTTP status), the rest of their answers are streamed directly."""

    media_type = "text/event-stream"
    format = "sse"
    charset = "utf-8"

    def render(self, data: Any, accepted_media_type: str | None = None, renderer_context: Any = None) -> bytes:
        error = data.get("error") if isinstance(data, dict) else None
        event = {"type": "error", **error} if isinstance(error, dict) else data
        return f"event: error\ndata: {sse_json(event)}\n\n".encode()


class SessionOnly(permissions.BasePermission):
    """Tokens are managed from a logged-in session: a token cannot mint or revoke tokens."""

    message = "API tokens are managed from a logged-in browser session, not with a token."

    def has_permission(self, request: Request, view: Any) -> bool:
        return request.auth is None


# --- request parsing (the protocol's own checks, plus what only HTTP has) ---------------------------------------


def _object(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    return data


def _title(data: dict[str, Any]) -> str | None:
    title = data.get("title")
    if title is not None and (not isinstance(title, str) or len(title) > TITLE_MAX_LENGTH):
        raise InvalidRequest(f"'title' must be a string of at most {TITLE_MAX_LENGTH} characters.", field="title")
    return clean_title(title) if title is not None else None


def _flag(data: dict[str, Any], field: str) -> bool:
    value = data.get(field, False)
    if not isinstance(value, bool):
        raise InvalidRequest(f"'{field}' must be true or false.", field=field)
    return value


def permitted_models(request: Request) -> list[str]:
    """The models the request's API token may use (empty: all, and for a session)."""
    return list(request.auth.allowed_models) if isinstance(request.auth, ApiToken) else []


def _request_hash(request: Request, data: Any) -> str:
    """With an explicit idempotency key, a hash of what the request asks (its path and JSON body, less the key
    itself): a retry under the same key must ask the same, or is refused (422). Without a key, ''."""
    if request.headers.get("Idempotency-Key") is None and not (isinstance(data, dict) and "client_id" in data):
        return ""
    asked = {name: value for name, value in data.items() if name != "client_id"} if isinstance(data, dict) else data
    canonical = json.dumps([request.path, asked], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _client_id(request: Request, data: dict[str, Any]) -> str:
    """The idempotency key: the `Idempotency-Key` header or the `client_id` field (the WebSocket's `id`)."""
    keys = {"Idempotency-Key": request.headers.get("Idempotency-Key"), "client_id": data.get("client_id")}
    for field, key in keys.items():
        if key is not None and (not isinstance(key, str) or not 1 <= len(key) <= MAX_ID_LENGTH):
            raise InvalidRequest(f"'{field}' must be a string of 1 to {MAX_ID_LENGTH} characters.", field=field)
    header, body = keys["Idempotency-Key"], keys["client_id"]
    if header is not None and body is not None and header != body:
        raise InvalidRequest("'client_id' and the Idempotency-Key header differ.", field="client_id")
    # Without a key a send is not idempotent; the random one only fills the column.
    return str(header or body or uuid.uuid4().hex)


def _query_int(request: Request, name: str, *, default: int | None, low: int, high: int) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise InvalidRequest(f"'{name}' must be an integer from {low} to {high}.", field=name)
    return value


def _resume_offset(request: Request) -> int:
    """Where a client resumes: `Last-Event-ID` (what an EventSource sends back), else `?offset=`, else 0."""
    field, raw = "Last-Event-ID", request.headers.get("Last-Event-ID")
    if raw is None:
        field, raw = "offset", request.query_params.get("offset", "0")
    if not raw.isdigit():
        raise InvalidRequest(f"'{field}' must be a non-negative integer (an offset into the message).", field=field)
    return int(raw)


# --- conversations ------------------------------------------------------------------------------------------


class ConversationListView(APIView):
    @extend_schema(
        operation_id="conversations_list",
        summary="List conversations, most recently active first",
        parameters=[
            OpenApiParameter("search", str, description="Matches titles and message texts."),
            OpenApiParameter("source", str, enum=["chat", "api"], description="Made in the chat, or through /v1."),
            OpenApiParameter("offset", int),
            OpenApiParameter("limit", int, description=f"1 to {MAX_PAGE}, default {CONVERSATION_PAGE}."),
        ],
        responses={200: schemas.ConversationPageSchema, **ERRORS},
    )
    def get(self, request: Request) -> Response:
        query = request.query_params.get("search", "").strip()[:200]
        if "\x00" in query:  # PostgreSQL refuses NUL in text (a query string can spell it: %00)
            raise InvalidRequest("'search' must not contain NUL characters.", field="search")
        source = request.query_params.get("source", "")
        if source not in ("", "chat", "api"):
            raise InvalidRequest("'source' must be chat or api.", field="source")
        offset = _query_int(request, "offset", default=0, low=0, high=2**31) or 0
        limit = _query_int(request, "limit", default=CONVERSATION_PAGE, low=1, high=MAX_PAGE) or CONVERSATION_PAGE
        page, has_more = selectors.conversation_list_for_user(
            user=request.user, query=query, offset=offset, limit=limit, source=source
        )
        return Response(
            {
                "results": [conversation_payload(conversation, live=live) for conversation, live in page],
                "has_more": has_more,
                "next_offset": offset + limit if has_more else None,
            }
        )

    @extend_schema(
        summary="Create an empty conversation",
        request=schemas.ConversationWriteSchema,
        responses={201: schemas.ConversationSchema, **ERRORS},
    )
    def post(self, request: Request) -> Response:
        data = _object(request.data)
        conversation = services.conversation_create(
            user=request.user, title=_title(data) or "", options=options_from(data)
        )
        return Response(conversation_payload(conversation), status=201)


class ConversationDetailView(AsyncAPIView):
    @extend_schema(
        operation_id="conversations_get",
        summary="Get a conversation",
        responses={200: schemas.ConversationSchema, **ERRORS},
    )
    async def get(self, request: Request, conversation_id: str) -> Response:
        conversation = await orm(selectors.conversation_get_for_user)(
            user=request.user, conversation_id=conversation_id
        )
        return Response(conversation_payload(conversation))

    @extend_schema(
        summary="Change a conversation's title, model, temperature, system prompt or pin",
        description="Absent or null fields keep their value; the settings apply from the next answer on.",
        request=schemas.ConversationUpdateSchema,
        responses={200: schemas.ConversationSchema, **ERRORS},
    )
    async def patch(self, request: Request, conversation_id: str) -> Response:
        data = _object(request.data)
        conversation = await chat_update(
            user=request.user,
            conversation_id=conversation_id,
            title=_title(data),
            options=options_from(data),
            pinned=_flag(data, "pinned") if "pinned" in data else None,
        )
        return Response(conversation_payload(conversation))

    @extend_schema(
        summary="Delete a conversation (an answer being written in it is stopped)",
        responses={204: None, **ERRORS},
    )
    async def delete(self, request: Request, conversation_id: str) -> Response:
        await chat_delete(user=request.user, conversation_id=conversation_id)
        return Response(status=204)


# --- messages and answers -----------------------------------------------------------------------------------


class MessageListView(AsyncAPIView):
    renderer_classes = [renderers.JSONRenderer, EventStreamRenderer]

    @extend_schema(
        summary="List a conversation's messages (the live transcript), a page at a time",
        description="Without `before`: the latest page. Each page is oldest first; `next_before` asks for older.",
        parameters=[
            OpenApiParameter("before", int, description="Only messages with a smaller `seq`."),
            OpenApiParameter("limit", int, description=f"1 to {MAX_PAGE}, default {MESSAGE_PAGE}."),
        ],
        responses={200: schemas.MessagePageSchema, **ERRORS},
    )
    async def get(self, request: Request, conversation_id: str) -> Response:
        before = _query_int(request, "before", default=None, low=1, high=2**31)
        limit = _query_int(request, "limit", default=MESSAGE_PAGE, low=1, high=MAX_PAGE) or MESSAGE_PAGE

        def page() -> tuple[list[Message], bool]:
            conversation = selectors.conversation_get_for_user(user=request.user, conversation_id=conversation_id)
            return selectors.conversation_messages_page(conversation=conversation, before=before, limit=limit)

        messages, has_more = await orm(page)()
        return Response(
            {
                "results": [message_payload(message) for message in messages],
                "has_more": has_more,
                "next_before": messages[0].seq if has_more and messages else None,
            }
        )

    @extend_schema(
        summary="Send a message and get the answer, streamed or whole",
        description=(
            "`stream: true` answers `text/event-stream`: `message` (yours), `message` (the answer), `delta`s, "
            "`done`; each event's `id` is the answer's length so far, for `Last-Event-ID`. `stream: false` waits "
            "and returns the finished answer. A repeated idempotency key returns the first attempt's answer."
        ),
        request=schemas.SendSchema,
        parameters=[OpenApiParameter("Idempotency-Key", str, OpenApiParameter.HEADER)],
        responses={
            (200, "application/json"): schemas.MessageSchema,
            (200, "text/event-stream"): OpenApiTypes.STR,
            409: OpenApiResponse(schemas.ErrorSchema, description="conversation_busy"),
            429: OpenApiResponse(schemas.ErrorSchema, description="too_many_generations, quota_exceeded"),
            **ERRORS,
        },
    )
    async def post(self, request: Request, conversation_id: str) -> Any:
        data = _object(request.data)
        content, options = content_from(data), options_from(data)
        stream, client_id = _flag(data, "stream"), _client_id(request, data)
        return await _answer(
            request,
            stream=stream,
            client_id=client_id,
            conversation_id=conversation_id,
            content=content,
            options=options,
            request_hash=_request_hash(request, data),
        )


async def _answer(
    request: Request,
    *,
    stream: bool,
    client_id: str,
    conversation_id: str,
    content: str,
    options: GenerationOptions,
    request_hash: str,
) -> Any:
    """Sends, then streams the answer (the response owns the follower from then on) or waits for its end."""
    start = functools.partial(
        chat_send,
        user=request.user,
        client_id=client_id,
        conversation_id=conversation_id,
        content=content,
        options=options,
        request_hash=request_hash,
        permitted_models=permitted_models(request),
    )
    follower = await start_and_follow(start, ref=client_id, credential=credential_of(request))
    if stream:
        return sse_response(follower)
    await follower.finish()
    answer = await orm(selectors.message_get_for_user)(user=request.user, message_id=follower.answer)
    return Response(message_payload(answer))


class MessageDetailView(APIView):
    @extend_schema(summary="Get a message", responses={200: schemas.MessageSchema, **ERRORS})
    def get(self, request: Request, message_id: str) -> Response:
        message = selectors.message_get_for_user(user=request.user, message_id=message_id)
        return Response(message_payload(message))


class MessageStreamView(AsyncAPIView):
    renderer_classes = [renderers.JSONRenderer, EventStreamRenderer]

    @extend_schema(
        summary="Stream a message from an offset (resume)",
        description=(
            "The text from `Last-Event-ID` (or `?offset=`) on, exactly once: for an answer being written, a "
            "`delta` with what it has, then live `delta`s and `done`; for a finished message, the rest and `done`."
        ),
        parameters=[
            OpenApiParameter("offset", int),
            OpenApiParameter("Last-Event-ID", int, OpenApiParameter.HEADER, description="Wins over `offset`."),
        ],
        responses={(200, "text/event-stream"): OpenApiTypes.STR, **ERRORS},
    )
    async def get(self, request: Request, message_id: str) -> Any:
        offset = _resume_offset(request)
        follower = await AnswerStream().open(credential_of(request))
        try:
            await follower.resume(user=request.user, message_id=message_id, offset=offset)
        except BaseException:
            await follower.close()
            raise
        return sse_response(follower)


class MessageCancelView(AsyncAPIView):
    @extend_schema(
        summary="Stop an answer being written",
        description=(
            "Closes the upstream request wherever the answer runs and keeps the text so far. Answers 200 with "
            f"the answer once it has ended (at once, normally), or 202 if it has not within {CANCEL_WAIT_SECONDS:g} s."
        ),
        request=None,
        responses={200: schemas.MessageSchema, 202: schemas.MessageSchema, **ERRORS},
    )
    async def post(self, request: Request, message_id: str) -> Response:
        get = orm(selectors.message_get_for_user)
        message = await get(user=request.user, message_id=message_id)
        follower = await AnswerStream().open()
        try:
            # Subscribed before the cancel, so its `done` cannot slip by.
            await follower.watcher.follow(str(message.conversation_id))
            message = await chat_cancel(user=request.user, message_id=message_id)
            if message.status == Message.Status.STREAMING:
                await follower.watch_until_done(message)
                try:
                    async with asyncio.timeout(CANCEL_WAIT_SECONDS):
                        await follower.wait()
                except TimeoutError:
                    pass
        finally:
            await follower.close()
        message = await get(user=request.user, message_id=message_id)
        ended = message.status != Message.Status.STREAMING
        return Response(message_payload(message), status=200 if ended else 202)


class MessageFeedbackView(APIView):
    @extend_schema(
        summary="Rate an answer (thumbs up or down), or clear the rating with null",
        request=schemas.FeedbackSchema,
        responses={200: schemas.MessageSchema, **ERRORS},
    )
    def post(self, request: Request, message_id: str) -> Response:
        rating = Fields(_object(request.data)).rating("feedback", Message.FeedbackReason.values)
        message = services.message_set_feedback(user=request.user, message_id=message_id, rating=rating)
        return Response(message_payload(message))


def _share_payload(request: Request, share: SharedConversation) -> dict[str, Any]:
    url = request.build_absolute_uri(reverse("shared", kwargs={"token": share.token}))
    return {"id": share.pk, "url": url, "title": share.title, "created_at": share.created_at}


class ShareListView(APIView):
    @extend_schema(
        summary="The links at which this conversation is shared",
        responses={200: schemas.ShareSchema(many=True), **ERRORS},
    )
    def get(self, request: Request, conversation_id: str) -> Response:
        shares = selectors.shares_for_conversation(user=request.user, conversation_id=conversation_id)
        return Response([_share_payload(request, share) for share in shares])

    @extend_schema(
        summary="Share a read-only snapshot of the conversation at a new unguessable link",
        description="Anyone with the link can read the transcript as it is now, without an account, until the "
        "share is deleted. 409 while an answer is being written.",
        request=None,
        responses={201: schemas.ShareSchema, **ERRORS},
    )
    def post(self, request: Request, conversation_id: str) -> Response:
        share = services.share_create(user=request.user, conversation_id=conversation_id)
        return Response(_share_payload(request, share), status=201)


class ShareDetailView(APIView):
    @extend_schema(summary="Stop sharing: the link answers 404 from now on", responses={204: None, **ERRORS})
    def delete(self, request: Request, share_id: str) -> Response:
        services.share_revoke(user=request.user, share_id=share_id)
        return Response(status=204)


class ModelsView(APIView):
    @extend_schema(summary="The models a conversation may use", responses={200: schemas.ModelsSchema, **ERRORS})
    def get(self, request: Request) -> Response:
        return Response({"models": allowed_models(), "simulator": using_simulator()})


# --- API tokens ---------------------------------------------------------------------------------------------


def _token_payload(token: ApiToken) -> dict[str, Any]:
    return {
        "id": token.pk,
        "name": token.name,
        "prefix": token.prefix,
        "created_at": token.created_at.isoformat(),
        "last_used_at": token.last_used_at.isoformat() if token.last_used_at else None,
        "expires_at": token.expires_at.isoformat() if token.expires_at else None,
        "models": token.allowed_models,
    }


class TokenListView(APIView):
    permission_classes = [permissions.IsAuthenticated, SessionOnly]

    @extend_schema(summary="List your API tokens (never their keys)", responses={200: schemas.TokenSchema(many=True)})
    def get(self, request: Request) -> Response:
        return Response([_token_payload(token) for token in selectors.api_token_list_for_user(user=request.user)])

    @extend_schema(
        summary="Create an API token; its key is in this response only",
        request=schemas.TokenCreateSchema,
        responses={201: schemas.TokenCreatedSchema, **ERRORS},
    )
    def post(self, request: Request) -> Response:
        data = _object(request.data)
        name, days, models = data.get("name"), data.get("expires_in_days"), data.get("models") or []
        if not isinstance(models, list) or not all(isinstance(model, str) for model in models):
            raise InvalidRequest("'models' must be a list of model names, or null for every model.", field="models")
        if not isinstance(name, str) or not name.strip() or len(name) > 100:
            raise InvalidRequest("'name' must be a non-blank string of at most 100 characters.", field="name")
        if days is not None and (not isinstance(days, int) or isinstance(days, bool) or not 1 <= days <= 3650):
            raise InvalidRequest(
                "'expires_in_days' must be a whole number from 1 to 3650, or null.", field="expires_in_days"
            )
        token, key = services.api_token_create(
            user=request.user, name=name.strip(), expires_in_days=days, models=models
        )
        return Response({**_token_payload(token), "token": key}, status=201)


class TokenDetailView(APIView):
    permission_classes = [permissions.IsAuthenticated, SessionOnly]

    @extend_schema(summary="Revoke an API token", responses={204: None, **ERRORS})
    def delete(self, request: Request, token_id: str) -> Response:
        services.api_token_revoke(user=request.user, token_id=token_id)
        return Response(status=204)
