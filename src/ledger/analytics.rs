//! Usage analytics over the ledger: every breakdown the `usage` report and
//! the dashboard show, computed by aggregate SQL.
//!
//! Why a rollup: a 1M-row ledger scanned once per breakdown (totals, model,
//! provider, day, week, …) costs a full table scan each, and even one
//! `GROUP BY` over a million rows takes seconds. So the ledger keeps
//! `calls_daily` (migration 0003): the calls folded per day × user ×
//! provider × model × tier × band, maintained by triggers in the same
//! transaction as each write. A period's whole days come from it; only the
//! partial days at its edges are aggregated from `calls`. The result goes
//! into a small temporary table, and each breakdown is a tiny `GROUP BY`
//! over that. All of it runs in one read transaction, so the numbers agree
//! with each other even while calls are being recorded.

use rusqlite::{Connection, OptionalExtension, params};
use schemars::JsonSchema;
use serde::Serialize;

use super::{
    Group, Ledger, LedgerError, Totals, lock_ignoring_poison, read_totals, read_totals_at, to_usd,
};

const DAY_MS: i64 = 86_400_000;

/// A breakdown of the analytics snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Breakdown {
    /// Canonical model id.
    Model,
    /// Provider name.
    Provider,
    /// Routing tier (`forced` when the caller chose the model).
    Tier,
    /// User id.
    User,
    /// UTC day, `YYYY-MM-DD`.
    Day,
    /// UTC week, keyed by its Monday, `YYYY-MM-DD`.
    Week,
    /// UTC month, `YYYY-MM`.
    Month,
    /// Complexity band of the score (`0.00-0.25` … `0.75-1.00`, `unscored`).
    Band,
}

impl Breakdown {
    /// The key expression over the rollup table (`day` is days since epoch).
    fn key(self) -> &'static str {
        match self {
            Breakdown::Model => "model",
            Breakdown::Provider => "provider",
            Breakdown::Tier => "tier",
            Breakdown::User => "user_id",
            Breakdown::Day => "date(day * 86400, 'unixepoch')",
            // 'weekday 0' moves to the next Sunday (or stays), -6 days is its Monday.
            Breakdown::Week => "date(day * 86400, 'unixepoch', 'weekday 0', '-6 days')",
            Breakdown::Month => "strftime('%Y-%m', day * 86400, 'unixepoch')",
            Breakdown::Band => "band",
        }
    }

    /// Time and band breakdowns read best in key order; the rest by spend.
    fn order(self) -> &'static str {
        match self {
            Breakdown::Day | Breakdown::Week | Breakdown::Month | Breakdown::Band => "1 ASC",
            _ => "4 DESC, 1 ASC",
        }
    }
}

/// The complexity bands, as stored keys; the router's default tier edges.
pub const BANDS: [&str; 4] = ["0.00-0.25", "0.25-0.50", "0.50-0.75", "0.75-1.00"];

/// SQL mapping `score` to a band key.
const BAND_SQL: &str = "CASE WHEN score IS NULL THEN 'unscored'
    WHEN score < 0.25 THEN '0.00-0.25' WHEN score < 0.5 THEN '0.25-0.50'
    WHEN score < 0.75 THEN '0.50-0.75' ELSE '0.75-1.00' END";

/// Average cost per successful call in one complexity band.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct BandStat {
    /// `0.00-0.25`, `0.25-0.50`, `0.50-0.75`, `0.75-1.00` or `unscored`.
    pub band: String,
    /// Successful calls in the band.
    pub calls: u64,
    /// Spend in the band, USD.
    pub cost_usd: f64,
    /// Spend per successful call, USD (0 without calls). Charged failed
    /// attempts are in the spend: what an answer in this band really cost.
    pub avg_cost_usd: f64,
    /// What always-premium would have cost, USD.
    pub baseline_cost_usd: f64,
}

/// Spend of one provider on one day: a segment of the stacked cost chart.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct DayProvider {
    /// UTC day, `YYYY-MM-DD`.
    pub day: String,
    /// Provider name.
    pub provider: String,
    /// Successful calls.
    pub calls: u64,
    /// Spend, USD.
    pub cost_usd: f64,
}

/// One recorded attempt with the details a table shows.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct CallRow {
    /// Ledger row id.
    pub id: i64,
    /// Unix time, ms.
    pub ts_ms: i64,
    /// User id.
    pub user_id: String,
    /// Provider name.
    pub provider: String,
    /// Model id.
    pub model: String,
    /// Tier (None when forced).
    pub tier: Option<String>,
    /// Complexity score.
    pub score: Option<f64>,
    /// Input tokens (cached included).
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Cost, USD.
    pub cost_usd: f64,
    /// Always-premium cost, USD, when known.
    pub baseline_cost_usd: Option<f64>,
    /// Wall time, ms.
    pub latency_ms: u64,
    /// `ok` or `error`.
    pub outcome: String,
}

/// Token sums of the successful, priced calls (an unpriced call's cost is
/// unknown, so it has no place in a comparison), split the way prices are, so the
/// cost of the same usage on any other model is a dot product (savings
/// against a baseline the user picks).
#[derive(Debug, Clone, Default, PartialEq, Serialize, JsonSchema)]
pub struct TokenMix {
    /// Uncached input tokens.
    pub input_tokens: u64,
    /// Cache-read input tokens.
    pub cache_read_tokens: u64,
    /// Cache-write input tokens.
    pub cache_write_tokens: u64,
    /// Output tokens (reasoning included).
    pub output_tokens: u64,
    /// Reasoning tokens.
    pub reasoning_tokens: u64,
}

/// Everything the analytics views need for one period, from one consistent
/// read of the ledger.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// Totals over the period.
    pub totals: Totals,
    /// Token sums of successful, priced answers (speech and models of
    /// unknown price left out: they have no recorded baseline, so other
    /// baselines must not price them either).
    pub tokens: TokenMix,
    /// The asked-for breakdowns, in the order asked.
    pub groups: Vec<(Breakdown, Vec<Group>)>,
    /// Per complexity band (when asked).
    pub bands: Vec<BandStat>,
    /// Day × provider spend (when asked), oldest first.
    pub day_provider: Vec<DayProvider>,
    /// Most expensive successful calls, most expensive first.
    pub top_calls: Vec<CallRow>,
    /// Latest attempts, newest first.
    pub recent: Vec<CallRow>,
}

impl Snapshot {
    /// The rows of breakdown `b`, empty when not asked for.
    pub fn group(&self, b: Breakdown) -> &[Group] {
        self.groups
            .iter()
            .find(|(k, _)| *k == b)
            .map(|(_, g)| g.as_slice())
            .unwrap_or(&[])
    }
}

/// What a [`Snapshot`] should hold.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SnapshotRequest {
    /// Only this user's calls.
    pub user_id: Option<String>,
    /// Period start, unix ms (inclusive).
    pub since_ms: i64,
    /// Period end, unix ms (exclusive).
    pub until_ms: i64,
    /// Breakdowns to compute (`Band` also fills [`Snapshot::bands`]).
    pub breakdowns: Vec<Breakdown>,
    /// Fill [`Snapshot::day_provider`].
    pub day_provider: bool,
    /// How many of the most expensive calls to list (0: none).
    pub top_calls: u32,
    /// How many recent attempts to list (0: none).
    pub recent: u32,
}

const ROLLUP_SUMS: &str = "
    sum(ok) FILTER (WHERE provider != 'cartesia'), sum(failed), sum(cost_nanos),
    sum(baseline_nanos), sum(in_tokens) FILTER (WHERE provider != 'cartesia'),
    sum(out_tokens) FILTER (WHERE provider != 'cartesia'), sum(unpriced),
    sum(cost_nanos) FILTER (WHERE provider = 'cartesia')";

/// Cost-index entries the walk for the most expensive calls may visit
/// before it gives up and sorts the period instead (see [`top_calls`]).
const TOP_CALLS_WALK: i64 = 5_000;

/// The `req.top_calls` most expensive successful calls of the period.
///
/// When the period holds a good share of the ledger, walking the cost index
/// from the top finds them after ~N/share rows; when it holds little,
/// reading the period's rows and sorting is cheaper. The walk is bounded:
/// a period whose calls are all cheap (the usual result of routing well!)
/// sits at the bottom of the index, and an unbounded walk visited every
/// dearer older call first — over a second on a million rows, holding the
/// ledger. So it only visits calls at least as dear as the
/// `walk`-th dearest of the ledger ([`TOP_CALLS_WALK`]); if that yields
/// fewer than N, the period is sorted. Either way the answer is exact: N
/// calls of the period at or above that floor are its N dearest.
fn top_calls(
    conn: &Connection,
    req: &SnapshotRequest,
    user: Option<&str>,
    calls_in_period: u64,
    walk: i64,
) -> rusqlite::Result<Vec<CallRow>> {
    // Two subqueries: SQLite answers a lone min() or max() from the rowid
    // in O(1), but not both in one SELECT.
    let rows_in_ledger: i64 = conn.query_row(
        "SELECT coalesce((SELECT max(id) FROM calls) - (SELECT min(id) FROM calls) + 1, 0)",
        [],
        |r| r.get(0),
    )?;
    let args = params![req.since_ms, req.until_ms, user, req.top_calls];
    if (calls_in_period as i64).saturating_mul(20) >= rows_in_ledger {
        let floor: i64 = conn
            .prepare_cached(
                "SELECT cost_nanos FROM calls INDEXED BY calls_by_cost
                 ORDER BY cost_nanos DESC LIMIT 1 OFFSET ?1",
            )?
            .query_row([walk], |r| r.get(0))
            .optional()?
            .unwrap_or(i64::MIN);
        // Past the floor every call may cost the same (thousands of free
        // local or unpriced calls at $0): the bound is gone, so sort.
        let bounded = floor > 0 || floor == i64::MIN;
        let sql = format!(
            "SELECT {CALL_COLUMNS} FROM calls INDEXED BY calls_by_cost
             WHERE cost_nanos >= ?5 AND outcome = 'ok' AND {}
             ORDER BY cost_nanos DESC, id DESC LIMIT ?4",
            super::where_range(user)
        );
        if bounded {
            let found = conn
                .prepare_cached(&sql)?
                .query_map(
                    params![req.since_ms, req.until_ms, user, req.top_calls, floor],
                    read_call,
                )?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            if found.len() as u64 >= req.top_calls as u64 {
                return Ok(found);
            }
        }
    }
    let sql = format!(
        "SELECT {CALL_COLUMNS} FROM calls
         WHERE outcome = 'ok' AND {} ORDER BY cost_nanos DESC, id DESC LIMIT ?4",
        super::where_range(user)
    );
    conn.prepare_cached(&sql)?
        .query_map(args, read_call)?
        .collect()
}

const CALL_COLUMNS: &str = "id, ts_ms, user_id, provider, model, tier, score,
    input_tokens + cache_read_tokens + cache_write_tokens, output_tokens, cost_nanos,
    baseline_cost_nanos, latency_ms, outcome";

fn read_call(r: &rusqlite::Row<'_>) -> rusqlite::Result<CallRow> {
    let n = |i: usize| -> rusqlite::Result<u64> { Ok(r.get::<_, i64>(i)?.max(0) as u64) };
    Ok(CallRow {
        id: r.get(0)?,
        ts_ms: r.get(1)?,
        user_id: r.get(2)?,
        provider: r.get(3)?,
        model: r.get(4)?,
        tier: r.get(5)?,
        score: r.get(6)?,
        input_tokens: n(7)?,
        output_tokens: n(8)?,
        cost_usd: to_usd(r.get(9)?),
        baseline_cost_usd: r.get::<_, Option<i64>>(10)?.map(to_usd),
        latency_ms: n(11)?,
        outcome: r.get(12)?,
    })
}

impl Ledger {
    /// Computes the analytics of `req`'s period in one read transaction.
    ///
    /// On a connection of its own (read-only; WAL lets it read while calls
    /// write): on the shared one, a report over a large ledger (seconds
    /// with many users, whose daily rollup rows barely shrink it) held up
    /// every call's hold and settlement for as long. Falls back to the
    /// shared connection if the reader cannot be opened, and uses it on a
    /// ledger that is read-only anyway.
    pub fn snapshot(&self, req: &SnapshotRequest) -> Result<Snapshot, LedgerError> {
        if self.read_only.is_none() {
            let mut reader = lock_ignoring_poison(&self.reports);
            if reader.is_none() {
                match self.open_reader() {
                    Ok(c) => *reader = Some(c),
                    Err(e) => {
                        tracing::warn!(error = %e, "report reader not opened; reading on the shared connection")
                    }
                }
            }
            if let Some(conn) = reader.as_mut() {
                let tx = conn.transaction().map_err(|e| self.err(e))?;
                // Dropping the transaction rolls it back, temp table and all.
                return build_snapshot(&tx, req).map_err(|e| self.err(e));
            }
        }
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        build_snapshot(&tx, req).map_err(|e| self.err(e))
    }

    /// A read-only connection to the ledger file, for reports.
    fn open_reader(&self) -> rusqlite::Result<Connection> {
        let conn = Connection::open_with_flags(
            self.path(),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        Ok(conn)
    }
}

fn build_snapshot(conn: &Connection, req: &SnapshotRequest) -> rusqlite::Result<Snapshot> {
    // Same columns, same order as calls_daily.
    conn.execute_batch(
        "CREATE TEMP TABLE IF NOT EXISTS usage_rollup AS SELECT * FROM main.calls_daily WHERE 0;
         DELETE FROM temp.usage_rollup;",
    )?;
    let user = req.user_id.as_deref();
    // Whole days [first_full, end_full) come from calls_daily; the head
    // [since, head_end) and tail [tail_start, until) from calls.
    let (since, until) = (req.since_ms, req.until_ms.max(req.since_ms));
    // A partial day is whole as far as the data goes when the period's edge
    // lies beyond the first or last call: "the last 30 days" usually ends
    // now, after every call, so today comes from calls_daily too.
    let (first_ts, last_ts): (Option<i64>, Option<i64>) = conn.query_row(
        "SELECT (SELECT min(ts_ms) FROM calls), (SELECT max(ts_ms) FROM calls)",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let head_is_whole = first_ts.is_none_or(|t| since <= t);
    let tail_is_whole = last_ts.is_none_or(|t| until > t);
    let first_full = if head_is_whole {
        since.div_euclid(DAY_MS)
    } else {
        since.div_euclid(DAY_MS) + i64::from(since.rem_euclid(DAY_MS) != 0)
    };
    let end_full = if tail_is_whole {
        until.div_euclid(DAY_MS) + i64::from(until.rem_euclid(DAY_MS) != 0)
    } else {
        until.div_euclid(DAY_MS)
    }
    .max(first_full);
    let head_end = until.min(first_full.saturating_mul(DAY_MS));
    let tail_start = end_full.saturating_mul(DAY_MS).max(since);
    conn.prepare_cached(
        "INSERT INTO temp.usage_rollup SELECT * FROM calls_daily
         WHERE day >= ?1 AND day < ?2 AND (?3 IS NULL OR user_id = ?3)",
    )?
    .execute(params![first_full, end_full, user])?;
    let fill = format!(
        "INSERT INTO temp.usage_rollup
         SELECT ts_ms / 86400000, user_id, provider, model, coalesce(tier, 'forced'), {BAND_SQL},
            count(*) FILTER (WHERE outcome = 'ok'),
            count(*) FILTER (WHERE outcome = 'error'),
            coalesce(sum(cost_nanos), 0),
            coalesce(sum(baseline_cost_nanos) FILTER (WHERE outcome = 'ok'), 0),
            coalesce(sum(input_tokens + cache_read_tokens + cache_write_tokens), 0),
            coalesce(sum(output_tokens), 0),
            count(*) FILTER (WHERE outcome = 'ok' AND cost_source = 'unpriced'),
            coalesce(sum(input_tokens) FILTER (WHERE outcome = 'ok' AND cost_source <> 'unpriced'), 0),
            coalesce(sum(cache_read_tokens) FILTER (WHERE outcome = 'ok' AND cost_source <> 'unpriced'), 0),
            coalesce(sum(cache_write_tokens) FILTER (WHERE outcome = 'ok' AND cost_source <> 'unpriced'), 0),
            coalesce(sum(output_tokens) FILTER (WHERE outcome = 'ok' AND cost_source <> 'unpriced'), 0),
            coalesce(sum(reasoning_tokens) FILTER (WHERE outcome = 'ok' AND cost_source <> 'unpriced'), 0)
         FROM calls WHERE {}
         GROUP BY 1, 2, 3, 4, 5, 6",
        super::where_range(user)
    );
    let mut stmt = conn.prepare_cached(&fill)?;
    if since < head_end {
        stmt.execute(params![since, head_end, user])?;
    }
    if tail_start < until {
        stmt.execute(params![tail_start, until, user])?;
    }
    drop(stmt);
    // Speech is no routed answer: its own tier and band (rows recorded
    // before it had its own tier said "forced").
    conn.execute(
        "UPDATE temp.usage_rollup SET tier = 'speech', band = 'speech' WHERE provider = 'cartesia'",
        [],
    )?;

    let mut snap = Snapshot {
        totals: conn.query_row(
            &format!("SELECT {} FROM temp.usage_rollup", totals_over_rollup()),
            [],
            read_totals,
        )?,
        tokens: conn.query_row(
            "SELECT coalesce(sum(ok_input), 0), coalesce(sum(ok_cache_read), 0),
                coalesce(sum(ok_cache_write), 0), coalesce(sum(ok_output), 0),
                coalesce(sum(ok_reasoning), 0) FROM temp.usage_rollup
             WHERE provider != 'cartesia'",
            [],
            |r| {
                let n =
                    |i: usize| -> rusqlite::Result<u64> { Ok(r.get::<_, i64>(i)?.max(0) as u64) };
                Ok(TokenMix {
                    input_tokens: n(0)?,
                    cache_read_tokens: n(1)?,
                    cache_write_tokens: n(2)?,
                    output_tokens: n(3)?,
                    reasoning_tokens: n(4)?,
                })
            },
        )?,
        ..Snapshot::default()
    };

    for &b in &req.breakdowns {
        if snap.groups.iter().any(|(k, _)| *k == b) {
            continue;
        }
        let sql = format!(
            "SELECT {}, {} FROM temp.usage_rollup GROUP BY 1 ORDER BY {}",
            b.key(),
            totals_over_rollup(),
            b.order()
        );
        let mut stmt = conn.prepare_cached(&sql)?;
        let rows = stmt
            .query_map([], |r| {
                Ok(Group {
                    key: r.get(0)?,
                    totals: read_totals_at(r, 1)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        snap.groups.push((b, rows));
        if b == Breakdown::Band {
            let mut stmt = conn.prepare_cached(
                "SELECT band, sum(ok), sum(cost_nanos), sum(baseline_nanos),
                    CASE WHEN sum(ok) > 0 THEN CAST(sum(cost_nanos) AS REAL) / sum(ok) ELSE 0 END
                 FROM temp.usage_rollup WHERE provider != 'cartesia' GROUP BY band ORDER BY band",
            )?;
            snap.bands = stmt
                .query_map([], |r| {
                    Ok(BandStat {
                        band: r.get(0)?,
                        calls: r.get::<_, i64>(1)?.max(0) as u64,
                        cost_usd: to_usd(r.get(2)?),
                        baseline_cost_usd: to_usd(r.get(3)?),
                        avg_cost_usd: r.get::<_, f64>(4)? / 1e9,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
        }
    }

    if req.day_provider {
        let mut stmt = conn.prepare_cached(
            // Speech is no call (as in every other count): its cost shows,
            // its syntheses do not count as calls.
            "SELECT date(day * 86400, 'unixepoch'), provider,
                    coalesce(sum(ok) FILTER (WHERE provider != 'cartesia'), 0), sum(cost_nanos)
             FROM temp.usage_rollup GROUP BY day, provider ORDER BY day ASC, 4 DESC, provider",
        )?;
        snap.day_provider = stmt
            .query_map([], |r| {
                Ok(DayProvider {
                    day: r.get(0)?,
                    provider: r.get(1)?,
                    calls: r.get::<_, i64>(2)?.max(0) as u64,
                    cost_usd: to_usd(r.get(3)?),
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
    }

    if req.top_calls > 0 && snap.totals.calls > 0 {
        snap.top_calls = top_calls(conn, req, user, snap.totals.calls, TOP_CALLS_WALK)?;
    }

    if req.recent > 0 {
        let sql = format!(
            "SELECT {CALL_COLUMNS} FROM calls WHERE {}
             ORDER BY ts_ms DESC, id DESC LIMIT ?4",
            super::where_range(user)
        );
        let mut stmt = conn.prepare_cached(&sql)?;
        snap.recent = stmt
            .query_map(
                params![req.since_ms, req.until_ms, user, req.recent],
                read_call,
            )?
            .collect::<rusqlite::Result<Vec<_>>>()?;
    }
    Ok(snap)
}

/// The [`Totals`] columns, summed over the rollup (same order as
/// `TOTALS_COLUMNS`, so `read_totals_at` reads both).
fn totals_over_rollup() -> String {
    let s: Vec<String> = ROLLUP_SUMS
        .split(',')
        .map(|c| format!("coalesce({}, 0)", c.trim()))
        .collect();
    s.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::CallRecord;

    const DAY: i64 = 86_400_000;
    /// 2026-11-02, a Monday, 00:00 UTC.
    const MON: i64 = 1_793_577_600_000;

    fn ledger() -> (tempfile::TempDir, Ledger) {
        let dir = tempfile::tempdir().unwrap();
        let l = Ledger::open(&dir.path().join("l.sqlite3")).unwrap();
        (dir, l)
    }

    #[allow(clippy::too_many_arguments)]
    fn call(
        ts: i64,
        user: &str,
        provider: &str,
        model: &str,
        tier: Option<&str>,
        score: Option<f64>,
        cost: f64,
        baseline: f64,
        ok: bool,
    ) -> CallRecord {
        CallRecord {
            ts_ms: ts,
            user_id: user.into(),
            request_id: format!("r{ts}"),
            attempt: 1,
            provider: provider.into(),
            model: model.into(),
            tier: tier.map(Into::into),
            score,
            input_tokens: 100,
            cache_read_tokens: 10,
            output_tokens: 50,
            reasoning_tokens: 5,
            cost_usd: if ok { cost } else { 0.0 },
            cost_source: "catalog".into(),
            baseline_cost_usd: ok.then_some(baseline),
            latency_ms: 200,
            ok,
            prompt_sha256: "x".into(),
            ..CallRecord::default()
        }
    }

    /// Seven rows over two weeks and two months, hand-computed below.
    fn seeded() -> (tempfile::TempDir, Ledger) {
        let (d, l) = ledger();
        let ds = "deepseek/deepseek-v3.2";
        let son = "anthropic/claude-sonnet-4-6";
        let hai = "anthropic/claude-haiku-4-5";
        let rows = [
            // Mon 2026-11-02
            call(
                MON + 1000,
                "alice",
                "deepseek",
                ds,
                Some("cheap"),
                Some(0.30),
                0.010,
                0.100,
                true,
            ),
            call(
                MON + 2000,
                "alice",
                "anthropic",
                son,
                Some("premium"),
                Some(0.90),
                0.200,
                0.200,
                true,
            ),
            call(
                MON + 3000,
                "bob",
                "anthropic",
                hai,
                Some("medium"),
                Some(0.60),
                0.0,
                0.0,
                false,
            ),
            // Sun 2026-11-08 (same week as Monday)
            call(
                MON + 6 * DAY,
                "bob",
                "anthropic",
                hai,
                Some("medium"),
                Some(0.55),
                0.040,
                0.300,
                true,
            ),
            // Mon 2026-11-09 (next week)
            call(
                MON + 7 * DAY,
                "bob",
                "deepseek",
                ds,
                Some("free"),
                Some(0.10),
                0.001,
                0.050,
                true,
            ),
            call(
                MON + 7 * DAY + 5,
                "alice",
                "deepseek",
                ds,
                None,
                None,
                0.002,
                0.020,
                true,
            ),
            // Tue 2026-12-01 (next month)
            call(
                MON + 29 * DAY,
                "alice",
                "anthropic",
                son,
                Some("premium"),
                Some(0.25),
                0.500,
                0.500,
                true,
            ),
        ];
        for r in &rows {
            l.insert_call(r).unwrap();
        }
        (d, l)
    }

    fn all(breakdowns: Vec<Breakdown>) -> SnapshotRequest {
        SnapshotRequest {
            user_id: None,
            since_ms: 0,
            until_ms: MON + 60 * DAY,
            breakdowns,
            day_provider: true,
            top_calls: 3,
            recent: 2,
        }
    }

    fn keyed(g: &[Group]) -> Vec<(String, u64, f64)> {
        g.iter()
            .map(|g| (g.key.clone(), g.totals.calls, g.totals.cost_usd))
            .collect()
    }

    fn s(v: &str) -> String {
        v.to_string()
    }

    #[test]
    fn monday_constant_is_a_monday() {
        // 1970-01-01 was a Thursday; day 3 was a Sunday.
        assert_eq!((MON / DAY) % 7, 4);
    }

    /// Reports read on a connection of their own: they see every call
    /// committed before them (the reader holds no stale snapshot between
    /// reports), and one in progress does not hold the connection writes
    /// use.
    #[test]
    fn reports_read_on_their_own_connection_and_stay_current() {
        let (_d, l) = seeded();
        let add = |ts| {
            let ds = "deepseek/deepseek-v3.2";
            let c = call(
                ts,
                "u",
                "deepseek",
                ds,
                Some("cheap"),
                Some(0.3),
                0.001,
                0.005,
                true,
            );
            l.insert_call(&c).unwrap();
        };
        assert_eq!(l.snapshot(&all(vec![])).unwrap().totals.calls, 6);
        add(MON + 5000);
        assert_eq!(l.snapshot(&all(vec![])).unwrap().totals.calls, 7);
        // A report holding its connection leaves the shared one free.
        let reader = lock_ignoring_poison(&l.reports);
        assert!(reader.is_some(), "the report reader was not used");
        add(MON + 6000);
        drop(reader);
        assert_eq!(l.snapshot(&all(vec![])).unwrap().totals.calls, 8);
    }

    #[test]
    fn totals_and_savings_match_hand_sums() {
        let (_d, l) = seeded();
        let snap = l.snapshot(&all(vec![])).unwrap();
        let t = &snap.totals;
        assert_eq!(t.calls, 6);
        assert_eq!(t.failed_attempts, 1);
        // 0.010 + 0.200 + 0.040 + 0.001 + 0.002 + 0.500
        assert_eq!(t.cost_usd, 0.753);
        // 0.100 + 0.200 + 0.300 + 0.050 + 0.020 + 0.500
        assert_eq!(t.baseline_cost_usd, 1.17);
        assert_eq!(t.input_tokens, 7 * 110);
        assert_eq!(t.output_tokens, 7 * 50);
        assert_eq!(
            snap.tokens,
            TokenMix {
                input_tokens: 600,
                cache_read_tokens: 60,
                cache_write_tokens: 0,
                output_tokens: 300,
                reasoning_tokens: 30,
            }
        );
        // The rollup agrees with the direct SQL totals.
        assert_eq!(&l.totals(None, 0, MON + 60 * DAY).unwrap(), t);
    }

    /// Speech (Cartesia reading an answer aloud) is spend, not a call: it
    /// is left out of the call counts, gets its own tier and band, and
    /// each group's saving leaves it out as the headline does. A model of
    /// unknown price is left out of the tokens other baselines are priced
    /// on (it has no recorded baseline either).
    #[test]
    fn speech_and_unpriced_calls_are_kept_apart() {
        let (_d, l) = ledger();
        l.insert_call(&call(
            MON + 1000,
            "u",
            "deepseek",
            "deepseek/deepseek-v3.2",
            Some("cheap"),
            Some(0.3),
            0.001,
            0.005,
            true,
        ))
        .unwrap();
        // An old speech row (tier NULL) and a new one (tier "speech").
        let mut speech = call(
            MON + 2000,
            "u",
            "cartesia",
            "cartesia/sonic-2",
            None,
            None,
            0.02,
            0.0,
            true,
        );
        speech.baseline_cost_usd = None;
        l.insert_call(&speech).unwrap();
        speech.ts_ms += 1;
        speech.request_id = "r2".into();
        speech.tier = Some(crate::ledger::SPEECH_TIER.into());
        l.insert_call(&speech).unwrap();
        let mut unpriced = call(
            MON + 3000,
            "u",
            "openrouter",
            "openrouter/openrouter/auto",
            None,
            Some(0.5),
            0.0,
            0.0,
            true,
        );
        unpriced.cost_source = "unpriced".into();
        unpriced.baseline_cost_usd = None;
        l.insert_call(&unpriced).unwrap();
        use Breakdown::*;
        let snap = l.snapshot(&all(vec![Day, Tier, Band])).unwrap();
        let t = &snap.totals;
        assert_eq!(t.calls, 2, "two answers; speech is not a call");
        // Speech's characters are not tokens: only the answers' count.
        assert_eq!((t.input_tokens, t.output_tokens), (2 * 110, 2 * 50));
        assert!((t.speech_cost_usd - 0.04).abs() < 1e-12);
        assert!((t.savings_usd().unwrap() - 0.004).abs() < 1e-12);
        let day = &snap.group(Day)[0].totals;
        assert!(
            (day.savings_usd().unwrap() - 0.004).abs() < 1e-12,
            "{day:?}"
        );
        // Failed attempts alone: nothing answered, so no baseline, and
        // what they cost is lost, not "no saving".
        let failed_only = crate::ledger::Totals {
            failed_attempts: 1,
            cost_usd: 0.00002,
            ..Default::default()
        };
        assert_eq!(failed_only.savings_usd(), Some(-0.00002));
        let speech_tier = snap.group(Tier).iter().find(|g| g.key == "speech").unwrap();
        assert_eq!(
            (speech_tier.totals.calls, speech_tier.totals.savings_usd()),
            (0, None)
        );
        assert!(
            snap.group(Tier)
                .iter()
                .all(|g| g.key != "forced" || g.totals.calls == 1)
        );
        // The complexity bands chart shows answers only.
        assert!(
            snap.bands
                .iter()
                .all(|b| b.band != "speech" && b.band != "unscored"),
            "{:?}",
            snap.bands
        );
        // Only the priced answer's tokens price other baselines.
        assert_eq!(snap.tokens.input_tokens, 100);
        // The cost-by-day chart shows speech's cost but no calls for it.
        let speech_day = snap
            .day_provider
            .iter()
            .find(|d| d.provider == "cartesia")
            .unwrap();
        assert_eq!(speech_day.calls, 0, "{speech_day:?}");
        assert!((speech_day.cost_usd - 0.04).abs() < 1e-12);
        // The direct SQL totals agree.
        assert_eq!(&l.totals(None, 0, MON + DAY).unwrap(), t);
        // An unpriced answer on the priced answer's model, tier and band
        // (one rollup row): its tokens still price no baseline, read from
        // the rollup (whole days) or from the calls (a partial day).
        let mut unpriced = call(
            MON + 4000,
            "u",
            "deepseek",
            "deepseek/deepseek-v3.2",
            Some("cheap"),
            Some(0.3),
            0.0,
            0.0,
            true,
        );
        unpriced.cost_source = "unpriced".into();
        unpriced.baseline_cost_usd = None;
        l.insert_call(&unpriced).unwrap();
        let whole_days = l.snapshot(&all(vec![])).unwrap();
        assert_eq!(whole_days.tokens.input_tokens, 100);
        let partial_day = l
            .snapshot(&SnapshotRequest {
                since_ms: MON + 500,
                ..all(vec![])
            })
            .unwrap();
        assert_eq!(partial_day.tokens.input_tokens, 100);
    }

    #[test]
    fn time_breakdowns() {
        let (_d, l) = seeded();
        use Breakdown::*;
        let snap = l.snapshot(&all(vec![Day, Week, Month])).unwrap();
        assert_eq!(
            keyed(snap.group(Day)),
            vec![
                (s("2026-11-02"), 2, 0.21),
                (s("2026-11-08"), 1, 0.04),
                (s("2026-11-09"), 2, 0.003),
                (s("2026-12-01"), 1, 0.5),
            ]
        );
        assert_eq!(snap.group(Day)[0].totals.failed_attempts, 1);
        assert_eq!(
            keyed(snap.group(Week)),
            vec![
                (s("2026-11-02"), 3, 0.25),
                (s("2026-11-09"), 2, 0.003),
                (s("2026-11-30"), 1, 0.5),
            ]
        );
        assert_eq!(
            keyed(snap.group(Month)),
            vec![(s("2026-11"), 5, 0.253), (s("2026-12"), 1, 0.5)]
        );
    }

    #[test]
    fn model_provider_tier_user_breakdowns() {
        let (_d, l) = seeded();
        use Breakdown::*;
        let snap = l.snapshot(&all(vec![Model, Provider, Tier, User])).unwrap();
        assert_eq!(
            keyed(snap.group(Model)),
            vec![
                (s("anthropic/claude-sonnet-4-6"), 2, 0.7),
                (s("anthropic/claude-haiku-4-5"), 1, 0.04),
                (s("deepseek/deepseek-v3.2"), 3, 0.013),
            ]
        );
        assert_eq!(
            keyed(snap.group(Provider)),
            vec![(s("anthropic"), 3, 0.74), (s("deepseek"), 3, 0.013)]
        );
        assert_eq!(
            keyed(snap.group(Tier)),
            vec![
                (s("premium"), 2, 0.7),
                (s("medium"), 1, 0.04),
                (s("cheap"), 1, 0.01),
                (s("forced"), 1, 0.002),
                (s("free"), 1, 0.001),
            ]
        );
        let users = snap.group(User);
        assert_eq!(
            keyed(users),
            vec![(s("alice"), 4, 0.712), (s("bob"), 2, 0.041)]
        );
        // Savings per user: baseline − cost.
        assert!((users[0].totals.baseline_cost_usd - 0.82).abs() < 1e-12);
        assert!((users[1].totals.baseline_cost_usd - 0.35).abs() < 1e-12);
    }

    #[test]
    fn complexity_bands_average_cost_per_call() {
        let (_d, l) = seeded();
        let snap = l.snapshot(&all(vec![Breakdown::Band])).unwrap();
        let got: Vec<(String, u64, f64)> = snap
            .bands
            .iter()
            .map(|b| (b.band.clone(), b.calls, b.avg_cost_usd))
            .collect();
        let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
        let want = [
            ("0.00-0.25", 1, 0.001),
            // 0.30 cheap and 0.25 premium (the edge belongs to the upper band)
            ("0.25-0.50", 2, 0.255),
            // 0.60 failed (no call), 0.55 ok
            ("0.50-0.75", 1, 0.04),
            ("0.75-1.00", 1, 0.2),
            ("unscored", 1, 0.002),
        ];
        assert_eq!(got.len(), want.len(), "{got:?}");
        for (g, w) in got.iter().zip(want) {
            assert_eq!(g.0, w.0);
            assert_eq!(g.1, w.1, "{}", w.0);
            assert!(close(g.2, w.2), "{}: {} vs {}", w.0, g.2, w.2);
        }
        assert_eq!(snap.bands[1].baseline_cost_usd, 0.6);
        // Band keys are the published ones.
        assert!(
            snap.bands
                .iter()
                .take(4)
                .zip(BANDS)
                .all(|(b, k)| b.band == k)
        );
    }

    /// The dearest calls of a period whose calls are all cheaper than
    /// the ledger's older ones are exact whichever way they are found: the
    /// bounded walk finding them, giving up and sorting the period, or
    /// walking the whole index.
    #[test]
    fn top_calls_of_a_cheap_period_are_exact_however_found() {
        let (_d, l) = ledger();
        let (ds, son) = ("deepseek/deepseek-v3.2", "anthropic/claude-sonnet-4-6");
        for i in 0..10 {
            let c = call(
                MON - 40 * DAY + i,
                "u",
                "anthropic",
                son,
                Some("premium"),
                None,
                1.0 + i as f64,
                2.0,
                true,
            );
            l.insert_call(&c).unwrap();
        }
        for i in 0..5 {
            let c = call(
                MON + i * 1000,
                "u",
                "deepseek",
                ds,
                Some("cheap"),
                None,
                0.001 * (i + 1) as f64,
                0.1,
                true,
            );
            l.insert_call(&c).unwrap();
        }
        let req = SnapshotRequest {
            since_ms: MON,
            until_ms: MON + DAY,
            top_calls: 3,
            ..all(vec![])
        };
        let conn = l.lock();
        // 12: the floor is the third cheap call (found by the walk); 3:
        // an old dear call (the walk finds none: sorted instead); 100:
        // past the end (no floor: the whole index).
        for walk in [12, 3, 100] {
            let got: Vec<f64> = top_calls(&conn, &req, None, 5, walk)
                .unwrap()
                .iter()
                .map(|c| c.cost_usd)
                .collect();
            assert_eq!(got, [0.005, 0.004, 0.003], "walk {walk}");
        }
    }

    #[test]
    fn day_by_provider_top_and_recent() {
        let (_d, l) = seeded();
        let snap = l.snapshot(&all(vec![])).unwrap();
        let dp: Vec<(String, String, u64, f64)> = snap
            .day_provider
            .iter()
            .map(|d| (d.day.clone(), d.provider.clone(), d.calls, d.cost_usd))
            .collect();
        assert_eq!(
            dp,
            vec![
                (s("2026-11-02"), s("anthropic"), 1, 0.2),
                (s("2026-11-02"), s("deepseek"), 1, 0.01),
                (s("2026-11-08"), s("anthropic"), 1, 0.04),
                (s("2026-11-09"), s("deepseek"), 2, 0.003),
                (s("2026-12-01"), s("anthropic"), 1, 0.5),
            ]
        );
        let top: Vec<f64> = snap.top_calls.iter().map(|c| c.cost_usd).collect();
        assert_eq!(top, vec![0.5, 0.2, 0.04]);
        assert_eq!(snap.top_calls[0].baseline_cost_usd, Some(0.5));
        assert_eq!(snap.top_calls[0].input_tokens, 110);
        let recent: Vec<i64> = snap.recent.iter().map(|c| c.ts_ms).collect();
        assert_eq!(recent, vec![MON + 29 * DAY, MON + 7 * DAY + 5]);
    }

    #[test]
    fn user_and_period_filters() {
        let (_d, l) = seeded();
        let mut req = all(vec![Breakdown::Model]);
        req.user_id = Some("bob".into());
        let snap = l.snapshot(&req).unwrap();
        assert_eq!(snap.totals.calls, 2);
        assert_eq!(snap.totals.failed_attempts, 1);
        assert_eq!(snap.totals.cost_usd, 0.041);
        assert!(snap.top_calls.iter().all(|c| c.user_id == "bob"));
        // Only the first week: [MON, MON + 7 days).
        let mut req = all(vec![Breakdown::Day]);
        req.since_ms = MON;
        req.until_ms = MON + 7 * DAY;
        let snap = l.snapshot(&req).unwrap();
        assert_eq!(snap.totals.calls, 3);
        assert_eq!(snap.group(Breakdown::Day).len(), 2);
        assert_eq!(snap.top_calls.len(), 3);
        assert_eq!(snap.top_calls[0].cost_usd, 0.2);
    }

    /// The rollup (whole days from calls_daily, edges from calls) agrees
    /// with direct SQL over `calls` for periods cut anywhere in a day.
    #[test]
    fn partial_days_at_the_edges_match_direct_sql() {
        let (_d, l) = seeded();
        use crate::ledger::GroupBy;
        let cuts = [
            (0, MON + 60 * DAY),
            (MON + 1500, MON + 7 * DAY + 3),
            (MON + 1500, MON + 2500),
            (MON + 2000, MON + 7 * DAY + 5),
            (MON + 7 * DAY, MON + 8 * DAY),
            (MON + 3 * DAY, MON + 4 * DAY),
            (MON + DAY - 1, MON + 29 * DAY + 1),
            // Edges beyond the first / last call: partial days read whole.
            (MON + 500, MON + 29 * DAY + 1),
            (MON + 500, MON + 2500),
            (MON + 29 * DAY - 5, MON + 30 * DAY - 1),
        ];
        for (since, until) in cuts {
            let mut req = all(vec![Breakdown::Model, Breakdown::User]);
            req.since_ms = since;
            req.until_ms = until;
            let snap = l.snapshot(&req).unwrap();
            assert_eq!(
                snap.totals,
                l.totals(None, since, until).unwrap(),
                "{since}..{until}"
            );
            let mut direct = l.breakdown(GroupBy::Model, None, since, until).unwrap();
            let mut got = snap.group(Breakdown::Model).to_vec();
            direct.sort_by(|a, b| a.key.cmp(&b.key));
            got.sort_by(|a, b| a.key.cmp(&b.key));
            assert_eq!(got, direct, "{since}..{until}");
            req.user_id = Some("bob".into());
            let snap = l.snapshot(&req).unwrap();
            assert_eq!(snap.totals, l.totals(Some("bob"), since, until).unwrap());
        }
    }

    #[test]
    fn retention_keeps_the_rollup_exact_and_updates_are_refused() {
        let (_d, l) = seeded();
        assert_eq!(l.prune(MON + 7 * DAY).unwrap(), 4);
        let snap = l.snapshot(&all(vec![Breakdown::Day])).unwrap();
        assert_eq!(snap.totals, l.totals(None, 0, MON + 60 * DAY).unwrap());
        assert_eq!(snap.totals.calls, 3);
        assert_eq!(snap.group(Breakdown::Day).len(), 2);
        let conn = l.lock();
        let empty: i64 = conn
            .query_row(
                "SELECT count(*) FROM calls_daily WHERE ok = 0 AND failed = 0",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(empty, 0, "no keys left without calls");
        let err = conn
            .execute("UPDATE calls SET cost_nanos = 1", [])
            .unwrap_err()
            .to_string();
        assert!(err.contains("append-only"), "{err}");
    }

    /// A ledger written before migration 0003 gets its rollup backfilled.
    #[test]
    fn migration_backfills_existing_calls() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.sqlite3");
        {
            let conn = rusqlite::Connection::open(&path).unwrap();
            conn.execute_batch(include_str!("migrations/0001_init.sql"))
                .unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
            for (i, cost) in [10_i64, 20, 30].iter().enumerate() {
                conn.execute(
                    "INSERT INTO calls (ts_ms, user_id, request_id, attempt, provider, model,
                        tier, score, cost_nanos, cost_source, baseline_cost_nanos, latency_ms,
                        outcome, prompt_sha256)
                     VALUES (?1, 'u', 'r', 1, 'p', 'm', 'cheap', 0.4, ?2, 'catalog', 100, 1,
                        'ok', 'x')",
                    params![MON + i as i64 * DAY, cost],
                )
                .unwrap();
            }
        }
        let l = Ledger::open(&path).unwrap();
        let snap = l.snapshot(&all(vec![Breakdown::Band])).unwrap();
        assert_eq!(snap.totals.calls, 3);
        assert_eq!(snap.totals.cost_usd, 60e-9);
        assert_eq!(snap.bands[0].band, "0.25-0.50");
        assert_eq!(snap.bands[0].avg_cost_usd, 20e-9);
    }

    /// A ledger written before migration 0010 counted unpriced answers'
    /// tokens in its rollup's token mix: rebuilt, only priced ones remain.
    #[test]
    fn migration_0010_takes_unpriced_tokens_out_of_the_mix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v9.sqlite3");
        {
            let conn = rusqlite::Connection::open(&path).unwrap();
            for sql in &super::super::MIGRATIONS[..9] {
                conn.execute_batch(sql).unwrap();
            }
            conn.pragma_update(None, "user_version", 9).unwrap();
            for (source, input) in [("catalog", 100), ("unpriced", 1000)] {
                conn.execute(
                    "INSERT INTO calls (ts_ms, user_id, request_id, attempt, provider, model,
                        tier, score, input_tokens, cost_nanos, cost_source, latency_ms,
                        outcome, prompt_sha256)
                     VALUES (?1, 'u', 'r', 1, 'deepseek', 'deepseek/deepseek-v3.2', 'cheap',
                        0.3, ?2, 10, ?3, 1, 'ok', 'x')",
                    params![MON, input, source],
                )
                .unwrap();
            }
            let mixed: i64 = conn
                .query_row("SELECT sum(ok_input) FROM calls_daily", [], |r| r.get(0))
                .unwrap();
            assert_eq!(mixed, 1100, "the old triggers counted both");
        }
        let l = Ledger::open(&path).unwrap();
        let snap = l.snapshot(&all(vec![])).unwrap();
        assert_eq!(snap.tokens.input_tokens, 100);
        assert_eq!(snap.totals.calls, 2);
        assert_eq!(snap.totals.unpriced_calls, 1);
    }

    #[test]
    fn empty_ledger_is_all_zero_not_an_error() {
        let (_d, l) = ledger();
        let snap = l
            .snapshot(&all(vec![Breakdown::Day, Breakdown::Band]))
            .unwrap();
        assert_eq!(snap.totals, Totals::default());
        assert!(snap.group(Breakdown::Day).is_empty());
        assert!(snap.bands.is_empty() && snap.top_calls.is_empty() && snap.recent.is_empty());
        // Twice in a row: the temp table is reused.
        assert!(l.snapshot(&all(vec![])).is_ok());
    }
}
