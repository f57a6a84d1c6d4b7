"""The request and response bodies of the API, for the OpenAPI schema.

The bodies themselves are checked and built where the WebSocket's are (conversations.options and
conversations.payloads), so both protocols accept and return the same fields; these classes only describe
them (a test keeps them in step).
"""

from rest_framework import serializers

from conversations.models import Message
from conversations.options import FEEDBACK_COMMENT_MAX_CHARS


class ErrorDetailSchema(serializers.Serializer):
    code = serializers.CharField(help_text="A stable error code (see docs/api.md).")
    message = serializers.CharField(help_text="What went wrong, for a person to read.")
    field = serializers.CharField(required=False, help_text="The request field at fault (validation errors).")


class ErrorSchema(serializers.Serializer):
    error = ErrorDetailSchema()


class UsageSchema(serializers.Serializer):
    prompt_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField()
    total_tokens = serializers.IntegerField()


class AnswerErrorSchema(serializers.Serializer):
    code = serializers.CharField()
    message = serializers.CharField()


class MessageSchema(serializers.Serializer):
    id = serializers.UUIDField()
    conversation = serializers.UUIDField()
    seq = serializers.IntegerField(help_text="Position in the conversation, from 1.")
    role = serializers.ChoiceField(choices=["user", "assistant"])
    content = serializers.CharField(help_text="The text (for an answer being written: as far as saved).")
    html = serializers.CharField(help_text="An answer's sanitized HTML, as far as its finished blocks go.")
    rendered = serializers.IntegerField(help_text="Code points of `content` that `html` covers.")
    status = serializers.ChoiceField(choices=["streaming", "complete", "cancelled", "error", "interrupted"])
    model = serializers.CharField()
    finish_reason = serializers.CharField(allow_null=True)
    usage = UsageSchema(allow_null=True)
    error = AnswerErrorSchema(allow_null=True)
    tool_calls = serializers.ListField(child=serializers.DictField())
    tool_call_id = serializers.CharField(allow_null=True, help_text="For a tool's result: the call it answers.")
    feedback = serializers.ChoiceField(choices=["up", "down"], allow_null=True)
    feedback_reason = serializers.ChoiceField(choices=Message.FeedbackReason.choices, allow_null=True)
    feedback_comment = serializers.CharField(allow_null=True)
    context_left_out = serializers.IntegerField(
        help_text="Earlier messages left out of this answer's prompt to fit the model's context (0: none)."
    )
    created_at = serializers.DateTimeField()


class ConversationSchema(serializers.Serializer):
    id = serializers.UUIDField()
    title = serializers.CharField()
    model = serializers.CharField()
    system = serializers.CharField(help_text="The system prompt.")
    temperature = serializers.FloatField(allow_null=True)
    api_token = serializers.IntegerField(
        allow_null=True, help_text="The id of the API token that made it through /v1; null if made in the chat."
    )
    pinned = serializers.BooleanField(help_text="Pinned by its owner to the top of the list.")
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()
    live = serializers.BooleanField(required=False, help_text="Whether an answer is being written (in lists).")


class ConversationPageSchema(serializers.Serializer):
    results = ConversationSchema(many=True)
    has_more = serializers.BooleanField()
    next_offset = serializers.IntegerField(allow_null=True, help_text="`offset` of the next page, if any.")


class MessagePageSchema(serializers.Serializer):
    results = MessageSchema(many=True)
    has_more = serializers.BooleanField()
    next_before = serializers.IntegerField(allow_null=True, help_text="`before` of the page of older messages.")


class ConversationWriteSchema(serializers.Serializer):
    title = serializers.CharField(required=False, max_length=200, allow_blank=True)
    model = serializers.CharField(required=False, help_text="One of GET /api/v1/models/.")
    temperature = serializers.FloatField(required=False, min_value=0, max_value=2)
    system = serializers.CharField(required=False, max_length=8000, allow_blank=True, help_text="System prompt.")


class ConversationUpdateSchema(ConversationWriteSchema):
    pinned = serializers.BooleanField(required=False, help_text="Pin it to the top of your list, or unpin it.")


class SendSchema(ConversationWriteSchema):
    title = None
    content = serializers.CharField(help_text="The user message: not blank, at most CHAT_MAX_CONTENT_CHARS.")
    stream = serializers.BooleanField(
        default=False, help_text="true: a text/event-stream of the answer; false: wait and return it finished."
    )
    client_id = serializers.CharField(
        required=False, max_length=64, help_text="Idempotency key (or the Idempotency-Key header)."
    )
    max_tokens = serializers.IntegerField(required=False, min_value=1, help_text="For this answer.")


class FeedbackSchema(serializers.Serializer):
    feedback = serializers.ChoiceField(choices=["up", "down"], allow_null=True)
    reason = serializers.ChoiceField(
        choices=Message.FeedbackReason.choices, required=False, allow_null=True, help_text='Only with "down".'
    )
    comment = serializers.CharField(
        required=False, allow_null=True, max_length=FEEDBACK_COMMENT_MAX_CHARS, help_text='Only with "down".'
    )


class ShareSchema(serializers.Serializer):
    id = serializers.IntegerField()
    url = serializers.URLField(help_text="The read-only page anyone with the link may open.")
    title = serializers.CharField()
    created_at = serializers.DateTimeField()


class ModelsSchema(serializers.Serializer):
    models = serializers.ListField(child=serializers.CharField(), help_text="The first is the default.")
    simulator = serializers.BooleanField(help_text="Answers come from the built-in dev simulator.")


class TokenSchema(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    prefix = serializers.CharField(help_text="The start of the key, to tell tokens apart.")
    created_at = serializers.DateTimeField()
    last_used_at = serializers.DateTimeField(allow_null=True)
    expires_at = serializers.DateTimeField(allow_null=True, help_text="Null: works until revoked.")
    models = serializers.ListField(child=serializers.CharField(), help_text="The models it may use; empty: all.")


class TokenCreatedSchema(TokenSchema):
    token = serializers.CharField(help_text="The key: shown this once, never stored.")


class TokenCreateSchema(serializers.Serializer):
    name = serializers.CharField(max_length=100)
    expires_in_days = serializers.IntegerField(
        min_value=1, max_value=3650, required=False, allow_null=True, help_text="Omitted or null: until revoked."
    )
    models = serializers.ListField(
        child=serializers.CharField(), required=False, allow_null=True, help_text="Omitted, null or empty: all."
    )
