//! `raw-proxy`: a reverse proxy with no logic and no HTTP library, as a reference row in
//! glmgate's benchmarks (`bench/run --with-raw`). It answers one question for the team:
//! how much of a request's cost is hyper's, that is, what glmgate could gain by framing
//! HTTP/1.1 itself instead of through hyper (issue 3). It is not part of the product and
//! speaks only what the benchmark sends: requests with a `Content-Length` body (or none),
//! answers framed by `Content-Length` or chunked; anything else closes the connection, as
//! does an idle upstream connection found closed (no retry).
//!
//! Layout as `hyper-proxy --per-core` and glmgate: one single-threaded tokio runtime per
//! core, each with its own listener (`SO_REUSEPORT`) and its own pool of idle upstream
//! connections. Heads are parsed with `httparse`; the request head is written anew (the
//! upstream's `Host`, hop-by-hop headers dropped), the answer's head and body are passed on
//! byte for byte as they arrive, their framing only followed to know where the answer ends.
//! Buffers start at 4 KB and grow for a head that does not fit, or to read a large request
//! body in pieces of up to 64 KB.

use std::cell::RefCell;
use std::io;
use std::rc::Rc;

use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[path = "../reference.rs"]
mod reference;

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    addresses: reference::Addresses,
}

const BUF: usize = 4096;
const MAX_HEAD: usize = 64 * 1024;
/// The most bytes of a request body read at once (the buffer is kept for the connection).
const MAX_READ: usize = 64 * 1024;
const MAX_HEADERS: usize = 32;

fn main() -> io::Result<()> {
    let args = Args::parse();
    let upstream = args.addresses.upstream();
    reference::per_core(args.addresses.listen, move |listener| {
        serve(listener, upstream)
    })
}

/// Idle upstream connections of one serving thread.
type Idle = Rc<RefCell<Vec<TcpStream>>>;

async fn serve(listener: tokio::net::TcpListener, upstream: &'static str) -> io::Result<()> {
    let idle: Idle = Rc::default();
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let idle = idle.clone();
        tokio::task::spawn_local(async move {
            let _ = connection(stream, upstream, idle).await;
        });
    }
}

fn invalid(what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// Reads into `buf` until it holds a whole head; returns the head's length (its blank line
/// included). `Ok(None)` when the peer closed before sending anything.
async fn read_head(s: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<Option<usize>> {
    loop {
        if let Some(at) = memchr::memmem::find(buf, b"\r\n\r\n") {
            return Ok(Some(at + 4));
        }
        if buf.len() >= MAX_HEAD {
            return Err(invalid("head too long"));
        }
        if read_more(s, buf, BUF).await? == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(invalid("closed mid-head"))
            };
        }
    }
}

/// Appends what one read gives to `buf`, with room for at least `room` bytes.
async fn read_more(s: &mut TcpStream, buf: &mut Vec<u8>, room: usize) -> io::Result<usize> {
    buf.reserve(room);
    s.read_buf(buf).await
}

fn is(name: &str, want: &str) -> bool {
    name.eq_ignore_ascii_case(want)
}

async fn connection(mut client: TcpStream, upstream: &'static str, idle: Idle) -> io::Result<()> {
    let mut buf: Vec<u8> = Vec::with_capacity(BUF);
    let mut out: Vec<u8> = Vec::with_capacity(BUF);
    loop {
        // The request head, written anew for the upstream into `out`.
        let Some(head_len) = read_head(&mut client, &mut buf).await? else {
            return Ok(());
        };
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        req.parse(&buf[..head_len])
            .map_err(|_| invalid("bad head"))?;
        let mut body_len = 0usize;
        out.clear();
        out.extend_from_slice(req.method.unwrap_or("GET").as_bytes());
        out.push(b' ');
        out.extend_from_slice(req.path.unwrap_or("/").as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
        out.extend_from_slice(upstream.as_bytes());
        out.extend_from_slice(b"\r\n");
        for h in req.headers.iter() {
            if is(h.name, "content-length") {
                body_len = std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|v| v.trim().parse().ok())
                    .ok_or(invalid("bad content-length"))?;
            } else if is(h.name, "transfer-encoding") {
                return Err(invalid("chunked requests are not handled"));
            } else if is(h.name, "host") || is(h.name, "connection") || is(h.name, "keep-alive") {
                continue;
            }
            out.extend_from_slice(h.name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(h.value);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        buf.drain(..head_len);

        // Body bytes already read go out with the head; the rest is relayed as it comes.
        let pooled = idle.borrow_mut().pop();
        let mut up = match pooled {
            Some(up) => up,
            None => {
                let up = TcpStream::connect(upstream).await?;
                let _ = up.set_nodelay(true);
                up
            }
        };
        let first = body_len.min(buf.len());
        out.extend_from_slice(&buf[..first]);
        buf.drain(..first);
        up.write_all(&out).await?;
        let mut left = body_len - first;
        while left > 0 {
            if read_more(&mut client, &mut buf, left.min(MAX_READ)).await? == 0 {
                return Err(invalid("client closed mid-body"));
            }
            let n = left.min(buf.len());
            up.write_all(&buf[..n]).await?;
            buf.drain(..n);
            left -= n;
        }

        // The answer: its head as it came, then its body as it arrives.
        out.clear();
        let Some(rhead_len) = read_head(&mut up, &mut out).await? else {
            return Err(invalid("upstream closed"));
        };
        let mut rheaders = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut rheaders);
        resp.parse(&out[..rhead_len])
            .map_err(|_| invalid("bad head"))?;
        let mut framing = None;
        let mut reusable = true;
        for h in resp.headers.iter() {
            if is(h.name, "content-length") {
                let n = std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|v| v.trim().parse().ok())
                    .ok_or(invalid("bad content-length"))?;
                framing = Some(Framing::Length(n));
            } else if is(h.name, "transfer-encoding") {
                framing = Some(Framing::Chunked(Chunked::default()));
            } else if is(h.name, "connection") && h.value.eq_ignore_ascii_case(b"close") {
                reusable = false;
            }
        }
        if resp.code.is_some_and(|c| c == 204 || c == 304 || c < 200) {
            framing = Some(Framing::Length(0));
        }
        let Some(mut framing) = framing else {
            return Err(invalid("answer without length"));
        };
        // Relay what is buffered, then read and relay until the framing says the end.
        let mut done = framing.advance(&out[rhead_len..]);
        client.write_all(&out).await?;
        while !done {
            out.clear();
            if read_more(&mut up, &mut out, BUF).await? == 0 {
                return Err(invalid("upstream closed mid-body"));
            }
            done = framing.advance(&out);
            client.write_all(&out).await?;
        }
        if reusable {
            idle.borrow_mut().push(up);
        }
    }
}

/// How an answer's end is known.
enum Framing {
    Length(usize),
    Chunked(Chunked),
}

impl Framing {
    /// Takes the next bytes of the body; true once the body has ended (bytes past its end
    /// are not expected: the upstream does not pipeline).
    fn advance(&mut self, data: &[u8]) -> bool {
        match self {
            Framing::Length(left) => {
                *left = left.saturating_sub(data.len());
                *left == 0
            }
            Framing::Chunked(c) => c.advance(data),
        }
    }
}

/// Where a chunked body's reader stands.
#[derive(Default)]
struct Chunked {
    state: State,
    size: usize,
}

#[derive(Default, Clone, Copy, PartialEq)]
enum State {
    /// Reading a chunk's hexadecimal size.
    #[default]
    Size,
    /// After the size: an extension, up to the line's end.
    Extension,
    /// Inside a chunk's data, `size` bytes left.
    Data,
    /// The CRLF after a chunk's data.
    DataEnd,
    /// After the last (empty) chunk: trailer lines, `size` counts the current line's bytes.
    Trailer,
    Done,
}

impl Chunked {
    fn advance(&mut self, mut data: &[u8]) -> bool {
        while let Some((&b, rest)) = data.split_first() {
            match self.state {
                State::Size => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        let d = (b as char).to_digit(16).unwrap_or(0) as usize;
                        self.size = self.size.saturating_mul(16).saturating_add(d);
                    }
                    b'\n' => self.end_size(),
                    _ => self.state = State::Extension,
                },
                State::Extension => {
                    if b == b'\n' {
                        self.end_size();
                    }
                }
                State::Data => {
                    let n = self.size.min(data.len());
                    self.size -= n;
                    if self.size == 0 {
                        self.state = State::DataEnd;
                    }
                    data = &data[n..];
                    continue;
                }
                State::DataEnd => {
                    if b == b'\n' {
                        self.state = State::Size;
                    }
                }
                State::Trailer => match b {
                    b'\n' if self.size == 0 => self.state = State::Done,
                    b'\n' => self.size = 0,
                    b'\r' => {}
                    _ => self.size += 1,
                },
                State::Done => return true,
            }
            data = rest;
        }
        self.state == State::Done
    }

    fn end_size(&mut self) {
        self.state = if self.size == 0 {
            State::Trailer
        } else {
            State::Data
        };
    }
}

#[cfg(test)]
mod tests {
    use super::Chunked;

    #[test]
    fn chunked_end_is_found_however_the_body_is_split() {
        let body = b"5\r\nhello\r\n1a;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-t: 1\r\n\r\n";
        for split in 0..body.len() {
            let mut c = Chunked::default();
            let first = c.advance(&body[..split]);
            assert!(!first, "ended early at {split}");
            assert!(c.advance(&body[split..]), "no end with split at {split}");
        }
        let mut c = Chunked::default();
        assert!(!c.advance(&body[..body.len() - 1]));
    }
}
