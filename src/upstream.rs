//! The upstream HTTP client: pooled keep-alive connections (HTTP/2 where offered, TLS by
//! rustls), the upstream key on each request, and the connect / first-byte timeouts.
//!
//! Keys are used round-robin; health-scored pools and failover come with issue 4.

use std::sync::atomic::{AtomicUsize, Ordering};

use axum::http::{header, HeaderMap, HeaderValue};
use bytes::Bytes;

use crate::config::{AnthropicAuth, Secret, UpstreamSettings};
use crate::error::{ApiError, Dialect};
use crate::route::Route;

/// Client request headers forwarded to an Anthropic-format upstream, unchanged.
const ANTHROPIC_FORWARDED: &[&str] = &["anthropic-version", "anthropic-beta"];
const DEFAULT_ANTHROPIC_VERSION: &str = "2023-06-01";

pub struct Upstream {
    client: reqwest::Client,
    keys: Vec<Secret>,
    next: AtomicUsize,
    anthropic_auth: AnthropicAuth,
    pub first_byte_timeout: std::time::Duration,
    pub idle_timeout: std::time::Duration,
}

impl Upstream {
    pub fn new(s: &UpstreamSettings) -> anyhow::Result<Upstream> {
        let client = reqwest::Client::builder()
            .connect_timeout(s.connect_timeout)
            .pool_idle_timeout(std::time::Duration::from_secs(90))
            .pool_max_idle_per_host(1024)
            .tcp_nodelay(true)
            .user_agent(concat!("glmgate/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Upstream {
            client,
            keys: s.keys.clone(),
            next: AtomicUsize::new(0),
            anthropic_auth: s.anthropic_auth,
            first_byte_timeout: s.first_byte_timeout,
            idle_timeout: s.idle_timeout,
        })
    }

    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    fn next_key(&self) -> Option<&Secret> {
        if self.keys.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.keys.len();
        self.keys.get(i)
    }

    /// Sends `body` to `route` and waits for the response head (status and headers).
    pub async fn send(
        &self,
        route: Route<'_>,
        client_headers: &HeaderMap,
        body: Bytes,
    ) -> Result<reqwest::Response, ApiError> {
        let key = self.next_key().ok_or(ApiError::NoUpstreamKey)?;
        let mut req = self
            .client
            .post(route.url.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .body(body);
        if let Some(accept) = client_headers.get(header::ACCEPT) {
            req = req.header(header::ACCEPT, accept);
        }
        match route.dialect {
            Dialect::OpenAi => req = req.bearer_auth(key.expose()),
            Dialect::Anthropic => {
                for name in ANTHROPIC_FORWARDED {
                    if let Some(v) = client_headers.get(*name) {
                        req = req.header(*name, v);
                    }
                }
                if !client_headers.contains_key("anthropic-version") {
                    req = req.header(
                        "anthropic-version",
                        HeaderValue::from_static(DEFAULT_ANTHROPIC_VERSION),
                    );
                }
                req = match self.anthropic_auth {
                    AnthropicAuth::Bearer => req.bearer_auth(key.expose()),
                    AnthropicAuth::XApiKey => req.header("x-api-key", key.expose()),
                };
            }
        }
        match tokio::time::timeout(self.first_byte_timeout, req.send()).await {
            Err(_) => Err(ApiError::UpstreamTimeout(self.first_byte_timeout.as_secs())),
            Ok(Err(e)) if e.is_timeout() => {
                Err(ApiError::UpstreamTimeout(self.first_byte_timeout.as_secs()))
            }
            Ok(Err(e)) => Err(ApiError::UpstreamUnreachable(describe(&e))),
            Ok(Ok(resp)) => Ok(resp),
        }
    }
}

/// A client-safe description of a transport error: its kind and host, never a key.
fn describe(e: &reqwest::Error) -> String {
    let host = e
        .url()
        .and_then(|u| {
            u.host_str()
                .map(|h| format!("{h}:{}", u.port_or_known_default().unwrap_or(0)))
        })
        .unwrap_or_else(|| "upstream".into());
    let kind = if e.is_connect() {
        "could not connect to"
    } else if e.is_request() {
        "request failed to"
    } else {
        "error talking to"
    };
    format!("{kind} {host}")
}
