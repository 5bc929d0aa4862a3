//! Translation between the two client APIs, for a client whose format no upstream speaks.
//!
//! Passthrough stays the default (it is faster and exact). Both directions are done:
//! an Anthropic Messages client on an OpenAI-style upstream ([`a2o`]) and an OpenAI Chat
//! Completions client on an Anthropic-style upstream ([`o2a`]) — requests, JSON answers,
//! streams (event by event, nothing buffered) and error bodies.

pub mod a2o;
pub mod o2a;
pub mod reasoning;

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::{ApiError, Dialect};

/// Appends `v` as compact JSON. Written straight into `out`: `Value`'s `to_string` goes
/// through `fmt::Display`, which hands the serializer a formatter and costs about three
/// times as much (a translated stream serialises one value per event).
fn put_json(out: &mut BytesMut, v: &impl serde::Serialize) {
    // Writing to memory cannot fail, and every map written here has string keys.
    let _ = serde_json::to_writer(out.writer(), v);
}

/// An event's delta, `{"<field>": "<text>", "type": "<kind>"}`, serialised from borrowed
/// parts: building a `Value` for it cost more than the rest of the event's translation.
/// The keys come in the order a `Value` map writes them (alphabetical), so the translated
/// events read alike whichever way they were written.
struct TextDelta<'a> {
    field: &'static str,
    text: &'a str,
    kind: &'static str,
}

impl serde::Serialize for TextDelta<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        debug_assert!(self.field < "type");
        s.collect_map([(self.field, self.text), ("type", self.kind)])
    }
}

/// Client format → upstream format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Anthropic client, OpenAI-style upstream.
    AnthropicToOpenAi,
    /// OpenAI client, Anthropic-style upstream.
    OpenAiToAnthropic,
}

impl Direction {
    /// The direction that serves `client` on an upstream speaking `upstream`, if any.
    pub fn between(client: Dialect, upstream: Dialect) -> Option<Direction> {
        match (client, upstream) {
            (Dialect::Anthropic, Dialect::OpenAi) => Some(Direction::AnthropicToOpenAi),
            (Dialect::OpenAi, Dialect::Anthropic) => Some(Direction::OpenAiToAnthropic),
            _ => None,
        }
    }
}

/// Converts an upstream event stream, chunk by chunk, into the client's format. (Whole
/// answers are converted before the status is sent: see [`Translation::response`].)
pub trait ResponseTranslator: Send {
    /// Bytes for the client from one upstream chunk (possibly none yet).
    fn feed(&mut self, chunk: &[u8]) -> Bytes;
    /// Bytes for the client once the upstream body has ended (idempotent).
    fn finish(&mut self) -> Bytes;
}

/// An OpenAI tool call's `arguments` (a JSON string) as an Anthropic `tool_use` input
/// object; arguments that are missing or not JSON become `{}`.
pub(crate) fn tool_call_input(call: &serde_json::Value) -> serde_json::Value {
    call.pointer("/function/arguments")
        .and_then(serde_json::Value::as_str)
        .and_then(|args| serde_json::from_str(args).ok())
        .unwrap_or_else(|| serde_json::json!({}))
}

/// One request's translation: what its answer needs to be turned back.
pub enum Translation {
    A2O(a2o::Context),
    O2A(o2a::Context),
}

impl Translation {
    /// Translates the request body for `direction`.
    pub fn request(direction: Direction, body: &[u8]) -> Result<(Bytes, Translation), ApiError> {
        Ok(match direction {
            Direction::AnthropicToOpenAi => {
                let (b, c) = a2o::request(body)?;
                (b, Translation::A2O(c))
            }
            Direction::OpenAiToAnthropic => {
                let (b, c) = o2a::request(body)?;
                (b, Translation::O2A(c))
            }
        })
    }

    /// An upstream error body in the client's shape.
    pub fn error(&self, status: u16, body: &[u8], request_id: &str) -> String {
        match self {
            Translation::A2O(_) => a2o::error(status, body, request_id).to_string(),
            Translation::O2A(_) => o2a::error(status, body).to_string(),
        }
    }

    /// A whole successful answer in the client's shape; `None` if it does not parse.
    pub fn response(&self, body: &[u8]) -> Option<Bytes> {
        let v = match self {
            Translation::A2O(c) => a2o::response(body, c)?,
            Translation::O2A(c) => o2a::response(body, c)?,
        };
        Some(Bytes::from(v.to_string()))
    }

    /// The translator for a successful event stream.
    pub fn stream_translator(self) -> Box<dyn ResponseTranslator> {
        match self {
            Translation::A2O(c) => Box::new(a2o::StreamTranslator::new(c)),
            Translation::O2A(c) => Box::new(o2a::StreamTranslator::new(c)),
        }
    }
}

#[cfg(test)]
mod roundtrip;
