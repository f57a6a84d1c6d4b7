"""A /v1 client that goes away stops its answer, as closing an OpenAI stream stops the model: mid-stream,
before the first token, or waiting for a non-streamed answer. The partial text is kept as cancelled, the
upstream request is closed, and the user's concurrency slot is free for the next call."""

import time

import httpx
import openai
import pytest

from conversations.models import Conversation, Message
from tests.support import unique

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

SLOW = "dev:tps=20,tokens=400"


def sdk(server, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.origin}/v1", api_key=key, max_retries=0, timeout=30)


def ended(message_id: str, timeout: float = 5.0) -> Message:
    """The answer once it is no longer streaming (within `timeout`)."""
    deadline = time.monotonic() + timeout
    while (message := Message.objects.get(pk=message_id)).status == Message.Status.STREAMING:
        assert time.monotonic() < deadline, "the answer was still being written after its client left"
        time.sleep(0.05)
    return message


def outcome(upstream, key: str) -> str:
    deadline = time.monotonic() + 5
    while (record := upstream.stats.find(key)[-1]).outcome == "streaming" and time.monotonic() < deadline:
        time.sleep(0.05)
    return str(record.outcome)


def test_closing_a_stream_cancels_its_answer_and_frees_the_slot(daphne, principal, upstream):
    owner = principal()
    client = sdk(daphne, owner.token)
    for _ in range(3):  # more than the 2 answers a user may have at once: each closed one must free its slot
        key = unique()
        stream = client.chat.completions.with_raw_response.create(
            model=f"{SLOW},key={key}", messages=[{"role": "user", "content": "Go on and on."}], stream=True
        )
        answer_id = stream.headers["x-message-id"]
        chunks = stream.parse()
        received = ""
        for chunk in chunks:
            received += chunk.choices[0].delta.content or ""
            if len(received) > 20:
                break
        chunks.close()
        answer = ended(answer_id)
        assert answer.status == Message.Status.CANCELLED
        assert answer.content.startswith(received), "the text the client saw is kept"
        assert outcome(upstream, key) == "client_disconnected"


def test_leaving_before_the_first_token_stops_the_answer_and_leaves_no_empty_conversation(daphne, principal, upstream):
    owner = principal()
    key = unique()
    body = {"model": f"dev:ttft=30,key={key}", "stream": True, "messages": [{"role": "user", "content": "Hello?"}]}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{daphne.origin}/v1/chat/completions", json=body, headers=owner.bearer, timeout=1.0)
    assert outcome(upstream, key) == "client_disconnected"
    deadline = time.monotonic() + 5
    while Conversation.objects.filter(owner=owner.user).exists():
        assert time.monotonic() < deadline, "the call's empty conversation is still there"
        time.sleep(0.05)


def test_leaving_a_non_streamed_request_cancels_the_answer(daphne, principal, upstream):
    owner = principal()
    key = unique()
    body = {"model": f"{SLOW},key={key}", "messages": [{"role": "user", "content": "Take your time."}]}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{daphne.origin}/v1/chat/completions", json=body, headers=owner.bearer, timeout=1.5)
    [answer] = Message.objects.filter(owner=owner.user, role="assistant")
    cancelled = ended(str(answer.pk))
    assert cancelled.status == Message.Status.CANCELLED and cancelled.content, "the partial text is kept"
    assert outcome(upstream, key) == "client_disconnected"
