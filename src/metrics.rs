//! Prometheus metrics, served at `GET /metrics` (OpenMetrics text).
//!
//! Nothing here runs on the request path of an admitted request: the traffic series are
//! fed by the usage writer's thread from the records it is about to store (so they lag by
//! at most one accounting flush interval), and the upstream and process gauges are read
//! when scraped. The one request-path cost is a counter's increment for a request refused
//! before it was sent upstream.

use std::collections::HashSet;
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::accounting::UsageRecord;
use crate::error::{ApiError, Dialect};
use crate::upstream::pool::AccountGauges;

/// The `Content-Type` of a scrape.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Distinct model names the traffic series keep; later ones are counted as `other`. A
/// client may name any model (an account without a model list passes it on), and every
/// name would otherwise be a series for good.
const MAX_MODELS: usize = 100;

/// Whole-request durations: from tens of milliseconds to the longest generations.
const DURATION_BUCKETS: [f64; 16] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

/// Time to the first upstream byte: the model's queueing and prefill time.
const TTFB_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    api: &'static str,
    model: String,
    stream: bool,
    upstream: String,
    status: u16,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    api: &'static str,
    model: String,
    upstream: String,
    /// `input`, `output`, `cached` (part of input) or `reasoning` (part of output).
    kind: &'static str,
    /// True when the upstream reported no usage and the count is the gateway's estimate.
    estimated: bool,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TimingLabels {
    api: &'static str,
    model: String,
    stream: bool,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RejectedLabels {
    api: &'static str,
    /// The error's OpenAI `code` (the same for both APIs).
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LostLabels {
    /// `queue_full` or `write_failed`.
    reason: &'static str,
}

type Buckets = fn() -> Histogram;

/// The gateway's metrics: the traffic series, and what is read at scrape time.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    tokens: Family<TokenLabels, Counter>,
    duration: Family<TimingLabels, Histogram, Buckets>,
    ttfb: Family<TimingLabels, Histogram, Buckets>,
    /// Model names admitted as label values so far (see [`MAX_MODELS`]).
    models: Mutex<HashSet<String>>,
    /// Requests refused before anything went upstream, by API and error code.
    rejected: Family<RejectedLabels, Counter>,
    /// Usage records lost: the buffer was full, or a batch could not be stored.
    lost: Family<LostLabels, Counter>,
    started: std::time::SystemTime,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("glmgate");
        let requests = Family::<RequestLabels, Counter>::default();
        let tokens = Family::<TokenLabels, Counter>::default();
        let duration: Family<TimingLabels, Histogram, Buckets> =
            Family::new_with_constructor(|| Histogram::new(DURATION_BUCKETS));
        let ttfb: Family<TimingLabels, Histogram, Buckets> =
            Family::new_with_constructor(|| Histogram::new(TTFB_BUCKETS));
        registry.register(
            "requests",
            "Requests past the gateway's own checks, by how they ended (status: what the client \
             got; upstream: the account that answered)",
            requests.clone(),
        );
        registry.register(
            "tokens",
            "Tokens accounted, as the upstream reported them (or estimated, when it did not)",
            tokens.clone(),
        );
        registry.register_with_unit(
            "request_duration",
            "Time from the request's arrival to the end of its response",
            Unit::Seconds,
            duration.clone(),
        );
        registry.register_with_unit(
            "time_to_first_byte",
            "Time from the request's arrival to the upstream's first byte of a good answer",
            Unit::Seconds,
            ttfb.clone(),
        );
        let rejected = Family::<RejectedLabels, Counter>::default();
        registry.register(
            "rejected",
            "Requests to a model endpoint refused before anything was sent upstream",
            rejected.clone(),
        );
        let lost = Family::<LostLabels, Counter>::default();
        // Both series exist from the start, so a rate over them is defined before a loss.
        for reason in ["queue_full", "write_failed"] {
            lost.get_or_create(&LostLabels { reason }).inc_by(0);
        }
        registry.register(
            "usage_records_lost",
            "Usage records that could not be stored (also logged as errors)",
            lost.clone(),
        );
        registry.register(
            "build",
            "The running glmgate",
            prometheus_client::metrics::info::Info::new(vec![(
                "version".to_string(),
                env!("CARGO_PKG_VERSION").to_string(),
            )]),
        );
        Metrics {
            registry,
            requests,
            tokens,
            duration,
            ttfb,
            models: Mutex::new(HashSet::new()),
            rejected,
            lost,
            started: std::time::SystemTime::now(),
        }
    }

    /// A request to a model endpoint refused before it was sent upstream.
    pub fn rejected(&self, dialect: Dialect, e: &ApiError) {
        self.rejected
            .get_or_create(&RejectedLabels {
                api: dialect.as_str(),
                reason: e.code(),
            })
            .inc();
    }

    /// Usage records the buffer had no room for.
    pub fn lost_queue_full(&self) {
        self.lost
            .get_or_create(&LostLabels {
                reason: "queue_full",
            })
            .inc();
    }

    /// Usage records of a batch the store refused twice.
    pub fn lost_write_failed(&self, n: usize) {
        self.lost
            .get_or_create(&LostLabels {
                reason: "write_failed",
            })
            .inc_by(n as u64);
    }

    /// Counts a batch of usage records (the usage writer's thread calls this).
    ///
    /// Records of one batch mostly share their labels, so they are grouped first: each
    /// group costs one look-up per series rather than one per record.
    pub fn observe(&self, batch: &[UsageRecord]) {
        let mut groups: Vec<(&UsageRecord, Vec<&UsageRecord>)> = Vec::new();
        for r in batch {
            match groups.iter_mut().find(|(first, _)| same_series(first, r)) {
                Some((_, members)) => members.push(r),
                None => groups.push((r, vec![r])),
            }
        }
        let mut models = self.models.lock().unwrap_or_else(|p| p.into_inner());
        for (first, members) in groups {
            let model = if models.contains(&first.model) {
                first.model.clone()
            } else if models.len() < MAX_MODELS {
                models.insert(first.model.clone());
                first.model.clone()
            } else {
                "other".to_string()
            };
            let upstream = first.account.as_deref().unwrap_or("none").to_string();
            let timing = TimingLabels {
                api: first.api,
                model: model.clone(),
                stream: first.stream,
            };
            let duration = self.duration.get_or_create(&timing);
            let ttfb = self.ttfb.get_or_create(&timing);
            let mut tokens = [[0u64; 4]; 2];
            for r in &members {
                duration.observe(r.latency_us as f64 / 1e6);
                if let (Some(t), true) = (r.ttfb_us, (200..300).contains(&r.status)) {
                    ttfb.observe(t as f64 / 1e6);
                }
                let sums = &mut tokens[usize::from(r.estimated)];
                sums[0] += r.usage.input_tokens;
                sums[1] += r.usage.output_tokens;
                sums[2] += r.usage.cached_tokens;
                sums[3] += r.usage.reasoning_tokens;
            }
            drop((duration, ttfb));
            let mut counted: Vec<(u16, &'static str, u64)> = Vec::new();
            for r in &members {
                let outcome = r.outcome.as_str();
                match counted
                    .iter_mut()
                    .find(|(s, o, _)| *s == r.status && *o == outcome)
                {
                    Some((_, _, n)) => *n += 1,
                    None => counted.push((r.status, outcome, 1)),
                }
            }
            for (status, outcome, n) in counted {
                self.requests
                    .get_or_create(&RequestLabels {
                        api: first.api,
                        model: model.clone(),
                        stream: first.stream,
                        upstream: upstream.clone(),
                        status,
                        outcome,
                    })
                    .inc_by(n);
            }
            for (estimated, sums) in tokens.iter().enumerate() {
                for (kind, n) in ["input", "output", "cached", "reasoning"].iter().zip(sums) {
                    if *n == 0 {
                        continue;
                    }
                    self.tokens
                        .get_or_create(&TokenLabels {
                            api: first.api,
                            model: model.clone(),
                            upstream: upstream.clone(),
                            kind,
                            estimated: estimated == 1,
                        })
                        .inc_by(*n);
                }
            }
        }
    }

    /// The whole exposition: the traffic series, the refusals and the usage writer's
    /// losses, then the upstream accounts' state (`accounts`) and the process.
    pub fn render(&self, accounts: &[AccountGauges]) -> String {
        let mut out = String::with_capacity(16 * 1024);
        // Writing to a `String` cannot fail.
        let _ = encode_registry(&mut out, &self.registry);
        let _ = encode_registry(&mut out, &upstream_series(accounts));
        let _ = encode_registry(&mut out, &process_series(self.started));
        let _ = encode_eof(&mut out);
        out
    }
}

/// Whether two records fall in the same traffic series (status and outcome aside, which
/// are counted within a group).
fn same_series(a: &UsageRecord, b: &UsageRecord) -> bool {
    a.api == b.api && a.stream == b.stream && a.model == b.model && a.account == b.account
}

/// The upstream accounts' state, in a registry of its own made for this scrape.
fn upstream_series(accounts: &[AccountGauges]) -> Registry {
    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct AccountLabels {
        account: String,
    }
    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct StateLabels {
        account: String,
        state: &'static str,
    }
    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct ModelLabels {
        account: String,
        model: String,
    }
    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct KeyLabels {
        account: String,
        key: String,
    }
    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct CircuitLabels {
        account: String,
        key: String,
        state: &'static str,
    }
    let mut registry = Registry::with_prefix("glmgate");
    let in_flight = Family::<AccountLabels, Gauge>::default();
    let state = Family::<StateLabels, Gauge>::default();
    let quota = Family::<AccountLabels, Gauge<f64, AtomicU64>>::default();
    let model_in_flight = Family::<ModelLabels, Gauge>::default();
    let limit = Family::<ModelLabels, Gauge<f64, AtomicU64>>::default();
    let key_in_flight = Family::<KeyLabels, Gauge>::default();
    let key_requests = Family::<KeyLabels, Counter>::default();
    let key_failures = Family::<KeyLabels, Counter>::default();
    let key_score = Family::<KeyLabels, Gauge<f64, AtomicU64>>::default();
    let circuit = Family::<CircuitLabels, Gauge>::default();
    for a in accounts {
        let account = a.account.to_string();
        let al = AccountLabels {
            account: account.clone(),
        };
        in_flight.get_or_create(&al).set(i64::from(a.in_flight));
        for s in crate::upstream::pool::ACCOUNT_STATES {
            state
                .get_or_create(&StateLabels {
                    account: account.clone(),
                    state: s,
                })
                .set(i64::from(s == a.state));
        }
        if let Some(used) = a.quota_used_percent {
            quota.get_or_create(&al).set(used / 100.0);
        }
        for m in &a.models {
            let ml = ModelLabels {
                account: account.clone(),
                model: m.model.clone(),
            };
            model_in_flight
                .get_or_create(&ml)
                .set(i64::from(m.in_flight));
            if let Some(l) = m.adaptive_limit {
                limit.get_or_create(&ml).set(l);
            }
        }
        for k in &a.keys {
            let kl = KeyLabels {
                account: account.clone(),
                key: k.key.to_string(),
            };
            key_in_flight.get_or_create(&kl).set(i64::from(k.in_flight));
            key_requests.get_or_create(&kl).inc_by(k.requests);
            key_failures.get_or_create(&kl).inc_by(k.failures);
            key_score.get_or_create(&kl).set(k.health_score);
            for s in crate::upstream::pool::CIRCUIT_STATES {
                circuit
                    .get_or_create(&CircuitLabels {
                        account: account.clone(),
                        key: kl.key.clone(),
                        state: s,
                    })
                    .set(i64::from(s == k.circuit));
            }
        }
    }
    registry.register(
        "upstream_in_flight",
        "Requests in flight on an upstream account",
        in_flight,
    );
    registry.register(
        "upstream_account_state",
        "1 for the account's current state (active, cooling_down, benched, no_usable_key)",
        state,
    );
    registry.register_with_unit(
        "upstream_quota_used",
        "Share of the account's quota window used, as the quota monitor last read it",
        Unit::Other("ratio".into()),
        quota,
    );
    registry.register(
        "upstream_model_in_flight",
        "Requests in flight on an account, by model",
        model_in_flight,
    );
    registry.register(
        "upstream_adaptive_limit",
        "Concurrency limit learned from the upstream's 429s (AIMD), by account and model",
        limit,
    );
    registry.register(
        "upstream_key_in_flight",
        "Requests in flight on an upstream key (keys are labelled by account and a hash prefix)",
        key_in_flight,
    );
    registry.register(
        "upstream_key_requests",
        "Attempts sent on an upstream key",
        key_requests,
    );
    registry.register(
        "upstream_key_failures",
        "Attempts on an upstream key that failed",
        key_failures,
    );
    registry.register(
        "upstream_key_health_score",
        "The key's selection score (lower is better: latency, failures, recent errors, load)",
        key_score,
    );
    registry.register(
        "upstream_key_circuit",
        "1 for the key's circuit breaker state (closed, open, half_open)",
        circuit,
    );
    registry
}

/// `process_*` series (the conventional names, without the gateway's prefix) from
/// `/proc/self`; on other systems only the start time.
fn process_series(started: std::time::SystemTime) -> Registry {
    let mut registry = Registry::default();
    let sub = registry.sub_registry_with_prefix("process");
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| -> Option<i64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    };
    let gauge = |v: i64| {
        let g: Gauge = Gauge::default();
        g.set(v);
        g
    };
    if let Some(kb) = field("VmRSS:") {
        sub.register_with_unit(
            "resident_memory",
            "Resident memory size",
            Unit::Bytes,
            gauge(kb * 1024),
        );
    }
    if let Some(kb) = field("VmSize:") {
        sub.register_with_unit(
            "virtual_memory",
            "Virtual memory size",
            Unit::Bytes,
            gauge(kb * 1024),
        );
    }
    if let Some(n) = field("Threads:") {
        sub.register("threads", "OS threads", gauge(n));
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        sub.register(
            "open_fds",
            "Open file descriptors",
            gauge(fds.count() as i64),
        );
    }
    // utime and stime, in clock ticks (USER_HZ, 100 on Linux), after the command name.
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let fields: Vec<&str> = after.split_whitespace().collect();
        let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok());
        if let (Some(u), Some(s)) = (ticks(11), ticks(12)) {
            let c: Counter<f64, AtomicU64> = Counter::default();
            c.inc_by((u + s) as f64 / 100.0);
            sub.register_with_unit("cpu", "User and system CPU time", Unit::Seconds, c);
        }
    }
    let since_epoch = started
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let start: Gauge<f64, AtomicU64> = Gauge::default();
    start.set(since_epoch);
    sub.register_with_unit(
        "start_time",
        "When the gateway started, in seconds since the Unix epoch",
        Unit::Seconds,
        start,
    );
    registry
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounting::Outcome;
    use crate::store::testing::usage_record;

    fn line<'a>(text: &'a str, start: &str) -> Option<&'a str> {
        text.lines().find(|l| l.starts_with(start))
    }

    #[test]
    fn a_batch_is_counted_by_series_status_and_outcome() {
        let m = Metrics::new();
        let mut batch: Vec<UsageRecord> = (1..=4).map(|i| usage_record(1, i)).collect();
        batch[1].status = 429;
        batch[1].outcome = Outcome::UpstreamError;
        batch[2].estimated = true;
        batch[3].ttfb_us = Some(2_000);
        batch[0].ttfb_us = Some(1_000);
        m.observe(&batch);
        m.observe(&batch[..1]);
        let text = m.render(&[]);
        let ok = "glmgate_requests_total{api=\"openai\",model=\"glm-4.7\",stream=\"false\",upstream=\"none\",status=\"200\",outcome=\"ok\"}";
        assert_eq!(line(&text, ok), Some(format!("{ok} 4").as_str()));
        assert!(text.contains("status=\"429\",outcome=\"upstream_error\"} 1"));
        // Input tokens 1 + 2 + 4 + 1 reported, 3 estimated.
        assert!(
            text.contains("kind=\"input\",estimated=\"false\"} 8"),
            "{text}"
        );
        assert!(
            text.contains("kind=\"input\",estimated=\"true\"} 3"),
            "{text}"
        );
        // Two good answers had a first byte in the first batch, one in the second.
        assert!(text.contains("glmgate_time_to_first_byte_seconds_count{api=\"openai\",model=\"glm-4.7\",stream=\"false\"} 3"));
        assert!(text.contains("glmgate_time_to_first_byte_seconds_sum{api=\"openai\",model=\"glm-4.7\",stream=\"false\"} 0.004"));
        assert!(text.contains("glmgate_request_duration_seconds_count{api=\"openai\",model=\"glm-4.7\",stream=\"false\"} 5"));
    }

    #[test]
    fn model_names_past_the_limit_are_counted_as_other() {
        let m = Metrics::new();
        let batch: Vec<UsageRecord> = (0..MAX_MODELS + 5)
            .map(|i| {
                let mut r = usage_record(1, i);
                r.model = format!("model-{i}");
                r
            })
            .collect();
        m.observe(&batch);
        // A name admitted before stays itself.
        let mut again = usage_record(1, 0);
        again.model = "model-0".into();
        m.observe(&[again]);
        let text = m.render(&[]);
        let series = text
            .lines()
            .filter(|l| l.starts_with("glmgate_requests_total"))
            .count();
        assert_eq!(series, MAX_MODELS + 1);
        assert!(text.contains(
            "model=\"other\",stream=\"false\",upstream=\"none\",status=\"200\",outcome=\"ok\"} 5"
        ));
        assert!(text.contains(
            "model=\"model-0\",stream=\"false\",upstream=\"none\",status=\"200\",outcome=\"ok\"} 2"
        ));
    }

    #[test]
    fn refusals_and_lost_records_are_counted_by_reason() {
        let m = Metrics::new();
        m.rejected(Dialect::Anthropic, &ApiError::InvalidKey);
        m.rejected(Dialect::Anthropic, &ApiError::InvalidKey);
        m.rejected(Dialect::OpenAi, &ApiError::TooLarge(1));
        m.lost_queue_full();
        m.lost_write_failed(7);
        let text = m.render(&[]);
        assert!(
            text.contains("glmgate_rejected_total{api=\"anthropic\",reason=\"invalid_api_key\"} 2")
        );
        assert!(
            text.contains("glmgate_rejected_total{api=\"openai\",reason=\"request_too_large\"} 1")
        );
        assert!(
            !text.contains("reason=\"missing_api_key\""),
            "no empty series"
        );
        assert!(text.contains("glmgate_usage_records_lost_total{reason=\"queue_full\"} 1"));
        assert!(text.contains("glmgate_usage_records_lost_total{reason=\"write_failed\"} 7"));
        assert!(text.ends_with("# EOF\n"));
    }
}
