"""The official SDKs across formats: the Anthropic SDK when the upstream speaks only OpenAI
Chat Completions, and the OpenAI SDK when it speaks only Anthropic Messages. Every request
and answer is translated, streams event by event."""
import json

import anthropic
import openai
import pytest

MESSAGES = [{"role": "user", "content": "Hello through a translator"}]
TOOLS = [{"name": "get_weather", "description": "Weather for a city", "input_schema": {
    "type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
    "required": ["city", "days"]}}]


@pytest.fixture()
def client(openai_only_gateway):
    return anthropic.Anthropic(base_url=openai_only_gateway.base, api_key=openai_only_gateway.key,
                               max_retries=0)


def test_non_stream(client, openai_only_gateway):
    m = client.messages.create(model="glm-4.7", max_tokens=512, messages=MESSAGES,
                               system="You are terse.")
    assert m.type == "message" and m.role == "assistant"
    assert m.stop_reason == "end_turn"
    assert [b.type for b in m.content] == ["text"], "no thinking unless asked"
    assert "Hello through a translator" in m.content[0].text
    assert m.usage.input_tokens > 0 and m.usage.output_tokens == 20
    assert m.model == "glm-4.7"


def test_stream_text(client):
    with client.messages.stream(model="glm-4.7", max_tokens=512, messages=MESSAGES) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert "Hello through a translator" in text
    assert final.usage.output_tokens == 20
    assert final.usage.input_tokens > 0
    assert final.stop_reason == "end_turn"


def test_stream_thinking_text_and_tool_use(client):
    with client.messages.stream(model="glm-4.7", max_tokens=2048, messages=MESSAGES, tools=TOOLS,
                                thinking={"type": "enabled", "budget_tokens": 1024}) as stream:
        events = [e.type for e in stream]
        final = stream.get_final_message()
    kinds = [b.type for b in final.content]
    assert kinds == ["thinking", "text", "tool_use"], kinds
    assert final.content[0].thinking
    assert final.content[2].name == "get_weather"
    assert final.content[2].input == {"city": "mock", "days": 1}
    assert final.stop_reason == "tool_use"
    assert events[0] == "message_start" and events[-1] == "message_stop"


def test_tool_result_turn_is_accepted(client):
    history = MESSAGES + [
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris", "days": 1}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C and sunny"}]},
    ]
    m = client.messages.create(model="glm-4.7", max_tokens=512, messages=history, tools=TOOLS)
    assert m.stop_reason == "end_turn"
    assert m.content[0].type == "text"


def test_upstream_errors_come_back_in_anthropic_shape(client):
    with pytest.raises(anthropic.BadRequestError) as e:
        client.messages.create(model="gpt-nope", max_tokens=64, messages=MESSAGES)
    assert e.value.status_code == 400
    assert e.value.body["type"] == "error"
    assert e.value.body["error"]["type"] == "invalid_request_error"
    assert e.value.body["error"]["code"] == "1211"


# The official OpenAI SDK when the upstream speaks only Anthropic Messages.
OPENAI_TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
    {"type": "function", "function": {"name": "get_time", "parameters": {
        "type": "object", "properties": {"zone": {"type": "string"}}, "required": ["zone"]}}},
]


@pytest.fixture()
def oai(anthropic_only_gateway):
    return openai.OpenAI(base_url=f"{anthropic_only_gateway.base}/v1", api_key=anthropic_only_gateway.key,
                         max_retries=0)


def test_openai_non_stream_on_anthropic_upstream(oai):
    c = oai.chat.completions.create(model="glm-4.7", messages=[{"role": "user", "content": "Hi from OpenAI"}])
    assert c.choices[0].finish_reason == "stop"
    assert "Hi from OpenAI" in c.choices[0].message.content
    assert c.usage.completion_tokens == 20 and c.usage.prompt_tokens > 0


def test_openai_stream_parallel_tools_and_usage_on_anthropic_upstream(oai):
    stream = oai.chat.completions.create(
        model="glm-4.7", messages=[{"role": "user", "content": "Weather and time?"}],
        tools=OPENAI_TOOLS, stream=True, stream_options={"include_usage": True})
    calls, finish, usage = {}, None, None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            for tc in choice.delta.tool_calls or []:
                entry = calls.setdefault(tc.index, {"id": None, "name": "", "args": ""})
                entry["id"] = tc.id or entry["id"]
                entry["name"] += (tc.function.name or "") if tc.function else ""
                entry["args"] += (tc.function.arguments or "") if tc.function else ""
            finish = choice.finish_reason or finish
    assert finish == "tool_calls"
    assert sorted(c["name"] for c in calls.values()) == ["get_time", "get_weather"]
    assert json.loads(calls[0]["args"]) == {"city": "mock"}
    assert usage is not None and usage.completion_tokens > 0 and usage.prompt_tokens > 0


def test_count_tokens(client):
    r = client.messages.count_tokens(model="glm-4.7", messages=MESSAGES, tools=TOOLS,
                                     system="You are terse.")
    assert 20 < r.input_tokens < 200
