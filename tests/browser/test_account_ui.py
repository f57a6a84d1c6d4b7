"""Accounts in the browser: signed out while a page is open, and signing in again without losing anything."""

import re
import uuid
from typing import Any

import pytest
from django.test import Client

from tests.browser.helpers import latest_answer, saved, send, use_model, user_with_password, wait_for_status

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PASSWORD = "a long passphrase"


def new_user() -> Any:
    return user_with_password(f"r-{uuid.uuid4().hex[:8]}", PASSWORD)


def test_a_logout_in_another_tab_signs_the_page_out_and_signing_in_again_keeps_the_draft(daphne, login):
    user = new_user()
    client = Client()
    client.force_login(user)
    _, context = login(daphne, session=(user, client.cookies["sessionid"].value))
    chat = context.new_page()
    chat.goto(daphne.origin + "/")
    chat.wait_for_function("() => window.chat.connection.ready")
    use_model(chat, "dev:tokens=200,tps=40")
    send(chat, "Write while I log out elsewhere.")
    answer = latest_answer(chat)
    chat.fill("#composer-input", "a draft I have not sent")
    conversation_path = f"/c/{saved(answer).conversation_id}/"
    chat.wait_for_url(re.compile(re.escape(conversation_path)))

    other = context.new_page()
    other.goto(daphne.origin + "/")
    other.click("details.account summary")
    other.click("details.account button[type=submit]")
    other.wait_for_url(re.compile(r"/accounts/login/"))

    chat.wait_for_selector("#signed-out:not([hidden])", timeout=5_000)
    assert chat.get_attribute("#app", "data-state") == "signed-out"
    assert chat.text_content("#connection") == "Signed out"
    assert chat.input_value("#composer-input") == "a draft I have not sent"
    assert chat.is_disabled("#send")
    assert chat.locator(f'.message[data-id="{answer}"]').is_visible(), "the transcript stays on screen"
    wait_for_status(chat, answer, "streaming")  # as last seen: the answer goes on on the server

    chat.click("#sign-in-again")
    chat.wait_for_url(re.compile(r"/accounts/login/\?next="))
    chat.fill("#id_username", user.username)
    chat.fill("#id_password", PASSWORD)
    chat.click("button[type=submit]")
    chat.wait_for_url(re.compile(re.escape(conversation_path) + "$"))
    chat.wait_for_selector("#app[data-state=connected]")
    assert chat.input_value("#composer-input") == "a draft I have not sent"
    wait_for_status(chat, answer, "complete")


def test_a_password_change_signs_other_browsers_out_and_keeps_this_ones_tabs(daphne, login):
    user = new_user()
    sessions = []
    for _ in range(2):
        client = Client()
        client.force_login(user)
        sessions.append((user, client.cookies["sessionid"].value))
    _, here = login(daphne, session=sessions[0])
    _, elsewhere = login(daphne, session=sessions[1])
    chat, other_browser = here.new_page(), elsewhere.new_page()
    for page in (chat, other_browser):
        page.goto(daphne.origin + "/")
        page.wait_for_function("() => window.chat.connection.ready")
    chat.evaluate(  # counts the handshakes from now on
        "() => { window.readyCount = 0; const original = window.chat.connection.onEvent;"
        " window.chat.connection.onEvent = (e) => { if (e.type === 'ready') window.readyCount++; original(e); }; }"
    )

    settings = here.new_page()
    settings.goto(daphne.origin + "/accounts/settings/")
    settings.click("text=Change your password")
    settings.fill("#id_old_password", PASSWORD)
    settings.fill("#id_new_password1", "another long passphrase")
    settings.fill("#id_new_password2", "another long passphrase")
    settings.click("button[type=submit]")
    settings.wait_for_selector("text=Your password is changed.")

    other_browser.wait_for_selector("#signed-out:not([hidden])", timeout=5_000)
    # This browser's session moved to a new key: its tab was closed as signed out, tried once more with the new
    # cookie, and is connected again.
    chat.wait_for_function("() => window.readyCount > 0", timeout=5_000)
    assert chat.get_attribute("#app", "data-state") == "connected"
    assert chat.locator("#signed-out").is_hidden()
