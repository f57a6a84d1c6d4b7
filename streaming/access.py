"""Access that ends while a connection is open: a logout, a password change, a deactivation, an expired or
deleted session, a revoked API token.

Django checks a session or a token once per request; a WebSocket or an event stream is one request that lasts
for hours. Each open connection remembers what let it in (its `Credential`). When that may have changed, a
`gen.access` event goes to the user's group on the bus (every process), and each of the user's connections
checks its own credential again in the database: a socket that is no longer let in is closed with 4401, an
event stream ends with an `unauthenticated` error. Answers being written go on to their end (they are the
user's, paid for and kept); no new one can be started from a closed connection.

What sends the event (connected in StreamingConfig.ready, each once the change has committed):
- a session row deleted (logout in any tab, "log out everywhere", a flush, `clearsessions`),
- a user saved (a password change invalidates the user's other sessions, deactivation every one of them),
- API tokens revoked (conversations.signals.access_changed).
A session's expiry needs no event: each socket checks again when its session expires. After an outage of the
channel layer, when events may have been lost, every connection checks again (the bus's resync).

Sessions are read from the database, so this relies on a session engine that keeps them there (the `db`
engine, which this project uses); with a cache-only engine, logouts would reach open sockets at expiry only.
"""

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.contrib.auth import SESSION_KEY, get_user_model
from django.contrib.sessions.models import Session
from django.db import transaction
from django.db.models.signals import post_delete, post_save
from django.utils import timezone

from conversations.models import ApiToken
from conversations.signals import access_changed
from streaming import events
from streaming.auth import session_and_user

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Credential:
    """What let a connection in: the user's session (browser) or one of their API tokens."""

    user_id: int
    session_key: str | None = None
    token_id: int | None = None


def credential_of(request: Any) -> Credential:
    """The credential of an authenticated DRF request: its API token, or else its session."""
    if isinstance(request.auth, ApiToken):
        return Credential(user_id=request.user.pk, token_id=request.auth.pk)
    session = getattr(request, "session", None)
    return Credential(user_id=request.user.pk, session_key=session.session_key if session is not None else None)


def still_valid(credential: Credential) -> bool:
    """Whether the credential would still let its user in (a unit of work for streaming.aio.orm)."""
    if credential.token_id is not None:
        return (
            ApiToken.objects.filter(
                pk=credential.token_id, user_id=credential.user_id, revoked_at__isnull=True, user__is_active=True
            )
            .exclude(expires_at__lte=timezone.now())
            .exists()
        )
    if credential.session_key is None:
        return False
    # Django's own check, as at the handshake: the session exists and has not expired, its user is still
    # active and its password unchanged (the session's auth hash), for the same user.
    _, user = session_and_user(credential.session_key)
    return bool(user.is_authenticated and user.pk == credential.user_id)


def session_valid_until(credential: Credential) -> datetime | None:
    """Until when a session credential lets its socket in: its session's stored expiry, or None if it no
    longer does (one unit of work for streaming.aio.orm)."""
    if credential.session_key is None or not still_valid(credential):
        return None
    return Session.objects.filter(session_key=credential.session_key).values_list("expire_date", flat=True).first()


def seconds_until(moment: datetime) -> float:
    return max(0.0, (moment - timezone.now()).total_seconds())


# --- what announces a change ------------------------------------------------------------------------------------


def announce(user_ids: list[Any]) -> None:
    """Tells every connection of these users, in every process, to check its credential (after the commit)."""

    def send() -> None:
        for user_id in user_ids:
            try:
                events.publish_from_thread(events.user_group(user_id), events.access_changed())
            except Exception:
                # The layer away: the connections check again when the bus is back (its resync).
                log.warning("announcing a change of access failed", exc_info=True, extra={"user_id": user_id})

    transaction.on_commit(send)


def _session_deleted(sender: Any, instance: Session, **kwargs: Any) -> None:
    try:
        user_id = instance.get_decoded().get(SESSION_KEY)
    except Exception:
        return  # a session that cannot be read let no one in
    if user_id is not None:
        announce([user_id])


def _user_saved(sender: Any, instance: Any, created: bool, update_fields: Any = None, **kwargs: Any) -> None:
    # Every login saves `last_login`, which changes nobody's access.
    if created or (update_fields is not None and set(update_fields) <= {"last_login"}):
        return
    announce([instance.pk])


def _access_changed(sender: Any, user_ids: list[Any], **kwargs: Any) -> None:
    announce(user_ids)


def connect_signals() -> None:
    post_delete.connect(_session_deleted, sender=Session, dispatch_uid="streaming.access.session")
    post_save.connect(_user_saved, sender=get_user_model(), dispatch_uid="streaming.access.user")
    access_changed.connect(_access_changed, dispatch_uid="streaming.access.changed")
