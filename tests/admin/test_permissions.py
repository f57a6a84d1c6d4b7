"""Staff see only what their permissions allow: every admin action checks the matching permission."""

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.contrib.sessions.models import Session
from django.test import Client

from conversations import services
from conversations.models import ApiToken, Conversation

pytestmark = pytest.mark.django_db

CONVERSATIONS = "/admin/conversations/conversation/"
TOKENS = "/admin/conversations/apitoken/"
USERS = "/admin/auth/user/"


def staff_with(*codenames: str) -> Client:
    user = get_user_model().objects.create_user(username=f"staff-{len(codenames)}-{'-'.join(codenames)}"[:150])
    user.is_staff = True
    user.save()
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def alice():
    return get_user_model().objects.create_user(username="alice", password="pw")


def actions_offered(client: Client, path: str) -> set[str]:
    page = client.get(path)
    assert page.status_code == 200
    form = page.context["action_form"]
    if form is None:  # no action at all for this user
        return set()
    return {value for value, _ in form.fields["action"].choices if value}


def test_view_only_staff_export_but_cannot_flag(alice):
    viewer = staff_with("view_conversation")
    conversation = Conversation.objects.create(owner=alice, title="t", model="dev")
    assert actions_offered(viewer, CONVERSATIONS) == {"export_json", "export_markdown"}
    # Django treats an action the user may not run as none chosen: back to the list, nothing done.
    refused = viewer.post(CONVERSATIONS, {"action": "flag", "_selected_action": [conversation.pk]}, follow=True)
    assert "No action selected" in refused.content.decode()
    assert not Conversation.objects.get(pk=conversation.pk).flagged
    exported = viewer.post(CONVERSATIONS, {"action": "export_json", "_selected_action": [conversation.pk]})
    assert exported["Content-Type"] == "application/json"


def test_staff_who_may_change_conversations_flag_them(alice):
    editor = staff_with("view_conversation", "change_conversation")
    conversation = Conversation.objects.create(owner=alice, title="t", model="dev")
    assert {"flag", "unflag"} <= actions_offered(editor, CONVERSATIONS)
    editor.post(CONVERSATIONS, {"action": "flag", "_selected_action": [conversation.pk]})
    assert Conversation.objects.get(pk=conversation.pk).flagged


def test_view_only_staff_cannot_revoke_tokens(alice):
    token, _ = services.api_token_create(user=alice, name="laptop")
    viewer = staff_with("view_apitoken")
    assert actions_offered(viewer, TOKENS) == set()
    viewer.post(TOKENS, {"action": "revoke", "_selected_action": [token.pk]})
    assert ApiToken.objects.get(pk=token.pk).revoked_at is None
    editor = staff_with("view_apitoken", "change_apitoken")
    editor.post(TOKENS, {"action": "revoke", "_selected_action": [token.pk]})
    assert ApiToken.objects.get(pk=token.pk).revoked_at is not None


def test_log_out_everywhere_needs_the_change_permission_and_ends_only_that_users_sessions(alice):
    bob = get_user_model().objects.create_user(username="bob")
    for user in (alice, alice, bob):
        Client().force_login(user)
    viewer = staff_with("view_user")
    assert "log_out_everywhere" not in actions_offered(viewer, USERS)
    viewer.post(USERS, {"action": "log_out_everywhere", "_selected_action": [alice.pk]})
    assert Session.objects.count() == 4  # the three above and the viewer's own

    editor = staff_with("view_user", "change_user")
    done = editor.post(USERS, {"action": "log_out_everywhere", "_selected_action": [alice.pk]}, follow=True)
    assert "Ended 2 session(s)" in done.content.decode()
    owners = {session.get_decoded().get("_auth_user_id") for session in Session.objects.all()}
    assert str(alice.pk) not in owners and str(bob.pk) in owners


def test_usage_days_out_of_range_is_clamped_not_a_server_error(alice):
    viewer = staff_with("view_userquota")
    for days in ("99999999999", "0", "-3", "abc", "3661"):
        page = viewer.get(f"/admin/conversations/userquota/usage/?days={days}")
        assert page.status_code == 200, days
        assert 1 <= page.context["days"] <= 3660


@pytest.mark.parametrize("path", [CONVERSATIONS, TOKENS, USERS, "/admin/conversations/message/"])
def test_an_admin_search_with_nul_lists_instead_of_failing(alice, path):
    staff = Client()
    staff.force_login(get_user_model().objects.create_superuser(username="root", password="x"))
    assert staff.get(f"{path}?q=ali%00ce").status_code == 200
