"""The official Anthropic SDK against glmgate when the upstream speaks only OpenAI Chat
Completions: every request and answer is translated, streams event by event."""
import anthropic
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
