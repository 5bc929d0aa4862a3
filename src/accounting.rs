//! Usage records and the batched writer that stores them.
//!
//! Records go into a bounded buffer (the request path never waits on the database); one
//! thread of its own writes them in a transaction every `flush_interval`, or as soon as
//! `batch_size` are waiting. A crash loses at most one interval; [`RecorderHandle::shutdown`]
//! drains the buffer, so a clean shutdown loses nothing.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::oneshot;

use crate::config::AccountingSettings;
use crate::meter::Usage;
use crate::metrics::Metrics;
use crate::store::{Store, UsageWriter};

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
    /// A response delivered whole: `Ok`, or `UpstreamError` for an error status.
    pub fn delivered(status: hyper::StatusCode) -> Outcome {
        if status.is_success() {
            Outcome::Ok
        } else {
            Outcome::UpstreamError
        }
    }

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
    /// From the request's arrival to the end of its response.
    pub latency_us: u64,
    /// From the request's arrival to the upstream answer's head.
    pub ttfb_us: Option<u64>,
    /// `provider/account` that answered, if any did.
    pub account: Option<std::sync::Arc<str>>,
    /// Upstream requests it took (retries and failovers included; 0 when none was sent).
    pub attempts: u32,
}

/// The request path's handle: `record` takes a short lock and never waits on the database.
///
/// Records gather in a buffer that the writer takes every `flush_interval`; the writer is
/// woken early only when a batch is full, so recording does not wake another thread per
/// request.
#[derive(Debug)]
pub struct Recorder {
    buffer: Mutex<Buffer>,
    /// Signalled when a batch is full or the writer is asked to stop.
    wake: Condvar,
    batch_size: usize,
    capacity: usize,
    /// Fed from each batch on the writer's thread, when metrics are on.
    metrics: Option<Arc<Metrics>>,
}

#[derive(Debug)]
struct Buffer {
    records: Vec<UsageRecord>,
    stop: bool,
}

impl Recorder {
    pub fn record(&self, record: UsageRecord) {
        let mut buffer = self.lock();
        if buffer.records.len() >= self.capacity {
            drop(buffer);
            if let Some(m) = &self.metrics {
                m.lost_queue_full();
            }
            tracing::error!("usage buffer full; a usage record was lost");
            return;
        }
        buffer.records.push(record);
        let full = buffer.records.len() == self.batch_size;
        drop(buffer);
        // Woken after the lock is released, the writer does not wait on it at once.
        if full {
            self.wake.notify_one();
        }
    }

    /// The buffer, even after a panic elsewhere poisoned the lock: a `Vec` of records is
    /// never left half-updated by `push` or `take`, so the records in it are still good.
    fn lock(&self) -> MutexGuard<'_, Buffer> {
        self.buffer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Waits until a batch is full, the writer is asked to stop, or `interval` has passed;
    /// then takes what is buffered, and says whether to stop. The buffer left behind has
    /// room for a batch, so recording does not grow it under the lock.
    fn next_batch(&self, interval: Duration) -> (Vec<UsageRecord>, bool) {
        let buffer = self.lock();
        let (mut buffer, _) = self
            .wake
            .wait_timeout_while(buffer, interval, |b| {
                !b.stop && b.records.len() < self.batch_size
            })
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let batch = if buffer.records.is_empty() {
            Vec::new()
        } else {
            std::mem::replace(&mut buffer.records, Vec::with_capacity(self.batch_size))
        };
        (batch, buffer.stop)
    }

    fn stop(&self) {
        self.lock().stop = true;
        self.wake.notify_one();
    }
}

/// Owns the writer thread; call [`RecorderHandle::shutdown`] to drain it. Dropped without
/// that, it still stops the thread (after one last write).
pub struct RecorderHandle {
    recorder: Arc<Recorder>,
    done: Option<oneshot::Receiver<()>>,
}

impl RecorderHandle {
    /// Writes everything buffered and returns when it is stored. Records made after this
    /// (by responses still being torn down) stay in the buffer and are lost.
    pub async fn shutdown(mut self) {
        self.recorder.stop();
        if let Some(done) = self.done.take() {
            if done.await.is_err() {
                tracing::error!("usage writer thread failed");
            }
        }
    }
}

impl Drop for RecorderHandle {
    fn drop(&mut self) {
        self.recorder.stop();
    }
}

/// Starts the writer thread on its own connection to `store`; it also feeds `metrics`.
pub fn start(
    store: &Store,
    settings: &AccountingSettings,
    metrics: Option<Arc<Metrics>>,
) -> anyhow::Result<(Arc<Recorder>, RecorderHandle)> {
    let recorder = Arc::new(Recorder {
        buffer: Mutex::new(Buffer {
            records: Vec::with_capacity(settings.batch_size),
            stop: false,
        }),
        wake: Condvar::new(),
        batch_size: settings.batch_size,
        capacity: settings.queue_capacity,
        metrics,
    });
    let db = store.usage_db()?;
    let (done_tx, done_rx) = oneshot::channel();
    let interval = settings.flush_interval;
    let shared = recorder.clone();
    std::thread::Builder::new()
        .name("glmgate-usage".into())
        .spawn(move || {
            let mut writer = db.writer();
            loop {
                let (batch, stop) = shared.next_batch(interval);
                if let Some(m) = &shared.metrics {
                    m.observe(&batch);
                }
                let lost = flush(&mut writer, batch);
                if let (Some(m), 1..) = (&shared.metrics, lost) {
                    m.lost_write_failed(lost);
                }
                if stop {
                    break;
                }
            }
            let _ = done_tx.send(());
        })?;
    Ok((
        recorder.clone(),
        RecorderHandle {
            recorder,
            done: Some(done_rx),
        },
    ))
}

/// Stores a batch; returns how many records were lost.
fn flush(writer: &mut UsageWriter, batch: Vec<UsageRecord>) -> usize {
    if batch.is_empty() {
        return 0;
    }
    // One retry: SQLite can be briefly busy (another process running `glmgate keys`).
    for attempt in 0..2 {
        match writer.insert(&batch) {
            Ok(()) => return 0,
            Err(e) if attempt == 0 => {
                tracing::warn!(error = %e, "usage batch write failed; retrying");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => tracing::error!(error = %e, records = batch.len(), "usage batch lost"),
        }
    }
    batch.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::{store_with_key, usage_record as record};

    fn settings(batch_size: usize) -> AccountingSettings {
        AccountingSettings {
            // Never due during a test: only a full batch or a shutdown makes a write.
            flush_interval: Duration::from_secs(3600),
            batch_size,
            queue_capacity: 100,
        }
    }

    #[tokio::test]
    async fn a_full_batch_is_written_without_waiting_for_the_interval() {
        let (_dir, store, key_id) = store_with_key().await;
        let (recorder, handle) = start(&store, &settings(3), None).expect("start");
        // Let the writer reach its wait first, so that only the full batch can wake it.
        tokio::time::sleep(Duration::from_millis(100)).await;
        for i in 0..3 {
            recorder.record(record(key_id, i));
        }
        let mut rows = 0;
        for _ in 0..500 {
            rows = store.usage_rows().await.expect("rows").len();
            if rows == 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(rows, 3, "the full batch was written");
        recorder.record(record(key_id, 3));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            store.usage_rows().await.expect("rows").len(),
            3,
            "one record waits"
        );
        handle.shutdown().await;
    }

    #[tokio::test]
    async fn shutdown_writes_what_is_buffered_and_the_buffer_is_bounded() {
        let (_dir, store, key_id) = store_with_key().await;
        let mut s = settings(1000);
        s.queue_capacity = 5;
        let (recorder, handle) = start(&store, &s, None).expect("start");
        for i in 0..7 {
            recorder.record(record(key_id, i));
        }
        handle.shutdown().await;
        let rows = store.usage_rows().await.expect("rows");
        assert_eq!(rows.len(), 5, "the first five were kept, two refused");
    }
}
