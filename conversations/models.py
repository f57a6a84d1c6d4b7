"""Conversations and their messages: the source of truth for everything a user sees."""

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q


class Conversation(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="conversations")
    title = models.CharField(max_length=200, blank=True)
    model = models.CharField(max_length=200)
    system_prompt = models.TextField(blank=True)
    temperature = models.FloatField(null=True, blank=True)
    # Review (staff only): a flag for follow-up and free-form notes; users never see either.
    flagged = models.BooleanField(default=False)
    reviewer_notes = models.TextField(blank=True)
    # Pinned by its owner to the top of their list (the most recently pinned first); null: not pinned.
    pinned_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    # Made through the OpenAI-compatible endpoint: the token that made it, and a hash of how it opened (system
    # prompt and first user message), by which a client's next call with this history finds it again.
    api_token = models.ForeignKey(
        "ApiToken", null=True, blank=True, on_delete=models.SET_NULL, related_name="conversations"
    )
    opening_hash = models.CharField(max_length=64, blank=True)

    class Meta:
        indexes = [
            models.Index(fields=["owner", "-updated_at"], name="conversation_owner_recent"),
            models.Index(
                fields=["owner", "opening_hash"], condition=~Q(opening_hash=""), name="conversation_owner_opening"
            ),
        ]

    def __str__(self) -> str:
        return self.title or str(self.id)


class Message(models.Model):
    class Role(models.TextChoices):
        USER = "user"
        ASSISTANT = "assistant"
        TOOL = "tool"  # a tool's result, sent back by an OpenAI-compatible client (answers `tool_call_id`)

    class Feedback(models.TextChoices):
        UP = "up"
        DOWN = "down"

    class FeedbackReason(models.TextChoices):
        """Why a user rated an answer down (optional; they may say more in a comment)."""

        INCORRECT = "incorrect", "Not correct"
        UNHELPFUL = "unhelpful", "Not helpful"
        INCOMPLETE = "incomplete", "Incomplete or cut short"
        UNSAFE = "unsafe", "Harmful or offensive"
        OTHER = "other", "Something else"

    class Status(models.TextChoices):
        STREAMING = "streaming"
        COMPLETE = "complete"
        CANCELLED = "cancelled"
        ERROR = "error"
        INTERRUPTED = "interrupted"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="messages")
    # Denormalised from the conversation: idempotency keys, quotas and concurrency limits are per user.
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="messages")
    seq = models.PositiveIntegerField(help_text="Position in the conversation, starting at 1.")
    role = models.CharField(max_length=16, choices=Role.choices)
    content = models.TextField(blank=True)
    # The sanitized HTML of a finished answer (markdown rendered once, at the end); empty until then.
    content_html = models.TextField(blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.COMPLETE)
    client_id = models.CharField(max_length=64, blank=True, help_text="The sender's idempotency key.")
    # A hash of the HTTP request that sent it under an explicit Idempotency-Key: a retry must be the same request.
    request_hash = models.CharField(max_length=64, blank=True)

    # Generation parameters and results (assistant messages).
    model = models.CharField(max_length=200, blank=True)
    temperature = models.FloatField(null=True, blank=True)
    max_tokens = models.PositiveIntegerField(null=True, blank=True)
    # Further request parameters for the model server, as an OpenAI-compatible client gave them (stop, seed,
    # top_p, response_format...): sent with the answer's request as they are.
    parameters = models.JSONField(default=dict, blank=True)
    prompt_tokens = models.PositiveIntegerField(null=True, blank=True)
    completion_tokens = models.PositiveIntegerField(null=True, blank=True)
    finish_reason = models.CharField(max_length=32, blank=True)
    tool_calls = models.JSONField(default=list, blank=True)
    tool_call_id = models.CharField(max_length=64, blank=True, help_text="The call a tool message answers.")
    error_code = models.CharField(max_length=64, blank=True)
    error_message = models.TextField(blank=True)
    feedback = models.CharField(max_length=8, choices=Feedback.choices, blank=True)
    # With a thumbs down only: what the user said was wrong, for reviewers (the admin filters by it).
    feedback_reason = models.CharField(max_length=16, choices=FeedbackReason.choices, blank=True)
    feedback_comment = models.TextField(blank=True)
    context_left_out = models.PositiveIntegerField(
        default=0, help_text="Earlier messages left out of this answer's prompt to fit the model's context."
    )

    # A generation holds a lease it renews at each checkpoint; a `streaming` row whose lease ran out belongs
    # to a dead process and is swept to `interrupted`.
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    cancel_requested_at = models.DateTimeField(null=True, blank=True)
    # Regenerate and edit keep the replaced messages for review; the transcript shows only the live ones.
    superseded_at = models.DateTimeField(null=True, blank=True)

    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["conversation", "seq"]
        constraints = [
            models.UniqueConstraint(fields=["conversation", "seq"], name="message_unique_seq"),
            models.UniqueConstraint(
                fields=["owner", "client_id"], condition=~Q(client_id=""), name="message_unique_client_id"
            ),
        ]
        indexes = [
            models.Index(fields=["owner", "status"], condition=Q(status="streaming"), name="message_owner_streaming"),
            models.Index(fields=["lease_expires_at"], condition=Q(status="streaming"), name="message_streaming_lease"),
            models.Index(fields=["owner", "created_at"], name="message_owner_recent"),
        ]

    def __str__(self) -> str:
        return f"{self.role} #{self.seq} ({self.status})"

    @property
    def is_active(self) -> bool:
        return self.superseded_at is None


class ApiToken(models.Model):
    """A personal API token. Only a hash of the key is stored: the key itself is shown once, at creation."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100)
    # The start of the key, kept in clear so a user can tell their tokens apart; it does not authenticate.
    prefix = models.CharField(max_length=16)
    key_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True, help_text="Empty: the token works until revoked.")
    allowed_models = models.JSONField(
        default=list, blank=True, help_text='The models this token may use, e.g. ["gpt-4o-mini"]; empty: every model.'
    )

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"


class UserQuota(models.Model):
    """Per-user limits set by staff; an empty value means the default (no daily limit, CHAT_MAX_CONCURRENT_PER_USER)."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="quota")
    daily_tokens = models.PositiveIntegerField(
        null=True, blank=True, help_text="Prompt and completion tokens per day (UTC); empty for no limit."
    )
    max_concurrent_streams = models.PositiveSmallIntegerField(
        null=True, blank=True, help_text="Answers being written at once; empty for the server default."
    )
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"quota of {self.user}"


class Preferences(models.Model):
    """A user's defaults for new conversations."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="preferences")
    default_model = models.CharField(max_length=200, blank=True, help_text="Empty: the server's first model.")
    default_system_prompt = models.TextField(blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "preferences"

    def __str__(self) -> str:
        return f"Preferences of {self.user}"


class SharedConversation(models.Model):
    """A read-only snapshot of a conversation's transcript, published by its owner at an unguessable address
    (`/s/<token>/`) that anyone with the link may read until the owner stops sharing it (the row is deleted).

    A snapshot, not a view: what was said after sharing is not shown, and neither are replaced versions; the
    messages are kept as they were shown (`role`, `content`, an answer's sanitized `html`, `model`).
    """

    token = models.CharField(max_length=64, unique=True)
    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="shares")
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="shares")
    title = models.CharField(max_length=200, blank=True)
    messages = models.JSONField(default=list)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"Share of {self.title or self.conversation_id}"
