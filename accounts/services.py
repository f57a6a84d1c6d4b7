"""Writes about accounts: sessions ended, preferences, invitations, new accounts."""

import secrets
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from django.contrib.auth import SESSION_KEY, get_user_model
from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.sessions.models import Session
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from accounts.models import Invitation
from accounts.selectors import key_hash

INVITATION_KEY_BYTES = 24


def user_sessions_end(*, user_ids: Iterable[Any], keep: str | None = None) -> int:
    """Logs these users out of every browser (but the session `keep`): deletes their sessions, and open
    sockets and event streams close as each deletion commits (streaming.access). Returns how many ended.

    Django keeps no index from a user to their sessions, so this reads every session that has not expired; for
    the few thousand sessions of a team's deployment that is a short scan, done rarely.
    """
    wanted = {str(user_id) for user_id in user_ids}
    doomed = []
    for session in Session.objects.filter(expire_date__gt=timezone.now()).iterator(chunk_size=500):
        if session.session_key == keep:
            continue
        owner = session.get_decoded().get(SESSION_KEY)  # {} for a session that cannot be read
        if owner is not None and str(owner) in wanted:
            doomed.append(session.pk)
    # A delete of model instances (not a raw one), so that each deletion is announced.
    deleted, _ = Session.objects.filter(pk__in=doomed).delete()
    return deleted


def invitation_issue(*, invitation: Invitation, created_by: Any, days: int) -> str:
    """Saves a new invitation valid for `days`; returns its key (for the link), which is not stored."""
    key = secrets.token_urlsafe(INVITATION_KEY_BYTES)
    invitation.key_hash = key_hash(key)
    invitation.created_by_id = getattr(created_by, "pk", None)
    invitation.expires_at = timezone.now() + timedelta(days=days)
    invitation.save()
    return key


def account_create(*, username: str, email: str, password: str, invitation_key: str | None) -> AbstractBaseUser:
    """Creates an account (the form has validated the fields); with an invitation, uses it up, once, even when
    two people follow the same link at the same moment."""
    with transaction.atomic():
        invitation = None
        if invitation_key is not None:
            invitation = (
                Invitation.objects.select_for_update()
                .filter(key_hash=key_hash(invitation_key), used_at__isnull=True, expires_at__gt=timezone.now())
                .first()
            )
            if invitation is None:
                raise ValidationError("This invitation has been used or has expired.")
        user: AbstractBaseUser = get_user_model().objects.create_user(username=username, email=email, password=password)
        if invitation is not None:
            updated = Invitation.objects.filter(pk=invitation.pk, used_at__isnull=True).update(
                used_at=timezone.now(), used_by=user
            )
            if not updated:  # SQLite has no row locks: the conditional update is the guard there
                raise ValidationError("This invitation has been used or has expired.")
    return user
