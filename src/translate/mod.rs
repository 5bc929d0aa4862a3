//! Translation between the two client APIs, for a client whose format no upstream speaks.
//!
//! Passthrough stays the default (it is faster and exact). Today one direction is done:
//! an Anthropic Messages client in front of an OpenAI-style upstream ([`a2o`]) — requests,
//! JSON answers, streams (event by event, nothing buffered) and error bodies.

pub mod a2o;

use bytes::Bytes;

use crate::error::Dialect;

/// Client format → upstream format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Anthropic client, OpenAI-style upstream.
    AnthropicToOpenAi,
}

impl Direction {
    /// The direction that serves `client` on an upstream speaking `upstream`, if any.
    pub fn between(client: Dialect, upstream: Dialect) -> Option<Direction> {
        match (client, upstream) {
            (Dialect::Anthropic, Dialect::OpenAi) => Some(Direction::AnthropicToOpenAi),
            _ => None,
        }
    }
}

/// Converts an upstream response body, chunk by chunk, into the client's format.
pub trait ResponseTranslator: Send {
    /// Bytes for the client from one upstream chunk (possibly none yet).
    fn feed(&mut self, chunk: &[u8]) -> Bytes;
    /// Bytes for the client once the upstream body has ended.
    fn finish(&mut self) -> Bytes;
}
