"""The upstream client against a real dev simulator on loopback, one per test, in the test's event loop."""

import asyncio
import itertools
import json
import logging
import time
from contextlib import aclosing

import pytest

from devllm import simulator
from streaming import upstream
from streaming.upstream import ChatRequest, StreamEnd, TextDelta, UpstreamEvent, aclose_clients, stream_chat
from tests.devllm.fixtures import collect, eventually, expected_prefix, expected_text, running_devllm, user
from tests.support import free_port, unique

# Every kind of text a stream must carry through intact: emoji (with a ZWJ sequence and a flag), CJK, a
# combining accent, right-to-left text, U+2028 inside a line, and text that looks like SSE framing.
TRICKY = "Zoë 👩\u200d💻 🇯🇵 中文 日本語 e\u0301 שלום\u2028next line\n\ndata: [DONE]\n\n: not a comment\r\nend"


@pytest.fixture
async def llm(settings):
    async with running_devllm() as server:
        settings.LLM_BASE_URL = server.base_url
        settings.LLM_RETRY_MAX_WAIT = 0.05  # keep backoffs short; Retry-After tests raise it again
        yield server


# --- the stream format -------------------------------------------------------------------------------------


@pytest.mark.parametrize("eol", ["lf", "cr", "crlf"])
async def test_every_line_ending_streams_the_exact_text(llm, eol):
    model = f"dev:eol={eol},key={unique()}"
    result = await collect(model, "line endings")
    assert result.error is None
    assert result.text == expected_text(llm, model, "line endings")
    assert result.end.finish_reason == "stop"


@pytest.mark.parametrize("split", [1, 3])
async def test_writes_split_inside_lines_and_utf8_characters_stream_the_exact_text(llm, split):
    model = f"dev:split={split},tokens=30"
    result = await collect(model, "split writes")
    expected = expected_text(llm, model, "split writes")
    assert any(len(char.encode()) > 1 for char in expected), "the answer must have multi-byte characters to cut"
    assert result.text == expected
    assert result.end.finish_reason == "stop"


async def test_keep_alive_comments_are_ignored(llm):
    model = "dev:comments=0.02,ttft=0.15,tps=100,tokens=20"
    result = await collect(model, "comments")
    assert result.text == expected_text(llm, model, "comments")
    assert result.end.malformed_chunks == 0


async def test_data_lines_without_a_space_are_read(llm):
    model = "dev:nospace"
    result = await collect(model, "no space")
    assert result.text == expected_text(llm, model, "no space")


async def test_role_only_first_chunk_yields_nothing(llm):
    result = await collect("dev:tokens=3", "role")
    assert [type(event) for event in result.events] == [TextDelta, TextDelta, TextDelta, StreamEnd]
    assert all(event.text for event in result.events if isinstance(event, TextDelta))


async def test_usage_chunk_with_empty_choices_becomes_the_stream_end_usage(llm):
    result = await collect("dev:tokens=12", "three word prompt")
    assert result.end.usage is not None
    assert (result.end.usage.prompt_tokens, result.end.usage.completion_tokens) == (3, 12)
    assert result.end.usage.total_tokens == 15


@pytest.mark.parametrize("done", ["", ",nodone"])
async def test_stream_ends_normally_with_or_without_done(llm, done):
    model = f"dev:tokens=10{done}"
    result = await collect(model, "done")
    assert result.error is None
    assert result.text == expected_text(llm, model, "done")
    assert result.end.finish_reason == "stop"


async def test_max_tokens_cuts_the_answer_with_finish_reason_length(llm):
    result = await collect("dev:tokens=40", "cut", max_tokens=7)
    assert result.text == expected_prefix(llm, "dev:tokens=40", "cut", 7)
    assert result.end.finish_reason == "length"


async def test_echo_streams_exact_unicode_text(llm):
    result = await collect("dev:echo", TRICKY)
    assert result.text == TRICKY


async def test_tool_call_arrives_in_pieces_and_is_assembled(llm):
    result = await collect("dev:tools", "find the docs")
    calls = result.tool_calls
    assert len(calls) > 3
    assert result.text == ""
    assert calls[0].name == "search_docs"
    assert calls[0].id
    assert all(call.index == 0 and call.name == "search_docs" and call.id == calls[0].id for call in calls)
    assert all(len(later.arguments) > len(earlier.arguments) for earlier, later in itertools.pairwise(calls))
    assert json.loads(calls[-1].arguments)["query"] == "find the docs"
    assert result.end.finish_reason == "tool_calls"


async def test_connections_are_reused_across_streams(llm):
    for _ in range(3):
        assert (await collect("dev:tokens=5")).error is None
    assert llm.stats.connections == 1


async def test_without_a_base_url_the_embedded_simulator_answers(settings, monkeypatch):
    monkeypatch.setattr(simulator, "_embedded", {})
    settings.LLM_BASE_URL = ""
    request_key = unique()
    result = await collect(f"dev:ttft=0,tps=5000,echo,key={request_key}", "embedded")
    assert result.text == "embedded"
    server, _ = simulator._embedded[asyncio.get_running_loop()]
    assert await simulator.embedded_base_url() == server.base_url, "one simulator per event loop"
    assert len(server.stats.find(request_key)) == 1
    await aclose_clients()
    await server.stop()


# --- HTTP failures -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("fault", "status"), [("http_401", 401), ("http_403", 403)])
async def test_refused_api_key_is_upstream_auth_and_never_retried(llm, fault, status):
    request_key = unique()
    result = await collect(f"dev:fault={fault},key={request_key}")
    assert result.error is not None
    assert (result.error.code, result.error.status) == ("upstream_auth", status)
    assert "LLM_API_KEY" in result.error.message
    assert len(llm.stats.find(request_key)) == 1


async def test_unknown_model_is_model_not_found(llm):
    request_key = unique()
    for model in (f"dev:fault=model_not_found,key={request_key}", f"nope:key={request_key}"):
        result = await collect(model)
        assert result.error is not None
        assert result.error.code == "model_not_found", model
    assert len(llm.stats.find(request_key)) == 2


async def test_other_client_errors_are_upstream_error_with_the_servers_message(llm):
    result = await collect("dev:tokens=-1")
    assert result.error is not None
    assert (result.error.code, result.error.status) == ("upstream_error", 400)
    assert "tokens must not be negative" in result.error.message


async def test_rate_limited_once_waits_for_retry_after_then_answers(llm, settings):
    settings.LLM_RETRY_MAX_WAIT = 5
    request_key = unique()
    started = time.monotonic()
    result = await collect(f"dev:fault=http_429,fail_times=1,key={request_key}")
    assert result.error is None
    assert time.monotonic() - started >= 0.95, "Retry-After: 1 must be honoured"
    assert [record.outcome for record in llm.stats.find(request_key)] == ["fault", "complete"]


async def test_rate_limited_every_time_gives_up_after_max_retries(llm, settings):
    settings.LLM_MAX_RETRIES = 2
    request_key = unique()
    started = time.monotonic()
    result = await collect(f"dev:fault=http_429,key={request_key}")
    assert result.error is not None
    assert (result.error.code, result.error.status) == ("rate_limited", 429)
    assert len(llm.stats.find(request_key)) == 3
    assert time.monotonic() - started < 0.9, "the wait is capped by LLM_RETRY_MAX_WAIT"


@pytest.mark.parametrize("fault", ["http_500", "http_503"])
async def test_server_errors_are_retried_before_the_first_token(llm, settings, fault):
    settings.LLM_MAX_RETRIES = 2
    request_key = unique()
    result = await collect(f"dev:fault={fault},fail_times=2,key={request_key}", "retry")
    assert result.error is None
    assert result.text == expected_text(llm, "dev", "retry")
    assert [record.outcome for record in llm.stats.find(request_key)] == ["fault", "fault", "complete"]


async def test_server_errors_every_time_are_upstream_unavailable(llm, settings):
    settings.LLM_MAX_RETRIES = 1
    request_key = unique()
    result = await collect(f"dev:fault=http_503,key={request_key}")
    assert result.error is not None
    assert (result.error.code, result.error.status) == ("upstream_unavailable", 503)
    assert len(llm.stats.find(request_key)) == 2


async def test_non_event_stream_answer_is_bad_upstream_response(llm):
    request_key = unique()
    result = await collect(f"dev:fault=not_sse,key={request_key}")
    assert result.error is not None
    assert result.error.code == "bad_upstream_response"
    assert "text/html" in result.error.message
    assert len(llm.stats.find(request_key)) == 1


# --- connection failures -------------------------------------------------------------------------------------


async def test_connection_closed_without_response_is_retried_then_upstream_connection(llm, settings):
    settings.LLM_MAX_RETRIES = 2
    request_key = unique()
    result = await collect(f"dev:fault=close,key={request_key}")
    assert result.error is not None
    assert result.error.code == "upstream_connection"
    assert len(llm.stats.find(request_key)) == 3


async def test_connection_closed_once_then_answered(llm):
    request_key = unique()
    result = await collect(f"dev:fault=close,fail_times=1,key={request_key}", "again")
    assert result.error is None
    assert result.text == expected_text(llm, "dev", "again")
    assert [record.outcome for record in llm.stats.find(request_key)] == ["fault", "complete"]


async def test_refused_connection_is_upstream_connection(settings):
    settings.LLM_BASE_URL = f"http://127.0.0.1:{free_port()}/v1"
    settings.LLM_MAX_RETRIES = 1
    settings.LLM_RETRY_MAX_WAIT = 0.05
    result = await collect("dev")
    assert result.error is not None
    assert result.error.code == "upstream_connection"


async def test_dropped_before_the_first_token_is_retried(llm):
    request_key = unique()
    result = await collect(f"dev:fault=drop,fault_after=0,fail_times=1,key={request_key}", "drop early")
    assert result.error is None
    assert result.text == expected_text(llm, "dev", "drop early")
    assert [record.outcome for record in llm.stats.find(request_key)] == ["fault", "complete"]


# --- failures after the first token: partial text, never retried ------------------------------------------


async def test_error_inside_the_stream_keeps_the_partial_text_and_is_not_retried(llm):
    request_key = unique()
    model = f"dev:fault=midstream_error,fault_after=5,key={request_key}"
    result = await collect(model, "mid")
    assert result.error is not None
    assert result.error.code == "upstream_error"
    assert "crashed" in result.error.message
    assert result.text == expected_prefix(llm, model, "mid", 5)
    assert len(llm.stats.find(request_key)) == 1


async def test_dropped_connection_keeps_the_partial_text_and_is_not_retried(llm):
    request_key = unique()
    model = f"dev:fault=drop,fault_after=5,key={request_key}"
    result = await collect(model, "drop")
    assert result.error is not None
    assert result.error.code == "upstream_dropped"
    assert result.text == expected_prefix(llm, model, "drop", 5)
    assert len(llm.stats.find(request_key)) == 1


async def test_stall_is_detected_although_keep_alive_comments_keep_arriving(llm):
    request_key = unique()
    model = f"dev:fault=stall,fault_after=3,comments=0.05,key={request_key}"
    started = time.monotonic()
    result = await collect(model, "stall", stall_seconds=0.5)
    elapsed = time.monotonic() - started
    assert result.error is not None
    assert result.error.code == "upstream_stalled"
    assert 0.45 <= elapsed < 2
    assert result.text == expected_prefix(llm, model, "stall", 3)
    assert len(llm.stats.find(request_key)) == 1


async def test_a_server_that_never_answers_the_request_is_upstream_stalled(settings):
    # It accepts the connection and reads the request, then sends nothing, not even the status line.
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        await asyncio.sleep(10)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    settings.LLM_BASE_URL = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"
    settings.LLM_MAX_RETRIES = 0
    try:
        started = time.monotonic()
        result = await collect("dev", "anyone there?", stall_seconds=0.5)
        assert result.error is not None and result.error.code == "upstream_stalled"
        assert time.monotonic() - started < 2
    finally:
        server.close()
        await aclose_clients()


async def test_after_the_first_text_a_paced_stream_reads_once_per_window(llm):
    # A token every 10 ms; read at most every 200 ms, each read taking all that arrived meanwhile.
    model = "dev:tps=100,tokens=60,ttft=0"
    request = ChatRequest(model=model, messages=user("paced"))
    arrivals: list[tuple[float, str]] = []
    async for event in stream_chat(request, pace=0.2):
        if isinstance(event, TextDelta):
            arrivals.append((time.monotonic(), event.text))
    assert "".join(text for _, text in arrivals) == expected_text(llm, model, "paced")
    reads = [arrivals[0][0]]
    for moment, _ in arrivals[1:]:
        if moment - reads[-1] > 0.005:
            reads.append(moment)
    # ~0.6 s of tokens: the first alone, then a read per window, not one per token.
    assert len(reads) <= 6, len(reads)
    assert all(later - earlier >= 0.19 for earlier, later in itertools.pairwise(reads[1:])), reads


async def test_malformed_chunk_is_skipped_counted_and_logged_without_contents(llm, caplog):
    model = "dev:fault=malformed,fault_after=4"
    with caplog.at_level(logging.WARNING, logger="streaming.upstream"):
        result = await collect(model, "malformed")
    assert result.error is None
    assert result.text == expected_text(llm, model, "malformed")
    assert result.end.malformed_chunks == 1
    assert [record.getMessage() for record in caplog.records] == ["skipping a malformed chunk from the model server"]
    assert "not json" not in caplog.text


# --- stopping ----------------------------------------------------------------------------------------------


async def test_cancelling_the_consumer_closes_the_upstream_connection(llm):
    request_key = unique()
    first_token = asyncio.Event()

    async def consume() -> None:
        request = ChatRequest(model=f"dev:tps=20,tokens=200,key={request_key}", messages=user("cancel me"))
        async for event in stream_chat(request):
            if isinstance(event, TextDelta):
                first_token.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first_token.wait(), 2)
    task.cancel()
    [record] = llm.stats.find(request_key)
    await eventually(lambda: record.outcome == "client_disconnected", timeout=1)
    assert record.tokens_sent < 200


async def test_cancelling_before_the_first_token_closes_the_upstream_connection(llm):
    request_key = unique()
    request = ChatRequest(model=f"dev:ttft=10,key={request_key}", messages=user("slow start"))
    task: asyncio.Task[UpstreamEvent] = asyncio.ensure_future(anext(stream_chat(request)))
    await eventually(lambda: len(llm.stats.find(request_key)) == 1, timeout=2)
    task.cancel()
    [record] = llm.stats.find(request_key)
    await eventually(lambda: record.outcome == "client_disconnected", timeout=1)
    assert record.tokens_sent == 0


async def test_closing_the_generator_closes_the_upstream_connection(llm):
    request_key = unique()
    request = ChatRequest(model=f"dev:tps=20,tokens=200,key={request_key}", messages=user("stop reading"))
    async with aclosing(stream_chat(request)) as events:
        async for event in events:
            assert isinstance(event, TextDelta)
            break
    [record] = llm.stats.find(request_key)
    await eventually(lambda: record.outcome == "client_disconnected", timeout=1)


def test_a_lone_surrogate_from_the_model_server_becomes_a_replacement_character():
    # JSON can spell half of a surrogate pair; UTF-8 (database, Redis, sockets) cannot carry it.
    chunk = '{"choices": [{"index": 0, "delta": {"content": "a\\ud83d b \\ud83d\\ude00"}}]}'
    [event] = upstream._Assembler().feed(chunk)
    assert event == TextDelta("a\ufffd b \U0001f600")
    assert isinstance(event, TextDelta) and event.text.encode("utf-8")  # UTF-8 can carry it now
