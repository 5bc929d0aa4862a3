//! Upstream accounts and keys: failover per failure class, adaptive limits, benches, the
//! admin view, hot reload and restarts. Faults are chosen per upstream key
//! (`fault-<SPEC>` keys, see docs/mock.md), so each account behaves as the test needs.

use std::time::Duration;

use glmgate::mock::MockOptions;
use serde_json::Value;

use crate::common::*;

/// Two accounts on one provider in front of the mock.
fn two_accounts(a: &str, b: &str) -> String {
    format!(
        r#"
[[providers]]
name = "zai"
preset = "custom"
openai_base_url = "MOCK/api/coding/paas/v4"
anthropic_base_url = "MOCK/api/anthropic"
[[providers.accounts]]
name = "a"
{a}
[[providers.accounts]]
name = "b"
{b}
"#
    )
}

async fn all_ok(env: &Env, n: usize, body: Value) {
    let futures = (0..n).map(|_| env.openai(&body));
    for resp in futures_util::future::join_all(futures).await {
        let status = resp.status();
        let text = resp.text().await.expect("body");
        assert_eq!(status, 200, "{text}");
    }
}

#[tokio::test]
async fn a_key_answering_401_is_disabled_and_the_others_serve_everything() {
    let (env, _) = start_file(
        MockOptions::default(),
        &two_accounts(r#"keys = ["fault-401"]"#, r#"keys = ["good-key"]"#),
    )
    .await;
    for _ in 0..10 {
        let resp = env.openai(&openai_body(false)).await;
        assert_eq!(resp.status(), 200);
        let resp = env.anthropic(&anthropic_body(true)).await;
        assert_eq!(resp.status(), 200);
        resp.text().await.expect("stream");
    }
    let a = env.account("zai/a").await;
    assert_eq!(a["keys"][0]["state"], "disabled", "{a}");
    assert!(a["keys"][0]["disabled_reason"]
        .as_str()
        .expect("reason")
        .contains("HTTP 401"));
    // The secret never shows; the label does.
    let snap = env.admin("/admin/upstreams").await.to_string();
    assert!(
        !snap.contains("fault-401") && !snap.contains("good-key"),
        "{snap}"
    );
    assert!(snap.contains("zai/a#"), "{snap}");
    // At most one request per kind ever reached the bad key.
    let stats = env.mock_stats().await;
    assert!(stats["requests"].as_u64().expect("n") <= 21, "{stats}");
    let ready: Value = env.get_json("/ready", false).await;
    assert_eq!(ready["usable_upstream_keys"], 1);
}

#[tokio::test]
async fn admin_endpoints_need_the_admin_token() {
    let (env, _) = start_file(
        MockOptions::default(),
        &two_accounts(r#"keys = ["k1"]"#, r#"keys = ["k2"]"#),
    )
    .await;
    for token in [None, Some(env.key.as_str()), Some("wrong")] {
        let resp = env.get_as("/admin/upstreams", token).await;
        assert_eq!(resp.status(), 401);
    }
    // Without a configured token the admin API is off.
    let plain = start(Opts::default()).await;
    let resp = plain.get_as("/admin/upstreams", Some(ADMIN_TOKEN)).await;
    assert_eq!(resp.status(), 403);
}

#[tokio::test]
async fn a_1302_storm_shrinks_that_accounts_limit_and_nothing_fails() {
    // Account a allows one request in flight; b has room. Streams last ~200 ms.
    let (env, _) = start_file(
        MockOptions {
            chunk_delay: Duration::from_millis(10),
            ..MockOptions::default()
        },
        &two_accounts(r#"keys = ["fault-concurrency=1"]"#, r#"keys = ["roomy"]"#),
    )
    .await;
    all_ok(&env, 24, openai_body(true)).await;
    let a = env.account("zai/a").await;
    assert!(a["last_error"]
        .as_str()
        .expect("error")
        .contains("concurrency"));
    let stats = env.mock_stats().await;
    assert!(
        stats["requests"].as_u64().expect("n") > 24,
        "some attempts were refused and retried: {stats}"
    );
    all_ok(&env, 24, openai_body(true)).await;
    let a = env.account("zai/a").await;
    assert_eq!(a["models"]["glm-4.7"]["adaptive_limit"], 1, "{a}");
    // With the learned limit, the next wave gets no 1302 at all from a.
    let before = env.mock_stats().await["requests"].as_u64().expect("n");
    all_ok(&env, 24, openai_body(true)).await;
    let after = env.mock_stats().await["requests"].as_u64().expect("n");
    assert_eq!(
        after - before,
        24,
        "no refused attempts once the limit is learned"
    );
}

#[tokio::test]
async fn a_quota_error_benches_the_account_until_its_reset() {
    let (env, _) = start_file(
        MockOptions::default(),
        &two_accounts(r#"keys = ["fault-429-1308"]"#, r#"keys = ["fresh"]"#),
    )
    .await;
    for _ in 0..6 {
        let resp = env.anthropic(&anthropic_body(false)).await;
        assert_eq!(resp.status(), 200);
    }
    let a = env.account("zai/a").await;
    assert_eq!(a["state"], "benched", "{a}");
    let until = chrono::DateTime::parse_from_rfc3339(a["benched_until"].as_str().expect("until"))
        .expect("rfc3339");
    let left = until
        .signed_duration_since(chrono::Utc::now())
        .num_seconds();
    // The mock says the quota resets in one hour (given in UTC+8).
    assert!((3000..=3600).contains(&left), "{left}");
    assert!(env.mock_stats().await["requests"].as_u64().expect("n") <= 7);
    let rows = env.usage_rows(6).await;
    assert!(rows.iter().all(|r| r["upstream"] == "zai/b"), "{rows:?}");
}

#[tokio::test]
async fn a_model_outside_one_plan_goes_to_the_account_that_has_it() {
    // a answers 1113 for glm-5 only; b's plan has glm-5 alone.
    let (env, _) = start_file(
        MockOptions::default(),
        &two_accounts(
            r#"keys = ["fault-429-1113@glm-5"]"#,
            r#"keys = ["five"]
models = ["glm-5"]"#,
        ),
    )
    .await;
    let mut five = openai_body(false);
    five["model"] = "glm-5".into();
    for _ in 0..4 {
        assert_eq!(env.openai(&five).await.status(), 200);
        assert_eq!(env.openai(&openai_body(false)).await.status(), 200);
    }
    let rows = env.usage_rows(8).await;
    for r in rows {
        let expected = if r["model"] == "glm-5" {
            "zai/b"
        } else {
            "zai/a"
        };
        assert_eq!(r["upstream"], expected, "{r}");
    }
    let a = env.account("zai/a").await;
    assert!(a["models"]["glm-5"]["benched_until"].is_string(), "{a}");
    assert!(a["models"]["glm-4.7"]["benched_until"].is_null(), "{a}");
    // 8 answers, and one extra attempt: the 1113 that benched glm-5 on a.
    assert!(env.mock_stats().await["requests"].as_u64().expect("n") <= 9);
}

#[tokio::test]
async fn reload_under_load_loses_no_request_and_bad_configs_are_refused() {
    let (env, path) = start_file(
        MockOptions {
            chunk_delay: Duration::from_millis(5),
            ..MockOptions::default()
        },
        &two_accounts(r#"keys = ["k1"]"#, r#"keys = ["k2"]"#),
    )
    .await;
    let text = std::fs::read_to_string(&path).expect("config");
    let load = async {
        for _ in 0..4 {
            all_ok(&env, 16, openai_body(true)).await;
        }
    };
    let reloads = async {
        for i in 0..8 {
            // Alternate: drop account b, then add it back with another key.
            let next = if i % 2 == 0 {
                text.replace("[[providers.accounts]]\nname = \"b\"\nkeys = [\"k2\"]", "")
            } else {
                text.replace("\"k2\"", "\"k3\"")
            };
            std::fs::write(&path, next).expect("write");
            let resp = env
                .http
                .post(env.url("/admin/reload"))
                .bearer_auth(ADMIN_TOKEN)
                .send()
                .await
                .expect("sent");
            assert_eq!(
                resp.status(),
                200,
                "{}",
                resp.text().await.unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    };
    tokio::join!(load, reloads);
    assert_eq!(
        env.account("zai/b").await["keys"].as_array().map(Vec::len),
        Some(1)
    );

    std::fs::write(
        &path,
        text.replace("preset = \"custom\"", "preset = \"nope\""),
    )
    .expect("write");
    let resp = env
        .http
        .post(env.url("/admin/reload"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.expect("json");
    assert!(body["error"]["message"]
        .as_str()
        .expect("message")
        .contains("unknown preset"));
    assert_eq!(
        env.openai(&openai_body(false)).await.status(),
        200,
        "old config stays"
    );
}

#[tokio::test]
async fn learned_limits_survive_a_restart() {
    // Two distinct keys (the mock counts slots per key string; the second item only
    // affects the quota monitor, which is off here).
    let rest = two_accounts(
        r#"keys = ["fault-concurrency=2"]"#,
        r#"keys = ["fault-concurrency=2,quota-used=10"]"#,
    );
    let (mut env, path) = start_file(
        MockOptions {
            chunk_delay: Duration::from_millis(10),
            ..MockOptions::default()
        },
        &rest,
    )
    .await;
    // Eight at once on 2 × 2 slots: some are refused, limits are learned, all succeed
    // (a refused request waits for a slot).
    all_ok(&env, 8, openai_body(true)).await;
    let limits = |a: Value| a["models"]["glm-4.7"]["adaptive_limit"].clone();
    let learned = [
        limits(env.account("zai/a").await),
        limits(env.account("zai/b").await),
    ];
    assert!(
        learned.iter().any(Value::is_u64),
        "a limit was learned: {learned:?}"
    );
    env.gateway
        .take()
        .expect("running")
        .stop()
        .await
        .expect("stopped");

    let settings = glmgate::config::load(Some(&path)).expect("config");
    let gateway = glmgate::app::spawn(settings).await.expect("restarts");
    env.base = format!("http://{}", gateway.addr);
    env.gateway = Some(gateway);
    let restored = [
        limits(env.account("zai/a").await),
        limits(env.account("zai/b").await),
    ];
    assert_eq!(restored, learned);
}

#[tokio::test]
async fn the_quota_monitor_steers_traffic_away_from_a_used_up_account() {
    let rest = format!(
        "quota_poll_secs = 10\n{}",
        two_accounts(
            r#"keys = ["fault-quota-used=100"]"#,
            r#"keys = ["fault-quota-used=35"]"#
        )
    );
    let (env, _) = start_file(MockOptions::default(), &rest).await;
    let mut polled = false;
    for _ in 0..100 {
        let a = env.account("zai/a").await;
        let b = env.account("zai/b").await;
        if a["quota"].is_object() && b["quota"].is_object() {
            assert_eq!(a["quota"]["used_percent"], 100.0);
            assert_eq!(b["quota"]["remaining_percent"], 65.0);
            assert!(a["quota"]["next_reset"].is_string(), "{a}");
            assert_eq!(a["state"], "benched");
            polled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(polled, "the monitor was polled at start");
    for _ in 0..6 {
        assert_eq!(env.openai(&openai_body(false)).await.status(), 200);
    }
    let rows = env.usage_rows(6).await;
    assert!(rows.iter().all(|r| r["upstream"] == "zai/b"), "{rows:?}");
}

#[tokio::test]
async fn overloads_and_broken_answers_fail_over_to_the_healthy_account() {
    for (fault, state) in [
        ("429-1305", "cooling_down"),
        ("500", "active"),
        ("empty-200", "active"),
        ("garbage-200", "active"),
    ] {
        let (env, _) = start_file(
            MockOptions::default(),
            &two_accounts(
                &format!(r#"keys = ["fault-{fault}"]"#),
                r#"keys = ["good"]"#,
            ),
        )
        .await;
        for _ in 0..5 {
            let resp = env.anthropic(&anthropic_body(true)).await;
            assert_eq!(resp.status(), 200, "{fault}");
            assert!(resp.text().await.expect("stream").contains("message_stop"));
        }
        let a = env.account("zai/a").await;
        assert_eq!(a["state"], state, "{fault}: {a}");
        assert!(a["keys"][0]["last_error"].is_string(), "{fault}: {a}");
        let rows = env.usage_rows(5).await;
        assert!(rows.iter().all(|r| r["upstream"] == "zai/b"), "{rows:?}");
        // A request that met the fault first took two upstream requests; the rows add up
        // to what the mock received.
        assert!(rows.iter().any(|r| r["attempts"] == 2), "{fault}: {rows:?}");
        let attempts: i64 = rows
            .iter()
            .map(|r| r["attempts"].as_i64().expect("n"))
            .sum();
        assert_eq!(
            Value::from(attempts),
            env.mock_stats().await["requests"],
            "{fault}: {rows:?}"
        );
    }
}

#[tokio::test]
async fn a_changed_config_file_is_picked_up_without_a_request() {
    let (env, path) = start_file(
        MockOptions::default(),
        &two_accounts(r#"keys = ["k1"]"#, r#"keys = ["k2"]"#),
    )
    .await;
    let text = std::fs::read_to_string(&path)
        .expect("config")
        .replace("watch_config = false", "watch_config = true");
    // Watching starts with the gateway; this gateway was started with it off, so start
    // another on the same file with it on.
    std::fs::write(&path, &text).expect("write");
    let settings = glmgate::config::load(Some(&path)).expect("config");
    let gateway = glmgate::app::spawn(settings).await.expect("starts");
    let url = format!("http://{}/admin/upstreams", gateway.addr);
    // Serving means the watcher has taken the file's first stamp.
    let resp = env
        .http
        .get(&url)
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), 200);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let added = text.replace(
        "name = \"b\"",
        "name = \"b\"\nmax_in_flight = 3\n[[providers.accounts]]\nname = \"c\"\nkeys = [\"k3\"]\n[[providers.accounts]]\nname = \"d\"",
    );
    std::fs::write(&path, added).expect("write");
    let mut seen = false;
    for _ in 0..100 {
        let snap: Value = env
            .http
            .get(&url)
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .expect("sent")
            .json()
            .await
            .expect("json");
        if snap.to_string().contains("zai/c") {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(seen, "the new account appeared within 10 s");
    gateway.stop().await.expect("stops");
}

#[tokio::test]
async fn a_full_account_queues_then_answers_429_with_retry_after() {
    let rest = format!(
        "[upstream.queue]\ntimeout_secs = 1\nmax_waiting = 1\n{}",
        two_accounts(
            "keys = [\"k1\"]\nmax_in_flight = 1",
            "keys = [\"k2\"]\nmax_in_flight = 1"
        )
    );
    let (env, _) = start_file(MockOptions::default(), &rest).await;
    let slow = with_fault(openai_body(false), "slow-first-byte=2500");
    let waiting_ok = with_fault(openai_body(false), "slow-first-byte=10");
    // Two slow requests fill both accounts; a third waits in the queue (room for one) and
    // gets a slot only if one frees within 1 s: none does, so 429. A fourth finds the queue
    // full and gets 429 at once.
    let (a, b, c, d) = tokio::join!(
        env.openai(&slow),
        env.openai(&slow),
        async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let t = std::time::Instant::now();
            (env.openai(&waiting_ok).await, t.elapsed())
        },
        async {
            tokio::time::sleep(Duration::from_millis(400)).await;
            let t = std::time::Instant::now();
            (env.openai(&waiting_ok).await, t.elapsed())
        },
    );
    assert_eq!(a.status(), 200);
    assert_eq!(b.status(), 200);
    let (queued, waited) = c;
    assert_eq!(queued.status(), 429);
    assert!(queued.headers().contains_key("retry-after"));
    assert!(waited >= Duration::from_millis(900), "{waited:?}");
    let body: Value = queued.json().await.expect("json");
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    let (full, _) = d;
    assert_eq!(full.status(), 429);
    let body: Value = full.json().await.expect("json");
    assert!(body["error"]["message"]
        .as_str()
        .expect("message")
        .contains("already waiting"));
    // Once the slow ones are done, capacity is back.
    assert_eq!(env.openai(&openai_body(false)).await.status(), 200);
}

#[tokio::test]
async fn claude_model_names_are_routed_to_glm_and_explained() {
    let rest = format!(
        "[routing]\naliases = [{{ from = \"gpt-4o*\", to = \"glm-4.5-air\" }}]\n{}",
        two_accounts("keys = [\"k1\"]\nmodels = [\"glm-4.7\"]", "keys = [\"k2\"]")
    );
    let (env, _) = start_file(MockOptions::default(), &rest).await;
    let mut body = anthropic_body(false);
    body["model"] = "claude-sonnet-4-6[1m]".into();
    let resp = env.anthropic(&body).await;
    assert_eq!(resp.status(), 200);
    let m: Value = resp.json().await.expect("json");
    assert_eq!(m["model"], "glm-4.7", "the upstream was asked for glm-4.7");
    let mut body = openai_body(false);
    body["model"] = "gpt-4o-mini".into();
    let c: Value = env.openai(&body).await.json().await.expect("json");
    assert_eq!(c["model"], "glm-4.5-air");
    let rows = env.usage_rows(2).await;
    assert_eq!(rows[0]["model"], "glm-4.7");
    assert_eq!(rows[1]["model"], "glm-4.5-air");

    let explain = env
        .admin("/admin/routing/explain?api=anthropic&model=claude-haiku-4-5")
        .await;
    assert_eq!(explain["model"], "glm-4.5-air");
    assert_eq!(explain["alias"], "claude-*haiku*");
    assert_eq!(explain["upstream_api"], "anthropic");
    let accounts = explain["upstreams"]["accounts"]
        .as_array()
        .expect("accounts");
    let a = accounts
        .iter()
        .find(|r| r["account"] == "zai/a")
        .expect("a");
    assert_eq!(a["eligible"], false);
    assert!(a["why"].as_str().expect("why").contains("plan"), "{a}");
    let b = accounts
        .iter()
        .find(|r| r["account"] == "zai/b")
        .expect("b");
    assert_eq!(b["eligible"], true, "{explain}");
    assert_eq!(explain["upstreams"]["would_pick"]["account"], "zai/b");
}

#[tokio::test]
async fn client_keys_can_be_limited_to_models_or_forced_onto_one() {
    let env = start(Opts::default()).await;
    let limited = key_with(
        &env,
        "limited",
        glmgate::auth::KeyModels {
            allowed: Some("glm-4.5*, glm-4.7".into()),
            ..Default::default()
        },
    )
    .await;
    let forced = key_with(
        &env,
        "forced",
        glmgate::auth::KeyModels {
            force: Some("glm-4.5-air".into()),
            ..Default::default()
        },
    )
    .await;
    let send = |key: &str, model: &str| {
        let mut body = openai_body(false);
        body["model"] = model.into();
        env.http
            .post(env.url("/v1/chat/completions"))
            .bearer_auth(key)
            .json(&body)
            .send()
    };
    assert_eq!(send(&limited, "glm-4.7").await.expect("sent").status(), 200);
    // Aliases apply first: claude-haiku → glm-4.5-air, which the pattern allows.
    assert_eq!(
        send(&limited, "claude-haiku-4-5")
            .await
            .expect("sent")
            .status(),
        200
    );
    let resp = send(&limited, "glm-5").await.expect("sent");
    assert_eq!(resp.status(), 403);
    let e: Value = resp.json().await.expect("json");
    assert_eq!(e["error"]["code"], "model_not_allowed");
    let mut body = anthropic_body(false);
    body["model"] = "glm-5".into();
    let resp = env
        .http
        .post(env.url("/v1/messages"))
        .header("x-api-key", &limited)
        .json(&body)
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), 403);
    let e: Value = resp.json().await.expect("json");
    assert_eq!(e["error"]["type"], "permission_error");

    let c: Value = send(&forced, "glm-5")
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    assert_eq!(c["model"], "glm-4.5-air");
    let rows = env.usage_rows(3).await;
    assert_eq!(rows[2]["model"], "glm-4.5-air");
}

#[tokio::test]
async fn a_model_no_account_can_serve_falls_back_to_the_next() {
    let rest = format!(
        "[routing]\nfallbacks = [{{ from = \"glm-5*\", to = [\"glm-4.7\"] }}]\n{}",
        two_accounts(
            "keys = [\"fault-429-1113@glm-5\"]",
            "keys = [\"k2\"]\nmodels = [\"glm-4.5-air\"]"
        )
    );
    let (env, _) = start_file(MockOptions::default(), &rest).await;
    let mut five = openai_body(false);
    five["model"] = "glm-5".into();
    for _ in 0..3 {
        let resp = env.openai(&five).await;
        assert_eq!(resp.status(), 200);
        let c: Value = resp.json().await.expect("json");
        assert_eq!(c["model"], "glm-4.7");
    }
    let rows = env.usage_rows(3).await;
    assert!(rows.iter().all(|r| r["model"] == "glm-4.7"), "{rows:?}");
    // One refused attempt for glm-5 (which benched it on a), then glm-4.7 each time.
    assert_eq!(env.mock_stats().await["requests"], 4);
    // Without a fallback the client is told the model is not served.
    let mut other = openai_body(false);
    other["model"] = "glm-4.6".into();
    let (env2, _) = start_file(
        MockOptions::default(),
        &two_accounts(
            "keys = [\"k1\"]\nmodels = [\"glm-4.7\"]",
            "keys = [\"k2\"]\nmodels = [\"glm-4.7\"]",
        ),
    )
    .await;
    let resp = env2.openai(&other).await;
    assert_eq!(resp.status(), 404);
    let e: Value = resp.json().await.expect("json");
    assert_eq!(e["error"]["code"], "model_not_found");
}

#[tokio::test]
async fn tiers_choose_models_from_what_a_request_holds() {
    let rest = format!(
        r#"
[[routing.tiers]]
model = "auto"
when = {{ tools = true }}
models = ["glm-4.7", "glm-4.6"]
[[routing.tiers]]
model = "auto"
models = ["glm-4.5-air"]
{}"#,
        two_accounts("keys = [\"k1\"]", "keys = [\"k2\"]")
    );
    let (env, _) = start_file(MockOptions::default(), &rest).await;
    let mut plain = openai_body(false);
    plain["model"] = "auto".into();
    let mut tools = plain.clone();
    tools["tools"] = serde_json::json!([{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]);
    let c: Value = env.openai(&plain).await.json().await.expect("json");
    assert_eq!(c["model"], "glm-4.5-air");
    let c: Value = env.openai(&tools).await.json().await.expect("json");
    assert_eq!(c["model"], "glm-4.7");
    // The explain endpoint takes a sample request.
    let explain: Value = env
        .http
        .post(env.url("/admin/routing/explain?api=openai"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&tools)
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    assert_eq!(explain["model"], "glm-4.7");
    assert_eq!(explain["alias"], "tier:auto");
    assert_eq!(explain["fallbacks"], serde_json::json!(["glm-4.6"]));
}
