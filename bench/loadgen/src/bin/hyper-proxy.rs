//! `hyper-proxy`: the plainest reverse proxy hyper makes, as a reference row in glmgate's
//! benchmarks (`bench/run --with-hyper`). It is what the crates glmgate is built on cost
//! with no logic of glmgate's: each request is passed on as it came (method, path,
//! headers, body streamed) to one upstream through hyper-util's pooled client, and the
//! answer is streamed back as it comes. No authentication, routing, accounting or logs.
//!
//! Serving runs on tokio's multi-threaded runtime (one worker per core, as glmgate has one
//! serving thread per core); each accepted connection is served by hyper's HTTP/1.1 server.

use std::net::SocketAddr;

use clap::Parser;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, HOST};
use hyper::service::service_fn;
use hyper::{Request, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

#[derive(Parser)]
struct Args {
    #[arg(long)]
    listen: SocketAddr,
    /// The upstream's address, `host:port` (plain HTTP).
    #[arg(long)]
    upstream: String,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let client: Client<HttpConnector, Incoming> =
        Client::builder(TokioExecutor::new()).build_http();
    let host = HeaderValue::from_str(&args.upstream).expect("host:port");
    let authority: &'static str = Box::leak(args.upstream.into_boxed_str());
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let (client, host) = (client.clone(), host.clone());
        tokio::spawn(async move {
            let service = service_fn(move |mut req: Request<Incoming>| {
                let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
                let uri = Uri::builder()
                    .scheme("http")
                    .authority(authority)
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
