"""Single sign-on through OpenID Connect, with django-allauth's social accounts (settings: OIDC_*).

Only the identity-provider half of allauth is used: its login and callback views for the provider, and its
account linking. Local accounts keep the product's own pages (login, sign-up per SIGNUP_MODE, password reset),
so allauth's account sign-up is closed here.
"""

from typing import Any

from allauth.account.adapter import DefaultAccountAdapter
from allauth.socialaccount.adapter import DefaultSocialAccountAdapter
from django.conf import settings
from django.http import HttpRequest


class NoAllauthSignupAdapter(DefaultAccountAdapter):  # type: ignore[misc]
    def is_open_for_signup(self, request: HttpRequest) -> bool:
        return False  # local accounts are made by accounts.views.signup, as SIGNUP_MODE says


class SingleSignOnAdapter(DefaultSocialAccountAdapter):  # type: ignore[misc]
    def is_open_for_signup(self, request: HttpRequest, sociallogin: Any) -> bool:
        """A first login through the identity provider creates the account (unless OIDC_CREATE_USERS is off):
        the provider, not SIGNUP_MODE, decides who may come in."""
        return bool(settings.OIDC_CREATE_USERS)


def sso_login_url() -> str | None:
    """Where the login page's single-sign-on button posts, when single sign-on is configured."""
    if not settings.OIDC_SERVER_URL:
        return None
    return f"/accounts/oidc/{settings.OIDC_PROVIDER_ID}/login/"
