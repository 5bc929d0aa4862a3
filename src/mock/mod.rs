//! `glmgate mock`: a Z.AI-compatible upstream for tests, the demo, benchmarks, and users who
//! want to try their clients offline.
//!
//! Endpoints (both of Z.AI's formats, stream and non-stream):
//! - `POST /api/paas/v4/chat/completions`, `/api/coding/paas/v4/chat/completions`,
//!   `/v1/chat/completions`: OpenAI-style, Z.AI's flavour.
//! - `POST /api/anthropic/v1/messages`, `/v1/messages`: Anthropic-style.
//! - `GET /_mock/stats`: counters tests use to see what reached the upstream
//!   (requests, streams completed and cancelled, the last authorization and body hash).
//!
//! Any key is accepted except one starting with `bad`, which gets Z.AI's 401. Models must
//! start with `glm-` or `claude-`, else 400 with business code 1211. Faults: see [`faults`].

pub mod faults;
pub mod plan;
pub mod render;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Version};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use axum::Json;
use futures_util::StreamExt;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;

use crate::error::Dialect;
use faults::Faults;

#[derive(Clone, Debug)]
pub struct MockOptions {
    /// Text chunks in a full answer (a stream has these plus reasoning and the final chunk).
    pub chunks: usize,
    /// Delay before the response head.
    pub first_byte_delay: Duration,
    /// Delay between stream chunks.
    pub chunk_delay: Duration,
    /// A fault spec applied to every request (see [`faults`]).
    pub fault: Option<String>,
    /// Serve only one API format (`Some(OpenAi)`: an OpenAI-only upstream); the other's
    /// paths answer 404, as a real single-format upstream would.
    pub only: Option<Dialect>,
}

impl Default for MockOptions {
    fn default() -> Self {
        MockOptions {
            chunks: 20,
            first_byte_delay: Duration::ZERO,
            chunk_delay: Duration::ZERO,
            fault: None,
            only: None,
        }
    }
}

#[derive(Default)]
struct Stats {
    requests: AtomicU64,
    /// Client addresses seen: how many connections the callers opened.
    peers: Mutex<std::collections::HashSet<SocketAddr>>,
    streams_completed: AtomicU64,
    streams_cancelled: AtomicU64,
    in_flight: AtomicU64,
    last: Mutex<Last>,
}

#[derive(Default, Clone)]
struct Last {
    authorization: String,
    x_api_key: String,
    anthropic_version: String,
    body_sha256: String,
    /// `openai` or `anthropic`: which API the last request used.
    api: &'static str,
    /// The HTTP version it came in (`HTTP/1.1`, `HTTP/2.0`).
    version: &'static str,
}

struct Mock {
    options: MockOptions,
    stats: Stats,
    /// Requests in flight per upstream key (for the `concurrency=N` fault).
    per_key: Mutex<HashMap<String, usize>>,
}

/// A request's place in its key's in-flight count; given back when dropped.
struct KeySlot {
    mock: Arc<Mock>,
    key: String,
}

impl KeySlot {
    /// Takes a slot if fewer than `limit` requests are in flight on `key`.
    fn take(mock: &Arc<Mock>, key: &str, limit: usize) -> Option<KeySlot> {
        let mut map = mock.per_key.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(key.to_string()).or_insert(0);
        if *n >= limit {
            return None;
        }
        *n += 1;
        Some(KeySlot {
            mock: mock.clone(),
            key: key.to_string(),
        })
    }
}

impl Drop for KeySlot {
    fn drop(&mut self) {
        let mut map = self.mock.per_key.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.key) {
            *n = n.saturating_sub(1);
        }
    }
}

pub fn router(options: MockOptions) -> axum::Router {
    let only = options.only;
    let mock = Arc::new(Mock {
        options,
        stats: Stats::default(),
        per_key: Mutex::default(),
    });
    let openai = post(
        |s: State<Arc<Mock>>, c: ConnectInfo<SocketAddr>, v: Version, h: HeaderMap, b: Bytes| {
            respond(s, c, Dialect::OpenAi, v, h, b)
        },
    );
    let anthropic = post(
        |s: State<Arc<Mock>>, c: ConnectInfo<SocketAddr>, v: Version, h: HeaderMap, b: Bytes| {
            respond(s, c, Dialect::Anthropic, v, h, b)
        },
    );
    let mut app = axum::Router::new();
    if only != Some(Dialect::Anthropic) {
        app = app
            .route("/api/paas/v4/chat/completions", openai.clone())
            .route("/api/coding/paas/v4/chat/completions", openai.clone())
            .route("/v1/chat/completions", openai);
    }
    if only != Some(Dialect::OpenAi) {
        app = app
            .route("/api/anthropic/v1/messages", anthropic.clone())
            .route("/v1/messages", anthropic)
            .route(
                "/api/anthropic/v1/messages/count_tokens",
                post(count_tokens),
            )
            .route("/v1/messages/count_tokens", post(count_tokens));
    }
    app.route("/_mock/stats", get(stats))
        .route(crate::upstream::quota::QUOTA_PATH, get(quota))
        .with_state(mock)
}

/// Serves the mock on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, options: MockOptions) -> std::io::Result<()> {
    let app = router(options).into_make_service_with_connect_info::<SocketAddr>();
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app).await
}

/// Serves the mock over TLS on `listener`, offering by ALPN what `tls` lists (see
/// [`tls_config`]), until the task is dropped.
pub async fn serve_tls(
    listener: TcpListener,
    tls: rustls::ServerConfig,
    options: MockOptions,
) -> std::io::Result<()> {
    let app = router(options).into_make_service_with_connect_info::<SocketAddr>();
    // axum gives the client's address as connection info for its own listeners only;
    // `tap_io` wraps this one into one of them.
    let listener = TlsListener::new(listener, tls)?.tap_io(|_| {});
    axum::serve(listener, app).await
}

/// The TLS settings of `glmgate mock --tls-cert --tls-key`: the certificate chain and the
/// key from PEM files, and the protocols offered by ALPN in order of preference (`h2` and
/// `http/1.1` by default; `http/1.1` alone plays an upstream without HTTP/2).
pub fn tls_config(
    cert: &std::path::Path,
    key: &std::path::Path,
    alpn: &[&str],
) -> anyhow::Result<rustls::ServerConfig> {
    use anyhow::Context as _;
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::PrivateKeyDer;
    let chain = crate::config::pem_certificates(cert, "--tls-cert")?;
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("--tls-key: {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("--tls-cert / --tls-key")?;
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Ok(config)
}

/// Connections that have completed their TLS handshake. Handshakes run side by side, each
/// in a task of its own (bounded by a timeout), so a slow one holds up no other.
struct TlsListener {
    ready: tokio::sync::mpsc::Receiver<(TlsStream, SocketAddr)>,
    addr: SocketAddr,
}

type TlsStream = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;

impl TlsListener {
    fn new(mut listener: TcpListener, tls: rustls::ServerConfig) -> std::io::Result<TlsListener> {
        let addr = listener.local_addr()?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let (done, ready) = tokio::sync::mpsc::channel(1024);
        tokio::spawn(async move {
            loop {
                let (tcp, peer) = tokio::select! {
                    accepted = axum::serve::Listener::accept(&mut listener) => accepted,
                    // The server is gone: stop listening.
                    _ = done.closed() => return,
                };
                let _ = tcp.set_nodelay(true);
                let (acceptor, done) = (acceptor.clone(), done.clone());
                tokio::spawn(async move {
                    let handshake = acceptor.accept(tcp);
                    if let Ok(Ok(tls)) =
                        tokio::time::timeout(Duration::from_secs(10), handshake).await
                    {
                        let _ = done.send((tls, peer)).await;
                    }
                });
            }
        });
        Ok(TlsListener { ready, addr })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TlsStream, SocketAddr) {
        match self.ready.recv().await {
            Some(accepted) => accepted,
            // Not reached: the sender lives as long as this.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.addr)
    }
}

/// Starts the mock on a free loopback port in the background; returns its address.
pub async fn spawn(options: MockOptions) -> std::io::Result<SocketAddr> {
    let listener = crate::app::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = serve(listener, options).await {
            tracing::error!(error = %e, "mock stopped");
        }
    });
    Ok(addr)
}

/// Anthropic's `count_tokens`, counted as the mock counts prompts (body size / 4).
async fn count_tokens(headers: HeaderMap, body: Bytes) -> Response {
    if header_str(&headers, "authorization").is_empty()
        && header_str(&headers, "x-api-key").is_empty()
    {
        return error_response(Dialect::Anthropic, 401, "1001", &render::new_id());
    }
    json_response(
        StatusCode::OK,
        json!({"input_tokens": (body.len() / 4).max(1)}).to_string(),
    )
}

/// Z.AI's plan quota monitor: the share used (from the key's `quota-used=PCT` fault, else
/// 10%) and the next reset, an hour from now.
async fn quota(State(m): State<Arc<Mock>>, headers: HeaderMap) -> Response {
    let key = header_str(&headers, "authorization")
        .trim_start_matches("Bearer ")
        .to_string();
    if key.is_empty() || key.starts_with("bad") {
        return error_response(Dialect::OpenAi, 401, "1001", &render::new_id());
    }
    let mut faults = Faults::default();
    for spec in [key.strip_prefix("fault-"), m.options.fault.as_deref()]
        .into_iter()
        .flatten()
    {
        let _ = faults.add(spec);
    }
    let reset = chrono::Utc::now().timestamp_millis() + 3_600_000;
    json_response(
        StatusCode::OK,
        json!({"code": 200, "msg": "Operation successful", "success": true, "data": {"limits": [
            {"type": "TOKENS_LIMIT", "unit": 3, "number": 5,
             "percentage": faults.quota_used.unwrap_or(10.0), "nextResetTime": reset}
        ]}})
        .to_string(),
    )
}

async fn stats(State(m): State<Arc<Mock>>) -> Json<Value> {
    let last = m.stats.last.lock().map(|l| l.clone()).unwrap_or_default();
    Json(json!({
        "requests": m.stats.requests.load(Ordering::Relaxed),
        "connections": m.stats.peers.lock().map(|p| p.len()).unwrap_or(0),
        "streams_completed": m.stats.streams_completed.load(Ordering::Relaxed),
        "streams_cancelled": m.stats.streams_cancelled.load(Ordering::Relaxed),
        "in_flight": m.stats.in_flight.load(Ordering::Relaxed),
        "last_authorization": last.authorization,
        "last_x_api_key": last.x_api_key,
        "last_anthropic_version": last.anthropic_version,
        "last_body_sha256": last.body_sha256,
        "last_api": last.api,
        "last_version": last.version,
    }))
}

fn header_str(h: &HeaderMap, name: impl axum::http::header::AsHeaderName) -> String {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

fn json_response(status: StatusCode, body: String) -> Response {
    let mut r = (status, body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=UTF-8"),
    );
    r
}

fn error_response(dialect: Dialect, status: u16, code: &str, id: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut r = json_response(
        status,
        render::error_body(dialect, status.as_u16(), code, id),
    );
    if dialect == Dialect::Anthropic && status == StatusCode::TOO_MANY_REQUESTS {
        r.headers_mut()
            .insert("retry-after-ms", HeaderValue::from_static("3000"));
    }
    r
}

async fn respond(
    State(m): State<Arc<Mock>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    dialect: Dialect,
    version: Version,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    m.stats.requests.fetch_add(1, Ordering::Relaxed);
    if let Ok(mut peers) = m.stats.peers.lock() {
        peers.insert(peer);
    }
    let key = {
        let auth = header_str(&headers, header::AUTHORIZATION);
        let x_api_key = header_str(&headers, "x-api-key");
        if let Ok(mut last) = m.stats.last.lock() {
            *last = Last {
                authorization: auth.clone(),
                x_api_key: x_api_key.clone(),
                anthropic_version: header_str(&headers, "anthropic-version"),
                body_sha256: hex::encode(Sha256::digest(&body)),
                api: dialect.as_str(),
                version: match version {
                    Version::HTTP_2 => "HTTP/2.0",
                    Version::HTTP_11 => "HTTP/1.1",
                    _ => "other",
                },
            };
        }
        auth.strip_prefix("Bearer ")
            .map(str::to_string)
            .unwrap_or(x_api_key)
    };
    let id = render::new_id();
    if key.is_empty() {
        return error_response(dialect, 401, "1001", &id);
    }
    if key.starts_with("bad") {
        return error_response(dialect, 401, "1002", &id);
    }
    let req: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(_) => return error_response(dialect, 400, "1214", &id),
    };
    let mut faults = Faults::default();
    let specs = [
        Some(header_str(&headers, "x-mock-fault")),
        req.get("mock_fault")
            .and_then(Value::as_str)
            .map(str::to_string),
        key.strip_prefix("fault-").map(str::to_string),
        m.options.fault.clone(),
    ];
    for spec in specs.into_iter().flatten() {
        if let Err(e) = faults.add(&spec) {
            return json_response(
                StatusCode::BAD_REQUEST,
                json!({"error": {"code": "1214", "message": e}}).to_string(),
            );
        }
    }
    let slot = match faults.concurrency {
        Some(limit) => match KeySlot::take(&m, &key, limit) {
            Some(slot) => Some(slot),
            None => return error_response(dialect, 429, "1302", &id),
        },
        None => None,
    };
    let delay = faults
        .first_byte_delay
        .unwrap_or(m.options.first_byte_delay);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let model = req["model"].as_str().unwrap_or_default();
    if let Some((status, code)) = &faults.error {
        if faults.error_model.as_deref().is_none_or(|m| m == model) {
            return error_response(dialect, *status, code, &id);
        }
    }
    if !(model.starts_with("glm-") || model.starts_with("claude-")) {
        return error_response(dialect, 400, "1211", &id);
    }
    if faults.empty_200 {
        return json_response(StatusCode::OK, String::new());
    }
    if faults.garbage_200 {
        return json_response(
            StatusCode::OK,
            "<html><body>502 Bad Gateway</body></html>".into(),
        );
    }
    let plan = plan::build(dialect, &req, body.len(), m.options.chunks);
    let created = chrono::Utc::now().timestamp();
    if req["stream"] != true {
        let text = match dialect {
            Dialect::OpenAi => render::openai_json(&plan, &id, created),
            Dialect::Anthropic => render::anthropic_json(&plan, &id),
        };
        if faults.drop_after.is_some() {
            let half = Bytes::from(text).slice(..10);
            let parts =
                futures_util::stream::iter([Ok(half)]).chain(futures_util::stream::once(async {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Err(std::io::Error::other("mock: dropped"))
                }));
            let mut r = Response::new(Body::from_stream(parts));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            return r;
        }
        return json_response(StatusCode::OK, text);
    }
    let events = match dialect {
        Dialect::OpenAi => render::openai_events(&plan, &id, created),
        Dialect::Anthropic => render::anthropic_events(&plan, &id),
    };
    let drop_at = faults.drop_after.map(|n| n.unwrap_or(events.len() / 2));
    let pace = Pace {
        chunks: faults.chunk_delay.unwrap_or(m.options.chunk_delay),
        end: faults.end_delay.unwrap_or_default(),
    };
    let mut r = Response::new(Body::from_stream(event_stream(
        m.clone(),
        events,
        pace,
        drop_at,
        slot,
    )));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream;charset=UTF-8"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// Counts a stream as cancelled if it is dropped before its last event was sent.
struct StreamGuard {
    mock: Arc<Mock>,
    done: bool,
    _slot: Option<KeySlot>,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.mock.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
        let counter = if self.done {
            &self.mock.stats.streams_completed
        } else {
            &self.mock.stats.streams_cancelled
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// How a stream's events are spaced: between events, and after the last one before the
/// body ends.
#[derive(Clone, Copy)]
struct Pace {
    chunks: Duration,
    end: Duration,
}

fn event_stream(
    mock: Arc<Mock>,
    events: Vec<Bytes>,
    pace: Pace,
    drop_at: Option<usize>,
    slot: Option<KeySlot>,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    mock.stats.in_flight.fetch_add(1, Ordering::Relaxed);
    let guard = StreamGuard {
        mock,
        done: false,
        _slot: slot,
    };
    futures_util::stream::unfold(
        (events.into_iter().enumerate(), guard),
        move |(mut it, mut guard)| async move {
            let Some((i, ev)) = it.next() else {
                if !pace.end.is_zero() {
                    tokio::time::sleep(pace.end).await;
                }
                return None;
            };
            if i > 0 && !pace.chunks.is_zero() {
                tokio::time::sleep(pace.chunks).await;
            }
            if drop_at == Some(i) {
                // Let what was sent reach the wire first, as on a real connection that dies.
                tokio::time::sleep(Duration::from_millis(50)).await;
                // Ending the body with an error makes the server reset the connection.
                return Some((
                    Err(std::io::Error::other("mock: dropped mid-stream")),
                    (it, guard),
                ));
            }
            if it.len() == 0 {
                guard.done = true;
            }
            Some((Ok(ev), (it, guard)))
        },
    )
}
