//! `Lockout`: failed-authentication bookkeeping per client address. A client with 5
//! failures within one minute is blocked for 1 minute; each further block doubles, up to 1
//! hour. A block level is forgotten a day after the last block ended.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures that trigger a block.
pub const MAX_FAILURES: usize = 5;
/// Window in which failures are counted.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// First block.
pub const FIRST_BLOCK: Duration = Duration::from_secs(60);
/// Longest block.
pub const MAX_BLOCK: Duration = Duration::from_secs(3600);
/// Quiet time after which the doubling starts over.
pub const FORGET_AFTER: Duration = Duration::from_secs(24 * 3600);
/// Above this many tracked clients, idle records are pruned.
const PRUNE_ABOVE: usize = 10_000;

#[derive(Debug, Default)]
struct Record {
    failures: VecDeque<Instant>,
    blocked_until: Option<Instant>,
    blocks: u32,
}

impl Record {
    fn idle(&self, now: Instant) -> bool {
        let recent_failure = self
            .failures
            .back()
            .is_some_and(|t| now.duration_since(*t) < FAILURE_WINDOW);
        let remembered = self
            .blocked_until
            .is_some_and(|t| now < t || now.duration_since(t) < FORGET_AFTER);
        !recent_failure && !remembered
    }
}

/// Failed-attempt bookkeeping per client address.
#[derive(Debug, Default)]
pub struct Lockout {
    clients: Mutex<HashMap<IpAddr, Record>>,
}

impl Lockout {
    fn clients(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Record>> {
        self.clients.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `Err(remaining)` while `ip` is blocked.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        match self.clients().get(&ip).and_then(|r| r.blocked_until) {
            Some(until) if now < until => Err(until - now),
            _ => Ok(()),
        }
    }

    /// Records a failure; returns the length of the block it started, if it started one.
    pub fn fail(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let mut clients = self.clients();
        if clients.len() > PRUNE_ABOVE {
            clients.retain(|_, r| !r.idle(now));
        }
        let r = clients.entry(ip).or_default();
        while r
            .failures
            .front()
            .is_some_and(|t| now.duration_since(*t) >= FAILURE_WINDOW)
        {
            r.failures.pop_front();
        }
        r.failures.push_back(now);
        if r.failures.len() < MAX_FAILURES {
            return None;
        }
        r.failures.clear();
        if r.blocked_until
            .is_some_and(|t| now.saturating_duration_since(t) >= FORGET_AFTER)
        {
            r.blocks = 0;
        }
        r.blocks = r.blocks.saturating_add(1);
        let block = FIRST_BLOCK
            .saturating_mul(1u32 << (r.blocks - 1).min(16))
            .min(MAX_BLOCK);
        r.blocked_until = Some(now + block);
        Some(block)
    }

    /// A correct key clears the failure count (an earlier block level is kept for a day).
    pub fn succeed(&self, ip: IpAddr) {
        if let Some(r) = self.clients().get_mut(&ip) {
            r.failures.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const IP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));

    fn fail_times(l: &Lockout, n: usize, at: Instant) -> Option<Duration> {
        (0..n).map(|_| l.fail(IP, at)).last().flatten()
    }

    #[test]
    fn five_failures_in_a_minute_block_for_a_minute() {
        let l = Lockout::default();
        let t0 = Instant::now();
        assert_eq!(fail_times(&l, 4, t0), None);
        assert!(l.check(IP, t0).is_ok());
        assert_eq!(l.fail(IP, t0), Some(FIRST_BLOCK));
        assert!(l.check(IP, t0 + Duration::from_secs(59)).is_err());
        assert!(l.check(IP, t0 + Duration::from_secs(60)).is_ok());
        // Another address is not affected.
        assert!(l.check(IpAddr::V4(Ipv4Addr::LOCALHOST), t0).is_ok());
    }

    #[test]
    fn failures_older_than_the_window_do_not_count() {
        let l = Lockout::default();
        let t0 = Instant::now();
        fail_times(&l, 4, t0);
        assert_eq!(l.fail(IP, t0 + Duration::from_secs(61)), None);
    }

    #[test]
    fn blocks_double_up_to_an_hour() {
        let l = Lockout::default();
        let mut t = Instant::now();
        let mut blocks = vec![];
        for _ in 0..8 {
            blocks.push(fail_times(&l, 5, t).expect("blocked").as_secs());
            t += Duration::from_secs(3601);
        }
        assert_eq!(blocks, vec![60, 120, 240, 480, 960, 1920, 3600, 3600]);
    }

    #[test]
    fn success_clears_the_failure_count() {
        let l = Lockout::default();
        let t0 = Instant::now();
        fail_times(&l, 4, t0);
        l.succeed(IP);
        assert_eq!(fail_times(&l, 4, t0), None);
    }

    #[test]
    fn block_level_is_forgotten_after_a_quiet_day() {
        let l = Lockout::default();
        let t0 = Instant::now();
        fail_times(&l, 5, t0);
        let later = t0 + FIRST_BLOCK + FORGET_AFTER;
        assert_eq!(fail_times(&l, 5, later), Some(FIRST_BLOCK));
    }
}
