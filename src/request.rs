//! Reading and validating a client request body, without keeping more than routing needs.
//!
//! The body itself is forwarded byte for byte; this pass only checks the fields each API
//! requires (so a client gets a 400 naming the field rather than an upstream surprise) and
//! pulls out `model` and `stream`. Message contents are skipped, never built.

use std::future::Future;
use std::task::Poll;

use axum::body::{Body, Bytes};
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::config::Settings;
use crate::error::{ApiError, Dialect};

/// What routing and accounting need from a request body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub model: String,
    pub stream: bool,
    /// Where the `model` value (quotes included) sits in the body, so it can be replaced
    /// without parsing the body again.
    pub model_span: std::ops::Range<usize>,
}

#[derive(Deserialize)]
struct OpenAiHead<'a> {
    #[serde(borrow)]
    model: &'a RawValue,
    messages: Vec<IgnoredAny>,
    #[serde(default)]
    stream: Option<bool>,
}

#[derive(Deserialize)]
struct AnthropicHead<'a> {
    #[serde(borrow)]
    model: &'a RawValue,
    #[expect(dead_code, reason = "only its presence and type are checked")]
    max_tokens: u64,
    messages: Vec<IgnoredAny>,
    #[serde(default)]
    stream: Option<bool>,
}

/// Reads the whole request body, refusing more than `server.max_body_bytes`, and giving up
/// after `server.client_timeout_secs` (a client that stalls or trickles would otherwise hold
/// the request forever).
pub async fn read_body(body: Body, settings: &Settings) -> Result<Bytes, ApiError> {
    let limit = settings.max_body_bytes;
    let mut read = std::pin::pin!(axum::body::to_bytes(body, limit));
    // A small body usually came with the head: the timer is set up only if it did not.
    let first = std::future::poll_fn(|cx| Poll::Ready(read.as_mut().poll(cx))).await;
    let read = match (first, settings.client_timeout) {
        (Poll::Ready(read), _) => read,
        (Poll::Pending, Some(t)) => tokio::time::timeout(t, read)
            .await
            .map_err(|_| ApiError::BodyTimeout(t.as_secs()))?,
        (Poll::Pending, None) => read.await,
    };
    let bytes = read.map_err(|e| {
        // `to_bytes` reports an over-long body through a boxed `LengthLimitError` source.
        let too_long = std::error::Error::source(&e)
            .map(|s| s.is::<http_body_util::LengthLimitError>())
            .unwrap_or(false);
        if too_long {
            ApiError::TooLarge(limit)
        } else {
            ApiError::bad_request(format!("could not read the request body: {e}"), None)
        }
    })?;
    // A body that came in one read is a slice of the connection's read buffer, and holding
    // it (for retries, until the answer starts) would keep that whole buffer alive and make
    // the connection allocate a new one. A small body is cheaper to copy.
    Ok(if bytes.len() <= SMALL_BODY {
        Bytes::copy_from_slice(&bytes)
    } else {
        bytes
    })
}

/// Bodies up to this size are copied out of the connection's read buffer (see `read_body`).
const SMALL_BODY: usize = 16 * 1024;

/// Validates the body for `dialect` and returns its routing head.
pub fn parse_head(dialect: Dialect, body: &[u8]) -> Result<RequestHead, ApiError> {
    let (model, messages, stream) = match dialect {
        Dialect::OpenAi => {
            let h: OpenAiHead = decode(body)?;
            (h.model, h.messages.len(), h.stream)
        }
        Dialect::Anthropic => {
            let h: AnthropicHead = decode(body)?;
            (h.model, h.messages.len(), h.stream)
        }
    };
    // The raw value borrows from `body`: its offset is where it sits in the buffer.
    let start = model.get().as_ptr() as usize - body.as_ptr() as usize;
    let model_span = start..start + model.get().len();
    let model: String = serde_json::from_str(model.get()).map_err(|e| {
        ApiError::bad_request(
            format!("`model`: {}", strip_position(&e.to_string())),
            Some("model".into()),
        )
    })?;
    if model.trim().is_empty() {
        return Err(ApiError::bad_request(
            "`model` must not be empty",
            Some("model".into()),
        ));
    }
    if messages == 0 {
        return Err(ApiError::bad_request(
            "`messages` must contain at least one message",
            Some("messages".into()),
        ));
    }
    Ok(RequestHead {
        model,
        stream: stream.unwrap_or(false),
        model_span,
    })
}

fn decode<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    // serde would read a struct from a JSON array positionally; the APIs want an object.
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => {}
        None => return Err(ApiError::bad_request("request body is empty", None)),
        Some(_) => {
            return Err(ApiError::bad_request(
                "request body must be a JSON object",
                None,
            ))
        }
    }
    // The common case, a valid body, is read without tracking paths; a failed read is
    // repeated with tracking, to name the field at fault.
    if let Ok(value) = serde_json::from_slice(body) {
        return Ok(value);
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let result: Result<T, _> = serde_path_to_error::deserialize(&mut de);
    let value = result.map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if !inner.is_data() {
            return ApiError::bad_request(format!("request body is not valid JSON: {inner}"), None);
        }
        let text = strip_position(&inner.to_string());
        if let Some(field) = text
            .strip_prefix("missing field `")
            .and_then(|r| r.strip_suffix('`'))
        {
            let field = if path == "." {
                field.to_string()
            } else {
                format!("{path}.{field}")
            };
            return ApiError::bad_request(format!("`{field}` is required"), Some(field));
        }
        if path == "." {
            return ApiError::bad_request(
                format!("request body must be a JSON object: {text}"),
                None,
            );
        }
        ApiError::bad_request(format!("`{path}`: {text}"), Some(path))
    })?;
    de.end()
        .map_err(|e| ApiError::bad_request(format!("request body is not valid JSON: {e}"), None))?;
    Ok(value)
}

/// serde_json appends " at line L column C"; the field path says more to a client.
fn strip_position(text: &str) -> String {
    match text.rfind(" at line ") {
        Some(i) => text[..i].to_string(),
        None => text.to_string(),
    }
}

/// `body` with the bytes at `span` replaced by `model` as a JSON string.
pub fn replace_model(
    body: &[u8],
    span: std::ops::Range<usize>,
    model: &str,
) -> Result<Bytes, ApiError> {
    let quoted =
        serde_json::to_string(model).map_err(|e| ApiError::Internal(format!("model name: {e}")))?;
    let mut out = bytes::BytesMut::with_capacity(body.len() + quoted.len());
    out.extend_from_slice(body.get(..span.start).unwrap_or_default());
    out.extend_from_slice(quoted.as_bytes());
    out.extend_from_slice(body.get(span.end..).unwrap_or_default());
    Ok(out.freeze())
}

/// `body` with its top-level `model` replaced, every other byte kept as it was (for a body
/// whose head was not parsed, e.g. a translated one).
pub fn set_model(body: &Bytes, model: &str) -> Result<Bytes, ApiError> {
    let fields: std::collections::HashMap<String, &RawValue> = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON: {e}"), None))?;
    let Some(raw) = fields.get("model") else {
        return Err(ApiError::bad_request(
            "`model` is required",
            Some("model".into()),
        ));
    };
    let start = raw.get().as_ptr() as usize - body.as_ptr() as usize;
    replace_model(body, start..start + raw.get().len(), model)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(d: Dialect, body: &str) -> (String, Option<String>) {
        match parse_head(d, body.as_bytes()) {
            Err(ApiError::BadRequest { message, param }) => (message, param),
            other => panic!("expected a 400, got {other:?}"),
        }
    }

    #[test]
    fn valid_heads() {
        let h = parse_head(
            Dialect::OpenAi,
            br#"{"model":"glm-4.7","messages":[{"role":"user","content":"hi"}],"stream":true,"x":{"y":[1]}}"#,
        )
        .expect("valid");
        assert_eq!(
            h,
            RequestHead {
                model: "glm-4.7".into(),
                stream: true,
                model_span: 9..18,
            }
        );
        // An escaped name is read as a string; its span covers the escapes.
        let body = br#"{"model" : "glm\u002d4.7","messages":[{}]}"#;
        let h = parse_head(Dialect::OpenAi, body).expect("valid");
        assert_eq!(h.model, "glm-4.7");
        let out = replace_model(body, h.model_span, "glm-5").expect("replaced");
        assert_eq!(&out[..], br#"{"model" : "glm-5","messages":[{}]}"#);
        let h = parse_head(
            Dialect::Anthropic,
            br#"{"model":"glm-4.7","max_tokens":10,"messages":[{"role":"user","content":"hi"}]}"#,
        )
        .expect("valid");
        assert!(!h.stream);
    }

    #[test]
    fn errors_name_the_field() {
        let (m, p) = err(Dialect::OpenAi, r#"{"model":"glm-4.7"}"#);
        assert_eq!(p.as_deref(), Some("messages"));
        assert!(m.contains("`messages` is required"), "{m}");

        let (_, p) = err(Dialect::Anthropic, r#"{"model":"m","messages":[{}]}"#);
        assert_eq!(p.as_deref(), Some("max_tokens"));

        let (m, p) = err(
            Dialect::OpenAi,
            r#"{"model":"m","messages":[{}],"stream":"yes"}"#,
        );
        assert_eq!(p.as_deref(), Some("stream"));
        assert!(m.contains("expected a boolean"), "{m}");

        let (_, p) = err(Dialect::OpenAi, r#"{"model":5,"messages":[{}]}"#);
        assert_eq!(p.as_deref(), Some("model"));

        let (_, p) = err(Dialect::OpenAi, r#"{"model":"m","messages":[]}"#);
        assert_eq!(p.as_deref(), Some("messages"));
    }

    #[test]
    fn malformed_json_is_a_400_without_field() {
        let (m, p) = err(Dialect::OpenAi, r#"{"model":"m","#);
        assert!(m.contains("not valid JSON"), "{m}");
        assert_eq!(p, None);
        let (m, _) = err(Dialect::OpenAi, r#"{"model":"m","messages":[{}]} trailing"#);
        assert!(m.contains("not valid JSON"), "{m}");
        let (m, _) = err(Dialect::OpenAi, r#"[1,2]"#);
        assert!(m.contains("JSON object"), "{m}");
    }

    #[test]
    fn set_model_changes_only_the_model() {
        let body = Bytes::from_static(
            br#"{"messages":[{"role":"user","content":"model \"x\""}], "model" : "claude-x","stream":true}"#,
        );
        let out = super::set_model(&body, "glm-4.7").expect("rewritten");
        assert_eq!(
            std::str::from_utf8(&out).expect("utf8"),
            r#"{"messages":[{"role":"user","content":"model \"x\""}], "model" : "glm-4.7","stream":true}"#
        );
    }
}
