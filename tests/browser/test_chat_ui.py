"""The chat page in real Chromium: sending, streaming, stopping, regenerating, editing, errors and feedback."""

import contextlib
import re
import uuid
from typing import Any

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

from conversations import services
from conversations.models import Conversation, Message
from conversations.options import GenerationOptions
from tests.browser.helpers import (
    expected_answer,
    html_text,
    latest_answer,
    long_conversation,
    saved,
    send,
    shown_text,
    use_model,
    user_with_password,
    view_text,
    wait_for_status,
    wait_saved,
)

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_chat_requires_login_and_logging_in_opens_it(daphne, browser):
    user = user_with_password("reader", "a long passphrase")
    context = browser.new_context()
    page = context.new_page()
    page.goto(daphne.origin + "/")
    assert re.search(r"/accounts/login/\?next=/$", page.url)
    page.fill("#id_username", "reader")
    page.fill("#id_password", "wrong")
    page.click("button[type=submit]")
    assert page.locator(".form-error").is_visible()
    page.fill("#id_password", "a long passphrase")
    page.click("button[type=submit]")
    page.wait_for_selector("#composer-input")
    assert page.url == daphne.origin + "/"
    page.wait_for_selector("#app[data-state=connected]")
    assert page.locator(".badge.simulator").is_visible(), "the simulator is labelled"
    page.click("details.account summary")
    page.click("text=Log out")
    page.wait_for_url(re.compile(r"/accounts/login/"))
    assert user.is_authenticated
    context.close()


def test_send_streams_first_words_before_the_end_and_the_final_text_is_exact(page, upstream):
    prompt, model = f"Stream to me {uuid.uuid4().hex}", "dev:tokens=300,tps=60,ttft=0.1"
    use_model(page, model)
    send(page, prompt)
    answer = latest_answer(page)
    # Words on screen while the answer is still being written.
    page.wait_for_function(
        """id => {
          const node = document.querySelector(`.message[data-id="${id}"]`);
          return node.dataset.status === "streaming" && node.querySelector(".message-body").textContent.length > 20;
        }""",
        arg=answer,
    )
    assert page.locator("#stop").is_visible() and not page.locator("#send").is_visible()
    wait_for_status(page, answer, "complete")
    row = saved(answer)
    expected = expected_answer(upstream.server.defaults, model, prompt)
    assert row.content == expected
    assert view_text(page, answer) == expected
    assert shown_text(page, answer) == html_text(row.content_html)
    assert page.locator(f'.message[data-id="{answer}"] pre code .k').count() > 0, "code is highlighted"
    assert page.locator(f'.message[data-id="{answer}"] .usage').inner_text().endswith("tokens")
    assert page.locator(".message.user .plain").inner_text() == prompt
    # The new conversation has its own address and shows in the list.
    conversation = str(row.conversation_id)
    assert page.url.endswith(f"/c/{conversation}/")
    page.wait_for_selector(f'#conversations li[data-id="{conversation}"] a[aria-current="page"]')


def test_stop_keeps_the_partial_answer_then_regenerate_then_edit(page, upstream):
    use_model(page, "dev:tokens=600,tps=25,ttft=0.1")
    send(page, "Tell me a long story")
    first = latest_answer(page)
    page.wait_for_function(
        "id => document.querySelector(`.message[data-id='${id}'] .message-body`).textContent.length > 30", arg=first
    )
    page.click("#stop")
    wait_for_status(page, first, "cancelled")
    row = wait_saved(first, "cancelled", page)
    assert 0 < len(row.content) < len(expected_answer(upstream.server.defaults, "dev:tokens=600", "x") * 2)
    assert view_text(page, first) == row.content, "the partial answer stays, exactly as saved"
    assert "Stopped" in page.locator(f'.message[data-id="{first}"] .status').inner_text()

    use_model(page, "dev:tokens=40,tps=400")
    page.click(f'.message[data-id="{first}"] button.regenerate')
    second = latest_answer(page, after=[first])
    wait_for_status(page, second, "complete")
    assert page.locator(f'.message[data-id="{first}"]').count() == 0, "the old answer leaves the transcript"
    assert saved(first).superseded_at is not None, "and is kept for review"
    assert view_text(page, second) == saved(second).content

    user_message = page.locator(".message.user").first
    user_message.hover()
    user_message.locator("button.edit").click()
    page.fill(".editor textarea", "A better question")
    page.click("text=Send edited message")
    third = latest_answer(page, after=[first, second])
    wait_for_status(page, third, "complete")
    assert page.locator(".message.user .plain").all_inner_texts() == ["A better question"]
    assert page.locator(".message.assistant").count() == 1
    assert view_text(page, third) == saved(third).content


def test_escape_stops_and_enter_sends_while_shift_enter_breaks_the_line(page):
    page.fill("#composer-input", "line one")
    page.press("#composer-input", "Shift+Enter")
    page.type("#composer-input", "line two")
    assert page.input_value("#composer-input") == "line one\nline two"
    use_model(page, "dev:tokens=600,tps=20,ttft=0.05")
    page.press("#composer-input", "Enter")
    answer = latest_answer(page)
    assert page.locator(".message.user .plain").inner_text() == "line one\nline two"
    wait_for_status(page, answer, "streaming")
    page.keyboard.press("Escape")
    wait_for_status(page, answer, "cancelled")
    assert page.locator("#send").is_visible()


def test_an_upstream_error_shows_on_its_message_with_a_retry_that_works(page):
    key = uuid.uuid4().hex
    use_model(page, f"dev:fault=http_401,fail_times=1,key={key},tokens=20")
    send(page, "Will this work?")
    failed = latest_answer(page)
    wait_for_status(page, failed, "error")
    status = page.locator(f'.message[data-id="{failed}"] .status')
    assert "Failed:" in status.inner_text() and "API key" in status.inner_text()
    retry = page.locator(f'.message[data-id="{failed}"] button.regenerate')
    assert retry.inner_text() == "Retry"
    retry.click()
    again = latest_answer(page, after=[failed])
    wait_for_status(page, again, "complete")
    assert view_text(page, again) == saved(again).content != ""


def test_feedback_is_stored_on_the_message_and_copy_buttons_copy(page, login, daphne):
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=daphne.origin)
    use_model(page, "dev:tokens=200,tps=400")
    send(page, "Something with code")
    answer = latest_answer(page)
    wait_for_status(page, answer, "complete")
    page.click(f'.message[data-id="{answer}"] button.feedback-up')
    page.wait_for_selector(f'.message[data-id="{answer}"] button.feedback-up[aria-pressed="true"]')
    assert saved(answer).feedback == "up"
    page.click(f'.message[data-id="{answer}"] button.feedback-down')
    page.wait_for_selector(f'.message[data-id="{answer}"] button.feedback-down[aria-pressed="true"]')
    assert saved(answer).feedback == "down"

    page.click(f'.message[data-id="{answer}"] .message-meta button.copy')
    assert page.evaluate("navigator.clipboard.readText()") == saved(answer).content
    code = page.locator(f'.message[data-id="{answer}"] pre').first
    code.hover()
    code.locator("button.copy-code").click()
    assert page.evaluate("navigator.clipboard.readText()") == code.locator("code").inner_text()


def test_sidebar_renames_deletes_searches_and_shows_a_live_answer_elsewhere(page, daphne):
    use_model(page, "dev:tokens=40,tps=400")
    send(page, "Gardening with tomatoes")
    first = latest_answer(page)
    wait_for_status(page, first, "complete")
    first_conversation = str(saved(first).conversation_id)

    # A long answer keeps running after switching to a new chat, and its conversation shows it is live.
    page.click("#new-chat")
    use_model(page, "dev:tokens=300,tps=40")
    send(page, "Astronomy for beginners")
    running = latest_answer(page)
    running_conversation = str(saved(running).conversation_id)
    page.click("#new-chat")
    page.wait_for_selector(f'#conversations li[data-id="{running_conversation}"].is-live .live')
    row = wait_saved(running, "complete", page)
    assert len(row.content) > 0
    page.wait_for_selector(f'#conversations li[data-id="{running_conversation}"]:not(.is-live)')

    item = page.locator(f'#conversations li[data-id="{first_conversation}"]')
    item.hover()
    item.locator("button.rename").click()
    item.locator("input.rename-field").fill("Tomatoes")
    item.locator("input.rename-field").press("Enter")
    page.wait_for_selector(f'#conversations li[data-id="{first_conversation}"] a:text-is("Tomatoes")')
    assert Conversation.objects.get(pk=first_conversation).title == "Tomatoes"

    page.fill("#search", "astronomy")
    page.wait_for_function("() => document.querySelectorAll('#conversations li[data-id]').length === 1")
    assert page.locator("#conversations li[data-id]").get_attribute("data-id") == running_conversation
    # Search covers message contents too: the simulator's answers mention "checkpoint" or "socket".
    page.fill("#search", "")
    page.wait_for_function("() => document.querySelectorAll('#conversations li[data-id]').length === 2")

    item = page.locator(f'#conversations li[data-id="{running_conversation}"]')
    item.hover()
    item.locator("button.delete").click()
    page.locator("#confirm-delete button[value=cancel]").click()
    assert Conversation.objects.filter(pk=running_conversation).exists()
    item.hover()
    item.locator("button.delete").click()
    page.locator("#confirm-delete button[value=delete]").click()
    page.wait_for_selector(f'#conversations li[data-id="{running_conversation}"]', state="detached")
    assert not Conversation.objects.filter(pk=running_conversation).exists()


def test_search_finds_text_inside_messages(page, make_user):
    use_model(page, "dev:echo,tps=400")
    send(page, "The word is zanzibar")
    wait_for_status(page, latest_answer(page), "complete")
    page.click("#new-chat")
    send(page, "Something else")
    wait_for_status(page, latest_answer(page), "complete")
    page.fill("#search", "zanzib")
    page.wait_for_function("() => document.querySelectorAll('#conversations li[data-id]').length === 1")
    assert page.locator("#conversations li a").inner_text() == "The word is zanzibar"


def wait_for_messages(page, count: int, *, at_least: bool = False) -> None:
    test = ">=" if at_least else "==="
    try:
        page.wait_for_function(f"(count) => document.querySelectorAll('.message').length {test} count", arg=count)
    except PlaywrightTimeoutError:
        state = page.evaluate(
            """() => ({shown: document.querySelectorAll('.message').length, hasMore: window.chat.state.hasMore,
                loadingOlder: window.chat.state.loadingOlder, ready: window.chat.connection.ready,
                app: document.getElementById('app').dataset.state})"""
        )
        raise AssertionError(f"expected {count} messages on the page: {state}") from None


def test_long_conversations_load_older_messages_on_demand(daphne, login, settings):
    settings.CHAT_MAX_MESSAGES_PER_MINUTE = 100  # the history is written here at once
    user, context = login(daphne)
    conversation = long_conversation(user, 60)
    page = context.new_page()
    page.goto(f"{daphne.origin}/c/{conversation.pk}/")
    page.wait_for_selector(".message.assistant")
    assert page.locator(".message").count() == 50
    assert page.locator(".message .plain").last.inner_text() == "question 59"
    page.click("#older")
    # A reader left at the top of the transcript gets the next page by itself, so it may come at once too.
    wait_for_messages(page, 100, at_least=True)
    if page.locator("#older").is_visible():
        # The last page may arrive by itself between seeing the button and clicking it (the button then
        # hides): the count below says whether it came.
        with contextlib.suppress(PlaywrightTimeoutError):
            page.click("#older", timeout=2000)
    wait_for_messages(page, 120)
    assert page.locator("#older").is_hidden()
    assert page.locator(".message .plain").first.inner_text() == "question 0"
    assert Message.objects.filter(conversation=conversation).count() == 120


def test_someone_elses_conversation_is_a_404(daphne, login, make_user):
    owner, _ = make_user()
    turn = services.message_send(
        user=owner, client_id="x", conversation_id=None, content="private", options=GenerationOptions()
    )
    _, context = login(daphne)
    page = context.new_page()
    response = page.goto(f"{daphne.origin}/c/{turn.conversation.pk}/")
    assert response is not None and response.status == 404
    assert "private" not in page.content()


def test_an_answer_says_when_earlier_messages_were_left_out_to_fit_the_context(daphne_factory, login):
    server = daphne_factory(LLM_CONTEXT_TOKENS="600", CHAT_ANSWER_RESERVE_TOKENS="100")
    _, context = login(server)
    page = context.new_page()
    page.goto(server.origin + "/")
    page.wait_for_function("() => window.chat.connection.ready")
    use_model(page, "dev:tokens=5,ttft=0,tps=2000")
    answers: list[str] = []
    for number in range(5):
        send(page, f"turn {number} " + "w" * 400)
        answers.append(latest_answer(page, after=answers))
        wait_for_status(page, answers[-1], "complete")
    first, last = (page.locator(f'.message[data-id="{answer}"] .left-out') for answer in (answers[0], answers[-1]))
    assert first.count() == 0
    assert re.fullmatch(r"\d+ earlier messages? (was|were) left out to fit the model's context", last.inner_text())
    assert saved(answers[-1]).context_left_out > 0


def test_a_conversation_with_tool_calls_shows_the_call_and_the_result(daphne, login):
    user, context = login(daphne)
    conversation = Conversation.objects.create(owner=user, title="Weather", model="dev")
    call = {"index": 0, "id": "call_1", "name": "get_weather", "arguments": '{"city": "Lyon"}'}
    rows: list[dict[str, Any]] = [
        {"role": "user", "content": "Weather in Lyon?"},
        {"role": "assistant", "content": "", "tool_calls": [call], "finish_reason": "tool_calls"},
        {"role": "tool", "content": '{"sky": "clear"}', "tool_call_id": "call_1"},
        {"role": "assistant", "content": "Clear skies in Lyon."},
    ]
    for seq, fields in enumerate(rows, start=1):
        Message.objects.create(conversation=conversation, owner=user, seq=seq, **fields)
    page = context.new_page()
    page.goto(f"{daphne.origin}/c/{conversation.pk}/")
    page.wait_for_selector(".message.tool")
    tool = page.locator(".message.tool")
    assert tool.locator(".tool-label").inner_text() == "Tool result"
    assert tool.locator("pre").inner_text() == '{"sky": "clear"}'
    assert tool.locator(".edit").count() == 0
    assert "get_weather" in page.locator(".message.assistant").first.inner_text()
    assert page.locator(".message.assistant").last.inner_text().startswith("Clear skies in Lyon.")


def test_the_sidebar_marks_and_filters_conversations_made_through_the_api(daphne, login):
    user, context = login(daphne)
    token, _ = services.api_token_create(user=user, name="script")
    Conversation.objects.create(owner=user, title="From a script", model="dev", api_token=token)
    Conversation.objects.create(owner=user, title="Typed here", model="dev")
    page = context.new_page()
    page.goto(daphne.origin + "/")
    page.wait_for_selector("#conversations li >> text=Typed here")

    def titles() -> list[str]:
        return list(page.locator("#conversations li a").all_inner_texts())

    scripted = page.locator("#conversations li", has_text="From a script")
    assert scripted.locator(".source").is_visible() and scripted.locator(".source").inner_text() == "API"
    assert page.locator("#conversations li", has_text="Typed here").locator(".source").is_hidden()
    page.select_option("#source", "api")
    page.wait_for_function("() => document.querySelectorAll('#conversations li[data-id]').length === 1")
    assert titles() == ["From a script"]
    page.select_option("#source", "chat")
    page.wait_for_function("() => document.querySelector('#conversations li a')?.textContent === 'Typed here'")
    assert titles() == ["Typed here"]
