//! Anthropic clients on an OpenAI-only upstream: translated requests, answers and streams,
//! with usage accounted from the upstream's own counts.

use serde_json::Value;

use crate::common::*;

/// The mock serves only the `only` API, and the gateway is configured for that alone.
fn single_format(only: glmgate::error::Dialect) -> Opts {
    Opts {
        mock: glmgate::mock::MockOptions {
            only: Some(only),
            ..Default::default()
        },
        tweak: match only {
            glmgate::error::Dialect::OpenAi => {
                |raw| raw.upstream.anthropic_base_url = Some(String::new())
            }
            glmgate::error::Dialect::Anthropic => {
                |raw| raw.upstream.openai_base_url = Some(String::new())
            }
        },
        ..Opts::default()
    }
}

fn openai_only() -> Opts {
    single_format(glmgate::error::Dialect::OpenAi)
}

fn anthropic_only() -> Opts {
    single_format(glmgate::error::Dialect::Anthropic)
}

#[tokio::test]
async fn an_anthropic_request_is_answered_from_an_openai_upstream() {
    let env = start(openai_only()).await;
    let resp = env.anthropic(&anthropic_body(false)).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .expect("ascii")
        .starts_with("application/json"));
    let m: Value = resp.json().await.expect("json");
    assert_eq!(m["type"], "message");
    assert_eq!(m["content"][0]["type"], "text");
    assert_eq!(m["stop_reason"], "end_turn");
    assert_eq!(m["usage"]["output_tokens"], 20);
    let rows = env.usage_rows(1).await;
    assert_eq!(rows[0]["api"], "anthropic");
    assert_eq!(rows[0]["outcome"], "ok");
    assert_eq!(rows[0]["output_tokens"], 20);
    assert_eq!(rows[0]["estimated"], false);
}

#[tokio::test]
async fn a_translated_stream_is_a_well_formed_anthropic_event_sequence() {
    let env = start(openai_only()).await;
    let resp = env.anthropic(&anthropic_body(true)).await;
    assert_eq!(resp.status(), 200);
    assert!(!resp.headers().contains_key("content-length"));
    let text = resp.text().await.expect("stream");
    let events = event_names(&text);
    assert_eq!(events.first(), Some(&"message_start"));
    assert_eq!(events.last(), Some(&"message_stop"));
    assert_eq!(
        events
            .iter()
            .filter(|e| **e == "content_block_delta")
            .count(),
        20
    );
    let delta: Value = data_lines(&text)
        .into_iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .find(|v| v["type"] == "message_delta")
        .expect("message_delta");
    assert_eq!(delta["usage"]["output_tokens"], 20);
    assert!(delta["usage"]["input_tokens"].as_u64().expect("n") > 0);
    let rows = env.usage_rows(1).await;
    assert_eq!(rows[0]["outcome"], "ok");
    assert_eq!(rows[0]["output_tokens"], 20);
}

#[tokio::test]
async fn translated_errors_keep_the_status_in_anthropic_shape() {
    let env = start(openai_only()).await;
    let mut body = anthropic_body(false);
    body["model"] = "gpt-nope".into();
    let resp = env.anthropic(&body).await;
    assert_eq!(resp.status(), 400);
    let e: Value = resp.json().await.expect("json");
    assert_eq!(e["type"], "error");
    assert_eq!(e["error"]["type"], "invalid_request_error");
    assert_eq!(e["error"]["code"], "1211");
}

#[tokio::test]
async fn an_openai_request_is_answered_from_an_anthropic_upstream() {
    let env = start(anthropic_only()).await;
    let resp = env.openai(&openai_body(false)).await;
    assert_eq!(resp.status(), 200);
    let c: Value = resp.json().await.expect("json");
    assert_eq!(c["object"], "chat.completion");
    assert_eq!(c["choices"][0]["finish_reason"], "stop");
    assert!(c["choices"][0]["message"]["content"]
        .as_str()
        .expect("text")
        .contains("Hello there"));
    assert_eq!(c["usage"]["completion_tokens"], 20);
    let rows = env.usage_rows(1).await;
    assert_eq!(
        (rows[0]["api"].as_str(), rows[0]["outcome"].as_str()),
        (Some("openai"), Some("ok"))
    );
    assert_eq!(rows[0]["output_tokens"], 20);

    let mut body = openai_body(false);
    body["model"] = "gpt-nope".into();
    let resp = env.openai(&body).await;
    assert_eq!(resp.status(), 400);
    let e: Value = resp.json().await.expect("json");
    assert_eq!(e["error"]["code"], "1211");
    assert_eq!(e["error"]["type"], "invalid_request_error");
}

#[tokio::test]
async fn an_openai_stream_from_an_anthropic_upstream_has_parallel_tools_and_usage() {
    let env = start(anthropic_only()).await;
    let mut body = openai_body(true);
    body["stream_options"] = serde_json::json!({"include_usage": true});
    body["tools"] = serde_json::json!([
        {"type": "function", "function": {"name": "a", "parameters": {"type": "object", "properties": {"x": {"type": "string"}}, "required": ["x"]}}},
        {"type": "function", "function": {"name": "b", "parameters": {"type": "object", "properties": {}}}}
    ]);
    let resp = env.openai(&body).await;
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.expect("stream");
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    let chunks: Vec<Value> = data_lines(&text)
        .into_iter()
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).expect("json"))
        .collect();
    let starts: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c.pointer("/choices/0/delta/tool_calls/0"))
        .filter(|t| t.get("id").is_some())
        .collect();
    assert_eq!(starts.len(), 2, "both parallel calls: {text}");
    assert_eq!(starts[1]["index"], 1);
    let finish = chunks.iter().find_map(|c| {
        c.pointer("/choices/0/finish_reason")
            .and_then(Value::as_str)
    });
    assert_eq!(finish, Some("tool_calls"));
    let last = chunks.last().expect("chunks");
    assert_eq!(last["choices"], serde_json::json!([]));
    assert!(last["usage"]["prompt_tokens"].as_u64().expect("n") > 0);
}

#[tokio::test]
async fn count_tokens_is_local_by_default_and_from_the_upstream_when_configured() {
    let body = serde_json::json!({
        "model": "glm-4.7",
        "system": "You are terse.",
        "messages": [{"role": "user", "content": "Count these words for me, please."}],
    });
    let count = |env: &Env| {
        env.http
            .post(env.url("/v1/messages/count_tokens"))
            .header("x-api-key", &env.key)
            .header("anthropic-version", "2023-06-01")
            .json(&body)
            .send()
    };
    let env = start(openai_only()).await;
    let resp = count(&env).await.expect("sent");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-glmgate-token-count"], "estimate");
    let n: Value = resp.json().await.expect("json");
    let n = n["input_tokens"].as_u64().expect("count");
    assert!((10..=40).contains(&n), "{n}");
    assert_eq!(env.mock_stats().await["requests"], 0, "counted locally");
    let resp = env
        .http
        .post(env.url("/v1/messages/count_tokens"))
        .json(&body)
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), 401);

    let upstream = start_tweaked(|raw| raw.upstream.count_tokens_upstream = true).await;
    let resp = count(&upstream).await.expect("sent");
    assert_eq!(resp.status(), 200);
    assert!(!resp.headers().contains_key("x-glmgate-token-count"));
    let n: Value = resp.json().await.expect("json");
    // The mock counts a quarter of the body's bytes.
    assert_eq!(n["input_tokens"], body.to_string().len() / 4);
}

async fn key_with_reasoning(env: &Env, mode: &str) -> String {
    let rules = glmgate::auth::KeyModels {
        reasoning: Some(mode.into()),
        ..Default::default()
    };
    key_with(env, mode, rules).await
}

#[tokio::test]
async fn reasoning_can_be_shown_as_think_tags_or_stripped_per_key() {
    let env = start(Opts::default()).await;
    // OpenAI stream (GLM reasons by default) with think tags.
    let tags = key_with_reasoning(&env, "think_tags").await;
    let text = env
        .openai_as(&tags, &openai_body(true))
        .await
        .text()
        .await
        .expect("stream");
    let mut content = String::new();
    for d in data_lines(&text).into_iter().filter(|d| *d != "[DONE]") {
        let v: Value = serde_json::from_str(d).expect("json");
        assert!(
            v.pointer("/choices/0/delta/reasoning_content").is_none(),
            "{d}"
        );
        content.push_str(
            v.pointer("/choices/0/delta/content")
                .and_then(Value::as_str)
                .unwrap_or(""),
        );
    }
    assert!(content.starts_with("<think>"), "{content}");
    assert!(content.contains("</think>Hello from"), "{content}");
    assert_eq!(content.matches("<think>").count(), 1);
    // Anthropic stream with thinking asked for, stripped.
    let strip = key_with_reasoning(&env, "strip").await;
    let mut body = anthropic_body(true);
    body["thinking"] = serde_json::json!({"type": "enabled", "budget_tokens": 1024});
    let text = env
        .anthropic_as(&strip, &body)
        .await
        .text()
        .await
        .expect("stream");
    assert!(!text.contains("thinking"), "{text}");
    assert!(text.contains("message_stop"));
    // Usage is still what the upstream reported (reasoning is paid for).
    let rows = env.usage_rows(2).await;
    assert!(rows
        .iter()
        .all(|r| r["outcome"] == "ok" && r["estimated"] == false));
}

#[tokio::test]
async fn the_upstream_api_can_be_chosen_per_model_when_both_exist() {
    let env = start_tweaked(|raw| {
        raw.admin.token = Some(ADMIN_TOKEN.into());
        raw.routing.upstream_api = vec![glmgate::config::RawUpstreamApi {
            model: "glm-4.5*".into(),
            api: glmgate::config::ApiKind::Openai,
        }];
    })
    .await;
    let explain = env
        .admin("/admin/routing/explain?api=anthropic&model=glm-4.5-air")
        .await;
    assert_eq!(explain["upstream_api"], "openai");
    assert_eq!(explain["translation"], "AnthropicToOpenAi");
    let explain = env
        .admin("/admin/routing/explain?api=anthropic&model=glm-4.7")
        .await;
    assert_eq!(
        explain["upstream_api"], "anthropic",
        "passthrough otherwise"
    );
    assert!(explain["translation"].is_null());
    let mut body = anthropic_body(true);
    body["model"] = "glm-4.5-air".into();
    let resp = env.anthropic(&body).await;
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.expect("stream");
    assert!(text.contains("message_stop"));
    assert_eq!(
        env.mock_stats().await["last_api"],
        "openai",
        "served by the OpenAI API"
    );
    assert_eq!(env.anthropic(&anthropic_body(false)).await.status(), 200);
    assert_eq!(env.mock_stats().await["last_api"], "anthropic");
}
