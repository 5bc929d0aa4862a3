//! Configuration: TOML file, then `GLMGATE_<SECTION>__<KEY>` environment overrides, then
//! validation into [`Settings`], the only form the rest of the gateway sees.
//!
//! Every option and its default is documented in `docs/configuration.md`.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Deserialize;
use url::Url;

/// Prefix of environment overrides: `GLMGATE_SERVER__LISTEN=0.0.0.0:8080` sets `server.listen`.
pub const ENV_PREFIX: &str = "GLMGATE_";

/// Models listed by `GET /v1/models` unless the config names its own.
pub const DEFAULT_MODELS: &[&str] = &[
    "glm-5.1",
    "glm-5",
    "glm-4.7",
    "glm-4.7-flash",
    "glm-4.6",
    "glm-4.5",
    "glm-4.5-air",
    "glm-4.5-flash",
    "glm-4.6v",
];

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    pub server: RawServer,
    pub store: RawStore,
    pub auth: RawAuth,
    pub upstream: RawUpstream,
    pub accounting: RawAccounting,
    pub log: RawLog,
    pub admin: RawAdmin,
    pub metrics: RawMetrics,
    pub routing: RawRouting,
    /// Upstream providers, each with accounts and their keys. When empty, the `[upstream]`
    /// shorthand (`preset`, base URLs, `keys`, `ZAI_API_KEY`) makes one provider.
    pub providers: Vec<RawProvider>,
    /// Model ids served by `GET /v1/models`.
    pub models: Option<Vec<String>>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRouting {
    /// Model aliases, first match wins; `*` matches any run of characters (case-insensitive).
    pub aliases: Vec<RawAlias>,
    /// Append the shipped aliases that make Claude Code work against GLM out of the box.
    pub default_aliases: bool,
    /// Models to try next when no account can serve a model (plan or quota).
    pub fallbacks: Vec<RawFallback>,
    /// How reasoning is shown to clients whose key does not say.
    pub reasoning: crate::translate::reasoning::ReasoningMode,
    /// Which upstream API serves which models, when providers speak both (translating
    /// for clients of the other format); first match wins, else the client's own format.
    pub upstream_api: Vec<RawUpstreamApi>,
    /// Rule-based tiers: the first whose model pattern and conditions match picks the models.
    pub tiers: Vec<RawTier>,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RawTier {
    /// A pattern (`*` wildcard) for the model the client asks for, before aliases.
    pub model: String,
    #[serde(default)]
    pub when: TierWhen,
    /// The first is used; the rest are fallbacks (see `fallbacks`).
    pub models: Vec<String>,
}

/// Conditions of a tier; each one given must hold.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TierWhen {
    /// Prompt size, estimated as body bytes / 4.
    pub min_prompt_tokens: Option<u64>,
    pub max_prompt_tokens: Option<u64>,
    /// Whether the request declares tools.
    pub tools: Option<bool>,
    /// Whether any message carries an image.
    pub images: Option<bool>,
    /// Whether thinking / reasoning is asked for.
    pub thinking: Option<bool>,
    /// `max_tokens` at least this.
    pub min_max_tokens: Option<u64>,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RawUpstreamApi {
    /// A model pattern (`*` wildcard), matched after aliases.
    pub model: String,
    pub api: ApiKind,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ApiKind {
    Openai,
    Anthropic,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RawFallback {
    /// A model pattern (`*` wildcard), matched against the model after aliases.
    pub from: String,
    /// Models to try in order.
    pub to: Vec<String>,
}

impl Default for RawRouting {
    fn default() -> Self {
        RawRouting {
            aliases: Vec::new(),
            default_aliases: true,
            fallbacks: Vec::new(),
            reasoning: Default::default(),
            upstream_api: Vec::new(),
            tiers: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RawAlias {
    pub from: String,
    pub to: String,
}

/// Claude Code asks for Claude models; Z.AI's own Claude Code setup maps Opus and Sonnet to
/// GLM-4.7 and Haiku to GLM-4.5-Air.
pub const DEFAULT_ALIASES: &[(&str, &str)] =
    &[("claude-*haiku*", "glm-4.5-air"), ("claude-*", "glm-4.7")];

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAdmin {
    /// Bearer token for `/admin/*`; without one the admin API is off.
    pub token: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawMetrics {
    /// Serve `GET /metrics` (Prometheus/OpenMetrics text) and keep its series.
    pub enabled: bool,
    /// Scrapes must send `Authorization: Bearer <admin.token>`; `false` leaves the
    /// endpoint open to whoever can reach the port.
    pub require_admin_token: bool,
}

impl Default for RawMetrics {
    fn default() -> Self {
        RawMetrics {
            enabled: true,
            require_admin_token: true,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawProvider {
    pub name: String,
    pub preset: Option<String>,
    pub openai_base_url: Option<String>,
    pub anthropic_base_url: Option<String>,
    pub anthropic_auth: AnthropicAuth,
    /// Ask the Anthropic-style API for `count_tokens` (else counted locally).
    pub count_tokens_upstream: bool,
    pub accounts: Vec<RawAccount>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAccount {
    pub name: String,
    pub keys: Vec<String>,
    /// An environment variable holding comma-separated keys.
    pub keys_env: Option<String>,
    /// A file with one key per line (`#` starts a comment).
    pub keys_file: Option<PathBuf>,
    /// Requests in flight on the whole account; 0 = no fixed cap (the adaptive limit rules).
    pub max_in_flight: u32,
    /// Requests in flight per key; 0 = no cap.
    pub key_max_in_flight: u32,
    /// Requests started per minute on the account; 0 = no cap.
    pub rpm: u32,
    /// Requests started per minute per key; 0 = no cap.
    pub key_rpm: u32,
    /// Models the account's plan includes; empty = any.
    pub models: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawServer {
    pub listen: String,
    pub max_body_bytes: usize,
    pub shutdown_grace_secs: u64,
    /// Longest a client may take to send a request head (idle keep-alive time included) or
    /// a request body; 0 = no limit.
    pub client_timeout_secs: u64,
    /// Threads serving requests; 0 means one per CPU.
    pub workers: usize,
}

impl Default for RawServer {
    fn default() -> Self {
        RawServer {
            listen: "127.0.0.1:8080".into(),
            // Anthropic's own limit for Messages requests.
            max_body_bytes: 32 * 1024 * 1024,
            shutdown_grace_secs: 30,
            client_timeout_secs: 60,
            workers: 0,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawStore {
    pub path: PathBuf,
}

impl Default for RawStore {
    fn default() -> Self {
        RawStore {
            path: "glmgate.db".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAuth {
    pub key_cache_ttl_secs: u64,
}

impl Default for RawAuth {
    fn default() -> Self {
        RawAuth {
            key_cache_ttl_secs: 5,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawUpstream {
    pub preset: String,
    pub openai_base_url: Option<String>,
    pub anthropic_base_url: Option<String>,
    pub keys: Vec<String>,
    pub anthropic_auth: AnthropicAuth,
    pub count_tokens_upstream: bool,
    pub connect_timeout_secs: u64,
    /// Which HTTP version to speak to the upstreams: `true`, `false` or `"auto"`.
    pub http2: UpstreamHttp,
    /// A PEM file of certificates trusted for upstream TLS, besides the Mozilla roots.
    pub ca_file: Option<PathBuf>,
    pub first_byte_timeout_secs: u64,
    pub idle_timeout_secs: u64,
    pub total_timeout_secs: u64,
    pub plan_bench_secs: u64,
    pub quota_bench_secs: u64,
    pub quota_poll_secs: u64,
    pub watch_config: bool,
    pub retry: RawRetry,
    pub queue: RawQueue,
    pub breaker: RawBreaker,
    pub aimd: RawAimd,
    pub classes: RawClasses,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRetry {
    pub max_attempts: u32,
    pub budget_secs: u64,
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
}

impl Default for RawRetry {
    fn default() -> Self {
        RawRetry {
            max_attempts: 4,
            budget_secs: 60,
            backoff_base_ms: 200,
            backoff_max_ms: 5000,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawQueue {
    pub max_waiting: usize,
    pub timeout_secs: u64,
}

impl Default for RawQueue {
    fn default() -> Self {
        RawQueue {
            max_waiting: 1024,
            timeout_secs: 30,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawBreaker {
    pub failures: u32,
    pub open_secs: u64,
}

impl Default for RawBreaker {
    fn default() -> Self {
        RawBreaker {
            failures: 5,
            open_secs: 30,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAimd {
    pub decrease: f64,
    pub increase_interval_secs: u64,
    pub max_limit: u32,
}

impl Default for RawAimd {
    fn default() -> Self {
        RawAimd {
            decrease: 0.7,
            increase_interval_secs: 30,
            max_limit: 256,
        }
    }
}

/// Z.AI business codes per failure class (see docs/upstreams.md). A code listed here wins
/// over the HTTP status.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RawClasses {
    pub concurrency: Vec<u32>,
    pub overload: Vec<u32>,
    pub quota: Vec<u32>,
    pub plan: Vec<u32>,
    pub key: Vec<u32>,
    pub client: Vec<u32>,
}

impl Default for RawClasses {
    fn default() -> Self {
        RawClasses {
            concurrency: vec![1302],
            overload: vec![1120, 1230, 1234, 1303, 1305, 1312],
            quota: vec![1304, 1308, 1310, 1316, 1317, 1318, 1319, 1320, 1321],
            plan: vec![1113, 1311],
            key: vec![
                1000, 1001, 1002, 1003, 1004, 1110, 1111, 1112, 1121, 1309, 1313,
            ],
            client: vec![1200, 1210, 1211, 1212, 1213, 1214, 1215, 1261, 1300, 1301],
        }
    }
}

impl Default for RawUpstream {
    fn default() -> Self {
        RawUpstream {
            preset: "zai-coding".into(),
            openai_base_url: None,
            anthropic_base_url: None,
            keys: Vec::new(),
            anthropic_auth: AnthropicAuth::Bearer,
            count_tokens_upstream: false,
            connect_timeout_secs: 10,
            http2: UpstreamHttp::Auto,
            ca_file: None,
            first_byte_timeout_secs: 600,
            idle_timeout_secs: 300,
            total_timeout_secs: 3600,
            plan_bench_secs: 3600,
            quota_bench_secs: 3600,
            quota_poll_secs: 0,
            watch_config: true,
            retry: RawRetry::default(),
            queue: RawQueue::default(),
            breaker: RawBreaker::default(),
            aimd: RawAimd::default(),
            classes: RawClasses::default(),
        }
    }
}

/// Which HTTP version glmgate speaks to the upstreams (`upstream.http2`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UpstreamHttp {
    /// HTTP/1.1 only (`false`).
    Http1,
    /// HTTP/2 only (`true`): `h2` by ALPN over TLS, prior knowledge over plain TCP.
    Http2,
    /// HTTP/2 with a TLS upstream that chooses `h2` by ALPN, HTTP/1.1 otherwise (`"auto"`).
    #[default]
    Auto,
}

impl<'de> Deserialize<'de> for UpstreamHttp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Flag(bool),
            Word(String),
        }
        match Written::deserialize(d) {
            Ok(Written::Flag(true)) => Ok(UpstreamHttp::Http2),
            Ok(Written::Flag(false)) => Ok(UpstreamHttp::Http1),
            Ok(Written::Word(w)) if w == "auto" => Ok(UpstreamHttp::Auto),
            _ => Err(serde::de::Error::custom("expected true, false or \"auto\"")),
        }
    }
}

/// How the upstream key is sent to an Anthropic-format upstream.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum AnthropicAuth {
    /// `Authorization: Bearer <key>`, as Z.AI documents for Claude Code.
    #[default]
    Bearer,
    /// `x-api-key: <key>`, as Anthropic itself expects.
    XApiKey,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAccounting {
    pub flush_interval_ms: u64,
    pub batch_size: usize,
    pub queue_capacity: usize,
}

impl Default for RawAccounting {
    fn default() -> Self {
        RawAccounting {
            flush_interval_ms: 1000,
            batch_size: 500,
            queue_capacity: 65_536,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLog {
    pub format: LogFormat,
    pub level: String,
}

impl Default for RawLog {
    fn default() -> Self {
        RawLog {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The certificates trusted for upstream TLS: the Mozilla roots, and those of `ca_file`
/// (`upstream.ca_file`, PEM), refused with the reason if one cannot serve as a root.
/// Validation builds it as the client does, so `check-config` refuses what `serve` would.
pub fn upstream_roots(ca_file: Option<&Path>) -> anyhow::Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(file) = ca_file {
        for cert in pem_certificates(file, "upstream.ca_file")? {
            roots.add(cert).with_context(|| {
                format!(
                    "upstream.ca_file: {}: a certificate in it cannot serve as a root",
                    file.display()
                )
            })?;
        }
    }
    Ok(roots)
}

/// The certificates in a PEM `file` (`upstream.ca_file`, or the mock's `--tls-cert`, named
/// by `setting` in errors), refused with the reason if the file cannot be read, is not
/// PEM, or holds none.
pub fn pem_certificates(
    file: &Path,
    setting: &str,
) -> anyhow::Result<Vec<rustls::pki_types::CertificateDer<'static>>> {
    use rustls::pki_types::{pem::PemObject as _, CertificateDer};
    let shown = file.display();
    let certs = CertificateDer::pem_file_iter(file)
        .with_context(|| format!("{setting}: cannot read {shown}"))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{setting}: {shown} is not PEM"))?;
    if certs.is_empty() {
        bail!("{setting}: no certificate in {shown}");
    }
    Ok(certs)
}

/// Base URLs of the known Z.AI surfaces: `(name, OpenAI-style base, Anthropic-style base)`.
pub const PRESETS: &[(&str, &str, &str)] = &[
    (
        "zai",
        "https://api.z.ai/api/paas/v4",
        "https://api.z.ai/api/anthropic",
    ),
    (
        "zai-coding",
        "https://api.z.ai/api/coding/paas/v4",
        "https://api.z.ai/api/anthropic",
    ),
    (
        "bigmodel",
        "https://open.bigmodel.cn/api/paas/v4",
        "https://open.bigmodel.cn/api/anthropic",
    ),
    (
        "bigmodel-coding",
        "https://open.bigmodel.cn/api/coding/paas/v4",
        "https://open.bigmodel.cn/api/anthropic",
    ),
];

/// A secret string whose `Debug` and `Display` never show the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Validated configuration: what the gateway runs on.
#[derive(Clone, Debug)]
pub struct Settings {
    pub listen: SocketAddr,
    /// Serving threads, each with its own event loop and upstream connections (at least 1).
    pub workers: usize,
    pub max_body_bytes: usize,
    pub shutdown_grace: Duration,
    /// See [`RawServer::client_timeout_secs`]; `None` = no limit.
    pub client_timeout: Option<Duration>,
    pub store_path: PathBuf,
    pub key_cache_ttl: Duration,
    pub upstream: UpstreamSettings,
    pub admin_token: Option<Secret>,
    pub metrics: RawMetrics,
    /// Model routing, validated; `aliases` already ends with the shipped defaults unless
    /// they were turned off.
    pub routing: RawRouting,
    /// The file these settings came from (reloads read it again).
    pub source: Option<PathBuf>,
    pub accounting: AccountingSettings,
    pub log_format: LogFormat,
    pub log_level: String,
    pub models: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct UpstreamSettings {
    pub providers: Vec<ProviderSettings>,
    pub policy: Policy,
}

impl UpstreamSettings {
    pub fn key_count(&self) -> usize {
        self.providers
            .iter()
            .flat_map(|p| &p.accounts)
            .map(|a| a.keys.len())
            .sum()
    }
}

/// One upstream service (base URLs and how keys are sent), with its accounts.
#[derive(Clone, Debug)]
pub struct ProviderSettings {
    pub name: String,
    /// Base of the OpenAI-style API (`…/chat/completions` is appended), if any.
    pub openai_base: Option<Url>,
    /// Base of the Anthropic-style API (`…/v1/messages` is appended), if any.
    pub anthropic_base: Option<Url>,
    pub anthropic_auth: AnthropicAuth,
    pub count_tokens_upstream: bool,
    pub accounts: Vec<AccountSettings>,
}

/// One billing account: its keys share its limits (Z.AI counts concurrency per account).
#[derive(Clone, Debug)]
pub struct AccountSettings {
    pub name: String,
    pub keys: Vec<Secret>,
    pub max_in_flight: u32,
    pub key_max_in_flight: u32,
    pub rpm: u32,
    pub key_rpm: u32,
    pub models: Vec<String>,
}

/// How upstream work is scheduled, retried and timed out.
#[derive(Clone, Debug)]
pub struct Policy {
    pub connect_timeout: Duration,
    /// The HTTP version spoken to the upstreams (applies on restart, like the connect
    /// timeout).
    pub http2: UpstreamHttp,
    /// Certificates trusted for upstream TLS besides the Mozilla roots (applies on restart).
    pub ca_file: Option<PathBuf>,
    pub first_byte_timeout: Duration,
    pub idle_timeout: Duration,
    pub total_timeout: Duration,
    pub max_attempts: u32,
    pub retry_budget: Duration,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub queue_max_waiting: usize,
    pub queue_timeout: Duration,
    pub breaker_failures: u32,
    pub breaker_open: Duration,
    pub plan_bench: Duration,
    pub quota_bench: Duration,
    pub quota_poll: Option<Duration>,
    pub watch_config: bool,
    pub aimd_decrease: f64,
    pub aimd_increase_interval: Duration,
    pub aimd_max_limit: u32,
    pub classes: RawClasses,
}

#[derive(Clone, Debug)]
pub struct AccountingSettings {
    pub flush_interval: Duration,
    pub batch_size: usize,
    pub queue_capacity: usize,
}

/// Loads `path` (if given), applies environment overrides and validates.
pub fn load(path: Option<&Path>) -> anyhow::Result<Settings> {
    let mut value = match path {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read config file {}", path.display()))?;
            toml::from_str::<toml::Value>(&text)
                .with_context(|| format!("{} is not valid TOML", path.display()))?
        }
        None => toml::Value::Table(Default::default()),
    };
    apply_env_overrides(&mut value, std::env::vars())?;
    let raw: RawConfig = serde_path_to_error::deserialize(value)
        .map_err(|e| anyhow::anyhow!("config field `{}`: {}", e.path(), e.inner()))?;
    let env_keys = std::env::var("ZAI_API_KEY").ok();
    let mut settings = validate(raw, env_keys.as_deref())?;
    settings.source = path.map(Path::to_path_buf);
    Ok(settings)
}

/// Applies `GLMGATE_A__B=value` as `a.b = value`. A value that parses as a TOML value
/// (number, bool, array) is used as such, anything else as a string.
pub fn apply_env_overrides(
    root: &mut toml::Value,
    vars: impl IntoIterator<Item = (String, String)>,
) -> anyhow::Result<()> {
    for (name, raw_value) in vars {
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        if !rest.contains("__") {
            continue; // not a config path (e.g. GLMGATE_CONFIG)
        }
        let path: Vec<String> = rest.split("__").map(|p| p.to_ascii_lowercase()).collect();
        let value = toml::from_str::<toml::Table>(&format!("v = {raw_value}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or(toml::Value::String(raw_value));
        let mut node = &mut *root;
        for (i, part) in path.iter().enumerate() {
            let Some(table) = node.as_table_mut() else {
                bail!("{name}: `{part}` is below a value that is not a table");
            };
            if i + 1 == path.len() {
                table.insert(part.clone(), value.clone());
                break;
            }
            node = table
                .entry(part.clone())
                .or_insert_with(|| toml::Value::Table(Default::default()));
        }
    }
    Ok(())
}

fn parse_base(field: &str, url: &str) -> anyhow::Result<Url> {
    let url = Url::parse(url.trim_end_matches('/'))
        .with_context(|| format!("upstream.{field}: `{url}` is not a URL"))?;
    if !matches!(url.scheme(), "http" | "https") {
        bail!("upstream.{field}: only http and https URLs are supported");
    }
    Ok(url)
}

/// Turns the raw config into [`Settings`], or says which field is wrong.
pub fn validate(raw: RawConfig, env_keys: Option<&str>) -> anyhow::Result<Settings> {
    let listen: SocketAddr = raw.server.listen.parse().with_context(|| {
        format!(
            "server.listen: `{}` is not an address like 127.0.0.1:8080",
            raw.server.listen
        )
    })?;
    if raw.server.max_body_bytes == 0 {
        bail!("server.max_body_bytes must be above 0");
    }
    let upstream = upstream_settings(raw.upstream, raw.providers, env_keys)?;
    if raw.accounting.batch_size == 0 || raw.accounting.queue_capacity == 0 {
        bail!("accounting.batch_size and accounting.queue_capacity must be above 0");
    }
    let models = raw
        .models
        .unwrap_or_else(|| DEFAULT_MODELS.iter().map(|m| m.to_string()).collect());
    let workers = match raw.server.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    Ok(Settings {
        listen,
        workers,
        max_body_bytes: raw.server.max_body_bytes,
        shutdown_grace: Duration::from_secs(raw.server.shutdown_grace_secs),
        client_timeout: (raw.server.client_timeout_secs > 0)
            .then(|| Duration::from_secs(raw.server.client_timeout_secs)),
        store_path: raw.store.path,
        key_cache_ttl: Duration::from_secs(raw.auth.key_cache_ttl_secs),
        upstream,
        admin_token: raw
            .admin
            .token
            .filter(|t| !t.trim().is_empty())
            .map(Secret::new),
        metrics: raw.metrics,
        routing: routing(raw.routing)?,
        source: None,
        accounting: AccountingSettings {
            flush_interval: Duration::from_millis(raw.accounting.flush_interval_ms.max(10)),
            batch_size: raw.accounting.batch_size,
            queue_capacity: raw.accounting.queue_capacity,
        },
        log_format: raw.log.format,
        log_level: raw.log.level,
        models,
    })
}

fn routing(mut r: RawRouting) -> anyhow::Result<RawRouting> {
    if let Some(t) = r.tiers.iter().find(|t| t.models.is_empty()) {
        bail!("routing.tiers: the tier for `{}` lists no models", t.model);
    }
    if let Some(bad) = r
        .aliases
        .iter()
        .find(|a| a.from.is_empty() || a.to.is_empty())
    {
        bail!("routing.aliases: `from` and `to` must not be empty ({bad:?})");
    }
    if r.default_aliases {
        r.aliases
            .extend(DEFAULT_ALIASES.iter().map(|(f, t)| RawAlias {
                from: f.to_string(),
                to: t.to_string(),
            }));
    }
    Ok(r)
}

/// Resolves a preset name into its two base URLs.
fn preset_bases(field: &str, name: &str) -> anyhow::Result<(Option<Url>, Option<Url>)> {
    if name == "custom" {
        return Ok((None, None));
    }
    let Some((_, o, a)) = PRESETS.iter().find(|(n, _, _)| *n == name) else {
        let names: Vec<&str> = PRESETS.iter().map(|p| p.0).collect();
        bail!(
            "{field}: unknown preset `{name}`; use one of {} or `custom`",
            names.join(", ")
        );
    };
    Ok((Some(parse_base(field, o)?), Some(parse_base(field, a)?)))
}

/// Applies explicit base URLs over a preset's (`""` disables that format).
fn bases(
    prefix: &str,
    preset: &str,
    openai: &Option<String>,
    anthropic: &Option<String>,
) -> anyhow::Result<(Option<Url>, Option<Url>)> {
    let (mut o, mut a) = preset_bases(&format!("{prefix}.preset"), preset)?;
    if let Some(url) = openai {
        o = (!url.is_empty())
            .then(|| parse_base(&format!("{prefix}.openai_base_url"), url))
            .transpose()?;
    }
    if let Some(url) = anthropic {
        a = (!url.is_empty())
            .then(|| parse_base(&format!("{prefix}.anthropic_base_url"), url))
            .transpose()?;
    }
    if o.is_none() && a.is_none() {
        bail!("{prefix}: set openai_base_url or anthropic_base_url (or a preset)");
    }
    Ok((o, a))
}

fn split_keys(text: &str) -> impl Iterator<Item = Secret> + '_ {
    text.split([',', '\n'])
        .map(|k| k.split('#').next().unwrap_or("").trim())
        .filter(|k| !k.is_empty())
        .map(Secret::new)
}

fn account_keys(prefix: &str, a: &RawAccount) -> anyhow::Result<Vec<Secret>> {
    let mut keys: Vec<Secret> = a.keys.iter().flat_map(|k| split_keys(k)).collect();
    if let Some(var) = &a.keys_env {
        let text = std::env::var(var)
            .with_context(|| format!("{prefix}.keys_env: environment variable {var} is not set"))?;
        keys.extend(split_keys(&text));
    }
    if let Some(path) = &a.keys_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{prefix}.keys_file: cannot read {}", path.display()))?;
        keys.extend(split_keys(&text));
    }
    // A key is sent in a header: printable ASCII only (a stray control character would
    // otherwise fail every request sent with it). The message does not show the key.
    if let Some(i) = keys
        .iter()
        .position(|k| !k.expose().bytes().all(|b| b.is_ascii_graphic()))
    {
        bail!(
            "{prefix}: key number {} has a character that cannot be sent in a header",
            i + 1
        );
    }
    let mut seen = std::collections::HashSet::new();
    keys.retain(|k| seen.insert(k.expose().to_string()));
    Ok(keys)
}

fn upstream_settings(
    up: RawUpstream,
    providers: Vec<RawProvider>,
    env_keys: Option<&str>,
) -> anyhow::Result<UpstreamSettings> {
    let mut out = Vec::new();
    if providers.is_empty() {
        // The shorthand: one provider; each key is taken as its own account (group keys
        // of one account under [[providers.accounts]] to share its limits).
        let (openai_base, anthropic_base) = bases(
            "upstream",
            &up.preset,
            &up.openai_base_url,
            &up.anthropic_base_url,
        )?;
        let mut keys: Vec<Secret> = up.keys.iter().flat_map(|k| split_keys(k)).collect();
        keys.extend(env_keys.into_iter().flat_map(split_keys));
        let accounts = keys
            .into_iter()
            .enumerate()
            .map(|(i, k)| AccountSettings {
                name: format!("key{}", i + 1),
                keys: vec![k],
                max_in_flight: 0,
                key_max_in_flight: 0,
                rpm: 0,
                key_rpm: 0,
                models: Vec::new(),
            })
            .collect();
        out.push(ProviderSettings {
            name: "default".into(),
            openai_base,
            anthropic_base,
            anthropic_auth: up.anthropic_auth,
            count_tokens_upstream: up.count_tokens_upstream,
            accounts,
        });
    } else {
        if !up.keys.is_empty() {
            bail!("upstream.keys: with [[providers]] configured, list keys under [[providers.accounts]]");
        }
        if env_keys.is_some_and(|k| !k.trim().is_empty()) {
            tracing::warn!("ZAI_API_KEY is ignored: [[providers]] are configured");
        }
        let mut names = std::collections::HashSet::new();
        for (i, p) in providers.into_iter().enumerate() {
            let name = if p.name.is_empty() {
                format!("provider{}", i + 1)
            } else {
                p.name
            };
            if !names.insert(name.clone()) {
                bail!("providers: the name `{name}` is used twice");
            }
            let prefix = format!("providers.{name}");
            let (openai_base, anthropic_base) = bases(
                &prefix,
                p.preset.as_deref().unwrap_or("zai-coding"),
                &p.openai_base_url,
                &p.anthropic_base_url,
            )?;
            let mut accounts = Vec::new();
            let mut account_names = std::collections::HashSet::new();
            for (j, a) in p.accounts.iter().enumerate() {
                let aname = if a.name.is_empty() {
                    format!("account{}", j + 1)
                } else {
                    a.name.clone()
                };
                if !account_names.insert(aname.clone()) {
                    bail!("{prefix}.accounts: the name `{aname}` is used twice");
                }
                let aprefix = format!("{prefix}.accounts.{aname}");
                accounts.push(AccountSettings {
                    keys: account_keys(&aprefix, a)?,
                    name: aname,
                    max_in_flight: a.max_in_flight,
                    key_max_in_flight: a.key_max_in_flight,
                    rpm: a.rpm,
                    key_rpm: a.key_rpm,
                    models: a.models.clone(),
                });
            }
            out.push(ProviderSettings {
                name,
                openai_base,
                anthropic_base,
                anthropic_auth: p.anthropic_auth,
                count_tokens_upstream: p.count_tokens_upstream,
                accounts,
            });
        }
    }
    if !(0.05..=0.95).contains(&up.aimd.decrease) {
        bail!("upstream.aimd.decrease must be between 0.05 and 0.95");
    }
    upstream_roots(up.ca_file.as_deref())?;
    let policy = Policy {
        connect_timeout: Duration::from_secs(up.connect_timeout_secs.max(1)),
        http2: up.http2,
        ca_file: up.ca_file,
        first_byte_timeout: Duration::from_secs(up.first_byte_timeout_secs.max(1)),
        idle_timeout: Duration::from_secs(up.idle_timeout_secs.max(1)),
        total_timeout: Duration::from_secs(up.total_timeout_secs.max(1)),
        max_attempts: up.retry.max_attempts.max(1),
        retry_budget: Duration::from_secs(up.retry.budget_secs),
        backoff_base: Duration::from_millis(up.retry.backoff_base_ms),
        backoff_max: Duration::from_millis(up.retry.backoff_max_ms.max(up.retry.backoff_base_ms)),
        queue_max_waiting: up.queue.max_waiting,
        queue_timeout: Duration::from_secs(up.queue.timeout_secs),
        breaker_failures: up.breaker.failures.max(1),
        breaker_open: Duration::from_secs(up.breaker.open_secs.max(1)),
        plan_bench: Duration::from_secs(up.plan_bench_secs.max(1)),
        quota_bench: Duration::from_secs(up.quota_bench_secs.max(1)),
        quota_poll: (up.quota_poll_secs > 0)
            .then(|| Duration::from_secs(up.quota_poll_secs.max(10))),
        watch_config: up.watch_config,
        aimd_decrease: up.aimd.decrease,
        aimd_increase_interval: Duration::from_secs(up.aimd.increase_interval_secs.max(1)),
        aimd_max_limit: up.aimd.max_limit.max(1),
        classes: up.classes,
    };
    Ok(UpstreamSettings {
        providers: out,
        policy,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, env: &[(&str, &str)]) -> anyhow::Result<Settings> {
        let mut value: toml::Value = toml::from_str(text)?;
        apply_env_overrides(
            &mut value,
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )?;
        let raw: RawConfig = serde_path_to_error::deserialize(value)
            .map_err(|e| anyhow::anyhow!("config field `{}`: {}", e.path(), e.inner()))?;
        validate(raw, None)
    }

    #[test]
    fn defaults_use_the_coding_preset() {
        let s = parse("", &[]).expect("defaults are valid");
        assert_eq!(
            s.upstream.providers[0]
                .openai_base
                .clone()
                .map(|u| u.to_string()),
            Some("https://api.z.ai/api/coding/paas/v4".into())
        );
        assert_eq!(s.listen.port(), 8080);
        assert_eq!(s.max_body_bytes, 32 * 1024 * 1024);
    }

    #[test]
    fn the_upstream_http_version_is_true_false_or_auto() {
        let http = |text: &str, env: &[(&str, &str)]| {
            parse(&format!("[upstream]\n{text}"), env).map(|s| s.upstream.policy.http2)
        };
        assert_eq!(http("", &[]).expect("default"), UpstreamHttp::Auto);
        assert_eq!(
            http("http2 = true", &[]).expect("true"),
            UpstreamHttp::Http2
        );
        assert_eq!(
            http("http2 = false", &[]).expect("false"),
            UpstreamHttp::Http1
        );
        assert_eq!(
            http("http2 = \"auto\"", &[]).expect("auto"),
            UpstreamHttp::Auto
        );
        assert_eq!(
            http("", &[("GLMGATE_UPSTREAM__HTTP2", "false")]).expect("env"),
            UpstreamHttp::Http1
        );
        let err = http("http2 = \"yes\"", &[]).expect_err("refused");
        assert!(err.to_string().contains("upstream.http2"), "{err}");
        assert!(err.to_string().contains("\"auto\""), "{err}");
    }

    #[test]
    fn a_ca_file_that_cannot_be_used_is_refused_with_the_reason() {
        let dir = tempfile::tempdir().expect("tempdir");
        let refused = |path: &Path| {
            let text = format!("[upstream]\nca_file = {:?}\n", path.display().to_string());
            format!("{:#}", parse(&text, &[]).expect_err("refused"))
        };
        let missing = refused(&dir.path().join("missing.pem"));
        assert!(
            missing.contains("upstream.ca_file: cannot read"),
            "{missing}"
        );
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no certificate here\n").expect("write");
        let none = refused(&empty);
        assert!(
            none.contains("upstream.ca_file: no certificate in"),
            "{none}"
        );
        // PEM, but not a certificate a client could trust: refused here, as `serve` would.
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(
            &garbage,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        let unusable = refused(&garbage);
        assert!(unusable.contains("upstream.ca_file: "), "{unusable}");
        assert!(unusable.contains("garbage.pem"), "{unusable}");
        assert!(unusable.contains("cannot serve as a root"), "{unusable}");
    }

    #[test]
    fn env_overrides_win_and_are_typed() {
        let s = parse(
            "[server]\nlisten = \"127.0.0.1:1\"\n",
            &[
                ("GLMGATE_SERVER__LISTEN", "0.0.0.0:9000"),
                ("GLMGATE_SERVER__MAX_BODY_BYTES", "1024"),
                ("GLMGATE_UPSTREAM__PRESET", "zai"),
                ("GLMGATE_CONFIG", "ignored.toml"),
            ],
        )
        .expect("valid");
        assert_eq!(s.listen.port(), 9000);
        assert_eq!(s.max_body_bytes, 1024);
        assert!(s.upstream.providers[0]
            .openai_base
            .clone()
            .expect("set")
            .as_str()
            .contains("/api/paas/v4"));
    }

    #[test]
    fn unknown_fields_and_bad_values_name_the_path() {
        let err = parse("[server]\nlisen = \"x\"\n", &[]).expect_err("typo rejected");
        assert!(err.to_string().contains("lisen"), "{err}");
        let err = parse("[upstream]\npreset = \"nope\"\n", &[]).expect_err("bad preset");
        assert!(err.to_string().contains("upstream.preset"), "{err}");
        let err = parse("[server]\nmax_body_bytes = \"big\"\n", &[]).expect_err("bad type");
        assert!(err.to_string().contains("server.max_body_bytes"), "{err}");
    }

    #[test]
    fn custom_upstream_may_speak_one_format_only() {
        let s = parse(
            "[upstream]\npreset = \"custom\"\nopenai_base_url = \"http://127.0.0.1:9/v1/\"\n",
            &[],
        )
        .expect("valid");
        assert!(s.upstream.providers[0].anthropic_base.is_none());
        assert_eq!(
            s.upstream.providers[0]
                .openai_base
                .clone()
                .expect("set")
                .as_str(),
            "http://127.0.0.1:9/v1"
        );
    }

    #[test]
    fn providers_accounts_and_keys() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("keys.txt");
        std::fs::write(&file, "# team b\nk-file-1\n\nk-file-2 # spare\n").expect("write");
        let text = format!(
            r#"
[[providers]]
name = "zai"
preset = "zai"
[[providers.accounts]]
name = "a"
keys = ["k1", "k2", "k1"]
max_in_flight = 2
models = ["glm-4.7"]
[[providers.accounts]]
name = "b"
keys_file = "{}"
"#,
            file.display()
        );
        let s = parse(&text, &[]).expect("valid");
        let p = &s.upstream.providers[0];
        assert_eq!(p.name, "zai");
        assert_eq!(p.accounts[0].keys.len(), 2, "duplicates dropped");
        assert_eq!(p.accounts[0].max_in_flight, 2);
        assert_eq!(p.accounts[1].keys.len(), 2);
        assert_eq!(p.accounts[1].keys[1].expose(), "k-file-2");
        assert_eq!(s.upstream.key_count(), 4);
        let err = parse(
            "[[providers]]\nname=\"p\"\npreset=\"zai\"\n[[providers.accounts]]\nname=\"a\"\nkeys=[\"ok\", \"se\\u0007cret\"]\n",
            &[],
        )
        .expect_err("a control character in a key");
        assert!(err.to_string().contains("key number 2"), "{err}");
        assert!(
            !err.to_string().contains("cret"),
            "the key is not shown: {err}"
        );
        let err = parse("[upstream]\nkeys=[\"x\"]\n[[providers]]\nname=\"p\"\n", &[])
            .expect_err("both forms");
        assert!(err.to_string().contains("upstream.keys"), "{err}");
        let err = parse(
            "[[providers]]\nname=\"p\"\n[[providers]]\nname=\"p\"\n",
            &[],
        )
        .expect_err("duplicate name");
        assert!(err.to_string().contains("twice"), "{err}");
    }

    #[test]
    fn shorthand_keys_are_one_account_each() {
        let mut value: toml::Value = toml::from_str("[upstream]\nkeys = [\"a\"]\n").expect("toml");
        apply_env_overrides(&mut value, std::iter::empty()).expect("env");
        let raw: RawConfig = serde_path_to_error::deserialize(value).expect("raw");
        let s = validate(raw, Some("b, c")).expect("valid");
        let names: Vec<&str> = s.upstream.providers[0]
            .accounts
            .iter()
            .map(|a| a.name.as_str())
            .collect();
        assert_eq!(names, ["key1", "key2", "key3"]);
    }

    #[test]
    fn secrets_do_not_print() {
        let s = Secret::new("zai-secret-123");
        assert!(!format!("{s:?}").contains("zai-secret"));
    }
}
