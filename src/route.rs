//! Choosing where a request goes: the upstream format that matches the client's own
//! (passthrough) when some provider speaks it, else the other format through a translator;
//! which account and key is the scheduler's job ([`crate::upstream`]). Model aliases and
//! tiers plug in here later.

use crate::error::{ApiError, Dialect};
use crate::request::RequestHead;
use crate::translate::Direction;
use crate::upstream::pool::Pool;

/// Where one request will be sent.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    /// The format spoken to the upstream.
    pub dialect: Dialect,
    /// Set when that is not the client's format.
    pub translate: Option<Direction>,
}

fn name(d: Dialect) -> &'static str {
    match d {
        Dialect::OpenAi => "OpenAI Chat Completions",
        Dialect::Anthropic => "Anthropic Messages",
    }
}

pub fn route(pool: &Pool, dialect: Dialect, _head: &RequestHead) -> Result<Route, ApiError> {
    if pool.speaks(dialect) {
        return Ok(Route {
            dialect,
            translate: None,
        });
    }
    let other = match dialect {
        Dialect::OpenAi => Dialect::Anthropic,
        Dialect::Anthropic => Dialect::OpenAi,
    };
    match Direction::between(dialect, other) {
        Some(d) if pool.speaks(other) => Ok(Route {
            dialect: other,
            translate: Some(d),
        }),
        Some(_) => Err(ApiError::NoUpstream(format!(
            "this gateway has no upstream that speaks the {} or {} API",
            name(dialect),
            name(other)
        ))),
        None => Err(ApiError::NoUpstream(format!(
            "this gateway has no upstream that speaks the {} API, and translating it to \
             the {} API is not available yet",
            name(dialect),
            name(other)
        ))),
    }
}
