//! Fault injection for the mock: a small comma-separated grammar.
//!
//! | item | effect |
//! |---|---|
//! | `STATUS[-CODE]` (e.g. `429-1302`, `401`, `500`, `529`, `400-1211`) | error response with Z.AI's body and business code |
//! | `STATUS[-CODE]@MODEL` (e.g. `429-1113@glm-5`) | the same, only for requests for that model |
//! | `quota-used=PCT` | what the quota monitor (`GET /api/monitor/usage/quota/limit`) reports as used for this key (default 10) |
//! | `concurrency=N` | at most N requests in flight per upstream key; more get 429 with code 1302 |
//! | `slow-first-byte[=MS]` | wait before answering (default 2000 ms) |
//! | `slow-chunks[=MS]` | wait between stream chunks (default 200 ms) |
//! | `slow-end[=MS]` | keep a stream open after its last event before ending it (default 200 ms) |
//! | `drop-mid-stream[=N]` | close the connection after N chunks (default: half of them) |
//! | `empty-200` | HTTP 200 with an empty body |
//! | `garbage-200` | HTTP 200 whose body is not JSON |
//!
//! A request picks faults from, in order: the `x-mock-fault` header, a top-level
//! `"mock_fault"` string in the body (it survives a gateway that forwards bodies untouched),
//! an upstream key of the form `fault-<SPEC>` (per-key faults), and the mock's `--fault`.

use std::time::Duration;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Faults {
    /// `(HTTP status, Z.AI business code)`.
    pub error: Option<(u16, String)>,
    /// Only requests for this model get `error`.
    pub error_model: Option<String>,
    /// Most requests in flight per upstream key.
    pub concurrency: Option<usize>,
    /// Used share of the plan quota the monitor reports, in percent.
    pub quota_used: Option<f64>,
    pub first_byte_delay: Option<Duration>,
    pub chunk_delay: Option<Duration>,
    /// How long a stream stays open after its last event.
    pub end_delay: Option<Duration>,
    /// `Some(None)`: drop at the midpoint; `Some(Some(n))`: after n chunks.
    pub drop_after: Option<Option<usize>>,
    pub empty_200: bool,
    pub garbage_200: bool,
}

fn ms(value: Option<&str>, default: u64) -> Result<Duration, String> {
    match value {
        None => Ok(Duration::from_millis(default)),
        Some(v) => v
            .parse()
            .map(Duration::from_millis)
            .map_err(|_| format!("`{v}` is not a number of milliseconds")),
    }
}

/// The default business code for an error status.
fn default_code(status: u16) -> &'static str {
    match status {
        400 => "1214",
        401 => "1002",
        429 => "1302",
        529 => "1305",
        _ => "500",
    }
}

impl Faults {
    /// Adds the faults of `spec` to `self`; earlier settings win.
    pub fn add(&mut self, spec: &str) -> Result<(), String> {
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (name, value) = match item.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (item, None),
            };
            match name {
                "slow-first-byte" => {
                    self.first_byte_delay.get_or_insert(ms(value, 2000)?);
                }
                "slow-chunks" => {
                    self.chunk_delay.get_or_insert(ms(value, 200)?);
                }
                "slow-end" => {
                    self.end_delay.get_or_insert(ms(value, 200)?);
                }
                "drop-mid-stream" => {
                    let n = value
                        .map(|v| {
                            v.parse::<usize>()
                                .map_err(|_| format!("`{v}` is not a count"))
                        })
                        .transpose()?;
                    self.drop_after.get_or_insert(n);
                }
                "empty-200" => self.empty_200 = true,
                "quota-used" => {
                    let pct = value
                        .and_then(|v| v.parse::<f64>().ok())
                        .ok_or_else(|| format!("`{item}`: quota-used needs a percentage"))?;
                    self.quota_used.get_or_insert(pct);
                }
                "concurrency" => {
                    let n = value
                        .and_then(|v| v.parse::<usize>().ok())
                        .filter(|n| *n > 0)
                        .ok_or_else(|| format!("`{item}`: concurrency needs a count above 0"))?;
                    self.concurrency.get_or_insert(n);
                }
                "garbage-200" => self.garbage_200 = true,
                other => {
                    let (other, model) = match other.split_once('@') {
                        Some((e, m)) => (e, Some(m.to_string())),
                        None => (other, None),
                    };
                    let (status, code) = match other.split_once('-') {
                        Some((s, c)) => (s, Some(c)),
                        None => (other, None),
                    };
                    let status: u16 = status
                        .parse()
                        .ok()
                        .filter(|s| (400..600).contains(s))
                        .ok_or_else(|| format!("unknown fault `{item}`"))?;
                    let code = code.unwrap_or_else(|| default_code(status)).to_string();
                    if self.error.is_none() {
                        self.error = Some((status, code));
                        self.error_model = model;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Paraphrased Z.AI messages for the business codes the mock can send.
pub fn message(code: &str) -> String {
    let reset = (chrono::Utc::now() + chrono::Duration::hours(9)) // UTC+8, plus one hour
        .format("%Y-%m-%d %H:%M:%S");
    match code {
        "1000" => "Authentication failed".into(),
        "1001" => "Authorization header is missing".into(),
        "1002" => "Invalid API key".into(),
        "1113" => "Insufficient balance or no resource package; please recharge".into(),
        "1211" => "Unknown model, please check the model code".into(),
        "1214" => "Invalid request parameters".into(),
        "1302" => "High concurrency usage of this API, please reduce concurrency or contact customer service to increase limits".into(),
        "1303" => "High frequency usage of this API, please reduce frequency".into(),
        "1305" => "The service may be temporarily overloaded, please try again later".into(),
        "1308" => format!("Usage limit reached for 5 hour. Your limit will reset at {reset}"),
        "1310" => format!("Weekly/Monthly Limit Exhausted. Your limit will reset at {reset}"),
        "1312" => "The model is busy, please try another model".into(),
        _ => "Internal error".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grammar() {
        let mut f = Faults::default();
        f.add("429-1308, slow-first-byte=50,drop-mid-stream=3")
            .expect("valid");
        assert_eq!(f.error, Some((429, "1308".into())));
        assert_eq!(f.first_byte_delay, Some(Duration::from_millis(50)));
        assert_eq!(f.drop_after, Some(Some(3)));
        f.add("500").expect("valid");
        assert_eq!(f.error, Some((429, "1308".into())), "earlier wins");
        let mut g = Faults::default();
        g.add("401").expect("valid");
        assert_eq!(g.error, Some((401, "1002".into())));
        assert!(Faults::default().add("explode").is_err());
        let mut h = Faults::default();
        h.add("429-1113@glm-5,concurrency=2").expect("valid");
        assert_eq!(h.error, Some((429, "1113".into())));
        assert_eq!(h.error_model.as_deref(), Some("glm-5"));
        assert_eq!(h.concurrency, Some(2));
        assert!(Faults::default().add("concurrency=0").is_err());
        assert!(Faults::default().add("slow-chunks=abc").is_err());
    }
}
