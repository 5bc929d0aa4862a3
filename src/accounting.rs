//! Usage records and the batched writer that stores them.
//!
//! Records go into a bounded buffer (the request path never waits on the database); one task
//! writes them in a transaction every `flush_interval`, or as soon as `batch_size` are
//! waiting. A crash loses at most one interval; [`RecorderHandle::shutdown`] drains the buffer, so a clean
//! shutdown loses nothing.

use std::sync::{Arc, Mutex};

use tokio::sync::{oneshot, Notify};
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
    /// `provider/account` that answered, if any did.
    pub account: Option<std::sync::Arc<str>>,
}

/// The request path's handle: `record` takes a short lock and never waits on the database.
///
/// Records gather in a buffer that the writer takes every `flush_interval`; the writer is
/// woken early only when a batch is full, so recording does not wake another thread per
/// request.
#[derive(Debug)]
pub struct Recorder {
    buffer: Mutex<Vec<UsageRecord>>,
    full: Notify,
    batch_size: usize,
    capacity: usize,
}

impl Recorder {
    pub fn record(&self, record: UsageRecord) {
        let mut buffer = self.lock();
        if buffer.len() >= self.capacity {
            drop(buffer);
            tracing::error!("usage buffer full; a usage record was lost");
            return;
        }
        buffer.push(record);
        if buffer.len() == self.batch_size {
            self.full.notify_one();
        }
    }

    fn take(&self) -> Vec<UsageRecord> {
        std::mem::take(&mut *self.lock())
    }

    /// The buffer, even after a panic elsewhere poisoned the lock: a `Vec` of records is
    /// never left half-updated by `push` or `take`, so the records in it are still good.
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<UsageRecord>> {
        self.buffer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Owns the writer task; call [`RecorderHandle::shutdown`] to drain it.
pub struct RecorderHandle {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl RecorderHandle {
    /// Writes everything buffered and returns when it is stored. Records made after this
    /// (by responses still being torn down) stay in the buffer and are lost.
    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "usage writer task failed");
        }
    }
}

pub fn start(store: Store, settings: &AccountingSettings) -> (Arc<Recorder>, RecorderHandle) {
    let recorder = Arc::new(Recorder {
        buffer: Mutex::new(Vec::with_capacity(settings.batch_size)),
        full: Notify::new(),
        batch_size: settings.batch_size,
        capacity: settings.queue_capacity,
    });
    let (stop_tx, stop_rx) = oneshot::channel();
    let task = tokio::spawn(write_loop(
        store,
        recorder.clone(),
        stop_rx,
        settings.flush_interval,
    ));
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
    recorder: Arc<Recorder>,
    mut stop: oneshot::Receiver<()>,
    interval: std::time::Duration,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = recorder.full.notified() => {}
            _ = &mut stop => break,
        }
        flush(&store, recorder.take()).await;
    }
    flush(&store, recorder.take()).await;
}

async fn flush(store: &Store, batch: Vec<UsageRecord>) {
    if batch.is_empty() {
        return;
    }
    // One retry: SQLite can be briefly busy (another process running `glmgate keys`).
    for attempt in 0..2 {
        match store.insert_usage(&batch).await {
            Ok(()) => return,
            Err(e) if attempt == 0 => {
                tracing::warn!(error = %e, "usage batch write failed; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            Err(e) => tracing::error!(error = %e, records = batch.len(), "usage batch lost"),
        }
    }
}
