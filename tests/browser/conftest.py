"""Real Chromium (Debian's package) driven by Playwright against real daphne processes."""

import os
import shutil
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Playwright, sync_playwright

from tests.browser.chromium import CHROMIUM, launch
from tests.support import Daphne, require


# Package scope: Playwright's sync API runs an event loop on the main thread while it is open, which the
# async tests elsewhere need for their own; it is closed when the browser tests are done.
@pytest.fixture(scope="package")
def playwright() -> Iterator[Playwright]:
    require("Chromium", shutil.which(CHROMIUM) is not None)
    # Playwright's sync API keeps an event loop on the main thread while tests run plain code between its
    # calls, which Django's ORM would take for async code. Only this process is concerned (the daphne
    # processes it starts drop the flag, see tests.support.daphne_env).
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as driver:
            yield driver
    finally:
        os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)


@pytest.fixture(scope="package")
def browser(playwright: Playwright) -> Iterator[Browser]:
    chromium = launch(playwright)
    yield chromium
    chromium.close()


@pytest.fixture
def login(browser: Browser, make_user) -> Iterator[Callable[..., tuple[object, BrowserContext]]]:
    """Opens a browser context logged in as a new user (or as `user` with its `session`)."""
    contexts: list[BrowserContext] = []

    def open_context(
        server: Daphne, *, session: tuple[object, str] | None = None, **options: Any
    ) -> tuple[object, BrowserContext]:
        user, cookie = session or make_user()
        context = browser.new_context(**{"viewport": {"width": 1200, "height": 800}, **options})
        context.add_cookies([{"name": "sessionid", "value": cookie, "url": server.origin}])
        context.set_default_timeout(20_000)
        contexts.append(context)
        return user, context

    yield open_context
    for context in contexts:
        context.close()


@pytest.fixture
def page(daphne: Daphne, login) -> Page:
    """A logged-in chat page on the shared daphne process."""
    _, context = login(daphne)
    chat: Page = context.new_page()
    chat.goto(daphne.origin + "/")
    chat.wait_for_function("() => window.chat && window.chat.connection.ready")
    return chat
