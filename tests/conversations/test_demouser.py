"""`make run`'s demo login: made once, repaired if changed, and otherwise left alone."""

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client

pytestmark = pytest.mark.django_db


def test_running_it_again_keeps_the_demo_signed_in(settings):
    settings.DEBUG = True
    call_command("demouser")
    client = Client()
    client.force_login(get_user_model().objects.get(username="demo"))
    assert client.get("/").status_code == 200
    call_command("demouser")
    # The same password hash: the session made with the first one still lets its browser in.
    assert client.get("/").status_code == 200


def test_a_changed_demo_password_is_put_back(settings):
    settings.DEBUG = True
    call_command("demouser")
    user = get_user_model().objects.get(username="demo")
    user.set_password("something else")
    user.save()
    call_command("demouser")
    user.refresh_from_db()
    assert user.check_password("demo") and user.is_superuser


def test_it_refuses_without_debug(settings):
    settings.DEBUG = False
    with pytest.raises(CommandError):
        call_command("demouser")
