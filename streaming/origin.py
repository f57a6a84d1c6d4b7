"""Which pages may open the chat WebSocket: Django's CSRF origin rule, applied to the handshake.

A browser sends the page's origin with every WebSocket handshake, and the session cookie with it whatever the
page. So, as Django's CSRF check does for a POST, the Origin must be exactly the origin the socket was asked
of (scheme, host and port: `https://chat.example.com` for `wss://chat.example.com/ws/chat/`, with the host one
of ALLOWED_HOSTS), or one of CSRF_TRUSTED_ORIGINS (`https://*.example.com` covers the subdomains, as there).
Channels' `AllowedHostsOriginValidator` compares the host only: a page on another port or over plain HTTP of
the same host could open a socket with the user's cookie. A handshake without an Origin is refused too (no
browser sends one; a script can add it).

Behind a proxy that ends TLS, the scheme is the one the proxy reports in SECURE_PROXY_SSL_HEADER, as for Django.
"""

from typing import Any
from urllib.parse import urlsplit

from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.http.request import split_domain_port, validate_host
from django.utils.http import is_same_domain

Application = Any


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin1"))
    return None


def _scheme(scope: dict[str, Any]) -> str:
    proxy = settings.SECURE_PROXY_SSL_HEADER
    if proxy is not None:
        header, secure_value = proxy
        # "HTTP_X_FORWARDED_PROTO" -> b"x-forwarded-proto", as Django maps headers to META.
        name = header.removeprefix("HTTP_").lower().replace("_", "-").encode("latin1")
        reported = _header(scope, name)
        if reported is not None:
            return "https" if reported.split(",")[0].strip() == secure_value else "http"
    return "https" if scope.get("scheme") == "wss" else "http"


def allowed(scope: dict[str, Any]) -> bool:
    """Whether the handshake's Origin may open a socket here."""
    origin = _header(scope, b"origin")
    if not origin or origin == "null":
        return False
    host = _header(scope, b"host") or ""
    domain, _ = split_domain_port(host)
    allowed_hosts = settings.ALLOWED_HOSTS
    if settings.DEBUG and not allowed_hosts:
        allowed_hosts = [".localhost", "127.0.0.1", "[::1]"]  # as Django's own default in DEBUG
    if domain and validate_host(domain, allowed_hosts) and origin == f"{_scheme(scope)}://{host}":
        return True
    if origin in settings.CSRF_TRUSTED_ORIGINS:
        return True
    parsed = urlsplit(origin)
    for trusted in settings.CSRF_TRUSTED_ORIGINS:
        wanted = urlsplit(trusted)
        if "*" in wanted.netloc and parsed.scheme == wanted.scheme and is_same_domain(parsed.netloc, wanted.netloc[1:]):
            return True
    return False


class OriginValidator:
    """Refuses a handshake whose Origin is not allowed (HTTP 403), before any session is looked up."""

    def __init__(self, inner: Application) -> None:
        self.inner = inner

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if scope["type"] == "websocket" and not allowed(scope):
            denier = WebsocketDenier()
            return await denier(scope, receive, send)
        return await self.inner(scope, receive, send)
