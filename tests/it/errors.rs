//! Every error a client can cause or receive, in the client's own format with the right status.

use std::time::Duration;

use serde_json::{json, Value};

use crate::common::*;

async fn expect_openai_error(resp: reqwest::Response, status: u16) -> Value {
    assert_eq!(resp.status(), status);
    assert!(resp.headers()["content-type"]
        .to_str()
        .expect("ascii")
        .starts_with("application/json"));
    let body: Value = resp.json().await.expect("json error body");
    assert!(body["error"]["message"].is_string(), "{body}");
    body
}

async fn expect_anthropic_error(resp: reqwest::Response, status: u16, kind: &str) -> Value {
    assert_eq!(resp.status(), status);
    let body: Value = resp.json().await.expect("json error body");
    assert_eq!(body["type"], "error", "{body}");
    assert_eq!(body["error"]["type"], kind, "{body}");
    body
}

#[tokio::test]
async fn missing_and_invalid_keys_are_401_in_each_format() {
    let env = start(Opts::default()).await;
    let resp = env
        .http
        .post(env.url("/v1/chat/completions"))
        .json(&openai_body(false))
        .send()
        .await
        .expect("sent");
    let body = expect_openai_error(resp, 401).await;
    assert_eq!(body["error"]["code"], "missing_api_key");

    let resp = env
        .http
        .post(env.url("/v1/messages"))
        .header("x-api-key", "gg-not-a-real-key")
        .json(&anthropic_body(false))
        .send()
        .await
        .expect("sent");
    let body = expect_anthropic_error(resp, 401, "authentication_error").await;
    assert!(
        !body.to_string().contains("gg-not-a-real-key"),
        "key not echoed"
    );
    assert_eq!(
        env.mock_stats().await["requests"],
        0,
        "nothing reached the upstream"
    );
}

#[tokio::test]
async fn revoked_key_stops_working_within_seconds_and_expired_is_403() {
    let env = start(Opts::default()).await;
    assert_eq!(env.openai(&openai_body(false)).await.status(), 200);
    let prefix = &env.key[..10];
    assert_eq!(env.store.revoke_key(prefix, 1).await.expect("revoke"), 1);
    let mut status = 200;
    for _ in 0..60 {
        status = env.openai(&openai_body(false)).await.status().as_u16();
        if status != 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 403, "revoked key refused within the cache TTL");

    let (_, expired) = glmgate::auth::create_key(&env.store, "old", Some(1_000))
        .await
        .expect("key");
    let resp = env
        .http
        .post(env.url("/v1/messages"))
        .bearer_auth(&expired)
        .json(&anthropic_body(false))
        .send()
        .await
        .expect("sent");
    let body = expect_anthropic_error(resp, 403, "permission_error").await;
    assert!(body["error"]["message"]
        .as_str()
        .expect("msg")
        .contains("expired"));
}

#[tokio::test]
async fn malformed_and_incomplete_bodies_are_400_naming_the_field() {
    let env = start(Opts::default()).await;
    let send = |path: &'static str, body: &'static str| {
        env.http
            .post(env.url(path))
            .bearer_auth(&env.key)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let body = expect_openai_error(
        send("/v1/chat/completions", "{\"model\":")
            .await
            .expect("sent"),
        400,
    )
    .await;
    assert!(body["error"]["message"]
        .as_str()
        .expect("m")
        .contains("not valid JSON"));

    let body = expect_openai_error(
        send(
            "/v1/chat/completions",
            r#"{"model":"glm-4.7","messages":"hi"}"#,
        )
        .await
        .expect("sent"),
        400,
    )
    .await;
    assert_eq!(body["error"]["param"], "messages");

    // max_tokens missing, then of the wrong type: both name the field.
    for body in [
        r#"{"model":"glm-4.7","messages":[{"role":"user","content":"x"}]}"#,
        r#"{"model":"glm-4.7","max_tokens":"ten","messages":[]}"#,
    ] {
        let resp = send("/v1/messages", body).await.expect("sent");
        let body = expect_anthropic_error(resp, 400, "invalid_request_error").await;
        let message = body["error"]["message"].as_str().expect("m");
        assert!(message.contains("max_tokens"), "{message}");
    }
    assert_eq!(env.mock_stats().await["requests"], 0);
}

#[tokio::test]
async fn oversized_body_is_413() {
    let env = start(Opts::default()).await; // limit 64 KiB
    let big =
        json!({"model": "glm-4.7", "messages": [{"role": "user", "content": "x".repeat(100_000)}]});
    let body = expect_openai_error(env.openai(&big).await, 413).await;
    assert_eq!(body["error"]["code"], "request_too_large");
    let big = json!({"model": "glm-4.7", "max_tokens": 5, "messages": [{"role": "user", "content": "x".repeat(100_000)}]});
    expect_anthropic_error(env.anthropic(&big).await, 413, "request_too_large").await;
}

/// A raw connection to the gateway, for what an HTTP client library would not send.
async fn raw(env: &Env) -> tokio::net::TcpStream {
    let addr = env.base.trim_start_matches("http://");
    tokio::net::TcpStream::connect(addr).await.expect("connect")
}

/// Reads until the gateway closes the connection (bounded, so a hang fails the test).
async fn read_to_close(tcp: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), tcp.read_to_end(&mut got))
        .await
        .expect("the gateway closes the connection")
        .expect("read");
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test]
async fn clients_that_stall_are_cut_off_after_the_client_timeout() {
    use tokio::io::AsyncWriteExt;
    let env = start_tweaked(|raw| raw.server.client_timeout_secs = 1).await;
    // An idle keep-alive connection, and a head that never ends (slowloris): closed
    // without an answer.
    let mut idle = raw(&env).await;
    let mut slow = raw(&env).await;
    slow.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n")
        .await
        .expect("write");
    assert_eq!(read_to_close(&mut idle).await, "");
    assert_eq!(read_to_close(&mut slow).await, "");

    // A body that stops short of its length: 408 in the client's format, per API.
    for (path, key_header) in [
        ("/v1/chat/completions", "authorization: Bearer"),
        ("/v1/messages", "x-api-key:"),
    ] {
        let mut tcp = raw(&env).await;
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: x\r\n{key_header} {}\r\n\
             content-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"model\":",
            env.key
        );
        tcp.write_all(head.as_bytes()).await.expect("write");
        let answer = read_to_close(&mut tcp).await;
        assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
        let body: Value =
            serde_json::from_str(&answer[answer.find("\r\n\r\n").expect("head") + 4..])
                .expect("json body");
        if path.ends_with("messages") {
            assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
        } else {
            assert_eq!(body["error"]["code"], "request_timeout", "{body}");
        }
    }
    // Nothing reached the upstream, and a well-behaved client is still served.
    assert_eq!(env.mock_stats().await["requests"], 0);
    let ok = env.openai(&openai_body(false)).await;
    assert_eq!(ok.status(), 200);
}

#[tokio::test]
async fn unknown_route_is_404_in_each_format() {
    let env = start(Opts::default()).await;
    let resp = env
        .http
        .get(env.url("/v1/nothing"))
        .send()
        .await
        .expect("sent");
    expect_openai_error(resp, 404).await;
    let resp = env
        .http
        .post(env.url("/v1/messages/batches"))
        .send()
        .await
        .expect("sent");
    expect_anthropic_error(resp, 404, "not_found_error").await;
    let resp = env
        .http
        .get(env.url("/v1/chat/completions"))
        .send()
        .await
        .expect("sent");
    expect_openai_error(resp, 404).await;
}

#[tokio::test]
async fn unreachable_upstream_is_502_without_secrets() {
    // A port nothing listens on: bind, learn the port, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let env = start(Opts {
        upstream_override: Some(format!("http://127.0.0.1:{port}")),
        ..Opts::default()
    })
    .await;
    let body = expect_openai_error(env.openai(&openai_body(false)).await, 502).await;
    assert_eq!(body["error"]["code"], "upstream_unreachable");
    assert!(!body.to_string().contains(UPSTREAM_KEY));
    let body =
        expect_anthropic_error(env.anthropic(&anthropic_body(true)).await, 502, "api_error").await;
    assert!(!body.to_string().contains(UPSTREAM_KEY));
    let rows = env.usage_rows(2).await;
    assert_eq!(rows[0]["outcome"], "upstream_failed");
    assert_eq!(rows[0]["status"], 502);
}

#[tokio::test]
async fn slow_upstream_is_504() {
    let env = start(Opts {
        first_byte_timeout_secs: 1,
        ..Opts::default()
    })
    .await;
    let body = with_fault(openai_body(false), "slow-first-byte=3000");
    let body = expect_openai_error(env.openai(&body).await, 504).await;
    assert_eq!(body["error"]["code"], "upstream_timeout");
    let body = with_fault(anthropic_body(true), "slow-first-byte=3000");
    expect_anthropic_error(env.anthropic(&body).await, 504, "timeout_error").await;
}

#[tokio::test]
async fn upstream_error_statuses_and_bodies_are_passed_on() {
    let env = start(Opts::default()).await;
    // A client error is returned at once, not retried.
    let mut body = openai_body(false);
    body["model"] = "gpt-nope".into();
    let resp = env.openai(&body).await;
    assert_eq!(resp.status(), 400);
    let json: Value = resp.json().await.expect("json");
    assert_eq!(json["error"]["code"], "1211");
    assert_eq!(env.mock_stats().await["requests"], 1, "not retried");

    // Retryable failures with no other account to go to: the last answer is passed on.
    let body = with_fault(openai_body(false), "429-1302");
    let resp = env.openai(&body).await;
    assert_eq!(resp.status(), 429);
    let json: Value = resp.json().await.expect("json");
    assert_eq!(json["error"]["code"], "1302");

    let body = with_fault(anthropic_body(true), "529");
    let resp = env.anthropic(&body).await;
    assert_eq!(resp.status(), 529);
    let json: Value = resp.json().await.expect("json");
    assert_eq!(json["error"]["type"], "overloaded_error");

    let body = with_fault(anthropic_body(false), "429-1308");
    let resp = env.anthropic(&body).await;
    assert_eq!(resp.status(), 429);
    assert_eq!(
        resp.headers()["retry-after-ms"],
        "3000",
        "Retry-After passed on"
    );
    let json: Value = resp.json().await.expect("json");
    assert!(json["error"]["message"]
        .as_str()
        .expect("m")
        .contains("reset at"));

    // The only account is now benched until its reset: the gateway says when, itself.
    let before = env.mock_stats().await["requests"].clone();
    let resp = env.openai(&openai_body(false)).await;
    assert_eq!(resp.status(), 429);
    let retry_after: u64 = resp.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!((3000..=3600).contains(&retry_after), "{retry_after}");
    let json: Value = resp.json().await.expect("json");
    assert_eq!(json["error"]["code"], "upstream_quota_exhausted");
    assert!(json["error"]["message"]
        .as_str()
        .expect("m")
        .contains("until"));
    assert_eq!(
        env.mock_stats().await["requests"],
        before,
        "not sent upstream"
    );

    let rows = env.usage_rows(5).await;
    assert!(rows[..4].iter().all(|r| r["outcome"] == "upstream_error"));
    assert_eq!(rows[4]["outcome"], "upstream_failed");
    assert_eq!(rows[4]["status"], 429);
    // Each passed-on answer names the account that gave it, and the rows' attempts add up
    // to what the mock received: the 400 once, the retried ones as often as they were sent,
    // the benched request never.
    assert!(
        rows[..4].iter().all(|r| r["upstream"].is_string()),
        "{rows:?}"
    );
    assert_eq!(rows[0]["attempts"], 1);
    assert_eq!(rows[4]["attempts"], 0);
    let attempts: i64 = rows
        .iter()
        .map(|r| r["attempts"].as_i64().expect("n"))
        .sum();
    assert_eq!(Value::from(attempts), before, "{rows:?}");
}

#[tokio::test]
async fn a_rejected_upstream_key_is_a_503_not_the_clients_401() {
    let env = start(Opts {
        keys: vec!["fault-401".into()],
        ..Opts::default()
    })
    .await;
    let resp = env.openai(&openai_body(false)).await;
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    let json: Value = resp.json().await.expect("json");
    assert_eq!(json["error"]["code"], "no_working_upstream_key");
    assert!(!json.to_string().contains("fault-401"), "{json}");
    let ready = env.http.get(env.url("/ready")).send().await.expect("ready");
    assert_eq!(ready.status(), 503, "no usable key left");
}

#[tokio::test]
async fn empty_or_garbage_200_is_a_clean_502() {
    // Every attempt fails here; keep the key's circuit closed to see each answer.
    let env = start_tweaked(|raw| raw.upstream.breaker.failures = 100).await;
    for fault in ["empty-200", "garbage-200"] {
        let body = with_fault(openai_body(false), fault);
        let json = expect_openai_error(env.openai(&body).await, 502).await;
        assert_eq!(
            json["error"]["code"], "upstream_invalid_response",
            "{fault}"
        );
        let body = with_fault(anthropic_body(false), fault);
        expect_anthropic_error(env.anthropic(&body).await, 502, "api_error").await;
    }
    // Each was tried `retry.max_attempts` (4) times before the client was answered, and
    // its history row says so.
    assert_eq!(env.mock_stats().await["requests"], 16);
    let rows = env.usage_rows(4).await;
    assert!(rows.iter().all(|r| r["attempts"] == 4), "{rows:?}");
}
