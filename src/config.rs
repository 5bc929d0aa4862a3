//! Configuration: TOML file, then `GLMGATE_<SECTION>__<KEY>` environment overrides, then
//! validation into [`Settings`], the only form the rest of the gateway sees.
//!
//! Every option and its default is documented in `docs/configuration.md`.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use reqwest::Url;
use serde::Deserialize;

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
    /// Model ids served by `GET /v1/models`.
    pub models: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawServer {
    pub listen: String,
    pub max_body_bytes: usize,
    pub shutdown_grace_secs: u64,
}

impl Default for RawServer {
    fn default() -> Self {
        RawServer {
            listen: "127.0.0.1:8080".into(),
            // Anthropic's own limit for Messages requests.
            max_body_bytes: 32 * 1024 * 1024,
            shutdown_grace_secs: 30,
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
    pub connect_timeout_secs: u64,
    pub first_byte_timeout_secs: u64,
    pub idle_timeout_secs: u64,
}

impl Default for RawUpstream {
    fn default() -> Self {
        RawUpstream {
            preset: "zai-coding".into(),
            openai_base_url: None,
            anthropic_base_url: None,
            keys: Vec::new(),
            anthropic_auth: AnthropicAuth::Bearer,
            connect_timeout_secs: 10,
            first_byte_timeout_secs: 600,
            idle_timeout_secs: 300,
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
    pub max_body_bytes: usize,
    pub shutdown_grace: Duration,
    pub store_path: PathBuf,
    pub key_cache_ttl: Duration,
    pub upstream: UpstreamSettings,
    pub accounting: AccountingSettings,
    pub log_format: LogFormat,
    pub log_level: String,
    pub models: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct UpstreamSettings {
    /// Base of the OpenAI-style API (`…/chat/completions` is appended), if any.
    pub openai_base: Option<Url>,
    /// Base of the Anthropic-style API (`…/v1/messages` is appended), if any.
    pub anthropic_base: Option<Url>,
    pub keys: Vec<Secret>,
    pub anthropic_auth: AnthropicAuth,
    pub connect_timeout: Duration,
    pub first_byte_timeout: Duration,
    pub idle_timeout: Duration,
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
    validate(raw, env_keys.as_deref())
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
    let up = raw.upstream;
    let (mut openai_base, mut anthropic_base) = (None, None);
    if up.preset != "custom" {
        let Some((_, o, a)) = PRESETS.iter().find(|(name, _, _)| *name == up.preset) else {
            let names: Vec<&str> = PRESETS.iter().map(|p| p.0).collect();
            bail!(
                "upstream.preset: unknown preset `{}`; use one of {} or `custom`",
                up.preset,
                names.join(", ")
            );
        };
        openai_base = Some(parse_base("preset", o)?);
        anthropic_base = Some(parse_base("preset", a)?);
    }
    if let Some(url) = &up.openai_base_url {
        openai_base = (!url.is_empty())
            .then(|| parse_base("openai_base_url", url))
            .transpose()?;
    }
    if let Some(url) = &up.anthropic_base_url {
        anthropic_base = (!url.is_empty())
            .then(|| parse_base("anthropic_base_url", url))
            .transpose()?;
    }
    if openai_base.is_none() && anthropic_base.is_none() {
        bail!("upstream: set openai_base_url or anthropic_base_url (or a preset)");
    }
    let mut keys: Vec<Secret> = up
        .keys
        .iter()
        .map(|k| k.trim())
        .filter(|k| !k.is_empty())
        .map(Secret::new)
        .collect();
    if let Some(env) = env_keys {
        keys.extend(
            env.split(',')
                .map(str::trim)
                .filter(|k| !k.is_empty())
                .map(Secret::new),
        );
    }
    if raw.accounting.batch_size == 0 || raw.accounting.queue_capacity == 0 {
        bail!("accounting.batch_size and accounting.queue_capacity must be above 0");
    }
    let models = raw
        .models
        .unwrap_or_else(|| DEFAULT_MODELS.iter().map(|m| m.to_string()).collect());
    Ok(Settings {
        listen,
        max_body_bytes: raw.server.max_body_bytes,
        shutdown_grace: Duration::from_secs(raw.server.shutdown_grace_secs),
        store_path: raw.store.path,
        key_cache_ttl: Duration::from_secs(raw.auth.key_cache_ttl_secs),
        upstream: UpstreamSettings {
            openai_base,
            anthropic_base,
            keys,
            anthropic_auth: up.anthropic_auth,
            connect_timeout: Duration::from_secs(up.connect_timeout_secs.max(1)),
            first_byte_timeout: Duration::from_secs(up.first_byte_timeout_secs.max(1)),
            idle_timeout: Duration::from_secs(up.idle_timeout_secs.max(1)),
        },
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
            s.upstream.openai_base.map(|u| u.to_string()),
            Some("https://api.z.ai/api/coding/paas/v4".into())
        );
        assert_eq!(s.listen.port(), 8080);
        assert_eq!(s.max_body_bytes, 32 * 1024 * 1024);
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
        assert!(s
            .upstream
            .openai_base
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
        assert!(s.upstream.anthropic_base.is_none());
        assert_eq!(
            s.upstream.openai_base.expect("set").as_str(),
            "http://127.0.0.1:9/v1"
        );
    }

    #[test]
    fn secrets_do_not_print() {
        let s = Secret::new("zai-secret-123");
        assert!(!format!("{s:?}").contains("zai-secret"));
    }
}
