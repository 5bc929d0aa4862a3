//! What an upstream failure means for scheduling: its class, Z.AI business code, and when
//! the upstream said to come back.
//!
//! Z.AI answers 429 for very different reasons, told apart only by the business code in the
//! body; the code (when known) therefore wins over the HTTP status. Which code belongs to
//! which class is configuration (`[upstream.classes]`), since the codes are not fully
//! documented.

use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use chrono::{DateTime, NaiveDateTime, Utc};
use memchr::memmem::Finder;

use crate::config::RawClasses;

/// How a failure is handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// Too many requests in flight on the account (1302): lower its adaptive limit, retry.
    Concurrency,
    /// The upstream is overloaded or rate limiting (1305, 1312, a 429 without a known code):
    /// cool the account down, retry elsewhere.
    Overload,
    /// The account's 5-hour / weekly quota is gone (1308, 1310): bench it until the reset.
    Quota,
    /// The model is not in the account's plan, or no balance (1113, 1311): bench that model
    /// on that account.
    Plan,
    /// The key is rejected (401/403, 1000–1004): disable the key.
    Key,
    /// 5xx, 529, connection errors, empty or garbage answers: retry on another key.
    Server,
    /// The request itself is wrong (400, 1211, …): return it at once.
    Client,
}

impl Class {
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Concurrency => "concurrency",
            Class::Overload => "overload",
            Class::Quota => "quota",
            Class::Plan => "plan",
            Class::Key => "key",
            Class::Server => "server",
            Class::Client => "client",
        }
    }

    /// Whether another attempt (on another account or key) can help.
    pub fn retryable(self) -> bool {
        !matches!(self, Class::Client)
    }

    /// The status a client sees when this failure is the final answer.
    pub fn client_status(self) -> StatusCode {
        match self {
            Class::Concurrency | Class::Overload | Class::Quota | Class::Plan => {
                StatusCode::TOO_MANY_REQUESTS
            }
            Class::Key => StatusCode::SERVICE_UNAVAILABLE,
            Class::Server => StatusCode::BAD_GATEWAY,
            Class::Client => StatusCode::BAD_REQUEST,
        }
    }
}

/// One classified upstream failure.
#[derive(Clone, Debug)]
pub struct Failure {
    pub class: Class,
    pub status: u16,
    pub code: Option<u32>,
    /// When a quota comes back, from the message ("will reset at …", UTC+8).
    pub reset_at: Option<DateTime<Utc>>,
    /// From `retry-after-ms` or `retry-after`.
    pub retry_after: Option<Duration>,
}

impl Failure {
    /// A failure with no HTTP answer (connect error, cut connection, empty or garbage body).
    pub fn transport() -> Failure {
        Failure {
            class: Class::Server,
            status: 0,
            code: None,
            reset_at: None,
            retry_after: None,
        }
    }

    /// A short description for logs and `/admin/upstreams` (never a key).
    pub fn describe(&self) -> String {
        match (self.status, self.code) {
            (0, _) => format!("{} (no HTTP answer)", self.class.as_str()),
            (s, Some(c)) => format!("{} (HTTP {s}, code {c})", self.class.as_str()),
            (s, None) => format!("{} (HTTP {s})", self.class.as_str()),
        }
    }
}

/// Maps business codes and statuses to classes.
#[derive(Clone, Debug)]
pub struct Classifier {
    codes: HashMap<u32, Class>,
}

impl Classifier {
    pub fn new(c: &RawClasses) -> Classifier {
        let mut codes = HashMap::new();
        for (list, class) in [
            (&c.client, Class::Client),
            (&c.key, Class::Key),
            (&c.plan, Class::Plan),
            (&c.quota, Class::Quota),
            (&c.overload, Class::Overload),
            (&c.concurrency, Class::Concurrency),
        ] {
            for code in list {
                codes.insert(*code, class);
            }
        }
        Classifier { codes }
    }

    /// Classifies an error answer (`status` may be 2xx when the body carries an error).
    pub fn classify(&self, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Failure {
        let (code, message) = business_code(body);
        let by_code = code.and_then(|c| self.codes.get(&c).copied());
        let class = by_code.unwrap_or(match status.as_u16() {
            401 | 403 => Class::Key,
            429 => Class::Overload,
            408 | 500..=599 => Class::Server,
            400..=499 => Class::Client,
            _ => Class::Server,
        });
        Failure {
            class,
            status: status.as_u16(),
            code,
            reset_at: message.as_deref().and_then(reset_time),
            retry_after: retry_after(headers),
        }
    }

    /// Whether a 2xx JSON body (or the first SSE event) is in fact an error answer
    /// (Z.AI has sent code 1305 with HTTP 200). Cheap on the success path: a body is parsed
    /// only when it has none of the keys every successful answer has.
    pub fn error_in_success(&self, chunk: &[u8], is_sse: bool) -> Option<Failure> {
        let json = if is_sse {
            let start = chunk.iter().position(|b| !b.is_ascii_whitespace())?;
            let rest = chunk.get(start..)?;
            if rest.starts_with(b"event: error") || rest.starts_with(b"event:error") {
                let at = memchr::memmem::find(rest, b"data:")?;
                trim_data(rest.get(at + 5..)?)
            } else if let Some(data) = rest.strip_prefix(b"data:") {
                let data = trim_data(data);
                if !data.starts_with(b"{\"error\"") {
                    return None;
                }
                data
            } else {
                return None;
            }
        } else {
            static CHOICES: LazyLock<Finder> = LazyLock::new(|| Finder::new(b"\"choices\""));
            static CONTENT: LazyLock<Finder> = LazyLock::new(|| Finder::new(b"\"content\""));
            if CHOICES.find(chunk).is_some() || CONTENT.find(chunk).is_some() {
                return None;
            }
            chunk
        };
        let v: serde_json::Value = serde_json::from_slice(json).ok()?;
        let obj = v.as_object()?;
        let is_error = obj.contains_key("error")
            || (obj.contains_key("code")
                && !obj.contains_key("choices")
                && !obj.contains_key("content"));
        if !is_error {
            return None;
        }
        let mut f = self.classify(StatusCode::OK, &HeaderMap::new(), json);
        if f.code.is_none() {
            f.class = Class::Server;
        }
        Some(f)
    }
}

/// The JSON of one `data:` line: leading spaces off, up to the end of the line.
fn trim_data(data: &[u8]) -> &[u8] {
    let start = data.iter().position(|b| *b != b' ').unwrap_or(data.len());
    let data = data.get(start..).unwrap_or_default();
    let end = memchr::memchr(b'\n', data).unwrap_or(data.len());
    data.get(..end).unwrap_or_default().trim_ascii_end()
}

/// The Z.AI business code and message of an error body, in any of its shapes:
/// `{"error":{"code":"1214","message":…}}`, `{"code":1305,"msg":…}`, or Anthropic's
/// `{"type":"error","error":{"type":…,"code":"1308","message":"[1308][…]"}}`.
pub fn business_code(body: &[u8]) -> (Option<u32>, Option<String>) {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return (None, None);
    };
    let node = match v.get("error") {
        Some(e) if e.is_object() => e,
        _ => &v,
    };
    let message = ["message", "msg"]
        .iter()
        .find_map(|k| node.get(*k).and_then(|m| m.as_str()))
        .map(str::to_string);
    let code = node
        .get("code")
        .and_then(|c| match c {
            serde_json::Value::Number(n) => n.as_u64(),
            serde_json::Value::String(s) => s.trim().parse().ok(),
            _ => None,
        })
        .and_then(|c| u32::try_from(c).ok())
        .or_else(|| {
            // "[1308][Usage limit reached …]"
            let m = message.as_deref()?.strip_prefix('[')?;
            m.split(']').next()?.parse().ok()
        });
    (code, message)
}

/// "… will reset at 2026-09-12 00:35:41 …": Z.AI gives Beijing time (UTC+8) with no zone.
pub fn reset_time(message: &str) -> Option<DateTime<Utc>> {
    let at = message.find("reset at ")? + "reset at ".len();
    let text = message.get(at..at + 19)?;
    let local = NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S").ok()?;
    Some(local.and_utc() - chrono::Duration::hours(8))
}

/// `retry-after-ms` (Anthropic style) or `retry-after` in seconds.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(ms) = get("retry-after-ms").and_then(|v| v.trim().parse::<f64>().ok()) {
        return (ms.is_finite() && ms >= 0.0).then(|| Duration::from_millis(ms as u64));
    }
    get("retry-after")
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn classifier() -> Classifier {
        Classifier::new(&RawClasses::default())
    }

    #[test]
    fn codes_win_over_statuses() {
        let c = classifier();
        let h = HeaderMap::new();
        let f = c.classify(
            StatusCode::TOO_MANY_REQUESTS,
            &h,
            br#"{"error":{"code":"1302","message":"High concurrency"}}"#,
        );
        assert_eq!((f.class, f.code), (Class::Concurrency, Some(1302)));
        let f = c.classify(
            StatusCode::TOO_MANY_REQUESTS,
            &h,
            br#"{"code":1113,"msg":"no balance"}"#,
        );
        assert_eq!(f.class, Class::Plan);
        let f = c.classify(StatusCode::BAD_REQUEST, &h, br#"{"error":{"code":"1211"}}"#);
        assert_eq!(f.class, Class::Client);
        let f = c.classify(
            StatusCode::from_u16(529).expect("529"),
            &h,
            br#"{"type":"error","error":{"type":"overloaded_error","message":"[1305][busy]"}}"#,
        );
        assert_eq!((f.class, f.code), (Class::Overload, Some(1305)));
    }

    #[test]
    fn statuses_decide_without_a_known_code() {
        let c = classifier();
        let h = HeaderMap::new();
        assert_eq!(
            c.classify(StatusCode::UNAUTHORIZED, &h, b"").class,
            Class::Key
        );
        assert_eq!(
            c.classify(StatusCode::FORBIDDEN, &h, b"{}").class,
            Class::Key
        );
        assert_eq!(
            c.classify(StatusCode::INTERNAL_SERVER_ERROR, &h, b"oops")
                .class,
            Class::Server
        );
        assert_eq!(
            c.classify(StatusCode::TOO_MANY_REQUESTS, &h, b"").class,
            Class::Overload
        );
        assert_eq!(
            c.classify(StatusCode::UNPROCESSABLE_ENTITY, &h, b"").class,
            Class::Client
        );
        assert!(!Class::Client.retryable());
    }

    #[test]
    fn quota_reset_is_read_as_utc_plus_8() {
        let c = classifier();
        let mut h = HeaderMap::new();
        h.insert("retry-after-ms", HeaderValue::from_static("1500"));
        let f = c.classify(
            StatusCode::TOO_MANY_REQUESTS,
            &h,
            br#"{"type":"error","error":{"type":"rate_limit_error","code":"1308","message":"[1308][Usage limit reached for 5 hour. Your limit will reset at 2026-09-12 00:35:41][abc]"}}"#,
        );
        assert_eq!(f.class, Class::Quota);
        assert_eq!(
            f.reset_at.map(|t| t.to_rfc3339()),
            Some("2026-09-11T16:35:41+00:00".into())
        );
        assert_eq!(f.retry_after, Some(Duration::from_millis(1500)));
    }

    #[test]
    fn configured_classes_override_defaults() {
        let mut raw = RawClasses::default();
        raw.client.retain(|c| *c != 1211);
        raw.plan.push(1211);
        let c = Classifier::new(&raw);
        let f = c.classify(
            StatusCode::BAD_REQUEST,
            &HeaderMap::new(),
            br#"{"code":1211}"#,
        );
        assert_eq!(f.class, Class::Plan);
    }

    #[test]
    fn errors_hidden_in_a_200_are_found() {
        let c = classifier();
        let f = c
            .error_in_success(br#"{"code":1305,"msg":"overloaded"}"#, false)
            .expect("error body");
        assert_eq!(f.class, Class::Overload);
        assert!(c
            .error_in_success(br#"{"id":"x","choices":[]}"#, false)
            .is_none());
        let f = c
            .error_in_success(b"data: {\"error\":{\"code\":\"1302\"}}\n\n", true)
            .expect("sse error");
        assert_eq!(f.class, Class::Concurrency);
        assert!(c.error_in_success(b"data: {\"id\":1}\n\n", true).is_none());
        let f = c
            .error_in_success(
                b"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"[1305][busy]\"}}\n\n",
                true,
            )
            .expect("anthropic error event");
        assert_eq!(f.class, Class::Overload);
        assert!(c
            .error_in_success(br#"{"content":[],"id":"m","code":1}"#, false)
            .is_none());
    }
}
