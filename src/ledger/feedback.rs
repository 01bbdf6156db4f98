//! Feedback on answers and the routing history `calibrate` learns from.
//!
//! Kept apart from the call write path: feedback is written rarely (once per
//! rating a person gives) and read in bulk only by `calibrate`.

use rusqlite::{OptionalExtension, params};

use super::{Ledger, LedgerError, to_usd};

/// The answered call a rating refers to (its last successful attempt, or
/// the last attempt if none succeeded).
#[derive(Debug, Clone, PartialEq)]
pub struct FeedbackCall {
    /// Model that answered.
    pub model: String,
    /// Tier the model was chosen from.
    pub tier: Option<String>,
    /// Complexity score of the prompt.
    pub score: Option<f64>,
    /// Whose call it was.
    pub user_id: String,
    /// Whether some attempt answered (a call whose every attempt failed has
    /// nothing to rate, and calibration reads answered calls only).
    pub answered: bool,
}

/// One answered call with what the user said or did about it: the input of
/// threshold calibration.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HistoryCall {
    /// Groups the attempts of the call.
    pub request_id: String,
    /// Complexity score of the prompt.
    pub score: f64,
    /// Tier the answering model was chosen from.
    pub tier: Option<String>,
    /// Model that answered.
    pub model: String,
    /// What the caller forced: `model`, `provider`, `tier` or nothing.
    pub forced: Option<String>,
    /// The preference that routed it (`cost` or `quality`); `None` for
    /// calls recorded before the ledger kept it.
    pub prefer: Option<String>,
    /// Uncached input tokens.
    pub input_tokens: u64,
    /// Cache-read input tokens.
    pub cache_read_tokens: u64,
    /// Cache-write input tokens.
    pub cache_write_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// What the answer cost, USD.
    pub cost_usd: f64,
    /// The newest rating (1-5), if any.
    pub rating: Option<u8>,
}

/// How far below its newest row the rows of the same request are looked
/// for: a request's attempts (and its speech row) are written as they end,
/// interleaved only with the other calls in flight, so they sit close
/// together; the newest row itself is always in range.
const MAX_ATTEMPT_SPAN: i64 = 1_000;

/// How many of the most recent ledger rows a rating's request id is looked
/// up in (a few weeks of heavy use); older calls cannot be rated.
pub const FEEDBACK_WINDOW: i64 = 200_000;

impl Ledger {
    /// The call `request_id` refers to, or `None` when the ledger has no such
    /// request (a typo, or a call pruned by retention).
    pub fn feedback_call(&self, request_id: &str) -> Result<Option<FeedbackCall>, LedgerError> {
        self.feedback_call_within(request_id, FEEDBACK_WINDOW)
    }

    /// [`Ledger::feedback_call`] among the last `window` rows.
    fn feedback_call_within(
        &self,
        request_id: &str,
        window: i64,
    ) -> Result<Option<FeedbackCall>, LedgerError> {
        let conn = self.lock();
        // No index on request_id (it would cost a page write on every call).
        // Ratings come soon after the call, so walk the rowid backwards to the
        // newest attempt of the request (a short scan for a recent call), then
        // read that request's attempts, which sit just below it. The walk
        // stops after the last FEEDBACK_WINDOW rows: an unknown id (a typo,
        // or a caller probing) must not scan a million-row ledger while
        // holding it, delaying every call.
        let newest: Option<i64> = conn
            .query_row(
                "SELECT id FROM calls WHERE request_id = ?1
                   AND id > (SELECT coalesce(max(id), 0) FROM calls) - ?2
                 ORDER BY id DESC LIMIT 1",
                params![request_id, window],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        let Some(newest) = newest else {
            return Ok(None);
        };
        conn.query_row(
            "SELECT model, tier, score, user_id, outcome = 'ok' FROM calls
             WHERE id <= ?2 AND id > ?2 - ?3 AND request_id = ?1 AND provider != 'cartesia'
             ORDER BY outcome = 'ok' DESC, attempt DESC LIMIT 1",
            params![request_id, newest, MAX_ATTEMPT_SPAN],
            |r| {
                Ok(FeedbackCall {
                    model: r.get(0)?,
                    tier: r.get(1)?,
                    score: r.get(2)?,
                    user_id: r.get(3)?,
                    answered: r.get(4)?,
                })
            },
        )
        .optional()
        .map_err(|e| self.err(e))
    }

    /// Stores a rating (1-5) of `request_id`. The caller checks that the
    /// request exists ([`Ledger::feedback_call`]) and the rating's range (the
    /// table's CHECK constraint also refuses anything outside 1-5).
    pub fn record_feedback(
        &self,
        request_id: &str,
        rating: u8,
        source: &str,
        note: Option<&str>,
        now_ms: i64,
    ) -> Result<(), LedgerError> {
        let conn = self.lock();
        conn.execute(
            "INSERT INTO feedback (request_id, ts_ms, rating, source, note)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![request_id, now_ms, rating, source, note],
        )
        .map(|_| ())
        .map_err(|e| self.err(e))
    }

    /// Every answered call since `since_ms` (optionally of one user) that
    /// has a score, with its newest rating: one row per request, the
    /// successful attempt's model, tier, usage and cost.
    pub fn routing_history(
        &self,
        user_id: Option<&str>,
        since_ms: i64,
    ) -> Result<Vec<HistoryCall>, LedgerError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare(
                "SELECT c.request_id, c.score, c.tier, c.model, c.forced, c.input_tokens,
                        c.cache_read_tokens, c.cache_write_tokens, c.output_tokens, c.cost_nanos,
                        (SELECT f.rating FROM feedback f WHERE f.request_id = c.request_id
                         ORDER BY f.ts_ms DESC, f.id DESC LIMIT 1), c.prefer
                 FROM calls c
                 WHERE c.outcome = 'ok' AND c.score IS NOT NULL AND c.ts_ms >= ?1
                   AND (?2 IS NULL OR c.user_id = ?2)
                 ORDER BY c.ts_ms, c.id",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![since_ms, user_id], |r| {
                let n = |i: usize| r.get::<_, i64>(i).map(|v| v.max(0) as u64);
                Ok(HistoryCall {
                    request_id: r.get(0)?,
                    score: r.get(1)?,
                    tier: r.get(2)?,
                    model: r.get(3)?,
                    forced: r.get(4)?,
                    input_tokens: n(5)?,
                    cache_read_tokens: n(6)?,
                    cache_write_tokens: n(7)?,
                    output_tokens: n(8)?,
                    cost_usd: to_usd(r.get(9)?),
                    rating: r
                        .get::<_, Option<i64>>(10)?
                        .and_then(|v| u8::try_from(v).ok()),
                    prefer: r.get(11)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::super::CallRecord;
    use super::*;

    fn row(request_id: &str, attempt: u32, model: &str, ok: bool) -> CallRecord {
        CallRecord {
            ts_ms: 1_000,
            user_id: "u".into(),
            request_id: request_id.into(),
            attempt,
            provider: "deepseek".into(),
            model: model.into(),
            tier: Some("cheap".into()),
            score: Some(0.25),
            ok,
            cost_source: "catalog".into(),
            ..CallRecord::default()
        }
    }

    #[test]
    fn a_rating_finds_the_answering_attempt_among_interleaved_calls() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(&dir.path().join("ledger.sqlite")).unwrap();
        ledger
            .insert_call(&row("r-1", 1, "deepseek/fails", false))
            .unwrap();
        for i in 0..50 {
            ledger
                .insert_call(&row(&format!("other-{i}"), 1, "x/y", true))
                .unwrap();
        }
        ledger
            .insert_call(&row("r-1", 2, "deepseek/answers", true))
            .unwrap();
        // A later speech row of the same request is not the answer.
        ledger
            .insert_call(&row("r-1", 3, "cartesia/voice", false))
            .unwrap();
        for i in 0..10 {
            ledger
                .insert_call(&row(&format!("later-{i}"), 1, "x/y", true))
                .unwrap();
        }
        let call = ledger.feedback_call("r-1").unwrap().unwrap();
        assert_eq!(call.model, "deepseek/answers");
        assert_eq!(call.user_id, "u");
        assert!(call.answered);
        assert_eq!(ledger.feedback_call("no-such-request").unwrap(), None);
        // The lookup reads only the most recent rows: the last row of "r-1"
        // (its speech) has 10 rows after it, so a window of 11 finds it and
        // one of 10 does not.
        assert!(ledger.feedback_call_within("r-1", 11).unwrap().is_some());
        assert_eq!(ledger.feedback_call_within("r-1", 10).unwrap(), None);
        // Every attempt failed: found, but nothing answered.
        ledger.insert_call(&row("r-2", 1, "x/y", false)).unwrap();
        ledger.insert_call(&row("r-2", 2, "x/z", false)).unwrap();
        assert!(!ledger.feedback_call("r-2").unwrap().unwrap().answered);
    }

    /// The history gives each answered call its preference and newest
    /// rating; failed attempts are not history.
    #[test]
    fn history_carries_each_calls_preference_and_newest_rating() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(&dir.path().join("ledger.sqlite")).unwrap();
        let with = |id: &str, prefer: Option<&str>, ok: bool| CallRecord {
            prefer: prefer.map(Into::into),
            ..row(id, 1, "deepseek/m", ok)
        };
        ledger
            .insert_call(&with("q", Some("quality"), true))
            .unwrap();
        ledger.insert_call(&with("c", Some("cost"), true)).unwrap();
        ledger.insert_call(&with("old", None, true)).unwrap();
        ledger
            .insert_call(&with("failed", Some("quality"), false))
            .unwrap();
        ledger.record_feedback("q", 5, "cli", None, 2_000).unwrap();
        ledger.record_feedback("q", 1, "cli", None, 3_000).unwrap();
        let h = ledger.routing_history(None, 0).unwrap();
        let got: Vec<(&str, Option<&str>, Option<u8>)> = h
            .iter()
            .map(|c| (c.request_id.as_str(), c.prefer.as_deref(), c.rating))
            .collect();
        assert_eq!(
            got,
            [
                ("q", Some("quality"), Some(1)),
                ("c", Some("cost"), None),
                ("old", None, None)
            ]
        );
    }
}
