"""Phones, dark mode, the reader's scroll position, screen-reader announcements and interrupted answers."""

from datetime import timedelta

import pytest
from django.utils import timezone

from conversations import services
from conversations.models import Message
from conversations.options import GenerationOptions
from tests.browser.helpers import latest_answer, send, use_model, wait_for_status

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_a_360px_phone_gets_a_drawer_and_no_sideways_scrolling(daphne, login):
    _, context = login(daphne, viewport={"width": 360, "height": 740}, has_touch=True, is_mobile=True)
    page = context.new_page()
    page.goto(daphne.origin + "/")
    page.wait_for_function("() => window.chat.connection.ready")
    assert page.locator("#sidebar").bounding_box()["x"] < 0, "the list starts off screen"
    use_model(page, "dev:tokens=300,tps=400")
    send(page, "phone")
    wait_for_status(page, latest_answer(page), "complete")
    assert page.evaluate("document.documentElement.scrollWidth") <= 360
    assert page.evaluate("document.getElementById('transcript').scrollWidth") <= 360
    # The closed drawer casts no shadow onto the page's left edge.
    assert page.evaluate("getComputedStyle(document.getElementById('sidebar')).boxShadow") == "none"
    # "Copy code" sits above the code, never over it.
    overlaps = page.evaluate(
        """() => [...document.querySelectorAll('.rendered pre.has-copy')].map((pre) => {
          const button = pre.querySelector('.copy-code').getBoundingClientRect();
          return button.bottom - pre.querySelector('code').getBoundingClientRect().top;
        })"""
    )
    assert overlaps and all(overlap <= 1 for overlap in overlaps), overlaps
    page.click("#open-sidebar")
    assert page.get_attribute("#open-sidebar", "aria-expanded") == "true"
    page.wait_for_function("() => document.getElementById('sidebar').getBoundingClientRect().x >= 0")
    page.click("#conversations li a")
    page.wait_for_function("() => document.getElementById('sidebar').getBoundingClientRect().x < 0")


def test_dark_mode_follows_the_system_setting(daphne, login):
    backgrounds = {}
    for scheme in ("light", "dark"):
        _, context = login(daphne, color_scheme=scheme)
        page = context.new_page()
        page.goto(daphne.origin + "/")
        backgrounds[scheme] = page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert backgrounds == {"light": "rgb(255, 255, 255)", "dark": "rgb(21, 23, 26)"}


def test_following_stops_when_the_reader_scrolls_up_and_jump_brings_them_back(page):
    use_model(page, "dev:tokens=1500,tps=150,ttft=0.05")
    send(page, "a long one to scroll")
    answer = latest_answer(page)
    at_bottom = "() => { const t = document.getElementById('transcript');"
    at_bottom += " return t.scrollHeight - t.scrollTop - t.clientHeight < 48; }"
    page.wait_for_function(
        "() => { const t = document.getElementById('transcript'); return t.scrollHeight > 2 * t.clientHeight; }"
    )
    assert page.evaluate(f"({at_bottom})()"), "the transcript follows the answer"
    page.mouse.move(600, 300)
    page.mouse.wheel(0, -600)
    page.wait_for_timeout(300)
    place = page.evaluate("document.getElementById('transcript').scrollTop")
    page.wait_for_selector("#jump:not([hidden])")
    page.wait_for_timeout(800)  # more text arrives meanwhile
    assert page.evaluate("document.getElementById('transcript').scrollTop") == place, "the reader keeps their place"
    page.click("#jump")
    page.wait_for_function(at_bottom)
    wait_for_status(page, answer, "complete")
    page.wait_for_function(at_bottom)


def test_answers_are_announced_politely_once_not_per_token(page):
    page.evaluate(
        """() => {
          const announcer = document.getElementById("announcer");
          window.announcements = [];
          new MutationObserver(() => window.announcements.push(announcer.textContent))
            .observe(announcer, { childList: true, characterData: true, subtree: true });
        }"""
    )
    assert page.get_attribute("#announcer", "aria-live") == "polite"
    assert page.get_attribute("#messages", "aria-live") is None
    use_model(page, "dev:tokens=300,tps=200")
    send(page, "announce")
    wait_for_status(page, latest_answer(page), "complete")
    page.wait_for_function("() => window.announcements.includes('Answer complete.')")
    assert len(page.evaluate("window.announcements")) <= 3


def test_an_interrupted_answer_shows_its_partial_text_and_says_so(daphne_factory, login, transactional_db):
    server = daphne_factory(CHAT_SWEEP_SECONDS="0.5")
    user, context = login(server)
    turn = services.message_send(
        user=user, client_id="orphan", conversation_id=None, content="lost", options=GenerationOptions()
    )
    # An answer whose process died: still `streaming`, its lease run out, some text saved.
    Message.objects.filter(pk=turn.assistant_message.pk).update(
        content="Half an answer", lease_expires_at=timezone.now() + timedelta(seconds=2)
    )
    page = context.new_page()
    page.goto(f"{server.origin}/c/{turn.conversation.pk}/")
    answer = str(turn.assistant_message.pk)
    page.wait_for_selector(f'.message[data-id="{answer}"][data-status="streaming"]')
    wait_for_status(page, answer, "interrupted", timeout=15_000)
    message = page.locator(f'.message[data-id="{answer}"]')
    assert message.locator(".rendered").inner_text() == "Half an answer"
    assert "Interrupted" in message.locator(".status").inner_text()
    assert message.locator("button.regenerate").inner_text() == "Retry"


CONTRAST = """(selector) => {
  const node = document.querySelector(selector);
  const rgb = (value) => value.match(/[\\d.]+/g).slice(0, 3).map(Number);
  let opacity = 1;
  for (let n = node; n; n = n.parentElement) opacity *= Number(getComputedStyle(n).opacity);
  let background = null;
  for (let n = node; n && !background; n = n.parentElement) {
    const color = getComputedStyle(n).backgroundColor;
    if (!color.startsWith("rgba(0, 0, 0, 0)") && color !== "transparent") background = rgb(color);
  }
  background = background || [255, 255, 255];
  const text = rgb(getComputedStyle(node).color).map((c, i) => c * opacity + background[i] * (1 - opacity));
  const luminance = ([r, g, b]) => {
    const channel = (c) => { c /= 255; return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4; };
    return 0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b);
  };
  const [light, dark] = [luminance(text), luminance(background)].sort((a, b) => b - a);
  return (light + 0.05) / (dark + 0.05);
}"""


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_message_buttons_read_at_4_5_to_1_even_when_quiet(daphne, login, scheme):
    _, context = login(daphne, color_scheme=scheme)
    page = context.new_page()
    page.goto(daphne.origin + "/")
    page.wait_for_function("() => window.chat.connection.ready")
    use_model(page, "dev:tokens=5,ttft=0")
    send(page, "Contrast, please.")
    wait_for_status(page, latest_answer(page), "complete")
    page.mouse.move(0, 0)  # nothing pointed at: the buttons are in their quiet state
    for selector in (".message.user .action.edit", ".message.user .action.copy", ".message.assistant .action.copy"):
        assert page.evaluate(CONTRAST, selector) >= 4.5, selector


def test_the_offline_badge_goes_when_the_network_returns(daphne, login):
    _, context = login(daphne)
    page = context.new_page()
    page.goto(daphne.origin + "/")
    page.wait_for_function("() => window.chat.connection.ready")
    context.set_offline(True)
    page.wait_for_selector("#app[data-state=offline]")
    assert page.text_content("#connection") == "Offline — waiting for the network"
    context.set_offline(False)
    page.wait_for_selector("#app[data-state=connected]", timeout=10_000)
    assert page.text_content("#connection") == "Connected"
