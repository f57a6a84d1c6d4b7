"""Password guessing: a username is locked out from an address after repeated failures, on the chat login and
the admin login alike; staff see the lockout and lift it in the admin."""

import pytest
from axes.models import AccessAttempt
from django.contrib.auth import get_user_model
from django.test import Client

pytestmark = pytest.mark.django_db

PASSWORD = "the right passphrase"


@pytest.fixture
def alice():
    return get_user_model().objects.create_user(username="alice", password=PASSWORD, is_staff=True)


def attempt(client: Client, path: str, password: str, address: str = "203.0.113.7"):
    return client.post(path, {"username": "alice", "password": password}, REMOTE_ADDR=address)


@pytest.mark.parametrize("path", ["/accounts/login/", "/admin/login/"])
def test_the_right_password_is_refused_after_too_many_wrong_ones(alice, settings, path):
    client = Client()
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        assert attempt(client, path, "wrong").status_code == 200  # the form again, with its error
    locked = attempt(client, path, "wrong")
    assert locked.status_code == 429
    assert "Too many failed logins" in locked.content.decode()
    refused = attempt(client, path, PASSWORD)
    assert refused.status_code == 429, "the right password does not get through a lockout"
    assert "_auth_user_id" not in client.session
    # Another address is not locked out with it, and logs in.
    assert attempt(Client(), path, PASSWORD, address="198.51.100.9").status_code == 302


def test_a_success_before_the_limit_forgets_the_failures(alice, settings):
    client = Client()
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        attempt(client, "/accounts/login/", "wrong")
    assert attempt(client, "/accounts/login/", PASSWORD).status_code == 302
    assert not AccessAttempt.objects.exists()


def test_staff_see_a_lockout_in_the_admin_and_lift_it(alice, settings):
    for _ in range(settings.AXES_FAILURE_LIMIT):
        attempt(Client(), "/accounts/login/", "wrong")
    staff = Client()
    staff.force_login(get_user_model().objects.create_superuser(username="admin", password="x"))
    listing = staff.get("/admin/axes/accessattempt/")
    assert listing.status_code == 200 and "alice" in listing.content.decode()
    [lock] = AccessAttempt.objects.all()
    staff.post(
        "/admin/axes/accessattempt/", {"action": "delete_selected", "_selected_action": [lock.pk], "post": "yes"}
    )
    assert not AccessAttempt.objects.exists()
    assert attempt(Client(), "/accounts/login/", PASSWORD).status_code == 302
