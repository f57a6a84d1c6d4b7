"""Test harness: a dev upstream on its own thread, real daphne processes, and a protocol-aware client."""

import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from importlib import import_module
from pathlib import Path
from typing import Any, Protocol

import pytest
import websockets
from django.conf import settings
from django.contrib.sessions.backends.base import SessionBase
from django.db import connection
from django.test import Client
from websockets.asyncio.client import ClientConnection
from websockets.typing import Origin

from devllm.simulator import DevLLM, DevOptions, DevStats

ROOT = Path(__file__).resolve().parent.parent
RECV_TIMEOUT = 15.0
IN_CI = os.environ.get("CI") == "true"


def require(service: str, available: bool) -> None:
    """Skips a test whose service is missing on a laptop; in CI a missing service is a failure."""
    if available:
        return
    if IN_CI:
        pytest.fail(f"{service} is required in CI but is not available")
    pytest.skip(f"{service} is not available")


def unique() -> str:
    return uuid.uuid4().hex


def logged_in_session(user: Any) -> SessionBase:
    """A session in the database in which `user` is logged in, as after the login page."""
    client = Client()
    client.force_login(user)
    store: SessionBase = import_module(settings.SESSION_ENGINE).SessionStore(client.cookies["sessionid"].value)
    store.keys()  # read here, as the session middleware reads it: not from the event loop
    return store


class DevLLMThread:
    """The dev upstream served from a thread of the test process, so tests can read what it saw."""

    def __init__(self, **options: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.server = DevLLM(models=["dev"], defaults=DevOptions(**options) if options else None)
        self.thread = threading.Thread(target=self.loop.run_forever, name="devllm", daemon=True)
        self.base_url = ""

    def start(self) -> "DevLLMThread":
        self.thread.start()
        future = asyncio.run_coroutine_threadsafe(self.server.start("127.0.0.1", 0), self.loop)
        self.base_url = future.result(timeout=10)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)

    @property
    def stats(self) -> DevStats:
        return self.server.stats


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def database_url() -> str:
    """The URL of the test database pytest-django created, for the daphne processes to share it."""
    db = connection.settings_dict
    if db["ENGINE"] == "django.db.backends.sqlite3":
        return f"sqlite:///{db['NAME']}"
    user = db.get("USER") or "postgres"
    return f"postgres://{user}@{db.get('HOST') or '127.0.0.1'}:{db.get('PORT') or 5432}/{db['NAME']}"


class Daphne:
    """One real daphne process serving the project on a loopback port."""

    def __init__(self, env: dict[str, str]) -> None:
        self.port = free_port()
        self.env = env
        self.log = tempfile.NamedTemporaryFile(prefix="daphne-", suffix=".log", delete=False)  # noqa: SIM115
        self.process: subprocess.Popen[bytes] | None = None
        self.command: list[str] | None = None  # the whole command line, when not the default one

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/chat/"

    def start(self) -> "Daphne":
        command = self.command or [
            *[sys.executable, "-m", "chatproject.serve", "-b", "127.0.0.1", "-p", str(self.port)],
            "chatproject.asgi:application",
        ]
        self.process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"daphne exited early:\n{self.output()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"daphne did not start:\n{self.output()}")

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def kill(self) -> None:
        """Ends the process at once, as a crash would: no generation gets to finish or checkpoint."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.log.close()
        if not os.environ.get("KEEP_DAPHNE_LOGS"):
            Path(self.log.name).unlink(missing_ok=True)


def collect_static(root: str) -> None:
    """Runs `collectstatic` into `root` with the production storage (hashed, compressed names)."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "chatproject.settings", "DJANGO_DEBUG": "0", "STATIC_ROOT": root}
    env.setdefault("SECRET_KEY", settings.SECRET_KEY)
    subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput", "-v0"], cwd=ROOT, env=env, check=True, timeout=120
    )


def daphne_env(upstream: DevLLMThread, **overrides: str) -> dict[str, str]:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "chatproject.settings",
        "DJANGO_DEBUG": "0",
        "SECRET_KEY": settings.SECRET_KEY,
        "SECURE_SSL_REDIRECT": "0",
        "SECURE_COOKIES": "0",
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "DATABASE_URL": database_url(),
        "LLM_BASE_URL": upstream.base_url,
        "LLM_MODELS": "dev",
        "LLM_SIMULATOR": "1",
        "CHANNEL_PREFIX": os.environ.get("CHANNEL_PREFIX", "chat"),
        "LOG_LEVEL": "WARNING",
    }
    env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)  # the browser tests' flag is for their own process only
    env.update(overrides)
    return env


class Endpoint(Protocol):
    """Where a test connects: a daphne process, or a proxy in front of several."""

    @property
    def origin(self) -> str: ...

    @property
    def ws_url(self) -> str: ...


class ChatSocket:
    """A protocol v1 client over a real WebSocket, checking offsets as a careful client would."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.texts: dict[str, str] = {}
        # The HTML of each answer as a browser builds it (finished blocks, then the final blocks or whole HTML),
        # and how many code points of its text that HTML covers.
        self.html: dict[str, str] = {}
        self.rendered: dict[str, int] = {}
        self.events: list[dict[str, Any]] = []

    @classmethod
    async def connect(cls, server: "Endpoint", session: str | None, *, origin: str | None = None) -> "ChatSocket":
        headers = {"Cookie": f"sessionid={session}"} if session else {}
        ws = await websockets.connect(
            server.ws_url, origin=Origin(origin or server.origin), additional_headers=headers, max_size=2**22
        )
        chat = cls(ws)
        ready = await chat.recv()
        assert ready["type"] == "ready", ready
        return chat

    async def send(self, frame: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(frame))

    async def recv(self, timeout: float = RECV_TIMEOUT) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.ws.recv(), timeout)
        event: dict[str, Any] = json.loads(raw)
        self.events.append(event)
        if event["type"] == "delta":
            have = self.texts.get(event["message"], "")
            # The server trims what the client has; an overlap or a gap here is a bug.
            assert event["offset"] == len(have), (event["offset"], len(have))
            self.texts[event["message"]] = have + event["text"]
            self._add_blocks(event["message"], event.get("blocks", []))
        elif event["type"] == "done":
            # The done says how long the answer is: the client has exactly that, or more that was never saved
            # (a process that died after its last checkpoint), which it drops.
            have = self.texts.get(event["message"], "")
            assert len(have) >= event["length"], ("text missing before done", len(have), event["length"])
            self.texts[event["message"]] = have[: event["length"]]
            if "html" in event:
                self.html[event["message"]] = event["html"]
                self.rendered[event["message"]] = len(self.texts.get(event["message"], ""))
            else:
                self._add_blocks(event["message"], event.get("blocks", []))
        elif event["type"] == "message":
            self.texts.setdefault(event["message"]["id"], event["message"]["content"])
            self.html.setdefault(event["message"]["id"], event["message"]["html"])
            self.rendered.setdefault(event["message"]["id"], event["message"]["rendered"])
        elif event["type"] == "history":
            for message in event["messages"]:
                self.texts[message["id"]] = message["content"]
                self.html[message["id"]] = message["html"]
                self.rendered[message["id"]] = message["rendered"]
        return event

    def _add_blocks(self, message_id: str, blocks: list[dict[str, Any]]) -> None:
        for block in blocks:
            # Blocks arrive in order, each once, and only for text the client already has.
            assert block["start"] == self.rendered.get(message_id, 0), (block, self.rendered.get(message_id))
            assert block["end"] <= len(self.texts[message_id])
            self.html[message_id] = self.html.get(message_id, "") + block["html"]
            self.rendered[message_id] = block["end"]

    async def recv_until(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = RECV_TIMEOUT
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            event = await self.recv(max(0.01, deadline - time.monotonic()))
            if predicate(event):
                return event

    async def request(self, frame: dict[str, Any], kind: str) -> dict[str, Any]:
        await self.send(frame)
        return await self.recv_until(lambda e: e["type"] in (kind, "error"))

    async def done(self, message_id: str, timeout: float = RECV_TIMEOUT) -> dict[str, Any]:
        return await self.recv_until(lambda e: e["type"] == "done" and e["message"] == message_id, timeout)

    async def send_message(self, content: str, *, client_id: str, **fields: Any) -> tuple[str, str]:
        """Sends, returns (conversation id, assistant message id)."""
        await self.send({"type": "send", "id": client_id, "content": content, "conversation": None, **fields})
        first = await self.recv_until(lambda e: e["type"] in ("message", "error"))
        assert first["type"] == "message", first
        answer = await self.recv_until(lambda e: e["type"] == "message" and e["message"]["role"] == "assistant")
        return answer["message"]["conversation"], answer["message"]["id"]

    async def close(self) -> None:
        await self.ws.close()
