"""One deployment per test module: private PostgreSQL and Redis, two daphne processes, nginx in front."""

import os
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.deploy.harness import Fleet, Nginx, PrivatePostgres, PrivateRedis, manage, new_session
from tests.support import DevLLMThread, collect_static, unique


@dataclass
class Deployment:
    postgres: PrivatePostgres
    redis: PrivateRedis
    fleet: Fleet
    nginx: Nginx
    env: dict[str, str]

    def session(self) -> str:
        return new_session(self.env, f"user-{unique()[:10]}")


@pytest.fixture(scope="module")
def deployment(upstream: DevLLMThread, tmp_path_factory) -> Iterator[Deployment]:
    static_root = str(tmp_path_factory.mktemp("deploy-static"))
    collect_static(static_root)
    postgres = PrivatePostgres().start()
    redis = PrivateRedis().start()
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "chatproject.settings",
        "DJANGO_DEBUG": "0",
        "SECRET_KEY": "deployment-test-secret-key-0123456789abcdefghijklmnopqrstuvwxyz",
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        # Plain HTTP on loopback stands in for the TLS the real nginx terminates.
        "SECURE_SSL_REDIRECT": "0",
        "SECURE_COOKIES": "0",
        "SECURE_HSTS_SECONDS": "0",
        "DATABASE_URL": postgres.url,
        "REDIS_URL": redis.url,
        "CHANNEL_PREFIX": f"deploy-{unique()[:8]}",
        "STATIC_ROOT": static_root,
        "LLM_BASE_URL": upstream.base_url,
        "LLM_MODELS": "dev",
        "LLM_SIMULATOR": "1",
        "LOG_LEVEL": "WARNING",
    }
    env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    manage(env, "migrate", "--noinput", "-v0")
    fleet = Fleet(env, 2)
    nginx = None
    try:
        fleet.start()
        nginx = Nginx([server.port for server in fleet.processes], static_root).start()
        env["CSRF_TRUSTED_ORIGINS"] = nginx.origin
        yield Deployment(postgres, redis, fleet, nginx, env)
    finally:
        if nginx is not None:
            nginx.stop()
        fleet.stop()
        redis.stop()
        postgres.cleanup()
