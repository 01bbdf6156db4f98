//! Circuit breakers: a provider that keeps failing is skipped for a while,
//! so later calls go straight to a healthy one instead of paying the
//! failing provider's timeouts again.
//!
//! A breaker opens after `threshold` provider-wide failures in a row (at
//! once for a rejected key or exhausted credit, which will not heal in
//! seconds), stays open for `cooldown`, then lets one call through (the
//! probe; [`Breakers::admit`]): success closes it, failure opens it again.
//! While the probe is out, other calls keep skipping the provider, so a
//! provider that is still down costs one call's timeout, not one per call
//! waiting. A probe that never reports (its call was cancelled) frees the
//! slot after another `cooldown`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use super::{ErrorKind, ProviderId};

#[derive(Debug, Clone, Copy, Default)]
struct Health {
    consecutive_failures: u32,
    open_until_ms: Option<i64>,
    /// Set while a probe call is out after the cooldown: until when it
    /// holds the slot.
    probe_until_ms: Option<i64>,
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

    /// `Ok` if `p` may be called now (closed, or cooled down with no probe
    /// out); otherwise the milliseconds until it may be tried again. Reads
    /// only: the call that goes ahead claims the probe with
    /// [`Breakers::admit`].
    pub fn check(&self, p: ProviderId, now_ms: i64) -> Result<(), i64> {
        self.with(|m| match m.get(&p) {
            Some(h) => match (h.open_until_ms, h.probe_until_ms) {
                (Some(until), _) if until > now_ms => Err(until - now_ms),
                (Some(_), Some(probe)) if probe > now_ms => Err(probe - now_ms),
                _ => Ok(()),
            },
            None => Ok(()),
        })
    }

    /// Whether a call to `p` may go now, claiming the single probe when
    /// the breaker has cooled down: the first caller after the cooldown
    /// gets `true` and every other `false` until the probe reports (or
    /// its slot lapses after a cooldown).
    pub fn admit(&self, p: ProviderId, now_ms: i64) -> bool {
        let lease_ms = i64::try_from(self.cooldown.as_millis()).unwrap_or(i64::MAX / 4);
        self.with(|m| {
            let Some(h) = m.get_mut(&p) else {
                return true;
            };
            match (h.open_until_ms, h.probe_until_ms) {
                (None, _) => true,
                (Some(until), _) if until > now_ms => false,
                (Some(_), Some(probe)) if probe > now_ms => false,
                (Some(_), _) => {
                    h.probe_until_ms = Some(now_ms.saturating_add(lease_ms.max(1)));
                    true
                }
            }
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
            // Says nothing of the provider's health: a probe that ended so
            // frees the slot for the next call.
            self.with(|m| {
                if let Some(h) = m.get_mut(&p) {
                    h.probe_until_ms = None;
                }
            });
            return false;
        }
        let cooldown_ms = i64::try_from(self.cooldown.as_millis()).unwrap_or(i64::MAX / 4);
        self.with(|m| {
            let h = m.entry(p).or_default();
            h.consecutive_failures += 1;
            h.probe_until_ms = None;
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

    /// After the cooldown exactly one call is let through; the others keep
    /// skipping the provider until it reports: failure reopens the
    /// breaker, success closes it, and a probe that never reports frees
    /// its slot after a cooldown.
    #[test]
    fn one_probe_after_the_cooldown() {
        let b = Breakers::new(1, Duration::from_secs(30));
        let p = ProviderId::Gemini;
        assert!(b.admit(p, 0), "closed: every call goes");
        assert!(b.failure(p, ErrorKind::Server, 0));
        assert!(!b.admit(p, 10_000));
        assert_eq!(b.check(p, 10_000), Err(20_000));
        // Cooled down: one probe, the rest wait for it.
        assert!(b.check(p, 30_000).is_ok());
        assert!(b.admit(p, 30_000));
        assert!(!b.admit(p, 30_001));
        assert_eq!(b.check(p, 30_001), Err(29_999));
        // It fails: open again for a full cooldown.
        assert!(b.failure(p, ErrorKind::Timeout, 31_000));
        assert!(!b.admit(p, 60_000));
        assert!(b.admit(p, 61_000));
        // This probe never reports (cancelled): the slot lapses.
        assert!(!b.admit(p, 90_000));
        assert!(b.admit(p, 91_000));
        // A bad request says nothing: the slot is freed at once.
        b.failure(p, ErrorKind::BadRequest, 91_500);
        assert!(b.admit(p, 91_600));
        // Success closes the breaker for everyone.
        b.success(p);
        assert!(b.admit(p, 91_700) && b.admit(p, 91_700));
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
