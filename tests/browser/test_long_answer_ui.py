"""A 30,000-character answer with code blocks: rendered exactly, with the main-thread cost of every update
recorded (the figures are printed; speed is judged in the benchmark, not asserted here)."""

import json
import statistics

import pytest

from tests.browser.helpers import (
    html_text,
    latest_answer,
    saved,
    send,
    shown_text,
    use_model,
    view_text,
    wait_for_status,
)

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

OBSERVE_LONG_TASKS = """
window.longTasks = [];
new PerformanceObserver((list) => {
  for (const entry of list.getEntries()) window.longTasks.push(entry.duration);
}).observe({ type: "longtask", buffered: true });
"""


def test_a_30k_character_answer_streams_with_every_update_measured(daphne, login, capsys):
    _, context = login(daphne)
    context.add_init_script(OBSERVE_LONG_TASKS)
    page = context.new_page()
    page.goto(daphne.origin + "/")
    page.wait_for_function("() => window.chat.connection.ready")
    use_model(page, "dev:tokens=7400,tps=800,ttft=0.05")
    send(page, "A very long answer, please")
    answer = latest_answer(page)
    page.wait_for_function("() => window.longTasks !== undefined")
    page.evaluate("performance.clearMeasures('chat:update')")
    wait_for_status(page, answer, "complete", timeout=60_000)

    row = saved(answer)
    assert len(row.content) >= 30_000
    assert row.content.count("```") >= 10
    assert view_text(page, answer) == row.content
    assert shown_text(page, answer) == html_text(row.content_html)

    updates = page.evaluate("performance.getEntriesByName('chat:update').map((entry) => entry.duration)")
    long_tasks = page.evaluate("window.longTasks")
    assert len(updates) > 100, "every delta is measured"
    figures = {
        "characters": len(row.content),
        "updates": len(updates),
        "update_ms_p50": round(statistics.median(updates), 3),
        "update_ms_p95": round(statistics.quantiles(updates, n=20)[-1], 3),
        "update_ms_max": round(max(updates), 3),
        "update_ms_total": round(sum(updates), 1),
        "long_tasks": len(long_tasks),
        "long_task_ms_max": round(max(long_tasks), 1) if long_tasks else 0,
    }
    with capsys.disabled():
        print(f"\n30k-character answer in Chromium: {json.dumps(figures)}")
