"""Who may call what: every endpoint against the owner (session and token), another user, staff, an anonymous
client and a revoked token, over real HTTP. Someone else's ids answer exactly like missing ones."""

import httpx
import pytest

from conversations import services
from conversations.models import ApiToken, Conversation, Message
from conversations.options import GenerationOptions
from tests.support import unique

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

NOT_FOUND = {"error": {"code": "not_found", "message": "No such conversation or message."}}


def finished_turn(owner) -> tuple[str, str, str]:
    """A conversation with a user message and a finished answer: (conversation, user message, answer) ids."""
    turn = services.message_send(
        user=owner.user,
        client_id=unique(),
        conversation_id=None,
        content="Hello there",
        options=GenerationOptions(model="dev"),
    )
    services.message_finish(message_id=str(turn.assistant_message.pk), status="complete", content="Hi!")
    assert turn.user_message is not None
    return str(turn.conversation.pk), str(turn.user_message.pk), str(turn.assistant_message.pk)


def test_permission_matrix_over_every_endpoint(daphne, principal):
    owner, other, staff = principal(), principal(), principal(staff=True)
    revoked = principal()
    services.api_token_revoke(user=revoked.user, token_id=str(ApiToken.objects.get(user=revoked.user).pk))
    conversation, mine, answer = finished_turn(owner)
    doomed, _, _ = finished_turn(owner)
    owner_token = ApiToken.objects.get(user=owner.user).pk
    model = f"dev:tps=400,tokens=5,key={unique()}"

    who = {
        "owner-token": {"headers": owner.bearer},
        "owner-session": {"headers": owner.session_headers},
        "other": {"headers": other.bearer},
        "staff": {"headers": staff.bearer},
        "anonymous": {},
        "revoked": {"headers": revoked.bearer},
    }
    c, m = f"/api/v1/conversations/{conversation}", f"/api/v1/messages/{answer}"
    # (method, path, body, {principal: expected status}); others of the owner's ids get 404, the anonymous and
    # revoked 401. Rows that change something run for the owner last.
    denied = {"other": 404, "staff": 404, "anonymous": 401, "revoked": 401}
    anyone = {"other": 200, "staff": 200, "anonymous": 401, "revoked": 401}
    matrix = [
        ("GET", "/api/v1/conversations/", None, {"owner-token": 200, "owner-session": 200, **anyone}),
        (
            "POST",
            "/api/v1/conversations/",
            {"title": "t"},
            {"owner-token": 201, "owner-session": 201, **anyone, "other": 201, "staff": 201},
        ),
        ("GET", f"{c}/", None, {"owner-token": 200, "owner-session": 200, **denied}),
        ("PATCH", f"{c}/", {"title": "renamed"}, {"owner-token": 200, "owner-session": 200, **denied}),
        ("GET", f"{c}/messages/", None, {"owner-token": 200, "owner-session": 200, **denied}),
        (
            "POST",
            f"{c}/messages/",
            {"content": "again", "model": model},
            {"owner-token": 200, "owner-session": 200, **denied},
        ),
        ("GET", f"{m}/", None, {"owner-token": 200, "owner-session": 200, **denied}),
        ("GET", f"{m}/stream/", None, {"owner-token": 200, "owner-session": 200, **denied}),
        ("POST", f"/api/v1/messages/{mine}/feedback/", {"feedback": "up"}, {**denied, "owner-token": 409}),
        ("POST", f"{m}/feedback/", {"feedback": "up"}, {"owner-token": 200, "owner-session": 200, **denied}),
        ("POST", f"{m}/cancel/", None, {"owner-token": 200, "owner-session": 200, **denied}),
        ("GET", "/api/v1/models/", None, {"owner-token": 200, "owner-session": 200, **anyone}),
        (
            "GET",
            "/api/v1/tokens/",
            None,
            {"owner-session": 200, "owner-token": 403, "other": 403, "anonymous": 401, "revoked": 401},
        ),
        (
            "POST",
            "/api/v1/tokens/",
            {"name": "ci"},
            {"owner-session": 201, "owner-token": 403, "anonymous": 401, "revoked": 401},
        ),
        ("DELETE", f"/api/v1/tokens/{owner_token}/", None, {"owner-token": 403, "anonymous": 401, "revoked": 401}),
        (
            "GET",
            "/v1/models",
            None,
            {"owner-token": 200, "owner-session": 401, "other": 200, "anonymous": 401, "revoked": 401},
        ),
        (
            "POST",
            "/v1/chat/completions",
            {"model": model, "messages": [{"role": "user", "content": "hi"}]},
            {"owner-token": 200, "owner-session": 401, "anonymous": 401, "revoked": 401},
        ),
        ("GET", "/api/v1/schema/", None, {"owner-token": 200, "anonymous": 200}),
        ("GET", "/api/v1/docs/", None, {"owner-token": 200, "anonymous": 200}),
        ("DELETE", f"/api/v1/conversations/{doomed}/", None, {**denied, "owner-session": 204}),
    ]
    mismatches = []
    with httpx.Client(base_url=daphne.origin, timeout=30) as client:
        for method, path, body, expected in matrix:
            for name, status in expected.items():
                response = client.request(method, path, json=body, **who[name])
                if response.status_code != status:
                    mismatches.append((method, path, name, status, response.status_code, response.text[:200]))
                elif status == 404:
                    assert response.json() == NOT_FOUND or path.startswith("/api/v1/tokens/"), response.text
                elif status == 401:
                    assert response.json()["error"]["code"] in ("not_authenticated", "authentication_failed")
                    assert response.headers["WWW-Authenticate"].startswith("Bearer")
        # Someone else's id and an id that does not exist (or is not even an id) are indistinguishable.
        for path in (f"/api/v1/conversations/{unique()}/", "/api/v1/conversations/nope/", f"{c}/"):
            response = client.get(path, headers=other.bearer)
            assert (response.status_code, response.json()) == (404, NOT_FOUND)
        # The other user's conversation list does not include the owner's.
        listed = client.get("/api/v1/conversations/", headers=other.bearer).json()["results"]
        assert conversation not in {item["id"] for item in listed}
        # A session without its CSRF token cannot change anything.
        no_csrf = client.patch(f"{c}/", json={"title": "csrf"}, headers={"Cookie": f"sessionid={owner.session}"})
        assert (no_csrf.status_code, no_csrf.json()["error"]["code"]) == (403, "permission_denied")
    assert mismatches == []
    assert Conversation.objects.get(pk=conversation).title == "renamed"
    assert not Conversation.objects.filter(pk=doomed).exists()
    assert Message.objects.get(pk=answer).feedback == "up"
