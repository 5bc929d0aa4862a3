//! `glmgate-load`: drives one plain-HTTP endpoint with POST requests and prints one JSON
//! line of results (requests, errors, requests per second, latency and time-to-first-byte
//! percentiles in microseconds).
//!
//! Closed loop (`--concurrency N`): N workers, each with its own keep-alive connection,
//! sends its next request when the last answer has been read to the end. Open loop
//! (`--rate R`): requests start on a fixed schedule, each on an idle connection of its
//! thread or a new one, and latency counts from the scheduled start, so a stall is not
//! hidden (no coordinated omission). Time to first byte is until the first body chunk,
//! which for a stream is the first event.
//!
//! Built to cost the machine little, since on a small machine it shares the cores with
//! what it measures: a few threads (`--threads`), each a single-threaded runtime owning
//! its workers and connections, hyper's HTTP/1.1 client connections used directly (no
//! pool shared between threads, no task per connection hopping threads), the request's
//! head built once. About as light per request as `wrk` (bench/README.md).

use std::cell::RefCell;
use std::future::poll_fn;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use http_body_util::Full;
use hyper::body::Body;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderMap, HeaderName, HeaderValue, HOST};
use hyper::{Method, Request, Uri};
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

#[derive(Parser, Clone)]
struct Args {
    /// `http://host:port/path` (plain HTTP).
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
    /// Threads sending requests (default: one per core, at most one per worker).
    #[arg(long)]
    threads: Option<usize>,
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

    fn merge(&mut self, other: Samples) {
        self.latency_us.extend(other.latency_us);
        self.ttfb_us.extend(other.ttfb_us);
        self.errors += other.errors;
        self.sent += other.sent;
    }
}

/// What every request is made of, shared by all threads.
struct Target {
    addr: SocketAddr,
    path: Uri,
    /// `Host` and the `--header`s.
    headers: HeaderMap,
    /// The request body, shared without copying.
    body: Bytes,
}

impl Target {
    fn parse(args: &Args) -> Result<Target, Box<dyn std::error::Error>> {
        let uri: Uri = args.url.parse()?;
        if uri.scheme_str() != Some("http") {
            return Err("only http:// URLs".into());
        }
        let authority = uri.authority().ok_or("URL without host")?.clone();
        let port = authority.port_u16().unwrap_or(80);
        let addr = (authority.host(), port)
            .to_socket_addrs()?
            .next()
            .ok_or("host did not resolve")?;
        let mut headers = HeaderMap::new();
        headers.insert(HOST, HeaderValue::from_str(authority.as_str())?);
        for h in &args.headers {
            let (name, value) = h.split_once(':').ok_or("header must be `name: value`")?;
            headers.insert(
                HeaderName::from_bytes(name.trim().as_bytes())?,
                value.trim().parse()?,
            );
        }
        let path = uri.path_and_query().map_or("/", |p| p.as_str()).parse()?;
        Ok(Target {
            addr,
            path,
            headers,
            body: Bytes::from(std::fs::read(&args.body_file)?),
        })
    }

    fn request(&self) -> Request<Full<Bytes>> {
        let mut req = Request::new(Full::new(self.body.clone()));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = self.path.clone();
        *req.headers_mut() = self.headers.clone();
        req
    }
}

type Conn = SendRequest<Full<Bytes>>;

/// A thread's idle keep-alive connections.
type Idle = Rc<RefCell<Vec<Conn>>>;

/// A new connection, driven by a task of this thread.
async fn connect(t: &Target) -> Option<Conn> {
    let tcp = tokio::net::TcpStream::connect(t.addr).await.ok()?;
    tcp.set_nodelay(true).ok()?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .ok()?;
    tokio::task::spawn_local(conn);
    Some(sender)
}

/// One request on an idle connection of this thread, or a new one, which goes back to the
/// idle list if the answer left it usable. Returns (latency, time to first byte) from
/// `start`, or None on error.
async fn one(t: &Target, idle: &Idle, start: Instant) -> Option<(Duration, Duration)> {
    let mut conn = loop {
        let reused = idle.borrow_mut().pop();
        match reused {
            // One the server closed after its last answer is dropped, not counted.
            Some(mut c) => match c.ready().await {
                Ok(()) => break c,
                Err(_) => continue,
            },
            None => break connect(t).await?,
        }
    };
    let resp = conn.send_request(t.request()).await.ok()?;
    let ok = resp.status().is_success();
    let mut body = resp.into_body();
    let mut ttfb = None;
    while let Some(frame) = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        let frame = frame.ok()?;
        if ttfb.is_none() && frame.data_ref().is_some_and(|d| !d.is_empty()) {
            ttfb = Some(start.elapsed());
        }
    }
    let latency = start.elapsed();
    idle.borrow_mut().push(conn);
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

/// When to stop, and which requests count.
struct Plan {
    measure_from: Instant,
    end: Instant,
    /// Requests left to start (`--requests`); effectively unlimited otherwise.
    budget: AtomicI64,
}

/// Thread `index` of `threads`: its share of the closed-loop workers, or, given the open
/// loop's `schedule`, the requests whose scheduled starts the pacer sends it.
async fn thread_main(
    args: Arc<Args>,
    target: Arc<Target>,
    plan: Arc<Plan>,
    (index, threads): (usize, usize),
    schedule: Option<UnboundedReceiver<Instant>>,
) -> Samples {
    let idle: Idle = Rc::default();
    let mut tasks = Vec::new();
    match schedule {
        None => {
            for _ in (index..args.concurrency).step_by(threads) {
                let (target, plan, idle) = (target.clone(), plan.clone(), idle.clone());
                tasks.push(tokio::task::spawn_local(async move {
                    let mut out = Samples::default();
                    loop {
                        let start = Instant::now();
                        if start >= plan.end || plan.budget.fetch_sub(1, Ordering::Relaxed) <= 0 {
                            break;
                        }
                        let r = one(&target, &idle, start).await;
                        out.sent += 1;
                        if start >= plan.measure_from {
                            out.add(r);
                        }
                    }
                    out
                }));
            }
        }
        Some(mut starts) => {
            while let Some(scheduled) = starts.recv().await {
                let (target, plan, idle) = (target.clone(), plan.clone(), idle.clone());
                tasks.push(tokio::task::spawn_local(async move {
                    let mut out = Samples::default();
                    let r = one(&target, &idle, scheduled).await;
                    out.sent += 1;
                    if scheduled >= plan.measure_from {
                        out.add(r);
                    }
                    out
                }));
            }
        }
    }
    let mut all = Samples::default();
    for t in tasks {
        all.merge(t.await.unwrap_or_default());
    }
    all
}

/// The open loop's pacer: a thread of its own, whose sleep is precise to some 50 µs
/// (tokio's timer rounds up to the next millisecond, which would count as latency), sends
/// a start every `interval` until `end` to each of `threads` in turn.
fn pace(
    interval: Duration,
    end: Instant,
    threads: Vec<UnboundedSender<Instant>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut next = Instant::now();
        for thread in threads.iter().cycle() {
            if next >= end {
                break;
            }
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
            let _ = thread.send(next);
            next += interval;
        }
    })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Arc::new(Args::parse());
    let target = Arc::new(Target::parse(&args)?);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut threads = args.threads.unwrap_or(cores).max(1);
    if args.rate.is_none() {
        threads = threads.min(args.concurrency.max(1));
    }
    let begin = Instant::now();
    let (warmup, duration) = match args.requests {
        Some(_) => (0.0, 3600.0),
        None => (args.warmup, args.duration),
    };
    let measure_from = begin + Duration::from_secs_f64(warmup);
    let plan = Arc::new(Plan {
        measure_from,
        end: measure_from + Duration::from_secs_f64(duration),
        budget: AtomicI64::new(args.requests.map_or(i64::MAX, |n| n as i64)),
    });
    // The open loop: a pacer hands each scheduled start to the threads in turn.
    let (pacer, schedules) = match args.rate {
        None => (None, (0..threads).map(|_| None).collect()),
        Some(rate) => {
            let (starts, schedules): (Vec<_>, Vec<_>) = (0..threads)
                .map(|_| tokio::sync::mpsc::unbounded_channel())
                .unzip();
            let pacer = pace(Duration::from_secs_f64(1.0 / rate), plan.end, starts);
            (
                Some(pacer),
                schedules.into_iter().map(Some).collect::<Vec<_>>(),
            )
        }
    };
    let handles: Vec<_> = (0..threads)
        .zip(schedules)
        .map(|(index, schedule)| {
            let (args, target, plan) = (args.clone(), target.clone(), plan.clone());
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                let local = tokio::task::LocalSet::new();
                local.block_on(
                    &runtime,
                    thread_main(args, target, plan, (index, threads), schedule),
                )
            })
        })
        .collect();
    if let Some(p) = pacer {
        p.join().map_err(|_| "the pacer panicked")?;
    }
    let mut all = Samples::default();
    for h in handles {
        all.merge(h.join().map_err(|_| "a load thread panicked")?);
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
