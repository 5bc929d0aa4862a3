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
use futures_util::stream::{Stream, StreamExt};
use tokio::time::Sleep;

use crate::accounting::{Outcome, Recorder, UsageRecord};
use crate::app::AppState;
use crate::auth::Lookup;
use crate::config::Policy;
use crate::error::{ApiError, Dialect};
use crate::meter::{Meter, Usage};
use crate::request::{self, RequestHead};
use crate::route;
use crate::translate::reasoning::{self, ReasoningFilter, ReasoningMode};
use crate::translate::{ResponseTranslator, Translation};
use crate::upstream::classify::Class;
use crate::upstream::client::BodyError;
use crate::upstream::pool::Permit;
use crate::upstream::{BodyStream, Forwarded, Opened};

/// Upstream response headers passed on to the client.
const PASSED_HEADERS: [HeaderName; 7] = [
    header::CONTENT_TYPE,
    // Kept so a body is framed as the upstream framed it (hyper honours it on a streamed
    // body); a body cut short then ends the connection, as it would upstream.
    header::CONTENT_LENGTH,
    header::CACHE_CONTROL,
    header::RETRY_AFTER,
    HeaderName::from_static("retry-after-ms"),
    HeaderName::from_static("x-should-retry"),
    HeaderName::from_static("request-id"),
];

pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// 16 lowercase hex digits of a random 64-bit number. Written by `hex` rather than
/// `format!("{:016x}")`, whose formatting machinery cost 500 instructions a request.
pub fn new_request_id() -> String {
    hex::encode(rand::random::<u64>().to_be_bytes())
}

/// Entry point of `POST /v1/chat/completions` and `POST /v1/messages`.
///
/// Not an `async fn`: the request is taken apart into an [`Entry`] before anything is
/// awaited, so the future holds that, not the request. The future lives as long as the
/// upstream's first bytes are awaited, and with thousands of requests in that state each
/// byte of it counts (an `async fn` would keep room for the 240-byte request throughout).
pub fn handle(
    state: Arc<AppState>,
    dialect: Dialect,
    req: Request,
) -> impl std::future::Future<Output = Response> + Send {
    let started = Instant::now();
    let entry = Entry::of(&state, dialect, req);
    async move {
        let request_id = new_request_id();
        let mut response = match run(&state, dialect, entry, &request_id, started).await {
            Ok(response) => response,
            Err(e) => e.render(dialect, &request_id),
        };
        if let Ok(v) = HeaderValue::from_str(&request_id) {
            response.headers_mut().insert(REQUEST_ID_HEADER, v);
        }
        response
    }
}

/// What the pipeline keeps of the client's request: the key's look-up, the few headers sent
/// on, and the body. The head itself is let go at once: its values are slices of the
/// connection's read buffer, and holding them while the answer is awaited would keep that
/// buffer alive and make the connection allocate another (8 KB per request in flight).
/// A key refused here is kept as the error, so that `run` counts and renders it as it does
/// every other refusal.
struct Entry {
    key: Result<Lookup, ApiError>,
    forwarded: Forwarded,
    body: Body,
}

impl Entry {
    fn of(state: &AppState, dialect: Dialect, req: Request) -> Entry {
        let (parts, body) = req.into_parts();
        Entry {
            key: state.auth.look_up(&parts.headers, &parts.uri),
            forwarded: Forwarded::of(dialect, &parts.headers),
            body,
        }
    }
}

async fn run(
    state: &AppState,
    dialect: Dialect,
    entry: Entry,
    request_id: &str,
    started: Instant,
) -> Result<Response, ApiError> {
    let mut a = match admit(state, dialect, entry).await {
        Ok(a) => a,
        Err(e) => {
            if let Some(m) = &state.metrics {
                m.rejected(dialect, &e);
            }
            return Err(e);
        }
    };
    // Client-key quotas slot in here; upstream admission happens in `upstream.send`.
    let mut ledger = Ledger {
        recorder: state.recorder.clone(),
        request_id: request_id.to_string(),
        key_id: a.key.id,
        dialect,
        head: a.head,
        started,
        request_bytes: a.request_bytes,
        meter_dialect: a.route.dialect,
        status: StatusCode::BAD_GATEWAY,
        outcome: None,
        ttfb_us: None,
        meter: None,
        account: None,
        attempts: 0,
    };
    let mut opened =
        match send_with_fallbacks(state, &a.route, &a.forwarded, a.body, &mut ledger).await {
            Ok(o) => o,
            Err(e) => return Err(ledger.fail(e)),
        };
    let reasoning = a
        .key
        .reasoning
        .as_deref()
        .and_then(ReasoningMode::parse)
        .unwrap_or(state.router.reasoning());
    let policy = &a.pool.policy;
    if let Err(e) = rewrite_whole(
        &mut opened,
        &mut a.translation,
        reasoning,
        &mut ledger,
        policy.idle_timeout,
    )
    .await
    {
        return Err(ledger.fail(e));
    }
    Ok(stream_back(
        opened,
        ledger,
        policy,
        a.translation,
        reasoning,
    ))
}

/// A request that passed the gateway's own checks, ready to go upstream.
struct Admitted {
    key: Arc<crate::store::KeyRow>,
    forwarded: Forwarded,
    head: RequestHead,
    route: route::Route,
    pool: Arc<crate::upstream::pool::Pool>,
    /// In the upstream's format, with the routed model.
    body: bytes::Bytes,
    /// The size of the client's body.
    request_bytes: usize,
    translation: Option<Translation>,
}

/// Authenticates, reads and validates the body, routes it and puts it in the upstream's
/// format. Nothing has gone upstream when this fails.
async fn admit(state: &AppState, dialect: Dialect, entry: Entry) -> Result<Admitted, ApiError> {
    let Entry {
        key,
        forwarded,
        body,
    } = entry;
    let key = state.auth.resolve(key?).await?;
    let body = request::read_body(body, &state.settings).await?;
    let mut head = request::parse_head(dialect, &body)?;
    let pool = state.upstream.pool();
    let route = state
        .router
        .route(&pool, dialect, &head, Some(&key), Some(&body))?;
    let request_bytes = body.len();
    let body = if route.model != head.model {
        head.model = route.model.clone();
        request::replace_model(&body, head.model_span.clone(), &route.model)?
    } else {
        body
    };
    let (body, translation) = match route.translate {
        None => (body, None),
        Some(direction) => {
            let (body, t) = Translation::request(direction, &body)?;
            (body, Some(t))
        }
    };
    Ok(Admitted {
        key,
        forwarded,
        head,
        route,
        pool,
        body,
        request_bytes,
        translation,
    })
}

/// Sends upstream; when no account can serve the model (plan or quota), tries the route's
/// fallback models in turn, and records in the ledger the model that answered.
async fn send_with_fallbacks(
    state: &AppState,
    route: &route::Route,
    forwarded: &Forwarded,
    mut body: Bytes,
    ledger: &mut Ledger,
) -> Result<Opened, ApiError> {
    let mut next = route.fallbacks.iter();
    loop {
        let result = state
            .upstream
            .send(
                route.dialect,
                &ledger.head.model,
                forwarded,
                body.clone(),
                &mut ledger.attempts,
            )
            .await;
        let unservable = match &result {
            Err(ApiError::QuotaExhausted { .. } | ApiError::ModelUnavailable(_)) => true,
            Ok(o) => matches!(o.failure, Some(Class::Plan | Class::Quota)),
            Err(_) => false,
        };
        match next.next() {
            Some(model) if unservable => {
                tracing::info!(request_id = %ledger.request_id, from = %ledger.head.model, to = %model, "model unavailable; falling back");
                body = request::set_model(&body, model)?;
                ledger.head.model = model.clone();
            }
            _ => return result,
        }
    }
}

/// Whole answers that the client gets in another shape (a translated error or non-stream
/// answer, or reasoning rewritten) are read and rewritten before the status goes out, so
/// an answer that cannot be translated is still a clean 502 in the client's format. The
/// meter then reads the rewritten, client-format body.
async fn rewrite_whole(
    opened: &mut Opened,
    translation: &mut Option<Translation>,
    reasoning: ReasoningMode,
    ledger: &mut Ledger,
    idle: std::time::Duration,
) -> Result<(), ApiError> {
    let success = opened.status.is_success();
    let wanted = if success {
        !opened.is_sse && (translation.is_some() || reasoning != ReasoningMode::Passthrough)
    } else {
        translation.is_some()
    };
    if !wanted {
        return Ok(());
    }
    let mut body = opened.read_whole(idle).await?;
    if let Some(t) = translation.take() {
        body = if success {
            t.response(&body).ok_or_else(|| {
                ApiError::UpstreamInvalid("the answer could not be translated".into())
            })?
        } else {
            Bytes::from(t.error(opened.status.as_u16(), &body, &ledger.request_id))
        };
    }
    if success && reasoning != ReasoningMode::Passthrough {
        if let Some(b) = reasoning::rewrite_whole(reasoning, ledger.dialect, &body) {
            body = b;
        }
    }
    opened.set_json_body(body);
    ledger.meter_dialect = ledger.dialect;
    Ok(())
}

/// Streams the upstream answer back through a [`MeteredBody`], translated into the
/// client's format when `translation` is set.
fn stream_back(
    mut opened: Opened,
    mut ledger: Ledger,
    policy: &Policy,
    translation: Option<Translation>,
    reasoning: ReasoningMode,
) -> Response {
    let status = opened.status;
    ledger.status = status;
    ledger.account = opened.account.take();
    let mut headers = HeaderMap::new();
    // One pass over the upstream's few headers, not a hashed lookup per allowed name.
    for (name, v) in &opened.headers {
        if PASSED_HEADERS.contains(name) && !headers.contains_key(name) {
            headers.insert(name.clone(), v.clone());
        }
    }
    let is_sse = opened.is_sse;
    ledger.ttfb_us = Some(ledger.started.elapsed().as_micros() as u64);
    ledger.meter = Some(Meter::new(ledger.meter_dialect, is_sse));
    if is_sse && !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    }
    // Counted against the upstream's own length (for a rewritten stream it is not sent).
    let mut remaining = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    // Streams are rewritten event by event as they pass (whole answers were rewritten
    // before: see `rewrite_whole`).
    let mut translator: Option<Box<dyn ResponseTranslator>> = None;
    if is_sse && status.is_success() {
        translator = translation.map(Translation::stream_translator);
        if reasoning != ReasoningMode::Passthrough {
            translator = Some(Box::new(ReasoningFilter::new(
                reasoning,
                ledger.dialect,
                translator.take(),
            )));
        }
        if translator.is_some() {
            // The client gets a body of another length, framed by chunks.
            headers.remove(header::CONTENT_LENGTH);
            remaining = None;
        }
    }
    let now = tokio::time::Instant::now();
    let total_deadline = tokio::time::Instant::from_std(ledger.started) + policy.total_timeout;
    let mut body = MeteredBody {
        remaining,
        first: opened.first.take(),
        inner: opened.rest.take(),
        permit: opened.permit.take(),
        ledger,
        is_sse,
        idle_timeout: policy.idle_timeout,
        total_deadline,
        idle: Box::pin(tokio::time::sleep_until(
            (now + policy.idle_timeout).min(total_deadline),
        )),
        last_chunk: now,
        trailer: None,
        translator,
        held: None,
        first_alone: false,
    };
    if body.inner.is_none() && body.first.is_none() {
        body.finished();
    }
    let mut response = Response::new(Body::from_stream(body));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

/// Everything needed to account for one request; writes its record when dropped.
struct Ledger {
    recorder: Arc<Recorder>,
    request_id: String,
    key_id: i64,
    dialect: Dialect,
    /// The format of the bytes the meter reads: the upstream's, or the client's when the
    /// answer was rewritten whole before it was sent.
    meter_dialect: Dialect,
    head: RequestHead,
    started: Instant,
    request_bytes: usize,
    status: StatusCode,
    /// Set when the end is known; `None` at drop means the client went away.
    outcome: Option<Outcome>,
    ttfb_us: Option<u64>,
    meter: Option<Meter>,
    /// `provider/account` that answered, and how many attempts it took.
    account: Option<Arc<str>>,
    attempts: u32,
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
        // The body was dropped before its end was seen. If the answer had already reached
        // its last event (`[DONE]`, `message_stop`) or was a whole JSON body, the client had
        // everything and closed, as SDKs close a stream once its last event is in: only the
        // end of the upstream body was still to come.
        let outcome = self.outcome.unwrap_or(if metered.complete {
            Outcome::delivered(self.status)
        } else {
            Outcome::ClientCancelled
        });
        let (usage, estimated) = match metered.usage {
            Some(u) => (u, false),
            // No usage from the upstream: estimate from what passed (about 4 bytes a token
            // of prompt; one token per streamed event), and say it is an estimate.
            None if self.ttfb_us.is_some() && self.status.is_success() => (
                Usage {
                    input_tokens: (self.request_bytes as u64).div_ceil(4),
                    output_tokens: metered.events,
                    ..Usage::default()
                },
                true,
            ),
            None => (Usage::default(), false),
        };
        let latency_us = self.started.elapsed().as_micros() as u64;
        tracing::info!(
            request_id = self.request_id.as_str(),
            key_id = self.key_id,
            api = self.dialect.as_str(),
            model = self.head.model.as_str(),
            stream = self.head.stream,
            status = self.status.as_u16(),
            outcome = outcome.as_str(),
            input_tokens = usage.input_tokens,
            output_tokens = usage.output_tokens,
            cached_tokens = usage.cached_tokens,
            estimated,
            ttfb_ms = self.ttfb_us.map(|us| us / 1000),
            latency_ms = latency_us / 1000,
            upstream = self.account.as_deref(),
            attempts = self.attempts,
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
            latency_us,
            ttfb_us: self.ttfb_us,
            account: self.account.take(),
            attempts: self.attempts,
        });
    }
}

/// The most bytes of ready upstream chunks handed to hyper as one chunk.
const GATHER_BYTES: usize = 16 * 1024;

/// `chunk` and the chunks `inner` has ready after it, as one chunk of at most
/// [`GATHER_BYTES`] (none is waited for); what ended the gathering, if it was the end of
/// the stream or an error, is put in `held`. hyper frames and queues each chunk of a body
/// separately, and the events of a stream mostly arrive several at once: handed over
/// together, they leave in one frame, at the cost of copying them.
fn gather<E>(
    chunk: Bytes,
    inner: &mut (impl futures_util::Stream<Item = Result<Bytes, E>> + Unpin),
    held: &mut Option<Option<Result<Bytes, E>>>,
    cx: &mut Context<'_>,
) -> Bytes {
    let mut gathered: Option<bytes::BytesMut> = None;
    let mut len = chunk.len();
    while len < GATHER_BYTES {
        match inner.poll_next_unpin(cx) {
            Poll::Ready(Some(Ok(next))) => {
                len += next.len();
                gathered
                    .get_or_insert_with(|| {
                        let mut all = bytes::BytesMut::with_capacity((4 * len).min(GATHER_BYTES));
                        all.extend_from_slice(&chunk);
                        all
                    })
                    .extend_from_slice(&next);
            }
            Poll::Ready(end) => {
                *held = Some(end);
                break;
            }
            Poll::Pending => break,
        }
    }
    gathered.map_or(chunk, bytes::BytesMut::freeze)
}

/// The response body: upstream bytes forwarded as they arrive, each one shown to the meter.
struct MeteredBody {
    /// Bytes still due when the upstream declared a length: hyper stops polling once it
    /// has sent that many, so reaching zero is how a complete body is recognised.
    remaining: Option<u64>,
    first: Option<Bytes>,
    /// `None` once the upstream has ended or failed.
    inner: Option<BodyStream>,
    /// The upstream slot; released when the body ends or is dropped.
    permit: Option<Permit>,
    ledger: Ledger,
    is_sse: bool,
    idle_timeout: std::time::Duration,
    total_deadline: tokio::time::Instant,
    idle: Pin<Box<Sleep>>,
    last_chunk: tokio::time::Instant,
    /// A last event to send after an upstream failure mid-stream.
    trailer: Option<Bytes>,
    /// Rewrites upstream bytes into the client's format (translation only).
    translator: Option<Box<dyn ResponseTranslator>>,
    /// What ended the last gathering of ready chunks (the end of the body or an error),
    /// handled at the next poll, after the chunks before it were passed on.
    held: Option<Option<Result<Bytes, BodyError>>>,
    /// A stream's first event goes out alone, written before the events that came with it
    /// are decoded, metered and gathered: when an upstream sends a burst, the client's
    /// first byte waits for one event, not for all of them (at c=1 in a hand-made A/B,
    /// 305 → 276 µs to the first byte; the same throughput at c=64).
    first_alone: bool,
}

impl MeteredBody {
    fn pass(&mut self, chunk: Bytes) -> Poll<Option<Result<Bytes, std::io::Error>>> {
        if let Some(meter) = self.ledger.meter.as_mut() {
            meter.feed(&chunk);
        }
        let mut complete = false;
        if let Some(left) = self.remaining.as_mut() {
            *left = left.saturating_sub(chunk.len() as u64);
            if *left == 0 {
                self.finished();
                complete = true;
            }
        }
        let Some(t) = self.translator.as_mut() else {
            return Poll::Ready(Some(Ok(chunk)));
        };
        let out = t.feed(&chunk);
        if !complete {
            return Poll::Ready(Some(Ok(out)));
        }
        let tail = t.finish();
        let mut all = bytes::BytesMut::with_capacity(out.len() + tail.len());
        all.extend_from_slice(&out);
        all.extend_from_slice(&tail);
        Poll::Ready(Some(Ok(all.freeze())))
    }

    fn finished(&mut self) {
        self.ledger.outcome = Some(Outcome::delivered(self.ledger.status));
    }

    /// The upstream broke off: end an event stream with an error event in the client's
    /// format; a JSON body can only be cut, so the client sees a truncated response.
    fn cut(&mut self, why: &str) -> Poll<Option<Result<Bytes, std::io::Error>>> {
        self.inner = None;
        self.ledger.outcome = Some(Outcome::UpstreamCut);
        if let Some(permit) = self.permit.as_mut() {
            permit.stream_failed();
        }
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
            let chunk = match this.inner.as_mut() {
                Some(_) if this.is_sse => {
                    this.first_alone = true;
                    first
                }
                Some(inner) => gather(first, inner, &mut this.held, cx),
                None => first,
            };
            return this.pass(chunk);
        }
        if std::mem::take(&mut this.first_alone) {
            // hyper writes out what it was given when the body is not ready: so it is
            // not, once, and asks to be polled again straight away.
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let Some(inner) = this.inner.as_mut() else {
            return this.poll_trailer();
        };
        let polled = match this.held.take() {
            Some(end) => Poll::Ready(end),
            None => inner.poll_next_unpin(cx),
        };
        match polled {
            Poll::Ready(Some(Ok(chunk))) => {
                this.last_chunk = tokio::time::Instant::now();
                let chunk = gather(chunk, inner, &mut this.held, cx);
                this.pass(chunk)
            }
            // Timeouts are this body's own (below): the upstream connections have no timer.
            Poll::Ready(Some(Err(_))) => this.cut("connection lost"),
            Poll::Ready(None) => {
                this.inner = None;
                this.permit = None;
                this.finished();
                if let Some(t) = this.translator.as_mut() {
                    let tail = t.finish();
                    if !tail.is_empty() {
                        this.trailer = Some(tail);
                    }
                }
                this.poll_trailer()
            }
            // The idle timer is not reset per chunk (that touches the timer wheel each
            // time); when it fires, it is re-armed from the last chunk's time.
            Poll::Pending => loop {
                match this.idle.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(()) => {
                        let now = tokio::time::Instant::now();
                        if this.total_deadline <= now {
                            return this.cut("the response exceeded upstream.total_timeout_secs");
                        }
                        let deadline = this.last_chunk + this.idle_timeout;
                        if deadline <= now {
                            let why = format!("no data for {} s", this.idle_timeout.as_secs());
                            return this.cut(&why);
                        }
                        this.idle.as_mut().reset(deadline.min(this.total_deadline));
                    }
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::stream::{self, StreamExt};

    type Item = Result<Bytes, &'static str>;

    fn ready_then_pending(items: Vec<Item>) -> impl futures_util::Stream<Item = Item> + Unpin {
        stream::iter(items).chain(stream::pending())
    }

    fn gather_now(
        first: &'static str,
        inner: &mut (impl futures_util::Stream<Item = Item> + Unpin),
    ) -> (Bytes, Option<Option<Item>>) {
        let mut held = None;
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let chunk = gather(
            Bytes::from_static(first.as_bytes()),
            inner,
            &mut held,
            &mut cx,
        );
        (chunk, held)
    }

    #[test]
    fn ready_chunks_leave_as_one_and_none_is_waited_for() {
        let mut inner = ready_then_pending(vec![Ok(Bytes::from("b")), Ok(Bytes::from("c"))]);
        let (chunk, held) = gather_now("a", &mut inner);
        assert_eq!(chunk, "abc");
        assert!(held.is_none());
    }

    #[test]
    fn the_end_or_an_error_is_held_for_the_next_poll() {
        let mut ended = stream::iter(vec![Ok(Bytes::from("b"))]);
        let (chunk, held) = gather_now("a", &mut ended);
        assert_eq!(chunk, "ab");
        assert!(matches!(held, Some(None)));

        let mut failed = ready_then_pending(vec![Err("cut"), Ok(Bytes::from("late"))]);
        let (chunk, held) = gather_now("a", &mut failed);
        assert_eq!(chunk, "a");
        assert!(matches!(held, Some(Some(Err("cut")))));
    }

    #[test]
    fn gathering_stops_at_the_bound_and_a_big_chunk_is_not_copied() {
        let big = Bytes::from(vec![b'x'; GATHER_BYTES / 2]);
        let mut inner = ready_then_pending(vec![Ok(big.clone()), Ok(big.clone()), Ok(big)]);
        let (chunk, _) = gather_now("a", &mut inner);
        assert_eq!(chunk.len(), 1 + GATHER_BYTES);
        // The third chunk is still in the stream.
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(matches!(
            inner.poll_next_unpin(&mut cx),
            Poll::Ready(Some(Ok(_)))
        ));

        let whole = Bytes::from(vec![b'y'; GATHER_BYTES]);
        let mut held = None;
        let mut inner = ready_then_pending(vec![Ok(Bytes::from("next"))]);
        let chunk = gather(whole.clone(), &mut inner, &mut held, &mut cx);
        assert_eq!(chunk.as_ptr(), whole.as_ptr());
    }

    #[tokio::test]
    async fn a_streams_first_event_leaves_alone_before_the_events_that_came_with_it() {
        use hyper::body::Body as _;
        use std::sync::atomic::{AtomicUsize, Ordering};

        struct Count(AtomicUsize);
        impl std::task::Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }

        let (_dir, state, _recorder) = crate::app::test_state().await;
        let events = [
            "data: {\"n\":1}\n\n",
            "data: {\"n\":2}\n\n",
            "data: {\"n\":3}\n\n",
            "data: [DONE]\n\n",
        ];
        // Everything has arrived at once: the rest is ready, then the body ends.
        let rest: Vec<Result<Bytes, BodyError>> = events[1..]
            .iter()
            .map(|e| Ok(Bytes::from_static(e.as_bytes())))
            .collect();
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        let opened = Opened {
            status: StatusCode::OK,
            headers,
            is_sse: true,
            first: Some(Bytes::from_static(events[0].as_bytes())),
            rest: Some(Box::pin(stream::iter(rest))),
            permit: None,
            account: None,
            failure: None,
        };
        let body =
            br#"{"model":"glm-4.7","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
        let ledger = Ledger {
            recorder: state.recorder.clone(),
            request_id: "r".into(),
            key_id: 1,
            dialect: Dialect::OpenAi,
            meter_dialect: Dialect::OpenAi,
            head: request::parse_head(Dialect::OpenAi, body).expect("head"),
            started: Instant::now(),
            request_bytes: body.len(),
            status: StatusCode::OK,
            outcome: None,
            ttfb_us: None,
            meter: None,
            account: None,
            attempts: 1,
        };
        let pool = state.upstream.pool();
        let response = stream_back(
            opened,
            ledger,
            &pool.policy,
            None,
            ReasoningMode::Passthrough,
        );
        let mut body = response.into_body();
        let woken = Arc::new(Count(AtomicUsize::new(0)));
        let waker = std::task::Waker::from(woken.clone());
        let mut cx = Context::from_waker(&waker);
        let mut next = || match Pin::new(&mut body).poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(frame))) => Some(frame.into_data().expect("data")),
            Poll::Ready(None) => None,
            Poll::Ready(Some(Err(e))) => panic!("{e}"),
            Poll::Pending => Some(Bytes::from_static(b"(pending)")),
        };
        assert_eq!(next(), Some(Bytes::from_static(events[0].as_bytes())));
        assert_eq!(next(), Some(Bytes::from_static(b"(pending)")));
        assert_eq!(woken.0.load(Ordering::SeqCst), 1, "asks to be polled again");
        assert_eq!(next(), Some(Bytes::from(events[1..].concat())));
        assert_eq!(next(), None);
    }
}
