"""The staff review workflow in the Django admin: list, filters, search, transcript, review, exports, usage."""

import json
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.utils import timezone

from conversations.models import Conversation, Message, UserQuota

pytestmark = pytest.mark.django_db

LIST = "/admin/conversations/conversation/"


def conversation(owner, title: str, model: str = "dev", **fields) -> Conversation:
    return Conversation.objects.create(owner=owner, title=title, model=model, **fields)


def message(conv: Conversation, seq: int, role: str, content: str, **fields) -> Message:
    return Message.objects.create(conversation=conv, owner=conv.owner, seq=seq, role=role, content=content, **fields)


@pytest.fixture
def data():
    users = get_user_model().objects
    alice, bob = users.create_user(username="alice"), users.create_user(username="bob")
    weather = conversation(alice, "Weather talk", reviewer_notes="")
    message(weather, 1, "user", "What about <script>alert(1)</script>?")
    message(
        weather, 2, "assistant", "**Sunny** all day", model="dev", prompt_tokens=10, completion_tokens=20,
        finish_reason="stop", feedback="up",
    )  # fmt: skip
    broken = conversation(bob, "Error case", flagged=True)
    message(broken, 1, "user", "Hello?")
    message(
        broken, 2, "assistant", "", status="error", error_code="upstream_auth",
        error_message="The model server refused the API key.", feedback="down", feedback_reason="incomplete",
        feedback_comment="It stopped <b>before</b> saying anything.",
    )  # fmt: skip
    zebra = conversation(alice, "Animals", model="other")
    message(zebra, 1, "user", "Tell me about zebra stripes")
    message(zebra, 2, "assistant", "Old answer", superseded_at=timezone.now())
    message(zebra, 3, "assistant", "They are unique.", prompt_tokens=5, completion_tokens=7)
    return {"alice": alice, "bob": bob, "weather": weather, "broken": broken, "zebra": zebra}


@pytest.fixture
def staff():
    user = get_user_model().objects.create_superuser(username="reviewer", password="pw")
    client = Client()
    client.force_login(user)
    return client


def listed(response) -> set[str]:
    return {c.title for c in response.context["cl"].result_list}


def test_list_shows_owner_model_counts_tokens_last_status_feedback_and_flag(staff, data):
    response = staff.get(LIST)
    assert response.status_code == 200
    rows = {c.title: c for c in response.context["cl"].result_list}
    weather, broken, zebra = rows["Weather talk"], rows["Error case"], rows["Animals"]
    assert (weather.message_count, weather.token_count, weather.last_status) == (2, 30, "complete")
    assert (broken.last_status, broken.thumbs_down, broken.flagged) == ("error", 1, True)
    assert (zebra.message_count, zebra.token_count) == (2, 12), "superseded messages leave the transcript"
    page = response.content.decode()
    for header in ("Owner", "Model", "Messages", "Tokens", "Last answer", "Feedback", "Flagged", "Updated at"):
        assert header.lower() in page.lower()
    assert "👍 1 · 👎 0" in page


def test_filters(staff, data):
    assert listed(staff.get(LIST, {"last_status": "error"})) == {"Error case"}
    assert listed(staff.get(LIST, {"feedback": "up"})) == {"Weather talk"}
    assert listed(staff.get(LIST, {"feedback": "none"})) == {"Animals"}
    assert listed(staff.get(LIST, {"feedback_reason": "incomplete"})) == {"Error case"}
    assert listed(staff.get(LIST, {"feedback_reason": "unsafe"})) == set()
    assert listed(staff.get(LIST, {"flagged__exact": "1"})) == {"Error case"}
    assert listed(staff.get(LIST, {"model": "other"})) == {"Animals"}
    assert listed(staff.get(LIST, {"owner__id__exact": data["bob"].pk})) == {"Error case"}
    Conversation.objects.filter(pk=data["zebra"].pk).update(updated_at=timezone.now() - timedelta(days=40))
    since = (timezone.now() - timedelta(days=7)).isoformat()
    assert listed(staff.get(LIST, {"updated_at__gte": since})) == {"Weather talk", "Error case"}


def test_search_covers_titles_message_contents_and_owners(staff, data):
    response = staff.get(LIST, {"q": "zebra stripes"})
    assert [c.title for c in response.context["cl"].result_list] == ["Animals"], "one row, not one per message"
    assert listed(staff.get(LIST, {"q": "Weather"})) == {"Weather talk"}
    assert listed(staff.get(LIST, {"q": "bob"})) == {"Error case"}


def test_transcript_is_rendered_sanitized_with_status_usage_and_errors(staff, data):
    page = staff.get(f"{LIST}{data['weather'].pk}/change/").content.decode()
    assert "<strong>Sunny</strong> all day" in page, "answers are rendered markdown"
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<script>alert(1)" not in page
    assert "10 prompt + 20 completion tokens" in page
    assert "30 tokens (10 prompt, 20 completion)" in page
    assert "feedback: up" in page
    broken = staff.get(f"{LIST}{data['broken'].pk}/change/").content.decode()
    assert "upstream_auth" in broken and "The model server refused the API key." in broken
    # Why the user rated it down, and what they said, escaped as any user text is.
    assert "feedback: down — Incomplete or cut short" in broken
    assert "It stopped &lt;b&gt;before&lt;/b&gt; saying anything." in broken
    zebra = staff.get(f"{LIST}{data['zebra'].pk}/change/").content.decode()
    assert "review-superseded" in zebra and "Old answer" in zebra
    # Messages are read-only; the only fields a reviewer edits are the flag and the notes.
    form = staff.get(f"{LIST}{data['weather'].pk}/change/").context["adminform"].form
    assert set(form.fields) == {"flagged", "reviewer_notes"}
    assert (
        staff.get(f"/admin/conversations/message/{data['weather'].messages.first().pk}/change/").context[
            "has_change_permission"
        ]
        is False
    )


def test_reviewer_notes_and_flag_are_saved_without_touching_updated_at(staff, data):
    weather = data["weather"]
    before = Conversation.objects.get(pk=weather.pk).updated_at
    response = staff.post(f"{LIST}{weather.pk}/change/", {"flagged": "on", "reviewer_notes": "Check the tone."})
    assert response.status_code == 302
    saved = Conversation.objects.get(pk=weather.pk)
    assert (saved.flagged, saved.reviewer_notes, saved.updated_at) == (True, "Check the tone.", before)


def test_flag_and_unflag_actions(staff, data):
    ids = [data["weather"].pk, data["broken"].pk]
    staff.post(LIST, {"action": "flag", "_selected_action": ids})
    assert set(Conversation.objects.filter(flagged=True).values_list("title", flat=True)) == {
        "Weather talk",
        "Error case",
    }
    staff.post(LIST, {"action": "unflag", "_selected_action": [data["broken"].pk]})
    assert set(Conversation.objects.filter(flagged=True).values_list("title", flat=True)) == {"Weather talk"}


def test_export_json_holds_every_message_with_status_usage_and_errors(staff, data):
    Conversation.objects.filter(pk=data["weather"].pk).update(reviewer_notes="fine")
    response = staff.post(LIST, {"action": "export_json", "_selected_action": [data["weather"].pk, data["broken"].pk]})
    assert response["Content-Type"] == "application/json"
    assert response["Content-Disposition"].startswith('attachment; filename="conversations-')
    exported = {c["title"]: c for c in json.loads(response.content)["conversations"]}
    assert set(exported) == {"Weather talk", "Error case"}
    weather = exported["Weather talk"]
    assert (weather["owner"], weather["reviewer_notes"], weather["flagged"]) == ("alice", "fine", False)
    assert [(m["role"], m["content"]) for m in weather["messages"]] == [
        ("user", "What about <script>alert(1)</script>?"),
        ("assistant", "**Sunny** all day"),
    ]
    answer = weather["messages"][1]
    assert answer["usage"] == {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30}
    assert (answer["status"], answer["feedback"], answer["finish_reason"]) == ("complete", "up", "stop")
    failed = exported["Error case"]["messages"][1]
    assert failed["error"] == {"code": "upstream_auth", "message": "The model server refused the API key."}


def test_export_markdown(staff, data):
    response = staff.post(LIST, {"action": "export_markdown", "_selected_action": [data["zebra"].pk]})
    assert response["Content-Type"] == "text/markdown; charset=utf-8"
    text = response.content.decode()
    assert text.startswith("# Animals\n")
    assert "- Owner: alice" in text
    assert "## 1. User (complete)\n\nTell me about zebra stripes" in text
    assert "## 2. Assistant (complete, superseded)\n\nOld answer" in text
    assert "## 3. Assistant (complete, 5 + 7 tokens)\n\nThey are unique." in text


def test_usage_per_user_per_day_with_quotas(staff, data):
    UserQuota.objects.create(user=data["alice"], daily_tokens=40)
    page = staff.get("/admin/conversations/userquota/usage/")
    assert page.status_code == 200
    rows = {(r["owner__username"], r["day"]): r for r in page.context["rows"]}
    today = timezone.now().date()
    alice = rows[("alice", today)]
    assert (alice["answers"], alice["prompt_tokens"], alice["completion_tokens"], alice["total_tokens"]) == (
        3,
        15,
        27,
        42,
    )
    assert (alice["daily_quota"], alice["over_quota"]) == (40, True)
    assert "42" in page.content.decode() and "(reached)" in page.content.decode()
    quotas = staff.get("/admin/conversations/userquota/")
    assert "Usage per user per day" in quotas.content.decode()
    assert [q.user.username for q in quotas.context["cl"].result_list] == ["alice"]
    assert quotas.context["cl"].model_admin.tokens_today(UserQuota.objects.get()) == 42


@pytest.mark.parametrize("who", ["anonymous", "user"])
def test_non_staff_cannot_reach_any_of_it(who, data):
    client = Client()
    if who == "user":
        client.force_login(data["alice"])
    paths = [
        "/admin/",
        LIST,
        f"{LIST}{data['weather'].pk}/change/",
        "/admin/conversations/message/",
        "/admin/conversations/userquota/",
        "/admin/conversations/userquota/usage/",
        "/admin/conversations/apitoken/",
    ]
    for path in paths:
        response = client.get(path)
        assert response.status_code == 302, path
        assert response["Location"].startswith("/admin/login/"), path
    exported = client.post(LIST, {"action": "export_json", "_selected_action": [data["weather"].pk]})
    assert exported.status_code == 302
    assert "application/json" not in exported.get("Content-Type", "")


def test_the_transcript_shows_tool_calls_and_results(staff):
    owner = get_user_model().objects.create_user(username="toolish")
    conv = conversation(owner, "Tools")
    call = {"index": 0, "id": "call_7", "name": "get_weather", "arguments": '{"city": "Lyon"}'}
    message(conv, 1, "user", "Weather?")
    message(conv, 2, "assistant", "", tool_calls=[call], finish_reason="tool_calls")
    message(conv, 3, "tool", '{"sky": "clear"}', tool_call_id="call_7")
    page = staff.get(f"{LIST}{conv.pk}/change/").content.decode()
    arguments = "<code>{&quot;city&quot;: &quot;Lyon&quot;}</code>"
    assert f"calls <code>get_weather</code> (<code>call_7</code>) with {arguments}" in page
    assert "#3 Tool" in page and "answers the call <code>call_7</code>" in page
