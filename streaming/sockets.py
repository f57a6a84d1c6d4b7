"""How many WebSockets each user has open, across every process: the per-user connection limit.

With Redis (REDIS_URL), each user has a sorted set of their sockets' channel names scored by an expiry
time, so a socket of a process that died without saying goodbye stops counting after SOCKET_TTL seconds;
a socket renews its entry whenever it hears from its client (at most every RENEW_SECONDS). Without Redis
there is one process, and a set in memory is exact.
"""

import asyncio
import logging
import time
from collections import defaultdict

import redis.asyncio as redis
from django.conf import settings

log = logging.getLogger(__name__)

SOCKET_TTL = 120.0  # seconds a socket counts without news from its client (clients ping every 25 s)
RENEW_SECONDS = 30.0


class SocketRegistry:
    """Claims, renews and releases a user's sockets; `claim` refuses beyond CHAT_MAX_SOCKETS_PER_USER."""

    def __init__(self) -> None:
        self._local: defaultdict[str, set[str]] = defaultdict(set)
        self._clients: dict[asyncio.AbstractEventLoop, redis.Redis] = {}

    def _redis(self) -> redis.Redis | None:
        if not settings.REDIS_URL:
            return None
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            for stale in [other for other in self._clients if other.is_closed()]:
                del self._clients[stale]
            client = self._clients[loop] = redis.Redis.from_url(
                settings.REDIS_URL, socket_timeout=5, socket_connect_timeout=5
            )
        return client

    def _key(self, user_id: object) -> str:
        return f"{settings.CHANNEL_PREFIX}:sockets:{user_id}"

    async def claim(self, user_id: object, socket: str) -> bool:
        """Counts `socket` for the user; False (and not counted) when they already have the maximum."""
        limit = settings.CHAT_MAX_SOCKETS_PER_USER
        client = self._redis()
        if client is None:
            sockets = self._local[str(user_id)]
            if len(sockets) >= limit:
                return False
            sockets.add(socket)
            return True
        key, now = self._key(user_id), time.time()
        try:
            async with client.pipeline(transaction=True) as pipe:
                pipe.zremrangebyscore(key, "-inf", now)
                pipe.zadd(key, {socket: now + SOCKET_TTL})
                pipe.zcard(key)
                pipe.expire(key, int(SOCKET_TTL))
                _, _, count, _ = await pipe.execute()
            if count > limit:
                await client.zrem(key, socket)
                return False
        except redis.RedisError:
            # Counting is a guard against abuse, not a reason to refuse everyone while Redis is away.
            log.warning("counting sockets failed; allowing the connection", exc_info=True)
        return True

    async def renew(self, user_id: object, socket: str) -> None:
        client = self._redis()
        if client is None:
            return
        try:
            await client.zadd(self._key(user_id), {socket: time.time() + SOCKET_TTL}, xx=True)
        except redis.RedisError:
            log.warning("renewing a socket's count failed", exc_info=True)

    async def release(self, user_id: object, socket: str) -> None:
        client = self._redis()
        if client is None:
            sockets = self._local[str(user_id)]
            sockets.discard(socket)
            if not sockets:
                del self._local[str(user_id)]
            return
        try:
            await client.zrem(self._key(user_id), socket)
        except redis.RedisError:
            log.warning("releasing a socket's count failed; it expires by itself", exc_info=True)


registry = SocketRegistry()
