"""Upstream failures and limits end each answer with a defined status and error; nothing else suffers."""

import asyncio

import pytest
from asgiref.sync import sync_to_async

from conversations.models import Message
from tests.support import ChatSocket, unique

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

FAST_FAILURES = {"LLM_MAX_RETRIES": "1", "LLM_RETRY_MAX_WAIT": "0.2", "LLM_STALL_SECONDS": "1"}

# fault options -> (status, error code, whether a partial answer is expected)
FAILURES = {
    "fault=http_401": ("error", "upstream_auth", False),
    "fault=http_403": ("error", "upstream_auth", False),
    "fault=model_not_found": ("error", "model_not_found", False),
    "fault=http_429": ("error", "rate_limited", False),
    "fault=http_500": ("error", "upstream_unavailable", False),
    "fault=close": ("error", "upstream_connection", False),
    "fault=not_sse": ("error", "bad_upstream_response", False),
    "fault=midstream_error,fault_after=5": ("error", "upstream_error", True),
    "fault=drop,fault_after=5": ("error", "upstream_dropped", True),
    "fault=stall,fault_after=5,comments=0.2": ("error", "upstream_stalled", True),
    "fault=malformed,fault_after=5": ("complete", None, True),
}


async def test_each_upstream_failure_has_its_status_and_others_are_unaffected(daphne_factory, make_user, upstream):
    server = daphne_factory(**FAST_FAILURES)
    _, bystander_session = await sync_to_async(make_user)()
    bystander = await ChatSocket.connect(server, bystander_session)
    _, calm = await bystander.send_message("steady", client_id=unique(), model=f"dev:tps=40,tokens=200,key={unique()}")

    _, session = await sync_to_async(make_user)()
    chat = await ChatSocket.connect(server, session)
    results = {}
    for fault, (status, code, partial) in FAILURES.items():
        _, answer = await chat.send_message("try", client_id=unique(), model=f"dev:{fault},tps=200,key={unique()}")
        done = await chat.done(answer)
        saved = await sync_to_async(Message.objects.get)(pk=answer)
        results[fault] = (done["status"], (done.get("error") or {}).get("code"))
        assert saved.status == status, fault
        assert (saved.error_code or None) == code, fault
        if code:
            assert done["error"]["message"] and saved.error_message, fault
        assert bool(saved.content) == partial, fault
        assert chat.texts[answer] == saved.content, fault
    assert results == {fault: (status, code) for fault, (status, code, _) in FAILURES.items()}

    done = await bystander.done(calm, timeout=20)
    assert done["status"] == "complete"
    assert len(bystander.texts[calm]) > 0
    assert bystander.texts[calm] == (await sync_to_async(Message.objects.get)(pk=calm)).content
    for socket in (chat, bystander):
        await socket.close()


async def test_rate_limited_once_is_retried_before_the_first_token(daphne_factory, make_user, upstream):
    server = daphne_factory(LLM_MAX_RETRIES="2", LLM_RETRY_MAX_WAIT="2")
    _, session = await sync_to_async(make_user)()
    chat = await ChatSocket.connect(server, session)
    key = unique()
    _, answer = await chat.send_message("retry", client_id=unique(), model=f"dev:fault=http_429,fail_times=1,key={key}")
    done = await chat.done(answer)
    assert done["status"] == "complete"
    assert [r.outcome for r in upstream.stats.find(key)] == ["fault", "complete"]
    await chat.close()


async def test_concurrent_generation_limit_per_user(daphne, make_user):
    _, session = await sync_to_async(make_user)()
    chat = await ChatSocket.connect(daphne, session)
    turns = [
        await chat.send_message("one", client_id=unique(), model="dev:ttft=10"),
        await chat.send_message("two", client_id=unique(), model="dev:ttft=10"),
    ]
    error = await chat.request({"type": "send", "id": "third", "content": "three", "model": "dev"}, "message")
    assert (error["type"], error.get("code"), error.get("ref")) == ("error", "too_many_generations", "third"), error
    assert await sync_to_async(Message.objects.filter(content="three").count)() == 0
    for conversation, answer in turns:
        await chat.request({"type": "open", "conversation": conversation}, "history")
        await chat.send({"type": "cancel", "message": answer})
        await chat.done(answer)
    _, answer = await chat.send_message("now fine", client_id=unique(), model="dev:tokens=3")
    assert (await chat.done(answer))["status"] == "complete"
    await chat.close()


async def test_a_busy_conversation_refuses_a_second_send(daphne, make_user):
    _, session = await sync_to_async(make_user)()
    chat = await ChatSocket.connect(daphne, session)
    conversation, answer = await chat.send_message("first", client_id=unique(), model="dev:ttft=10")
    error = await chat.request(
        {"type": "send", "id": "again", "conversation": conversation, "content": "second"}, "message"
    )
    assert error["code"] == "conversation_busy"
    await chat.send({"type": "cancel", "message": answer})
    await chat.done(answer)
    await chat.close()


async def test_output_and_duration_limits_end_with_clear_errors(daphne_factory, make_user):
    server = daphne_factory(CHAT_MAX_OUTPUT_CHARS="100", CHAT_MAX_DURATION_SECONDS="1.5")
    _, session = await sync_to_async(make_user)()
    chat = await ChatSocket.connect(server, session)
    _, long_answer = await chat.send_message("long", client_id=unique(), model="dev:tokens=400,tps=1000")
    done = await chat.done(long_answer)
    assert (done["status"], done["error"]["code"]) == ("error", "max_output")
    assert 0 < len(chat.texts[long_answer]) <= 100

    _, slow_answer = await chat.send_message("slow", client_id=unique(), model="dev:tokens=400,tps=5")
    started = asyncio.get_running_loop().time()
    done = await chat.done(slow_answer)
    assert (done["status"], done["error"]["code"]) == ("error", "max_duration")
    assert asyncio.get_running_loop().time() - started < 5
    saved = await sync_to_async(Message.objects.get)(pk=slow_answer)
    assert saved.content and saved.content == chat.texts[slow_answer]
    await chat.close()
