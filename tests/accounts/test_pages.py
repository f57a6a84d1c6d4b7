"""The account pages with Django's test client: settings (usage, defaults, API tokens, sessions), password change
and reset, and the three sign-up modes."""

import json
import re
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.contrib.sessions.models import Session
from django.core import mail
from django.test import Client
from django.utils import timezone

from accounts.models import Invitation
from conversations import services
from conversations.models import ApiToken, Conversation, Message, UserQuota

pytestmark = pytest.mark.django_db

PASSWORD = "an old passphrase"


@pytest.fixture
def alice():
    return get_user_model().objects.create_user(username="alice", email="alice@example.com", password=PASSWORD)


@pytest.fixture
def browser(alice) -> Client:
    client = Client()
    client.force_login(alice)
    return client


def found(pattern: str, text: str) -> str:
    match = re.search(pattern, text)
    assert match is not None, pattern
    return match.group(1)


def sessions_of(user) -> int:
    return sum(1 for s in Session.objects.all() if s.get_decoded().get("_auth_user_id") == str(user.pk))


def test_settings_need_a_login_and_are_never_cached(browser):
    assert Client().get("/accounts/settings/").status_code == 302
    page = browser.get("/accounts/settings/")
    assert page.status_code == 200
    assert "no-store" in page["Cache-Control"]
    assert "Signed in as <strong>alice</strong>" in page.content.decode()


def test_usage_shows_todays_tokens_against_the_quota(browser, alice):
    UserQuota.objects.create(user=alice, daily_tokens=1000, max_concurrent_streams=3)
    conversation = Conversation.objects.create(owner=alice, title="t", model="dev")
    Message.objects.create(
        conversation=conversation, owner=alice, seq=2, role="assistant", content="x",
        prompt_tokens=100, completion_tokens=150,
    )  # fmt: skip
    page = browser.get("/accounts/settings/").content.decode()
    assert "<strong>250</strong> tokens of your daily quota of <strong>1000</strong> (750 left" in page
    assert 'value="25"' in page  # the progress bar
    assert "at most 3." in page


def test_a_new_token_is_shown_once_works_and_can_be_revoked(browser, alice):
    created = browser.post("/accounts/settings/tokens/", {"name": "laptop", "lifetime": "30"})
    assert created.status_code == 200
    assert "no-store" in created["Cache-Control"]
    key = found(r'id="new-key" type="text" readonly value="([^"]+)"', created.content.decode())
    token = ApiToken.objects.get(user=alice)
    assert token.name == "laptop"
    assert token.expires_at is not None
    assert timedelta(days=29) < token.expires_at - timezone.now() <= timedelta(days=30)
    api = Client(headers={"Authorization": f"Bearer {key}"})
    assert api.get("/api/v1/conversations/").status_code == 200
    again = browser.get("/accounts/settings/").content.decode()
    assert key not in again and "laptop" in again

    revoked = browser.post(f"/accounts/settings/tokens/{token.pk}/revoke/", follow=True)
    assert "The token is revoked" in revoked.content.decode()
    assert api.get("/api/v1/conversations/").status_code == 401
    assert browser.post(f"/accounts/settings/tokens/{token.pk}/revoke/").status_code == 404


def test_someone_elses_token_cannot_be_revoked(browser):
    bob = get_user_model().objects.create_user(username="bob")
    token, _ = services.api_token_create(user=bob, name="theirs")
    assert browser.post(f"/accounts/settings/tokens/{token.pk}/revoke/").status_code == 404
    assert ApiToken.objects.get(pk=token.pk).revoked_at is None


def test_an_expired_token_is_refused_and_no_longer_listed(browser, alice):
    token, key = services.api_token_create(user=alice, name="short", expires_in_days=1)
    api = Client(headers={"Authorization": f"Bearer {key}"})
    assert api.get("/api/v1/conversations/").status_code == 200
    ApiToken.objects.filter(pk=token.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert api.get("/api/v1/conversations/").status_code == 401
    assert "short" not in browser.get("/accounts/settings/").content.decode()


def test_a_token_form_with_no_name_is_refused_with_its_error(browser, alice):
    refused = browser.post("/accounts/settings/tokens/", {"name": "", "lifetime": "7"})
    assert refused.status_code == 400
    assert "This field is required." in refused.content.decode()
    assert not ApiToken.objects.filter(user=alice).exists()


def test_defaults_for_new_conversations_reach_the_chat_page(browser, settings):
    settings.LLM_MODELS = ["dev", "other"]
    saved = browser.post(
        "/accounts/settings/preferences/",
        {"default_model": "other", "default_system_prompt": "Answer in French."},
        follow=True,
    )
    assert "Your defaults for new conversations are saved." in saved.content.decode()
    page = browser.get("/")
    config = json.loads(found(r'id="chat-config" type="application/json">(.*?)</script>', page.content.decode()))
    assert config["defaults"] == {"model": "other", "system": "Answer in French."}
    refused = browser.post("/accounts/settings/preferences/", {"default_model": "secret", "default_system_prompt": ""})
    assert refused.status_code == 400


def test_signing_out_of_other_browsers_keeps_this_one(browser, alice):
    for _ in range(2):
        Client().force_login(alice)
    assert sessions_of(alice) == 3
    done = browser.post("/accounts/settings/sessions/end-others/", follow=True)
    assert "Signed out of 2 other browser session(s)." in done.content.decode()
    assert sessions_of(alice) == 1
    assert browser.get("/accounts/settings/").status_code == 200


def test_a_password_change_keeps_this_browser_and_ends_the_others(browser, alice):
    other = Client()
    other.force_login(alice)
    changed = browser.post(
        "/accounts/password/",
        {
            "old_password": PASSWORD,
            "new_password1": "a brand new passphrase",
            "new_password2": "a brand new passphrase",
        },
        follow=True,
    )
    assert "Your password is changed." in changed.content.decode()
    assert sessions_of(alice) == 1
    assert browser.get("/accounts/settings/").status_code == 200
    assert other.get("/accounts/settings/").status_code == 302  # to the login page
    wrong = browser.post("/accounts/password/", {"old_password": "nope", "new_password1": "x", "new_password2": "x"})
    assert wrong.status_code == 200 and "Your old password was entered incorrectly" in wrong.content.decode()


def test_a_password_reset_by_email(alice):
    visitor = Client()
    assert "Forgot your password?" in visitor.get("/accounts/login/").content.decode()
    sent = visitor.post("/accounts/password/reset/", {"email": "alice@example.com"}, follow=True)
    assert "Check your email" in sent.content.decode()
    [email] = mail.outbox
    assert email.to == ["alice@example.com"] and "alice" in email.body
    link = found(r"http://testserver(/accounts/password/reset/\S+)", str(email.body))
    form = visitor.get(link, follow=True)
    assert "Choose a new password" in form.content.decode()
    done = visitor.post(
        form.redirect_chain[-1][0], {"new_password1": "reset passphrase 42", "new_password2": "reset passphrase 42"},
        follow=True,
    )  # fmt: skip
    assert "Your password is set" in done.content.decode()
    logged_in = Client().post("/accounts/login/", {"username": "alice", "password": "reset passphrase 42"})
    assert logged_in.status_code == 302
    assert "This link no longer works" in visitor.get(link, follow=True).content.decode()


def test_an_unknown_address_gets_the_same_answer_and_no_mail(alice):
    sent = Client().post("/accounts/password/reset/", {"email": "nobody@example.com"}, follow=True)
    assert "Check your email" in sent.content.decode()
    assert mail.outbox == []


def test_signup_closed_by_default(settings):
    assert settings.SIGNUP_MODE == "closed"
    assert Client().get("/accounts/signup/").status_code == 404
    assert "Create an account" not in Client().get("/accounts/login/").content.decode()


def test_open_signup_creates_an_account_and_signs_in(settings):
    settings.SIGNUP_MODE = "open"
    visitor = Client()
    assert "Create an account" in visitor.get("/accounts/login/").content.decode()
    fields = {"username": "newcomer", "email": "", "password1": "a fine passphrase", "password2": "a fine passphrase"}
    created = visitor.post("/accounts/signup/", fields)
    assert created.status_code == 302 and created["Location"] == "/"
    assert visitor.get("/").status_code == 200
    taken = Client().post("/accounts/signup/", {**fields, "email": "x@example.com"})
    assert taken.status_code == 200 and "A user with that username already exists." in taken.content.decode()


def test_invitations_make_one_account_each(settings, alice):
    settings.SIGNUP_MODE = "invite"
    assert Client().get("/accounts/signup/").status_code == 404
    staff = get_user_model().objects.create_superuser(username="admin", password="pw")
    admin = Client()
    admin.force_login(staff)
    made = admin.post("/admin/accounts/invitation/add/", {"note": "for carol", "valid_days": "3"}, follow=True)
    link = found(r"http://testserver(/accounts/signup/[^/<]+/)", made.content.decode())
    invitation = Invitation.objects.get()
    assert invitation.created_by == staff and invitation.key_hash not in link

    fields = {"username": "carol", "email": "", "password1": "a fine passphrase", "password2": "a fine passphrase"}
    assert Client().post(link, fields).status_code == 302
    invitation.refresh_from_db()
    assert invitation.used_by is not None and invitation.used_by.username == "carol"
    again = Client().post(link, {**fields, "username": "dave"})
    assert again.status_code == 410
    assert not get_user_model().objects.filter(username="dave").exists()


def test_an_expired_invitation_is_refused(settings):
    settings.SIGNUP_MODE = "invite"
    from accounts import services as account_services

    key = account_services.invitation_issue(invitation=Invitation(note="late"), created_by=None, days=1)
    Invitation.objects.update(expires_at=timezone.now() - timedelta(minutes=1))
    assert Client().get(f"/accounts/signup/{key}/").status_code == 410
    assert Client().get("/accounts/signup/not-a-key/").status_code == 410
