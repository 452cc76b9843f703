//! Sign-in guessing, slowed down without handing anyone a weapon.
//!
//! A guess reserves its place in the counters *before* its password is hashed,
//! so N guesses sent at once count N. Failures are counted per user name and
//! client address (an outsider can lock a name out only from their own
//! address) and per address over every name (spraying names from one address
//! slows down too). Past the free failures each further one doubles the wait,
//! up to [`MAX_BACKOFF`]. Counters expire, and at most [`MAX_TRACKED`] are kept
//! whatever names and addresses arrive.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures of one name from one address before waits begin.
pub const FREE_PER_NAME: u32 = 5;
/// Failures from one address, over every name, before waits begin.
pub const FREE_PER_ADDRESS: u32 = 50;
/// The first wait; each further failure doubles it.
pub const FIRST_BACKOFF: Duration = Duration::from_secs(30);
/// The longest wait.
pub const MAX_BACKOFF: Duration = Duration::from_secs(15 * 60);
/// Counters remembered at once (about 200 bytes each).
pub const MAX_TRACKED: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Name(String, Option<IpAddr>),
    Address(Option<IpAddr>),
}

impl Key {
    fn free(&self) -> u32 {
        match self {
            Key::Name(..) => FREE_PER_NAME,
            Key::Address(_) => FREE_PER_ADDRESS,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Count {
    failures: u32,
    last: Instant,
}

/// How long `failures` (of `free` allowed) make the next guess wait after the last.
fn backoff(failures: u32, free: u32) -> Duration {
    if failures < free {
        return Duration::ZERO;
    }
    let doublings = (failures - free).min(16);
    FIRST_BACKOFF
        .saturating_mul(1u32 << doublings)
        .min(MAX_BACKOFF)
}

/// The counters of one process.
#[derive(Default)]
pub struct Guard {
    counts: Mutex<HashMap<Key, Count>>,
}

/// A guess with its place reserved: settle it with [`Guard::succeeded`] or
/// [`Guard::not_checked`]; dropped unsettled, it stays counted as a failure.
#[derive(Debug)]
pub struct Reservation {
    name: Key,
    address: Key,
}

impl Guard {
    /// Reserves a guess for `name` from `address`, or says how long to wait.
    pub fn reserve(
        &self,
        name: &str,
        address: Option<IpAddr>,
        now: Instant,
    ) -> Result<Reservation, Duration> {
        let name = Key::Name(name.to_string(), address);
        let address = Key::Address(address);
        let Ok(mut counts) = self.counts.lock() else {
            return Err(FIRST_BACKOFF);
        };
        let wait = [&name, &address]
            .into_iter()
            .filter_map(|k| counts.get(k).map(|c| (k, c)))
            .map(|(k, c)| (c.last + backoff(c.failures, k.free())).saturating_duration_since(now))
            .max()
            .unwrap_or_default();
        if !wait.is_zero() {
            return Err(wait);
        }
        for key in [&name, &address] {
            if !counts.contains_key(key) && counts.len() >= MAX_TRACKED {
                make_room(&mut counts, now);
            }
            let c = counts.entry(key.clone()).or_insert(Count {
                failures: 0,
                last: now,
            });
            // A counter whose wait ended long ago starts over.
            if now.saturating_duration_since(c.last) > backoff(c.failures, key.free()) + MAX_BACKOFF
            {
                c.failures = 0;
            }
            c.failures += 1;
            c.last = now;
        }
        Ok(Reservation { name, address })
    }

    /// The guess was right: the name starts over from this address, and the
    /// address gets its reserved failure back.
    pub fn succeeded(&self, r: Reservation) {
        if let Ok(mut counts) = self.counts.lock() {
            counts.remove(&r.name);
            release(&mut counts, &r.address);
        }
    }

    /// The guess could not be checked (no worker was free): it does not count.
    pub fn not_checked(&self, r: Reservation) {
        if let Ok(mut counts) = self.counts.lock() {
            release(&mut counts, &r.name);
            release(&mut counts, &r.address);
        }
    }

    /// Counters held now.
    pub fn tracked(&self) -> usize {
        self.counts.lock().map(|c| c.len()).unwrap_or(0)
    }
}

fn release(counts: &mut HashMap<Key, Count>, key: &Key) {
    if let Some(c) = counts.get_mut(key) {
        c.failures = c.failures.saturating_sub(1);
        if c.failures == 0 {
            counts.remove(key);
        }
    }
}

/// Drops counters whose wait is over; if every one is still waiting, the one
/// closest to the end of its wait.
fn make_room(counts: &mut HashMap<Key, Count>, now: Instant) {
    counts.retain(|k, c| c.last + backoff(c.failures, k.free()) > now);
    if counts.len() >= MAX_TRACKED {
        if let Some(k) = counts
            .iter()
            .min_by_key(|(k, c)| c.last + backoff(c.failures, k.free()))
            .map(|(k, _)| k.clone())
        {
            counts.remove(&k);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn guesses_at_once_count_each() {
        let g = Guard::default();
        let now = Instant::now();
        // Reserved, not yet settled: as if all were being hashed at once.
        let held: Vec<_> = (0..40)
            .map(|_| g.reserve("ana", ip("10.0.0.1"), now))
            .collect();
        assert_eq!(
            held.iter().filter(|r| r.is_ok()).count(),
            FREE_PER_NAME as usize
        );
        assert_eq!(held.last().unwrap().as_ref().unwrap_err(), &FIRST_BACKOFF);
    }

    #[test]
    fn waits_double_and_are_capped() {
        let g = Guard::default();
        let mut now = Instant::now();
        for _ in 0..FREE_PER_NAME {
            g.reserve("ana", ip("10.0.0.1"), now).unwrap();
        }
        let mut expected = FIRST_BACKOFF;
        for _ in 0..8 {
            assert_eq!(g.reserve("ana", ip("10.0.0.1"), now).unwrap_err(), expected);
            now += expected;
            g.reserve("ana", ip("10.0.0.1"), now).unwrap();
            expected = (expected * 2).min(MAX_BACKOFF);
        }
        assert_eq!(expected, MAX_BACKOFF);
    }

    #[test]
    fn an_outsider_locks_a_name_only_from_their_own_address() {
        let g = Guard::default();
        let now = Instant::now();
        for _ in 0..FREE_PER_NAME {
            g.reserve("ana", ip("203.0.113.9"), now).unwrap();
        }
        assert!(g.reserve("ana", ip("203.0.113.9"), now).is_err());
        let r = g.reserve("ana", ip("10.0.0.1"), now).unwrap();
        g.succeeded(r);
    }

    #[test]
    fn spraying_names_from_one_address_slows_down() {
        let g = Guard::default();
        let now = Instant::now();
        for i in 0..FREE_PER_ADDRESS {
            g.reserve(&format!("user{i}"), ip("203.0.113.9"), now)
                .unwrap();
        }
        assert!(g.reserve("someone-new", ip("203.0.113.9"), now).is_err());
        assert!(g.reserve("someone-new", ip("10.0.0.1"), now).is_ok());
    }

    #[test]
    fn success_and_unchecked_guesses_give_their_place_back() {
        let g = Guard::default();
        let now = Instant::now();
        for _ in 0..FREE_PER_NAME - 1 {
            g.reserve("ana", ip("10.0.0.1"), now).unwrap();
        }
        let r = g.reserve("ana", ip("10.0.0.1"), now).unwrap();
        g.not_checked(r);
        let r = g.reserve("ana", ip("10.0.0.1"), now).unwrap();
        g.succeeded(r);
        assert_eq!(g.tracked(), 1, "the address keeps its earlier failures");
    }

    #[test]
    fn counters_are_bounded_whatever_arrives() {
        let g = Guard::default();
        let now = Instant::now();
        for i in 0..(MAX_TRACKED as u32 * 2) {
            let addr = IpAddr::from([10, (i >> 16) as u8, (i >> 8) as u8, i as u8]);
            let _ = g.reserve(&format!("name{i}"), Some(addr), now);
        }
        assert!(g.tracked() <= MAX_TRACKED, "{}", g.tracked());
    }

    #[test]
    fn counters_expire() {
        let g = Guard::default();
        let now = Instant::now();
        for _ in 0..FREE_PER_NAME {
            g.reserve("ana", ip("10.0.0.1"), now).unwrap();
        }
        let later = now + FIRST_BACKOFF + MAX_BACKOFF + Duration::from_secs(1);
        for _ in 0..FREE_PER_NAME {
            g.reserve("ana", ip("10.0.0.1"), later).unwrap();
        }
    }
}
