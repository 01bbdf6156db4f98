//! Circuit breakers: a provider that keeps failing is skipped for a while,
//! so later calls go straight to a healthy one instead of paying the
//! failing provider's timeouts again.
//!
//! A breaker opens after `threshold` provider-wide failures in a row (at
//! once for a rejected key or exhausted credit, which will not heal in
//! seconds), stays open for `cooldown`, then lets one call through (the
//! probe; [`Breakers::admit`]): success closes it, failure opens it again.
//! While the probe is out, other calls keep skipping the provider, so a
//! provider that is still down costs one call's timeouts, not one per call
//! waiting. The probe's slot is held by a [`ProbeSlot`] guard, freed when
//! the probing call ends however it ends (answered, refused by the budget,
//! cancelled); a slot never freed (a leak) lapses after [`PROBE_LEASE`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use super::{ErrorKind, ProviderId};

/// Longest a probe may hold its slot without reporting: longer than a call
/// lasts with the default timeouts (15 min a request, two retries), so a
/// slow but healthy probe is not doubled; a leaked slot lapses, and so
/// does a probe whose configured timeouts and retries add up past an hour
/// (a second probe is then let in, nothing worse).
pub const PROBE_LEASE: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, Copy, Default)]
struct Health {
    consecutive_failures: u32,
    open_until_ms: Option<i64>,
    /// The probe out after the cooldown: its id and until when it holds
    /// the slot.
    probe: Option<(u64, i64)>,
}

/// Whether a call may go to a provider now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// The breaker is closed.
    Go,
    /// Cooled down: this call is the probe (hold its slot with a
    /// [`ProbeSlot`]).
    Probe(u64),
    /// Open, or another call is probing.
    Wait,
}

/// Holds a probe's slot; dropping it frees the slot if the probe has not
/// reported (so a cancelled or budget-refused probe lets the next call try).
pub struct ProbeSlot<'a> {
    breakers: &'a Breakers,
    provider: ProviderId,
    id: u64,
}

impl Drop for ProbeSlot<'_> {
    fn drop(&mut self) {
        let (p, id) = (self.provider, self.id);
        self.breakers.with(|m| {
            if let Some(h) = m.get_mut(&p)
                && h.probe.is_some_and(|(pid, _)| pid == id)
            {
                h.probe = None;
            }
        });
    }
}

/// Per-provider breakers for one server process.
#[derive(Debug)]
pub struct Breakers {
    threshold: u32,
    cooldown: Duration,
    state: Mutex<HashMap<ProviderId, Health>>,
    next_probe: std::sync::atomic::AtomicU64,
}

impl Breakers {
    /// Breakers that open after `threshold` failures for `cooldown`.
    pub fn new(threshold: u32, cooldown: Duration) -> Breakers {
        Breakers {
            threshold: threshold.max(1),
            cooldown,
            state: Mutex::new(HashMap::new()),
            next_probe: std::sync::atomic::AtomicU64::new(1),
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
        let cooldown_ms = i64::try_from(self.cooldown.as_millis()).unwrap_or(i64::MAX / 4);
        self.with(|m| match m.get(&p) {
            Some(h) => match (h.open_until_ms, h.probe) {
                (Some(until), _) if until > now_ms => Err(until - now_ms),
                // A probe is out: how long is not known; say a cooldown.
                (Some(_), Some((_, lease))) if lease > now_ms => Err(cooldown_ms.max(1)),
                _ => Ok(()),
            },
            None => Ok(()),
        })
    }

    /// Whether a call to `p` may go now, claiming the single probe when
    /// the breaker has cooled down: the first caller after the cooldown
    /// gets [`Admission::Probe`] and every other [`Admission::Wait`] until
    /// the probe reports or its [`ProbeSlot`] is dropped.
    pub fn admit(&self, p: ProviderId, now_ms: i64) -> Admission {
        let lease_ms = i64::try_from(PROBE_LEASE.as_millis()).unwrap_or(i64::MAX / 4);
        self.with(|m| {
            let Some(h) = m.get_mut(&p) else {
                return Admission::Go;
            };
            match (h.open_until_ms, h.probe) {
                (None, _) => Admission::Go,
                (Some(until), _) if until > now_ms => Admission::Wait,
                (Some(_), Some((_, lease))) if lease > now_ms => Admission::Wait,
                (Some(_), _) => {
                    let id = self
                        .next_probe
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    h.probe = Some((id, now_ms.saturating_add(lease_ms)));
                    Admission::Probe(id)
                }
            }
        })
    }

    /// The guard holding probe `id`'s slot for `p` (see [`ProbeSlot`]).
    pub fn slot(&self, p: ProviderId, id: u64) -> ProbeSlot<'_> {
        ProbeSlot {
            breakers: self,
            provider: p,
            id,
        }
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
            // Says nothing of the provider's health; a probe that ended so
            // frees its slot when its guard is dropped.
            return false;
        }
        let cooldown_ms = i64::try_from(self.cooldown.as_millis()).unwrap_or(i64::MAX / 4);
        self.with(|m| {
            let h = m.entry(p).or_default();
            h.consecutive_failures += 1;
            // The probe's slot stays with its guard: the probing call may
            // still be retrying, and another call's failure must not free
            // it.
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
    /// breaker, success closes it, and a probe that ends without a report
    /// (cancelled, refused by the budget, a bad request) frees its slot
    /// when its guard drops — its own slot only.
    #[test]
    fn one_probe_after_the_cooldown() {
        let b = Breakers::new(1, Duration::from_secs(30));
        let p = ProviderId::Gemini;
        let probe = |a: Admission| match a {
            Admission::Probe(id) => id,
            other => panic!("expected a probe, got {other:?}"),
        };
        assert_eq!(b.admit(p, 0), Admission::Go, "closed: every call goes");
        assert!(b.failure(p, ErrorKind::Server, 0));
        assert_eq!(b.admit(p, 10_000), Admission::Wait);
        assert_eq!(b.check(p, 10_000), Err(20_000));
        // Cooled down: one probe, the rest wait for it, however long.
        assert!(b.check(p, 30_000).is_ok());
        let first = probe(b.admit(p, 30_000));
        let slot = b.slot(p, first);
        assert_eq!(b.admit(p, 30_001), Admission::Wait);
        assert_eq!(b.admit(p, 30_000 + 20 * 60_000), Admission::Wait);
        assert!(b.check(p, 30_001).is_err());
        // It fails: open again for a full cooldown.
        assert!(b.failure(p, ErrorKind::Timeout, 31_000));
        drop(slot);
        assert_eq!(b.admit(p, 60_000), Admission::Wait);
        let second = probe(b.admit(p, 61_000));
        // A stale guard of an earlier probe does not free this one's slot.
        drop(b.slot(p, first));
        assert_eq!(b.admit(p, 61_001), Admission::Wait);
        // This probe ends without a report (cancelled, or a bad request):
        // dropping its guard frees the slot for the next call.
        b.failure(p, ErrorKind::BadRequest, 61_500);
        assert_eq!(b.admit(p, 61_600), Admission::Wait);
        drop(b.slot(p, second));
        let third = probe(b.admit(p, 61_700));
        // A leaked slot lapses after the lease.
        let lease = PROBE_LEASE.as_millis() as i64;
        assert_eq!(b.admit(p, 61_700 + lease - 1), Admission::Wait);
        let _fourth = probe(b.admit(p, 61_700 + lease));
        let _ = third;
        // Success closes the breaker for everyone.
        b.success(p);
        assert_eq!(b.admit(p, 0), Admission::Go);
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
