//! Usage records and the batched writer that stores them.
//!
//! Records go into a bounded queue (the request path never waits on the database); one task
//! writes them in a transaction every `flush_interval` or every `batch_size` records. A crash
//! loses at most one interval; [`RecorderHandle::shutdown`] drains the queue, so a clean
//! shutdown loses nothing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::config::AccountingSettings;
use crate::meter::Usage;
use crate::store::Store;

/// How a request ended, for accounting and logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The upstream answered 2xx and the body was delivered whole.
    Ok,
    /// The upstream answered with an error status (passed on to the client).
    UpstreamError,
    /// The gateway could not get an answer (unreachable, timeout, invalid response).
    UpstreamFailed,
    /// The body broke off mid-way on the upstream side.
    UpstreamCut,
    /// The client went away before the response was complete.
    ClientCancelled,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::UpstreamError => "upstream_error",
            Outcome::UpstreamFailed => "upstream_failed",
            Outcome::UpstreamCut => "upstream_cut",
            Outcome::ClientCancelled => "client_cancelled",
        }
    }
}

#[derive(Clone, Debug)]
pub struct UsageRecord {
    pub ts_ms: i64,
    pub request_id: String,
    pub key_id: i64,
    pub api: &'static str,
    pub model: String,
    pub stream: bool,
    pub status: u16,
    pub outcome: Outcome,
    pub usage: Usage,
    /// True when the upstream reported no usage and the counts are the gateway's estimate.
    pub estimated: bool,
    pub latency_ms: u64,
    pub ttfb_ms: Option<u64>,
}

/// The request path's handle: `record` never blocks.
#[derive(Debug)]
pub struct Recorder {
    tx: mpsc::Sender<UsageRecord>,
    dropped: AtomicU64,
}

impl Recorder {
    pub fn record(&self, record: UsageRecord) {
        if let Err(e) = self.tx.try_send(record) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %e, "usage queue full or closed; a usage record was lost");
        }
    }

    /// Records that could not be queued since start.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// Owns the writer task; call [`RecorderHandle::shutdown`] to drain it.
pub struct RecorderHandle {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl RecorderHandle {
    /// Stops taking records, writes everything queued, and returns when it is stored.
    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "usage writer task failed");
        }
    }
}

pub fn start(store: Store, settings: &AccountingSettings) -> (Arc<Recorder>, RecorderHandle) {
    let (tx, rx) = mpsc::channel(settings.queue_capacity);
    let (stop_tx, stop_rx) = oneshot::channel();
    let task = tokio::spawn(write_loop(store, rx, stop_rx, settings.clone()));
    let recorder = Arc::new(Recorder {
        tx,
        dropped: AtomicU64::new(0),
    });
    (
        recorder,
        RecorderHandle {
            stop: stop_tx,
            task,
        },
    )
}

async fn write_loop(
    store: Store,
    mut rx: mpsc::Receiver<UsageRecord>,
    mut stop: oneshot::Receiver<()>,
    settings: AccountingSettings,
) {
    let mut batch = Vec::with_capacity(settings.batch_size);
    let mut tick = tokio::time::interval(settings.flush_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            got = rx.recv() => match got {
                Some(r) => {
                    batch.push(r);
                    if batch.len() >= settings.batch_size {
                        flush(&store, &mut batch).await;
                    }
                }
                None => break,
            },
            _ = tick.tick() => flush(&store, &mut batch).await,
            _ = &mut stop => {
                rx.close();
                while let Some(r) = rx.recv().await {
                    batch.push(r);
                }
                break;
            }
        }
    }
    flush(&store, &mut batch).await;
}

async fn flush(store: &Store, batch: &mut Vec<UsageRecord>) {
    if batch.is_empty() {
        return;
    }
    // One retry: SQLite can be briefly busy (another process running `glmgate keys`).
    for attempt in 0..2 {
        match store.insert_usage(batch).await {
            Ok(()) => {
                batch.clear();
                return;
            }
            Err(e) if attempt == 0 => {
                tracing::warn!(error = %e, "usage batch write failed; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            Err(e) => tracing::error!(error = %e, records = batch.len(), "usage batch lost"),
        }
    }
    batch.clear();
}
