"""The chat page: one server-rendered shell per conversation URL; the rest happens over the WebSocket."""

import uuid

from csp.decorators import csp_update
from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils.safestring import mark_safe
from django.utils.text import slugify
from django.views.decorators.http import require_GET

from conversations import exports, selectors
from conversations.errors import NotFound
from conversations.models import Message
from conversations.options import FEEDBACK_COMMENT_MAX_CHARS, TITLE_MAX_LENGTH, allowed_models, using_simulator

SITE_NAME = "Chat"  # the browser tab says "<conversation title> · Chat"


# Trusted Types: the page's only HTML sink is the policy that inserts server-sanitized markdown (chat-html).
@csp_update({"require-trusted-types-for": ["'script'"], "trusted-types": ["chat-html"]})
@login_required
def chat_page(request: HttpRequest, conversation_id: uuid.UUID | None = None) -> HttpResponse:
    title = ""
    if conversation_id is not None:
        try:
            conversation = selectors.conversation_get_for_user(user=request.user, conversation_id=str(conversation_id))
        except NotFound:
            raise Http404("No such conversation.") from None
        title = conversation.title
    models, simulator = allowed_models(), using_simulator()
    preferences = selectors.preferences_for(user=request.user)
    config = {
        "conversation": str(conversation_id) if conversation_id else None,
        "models": models,
        # What a new chat starts with (the user's settings page sets them).
        "defaults": {
            "model": preferences.default_model if preferences.default_model in models else models[0],
            "system": preferences.default_system_prompt,
        },
        "simulator": simulator,
        "maxContent": settings.CHAT_MAX_CONTENT_CHARS,
        "maxTitle": TITLE_MAX_LENGTH,
        "feedbackReasons": [[value, str(label)] for value, label in Message.FeedbackReason.choices],
        "maxFeedbackComment": FEEDBACK_COMMENT_MAX_CHARS,
        "siteName": SITE_NAME,
    }
    context = {
        "config": config,
        "models": models,
        "simulator": simulator,
        "max_content": settings.CHAT_MAX_CONTENT_CHARS,
        "title": title,
        "site_name": SITE_NAME,
    }
    return render(request, "chat/index.html", context)


ROLE_LABELS = {"user": "You", "assistant": "Assistant", "tool": "Tool result"}


@require_GET
def shared_page(request: HttpRequest, token: str) -> HttpResponse:
    """A shared snapshot, for anyone with its address; 404 once its owner stopped sharing it."""
    share = selectors.share_get_public(token=token)
    if share is None:
        raise Http404("Nothing is shared at this address.")
    messages = [
        {
            **message,
            "label": ROLE_LABELS.get(message["role"], message["role"]),
            # The chat's own sanitized rendering, kept with the snapshot (conversations.markdown).
            "html": mark_safe(message["html"]),  # noqa: S308
        }
        for message in share.messages
    ]
    context = {"share": share, "messages": messages, "simulator": using_simulator()}
    response = render(request, "chat/shared.html", context)
    # Not for search engines, and the address (a capability) never leaks to the sites its links lead to.
    response["X-Robots-Tag"] = "noindex, nofollow"
    response["Referrer-Policy"] = "no-referrer"
    return response


@login_required
@require_GET
def conversation_export(request: HttpRequest, conversation_id: uuid.UUID, extension: str) -> HttpResponse:
    """The owner's download of a conversation as they see it: Markdown or JSON."""
    if extension not in ("md", "json"):
        raise Http404("Exports are .md or .json.")
    try:
        conversation = selectors.conversation_get_for_user(user=request.user, conversation_id=str(conversation_id))
    except NotFound:
        raise Http404("No such conversation.") from None
    [record] = selectors.conversations_for_export(conversation_ids=[conversation.pk])
    if extension == "md":
        body, content_type = exports.export_markdown([record], review=False), "text/markdown; charset=utf-8"
    else:
        body, content_type = exports.export_json([record], review=False), "application/json"
    response = HttpResponse(body, content_type=content_type)
    name = slugify(conversation.title)[:60] or "conversation"
    response["Content-Disposition"] = f'attachment; filename="{name}.{extension}"'
    return response
