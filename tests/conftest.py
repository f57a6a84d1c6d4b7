import asyncio
import uuid
from collections.abc import Callable, Iterator

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model
from django.db import connections
from django.test import Client

from streaming.aio import close_database_connections
from tests.support import Daphne, DevLLMThread, collect_static, daphne_env


@pytest.fixture(scope="session", autouse=True)
def close_thread_connections(django_db_setup, django_db_blocker) -> Iterator[None]:
    """Async tests make their ORM calls on asgiref's shared thread and on the live side's database threads,
    whose connections stay open: they would keep the test database from being dropped at the end."""
    yield
    with django_db_blocker.unblock():
        asyncio.run(sync_to_async(connections.close_all)())
        close_database_connections()


@pytest.fixture(scope="session")
def upstream() -> Iterator[DevLLMThread]:
    """A dev upstream with fast defaults; tests pick timing and faults per request via the model name."""
    server = DevLLMThread(ttft=0.05, tps=400.0, tokens=60).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def static_root(tmp_path_factory) -> str:
    """The static files as production serves them: collected, hashed and compressed, once per test run."""
    root = str(tmp_path_factory.mktemp("static"))
    collect_static(root)
    return root


@pytest.fixture(scope="session")
def daphne_factory(django_db_setup, django_db_blocker, upstream, static_root) -> Iterator[Callable[..., Daphne]]:
    """Starts daphne processes on the test database; identical settings share one process."""
    started: dict[tuple[tuple[str, str], ...], Daphne] = {}

    def start(*, fresh: bool = False, **overrides: str) -> Daphne:
        key = tuple(sorted(overrides.items()))
        if fresh or key not in started:
            with django_db_blocker.unblock():
                env = daphne_env(upstream, STATIC_ROOT=static_root, **overrides)
            server = Daphne(env).start()
            if fresh:
                extra.append(server)
                return server
            started[key] = server
        return started[key]

    extra: list[Daphne] = []
    yield start
    for server in [*started.values(), *extra]:
        server.stop()


@pytest.fixture
def daphne(daphne_factory, transactional_db) -> Daphne:
    server: Daphne = daphne_factory()
    return server


@pytest.fixture
def make_user(transactional_db) -> Callable[..., tuple[object, str]]:
    """Creates a user and a logged-in session; returns (user, session cookie value)."""

    def make(username: str | None = None) -> tuple[object, str]:
        user = get_user_model().objects.create_user(username=username or f"u-{uuid.uuid4().hex[:8]}", password="pw")
        client = Client()
        client.force_login(user)
        return user, client.cookies["sessionid"].value

    return make
