"""Share links through the REST API: made, listed and deleted by their owner only."""

from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from conversations import services
from conversations.options import GenerationOptions

pytestmark = pytest.mark.django_db


def client_of(username: str) -> tuple[Client, Any]:
    user = get_user_model().objects.create_user(username=username)
    _, key = services.api_token_create(user=user, name="share")
    return Client(headers={"Authorization": f"Bearer {key}"}), user


def test_shares_are_made_listed_and_deleted_by_their_owner():
    api, user = client_of("owner")
    stranger, _ = client_of("stranger")
    turn = services.message_send(
        user=user, client_id="s1", conversation_id=None, content="share me", options=GenerationOptions()
    )
    base = f"/api/v1/conversations/{turn.conversation.pk}/shares/"
    # An answer being written: nothing to snapshot yet.
    assert api.post(base).status_code == 409
    services.message_finish(message_id=str(turn.assistant_message.pk), status="complete", content="Shared answer")
    made = api.post(base)
    assert made.status_code == 201
    share = made.json()
    assert share["url"].startswith("http://testserver/s/") and share["title"]
    assert Client().get(share["url"].removeprefix("http://testserver")).status_code == 200
    assert [listed["id"] for listed in api.get(base).json()] == [share["id"]]
    assert stranger.get(base).status_code == 404
    assert stranger.post(base).status_code == 404
    assert stranger.delete(f"/api/v1/shares/{share['id']}/").status_code == 404
    assert api.delete(f"/api/v1/shares/{share['id']}/").status_code == 204
    assert Client().get(share["url"].removeprefix("http://testserver")).status_code == 404
    assert api.delete(f"/api/v1/shares/{share['id']}/").status_code == 404
