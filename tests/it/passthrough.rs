//! Both client APIs pass through to the upstream of the same format, untouched, and usage
//! is read from the answer and stored.

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::common::*;

#[tokio::test]
async fn openai_non_stream_is_forwarded_byte_for_byte() {
    let env = start(Opts::default()).await;
    // Odd spacing and an unknown field: the upstream must receive exactly these bytes.
    let body = r#"{ "model":"glm-4.7",  "messages":[{"role":"user","content":"Hi"}], "x_custom": [1, 2] }"#;
    let resp = env
        .http
        .post(env.url("/v1/chat/completions"))
        .bearer_auth(&env.key)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().contains_key("x-request-id"));
    let json: Value = resp.json().await.expect("json");
    assert_eq!(json["object"], "chat.completion");
    assert!(json["choices"][0]["message"]["content"]
        .as_str()
        .expect("content")
        .contains("You said: Hi"));
    let stats = env.mock_stats().await;
    assert_eq!(
        stats["last_body_sha256"],
        hex::encode(Sha256::digest(body.as_bytes()))
    );
    // The upstream saw the upstream key, never the client's.
    assert_eq!(
        stats["last_authorization"],
        format!("Bearer {UPSTREAM_KEY}")
    );
    assert!(!stats.to_string().contains(&env.key));

    let rows = env.usage_rows(1).await;
    let usage = &json["usage"];
    assert_eq!(rows[0]["api"], "openai");
    assert_eq!(rows[0]["outcome"], "ok");
    assert_eq!(rows[0]["input_tokens"], usage["prompt_tokens"]);
    assert_eq!(rows[0]["output_tokens"], usage["completion_tokens"]);
    assert_eq!(
        rows[0]["cached_tokens"],
        usage["prompt_tokens_details"]["cached_tokens"]
    );
    assert_eq!(rows[0]["estimated"], false);
}

#[tokio::test]
async fn openai_stream_passes_every_event_and_meters_usage() {
    let env = start(Opts::default()).await;
    let resp = env.openai(&openai_body(true)).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .expect("ascii")
        .starts_with("text/event-stream"));
    let text = resp.text().await.expect("body");
    let data = data_lines(&text);
    // 6 reasoning + 20 text chunks + the finishing chunk + [DONE]
    assert_eq!(data.len(), 28, "{text}");
    assert_eq!(*data.last().expect("last"), "[DONE]");
    let last: Value = serde_json::from_str(data[data.len() - 2]).expect("json");
    let rows = env.usage_rows(1).await;
    assert_eq!(rows[0]["stream"], true);
    assert_eq!(rows[0]["input_tokens"], last["usage"]["prompt_tokens"]);
    assert_eq!(rows[0]["output_tokens"], last["usage"]["completion_tokens"]);
    assert_eq!(rows[0]["reasoning_tokens"], 6);
    assert_eq!(rows[0]["outcome"], "ok");
}

#[tokio::test]
async fn anthropic_non_stream_and_stream() {
    let env = start(Opts::default()).await;
    let resp = env.anthropic(&anthropic_body(false)).await;
    assert_eq!(resp.status(), 200);
    let json: Value = resp.json().await.expect("json");
    assert_eq!(json["type"], "message");
    assert_eq!(json["stop_reason"], "end_turn");
    let stats = env.mock_stats().await;
    assert_eq!(stats["last_anthropic_version"], "2023-06-01");
    assert_eq!(
        stats["last_authorization"],
        format!("Bearer {UPSTREAM_KEY}")
    );
    assert_eq!(
        stats["last_x_api_key"], "",
        "client x-api-key not forwarded"
    );

    let resp = env.anthropic(&anthropic_body(true)).await;
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.expect("body");
    let events = event_names(&text);
    assert_eq!(events.first(), Some(&"message_start"));
    assert_eq!(events.last(), Some(&"message_stop"));
    assert!(events.contains(&"ping"));

    let rows = env.usage_rows(2).await;
    // Anthropic input excludes cache reads; ours includes them.
    let u = &json["usage"];
    let input =
        u["input_tokens"].as_i64().expect("n") + u["cache_read_input_tokens"].as_i64().expect("n");
    assert_eq!(rows[0]["input_tokens"], input);
    assert_eq!(rows[0]["cached_tokens"], u["cache_read_input_tokens"]);
    assert_eq!(rows[1]["api"], "anthropic");
    assert_eq!(rows[1]["outcome"], "ok");
    assert_eq!(rows[1]["output_tokens"], 20, "20 text chunks, no thinking");
}

#[tokio::test]
async fn keys_work_from_each_place_and_stats_show_totals() {
    let env = start(Opts::default()).await;
    let body = openai_body(false);
    let by_query = env
        .http
        .post(env.url(&format!("/v1/chat/completions?api_key={}", env.key)))
        .json(&body)
        .send()
        .await
        .expect("sent");
    assert_eq!(by_query.status(), 200);
    let by_header = env
        .http
        .post(env.url("/v1/chat/completions"))
        .header("x-api-key", &env.key)
        .json(&body)
        .send()
        .await
        .expect("sent");
    assert_eq!(by_header.status(), 200);
    env.usage_rows(2).await;
    let stats = env.get_json("/stats", false).await;
    assert_eq!(stats["requests"], 2);
    assert_eq!(stats["by_model"][0]["model"], "glm-4.7");
    assert!(stats["input_tokens"].as_i64().expect("n") > 0);
    assert!(!stats.to_string().contains(&env.key), "secret never echoed");
}

#[tokio::test]
async fn models_health_ready_and_telemetry() {
    let env = start(Opts::default()).await;
    let openai = env.get_json("/v1/models", false).await;
    assert_eq!(openai["object"], "list");
    assert!(openai["data"]
        .as_array()
        .expect("list")
        .iter()
        .any(|m| m["id"] == "glm-4.7"));
    let anthropic = env.get_json("/v1/models", true).await;
    assert_eq!(anthropic["has_more"], false);
    assert_eq!(anthropic["data"][0]["type"], "model");

    let health = env.http.get(env.url("/health")).send().await.expect("sent");
    assert_eq!(health.status(), 200);
    let ready = env.http.get(env.url("/ready")).send().await.expect("sent");
    assert_eq!(ready.status(), 200);

    let before = env.mock_stats().await["requests"].clone();
    let telemetry = env
        .http
        .post(env.url("/api/event_logging/batch"))
        .json(&serde_json::json!({"events": []}))
        .send()
        .await
        .expect("sent");
    assert_eq!(telemetry.status(), 204);
    assert_eq!(
        env.mock_stats().await["requests"],
        before,
        "telemetry never reaches upstream"
    );
}

#[tokio::test]
async fn ready_is_503_without_upstream_keys() {
    let env = start(Opts {
        keys: vec![],
        ..Opts::default()
    })
    .await;
    let ready = env.http.get(env.url("/ready")).send().await.expect("sent");
    assert_eq!(ready.status(), 503);
    let body: Value = ready.json().await.expect("json");
    assert_eq!(body["upstream_keys"], 0);
    // A request says why, in the client's format, with the same status.
    let resp = env.openai(&openai_body(false)).await;
    assert_eq!(resp.status(), 503);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["error"]["code"], "no_upstream_key");
    let resp = env.anthropic(&anthropic_body(false)).await;
    assert_eq!(resp.status(), 503);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["type"], "error");
}

#[tokio::test]
async fn upstream_connections_are_kept_alive_and_reused() {
    // One serving thread: connections are pooled per thread.
    let env = start_tweaked(|raw| raw.server.workers = 1).await;
    for i in 0..12 {
        let stream = i % 2 == 1;
        let resp = if i % 4 < 2 {
            env.openai(&openai_body(stream)).await
        } else {
            env.anthropic(&anthropic_body(stream)).await
        };
        assert_eq!(resp.status(), 200, "request {i}");
        let text = resp.text().await.expect("whole body");
        assert!(!text.is_empty(), "request {i}");
    }
    let stats = env.mock_stats().await;
    assert_eq!(stats["requests"], 12);
    // Every answer, streamed or whole, of either API, handed its connection back.
    assert_eq!(stats["connections"], 1, "{stats}");
}
