"""What a test does on the chat page, in the page's own terms."""

import uuid
from html.parser import HTMLParser
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import PBKDF2PasswordHasher
from playwright.sync_api import Page

from conversations import services
from conversations.models import Conversation, Message
from conversations.options import GenerationOptions

# The simulator's options ride in the model name; the page offers only the configured names, so a test adds
# the one it wants to the picker, as a user would pick a model.
USE_MODEL = """model => {
  const select = document.getElementById("model");
  if (![...select.options].some((option) => option.value === model)) select.add(new Option(model, model));
  select.value = model;
}"""

# The answer's text as the reader sees it: the rendered blocks and the tail, without the page's own buttons.
SHOWN_TEXT = """id => {
  const body = document.querySelector(`.message[data-id="${id}"] .message-body`).cloneNode(true);
  body.querySelectorAll("button").forEach((button) => button.remove());
  return body.querySelector(".rendered").textContent + body.querySelector(".tail").textContent;
}"""


def use_model(page: Page, model: str) -> None:
    page.evaluate(USE_MODEL, model)


def send(page: Page, text: str) -> None:
    page.fill("#composer-input", text)
    page.press("#composer-input", "Enter")


def answers(page: Page) -> list[str]:
    ids: list[str] = page.eval_on_selector_all(".message.assistant", "nodes => nodes.map((n) => n.dataset.id)")
    return ids


def latest_answer(page: Page, *, after: list[str] | None = None) -> str:
    """The id of the newest answer on the page (one not in `after`, waiting for it if need be)."""
    known = after or []
    page.wait_for_function(
        "known => [...document.querySelectorAll('.message.assistant')].some((n) => !known.includes(n.dataset.id))",
        arg=known,
    )
    return [answer for answer in answers(page) if answer not in known][-1]


def wait_for_status(page: Page, message_id: str, status: str, timeout: float = 20_000) -> None:
    page.wait_for_selector(f'.message[data-id="{message_id}"][data-status="{status}"]', timeout=timeout)


def view_text(page: Page, message_id: str) -> str:
    text: str = page.evaluate("id => window.chat.state.views.get(id).text", message_id)
    return text


def shown_text(page: Page, message_id: str) -> str:
    text: str = page.evaluate(SHOWN_TEXT, message_id)
    return text


def html_text(html: str) -> str:
    """The text a browser shows for a piece of HTML (its text nodes, entities decoded)."""

    class Text(HTMLParser):
        def __init__(self) -> None:
            super().__init__(convert_charrefs=True)
            self.parts: list[str] = []

        def handle_data(self, data: str) -> None:
            self.parts.append(data)

    parser = Text()
    parser.feed(html)
    parser.close()
    return "".join(parser.parts)


def saved(message_id: str) -> Message:
    return Message.objects.get(pk=message_id)


def wait_saved(message_id: str, status: str, page: Page, timeout: float = 20.0) -> Message:
    """The row once it reached `status` (the page is used only to wait without blocking the browser)."""
    deadline = timeout * 1000
    waited = 0
    while waited <= deadline:
        row = saved(message_id)
        if row.status == status:
            return row
        page.wait_for_timeout(100)
        waited += 100
    raise AssertionError(f"{message_id} did not reach {status}: {saved(message_id).status}")


def expected_answer(server_defaults: Any, model: str, prompt: str) -> str:
    from devllm.simulator import answer_text, parse_model

    return answer_text([{"role": "user", "content": prompt}], parse_model(model, server_defaults)[1])


def long_conversation(user: Any, turns: int) -> Conversation:
    """A finished conversation of `turns` questions ("question 0", …) and answers ("answer 0", …)."""
    conversation: Conversation | None = None
    for number in range(turns):
        turn = services.message_send(
            user=user,
            client_id=uuid.uuid4().hex,
            conversation_id=str(conversation.pk) if conversation else None,
            content=f"question {number}",
            options=GenerationOptions(),
        )
        conversation = turn.conversation
        services.message_finish(
            message_id=str(turn.assistant_message.pk), status="complete", content=f"answer {number}"
        )
    assert conversation is not None
    return conversation


def user_with_password(username: str, password: str) -> Any:
    """A user who can log in through the login form of the daphne processes: the password is hashed as they
    hash it (the test settings' fast hasher is unknown to them)."""
    hashed = PBKDF2PasswordHasher().encode(password, PBKDF2PasswordHasher().salt())
    return get_user_model().objects.create(username=username, password=hashed)
