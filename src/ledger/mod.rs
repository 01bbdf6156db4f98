//! The ledger: every call's real cost in a local SQLite file, behind one
//! narrow type.
//!
//! Invariants:
//! - Money is integer nano-dollars ([`to_nanos`]), so sums are exact.
//! - Writes are single transactions in WAL mode with `synchronous=FULL`: a
//!   call whose result reached the client is on disk, even after a crash.
//! - Budget reservations are taken inside `BEGIN IMMEDIATE`, so two
//!   processes or tasks cannot both pass a nearly spent budget.
//! - Schema changes are numbered files in `migrations/`, applied in order
//!   and tracked by `PRAGMA user_version`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use schemars::JsonSchema;
use serde::Serialize;

mod analytics;
mod keys;
pub use analytics::{
    BANDS, BandStat, Breakdown, CallRow, DayProvider, Snapshot, SnapshotRequest, TokenMix,
};
pub use keys::ApiKeyRow;

/// Schema migrations, in order. Append only; never edit a released one.
const MIGRATIONS: &[&str] = &[
    include_str!("migrations/0001_init.sql"),
    include_str!("migrations/0002_budget_scopes_and_alerts.sql"),
    include_str!("migrations/0003_analytics_indexes.sql"),
    include_str!("migrations/0004_api_keys.sql"),
];

/// The scope of the global budget, which caps every user together.
pub const GLOBAL_SCOPE: &str = "*";

/// How long a write waits for another process's lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// USD → nano-dollars, rounded; negative and non-finite become 0.
pub fn to_nanos(usd: f64) -> i64 {
    if !usd.is_finite() || usd <= 0.0 {
        return 0;
    }
    (usd * 1e9).round().min(i64::MAX as f64) as i64
}

/// Nano-dollars → USD.
pub fn to_usd(nanos: i64) -> f64 {
    nanos as f64 / 1e9
}

/// A ledger failure, worded for the person who has to fix it.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// The file exists but is not a usable SQLite database.
    #[error(
        "the ledger at {path} is damaged or not a database ({detail}); move it aside and restart to begin a new one"
    )]
    Corrupt {
        /// Path of the file.
        path: PathBuf,
        /// SQLite's message.
        detail: String,
    },
    /// Another process holds the write lock for too long.
    #[error(
        "the ledger at {path} is locked by another process; try again, or close the other program using it"
    )]
    Locked {
        /// Path of the file.
        path: PathBuf,
    },
    /// The data directory cannot be created or written.
    #[error(
        "cannot use the data directory {path}: {detail} (set COST_OPTIMIZER_DATA_DIR to a writable directory)"
    )]
    Storage {
        /// Path of the directory.
        path: PathBuf,
        /// The OS error.
        detail: String,
    },
    /// Any other SQLite error.
    #[error("ledger error: {0}")]
    Sqlite(String),
}

/// A ledger row to write: one provider attempt.
#[derive(Debug, Clone, Default)]
pub struct CallRecord {
    /// Unix time in ms.
    pub ts_ms: i64,
    /// Whose budget pays.
    pub user_id: String,
    /// Groups the attempts of one `complete_prompt` call.
    pub request_id: String,
    /// 1-based attempt number.
    pub attempt: u32,
    /// Provider name.
    pub provider: String,
    /// Canonical model id.
    pub model: String,
    /// Tier the model was chosen from.
    pub tier: Option<String>,
    /// Complexity score.
    pub score: Option<f64>,
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
    /// What the call cost, USD.
    pub cost_usd: f64,
    /// `provider`, `catalog`, `local` or `unpriced`.
    pub cost_source: String,
    /// What the baseline model would have cost for the same usage.
    pub baseline_cost_usd: Option<f64>,
    /// Wall time of the attempt.
    pub latency_ms: u64,
    /// True when the provider answered.
    pub ok: bool,
    /// Failure classification.
    pub error_kind: Option<String>,
    /// Failure message (already redacted).
    pub error_message: Option<String>,
    /// What the caller forced, if anything.
    pub forced: Option<String>,
    /// SHA-256 of system + prompt.
    pub prompt_sha256: String,
    /// The prompt, only if the user opted in.
    pub prompt_text: Option<String>,
}

/// A stored budget.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetRow {
    /// Owner: a user id, or [`GLOBAL_SCOPE`].
    pub user_id: String,
    /// Limit per period, nano-dollars.
    pub limit_nanos: i64,
    /// `daily`, `weekly` or `monthly`.
    pub period: String,
    /// Alert thresholds, fractions of the limit.
    pub thresholds: Vec<f64>,
    /// `warn`, `downgrade` or `block`.
    pub mode: String,
    /// IANA time zone whose calendar defines the periods.
    pub timezone: String,
    /// Where threshold alerts are POSTed, if anywhere.
    pub webhook_url: Option<String>,
    /// `json`, `slack` or `discord`.
    pub webhook_format: String,
}

/// One limit a reservation must respect.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitCheck {
    /// A user id, or [`GLOBAL_SCOPE`] for everyone's spend together.
    pub scope: String,
    /// Start of the budget's current period.
    pub since_ms: i64,
    /// The limit, nano-dollars.
    pub limit_nanos: i64,
}

/// A threshold crossing, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct AlertRow {
    /// Row id.
    pub id: i64,
    /// User id or `*`.
    pub scope: String,
    /// Start of the period it belongs to, unix ms.
    pub period_start_ms: i64,
    /// The threshold crossed (fraction).
    pub threshold: f64,
    /// Spend when it was crossed, USD.
    pub spent_usd: f64,
    /// The limit, USD.
    pub limit_usd: f64,
    /// When, unix ms.
    pub created_ms: i64,
}

/// One delivery attempt of an alert.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct DeliveryRow {
    /// The alert delivered.
    pub alert_id: i64,
    /// `webhook` or `mcp`.
    pub channel: String,
    /// Redacted target.
    pub target: Option<String>,
    /// 1-based attempt.
    pub attempt: u32,
    /// Delivered.
    pub ok: bool,
    /// HTTP status, if any.
    pub status: Option<u16>,
    /// Why it failed.
    pub error: Option<String>,
}

/// A held worst-case amount; settle or release it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReservationId(pub i64);

/// Why a reservation was refused.
#[derive(Debug, Clone, PartialEq)]
pub struct Overspend {
    /// The scope whose limit would be crossed.
    pub scope: String,
    /// Its limit, nano-dollars.
    pub limit_nanos: i64,
    /// Settled spend in the period, nano-dollars.
    pub spent_nanos: i64,
    /// Held by calls in flight, nano-dollars.
    pub reserved_nanos: i64,
}

/// Totals over a set of calls.
#[derive(Debug, Clone, Default, PartialEq, Serialize, JsonSchema)]
pub struct Totals {
    /// Successful calls.
    pub calls: u64,
    /// Failed attempts.
    pub failed_attempts: u64,
    /// Spend, USD.
    pub cost_usd: f64,
    /// What the always-premium baseline would have cost, USD.
    pub baseline_cost_usd: f64,
    /// Input tokens (cached included).
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Calls whose cost is unknown (recorded as $0).
    pub unpriced_calls: u64,
}

/// One line of a breakdown.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct Group {
    /// Model id, provider, tier, user or day (`YYYY-MM-DD`).
    pub key: String,
    /// Totals for that key.
    #[serde(flatten)]
    pub totals: Totals,
}

/// What to group a breakdown by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    /// Canonical model id.
    Model,
    /// Provider name.
    Provider,
    /// Day (UTC).
    Day,
    /// Routing tier.
    Tier,
    /// User id.
    User,
}

impl GroupBy {
    fn column(self) -> &'static str {
        match self {
            GroupBy::Model => "model",
            GroupBy::Provider => "provider",
            GroupBy::Day => "strftime('%Y-%m-%d', ts_ms / 1000, 'unixepoch')",
            GroupBy::Tier => "coalesce(tier, 'forced')",
            GroupBy::User => "user_id",
        }
    }
}

/// A recent call, for listings.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct RecentCall {
    /// Unix time, ms.
    pub ts_ms: i64,
    /// User id.
    pub user_id: String,
    /// Model id.
    pub model: String,
    /// Tier.
    pub tier: Option<String>,
    /// Cost, USD.
    pub cost_usd: f64,
    /// `ok` or `error`.
    pub outcome: String,
}

/// The ledger. Cheap to clone; all clones share one connection.
#[derive(Clone)]
pub struct Ledger {
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
}

impl Ledger {
    /// Opens (creating if needed) the ledger at `path` and migrates it.
    pub fn open(path: &Path) -> Result<Ledger, LedgerError> {
        if let Some(dir) = path.parent() {
            create_private_dir(dir)?;
        }
        let conn = Connection::open(path).map_err(|e| classify(path, e))?;
        restrict_permissions(path);
        let ledger = Ledger {
            conn: Arc::new(Mutex::new(conn)),
            path: path.to_path_buf(),
        };
        ledger.init()?;
        Ok(ledger)
    }

    /// Changes how long a write waits for another process's lock (tests
    /// use a short wait to exercise the "locked" error).
    pub fn set_busy_timeout(&self, wait: Duration) -> Result<(), LedgerError> {
        self.lock().busy_timeout(wait).map_err(|e| self.err(e))
    }

    /// Where the file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave a half-written row:
        // SQLite rolls back the open transaction, so the poisoned guard is safe.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn err(&self, e: rusqlite::Error) -> LedgerError {
        classify(&self.path, e)
    }

    fn init(&self) -> Result<(), LedgerError> {
        let mut conn = self.lock();
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| classify(&self.path, e))?;
        // journal_mode returns a row; query it rather than execute.
        let mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .map_err(|e| classify(&self.path, e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(mode, "ledger could not switch to WAL mode");
        }
        conn.execute_batch("PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;")
            .map_err(|e| classify(&self.path, e))?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| classify(&self.path, e))?;
        let version = usize::try_from(version).unwrap_or(0);
        if version > MIGRATIONS.len() {
            return Err(LedgerError::Sqlite(format!(
                "the ledger at {} was written by a newer version (schema {version}); upgrade ai-cost-optimizer",
                self.path.display()
            )));
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|e| classify(&self.path, e))?;
            tx.execute_batch(sql).map_err(|e| classify(&self.path, e))?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)
                .map_err(|e| classify(&self.path, e))?;
            tx.commit().map_err(|e| classify(&self.path, e))?;
            tracing::info!(version = i + 1, "ledger migrated");
        }
        Ok(())
    }

    /// Schema version in the file.
    pub fn schema_version(&self) -> Result<i64, LedgerError> {
        self.lock()
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| self.err(e))
    }

    /// Writes one attempt.
    pub fn insert_call(&self, rec: &CallRecord) -> Result<i64, LedgerError> {
        let conn = self.lock();
        insert(&conn, rec).map_err(|e| self.err(e))
    }

    /// Writes one attempt and drops its reservation, atomically.
    pub fn settle(&self, reservation: ReservationId, rec: &CallRecord) -> Result<i64, LedgerError> {
        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.err(e))?;
        let id = insert(&tx, rec).map_err(|e| self.err(e))?;
        tx.execute("DELETE FROM reservations WHERE id = ?1", [reservation.0])
            .map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))?;
        Ok(id)
    }

    /// Holds `amount_nanos` for `user_id` if, for every check, settled
    /// spend in the check's scope since its period start plus live
    /// reservations in that scope plus the amount stays within its limit.
    /// All checks and the insert happen in one `BEGIN IMMEDIATE`
    /// transaction, so concurrent callers (tasks or processes) serialise.
    pub fn reserve(
        &self,
        user_id: &str,
        checks: &[LimitCheck],
        amount_nanos: i64,
        now_ms: i64,
        ttl: Duration,
    ) -> Result<Result<ReservationId, Overspend>, LedgerError> {
        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.err(e))?;
        tx.execute("DELETE FROM reservations WHERE expires_ms <= ?1", [now_ms])
            .map_err(|e| self.err(e))?;
        for check in checks {
            let spent = spent(&tx, &check.scope, check.since_ms).map_err(|e| self.err(e))?;
            let reserved = reserved(&tx, &check.scope, now_ms).map_err(|e| self.err(e))?;
            if spent.saturating_add(reserved).saturating_add(amount_nanos) > check.limit_nanos {
                return Ok(Err(Overspend {
                    scope: check.scope.clone(),
                    limit_nanos: check.limit_nanos,
                    spent_nanos: spent,
                    reserved_nanos: reserved,
                }));
            }
        }
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 2);
        tx.execute(
            "INSERT INTO reservations (user_id, amount_nanos, created_ms, expires_ms) VALUES (?1, ?2, ?3, ?4)",
            params![user_id, amount_nanos.max(0), now_ms, now_ms.saturating_add(ttl_ms)],
        )
        .map_err(|e| self.err(e))?;
        let id = tx.last_insert_rowid();
        tx.commit().map_err(|e| self.err(e))?;
        Ok(Ok(ReservationId(id)))
    }

    /// Records that `threshold` was crossed in `scope`'s period starting at
    /// `period_start_ms`. Returns the new alert's id, or `None` if this
    /// crossing was already recorded (so it must not be sent again).
    pub fn record_alert(
        &self,
        scope: &str,
        period_start_ms: i64,
        threshold: f64,
        spent_nanos: i64,
        limit_nanos: i64,
        now_ms: i64,
    ) -> Result<Option<i64>, LedgerError> {
        let conn = self.lock();
        let n = conn
            .execute(
                "INSERT OR IGNORE INTO alerts (scope, period_start_ms, threshold, spent_nanos, limit_nanos, created_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![scope, period_start_ms, threshold, spent_nanos, limit_nanos, now_ms],
            )
            .map_err(|e| self.err(e))?;
        Ok((n == 1).then(|| conn.last_insert_rowid()))
    }

    /// Records one delivery attempt of an alert.
    pub fn record_delivery(&self, d: &DeliveryRow, now_ms: i64) -> Result<(), LedgerError> {
        self.lock()
            .execute(
                "INSERT INTO alert_deliveries (alert_id, channel, target, attempt, ok, status, error, ts_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![d.alert_id, d.channel, d.target, d.attempt, d.ok, d.status, d.error, now_ms],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// Alerts of `scope` (or all), newest first.
    pub fn alerts(&self, scope: Option<&str>, limit: u32) -> Result<Vec<AlertRow>, LedgerError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached(
                "SELECT id, scope, period_start_ms, threshold, spent_nanos, limit_nanos, created_ms
                 FROM alerts WHERE (?1 IS NULL OR scope = ?1) ORDER BY id DESC LIMIT ?2",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![scope, limit], |r| {
                Ok(AlertRow {
                    id: r.get(0)?,
                    scope: r.get(1)?,
                    period_start_ms: r.get(2)?,
                    threshold: r.get(3)?,
                    spent_usd: to_usd(r.get(4)?),
                    limit_usd: to_usd(r.get(5)?),
                    created_ms: r.get(6)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }

    /// Delivery attempts of one alert, in order.
    pub fn deliveries(&self, alert_id: i64) -> Result<Vec<DeliveryRow>, LedgerError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached(
                "SELECT alert_id, channel, target, attempt, ok, status, error FROM alert_deliveries
                 WHERE alert_id = ?1 ORDER BY id",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([alert_id], |r| {
                Ok(DeliveryRow {
                    alert_id: r.get(0)?,
                    channel: r.get(1)?,
                    target: r.get(2)?,
                    attempt: r.get(3)?,
                    ok: r.get(4)?,
                    status: r.get(5)?,
                    error: r.get(6)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }

    /// Drops a reservation without recording a call.
    pub fn release(&self, reservation: ReservationId) -> Result<(), LedgerError> {
        self.lock()
            .execute("DELETE FROM reservations WHERE id = ?1", [reservation.0])
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// Settled spend of `user_id` since `since_ms`, nano-dollars.
    pub fn spent_since(&self, user_id: &str, since_ms: i64) -> Result<i64, LedgerError> {
        spent(&self.lock(), user_id, since_ms).map_err(|e| self.err(e))
    }

    /// Live reservations of `user_id`, nano-dollars.
    pub fn reserved_now(&self, user_id: &str, now_ms: i64) -> Result<i64, LedgerError> {
        reserved(&self.lock(), user_id, now_ms).map_err(|e| self.err(e))
    }

    /// The stored budget of `user_id`, if any.
    pub fn budget(&self, user_id: &str) -> Result<Option<BudgetRow>, LedgerError> {
        let conn = self.lock();
        conn.query_row(
            "SELECT user_id, limit_nanos, period, thresholds, mode, timezone, webhook_url,
                    webhook_format
             FROM budgets WHERE user_id = ?1",
            [user_id],
            |r| {
                Ok(BudgetRow {
                    user_id: r.get(0)?,
                    limit_nanos: r.get(1)?,
                    period: r.get(2)?,
                    thresholds: serde_json::from_str(&r.get::<_, String>(3)?).unwrap_or_default(),
                    mode: r.get(4)?,
                    timezone: r.get(5)?,
                    webhook_url: r.get(6)?,
                    webhook_format: r.get(7)?,
                })
            },
        )
        .optional()
        .map_err(|e| self.err(e))
    }

    /// Creates or replaces a budget.
    pub fn set_budget(&self, b: &BudgetRow, now_ms: i64) -> Result<(), LedgerError> {
        let thresholds =
            serde_json::to_string(&b.thresholds).map_err(|e| LedgerError::Sqlite(e.to_string()))?;
        self.lock()
            .execute(
                "INSERT INTO budgets (user_id, limit_nanos, period, thresholds, mode, updated_ms,
                   timezone, webhook_url, webhook_format)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                 ON CONFLICT(user_id) DO UPDATE SET limit_nanos = excluded.limit_nanos,
                   period = excluded.period, thresholds = excluded.thresholds,
                   mode = excluded.mode, updated_ms = excluded.updated_ms,
                   timezone = excluded.timezone, webhook_url = excluded.webhook_url,
                   webhook_format = excluded.webhook_format",
                params![
                    b.user_id,
                    b.limit_nanos,
                    b.period,
                    thresholds,
                    b.mode,
                    now_ms,
                    b.timezone,
                    b.webhook_url,
                    b.webhook_format
                ],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// Totals of the calls in `[since_ms, until_ms)`, for one user or all.
    pub fn totals(
        &self,
        user_id: Option<&str>,
        since_ms: i64,
        until_ms: i64,
    ) -> Result<Totals, LedgerError> {
        let conn = self.lock();
        let sql = format!("SELECT {TOTALS_COLUMNS} FROM calls WHERE {WHERE_RANGE}");
        conn.query_row(&sql, params![since_ms, until_ms, user_id], read_totals)
            .map_err(|e| self.err(e))
    }

    /// Totals per `by` key, largest spend first.
    pub fn breakdown(
        &self,
        by: GroupBy,
        user_id: Option<&str>,
        since_ms: i64,
        until_ms: i64,
    ) -> Result<Vec<Group>, LedgerError> {
        let conn = self.lock();
        let key = by.column();
        let order = if by == GroupBy::Day {
            "1 ASC"
        } else {
            "4 DESC, 1 ASC"
        };
        let sql = format!(
            "SELECT {key}, {TOTALS_COLUMNS} FROM calls WHERE {WHERE_RANGE} GROUP BY 1 ORDER BY {order}"
        );
        let mut stmt = conn.prepare_cached(&sql).map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![since_ms, until_ms, user_id], |r| {
                Ok(Group {
                    key: r.get(0)?,
                    totals: read_totals_at(r, 1)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }

    /// The latest calls, newest first.
    pub fn recent(
        &self,
        user_id: Option<&str>,
        limit: u32,
    ) -> Result<Vec<RecentCall>, LedgerError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached(
                "SELECT ts_ms, user_id, model, tier, cost_nanos, outcome FROM calls
                 WHERE (?1 IS NULL OR user_id = ?1) ORDER BY ts_ms DESC, id DESC LIMIT ?2",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![user_id, limit], |r| {
                Ok(RecentCall {
                    ts_ms: r.get(0)?,
                    user_id: r.get(1)?,
                    model: r.get(2)?,
                    tier: r.get(3)?,
                    cost_usd: to_usd(r.get(4)?),
                    outcome: r.get(5)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }

    /// Deletes calls older than `before_ms`; returns how many.
    pub fn prune(&self, before_ms: i64) -> Result<u64, LedgerError> {
        let conn = self.lock();
        let n = conn
            .execute("DELETE FROM calls WHERE ts_ms < ?1", [before_ms])
            .map_err(|e| self.err(e))?;
        Ok(n as u64)
    }

    /// Number of rows in `calls`.
    pub fn count_calls(&self) -> Result<u64, LedgerError> {
        self.lock()
            .query_row("SELECT count(*) FROM calls", [], |r| r.get::<_, i64>(0))
            .map(|n| n.max(0) as u64)
            .map_err(|e| self.err(e))
    }

    /// SQLite's `PRAGMA integrity_check`: `"ok"` when sound.
    pub fn integrity_check(&self) -> Result<String, LedgerError> {
        self.lock()
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .map_err(|e| self.err(e))
    }
}

const TOTALS_COLUMNS: &str = "
    count(*) FILTER (WHERE outcome = 'ok'),
    count(*) FILTER (WHERE outcome = 'error'),
    coalesce(sum(cost_nanos), 0),
    coalesce(sum(baseline_cost_nanos) FILTER (WHERE outcome = 'ok'), 0),
    coalesce(sum(input_tokens + cache_read_tokens + cache_write_tokens), 0),
    coalesce(sum(output_tokens), 0),
    count(*) FILTER (WHERE outcome = 'ok' AND cost_source = 'unpriced')";

const WHERE_RANGE: &str = "ts_ms >= ?1 AND ts_ms < ?2 AND (?3 IS NULL OR user_id = ?3)";

fn read_totals(r: &rusqlite::Row<'_>) -> rusqlite::Result<Totals> {
    read_totals_at(r, 0)
}

fn read_totals_at(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<Totals> {
    let n = |i: usize| -> rusqlite::Result<u64> { Ok(r.get::<_, i64>(at + i)?.max(0) as u64) };
    Ok(Totals {
        calls: n(0)?,
        failed_attempts: n(1)?,
        cost_usd: to_usd(r.get(at + 2)?),
        baseline_cost_usd: to_usd(r.get(at + 3)?),
        input_tokens: n(4)?,
        output_tokens: n(5)?,
        unpriced_calls: n(6)?,
    })
}

fn insert(conn: &Connection, rec: &CallRecord) -> rusqlite::Result<i64> {
    let tok = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    conn.prepare_cached(
        "INSERT INTO calls (ts_ms, user_id, request_id, attempt, provider, model, tier, score,
            input_tokens, cache_read_tokens, cache_write_tokens, output_tokens, reasoning_tokens,
            cost_nanos, cost_source, baseline_cost_nanos, latency_ms, outcome, error_kind,
            error_message, forced, prompt_sha256, prompt_text)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18,
            ?19, ?20, ?21, ?22, ?23)",
    )?
    .execute(params![
        rec.ts_ms,
        rec.user_id,
        rec.request_id,
        rec.attempt,
        rec.provider,
        rec.model,
        rec.tier,
        rec.score,
        tok(rec.input_tokens),
        tok(rec.cache_read_tokens),
        tok(rec.cache_write_tokens),
        tok(rec.output_tokens),
        tok(rec.reasoning_tokens),
        to_nanos(rec.cost_usd),
        rec.cost_source,
        rec.baseline_cost_usd.map(to_nanos),
        tok(rec.latency_ms),
        if rec.ok { "ok" } else { "error" },
        rec.error_kind,
        rec.error_message,
        rec.forced,
        rec.prompt_sha256,
        rec.prompt_text,
    ])?;
    Ok(conn.last_insert_rowid())
}

/// Settled spend of `scope` (a user, or everyone for [`GLOBAL_SCOPE`]).
fn spent(conn: &Connection, scope: &str, since_ms: i64) -> rusqlite::Result<i64> {
    if scope == GLOBAL_SCOPE {
        return conn
            .prepare_cached("SELECT coalesce(sum(cost_nanos), 0) FROM calls WHERE ts_ms >= ?1")?
            .query_row(params![since_ms], |r| r.get(0));
    }
    conn.prepare_cached(
        "SELECT coalesce(sum(cost_nanos), 0) FROM calls WHERE user_id = ?1 AND ts_ms >= ?2",
    )?
    .query_row(params![scope, since_ms], |r| r.get(0))
}

/// Live reservations of `scope` (a user, or everyone for [`GLOBAL_SCOPE`]).
fn reserved(conn: &Connection, scope: &str, now_ms: i64) -> rusqlite::Result<i64> {
    if scope == GLOBAL_SCOPE {
        return conn
            .prepare_cached(
                "SELECT coalesce(sum(amount_nanos), 0) FROM reservations WHERE expires_ms > ?1",
            )?
            .query_row(params![now_ms], |r| r.get(0));
    }
    conn.prepare_cached(
        "SELECT coalesce(sum(amount_nanos), 0) FROM reservations WHERE user_id = ?1 AND expires_ms > ?2",
    )?
    .query_row(params![scope, now_ms], |r| r.get(0))
}

fn classify(path: &Path, e: rusqlite::Error) -> LedgerError {
    use rusqlite::ffi::ErrorCode;
    match e.sqlite_error_code() {
        Some(ErrorCode::NotADatabase) | Some(ErrorCode::DatabaseCorrupt) => LedgerError::Corrupt {
            path: path.to_path_buf(),
            detail: e.to_string(),
        },
        Some(ErrorCode::DatabaseBusy) | Some(ErrorCode::DatabaseLocked) => LedgerError::Locked {
            path: path.to_path_buf(),
        },
        Some(ErrorCode::CannotOpen)
        | Some(ErrorCode::ReadOnly)
        | Some(ErrorCode::DiskFull)
        | Some(ErrorCode::PermissionDenied)
        | Some(ErrorCode::SystemIoFailure) => LedgerError::Storage {
            path: path.to_path_buf(),
            detail: e.to_string(),
        },
        _ => LedgerError::Sqlite(e.to_string()),
    }
}

/// Creates `dir` (and parents) readable by the owner only: the ledger holds
/// what a user spent and, if they opted in, their prompts.
pub fn create_private_dir(dir: &Path) -> Result<(), LedgerError> {
    let storage = |e: std::io::Error| LedgerError::Storage {
        path: dir.to_path_buf(),
        detail: e.to_string(),
    };
    if !dir.exists() {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            builder.mode(0o700);
        }
        builder.create(dir).map_err(storage)?;
    }
    Ok(())
}

fn restrict_permissions(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
    }
    #[cfg(not(unix))]
    let _ = path;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ledger() -> (tempfile::TempDir, Ledger) {
        let dir = tempfile::tempdir().unwrap();
        let l = Ledger::open(&dir.path().join("sub").join("l.sqlite3")).unwrap();
        (dir, l)
    }

    fn rec(user: &str, ts: i64, cost: f64, ok: bool) -> CallRecord {
        CallRecord {
            ts_ms: ts,
            user_id: user.into(),
            request_id: "r".into(),
            attempt: 1,
            provider: "deepseek".into(),
            model: "deepseek/deepseek-v3.2".into(),
            tier: Some("cheap".into()),
            cost_usd: cost,
            cost_source: "catalog".into(),
            baseline_cost_usd: Some(cost * 10.0),
            input_tokens: 10,
            output_tokens: 5,
            ok,
            prompt_sha256: "x".into(),
            ..CallRecord::default()
        }
    }

    #[test]
    fn nanos_round_trip_and_clamp() {
        assert_eq!(to_nanos(0.000_000_42), 420);
        assert_eq!(to_nanos(-1.0), 0);
        assert_eq!(to_nanos(f64::NAN), 0);
        assert_eq!(to_usd(to_nanos(12.345_678_901)), 12.345_678_901);
    }

    #[test]
    fn migrates_once_and_reopens() {
        let (dir, l) = ledger();
        assert_eq!(l.schema_version().unwrap(), MIGRATIONS.len() as i64);
        l.insert_call(&rec("u", 1000, 0.5, true)).unwrap();
        drop(l);
        let l = Ledger::open(&dir.path().join("sub").join("l.sqlite3")).unwrap();
        assert_eq!(l.count_calls().unwrap(), 1);
        assert_eq!(l.integrity_check().unwrap(), "ok");
    }

    #[test]
    fn totals_and_breakdowns_are_exact() {
        let (_d, l) = ledger();
        for (i, c) in [0.1, 0.2, 0.000_001].iter().enumerate() {
            l.insert_call(&rec("a", 1000 + i as i64, *c, true)).unwrap();
        }
        l.insert_call(&rec("a", 1100, 0.0, false)).unwrap();
        l.insert_call(&rec("b", 1200, 1.0, true)).unwrap();
        let t = l.totals(Some("a"), 0, 2000).unwrap();
        assert_eq!(t.calls, 3);
        assert_eq!(t.failed_attempts, 1);
        assert_eq!(t.cost_usd, 0.300_001);
        assert!((t.baseline_cost_usd - 3.000_01).abs() < 1e-12);
        let all = l.totals(None, 0, 2000).unwrap();
        assert_eq!(all.cost_usd, 1.300_001);
        let by_user = l.breakdown(GroupBy::User, None, 0, 2000).unwrap();
        assert_eq!(by_user[0].key, "b");
        let by_day = l.breakdown(GroupBy::Day, None, 0, 2000).unwrap();
        assert_eq!(by_day[0].key, "1970-01-01");
    }

    #[test]
    fn reservations_hold_and_expire() {
        let (_d, l) = ledger();
        let ttl = Duration::from_secs(60);
        l.insert_call(&rec("u", 10, 0.9, true)).unwrap();
        let limit = [LimitCheck {
            scope: "u".into(),
            since_ms: 0,
            limit_nanos: to_nanos(1.0),
        }];
        let reserve = |amount: f64, now: i64, ttl: Duration| {
            l.reserve("u", &limit, to_nanos(amount), now, ttl).unwrap()
        };
        let r1 = reserve(0.06, 100, ttl).unwrap();
        // 0.9 spent + 0.06 held + 0.06 asked > 1.0
        let refused = reserve(0.06, 100, ttl).unwrap_err();
        assert_eq!(refused.scope, "u");
        assert_eq!(refused.spent_nanos, to_nanos(0.9));
        assert_eq!(refused.reserved_nanos, to_nanos(0.06));
        l.release(r1).unwrap();
        let r2 = reserve(0.06, 100, ttl).unwrap();
        l.settle(r2, &rec("u", 200, 0.01, true)).unwrap();
        assert_eq!(l.reserved_now("u", 300).unwrap(), 0);
        // An expired reservation no longer counts.
        reserve(0.05, 1000, Duration::from_millis(10)).unwrap();
        assert_eq!(l.reserved_now("u", 2000).unwrap(), 0);
        // The global scope counts every user's spend.
        l.insert_call(&rec("other", 10, 0.5, true)).unwrap();
        let global = [LimitCheck {
            scope: GLOBAL_SCOPE.into(),
            since_ms: 0,
            limit_nanos: to_nanos(1.2),
        }];
        let refused = l
            .reserve("u", &global, to_nanos(0.01), 3000, ttl)
            .unwrap()
            .unwrap_err();
        assert_eq!(refused.scope, "*");
        assert_eq!(refused.spent_nanos, to_nanos(0.9 + 0.01 + 0.5));
    }

    #[test]
    fn budgets_upsert() {
        let (_d, l) = ledger();
        assert_eq!(l.budget("u").unwrap(), None);
        let mut b = BudgetRow {
            user_id: "u".into(),
            limit_nanos: to_nanos(5.0),
            period: "monthly".into(),
            thresholds: vec![0.5, 1.0],
            mode: "block".into(),
            timezone: "Europe/Paris".into(),
            webhook_url: Some("https://hooks.example/x".into()),
            webhook_format: "slack".into(),
        };
        l.set_budget(&b, 1).unwrap();
        b.limit_nanos = to_nanos(7.0);
        l.set_budget(&b, 2).unwrap();
        assert_eq!(l.budget("u").unwrap(), Some(b));
    }

    #[test]
    fn alerts_are_recorded_once_per_period_and_threshold() {
        let (_d, l) = ledger();
        let a = l.record_alert("u", 1000, 0.5, 5, 10, 1).unwrap();
        assert!(a.is_some());
        assert_eq!(l.record_alert("u", 1000, 0.5, 6, 10, 2).unwrap(), None);
        assert!(l.record_alert("u", 2000, 0.5, 6, 10, 3).unwrap().is_some());
        assert!(l.record_alert("*", 1000, 0.5, 6, 10, 3).unwrap().is_some());
        let d = DeliveryRow {
            alert_id: a.unwrap(),
            channel: "webhook".into(),
            target: Some("https://hooks.example/…".into()),
            attempt: 1,
            ok: false,
            status: Some(500),
            error: Some("boom".into()),
        };
        l.record_delivery(&d, 5).unwrap();
        assert_eq!(l.deliveries(a.unwrap()).unwrap(), vec![d]);
        assert_eq!(l.alerts(Some("u"), 10).unwrap().len(), 2);
    }

    #[test]
    fn a_lock_held_elsewhere_is_a_clear_error_not_a_hang() {
        let (dir, l) = ledger();
        let path = dir.path().join("sub").join("l.sqlite3");
        let other = Connection::open(&path).unwrap();
        other.execute_batch("BEGIN EXCLUSIVE").unwrap();
        l.set_busy_timeout(Duration::from_millis(50)).unwrap();
        let err = l.insert_call(&rec("u", 1, 0.1, true)).unwrap_err();
        assert!(matches!(err, LedgerError::Locked { .. }), "{err:?}");
        assert!(
            err.to_string().contains("locked by another process"),
            "{err}"
        );
        other.execute_batch("ROLLBACK").unwrap();
        l.insert_call(&rec("u", 1, 0.1, true)).unwrap();
        assert_eq!(l.count_calls().unwrap(), 1);
    }

    #[test]
    fn corrupt_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.sqlite3");
        std::fs::write(
            &p,
            b"this is definitely not a sqlite database, just some text .....",
        )
        .unwrap();
        let err = Ledger::open(&p).err().unwrap().to_string();
        assert!(err.contains("damaged or not a database"), "{err}");
    }

    #[test]
    fn prune_removes_old_rows() {
        let (_d, l) = ledger();
        l.insert_call(&rec("u", 10, 0.1, true)).unwrap();
        l.insert_call(&rec("u", 5000, 0.1, true)).unwrap();
        assert_eq!(l.prune(1000).unwrap(), 1);
        assert_eq!(l.count_calls().unwrap(), 1);
    }
}
