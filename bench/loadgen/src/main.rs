//! `glmgate-load`: drives one HTTP endpoint with POST requests and prints one JSON line of
//! results (requests, errors, requests per second, latency and time-to-first-byte
//! percentiles in microseconds).
//!
//! Closed loop (`--concurrency N`): N workers, each sends its next request when the last one
//! has been read to the end. Open loop (`--rate R`): requests start on a fixed schedule and
//! latency counts from the scheduled start, so a stall is not hidden (no coordinated
//! omission). Time to first byte is until the first body chunk, which for a stream is the
//! first event.

use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;

#[derive(Parser, Clone)]
struct Args {
    #[arg(long)]
    url: String,
    /// `name: value`, repeatable.
    #[arg(long = "header")]
    headers: Vec<String>,
    #[arg(long)]
    body_file: PathBuf,
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Measured seconds (after the warm-up).
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    #[arg(long, default_value_t = 0.5)]
    warmup: f64,
    /// Open loop: requests started per second.
    #[arg(long)]
    rate: Option<f64>,
    /// Closed loop: stop after exactly this many requests (no warm-up; for instruction counts).
    #[arg(long)]
    requests: Option<u64>,
}

#[derive(Default)]
struct Samples {
    latency_us: Vec<u32>,
    ttfb_us: Vec<u32>,
    errors: u64,
    /// Every request sent, the warm-up's included.
    sent: u64,
}

impl Samples {
    /// Records one request's outcome: its timings, or an error.
    fn add(&mut self, result: Option<(Duration, Duration)>) {
        match result {
            Some((latency, ttfb)) => {
                self.latency_us.push(micros(latency));
                self.ttfb_us.push(micros(ttfb));
            }
            None => self.errors += 1,
        }
    }
}

struct Shared {
    client: reqwest::Client,
    url: String,
    headers: reqwest::header::HeaderMap,
    /// The request body, shared without copying.
    body: bytes::Bytes,
}

/// One request; returns (latency, time to first byte) from `start`, or None on error.
async fn one(s: &Shared, start: Instant) -> Option<(Duration, Duration)> {
    let resp = s
        .client
        .post(&s.url)
        .headers(s.headers.clone())
        .body(s.body.clone())
        .send()
        .await
        .ok()?;
    let ok = resp.status().is_success();
    let mut resp = resp;
    let mut ttfb = None;
    while let Some(chunk) = resp.chunk().await.ok()? {
        if ttfb.is_none() && !chunk.is_empty() {
            ttfb = Some(start.elapsed());
        }
    }
    let latency = start.elapsed();
    ok.then(|| (latency, ttfb.unwrap_or(latency)))
}

fn micros(d: Duration) -> u32 {
    d.as_micros().min(u32::MAX as u128) as u32
}

fn percentiles(v: &mut [u32]) -> serde_json::Value {
    v.sort_unstable();
    let at = |q: f64| -> u32 {
        if v.is_empty() {
            return 0;
        }
        v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1]
    };
    serde_json::json!({"p50": at(0.50), "p90": at(0.90), "p99": at(0.99), "max": at(1.0)})
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let mut headers = reqwest::header::HeaderMap::new();
    for h in &args.headers {
        let (name, value) = h.split_once(':').ok_or("header must be `name: value`")?;
        headers.insert(
            reqwest::header::HeaderName::from_bytes(name.trim().as_bytes())?,
            value.trim().parse()?,
        );
    }
    let body = bytes::Bytes::from(std::fs::read(&args.body_file)?);
    let pool = args.concurrency.max(64);
    let shared = Arc::new(Shared {
        client: reqwest::Client::builder()
            .pool_max_idle_per_host(pool)
            .tcp_nodelay(true)
            .build()?,
        url: args.url.clone(),
        headers,
        body,
    });
    let begin = Instant::now();
    let (warmup, duration) = match args.requests {
        Some(_) => (0.0, 3600.0),
        None => (args.warmup, args.duration),
    };
    let measure_from = begin + Duration::from_secs_f64(warmup);
    let end = measure_from + Duration::from_secs_f64(duration);
    // Requests left to start (`--requests`); effectively unlimited otherwise.
    let budget = Arc::new(AtomicI64::new(args.requests.map_or(i64::MAX, |n| n as i64)));

    let mut tasks = Vec::new();
    match args.rate {
        None => {
            for _ in 0..args.concurrency {
                let s = shared.clone();
                let budget = budget.clone();
                tasks.push(tokio::spawn(async move {
                    let mut out = Samples::default();
                    loop {
                        let start = Instant::now();
                        if start >= end || budget.fetch_sub(1, Ordering::Relaxed) <= 0 {
                            break;
                        }
                        let r = one(&s, start).await;
                        out.sent += 1;
                        if start >= measure_from {
                            out.add(r);
                        }
                    }
                    out
                }));
            }
        }
        Some(rate) => {
            let interval = Duration::from_secs_f64(1.0 / rate);
            let mut next = Instant::now();
            while next < end {
                let s = shared.clone();
                let scheduled = next;
                tasks.push(tokio::spawn(async move {
                    let mut out = Samples::default();
                    let r = one(&s, scheduled).await;
                    out.sent += 1;
                    if scheduled >= measure_from {
                        out.add(r);
                    }
                    out
                }));
                next += interval;
                tokio::time::sleep_until(next.into()).await;
            }
        }
    }
    let mut all = Samples::default();
    for t in tasks {
        let s = t.await?;
        all.latency_us.extend(s.latency_us);
        all.ttfb_us.extend(s.ttfb_us);
        all.errors += s.errors;
        all.sent += s.sent;
    }
    let measured = (Instant::now() - measure_from).as_secs_f64();
    let requests = all.latency_us.len() as u64;
    let result = serde_json::json!({
        "requests": requests,
        "sent": all.sent,
        "errors": all.errors,
        "rps": requests as f64 / measured.min(duration),
        "latency_us": percentiles(&mut all.latency_us),
        "ttfb_us": percentiles(&mut all.ttfb_us),
    });
    println!("{result}");
    Ok(())
}
