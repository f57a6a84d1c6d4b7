"""The account pages: settings (preferences, API tokens, usage, sessions), password change and reset, sign-up."""

from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse_lazy
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST

from accounts import selectors, services
from accounts.forms import PreferencesForm, SignupForm, TokenForm, signup_mode
from accounts.sso import sso_login_url
from conversations import selectors as conversation_selectors
from conversations import services as conversation_services
from conversations.errors import NotFound


def _settings(request: HttpRequest, *, status: int = 200, **forms: Any) -> HttpResponse:
    user = request.user
    preferences = conversation_selectors.preferences_for(user=user)
    initial = {
        "default_model": preferences.default_model,
        "default_system_prompt": preferences.default_system_prompt,
    }
    context = {
        "preferences_form": forms.get("preferences_form") or PreferencesForm(initial=initial),
        "token_form": forms.get("token_form") or TokenForm(),
        "new_key": forms.get("new_key"),
        "tokens": conversation_selectors.api_token_list_for_user(user=user),
        "usage": selectors.usage_for(user=user),
    }
    return render(request, "accounts/settings.html", context, status=status)


@never_cache
@login_required
def settings_page(request: HttpRequest) -> HttpResponse:
    return _settings(request)


@never_cache
@login_required
@require_POST
def preferences_save(request: HttpRequest) -> HttpResponse:
    form = PreferencesForm(request.POST)
    if form.is_valid():
        try:
            conversation_services.preferences_update(user=request.user, **form.cleaned_data)
        except ValidationError as exc:
            for field, errors in exc.message_dict.items():
                for error in errors:
                    form.add_error(field, error)
        else:
            messages.success(request, "Your defaults for new conversations are saved.")
            return redirect("settings")
    return _settings(request, status=400, preferences_form=form)


@never_cache
@login_required
@require_POST
def token_create(request: HttpRequest) -> HttpResponse:
    form = TokenForm(request.POST)
    if not form.is_valid():
        return _settings(request, status=400, token_form=form)
    _, key = conversation_services.api_token_create(
        user=request.user,
        name=form.cleaned_data["name"].strip(),
        expires_in_days=form.expires_in_days(),
        models=form.cleaned_data["models"],
    )
    # Shown in this response only (never stored, never cached): no redirect to a page that could show it again.
    return _settings(request, new_key=key)


@never_cache
@login_required
@require_POST
def token_revoke(request: HttpRequest, token_id: int) -> HttpResponse:
    try:
        conversation_services.api_token_revoke(user=request.user, token_id=str(token_id))
    except NotFound:
        raise Http404("No such token.") from None
    messages.success(request, "The token is revoked; requests using it are refused, and its open streams end.")
    return redirect("settings")


@never_cache
@login_required
@require_POST
def sessions_end_others(request: HttpRequest) -> HttpResponse:
    ended = services.user_sessions_end(user_ids=[request.user.pk], keep=request.session.session_key)
    messages.success(request, f"Signed out of {ended} other browser session(s).")
    return redirect("settings")


class LoginView(auth_views.LoginView):
    """Django's, with a link to sign up when anyone may."""

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        context = super().get_context_data(**kwargs)
        return {
            **context,
            "signup_open": signup_mode() == "open",
            "sso_url": sso_login_url(),
            "sso_name": settings.OIDC_NAME,
        }


class PasswordChangeView(auth_views.PasswordChangeView):
    """Django's, on the product's page; this browser stays signed in, every other session ends."""

    template_name = "accounts/password_change.html"
    success_url = reverse_lazy("settings")

    def form_valid(self, form: Any) -> HttpResponse:
        response = super().form_valid(form)
        # Django's check of the session's password hash already refuses the other sessions; deleting them also
        # tells their open sockets at once, and leaves no dead rows behind.
        services.user_sessions_end(user_ids=[self.request.user.pk], keep=self.request.session.session_key)
        messages.success(self.request, "Your password is changed. Every other browser has been signed out.")
        return response


@never_cache
def signup(request: HttpRequest, key: str | None = None) -> HttpResponse:
    """Creates an account when sign-up is open, or with an invitation's key when it is by invitation."""
    mode = signup_mode()
    if mode == "closed" or (mode == "invite" and key is None):
        raise Http404("Accounts are created by the administrators here.")
    if key is not None and selectors.invitation_usable(key=key) is None:
        return render(request, "accounts/invitation_gone.html", status=410)
    form = SignupForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            user = services.account_create(
                username=form.cleaned_data["username"],
                email=form.cleaned_data["email"],
                password=form.cleaned_data["password1"],
                invitation_key=key,
            )
        except ValidationError:
            return render(request, "accounts/invitation_gone.html", status=410)
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")  # type: ignore[arg-type]
        return redirect("chat")
    return render(request, "accounts/signup.html", {"form": form, "invited": key is not None})
