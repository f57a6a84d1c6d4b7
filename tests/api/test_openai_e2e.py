"""The OpenAI-compatible endpoint driven by the official `openai` SDK against a real daphne process."""

import time

import httpx
import openai
import pytest

from conversations.models import Conversation, Message
from tests.support import unique

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def sdk(server, key: str) -> openai.OpenAI:
    # No SDK retries: each test makes exactly the requests it means to.
    return openai.OpenAI(base_url=f"{server.origin}/v1", api_key=key, max_retries=0, timeout=30)


def test_non_streaming_completion_is_answered_and_recorded_as_a_conversation(daphne, principal, upstream):
    owner = principal()
    key = unique()
    client = sdk(daphne, owner.token)
    raw = client.chat.completions.with_raw_response.create(
        model=f"dev:echo=1,key={key}",
        messages=[
            {"role": "system", "content": "You repeat things."},
            {"role": "user", "content": "First question"},
            {"role": "assistant", "content": "First answer"},
            {"role": "user", "content": [{"type": "text", "text": "Repeat: "}, {"type": "text", "text": "café ☕"}]},
        ],
        temperature=0.2,
    )
    completion = raw.parse()
    assert completion.object == "chat.completion"
    [choice] = completion.choices
    assert (choice.message.role, choice.message.content, choice.finish_reason) == (
        "assistant",
        "Repeat: café ☕",
        "stop",
    )
    assert completion.usage is not None and completion.usage.completion_tokens > 0
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens

    conversation = Conversation.objects.get(pk=raw.headers["X-Conversation-Id"])
    assert conversation.owner_id == owner.user.pk
    assert (conversation.system_prompt, conversation.temperature) == ("You repeat things.", 0.2)
    transcript = [(m.role, m.content, m.status) for m in conversation.messages.order_by("seq")]
    assert transcript == [
        ("user", "First question", "complete"),
        ("assistant", "First answer", "complete"),
        ("user", "Repeat: café ☕", "complete"),
        ("assistant", "Repeat: café ☕", "complete"),
    ]
    assert str(Message.objects.get(pk=raw.headers["X-Message-Id"]).conversation_id) == str(conversation.pk)
    [record] = upstream.stats.find(key)
    assert record.outcome == "complete"
    # The user sees it through the REST API too.
    listed = httpx.get(f"{daphne.origin}/api/v1/conversations/", headers=owner.bearer).json()["results"]
    assert str(conversation.pk) in {c["id"] for c in listed}


def test_streaming_completion_with_usage(daphne, principal, upstream):
    owner = principal()
    key = unique()
    stream = sdk(daphne, owner.token).chat.completions.create(
        model=f"dev:tps=200,tokens=80,key={key}",
        messages=[{"role": "user", "content": "Tell me about streams."}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    texts = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(texts) > 1, "the text arrives in several chunks"
    assert chunks[0].choices[0].delta.role == "assistant"
    [finish] = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == "stop"
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens == 80
    assert chunks[-1].choices == []
    assert len({c.id for c in chunks}) == 1
    answer = Message.objects.get(owner=owner.user, role="assistant")
    assert "".join(texts) == answer.content
    assert answer.status == Message.Status.COMPLETE
    [record] = upstream.stats.find(key)
    assert record.outcome == "complete"


def test_models_list(daphne, principal):
    models = sdk(daphne, principal().token).models.list()
    assert [m.id for m in models.data] == ["dev"]


def test_upstream_rate_limit_surfaces_as_the_sdks_rate_limit_error(daphne, principal, upstream):
    key = unique()
    with pytest.raises(openai.RateLimitError) as caught:
        sdk(daphne, principal().token).chat.completions.create(
            model=f"dev:fault=http_429,key={key}", messages=[{"role": "user", "content": "hello"}]
        )
    assert caught.value.status_code == 429
    assert caught.value.code == "rate_limited"
    assert caught.value.type == "rate_limit_error"
    # The engine retried before giving up, as for the chat.
    assert len(upstream.stats.find(key)) > 1


def test_upstream_failure_before_the_first_token_of_a_stream_arrives_in_the_stream(daphne, principal):
    caller = principal()
    client = sdk(daphne, caller.token)
    # The stream was accepted (status and headers at once): the model's failure is an error object in it,
    # which the SDK raises while iterating, with the failure's code.
    stream = client.chat.completions.create(
        model=f"dev:fault=http_401,key={unique()}", messages=[{"role": "user", "content": "hello"}], stream=True
    )
    with pytest.raises(openai.APIError) as caught:
        for _ in stream:
            pass
    assert caught.value.code == "upstream_auth"
    # A call that got no text leaves no conversation: the server deletes it once the stream has ended, and
    # the test's own clean-up must not race that delete.
    deadline = time.monotonic() + 10
    while Conversation.objects.filter(owner=caller.user).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Conversation.objects.filter(owner=caller.user).exists()


def test_upstream_failure_mid_stream_raises_the_sdks_api_error(daphne, principal):
    stream = sdk(daphne, principal().token).chat.completions.create(
        model=f"dev:fault=midstream_error,fault_after=5,key={unique()}",
        messages=[{"role": "user", "content": "hello"}],
        stream=True,
    )
    received: list[str] = []

    def read() -> None:
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                received.append(chunk.choices[0].delta.content)

    with pytest.raises(openai.APIError) as caught:
        read()
    assert received, "the text before the failure arrives"
    assert caught.value.code == "upstream_error"


def test_authentication_and_request_errors_are_the_sdks_exceptions(daphne, principal):
    owner = principal()
    with pytest.raises(openai.AuthenticationError):
        sdk(daphne, "chat_not-a-real-token").models.list()
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(daphne, owner.token).chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hello"}]
        )
    assert (caught.value.code, caught.value.param) == ("model_not_allowed", "model")
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(daphne, owner.token).chat.completions.create(
            model="dev", messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yes?"}]
        )
    assert caught.value.param == "messages[1]"
    assert not Conversation.objects.filter(owner=owner.user).exists(), "a refused request records nothing"
