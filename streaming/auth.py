"""Who a WebSocket belongs to: the Django session of its cookie, looked up once, at the handshake.

Channels' `AuthMiddlewareStack` does the same lookup, but through its session middleware, which wraps the
socket's `send` for its whole life (to save a session no socket here ever changes) and runs the lookup on the
process's one thread-sensitive thread, where every handshake queued behind the others. This middleware reads
the cookie, loads the session and its user in one unit of work on the database threads (streaming.aio.orm),
and leaves `send` alone. The scope gets `user` (AnonymousUser without a valid session) and `session`; when
the lookup itself fails (the database away), `user` is None and the consumer asks the client to come back
(close code 4503) instead of the handshake failing with HTTP 500.
"""

import logging
from importlib import import_module
from types import SimpleNamespace
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user
from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.models import AnonymousUser
from django.contrib.sessions.backends.base import SessionBase
from django.http.cookie import parse_cookie

from streaming.aio import orm

log = logging.getLogger(__name__)

Application = Any


def session_and_user(session_key: str | None) -> tuple[SessionBase, AbstractBaseUser | AnonymousUser]:
    session: SessionBase = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
    # Django's own check (the backend, the session's auth hash, SECRET_KEY_FALLBACKS); it only reads
    # `request.session`.
    user = get_user(SimpleNamespace(session=session))  # type: ignore[arg-type]
    return session, user


class SessionAuthMiddleware:
    def __init__(self, inner: Application) -> None:
        self.inner = inner

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        cookies: dict[str, str] = {}
        for name, value in scope.get("headers", ()):
            if name == b"cookie":
                cookies = parse_cookie(value.decode("latin1"))
                break
        session_key = cookies.get(settings.SESSION_COOKIE_NAME)
        session: SessionBase | None = None
        user: AbstractBaseUser | AnonymousUser | None = AnonymousUser()
        try:
            if session_key:
                session, user = await orm(session_and_user)(session_key)
        except Exception:
            log.warning("looking up a WebSocket's session failed", exc_info=True)
            user = None
        return await self.inner({**scope, "session": session, "user": user}, receive, send)
