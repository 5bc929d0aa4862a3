//! Adaptive concurrency per account and model: additive increase, multiplicative decrease.
//!
//! Until the upstream first says "too many in flight" (1302) there is no learned limit.
//! A 1302 sets the limit to a fraction of what was in flight when it came (never raising
//! it); after each clean interval in which the limit was actually reached, it grows by one;
//! past `max` it is forgotten again.
//!
//! Taking the minimum over observations, not multiplying the limit each time, means a burst
//! of refusals does not compound: as refused requests leave, later refusals see fewer in
//! flight, and the limit settles near what the upstream really allows.

use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct Aimd {
    limit: Option<f64>,
    changed: Instant,
    /// The limit was reached since the last change (so a clean interval says something).
    saturated: bool,
}

/// What changed, for persistence.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Change {
    None,
    Set(f64),
    Cleared,
}

impl Aimd {
    pub fn new(now: Instant) -> Aimd {
        Aimd {
            limit: None,
            changed: now,
            saturated: false,
        }
    }

    /// A limit learned earlier (restored from the store).
    pub fn restored(limit: f64, now: Instant) -> Aimd {
        Aimd {
            limit: Some(limit.max(1.0)),
            changed: now,
            saturated: false,
        }
    }

    pub fn limit(&self) -> Option<u32> {
        self.limit.map(|l| l.floor().max(1.0) as u32)
    }

    /// Whether one more request may start with `in_flight` already running; remembers a
    /// refusal as saturation.
    pub fn admits(&mut self, in_flight: u32) -> bool {
        match self.limit() {
            Some(l) if in_flight >= l => {
                self.saturated = true;
                false
            }
            Some(l) => {
                if in_flight + 1 >= l {
                    self.saturated = true;
                }
                true
            }
            None => true,
        }
    }

    /// The upstream refused for concurrency with `in_flight` requests running (this one
    /// included).
    pub fn decrease(&mut self, in_flight: u32, factor: f64, now: Instant) -> Change {
        let observed = (f64::from(in_flight.max(1)) * factor).floor().max(1.0);
        let next = self.limit.map_or(observed, |l| l.min(observed));
        if self.limit == Some(next) {
            return Change::None;
        }
        self.limit = Some(next);
        self.changed = now;
        self.saturated = false;
        Change::Set(next)
    }

    /// Grows the limit by one after a clean, saturated interval.
    pub fn maybe_increase(&mut self, interval: Duration, max: u32, now: Instant) -> Change {
        let Some(limit) = self.limit else {
            return Change::None;
        };
        if !self.saturated || now.duration_since(self.changed) < interval {
            return Change::None;
        }
        self.changed = now;
        self.saturated = false;
        if limit + 1.0 > f64::from(max) {
            self.limit = None;
            Change::Cleared
        } else {
            self.limit = Some(limit + 1.0);
            Change::Set(limit + 1.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decrease_below_what_was_in_flight_then_grow_back() {
        let t0 = Instant::now();
        let mut a = Aimd::new(t0);
        assert!(a.admits(100), "no limit before the first 1302");
        // A burst: 12 in flight; refusals arrive as the refused ones leave.
        assert_eq!(a.decrease(12, 0.7, t0), Change::Set(8.0));
        assert_eq!(a.decrease(11, 0.7, t0), Change::Set(7.0));
        assert_eq!(a.decrease(12, 0.7, t0), Change::None, "never raised");
        assert_eq!(a.decrease(4, 0.7, t0), Change::Set(2.0));
        assert_eq!(a.limit(), Some(2));
        assert!(a.admits(1));
        assert!(!a.admits(2));
        let iv = Duration::from_secs(30);
        assert_eq!(
            a.maybe_increase(iv, 64, t0 + Duration::from_secs(10)),
            Change::None
        );
        assert_eq!(
            a.maybe_increase(iv, 64, t0 + Duration::from_secs(31)),
            Change::Set(3.0)
        );
        // Not saturated since: no growth.
        assert_eq!(
            a.maybe_increase(iv, 64, t0 + Duration::from_secs(70)),
            Change::None
        );
        assert_eq!(
            a.decrease(3, 0.5, t0 + Duration::from_secs(80)),
            Change::Set(1.0)
        );
        assert_eq!(
            a.decrease(1, 0.5, t0 + Duration::from_secs(90)),
            Change::None,
            "never below one"
        );
        assert_eq!(a.limit(), Some(1));
    }

    #[test]
    fn past_the_maximum_the_limit_is_forgotten() {
        let t0 = Instant::now();
        let mut a = Aimd::restored(4.0, t0);
        assert!(!a.admits(4));
        assert_eq!(
            a.maybe_increase(Duration::from_secs(1), 4, t0 + Duration::from_secs(2)),
            Change::Cleared
        );
        assert_eq!(a.limit(), None);
    }
}
