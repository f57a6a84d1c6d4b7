"""Small things users of other chat apps expect: where the focus is, what the tab says, the settings getting
out of the way, which model answered, renaming in place and Enter in the edit box."""

from datetime import timedelta

import pytest
from django.utils import timezone

from conversations.models import Conversation
from tests.browser.helpers import latest_answer, saved, send, use_model, wait_for_status

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_the_page_opens_ready_to_type_and_the_tab_follows_the_conversation(page):
    assert page.evaluate("document.activeElement.id") == "composer-input"
    assert page.title() == "Chat"
    page.click("#settings summary")
    assert page.locator("#settings").get_attribute("open") is not None
    model = "dev:tokens=12,tps=400,ttft=0"
    use_model(page, model)
    send(page, "Naming the tab")
    # The settings were for this message: they fold away for the answer.
    page.wait_for_function("() => !document.getElementById('settings').open")
    answer = latest_answer(page)
    wait_for_status(page, answer, "complete")
    page.wait_for_function("() => document.title === 'Naming the tab · Chat'")
    assert page.locator(f'.message[data-id="{answer}"] .message-meta .model').inner_text() == model
    # Reloaded, the conversation's page has its title from the start.
    page.reload()
    assert page.title() == "Naming the tab · Chat"


def test_rename_happens_in_place_and_enter_sends_an_edit(page):
    use_model(page, "dev:tokens=12,tps=400,ttft=0")
    send(page, "The first question")
    first = latest_answer(page)
    wait_for_status(page, first, "complete")
    conversation = str(saved(first).conversation_id)
    item = page.locator(f'#conversations li[data-id="{conversation}"]')
    item.hover()
    item.locator("button.rename").click()
    field = item.locator("input.rename-field")
    assert field.input_value() == "The first question"
    field.fill("Renamed here")
    field.press("Enter")
    assert item.locator(".rename-field").count() == 0
    page.wait_for_function("() => document.title === 'Renamed here · Chat'")
    assert item.locator("a").inner_text() == "Renamed here"
    assert saved(first).conversation.title == "Renamed here"
    # Escape leaves the title as it was.
    item.hover()
    item.locator("button.rename").click()
    item.locator("input.rename-field").fill("Not this")
    item.locator("input.rename-field").press("Escape")
    assert item.locator("a").inner_text() == "Renamed here"

    user_message = page.locator(".message.user").first
    user_message.hover()
    user_message.locator("button.edit").click()
    page.fill(".editor textarea", "A better question")
    page.press(".editor textarea", "Enter")
    second = latest_answer(page, after=[first])
    wait_for_status(page, second, "complete")
    assert page.locator(".message.user .plain").all_inner_texts() == ["A better question"]


def test_jump_to_latest_stays_clear_of_the_open_settings(page):
    use_model(page, "dev:tokens=1500,tps=150,ttft=0.05")
    send(page, "A long answer to scroll away from")
    page.wait_for_function(
        "() => { const t = document.getElementById('transcript'); return t.scrollHeight > 2 * t.clientHeight; }"
    )
    page.mouse.move(600, 300)
    page.mouse.wheel(0, -600)
    page.locator("#jump").wait_for(state="visible")
    page.click("#settings summary")
    jump, composer = page.locator("#jump").bounding_box(), page.locator("#composer").bounding_box()
    assert jump is not None and composer is not None
    assert jump["y"] + jump["height"] <= composer["y"], (jump, composer)


def test_a_thumbs_down_asks_why_and_the_reason_and_comment_are_saved(page):
    use_model(page, "dev:tokens=12,tps=400,ttft=0")
    send(page, "Rate this one down")
    answer = latest_answer(page)
    wait_for_status(page, answer, "complete")
    message = page.locator(f'.message[data-id="{answer}"]')
    message.locator("button.feedback-down").click()
    form = message.locator("form.feedback-form")
    form.wait_for()
    # The thumbs down counts at once; the reason is a second, optional step.
    page.wait_for_selector(f'.message[data-id="{answer}"] button.feedback-down[aria-pressed="true"]')
    form.get_by_label("Incomplete or cut short").check()
    form.get_by_label("Tell us more (optional)").fill("It stopped mid-sentence.")
    form.get_by_role("button", name="Send feedback").click()
    assert form.count() == 0
    page.wait_for_function("id => window.chat.state.views.get(id).feedback() === 'down'", arg=answer)
    for _ in range(50):
        row = saved(answer)
        if row.feedback_comment:
            break
        page.wait_for_timeout(100)
    assert (row.feedback, row.feedback_reason, row.feedback_comment) == (
        "down",
        "incomplete",
        "It stopped mid-sentence.",
    )
    # "Not now" leaves the thumbs down as it is, without a reason.
    message.locator("button.feedback-down").click()  # cleared
    message.locator("button.feedback-down").click()  # down again
    message.locator("form.feedback-form").get_by_role("button", name="Not now").click()
    page.wait_for_selector(f'.message[data-id="{answer}"] button.feedback-down[aria-pressed="true"]')
    assert message.locator("form.feedback-form").count() == 0


def test_the_list_is_grouped_by_day_and_a_pinned_conversation_stays_on_top(daphne, login, make_user):
    owner, session = make_user()
    now = timezone.now()
    for title, age in (("Last month's plan", timedelta(days=40)), ("Yesterday's notes", timedelta(days=1))):
        conversation = Conversation.objects.create(owner=owner, title=title, model="dev")
        Conversation.objects.filter(pk=conversation.pk).update(updated_at=now - age)
    _, context = login(daphne, session=(owner, session))
    page = context.new_page()
    page.goto(daphne.origin + "/")
    page.wait_for_function("() => window.chat.connection.ready")
    use_model(page, "dev:tokens=8,tps=400,ttft=0")
    send(page, "Something for today")
    wait_for_status(page, latest_answer(page), "complete")
    sidebar = "#conversations > li"
    page.wait_for_function(f"() => document.querySelectorAll('{sidebar}[data-id]').length === 3")
    labels = page.locator(sidebar).evaluate_all(
        "nodes => nodes.map((n) => (n.classList.contains('group') ? '# ' : '') + n.querySelector('h2, a').textContent)"
    )
    assert labels == [
        "# Today", "Something for today", "# Yesterday", "Yesterday's notes", "# Older", "Last month's plan",
    ]  # fmt: skip

    old = page.locator(f"{sidebar}", has_text="Last month's plan")
    old.hover()
    old.locator("button.pin").click()
    page.wait_for_function(
        "() => document.querySelector('#conversations > li:nth-child(2) a')?.textContent === \"Last month's plan\""
    )
    assert page.locator(f"{sidebar}").first.text_content() == "Pinned"
    assert old.locator("button.pin").get_attribute("aria-pressed") == "true"
    # A new answer elsewhere does not move it from the top; a reload keeps it there.
    send(page, "More for today")
    wait_for_status(page, latest_answer(page, after=[]), "complete")
    page.reload()
    page.wait_for_function("() => document.querySelectorAll('#conversations > li[data-id]').length === 3")
    assert page.locator(f"{sidebar}").nth(1).locator("a").inner_text() == "Last month's plan"
    assert Conversation.objects.get(title="Last month's plan").pinned_at is not None
