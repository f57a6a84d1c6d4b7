"""One daphne process against two, both behind nginx on Redis: does the second process carry its share?

Uses the deployment harness (tests/deploy/harness.py): a private Redis, daphne started with the systemd
unit's command line, nginx with deploy/nginx.conf.
"""

from collections.abc import Awaitable, Callable
from typing import Any

from bench import servers
from tests.deploy.harness import Fleet, Nginx, PrivateRedis
from tests.support import collect_static

SocketLevel = Callable[..., Awaitable[Any]]


async def compare(
    setup: Any, socket_level: SocketLevel, app_env: Callable[..., dict[str, str]], *, counts: tuple[int, ...]
) -> dict[str, Any]:
    redis = PrivateRedis().start()
    static_root = servers.ROOT / "bench" / "results" / ".static"
    collect_static(str(static_root))
    rows: dict[str, Any] = {}
    try:
        for processes in (1, 2):
            env = {
                **app_env(setup),
                "REDIS_URL": redis.url,
                "CHANNEL_PREFIX": f"bench{processes}",
                "STATIC_ROOT": str(static_root),
            }
            fleet = Fleet(env, processes).start()
            nginx = Nginx([server.port for server in fleet.processes], str(static_root)).start()
            try:
                sessions = servers.sessions(env, 50)
                pids = [server.process.pid for server in fleet.processes if server.process is not None]
                levels = []
                for count in counts:
                    level = await socket_level(pids, nginx.port, sessions, count, 250, 2.0)
                    levels.append(level.row())
                    print(f"  scale-out {processes} process(es), {count:>4} streams: done", flush=True)
                rows[f"{processes} process{'es' if processes > 1 else ''}"] = levels
            finally:
                nginx.stop()
                fleet.stop()
    finally:
        redis.stop()
    return rows
