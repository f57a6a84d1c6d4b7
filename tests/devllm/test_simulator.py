"""The dev simulator itself: its answers, its wire format, its options and faults, its records."""

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from typing import Any

import httpx
import pytest

from devllm.simulator import DevOptions, answer_text, parse_model, tokenize
from tests.devllm.fixtures import eventually, raw_bytes, raw_stream, running_devllm, user
from tests.support import ROOT, unique

DEFAULTS = DevOptions(ttft=0.0, tps=5000.0, tokens=40)


@pytest.fixture
async def llm():
    async with running_devllm() as server:
        yield server


def chat(model: str, prompt: str = "hello", **extra) -> dict[str, Any]:
    return {"model": model, "messages": user(prompt), "stream": True, **extra}


def content_deltas(events: list[str]) -> list[str]:
    deltas = []
    for data in events[:-1]:
        for choice in json.loads(data)["choices"]:
            if choice["delta"].get("content"):
                deltas.append(choice["delta"]["content"])
    return deltas


# --- answers -----------------------------------------------------------------------------------------------


def test_answers_are_deterministic_and_depend_on_the_prompt():
    options = DevOptions(tokens=300)
    first = answer_text(user("a question"), options)
    assert first == answer_text(user("a question"), options)
    assert first != answer_text(user("another question"), options)
    history = [{"role": "user", "content": "earlier"}, {"role": "assistant", "content": "ok"}, *user("a question")]
    assert answer_text(history, options) == first, "the last user message seeds the answer"


def test_answer_is_markdown_with_non_ascii_everywhere():
    text = answer_text(user("markdown please"), DevOptions(tokens=2000))
    assert re.search(r"^(## |\*\*)", text, re.MULTILINE), "a heading or a bold lead"
    assert re.search(r"^(- \*\*|\d+\. )", text, re.MULTILINE), "a list"
    assert "```python\n" in text
    assert "\u2028" in text
    assert "e\u0301" in text, "a combining accent"
    assert "\u200d" in text, "an emoji ZWJ sequence"
    assert re.search("[\U0001f1e6-\U0001f1ff]{2}", text), "a flag"
    assert re.search("[\u4e00-\u9fff\u3040-\u30ff\uac00-\ud7af]", text), "CJK"
    assert re.search("[\u0590-\u06ff]", text), "right-to-left text"
    assert re.search("[à-ÿ]", text), "accented Latin"
    assert not re.search("[\ud800-\udfff]", text)


def test_tokenize_round_trips_in_small_pieces():
    samples = [
        answer_text(user("tokens"), DevOptions(tokens=500)),
        "",
        "   ",
        "👩\u200d💻🇯🇵e\u0301\u2028x",
        "a\n\n\n    b",
    ]
    for text in samples:
        pieces = tokenize(text)
        assert "".join(pieces) == text
        assert all(pieces)
        assert all(len(piece) <= 6 or piece.isspace() for piece in pieces)


@pytest.mark.parametrize("tokens", [1, 7, 64])
async def test_tokens_option_gives_exactly_that_many_content_deltas(llm, tokens):
    model = f"dev:tokens={tokens}"
    _, events = await raw_stream(llm.base_url, chat(model, "count"))
    deltas = content_deltas(events)
    assert len(deltas) == tokens
    assert "".join(deltas) == answer_text(user("count"), parse_model(model, llm.defaults)[1])
    assert deltas == tokenize("".join(deltas))


async def test_echo_never_sends_lone_surrogates(llm):
    # json.dumps escapes the lone surrogate as \ud800: valid JSON, but no valid UTF-8 text holds it.
    _, events = await raw_stream(llm.base_url, json.dumps(chat("dev:echo", "a\ud800b")).encode())
    assert "".join(content_deltas(events)) == "a\ufffdb"


# --- the wire format ---------------------------------------------------------------------------------------


async def test_stream_has_openai_shapes_and_says_it_is_a_simulator(llm):
    response, events = await raw_stream(llm.base_url, chat("dev:tokens=5", stream_options={"include_usage": True}))
    assert response.headers["x-simulator"] == "devllm"
    assert response.headers["content-type"].startswith("text/event-stream")
    chunks = [json.loads(data) for data in events[:-1]]
    assert events[-1] == "[DONE]"
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    assert all(chunk["system_fingerprint"] == "devllm-simulator" for chunk in chunks)
    assert len({chunk["id"] for chunk in chunks}) == 1
    assert chunks[0]["choices"] == [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]
    assert [chunk["choices"][0]["finish_reason"] for chunk in chunks[1:-1]] == [None] * 5 + ["stop"]
    assert chunks[-2]["choices"][0]["delta"] == {}
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 1, "completion_tokens": 5, "total_tokens": 6}


async def test_usage_chunk_only_when_asked_for(llm):
    _, events = await raw_stream(llm.base_url, chat("dev:tokens=5"))
    assert all(json.loads(data)["choices"] for data in events[:-1])


@pytest.mark.parametrize(
    ("model", "present", "absent"),
    [
        ("dev:eol=crlf", b"}\r\n\r\ndata: ", b"}\n\n"),
        ("dev:eol=cr", b"}\r\rdata: ", b"\n"),
        ("dev:nospace", b"data:{", b"data: "),
        ("dev:nodone", b"data: {", b"[DONE]"),
    ],
)
async def test_stream_options_change_the_bytes_on_the_wire(llm, model, present, absent):
    _, body = await raw_bytes(llm.base_url, chat(model))
    assert present in body
    assert absent not in body


async def test_split_writes_the_stream_in_pieces_of_that_many_bytes(llm):
    url, body = f"{llm.base_url}/chat/completions", chat("dev:split=3,tokens=3")
    async with httpx.AsyncClient() as client, client.stream("POST", url, json=body) as response:
        # One piece per HTTP chunk, as h11 hands them over, however the network coalesced them.
        pieces = [piece async for piece in response.aiter_raw()]
    assert max(len(piece) for piece in pieces) <= 3
    assert b"".join(pieces).endswith(b"data: [DONE]\n\n")


async def test_keep_alive_comments_are_sent_while_waiting(llm):
    _, body = await raw_bytes(llm.base_url, chat("dev:comments=0.02,ttft=0.2,tokens=2"))
    assert body.count(b": keep-alive\n\n") >= 3


async def test_stall_keeps_sending_comments_until_the_client_leaves(llm):
    request_key = unique()
    url, body = (
        f"{llm.base_url}/chat/completions",
        chat(f"dev:fault=stall,fault_after=2,comments=0.05,key={request_key}"),
    )
    received = b""
    async with httpx.AsyncClient() as client, client.stream("POST", url, json=body) as response:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.4):
                async for piece in response.aiter_raw():
                    received += piece
    [record] = llm.stats.find(request_key)
    assert (record.outcome, record.tokens_sent) == ("fault", 2)
    assert received.split(b"\n\n")[-2:] == [b": keep-alive", b""]
    assert received.count(b": keep-alive") >= 4


async def test_tool_call_streams_name_first_then_arguments_in_pieces(llm):
    _, events = await raw_stream(llm.base_url, chat("dev:tools", "weather"))
    deltas = [json.loads(data)["choices"][0]["delta"] for data in events[1:-1]]
    calls = [delta["tool_calls"][0] for delta in deltas if "tool_calls" in delta]
    assert calls[0]["function"]["name"] == "search_docs"
    assert calls[0]["id"]
    assert all("name" not in call["function"] for call in calls[1:])
    assert len(calls) > 3
    assert json.loads("".join(call["function"]["arguments"] for call in calls[1:]))["query"] == "weather"
    assert json.loads(events[-2])["choices"][0]["finish_reason"] == "tool_calls"


async def test_timing_follows_ttft_and_tps(llm):
    started = time.monotonic()
    arrivals = []
    async with httpx.AsyncClient() as client:
        body = chat("dev:ttft=0.2,tps=50,tokens=6")
        async with client.stream("POST", f"{llm.base_url}/chat/completions", json=body) as response:
            async for line in response.aiter_lines():
                if '"content": "' in line and '"role"' not in line:
                    arrivals.append(time.monotonic() - started)
    assert len(arrivals) == 6
    assert 0.19 <= arrivals[0] < 1
    assert arrivals[-1] - arrivals[0] >= 5 / 50 - 0.01


# --- other routes and bad requests ---------------------------------------------------------------------------


async def test_models_lists_the_configured_models():
    async with running_devllm() as server, httpx.AsyncClient() as client:
        response = await client.get(f"{server.base_url}/models")
    assert response.status_code == 200
    assert response.headers["x-simulator"] == "devllm"
    assert [model["id"] for model in response.json()["data"]] == ["dev"]


async def test_non_streaming_completion(llm):
    async with httpx.AsyncClient() as client:
        response = await client.post(f"{llm.base_url}/chat/completions", json={**chat("dev", "whole"), "stream": False})
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["system_fingerprint"] == "devllm-simulator"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": answer_text(user("whole"), DEFAULTS)}
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["completion_tokens"] == 40


async def test_bad_requests_get_openai_shaped_errors(llm):
    url = f"{llm.base_url}/chat/completions"
    async with httpx.AsyncClient() as client:
        unknown_route = await client.get(f"{llm.base_url}/nowhere")
        malformed = await client.post(url, content=b'{"model": "dev", "messages": [')
        no_messages = await client.post(url, json={"model": "dev"})
        bad_option = await client.post(url, json=chat("dev:fault=gremlins"))
        unknown_model = await client.post(url, json=chat("gpt-17"))
    assert unknown_route.status_code == 404
    assert (malformed.status_code, no_messages.status_code, bad_option.status_code) == (400, 400, 400)
    assert unknown_model.status_code == 404
    assert unknown_model.json()["error"]["code"] == "model_not_found"
    for response in (unknown_route, malformed, no_messages, bad_option, unknown_model):
        assert set(response.json()["error"]) == {"message", "type", "code"}
        assert response.headers["x-simulator"] == "devllm"


# --- options -------------------------------------------------------------------------------------------------


def test_parse_model_reads_options_over_the_defaults():
    assert parse_model("dev", DEFAULTS) == ("dev", DEFAULTS)
    name, options = parse_model("dev-slow:fault=stall,fault_after=5,key=abc,echo,comments=0.5,eol=crlf", DEFAULTS)
    assert name == "dev-slow"
    assert (options.fault, options.fault_after, options.key, options.echo) == ("stall", 5, "abc", True)
    assert (options.comments, options.eol, options.tps) == (0.5, "crlf", DEFAULTS.tps)
    assert parse_model("dev:echo=0", DEFAULTS)[1].echo is False


@pytest.mark.parametrize("model", ["dev:colour=red", "dev:fault=gremlins", "dev:eol=nel", "dev:tps=0", "dev:tokens=x"])
def test_parse_model_refuses_bad_options(model):
    with pytest.raises(ValueError):  # noqa: PT011 - each case has its own message
        parse_model(model, DEFAULTS)


def test_options_default_to_the_settings(settings):
    settings.DEVLLM_TTFT, settings.DEVLLM_TPS, settings.DEVLLM_TOKENS = 0.25, 12.0, 34
    assert (DevOptions().ttft, DevOptions().tps, DevOptions().tokens) == (0.25, 12.0, 34)


async def test_fail_times_counts_requests_per_key(llm):
    first, second = unique(), unique()
    url = f"{llm.base_url}/chat/completions"
    async with httpx.AsyncClient() as client:
        statuses = [
            (await client.post(url, json=chat(f"dev:fault=http_500,fail_times=2,key={k}", stream=False))).status_code
            for k in (first, first, second, first)
        ]
    assert statuses == [500, 500, 500, 200]
    assert [record.outcome for record in llm.stats.find(first)] == ["fault", "fault", "complete"]


async def test_rate_limit_fault_says_when_to_retry(llm):
    async with httpx.AsyncClient() as client:
        response = await client.post(f"{llm.base_url}/chat/completions", json=chat("dev:fault=http_429"))
    assert response.status_code == 429
    assert response.headers["retry-after"] == "1"
    assert response.json()["error"]["code"] == "rate_limit_exceeded"


# --- connections and records -------------------------------------------------------------------------------


async def test_client_hanging_up_mid_stream_is_recorded_at_once(llm):
    request_key = unique()
    async with httpx.AsyncClient() as client:
        body = chat(f"dev:tps=10,tokens=100,key={request_key}", "hang up")
        async with client.stream("POST", f"{llm.base_url}/chat/completions", json=body) as response:
            async for line in response.aiter_lines():
                if '"content": "' in line and '"role"' not in line:
                    break
    [record] = llm.stats.find(request_key)
    await eventually(lambda: record.outcome == "client_disconnected", timeout=1)
    assert record.ended is not None
    assert 1 <= record.tokens_sent < 5
    assert record.prompt == "hang up"


async def test_connection_close_is_honoured(llm):
    async with httpx.AsyncClient() as client:
        for _ in range(2):
            response = await client.post(
                f"{llm.base_url}/chat/completions", json=chat("dev:tokens=2"), headers={"Connection": "close"}
            )
            assert response.headers["connection"] == "close"
        kept = [await client.post(f"{llm.base_url}/chat/completions", json=chat("dev:tokens=2")) for _ in range(2)]
    assert all(response.status_code == 200 for response in kept)
    assert llm.stats.connections == 3


async def test_stop_cuts_open_streams(llm):
    request_key = unique()
    async with httpx.AsyncClient() as client:
        body = chat(f"dev:fault=stall,fault_after=0,key={request_key}")
        async with client.stream("POST", f"{llm.base_url}/chat/completions", json=body) as response:
            await llm.stop()
            with pytest.raises(httpx.RemoteProtocolError):
                await response.aread()


def test_management_command_serves_the_simulator_and_says_so():
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "manage.py", "devllm", "--port", "0", "--models", "dev,dev-slow", "--tps", "5000"]
    with subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True) as process:
        try:
            assert process.stdout is not None
            line = process.stdout.readline()
            assert "SIMULATOR" in line
            base_url = re.search(r"http://127\.0\.0\.1:\d+/v1", line)
            assert base_url is not None
            models = httpx.get(f"{base_url.group()}/models", timeout=5).json()
            assert [model["id"] for model in models["data"]] == ["dev", "dev-slow"]
            process.send_signal(signal.SIGINT)
            assert process.wait(timeout=10) == 0
        finally:
            process.kill()


async def test_records_are_readable_from_another_thread(llm):
    request_key = unique()
    await raw_stream(llm.base_url, chat(f"dev:key={request_key}"))
    [record] = await asyncio.to_thread(llm.stats.find, request_key)
    assert (record.outcome, record.tokens_sent, record.key, record.prompt) == ("complete", 40, request_key, "hello")
