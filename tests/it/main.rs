//! Integration tests: the real gateway and the real mock on ephemeral loopback ports, talked
//! to over HTTP. One test binary, so the suite links once.

mod common;
mod errors;
mod golden;
mod http2;
mod lifecycle;
mod metrics;
mod passthrough;
mod pools;
mod streaming;
#[path = "../support/certs.rs"]
mod test_certs;
mod translation;
