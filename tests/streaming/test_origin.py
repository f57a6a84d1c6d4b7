"""The WebSocket Origin check (streaming.origin): scheme, host and port must match, as for Django's CSRF."""

import pytest
from channels.testing import WebsocketCommunicator

from chatproject.asgi import application

pytestmark = pytest.mark.django_db(transaction=True)


async def handshake(origin: str | None, host: str = "chat.example.com", **scope: object) -> bool:
    headers = [(b"host", host.encode())]
    if origin is not None:
        headers.append((b"origin", origin.encode()))
    communicator = WebsocketCommunicator(application, "/ws/chat/", headers=headers)
    communicator.scope.update(scope)
    connected, _ = await communicator.connect()
    await communicator.disconnect()
    return bool(connected)


@pytest.fixture(autouse=True)
def hosts(settings):
    settings.ALLOWED_HOSTS = ["chat.example.com", "127.0.0.1"]
    settings.CSRF_TRUSTED_ORIGINS = ["https://portal.example.org", "https://*.trusted.example"]
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")


@pytest.mark.parametrize(
    ("origin", "host", "scope", "accepted"),
    [
        ("http://chat.example.com", "chat.example.com", {}, True),
        ("https://chat.example.com", "chat.example.com", {"scheme": "wss"}, True),
        ("http://127.0.0.1:8000", "127.0.0.1:8000", {}, True),
        # another port of the same host
        ("http://127.0.0.1:9999", "127.0.0.1:8000", {}, False),
        ("http://chat.example.com:8080", "chat.example.com", {}, False),
        # another scheme: a plain-HTTP page of the host opening the socket of its HTTPS site
        ("http://chat.example.com", "chat.example.com", {"scheme": "wss"}, False),
        ("https://chat.example.com", "chat.example.com", {}, False),
        # another host, or a look-alike
        ("http://evil.example.com", "chat.example.com", {}, False),
        ("http://chat.example.com.evil.test", "chat.example.com", {}, False),
        # a Host that is not allowed, even when the Origin matches it
        ("http://intruder.test", "intruder.test", {}, False),
        # no Origin, or an opaque one (a sandboxed frame, a file:// page)
        (None, "chat.example.com", {}, False),
        ("null", "chat.example.com", {}, False),
        # CSRF_TRUSTED_ORIGINS: exact, and subdomains by wildcard, with their scheme
        ("https://portal.example.org", "chat.example.com", {}, True),
        ("http://portal.example.org", "chat.example.com", {}, False),
        ("https://eu.trusted.example", "chat.example.com", {}, True),
        ("http://eu.trusted.example", "chat.example.com", {}, False),
    ],
)
async def test_origin_variants(origin, host, scope, accepted):
    assert await handshake(origin, host, **scope) is accepted


async def test_behind_a_tls_proxy_the_scheme_is_the_one_it_reports():
    proxied = {"headers": [(b"host", b"chat.example.com"), (b"x-forwarded-proto", b"https")]}
    communicator = WebsocketCommunicator(application, "/ws/chat/", headers=[])
    communicator.scope["headers"] = [*proxied["headers"], (b"origin", b"https://chat.example.com")]
    connected, _ = await communicator.connect()
    await communicator.disconnect()
    assert connected
    communicator = WebsocketCommunicator(application, "/ws/chat/", headers=[])
    communicator.scope["headers"] = [*proxied["headers"], (b"origin", b"http://chat.example.com")]
    connected, _ = await communicator.connect()
    assert not connected
