"""Routes of the REST API (mounted at /api/v1/) and of the OpenAI-compatible endpoint (mounted at /v1/).

Ids are taken as strings: a malformed id is "not found" in the API's JSON, exactly like someone else's.
"""

from django.urls import path, re_path
from drf_spectacular.views import SpectacularAPIView

from . import docs, openai_compat, views

urlpatterns = [
    path("conversations/", views.ConversationListView.as_view(), name="api-conversations"),
    path("conversations/<str:conversation_id>/", views.ConversationDetailView.as_view(), name="api-conversation"),
    path(
        "conversations/<str:conversation_id>/messages/",
        views.MessageListView.as_view(),
        name="api-conversation-messages",
    ),
    path(
        "conversations/<str:conversation_id>/shares/",
        views.ShareListView.as_view(),
        name="api-conversation-shares",
    ),
    path("shares/<str:share_id>/", views.ShareDetailView.as_view(), name="api-share"),
    path("messages/<str:message_id>/", views.MessageDetailView.as_view(), name="api-message"),
    path("messages/<str:message_id>/stream/", views.MessageStreamView.as_view(), name="api-message-stream"),
    path("messages/<str:message_id>/cancel/", views.MessageCancelView.as_view(), name="api-message-cancel"),
    path("messages/<str:message_id>/feedback/", views.MessageFeedbackView.as_view(), name="api-message-feedback"),
    path("models/", views.ModelsView.as_view(), name="api-models"),
    path("tokens/", views.TokenListView.as_view(), name="api-tokens"),
    path("tokens/<str:token_id>/", views.TokenDetailView.as_view(), name="api-token"),
    path("schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("docs/", docs.api_docs, name="api-docs"),
    re_path(r"", openai_compat.NotFoundView.as_view(), name="api-not-found"),
]

openai_urlpatterns = [
    path("chat/completions", openai_compat.ChatCompletionsView.as_view(), name="openai-chat-completions"),
    path("models", openai_compat.ModelListView.as_view(), name="openai-models"),
    path("models/<path:model>", openai_compat.ModelDetailView.as_view(), name="openai-model"),
    re_path(r"", openai_compat.OpenAINotFoundView.as_view(), name="openai-not-found"),
]
