"""Personal API tokens: `Authorization: Bearer <key>`."""

from typing import Any

from django.contrib.auth.base_user import AbstractBaseUser
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions
from rest_framework.request import Request

from conversations import services
from conversations.models import ApiToken


class ApiTokenAuthentication(authentication.BaseAuthentication):
    """Authenticates a request carrying a personal API token; `request.auth` is then the ApiToken.

    A request without a bearer token is left to the next authenticator (the session); one with a bad, revoked
    or unknown token fails outright rather than falling back to a session.
    """

    keyword = "Bearer"

    def authenticate(self, request: Request) -> tuple[AbstractBaseUser, ApiToken] | None:
        header = authentication.get_authorization_header(request).split()
        if not header or header[0].lower() != self.keyword.lower().encode():
            return None
        if len(header) != 2:
            raise exceptions.AuthenticationFailed("The Authorization header must be 'Bearer <token>'.")
        try:
            key = header[1].decode()
        except UnicodeDecodeError:
            raise exceptions.AuthenticationFailed("The token is not valid.") from None
        token = services.api_token_authenticate(key=key)
        if token is None:
            raise exceptions.AuthenticationFailed("The token is not valid, or it has been revoked.")
        return token.user, token

    def authenticate_header(self, request: Any) -> str:
        return f'{self.keyword} realm="api"'


class ApiTokenScheme(OpenApiAuthenticationExtension):
    """Describes the token in the OpenAPI schema (drf-spectacular finds it by `target_class`)."""

    target_class = ApiTokenAuthentication
    name = "apiToken"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {"type": "http", "scheme": "bearer", "description": "A personal API token (POST /api/v1/tokens/)."}
