"""The staff review workflow: conversations with their transcripts, flags and notes, exports, usage, quotas.

Everything here is staff-only (Django's admin checks `is_staff` and the model permissions). Messages are
read-only: reviewers see what users and models said, they do not edit it.
"""

from datetime import timedelta
from typing import Any

from django.contrib import admin, messages
from django.db.models import Count, Exists, OuterRef, Q, QuerySet, Subquery, Sum
from django.db.models.functions import Coalesce
from django.http import HttpRequest, HttpResponse
from django.template.loader import render_to_string
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, linebreaks
from django.utils.safestring import SafeString, mark_safe

from conversations import exports, selectors, services
from conversations.models import ApiToken, Conversation, Message, UserQuota
from conversations.payloads import message_payload


def transcript_row(message: Message) -> tuple[Message, dict[str, Any], SafeString]:
    """A message of the transcript: the row, its JSON form (conversations.payloads, as clients get it) and its
    body as the chat shows it: an answer's markdown rendered and sanitized, a user's text as text."""
    payload = message_payload(message)
    if message.role == Message.Role.ASSISTANT:
        # The renderer's sanitized output (saved when the answer ended, or rendered from the text so far).
        return message, payload, mark_safe(payload["html"])  # noqa: S308
    return message, payload, mark_safe(linebreaks(message.content, autoescape=True))  # noqa: S308 - escaped


class LastStatusFilter(admin.SimpleListFilter):
    title = "status of the last answer"
    parameter_name = "last_status"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(value, str(label)) for value, label in Message.Status.choices]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        return queryset.filter(last_status=self.value()) if self.value() else queryset


class FeedbackFilter(admin.SimpleListFilter):
    title = "feedback"
    parameter_name = "feedback"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("up", "has a thumbs up"), ("down", "has a thumbs down"), ("none", "no feedback")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        rated = Message.objects.filter(conversation=OuterRef("pk")).exclude(feedback="")
        if self.value() in ("up", "down"):
            return queryset.filter(Exists(rated.filter(feedback=self.value())))
        if self.value() == "none":
            return queryset.filter(~Exists(rated))
        return queryset


class FeedbackReasonFilter(admin.SimpleListFilter):
    title = "why a thumbs down"
    parameter_name = "feedback_reason"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(value, str(label)) for value, label in Message.FeedbackReason.choices]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if not self.value():
            return queryset
        down = Message.objects.filter(conversation=OuterRef("pk"), feedback_reason=self.value())
        return queryset.filter(Exists(down))


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin):
    list_display = (
        "short_title",
        "owner",
        "model",
        "message_count",
        "tokens",
        "last_status",
        "feedback_summary",
        "flagged",
        "updated",
    )
    list_filter = (
        ("owner", admin.RelatedOnlyFieldListFilter),
        ("api_token", admin.RelatedOnlyFieldListFilter),
        "model",
        LastStatusFilter,
        FeedbackFilter,
        FeedbackReasonFilter,
        "flagged",
        "updated_at",
        "created_at",
    )
    list_select_related = ("owner", "api_token")
    ordering = ("-updated_at",)  # what happened lately first, as reviewers look
    search_fields = ("title", "messages__content", "owner__username")
    date_hierarchy = "updated_at"
    fields = (
        "owner",
        "api_token",
        "title",
        "model",
        "temperature",
        "system_prompt",
        "created_at",
        "updated_at",
        "usage",
        "flagged",
        "reviewer_notes",
        "transcript",
    )
    # Reviewers flag and annotate; everything else is the user's and stays as it was.
    readonly_fields = tuple(name for name in fields if name not in ("flagged", "reviewer_notes"))
    actions = ("export_json", "export_markdown", "flag", "unflag")

    class Media:
        css = {"all": ("conversations/admin.css",)}

    def get_queryset(self, request: HttpRequest) -> QuerySet[Conversation]:
        last_answer = Message.objects.filter(
            conversation=OuterRef("pk"), role=Message.Role.ASSISTANT, superseded_at__isnull=True
        ).order_by("-seq")
        queryset: QuerySet[Conversation] = (
            super()
            .get_queryset(request)
            .annotate(
                message_count=Count("messages", filter=Q(messages__superseded_at__isnull=True)),
                token_count=Coalesce(Sum("messages__prompt_tokens"), 0)
                + Coalesce(Sum("messages__completion_tokens"), 0),
                thumbs_up=Count("messages", filter=Q(messages__feedback=Message.Feedback.UP)),
                thumbs_down=Count("messages", filter=Q(messages__feedback=Message.Feedback.DOWN)),
                last_status=Subquery(last_answer.values("status")[:1]),
            )
        )
        return queryset

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # conversations are the users'

    @admin.display(description="conversation", ordering="title")
    def short_title(self, obj: Conversation) -> SafeString:
        """The title cut to the column with an ellipsis (the whole of it on hover), and "API" when an API
        token made it (the API token filter lists which), so that every column fits at 1280 pixels."""
        title = str(obj)
        cut = format_html('<span class="cut" title="{}">{}</span>', title, title)
        if obj.api_token_id is None:
            return cut
        badge = '{} <span class="api-badge" title="Made with the API token {}">API</span>'
        return format_html(badge, cut, obj.api_token)

    @admin.display(description="updated", ordering="updated_at")
    def updated(self, obj: Conversation) -> str:
        return timezone.localtime(obj.updated_at).strftime("%Y-%m-%d %H:%M")

    @admin.display(description="messages", ordering="message_count")
    def message_count(self, obj: Any) -> int:
        return int(obj.message_count)

    @admin.display(description="tokens", ordering="token_count")
    def tokens(self, obj: Any) -> int:
        return int(obj.token_count)

    @admin.display(description="last answer", ordering="last_status")
    def last_status(self, obj: Any) -> str:
        return str(obj.last_status or "—")

    @admin.display(description="feedback")
    def feedback_summary(self, obj: Any) -> str:
        return f"👍 {obj.thumbs_up} · 👎 {obj.thumbs_down}" if obj.thumbs_up or obj.thumbs_down else "—"

    @admin.display(description="usage")
    def usage(self, obj: Conversation) -> str:
        totals = obj.messages.aggregate(prompt=Sum("prompt_tokens"), completion=Sum("completion_tokens"))
        prompt, completion = totals["prompt"] or 0, totals["completion"] or 0
        return f"{prompt + completion} tokens ({prompt} prompt, {completion} completion)"

    @admin.display(description="transcript")
    def transcript(self, obj: Conversation) -> SafeString:
        rows = [transcript_row(message) for message in obj.messages.order_by("seq")]
        return mark_safe(render_to_string("admin/conversations/transcript.html", {"rows": rows}))  # noqa: S308

    def save_model(self, request: HttpRequest, obj: Conversation, form: Any, change: bool) -> None:
        # Only the review fields are editable; a review is not activity, so `updated_at` stays as it was.
        services.conversation_review(conversation_id=obj.pk, flagged=obj.flagged, reviewer_notes=obj.reviewer_notes)

    def _export(self, queryset: QuerySet[Conversation], body: str, content_type: str, extension: str) -> HttpResponse:
        response = HttpResponse(body, content_type=content_type)
        stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
        response["Content-Disposition"] = f'attachment; filename="conversations-{stamp}.{extension}"'
        return response

    @admin.action(description="Export selected conversations as JSON", permissions=["view"])
    def export_json(self, request: HttpRequest, queryset: QuerySet[Conversation]) -> HttpResponse:
        conversations = selectors.conversations_for_export(conversation_ids=list(queryset.values_list("pk", flat=True)))
        return self._export(queryset, exports.export_json(conversations), "application/json", "json")

    @admin.action(description="Export selected conversations as Markdown", permissions=["view"])
    def export_markdown(self, request: HttpRequest, queryset: QuerySet[Conversation]) -> HttpResponse:
        conversations = selectors.conversations_for_export(conversation_ids=list(queryset.values_list("pk", flat=True)))
        return self._export(queryset, exports.export_markdown(conversations), "text/markdown; charset=utf-8", "md")

    @admin.action(description="Flag selected conversations", permissions=["change"])
    def flag(self, request: HttpRequest, queryset: QuerySet[Conversation]) -> None:
        changed = services.conversations_set_flagged(
            conversation_ids=list(queryset.values_list("pk", flat=True)), flagged=True
        )
        self.message_user(request, f"Flagged {changed} conversation(s).", messages.SUCCESS)

    @admin.action(description="Remove the flag from selected conversations", permissions=["change"])
    def unflag(self, request: HttpRequest, queryset: QuerySet[Conversation]) -> None:
        changed = services.conversations_set_flagged(
            conversation_ids=list(queryset.values_list("pk", flat=True)), flagged=False
        )
        self.message_user(request, f"Unflagged {changed} conversation(s).", messages.SUCCESS)


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "conversation",
        "owner",
        "role",
        "seq",
        "status",
        "model",
        "completion_tokens",
        "feedback",
        "feedback_reason",
        "created_at",
    )
    list_filter = ("role", "status", "model", "feedback", "feedback_reason")
    search_fields = ("content",)
    list_select_related = ("conversation", "owner")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # read-only: the record of what was said


USAGE_MAX_DAYS = 3660


@admin.register(UserQuota)
class UserQuotaAdmin(admin.ModelAdmin):
    list_display = ("user", "daily_tokens", "tokens_today", "max_concurrent_streams", "updated_at")
    search_fields = ("user__username",)
    raw_id_fields = ("user",)
    list_select_related = ("user",)

    @admin.display(description="tokens used today (UTC)")
    def tokens_today(self, obj: UserQuota) -> int:
        return selectors.user_tokens_today(user=obj.user)

    def get_urls(self) -> list[Any]:
        usage = path("usage/", self.admin_site.admin_view(self.usage_view), name="conversations_usage")
        return [usage, *super().get_urls()]

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        extra = {"usage_url": reverse("admin:conversations_usage"), **(extra_context or {})}
        return super().changelist_view(request, extra)

    def usage_view(self, request: HttpRequest) -> HttpResponse:
        """Tokens per user per UTC day, with each user's quota, for the last `days` days (default 30)."""
        if not self.has_view_permission(request):
            return HttpResponse(status=403)
        given = request.GET.get("days", "")
        # At most USAGE_MAX_DAYS: a larger number is a typo (or a probe) and would overflow the date arithmetic.
        days = min(max(int(given), 1), USAGE_MAX_DAYS) if given.isdigit() and len(given) < 10 else 30
        since = selectors.day_start() - timedelta(days=days - 1)
        rows = selectors.usage_per_user_per_day(since=since.date())
        quotas = {q.user_id: q for q in UserQuota.objects.filter(user_id__in={row["owner_id"] for row in rows})}
        for row in rows:
            quota = quotas.get(row["owner_id"])
            row["daily_quota"] = quota.daily_tokens if quota is not None else None
            row["over_quota"] = row["daily_quota"] is not None and row["total_tokens"] >= row["daily_quota"]
        context = {
            **self.admin_site.each_context(request),
            "title": "Token usage per user per day",
            "rows": rows,
            "days": days,
            "opts": self.model._meta,
        }
        return TemplateResponse(request, "admin/conversations/usage.html", context)


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = (
        "name",
        "user",
        "prefix",
        "allowed_models",
        "created_at",
        "last_used_at",
        "expires_at",
        "revoked_at",
    )
    list_filter = ("revoked_at", "expires_at")
    search_fields = ("name", "user__username", "prefix")
    readonly_fields = ("user", "name", "prefix", "created_at", "last_used_at", "expires_at", "revoked_at")
    exclude = ("key_hash",)
    actions = ("revoke",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # a key is shown only to the user who creates it (POST /api/v1/tokens/)

    @admin.action(description="Revoke selected tokens", permissions=["change"])
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiToken]) -> None:
        changed = services.api_tokens_revoke(token_ids=list(queryset.values_list("pk", flat=True)))
        self.message_user(request, f"Revoked {changed} token(s).", messages.SUCCESS)
