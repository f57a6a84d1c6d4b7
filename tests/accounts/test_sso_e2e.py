"""Single sign-on end to end: real daphne, and a real OpenID Connect provider (django-oauth-toolkit in a process
of its own, tests/oidc_provider) on loopback. The browser's part is played by an HTTP client that follows the
redirects, fills the provider's login form and keeps each host's cookies, as a browser does."""

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from asgiref.sync import sync_to_async
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from django.contrib.auth import get_user_model

from tests.support import ROOT, ChatSocket, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

CLIENT_ID, CLIENT_SECRET = "chat-product", "a-client-secret-for-tests-0123456789"


@dataclass
class Provider:
    url: str  # the issuer: http://localhost:<port>/o
    env: dict[str, str]

    def manage(self, *args: str) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "django", *args], cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    def shell(self, code: str) -> str:
        return self.manage("shell", "-c", code)


@pytest.fixture
def provider(tmp_path: Path) -> Iterator[Provider]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.oidc_provider.settings",
        "OIDC_PROVIDER_DB": str(tmp_path / "idp.sqlite3"),
        "OIDC_PROVIDER_KEY": pem.decode(),
    }
    port = free_port()
    idp = Provider(f"http://localhost:{port}/o", env)
    idp.manage("migrate", "--noinput")
    idp.shell(
        "from django.contrib.auth.models import User; "
        "User.objects.create_user('ada', 'ada@example.com', 'idp-passphrase', first_name='Ada', last_name='Lovelace')"
    )
    server = subprocess.Popen(
        [sys.executable, "-m", "django", "runserver", f"127.0.0.1:{port}", "--noreload", "--nothreading"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{idp.url}/.well-known/openid-configuration", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the identity provider did not start"
            time.sleep(0.2)
        yield idp
    finally:
        server.terminate()
        server.wait(10)


def register(provider: Provider, product_origin: str) -> None:
    callback = f"{product_origin}/accounts/oidc/sso/login/callback/"
    provider.shell(
        "from oauth2_provider.models import Application; "
        f"Application.objects.create(name='chat', client_id={CLIENT_ID!r}, client_secret={CLIENT_SECRET!r}, "
        "client_type='confidential', authorization_grant_type='authorization-code', "
        f"redirect_uris={callback!r}, algorithm='RS256', skip_authorization=True)"
    )


def form_token(page: str) -> str:
    found = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
    assert found, page[:500]
    return found.group(1)


def location(response: httpx.Response) -> str:
    """Where a redirect goes, as an absolute URL (the provider redirects to relative ones)."""
    assert response.status_code == 302, (response.status_code, response.text[:500])
    return str(response.url.join(response.headers["location"]))


def sign_in_through_the_provider(browser: httpx.Client, product: str) -> httpx.Response:
    """What a person does: the login page's SSO button, the provider's form (the first time), and back."""
    login = browser.get(f"{product}/accounts/login/?next=/")
    assert "Log in with Test IdP" in login.text
    button = browser.post(
        f"{product}/accounts/oidc/sso/login/", data={"csrfmiddlewaretoken": form_token(login.text), "next": "/"}
    )
    authorize = location(button)
    assert authorize.startswith("http://localhost:")
    assert parse_qs(urlsplit(authorize).query)["code_challenge_method"] == ["S256"]
    response = browser.get(authorize)
    if "/login/" in location(response):  # not signed in at the provider yet: its login form
        form_url = location(response)
        form = browser.get(form_url)
        response = browser.post(
            form_url,
            data={
                "csrfmiddlewaretoken": form_token(form.text),
                "username": "ada",
                "password": "idp-passphrase",
                "next": parse_qs(urlsplit(form_url).query)["next"][0],
            },
        )
        response = browser.get(location(response))  # back to the authorization, now signed in
    callback = location(response)
    assert callback.startswith(f"{product}/accounts/oidc/sso/login/callback/?"), callback
    return browser.get(callback)


async def test_single_sign_on_through_a_real_openid_connect_provider(daphne_factory, provider):
    server = daphne_factory(
        fresh=True,
        OIDC_SERVER_URL=provider.url,
        OIDC_CLIENT_ID=CLIENT_ID,
        OIDC_CLIENT_SECRET=CLIENT_SECRET,
        OIDC_NAME="Test IdP",
    )
    register(provider, server.origin)

    def first_login() -> str:
        with httpx.Client(timeout=20) as browser:
            done = sign_in_through_the_provider(browser, server.origin)
            assert done.status_code == 302 and done.headers["location"] == "/", done.text[:800]
            assert browser.get(f"{server.origin}/").status_code == 200  # the chat page, signed in
            return str(browser.cookies.get("sessionid", domain="127.0.0.1"))

    session = await sync_to_async(first_login)()
    user = await sync_to_async(get_user_model().objects.get)(email="ada@example.com")
    assert (user.username, user.first_name, user.last_name) == ("ada", "Ada", "Lovelace")
    assert not user.has_usable_password()  # only the identity provider lets this account in

    socket = await ChatSocket.connect(server, session)  # the product's session is an ordinary one
    await socket.close()

    def second_login() -> None:
        with httpx.Client(timeout=20) as browser:
            assert sign_in_through_the_provider(browser, server.origin).headers["location"] == "/"

    await sync_to_async(second_login)()
    assert await sync_to_async(get_user_model().objects.filter(email="ada@example.com").count)() == 1


async def test_without_sso_configured_the_login_page_offers_none(daphne):
    async with httpx.AsyncClient(base_url=daphne.origin) as client:
        page = await client.get("/accounts/login/")
        assert "Log in with" not in page.text
        assert (await client.get("/accounts/oidc/sso/login/")).status_code == 404
