//! The HTTP client for upstream calls: HTTP/1.1 connections over TCP or rustls, kept alive
//! in a small pool, with requests built from URIs parsed once at configuration time; or
//! streams of a few shared HTTP/2 connections (the `h2` crate), where the upstream chooses
//! `h2` by ALPN (`upstream.http2 = "auto"`, the default) or always (`true`).
//!
//! Each HTTP/1.1 connection is driven by the task that reads its answer, not by a task of
//! its own: when the answer's body is polled, the connection decodes what it has already
//! read. A burst of events that arrived in one read is thus handed over in one pass and
//! leaves in one write, where a spawned connection task hands over one chunk per wake-up.
//! When the answer ends, the connection goes back to the pool; when the reader drops it
//! early (the client went away), the connection closes, which cancels the upstream request.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::http::uri::{Authority, Scheme};
use axum::http::{header, HeaderValue, Method, Request, Response, StatusCode, Uri};
use bytes::{Bytes, BytesMut};
use futures_util::future::{ready, Either, FutureExt as _};
use futures_util::{Stream, StreamExt};
use http_body_util::Full;
use hyper::body::Body as _;
use hyper::body::Incoming;
use hyper::client::conn::{http1, TrySendError};
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::{Connection as _, HttpConnector};
use hyper_util::rt::TokioIo;
use std::sync::atomic::{AtomicUsize, Ordering};
use tower_service::Service;

use crate::config::UpstreamHttp;

const USER_AGENT: &str = concat!("glmgate/", env!("CARGO_PKG_VERSION"));
/// Idle connections older than this are closed rather than reused.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
const MAX_IDLE_PER_ORIGIN: usize = 1024;

type Io = MaybeHttpsStream<TokioIo<tokio::net::TcpStream>>;
type Conn = http1::Connection<Io, Full<Bytes>>;
type Sender = http1::SendRequest<Full<Bytes>>;

/// One upstream connection: its request handle and the connection state machine. Kept
/// boxed: the state machine is large (over 1.5 KB), and a connection moves from the pool to
/// the request, into the answer's body and back, which would copy it each time.
struct Link {
    sender: Sender,
    conn: Conn,
}

impl Link {
    /// Lets the connection make progress; ready once it has ended.
    fn poll_conn(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), hyper::Error>> {
        Pin::new(&mut self.conn).poll(cx)
    }
}

struct Idle {
    link: Box<Link>,
    since: Instant,
}

/// An HTTP/2 connection, shared by the requests of one serving thread to one origin. It is
/// listed as soon as it starts connecting, so that requests arriving meanwhile wait for it
/// (up to its stream limit) rather than each opening a connection of its own.
struct Shared {
    conn: Connecting,
    load: Arc<Load>,
    /// When a stream last started on it: one with none open for [`IDLE_TIMEOUT`] is closed.
    used: Instant,
}

/// The HTTP/2 side of one origin, as one serving thread sees it.
#[derive(Default)]
struct Origin {
    conns: Vec<Shared>,
    /// With `"auto"`: when the origin last chose HTTP/1.1 by ALPN. For [`ASK_AGAIN_AFTER`]
    /// after, its requests go over HTTP/1.1 without asking again.
    chose_http1: Option<Instant>,
}

/// A connection being opened, or opened; every request waiting for it gets the one result.
type Connecting = futures_util::future::Shared<futures_util::future::BoxFuture<'static, Opened>>;

/// What opening an HTTP/2 connection came to.
#[derive(Clone)]
enum Opened {
    H2(Sender2),
    /// The TLS upstream chose HTTP/1.1 by ALPN (with `upstream.http2 = "auto"`): the
    /// connection went to the HTTP/1.1 pool, and the requests waiting go that way.
    Http1,
    /// Why the connection could not be opened.
    Failed(Arc<str>),
}

impl Shared {
    /// Whether new streams can go on this connection. h2 refuses them, as an error from
    /// `poll_ready`, once the connection has ended, and as soon as the server has begun
    /// shutting it down (GOAWAY), though it runs on until its open streams end (minutes,
    /// for a long answer). A fresh handle has no stream pending, so it never waits.
    fn usable(&self) -> bool {
        match self.conn.peek() {
            None => true,
            Some(Opened::H2(sender)) => {
                let mut noop = Context::from_waker(std::task::Waker::noop());
                matches!(sender.clone().poll_ready(&mut noop), Poll::Ready(Ok(())))
            }
            Some(Opened::Http1 | Opened::Failed(_)) => false,
        }
    }
}

/// Streams open on an HTTP/2 connection, and how many it may carry: the server's
/// `SETTINGS_MAX_CONCURRENT_STREAMS`, capped at [`MAX_STREAMS_PER_CONNECTION`].
struct Load {
    open: AtomicUsize,
    limit: AtomicUsize,
}

impl Load {
    fn has_room(&self) -> bool {
        self.open.load(Ordering::Relaxed) < self.limit.load(Ordering::Relaxed)
    }
}

/// A stream's place on its HTTP/2 connection, given back when the answer is dropped.
struct Slot(Arc<Load>);

impl Slot {
    fn take(load: &Arc<Load>) -> Slot {
        load.open.fetch_add(1, Ordering::Relaxed);
        Slot(load.clone())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Streams one HTTP/2 connection carries at most; past it (or past the server's own limit)
/// a new connection is opened rather than queueing requests behind busy streams.
const MAX_STREAMS_PER_CONNECTION: usize = 100;

/// An HTTP/2 connection's request handle. The `h2` crate is used directly, not through
/// hyper: hyper runs each request as two tasks of its own (sending the body, awaiting the
/// answer), each sized for its largest task kind, 2.7 KB; with `h2` a stream waiting for its
/// answer is a handle of a few words in the request's own future.
type Sender2 = h2::client::SendRequest<Bytes>;

/// Flow-control windows offered to an HTTP/2 upstream (RFC 9113 §6.9.2), as hyper's client
/// sets them: the 64 KB default would hold a long answer back at each round trip.
const H2_STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const H2_CONNECTION_WINDOW: u32 = 5 * 1024 * 1024;

/// With `"auto"`, how long an origin that chose HTTP/1.1 is taken at its word before its
/// next new connection offers `h2` again (a server behind a load balancer may change).
const ASK_AGAIN_AFTER: Duration = Duration::from_secs(600);

/// How an HTTP/2 connection is checked for life: a PING `every` so long, and the connection
/// dropped if its PONG is not back within `timeout`. Without it, a connection whose peer
/// vanished without a word would take every new stream until TCP gave up, many minutes on.
#[derive(Clone, Copy)]
struct Pings {
    every: Duration,
    timeout: Duration,
}

impl Pings {
    const EVERY_20_S: Pings = Pings {
        every: Duration::from_secs(20),
        timeout: Duration::from_secs(20),
    };

    /// Pings through `pong` until the connection ends, or until a PING goes unanswered:
    /// then it stops `driving`, the connection's task, which drops the connection (its
    /// open streams fail, and new requests go on another).
    async fn watch(self, pong: Option<h2::PingPong>, driving: tokio::task::AbortHandle) {
        let Some(mut pong) = pong else {
            return;
        };
        loop {
            tokio::time::sleep(self.every).await;
            match tokio::time::timeout(self.timeout, pong.ping(h2::Ping::opaque())).await {
                Ok(Ok(_)) => {}
                // The connection has ended.
                Ok(Err(_)) => return,
                Err(_) => {
                    tracing::warn!(
                        timeout_ms = self.timeout.as_millis() as u64,
                        "an upstream HTTP/2 connection answered no PING; closing it"
                    );
                    driving.abort();
                    return;
                }
            }
        }
    }
}

/// Connects to `uri`, TCP and (for `https`) TLS, within `within`: a server that accepts and
/// then stalls the handshake would otherwise hold the request, and over HTTP/2 every
/// request waiting for the same connection, until the first-byte timeout.
async fn open(
    mut connector: HttpsConnector<HttpConnector>,
    uri: Uri,
    within: Duration,
) -> Result<Io, Arc<str>> {
    match tokio::time::timeout(within, connector.call(uri)).await {
        Ok(Ok(io)) => Ok(io),
        Ok(Err(e)) => {
            let mut why = with_causes(&*e);
            if no_protocol_in_common(&*e) {
                why.push_str(
                    " (the upstream accepts none of the protocols offered by ALPN; with \
                     `upstream.http2 = true` that is `h2` alone, so it does not speak \
                     HTTP/2: `\"auto\"` speaks what it chooses)",
                );
            }
            Err(why.into())
        }
        Err(_) => Err(format!("not connected within {within:?} (TCP and TLS)").into()),
    }
}

/// Whether a TLS handshake failed because the server accepts none of the protocols the
/// client offered by ALPN (RFC 7301's `no_application_protocol` alert). The connector
/// carries rustls's error inside `io::Error`s, whose `source` skips the error they wrap.
fn no_protocol_in_common(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if let Some(tls) = c.downcast_ref::<rustls::Error>() {
            return matches!(
                tls,
                rustls::Error::AlertReceived(rustls::AlertDescription::NoApplicationProtocol)
            );
        }
        cause = match c.downcast_ref::<std::io::Error>() {
            Some(io) => io
                .get_ref()
                .map(|inner| inner as &(dyn std::error::Error + 'static)),
            None => c.source(),
        };
    }
    false
}

struct Inner {
    /// For HTTP/1.1 connections (over TLS, no ALPN: the server's default is HTTP/1.1).
    http1: HttpsConnector<HttpConnector>,
    /// For HTTP/2 connections: ALPN offers `h2`, and with `Auto` `http/1.1` after it.
    http2: HttpsConnector<HttpConnector>,
    version: UpstreamHttp,
    /// For TCP and TLS together (the connector's own covers TCP only).
    connect_timeout: Duration,
    /// How HTTP/2 connections are checked for life.
    pings: Pings,
    /// HTTP/2 connections by serving thread and origin.
    shared: Mutex<Vec<(PoolKey, Origin)>>,
    /// Idle connections by serving thread and origin. A handful of entries (threads ×
    /// upstream origins), so a scan with cheap comparisons beats hashing an authority
    /// (which lowercases it byte by byte) twice per request.
    idle: Mutex<Vec<(PoolKey, VecDeque<Idle>)>>,
}

thread_local! {
    /// The serving thread this is (`usize::MAX` elsewhere): a connection is registered with
    /// one thread's event loop, so it is reused only on that thread.
    static WORKER: std::cell::Cell<usize> = const { std::cell::Cell::new(usize::MAX) };
}

/// Marks the current thread as serving thread `i`.
pub fn set_worker(i: usize) {
    WORKER.with(|w| w.set(i));
}

/// Where idle connections are kept: serving thread, scheme and authority (no allocation:
/// both parts are reference-counted).
type PoolKey = (usize, Option<Scheme>, Option<Authority>);

/// The list kept for `key` (by serving thread and origin), added if there is none yet.
fn entry<'a, T: Default>(lists: &'a mut Vec<(PoolKey, T)>, key: &PoolKey) -> &'a mut T {
    let i = match lists.iter().position(|(k, _)| k == key) {
        Some(i) => i,
        None => {
            lists.push((key.clone(), T::default()));
            lists.len() - 1
        }
    };
    &mut lists[i].1
}

fn pool_key(uri: &Uri) -> PoolKey {
    (
        WORKER.with(|w| w.get()),
        uri.scheme().cloned(),
        uri.authority().cloned(),
    )
}

/// An upstream URL, parsed once at configuration time, with the `Host` header that
/// every HTTP/1.1 request to it must carry (RFC 9112 §3.2): built here, not per request.
/// A `user:password@` in the URL is dropped here too: it belongs neither in `Host` nor in
/// HTTP/2's `:authority` (RFC 9113 §8.3.1).
#[derive(Clone, Debug)]
pub struct Endpoint {
    uri: Uri,
    host: HeaderValue,
}

impl Endpoint {
    /// `None` for a URI without a host.
    pub fn new(uri: Uri) -> Option<Endpoint> {
        let host = host_of(&uri)?;
        let uri = without_userinfo_in(&uri).unwrap_or(uri);
        Some(Endpoint { uri, host })
    }

    pub fn uri(&self) -> &Uri {
        &self.uri
    }
}

/// The `Host` value for `uri`: its authority without any `user:password@`.
fn host_of(uri: &Uri) -> Option<HeaderValue> {
    HeaderValue::from_str(host(uri)?).ok()
}

/// The URI's host and port, without any `user:password@`.
fn host(uri: &Uri) -> Option<&str> {
    uri.authority().map(without_userinfo)
}

/// `uri` without its `user:password@`, if it has one.
fn without_userinfo_in(uri: &Uri) -> Option<Uri> {
    let authority = uri.authority()?;
    if !authority.as_str().contains('@') {
        return None;
    }
    let mut parts = uri.clone().into_parts();
    parts.authority = without_userinfo(authority).parse().ok();
    Uri::from_parts(parts).ok()
}

/// An authority's host and port, without any `user:password@`.
fn without_userinfo(authority: &Authority) -> &str {
    let all = authority.as_str();
    all.rsplit('@').next().unwrap_or(all)
}

/// Puts the path and query alone in the request line (origin-form): hyper writes the URI as
/// it is, and a full URL there is what a proxy gets, not an origin server. Returns the full
/// URI it replaced (where to connect).
fn to_origin_form<B>(req: &mut Request<B>) -> Uri {
    let path = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| axum::http::uri::PathAndQuery::from_static("/"));
    std::mem::replace(req.uri_mut(), Uri::from(path))
}

#[derive(Clone)]
pub struct HttpClient {
    inner: Arc<Inner>,
}

/// Why an upstream call failed before its answer's head arrived. Its `Display` gives the
/// causes too, for the log; clients get [`describe`] instead.
#[derive(Debug)]
pub enum SendError {
    Connect(String),
    Http(BodyError),
}

/// A protocol failure (hyper's over HTTP/1.1, h2's over HTTP/2), before or after the head.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Connect(why) => f.write_str(why),
            SendError::Http(e) => f.write_str(&with_causes(&**e)),
        }
    }
}

/// An error followed by its causes: the connector's and hyper's errors name only what
/// failed ("tcp connect error"), their sources say why (a refused connection, a
/// certificate the upstream's TLS does not pass).
fn with_causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

/// Why an upstream call failed, in words safe to show a client: the kind and the host,
/// never the path, a key or the URL's `user:password@`.
pub fn describe(e: &SendError, uri: &Uri) -> String {
    let host = host(uri).unwrap_or("upstream");
    let kind = match e {
        SendError::Connect(_) => "could not connect to",
        SendError::Http(_) => "error talking to",
    };
    format!("{kind} {host}")
}

impl HttpClient {
    /// A client speaking `version` to the upstreams, over TLS trusting the Mozilla roots
    /// and the certificates in `ca_file` (PEM), if given.
    pub fn new(
        connect_timeout: Duration,
        version: UpstreamHttp,
        ca_file: Option<&std::path::Path>,
    ) -> anyhow::Result<HttpClient> {
        let roots = crate::config::upstream_roots(ca_file)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        let builder = || {
            hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(tls.clone())
                .https_or_http()
        };
        let http2 = match version {
            UpstreamHttp::Auto => builder().enable_all_versions(),
            _ => builder().enable_http2(),
        };
        Ok(HttpClient {
            inner: Arc::new(Inner {
                http1: builder().enable_http1().wrap_connector(http.clone()),
                http2: http2.wrap_connector(http),
                version,
                connect_timeout,
                pings: Pings::EVERY_20_S,
                shared: Mutex::new(Vec::new()),
                idle: Mutex::new(Vec::new()),
            }),
        })
    }

    /// Whether a request to `key`'s origin is offered to HTTP/2 (else it goes on an HTTP/1.1
    /// connection of its own): always with `true`, never with `false`; with `"auto"`, to a
    /// TLS origin (plain TCP offers no way to ask), which may hand it back for HTTP/1.1
    /// (see [`HttpClient::checkout_shared`]).
    fn goes_as_http2(&self, key: &PoolKey) -> bool {
        match self.inner.version {
            UpstreamHttp::Http1 => false,
            UpstreamHttp::Http2 => true,
            UpstreamHttp::Auto => key.1 == Some(Scheme::HTTPS),
        }
    }

    /// A request to `endpoint` with the gateway's user agent and the endpoint's `Host`;
    /// the caller adds the rest of the headers.
    pub fn request(method: Method, endpoint: &Endpoint, body: Bytes) -> Request<Bytes> {
        let mut req = Request::new(body);
        *req.method_mut() = method;
        *req.uri_mut() = endpoint.uri.clone();
        let h = req.headers_mut();
        h.insert(header::USER_AGENT, HeaderValue::from_static(USER_AGENT));
        h.insert(header::HOST, endpoint.host.clone());
        req
    }

    /// A live idle connection to the request's origin, if the pool has one.
    fn checkout(&self, key: &PoolKey) -> Option<Box<Link>> {
        let mut idle = self.inner.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.iter_mut().find(|(k, _)| k == key).map(|(_, l)| l)?;
        let mut noop = Context::from_waker(std::task::Waker::noop());
        while let Some(mut c) = list.pop_back() {
            if c.since.elapsed() > IDLE_TIMEOUT {
                continue;
            }
            // Polled first: a connection the server closed while idle is finished, and a
            // new one (pooled by `speak_http1_to`) becomes ready for a request only once
            // polled.
            if c.link.poll_conn(&mut noop).is_pending() && c.link.sender.is_ready() {
                return Some(c.link);
            }
        }
        None
    }

    fn checkin(&self, key: PoolKey, link: Box<Link>) {
        let mut idle = self.inner.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = entry(&mut idle, &key);
        // The most recently used are taken first, so the oldest sit at the front: expired
        // ones are closed here rather than kept until the list is drained.
        while list
            .front()
            .is_some_and(|c| c.since.elapsed() > IDLE_TIMEOUT)
        {
            list.pop_front();
        }
        if list.len() < MAX_IDLE_PER_ORIGIN {
            list.push_back(Idle {
                link,
                since: Instant::now(),
            });
        }
    }

    async fn connect(&self, uri: Uri) -> Result<Box<Link>, SendError> {
        let io = open(self.inner.http1.clone(), uri, self.inner.connect_timeout)
            .await
            .map_err(|why| SendError::Connect(why.to_string()))?;
        let (sender, conn) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|e| SendError::Http(e.into()))?;
        Ok(Box::new(Link { sender, conn }))
    }

    /// Sends a request made by [`HttpClient::request`] (which gives it its `Host`) and
    /// returns the answer's head; its body is read from the returned stream, which also
    /// drives the connection.
    ///
    /// Not an `async fn`: one would hold its own copy of the request next to the copy in
    /// the protocol's future, for as long as the answer is awaited.
    pub fn send(
        &self,
        req: Request<Bytes>,
    ) -> impl Future<Output = Result<Response<Driven>, SendError>> + Send + '_ {
        let key = pool_key(req.uri());
        if self.goes_as_http2(&key) {
            Either::Left(self.send_shared(&key, req).then(move |sent| match sent {
                Sent::Done(answer) => Either::Left(ready(answer)),
                // The origin chose HTTP/1.1 by ALPN.
                Sent::Unsent(req) => Either::Right(self.send_http1(key, req.map(Full::new))),
            }))
        } else {
            Either::Right(self.send_http1(key, req.map(Full::new)))
        }
    }

    /// [`HttpClient::send`] on an HTTP/1.1 connection of the pool, or a new one.
    ///
    /// Chained from combinators rather than written as an async block: each step's future
    /// then takes the place of the one before, where an async block would keep room for
    /// the request, and for a future moved into an `.await`, twice (1,136 → 816 bytes).
    fn send_http1(
        &self,
        key: PoolKey,
        mut req: Request<Full<Bytes>>,
    ) -> impl Future<Output = Result<Response<Driven>, SendError>> + Send + '_ {
        let target = to_origin_form(&mut req);
        let reused = match self.checkout(&key) {
            Some(conn) => Either::Left(self.exchange(key.clone(), conn, req).map(Sent::from)),
            None => Either::Right(ready(Sent::Unsent(req))),
        };
        reused.then(move |reused| match reused {
            Sent::Done(answer) => Either::Left(ready(answer)),
            Sent::Unsent(req) => Either::Right(self.send_on_new_connection(key, target, req)),
        })
    }

    /// Opens a connection to `target` and sends `req` on it. The connection's future is
    /// boxed: a new connection is the uncommon path, and that future is large.
    fn send_on_new_connection(
        &self,
        key: PoolKey,
        target: Uri,
        req: Request<Full<Bytes>>,
    ) -> impl Future<Output = Result<Response<Driven>, SendError>> + Send + '_ {
        Box::pin(self.connect(target)).then(move |link| match link {
            Ok(link) => Either::Left(
                self.exchange(key, link, req)
                    .map(|answer| answer.map_err(|e| SendError::Http(e.into_error().into()))),
            ),
            Err(e) => Either::Right(ready(Err(e))),
        })
    }

    /// A stream on an HTTP/2 connection to the request's origin, opening one if none has
    /// room; closed connections, and those idle too long, are let go on the way.
    /// `None` if the origin chose HTTP/1.1 less than [`ASK_AGAIN_AFTER`] ago.
    fn checkout_shared(&self, key: &PoolKey, uri: &Uri) -> Option<(Connecting, Slot)> {
        let mut shared = self.inner.shared.lock().unwrap_or_else(|e| e.into_inner());
        let origin = entry(&mut shared, key);
        let now = Instant::now();
        if origin
            .chose_http1
            .is_some_and(|at| now.duration_since(at) < ASK_AGAIN_AFTER)
        {
            return None;
        }
        let list = &mut origin.conns;
        list.retain(|c| {
            let open = c.load.open.load(Ordering::Relaxed);
            c.usable() && (open > 0 || now.duration_since(c.used) <= IDLE_TIMEOUT)
        });
        let c = match list.iter().position(|c| c.load.has_room()) {
            Some(i) => &mut list[i],
            None => {
                let load = Arc::new(Load {
                    open: AtomicUsize::new(0),
                    limit: AtomicUsize::new(MAX_STREAMS_PER_CONNECTION),
                });
                list.push(Shared {
                    conn: self.connect_shared(key.clone(), uri.clone(), load.clone()),
                    load,
                    used: now,
                });
                list.last_mut().expect("pushed")
            }
        };
        c.used = now;
        Some((c.conn.clone(), Slot::take(&c.load)))
    }

    /// Opens an HTTP/2 connection to `uri` when first awaited; its driving task runs on
    /// the serving thread that awaited it, and keeps `load`'s limit to the server's. With
    /// `"auto"`, a TLS server that chooses HTTP/1.1 gets an HTTP/1.1 connection instead,
    /// put in the pool under `key` for the first request that falls back.
    fn connect_shared(&self, key: PoolKey, uri: Uri, load: Arc<Load>) -> Connecting {
        let connector = self.inner.http2.clone();
        let fall_back = self.inner.version == UpstreamHttp::Auto;
        let (within, pings) = (self.inner.connect_timeout, self.inner.pings);
        // Not a strong reference: the pool holds this future until it has run.
        let client = Arc::downgrade(&self.inner);
        let connect = async move {
            let failed = |e: &(dyn std::error::Error + 'static)| Arc::<str>::from(with_causes(e));
            let io = open(connector, uri, within).await?;
            if fall_back && !io.connected().is_negotiated_h2() {
                let (sender, conn) = http1::Builder::new()
                    .handshake(io)
                    .await
                    .map_err(|e| failed(&e))?;
                if let Some(inner) = client.upgrade() {
                    HttpClient { inner }.speak_http1_to(key, Box::new(Link { sender, conn }));
                }
                return Ok(Opened::Http1);
            }
            let (sender, mut conn) = h2::client::Builder::new()
                .enable_push(false)
                .initial_window_size(H2_STREAM_WINDOW)
                .initial_connection_window_size(H2_CONNECTION_WINDOW)
                .handshake::<_, Bytes>(TokioIo::new(io))
                .await
                .map_err(|e| failed(&e))?;
            let pong = conn.ping_pong();
            let drive = std::future::poll_fn(move |cx| {
                let done = Pin::new(&mut conn).poll(cx);
                // The server's limit arrives in its SETTINGS, read as the connection runs.
                let allowed = conn.max_concurrent_send_streams();
                load.limit
                    .store(allowed.min(MAX_STREAMS_PER_CONNECTION), Ordering::Relaxed);
                if let Poll::Ready(Err(e)) = &done {
                    tracing::debug!(error = %e, "upstream HTTP/2 connection ended with an error");
                }
                done.map(|_| ())
            });
            // The watch is a task of its own, woken by its timer alone, so the connection's
            // task does no more work per frame than it did without it.
            let driving = tokio::spawn(drive);
            tokio::spawn(pings.watch(pong, driving.abort_handle()));
            Ok(Opened::H2(sender))
        }
        .map(|opened: Result<Opened, Arc<str>>| opened.unwrap_or_else(Opened::Failed));
        futures_util::FutureExt::shared(
            Box::pin(connect) as futures_util::future::BoxFuture<'static, _>
        )
    }

    /// Records that `key`'s origin chose HTTP/1.1, and pools `link`, its first connection.
    fn speak_http1_to(&self, key: PoolKey, link: Box<Link>) {
        {
            let mut shared = self.inner.shared.lock().unwrap_or_else(|e| e.into_inner());
            entry(&mut shared, &key).chose_http1 = Some(Instant::now());
        }
        tracing::info!(
            upstream = key.2.as_ref().map_or("upstream", Authority::as_str),
            "the upstream chose HTTP/1.1 by ALPN; its requests go over HTTP/1.1"
        );
        self.checkin(key, link);
    }

    /// Sends a request as a stream of a shared HTTP/2 connection (whose own task drives
    /// it); dropping the answer's body resets the stream, which cancels the upstream call.
    /// The request comes back unsent if the upstream chose HTTP/1.1 (with `"auto"`).
    ///
    /// Not an `async fn`, which would keep room for the request twice while the answer is
    /// awaited (as would any `async fn` taking it: see [`HttpClient::send`]).
    fn send_shared(
        &self,
        key: &PoolKey,
        req: Request<Bytes>,
    ) -> impl Future<Output = Sent<Bytes>> + Send + 'static {
        let Some((conn, slot)) = self.checkout_shared(key, req.uri()) else {
            return Either::Left(ready(Sent::Unsent(req)));
        };
        let opened = match conn.peek() {
            Some(opened) => Either::Left(ready(opened.clone())),
            None => Either::Right(conn),
        };
        Either::Right(opened.then(move |opened| match opened {
            Opened::H2(sender) => Either::Left(send_stream(sender, slot, req).map(Sent::Done)),
            Opened::Http1 => Either::Right(ready(Sent::Unsent(req))),
            Opened::Failed(why) => {
                Either::Right(ready(Sent::Done(Err(SendError::Connect(why.to_string())))))
            }
        }))
    }

    /// Sends `req` on `link` and awaits the answer's head, driving the connection meanwhile.
    /// Not an `async fn`: the request is handed to the connection before the future is
    /// made, so the future does not keep room for it.
    fn exchange(
        &self,
        key: PoolKey,
        mut link: Box<Link>,
        req: Request<Full<Bytes>>,
    ) -> impl Future<Output = Result<Response<Driven>, TrySendError<Request<Full<Bytes>>>>> + Send + '_
    {
        let answer = link.sender.try_send_request(req);
        async move {
            let mut answer = std::pin::pin!(answer);
            let mut conn_done = false;
            let head = std::future::poll_fn(|cx| {
                if let Poll::Ready(r) = answer.as_mut().poll(cx) {
                    return Poll::Ready(r);
                }
                if !conn_done && link.poll_conn(cx).is_ready() {
                    // The connection ended first: the answer now reports why (and hands the
                    // request back if it was never written).
                    conn_done = true;
                    return answer.as_mut().poll(cx);
                }
                Poll::Pending
            })
            .await?;
            let (parts, body) = head.into_parts();
            let upkeep = if conn_done {
                Upkeep::Done
            } else {
                Upkeep::Link {
                    link,
                    pool: self.clone(),
                    key,
                }
            };
            let driven = Driven {
                body: Answer::H1(body),
                upkeep,
            };
            Ok(Response::from_parts(parts, driven))
        }
    }

    /// Sends a request and reads its whole answer (up to 1 MiB), all within `timeout`:
    /// for the side calls (quota monitor, token counts), not for proxied traffic.
    pub async fn fetch(
        &self,
        req: Request<Bytes>,
        timeout: Duration,
    ) -> Result<(StatusCode, Bytes), String> {
        let uri = req.uri().clone();
        let call = async {
            let resp = self.send(req).await.map_err(|e| describe(&e, &uri))?;
            let status = resp.status();
            let mut body = resp.into_body();
            let mut buf = BytesMut::new();
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|_| "the answer was cut off".to_string())?;
                buf.extend_from_slice(&chunk);
                if buf.len() > 1 << 20 {
                    return Err("the answer is too large".to_string());
                }
            }
            Ok((status, buf.freeze()))
        };
        tokio::time::timeout(timeout, call)
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {} s", timeout.as_secs())))
    }
}

/// What a request came to on a connection that may turn out not to take it.
enum Sent<B> {
    /// An answer, or a failure to pass on.
    Done(Result<Response<Driven>, SendError>),
    /// The request, handed back unsent: a pooled HTTP/1.1 connection had been closed, or
    /// the upstream chose HTTP/1.1 over HTTP/2.
    Unsent(Request<B>),
}

impl From<Result<Response<Driven>, TrySendError<Request<Full<Bytes>>>>> for Sent<Full<Bytes>> {
    fn from(answer: Result<Response<Driven>, TrySendError<Request<Full<Bytes>>>>) -> Self {
        match answer {
            Ok(resp) => Sent::Done(Ok(resp)),
            // A kept-alive connection the upstream had closed: the request was never
            // written, hyper hands it back, and it goes on a new connection.
            Err(mut e) => match e.take_message() {
                Some(unsent) => Sent::Unsent(unsent),
                None => Sent::Done(Err(SendError::Http(e.into_error().into()))),
            },
        }
    }
}

/// Sends `req` as a stream on `sender`'s HTTP/2 connection and awaits the answer's head;
/// `slot` is the stream's place, kept with the answer's body.
fn send_stream(
    sender: Sender2,
    slot: Slot,
    req: Request<Bytes>,
) -> impl Future<Output = Result<Response<Driven>, SendError>> + Send + 'static {
    let (mut head, body) = req.into_parts();
    // The origin goes in `:authority` (from the endpoint, without any `user:password@`);
    // RFC 9113 §8.3.1 asks clients not to repeat it.
    head.headers.remove(header::HOST);
    // As HTTP/1.1 frames it: a length for any body, and none for an empty GET or HEAD.
    if !body.is_empty() || !matches!(head.method, Method::GET | Method::HEAD) {
        head.headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    }
    async move {
        let http = |e: h2::Error| SendError::Http(e.into());
        let answer = {
            let mut sender = sender.ready().await.map_err(http)?;
            let last = body.is_empty();
            let (answer, mut stream) = sender
                .send_request(Request::from_parts(head, ()), last)
                .map_err(http)?;
            if !last {
                // Queued by the connection, sent as the flow-control window allows.
                stream.send_data(body, true).map_err(http)?;
            }
            answer
        };
        let (parts, body) = answer.await.map_err(http)?.into_parts();
        let driven = Driven {
            body: Answer::H2(body),
            upkeep: Upkeep::Stream { _slot: slot },
        };
        Ok(Response::from_parts(parts, driven))
    }
}

/// An answer's body that drives its connection while it is read, and returns the
/// connection to the pool when it ends.
pub struct Driven {
    body: Answer,
    upkeep: Upkeep,
}

/// The body as the protocol delivers it.
enum Answer {
    H1(Incoming),
    /// Its flow-control window is given back as each frame is read.
    H2(h2::RecvStream),
}

impl Answer {
    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, BodyError>>> {
        match self {
            Answer::H1(body) => loop {
                return match std::task::ready!(Pin::new(&mut *body).poll_frame(cx)) {
                    Some(Ok(frame)) => match frame.into_data() {
                        Ok(data) => Poll::Ready(Some(Ok(data))),
                        Err(_trailers) => continue,
                    },
                    Some(Err(e)) => Poll::Ready(Some(Err(e.into()))),
                    None => Poll::Ready(None),
                };
            },
            Answer::H2(body) => {
                let polled = std::task::ready!(body.poll_data(cx));
                if let Some(Ok(data)) = &polled {
                    // Fails only once the stream is closed, when it no longer matters.
                    let _ = body.flow_control().release_capacity(data.len());
                }
                Poll::Ready(polled.map(|r| r.map_err(Into::into)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Answer::H1(body) => body.is_end_stream(),
            Answer::H2(body) => body.is_end_stream(),
        }
    }
}

/// What an answer's body holds of its connection while it is read.
enum Upkeep {
    /// An HTTP/1.1 connection of its own, driven by the reader and put back in the pool
    /// (under `key`) when the answer ends.
    Link {
        link: Box<Link>,
        pool: HttpClient,
        key: PoolKey,
    },
    /// A stream's place on a shared HTTP/2 connection, given back when the answer ends.
    Stream { _slot: Slot },
    /// Nothing: the connection has ended, or gone back to the pool.
    Done,
}

impl Driven {
    /// The next data frame: from the body if it has one, else after letting the connection
    /// decode what it has already read (once per call; it wakes this task when it has more).
    fn next_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, BodyError>>> {
        let mut drove = false;
        loop {
            match self.body.poll_data(cx) {
                Poll::Ready(Some(Ok(data))) => return Poll::Ready(Some(Ok(data))),
                Poll::Ready(Some(Err(e))) => {
                    self.upkeep = Upkeep::Done;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending if drove => return Poll::Pending,
                Poll::Pending => {}
            }
            let Upkeep::Link { link, .. } = &mut self.upkeep else {
                return Poll::Pending;
            };
            match link.poll_conn(cx) {
                Poll::Pending => drove = true,
                // The connection ended: the body now holds its end (or its error).
                Poll::Ready(r) => {
                    self.upkeep = Upkeep::Done;
                    if let Err(e) = r {
                        return Poll::Ready(Some(Err(e.into())));
                    }
                }
            }
        }
    }

    /// The answer is complete: an HTTP/1.1 connection goes back to the pool if it can take
    /// another request; an HTTP/2 stream's place is given back.
    fn release(&mut self, cx: &mut Context<'_>) {
        let upkeep = std::mem::replace(&mut self.upkeep, Upkeep::Done);
        if let Upkeep::Link {
            mut link,
            pool,
            key,
        } = upkeep
        {
            if link.poll_conn(cx).is_pending() && link.sender.is_ready() {
                pool.checkin(key, link);
            }
        }
    }
}

impl Stream for Driven {
    type Item = Result<Bytes, BodyError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let next = this.next_data(cx);
        // A body of known length is over with its last bytes (the reader may not poll
        // again once it has them all), so the connection goes back then.
        if matches!(next, Poll::Ready(None)) || this.body.is_end_stream() {
            this.release(cx);
        }
        next
    }
}

/// A header value holding a secret, marked sensitive. Config validation refuses keys that
/// are not valid header values; one that slipped through becomes an empty value.
pub fn secret_value(s: &str) -> HeaderValue {
    let mut v = HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static(""));
    v.set_sensitive(true);
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn a_failure_shown_to_a_client_names_the_host_only_and_the_log_gets_the_causes() {
        let uri: Uri = "https://user:secret@api.example.com:8443/api/v4/chat"
            .parse()
            .expect("uri");
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let e = SendError::Connect(with_causes(&Wrapped("tcp connect error", refused)));
        assert_eq!(
            describe(&e, &uri),
            "could not connect to api.example.com:8443"
        );
        assert_eq!(e.to_string(), "tcp connect error: refused");
    }

    /// An error that names what failed and keeps why as its source, as the connector's do.
    #[derive(Debug)]
    struct Wrapped(&'static str, std::io::Error);

    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.1)
        }
    }

    #[test]
    fn an_origin_gets_the_path_in_the_request_line_and_a_host_header() {
        let uri: Uri = "https://user:secret@api.example.com:8443/api/v4/chat?x=1"
            .parse()
            .expect("uri");
        let endpoint = Endpoint::new(uri).expect("endpoint");
        // The `user:password@` is gone from the URL too, wherever it is shown or sent.
        assert_eq!(
            endpoint.uri().to_string(),
            "https://api.example.com:8443/api/v4/chat?x=1"
        );
        let mut req = HttpClient::request(Method::POST, &endpoint, Bytes::new());
        assert_eq!(req.headers()[header::HOST], "api.example.com:8443");
        let full = to_origin_form(&mut req);
        assert_eq!(req.uri().to_string(), "/api/v4/chat?x=1");
        assert_eq!(full.authority().map(|a| a.host()), Some("api.example.com"));
        assert!(Endpoint::new(Uri::from_static("/no/host")).is_none());
    }

    /// A listener on a free loopback port, and its address.
    async fn listen() -> (tokio::net::TcpListener, std::net::SocketAddr) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        (listener, addr)
    }

    /// A client speaking `version` and a plain-HTTP endpoint on `addr`.
    fn client_of(addr: std::net::SocketAddr, version: UpstreamHttp) -> (HttpClient, Endpoint) {
        let client = HttpClient::new(Duration::from_secs(5), version, None).expect("client");
        let uri: Uri = format!("http://{addr}/api/v4/chat").parse().expect("uri");
        (client, Endpoint::new(uri).expect("endpoint"))
    }

    /// A certificate authority of the test's own and a server certificate for 127.0.0.1
    /// signed by it (in a temporary directory), a client (with `"auto"`) trusting the CA
    /// through `ca_file`, and an `https` endpoint on `addr`.
    struct Tls {
        certs: crate::test_certs::Certs,
        client: HttpClient,
        endpoint: Endpoint,
        _dir: tempfile::TempDir,
    }

    impl Tls {
        fn new(addr: std::net::SocketAddr) -> Tls {
            let dir = tempfile::tempdir().expect("tempdir");
            let certs = crate::test_certs::write(dir.path());
            let uri: Uri = format!("https://{addr}/api/v4/chat").parse().expect("uri");
            Tls {
                client: Tls::client(&certs, Duration::from_secs(5)),
                certs,
                endpoint: Endpoint::new(uri).expect("endpoint"),
                _dir: dir,
            }
        }

        /// A client with `"auto"` and this connect timeout, trusting the CA.
        fn client(certs: &crate::test_certs::Certs, connect_timeout: Duration) -> HttpClient {
            HttpClient::new(connect_timeout, UpstreamHttp::Auto, Some(&certs.ca)).expect("client")
        }

        /// Serves TLS on `listener` as the mock's `--tls-cert` does, choosing the first of
        /// `alpn` that the client offers (none if it offers none of them), and hands each
        /// connection, with its number, to `each`. Reports the protocols each client
        /// offered by ALPN, in the order the connections came.
        fn serve<F, Fut>(
            &self,
            listener: tokio::net::TcpListener,
            alpn: &[&str],
            each: F,
        ) -> tokio::sync::mpsc::UnboundedReceiver<Vec<Vec<u8>>>
        where
            F: Fn(tokio_rustls::server::TlsStream<tokio::net::TcpStream>, usize) -> Fut
                + Send
                + 'static,
            Fut: Future<Output = ()> + Send + 'static,
        {
            let config = crate::mock::tls_config(&self.certs.cert, &self.certs.key, alpn);
            let config = Arc::new(config.expect("server config"));
            let (offers, offered) = tokio::sync::mpsc::unbounded_channel();
            tokio::spawn(async move {
                for n in 0.. {
                    let (tcp, _) = listener.accept().await.expect("accept");
                    let start = tokio_rustls::LazyConfigAcceptor::new(
                        rustls::server::Acceptor::default(),
                        tcp,
                    )
                    .await
                    .expect("client hello");
                    let alpn = start
                        .client_hello()
                        .alpn()
                        .map(|protocols| protocols.map(<[u8]>::to_vec).collect())
                        .unwrap_or_default();
                    let _ = offers.send(alpn);
                    // A failed handshake (no protocol in common) serves nothing.
                    if let Ok(stream) = start.into_stream(config.clone()).await {
                        tokio::spawn(each(stream, n));
                    }
                }
            });
            offered
        }

        fn request(&self) -> Request<Bytes> {
            HttpClient::request(Method::POST, &self.endpoint, Bytes::from_static(b"{}"))
        }
    }

    /// All of an answer's body, as text.
    async fn text_of(resp: Response<Driven>) -> String {
        let mut body = resp.into_body();
        let mut text = Vec::new();
        while let Some(chunk) = body.next().await {
            text.extend_from_slice(&chunk.expect("chunk"));
        }
        String::from_utf8(text).expect("utf-8")
    }

    const BOTH: &[&[u8]] = &[b"h2", b"http/1.1"];

    /// `work`'s output; the test fails, rather than hangs, if it never comes.
    async fn bounded<T>(work: impl Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(30), work)
            .await
            .expect("still waiting after 30 s")
    }

    /// A server that accepts TCP and never answers the TLS handshake: each request fails
    /// within the connect timeout, where it used to wait (with every other request to the
    /// origin, on the one HTTP/2 connection being opened) for the first-byte timeout.
    #[tokio::test]
    async fn a_stalled_tls_handshake_fails_within_the_connect_timeout() {
        let (listener, addr) = listen().await;
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((tcp, _)) = listener.accept().await {
                held.push(tcp);
            }
        });
        let tls = Tls::new(addr);
        let client = Tls::client(&tls.certs, Duration::from_millis(200));
        for _ in 0..2 {
            let Err(SendError::Connect(why)) = bounded(client.send(tls.request())).await else {
                panic!("an answer from a server that never finished its handshake");
            };
            assert!(why.contains("not connected within 200ms"), "{why}");
        }
    }

    /// `true` in front of a TLS upstream without HTTP/2: the handshake fails (no protocol in
    /// common by ALPN), and the reason given to the log says so in words, not only as
    /// rustls's alert name. Clients get "could not connect to HOST" ([`describe`]).
    #[tokio::test]
    async fn http2_forced_on_a_tls_upstream_without_it_fails_with_the_reason() {
        let (listener, addr) = listen().await;
        let tls = Tls::new(addr);
        let mut offered = tls.serve(listener, &["http/1.1"], |_, _| async {});
        let client = HttpClient::new(
            Duration::from_secs(5),
            UpstreamHttp::Http2,
            Some(&tls.certs.ca),
        )
        .expect("client");
        let Err(SendError::Connect(why)) = bounded(client.send(tls.request())).await else {
            panic!("an answer over a handshake with no protocol in common");
        };
        assert_eq!(offered.recv().await.expect("a connection"), [b"h2"]);
        assert!(why.contains("NoApplicationProtocol"), "{why}");
        assert!(why.contains("does not speak HTTP/2"), "{why}");
    }

    /// An HTTP/2 connection whose server stops answering (no PONG) is dropped: the request
    /// waiting on it fails instead of waiting for ever, and the next goes on a new one.
    #[tokio::test]
    async fn an_http2_connection_that_answers_no_ping_is_dropped() {
        let (listener, addr) = listen().await;
        let (freeze, frozen) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let mut frozen = Some(frozen);
            for n in 0.. {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let mut frozen = frozen.take();
                tokio::spawn(async move {
                    let mut conn = h2::server::handshake(tcp).await.expect("handshake");
                    loop {
                        let stream = match &mut frozen {
                            // The first connection stops reading when told to: no PONG,
                            // no answer, its socket left open.
                            Some(f) => tokio::select! {
                                stream = conn.accept() => stream,
                                _ = f => return std::future::pending().await,
                            },
                            None => conn.accept().await,
                        };
                        let Some(Ok((_req, mut respond))) = stream else {
                            return;
                        };
                        let mut out = respond
                            .send_response(Response::new(()), false)
                            .expect("head");
                        let text = format!("on connection {n}");
                        out.send_data(Bytes::from(text), true).expect("data");
                    }
                });
            }
        });
        let (mut client, endpoint) = client_of(addr, UpstreamHttp::Http2);
        Arc::get_mut(&mut client.inner)
            .expect("the only handle")
            .pings = Pings {
            every: Duration::from_millis(100),
            timeout: Duration::from_millis(100),
        };
        let request = || HttpClient::request(Method::POST, &endpoint, Bytes::from_static(b"{}"));
        let first = bounded(client.send(request())).await.expect("an answer");
        assert_eq!(bounded(text_of(first)).await, "on connection 0");
        freeze.send(()).expect("server");
        // On the frozen connection (unless it is already dropped): it must end either way.
        let second = bounded(async {
            match client.send(request()).await {
                Ok(answer) => Some(text_of(answer).await),
                Err(_) => None,
            }
        })
        .await;
        assert_ne!(second.as_deref(), Some("on connection 0"));
        let third = bounded(client.send(request())).await.expect("an answer");
        assert_eq!(bounded(text_of(third)).await, "on connection 1");
    }

    /// With `"auto"`, a TLS upstream that chooses `h2` is spoken to in HTTP/2, requests
    /// sharing its connection.
    #[tokio::test]
    async fn auto_speaks_http2_to_a_tls_upstream_that_chooses_it() {
        let (listener, addr) = listen().await;
        let tls = Tls::new(addr);
        let mut offered = tls.serve(listener, &["h2"], |stream, _| async move {
            let mut conn = h2::server::handshake(stream).await.expect("handshake");
            while let Some(Ok((_req, mut respond))) = conn.accept().await {
                let mut out = respond
                    .send_response(Response::new(()), false)
                    .expect("head");
                out.send_data(Bytes::from_static(b"over h2"), true)
                    .expect("data");
            }
        });
        let (a, b) = bounded(async {
            tokio::join!(
                tls.client.send(tls.request()),
                tls.client.send(tls.request())
            )
        })
        .await;
        assert_eq!(text_of(a.expect("an answer")).await, "over h2");
        assert_eq!(text_of(b.expect("an answer")).await, "over h2");
        let c = tls.client.send(tls.request()).await.expect("an answer");
        assert_eq!(text_of(c).await, "over h2");
        // One connection for the three, which offered both protocols.
        assert_eq!(offered.recv().await.expect("a connection"), BOTH);
        assert!(
            offered.try_recv().is_err(),
            "a second connection was opened"
        );
    }

    /// With `"auto"`, a TLS upstream that chooses HTTP/1.1 gets HTTP/1.1: the requests that
    /// waited for the first connection go on it and on new ones, which no longer ask for
    /// `h2`, and later requests reuse them.
    #[tokio::test]
    async fn auto_falls_back_to_http1_when_a_tls_upstream_chooses_it() {
        use hyper::service::service_fn;
        let (listener, addr) = listen().await;
        let tls = Tls::new(addr);
        let mut offered = tls.serve(listener, &["http/1.1"], |stream, n| async move {
            let answer = service_fn(move |req: Request<Incoming>| async move {
                let line = format!("{:?} on connection {n}", req.version());
                Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(line))))
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), answer)
                .await;
        });
        let (a, b) = bounded(async {
            tokio::join!(
                tls.client.send(tls.request()),
                tls.client.send(tls.request())
            )
        })
        .await;
        let mut served = [
            text_of(a.expect("an answer")).await,
            text_of(b.expect("an answer")).await,
        ];
        // One on the first connection (the one that asked), one on a new one.
        served.sort();
        assert_eq!(
            served,
            ["HTTP/1.1 on connection 0", "HTTP/1.1 on connection 1"]
        );
        assert_eq!(offered.recv().await.expect("the first connection"), BOTH);
        let none: Vec<Vec<u8>> = Vec::new();
        assert_eq!(offered.recv().await.expect("the second"), none);
        let c = tls.client.send(tls.request()).await.expect("an answer");
        assert!(text_of(c).await.starts_with("HTTP/1.1 on connection "));
        assert!(offered.try_recv().is_err(), "a third connection was opened");
    }

    /// An answer larger than both flow-control windows offered to the server arrives whole:
    /// the client gives the window back as it reads, or the server would stall at 5 MB.
    /// Then a GET on the same connection goes without a length, as over HTTP/1.1.
    #[tokio::test]
    async fn an_http2_answer_larger_than_the_windows_arrives_whole() {
        const SIZE: usize = 3 * H2_CONNECTION_WINDOW as usize;
        let (listener, addr) = listen().await;
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.expect("accept");
            let mut conn = h2::server::handshake(tcp).await.expect("handshake");
            let (streams, mut incoming) = tokio::sync::mpsc::unbounded_channel();
            tokio::spawn(async move {
                while let Some(Ok(stream)) = conn.accept().await {
                    let _ = streams.send(stream);
                }
            });
            let mut seen = Vec::new();
            for size in [SIZE, 2] {
                let (req, mut respond) = incoming.recv().await.expect("a request");
                let (head, mut body) = req.into_parts();
                let mut got = Vec::new();
                while let Some(chunk) = body.data().await {
                    let chunk = chunk.expect("request body");
                    let _ = body.flow_control().release_capacity(chunk.len());
                    got.extend_from_slice(&chunk);
                }
                let mut out = respond
                    .send_response(Response::new(()), false)
                    .expect("head");
                let mut left = size;
                while left > 0 {
                    out.reserve_capacity(left.min(1 << 16));
                    let room = std::future::poll_fn(|cx| out.poll_capacity(cx))
                        .await
                        .expect("capacity")
                        .expect("room");
                    let n = room.min(left);
                    left -= n;
                    out.send_data(Bytes::from(vec![b'x'; n]), left == 0)
                        .expect("data");
                }
                seen.push((head, got));
            }
            seen
        });
        let (client, _) = client_of(addr, UpstreamHttp::Http2);
        // With a `user:password@`, which must not reach `:authority`.
        let with_userinfo = format!("http://user:secret@{addr}/api/v4/chat");
        let with_userinfo = Endpoint::new(with_userinfo.parse().expect("uri")).expect("endpoint");
        let body = Bytes::from_static(b"{\"model\":\"glm-4.7\"}");
        let resp = client
            .send(HttpClient::request(
                Method::POST,
                &with_userinfo,
                body.clone(),
            ))
            .await
            .expect("answer");
        assert_eq!(resp.status(), StatusCode::OK);
        let mut stream = resp.into_body();
        let mut read = 0;
        // Bounded so that a stall fails the test rather than hanging it.
        let all = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(chunk) = stream.next().await {
                read += chunk.expect("chunk").len();
            }
        });
        assert!(all.await.is_ok(), "stalled after {read} bytes");
        assert_eq!(read, SIZE);
        let resp = client
            .send(HttpClient::request(
                Method::GET,
                &with_userinfo,
                Bytes::new(),
            ))
            .await
            .expect("answer");
        let mut stream = resp.into_body();
        assert_eq!(stream.next().await.expect("a chunk").expect("data"), "xx");
        let mut seen = server.await.expect("server");
        let (get, _) = seen.pop().expect("the GET");
        assert_eq!(get.method, Method::GET);
        assert!(!get.headers.contains_key(header::CONTENT_LENGTH), "{get:?}");
        let (head, got) = seen.pop().expect("the POST");
        assert_eq!(got, body);
        assert_eq!(head.uri.path(), "/api/v4/chat");
        assert_eq!(
            head.uri.authority().map(|a| a.as_str()),
            Some(&*addr.to_string())
        );
        assert_eq!(
            head.headers[header::CONTENT_LENGTH],
            body.len().to_string().as_str()
        );
        assert!(!head.headers.contains_key(header::HOST));
    }

    /// A server shutting its connection down (GOAWAY) while a long answer is still open on
    /// it: the next request goes on a new connection, not on the one that refuses it.
    #[tokio::test]
    async fn after_a_goaway_new_requests_go_on_a_new_http2_connection() {
        let (listener, addr) = listen().await;
        let (streams, mut incoming) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            for n in 0.. {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let streams = streams.clone();
                tokio::spawn(async move {
                    let mut conn = h2::server::handshake(tcp).await.expect("handshake");
                    while let Some(Ok(stream)) = conn.accept().await {
                        if n == 0 {
                            // The first connection takes one stream, then shuts down.
                            conn.graceful_shutdown();
                        }
                        let _ = streams.send((n, stream));
                    }
                });
            }
        });
        let server = tokio::spawn(async move {
            let mut open = Vec::new();
            let mut served_on = Vec::new();
            while let Some((n, (_req, mut respond))) = incoming.recv().await {
                served_on.push(n);
                let mut out = respond
                    .send_response(Response::new(()), false)
                    .expect("head");
                if n == 0 {
                    // A long answer: its first bytes a little after the GOAWAY went out,
                    // and then it stays open.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    out.send_data(Bytes::from_static(b"a"), false)
                        .expect("data");
                    open.push(out);
                } else {
                    out.send_data(Bytes::from_static(b"b"), true).expect("data");
                    return served_on;
                }
            }
            served_on
        });
        let (client, endpoint) = client_of(addr, UpstreamHttp::Http2);
        let request = || HttpClient::request(Method::POST, &endpoint, Bytes::from_static(b"{}"));
        let long = client.send(request()).await.expect("the first answer");
        let mut long = long.into_body();
        // Read after the GOAWAY, which came before it on the same connection.
        assert_eq!(long.next().await.expect("a chunk").expect("data"), "a");
        let next = client.send(request()).await.expect("the second answer");
        let mut next = next.into_body();
        assert_eq!(next.next().await.expect("a chunk").expect("data"), "b");
        assert_eq!(server.await.expect("server"), [0, 1]);
    }

    #[tokio::test]
    async fn what_reaches_the_upstream_is_an_origin_form_request_with_host() {
        let (listener, addr) = listen().await;
        let server = tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.expect("accept");
            let mut got = Vec::new();
            let mut buf = [0u8; 1024];
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = tcp.read(&mut buf).await.expect("read");
                assert!(n > 0, "closed before the head ended");
                got.extend_from_slice(&buf[..n]);
            }
            tcp.write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
                .await
                .expect("write");
            String::from_utf8(got).expect("utf-8")
        });
        let (client, endpoint) = client_of(addr, UpstreamHttp::Auto);
        let resp = client
            .send(HttpClient::request(Method::POST, &endpoint, Bytes::new()))
            .await
            .expect("answer");
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
        let head = server.await.expect("server").to_ascii_lowercase();
        assert!(head.starts_with("post /api/v4/chat http/1.1\r\n"), "{head}");
        assert!(head.contains(&format!("\r\nhost: {addr}\r\n")), "{head}");
    }
}
