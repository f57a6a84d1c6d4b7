"""The user admin with "log out everywhere", and invitations (when sign-up is by invitation)."""

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html

from accounts import services
from accounts.models import Invitation

User = get_user_model()


class AccountAdmin(UserAdmin):  # type: ignore[type-arg]
    actions = ("log_out_everywhere",)

    @admin.action(description="Log selected users out everywhere", permissions=["change"])
    def log_out_everywhere(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        ended = services.user_sessions_end(user_ids=list(queryset.values_list("pk", flat=True)))
        self.message_user(
            request, f"Ended {ended} session(s); their open chats are closed as signed out.", messages.SUCCESS
        )


admin.site.unregister(User)
admin.site.register(User, AccountAdmin)


class InvitationForm(forms.ModelForm):  # type: ignore[type-arg]
    valid_days = forms.IntegerField(min_value=1, max_value=90, initial=7, help_text="How long the link works.")

    class Meta:
        model = Invitation
        fields = ("note",)


@admin.register(Invitation)
class InvitationAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """Staff create an invitation and send its link (shown once); it makes one account, when SIGNUP_MODE=invite."""

    list_display = ("__str__", "created_by", "created_at", "expires_at", "used_at", "used_by")
    list_filter = ("used_at", "expires_at")
    search_fields = ("note", "used_by__username")
    readonly_fields = ("created_by", "created_at", "expires_at", "used_at", "used_by")

    def get_form(self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any) -> Any:
        if obj is None:
            kwargs["form"] = InvitationForm
        return super().get_form(request, obj, change=change, **kwargs)

    def get_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return ("note", "valid_days") if obj is None else ("note", *self.readonly_fields)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return () if obj is None else self.readonly_fields

    def save_model(self, request: HttpRequest, obj: Invitation, form: Any, change: bool) -> None:
        if change:
            obj.save(update_fields=["note"])
            return
        key = services.invitation_issue(invitation=obj, created_by=request.user, days=form.cleaned_data["valid_days"])
        link = request.build_absolute_uri(reverse("signup-invited", args=[key]))
        self.message_user(
            request, format_html("Send this link (it is shown only now): <code>{}</code>", link), messages.SUCCESS
        )
