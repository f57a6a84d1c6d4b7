"""Principals for the API tests (a user with a session and a personal token) and an event-stream reader."""

import json
import secrets
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from conversations import services


@dataclass
class Principal:
    """A user with a logged-in session (and its CSRF token) and a personal API token."""

    user: Any
    session: str
    token: str
    csrf: str

    @property
    def bearer(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    @property
    def session_headers(self) -> dict[str, str]:
        """The session cookie, and the CSRF token as cookie and header, as a page's script sends them."""
        return {"Cookie": f"sessionid={self.session}; csrftoken={self.csrf}", "X-CSRFToken": self.csrf}


@pytest.fixture
def principal(transactional_db) -> Callable[..., Principal]:
    def make(*, staff: bool = False) -> Principal:
        user = get_user_model().objects.create_user(
            username=f"u-{uuid.uuid4().hex[:8]}", password="pw", is_staff=staff, is_superuser=staff
        )
        client = Client()
        client.force_login(user)
        _, key = services.api_token_create(user=user, name="tests")
        # A CSRF secret of the length Django expects, given as cookie and header, as a browser script does.
        csrf = secrets.token_hex(16)
        return Principal(user=user, session=client.cookies["sessionid"].value, token=key, csrf=csrf)

    return make


@dataclass
class Event:
    type: str  # an event name, or "comment"
    id: int | None
    data: dict[str, Any]


class EventReader:
    """Reads a text/event-stream response line by line, checking offsets as a careful client would."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.lines: AsyncIterator[str] = response.aiter_lines()
        self.texts: dict[str, str] = {}
        self.events: list[Event] = []
        self.last_id: int | None = None

    async def next(self) -> Event:
        fields: dict[str, str] = {}
        async for line in self.lines:
            if line.startswith(":"):
                event = Event("comment", None, {"text": line[1:].strip()})
                self.events.append(event)
                return event
            if line == "":
                if fields:
                    return self._event(fields)
                continue
            name, _, value = line.partition(":")
            fields[name] = value[1:] if value.startswith(" ") else value
        raise EOFError("the event stream ended")

    def _event(self, fields: dict[str, str]) -> Event:
        data = json.loads(fields["data"])
        event = Event(fields.get("event", "message"), int(fields["id"]) if "id" in fields else None, data)
        assert data["type"] == event.type, (data, event.type)
        if event.type == "delta":
            have = self.texts.get(data["message"], "")
            assert data["offset"] == len(have), (data["offset"], len(have))
            self.texts[data["message"]] = have + data["text"]
        elif event.type == "message":
            self.texts.setdefault(data["message"]["id"], data["message"]["content"])
        if event.id is not None:
            self.last_id = event.id
        self.events.append(event)
        return event

    async def until(self, predicate: Callable[[Event], bool]) -> Event:
        while True:
            event = await self.next()
            if predicate(event):
                return event

    async def answer_id(self) -> str:
        """Reads on to the announcement of the assistant's answer and returns its id."""
        event = await self.until(lambda e: e.type == "message" and e.data["message"]["role"] == "assistant")
        return str(event.data["message"]["id"])

    async def done(self, message_id: str) -> Event:
        return await self.until(lambda e: e.type == "done" and e.data["message"] == message_id)
