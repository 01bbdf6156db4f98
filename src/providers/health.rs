//! Circuit breakers: a provider that keeps failing is skipped for a while,
//! so later calls go straight to a healthy one instead of paying the
//! failing provider's timeouts again.
//!
//! A breaker opens after `threshold` provider-wide failures in a row (at
//! once for a rejected key or exhausted credit, which will not heal in
//! seconds), stays open for `cooldown`, then lets one call through: success
//! closes it, failure opens it again.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use super::{ErrorKind, ProviderId};

#[derive(Debug, Clone, Copy, Default)]
struct Health {
    consecutive_failures: u32,
    open_until_ms: Option<i64>,
}

/// Per-provider breakers for one server process.
#[derive(Debug)]
pub struct Breakers {
    threshold: u32,
    cooldown: Duration,
    state: Mutex<HashMap<ProviderId, Health>>,
}

impl Breakers {
    /// Breakers that open after `threshold` failures for `cooldown`.
    pub fn new(threshold: u32, cooldown: Duration) -> Breakers {
        Breakers {
            threshold: threshold.max(1),
            cooldown,
            state: Mutex::new(HashMap::new()),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut HashMap<ProviderId, Health>) -> T) -> T {
        let mut g = self.state.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut g)
    }

    /// `Ok` if `p` may be called now; otherwise the milliseconds until it
    /// may be tried again.
    pub fn check(&self, p: ProviderId, now_ms: i64) -> Result<(), i64> {
        self.with(|m| match m.get(&p).and_then(|h| h.open_until_ms) {
            Some(until) if until > now_ms => Err(until - now_ms),
            _ => Ok(()),
        })
    }

    /// A call to `p` succeeded: close its breaker.
    pub fn success(&self, p: ProviderId) {
        self.with(|m| {
            m.remove(&p);
        });
    }

    /// A call to `p` failed with `kind`. Failures that say nothing about the
    /// provider's health (a bad request, a prompt too long) do not count.
    /// Returns true when this failure opened the breaker.
    pub fn failure(&self, p: ProviderId, kind: ErrorKind, now_ms: i64) -> bool {
        if matches!(
            kind,
            ErrorKind::BadRequest
                | ErrorKind::ContextTooLong
                | ErrorKind::ModelUnavailable
                | ErrorKind::EmptyAnswer
        ) {
            return false;
        }
        let cooldown_ms = i64::try_from(self.cooldown.as_millis()).unwrap_or(i64::MAX / 4);
        self.with(|m| {
            let h = m.entry(p).or_default();
            h.consecutive_failures += 1;
            let hard = matches!(kind, ErrorKind::Auth | ErrorKind::Billing);
            if hard || h.consecutive_failures >= self.threshold {
                let was_open = h.open_until_ms.is_some_and(|u| u > now_ms);
                h.open_until_ms = Some(now_ms.saturating_add(cooldown_ms));
                !was_open
            } else {
                false
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_and_recovers() {
        let b = Breakers::new(3, Duration::from_secs(30));
        let p = ProviderId::Deepseek;
        assert!(!b.failure(p, ErrorKind::Server, 0));
        assert!(!b.failure(p, ErrorKind::Timeout, 0));
        assert!(b.check(p, 0).is_ok());
        assert!(b.failure(p, ErrorKind::Overloaded, 1000));
        assert_eq!(b.check(p, 2000), Err(29_000));
        assert!(b.check(p, 31_000).is_ok());
        b.success(p);
        assert!(b.check(p, 31_000).is_ok());
    }

    #[test]
    fn bad_requests_do_not_count_and_bad_keys_open_at_once() {
        let b = Breakers::new(3, Duration::from_secs(10));
        for _ in 0..10 {
            b.failure(ProviderId::Anthropic, ErrorKind::BadRequest, 0);
        }
        assert!(b.check(ProviderId::Anthropic, 0).is_ok());
        assert!(b.failure(ProviderId::Anthropic, ErrorKind::Auth, 0));
        assert!(b.check(ProviderId::Anthropic, 5).is_err());
    }
}
