"""The OpenAI-compatible endpoint as a gateway: JSON for every error (404, 405, 413), pacing headers on 429,
null for optional fields, models.retrieve, and a whole-prompt cap."""

import json
import time
from typing import Any

import httpx
import openai
import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from conversations import services
from conversations.models import Conversation, UserQuota
from tests.support import unique

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def owner():
    return get_user_model().objects.create_user(username="gateway")


@pytest.fixture
def api(owner):
    _, key = services.api_token_create(user=owner, name="sdk")
    return Client(headers={"Authorization": f"Bearer {key}"})


def completion(api: Client, **body):
    payload = {"model": "dev", "messages": [{"role": "user", "content": "Hi"}], **body}
    return api.post("/v1/chat/completions", json.dumps(payload), content_type="application/json")


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("get", "/v1/nowhere", 404, "not_found"),
        ("post", "/v1/completions", 404, "not_found"),
        ("delete", "/api/v1/nothing/here/", 404, "not_found"),
        ("get", "/api/v1/conversations", 404, "not_found"),  # no redirect to the slash: an API answers
        ("get", "/v1/chat/completions", 405, "method_not_allowed"),
        ("put", "/api/v1/models/", 405, "method_not_allowed"),
    ],
)
def test_every_error_under_the_api_is_json(api, method, path, status, code):
    response = getattr(api, method)(path)
    assert response.status_code == status
    assert response["Content-Type"].startswith("application/json")
    assert response.json()["error"]["code"] == code
    if path.startswith("/v1/"):
        assert "type" in response.json()["error"], "OpenAI's shape under /v1"


def test_an_oversized_body_is_a_json_413(api, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 100_000
    response = completion(api, messages=[{"role": "user", "content": "x" * 200_000}])
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"


def test_a_prompt_longer_than_the_context_is_refused_before_anything_is_written(api, owner, settings):
    settings.LLM_CONTEXT_TOKENS, settings.CHAT_ANSWER_RESERVE_TOKENS = 1000, 200
    history = [{"role": "user" if n % 2 == 0 else "assistant", "content": "y" * 400} for n in range(9)]
    response = completion(api, messages=history)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["code"], error["param"], error["type"]) == (
        "context_length_exceeded",
        "messages",
        "invalid_request_error",
    )
    assert not Conversation.objects.filter(owner=owner).exists()


def test_limits_say_when_to_come_back(api, owner, settings):
    settings.CHAT_MAX_MESSAGES_PER_MINUTE = 0
    busy = completion(api)
    assert busy.status_code == 429
    assert busy["Retry-After"] == "60"
    assert (busy["x-ratelimit-limit-requests"], busy["x-ratelimit-remaining-requests"]) == ("0", "0")
    assert busy["x-ratelimit-reset-requests"] == "60s"

    settings.CHAT_MAX_MESSAGES_PER_MINUTE = 20
    UserQuota.objects.create(user=owner, daily_tokens=0)
    spent = completion(api)
    assert spent.status_code == 429 and spent.json()["error"]["code"] == "quota_exceeded"
    assert 0 < int(spent["Retry-After"]) <= 86_400
    assert (spent["x-ratelimit-limit-tokens"], spent["x-ratelimit-remaining-tokens"]) == ("0", "0")


@pytest.mark.e2e
def test_the_sdk_retrieves_a_model_and_sends_null_for_defaults(daphne, principal):
    who = principal()
    client = openai.OpenAI(base_url=f"{daphne.origin}/v1", api_key=who.token, max_retries=0, timeout=30)
    assert client.models.retrieve("dev").id == "dev"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-9")
    body = {"model": "dev:tokens=5,ttft=0", "messages": [{"role": "user", "content": "Hi"}], "n": None}
    response = httpx.post(
        f"{daphne.origin}/v1/chat/completions",
        json={**body, "stream": None, "temperature": None, "max_tokens": None, "stream_options": None},
        headers=who.bearer,
        timeout=30,
    )
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"]


@pytest.mark.e2e
def test_imported_history_does_not_count_against_the_answers_per_minute(daphne_factory, principal):
    server = daphne_factory(CHAT_MAX_MESSAGES_PER_MINUTE="3")
    who = principal()
    history = []
    for n in range(20):
        history += [{"role": "user", "content": f"q{n}"}, {"role": "assistant", "content": f"a{n}"}]
    body = {"model": "dev:tokens=3,ttft=0", "messages": [*history, {"role": "user", "content": "and now?"}]}
    for _ in range(3):  # a fresh user's first calls, each with 20 answers of history
        response = httpx.post(f"{server.origin}/v1/chat/completions", json=body, headers=who.bearer, timeout=30)
        assert response.status_code == 200, response.text
    refused = httpx.post(f"{server.origin}/v1/chat/completions", json=body, headers=who.bearer, timeout=30)
    assert refused.status_code == 429, "the answers given here still count"


@pytest.mark.e2e
def test_a_stream_answers_at_once_and_keeps_the_line_alive_until_the_first_token(daphne_factory, principal):
    server = daphne_factory(API_KEEPALIVE_SECONDS="0.3")
    who = principal()
    body = {"model": "dev:ttft=2,tokens=5", "stream": True, "messages": [{"role": "user", "content": "Hi"}]}
    started = time.monotonic()
    with httpx.stream("POST", f"{server.origin}/v1/chat/completions", json=body, headers=who.bearer, timeout=30) as r:
        headers_at = time.monotonic() - started
        assert r.status_code == 200 and r.headers["x-message-id"]
        lines: list[str] = []
        first_text_at = None
        for line in r.iter_lines():
            lines.append(line)
            if line.startswith("data: {") and json.loads(line[6:])["choices"][0]["delta"].get("content"):
                first_text_at = time.monotonic() - started
                break
    assert first_text_at is not None
    assert first_text_at - headers_at > 1.0, "the headers did not wait for the model's first token"
    before_text = lines[:-1]
    assert json.loads(before_text[0][6:])["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert sum(line == ": keep-alive" for line in before_text) >= 2
    # The SDK reads such a stream as any other.
    client = openai.OpenAI(base_url=f"{server.origin}/v1", api_key=who.token, max_retries=0, timeout=30)
    stream = client.chat.completions.create(
        model="dev:ttft=2,tokens=5", messages=[{"role": "user", "content": "Hi"}], stream=True
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


@pytest.mark.e2e
def test_sampling_and_format_parameters_reach_the_model_server(daphne, principal, upstream):
    who = principal()
    client = openai.OpenAI(base_url=f"{daphne.origin}/v1", api_key=who.token, max_retries=0, timeout=30)
    key = unique()
    sent = {
        "stop": ["\n\n", "END"],
        "top_p": 0.9,
        "seed": 42,
        "presence_penalty": 0.5,
        "frequency_penalty": -0.5,
        "logit_bias": {"50256": -100},
        "response_format": {"type": "json_object"},
        "user": "user-1234",
        "logprobs": True,
        "top_logprobs": 2,
    }
    reply = client.chat.completions.create(
        model=f"dev:tokens=4,ttft=0,key={key}",
        messages=[{"role": "user", "content": "Answer in JSON."}],
        stop=["\n\n", "END"],
        top_p=0.9,
        seed=42,
        presence_penalty=0.5,
        frequency_penalty=-0.5,
        logit_bias={"50256": -100},
        response_format={"type": "json_object"},
        user="user-1234",
        logprobs=True,
        top_logprobs=2,
    )
    assert reply.choices[0].message.content
    [record] = upstream.stats.find(key)
    assert record.parameters == sent
    # Streamed too, and from the row (the generation reads its request back from the database).
    key = unique()
    stream = client.chat.completions.create(
        model=f"dev:tokens=4,ttft=0,key={key}", messages=[{"role": "user", "content": "Hi"}], stream=True, seed=7
    )
    assert list(stream)
    assert upstream.stats.find(key)[0].parameters == {"seed": 7}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("top_p", 1.5),
        ("seed", "42"),
        ("stop", ["a", "b", "c", "d", "e"]),
        ("presence_penalty", 3),
        ("logit_bias", {"word": 1}),
        ("response_format", {"type": "xml"}),
        ("logprobs", "yes"),
        ("top_logprobs", 21),
        ("n", 2),
    ],
)
def test_a_parameter_that_cannot_be_honoured_is_a_400_naming_it(api, owner, field, value):
    response = completion(api, **{field: value})
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["param"], error["type"]) == (field, "invalid_request_error")
    assert not Conversation.objects.filter(owner=owner).exists()


@pytest.mark.e2e
def test_one_client_thread_is_one_conversation_recorded_with_its_token(daphne, principal):
    who = principal()
    client = openai.OpenAI(base_url=f"{daphne.origin}/v1", api_key=who.token, max_retries=0, timeout=30)
    messages: list[dict[str, str]] = [{"role": "system", "content": "Be brief."}]
    conversations = set()
    for question in ("First question?", "Second question?", "Third question?"):
        messages.append({"role": "user", "content": question})
        raw = client.chat.completions.with_raw_response.create(
            model="dev:tokens=6,ttft=0",
            messages=messages,  # type: ignore[arg-type]
        )
        conversations.add(raw.headers["x-conversation-id"])
        messages.append({"role": "assistant", "content": raw.parse().choices[0].message.content or ""})
    assert len(conversations) == 1
    [conversation] = Conversation.objects.filter(owner=who.user)
    assert conversation.api_token is not None and conversation.api_token.name == "tests"
    assert conversation.messages.count() == 6
    assert list(conversation.messages.order_by("seq").values_list("content", flat=True)) == [
        m["content"] for m in messages[1:]
    ]

    # The same history with one answer changed, or from another token, is another thread.
    changed = [*messages[:2], {"role": "assistant", "content": "Not what you said."}, messages[3]]
    other = client.chat.completions.with_raw_response.create(model="dev:tokens=3,ttft=0", messages=changed)  # type: ignore[arg-type]
    assert other.headers["x-conversation-id"] not in conversations
    _, second_key = services.api_token_create(user=who.user, name="second")
    second = openai.OpenAI(base_url=f"{daphne.origin}/v1", api_key=second_key, max_retries=0, timeout=30)
    elsewhere = second.chat.completions.with_raw_response.create(
        model="dev:tokens=3,ttft=0",
        messages=messages[:4],  # type: ignore[arg-type]
    )
    assert elsewhere.headers["x-conversation-id"] not in conversations


@pytest.mark.e2e
@pytest.mark.parametrize("stream", [False, True])
def test_a_call_that_fails_before_the_model_answers_leaves_no_conversation(daphne, principal, stream):
    who = principal()
    client = openai.OpenAI(base_url=f"{daphne.origin}/v1", api_key=who.token, max_retries=0, timeout=30)

    def call() -> None:
        reply = client.chat.completions.create(
            model=f"dev:fault=http_401,key={unique()}", messages=[{"role": "user", "content": "Hi"}], stream=stream
        )
        if stream:
            list(reply)

    with pytest.raises(openai.APIError):
        call()
    deadline = time.monotonic() + 5
    while Conversation.objects.filter(owner=who.user).exists():
        assert time.monotonic() < deadline, "the failed call's conversation is still there"
        time.sleep(0.05)


@pytest.mark.e2e
def test_an_idempotency_key_reused_for_another_request_is_refused(daphne, principal):
    who = principal()
    key = unique()
    url = f"{daphne.origin}/v1/chat/completions"
    body = {"model": "dev:tokens=3,ttft=0", "messages": [{"role": "user", "content": "Once."}]}
    headers = {**who.bearer, "Idempotency-Key": key}
    first = httpx.post(url, json=body, headers=headers, timeout=30)
    again = httpx.post(url, json=body, headers=headers, timeout=30)
    assert first.status_code == again.status_code == 200
    assert first.headers["x-message-id"] == again.headers["x-message-id"], "a retry gets the first answer"
    other = httpx.post(url, json={**body, "messages": [{"role": "user", "content": "Twice?"}]}, headers=headers)
    assert other.status_code == 422
    assert (other.json()["error"]["code"], other.json()["error"]["type"]) == (
        "idempotency_key_reused",
        "invalid_request_error",
    )
    # The REST API keeps the same rule.
    rest = httpx.Client(base_url=daphne.origin, headers={**who.bearer, "Idempotency-Key": unique()}, timeout=30)
    conversation = rest.post("/api/v1/conversations/", json={}).json()["id"]
    path = f"/api/v1/conversations/{conversation}/messages/"
    assert rest.post(path, json={"content": "one", "model": "dev:tokens=3,ttft=0"}).status_code == 200
    assert rest.post(path, json={"content": "one", "model": "dev:tokens=3,ttft=0"}).status_code == 200
    refused = rest.post(path, json={"content": "two", "model": "dev:tokens=3,ttft=0"})
    assert (refused.status_code, refused.json()["error"]["code"]) == (422, "idempotency_key_reused")


def test_a_token_limited_to_some_models_uses_only_those(owner, settings):
    settings.LLM_MODELS = ["dev", "other"]
    token, key = services.api_token_create(user=owner, name="cheap only", models=["dev"])
    assert token.allowed_models == ["dev"]
    api = Client(headers={"Authorization": f"Bearer {key}"})
    assert [m["id"] for m in api.get("/v1/models").json()["data"]] == ["dev"]
    assert api.get("/v1/models/other").status_code == 404
    refused = completion(api, model="other")
    assert refused.status_code == 400
    assert (refused.json()["error"]["code"], refused.json()["error"]["param"]) == ("model_not_allowed", "model")
    conversation = api.post("/api/v1/conversations/", "{}", content_type="application/json").json()["id"]
    body = json.dumps({"content": "hi", "model": "other"})
    rest = api.post(f"/api/v1/conversations/{conversation}/messages/", body, content_type="application/json")
    assert rest.status_code == 400 and rest.json()["error"]["code"] == "model_not_allowed"


def test_tokens_are_made_for_known_models_only(owner, settings):
    settings.LLM_MODELS = ["dev", "other"]
    browser = Client(headers={"X-CSRFToken": "x" * 32})
    browser.force_login(owner)
    browser.cookies["csrftoken"] = "x" * 32
    made = browser.post("/api/v1/tokens/", json.dumps({"name": "t", "models": ["other"]}), "application/json")
    assert made.status_code == 201 and made.json()["models"] == ["other"]
    bad = browser.post("/api/v1/tokens/", json.dumps({"name": "t", "models": ["nope"]}), "application/json")
    assert (bad.status_code, bad.json()["error"]["field"]) == (400, "models")


def test_cors_is_off_by_default_and_allows_only_the_listed_origins_on_the_api(api, settings):
    preflight = {"HTTP_ORIGIN": "https://app.example.org", "HTTP_ACCESS_CONTROL_REQUEST_METHOD": "POST"}
    assert "access-control-allow-origin" not in api.options("/v1/chat/completions", **preflight)
    settings.CORS_ALLOWED_ORIGINS = ["https://app.example.org"]
    allowed = api.options("/v1/chat/completions", **preflight)
    assert allowed["access-control-allow-origin"] == "https://app.example.org"
    assert "idempotency-key" in allowed["access-control-allow-headers"]
    assert "access-control-allow-credentials" not in allowed, "tokens, never cookies"
    other = api.options("/v1/chat/completions", **{**preflight, "HTTP_ORIGIN": "https://evil.example.com"})
    assert "access-control-allow-origin" not in other
    page = api.options("/accounts/login/", **preflight)
    assert "access-control-allow-origin" not in page, "only the API"
    listed = api.get("/v1/models", HTTP_ORIGIN="https://app.example.org")
    assert "x-message-id" in listed["access-control-expose-headers"]


@pytest.mark.e2e
def test_log_probabilities_come_back_when_asked_for(daphne, principal):
    who = principal()
    client = openai.OpenAI(base_url=f"{daphne.origin}/v1", api_key=who.token, max_retries=0, timeout=30)
    ask = {"model": "dev:tokens=12,ttft=0", "messages": [{"role": "user", "content": "Probabilities?"}]}
    stream = client.chat.completions.create(**ask, logprobs=True, top_logprobs=2, stream=True)  # type: ignore[call-overload]
    text, tokens = "", list[Any]()
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
            assert chunk.choices[0].logprobs is not None, "every piece of text carries its tokens' log probabilities"
            tokens += chunk.choices[0].logprobs.content or []
    assert "".join(token.token for token in tokens) == text
    assert all(len(token.top_logprobs) == 2 and token.logprob < 0 for token in tokens)

    whole = client.chat.completions.create(**ask, logprobs=True)  # type: ignore[call-overload]
    content = whole.choices[0].logprobs.content
    assert "".join(token.token for token in content) == whole.choices[0].message.content
    plain = client.chat.completions.create(**ask)  # type: ignore[call-overload]
    assert plain.choices[0].logprobs is None
