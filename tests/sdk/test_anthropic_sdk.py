"""The official Anthropic Python SDK against glmgate, Anthropic passthrough to the mock."""
import anthropic
import pytest

MESSAGES = [{"role": "user", "content": "Hello from the Anthropic SDK"}]


@pytest.fixture()
def client(gateway):
    return anthropic.Anthropic(base_url=gateway.base, api_key=gateway.key, max_retries=0)


def test_non_stream(client):
    m = client.messages.create(model="glm-4.7", max_tokens=512, messages=MESSAGES)
    assert m.stop_reason == "end_turn"
    assert "Hello from the Anthropic SDK" in m.content[0].text
    assert m.usage.input_tokens > 0 and m.usage.output_tokens > 0


def test_stream_text(client):
    with client.messages.stream(model="glm-4.7", max_tokens=512, messages=MESSAGES) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert "Hello from the Anthropic SDK" in text
    assert final.usage.output_tokens == 20


def test_stream_thinking_and_tool_use(client):
    tools = [{"name": "get_weather", "input_schema": {
        "type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city", "days"]}}]
    with client.messages.stream(model="glm-4.7", max_tokens=2048, messages=MESSAGES, tools=tools,
                                thinking={"type": "enabled", "budget_tokens": 1024}) as stream:
        final = stream.get_final_message()
    kinds = [b.type for b in final.content]
    assert kinds == ["thinking", "text", "tool_use"], kinds
    assert final.content[2].input == {"city": "mock", "days": 1}
    assert final.stop_reason == "tool_use"


def test_bearer_auth_works_too(gateway):
    c = anthropic.Anthropic(base_url=gateway.base, auth_token=gateway.key, max_retries=0)
    m = c.messages.create(model="glm-4.7", max_tokens=1, messages=MESSAGES)
    assert m.stop_reason == "max_tokens"


def test_bad_key_raises_authentication_error(gateway):
    bad = anthropic.Anthropic(base_url=gateway.base, api_key="gg-wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as e:
        bad.messages.create(model="glm-4.7", max_tokens=16, messages=MESSAGES)
    assert e.value.status_code == 401


def test_missing_field_is_bad_request(client):
    with pytest.raises(anthropic.BadRequestError) as e:
        client.messages.create(model="glm-4.7", max_tokens=16, messages=[])
    assert "messages" in e.value.message


def test_upstream_overload_is_passed_on(client):
    with pytest.raises(anthropic.APIStatusError) as e:
        client.messages.create(model="glm-4.7", max_tokens=16, messages=MESSAGES,
                               extra_body={"mock_fault": "529"})
    assert e.value.status_code == 529
    assert e.value.body["error"]["type"] == "overloaded_error"
