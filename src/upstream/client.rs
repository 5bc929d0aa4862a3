//! The HTTP client for upstream calls: hyper's pooled client over rustls, kept alive, HTTP/2
//! where the server offers it. Requests are built from URIs parsed once at configuration
//! time, so the request path does no URL parsing, redirect handling or proxy matching
//! (a general-purpose client's layers cost about a tenth of glmgate's instructions per
//! request).

use std::time::Duration;

use axum::http::{header, HeaderValue, Method, Request, Response, StatusCode, Uri};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

const USER_AGENT: &str = concat!("glmgate/", env!("CARGO_PKG_VERSION"));

#[derive(Clone)]
pub struct HttpClient {
    inner: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

/// Why an upstream call failed before an answer arrived, in words safe to show a client:
/// the kind and the host, never the path or a key.
pub fn describe(e: &hyper_util::client::legacy::Error, uri: &Uri) -> String {
    let host = uri.authority().map_or("upstream", |a| a.as_str());
    let kind = if e.is_connect() {
        "could not connect to"
    } else {
        "error talking to"
    };
    format!("{kind} {host}")
}

impl HttpClient {
    pub fn new(connect_timeout: Duration) -> anyhow::Result<HttpClient> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())?
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let inner = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(1024)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(https);
        Ok(HttpClient { inner })
    }

    /// A request with the gateway's user agent; the caller adds the rest of the headers.
    pub fn request(method: Method, uri: &Uri, body: Bytes) -> Request<Full<Bytes>> {
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = method;
        *req.uri_mut() = uri.clone();
        req.headers_mut()
            .insert(header::USER_AGENT, HeaderValue::from_static(USER_AGENT));
        req
    }

    /// Sends a request; the answer's body is read by the caller, as it arrives.
    pub async fn send(
        &self,
        req: Request<Full<Bytes>>,
    ) -> Result<Response<Incoming>, hyper_util::client::legacy::Error> {
        self.inner.request(req).await
    }

    /// Sends a request and reads its whole answer (up to 1 MiB), all within `timeout`:
    /// for the side calls (quota monitor, token counts), not for proxied traffic.
    pub async fn fetch(
        &self,
        req: Request<Full<Bytes>>,
        timeout: Duration,
    ) -> Result<(StatusCode, Bytes), String> {
        let uri = req.uri().clone();
        let call = async {
            let resp = self.send(req).await.map_err(|e| describe(&e, &uri))?;
            let status = resp.status();
            let body = Limited::new(resp.into_body(), 1 << 20)
                .collect()
                .await
                .map_err(|_| "the answer was cut off or too large".to_string())?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(timeout, call)
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {} s", timeout.as_secs())))
    }
}

/// The value of an `Authorization: Bearer` header, marked sensitive so it is never logged.
pub fn bearer(secret: &str) -> HeaderValue {
    secret_value(&format!("Bearer {secret}"))
}

/// A header value holding a secret, marked sensitive. A secret that is not a valid header
/// value (config validation rejects those) becomes an empty value the upstream refuses.
pub fn secret_value(s: &str) -> HeaderValue {
    let mut v = HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static(""));
    v.set_sensitive(true);
    v
}
