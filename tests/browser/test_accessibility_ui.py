"""Accessibility as a tested property: axe-core (a local copy, tests/browser/axe) finds no serious or
critical violation on the chat page, the login page, a shared conversation or the admin transcript, in light
and dark; and messages are labelled by who said them."""

from pathlib import Path
from typing import Any

import pytest

from conversations import services
from conversations.options import GenerationOptions
from tests.browser.helpers import latest_answer, send, use_model, wait_for_status
from tests.support import ROOT, require

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

AXE = ROOT / "tests" / "browser" / "axe" / "node_modules" / "axe-core" / "axe.min.js"
# Math, checkboxes, a table and code: the rendered parts of an answer an audit should see.
PROMPT = "Energy $E=mc^2$.\n\n- [x] done\n\n| a | b |\n|--:|---|\n| 1 | 2 |\n\n```python\nprint(1)\n```"

SERIOUS = """async () => {
  const result = await axe.run(document, { resultTypes: ["violations"] });
  return result.violations
    .filter((violation) => violation.impact === "serious" || violation.impact === "critical")
    .map((violation) => ({ id: violation.id, impact: violation.impact, help: violation.help,
                           nodes: violation.nodes.slice(0, 5).map((node) => node.target.join(" ")) }));
}"""


@pytest.fixture(scope="module")
def axe() -> str:
    require("axe-core (npm ci --prefix tests/browser/axe)", AXE.exists())
    return Path(AXE).read_text(encoding="utf-8")


def assert_no_serious_violation(page: Any, axe: str) -> None:
    page.evaluate(axe)
    found: list[dict[str, Any]] = page.evaluate(SERIOUS)
    assert found == [], "\n" + "\n".join(f"{v['impact']} {v['id']}: {v['help']} — {v['nodes']}" for v in found)


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_the_chat_page_with_an_answer_has_no_serious_violation(daphne, login, axe, scheme):
    # The page's CSP (Trusted Types) would refuse the audit's own script; the page itself is unchanged.
    _, context = login(daphne, color_scheme=scheme, bypass_csp=True)
    page = context.new_page()
    page.goto(daphne.origin + "/")
    page.wait_for_function("() => window.chat.connection.ready")
    use_model(page, "dev:echo,tps=2000,ttft=0")
    send(page, PROMPT)
    answer = latest_answer(page)
    wait_for_status(page, answer, "complete")
    assert_no_serious_violation(page, axe)
    assert page.locator("main").count() == 1, "one main landmark"
    message = page.locator(f'.message[data-id="{answer}"]')
    assert message.get_attribute("aria-label") == "Assistant"
    assert page.locator(".message.user").first.get_attribute("aria-label") == "You"
    # Focus moved by keyboard is visible.
    page.focus("#composer-input")
    page.keyboard.press("Shift+Tab")
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline not in ("none", ""), outline


def test_the_login_page_and_a_shared_conversation_have_no_serious_violation(daphne, browser, axe, make_user):
    context = browser.new_context(bypass_csp=True)
    try:
        page = context.new_page()
        page.goto(daphne.origin + "/accounts/login/")
        assert_no_serious_violation(page, axe)
        user, _ = make_user()
        turn = services.message_send(
            user=user, client_id="a11y", conversation_id=None, content=PROMPT, options=GenerationOptions()
        )
        services.message_finish(message_id=str(turn.assistant_message.pk), status="complete", content=PROMPT)
        share = services.share_create(user=user, conversation_id=str(turn.conversation.pk))
        page.goto(f"{daphne.origin}/s/{share.token}/")
        assert_no_serious_violation(page, axe)
    finally:
        context.close()


def test_the_admin_transcript_has_no_serious_violation(daphne, login, axe, make_user):
    reviewer, session = make_user()
    reviewer.is_staff = reviewer.is_superuser = True
    reviewer.save()
    owner, _ = make_user()
    turn = services.message_send(
        user=owner, client_id="a11y-admin", conversation_id=None, content=PROMPT, options=GenerationOptions()
    )
    services.message_finish(message_id=str(turn.assistant_message.pk), status="complete", content=PROMPT)
    _, context = login(daphne, session=(reviewer, session), bypass_csp=True)
    page = context.new_page()
    page.goto(f"{daphne.origin}/admin/conversations/conversation/{turn.conversation.pk}/change/")
    assert_no_serious_violation(page, axe)
