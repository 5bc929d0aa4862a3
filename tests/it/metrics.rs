//! `GET /metrics`: the traffic series agree with what was sent and with the stored usage,
//! refusals are counted, the endpoint is guarded, and no secret shows.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::common::{
    anthropic_body, openai_body, start_tweaked, with_fault, ADMIN_TOKEN, UPSTREAM_KEY,
};

/// One sample of an exposition: name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').expect("a value");
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split("\",")
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once("=\"").expect("label");
                    (k.to_string(), v.trim_end_matches('"').to_string())
                })
                .collect();
            (name.to_string(), labels, value.parse().expect("number"))
        })
        .collect()
}

/// The sum of `name`'s samples whose labels include every pair of `want`.
fn sum(samples: &[Sample], name: &str, want: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|(n, labels, _)| {
            n == name
                && want
                    .iter()
                    .all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| *v)
        .sum()
}

fn with_admin(raw: &mut glmgate::config::RawConfig) {
    raw.admin.token = Some(ADMIN_TOKEN.into());
}

#[tokio::test]
async fn traffic_refusals_and_upstream_state_are_counted() {
    let env = start_tweaked(with_admin).await;
    for _ in 0..3 {
        assert_eq!(env.openai(&openai_body(false)).await.status(), 200);
    }
    let stream = env.anthropic(&anthropic_body(true)).await;
    assert_eq!(stream.status(), 200);
    stream.text().await.expect("whole stream");
    let upstream_error = env
        .openai(&with_fault(openai_body(false), "400-1211"))
        .await;
    assert_eq!(upstream_error.status(), 400);
    // Refused by the gateway itself: a wrong key, and a body that is not JSON.
    let bad_key = env
        .openai_as("gg-not-a-real-key", &openai_body(false))
        .await;
    assert_eq!(bad_key.status(), 401);
    let bad_json = env
        .http
        .post(env.url("/v1/messages"))
        .header("x-api-key", &env.key)
        .body("{not json")
        .send()
        .await
        .expect("sent");
    assert_eq!(bad_json.status(), 400);

    // The traffic series follow the usage writer's flushes (50 ms here).
    let mut samples = Vec::new();
    for _ in 0..200 {
        let resp = env.get_as("/metrics", Some(ADMIN_TOKEN)).await;
        assert_eq!(resp.status(), 200);
        assert!(resp.headers()["content-type"]
            .to_str()
            .expect("ascii")
            .starts_with("application/openmetrics-text"));
        let text = resp.text().await.expect("text");
        assert!(text.ends_with("# EOF\n"), "a complete exposition");
        assert!(!text.contains(UPSTREAM_KEY), "no upstream key");
        assert!(!text.contains(&env.key), "no client key");
        samples = parse(&text);
        if sum(&samples, "glmgate_requests_total", &[]) >= 5.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ok_openai = [
        ("api", "openai"),
        ("model", "glm-4.7"),
        ("stream", "false"),
        ("status", "200"),
        ("outcome", "ok"),
    ];
    assert_eq!(sum(&samples, "glmgate_requests_total", &ok_openai), 3.0);
    let ok_stream = [("api", "anthropic"), ("stream", "true"), ("outcome", "ok")];
    assert_eq!(sum(&samples, "glmgate_requests_total", &ok_stream), 1.0);
    let passed_on = [("status", "400"), ("outcome", "upstream_error")];
    assert_eq!(sum(&samples, "glmgate_requests_total", &passed_on), 1.0);
    assert_eq!(sum(&samples, "glmgate_requests_total", &[]), 5.0);

    let refused = |reason| sum(&samples, "glmgate_rejected_total", &[("reason", reason)]);
    assert_eq!(refused("invalid_api_key"), 1.0);
    assert_eq!(refused("invalid_request"), 1.0);
    assert_eq!(
        sum(
            &samples,
            "glmgate_rejected_total",
            &[("api", "anthropic"), ("reason", "invalid_request")]
        ),
        1.0
    );

    // Tokens agree with the stored usage.
    let stats = env.get_json("/stats", false).await;
    for kind in ["input", "output", "cached"] {
        let stored = stats[format!("{kind}_tokens")].as_f64().expect("stored");
        assert!(stored > 0.0, "{kind}: {stats}");
        assert_eq!(
            sum(&samples, "glmgate_tokens_total", &[("kind", kind)]),
            stored,
            "{kind} tokens"
        );
    }

    // Every request past the checks was timed; first bytes only for good answers.
    assert_eq!(
        sum(&samples, "glmgate_request_duration_seconds_count", &[]),
        5.0
    );
    assert_eq!(
        sum(&samples, "glmgate_time_to_first_byte_seconds_count", &[]),
        4.0
    );
    let le_inf = [("le", "+Inf"), ("api", "openai")];
    assert_eq!(
        sum(&samples, "glmgate_request_duration_seconds_bucket", &le_inf),
        4.0
    );

    // Upstream state, read at scrape time: the one key took the five attempts.
    assert_eq!(
        sum(&samples, "glmgate_upstream_key_requests_total", &[]),
        5.0
    );
    assert_eq!(
        sum(
            &samples,
            "glmgate_upstream_key_circuit",
            &[("state", "closed")]
        ),
        1.0
    );
    assert_eq!(sum(&samples, "glmgate_upstream_in_flight", &[]), 0.0);
    assert!(sum(&samples, "process_resident_memory_bytes", &[]) > 1e6);
    assert_eq!(sum(&samples, "glmgate_build_info", &[]), 1.0);
}

#[tokio::test]
async fn the_endpoint_needs_the_admin_token_unless_opened_and_can_be_turned_off() {
    let env = start_tweaked(with_admin).await;
    assert_eq!(env.get_as("/metrics", None).await.status(), 401);
    assert_eq!(env.get_as("/metrics", Some("wrong")).await.status(), 401);
    // A client key is not an admin token.
    let key = env.key.clone();
    assert_eq!(env.get_as("/metrics", Some(&key)).await.status(), 401);

    let open = start_tweaked(|raw| raw.metrics.require_admin_token = false).await;
    assert_eq!(open.get_as("/metrics", None).await.status(), 200);

    let off = start_tweaked(|raw| {
        with_admin(raw);
        raw.metrics.enabled = false;
    })
    .await;
    assert_eq!(
        off.get_as("/metrics", Some(ADMIN_TOKEN)).await.status(),
        404
    );
}
