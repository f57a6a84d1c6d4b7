"""Personal API tokens (hashed, shown once, revocable), the OpenAPI schema and its documentation page."""

import hashlib
import secrets
from typing import Any

import pytest
from django.core.management import call_command
from django.test import Client

from conversations import payloads
from conversations.models import ApiToken
from conversations.options import GenerationOptions
from streaming.api import schemas
from tests.support import unique

pytestmark = pytest.mark.django_db


@pytest.fixture
def browser(django_user_model):
    user = django_user_model.objects.create_user(username=f"u-{unique()[:8]}", password="pw")
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    client.cookies["csrftoken"] = secrets.token_hex(16)  # as the CSRF cookie a page sets for its script
    return user, client


def post(client: Client, path: str, body: dict[str, Any]) -> Any:
    return client.post(
        path, body, content_type="application/json", headers={"X-CSRFToken": client.cookies["csrftoken"].value}
    )


def test_token_is_shown_once_stored_hashed_and_revocable(browser):
    user, client = browser
    created = post(client, "/api/v1/tokens/", {"name": "laptop script"})
    assert created.status_code == 201
    key = created.json()["token"]
    assert key.startswith("chat_") and len(key) > 40
    token = ApiToken.objects.get(user=user)
    assert token.key_hash == hashlib.sha256(key.encode()).hexdigest()
    assert key not in [getattr(token, f.attname) for f in ApiToken._meta.concrete_fields], "the key is not stored"
    assert key.startswith(token.prefix) and created.json()["prefix"] == token.prefix

    listed = client.get("/api/v1/tokens/").json()
    assert [t["name"] for t in listed] == ["laptop script"]
    assert "token" not in listed[0], "a key is never shown again"

    bearer = Client()
    assert bearer.get("/api/v1/models/", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    token.refresh_from_db()
    assert token.last_used_at is not None

    revoked = client.delete(f"/api/v1/tokens/{token.pk}/", headers={"X-CSRFToken": client.cookies["csrftoken"].value})
    assert revoked.status_code == 204
    refused = bearer.get("/api/v1/models/", headers={"Authorization": f"Bearer {key}"})
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "authentication_failed"
    assert client.get("/api/v1/tokens/").json() == []


def test_token_validation_names_the_field(browser):
    _, client = browser
    response = post(client, "/api/v1/tokens/", {"name": "  "})
    assert response.status_code == 400
    assert response.json()["error"] == {
        "code": "invalid_request",
        "message": "'name' must be a non-blank string of at most 100 characters.",
        "field": "name",
    }


def test_schema_is_generated_and_valid_without_warnings(tmp_path):
    target = tmp_path / "schema.yaml"
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(target))
    text = target.read_text()
    for path in (
        "/api/v1/conversations/{conversation_id}/messages/",
        "/api/v1/messages/{message_id}/stream/",
        "/v1/chat/completions",
    ):
        assert path in text


def test_schema_documents_the_message_payload_exactly():
    from django.contrib.auth import get_user_model

    from conversations import services

    user = get_user_model().objects.create_user(username="schema")
    turn = services.message_send(
        user=user, client_id=unique(), conversation_id=None, content="hi", options=GenerationOptions()
    )
    assert set(schemas.MessageSchema().fields) == set(payloads.message_payload(turn.assistant_message))
    assert set(schemas.ConversationSchema().fields) == set(payloads.conversation_payload(turn.conversation, live=True))


def test_docs_page_lists_every_endpoint_without_scripts(client):
    response = client.get("/api/v1/docs/")
    assert response.status_code == 200
    page = response.content.decode()
    assert "<script" not in page
    for text in ("/api/v1/messages/{message_id}/cancel/", "/v1/chat/completions", "MessageSchema", "Last-Event-ID"):
        assert text in page
