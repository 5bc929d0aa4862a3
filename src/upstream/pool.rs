//! Providers → accounts → keys, and their live state: in-flight counts, adaptive limits,
//! benches, cooldowns, circuit breakers and health. Picks where each attempt goes.
//!
//! Z.AI counts concurrency per account (and model), so limits live on the account; keys of
//! one account share them. A [`Pool`] is rebuilt on every config reload, but each account's
//! state (an `Arc`) is carried over by account id, so counts and learned limits survive and
//! permits issued before the reload still release into the right place.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap, HeaderValue};
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, Notify};
use url::Url;

use super::aimd::{Aimd, Change};
use super::classify::{Class, Classifier, Failure};
use super::client::Endpoint;
use crate::config::{AccountSettings, AnthropicAuth, Policy, Secret, UpstreamSettings};
use crate::error::{ApiError, Dialect};

const MINUTE: Duration = Duration::from_secs(60);

/// One upstream service: where each API format lives and how keys are sent.
#[derive(Debug)]
pub struct Provider {
    pub name: String,
    pub openai: Option<Endpoint>,
    pub anthropic: Option<Endpoint>,
    pub anthropic_auth: AnthropicAuth,
    /// `{anthropic base}/v1/messages/count_tokens`, when the provider is asked for counts.
    pub count_tokens: Option<Endpoint>,
}

impl Provider {
    pub fn endpoint(&self, dialect: Dialect) -> Option<&Endpoint> {
        match dialect {
            Dialect::OpenAi => self.openai.as_ref(),
            Dialect::Anthropic => self.anthropic.as_ref(),
        }
    }
}

/// An upstream key. Its label (account id plus a hash prefix) is what logs and the admin API
/// show; the secret itself is never shown.
pub struct Key {
    pub label: Arc<str>,
    pub secret: Secret,
    /// `Bearer <secret>` and the bare secret as header values, built once (not on every
    /// request) and marked sensitive.
    bearer: HeaderValue,
    bare: HeaderValue,
}

impl Key {
    pub fn new(label: Arc<str>, secret: Secret) -> Key {
        Key {
            bearer: super::client::secret_value(&format!("Bearer {}", secret.expose())),
            bare: super::client::secret_value(secret.expose()),
            label,
            secret,
        }
    }

    /// `Authorization: Bearer <secret>`.
    pub fn bearer(&self) -> HeaderValue {
        self.bearer.clone()
    }

    /// Puts the key on an upstream request: a bearer token on the OpenAI API; on the
    /// Anthropic API as the provider wants it.
    pub fn authorize(&self, h: &mut HeaderMap, dialect: Dialect, auth: AnthropicAuth) {
        match (dialect, auth) {
            (Dialect::Anthropic, AnthropicAuth::XApiKey) => {
                h.insert("x-api-key", self.bare.clone());
            }
            _ => {
                h.insert(header::AUTHORIZATION, self.bearer.clone());
            }
        }
    }
}

struct Account {
    id: Arc<str>,
    provider: Arc<Provider>,
    cfg: AccountSettings,
    keys: Vec<Arc<Key>>,
    state: Arc<AccountState>,
}

/// A learned concurrency limit to persist (`None`: forgotten).
#[derive(Debug)]
pub struct LimitUpdate {
    pub account: Arc<str>,
    pub model: String,
    pub limit: Option<f64>,
}

/// Wake-ups for requests waiting for a slot; shared by all pools across reloads.
#[derive(Default)]
pub struct Waiters {
    pub notify: Notify,
    pub count: AtomicUsize,
}

pub struct Pool {
    pub policy: Policy,
    pub classifier: Classifier,
    providers: Vec<Arc<Provider>>,
    accounts: Vec<Account>,
    rotate: AtomicUsize,
    limits_tx: Option<mpsc::UnboundedSender<LimitUpdate>>,
}

pub struct AccountState {
    rt: Mutex<AccountRt>,
}

impl AccountState {
    fn lock(&self) -> MutexGuard<'_, AccountRt> {
        // A panic while holding the lock leaves plain counters behind: keep using them.
        self.rt.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Decision {
    Unused,
    Picked,
    NotChosen,
    NotInPlan,
    Benched,
    ModelBenched,
    CoolingDown,
    RpmLimit,
    Full,
    NoUsableKey,
    KeyDisabled,
    CircuitOpen,
    KeyFull,
}

impl Decision {
    fn as_str(self) -> &'static str {
        match self {
            Decision::Unused => "not considered yet",
            Decision::Picked => "picked",
            Decision::NotChosen => "skipped: another was healthier or less loaded",
            Decision::NotInPlan => "skipped: model not in this account's plan",
            Decision::Benched => "skipped: account quota exhausted until reset",
            Decision::ModelBenched => "skipped: model unavailable on this account (plan/balance)",
            Decision::CoolingDown => "skipped: cooling down after an upstream overload",
            Decision::RpmLimit => "skipped: requests-per-minute limit reached",
            Decision::Full => "skipped: concurrency limit reached",
            Decision::NoUsableKey => "skipped: no usable key",
            Decision::KeyDisabled => "skipped: key disabled",
            Decision::CircuitOpen => "skipped: circuit open",
            Decision::KeyFull => "skipped: key concurrency or rpm limit reached",
        }
    }
}

#[derive(Clone, Debug)]
struct Bench {
    until: Instant,
    wall: DateTime<Utc>,
    reason: String,
}

#[derive(Clone, Debug)]
struct ErrorNote {
    what: String,
    wall: DateTime<Utc>,
    at: Instant,
}

#[derive(Clone, Copy, Debug)]
enum Circuit {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { probing: bool },
}

struct ModelRt {
    in_flight: u32,
    aimd: Aimd,
    bench: Option<Bench>,
}

/// Models an account keeps state for before it forgets the ones whose state is the same as
/// a new entry's (a client can name any model: typos would otherwise pile up for good).
const MODEL_STATES: usize = 64;

impl ModelRt {
    /// Whether forgetting this entry would lose anything: requests in flight, a learned
    /// concurrency limit, or a bench.
    fn carries_state(&self) -> bool {
        self.in_flight > 0 || self.aimd.limit().is_some() || self.bench.is_some()
    }
}

struct KeyRt {
    label: Arc<str>,
    in_flight: u32,
    disabled: Option<String>,
    circuit: Circuit,
    ewma_ms: Option<f64>,
    success: f64,
    window: VecDeque<Instant>,
    last_error: Option<ErrorNote>,
    decision: Decision,
    requests: u64,
    failures: u64,
}

impl KeyRt {
    fn new(label: Arc<str>) -> KeyRt {
        KeyRt {
            label,
            in_flight: 0,
            disabled: None,
            circuit: Circuit::Closed { failures: 0 },
            ewma_ms: None,
            success: 1.0,
            window: VecDeque::new(),
            last_error: None,
            decision: Decision::Unused,
            requests: 0,
            failures: 0,
        }
    }

    /// Lower is better: latency (seconds), failure rate, a recent error, load. Failures
    /// weigh most: a key that keeps failing must lose to a busy healthy one, not win
    /// because nothing is in flight on it.
    fn score(&self, now: Instant) -> f64 {
        let latency = self.ewma_ms.unwrap_or(0.0).min(10_000.0) / 1000.0;
        let failing = (1.0 - self.success) * 50.0;
        let recent = self.last_error.as_ref().map_or(0.0, |e| {
            let age = now.duration_since(e.at).as_secs_f64();
            if age < 60.0 {
                (60.0 - age) / 6.0
            } else {
                0.0
            }
        });
        latency + failing + recent + f64::from(self.in_flight) * 0.25
    }

    /// One of [`CIRCUIT_STATES`].
    fn circuit_name(&self, now: Instant) -> &'static str {
        match self.circuit {
            Circuit::Closed { .. } => "closed",
            Circuit::Open { until } if until > now => "open",
            Circuit::Open { .. } | Circuit::HalfOpen { .. } => "half_open",
        }
    }
}

struct AccountRt {
    in_flight: u32,
    models: HashMap<String, ModelRt>,
    bench: Option<Bench>,
    cooldown_until: Option<Instant>,
    overloads: u32,
    window: VecDeque<Instant>,
    last_error: Option<ErrorNote>,
    decision: Decision,
    /// Aligned with the account's `keys`.
    keys: Vec<KeyRt>,
    /// From the quota monitor, when polled.
    quota: Option<QuotaReading>,
}

impl AccountRt {
    /// One of [`ACCOUNT_STATES`].
    fn state_name(&self, now: Instant) -> &'static str {
        let benched = self.bench.as_ref().is_some_and(|b| b.until > now);
        let used_up = self.quota.as_ref().is_some_and(|q| {
            q.used_percent >= 100.0 && q.next_reset.is_some_and(|t| t > Utc::now())
        });
        if benched || used_up {
            "benched"
        } else if self.cooldown_until.is_some_and(|c| c > now) {
            "cooling_down"
        } else if self.keys.iter().all(|k| k.disabled.is_some()) {
            "no_usable_key"
        } else {
            "active"
        }
    }
}

/// What the upstream's quota monitor said about an account.
#[derive(Clone, Debug)]
pub struct QuotaReading {
    /// Share of the window's quota used, 0–100.
    pub used_percent: f64,
    pub next_reset: Option<DateTime<Utc>>,
    pub checked: DateTime<Utc>,
}

fn prune(window: &mut VecDeque<Instant>, now: Instant) {
    while window
        .front()
        .is_some_and(|t| now.duration_since(*t) >= MINUTE)
    {
        window.pop_front();
    }
}

enum Eval {
    Candidate {
        score: f64,
        key: usize,
    },
    Wait(Option<Instant>),
    Quota(DateTime<Utc>),
    Plan(DateTime<Utc>),
    NotInPlan,
    NoKeys,
    /// Every live key's circuit is open until then: failing fast beats waiting.
    Broken(Instant),
}

/// Where an attempt goes.
pub struct Target {
    pub provider: Arc<Provider>,
    pub key: Arc<Key>,
    pub account: Arc<str>,
}

/// The outcome of one pick.
pub enum Select {
    Ready(Permit, Target),
    /// Nothing has room now; something may change by then (or on any release).
    Wait(Option<Instant>),
    Refuse(ApiError),
}

/// A held slot on an account, model and key. Dropping it releases the slot.
pub struct Permit {
    state: Arc<AccountState>,
    key: Arc<str>,
    model: String,
    probe: bool,
    reported: bool,
    waiters: Arc<Waiters>,
}

fn min_opt<T: Ord>(a: Option<T>, b: Option<T>) -> Option<T> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn key_label(account: &str, secret: &Secret) -> Arc<str> {
    let digest = Sha256::digest(secret.expose().as_bytes());
    Arc::from(format!("{account}#{}", &hex::encode(digest)[..8]))
}

impl Pool {
    /// Builds a pool from settings, carrying over the live state of accounts that `previous`
    /// also had, and learned limits from `restored` (`(account id, model) → limit`).
    pub fn build(
        settings: &UpstreamSettings,
        previous: Option<&Pool>,
        restored: &HashMap<(String, String), f64>,
        limits_tx: Option<mpsc::UnboundedSender<LimitUpdate>>,
    ) -> Pool {
        let now = Instant::now();
        let mut old: HashMap<&str, &Arc<AccountState>> = previous
            .map(|p| {
                p.accounts
                    .iter()
                    .map(|a| (a.id.as_ref(), &a.state))
                    .collect()
            })
            .unwrap_or_default();
        let mut providers = Vec::new();
        let mut accounts = Vec::new();
        for p in &settings.providers {
            let provider = Arc::new(Provider {
                name: p.name.clone(),
                openai: p
                    .openai_base
                    .as_ref()
                    .and_then(|b| join(b, "/chat/completions")),
                anthropic: p
                    .anthropic_base
                    .as_ref()
                    .and_then(|b| join(b, "/v1/messages")),
                anthropic_auth: p.anthropic_auth,
                count_tokens: p
                    .anthropic_base
                    .as_ref()
                    .filter(|_| p.count_tokens_upstream)
                    .and_then(|b| join(b, "/v1/messages/count_tokens")),
            });
            providers.push(provider.clone());
            for a in &p.accounts {
                let id: Arc<str> = Arc::from(format!("{}/{}", p.name, a.name));
                let keys: Vec<Arc<Key>> = a
                    .keys
                    .iter()
                    .map(|s| Arc::new(Key::new(key_label(&id, s), s.clone())))
                    .collect();
                let state = match old.remove(id.as_ref()) {
                    Some(s) => s.clone(),
                    None => {
                        let models = restored
                            .iter()
                            .filter(|((acc, _), _)| acc.as_str() == id.as_ref())
                            .map(|((_, model), limit)| {
                                (
                                    model.clone(),
                                    ModelRt {
                                        in_flight: 0,
                                        aimd: Aimd::restored(*limit, now),
                                        bench: None,
                                    },
                                )
                            })
                            .collect();
                        Arc::new(AccountState {
                            rt: Mutex::new(AccountRt {
                                in_flight: 0,
                                models,
                                bench: None,
                                cooldown_until: None,
                                overloads: 0,
                                window: VecDeque::new(),
                                last_error: None,
                                decision: Decision::Unused,
                                keys: Vec::new(),
                                quota: None,
                            }),
                        })
                    }
                };
                {
                    let mut rt = state.lock();
                    let mut existing = std::mem::take(&mut rt.keys);
                    rt.keys = keys
                        .iter()
                        .map(|k| match existing.iter().position(|e| e.label == k.label) {
                            // A reload gives a disabled key another chance.
                            Some(i) => KeyRt {
                                disabled: None,
                                ..existing.swap_remove(i)
                            },
                            None => KeyRt::new(k.label.clone()),
                        })
                        .collect();
                }
                let mut cfg = a.clone();
                cfg.keys.clear();
                accounts.push(Account {
                    id,
                    provider: provider.clone(),
                    cfg,
                    keys,
                    state,
                });
            }
        }
        Pool {
            classifier: Classifier::new(&settings.policy.classes),
            policy: settings.policy.clone(),
            providers,
            accounts,
            rotate: AtomicUsize::new(0),
            limits_tx,
        }
    }

    pub fn speaks(&self, dialect: Dialect) -> bool {
        self.providers.iter().any(|p| p.endpoint(dialect).is_some())
    }

    pub fn key_count(&self) -> usize {
        self.accounts.iter().map(|a| a.keys.len()).sum()
    }

    /// Keys not disabled by an upstream 401/403.
    pub fn usable_key_count(&self) -> usize {
        self.accounts
            .iter()
            .map(|a| {
                a.state
                    .lock()
                    .keys
                    .iter()
                    .filter(|k| k.disabled.is_none())
                    .count()
            })
            .sum()
    }

    fn persist(&self, account: &Arc<str>, model: &str, change: Change) {
        let limit = match change {
            Change::None => return,
            Change::Set(l) => Some(l),
            Change::Cleared => None,
        };
        if let Some(tx) = &self.limits_tx {
            let _ = tx.send(LimitUpdate {
                account: account.clone(),
                model: model.to_string(),
                limit,
            });
        }
    }

    /// Picks the best account and key with room for one more `model` request in `dialect`,
    /// preferring keys not in `avoid` (tried already by this request).
    pub fn select(
        &self,
        dialect: Dialect,
        model: &str,
        avoid: &[Arc<str>],
        waiters: &Arc<Waiters>,
    ) -> Select {
        let now = Instant::now();
        let n = self.accounts.len();
        if n == 0 {
            return Select::Refuse(ApiError::NoUpstreamKey);
        }
        let start = self.rotate.fetch_add(1, Ordering::Relaxed);
        for _ in 0..4 {
            let mut best: Option<(f64, usize, usize)> = None;
            let mut wait: Option<Instant> = None;
            let mut waitable = false;
            let mut quota: Option<DateTime<Utc>> = None;
            let mut plan: Option<DateTime<Utc>> = None;
            let (mut not_in_plan, mut spoken) = (false, false);
            let mut broken: Option<Instant> = None;
            for i in 0..n {
                let ai = (start + i) % n;
                let a = &self.accounts[ai];
                if a.provider.endpoint(dialect).is_none() {
                    continue;
                }
                spoken = true;
                let mut rt = a.state.lock();
                match self.evaluate(a, &mut rt, model, avoid, now) {
                    Eval::Candidate { score, key }
                        if i == n - 1 && best.is_none_or(|b| score < b.0) =>
                    {
                        // The best is the last account scanned, still locked since it was
                        // evaluated: take it without a second look (always, with one account).
                        return self.take(a, &mut rt, key, model, now, waiters);
                    }
                    Eval::Candidate { score, key } => {
                        rt.decision = Decision::NotChosen;
                        if best.is_none_or(|b| score < b.0) {
                            best = Some((score, ai, key));
                        }
                    }
                    Eval::Wait(until) => {
                        waitable = true;
                        wait = min_opt(wait, until);
                    }
                    Eval::Quota(t) => quota = min_opt(quota, Some(t)),
                    Eval::Plan(t) => plan = min_opt(plan, Some(t)),
                    Eval::NotInPlan => not_in_plan = true,
                    Eval::NoKeys => {}
                    Eval::Broken(until) => broken = min_opt(broken, Some(until)),
                }
            }
            if let Some((_, ai, _)) = best {
                let a = &self.accounts[ai];
                let mut rt = a.state.lock();
                // Counts may have moved since the scan: check again under the lock.
                if let Eval::Candidate { key, .. } = self.evaluate(a, &mut rt, model, avoid, now) {
                    return self.take(a, &mut rt, key, model, now, waiters);
                }
                continue;
            }
            if waitable {
                return Select::Wait(wait);
            }
            if !spoken {
                return Select::Refuse(ApiError::NoUpstream(format!(
                    "no upstream speaks the {} API",
                    dialect.as_str()
                )));
            }
            return Select::Refuse(if let Some(t) = quota.or(plan) {
                let secs = (t - Utc::now()).num_seconds().max(1) as u64;
                ApiError::QuotaExhausted {
                    message: format!(
                        "every upstream account that serves `{model}` is out of quota or \
                         unavailable until {} (UTC)",
                        t.format("%Y-%m-%d %H:%M:%S")
                    ),
                    retry_after_secs: secs,
                }
            } else if let Some(until) = broken {
                ApiError::NoWorkingUpstream {
                    message: "every usable upstream key is failing (circuit open); see \
                              /admin/upstreams"
                        .into(),
                    retry_after_secs: until.saturating_duration_since(now).as_secs().max(1),
                }
            } else if not_in_plan {
                ApiError::ModelUnavailable(model.to_string())
            } else {
                ApiError::NoWorkingUpstream {
                    message: "every upstream key has been disabled after the upstream \
                              rejected it (see /admin/upstreams)"
                        .into(),
                    retry_after_secs: 30,
                }
            });
        }
        Select::Wait(Some(now + Duration::from_millis(5)))
    }

    fn evaluate(
        &self,
        a: &Account,
        rt: &mut AccountRt,
        model: &str,
        avoid: &[Arc<str>],
        now: Instant,
    ) -> Eval {
        let cfg = &a.cfg;
        if !cfg.models.is_empty() && !cfg.models.iter().any(|m| m == model) {
            rt.decision = Decision::NotInPlan;
            return Eval::NotInPlan;
        }
        if let Some(b) = &rt.bench {
            if b.until > now {
                rt.decision = Decision::Benched;
                return Eval::Quota(b.wall);
            }
            rt.bench = None;
        }
        if let Some(q) = &rt.quota {
            if q.used_percent >= 100.0 && q.next_reset.is_some_and(|t| t > Utc::now()) {
                rt.decision = Decision::Benched;
                return Eval::Quota(q.next_reset.unwrap_or_else(Utc::now));
            }
        }
        let account_in_flight = rt.in_flight;
        let m = match rt.models.get_mut(model) {
            Some(m) => m,
            None => {
                if rt.models.len() >= MODEL_STATES {
                    rt.models.retain(|_, m| m.carries_state());
                }
                rt.models.entry(model.to_string()).or_insert(ModelRt {
                    in_flight: 0,
                    aimd: Aimd::new(now),
                    bench: None,
                })
            }
        };
        if let Some(b) = &m.bench {
            if b.until > now {
                let wall = b.wall;
                rt.decision = Decision::ModelBenched;
                return Eval::Plan(wall);
            }
            m.bench = None;
        }
        let change = m.aimd.maybe_increase(
            self.policy.aimd_increase_interval,
            self.policy.aimd_max_limit,
            now,
        );
        self.persist(&a.id, model, change);
        let model_admits = m.aimd.admits(m.in_flight);
        let adaptive = m.aimd.limit();
        if let Some(c) = rt.cooldown_until {
            if c > now {
                rt.decision = Decision::CoolingDown;
                return Eval::Wait(Some(c));
            }
            rt.cooldown_until = None;
        }
        if cfg.rpm > 0 {
            prune(&mut rt.window, now);
            if rt.window.len() >= cfg.rpm as usize {
                rt.decision = Decision::RpmLimit;
                return Eval::Wait(rt.window.front().map(|t| *t + MINUTE));
            }
        }
        if (cfg.max_in_flight > 0 && account_in_flight >= cfg.max_in_flight) || !model_admits {
            rt.decision = Decision::Full;
            return Eval::Wait(None);
        }
        let mut best: Option<(f64, usize)> = None;
        let mut alive = false;
        let mut wait: Option<Instant> = None;
        let mut busy = false;
        let mut broken: Option<Instant> = None;
        for (i, k) in rt.keys.iter_mut().enumerate() {
            if k.disabled.is_some() {
                k.decision = Decision::KeyDisabled;
                continue;
            }
            alive = true;
            match k.circuit {
                Circuit::Open { until } if until > now => {
                    k.decision = Decision::CircuitOpen;
                    broken = min_opt(broken, Some(until));
                    continue;
                }
                Circuit::Open { .. } => k.circuit = Circuit::HalfOpen { probing: false },
                Circuit::HalfOpen { probing: true } => {
                    k.decision = Decision::CircuitOpen;
                    busy = true;
                    continue;
                }
                _ => {}
            }
            if cfg.key_max_in_flight > 0 && k.in_flight >= cfg.key_max_in_flight {
                k.decision = Decision::KeyFull;
                busy = true;
                continue;
            }
            if cfg.key_rpm > 0 {
                prune(&mut k.window, now);
                if k.window.len() >= cfg.key_rpm as usize {
                    k.decision = Decision::KeyFull;
                    busy = true;
                    wait = min_opt(wait, k.window.front().map(|t| *t + MINUTE));
                    continue;
                }
            }
            let mut score = k.score(now);
            if avoid.contains(&k.label) {
                score += 1000.0;
            }
            k.decision = Decision::NotChosen;
            if best.is_none_or(|b| score < b.0) {
                best = Some((score, i));
            }
        }
        let Some((key_score, key)) = best else {
            rt.decision = Decision::NoUsableKey;
            return match (alive, busy, broken) {
                (true, true, _) => Eval::Wait(min_opt(wait, broken)),
                (true, false, Some(until)) => Eval::Broken(until),
                _ => Eval::NoKeys,
            };
        };
        let limit = match (cfg.max_in_flight, adaptive) {
            (0, None) => None,
            (0, Some(l)) => Some(l),
            (m, None) => Some(m),
            (m, Some(l)) => Some(m.min(l)),
        };
        let load = match limit {
            Some(l) => f64::from(account_in_flight) / f64::from(l.max(1)),
            None => f64::from(account_in_flight) * 0.02,
        };
        // Prefer accounts with quota left, when the monitor is polled.
        let used = rt.quota.as_ref().map_or(0.0, |q| q.used_percent / 50.0);
        let load = load + used;
        Eval::Candidate {
            score: load + key_score,
            key,
        }
    }

    /// [`Select::Ready`] with `key` of account `a`, whose state `rt` is locked: counts the
    /// request in.
    fn take(
        &self,
        a: &Account,
        rt: &mut AccountRt,
        key: usize,
        model: &str,
        now: Instant,
        waiters: &Arc<Waiters>,
    ) -> Select {
        rt.in_flight += 1;
        rt.decision = Decision::Picked;
        if a.cfg.rpm > 0 {
            rt.window.push_back(now);
        }
        if let Some(m) = rt.models.get_mut(model) {
            m.in_flight += 1;
        }
        let mut probe = false;
        let label = match rt.keys.get_mut(key) {
            Some(k) => {
                k.in_flight += 1;
                k.requests += 1;
                k.decision = Decision::Picked;
                if a.cfg.key_rpm > 0 {
                    k.window.push_back(now);
                }
                if let Circuit::HalfOpen { probing } = &mut k.circuit {
                    *probing = true;
                    probe = true;
                }
                k.label.clone()
            }
            None => a.keys[key].label.clone(),
        };
        let permit = Permit {
            state: a.state.clone(),
            key: label,
            model: model.to_string(),
            probe,
            reported: false,
            waiters: waiters.clone(),
        };
        Select::Ready(
            permit,
            Target {
                provider: a.provider.clone(),
                key: a.keys[key].clone(),
                account: a.id.clone(),
            },
        )
    }

    /// For the quota monitor: each account's id, provider and first usable key.
    pub fn quota_targets(&self) -> Vec<(Arc<str>, Arc<Provider>, Arc<Key>)> {
        self.accounts
            .iter()
            .filter_map(|a| {
                let rt = a.state.lock();
                let i = rt.keys.iter().position(|k| k.disabled.is_none())?;
                Some((a.id.clone(), a.provider.clone(), a.keys.get(i)?.clone()))
            })
            .collect()
    }

    /// A provider asked for token counts, with a usable key.
    pub fn count_tokens_target(&self) -> Option<(Arc<Provider>, Arc<Key>)> {
        self.quota_targets()
            .into_iter()
            .find(|(_, p, _)| p.count_tokens.is_some())
            .map(|(_, p, k)| (p, k))
    }

    pub fn set_quota(&self, account: &str, reading: QuotaReading) {
        if let Some(a) = self.accounts.iter().find(|a| a.id.as_ref() == account) {
            a.state.lock().quota = Some(reading);
        }
    }

    /// What a request for `model` in `dialect` would get now, account by account, without
    /// taking a slot (for `/admin/routing/explain`).
    pub fn explain(&self, dialect: Dialect, model: &str) -> Value {
        let now = Instant::now();
        let mut rows = Vec::new();
        let mut best: Option<(f64, Arc<str>, Arc<str>)> = None;
        for a in &self.accounts {
            if a.provider.endpoint(dialect).is_none() {
                rows.push(json!({"account": a.id.as_ref(), "eligible": false,
                                 "why": "its provider does not speak this API format"}));
                continue;
            }
            let mut rt = a.state.lock();
            let eval = self.evaluate(a, &mut rt, model, &[], now);
            let row = match eval {
                Eval::Candidate { score, key } => {
                    let label = a.keys[key].label.clone();
                    if best.as_ref().is_none_or(|b| score < b.0) {
                        best = Some((score, a.id.clone(), label.clone()));
                    }
                    json!({"account": a.id.as_ref(), "eligible": true, "key": label.as_ref(),
                           "score": (score * 1000.0).round() / 1000.0,
                           "why": "has room; lower score is preferred"})
                }
                _ => json!({"account": a.id.as_ref(), "eligible": false,
                            "why": rt.decision.as_str()}),
            };
            rows.push(row);
        }
        json!({
            "accounts": rows,
            "would_pick": best.map(|(_, account, key)| json!({"account": account.as_ref(), "key": key.as_ref()})),
        })
    }

    /// Every learned limit, to store on shutdown: `(account, model, limit)`.
    pub fn learned_limits(&self) -> Vec<(Arc<str>, String, f64)> {
        let mut out = Vec::new();
        for a in &self.accounts {
            let rt = a.state.lock();
            for (model, m) in &rt.models {
                if let Some(l) = m.aimd.limit() {
                    out.push((a.id.clone(), model.clone(), f64::from(l)));
                }
            }
        }
        out
    }

    /// `GET /admin/upstreams`: every provider, account and key (labels only), with state.
    pub fn snapshot(&self) -> Value {
        let now = Instant::now();
        let wall = |t: Instant| {
            let d = t.saturating_duration_since(now);
            (Utc::now() + chrono::Duration::from_std(d).unwrap_or_default()).to_rfc3339()
        };
        let providers: Vec<Value> = self
            .providers
            .iter()
            .map(|p| {
                let accounts: Vec<Value> = self
                    .accounts
                    .iter()
                    .filter(|a| Arc::ptr_eq(&a.provider, p))
                    .map(|a| {
                        let rt = a.state.lock();
                        let benched = rt.bench.as_ref().filter(|b| b.until > now);
                        let cooling = rt.cooldown_until.filter(|c| *c > now);
                        let state = rt.state_name(now);
                        let models: serde_json::Map<String, Value> = rt
                            .models
                            .iter()
                            .map(|(name, m)| {
                                let bench = m.bench.as_ref().filter(|b| b.until > now);
                                (
                                    name.clone(),
                                    json!({
                                        "in_flight": m.in_flight,
                                        "adaptive_limit": m.aimd.limit(),
                                        "benched_until": bench.map(|b| b.wall.to_rfc3339()),
                                        "bench_reason": bench.map(|b| b.reason.clone()),
                                    }),
                                )
                            })
                            .collect();
                        let keys: Vec<Value> = rt
                            .keys
                            .iter()
                            .map(|k| {
                                let open_until = match k.circuit {
                                    Circuit::Open { until } if until > now => Some(wall(until)),
                                    _ => None,
                                };
                                let circuit = k.circuit_name(now);
                                json!({
                                    "key": k.label.as_ref(),
                                    "state": if k.disabled.is_some() { "disabled" } else { "active" },
                                    "disabled_reason": k.disabled,
                                    "health_score": (k.score(now) * 1000.0).round() / 1000.0,
                                    "in_flight": k.in_flight,
                                    "latency_ewma_ms": k.ewma_ms.map(|v| v.round()),
                                    "success_rate": (k.success * 1000.0).round() / 1000.0,
                                    "requests": k.requests,
                                    "failures": k.failures,
                                    "circuit": circuit,
                                    "circuit_open_until": open_until,
                                    "last_error": k.last_error.as_ref().map(|e| e.what.clone()),
                                    "last_error_at": k.last_error.as_ref().map(|e| e.wall.to_rfc3339()),
                                    "last_decision": k.decision.as_str(),
                                })
                            })
                            .collect();
                        json!({
                            "account": a.id.as_ref(),
                            "state": state,
                            "in_flight": rt.in_flight,
                            "max_in_flight": (a.cfg.max_in_flight > 0).then_some(a.cfg.max_in_flight),
                            "rpm": (a.cfg.rpm > 0).then_some(a.cfg.rpm),
                            "plan_models": a.cfg.models,
                            "benched_until": benched.map(|b| b.wall.to_rfc3339()),
                            "bench_reason": benched.map(|b| b.reason.clone()),
                            "cooldown_until": cooling.map(wall),
                            "last_error": rt.last_error.as_ref().map(|e| e.what.clone()),
                            "last_error_at": rt.last_error.as_ref().map(|e| e.wall.to_rfc3339()),
                            "last_decision": rt.decision.as_str(),
                            "quota": rt.quota.as_ref().map(|q| json!({
                                "used_percent": q.used_percent,
                                "remaining_percent": (100.0 - q.used_percent).max(0.0),
                                "next_reset": q.next_reset.map(|t| t.to_rfc3339()),
                                "checked_at": q.checked.to_rfc3339(),
                            })),
                            "models": models,
                            "keys": keys,
                        })
                    })
                    .collect();
                json!({
                    "provider": p.name,
                    "openai_endpoint": p.openai.as_ref().map(|e| e.uri().to_string()),
                    "anthropic_endpoint": p.anthropic.as_ref().map(|e| e.uri().to_string()),
                    "accounts": accounts,
                })
            })
            .collect();
        json!({ "providers": providers })
    }
}

/// Account states, as `GET /metrics` labels them.
pub const ACCOUNT_STATES: [&str; 4] = ["active", "cooling_down", "benched", "no_usable_key"];
/// Circuit breaker states, as `GET /metrics` labels them.
pub const CIRCUIT_STATES: [&str; 3] = ["closed", "open", "half_open"];

/// An account's state for `GET /metrics` (labels only, never secrets).
pub struct AccountGauges {
    pub account: Arc<str>,
    /// One of [`ACCOUNT_STATES`].
    pub state: &'static str,
    pub in_flight: u32,
    pub quota_used_percent: Option<f64>,
    pub models: Vec<ModelGauges>,
    pub keys: Vec<KeyGauges>,
}

pub struct ModelGauges {
    pub model: String,
    pub in_flight: u32,
    pub adaptive_limit: Option<f64>,
}

pub struct KeyGauges {
    /// The key's label: account and a hash prefix.
    pub key: Arc<str>,
    pub in_flight: u32,
    pub requests: u64,
    pub failures: u64,
    pub health_score: f64,
    /// One of [`CIRCUIT_STATES`].
    pub circuit: &'static str,
}

impl Pool {
    /// Every account's state, for `GET /metrics`.
    pub fn gauges(&self) -> Vec<AccountGauges> {
        let now = Instant::now();
        self.accounts
            .iter()
            .map(|a| {
                let rt = a.state.lock();
                AccountGauges {
                    account: a.id.clone(),
                    state: rt.state_name(now),
                    in_flight: rt.in_flight,
                    quota_used_percent: rt.quota.as_ref().map(|q| q.used_percent),
                    models: rt
                        .models
                        .iter()
                        .map(|(name, m)| ModelGauges {
                            model: name.clone(),
                            in_flight: m.in_flight,
                            adaptive_limit: m.aimd.limit().map(f64::from),
                        })
                        .collect(),
                    keys: rt
                        .keys
                        .iter()
                        .map(|k| KeyGauges {
                            key: k.label.clone(),
                            in_flight: k.in_flight,
                            requests: k.requests,
                            failures: k.failures,
                            health_score: k.score(now),
                            circuit: k.circuit_name(now),
                        })
                        .collect(),
                }
            })
            .collect()
    }
}

/// An endpoint under a base URL, parsed once here rather than on every request.
fn join(base: &Url, suffix: &str) -> Option<Endpoint> {
    format!("{}{suffix}", base.as_str().trim_end_matches('/'))
        .parse()
        .ok()
        .and_then(Endpoint::new)
}

fn jitter(d: Duration) -> Duration {
    d.mul_f64(0.5 + rand::random::<f64>() * 0.5)
}

impl Permit {
    /// The attempt got a good first byte after `ttfb`.
    pub fn succeeded(&mut self, ttfb: Duration) {
        self.reported = true;
        let mut rt = self.state.lock();
        rt.overloads = 0;
        if let Some(k) = rt.keys.iter_mut().find(|k| k.label == self.key) {
            let ms = ttfb.as_secs_f64() * 1000.0;
            k.ewma_ms = Some(k.ewma_ms.map_or(ms, |e| e * 0.8 + ms * 0.2));
            k.success = k.success * 0.9 + 0.1;
            k.circuit = Circuit::Closed { failures: 0 };
        }
    }

    /// The attempt failed: apply what the failure's class means to the account, model and
    /// key.
    pub fn failed(&mut self, f: &Failure, pool: &Pool, account: &Arc<str>) {
        self.reported = true;
        let p = &pool.policy;
        let now = Instant::now();
        let note = ErrorNote {
            what: f.describe(),
            wall: Utc::now(),
            at: now,
        };
        let mut rt = self.state.lock();
        if f.class != Class::Client {
            rt.last_error = Some(note.clone());
        }
        match f.class {
            Class::Concurrency => {
                if let Some(m) = rt.models.get_mut(&self.model) {
                    let change = m.aimd.decrease(m.in_flight, p.aimd_decrease, now);
                    if let Change::Set(l) = change {
                        tracing::warn!(%account, model = %self.model, limit = l, "upstream concurrency limit hit; lowering the adaptive limit");
                    }
                    pool.persist(account, &self.model, change);
                }
            }
            Class::Overload => {
                rt.overloads = rt.overloads.saturating_add(1);
                let backoff = p
                    .backoff_base
                    .saturating_mul(1 << rt.overloads.min(16))
                    .min(p.backoff_max);
                let pause = f.retry_after.unwrap_or_else(|| jitter(backoff));
                rt.cooldown_until = Some(now + pause.min(Duration::from_secs(300)));
            }
            Class::Quota => {
                let wall = f
                    .reset_at
                    .filter(|t| *t > Utc::now())
                    .or_else(|| {
                        f.retry_after
                            .and_then(|d| chrono::Duration::from_std(d).ok())
                            .map(|d| Utc::now() + d)
                    })
                    .unwrap_or_else(|| {
                        Utc::now() + chrono::Duration::from_std(p.quota_bench).unwrap_or_default()
                    });
                let until = now + (wall - Utc::now()).to_std().unwrap_or_default();
                tracing::warn!(%account, until = %wall.to_rfc3339(), why = %note.what, "upstream account out of quota; benched until reset");
                rt.bench = Some(Bench {
                    until,
                    wall,
                    reason: note.what.clone(),
                });
            }
            Class::Plan => {
                let wall =
                    Utc::now() + chrono::Duration::from_std(p.plan_bench).unwrap_or_default();
                tracing::warn!(%account, model = %self.model, why = %note.what, "model unavailable on this account; benched");
                if let Some(m) = rt.models.get_mut(&self.model) {
                    m.bench = Some(Bench {
                        until: now + p.plan_bench,
                        wall,
                        reason: note.what.clone(),
                    });
                }
            }
            Class::Key | Class::Server | Class::Client => {}
        }
        if let Some(k) = rt.keys.iter_mut().find(|k| k.label == self.key) {
            match f.class {
                Class::Key => {
                    tracing::error!(key = %k.label, why = %note.what, "upstream rejected a key; disabled until it is changed or the config is reloaded");
                    k.disabled = Some(format!("upstream rejected the key: {}", note.what));
                }
                Class::Server => {
                    k.failures += 1;
                    k.success *= 0.9;
                    k.circuit = match k.circuit {
                        Circuit::Closed { failures } if failures + 1 < p.breaker_failures => {
                            Circuit::Closed {
                                failures: failures + 1,
                            }
                        }
                        _ => {
                            tracing::warn!(key = %k.label, open_secs = p.breaker_open.as_secs(), "circuit opened");
                            Circuit::Open {
                                until: now + p.breaker_open,
                            }
                        }
                    };
                }
                _ => {}
            }
            if f.class != Class::Client {
                k.last_error = Some(note);
            }
        }
    }

    /// The stream broke after it had started: count it against the key's health.
    pub fn stream_failed(&mut self) {
        let mut rt = self.state.lock();
        if let Some(k) = rt.keys.iter_mut().find(|k| k.label == self.key) {
            k.failures += 1;
            k.success *= 0.9;
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        {
            let mut rt = self.state.lock();
            rt.in_flight = rt.in_flight.saturating_sub(1);
            if let Some(m) = rt.models.get_mut(&self.model) {
                m.in_flight = m.in_flight.saturating_sub(1);
            }
            if let Some(k) = rt.keys.iter_mut().find(|k| k.label == self.key) {
                k.in_flight = k.in_flight.saturating_sub(1);
                if self.probe && !self.reported {
                    k.circuit = Circuit::HalfOpen { probing: false };
                }
            }
        }
        if self.waiters.count.load(Ordering::Relaxed) > 0 {
            self.waiters.notify.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ProviderSettings, RawClasses};
    use axum::http::{HeaderMap, StatusCode};

    fn settings(accounts: &[(&str, &[&str], u32)]) -> UpstreamSettings {
        let mut s = crate::config::validate(Default::default(), None)
            .expect("defaults")
            .upstream;
        s.providers = vec![ProviderSettings {
            name: "p".into(),
            openai_base: Url::parse("http://127.0.0.1:9/v4").ok(),
            anthropic_base: None,
            anthropic_auth: AnthropicAuth::Bearer,
            count_tokens_upstream: false,
            accounts: accounts
                .iter()
                .map(|(name, keys, max)| AccountSettings {
                    name: name.to_string(),
                    keys: keys.iter().map(|k| Secret::new(*k)).collect(),
                    max_in_flight: *max,
                    key_max_in_flight: 0,
                    rpm: 0,
                    key_rpm: 0,
                    models: Vec::new(),
                })
                .collect(),
        }];
        s
    }

    fn pick(pool: &Pool, w: &Arc<Waiters>) -> Option<(Permit, Target)> {
        match pool.select(Dialect::OpenAi, "glm-4.7", &[], w) {
            Select::Ready(p, t) => Some((p, t)),
            _ => None,
        }
    }

    fn failure(status: u16, body: &str) -> Failure {
        Classifier::new(&RawClasses::default()).classify(
            StatusCode::from_u16(status).expect("status"),
            &HeaderMap::new(),
            body.as_bytes(),
        )
    }

    #[test]
    fn limits_are_per_account_and_released_on_drop() {
        let pool = Pool::build(
            &settings(&[("a", &["k1", "k2"], 1), ("b", &["k3"], 1)]),
            None,
            &HashMap::new(),
            None,
        );
        let w = Arc::new(Waiters::default());
        let (p1, t1) = pick(&pool, &w).expect("first");
        let (p2, t2) = pick(&pool, &w).expect("second");
        assert_ne!(
            t1.account, t2.account,
            "two keys of one account add no capacity"
        );
        assert!(matches!(
            pool.select(Dialect::OpenAi, "glm-4.7", &[], &w),
            Select::Wait(None)
        ));
        drop(p1);
        assert!(pick(&pool, &w).is_some());
        drop(p2);
        assert!(matches!(
            pool.select(Dialect::Anthropic, "glm-4.7", &[], &w),
            Select::Refuse(ApiError::NoUpstream(_))
        ));
    }

    #[test]
    fn failures_bench_disable_and_open_circuits() {
        let pool = Pool::build(
            &settings(&[("a", &["k1"], 0), ("b", &["k2"], 0)]),
            None,
            &HashMap::new(),
            None,
        );
        let w = Arc::new(Waiters::default());
        // A 1308 benches account a: everything goes to b.
        let (mut p, t) = pick(&pool, &w).expect("pick");
        p.failed(
            &failure(429, r#"{"error":{"code":"1308","message":"Usage limit reached for 5 hour. Your limit will reset at 2099-01-01 08:00:00"}}"#),
            &pool,
            &t.account,
        );
        drop(p);
        let benched = t.account.clone();
        for _ in 0..5 {
            let (_p, t) = pick(&pool, &w).expect("other account");
            assert_ne!(t.account, benched);
        }
        // A 401 on the other account's only key leaves nothing: the client is told when
        // the quota comes back.
        let (mut p, t) = pick(&pool, &w).expect("pick");
        p.failed(
            &failure(401, r#"{"error":{"code":"1002"}}"#),
            &pool,
            &t.account,
        );
        drop(p);
        match pool.select(Dialect::OpenAi, "glm-4.7", &[], &w) {
            Select::Refuse(e @ ApiError::QuotaExhausted { .. }) => {
                assert!(e.to_string().contains("2099-01-01 00:00:00"), "{e}");
            }
            _ => panic!("expected a quota refusal"),
        }
        assert_eq!(pool.usable_key_count(), 1);
    }

    #[test]
    fn concurrency_errors_shrink_the_model_limit_and_state_survives_reload() {
        let s = settings(&[("a", &["k1"], 0)]);
        let pool = Pool::build(&s, None, &HashMap::new(), None);
        let w = Arc::new(Waiters::default());
        let held: Vec<_> = (0..4).map(|_| pick(&pool, &w).expect("room")).collect();
        let (mut p, t) = pick(&pool, &w).expect("fifth");
        p.failed(
            &failure(429, r#"{"error":{"code":"1302"}}"#),
            &pool,
            &t.account,
        );
        drop(p);
        drop(held);
        // 5 in flight when refused → limit 3.
        let held: Vec<_> = (0..3).map(|_| pick(&pool, &w).expect("room")).collect();
        assert!(pick(&pool, &w).is_none(), "adaptive limit holds");
        let reloaded = Pool::build(&s, Some(&pool), &HashMap::new(), None);
        assert!(pick(&reloaded, &w).is_none(), "state carried over");
        drop(held);
        assert!(pick(&reloaded, &w).is_some());
        // A fresh pool restores the learned limit from the store.
        let mut restored = HashMap::new();
        restored.insert(("p/a".to_string(), "glm-4.7".to_string()), 1.0);
        let fresh = Pool::build(&s, None, &restored, None);
        let _one = pick(&fresh, &w).expect("one");
        assert!(pick(&fresh, &w).is_none());
    }

    #[test]
    fn a_failing_key_opens_its_circuit_and_others_carry_on() {
        let pool = Pool::build(
            &settings(&[("a", &["k1"], 0), ("b", &["k2"], 0)]),
            None,
            &HashMap::new(),
            None,
        );
        let w = Arc::new(Waiters::default());
        let bad = key_label("p/a", &Secret::new("k1"));
        let good = key_label("p/b", &Secret::new("k2"));
        for _ in 0..pool.policy.breaker_failures {
            let Select::Ready(mut p, t) =
                pool.select(Dialect::OpenAi, "glm-4.7", std::slice::from_ref(&good), &w)
            else {
                panic!("a key is free");
            };
            assert_eq!(t.key.label, bad, "keys already tried are avoided");
            p.failed(&Failure::transport(), &pool, &t.account);
        }
        for _ in 0..10 {
            let (_p, t) = pick(&pool, &w).expect("pick");
            assert_eq!(t.key.label, good, "open circuit is skipped");
        }
        let snap = pool.snapshot().to_string();
        assert!(snap.contains("\"circuit\":\"open\""), "{snap}");
        assert!(!snap.contains("k1"), "keys are shown by label only: {snap}");

        // With no other key, the client is told at once rather than queued.
        let lone = Pool::build(&settings(&[("a", &["k1"], 0)]), None, &HashMap::new(), None);
        for _ in 0..lone.policy.breaker_failures {
            let (mut p, t) = pick(&lone, &w).expect("pick");
            p.failed(&Failure::transport(), &lone, &t.account);
        }
        assert!(matches!(
            lone.select(Dialect::OpenAi, "glm-4.7", &[], &w),
            Select::Refuse(ApiError::NoWorkingUpstream { .. })
        ));
    }

    #[test]
    fn models_named_once_are_forgotten_and_models_with_state_are_kept() {
        let pool = Pool::build(&settings(&[("a", &["k1"], 0)]), None, &HashMap::new(), None);
        let w = Arc::new(Waiters::default());
        let ready = |model: &str| match pool.select(Dialect::OpenAi, model, &[], &w) {
            Select::Ready(p, _) => p,
            _ => panic!("{model} was not admitted"),
        };
        let held = ready("glm-4.7");
        for i in 0..1000 {
            drop(ready(&format!("typo-{i}")));
        }
        let rt = pool.accounts[0].state.lock();
        assert!(
            rt.models.len() <= MODEL_STATES,
            "{} model states",
            rt.models.len()
        );
        assert_eq!(rt.models.get("glm-4.7").map(|m| m.in_flight), Some(1));
        drop(rt);
        drop(held);
        let rt = pool.accounts[0].state.lock();
        assert_eq!(rt.models.get("glm-4.7").map(|m| m.in_flight), Some(0));
    }

    #[test]
    fn endpoints_follow_the_format() {
        let pool = Pool::build(&settings(&[]), None, &HashMap::new(), None);
        let p = &pool.providers[0];
        assert_eq!(
            p.endpoint(Dialect::OpenAi)
                .map(|e| e.uri().to_string())
                .as_deref(),
            Some("http://127.0.0.1:9/v4/chat/completions")
        );
        assert!(p.endpoint(Dialect::Anthropic).is_none());
    }
}
