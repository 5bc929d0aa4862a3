//! Streams: events are forwarded as they arrive, a client that leaves cancels the upstream,
//! and an upstream that breaks off ends the client's stream with an error event.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;

use crate::common::*;

#[tokio::test]
async fn first_event_arrives_while_upstream_is_still_streaming() {
    let env = start(Opts::default()).await;
    // 400 ms between chunks: the whole stream takes over 10 s upstream.
    let body = with_fault(openai_body(true), "slow-chunks=400");
    let resp = env.openai(&body).await;
    assert_eq!(resp.status(), 200);
    let mut stream = resp.bytes_stream();
    let first = stream.next().await.expect("a chunk").expect("ok");
    let text = String::from_utf8_lossy(&first);
    assert!(text.starts_with("data: {"), "{text}");
    // Not a timing assertion: the event reached us while the mock had not finished
    // (no stream completed, one in flight), so the gateway did not hold it back.
    let stats = env.mock_stats().await;
    assert_eq!(stats["streams_completed"], 0, "{stats}");
    assert_eq!(stats["in_flight"], 1, "{stats}");
    // The second event also comes through before the upstream finishes.
    let second = stream.next().await.expect("a chunk").expect("ok");
    assert!(String::from_utf8_lossy(&second).contains("data: "));
    assert_eq!(env.mock_stats().await["streams_completed"], 0);
}

#[tokio::test]
async fn client_disconnect_cancels_upstream_and_is_accounted() {
    let env = start(Opts::default()).await;
    leave_a_stream_after_its_first_event(&env).await;
}

/// A client that closes a stream as soon as its last event is in (as the SDKs do) got the
/// whole answer: it is accounted `ok`, though the upstream body had not ended yet.
#[tokio::test]
async fn a_client_closing_after_the_last_event_is_accounted_ok() {
    let env = start(Opts::default()).await;
    for (anthropic, last) in [(false, "data: [DONE]"), (true, "event: message_stop")] {
        // The mock keeps each stream open 3 s after its last event.
        let resp = if anthropic {
            env.anthropic(&with_fault(anthropic_body(true), "slow-end=3000"))
                .await
        } else {
            env.openai(&with_fault(openai_body(true), "slow-end=3000"))
                .await
        };
        assert_eq!(resp.status(), 200);
        let mut stream = resp.bytes_stream();
        let mut text = String::new();
        while !text.contains(last) {
            let chunk = stream.next().await.expect("a chunk").expect("ok");
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
        drop(stream);
    }
    env.wait_mock("both upstream streams closed", |s| {
        s["streams_cancelled"].as_u64().unwrap_or(0) + s["streams_completed"].as_u64().unwrap_or(0)
            == 2
    })
    .await;
    let rows = env.usage_rows(2).await;
    for row in &rows {
        assert_eq!(row["outcome"], "ok", "{row}");
        assert_eq!(row["estimated"], false, "{row}");
        assert!(row["output_tokens"].as_i64().expect("n") > 0, "{row}");
    }
}

#[tokio::test]
async fn upstream_drop_mid_stream_ends_with_an_error_event_in_client_format() {
    let env = start(Opts::default()).await;
    let body = with_fault(openai_body(true), "drop-mid-stream=5");
    let text = env.openai(&body).await.text().await.expect("body");
    let data = data_lines(&text);
    assert_eq!(data.len(), 6, "{text}");
    let last: Value = serde_json::from_str(data[5]).expect("json");
    assert_eq!(last["error"]["code"], "upstream_interrupted");

    let body = with_fault(anthropic_body(true), "drop-mid-stream=4");
    let text = env.anthropic(&body).await.text().await.expect("body");
    assert!(text.contains("event: error\ndata: {"), "{text}");
    assert!(!text.contains("message_stop"));

    let rows = env.usage_rows(2).await;
    assert_eq!(rows[0]["outcome"], "upstream_cut");
    // No usage arrived: the gateway estimated what passed and says so.
    assert_eq!(rows[0]["estimated"], true);
    assert_eq!(rows[0]["output_tokens"], 5);
    assert_eq!(rows[1]["outcome"], "upstream_cut");
    assert!(rows[1]["input_tokens"].as_i64().expect("n") > 0);
}

#[tokio::test]
async fn idle_upstream_stream_is_cut_with_an_error_event() {
    let env = start(Opts {
        idle_timeout_secs: 1,
        ..Opts::default()
    })
    .await;
    let body = with_fault(openai_body(true), "slow-chunks=3000");
    let text = tokio::time::timeout(Duration::from_secs(20), async {
        env.openai(&body).await.text().await.expect("body")
    })
    .await
    .expect("the gateway ends an idle stream");
    assert!(text.contains("upstream_interrupted"), "{text}");
    env.wait_mock("upstream cancelled", |s| s["streams_cancelled"] == 1)
        .await;
}
