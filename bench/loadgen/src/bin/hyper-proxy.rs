//! `hyper-proxy`: the plainest reverse proxy hyper makes, as a reference row in glmgate's
//! benchmarks (`bench/run --with-hyper`). It is what the crates glmgate is built on cost
//! with no logic of glmgate's: each request is passed on as it came (method, path,
//! headers, body streamed) to one upstream through hyper-util's pooled client, and the
//! answer is streamed back as it comes. No authentication, routing, accounting or logs.
//!
//! Each accepted connection is served by hyper's HTTP/1.1 server. By default on tokio's
//! multi-threaded runtime, one worker per core, as the crates' documentation composes
//! them. With `--per-core`, one single-threaded runtime per core instead, each with its
//! own listener on the port (`SO_REUSEPORT`) and its own client pool, so a request and
//! its upstream connection never change thread (glmgate's layout, without its balancing).

use clap::Parser;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, HOST};
use hyper::service::service_fn;
use hyper::{Request, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

#[path = "../reference.rs"]
mod reference;

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    addresses: reference::Addresses,
    /// One single-threaded runtime and listener per core.
    #[arg(long)]
    per_core: bool,
}

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let upstream = args.addresses.upstream();
    let addr = args.addresses.listen;
    if !args.per_core {
        return tokio::runtime::Runtime::new()?
            .block_on(async move { serve(reference::listen(addr, false)?, upstream).await });
    }
    reference::per_core(addr, move |listener| serve(listener, upstream))
}

async fn serve(listener: tokio::net::TcpListener, upstream: &'static str) -> std::io::Result<()> {
    let client: Client<HttpConnector, Incoming> =
        Client::builder(TokioExecutor::new()).build_http();
    let host = HeaderValue::from_static(upstream);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let (client, host) = (client.clone(), host.clone());
        tokio::spawn(async move {
            let service = service_fn(move |mut req: Request<Incoming>| {
                let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
                let uri = Uri::builder()
                    .scheme("http")
                    .authority(upstream)
                    .path_and_query(path)
                    .build();
                let client = client.clone();
                let host = host.clone();
                async move {
                    *req.uri_mut() = uri.expect("a valid path");
                    req.headers_mut().insert(HOST, host);
                    client.request(req).await
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
