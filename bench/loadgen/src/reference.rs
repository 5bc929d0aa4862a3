//! What the reference proxies (`hyper-proxy`, `raw-proxy`) share: their addresses, their
//! listener, and glmgate's layout of one single-threaded runtime per core.

use std::future::Future;
use std::io;
use std::net::SocketAddr;

use tokio::net::TcpListener;

#[derive(clap::Args)]
pub struct Addresses {
    #[arg(long)]
    pub listen: SocketAddr,
    /// The upstream's address, `host:port` (plain HTTP).
    #[arg(long)]
    upstream: String,
}

impl Addresses {
    /// The upstream's address, kept for the process's life.
    pub fn upstream(&self) -> &'static str {
        Box::leak(self.upstream.clone().into_boxed_str())
    }
}

/// A listener with glmgate's queue of 4096 connections (tokio's `bind` asks for 128, and a
/// burst of thousands of connections would otherwise wait for SYN retries).
pub fn listen(addr: SocketAddr, reuse_port: bool) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(reuse_port)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// Runs `serve` on one single-threaded runtime per core, each with its own listener on
/// `addr` (`SO_REUSEPORT`), so a connection and its upstream connection never change
/// thread. Tasks may be spawned with `tokio::task::spawn_local`.
pub fn per_core<F, Fut>(addr: SocketAddr, serve: F) -> io::Result<()>
where
    F: Fn(TcpListener) -> Fut + Send + Copy + 'static,
    Fut: Future<Output = io::Result<()>> + 'static,
{
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads: Vec<_> = (0..cores)
        .map(|_| {
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                tokio::task::LocalSet::new()
                    .block_on(&runtime, async move { serve(listen(addr, true)?).await })
            })
        })
        .collect();
    for t in threads {
        t.join().expect("serving thread")?;
    }
    Ok(())
}
