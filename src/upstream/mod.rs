//! Sending a request upstream: admission into an account's limits (waiting in a bounded
//! queue when all are full), the attempt itself, and retries on another account or key
//! while nothing has reached the client yet.
//!
//! An attempt counts as started only once the first body bytes are in hand, so an empty,
//! garbage or error-in-200 answer is retried like any other failure. Connections are
//! pooled and kept alive (HTTP/1.1, TLS by rustls; see `client`).

pub mod aimd;
pub mod classify;
pub mod client;
pub mod pool;
pub mod quota;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use bytes::{Bytes, BytesMut};
use futures_util::stream::{BoxStream, StreamExt};
use tokio::sync::mpsc;

use client::{Endpoint, HttpClient};

use crate::config::{Policy, UpstreamSettings};
use crate::error::{ApiError, Dialect};
use classify::{Class, Failure};
use pool::{LimitUpdate, Permit, Pool, Select, Target, Waiters};

/// Anthropic client headers carried on to an Anthropic-format upstream (see [`Forwarded`]).
const ANTHROPIC_VERSION: HeaderName = HeaderName::from_static("anthropic-version");
const ANTHROPIC_BETA: HeaderName = HeaderName::from_static("anthropic-beta");
const DEFAULT_ANTHROPIC_VERSION: &str = "2023-06-01";
/// Error bodies are read whole (to classify them) up to this size.
const ERROR_BODY_LIMIT: usize = 1 << 20;

pub type BodyStream = BoxStream<'static, Result<Bytes, client::BodyError>>;

/// An upstream answer whose head and first bytes have arrived: what is streamed back.
pub struct Opened {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub is_sse: bool,
    pub first: Option<Bytes>,
    /// The rest of the body; `None` when `first` is all of it.
    pub rest: Option<BodyStream>,
    /// The slot this request holds upstream, released when the response ends.
    pub permit: Option<Permit>,
    /// `provider/account` that answered.
    pub account: Option<Arc<str>>,
    /// Set when this is an upstream error answer passed on after the retries: its class.
    pub failure: Option<Class>,
}

impl Opened {
    /// Reads the rest of a non-stream answer, each chunk within `idle`, and returns it
    /// whole (the first bytes included).
    pub async fn read_whole(&mut self, idle: Duration) -> Result<Bytes, ApiError> {
        let mut buf = BytesMut::from(self.first.take().unwrap_or_default());
        if let Some(mut rest) = self.rest.take() {
            loop {
                match tokio::time::timeout(idle, rest.next()).await {
                    Err(_) => return Err(ApiError::UpstreamTimeout(idle.as_secs())),
                    Ok(None) => break,
                    Ok(Some(Err(_))) => {
                        return Err(ApiError::UpstreamInvalid(
                            "the connection closed in the middle of the answer".into(),
                        ))
                    }
                    Ok(Some(Ok(chunk))) => buf.extend_from_slice(&chunk),
                }
            }
        }
        Ok(buf.freeze())
    }

    /// Replaces the body with a whole JSON body (framed by its length).
    pub fn set_json_body(&mut self, body: Bytes) {
        self.headers.remove(header::TRANSFER_ENCODING);
        self.headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        self.headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        self.first = (!body.is_empty()).then_some(body);
        self.rest = None;
    }
}

/// Why an attempt failed, what the client would get if it is the last one.
struct Failed {
    failure: Failure,
    /// The upstream's own answer, to pass on when it is final.
    answer: Option<Opened>,
    /// The gateway's error, when there is no upstream answer to pass on.
    error: ApiError,
    /// Why, in more detail than the client is told (the connector's causes): for the log.
    cause: Option<String>,
}

impl Failed {
    /// A failure with no HTTP answer to pass on: the client gets `error`.
    fn transport(error: ApiError) -> Failed {
        Failed {
            failure: Failure::transport(),
            answer: None,
            error,
            cause: None,
        }
    }
}

pub struct Upstream {
    client: HttpClient,
    pool: ArcSwap<Pool>,
    waiters: Arc<Waiters>,
    limits_tx: mpsc::UnboundedSender<LimitUpdate>,
}

/// Decrements the queue count when a waiting request leaves the queue.
struct Queued<'a>(&'a Waiters);

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.count.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Upstream {
    /// `restored`: learned limits from the store; `limits_tx`: where new ones are sent.
    pub fn new(
        s: &UpstreamSettings,
        restored: &HashMap<(String, String), f64>,
        limits_tx: mpsc::UnboundedSender<LimitUpdate>,
    ) -> anyhow::Result<Upstream> {
        let client = HttpClient::new(
            s.policy.connect_timeout,
            s.policy.http2,
            s.policy.ca_file.as_deref(),
        )?;
        let pool = Pool::build(s, None, restored, Some(limits_tx.clone()));
        Ok(Upstream {
            client,
            pool: ArcSwap::from_pointee(pool),
            waiters: Arc::new(Waiters::default()),
            limits_tx,
        })
    }

    pub fn client(&self) -> &HttpClient {
        &self.client
    }

    /// Asks a provider configured for it to count tokens; `None` when none is, or it
    /// fails (the caller then counts locally).
    pub async fn count_tokens(&self, client_headers: &HeaderMap, body: Bytes) -> Option<Bytes> {
        let (provider, key) = self.pool().count_tokens_target()?;
        let uri = provider.count_tokens.as_ref()?;
        let mut req = HttpClient::request(Method::POST, uri, body);
        let h = req.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        Forwarded::of(Dialect::Anthropic, client_headers).apply(h, Dialect::Anthropic);
        key.authorize(h, Dialect::Anthropic, provider.anthropic_auth);
        match self.client.fetch(req, Duration::from_secs(30)).await {
            Ok((status, body)) if status.is_success() => Some(body),
            Ok((status, _)) => {
                tracing::debug!(
                    status = status.as_u16(),
                    "upstream count_tokens refused; counting locally"
                );
                None
            }
            Err(error) => {
                tracing::debug!(%error, "upstream count_tokens failed; counting locally");
                None
            }
        }
    }

    /// The current pool (for listings and checks).
    pub fn pool(&self) -> Arc<Pool> {
        self.pool.load_full()
    }

    /// Swaps in new providers, accounts, keys and policy. Live state (in-flight counts,
    /// learned limits, benches) of accounts that stay is kept; requests in flight finish on
    /// what they started with. The connect timeout keeps its value until a restart.
    pub fn reload(&self, s: &UpstreamSettings) -> String {
        let old = self.pool.load_full();
        let pool = Pool::build(s, Some(&old), &HashMap::new(), Some(self.limits_tx.clone()));
        let summary = format!(
            "{} provider(s), {} key(s)",
            s.providers.len(),
            pool.key_count()
        );
        self.pool.store(Arc::new(pool));
        self.waiters.notify.notify_waiters();
        summary
    }

    /// Sends `body` for `model`, retrying on other accounts or keys as the failure class
    /// allows, until an answer's first bytes are in hand. Each upstream request made adds
    /// one to `sent`, whatever the outcome.
    pub async fn send(
        &self,
        dialect: Dialect,
        model: &str,
        forwarded: &Forwarded,
        body: Bytes,
        sent: &mut u32,
    ) -> Result<Opened, ApiError> {
        let started = Instant::now();
        let mut avoid: Vec<Arc<str>> = Vec::new();
        // What the client gets if no further attempt can be made. Boxed: set only after a
        // failure, it would otherwise take 232 bytes of every request's future.
        let mut last: Option<Box<Result<Opened, ApiError>>> = None;
        let mut attempt = 0u32;
        // Concurrency refusals (1302): the upstream took nothing and the lowered adaptive
        // limit paces the next try, so up to `max_attempts` of them come on top of the
        // attempts allowed: a burst above an account's real limit is absorbed, and an
        // upstream that refuses everything still ends the request after twice that many
        // short tries.
        let mut refused = 0u32;
        // Backoff owed before trying a key this request has already tried.
        let mut owed = Duration::ZERO;
        loop {
            attempt += 1;
            let budget_end = started + self.pool.load().policy.retry_budget;
            let (mut permit, target, pool) = match self
                .admit(dialect, model, &avoid, attempt, budget_end)
                .await
            {
                Ok(x) => x,
                // After a failed attempt, its answer says more than "no room left".
                Err(e) => return last.map_or(Err(e), |l| *l),
            };
            if !owed.is_zero() && avoid.contains(&target.key.label) {
                // Only the key that just failed is free: back off before trying it again
                // (another key would have been tried at once).
                drop(permit);
                let pause = std::mem::take(&mut owed)
                    .min(budget_end.saturating_duration_since(Instant::now()));
                tokio::time::sleep(pause).await;
                attempt -= 1;
                continue;
            }
            let t0 = Instant::now();
            *sent += 1;
            let result = self
                .attempt(&pool, &target, dialect, forwarded, body.clone())
                .await;
            match result {
                Ok(mut opened) => {
                    permit.succeeded(t0.elapsed());
                    opened.permit = Some(permit);
                    opened.account = Some(target.account);
                    return Ok(opened);
                }
                Err(Failed {
                    failure,
                    answer,
                    error,
                    cause,
                }) => {
                    permit.failed(&failure, &pool, &target.account);
                    drop(permit);
                    let p = &pool.policy;
                    tracing::warn!(
                        account = %target.account,
                        key = %target.key.label,
                        attempt,
                        failure = %failure.describe(),
                        error = %error,
                        cause = cause.as_deref(),
                        "upstream attempt failed"
                    );
                    let now = Instant::now();
                    let timed_out = matches!(error, ApiError::UpstreamTimeout(_));
                    // What the client gets if this is the end: the upstream's own answer,
                    // marked with its failure class (the fallback step reads it) and the
                    // account that gave it.
                    let outcome = answer
                        .map(|mut a| {
                            a.failure = Some(failure.class);
                            a.account = Some(target.account.clone());
                            a
                        })
                        .ok_or(error);
                    if failure.class == Class::Concurrency {
                        refused += 1;
                    }
                    if !failure.class.retryable()
                        || timed_out
                        || attempt - refused.min(p.max_attempts) >= p.max_attempts
                        || now >= budget_end
                    {
                        return outcome;
                    }
                    avoid.push(target.key.label.clone());
                    // A rejected upstream key is the gateway's problem, not the client's:
                    // never pass that 401 on.
                    last = match failure.class {
                        Class::Key => None,
                        _ => Some(Box::new(outcome)),
                    };
                    owed = backoff(failure.class, attempt, p);
                }
            }
        }
    }

    /// Waits (in a bounded queue, up to a deadline) for an account and key with room.
    async fn admit(
        &self,
        dialect: Dialect,
        model: &str,
        avoid: &[Arc<str>],
        attempt: u32,
        budget_end: Instant,
    ) -> Result<(Permit, Target, Arc<Pool>), ApiError> {
        // The common case: room now, no queue bookkeeping.
        let pool = self.pool.load_full();
        match pool.select(dialect, model, avoid, &self.waiters) {
            Select::Ready(permit, target) => return Ok((permit, target, pool)),
            Select::Refuse(e) => return Err(e),
            Select::Wait(_) => {}
        }
        let p = &pool.policy;
        if self.waiters.count.fetch_add(1, Ordering::Relaxed) >= p.queue_max_waiting {
            self.waiters.count.fetch_sub(1, Ordering::Relaxed);
            return Err(ApiError::Saturated {
                message: format!(
                    "all upstream accounts are at their concurrency limit and {} requests \
                     are already waiting",
                    p.queue_max_waiting
                ),
                retry_after_secs: 1,
            });
        }
        let _queued = Queued(&self.waiters);
        let queue_timeout = p.queue_timeout;
        let mut deadline = Instant::now() + queue_timeout;
        if attempt > 1 {
            deadline = deadline.min(budget_end);
        }
        drop(pool);
        // From here every release wakes us (the count is above zero), and the wake-up is
        // registered before each look, so none is missed.
        loop {
            let notified = self.waiters.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let pool = self.pool.load_full();
            let until = match pool.select(dialect, model, avoid, &self.waiters) {
                Select::Ready(permit, target) => return Ok((permit, target, pool)),
                Select::Refuse(e) => return Err(e),
                Select::Wait(until) => until,
            };
            let now = Instant::now();
            if now >= deadline {
                let retry_after_secs = until
                    .map(|u| u.saturating_duration_since(now).as_secs())
                    .unwrap_or(1)
                    .max(1);
                return Err(ApiError::Saturated {
                    message: format!(
                        "no upstream capacity for `{model}`: every account is at its \
                         concurrency limit or cooling down (waited {} s)",
                        queue_timeout.as_secs()
                    ),
                    retry_after_secs,
                });
            }
            let wake = until.map_or(deadline, |u| u.min(deadline));
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(wake.into()) => {}
            }
        }
    }

    /// One attempt: the request, the response head, and the first body bytes (or the whole
    /// body of an error answer, to classify it).
    async fn attempt(
        &self,
        pool: &Pool,
        target: &Target,
        dialect: Dialect,
        forwarded: &Forwarded,
        body: Bytes,
    ) -> Result<Opened, Failed> {
        let p = &pool.policy;
        let deadline = tokio::time::Instant::now() + p.first_byte_timeout;
        let timeout =
            || Failed::transport(ApiError::UpstreamTimeout(p.first_byte_timeout.as_secs()));
        let invalid = |why: &str| Failed::transport(ApiError::UpstreamInvalid(why.to_string()));
        let Some(endpoint) = target.provider.endpoint(dialect) else {
            return Err(Failed::transport(ApiError::NoUpstream(format!(
                "no upstream speaks the {} API",
                dialect.as_str()
            ))));
        };
        let req = build(endpoint, target, dialect, forwarded, body);
        let resp = match tokio::time::timeout_at(deadline, self.client.send(req)).await {
            Err(_) => return Err(timeout()),
            Ok(Err(e)) => {
                // The client is told the kind and the host; the causes go to the log.
                return Err(Failed {
                    cause: Some(e.to_string()),
                    ..Failed::transport(ApiError::UpstreamUnreachable(client::describe(
                        &e,
                        endpoint.uri(),
                    )))
                });
            }
            Ok(Ok(r)) => r,
        };
        let (parts, body) = resp.into_parts();
        let (status, headers) = (parts.status, parts.headers);
        let mut stream: BodyStream = body.boxed();
        if !status.is_success() {
            let mut buf = BytesMut::new();
            loop {
                match tokio::time::timeout_at(deadline, stream.next()).await {
                    Err(_) => return Err(timeout()),
                    Ok(None) => break,
                    Ok(Some(Err(_))) => break,
                    Ok(Some(Ok(chunk))) => {
                        buf.extend_from_slice(&chunk);
                        if buf.len() > ERROR_BODY_LIMIT {
                            break;
                        }
                    }
                }
            }
            let body = buf.freeze();
            let failure = pool.classifier.classify(status, &headers, &body);
            return Err(Failed {
                failure,
                answer: Some(buffered(status, headers, body)),
                error: ApiError::UpstreamInvalid(format!("HTTP {status}")),
                cause: None,
            });
        }
        let is_sse = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        let first = match tokio::time::timeout_at(deadline, stream.next()).await {
            Err(_) => return Err(timeout()),
            Ok(Some(Err(_))) => {
                return Err(invalid(
                    "the connection closed before a response body arrived",
                ))
            }
            Ok(None) => return Err(invalid("empty response body")),
            Ok(Some(Ok(chunk))) => chunk,
        };
        if !plausible_start(&first, is_sse) {
            return Err(invalid(if is_sse {
                "expected an event stream, got something else"
            } else {
                "expected a JSON body, got something else"
            }));
        }
        if let Some(failure) = pool.classifier.error_in_success(&first, is_sse) {
            let answer = (!is_sse).then(|| {
                let status = match failure.class {
                    Class::Client => StatusCode::BAD_REQUEST,
                    c => c.client_status(),
                };
                buffered(status, headers, first)
            });
            return Err(Failed {
                error: ApiError::UpstreamInvalid(format!(
                    "an error inside a 200 answer: {}",
                    failure.describe()
                )),
                failure,
                answer,
                cause: None,
            });
        }
        Ok(Opened {
            status,
            headers,
            is_sse,
            first: Some(first),
            rest: Some(stream),
            permit: None,
            account: None,
            failure: None,
        })
    }
}

/// The upstream request: the client's body, its `Accept` and (Anthropic) version headers,
/// and the key in the provider's scheme.
fn build(
    endpoint: &Endpoint,
    target: &Target,
    dialect: Dialect,
    forwarded: &Forwarded,
    body: Bytes,
) -> axum::http::Request<Bytes> {
    let mut req = HttpClient::request(Method::POST, endpoint, body);
    let h = req.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    forwarded.apply(h, dialect);
    target
        .key
        .authorize(h, dialect, target.provider.anthropic_auth);
    req
}

/// The client's headers that upstream requests carry on: `accept`, and for Anthropic
/// clients the `anthropic-*` ones. Copied out of the client's request, so that it can be let
/// go: its header values are slices of the connection's read buffer.
pub struct Forwarded {
    accept: Option<HeaderValue>,
    anthropic_version: Option<HeaderValue>,
    anthropic_beta: Option<HeaderValue>,
}

impl Forwarded {
    pub fn of(dialect: Dialect, client: &HeaderMap) -> Forwarded {
        let copy = |name: &HeaderName| client.get(name).and_then(detach);
        let anthropic = dialect == Dialect::Anthropic;
        Forwarded {
            accept: copy(&header::ACCEPT),
            anthropic_version: anthropic.then(|| copy(&ANTHROPIC_VERSION)).flatten(),
            anthropic_beta: anthropic.then(|| copy(&ANTHROPIC_BETA)).flatten(),
        }
    }

    /// Adds the headers to an upstream request in `dialect`; an Anthropic-style one gets a
    /// default version when the client sent none.
    fn apply(&self, h: &mut HeaderMap, dialect: Dialect) {
        if let Some(v) = &self.accept {
            h.insert(header::ACCEPT, v.clone());
        }
        if dialect == Dialect::Anthropic {
            let version = self
                .anthropic_version
                .clone()
                .unwrap_or(HeaderValue::from_static(DEFAULT_ANTHROPIC_VERSION));
            h.insert(ANTHROPIC_VERSION, version);
            if let Some(v) = &self.anthropic_beta {
                h.insert(ANTHROPIC_BETA, v.clone());
            }
        }
    }
}

/// A header value that does not share the client's read buffer: the usual values are
/// static ones (no allocation, and none when cloned into each attempt), others a copy.
fn detach(v: &HeaderValue) -> Option<HeaderValue> {
    const USUAL: [&str; 5] = [
        "*/*",
        "application/json",
        "text/event-stream",
        "application/json, text/event-stream",
        DEFAULT_ANTHROPIC_VERSION,
    ];
    match USUAL.iter().find(|u| u.as_bytes() == v.as_bytes()) {
        Some(u) => Some(HeaderValue::from_static(u)),
        None => HeaderValue::from_bytes(v.as_bytes()).ok(),
    }
}

/// A fully read answer, framed by its length.
fn buffered(status: StatusCode, mut headers: HeaderMap, body: Bytes) -> Opened {
    headers.remove(header::TRANSFER_ENCODING);
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    Opened {
        status,
        headers,
        is_sse: false,
        first: (!body.is_empty()).then_some(body),
        rest: None,
        permit: None,
        account: None,
        failure: None,
    }
}

/// How long to wait before the next attempt after a failure of `class`.
fn backoff(class: Class, attempt: u32, p: &Policy) -> Duration {
    match class {
        // Another account or key is tried at once; the failing one is benched or disabled.
        Class::Quota | Class::Plan | Class::Key | Class::Client => Duration::ZERO,
        // The lowered limit does the pacing; a short jitter spreads a burst.
        Class::Concurrency => Duration::from_millis(20 + rand::random::<u64>() % 80),
        // Full jitter on an exponential backoff.
        Class::Overload | Class::Server => {
            let cap = p
                .backoff_base
                .saturating_mul(1 << attempt.saturating_sub(1).min(16))
                .min(p.backoff_max);
            cap.mul_f64(rand::random::<f64>())
        }
    }
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

#[cfg(test)]
mod tests {
    use super::{plausible_start, Forwarded, DEFAULT_ANTHROPIC_VERSION};
    use crate::error::Dialect;
    use axum::http::{HeaderMap, HeaderValue};

    #[test]
    fn only_the_forwarded_headers_go_upstream_and_none_shares_the_clients_buffer() {
        let mut client = HeaderMap::new();
        client.insert(
            "authorization",
            HeaderValue::from_static("Bearer gg-secret"),
        );
        client.insert("x-api-key", HeaderValue::from_static("gg-secret"));
        client.insert("anthropic-version", HeaderValue::from_static("2023-06-01"));
        client.insert("user-agent", HeaderValue::from_static("sdk"));
        // Values as hyper parses them: slices of a buffer it owns, which must not be kept
        // (a usual value, which becomes a static one, and another, which is copied).
        let read_buffer = bytes::Bytes::from(b"text/event-stream tools-2024".to_vec());
        let slice = |r| HeaderValue::from_maybe_shared(read_buffer.slice(r)).expect("value");
        client.insert("accept", slice(0..17));
        client.insert("anthropic-beta", slice(18..28));

        let mut sent = HeaderMap::new();
        Forwarded::of(Dialect::Anthropic, &client).apply(&mut sent, Dialect::Anthropic);
        assert_eq!(sent.len(), 3);
        assert_eq!(sent["accept"], "text/event-stream");
        assert_eq!(sent["anthropic-version"], "2023-06-01");
        assert_eq!(sent["anthropic-beta"], "tools-2024");
        let within = read_buffer.as_ptr_range();
        assert!(!within.contains(&sent["accept"].as_bytes().as_ptr()));
        assert!(!within.contains(&sent["anthropic-beta"].as_bytes().as_ptr()));

        // An OpenAI client's request carries on `accept` only; an Anthropic-style upstream
        // request gets the default version.
        let mut sent = HeaderMap::new();
        Forwarded::of(Dialect::OpenAi, &client).apply(&mut sent, Dialect::OpenAi);
        assert_eq!(sent.len(), 1);
        let mut sent = HeaderMap::new();
        Forwarded::of(Dialect::OpenAi, &client).apply(&mut sent, Dialect::Anthropic);
        assert_eq!(sent["anthropic-version"], DEFAULT_ANTHROPIC_VERSION);
        assert!(!sent.contains_key("anthropic-beta"));
    }

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
