//! Application state, the server loop and graceful shutdown.
//!
//! Shutdown order: stop accepting; let in-flight responses finish up to the grace period;
//! then drain the usage queue into the store, so a clean stop loses no record.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::accounting::{self, Recorder, RecorderHandle};
use crate::auth::Authenticator;
use crate::balance::{Balance, Handoff, Placement};
use crate::config::Settings;
use crate::routes::Gateway;
use crate::store::Store;
use crate::upstream::pool::LimitUpdate;
use crate::upstream::Upstream;

/// Everything a request handler needs, shared by all requests.
pub struct AppState {
    pub settings: Settings,
    pub store: Store,
    pub auth: Authenticator,
    pub router: crate::route::Router,
    pub upstream: Arc<Upstream>,
    pub recorder: Arc<Recorder>,
    /// `None` when `metrics.enabled` is off.
    pub metrics: Option<Arc<crate::metrics::Metrics>>,
}

pub async fn build_state(settings: Settings) -> anyhow::Result<(Arc<AppState>, RecorderHandle)> {
    let store = Store::open(&settings.store_path).await?;
    let metrics = settings
        .metrics
        .enabled
        .then(|| Arc::new(crate::metrics::Metrics::new()));
    let (recorder, recorder_handle) =
        accounting::start(&store, &settings.accounting, metrics.clone())?;
    let restored = store.load_limits().await?;
    if !restored.is_empty() {
        tracing::info!(
            count = restored.len(),
            "restored learned upstream concurrency limits"
        );
    }
    let (limits_tx, limits_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(save_limits(store.clone(), limits_rx));
    let state = AppState {
        auth: Authenticator::new(store.clone(), settings.key_cache_ttl),
        router: crate::route::Router::new(&settings.routing),
        upstream: Arc::new(Upstream::new(&settings.upstream, &restored, limits_tx)?),
        store,
        recorder,
        metrics,
        settings,
    };
    Ok((Arc::new(state), recorder_handle))
}

/// Stores learned limits as they change (rarely: on 429 bursts and clean intervals).
async fn save_limits(store: Store, mut rx: tokio::sync::mpsc::UnboundedReceiver<LimitUpdate>) {
    while let Some(u) = rx.recv().await {
        let now = chrono::Utc::now().timestamp_millis();
        if let Err(e) = store.save_limit(&u.account, &u.model, u.limit, now).await {
            tracing::warn!(error = %e, account = %u.account, "cannot save a learned limit");
        }
    }
}

/// Re-reads the config file and applies its upstream part (providers, accounts, keys,
/// policy). An invalid file is refused with the reason and the running config stays.
pub fn reload(state: &AppState) -> anyhow::Result<String> {
    let Some(path) = state.settings.source.as_deref() else {
        anyhow::bail!("the gateway was started without a config file; nothing to reload");
    };
    let next = crate::config::load(Some(path))?;
    let summary = state.upstream.reload(&next.upstream);
    tracing::info!(%summary, file = %path.display(), "upstream configuration reloaded (other sections apply on restart)");
    Ok(summary)
}

/// Reloads on SIGHUP, and when the config file changes (checked every 2 s).
fn spawn_reloaders(state: Arc<AppState>) {
    let Some(path) = state.settings.source.clone() else {
        return;
    };
    #[cfg(unix)]
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Err(e) => tracing::error!(error = %e, "cannot listen for SIGHUP"),
        Ok(mut hup) => {
            let state = state.clone();
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    if let Err(e) = reload(&state) {
                        tracing::error!(error = %format!("{e:#}"), "reload refused; keeping the running config");
                    }
                }
            });
        }
    }
    if !state.settings.upstream.policy.watch_config {
        return;
    }
    let stamp = |p: &std::path::Path| {
        std::fs::metadata(p)
            .ok()
            .map(|m| (m.modified().ok(), m.len()))
    };
    // Taken before serving starts, so no change made after that is missed.
    let mut seen = stamp(&path);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(2));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = stamp(&path);
            if now != seen && now.is_some() {
                seen = now;
                if let Err(e) = reload(&state) {
                    tracing::error!(error = %format!("{e:#}"), "reload refused; keeping the running config");
                }
            }
        }
    });
}

/// How many connections the kernel queues for a listener before they are accepted. The
/// standard library's and tokio's `bind` ask for 128: a burst larger than that (thousands
/// of clients connecting at once, or reconnecting after a restart) loses SYNs, and each
/// loss costs its client a second before it tries again. Linux caps the value at
/// `net.core.somaxconn` (4096 by default).
pub const BACKLOG: u32 = 4096;

/// A listener on `addr` (`host:port`: each address it resolves to is tried in turn, as
/// tokio's `bind` does) with a queue of [`BACKLOG`] connections. An error names `addr`.
pub async fn bind(
    addr: impl tokio::net::ToSocketAddrs + std::fmt::Display,
) -> std::io::Result<TcpListener> {
    let named =
        |e: std::io::Error| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}"));
    listen_on_any(&addr).await.map_err(named)
}

async fn listen_on_any(addr: impl tokio::net::ToSocketAddrs) -> std::io::Result<TcpListener> {
    let mut last = None;
    for addr in tokio::net::lookup_host(addr).await? {
        let socket = match addr {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
        };
        let listening = socket.and_then(|socket| {
            socket.set_reuseaddr(true)?;
            socket.bind(addr)?;
            socket.listen(BACKLOG)
        });
        match listening {
            Ok(listener) => return Ok(listener),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the address resolves to nothing",
        )
    }))
}

/// Serves on `listener` until `shutdown` resolves, then shuts down gracefully.
///
/// Requests are served by `settings.workers` threads, each running its own single-threaded
/// event loop and accepting from the same socket. A request, its upstream connection and
/// its answer stay on one thread from start to end, so no wake-up crosses threads on the
/// request path. Background work (accounting writes, reloads, quota polls) stays on the
/// caller's runtime.
pub async fn serve(
    settings: Settings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let grace = settings.shutdown_grace;
    let workers = settings.workers.max(1);
    let client_timeout = settings.client_timeout;
    let (state, recorder) = build_state(settings).await?;
    spawn_reloaders(state.clone());
    let gateway = crate::routes::Gateway::new(state.clone());
    let listen_addr = listener.local_addr()?;
    let listener = listener.into_std()?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let finished = spawn_workers(workers, client_timeout, &listener, &gateway, &stop_rx)?;
    drop(listener);
    tracing::info!(addr = %listen_addr, workers, "glmgate listening");
    crate::upstream::quota::spawn(state.upstream.clone());
    let all_finished = futures_util::future::join_all(finished);
    tokio::pin!(all_finished);
    let mut failed = false;
    tokio::select! {
        _ = shutdown => {
            tracing::info!("shutting down: no new connections; waiting for in-flight requests");
            let _ = stop_tx.send(true);
            if tokio::time::timeout(grace, &mut all_finished).await.is_err() {
                tracing::warn!(grace_secs = grace.as_secs(), "grace period over; closing remaining connections");
            }
        }
        _ = &mut all_finished => failed = true,
    }
    recorder.shutdown().await;
    // Learned limits are also saved as they change; this makes a clean stop certain.
    let now = chrono::Utc::now().timestamp_millis();
    for (account, model, limit) in state.upstream.pool().learned_limits() {
        if let Err(e) = state
            .store
            .save_limit(&account, &model, Some(limit), now)
            .await
        {
            tracing::warn!(error = %e, %account, "cannot save a learned limit");
        }
    }
    state.store.close().await;
    if failed {
        // Usage and learned limits are saved above; the process exits with an error.
        anyhow::bail!("every serving thread stopped (see the errors above)");
    }
    tracing::info!("stopped");
    Ok(())
}

/// Starts `workers` serving threads on `listener`; each receiver resolves (with an error)
/// when its thread has stopped.
fn spawn_workers(
    workers: usize,
    client_timeout: Option<std::time::Duration>,
    listener: &std::net::TcpListener,
    gateway: &Gateway,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<Vec<oneshot::Receiver<()>>> {
    let (balance, inboxes) = Balance::new(workers);
    let mut finished = Vec::with_capacity(workers);
    for (index, inbox) in inboxes.into_iter().enumerate() {
        let (done_tx, done_rx) = oneshot::channel::<()>();
        let worker = Worker {
            listener: listener.try_clone()?,
            stop: stop.clone(),
            inbox,
            serving: Serving {
                index,
                client_timeout,
                gateway: gateway.clone(),
                balance: balance.clone(),
            },
        };
        std::thread::Builder::new()
            .name(format!("glmgate-worker-{index}"))
            .spawn(move || {
                worker.run();
                drop(done_tx);
            })?;
        finished.push(done_rx);
    }
    Ok(finished)
}

/// One serving thread: a single-threaded runtime accepting from a clone of the socket, and
/// serving the connections it accepts or is handed (see [`crate::balance`]).
struct Worker {
    listener: std::net::TcpListener,
    stop: tokio::sync::watch::Receiver<bool>,
    inbox: mpsc::UnboundedReceiver<Handoff>,
    serving: Serving,
}

impl Worker {
    fn run(self) {
        let index = self.serving.index;
        crate::upstream::client::set_worker(index);
        crate::logging::buffer_this_thread();
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, worker = index, "cannot start a serving thread");
                return;
            }
        };
        let mut stop = self.stop;
        runtime.block_on(async move {
            let listener = match TcpListener::from_std(self.listener) {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(error = %e, worker = index, "cannot listen");
                    return;
                }
            };
            tokio::spawn(every_second());
            accept_loop(listener, self.inbox, self.serving, &mut stop).await;
        });
        crate::logging::flush();
    }
}

/// A serving thread's one-second tick. It writes the thread's buffered log lines. Being
/// always due within a second, it also spares the thread a self-wake (an `eventfd` write)
/// per request: tokio wakes its timer when a new timer is due before every other one, which
/// each request's timeouts are when no other timer is pending.
async fn every_second() {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        crate::logging::flush();
    }
}

/// What a serving thread needs to take on a connection.
struct Serving {
    index: usize,
    client_timeout: Option<std::time::Duration>,
    gateway: Gateway,
    balance: Arc<Balance>,
}

/// Accepts connections, and takes those other threads hand over, until `stop` turns true,
/// serving each with hyper's HTTP/1.1 connection on a task of this thread; then lets the
/// open connections finish (each ends after its in-flight request; the caller bounds the
/// wait).
async fn accept_loop(
    listener: TcpListener,
    mut inbox: mpsc::UnboundedReceiver<Handoff>,
    serving: Serving,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    // A request head must arrive within the client timeout of the connection being ready
    // for it, so an idle keep-alive connection, or a client sending a head slowly
    // (slowloris), is closed; without a timer hyper waits forever. This costs a timer entry
    // per request, 1.3k–1.5k instructions.
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(serving.client_timeout);
    loop {
        let (tcp, seat) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => match serving.balance.place(serving.index, tcp) {
                    Placement::Here(tcp, seat) => (tcp, seat),
                    Placement::Away => continue,
                },
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
            Some((std, seat)) = inbox.recv() => match tokio::net::TcpStream::from_std(std) {
                Ok(tcp) => (tcp, seat),
                Err(e) => {
                    tracing::debug!(error = %e, "cannot take a handed-over connection");
                    continue;
                }
            },
            _ = stop.wait_for(|s| *s) => break,
        };
        // Without TCP_NODELAY, Nagle's algorithm holds a small write (an SSE event, the
        // last chunk of a body) until the previous one is acknowledged: with delayed ACKs,
        // up to 40 ms per event.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        // The gateway is shared (reference-counted), not rebuilt per connection.
        let gateway = serving.gateway.clone();
        // A request's future is boxed: it is large (3.1 KB), and hyper keeps room for the
        // service's future for as long as a connection lives, streams included (5,000 open
        // streams, when it was 4.8 KB: 179 MB inline, 162 MB boxed; the box costs ~1,700
        // instructions). Its size matters: with 5,000 requests in a burst, most are waiting
        // for the upstream's first bytes at the peak (4 KB more in it: +15 to 18 MB).
        let service = hyper::service::service_fn(move |req| {
            let gateway = gateway.clone();
            Box::pin(futures_util::FutureExt::map(
                gateway.serve(req),
                Ok::<_, std::convert::Infallible>,
            ))
        });
        let conn = graceful.watch(http.serve_connection(TokioIo::new(tcp), service));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "client connection ended with an error");
            }
            drop(seat);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// A failed accept: a connection reset before it was taken is nothing; anything else
/// (out of file descriptors, say) is logged and retried after a pause, not in a busy loop.
async fn accept_failed(e: std::io::Error) {
    use std::io::ErrorKind::*;
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused
    ) {
        return;
    }
    tracing::error!(error = %e, "cannot accept a connection; retrying in 1 s");
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
}

/// The state of a gateway for unit tests: its store in a temporary directory (kept while
/// the returned directory lives), one upstream key, defaults for the rest.
#[cfg(test)]
pub(crate) async fn test_state() -> (tempfile::TempDir, Arc<AppState>, RecorderHandle) {
    let dir = tempfile::tempdir().expect("tempdir");
    let raw = toml::from_str(&format!(
        "[store]\npath = {:?}\n[upstream]\nkeys = [\"k\"]\n",
        dir.path().join("t.db")
    ))
    .expect("config");
    let settings = crate::config::validate(raw, None).expect("settings");
    let (state, recorder) = build_state(settings).await.expect("state");
    (dir, state, recorder)
}

/// A gateway running on a background task (tests, the demo).
pub struct Running {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Asks for a graceful shutdown and waits for it.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await?
    }
}

/// Binds `settings.listen` (port 0 picks a free port) and serves in the background.
pub async fn spawn(settings: Settings) -> anyhow::Result<Running> {
    let listener = bind(settings.listen).await?;
    let addr = listener.local_addr()?;
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let task = tokio::spawn(serve(settings, listener, async move {
        let _ = stop_rx.await;
    }));
    Ok(Running {
        addr,
        stop: Some(stop_tx),
        task,
    })
}

/// Resolves on SIGTERM or Ctrl-C. The handlers are installed when this is called (not
/// when the future is first polled), so a signal sent once the gateway says it is
/// listening is never missed.
pub fn termination_signal() -> impl Future<Output = ()> {
    #[cfg(unix)]
    let signals = {
        use tokio::signal::unix::{signal, SignalKind};
        (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        )
    };
    async move {
        #[cfg(unix)]
        match signals {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {},
                    _ = int.recv() => {},
                }
            }
            (Err(e), _) | (_, Err(e)) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM/SIGINT");
                std::future::pending::<()>().await;
            }
        }
        #[cfg(not(unix))]
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Which serving thread answers on `tcp` (the test router replies with its name).
    async fn served_by(tcp: &mut tokio::net::TcpStream) -> String {
        tcp.write_all(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n")
            .await
            .expect("write");
        let mut got = Vec::new();
        let mut buf = [0u8; 512];
        while !got.ends_with(b"-end") {
            let n = tcp.read(&mut buf).await.expect("read");
            assert!(n > 0, "connection closed");
            got.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8(got).expect("utf-8");
        let body = text.split("\r\n\r\n").nth(1).expect("a body");
        body.trim_end_matches("-end").to_string()
    }

    #[tokio::test]
    async fn connections_are_spread_evenly_over_the_serving_threads() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("address");
        let app = axum::Router::new().route(
            "/",
            axum::routing::get(|| async {
                format!("{}-end", std::thread::current().name().unwrap_or("?"))
            }),
        );
        let (_dir, state, _recorder) = test_state().await;
        let gateway = Gateway::with_router(state, app);
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let finished = spawn_workers(2, None, &listener, &gateway, &stop_rx).expect("threads");
        drop(listener);
        let mut conns = Vec::new();
        let mut by_thread = std::collections::BTreeMap::<String, usize>::new();
        for _ in 0..8 {
            let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
            *by_thread.entry(served_by(&mut tcp).await).or_default() += 1;
            conns.push(tcp);
        }
        let expected: std::collections::BTreeMap<String, usize> = [
            ("glmgate-worker-0".to_string(), 4),
            ("glmgate-worker-1".to_string(), 4),
        ]
        .into();
        assert_eq!(by_thread, expected);
        // A connection keeps its thread for all its requests.
        for tcp in &mut conns {
            let first = served_by(tcp).await;
            assert_eq!(served_by(tcp).await, first);
        }
        drop(conns);
        stop_tx.send(true).expect("stop");
        for done in finished {
            let _ = done.await;
        }
    }

    /// 600 clients connect at once to a listener that accepts none of them: with the
    /// standard library's queue of 128 all past the 129th would wait for a SYN retry that
    /// cannot succeed; with [`BACKLOG`] every one is queued at once.
    #[tokio::test]
    async fn a_burst_of_connections_is_queued_not_dropped() {
        let listener = bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let connecting: Vec<_> = (0..600)
            .map(|_| tokio::spawn(tokio::net::TcpStream::connect(addr)))
            .collect();
        let mut open = Vec::new();
        for c in connecting {
            // Generous: a queued connection completes in microseconds; a dropped SYN is
            // retried after 1 s, then 3 s, and never gets in while nothing is accepted.
            let conn = tokio::time::timeout(std::time::Duration::from_secs(10), c)
                .await
                .expect("connected without waiting for a SYN retry that cannot succeed");
            open.push(conn.expect("task").expect("connect"));
        }
        assert_eq!(open.len(), 600);
        drop(listener);
    }
}
