"""The chat page: one server-rendered shell per conversation URL; the rest happens over the WebSocket."""

import uuid

from csp.decorators import csp_update
from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render

from conversations import selectors
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
