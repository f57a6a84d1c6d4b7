"""Tool calling through /v1 with the official SDK and LangChain's bind_tools, against real daphne and the
simulator's tool mode: the model's calls reach the client in OpenAI's exact shape (streamed and not), and a
tool's result sent back is forwarded, answered and recorded in the same conversation."""

import json
from typing import Any

import openai
import pytest
from langchain_core.messages import HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI

from conversations.models import Conversation, Message
from tests.support import unique

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

WEATHER: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]},
    },
}


def sdk(server, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.origin}/v1", api_key=key, max_retries=0, timeout=30)


def test_a_streamed_tool_call_is_assembled_by_the_sdk(daphne, principal, upstream):
    client = sdk(daphne, principal().token)
    key = unique()
    stream = client.chat.completions.create(
        model=f"dev:tools,ttft=0,key={key}",
        messages=[{"role": "user", "content": "Weather in Lyon?"}],
        tools=[WEATHER],
        tool_choice="auto",
        parallel_tool_calls=False,
        stream=True,
    )
    calls: dict[int, dict[str, str]] = {}
    finish = None
    for chunk in stream:
        choice = chunk.choices[0]
        finish = choice.finish_reason or finish
        for delta in choice.delta.tool_calls or []:
            call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
            if delta.id:
                call["id"] = delta.id
            if delta.function and delta.function.name:
                call["name"] = delta.function.name
            if delta.function and delta.function.arguments:
                call["arguments"] += delta.function.arguments
    assert finish == "tool_calls"
    [call] = calls.values()
    assert call["name"] == "get_weather" and call["id"]
    assert json.loads(call["arguments"])["query"] == "Weather in Lyon?"
    [record] = upstream.stats.find(key)
    assert record.parameters["tools"] == [WEATHER]
    assert (record.parameters["tool_choice"], record.parameters["parallel_tool_calls"]) == ("auto", False)


def test_a_tool_round_trip_is_one_conversation_and_the_model_sees_the_result(daphne, principal, upstream):
    who = principal()
    client = sdk(daphne, who.token)
    question: Any = {"role": "user", "content": "Weather in Lyon?"}
    first = client.chat.completions.create(
        model="dev:tools,ttft=0",
        messages=[question],
        tools=[WEATHER],
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    [call] = choice.message.tool_calls or []
    assert call.type == "function" and call.function.name == "get_weather"

    key = unique()
    follow_up = client.chat.completions.create(
        model=f"dev:tools,ttft=0,key={key}",
        tools=[WEATHER],
        messages=[
            question,
            {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},  # type: ignore[list-item]
            {"role": "tool", "tool_call_id": call.id, "content": '{"sky": "clear", "celsius": 21}'},
        ],
    )
    assert follow_up.choices[0].message.content == 'The tool answered: {"sky": "clear", "celsius": 21}'
    assert follow_up.choices[0].finish_reason == "stop"
    [record] = upstream.stats.find(key)
    assert record.roles == ["user", "assistant+tools", "tool"]

    [conversation] = Conversation.objects.filter(owner=who.user)
    rows = list(conversation.messages.order_by("seq"))
    assert [row.role for row in rows] == ["user", "assistant", "tool", "assistant"]
    assert rows[1].tool_calls[0]["name"] == "get_weather" and rows[2].tool_call_id == call.id
    assert rows[3].status == Message.Status.COMPLETE


@pytest.mark.parametrize(
    ("message", "param"),
    [
        ({"role": "tool", "content": "x"}, "messages[1].tool_call_id"),
        ({"role": "assistant", "content": None, "tool_calls": [{"id": "c"}]}, "messages[1].tool_calls"),
        ({"role": "assistant", "content": None}, "messages[1].content"),
    ],
)
def test_malformed_tool_messages_are_refused_naming_the_field(daphne, principal, message, param):
    client = sdk(daphne, principal().token)
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model="dev", messages=[{"role": "user", "content": "Hi"}, message, {"role": "user", "content": "And?"}]
        )
    assert refused.value.body["param"] == param  # type: ignore[index]


def test_langchain_bind_tools_round_trips_a_call_and_its_result(daphne, principal):
    @tool
    def get_weather(query: str) -> str:
        """The weather in a city."""
        return '{"sky": "clear"}'

    llm = ChatOpenAI(
        model="dev:tools,ttft=0", base_url=f"{daphne.origin}/v1", api_key=principal().token, max_retries=0, timeout=30
    ).bind_tools([get_weather])
    history: list[Any] = [HumanMessage("Weather in Lyon?")]
    asked = llm.invoke(history)
    [call] = asked.tool_calls
    assert call["name"] == "get_weather" and call["args"]["query"] == "Weather in Lyon?"
    history += [asked, ToolMessage(get_weather.invoke(call["args"]), tool_call_id=call["id"])]
    answered = llm.invoke(history)
    assert answered.content == 'The tool answered: {"sky": "clear"}'
