"""The official OpenAI Python SDK against glmgate, OpenAI passthrough to the mock."""
import openai
import pytest

MESSAGES = [{"role": "user", "content": "Hello from the OpenAI SDK"}]


@pytest.fixture()
def client(gateway):
    return openai.OpenAI(base_url=f"{gateway.base}/v1", api_key=gateway.key, max_retries=0)


def test_non_stream(client):
    r = client.chat.completions.create(model="glm-4.7", messages=MESSAGES)
    assert r.choices[0].finish_reason == "stop"
    assert "Hello from the OpenAI SDK" in r.choices[0].message.content
    assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens > 0
    assert r.usage.prompt_tokens_details.cached_tokens >= 0
    # GLM's reasoning arrives as an extra field the SDK keeps.
    assert r.choices[0].message.model_extra.get("reasoning_content")


def test_stream(client):
    stream = client.chat.completions.create(
        model="glm-4.7", messages=MESSAGES, stream=True, stream_options={"include_usage": True})
    text, usage, chunks = "", None, 0
    for chunk in stream:
        chunks += 1
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
        if chunk.usage:
            usage = chunk.usage
    assert chunks >= 20
    assert "Hello from the OpenAI SDK" in text
    assert usage is not None and usage.completion_tokens > 0


def test_tool_calls(client):
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
    r = client.chat.completions.create(model="glm-4.7", messages=MESSAGES, tools=tools)
    call = r.choices[0].message.tool_calls[0]
    assert r.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather"
    assert call.function.arguments == '{"city":"mock"}'


def test_models(client):
    ids = [m.id for m in client.models.list()]
    assert "glm-4.7" in ids


def test_bad_key_raises_authentication_error(gateway):
    bad = openai.OpenAI(base_url=f"{gateway.base}/v1", api_key="gg-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        bad.chat.completions.create(model="glm-4.7", messages=MESSAGES)
    assert e.value.status_code == 401


def test_bad_request_names_the_field(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="glm-4.7", messages=[], )
    assert e.value.body["param"] == "messages"


def test_upstream_rate_limit_is_passed_on(client):
    with pytest.raises(openai.RateLimitError) as e:
        client.chat.completions.create(model="glm-4.7", messages=MESSAGES, extra_body={"mock_fault": "429-1302"})
    assert e.value.body["code"] == "1302"


def test_usage_shows_in_stats(gateway, client):
    client.chat.completions.create(model="glm-4.7", messages=MESSAGES)
    import time
    for _ in range(100):
        stats = gateway.stats()
        if stats["requests"] > 0:
            break
        time.sleep(0.05)
    assert stats["requests"] > 0 and stats["output_tokens"] > 0
