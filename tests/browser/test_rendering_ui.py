"""What an answer looks like while it streams and once it is done: an open code block is already a code box,
and math, task lists and aligned tables are rendered by the browser from the server's sanitized HTML."""

import pytest

from tests.browser.helpers import html_text, latest_answer, saved, send, shown_text, use_model, wait_for_status

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

CODE = "\n".join(f"value_{number} = {number}" for number in range(60))
PROMPT = (
    "Energy is $E=mc^2$, which costs $5 and $10 to print.\n\n"
    "- [x] measured\n- [ ] explained\n\n"
    "| item | price |\n|:-----|------:|\n| tea | 3 |\n\n"
    f"```python\n{CODE}\n```\n\nThat is all."
)

OPEN_CODE_BOX = """id => {
  const node = document.querySelector(`.message[data-id="${id}"]`);
  const box = node.querySelector(".tail pre.code.open");
  return node.dataset.status === "streaming" && box !== null
    && box.querySelector(".code-lang")?.textContent === "python"
    && box.querySelector("code").textContent.includes("value_3 = 3");
}"""


def test_an_open_code_block_streams_as_a_labelled_code_box_then_becomes_highlighted(page):
    use_model(page, "dev:echo,tps=60,ttft=0")
    send(page, PROMPT)
    answer = latest_answer(page)
    message = page.locator(f'.message[data-id="{answer}"]')
    page.wait_for_function(OPEN_CODE_BOX, arg=answer)
    # The fence itself is not shown as text, and the code so far is in the box as it arrived.
    assert "```" not in message.locator(".tail").inner_text()
    assert "value_0 = 0\nvalue_1 = 1" in message.locator(".tail pre code").inner_text()
    wait_for_status(page, answer, "complete")
    assert message.locator(".tail pre").count() == 0
    assert message.locator(".rendered pre.code .code-lang").inner_text() == "python"
    assert message.locator(".rendered pre.code code .n").count() > 0, "highlighted once finished"
    assert shown_text(page, answer) == html_text(saved(answer).content_html)


def test_math_task_lists_and_aligned_tables_render_natively(page):
    use_model(page, "dev:echo,tps=2000,ttft=0")
    send(page, PROMPT)
    answer = latest_answer(page)
    wait_for_status(page, answer, "complete")
    message = page.locator(f'.message[data-id="{answer}"]')
    # One formula: the dollar amounts stay text.
    math = message.locator(".rendered math")
    assert math.count() == 1
    assert "costs $5 and $10" in message.locator(".rendered p").first.inner_text()
    # Laid out as MathML: the exponent is set higher and smaller than its base.
    base, exponent = message.locator("msup > mi").bounding_box(), message.locator("msup > mn").bounding_box()
    assert base is not None and exponent is not None
    assert exponent["y"] < base["y"] and exponent["height"] < base["height"]
    boxes = message.locator("input.task-list-item-checkbox")
    assert boxes.count() == 2
    assert boxes.nth(0).is_checked() and not boxes.nth(1).is_checked()
    assert boxes.nth(0).is_disabled() and boxes.nth(1).is_disabled()
    price = message.locator("td.align-right")
    assert price.inner_text() == "3"
    assert price.evaluate("cell => getComputedStyle(cell).textAlign") == "right"
