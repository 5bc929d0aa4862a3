//! Starting a mock and a gateway for one test, and small helpers around them.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::StreamExt;
use glmgate::app::{self, Running};
use glmgate::config::{self, RawConfig};
use glmgate::mock::{self, MockOptions};
use glmgate::store::Store;
use serde_json::Value;
use tempfile::TempDir;

pub const UPSTREAM_KEY: &str = "upstream-key-123";

pub struct Env {
    pub mock: SocketAddr,
    pub gateway: Option<Running>,
    pub base: String,
    pub key: String,
    pub store: Store,
    pub http: reqwest::Client,
    /// Keeps the database directory alive for the test.
    pub _dir: TempDir,
}

/// Options for [`start`].
pub struct Opts {
    pub mock: MockOptions,
    pub max_body_bytes: usize,
    pub first_byte_timeout_secs: u64,
    pub idle_timeout_secs: u64,
    pub upstream_override: Option<String>,
    pub keys: Vec<String>,
    pub shutdown_grace_secs: u64,
    /// Last changes to the config before it is validated.
    pub tweak: fn(&mut RawConfig),
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            mock: MockOptions::default(),
            max_body_bytes: 64 * 1024,
            first_byte_timeout_secs: 30,
            idle_timeout_secs: 30,
            upstream_override: None,
            keys: vec![UPSTREAM_KEY.into()],
            shutdown_grace_secs: 10,
            tweak: |_| {},
        }
    }
}

pub fn raw_config(mock: SocketAddr, dir: &TempDir, o: &Opts) -> RawConfig {
    let upstream = o
        .upstream_override
        .clone()
        .unwrap_or_else(|| format!("http://{mock}"));
    let mut raw = RawConfig::default();
    raw.server.listen = "127.0.0.1:0".into();
    raw.server.max_body_bytes = o.max_body_bytes;
    raw.server.shutdown_grace_secs = o.shutdown_grace_secs;
    raw.store.path = dir.path().join("glmgate.db");
    raw.auth.key_cache_ttl_secs = 1;
    raw.upstream.preset = "custom".into();
    raw.upstream.openai_base_url = Some(format!("{upstream}/api/coding/paas/v4"));
    raw.upstream.anthropic_base_url = Some(format!("{upstream}/api/anthropic"));
    raw.upstream.keys = o.keys.clone();
    raw.upstream.first_byte_timeout_secs = o.first_byte_timeout_secs;
    raw.upstream.idle_timeout_secs = o.idle_timeout_secs;
    raw.accounting.flush_interval_ms = 50;
    (o.tweak)(&mut raw);
    raw
}

pub const ADMIN_TOKEN: &str = "admin-token-for-tests";

pub async fn start(o: Opts) -> Env {
    let mock = mock::spawn(o.mock.clone()).await.expect("mock starts");
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = config::validate(raw_config(mock, &dir, &o), None).expect("valid config");
    start_with(mock, dir, settings).await
}

/// [`start`] with the default options but for `tweak`'s changes to the config.
pub async fn start_tweaked(tweak: fn(&mut RawConfig)) -> Env {
    start(Opts {
        tweak,
        ..Opts::default()
    })
    .await
}

/// The config file of a gateway in front of the mock at `mock`: the shared parts (listen,
/// store, admin token, fast flushes) followed by `rest` (providers and accounts).
pub fn config_text(mock: SocketAddr, dir: &TempDir, rest: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
[store]
path = "{db}"
[admin]
token = "{ADMIN_TOKEN}"
[accounting]
flush_interval_ms = 50
[upstream]
watch_config = false
{rest}
"#,
        db = dir.path().join("glmgate.db").display(),
    )
    .replace("MOCK", &format!("http://{mock}"))
}

/// Starts a gateway from a config file (written into the test's directory) whose text is
/// `config_text(.., rest)`; `MOCK` in `rest` stands for the mock's base URL.
pub async fn start_file(mock_options: MockOptions, rest: &str) -> (Env, std::path::PathBuf) {
    let mock = mock::spawn(mock_options).await.expect("mock starts");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("glmgate.toml");
    std::fs::write(&path, config_text(mock, &dir, rest)).expect("write config");
    let settings = config::load(Some(&path)).expect("valid config");
    (start_with(mock, dir, settings).await, path)
}

pub async fn start_with(mock: SocketAddr, dir: TempDir, settings: config::Settings) -> Env {
    let store = Store::open(&settings.store_path).await.expect("store");
    let (_, key) = glmgate::auth::create_key(&store, "test", None)
        .await
        .expect("key");
    let gateway = app::spawn(settings).await.expect("gateway starts");
    Env {
        mock,
        base: format!("http://{}", gateway.addr),
        gateway: Some(gateway),
        key,
        store,
        http: reqwest::Client::new(),
        _dir: dir,
    }
}

pub fn openai_body(stream: bool) -> Value {
    serde_json::json!({
        "model": "glm-4.7",
        "stream": stream,
        "messages": [{"role": "user", "content": "Hello there"}],
    })
}

pub fn anthropic_body(stream: bool) -> Value {
    serde_json::json!({
        "model": "glm-4.7",
        "max_tokens": 256,
        "stream": stream,
        "messages": [{"role": "user", "content": "Hello there"}],
    })
}

/// `body` with a mock fault spec (see docs/mock.md), which the gateway forwards untouched.
pub fn with_fault(mut body: Value, fault: &str) -> Value {
    body["mock_fault"] = fault.into();
    body
}

impl Env {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn openai(&self, body: &Value) -> reqwest::Response {
        self.openai_as(&self.key, body).await
    }

    /// [`Env::openai`] with another client key.
    pub async fn openai_as(&self, key: &str, body: &Value) -> reqwest::Response {
        self.http
            .post(self.url("/v1/chat/completions"))
            .bearer_auth(key)
            .json(body)
            .send()
            .await
            .expect("request sent")
    }

    /// `GET path` with `token` as the bearer token, or none.
    pub async fn get_as(&self, path: &str, token: Option<&str>) -> reqwest::Response {
        let mut req = self.http.get(self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send().await.expect("request sent")
    }

    pub async fn anthropic(&self, body: &Value) -> reqwest::Response {
        self.anthropic_as(&self.key, body).await
    }

    /// [`Env::anthropic`] with another client key.
    pub async fn anthropic_as(&self, key: &str, body: &Value) -> reqwest::Response {
        self.http
            .post(self.url("/v1/messages"))
            .header("x-api-key", key)
            .header("anthropic-version", "2023-06-01")
            .json(body)
            .send()
            .await
            .expect("request sent")
    }

    /// The whole text of an OpenAI-format answer to `body`.
    pub async fn openai_text(&self, body: &Value) -> String {
        self.openai(body).await.text().await.expect("body")
    }

    /// `GET path` with the client key, as an Anthropic client when `anthropic` is set.
    pub async fn get_json(&self, path: &str, anthropic: bool) -> Value {
        let mut req = self.http.get(self.url(path)).bearer_auth(&self.key);
        if anthropic {
            req = req.header("anthropic-version", "2023-06-01");
        }
        req.send().await.expect("sent").json().await.expect("json")
    }

    pub async fn mock_stats(&self) -> Value {
        reqwest::get(format!("http://{}/_mock/stats", self.mock))
            .await
            .expect("mock stats")
            .json()
            .await
            .expect("json")
    }

    /// `GET /admin/...` with the admin token.
    pub async fn admin(&self, path: &str) -> Value {
        let resp = self
            .http
            .get(self.url(path))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .expect("sent");
        assert_eq!(resp.status(), 200, "{path}");
        resp.json().await.expect("json")
    }

    /// One account of `GET /admin/upstreams`, by `provider/account` id.
    pub async fn account(&self, id: &str) -> Value {
        let snap = self.admin("/admin/upstreams").await;
        snap["providers"]
            .as_array()
            .expect("providers")
            .iter()
            .flat_map(|p| p["accounts"].as_array().cloned().unwrap_or_default())
            .find(|a| a["account"] == id)
            .unwrap_or_else(|| panic!("no account {id} in {snap}"))
    }

    /// Polls the store until `n` usage rows exist (bounded), then returns them.
    pub async fn usage_rows(&self, n: usize) -> Vec<Value> {
        for _ in 0..100 {
            let rows = self.store.usage_rows().await.expect("rows");
            if rows.len() >= n {
                return rows;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("expected {n} usage rows");
    }

    /// Polls the mock until `pred` holds for its stats (bounded).
    pub async fn wait_mock(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        for _ in 0..100 {
            let s = self.mock_stats().await;
            if pred(&s) {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "mock never reached: {what}; stats {}",
            self.mock_stats().await
        );
    }
}

/// The `event:` names of an SSE text, in order.
pub fn event_names(text: &str) -> Vec<&str> {
    text.lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .collect()
}

/// A client key with model rules, made in the test's store.
pub async fn key_with(env: &Env, name: &str, rules: glmgate::auth::KeyModels) -> String {
    glmgate::auth::create_key_with(&env.store, name, None, rules)
        .await
        .expect("key")
        .1
}

/// The `data:` payloads of an SSE text, in order.
pub fn data_lines(text: &str) -> Vec<&str> {
    text.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect()
}

/// An Anthropic client that leaves a slow stream after its first event: the gateway cancels
/// the upstream stream and still records the input tokens that `message_start` carried.
pub async fn leave_a_stream_after_its_first_event(env: &Env) {
    let body = with_fault(anthropic_body(true), "slow-chunks=300");
    let resp = env.anthropic(&body).await;
    assert_eq!(resp.status(), 200);
    let mut stream = resp.bytes_stream();
    let first = stream.next().await.expect("chunk").expect("ok");
    assert!(String::from_utf8_lossy(&first).contains("message_start"));
    drop(stream); // the client goes away mid-stream
    env.wait_mock("upstream stream cancelled", |s| s["streams_cancelled"] == 1)
        .await;
    let rows = env.usage_rows(1).await;
    assert_eq!(rows[0]["outcome"], "client_cancelled");
    assert!(
        rows[0]["input_tokens"].as_i64().expect("n") > 0,
        "{}",
        rows[0]
    );
}
