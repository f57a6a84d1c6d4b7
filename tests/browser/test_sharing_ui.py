"""Sharing from the chat page: a link anyone can open without an account, until it is stopped; and the
downloads of a conversation."""

from pathlib import Path

import pytest

from tests.browser.helpers import html_text, latest_answer, saved, send, use_model, wait_for_status

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_share_a_link_open_it_signed_out_then_stop_sharing(page, browser, daphne):
    assert page.locator("#conversation-menu").is_hidden(), "nothing to share in a new chat"
    use_model(page, "dev:tokens=30,tps=600,ttft=0")
    send(page, "Something worth sharing")
    answer = latest_answer(page)
    wait_for_status(page, answer, "complete")
    page.click("#conversation-menu summary")
    page.click("#share")
    page.locator("#share-dialog").wait_for()
    url = page.input_value("#share-url")
    assert url.startswith(daphne.origin + "/s/")

    stranger = browser.new_context()  # no session at all
    try:
        shared = stranger.new_page()
        shared.goto(url)
        assert shared.locator("h1").inner_text() == "Something worth sharing"
        assert shared.locator(".message.user .plain").inner_text() == "Something worth sharing"
        assert shared.locator(".message.assistant").get_attribute("aria-label") == "Assistant"
        assert shared.locator(".message.assistant .rendered").text_content() == html_text(saved(answer).content_html)
        assert "simulator" in shared.locator(".shared-note").inner_text()

        page.click("#share-stop")
        page.wait_for_function("() => document.getElementById('share-stop').disabled")
        assert shared.goto(url).status == 404
    finally:
        stranger.close()
    page.click("#share-close")

    page.click("#conversation-menu summary")
    with page.expect_download() as download:
        page.click("#export-md")
    assert download.value.suggested_filename == "something-worth-sharing.md"
    assert "Something worth sharing" in Path(download.value.path()).read_text(encoding="utf-8")
