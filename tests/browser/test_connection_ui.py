"""Reloads, dropped connections, offline sends and second tabs: the text on screen is exact and appears once."""

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from playwright.sync_api import BrowserContext, Page

from conversations.models import Message
from tests.browser.helpers import (
    html_text,
    latest_answer,
    long_conversation,
    saved,
    send,
    shown_text,
    use_model,
    view_text,
    wait_for_status,
)
from tests.browser.proxy import CuttableProxy

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

SLOW = "dev:tokens=500,tps=40,ttft=0.1"


@dataclass
class Proxied:
    """A logged-in browser context that reaches daphne through a proxy whose connections can be cut."""

    proxy: CuttableProxy
    user: Any
    context: BrowserContext

    def open(self, path: str = "/") -> Page:
        page = self.context.new_page()
        page.goto(self.proxy.origin + path)
        page.wait_for_function("() => window.chat.connection.ready")
        return page


@pytest.fixture
def proxied(daphne, login) -> Iterator[Proxied]:
    proxy = CuttableProxy(daphne.port).start()
    try:
        user, context = login(daphne)
        context.add_cookies([{"name": "sessionid", "value": context.cookies()[0]["value"], "url": proxy.origin}])
        yield Proxied(proxy, user, context)
    finally:
        proxy.stop()


def wait_for_text(page, message_id: str, length: int) -> None:
    page.wait_for_function(
        "([id, length]) => (window.chat.state.views.get(id)?.text.length ?? 0) > length", arg=[message_id, length]
    )


def assert_exact_once(page, message_id: str) -> None:
    row = saved(message_id)
    assert view_text(page, message_id) == row.content
    assert shown_text(page, message_id) == html_text(row.content_html)
    assert page.locator(f'.message[data-id="{message_id}"]').count() == 1


def test_reload_mid_answer_shows_the_partial_text_and_continues_live(page):
    use_model(page, SLOW)
    send(page, f"reload me {uuid.uuid4().hex}")
    answer = latest_answer(page)
    wait_for_text(page, answer, 80)
    page.wait_for_timeout(1200)  # past a checkpoint, so the reload finds text in the database
    page.reload()
    page.wait_for_selector(f'.message[data-id="{answer}"][data-status="streaming"]')
    assert len(view_text(page, answer)) > 0, "the partial answer is there at once after the reload"
    wait_for_text(page, answer, len(view_text(page, answer)) + 10)  # and grows live
    wait_for_status(page, answer, "complete")
    assert_exact_once(page, answer)


def test_cut_connection_reconnects_by_itself_and_resumes_without_gap_or_duplicate(proxied):
    page = proxied.open()
    use_model(page, SLOW)
    send(page, "keep going through the cut")
    answer = latest_answer(page)
    wait_for_text(page, answer, 60)
    assert proxied.proxy.cut() >= 1
    page.wait_for_selector("#app[data-state=reconnecting]")
    page.wait_for_selector("#app[data-state=connected]", timeout=15_000)
    wait_for_status(page, answer, "complete")
    assert_exact_once(page, answer)
    assert proxied.proxy.accepted >= 3, "the page, its socket, and the socket again after the cut"


def test_a_message_sent_while_offline_goes_out_once_when_back(proxied):
    page = proxied.open()
    use_model(page, "dev:echo,tps=200")
    proxied.context.set_offline(True)
    proxied.proxy.cut()
    page.wait_for_selector("#app[data-state=offline]")
    content = f"sent while offline {uuid.uuid4().hex}"
    send(page, content)
    page.wait_for_selector('.message.user[data-status="queued"]')
    proxied.context.set_offline(False)
    answer = latest_answer(page)
    wait_for_status(page, answer, "complete")
    assert view_text(page, answer) == content
    assert Message.objects.filter(content=content, role="user").count() == 1
    assert page.locator(".message.user").count() == 1


def test_two_tabs_watch_one_answer_and_stop_in_one_stops_both(daphne, login):
    _, context = login(daphne)
    first = context.new_page()
    first.goto(daphne.origin + "/")
    first.wait_for_function("() => window.chat.connection.ready")
    use_model(first, SLOW)
    send(first, "two tabs")
    answer = latest_answer(first)
    conversation = str(saved(answer).conversation_id)

    second = context.new_page()
    second.goto(f"{daphne.origin}/c/{conversation}/")
    second.wait_for_selector(f'.message[data-id="{answer}"][data-status="streaming"]')
    length = len(view_text(second, answer))
    wait_for_text(second, answer, length + 20)  # the second tab watches it grow live

    second.click("#stop")
    wait_for_status(first, answer, "cancelled")
    wait_for_status(second, answer, "cancelled")
    row = saved(answer)
    assert row.status == "cancelled"
    assert view_text(first, answer) == view_text(second, answer) == row.content
    assert shown_text(first, answer) == shown_text(second, answer) == html_text(row.content_html)


def test_earlier_pages_stay_loaded_through_a_reconnect(proxied, settings):
    settings.CHAT_MAX_MESSAGES_PER_MINUTE = 100  # the history is written here at once
    conversation = long_conversation(proxied.user, 60)
    page = proxied.open(f"/c/{conversation.pk}/")
    page.wait_for_selector(".message.assistant")
    page.click("#older")
    page.wait_for_function("() => document.querySelectorAll('.message').length === 100")
    # The newest page is rendered anew by the history that follows the reconnect: mark its last node.
    page.evaluate("document.querySelector('.message:last-child').dataset.probe = 'before'")

    assert proxied.proxy.cut() >= 1
    page.wait_for_selector("#app[data-state=connected]", timeout=15_000)
    page.wait_for_function("() => !document.querySelector('[data-probe]')")

    assert page.locator(".message").count() == 100, "the earlier page is still there"
    plain = page.locator(".message .plain")
    assert plain.first.inner_text() == "question 10"
    assert plain.last.inner_text() == "question 59"
    assert page.locator("#older").is_visible(), "and so is the way to the twenty before it"
