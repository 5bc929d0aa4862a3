"""`GET /metrics` read by Prometheus' own Python client: the exposition parses as strict
OpenMetrics, and what it counts agrees with what the SDKs were told."""
import time
import urllib.error
import urllib.request

import anthropic
import openai
from prometheus_client.openmetrics.parser import text_string_to_metric_families


def samples(gateway):
    """(name, labels) → value for every sample of a scrape, parsed strictly."""
    out = {}
    for family in text_string_to_metric_families(gateway.metrics()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def total(scrape, name, **labels):
    return sum(v for (n, ls), v in scrape.items()
               if n == name and all(dict(ls).get(k) == want for k, want in labels.items()))


def test_metrics_count_what_the_sdks_saw(gateway):
    before = samples(gateway)
    oa = openai.OpenAI(base_url=f"{gateway.base}/v1", api_key=gateway.key, max_retries=0)
    r = oa.chat.completions.create(model="glm-4.7", messages=[{"role": "user", "content": "Count me"}])
    an = anthropic.Anthropic(base_url=gateway.base, api_key=gateway.key, max_retries=0)
    with an.messages.stream(model="glm-4.7", max_tokens=256,
                            messages=[{"role": "user", "content": "Count me too"}]) as stream:
        final = stream.get_final_message()
    # Refused by the gateway itself: a body that is not JSON.
    bad = urllib.request.Request(f"{gateway.base}/v1/chat/completions", data=b"{not json", method="POST",
                                 headers={"Authorization": f"Bearer {gateway.key}"})
    try:
        urllib.request.urlopen(bad)
        raise AssertionError("a body that is not JSON was accepted")
    except urllib.error.HTTPError as e:
        assert e.code == 400

    def delta(name, **labels):
        return total(after, name, **labels) - total(before, name, **labels)

    # The traffic series follow the usage writer's flushes (50 ms here). Wait for this test's
    # two requests by their own series: a record of an earlier test on the same gateway can
    # still land after `before` was taken.
    for _ in range(100):
        after = samples(gateway)
        if (delta("glmgate_requests_total", api="openai", stream="false") >= 1
                and delta("glmgate_requests_total", api="anthropic", stream="true") >= 1):
            break
        time.sleep(0.05)
    assert delta("glmgate_requests_total", api="openai", stream="false", outcome="ok", status="200") == 1
    assert delta("glmgate_requests_total", api="anthropic", stream="true", outcome="ok", status="200") == 1
    assert delta("glmgate_rejected_total", api="openai", reason="invalid_request") == 1
    # Tokens as the SDKs reported them (input in OpenAI's convention: cache reads included).
    assert delta("glmgate_tokens_total", api="openai", kind="input") == r.usage.prompt_tokens
    assert delta("glmgate_tokens_total", api="openai", kind="output") == r.usage.completion_tokens
    u = final.usage
    anthropic_input = u.input_tokens + (u.cache_read_input_tokens or 0) + (u.cache_creation_input_tokens or 0)
    assert delta("glmgate_tokens_total", api="anthropic", kind="input") == anthropic_input
    assert delta("glmgate_tokens_total", api="anthropic", kind="output") == u.output_tokens
    assert delta("glmgate_request_duration_seconds_count", api="anthropic", stream="true") == 1
    assert total(after, "glmgate_build_info") == 1
