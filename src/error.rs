//! Client-facing errors, rendered in the caller's own API dialect with the right status.
//!
//! Every failure a client can see is one [`ApiError`] variant. The status mapping and the
//! error `type` strings are exhaustive matches, so adding a variant forces a decision.
//! Internal details (upstream keys, IO errors) never reach the body: they are logged.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Which client API a request came in on; decides the shape of every error and listing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// OpenAI Chat Completions (`/v1/chat/completions`).
    OpenAi,
    /// Anthropic Messages (`/v1/messages`).
    Anthropic,
}

impl Dialect {
    pub fn as_str(self) -> &'static str {
        match self {
            Dialect::OpenAi => "openai",
            Dialect::Anthropic => "anthropic",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("missing API key: send it as `Authorization: Bearer <key>`, `x-api-key: <key>` or `?api_key=<key>`")]
    MissingKey,
    #[error("invalid API key")]
    InvalidKey,
    #[error("this API key has been revoked")]
    RevokedKey,
    #[error("this API key expired at {0}")]
    ExpiredKey(String),
    #[error("{message}")]
    BadRequest {
        message: String,
        /// The offending field, when one can be named (OpenAI's `param`).
        param: Option<String>,
    },
    #[error("request body is larger than the limit of {0} bytes")]
    TooLarge(usize),
    #[error("the request body did not arrive within {0} seconds")]
    BodyTimeout(u64),
    #[error("no route for {method} {path}")]
    NotFound { method: String, path: String },
    #[error("{0}")]
    NoUpstream(String),
    #[error("the gateway has no upstream API key configured (upstream.keys, ZAI_API_KEY or [[providers.accounts]])")]
    NoUpstreamKey,
    #[error("model `{0}` is not in the plan of any upstream account")]
    ModelUnavailable(String),
    #[error("this API key may not use model `{0}`")]
    ModelNotAllowed(String),
    #[error("{message}")]
    QuotaExhausted {
        message: String,
        retry_after_secs: u64,
    },
    #[error("{message}")]
    Saturated {
        message: String,
        retry_after_secs: u64,
    },
    #[error("{message}")]
    NoWorkingUpstream {
        message: String,
        retry_after_secs: u64,
    },
    #[error("upstream unreachable: {0}")]
    UpstreamUnreachable(String),
    #[error("upstream did not answer within {0} seconds")]
    UpstreamTimeout(u64),
    #[error("upstream sent an invalid response: {0}")]
    UpstreamInvalid(String),
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>, param: Option<String>) -> Self {
        ApiError::BadRequest {
            message: message.into(),
            param,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::MissingKey | ApiError::InvalidKey => StatusCode::UNAUTHORIZED,
            ApiError::RevokedKey | ApiError::ExpiredKey(_) | ApiError::ModelNotAllowed(_) => {
                StatusCode::FORBIDDEN
            }
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::NotFound { .. } | ApiError::ModelUnavailable(_) => StatusCode::NOT_FOUND,
            ApiError::NoUpstream(_) => StatusCode::NOT_IMPLEMENTED,
            ApiError::NoUpstreamKey | ApiError::NoWorkingUpstream { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::QuotaExhausted { .. } | ApiError::Saturated { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ApiError::UpstreamUnreachable(_) | ApiError::UpstreamInvalid(_) => {
                StatusCode::BAD_GATEWAY
            }
            ApiError::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Seconds the client should wait before retrying, sent as `Retry-After`.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            ApiError::QuotaExhausted {
                retry_after_secs, ..
            }
            | ApiError::Saturated {
                retry_after_secs, ..
            }
            | ApiError::NoWorkingUpstream {
                retry_after_secs, ..
            } => Some(*retry_after_secs),
            _ => None,
        }
    }

    /// The error's OpenAI `code`, also the `reason` label of `glmgate_rejected_total`.
    pub fn code(&self) -> &'static str {
        self.openai_kind().1
    }

    /// OpenAI's `(type, code)` pair for this error.
    fn openai_kind(&self) -> (&'static str, &'static str) {
        match self {
            ApiError::MissingKey => ("invalid_request_error", "missing_api_key"),
            ApiError::InvalidKey => ("invalid_request_error", "invalid_api_key"),
            ApiError::RevokedKey => ("permission_error", "api_key_revoked"),
            ApiError::ExpiredKey(_) => ("permission_error", "api_key_expired"),
            ApiError::ModelNotAllowed(_) => ("permission_error", "model_not_allowed"),
            ApiError::BadRequest { .. } => ("invalid_request_error", "invalid_request"),
            ApiError::TooLarge(_) => ("invalid_request_error", "request_too_large"),
            ApiError::BodyTimeout(_) => ("invalid_request_error", "request_timeout"),
            ApiError::NotFound { .. } => ("invalid_request_error", "unknown_url"),
            ApiError::ModelUnavailable(_) => ("invalid_request_error", "model_not_found"),
            ApiError::NoUpstream(_) => ("invalid_request_error", "not_implemented"),
            ApiError::NoUpstreamKey => ("server_error", "no_upstream_key"),
            ApiError::NoWorkingUpstream { .. } => ("server_error", "no_working_upstream_key"),
            ApiError::QuotaExhausted { .. } => ("rate_limit_error", "upstream_quota_exhausted"),
            ApiError::Saturated { .. } => ("rate_limit_error", "rate_limit_exceeded"),
            ApiError::UpstreamUnreachable(_) => ("server_error", "upstream_unreachable"),
            ApiError::UpstreamTimeout(_) => ("server_error", "upstream_timeout"),
            ApiError::UpstreamInvalid(_) => ("server_error", "upstream_invalid_response"),
            ApiError::Internal(_) => ("server_error", "internal_error"),
        }
    }

    /// Anthropic's `error.type` for this error.
    fn anthropic_type(&self) -> &'static str {
        match self {
            ApiError::MissingKey | ApiError::InvalidKey => "authentication_error",
            ApiError::RevokedKey | ApiError::ExpiredKey(_) | ApiError::ModelNotAllowed(_) => {
                "permission_error"
            }
            ApiError::BadRequest { .. } | ApiError::NoUpstream(_) | ApiError::BodyTimeout(_) => {
                "invalid_request_error"
            }
            ApiError::TooLarge(_) => "request_too_large",
            ApiError::NotFound { .. } | ApiError::ModelUnavailable(_) => "not_found_error",
            ApiError::UpstreamTimeout(_) => "timeout_error",
            ApiError::QuotaExhausted { .. } | ApiError::Saturated { .. } => "rate_limit_error",
            ApiError::NoWorkingUpstream { .. } => "api_error",
            ApiError::UpstreamUnreachable(_)
            | ApiError::UpstreamInvalid(_)
            | ApiError::NoUpstreamKey
            | ApiError::Internal(_) => "api_error",
        }
    }

    /// The JSON error body in `dialect`'s shape.
    pub fn body(&self, dialect: Dialect, request_id: &str) -> serde_json::Value {
        let message = self.to_string();
        match dialect {
            Dialect::OpenAi => {
                let (kind, code) = self.openai_kind();
                let param = match self {
                    ApiError::BadRequest { param, .. } => param.clone(),
                    _ => None,
                };
                json!({"error": {"message": message, "type": kind, "param": param, "code": code}})
            }
            Dialect::Anthropic => json!({
                "type": "error",
                "error": {"type": self.anthropic_type(), "message": message},
                "request_id": request_id,
            }),
        }
    }

    /// Renders the error as a response, logging server-side faults with their hidden detail.
    pub fn render(self, dialect: Dialect, request_id: &str) -> Response {
        let status = self.status();
        match &self {
            ApiError::Internal(detail) => tracing::error!(request_id, %detail, "internal error"),
            ApiError::UpstreamUnreachable(_)
            | ApiError::UpstreamTimeout(_)
            | ApiError::UpstreamInvalid(_)
            | ApiError::NoUpstreamKey
            | ApiError::NoWorkingUpstream { .. }
            | ApiError::QuotaExhausted { .. }
            | ApiError::Saturated { .. } => {
                tracing::warn!(request_id, error = %self, "upstream failure")
            }
            _ => tracing::debug!(request_id, error = %self, "request rejected"),
        }
        let body = self.body(dialect, request_id).to_string();
        let retry_after = self.retry_after_secs();
        let mut response = (status, body).into_response();
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_shape_names_the_field() {
        let e = ApiError::bad_request("`messages` is required", Some("messages".into()));
        let body = e.body(Dialect::OpenAi, "r1");
        assert_eq!(body["error"]["param"], "messages");
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn anthropic_shape_has_type_error_and_request_id() {
        let body = ApiError::InvalidKey.body(Dialect::Anthropic, "r2");
        assert_eq!(body["type"], "error");
        assert_eq!(body["error"]["type"], "authentication_error");
        assert_eq!(body["request_id"], "r2");
    }

    #[test]
    fn internal_detail_is_not_rendered() {
        let body = ApiError::Internal("db password wrong".into()).body(Dialect::OpenAi, "r");
        assert!(!body.to_string().contains("password"));
    }

    #[test]
    fn every_error_has_its_own_metrics_reason() {
        let s = String::new;
        let all = [
            ApiError::MissingKey,
            ApiError::InvalidKey,
            ApiError::RevokedKey,
            ApiError::ExpiredKey(s()),
            ApiError::ModelNotAllowed(s()),
            ApiError::bad_request("x", None),
            ApiError::TooLarge(1),
            ApiError::BodyTimeout(1),
            ApiError::NotFound {
                method: s(),
                path: s(),
            },
            ApiError::ModelUnavailable(s()),
            ApiError::NoUpstream(s()),
            ApiError::NoUpstreamKey,
            ApiError::NoWorkingUpstream {
                message: s(),
                retry_after_secs: 1,
            },
            ApiError::QuotaExhausted {
                message: s(),
                retry_after_secs: 1,
            },
            ApiError::Saturated {
                message: s(),
                retry_after_secs: 1,
            },
            ApiError::UpstreamUnreachable(s()),
            ApiError::UpstreamTimeout(1),
            ApiError::UpstreamInvalid(s()),
            ApiError::Internal(s()),
        ];
        let codes: std::collections::HashSet<&str> = all.iter().map(ApiError::code).collect();
        assert_eq!(codes.len(), all.len(), "each error a reason of its own");
    }
}
