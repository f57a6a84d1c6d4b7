"""Model output is untrusted: hostile markdown runs nothing and fetches nothing outside the origin."""

from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Dialog, Request

from tests.browser.helpers import latest_answer, saved, send, use_model, view_text, wait_for_status

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

# Each payload, if it ever ran, would set window.pwned or make a request to evil.example.
HOSTILE = "\n\n".join(
    [
        "Hello <script>window.pwned = 'script'</script>",
        '<img src="https://evil.example/x.png" onerror="window.pwned = \'img\'">',
        "[a link](javascript:window.pwned='link')",
        "[another](JAVASCRIPT:window.pwned='upper')",
        '<iframe src="https://evil.example/frame"></iframe>',
        "![tracking pixel](https://evil.example/pixel.png)",
        "<svg onload=\"window.pwned='svg'\"></svg>",
        '<a href="https://evil.example" onclick="window.pwned=\'click\'">styled</a>',
        "```html\n<script>window.pwned = 'code'</script>\n```",
        "[fine link](https://example.org/page)",
    ]
)


def test_hostile_model_output_runs_no_script_and_fetches_nothing_elsewhere(page, daphne):
    origin = urlsplit(daphne.origin).netloc
    foreign: list[str] = []
    dialogs: list[str] = []

    def on_request(request: Request) -> None:
        if urlsplit(request.url).netloc != origin:
            foreign.append(request.url)

    def on_dialog(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("request", on_request)
    page.on("dialog", on_dialog)
    scripts_before = page.locator("script").count()

    use_model(page, "dev:echo,tps=300")  # the simulator answers with the user's text: here, the payloads
    send(page, HOSTILE)
    answer = latest_answer(page)
    wait_for_status(page, answer, "complete")
    assert view_text(page, answer) == saved(answer).content == HOSTILE

    body = page.locator(f'.message[data-id="{answer}"] .rendered')
    body.locator("a").first.hover()
    for link in body.locator("a").all():
        link.hover()
    page.wait_for_timeout(300)
    assert page.evaluate("window.pwned") is None
    assert dialogs == []
    assert foreign == [], foreign
    assert page.locator("script").count() == scripts_before
    for tag in ("img", "iframe", "svg", "script"):
        assert body.locator(tag).count() == 0, tag
    hrefs = body.locator("a").evaluate_all("links => links.map((a) => a.getAttribute('href'))")
    assert all(href.startswith("https://") for href in hrefs), hrefs
    rels = body.locator("a").evaluate_all("links => links.map((a) => a.rel)")
    assert set(rels) == {"noopener noreferrer nofollow"}
    # The remote image became a link to it, and the code block shows the script as text.
    assert body.locator('a.image-link[href="https://evil.example/pixel.png"]').count() == 1
    assert "window.pwned = 'code'" in body.locator("pre code").inner_text()


def test_the_page_refuses_inline_script_and_raw_html_sinks(page):
    headers = page.request.get(page.url).headers
    policy = headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy and "unsafe-eval" not in policy
    assert "require-trusted-types-for 'script'" in policy
    # Trusted Types: an HTML sink fed a plain string throws, so no code path can insert unsanitized text.
    error = page.evaluate(
        """() => { try { document.body.insertAdjacentHTML("beforeend", "<b>x</b>"); return null; }
                 catch (error) { return error.name; } }"""
    )
    assert error == "TypeError"
    # An inline script can be neither written nor run.
    outcome = page.evaluate(
        """() => { const s = document.createElement("script");
                 try { s.textContent = "window.pwned = 1"; } catch (error) { return error.name; }
                 document.body.append(s); return "appended"; }"""
    )
    assert outcome == "TypeError"
    page.evaluate(
        """() => { const s = document.createElement("script"); s.append(document.createTextNode("window.pwned = 2"));
                 document.body.append(s); }"""
    )
    assert page.evaluate("window.pwned") is None
