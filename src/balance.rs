//! Spreads client connections evenly over the serving threads.
//!
//! Every serving thread accepts from the same socket, and the kernel gives a new connection
//! to whichever thread it wakes first. In a burst one thread can take most of them: at 64
//! connections the benchmark saw splits of 13/51 and 69/12 in CPU, with the busy thread the
//! bottleneck and 10% of the machine idle. So the thread that accepts a connection hands it
//! to the thread with the fewest open connections, unless that is itself. A hand-off costs
//! one cross-thread wake per connection, not per request.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;

/// An accepted connection on its way to the thread that will serve it.
pub type Handoff = (std::net::TcpStream, Seat);

/// Open connections per serving thread, and a way to hand each thread a connection.
pub struct Balance {
    open: Vec<AtomicUsize>,
    inboxes: Vec<mpsc::UnboundedSender<Handoff>>,
}

/// One open connection counted against a serving thread, until dropped.
pub struct Seat {
    balance: Arc<Balance>,
    worker: usize,
}

impl Drop for Seat {
    fn drop(&mut self) {
        self.balance.open[self.worker].fetch_sub(1, Ordering::Relaxed);
    }
}

/// Where a connection accepted by the thread `here` goes.
pub enum Placement {
    /// Served by the thread that accepted it.
    Here(tokio::net::TcpStream, Seat),
    /// Handed to another thread.
    Away,
}

impl Balance {
    /// A balance for `workers` threads, and each thread's inbox of handed-off connections.
    pub fn new(workers: usize) -> (Arc<Balance>, Vec<mpsc::UnboundedReceiver<Handoff>>) {
        let (inboxes, receivers) = (0..workers).map(|_| mpsc::unbounded_channel()).unzip();
        let balance = Balance {
            open: (0..workers).map(|_| AtomicUsize::new(0)).collect(),
            inboxes,
        };
        (Arc::new(balance), receivers)
    }

    /// Places a connection that the thread `here` accepted: on the thread with the fewest
    /// open connections, preferring `here` on a tie. A thread that has stopped is skipped.
    pub fn place(self: &Arc<Self>, here: usize, tcp: tokio::net::TcpStream) -> Placement {
        let there = self.least_loaded(here);
        if there == here {
            return Placement::Here(tcp, self.seat(here));
        }
        // The stream leaves this thread's event loop; the other thread registers it anew.
        let std = match tcp.into_std() {
            Ok(std) => std,
            Err(e) => {
                tracing::debug!(error = %e, "cannot hand a connection over");
                return Placement::Away;
            }
        };
        let Err(mpsc::error::SendError((std, _seat))) =
            self.inboxes[there].send((std, self.seat(there)))
        else {
            return Placement::Away;
        };
        // That thread stopped since the check: the connection is served here.
        match tokio::net::TcpStream::from_std(std) {
            Ok(tcp) => Placement::Here(tcp, self.seat(here)),
            Err(e) => {
                tracing::debug!(error = %e, "cannot take back a connection");
                Placement::Away
            }
        }
    }

    /// Counts one more connection on `worker`.
    fn seat(self: &Arc<Self>, worker: usize) -> Seat {
        self.open[worker].fetch_add(1, Ordering::Relaxed);
        Seat {
            balance: self.clone(),
            worker,
        }
    }

    fn least_loaded(&self, here: usize) -> usize {
        let mut best = (self.open[here].load(Ordering::Relaxed), here);
        for (i, open) in self.open.iter().enumerate() {
            let n = open.load(Ordering::Relaxed);
            if n < best.0 && !self.inboxes[i].is_closed() {
                best = (n, i);
            }
        }
        best.1
    }

    /// Open connections per serving thread.
    #[cfg(test)]
    fn open(&self) -> Vec<usize> {
        self.open
            .iter()
            .map(|o| o.load(Ordering::Relaxed))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn pair(listener: &tokio::net::TcpListener) -> tokio::net::TcpStream {
        let addr = listener.local_addr().expect("address");
        let (_client, accepted) = tokio::join!(tokio::net::TcpStream::connect(addr), async {
            listener.accept().await.expect("accept").0
        });
        // The client end is dropped: only the accepted end is placed.
        accepted
    }

    /// A listener to make connections on, and a balance of `workers` threads.
    async fn setup(
        workers: usize,
    ) -> (
        tokio::net::TcpListener,
        Arc<Balance>,
        Vec<mpsc::UnboundedReceiver<Handoff>>,
    ) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let (balance, inboxes) = Balance::new(workers);
        (listener, balance, inboxes)
    }

    /// Places `n` connections, all accepted by thread 0 (as in a burst the kernel gave to
    /// one thread); returns the seats of those kept there.
    async fn place_on_0(
        balance: &Arc<Balance>,
        listener: &tokio::net::TcpListener,
        n: usize,
    ) -> Vec<Seat> {
        let mut here = Vec::new();
        for _ in 0..n {
            if let Placement::Here(_, seat) = balance.place(0, pair(listener).await) {
                here.push(seat);
            }
        }
        here
    }

    #[tokio::test]
    async fn connections_go_to_the_thread_with_fewest_and_seats_free_them() {
        let (listener, balance, mut inboxes) = setup(3).await;
        let mut here = place_on_0(&balance, &listener, 6).await;
        assert_eq!(balance.open(), vec![2, 2, 2]);
        assert_eq!(here.len(), 2);
        let mut away: Vec<Handoff> = Vec::new();
        for inbox in &mut inboxes[1..] {
            while let Ok(h) = inbox.try_recv() {
                away.push(h);
            }
        }
        assert_eq!(away.len(), 4);
        assert!(away.iter().all(|(_, s)| s.worker != 0));
        // A tie keeps the connection where it was accepted.
        drop(here.pop());
        assert_eq!(balance.open(), vec![1, 2, 2]);
        let kept = balance.place(0, pair(&listener).await);
        assert!(matches!(kept, Placement::Here(..)));
        assert_eq!(balance.open(), vec![2, 2, 2]);
        drop(away);
        assert_eq!(balance.open(), vec![2, 0, 0]);
    }

    #[tokio::test]
    async fn a_stopped_thread_gets_no_connections() {
        let (listener, balance, mut inboxes) = setup(2).await;
        inboxes.pop();
        let seats = place_on_0(&balance, &listener, 3).await;
        assert_eq!(seats.len(), 3, "none handed to the stopped thread");
        assert_eq!(balance.open(), vec![3, 0]);
    }
}
