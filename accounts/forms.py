"""The forms of the account pages."""

from typing import Any

from django import forms
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.forms import UserCreationForm, UsernameField

from conversations.options import MAX_SYSTEM_CHARS, allowed_models

TOKEN_LIFETIMES = [("", "Until revoked"), ("7", "7 days"), ("30", "30 days"), ("90", "90 days"), ("365", "1 year")]


class PreferencesForm(forms.Form):
    default_model = forms.ChoiceField(label="Default model", required=False)
    default_system_prompt = forms.CharField(
        label="Default system prompt",
        required=False,
        max_length=MAX_SYSTEM_CHARS,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="New conversations start with these instructions; each conversation can change them.",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        models = allowed_models()
        field = self.fields["default_model"]
        assert isinstance(field, forms.ChoiceField)  # noqa: S101 - declared above
        field.choices = [("", f"The server's default ({models[0]})"), *[(m, m) for m in models]]


class TokenForm(forms.Form):
    name = forms.CharField(max_length=100, help_text="What it is for, e.g. “laptop scripts”.")
    lifetime = forms.ChoiceField(choices=TOKEN_LIFETIMES, required=False, label="Expires")
    models = forms.MultipleChoiceField(
        required=False,
        widget=forms.CheckboxSelectMultiple,
        label="Only these models",
        help_text="None ticked: every model.",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        field = self.fields["models"]
        assert isinstance(field, forms.MultipleChoiceField)  # noqa: S101 - declared above
        field.choices = [(model, model) for model in allowed_models()]

    def expires_in_days(self) -> int | None:
        lifetime = self.cleaned_data.get("lifetime") or ""
        return int(lifetime) if lifetime else None


class SignupForm(UserCreationForm):  # type: ignore[type-arg]
    email = forms.EmailField(required=False, help_text="Optional: for resetting a forgotten password.")

    class Meta:
        model = get_user_model()
        fields = ("username", "email")
        field_classes = {"username": UsernameField}


def signup_mode() -> str:
    """Who may create an account: "closed" (staff create users), "invite" (a link from staff) or "open"."""
    return str(settings.SIGNUP_MODE)
