//! The request pipeline for the model endpoints:
//! authenticate → read and validate → route → admit → forward → stream back → account.
//!
//! Accounting cannot be skipped: a [`Ledger`] is opened once the request is known and writes
//! its record when dropped, whether the response completed, the upstream failed, or the
//! client went away (dropping the response body also drops, and so cancels, the upstream
//! request).

use std::future::Future as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use futures_util::stream::{BoxStream, Stream, StreamExt};
use tokio::time::Sleep;

use crate::accounting::{Outcome, Recorder, UsageRecord};
use crate::app::AppState;
use crate::error::{ApiError, Dialect};
use crate::meter::{Meter, Usage};
use crate::request::{self, RequestHead};

/// Upstream response headers passed on to the client.
const PASSED_HEADERS: [&str; 7] = [
    "content-type",
    // Kept so a body is framed as the upstream framed it (hyper honours it on a streamed
    // body); a body cut short then ends the connection, as it would upstream.
    "content-length",
    "cache-control",
    "retry-after",
    "retry-after-ms",
    "x-should-retry",
    "request-id",
];

pub const REQUEST_ID_HEADER: &str = "x-request-id";

pub fn new_request_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// Entry point of `POST /v1/chat/completions` and `POST /v1/messages`.
pub async fn handle(state: Arc<AppState>, dialect: Dialect, req: Request) -> Response {
    let started = Instant::now();
    let request_id = new_request_id();
    let mut response = match run(&state, dialect, req, &request_id, started).await {
        Ok(response) => response,
        Err(e) => e.render(dialect, &request_id),
    };
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    response
}

async fn run(
    state: &AppState,
    dialect: Dialect,
    req: Request,
    request_id: &str,
    started: Instant,
) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let key = state.auth.authenticate(&parts.headers, &parts.uri).await?;
    let body = request::read_body(body, state.settings.max_body_bytes).await?;
    let head = request::parse_head(dialect, &body)?;
    let route = state.router.route(dialect, &head)?;
    // Admission (quotas, concurrency limits) slots in here.
    let mut ledger = Ledger {
        recorder: state.recorder.clone(),
        request_id: request_id.to_string(),
        key_id: key.id,
        dialect,
        head,
        started,
        request_bytes: body.len(),
        status: StatusCode::BAD_GATEWAY,
        outcome: None,
        ttfb_ms: None,
        meter: None,
    };
    let upstream = match state.upstream.send(route, &parts.headers, body).await {
        Ok(r) => r,
        Err(e) => return Err(ledger.fail(e)),
    };
    stream_back(
        upstream,
        ledger,
        state.upstream.first_byte_timeout,
        state.upstream.idle_timeout,
    )
    .await
}

/// Waits for the first body bytes (so an empty or garbage answer becomes a clean 502 before
/// any header is sent), then streams the rest through a [`MeteredBody`].
async fn stream_back(
    upstream: reqwest::Response,
    mut ledger: Ledger,
    first_byte_timeout: std::time::Duration,
    idle_timeout: std::time::Duration,
) -> Result<Response, ApiError> {
    let status = upstream.status();
    ledger.status = status;
    let mut headers = HeaderMap::new();
    for name in PASSED_HEADERS {
        if let Some(v) = upstream.headers().get(name) {
            headers.insert(HeaderName::from_static(name), v.clone());
        }
    }
    let is_sse = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.starts_with("text/event-stream"))
        .unwrap_or(false);
    let mut stream = upstream.bytes_stream().boxed();
    // One budget for the head and the first body bytes together.
    let left = first_byte_timeout.saturating_sub(ledger.started.elapsed());
    let first = match tokio::time::timeout(left, stream.next()).await {
        Err(_) => return Err(ledger.fail(ApiError::UpstreamTimeout(first_byte_timeout.as_secs()))),
        Ok(Some(Err(_))) => {
            return Err(ledger.fail(ApiError::UpstreamInvalid(
                "the connection closed before a response body arrived".into(),
            )))
        }
        Ok(None) if status.is_success() => {
            return Err(ledger.fail(ApiError::UpstreamInvalid("empty response body".into())))
        }
        Ok(None) => None,
        Ok(Some(Ok(chunk))) => {
            if status.is_success() && !plausible_start(&chunk, is_sse) {
                return Err(ledger.fail(ApiError::UpstreamInvalid(format!(
                    "expected {}, got something else",
                    if is_sse {
                        "an event stream"
                    } else {
                        "a JSON body"
                    }
                ))));
            }
            Some(chunk)
        }
    };
    ledger.ttfb_ms = Some(ledger.started.elapsed().as_millis() as u64);
    ledger.meter = Some(Meter::new(ledger.dialect, is_sse));
    if is_sse && !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    }
    let remaining = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let body = MeteredBody {
        remaining,
        first,
        inner: Some(stream),
        ledger,
        is_sse,
        idle_timeout,
        idle: Box::pin(tokio::time::sleep(idle_timeout)),
        last_chunk: tokio::time::Instant::now(),
        trailer: None,
    };
    let mut response = Response::new(Body::from_stream(body));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    Ok(response)
}

/// Does the first chunk of a 2xx body look like what its content type promises?
fn plausible_start(chunk: &[u8], is_sse: bool) -> bool {
    let Some(&b) = chunk.iter().find(|b| !b.is_ascii_whitespace()) else {
        return true; // whitespace only: let the meter judge the rest
    };
    if is_sse {
        // data:, event:, id:, retry:, or a `:` comment
        matches!(b, b'd' | b'e' | b'i' | b'r' | b':')
    } else {
        matches!(b, b'{' | b'[')
    }
}

/// Everything needed to account for one request; writes its record when dropped.
struct Ledger {
    recorder: Arc<Recorder>,
    request_id: String,
    key_id: i64,
    dialect: Dialect,
    head: RequestHead,
    started: Instant,
    request_bytes: usize,
    status: StatusCode,
    /// Set when the end is known; `None` at drop means the client went away.
    outcome: Option<Outcome>,
    ttfb_ms: Option<u64>,
    meter: Option<Meter>,
}

impl Ledger {
    fn fail(&mut self, e: ApiError) -> ApiError {
        self.status = e.status();
        self.outcome = Some(Outcome::UpstreamFailed);
        e
    }
}

impl Drop for Ledger {
    fn drop(&mut self) {
        let metered = self.meter.as_mut().map(Meter::finish).unwrap_or_default();
        let outcome = self.outcome.unwrap_or(Outcome::ClientCancelled);
        let (usage, estimated) = match metered.usage {
            Some(u) => (u, false),
            // No usage from the upstream: estimate from what passed (about 4 bytes a token
            // of prompt; one token per streamed event), and say it is an estimate.
            None if self.ttfb_ms.is_some() && self.status.is_success() => (
                Usage {
                    input_tokens: (self.request_bytes as u64).div_ceil(4),
                    output_tokens: metered.events,
                    ..Usage::default()
                },
                true,
            ),
            None => (Usage::default(), false),
        };
        let latency_ms = self.started.elapsed().as_millis() as u64;
        tracing::info!(
            request_id = %self.request_id,
            key_id = self.key_id,
            api = self.dialect.as_str(),
            model = %self.head.model,
            stream = self.head.stream,
            status = self.status.as_u16(),
            outcome = outcome.as_str(),
            input_tokens = usage.input_tokens,
            output_tokens = usage.output_tokens,
            cached_tokens = usage.cached_tokens,
            estimated,
            ttfb_ms = self.ttfb_ms,
            latency_ms,
            "request"
        );
        self.recorder.record(UsageRecord {
            ts_ms: chrono::Utc::now().timestamp_millis(),
            request_id: std::mem::take(&mut self.request_id),
            key_id: self.key_id,
            api: self.dialect.as_str(),
            model: std::mem::take(&mut self.head.model),
            stream: self.head.stream,
            status: self.status.as_u16(),
            outcome,
            usage,
            estimated,
            latency_ms,
            ttfb_ms: self.ttfb_ms,
        });
    }
}

/// The response body: upstream bytes forwarded as they arrive, each one shown to the meter.
struct MeteredBody {
    /// Bytes still due when the upstream declared a length: hyper stops polling once it
    /// has sent that many, so reaching zero is how a complete body is recognised.
    remaining: Option<u64>,
    first: Option<Bytes>,
    /// `None` once the upstream has ended or failed.
    inner: Option<BoxStream<'static, reqwest::Result<Bytes>>>,
    ledger: Ledger,
    is_sse: bool,
    idle_timeout: std::time::Duration,
    idle: Pin<Box<Sleep>>,
    last_chunk: tokio::time::Instant,
    /// A last event to send after an upstream failure mid-stream.
    trailer: Option<Bytes>,
}

impl MeteredBody {
    fn pass(&mut self, chunk: Bytes) -> Poll<Option<Result<Bytes, std::io::Error>>> {
        if let Some(meter) = self.ledger.meter.as_mut() {
            meter.feed(&chunk);
        }
        if let Some(left) = self.remaining.as_mut() {
            *left = left.saturating_sub(chunk.len() as u64);
            if *left == 0 {
                self.finished();
            }
        }
        Poll::Ready(Some(Ok(chunk)))
    }

    fn finished(&mut self) {
        self.ledger.outcome = Some(if self.ledger.status.is_success() {
            Outcome::Ok
        } else {
            Outcome::UpstreamError
        });
    }

    /// The upstream broke off: end an event stream with an error event in the client's
    /// format; a JSON body can only be cut, so the client sees a truncated response.
    fn cut(&mut self, why: &str) -> Poll<Option<Result<Bytes, std::io::Error>>> {
        self.inner = None;
        self.ledger.outcome = Some(Outcome::UpstreamCut);
        tracing::warn!(request_id = %self.ledger.request_id, why, "upstream stream cut");
        if !self.is_sse {
            return Poll::Ready(Some(Err(std::io::Error::other(why.to_string()))));
        }
        let message = format!("upstream stream interrupted: {why}");
        let event = match self.ledger.dialect {
            Dialect::OpenAi => format!(
                "data: {}\n\n",
                serde_json::json!({"error": {"message": message, "type": "server_error", "param": null, "code": "upstream_interrupted"}})
            ),
            Dialect::Anthropic => format!(
                "event: error\ndata: {}\n\n",
                serde_json::json!({"type": "error", "error": {"type": "api_error", "message": message}})
            ),
        };
        self.trailer = Some(Bytes::from(event));
        self.poll_trailer()
    }

    fn poll_trailer(&mut self) -> Poll<Option<Result<Bytes, std::io::Error>>> {
        Poll::Ready(self.trailer.take().map(Ok))
    }
}

impl Stream for MeteredBody {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(first) = this.first.take() {
            return this.pass(first);
        }
        let Some(inner) = this.inner.as_mut() else {
            return this.poll_trailer();
        };
        match inner.poll_next_unpin(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                this.last_chunk = tokio::time::Instant::now();
                this.pass(chunk)
            }
            Poll::Ready(Some(Err(e))) => this.cut(if e.is_timeout() {
                "timed out"
            } else {
                "connection lost"
            }),
            Poll::Ready(None) => {
                this.inner = None;
                this.finished();
                Poll::Ready(None)
            }
            // The idle timer is not reset per chunk (that touches the timer wheel each
            // time); when it fires, it is re-armed from the last chunk's time.
            Poll::Pending => loop {
                match this.idle.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(()) => {
                        let deadline = this.last_chunk + this.idle_timeout;
                        if deadline <= tokio::time::Instant::now() {
                            let why = format!("no data for {} s", this.idle_timeout.as_secs());
                            return this.cut(&why);
                        }
                        this.idle.as_mut().reset(deadline);
                    }
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::plausible_start;

    #[test]
    fn first_bytes_are_checked_for_shape() {
        assert!(plausible_start(b"data: {}", true));
        assert!(plausible_start(b"event: message_start", true));
        assert!(plausible_start(b"  {\"id\":1}", false));
        assert!(!plausible_start(b"<html>", false));
        assert!(!plausible_start(b"{\"x\":1}", true));
        assert!(plausible_start(b"   ", false));
    }
}
