//! `upstream.http2`: the gateway speaks HTTP/2 to the upstream (here the mock, over h2c),
//! carrying many client requests as streams of a few shared connections.

use std::time::Duration;

use axum::http::Method;
use bytes::Bytes;
use glmgate::config::UpstreamHttp;
use glmgate::mock::{self, MockOptions};
use glmgate::upstream::client::{Endpoint, HttpClient};
use serde_json::Value;

use crate::common::*;

/// HTTP/2 upstream, two serving threads (each keeps its own upstream connections).
fn http2(raw: &mut glmgate::config::RawConfig) {
    raw.upstream.http2 = UpstreamHttp::Http2;
    raw.server.workers = 2;
}

#[tokio::test]
async fn both_apis_stream_and_answer_over_http2() {
    let env = start_tweaked(http2).await;

    let answer: Value = env
        .openai(&openai_body(false))
        .await
        .json()
        .await
        .expect("json");
    assert!(
        answer["choices"][0]["message"]["content"].is_string(),
        "{answer}"
    );
    let stats = env.mock_stats().await;
    assert_eq!(stats["last_version"], "HTTP/2.0", "{stats}");
    assert_eq!(stats["last_api"], "openai", "{stats}");

    let text = env.openai_text(&openai_body(true)).await;
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    assert!(data_lines(&text).len() > 5, "{text}");

    let text = env
        .anthropic(&anthropic_body(true))
        .await
        .text()
        .await
        .expect("body");
    assert_eq!(event_names(&text).last(), Some(&"message_stop"), "{text}");
    let stats = env.mock_stats().await;
    assert_eq!(stats["last_version"], "HTTP/2.0", "{stats}");
    // The Anthropic headers the client sent reach the upstream.
    assert_eq!(stats["last_anthropic_version"], "2023-06-01", "{stats}");

    let rows = env.usage_rows(3).await;
    assert!(
        rows.iter()
            .all(|r| r["outcome"] == "ok" && r["output_tokens"].as_i64() > Some(0)),
        "{rows:?}"
    );
}

#[tokio::test]
async fn a_client_that_leaves_resets_its_stream_and_is_accounted() {
    // One serving thread, so that every request could use the same upstream connection.
    let env = start_tweaked(|raw| {
        raw.upstream.http2 = UpstreamHttp::Http2;
        raw.server.workers = 1;
    })
    .await;
    leave_a_stream_after_its_first_event(&env).await;
    // The connection outlives the reset stream: the next request goes on it.
    let text = env.openai_text(&openai_body(true)).await;
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    assert_eq!(env.mock_stats().await["connections"], 1);
}

#[tokio::test]
async fn concurrent_streams_share_connections_of_at_most_a_hundred_streams() {
    let env = start_tweaked(http2).await;
    // 250 streams open at once (28 events 100 ms apart: about 3 s each). Over HTTP/1.1
    // that is 250 upstream connections; over HTTP/2, a hundred streams per connection on
    // each of the two serving threads: 3 or 4 connections, whichever way the client's
    // connections are spread over the threads (at least one thread carries 125).
    let body = with_fault(openai_body(true), "slow-chunks=100");
    let calls = (0..250).map(|_| async {
        let text = env.openai_text(&body).await;
        text.ends_with("data: [DONE]\n\n")
    });
    let done = futures_util::future::join_all(calls).await;
    assert!(done.iter().all(|ok| *ok), "every stream completes");
    let stats = env.mock_stats().await;
    assert_eq!(stats["streams_completed"], 250, "{stats}");
    let connections = stats["connections"].as_u64().expect("count");
    assert!((3..=4).contains(&connections), "{stats}");
}

/// What the mock offers by ALPN unless told otherwise.
const BOTH: &[&str] = &["h2", "http/1.1"];

/// The mock over HTTPS (offering `alpn` by ALPN) with a certificate signed by a
/// CA of the test's own, a gateway in front of it that trusts that CA (`upstream.ca_file`)
/// and speaks `version`, and a way to read the mock's counters.
async fn start_https(version: UpstreamHttp, alpn: &[&str]) -> (Env, impl AsyncFn() -> Value) {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = crate::test_certs::write(dir.path());
    let tls = mock::tls_config(&certs.cert, &certs.key, alpn).expect("TLS config");
    let listener = glmgate::app::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(mock::serve_tls(listener, tls, MockOptions::default()));

    let opts = Opts {
        upstream_override: Some(format!("https://{addr}")),
        ..Opts::default()
    };
    let mut raw = raw_config(addr, &dir, &opts);
    raw.upstream.http2 = version;
    raw.upstream.ca_file = Some(certs.ca.clone());
    let settings = glmgate::config::validate(raw, None).expect("valid config");
    let env = start_with(addr, dir, settings).await;

    let client = HttpClient::new(Duration::from_secs(5), UpstreamHttp::Http1, Some(&certs.ca))
        .expect("client");
    let stats = Endpoint::new(format!("https://{addr}/_mock/stats").parse().expect("uri"))
        .expect("endpoint");
    let read = async move || {
        let req = HttpClient::request(Method::GET, &stats, Bytes::new());
        let (_, body) = client
            .fetch(req, Duration::from_secs(5))
            .await
            .expect("mock stats");
        serde_json::from_slice(&body).expect("json")
    };
    (env, read)
}

#[tokio::test]
async fn by_default_an_https_upstream_that_offers_http2_is_spoken_to_in_it() {
    let (env, mock_stats) = start_https(UpstreamHttp::default(), BOTH).await;
    let text = env.openai_text(&openai_body(true)).await;
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    let answer = env.anthropic(&anthropic_body(false)).await;
    assert_eq!(answer.status(), 200);
    let stats = mock_stats().await;
    assert_eq!(stats["last_version"], "HTTP/2.0", "{stats}");
    assert_eq!(stats["requests"], 2, "{stats}");
    env.usage_rows(2).await;
}

#[tokio::test]
async fn an_https_upstream_gets_http1_when_http2_is_off() {
    let (env, mock_stats) = start_https(UpstreamHttp::Http1, BOTH).await;
    let text = env.openai_text(&openai_body(true)).await;
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    let stats = mock_stats().await;
    assert_eq!(stats["last_version"], "HTTP/1.1", "{stats}");
}

#[tokio::test]
async fn by_default_an_https_upstream_without_http2_is_spoken_to_in_http1() {
    let (env, mock_stats) = start_https(UpstreamHttp::default(), &["http/1.1"]).await;
    // Two at once while the first connection asks, then one more.
    let (stream, whole) = (openai_body(true), openai_body(false));
    let (a, b) = tokio::join!(env.openai_text(&stream), env.openai_text(&whole));
    assert!(a.ends_with("data: [DONE]\n\n"), "{a}");
    assert!(b.contains("\"choices\""), "{b}");
    let answer = env.anthropic(&anthropic_body(true)).await;
    assert_eq!(answer.status(), 200);
    let stats = mock_stats().await;
    assert_eq!(stats["last_version"], "HTTP/1.1", "{stats}");
    assert_eq!(stats["requests"], 3, "{stats}");
    env.usage_rows(3).await;
}

#[tokio::test]
async fn http2_forced_on_an_upstream_without_it_fails_clearly_in_the_clients_format() {
    // The mock offers HTTP/1.1 alone by ALPN; `true` offers `h2` alone, so the TLS
    // handshake finds no protocol in common and no request is sent.
    let (env, mock_stats) = start_https(UpstreamHttp::Http2, &["http/1.1"]).await;
    let answer = env.openai(&openai_body(false)).await;
    assert_eq!(answer.status(), 502);
    let body: Value = answer.json().await.expect("json");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("could not connect to 127.0.0.1"), "{body}");
    let stats = mock_stats().await;
    assert_eq!(stats["requests"], 0, "{stats}");
}
