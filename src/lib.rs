//! glmgate: an LLM API gateway for Z.AI's GLM models.
//!
//! A request walks through one module per step:
//!
//! | step | module |
//! |---|---|
//! | authenticate the client key | [`auth`] |
//! | read and validate the body | [`request`] |
//! | pick the model and upstream format (aliases, tiers; passthrough or translation) | [`route`], [`translate`] |
//! | admit (client quotas: a seam for later) | [`proxy`] |
//! | admit upstream, send, retry elsewhere before the first byte | [`upstream`] |
//! | stream the answer back, metering usage as it passes | [`meter`], [`proxy`] |
//! | record usage in batches (and count it in the metrics) | [`accounting`], [`store`], [`metrics`] |
//!
//! [`app`] assembles the router and serves it, [`balance`] spreading connections over the
//! serving threads; [`config`] loads TOML with env overrides;
//! [`error`] renders every failure in the caller's own API format; [`logging`] writes log
//! lines, buffered per serving thread; [`mock`] is the Z.AI-compatible mock upstream used
//! by tests, the demo and the benchmarks; [`tokens`] counts tokens locally for
//! `count_tokens`.

pub mod accounting;
pub mod app;
pub mod auth;
pub mod balance;
pub mod cli;
pub mod config;
pub mod demo;
pub mod error;
pub mod logging;
pub mod meter;
pub mod metrics;
pub mod mock;
pub mod proxy;
pub mod request;
pub mod route;
pub mod routes;
pub mod sse;
pub mod store;
pub mod tokens;
pub mod translate;
pub mod upstream;

#[cfg(test)]
#[path = "../tests/support/certs.rs"]
mod test_certs;
