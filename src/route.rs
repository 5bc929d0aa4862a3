//! Choosing where a request goes. Today: the upstream format that matches the client's own
//! (passthrough), on any provider that speaks it; which account and key is the scheduler's
//! job ([`crate::upstream`]). Model aliases, tiers and translation plug in here later.

use crate::error::{ApiError, Dialect};
use crate::request::RequestHead;
use crate::upstream::pool::Pool;

/// Where one request will be sent.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    /// The format spoken to the upstream.
    pub dialect: Dialect,
}

pub fn route(pool: &Pool, dialect: Dialect, _head: &RequestHead) -> Result<Route, ApiError> {
    if !pool.speaks(dialect) {
        return Err(ApiError::NoUpstream(format!(
            "this gateway has no upstream that speaks the {} API, and it cannot yet \
             translate between formats",
            match dialect {
                Dialect::OpenAi => "OpenAI Chat Completions",
                Dialect::Anthropic => "Anthropic Messages",
            }
        )));
    }
    Ok(Route { dialect })
}
