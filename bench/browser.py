"""Browser figures: main-thread time per update and long tasks while a 10k and a 30k-character answer stream
into the chat page in Debian's Chromium."""

import statistics
from typing import Any

from playwright.sync_api import sync_playwright

from tests.browser import chromium

OBSERVE = """
window.longTasks = [];
new PerformanceObserver((list) => { for (const e of list.getEntries()) window.longTasks.push(e.duration); })
  .observe({ type: "longtask", buffered: true });
"""
# About 4 characters a token in the simulator's answers.
ANSWERS = {"10k": 2500, "30k": 7400}


def measure(port: int, session: str) -> dict[str, Any]:
    origin = f"http://127.0.0.1:{port}"
    results: dict[str, Any] = {}
    with sync_playwright() as playwright:
        browser = chromium.launch(playwright)
        try:
            for name, tokens in ANSWERS.items():
                context = browser.new_context(viewport={"width": 1200, "height": 800})
                context.add_cookies([{"name": "sessionid", "value": session, "url": origin}])
                context.add_init_script(OBSERVE)
                page = context.new_page()
                page.goto(origin + "/")
                page.wait_for_function("() => window.chat && window.chat.connection.ready")
                model = f"dev:tokens={tokens},tps=800"
                page.evaluate(
                    """m => { const s = document.getElementById("model"); s.add(new Option(m, m)); s.value = m; }""",
                    model,
                )
                page.evaluate("performance.clearMeasures('chat:update')")
                page.fill("#composer-input", f"browser {name}")
                page.press("#composer-input", "Enter")
                page.wait_for_selector(".message.assistant[data-status=complete]", timeout=120_000)
                updates = page.evaluate("performance.getEntriesByName('chat:update').map((e) => e.duration)")
                long_tasks = page.evaluate("window.longTasks")
                characters = page.evaluate("[...window.chat.state.views.values()].at(-1).length")
                results[name] = {
                    "characters": characters,
                    "updates": len(updates),
                    "update_ms_p50": statistics.median(updates),
                    "update_ms_p95": statistics.quantiles(updates, n=20)[-1],
                    "update_ms_max": max(updates),
                    "long_tasks": len(long_tasks),
                    "long_task_ms_max": max(long_tasks, default=0),
                }
                context.close()
        finally:
            browser.close()
    return results
