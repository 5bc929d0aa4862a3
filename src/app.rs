//! Application state, the server loop and graceful shutdown.
//!
//! Shutdown order: stop accepting; let in-flight responses finish up to the grace period;
//! then drain the usage queue into the store, so a clean stop loses no record.

use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::sync::Arc;

use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, Notify};
use tokio::task::JoinHandle;

use crate::accounting::{self, Recorder, RecorderHandle};
use crate::auth::Authenticator;
use crate::config::Settings;
use crate::route::Router;
use crate::store::Store;
use crate::upstream::Upstream;

/// Everything a request handler needs, shared by all requests.
pub struct AppState {
    pub settings: Settings,
    pub store: Store,
    pub auth: Authenticator,
    pub router: Router,
    pub upstream: Upstream,
    pub recorder: Arc<Recorder>,
}

pub async fn build_state(settings: Settings) -> anyhow::Result<(Arc<AppState>, RecorderHandle)> {
    let store = Store::open(&settings.store_path).await?;
    let (recorder, recorder_handle) = accounting::start(store.clone(), &settings.accounting);
    let state = AppState {
        auth: Authenticator::new(store.clone(), settings.key_cache_ttl),
        router: Router::new(&settings.upstream)?,
        upstream: Upstream::new(&settings.upstream)?,
        store,
        recorder,
        settings,
    };
    Ok((Arc::new(state), recorder_handle))
}

/// Serves on `listener` until `shutdown` resolves, then shuts down gracefully.
pub async fn serve(
    settings: Settings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let grace = settings.shutdown_grace;
    let (state, recorder) = build_state(settings).await?;
    let app = crate::routes::router(state.clone());
    let stopping = Arc::new(Notify::new());
    let signal = {
        let stopping = stopping.clone();
        async move {
            shutdown.await;
            tracing::info!("shutting down: no new connections; waiting for in-flight requests");
            stopping.notify_one();
        }
    };
    let server = axum::serve(with_nodelay(listener), app).with_graceful_shutdown(signal);
    tokio::select! {
        result = server.into_future() => result?,
        _ = async { stopping.notified().await; tokio::time::sleep(grace).await } => {
            tracing::warn!(grace_secs = grace.as_secs(), "grace period over; closing remaining connections");
        }
    }
    recorder.shutdown().await;
    state.store.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// Sets TCP_NODELAY on every accepted connection: without it, Nagle's algorithm holds a
/// small write (an SSE event, the last chunk of a body) until the previous one is
/// acknowledged, which with delayed ACKs costs up to 40 ms per event.
pub fn with_nodelay(listener: TcpListener) -> impl axum::serve::Listener<Addr = SocketAddr> {
    listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    })
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
    let listener = TcpListener::bind(settings.listen).await?;
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

/// Resolves on SIGTERM or Ctrl-C.
pub async fn termination_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
