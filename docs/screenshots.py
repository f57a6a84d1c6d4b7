"""Renders screenshots of the chat page's main states into docs/screenshots/ (`make screenshots`).

Starts the app as `make run` does (DEBUG, SQLite in a temporary folder, the built-in simulator), logs in as
the demo user in Debian's Chromium, and captures: a finished answer in light and in dark, a phone, an answer
while it streams, and a failed answer. The pictures show the simulator's made-up text, labelled as such.
For complete glyphs install fonts-noto-cjk and fonts-noto-color-emoji.
"""

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from playwright.sync_api import Page, sync_playwright

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "screenshots"
sys.path.insert(0, str(ROOT))

from tests.browser import chromium  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_app(workdir: str) -> tuple[subprocess.Popen[bytes], str]:
    env = {
        **os.environ,
        "DJANGO_DEBUG": "1",
        "DATABASE_URL": f"sqlite:///{workdir}/screenshots.sqlite3",
        "LLM_MAX_RETRIES": "0",
        "LOG_LEVEL": "WARNING",
    }
    for name in ("REDIS_URL", "LLM_BASE_URL", "LLM_MODELS", "LLM_SIMULATOR"):
        env.pop(name, None)
    manage = [sys.executable, "manage.py"]
    subprocess.run([*manage, "migrate", "--noinput", "-v0"], cwd=ROOT, env=env, check=True)
    subprocess.run([*manage, "demouser"], cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "chatproject.asgi:application"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return server, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    server.kill()
    raise SystemExit("the app did not start")


def ask(page: Page, prompt: str, model: str) -> None:
    page.evaluate(
        """model => { const s = document.getElementById("model");
           if (![...s.options].some((o) => o.value === model)) s.add(new Option(model, model)); s.value = model; }""",
        model,
    )
    page.fill("#composer-input", prompt)
    page.press("#composer-input", "Enter")


def settle(page: Page) -> None:
    page.wait_for_selector(".message.assistant:last-child:not([data-status=streaming])", timeout=60_000)
    page.mouse.move(0, 0)
    page.wait_for_timeout(300)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as workdir, sync_playwright() as playwright:
        server, origin = start_app(workdir)
        browser = chromium.launch(playwright)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 820}, color_scheme="light")
            page = context.new_page()
            page.goto(origin + "/")
            page.fill("#id_username", "demo")
            page.fill("#id_password", "demo")
            page.click("button[type=submit]")
            page.wait_for_function("() => window.chat && window.chat.connection.ready")
            for prompt in ("Plan a week of dinners", "What is a write-ahead log?"):
                ask(page, prompt, "dev:tokens=60,tps=400")
                settle(page)
                page.click("#new-chat")
            ask(page, "How do streaming chat servers avoid duplicate text?", "dev:tokens=260,tps=400")
            settle(page)
            conversation = page.url
            page.screenshot(path=OUT / "light.png")

            dark = browser.new_context(
                viewport={"width": 1280, "height": 820}, color_scheme="dark", storage_state=context.storage_state()
            ).new_page()
            dark.goto(conversation)
            dark.wait_for_selector(".message.assistant[data-status=complete]")
            dark.wait_for_timeout(300)
            dark.screenshot(path=OUT / "dark.png")

            phone = browser.new_context(
                viewport={"width": 360, "height": 740},
                is_mobile=True,
                has_touch=True,
                device_scale_factor=2,
                storage_state=context.storage_state(),
            ).new_page()
            phone.goto(conversation)
            phone.wait_for_selector(".message.assistant[data-status=complete]")
            phone.wait_for_timeout(300)
            phone.screenshot(path=OUT / "phone.png")

            page.click("#new-chat")
            ask(page, "Explain back-pressure, slowly", "dev:tokens=400,tps=12,ttft=0.2")
            page.wait_for_function(
                "() => (document.querySelector('.message.assistant')?.textContent.length ?? 0) > 300", timeout=60_000
            )
            page.screenshot(path=OUT / "streaming.png")
            page.click("#stop")
            settle(page)

            page.click("#new-chat")
            ask(page, "This one fails", "dev:fault=http_503")
            settle(page)
            page.screenshot(path=OUT / "error.png")
        finally:
            browser.close()
            server.terminate()
            server.wait(timeout=10)
    for name in sorted(OUT.glob("*.png")):
        print(name.relative_to(ROOT))


if __name__ == "__main__":
    main()
