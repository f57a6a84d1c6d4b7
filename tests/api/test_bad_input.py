"""Bad input over HTTP gets its precise 4xx, never a 500 with a traceback: deep JSON, text no database can
store, titles that disguise themselves; and API responses are never stored by caches."""

import json
import logging

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from conversations import services
from conversations.models import Conversation
from conversations.options import GenerationOptions

pytestmark = pytest.mark.django_db(transaction=True)

DEEP = "[" * 30_000 + "]" * 30_000


@pytest.fixture
def api():
    user = get_user_model().objects.create_user(username="prober")
    _, key = services.api_token_create(user=user, name="probe")
    return Client(headers={"Authorization": f"Bearer {key}"})


def post(client: Client, path: str, body: str):
    return client.post(path, body, content_type="application/json")


@pytest.mark.parametrize("path", ["/api/v1/conversations/", "/v1/chat/completions"])
def test_deeply_nested_json_is_a_400(api, path, caplog):
    with caplog.at_level(logging.ERROR):
        response = post(api, path, DEEP)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_json"
    assert "nested too deeply" in response.json()["error"]["message"]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], "no traceback for bad input"


@pytest.mark.parametrize(
    "body",
    [
        '{"title": "a\\u0000b"}',
        '{"title": "\\ud800"}',
        '{"title": "ok", "system": "\\udfff tail"}',
    ],
)
def test_text_no_database_can_store_is_a_400(api, body):
    response = post(api, "/api/v1/conversations/", body)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_request"
    assert not Conversation.objects.exists()


def test_a_nul_in_the_search_query_is_a_400(api):
    response = api.get("/api/v1/conversations/?search=a%00b")
    assert response.status_code == 400
    assert response.json()["error"] == {
        "code": "invalid_request",
        "message": "'search' must not contain NUL characters.",
        "field": "search",
    }


def test_v1_text_no_database_can_store_is_an_openai_shaped_400(api):
    body = json.dumps({"model": "dev", "messages": [{"role": "user", "content": "x"}]}).replace('"x"', '"x\\u0000"')
    response = post(api, "/v1/chat/completions", body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["code"], error["type"]) == ("invalid_request", "invalid_request_error")


def test_titles_lose_controls_and_direction_overrides(api):
    created = post(api, "/api/v1/conversations/", json.dumps({"title": "invoice\u202egnp.exe\u0007\nnext"}))
    assert created.status_code == 201
    assert created.json()["title"] == "invoicegnp.exe next"
    renamed = api.patch(
        f"/api/v1/conversations/{created.json()['id']}/",
        json.dumps({"title": "\u2067right\u2069 \u200fto\u200e left\t!"}),
        content_type="application/json",
    )
    assert renamed.json()["title"] == "right to left !"
    blank = post(api, "/api/v1/conversations/", json.dumps({"title": "\u202e\u202d"}))
    assert blank.status_code == 201 and blank.json()["title"] == ""


def test_api_and_private_pages_are_never_stored_by_caches(api):
    user = get_user_model().objects.create_user(username="reader")
    browser = Client()
    browser.force_login(user)
    for response in (api.get("/api/v1/conversations/"), api.get("/v1/models"), browser.get("/")):
        assert "no-store" in response["Cache-Control"], response
    assert "no-store" not in Client().get("/healthz").get("Cache-Control", "")


def test_rest_feedback_takes_a_reason_with_a_thumbs_down_and_refuses_it_otherwise(api):
    user = get_user_model().objects.get(username="prober")
    turn = services.message_send(
        user=user, client_id="rate-rest", conversation_id=None, content="rate", options=GenerationOptions()
    )
    path = f"/api/v1/messages/{turn.assistant_message.pk}/feedback/"
    ok = post(api, path, json.dumps({"feedback": "down", "reason": "unsafe", "comment": "Not for children."}))
    assert ok.status_code == 200
    assert (ok.json()["feedback_reason"], ok.json()["feedback_comment"]) == ("unsafe", "Not for children.")
    for body, field in (
        ({"feedback": "up", "reason": "unsafe"}, "reason"),
        ({"feedback": "down", "reason": 7}, "reason"),
    ):
        refused = post(api, path, json.dumps(body))
        assert refused.status_code == 400
        assert refused.json()["error"]["code"] == "invalid_request" and refused.json()["error"]["field"] == field
