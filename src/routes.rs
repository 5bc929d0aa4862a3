//! The HTTP surface: which path goes to which handler. Closed by default: every route needs a
//! client key except the short public list below.
//!
//! Public: `GET /health`, `GET /ready`, and Claude Code's telemetry (`/api/event_logging/*`),
//! which is answered 204 locally and never reaches the upstream. `GET /metrics` and
//! `/admin/*` need the admin token (`/metrics` can be opened up in the config).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::Json;
use serde_json::json;

use crate::app::AppState;
use crate::error::{ApiError, Dialect};
use crate::proxy::{self, new_request_id};

/// What a serving thread calls for every request: the two model endpoints go straight to
/// the proxy; everything else goes through the router.
///
/// The model endpoints carry nearly all the traffic, and the router's general matching
/// costs them six allocations and a few thousand instructions a request (matching the
/// path, boxing the route's service and future, storing path parameters they have none
/// of). The router keeps these routes too, so it alone is still the whole surface.
#[derive(Clone)]
pub struct Gateway {
    state: Arc<AppState>,
    router: axum::Router,
}

impl Gateway {
    pub fn new(state: Arc<AppState>) -> Gateway {
        Gateway {
            router: router(state.clone()),
            state,
        }
    }

    /// This gateway with `router` for everything but the model endpoints.
    #[cfg(test)]
    pub fn with_router(state: Arc<AppState>, router: axum::Router) -> Gateway {
        Gateway { state, router }
    }

    /// Not an `async fn`, which would keep room for the request (twice) next to the
    /// handler's future for as long as it runs.
    pub fn serve(
        self,
        req: axum::http::Request<hyper::body::Incoming>,
    ) -> impl std::future::Future<Output = Response> + Send {
        use futures_util::future::{Either, FutureExt as _};
        match model_endpoint(req.method(), req.uri().path()) {
            Some(dialect) => Either::Left(proxy::handle(self.state, dialect, req.map(Body::new))),
            None => {
                use tower_service::Service as _;
                let mut router = self.router;
                Either::Right(router.call(req).map(|answer| match answer {
                    Ok(response) => response,
                    Err(never) => match never {},
                }))
            }
        }
    }
}

/// The dialect of a request to a model endpoint, exactly as the router would match it.
fn model_endpoint(method: &Method, path: &str) -> Option<Dialect> {
    if method != Method::POST {
        return None;
    }
    match path {
        "/v1/chat/completions" => Some(Dialect::OpenAi),
        "/v1/messages" => Some(Dialect::Anthropic),
        _ => None,
    }
}

pub fn router(state: Arc<AppState>) -> axum::Router {
    axum::Router::new()
        .route(
            "/v1/chat/completions",
            post(|State(s): State<Arc<AppState>>, req: Request| {
                proxy::handle(s, Dialect::OpenAi, req)
            }),
        )
        .route(
            "/v1/messages",
            post(|State(s): State<Arc<AppState>>, req: Request| {
                proxy::handle(s, Dialect::Anthropic, req)
            }),
        )
        .route("/v1/messages/count_tokens", post(count_tokens))
        .route("/v1/models", get(models))
        .route("/stats", get(stats))
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/admin/upstreams", get(admin_upstreams))
        .route("/admin/reload", post(admin_reload))
        .route(
            "/admin/routing/explain",
            get(admin_explain).post(admin_explain),
        )
        .route(
            "/api/event_logging/{*rest}",
            any(|| async { StatusCode::NO_CONTENT }),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(not_found)
        .with_state(state)
}

/// The dialect to answer in when the route itself does not say.
fn dialect_of(path: &str, headers: &HeaderMap) -> Dialect {
    if path.starts_with("/v1/messages") || headers.contains_key("anthropic-version") {
        Dialect::Anthropic
    } else {
        Dialect::OpenAi
    }
}

async fn not_found(req: Request) -> Response {
    let dialect = dialect_of(req.uri().path(), req.headers());
    ApiError::NotFound {
        method: req.method().to_string(),
        path: req.uri().path().to_string(),
    }
    .render(dialect, &new_request_id())
}

/// `GET /v1/models`: the configured models, in Anthropic's shape when the client sends
/// `anthropic-version`, else OpenAI's.
async fn models(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let dialect = dialect_of(req.uri().path(), req.headers());
    if let Err(e) = state.auth.authenticate(req.headers(), req.uri()).await {
        return e.render(dialect, &new_request_id());
    }
    // A fixed creation time: the list comes from configuration, not from the upstream.
    const CREATED: i64 = 1_750_000_000;
    let models = &state.settings.models;
    let body = match dialect {
        Dialect::OpenAi => json!({
            "object": "list",
            "data": models.iter().map(|id| json!({
                "id": id, "object": "model", "created": CREATED, "owned_by": "z.ai"
            })).collect::<Vec<_>>(),
        }),
        Dialect::Anthropic => {
            let created = chrono::DateTime::from_timestamp(CREATED, 0)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                .unwrap_or_default();
            json!({
                "data": models.iter().map(|id| json!({
                    "id": id, "type": "model", "display_name": id.to_uppercase(), "created_at": created
                })).collect::<Vec<_>>(),
                "has_more": false,
                "first_id": models.first(),
                "last_id": models.last(),
            })
        }
    };
    Json(body).into_response()
}

/// `GET /stats`: the calling key's own totals (stored records; they lag by at most one
/// accounting flush interval).
async fn stats(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let dialect = dialect_of(req.uri().path(), req.headers());
    let request_id = new_request_id();
    let key = match state.auth.authenticate(req.headers(), req.uri()).await {
        Ok(k) => k,
        Err(e) => return e.render(dialect, &request_id),
    };
    match state.store.key_stats(key.id).await {
        Ok(s) => Json(json!({
            "key": {"id": key.id, "name": key.name, "prefix": key.key_prefix},
            "requests": s.requests,
            "errors": s.errors,
            "input_tokens": s.input_tokens,
            "output_tokens": s.output_tokens,
            "cached_tokens": s.cached_tokens,
            "reasoning_tokens": s.reasoning_tokens,
            "by_model": s.by_model,
        }))
        .into_response(),
        Err(e) => ApiError::Internal(format!("stats query: {e}")).render(dialect, &request_id),
    }
}

/// `GET /ready`: the store answers and at least one upstream key is usable.
async fn ready(State(state): State<Arc<AppState>>) -> Response {
    let store_ok = state.store.ping().await;
    let pool = state.upstream.pool();
    let usable = pool.usable_key_count();
    let ready = store_ok && usable > 0;
    let body = Json(json!({
        "status": if ready { "ready" } else { "not_ready" },
        "store": if store_ok { "ok" } else { "unreachable" },
        "upstream_keys": pool.key_count(),
        "usable_upstream_keys": usable,
    }));
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, body).into_response()
}

/// Admin endpoints need `Authorization: Bearer <admin.token>`; without a configured token
/// the admin API is off.
/// Returns the refusal, if any.
fn admin_refusal(state: &AppState, headers: &HeaderMap) -> Option<Response> {
    let deny = |status: StatusCode, message: &str| {
        (
            status,
            Json(json!({"error": {"type": "admin_error", "message": message}})),
        )
            .into_response()
    };
    let Some(token) = &state.settings.admin_token else {
        return Some(deny(
            StatusCode::FORBIDDEN,
            "the admin API is off: set admin.token (or GLMGATE_ADMIN__TOKEN)",
        ));
    };
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    // Compare digests, so the time taken says nothing about a matching prefix.
    let digest = |s: &str| <sha2::Sha256 as sha2::Digest>::digest(s.as_bytes());
    if given.is_empty() || digest(given) != digest(token.expose()) {
        return Some(deny(
            StatusCode::UNAUTHORIZED,
            "missing or wrong admin token",
        ));
    }
    None
}

/// `GET /metrics`: Prometheus (OpenMetrics text); needs the admin token unless
/// `metrics.require_admin_token` is off, and answers 404 when `metrics.enabled` is off.
async fn metrics(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let Some(metrics) = &state.metrics else {
        return not_found(req).await;
    };
    if state.settings.metrics.require_admin_token {
        if let Some(r) = admin_refusal(&state, req.headers()) {
            return r;
        }
    }
    let text = metrics.render(&state.upstream.pool().gauges());
    (
        [(
            axum::http::header::CONTENT_TYPE,
            crate::metrics::CONTENT_TYPE,
        )],
        text,
    )
        .into_response()
}

/// `GET /admin/upstreams`: every account and key (labels, never secrets) with its state.
async fn admin_upstreams(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Some(r) = admin_refusal(&state, &headers) {
        return r;
    }
    Json(state.upstream.pool().snapshot()).into_response()
}

/// `POST /admin/reload`: re-reads the config file; an invalid one is refused (400) and the
/// running config stays.
async fn admin_reload(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Some(r) = admin_refusal(&state, &headers) {
        return r;
    }
    match crate::app::reload(&state) {
        Ok(summary) => Json(json!({"status": "reloaded", "upstreams": summary})).into_response(),
        Err(e) => (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": {"type": "invalid_config", "message": format!("{e:#}")}})),
        )
            .into_response(),
    }
}

/// `POST /v1/messages/count_tokens` (Anthropic shape): from the upstream when a provider is
/// configured for it, else a local estimate (see [`crate::tokens`]).
async fn count_tokens(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let request_id = new_request_id();
    let (parts, body) = req.into_parts();
    let fail = |e: ApiError| e.render(Dialect::Anthropic, &request_id);
    if let Err(e) = state.auth.authenticate(&parts.headers, &parts.uri).await {
        return fail(e);
    }
    let body = match crate::request::read_body(body, &state.settings).await {
        Ok(b) => b,
        Err(e) => return fail(e),
    };
    let value: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v @ serde_json::Value::Object(_)) => v,
        _ => {
            return fail(ApiError::bad_request(
                "the body must be a JSON object",
                None,
            ))
        }
    };
    if !value["messages"].is_array() {
        return fail(ApiError::bad_request(
            "`messages` is required and must be an array",
            Some("messages".into()),
        ));
    }
    if let Some(answer) = state.upstream.count_tokens(&parts.headers, body).await {
        return (
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            answer,
        )
            .into_response();
    }
    let counted = tokio::task::spawn_blocking(move || crate::tokens::estimate(&value)).await;
    match counted {
        Ok(n) => (
            [("x-glmgate-token-count", "estimate")],
            Json(json!({"input_tokens": n})),
        )
            .into_response(),
        Err(e) => fail(ApiError::Internal(format!("token count: {e}"))),
    }
}

struct ExplainQuery {
    model: String,
    /// `openai` or `anthropic` (the client's API); default `anthropic`.
    api: Option<String>,
}

/// `GET /admin/routing/explain?api=anthropic&model=claude-sonnet-4-6`: the model the request
/// would be sent as (and which alias chose it), the upstream format (passthrough or
/// translation), and, account by account, whether it could take the request now and why.
async fn admin_explain(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    raw_query: axum::extract::RawQuery,
    body: axum::body::Bytes,
) -> Response {
    if let Some(r) = admin_refusal(&state, &headers) {
        return r;
    }
    // A sample request body (POST) gives the model and what tiers look at; the query
    // gives the client API, and the model when there is no body.
    let sample: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
    let (query_model, api) = raw_query
        .0
        .as_deref()
        .map(explain_query)
        .unwrap_or_default();
    let model = sample
        .as_ref()
        .and_then(|v| v["model"].as_str())
        .map(str::to_string)
        .or(query_model);
    let Some(model) = model else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": {"type": "invalid_request", "message": "use ?model=<id>[&api=openai|anthropic], or POST a sample request body"}})),
        )
            .into_response();
    };
    let q = ExplainQuery { model, api };
    let dialect = match q.api.as_deref() {
        Some("openai") => Dialect::OpenAi,
        _ => Dialect::Anthropic,
    };
    let pool = state.upstream.pool();
    let head = crate::request::RequestHead {
        model: q.model.clone(),
        stream: false,
        model_span: 0..0,
    };
    let sample_body = (!body.is_empty()).then_some(&body[..]);
    match state.router.route(&pool, dialect, &head, None, sample_body) {
        Ok(route) => Json(json!({
            "requested_model": q.model,
            "model": route.model,
            "alias": route.alias,
            "client_api": dialect.as_str(),
            "upstream_api": route.dialect.as_str(),
            "translation": route.translate.map(|d| format!("{d:?}")),
            "fallbacks": route.fallbacks,
            "upstreams": pool.explain(route.dialect, &route.model),
        }))
        .into_response(),
        Err(e) => Json(json!({
            "requested_model": q.model,
            "client_api": dialect.as_str(),
            "error": e.to_string(),
        }))
        .into_response(),
    }
}

/// `(model, api)` from a query string (values percent-decoded).
fn explain_query(q: &str) -> (Option<String>, Option<String>) {
    let (mut model, mut api) = (None, None);
    for (k, v) in url::form_urlencoded::parse(q.as_bytes()) {
        match k.as_ref() {
            "model" => model = Some(v.into_owned()),
            "api" => api = Some(v.into_owned()),
            _ => {}
        }
    }
    (model, api)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_exact_posts_to_the_model_endpoints_skip_the_router() {
        let post = Method::POST;
        assert_eq!(
            model_endpoint(&post, "/v1/chat/completions"),
            Some(Dialect::OpenAi)
        );
        assert_eq!(
            model_endpoint(&post, "/v1/messages"),
            Some(Dialect::Anthropic)
        );
        // Everything else is the router's: other methods (its 404 in the right dialect),
        // near-miss paths, and the other endpoints under the same prefixes.
        assert_eq!(model_endpoint(&Method::GET, "/v1/chat/completions"), None);
        assert_eq!(model_endpoint(&post, "/v1/chat/completions/"), None);
        assert_eq!(model_endpoint(&post, "/v1/messages/count_tokens"), None);
        assert_eq!(model_endpoint(&post, "/v1/models"), None);
    }
}
