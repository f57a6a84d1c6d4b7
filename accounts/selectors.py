"""Reads about accounts: preferences, invitations, one's own usage."""

import hashlib
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.utils import timezone

from accounts.models import Invitation
from conversations import selectors as conversation_selectors
from conversations.models import UserQuota

USAGE_DAYS = 14


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def invitation_usable(*, key: str) -> Invitation | None:
    """The invitation whose key this is, if it has been neither used nor let expire."""
    return Invitation.objects.filter(
        key_hash=key_hash(key), used_at__isnull=True, expires_at__gt=timezone.now()
    ).first()


@dataclass(frozen=True)
class Usage:
    """One user's use of the models against their limits, as their settings page shows it."""

    tokens_today: int
    daily_quota: int | None  # None: no daily limit
    max_concurrent_streams: int
    days: list[dict[str, Any]]  # per UTC day, newest first: answers, prompt/completion/total tokens

    @property
    def quota_left(self) -> int | None:
        return None if self.daily_quota is None else max(self.daily_quota - self.tokens_today, 0)

    @property
    def quota_percent(self) -> int | None:
        if not self.daily_quota:
            return None
        return min(100, round(100 * self.tokens_today / self.daily_quota))


def usage_for(*, user: Any) -> Usage:
    quota = UserQuota.objects.filter(user_id=user.pk).first()
    since = conversation_selectors.day_start() - timedelta(days=USAGE_DAYS - 1)
    return Usage(
        tokens_today=conversation_selectors.user_tokens_today(user=user),
        daily_quota=quota.daily_tokens if quota is not None else None,
        max_concurrent_streams=(
            quota.max_concurrent_streams
            if quota is not None and quota.max_concurrent_streams is not None
            else settings.CHAT_MAX_CONCURRENT_PER_USER
        ),
        days=conversation_selectors.usage_per_user_per_day(since=since.date(), owner_id=user.pk),
    )
