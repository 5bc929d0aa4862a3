//! Optional polling of Z.AI's plan quota monitor (`GET /api/monitor/usage/quota/limit` on
//! the provider's host), so the scheduler prefers accounts with quota left, skips one that
//! is used up until its reset, and `/admin/upstreams` shows both.
//!
//! The endpoint is not in Z.AI's API reference (it is what Z.AI's own usage plugin calls),
//! so its answer is read tolerantly: a list of limits under `data.limits` (or `limits`),
//! each with a used `percentage` and a `nextResetTime` (epoch milliseconds or a date). The
//! token limit is preferred; otherwise the most used one counts.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, Method, Uri};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde_json::Value;

use super::client::{Endpoint, HttpClient};
use super::pool::{Provider, QuotaReading};
use super::Upstream;

pub const QUOTA_PATH: &str = "/api/monitor/usage/quota/limit";

/// Polls every account now and then every `interval` (the current pool's setting; polling
/// stops while it is off).
pub fn spawn(upstream: Arc<Upstream>) {
    tokio::spawn(async move {
        loop {
            let interval = upstream.pool().policy.quota_poll;
            if interval.is_some() {
                poll_once(&upstream).await;
            }
            tokio::time::sleep(interval.unwrap_or(Duration::from_secs(30))).await;
        }
    });
}

async fn poll_once(upstream: &Upstream) {
    let pool = upstream.pool();
    for (account, provider, key) in pool.quota_targets() {
        let Some(uri) = monitor_uri(&provider) else {
            continue;
        };
        let mut req = HttpClient::request(Method::GET, &uri, Bytes::new());
        req.headers_mut()
            .insert(header::AUTHORIZATION, key.bearer());
        let body = match upstream.client().fetch(req, Duration::from_secs(10)).await {
            Ok((status, body)) if status.is_success() => Some(body),
            Ok((status, _)) => {
                tracing::debug!(%account, status = status.as_u16(), "quota monitor refused");
                None
            }
            Err(error) => {
                tracing::debug!(%account, %error, "quota monitor unreachable");
                None
            }
        };
        if let Some(reading) = body.as_deref().and_then(parse) {
            pool.set_quota(&account, reading);
        }
    }
}

/// The monitor on the host of the provider's OpenAI (else Anthropic) endpoint.
fn monitor_uri(p: &Provider) -> Option<Endpoint> {
    let base = p.openai.as_ref().or(p.anthropic.as_ref())?.uri();
    Uri::builder()
        .scheme(base.scheme()?.clone())
        .authority(base.authority()?.clone())
        .path_and_query(QUOTA_PATH)
        .build()
        .ok()
        .and_then(Endpoint::new)
}

/// Reads the monitor's answer; `None` when it has no usable limit.
pub fn parse(body: &[u8]) -> Option<QuotaReading> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let limits = v
        .pointer("/data/limits")
        .or_else(|| v.get("limits"))?
        .as_array()?;
    let mut best: Option<(bool, f64, Option<DateTime<Utc>>)> = None;
    for l in limits {
        let Some(used) = l.get("percentage").and_then(Value::as_f64) else {
            continue;
        };
        let is_tokens = l
            .get("type")
            .and_then(Value::as_str)
            .is_some_and(|t| t.to_ascii_uppercase().contains("TOKEN"));
        let reset = l.get("nextResetTime").and_then(|t| match t {
            Value::Number(n) => n.as_i64().and_then(DateTime::from_timestamp_millis),
            Value::String(s) => DateTime::parse_from_rfc3339(s)
                .ok()
                .map(|t| t.with_timezone(&Utc)),
            _ => None,
        });
        let better = match best {
            None => true,
            Some((b_tokens, b_used, _)) => (is_tokens, used) > (b_tokens, b_used),
        };
        if better {
            best = Some((is_tokens, used, reset));
        }
    }
    let (_, used, reset) = best?;
    Some(QuotaReading {
        used_percent: used.clamp(0.0, 100.0),
        next_reset: reset,
        checked: Utc::now(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_token_limit_tolerantly() {
        let r = parse(
            br#"{"code":200,"success":true,"data":{"limits":[
                {"type":"TIME_LIMIT","percentage":90,"nextResetTime":1800000000000},
                {"type":"TOKENS_LIMIT","percentage":42.5,"nextResetTime":1790000000000}]}}"#,
        )
        .expect("reading");
        assert_eq!(r.used_percent, 42.5);
        assert_eq!(
            r.next_reset.map(|t| t.timestamp_millis()),
            Some(1_790_000_000_000)
        );
        let r = parse(br#"{"limits":[{"percentage":120,"nextResetTime":"2030-01-01T00:00:00Z"}]}"#)
            .expect("reading");
        assert_eq!(r.used_percent, 100.0);
        assert!(parse(br#"{"data":{}}"#).is_none());
        assert!(parse(b"<html>").is_none());
    }
}
