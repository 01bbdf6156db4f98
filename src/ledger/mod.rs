//! The ledger: every call's real cost in a local SQLite file, behind one
//! narrow type.
//!
//! Invariants:
//! - Money is integer nano-dollars ([`to_nanos`]), so sums are exact.
//! - Writes are single transactions in WAL mode. A call whose result
//!   reached the client is committed: it survives the process being killed
//!   at any instant. How soon a commit also survives a power cut is the
//!   [`Durability`] setting: at once (`full`, an fsync per commit) or within
//!   [`SYNC_INTERVAL`] (`batched`, the default: a background thread fsyncs
//!   the WAL, so the per-call write path pays no fsync).
//! - Budget reservations are taken inside `BEGIN IMMEDIATE`, so two
//!   processes or tasks cannot both pass a nearly spent budget.
//! - Schema changes are numbered files in `migrations/`, applied in order
//!   and tracked by `PRAGMA user_version`.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use schemars::JsonSchema;
use serde::Serialize;

mod analytics;
mod feedback;
mod group_commit;
mod keys;
mod owners;
pub use analytics::{
    BANDS, BandStat, Breakdown, CallRow, DayProvider, Snapshot, SnapshotRequest, TokenMix,
};
pub use feedback::{FEEDBACK_WINDOW, FeedbackCall, HistoryCall};
pub use keys::{ApiKeyRow, KeyReader};

/// Schema migrations, in order. Append only; never edit a released one.
const MIGRATIONS: &[&str] = &[
    include_str!("migrations/0001_init.sql"),
    include_str!("migrations/0002_budget_scopes_and_alerts.sql"),
    include_str!("migrations/0003_analytics_indexes.sql"),
    include_str!("migrations/0004_reservation_owner.sql"),
    include_str!("migrations/0005_feedback.sql"),
    include_str!("migrations/0006_api_keys.sql"),
    include_str!("migrations/0007_leaner_call_indexes.sql"),
    include_str!("migrations/0008_unindexed_reservations.sql"),
    include_str!("migrations/0009_rollup_by_user.sql"),
    include_str!("migrations/0010_priced_token_mix.sql"),
    include_str!("migrations/0011_call_preference.sql"),
];

/// The scope of the global budget, which caps every user together.
pub const GLOBAL_SCOPE: &str = "*";

/// The budget columns `budget_row` reads, as a literal so each query is
/// built at compile time (`budget` runs on every call: no `format!` there).
macro_rules! budget_select {
    () => {
        "SELECT user_id, limit_nanos, period, thresholds, mode, timezone, webhook_url, \
         webhook_format FROM budgets"
    };
}

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
        "cannot use the data directory {dir}: {detail}{} (set COST_OPTIMIZER_DATA_DIR to a writable directory)",
        .file.as_ref().map(|f| format!(" (ledger file {})", f.display())).unwrap_or_default()
    )]
    Storage {
        /// The data directory.
        dir: PathBuf,
        /// The ledger file, when the failure was on it rather than on the
        /// directory itself.
        file: Option<PathBuf>,
        /// The OS or SQLite error.
        detail: String,
    },
    /// The ledger was opened read-only (the data directory or the file is
    /// not writable by this user) and something tried to write.
    #[error(
        "the ledger at {path} is read-only ({reason}): usage reports work, but calls that spend money and budget changes are refused, since their cost could not be recorded. Make {dir} and the files in it writable by this user, or set COST_OPTIMIZER_DATA_DIR to a writable directory"
    )]
    ReadOnly {
        /// The ledger file.
        path: PathBuf,
        /// Its directory.
        dir: PathBuf,
        /// Why it could not be opened for writing.
        reason: String,
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
    /// `provider`, `catalog`, `local`, `unpriced`, or `estimate` (a failed
    /// attempt cut off mid-answer, priced from the usage it reported).
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
    /// The preference that routed the call (`cost` or `quality`); `None`
    /// for a call routing did not decide (speech).
    pub prefer: Option<String>,
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

/// The tier recorded for speech (Cartesia reading an answer aloud): not a
/// routed answer, so reports keep it apart.
pub const SPEECH_TIER: &str = "speech";

/// Totals over a set of calls.
#[derive(Debug, Clone, Default, PartialEq, Serialize, JsonSchema)]
pub struct Totals {
    /// Successful calls (answers; speech is not counted as a call).
    pub calls: u64,
    /// Failed attempts.
    pub failed_attempts: u64,
    /// Spend, USD.
    pub cost_usd: f64,
    /// What the always-premium baseline would have cost, USD.
    pub baseline_cost_usd: f64,
    /// Input tokens of answers (cached included; speech's characters are
    /// not tokens and are left out).
    pub input_tokens: u64,
    /// Output tokens of answers.
    pub output_tokens: u64,
    /// Calls whose cost is unknown (recorded as $0).
    pub unpriced_calls: u64,
    /// Speech spend, USD, included in `cost_usd`: the always-premium
    /// baseline covers answers only, so savings leave it out.
    pub speech_cost_usd: f64,
}

impl Totals {
    /// What the baseline would have cost minus what the answers cost
    /// (speech left out, failed attempts in); `None` when answers were
    /// recorded without a baseline (its model unpriced), or nothing but
    /// speech. With no answer at all the baseline is truly $0, and failed
    /// attempts' cost is a loss.
    pub fn savings_usd(&self) -> Option<f64> {
        let answers_cost = self.cost_usd - self.speech_cost_usd;
        (self.baseline_cost_usd > 0.0 || (self.calls == 0 && answers_cost > 0.0))
            .then_some(self.baseline_cost_usd - answers_cost)
    }
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
            GroupBy::Tier => {
                "CASE WHEN provider = 'cartesia' THEN 'speech' ELSE coalesce(tier, 'forced') END"
            }
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

/// How soon a committed write is also safe from a power cut.
///
/// Both modes keep every commit safe from a crash of the process (SIGKILL,
/// panic, OOM): SQLite has handed the WAL frame to the kernel before the
/// commit returns. They differ only when the whole machine stops.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// `synchronous=FULL`: fsync on every commit. Nothing is lost even on a
    /// power cut, at the price of one fsync (≈0.3 ms on a VM disk, more on
    /// a laptop's) on each of the two writes of every call.
    Full,
    /// `synchronous=NORMAL` plus a background thread that fsyncs the WAL
    /// every [`SYNC_INTERVAL`] after a write: a power cut may lose the
    /// calls of that last interval, never corrupts the file.
    #[default]
    Batched,
}

impl Durability {
    /// Parses `full` / `batched` (env var and config spelling).
    pub fn parse(s: &str) -> Option<Durability> {
        match s.trim().to_ascii_lowercase().as_str() {
            "full" => Some(Durability::Full),
            "batched" | "normal" => Some(Durability::Batched),
            _ => None,
        }
    }
}

/// How long, in [`Durability::Batched`] mode, a commit may wait for its
/// fsync: the most a power cut can lose.
pub const SYNC_INTERVAL: Duration = Duration::from_millis(100);

/// The `attempt` of the row [`Ledger::record_alert`] queues before an
/// alert's first delivery attempt (claims for sending again are 0, real
/// attempts 1 and up).
pub const QUEUED_ATTEMPT: i64 = -1;

/// Rows [`Ledger::prune`] deletes per transaction: a few milliseconds of
/// write lock each.
const PRUNE_BATCH: usize = 500;

/// WAL length (frames, one page each) past which the syncer makes sure
/// the WAL starts over: SQLite's own auto-checkpoint threshold.
const RESTART_FRAMES: i64 = 1000;

/// The WAL file is trimmed to this size when it starts over: it is
/// reused rather than regrown, but a burst should not leave it large.
const WAL_SIZE_LIMIT: i64 = 16 * 1024 * 1024;

/// While writes keep coming at a moderate rate, the syncer checkpoints
/// this often (between checkpoints it only fsyncs the WAL; see
/// [`Load::checkpoint_due`] for the sooner cases). Each completed
/// checkpoint makes the next write start the WAL over, and SQLite fsyncs
/// a new WAL's header in that write, under the ledger's lock, on a
/// call's path: 0.6–1.5 ms on this project's VM. Checkpointing every
/// [`SYNC_INTERVAL`] put that on 4–5 calls a second at 500 calls/s.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// Writes (holds and settlements) after which the syncer checkpoints
/// whatever [`CHECKPOINT_EVERY`] says. Under heavy load one restart's
/// fsync is shared by many calls, while a long WAL made every write and
/// the pass that holds writers off slower: checkpointing once a second
/// cost the MCP benchmark's 32 calls in flight 6 → 9–12 ms at p99 and
/// the ledger 10–20% of its throughput. 1,000 writes is about a second
/// of the HTTP proxy at 500 calls/s.
const CHECKPOINT_WRITES: u64 = 1000;

/// A WAL file past this size is checkpointed at the next round whatever
/// [`CHECKPOINT_EVERY`] says: a burst must not grow it for a whole
/// second. Twice [`WAL_SIZE_LIMIT`], since a restarted WAL keeps that
/// size and is only overwritten from its start.
const CHECKPOINT_BYTES: u64 = 2 * WAL_SIZE_LIMIT as u64;

/// The ledger. Cheap to clone; all clones share one connection.
#[derive(Clone)]
pub struct Ledger {
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
    /// This process's instance lock, named by every reservation it takes
    /// (`None` if it could not be created: holds then only expire).
    owner: Option<Arc<owners::InstanceLock>>,
    /// Writes waiting for a group commit (see [`Ledger::group_commit`]).
    queue: Arc<group_commit::CommitQueue>,
    /// Stops the background syncer when the last clone is dropped.
    _syncer: Option<Arc<SyncerHandle>>,
    /// Why the ledger is open read-only, if it is (see
    /// [`Ledger::open_or_read_only`]).
    read_only: Option<Arc<str>>,
    /// A read-only connection of its own for reports (opened on first
    /// use; see [`Ledger::snapshot`]), so a long report never holds the
    /// connection every call's hold and settlement need.
    reports: Arc<Mutex<Option<Connection>>>,
}

/// Locks a mutex whose data stays consistent even if a holder panicked
/// (queues and result slots are only pushed to and taken from).
fn lock_ignoring_poison<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Ledger {
    /// Opens (creating if needed) the ledger at `path` with the default
    /// [`Durability`], and migrates it.
    pub fn open(path: &Path) -> Result<Ledger, LedgerError> {
        Ledger::open_with(path, Durability::default())
    }

    /// Opens (creating if needed) the ledger at `path` and migrates it.
    pub fn open_with(path: &Path, durability: Durability) -> Result<Ledger, LedgerError> {
        if let Some(dir) = path.parent() {
            create_private_dir(dir)?;
        }
        let conn = Connection::open(path).map_err(|e| classify(path, e))?;
        restrict_permissions(path);
        let mut ledger = Ledger {
            conn: Arc::new(Mutex::new(conn)),
            path: path.to_path_buf(),
            owner: None,
            queue: Arc::default(),
            _syncer: None,
            read_only: None,
            reports: Arc::default(),
        };
        ledger.init(durability)?;
        ledger.claim_and_sweep();
        if durability == Durability::Batched {
            // The syncer checkpoints; a writer doing it too would pay the
            // fsyncs the batched mode exists to keep off the call path.
            ledger
                .lock()
                .execute_batch("PRAGMA wal_autocheckpoint=0;")
                .map_err(|e| classify(path, e))?;
            ledger._syncer = Some(Arc::new(SyncerHandle::start(
                path,
                Arc::downgrade(&ledger.conn),
                Arc::downgrade(&ledger.queue),
            )?));
        }
        Ok(ledger)
    }

    /// Opens the ledger for writing or, when this user may not write it
    /// (a read-only data directory or file), read-only: reports keep
    /// working, and every write fails with [`LedgerError::ReadOnly`], which
    /// says why and what to do. Any other failure is returned as it is.
    pub fn open_or_read_only(path: &Path, durability: Durability) -> Result<Ledger, LedgerError> {
        // Decided up front: SQLite itself may open an unwritable file
        // "successfully" (read-only, silently), and only fail at the first
        // write, mid-call.
        if path.exists()
            && let Some(reason) = not_writable(path)
        {
            return match Ledger::open_read_only(path, &reason) {
                Ok(l) => {
                    tracing::warn!(
                        path = %path.display(),
                        reason,
                        "ledger opened read-only: reports work, spending is refused"
                    );
                    Ok(l)
                }
                Err(e) => Err(LedgerError::Storage {
                    dir: data_dir_of(path),
                    file: Some(path.to_path_buf()),
                    detail: format!("{reason}, and it cannot be opened read-only either: {e}"),
                }),
            };
        }
        let mut ledger = Ledger::open_with(path, durability)?;
        // What `access` cannot see (an ACL, a mount option it misses):
        // SQLite's own verdict after the open.
        let read_only = ledger
            .lock()
            .is_readonly(rusqlite::MAIN_DB)
            .unwrap_or(false);
        if read_only {
            tracing::warn!(path = %path.display(), "SQLite opened the ledger read-only");
            ledger.read_only = Some("SQLite could open the file only for reading".into());
        }
        Ok(ledger)
    }

    /// Opens an existing ledger read-only; `reason` says why not for
    /// writing.
    ///
    /// A WAL database opened read-only needs its `-shm` file, which a
    /// reader in a directory it cannot write can neither create nor, if the
    /// last writer removed it at exit, find. So: `mode=ro` first (it works
    /// while the `-wal`/`-shm` files exist, e.g. a writer is running or
    /// crashed); failing that, and only when there is no `-wal` file with
    /// commits that are not in the main file yet, `immutable=1`, which
    /// reads the main file without locks or shared memory. Immutable reads
    /// assume nobody writes the file meanwhile: reports could then be
    /// stale, never wrong about what was read.
    pub fn open_read_only(path: &Path, reason: &str) -> Result<Ledger, LedgerError> {
        use rusqlite::OpenFlags;
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let check = |conn: Connection| -> Result<Connection, LedgerError> {
            let version: i64 = conn
                .query_row("PRAGMA user_version", [], |r| r.get(0))
                .map_err(|e| classify(path, e))?;
            conn.query_row("SELECT count(*) FROM calls_daily LIMIT 1", [], |_| Ok(()))
                .map_err(|e| classify(path, e))?;
            if usize::try_from(version).ok() != Some(MIGRATIONS.len()) {
                return Err(LedgerError::Sqlite(format!(
                    "the ledger at {} has schema {version}, this version needs {}, and it cannot be migrated while read-only",
                    path.display(),
                    MIGRATIONS.len()
                )));
            }
            Ok(conn)
        };
        #[cfg(unix)]
        let conn = {
            let ro = Connection::open_with_flags(sqlite_uri(path, "mode=ro"), flags)
                .map_err(|e| classify(path, e))
                .and_then(check);
            match ro {
                Ok(c) => c,
                Err(first) => {
                    let wal = wal_path(path);
                    let wal_has_commits = std::fs::metadata(&wal).is_ok_and(|m| m.len() > 0);
                    if wal_has_commits {
                        return Err(first);
                    }
                    Connection::open_with_flags(sqlite_uri(path, "mode=ro&immutable=1"), flags)
                        .map_err(|e| classify(path, e))
                        .and_then(check)?
                }
            }
        };
        #[cfg(not(unix))]
        let conn = Connection::open_with_flags(path, flags)
            .map_err(|e| classify(path, e))
            .and_then(check)?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| classify(path, e))?;
        Ok(Ledger {
            conn: Arc::new(Mutex::new(conn)),
            path: path.to_path_buf(),
            owner: None,
            queue: Arc::default(),
            _syncer: None,
            read_only: Some(reason.into()),
            reports: Arc::default(),
        })
    }

    /// `Ok` if the ledger can be written; the read-only error otherwise.
    /// Callers that are about to spend money check this first, so the
    /// refusal comes before anything else happens.
    pub fn ensure_writable(&self) -> Result<(), LedgerError> {
        match &self.read_only {
            None => Ok(()),
            Some(reason) => Err(LedgerError::ReadOnly {
                path: self.path.clone(),
                dir: data_dir_of(&self.path),
                reason: reason.to_string(),
            }),
        }
    }

    /// Takes this process's instance lock, then releases the holds of
    /// processes that died mid-call (see `owners`). Neither step is fatal:
    /// without them holds still expire after their TTL.
    fn claim_and_sweep(&mut self) {
        let dir = owners::owners_dir(&self.path);
        match owners::acquire(&dir) {
            Ok(lock) => self.owner = Some(Arc::new(lock)),
            Err(e) => tracing::warn!(
                dir = %dir.display(),
                error = %e,
                "cannot create an instance lock; this process's reservations will only expire"
            ),
        }
        let me = self.owner.as_ref().map(|o| o.id.as_str());
        match owners::release_dead(&self.lock(), &dir, me) {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                released = n,
                "released reservations left by processes that are no longer running"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "could not release reservations of dead processes")
            }
        }
    }

    /// Releases the holds of processes that are no longer running (their
    /// instance lock is free), as start-up does. A long-running server
    /// calls it when a hold is refused: a process killed mid-call (a CLI
    /// `complete` stopped with Ctrl-C, a crashed server) would otherwise
    /// keep its worst case held against the budget until the hold's TTL.
    pub fn release_dead_holds(&self) -> Result<usize, LedgerError> {
        self.ensure_writable()?;
        let dir = owners::owners_dir(&self.path);
        let me = self.owner.as_ref().map(|o| o.id.as_str());
        owners::release_dead(&self.lock(), &dir, me).map_err(|e| self.err(e))
    }

    /// Id of this process's instance lock, as stored in
    /// `reservations.owner` (tests and diagnostics).
    pub fn instance_id(&self) -> Option<&str> {
        self.owner.as_ref().map(|o| o.id.as_str())
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

    /// Makes every later write of a call row fail on this ledger's write
    /// connection, as a full disk or a lock held too long would: for tests
    /// of what callers do when a settlement fails.
    #[cfg(test)]
    pub(crate) fn fail_call_writes(&self) {
        self.lock()
            .execute_batch(
                "CREATE TEMP TRIGGER fail_call_writes BEFORE INSERT ON main.calls
                 BEGIN SELECT RAISE(ABORT, 'injected write failure'); END",
            )
            .expect("the failure trigger");
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave a half-written row:
        // SQLite rolls back the open transaction, so the poisoned guard is safe.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn err(&self, e: rusqlite::Error) -> LedgerError {
        // On a read-only ledger every write fails with SQLITE_READONLY:
        // say why it is read-only rather than just that it is.
        if self.read_only.is_some()
            && e.sqlite_error_code() == Some(rusqlite::ffi::ErrorCode::ReadOnly)
            && let Err(ro) = self.ensure_writable()
        {
            return ro;
        }
        classify(&self.path, e)
    }

    fn init(&self, durability: Durability) -> Result<(), LedgerError> {
        let mut conn = self.lock();
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| classify(&self.path, e))?;
        // journal_mode returns a row; query it rather than execute.
        // Switching a new file to WAL needs an exclusive lock, and SQLite
        // answers BUSY at once instead of calling the busy handler when
        // another connection is doing the same (processes starting together
        // on a fresh ledger), so wait here, as the busy timeout would.
        let started = Instant::now();
        let mode: String = loop {
            match conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0)) {
                Err(e)
                    if e.sqlite_error_code() == Some(rusqlite::ffi::ErrorCode::DatabaseBusy)
                        && started.elapsed() < BUSY_TIMEOUT =>
                {
                    std::thread::sleep(Duration::from_millis(2));
                }
                r => break r.map_err(|e| classify(&self.path, e))?,
            }
        };
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(mode, "ledger could not switch to WAL mode");
        }
        let sync = match durability {
            Durability::Full => "FULL",
            Durability::Batched => "NORMAL",
        };
        conn.execute_batch(&format!(
            "PRAGMA synchronous={sync}; PRAGMA foreign_keys=ON; \
             PRAGMA journal_size_limit={WAL_SIZE_LIMIT};"
        ))
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
            // Another process may have applied this migration while we
            // waited for the write lock (two servers starting together on a
            // ledger that needs migrating): the version read above is stale,
            // so read it again under the lock and skip what is done.
            let now_at: i64 = tx
                .query_row("PRAGMA user_version", [], |r| r.get(0))
                .map_err(|e| classify(&self.path, e))?;
            if usize::try_from(now_at).unwrap_or(0) > i {
                continue;
            }
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
    ///
    /// Group-committed (see `group_commit.rs`): concurrent writes share one
    /// transaction, and the row is committed before this returns. Blocks
    /// the thread while a batch runs; tasks use [`Ledger::settle_async`].
    pub fn settle(&self, reservation: ReservationId, rec: &CallRecord) -> Result<i64, LedgerError> {
        self.ensure_writable()?;
        settled(self.group_commit(settle_op(reservation, rec)))
    }

    /// [`Ledger::settle`] without blocking the runtime worker while
    /// another caller's batch commits, so concurrent calls' writes batch.
    ///
    /// Cancel-safe: dropping the future never loses the row, which is
    /// queued before the first await and committed whether or not anyone
    /// is left to hear about it.
    pub async fn settle_async(
        &self,
        reservation: ReservationId,
        rec: &CallRecord,
    ) -> Result<i64, LedgerError> {
        self.ensure_writable()?;
        settled(self.group_commit_async(settle_op(reservation, rec)).await)
    }

    /// How many group commits ran in this process, and how many writes
    /// (holds and settlements) they held: writes per commit is what
    /// batching buys under concurrency (`benches/ledger.rs` prints it).
    pub fn commit_stats(&self) -> (u64, u64) {
        let st = lock_ignoring_poison(&self.queue.state);
        (st.batches, st.ops)
    }

    /// Holds `amount_nanos` for `user_id` if, for every check, settled
    /// spend in the check's scope since its period start plus live
    /// reservations in that scope plus the amount stays within its limit.
    /// All checks and the insert happen in one `BEGIN IMMEDIATE`
    /// transaction, so concurrent callers (tasks or processes) serialise.
    /// Blocks the thread while a batch runs; tasks use
    /// [`Ledger::reserve_async`].
    pub fn reserve(
        &self,
        user_id: &str,
        checks: &[LimitCheck],
        amount_nanos: i64,
        now_ms: i64,
        ttl: Duration,
    ) -> Result<Result<ReservationId, Overspend>, LedgerError> {
        self.ensure_writable()?;
        reserved_answer(self.group_commit(reserve_op(user_id, checks, amount_nanos, now_ms, ttl)))
    }

    /// [`Ledger::reserve`] without blocking the runtime worker while
    /// another caller's batch commits.
    ///
    /// Cancel-safe: if the future is dropped before it returns, a hold
    /// granted meanwhile is released, never left to expire.
    pub async fn reserve_async(
        &self,
        user_id: &str,
        checks: &[LimitCheck],
        amount_nanos: i64,
        now_ms: i64,
        ttl: Duration,
    ) -> Result<Result<ReservationId, Overspend>, LedgerError> {
        self.ensure_writable()?;
        let op = reserve_op(user_id, checks, amount_nanos, now_ms, ttl);
        reserved_answer(self.group_commit_async(op).await)
    }

    /// Records that `threshold` was crossed in `scope`'s period starting at
    /// `period_start_ms` under a limit of `limit_nanos`. Returns the alert's
    /// id, or `None` if this crossing was already recorded (so it must not
    /// be sent again).
    ///
    /// A crossing is one per period, threshold *and limit*: after the limit
    /// changes mid-period, a threshold crossed under the old limit fires
    /// again when crossed under the new one (raising $10 to $100 after
    /// 100% of $10 was reached must still warn at $50, $80 and $100). The
    /// row is then updated to the new crossing and keeps its id, so its
    /// deliveries stay together.
    // One row's columns and its channels: a struct for one call site
    // would only rename them.
    #[allow(clippy::too_many_arguments)]
    pub fn record_alert(
        &self,
        scope: &str,
        period_start_ms: i64,
        threshold: f64,
        spent_nanos: i64,
        limit_nanos: i64,
        now_ms: i64,
        channels: &[&str],
    ) -> Result<Option<i64>, LedgerError> {
        let mut conn = self.lock();
        let write = |conn: &mut Connection| -> rusqlite::Result<Option<i64>> {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let id: Option<i64> = tx
                .prepare_cached(
                    // Only under the budget's limit as it stands: a call that
                    // read the budget before a change (set_budget re-arming
                    // alerts meanwhile) must not record, or re-send, under
                    // the old one. A scope with no budget row has the
                    // configured default.
                    "INSERT INTO alerts (scope, period_start_ms, threshold, spent_nanos, limit_nanos, created_ms)
                     SELECT ?1, ?2, ?3, ?4, ?5, ?6
                     WHERE coalesce((SELECT limit_nanos FROM budgets WHERE user_id = ?1), ?5) = ?5
                     ON CONFLICT (scope, period_start_ms, threshold) DO UPDATE SET
                       spent_nanos = excluded.spent_nanos, limit_nanos = excluded.limit_nanos,
                       created_ms = excluded.created_ms
                     WHERE alerts.limit_nanos <> excluded.limit_nanos
                     RETURNING id",
                )?
                .query_row(
                    params![scope, period_start_ms, threshold, spent_nanos, limit_nanos, now_ms],
                    |r| r.get(0),
                )
                .optional()?;
            // Its deliveries are queued in the same commit: recorded alone,
            // an alert whose process died (or whose queueing failed) before
            // its first attempt was never sent, nor found again to resend.
            if let Some(id) = id {
                for channel in channels {
                    queue_delivery_in(&tx, id, channel, now_ms)?;
                }
            }
            tx.commit()?;
            Ok(id)
        };
        write(&mut conn).map_err(|e| self.err(e))
    }

    /// Writes budget `b` and, in the same transaction, carries its alerts
    /// over: those recorded for the period that started at `old_start_ms`
    /// under the old limit (`old_limit_nanos`) whose threshold is still
    /// crossed (`crossed`, read under the new settings) move to the period
    /// as the budget now counts it (`new_start_ms`: a new time zone or
    /// period kind) with the new limit, so they are not sent again. The
    /// others stay where they were: a threshold the change put out of
    /// reach fires again when it is crossed anew. One transaction, so a
    /// call reading the new budget never finds the alerts not yet carried.
    pub fn set_budget_carrying_alerts(
        &self,
        b: &BudgetRow,
        now_ms: i64,
        old_start_ms: i64,
        new_start_ms: i64,
        crossed: &[f64],
        old_limit_nanos: i64,
    ) -> Result<(), LedgerError> {
        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.err(e))?;
        self.write_budget(&tx, b, now_ms)?;
        for t in crossed {
            tx.execute(
                "UPDATE OR IGNORE alerts SET period_start_ms = ?3, limit_nanos = ?5
                 WHERE scope = ?1 AND period_start_ms = ?2 AND abs(threshold - ?4) < 1e-9
                   AND limit_nanos = ?6",
                params![
                    b.user_id,
                    old_start_ms,
                    new_start_ms,
                    t,
                    b.limit_nanos,
                    old_limit_nanos
                ],
            )
            .map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))
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

    /// Whether the `threshold` alert of `scope`'s period starting at
    /// `period_start_ms` was recorded under the limit `limit_nanos` (a
    /// refused call can fire the 100% alert before spend reaches it).
    pub fn alerted(
        &self,
        scope: &str,
        period_start_ms: i64,
        threshold: f64,
        limit_nanos: i64,
    ) -> Result<bool, LedgerError> {
        let conn = self.lock();
        conn.prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM alerts WHERE scope = ?1 AND period_start_ms = ?2
               AND abs(threshold - ?3) < 1e-9 AND limit_nanos = ?4)",
        )
        .and_then(|mut st| {
            st.query_row(
                params![scope, period_start_ms, threshold, limit_nanos],
                |r| r.get(0),
            )
        })
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
            .query_map(params![scope, limit], read_alert)
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }

    /// Alerts created since `since_ms` whose delivery on `channel`
    /// (`webhook`, `email`) failed and never succeeded, oldest first: a
    /// round of `round` attempts ended, or its last attempt (or the row
    /// [`Ledger::record_alert`] queued before the first) was before
    /// `quiet_before_ms`: a process that stopped mid-round, or before its
    /// first attempt. Only the attempts since the alert was (re-)created
    /// count: a re-armed alert keeps its id. For sending again, when a
    /// server starts and then every few minutes; claim each with
    /// [`Ledger::claim_redelivery`] first.
    pub fn undelivered_alerts(
        &self,
        channel: &str,
        since_ms: i64,
        quiet_before_ms: i64,
        round: u32,
    ) -> Result<Vec<AlertRow>, LedgerError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached(
                "SELECT a.id, a.scope, a.period_start_ms, a.threshold, a.spent_nanos, a.limit_nanos,
                        a.created_ms
                 FROM alerts a
                 JOIN (SELECT d.alert_id, max(d.ok) AS delivered, max(d.ts_ms) AS last_ms,
                              max(d.attempt) AS attempts
                       FROM alert_deliveries d JOIN alerts x ON x.id = d.alert_id
                       WHERE d.channel = ?1 AND d.ts_ms >= x.created_ms
                       GROUP BY d.alert_id) d
                   ON d.alert_id = a.id
                 WHERE a.created_ms >= ?2 AND NOT d.delivered
                   AND (d.attempts >= ?4 OR d.last_ms < ?3)
                 ORDER BY a.id",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(
                params![channel, since_ms, quiet_before_ms, round],
                read_alert,
            )
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }

    /// Claims alert `alert_id`'s redelivery on `channel` for this process:
    /// false if another claimed it since `since_ms` (two servers starting
    /// together send it once). The claim is a delivery row of attempt 0.
    pub fn claim_redelivery(
        &self,
        alert_id: i64,
        channel: &str,
        since_ms: i64,
        now_ms: i64,
    ) -> Result<bool, LedgerError> {
        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.err(e))?;
        let taken: bool = tx
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM alert_deliveries
                   WHERE alert_id = ?1 AND channel = ?2 AND attempt = 0 AND ts_ms >= ?3)",
                params![alert_id, channel, since_ms],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))?;
        if taken {
            return Ok(false);
        }
        tx.execute(
            "INSERT INTO alert_deliveries (alert_id, channel, target, attempt, ok, status, error, ts_ms)
             VALUES (?1, ?2, NULL, 0, 0, NULL, 'claimed for sending again', ?3)",
            params![alert_id, channel, now_ms],
        )
        .map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))?;
        Ok(true)
    }

    /// Delivery attempts of one alert, in order.
    pub fn deliveries(&self, alert_id: i64) -> Result<Vec<DeliveryRow>, LedgerError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached(
                // Attempt 0 is a redelivery's claim, not a delivery.
                "SELECT alert_id, channel, target, attempt, ok, status, error FROM alert_deliveries
                 WHERE alert_id = ?1 AND attempt > 0 ORDER BY id",
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

    /// Settled spend since each scope's period start and its live
    /// reservations, nano-dollars, for several scopes from one read
    /// transaction: one consistent snapshot, and one transaction's locking
    /// instead of three statements' worth per scope (a call reads its
    /// user's and the global budget before and after it runs).
    pub fn standings(
        &self,
        scopes: &[(&str, i64)],
        now_ms: i64,
    ) -> Result<Vec<(i64, i64)>, LedgerError> {
        let conn = self.lock();
        let read = || -> rusqlite::Result<Vec<(i64, i64)>> {
            let tx = conn.unchecked_transaction()?;
            let out = scopes
                .iter()
                .map(|(scope, since)| {
                    Ok((spent(&tx, scope, *since)?, reserved(&tx, scope, now_ms)?))
                })
                .collect::<rusqlite::Result<Vec<_>>>()?;
            tx.commit()?;
            Ok(out)
        };
        read().map_err(|e| self.err(e))
    }

    /// Live reservations of `user_id`, nano-dollars.
    pub fn reserved_now(&self, user_id: &str, now_ms: i64) -> Result<i64, LedgerError> {
        reserved(&self.lock(), user_id, now_ms).map_err(|e| self.err(e))
    }

    /// The stored budget of `user_id`, if any.
    pub fn budget(&self, user_id: &str) -> Result<Option<BudgetRow>, LedgerError> {
        let conn = self.lock();
        // Cached: every call reads its budgets, and preparing this statement
        // anew each time was 5 % of a `complete_prompt`'s CPU.
        conn.prepare_cached(concat!(budget_select!(), " WHERE user_id = ?1"))
            .and_then(|mut stmt| stmt.query_row([user_id], budget_row).optional())
            .map_err(|e| self.err(e))
    }

    /// Every stored budget (users' and the global one).
    pub fn budget_rows(&self) -> Result<Vec<BudgetRow>, LedgerError> {
        let conn = self.lock();
        conn.prepare(concat!(budget_select!(), " ORDER BY user_id"))
            .and_then(|mut stmt| stmt.query_map([], budget_row)?.collect())
            .map_err(|e| self.err(e))
    }

    /// Creates or replaces a budget.
    pub fn set_budget(&self, b: &BudgetRow, now_ms: i64) -> Result<(), LedgerError> {
        self.write_budget(&self.lock(), b, now_ms)
    }

    /// Inserts or replaces budget `b` on `conn` (a transaction, or not).
    fn write_budget(
        &self,
        conn: &Connection,
        b: &BudgetRow,
        now_ms: i64,
    ) -> Result<(), LedgerError> {
        let thresholds =
            serde_json::to_string(&b.thresholds).map_err(|e| LedgerError::Sqlite(e.to_string()))?;
        conn.execute(
            SET_BUDGET_SQL,
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
        let sql = format!(
            "SELECT {TOTALS_COLUMNS} FROM calls WHERE {}",
            where_range(user_id)
        );
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
            "SELECT {key}, {TOTALS_COLUMNS} FROM calls WHERE {} GROUP BY 1 ORDER BY {order}",
            where_range(user_id)
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
    ///
    /// In batches of [`PRUNE_BATCH`] rows, each its own transaction, with
    /// a pause between them: one DELETE of a year of calls held the write
    /// lock for seconds, and a server settling a paid call meanwhile gave
    /// up after its busy timeout, so the call's cost was never recorded.
    pub fn prune(&self, before_ms: i64) -> Result<u64, LedgerError> {
        let mut total = 0u64;
        loop {
            let t0 = Instant::now();
            let n = self
                .lock()
                .prepare_cached(
                    "DELETE FROM calls WHERE id IN
                     (SELECT id FROM calls WHERE ts_ms < ?1 LIMIT ?2)",
                )
                .and_then(|mut st| st.execute(params![before_ms, PRUNE_BATCH]))
                .map_err(|e| self.err(e))?;
            total += n as u64;
            if n < PRUNE_BATCH {
                return Ok(total);
            }
            // Other writers (this process's calls, other processes) get
            // the lock between batches: as long as a batch held it, so a
            // busy handler polling every few ms finds it free half the time.
            std::thread::sleep(t0.elapsed().max(Duration::from_millis(2)));
        }
    }

    /// Whether `user` is someone this ledger knows: a budget, an API key
    /// or a recorded call of theirs.
    pub fn knows_user(&self, user: &str) -> Result<bool, LedgerError> {
        self.lock()
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM budgets WHERE user_id = ?1)
                     OR EXISTS (SELECT 1 FROM api_keys WHERE user_id = ?1)
                     OR EXISTS (SELECT 1 FROM calls WHERE user_id = ?1)",
                [user],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))
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

fn budget_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<BudgetRow> {
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
}

const TOTALS_COLUMNS: &str = "
    count(*) FILTER (WHERE outcome = 'ok' AND provider != 'cartesia'),
    count(*) FILTER (WHERE outcome = 'error'),
    coalesce(sum(cost_nanos), 0),
    coalesce(sum(baseline_cost_nanos) FILTER (WHERE outcome = 'ok'), 0),
    coalesce(sum(input_tokens + cache_read_tokens + cache_write_tokens)
        FILTER (WHERE provider != 'cartesia'), 0),
    coalesce(sum(output_tokens) FILTER (WHERE provider != 'cartesia'), 0),
    count(*) FILTER (WHERE outcome = 'ok' AND cost_source = 'unpriced'),
    coalesce(sum(cost_nanos) FILTER (WHERE provider = 'cartesia'), 0)";

/// The time range `[?1, ?2)` and, when `user` is given, its calls only
/// (`?3`). Two texts, not `(?3 IS NULL OR user_id = ?3)`: SQLite plans a
/// statement once, and with that OR it could not use the per-user index
/// for one user's report (226 ms instead of 8 over a million calls).
fn where_range(user: Option<&str>) -> &'static str {
    match user {
        Some(_) => "ts_ms >= ?1 AND ts_ms < ?2 AND user_id = ?3",
        None => "ts_ms >= ?1 AND ts_ms < ?2 AND ?3 IS NULL",
    }
}

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
        speech_cost_usd: to_usd(r.get(at + 7)?),
    })
}

/// Records that `alert_id` is about to be sent on `channel`, before its
/// first attempt: a process killed before that attempt ends (a POST can
/// take seconds) would otherwise leave no trace, and the alert would never
/// be sent. The row is attempt -1 ([`QUEUED_ATTEMPT`]): not an attempt
/// ([`Ledger::deliveries`] leaves it out) and not a redelivery claim
/// (attempt 0), but it dates the delivery, so other processes leave it
/// alone for a while ([`Ledger::undelivered_alerts`]). Written in the
/// commit of [`Ledger::record_alert`].
fn queue_delivery_in(
    conn: &Connection,
    alert_id: i64,
    channel: &str,
    now_ms: i64,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO alert_deliveries (alert_id, channel, target, attempt, ok, status, error, ts_ms)
         VALUES (?1, ?2, NULL, ?4, 0, NULL, 'queued for sending', ?3)",
    )?
    .execute(params![alert_id, channel, now_ms, QUEUED_ATTEMPT])
    .map(|_| ())
}

/// The group-commit op of [`Ledger::settle`].
fn settle_op(reservation: ReservationId, rec: &CallRecord) -> group_commit::Op {
    group_commit::Op::Settle {
        reservation,
        rec: Box::new(rec.clone()),
    }
}

/// The group-commit op of [`Ledger::reserve`].
fn reserve_op(
    user_id: &str,
    checks: &[LimitCheck],
    amount_nanos: i64,
    now_ms: i64,
    ttl: Duration,
) -> group_commit::Op {
    group_commit::Op::Reserve {
        user_id: user_id.to_string(),
        checks: checks.to_vec(),
        amount_nanos,
        now_ms,
        ttl,
    }
}

/// A settlement's answer (any other kind is a bug, reported as an error).
fn settled(done: group_commit::Done) -> Result<i64, LedgerError> {
    match done {
        group_commit::Done::Settled(r) => r,
        _ => Err(LedgerError::Sqlite(
            "internal error: a settlement was answered as another write".into(),
        )),
    }
}

/// A hold's answer (any other kind is a bug, reported as an error).
fn reserved_answer(
    done: group_commit::Done,
) -> Result<Result<ReservationId, Overspend>, LedgerError> {
    match done {
        group_commit::Done::Reserved(r) => r,
        _ => Err(LedgerError::Sqlite(
            "internal error: a reservation was answered as another write".into(),
        )),
    }
}

/// Checks every budget and inserts the hold, inside the caller's
/// `BEGIN IMMEDIATE` transaction: holds earlier in the same group commit
/// count, exactly as if each had committed alone. Expired holds never
/// count (`reserved` filters them); [`drop_expired_holds`] only keeps the
/// table small.
fn hold(
    tx: &Connection,
    user_id: &str,
    checks: &[LimitCheck],
    amount_nanos: i64,
    now_ms: i64,
    ttl: Duration,
    owner: Option<&str>,
) -> rusqlite::Result<Result<ReservationId, Overspend>> {
    for check in checks {
        let spent = spent(tx, &check.scope, check.since_ms)?;
        let reserved = reserved(tx, &check.scope, now_ms)?;
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
    // A random id, not the next rowid: SQLite reuses the highest id once
    // its row is deleted, and this table is nearly empty, so a call that
    // outlived its hold (a laptop suspended mid-call: the hold expired and
    // was dropped) would settle by an id another call's hold now has, and
    // delete that hold. 2^64 ids make a repeat negligible.
    tx.prepare_cached(
        "INSERT INTO reservations (id, user_id, amount_nanos, created_ms, expires_ms, owner)
         VALUES (random(), ?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        user_id,
        amount_nanos.max(0),
        now_ms,
        now_ms.saturating_add(ttl_ms),
        owner
    ])?;
    Ok(Ok(ReservationId(tx.last_insert_rowid())))
}

/// Deletes holds that expired by `now_ms` (their calls crashed or hung).
/// Once per group commit, not per hold: the table is scanned (it has no
/// index, being only the calls in flight), and a batch of many holds
/// would otherwise scan it once each.
fn drop_expired_holds(tx: &Connection, now_ms: i64) -> rusqlite::Result<()> {
    tx.prepare_cached("DELETE FROM reservations WHERE expires_ms <= ?1")?
        .execute([now_ms])
        .map(|_| ())
}

fn insert(conn: &Connection, rec: &CallRecord) -> rusqlite::Result<i64> {
    let tok = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    conn.prepare_cached(
        "INSERT INTO calls (ts_ms, user_id, request_id, attempt, provider, model, tier, score,
            input_tokens, cache_read_tokens, cache_write_tokens, output_tokens, reasoning_tokens,
            cost_nanos, cost_source, baseline_cost_nanos, latency_ms, outcome, error_kind,
            error_message, forced, prompt_sha256, prompt_text, prefer)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18,
            ?19, ?20, ?21, ?22, ?23, ?24)",
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
        // The last stop before the file: no key in an error gets in.
        rec.error_message.as_deref().map(crate::secrets::redact),
        rec.forced,
        rec.prompt_sha256,
        rec.prompt_text,
        rec.prefer,
    ])?;
    Ok(conn.last_insert_rowid())
}

/// Settled spend of `scope` (a user, or everyone for [`GLOBAL_SCOPE`]).
///
/// Every reservation asks this, so it must not grow with the ledger: whole
/// UTC days come from the `calls_daily` rollup (a few rows per day), and
/// only the part of the first day before midnight — periods start at
/// midnight in the budget's own time zone — is summed from `calls`.
fn spent(conn: &Connection, scope: &str, since_ms: i64) -> rusqlite::Result<i64> {
    let first_day = since_ms.div_euclid(DAY_MS) + i64::from(since_ms.rem_euclid(DAY_MS) != 0);
    let edge_end = first_day.saturating_mul(DAY_MS);
    let (edge, days): (i64, i64) = if scope == GLOBAL_SCOPE {
        (
            conn.prepare_cached(
                "SELECT coalesce(sum(cost_nanos), 0) FROM calls WHERE ts_ms >= ?1 AND ts_ms < ?2",
            )?
            .query_row(params![since_ms, edge_end], |r| r.get(0))?,
            conn.prepare_cached(
                "SELECT coalesce(sum(cost_nanos), 0) FROM calls_daily WHERE day >= ?1",
            )?
            .query_row(params![first_day], |r| r.get(0))?,
        )
    } else {
        (
            conn.prepare_cached(
                "SELECT coalesce(sum(cost_nanos), 0) FROM calls
                 WHERE user_id = ?1 AND ts_ms >= ?2 AND ts_ms < ?3",
            )?
            .query_row(params![scope, since_ms, edge_end], |r| r.get(0))?,
            conn.prepare_cached(
                "SELECT coalesce(sum(cost_nanos), 0) FROM calls_daily
                 WHERE day >= ?1 AND user_id = ?2",
            )?
            .query_row(params![first_day, scope], |r| r.get(0))?,
        )
    };
    Ok(edge.saturating_add(days))
}

/// An `alerts` row selected as `id, scope, period_start_ms, threshold,
/// spent_nanos, limit_nanos, created_ms`.
fn read_alert(r: &rusqlite::Row<'_>) -> rusqlite::Result<AlertRow> {
    Ok(AlertRow {
        id: r.get(0)?,
        scope: r.get(1)?,
        period_start_ms: r.get(2)?,
        threshold: r.get(3)?,
        spent_usd: to_usd(r.get(4)?),
        limit_usd: to_usd(r.get(5)?),
        created_ms: r.get(6)?,
    })
}

/// Inserts or replaces a budget row.
const SET_BUDGET_SQL: &str =
    "INSERT INTO budgets (user_id, limit_nanos, period, thresholds, mode, updated_ms,
       timezone, webhook_url, webhook_format)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
     ON CONFLICT(user_id) DO UPDATE SET limit_nanos = excluded.limit_nanos,
       period = excluded.period, thresholds = excluded.thresholds,
       mode = excluded.mode, updated_ms = excluded.updated_ms,
       timezone = excluded.timezone, webhook_url = excluded.webhook_url,
       webhook_format = excluded.webhook_format";

/// One UTC day, the unit of the `calls_daily` rollup.
const DAY_MS: i64 = 86_400_000;

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
            dir: data_dir_of(path),
            file: Some(path.to_path_buf()),
            detail: e.to_string(),
        },
        _ => LedgerError::Sqlite(e.to_string()),
    }
}

/// The background fsync of [`Durability::Batched`]: every
/// [`SYNC_INTERVAL`] in which another connection committed, it fsyncs the
/// WAL, which makes that interval's commits power-safe. Now and then it
/// checkpoints instead (the checkpoint fsyncs the WAL before copying it
/// into the database, and the WAL is fsynced again after it for commits
/// made meanwhile): every [`CHECKPOINT_EVERY`] while writes keep coming,
/// sooner after [`CHECKPOINT_WRITES`] or once the WAL file passes
/// [`CHECKPOINT_BYTES`], and after two intervals without writes.
/// Writers never checkpoint (`wal_autocheckpoint=0`), so copying here is
/// what keeps the WAL short; doing it rarely under load keeps the fsync
/// of a restarted WAL's header (paid by the next write) off most calls.
/// Dropping the handle makes the thread checkpoint once more and exit.
///
/// Under steady load a checkpoint never catches up on its own: writers
/// keep appending while it copies, and SQLite only starts the WAL over
/// from its beginning when a write begins with every frame copied. So
/// when a checkpoint finds [`RESTART_FRAMES`] or more, the syncer
/// finishes it with this process's writers held off (it takes the
/// ledger's connection lock to copy what the first pass missed, the
/// writes made while it ran); the next write
/// restarts the WAL, and `journal_size_limit` trims the file. Without
/// this the WAL grew by about 30 KB per call for as long as calls kept
/// coming (1.2 GB in 5 s with four writers).
struct SyncerHandle {
    stop: Mutex<Option<mpsc::Sender<()>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl SyncerHandle {
    fn start(
        path: &Path,
        writer: Weak<Mutex<Connection>>,
        queue: Weak<group_commit::CommitQueue>,
    ) -> Result<SyncerHandle, LedgerError> {
        let conn = Connection::open(path).map_err(|e| classify(path, e))?;
        // NORMAL: the checkpoint itself syncs the WAL first and the
        // database after, which is all this connection is for.
        conn.execute_batch("PRAGMA synchronous=NORMAL;")
            .map_err(|e| classify(path, e))?;
        let wal = wal_path(path);
        let (tx, rx) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("ledger-sync".into())
            .spawn(move || run_syncer(conn, &wal, &writer, &queue, rx))
            .map_err(|e| LedgerError::Storage {
                dir: data_dir_of(path),
                file: Some(path.to_path_buf()),
                detail: format!("cannot start the ledger sync thread: {e}"),
            })?;
        Ok(SyncerHandle {
            stop: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
        })
    }
}

impl Drop for SyncerHandle {
    fn drop(&mut self) {
        // Closing the channel wakes the thread for its final sync.
        drop(self.stop.lock().unwrap_or_else(|e| e.into_inner()).take());
        if let Some(t) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = t.join();
        }
    }
}

/// The WAL file SQLite keeps beside `db`. SQLite opens a symlinked
/// database at its target and keeps the WAL there, so the path is resolved
/// first: `<link>-wal` does not exist, and syncing it would silently do
/// nothing.
fn wal_path(db: &Path) -> PathBuf {
    let db = std::fs::canonicalize(db).unwrap_or_else(|_| db.to_path_buf());
    let mut name = db.into_os_string();
    name.push("-wal");
    PathBuf::from(name)
}

fn run_syncer(
    conn: Connection,
    wal: &Path,
    writer: &Weak<Mutex<Connection>>,
    queue: &Weak<group_commit::CommitQueue>,
    stop: mpsc::Receiver<()>,
) {
    let version = |c: &Connection| -> Option<i64> {
        c.query_row("PRAGMA data_version", [], |r| r.get(0)).ok()
    };
    // None: the first round always syncs, so commits made before this
    // thread first looked (by us or another process) are covered too.
    let mut synced = None;
    // Commits synced but not yet copied into the database.
    let mut uncopied = true;
    // Rounds in a row without a commit: a checkpoint waits for two, so
    // that one slow write (a restarted WAL's header fsync on a busy disk)
    // does not look like a pause and start the WAL over again.
    let mut quiet_rounds = 0u32;
    let mut last_checkpoint = Instant::now();
    // After a checkpoint that could not copy everything (a long reader in
    // another process, a full disk), quiet rounds wait this long before
    // trying again, doubling up to a minute: an idle ledger must not
    // checkpoint, fsync and log ten times a second.
    let mut retry_wait = Duration::ZERO;
    // Group-committed writes of this process, to tell a heavy load from a
    // steady trickle.
    let writes = || {
        queue
            .upgrade()
            .map_or(0, |q| lock_ignoring_poison(&q.state).ops)
    };
    let mut writes_at_checkpoint = writes();
    // Rounds start on a 100 ms beat; one that overran (a long checkpoint)
    // is followed by a full interval, not a burst of catch-up rounds.
    let mut next_round = Instant::now() + SYNC_INTERVAL;
    loop {
        let wait = next_round.saturating_duration_since(Instant::now());
        let last_round = !matches!(stop.recv_timeout(wait), Err(RecvTimeoutError::Timeout));
        let now = version(&conn);
        // A version that cannot be read counts as a write: syncing for
        // nothing is cheap, skipping a sync is not.
        let wrote = now.is_none() || now != synced;
        quiet_rounds = if wrote { 0 } else { quiet_rounds + 1 };
        let written = writes();
        let load = Load {
            since_checkpoint: last_checkpoint.elapsed(),
            writes_since: written.saturating_sub(writes_at_checkpoint),
            wal_bytes: std::fs::metadata(wal).map_or(0, |m| m.len()),
        };
        let pause = quiet_rounds >= 2 && uncopied && load.since_checkpoint >= retry_wait;
        synced = now;
        if last_round || (wrote && load.checkpoint_due()) || pause {
            let complete = sync_wal(&conn, wal, writer);
            uncopied = !complete;
            retry_wait = match complete {
                true => Duration::ZERO,
                false => (retry_wait * 2).clamp(CHECKPOINT_EVERY, Duration::from_secs(60)),
            };
            last_checkpoint = Instant::now();
            writes_at_checkpoint = written;
            // The checkpoint synced the WAL before copying; commits made
            // while it copied are synced now, not a round later.
            let after = version(&conn);
            if after.is_none() || after != synced {
                fsync_wal(wal);
                uncopied = true;
            }
            synced = after;
        } else if wrote {
            fsync_wal(wal);
            uncopied = true;
        }
        if last_round {
            return;
        }
        next_round += SYNC_INTERVAL;
        if next_round < Instant::now() {
            next_round = Instant::now() + SYNC_INTERVAL;
        }
    }
}

/// Makes the WAL's frames power-safe without a checkpoint. Any open file
/// of it will do: an fsync flushes the file, not one descriptor's writes.
/// Opened for writing because Windows flushes only through a handle that
/// may write. A WAL that is gone (the last connection closed, and
/// checkpointed it) has nothing left to sync.
fn fsync_wal(wal: &Path) {
    match std::fs::OpenOptions::new()
        .write(true)
        .open(wal)
        .and_then(|f| f.sync_data())
    {
        Ok(()) => {
            #[cfg(test)]
            lock_ignoring_poison(&tests::FSYNCED).push(wal.to_path_buf());
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(error = %e, "ledger WAL fsync failed"),
    }
}

/// What the syncer weighs, in a round with commits, to checkpoint or only
/// fsync the WAL.
#[derive(Debug, Clone, Copy)]
struct Load {
    since_checkpoint: Duration,
    /// Writes this process group-committed since the last checkpoint.
    writes_since: u64,
    wal_bytes: u64,
}

impl Load {
    /// A checkpoint is due once a second, or sooner under a load heavy
    /// enough to share a restart's fsync among many calls, or a WAL long
    /// enough to slow every write (see [`CHECKPOINT_WRITES`]).
    fn checkpoint_due(&self) -> bool {
        self.since_checkpoint >= CHECKPOINT_EVERY
            || self.writes_since >= CHECKPOINT_WRITES
            || self.wal_bytes > CHECKPOINT_BYTES
    }
}

/// Makes every commit so far power-safe. A PASSIVE checkpoint never waits
/// for readers or writers; when they keep it from copying everything it
/// may skip the WAL fsync, so the file is then synced directly.
///
/// A checkpoint copies the frames there were when it began, so under
/// steady load there are always newer ones when the next write begins,
/// and the WAL never starts over. Once it is long, a second pass copies
/// the rest with this process's writers held off.
///
/// Returns whether the checkpoint copied every frame into the database.
fn sync_wal(conn: &Connection, wal: &Path, writer: &Weak<Mutex<Connection>>) -> bool {
    let (mut complete, log) = checkpoint(conn);
    if log >= RESTART_FRAMES
        && let Some(writer) = writer.upgrade()
    {
        // The lock may be held for a while (a long report, a write waiting
        // on another process): commits made since the first pass must not
        // wait for it to be power-safe.
        fsync_wal(wal);
        // Every in-process read and write goes through this lock, so
        // while it is held nothing here appends frames or pins an old
        // snapshot.
        let _held = writer.lock().unwrap_or_else(|e| e.into_inner());
        // Complete, this pass has synced every frame, the first pass's too.
        (complete, _) = checkpoint(conn);
    }
    if !complete {
        fsync_wal(wal);
    }
    complete
}

/// One PASSIVE checkpoint: whether it copied every frame (it has then
/// synced the WAL and the database), and how many frames the WAL holds (0
/// when unknown). Not complete — readers pinning old frames, another
/// process's checkpoint running (SQLite answers busy, -1, -1), an error —
/// the caller syncs the WAL itself.
fn checkpoint(conn: &Connection) -> (bool, i64) {
    let done = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, i64>(2)?,
        ))
    });
    match done {
        Ok((0, log, copied)) => (copied >= log, log.max(0)),
        Ok((_, log, _)) => (false, log.max(0)),
        Err(e) => {
            tracing::warn!(error = %e, "ledger checkpoint failed");
            (false, 0)
        }
    }
}

/// Creates `dir` (and parents) readable by the owner only: the ledger holds
/// what a user spent and, if they opted in, their prompts.
pub fn create_private_dir(dir: &Path) -> Result<(), LedgerError> {
    let storage = |e: std::io::Error| LedgerError::Storage {
        dir: dir.to_path_buf(),
        file: None,
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

/// The directory a ledger file lives in (the data directory).
fn data_dir_of(file: &Path) -> PathBuf {
    match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Why this user cannot write the ledger at `file`, if it cannot: the
/// directory must be writable too (SQLite creates `-wal`/`-shm` beside it).
fn not_writable(file: &Path) -> Option<String> {
    let dir = data_dir_of(file);
    if !can_write(&dir) {
        return Some(format!(
            "the data directory {} is not writable by this user",
            dir.display()
        ));
    }
    if file.exists() && !can_write(file) {
        return Some(format!(
            "the file {} is not writable by this user",
            file.display()
        ));
    }
    None
}

/// Whether this process may write `p`, as the kernel decides (`access`
/// honours the effective user, root's override and read-only mounts,
/// which mode bits alone do not tell).
#[cfg(unix)]
fn can_write(p: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(p.as_os_str().as_bytes()) else {
        return true; // a NUL in the path: let the open itself fail
    };
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call;
    // `access` only reads it.
    unsafe { libc::access(c.as_ptr(), libc::W_OK) == 0 }
}

#[cfg(not(unix))]
fn can_write(p: &Path) -> bool {
    std::fs::metadata(p).map_or(true, |m| !m.permissions().readonly())
}

/// A `file:` URI for `path` with `query`, every byte outside the
/// unreserved set percent-encoded (a `?` or `#` in a directory name would
/// otherwise end the path).
#[cfg(unix)]
fn sqlite_uri(path: &Path, query: &str) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut uri = String::from("file:");
    for &b in path.as_os_str().as_bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~".contains(&b) {
            uri.push(b as char);
        } else {
            uri.push_str(&format!("%{b:02X}"));
        }
    }
    uri.push('?');
    uri.push_str(query);
    uri
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
pub(crate) mod tests {
    use super::*;

    /// WAL files [`fsync_wal`] synced, so tests can see the syncer's
    /// fsyncs land on the right file.
    pub(super) static FSYNCED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

    /// A ledger opened through a symlink has its WAL synced where SQLite
    /// keeps it, beside the target: the syncer used to fsync
    /// `<link>-wal`, which does not exist, so commits waited for a
    /// checkpoint (a second or more) instead of 100 ms to be power-safe.
    #[cfg(unix)]
    #[test]
    fn a_symlinked_ledger_has_its_wal_synced_at_its_target() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("disk")).unwrap();
        let target = dir.path().join("disk").join("ledger.sqlite3");
        drop(Ledger::open(&target).unwrap());
        let link = dir.path().join("ledger.sqlite3");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let l = Ledger::open_with(&link, Durability::Batched).unwrap();
        l.insert_call(&rec("u", 1, 0.25, true)).unwrap();
        let mut real = std::fs::canonicalize(&target).unwrap().into_os_string();
        real.push("-wal");
        let real = PathBuf::from(real);
        assert_eq!(wal_path(&link), real);
        assert!(real.exists() && !dir.path().join("ledger.sqlite3-wal").exists());
        let started = Instant::now();
        while !lock_ignoring_poison(&FSYNCED).contains(&real) {
            assert!(
                started.elapsed() < Duration::from_secs(3),
                "the syncer never fsynced {}",
                real.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(l);
    }

    /// A budget change carries over the alerts still crossed, leaves the
    /// others behind (they fire again when crossed in the new period), and
    /// an alert recorded under a limit the budget no longer has is refused.
    #[test]
    fn budget_changes_carry_only_crossed_alerts() {
        let (_d, l) = ledger();
        let row = |limit: i64, period: &str| BudgetRow {
            user_id: "u".into(),
            limit_nanos: limit,
            period: period.into(),
            thresholds: vec![0.5, 0.8],
            mode: "warn".into(),
            timezone: "UTC".into(),
            webhook_url: None,
            webhook_format: "json".into(),
        };
        let (month, week) = (1_000, 5_000);
        l.set_budget(&row(100, "monthly"), 0).unwrap();
        assert!(
            l.record_alert("u", month, 0.5, 60, 100, 1, &[])
                .unwrap()
                .is_some()
        );
        assert!(
            l.record_alert("u", month, 0.8, 85, 100, 1, &[])
                .unwrap()
                .is_some()
        );
        // Weekly from now, same limit: 80% is still crossed this week, 50%
        // is not... (as the caller read the status) only 0.8 is carried.
        l.set_budget_carrying_alerts(&row(100, "weekly"), 2, month, week, &[0.8], 100)
            .unwrap();
        assert!(
            l.record_alert("u", week, 0.8, 85, 100, 3, &[])
                .unwrap()
                .is_none(),
            "carried"
        );
        assert!(
            l.record_alert("u", week, 0.5, 50, 100, 3, &[])
                .unwrap()
                .is_some(),
            "fires anew"
        );
        // Raised to 200 with 170 spent: 80% still crossed, carried. A call
        // that read the budget before the change records nothing (it would
        // re-send 80% under the old limit), one after it nothing either.
        l.set_budget_carrying_alerts(&row(200, "weekly"), 4, week, week, &[0.8], 100)
            .unwrap();
        let record = |t: f64, limit: i64| l.record_alert("u", week, t, 170, limit, 5, &[]).unwrap();
        assert!(record(0.8, 100).is_none(), "stale limit");
        assert!(record(0.8, 200).is_none(), "carried");
        // A threshold with no row yet, under the stale limit: not recorded.
        assert!(record(1.0, 100).is_none(), "stale limit");
        assert!(record(1.0, 200).is_some());
    }

    /// A failed delivery round is found for sending again, claimed once,
    /// and only its own attempts count (a re-armed alert keeps its id).
    #[test]
    fn failed_deliveries_are_found_and_claimed_once() {
        let (_d, l) = ledger();
        let id = l
            .record_alert("u", 0, 0.5, 60, 100, 1_000, &[])
            .unwrap()
            .unwrap();
        let attempt = |n: u32, ok: bool, ts: i64| {
            let row = DeliveryRow {
                alert_id: id,
                channel: "webhook".into(),
                target: None,
                attempt: n,
                ok,
                status: None,
                error: None,
            };
            l.record_delivery(&row, ts).unwrap();
        };
        // Delivered the first time.
        attempt(1, true, 1_100);
        assert!(l.undelivered_alerts("webhook", 0, 0, 3).unwrap().is_empty());
        // Re-armed (a new crossing under a new limit): its round fails.
        l.set_budget(
            &BudgetRow {
                user_id: "u".into(),
                limit_nanos: 200,
                period: "monthly".into(),
                thresholds: vec![0.5],
                mode: "warn".into(),
                timezone: "UTC".into(),
                webhook_url: None,
                webhook_format: "json".into(),
            },
            1_500,
        )
        .unwrap();
        assert_eq!(
            l.record_alert("u", 0, 0.5, 120, 200, 2_000, &[]).unwrap(),
            Some(id)
        );
        for n in 1..=3 {
            attempt(n, false, 2_000 + i64::from(n));
        }
        let found = l.undelivered_alerts("webhook", 0, 0, 3).unwrap();
        assert_eq!(found.len(), 1, "the earlier success is not this round's");
        assert!(l.claim_redelivery(id, "webhook", 0, 3_000).unwrap());
        assert!(
            !l.claim_redelivery(id, "webhook", 0, 3_001).unwrap(),
            "claimed once"
        );
        // The claim is no attempt.
        assert!(l.deliveries(id).unwrap().iter().all(|d| d.attempt > 0));
    }

    /// One user's report reads that user's calls through the per-user
    /// index; with `(?3 IS NULL OR user_id = ?3)` SQLite walked the whole
    /// period's calls by time.
    #[test]
    fn a_users_report_uses_the_per_user_index() {
        let (_d, l) = ledger();
        let conn = l.lock();
        let plan = |user: Option<&str>| -> String {
            let sql = format!(
                "EXPLAIN QUERY PLAN SELECT id FROM calls WHERE {} ORDER BY ts_ms DESC, id DESC LIMIT ?4",
                where_range(user)
            );
            let mut stmt = conn.prepare(&sql).unwrap();
            stmt.query_map(params![0, 1, user, 5], |r| r.get::<_, String>(3))
                .unwrap()
                .map(Result::unwrap)
                .collect::<Vec<_>>()
                .join("; ")
        };
        let mine = plan(Some("u"));
        assert!(mine.contains("calls_by_user_time"), "{mine}");
        let all = plan(None);
        assert!(!all.contains("calls_by_user"), "{all}");
        // A budget check reads one user's rollup rows, not every user's.
        let spent: Vec<String> = conn
            .prepare(
                "EXPLAIN QUERY PLAN SELECT coalesce(sum(cost_nanos), 0) FROM calls_daily
                 WHERE day >= ?1 AND user_id = ?2",
            )
            .unwrap()
            .query_map(params![0, "u"], |r| r.get::<_, String>(3))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert!(
            spent.join("; ").contains("calls_daily_by_user"),
            "{spent:?}"
        );
    }

    pub(super) fn ledger() -> (tempfile::TempDir, Ledger) {
        let dir = tempfile::tempdir().unwrap();
        let l = Ledger::open(&dir.path().join("sub").join("l.sqlite3")).unwrap();
        (dir, l)
    }

    pub(crate) fn rec(user: &str, ts: i64, cost: f64, ok: bool) -> CallRecord {
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

    /// Several processes starting together on a ledger that needs
    /// migrating (a fresh install, or the first start after an upgrade):
    /// each read the schema version before taking the write lock, so the
    /// ones that waited ran migrations already applied and failed ("table
    /// calls already exists"). Threads with their own connections race the
    /// same way; every one must open the ledger.
    #[test]
    fn concurrent_first_opens_all_succeed() {
        for round in 0..5 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join(format!("l{round}.sqlite3"));
            let n = 8;
            let gate = std::sync::Arc::new(std::sync::Barrier::new(n));
            let opened: Vec<Result<i64, String>> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..n)
                    .map(|_| {
                        let (gate, path) = (gate.clone(), path.clone());
                        s.spawn(move || {
                            gate.wait();
                            Ledger::open(&path)
                                .and_then(|l| l.schema_version())
                                .map_err(|e| e.to_string())
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            for r in opened {
                assert_eq!(r, Ok(MIGRATIONS.len() as i64), "round {round}");
            }
        }
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

    /// `standings` reads, in one transaction, exactly what `spent_since`
    /// and `reserved_now` read one statement at a time, per scope and for
    /// the global scope.
    #[test]
    fn standings_equal_the_single_reads() {
        let (_d, l) = ledger();
        l.insert_call(&rec("a", DAY_MS + 5, 0.25, true)).unwrap();
        l.insert_call(&rec("a", 3 * DAY_MS, 0.5, true)).unwrap();
        l.insert_call(&rec("b", 3 * DAY_MS + 7, 1.0, false))
            .unwrap();
        let no_limit = |scope: &str| LimitCheck {
            scope: scope.into(),
            since_ms: 0,
            limit_nanos: i64::MAX / 4,
        };
        l.reserve("a", &[no_limit("a")], 40, 10, Duration::from_secs(60))
            .unwrap()
            .unwrap();
        l.reserve("b", &[no_limit("b")], 2, 10, Duration::from_secs(60))
            .unwrap()
            .unwrap();
        let scopes = [
            ("a", DAY_MS),
            ("b", 0),
            (GLOBAL_SCOPE, DAY_MS + 6),
            ("c", 0),
        ];
        let got = l.standings(&scopes, 20).unwrap();
        let want: Vec<(i64, i64)> = scopes
            .iter()
            .map(|(s, since)| {
                (
                    l.spent_since(s, *since).unwrap(),
                    l.reserved_now(s, 20).unwrap(),
                )
            })
            .collect();
        assert_eq!(got, want);
        assert_eq!(
            got,
            vec![
                (to_nanos(0.75), 40),
                (to_nanos(1.0), 2),
                (to_nanos(1.5), 42),
                (0, 0)
            ]
        );
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
        // The next hold's commit deletes it.
        let rows = |l: &Ledger| -> i64 {
            l.lock()
                .query_row("SELECT count(*) FROM reservations", [], |r| r.get(0))
                .unwrap()
        };
        assert_eq!(rows(&l), 1);
        let r3 = reserve(0.01, 2000, ttl).unwrap();
        assert_eq!(rows(&l), 1, "the expired hold was not deleted");
        l.release(r3).unwrap();
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

    /// Two processes opening one ledger, one through a symlink: each sees
    /// the other alive, so neither releases the other's holds.
    #[test]
    fn a_ledger_opened_through_a_symlink_keeps_the_other_openers_holds() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("disk")).unwrap();
        let target = dir.path().join("disk").join("ledger.sqlite3");
        let a = Ledger::open(&target).unwrap();
        a.reserve("u", &[], 7, 1000, Duration::from_secs(3600))
            .unwrap()
            .unwrap();
        let link = dir.path().join("ledger.sqlite3");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let b = Ledger::open(&link).unwrap();
        assert_eq!(b.reserved_now("u", 2000).unwrap(), 7, "a's hold released");
        b.reserve("u", &[], 5, 1000, Duration::from_secs(3600))
            .unwrap()
            .unwrap();
        drop(Ledger::open(&target).unwrap());
        assert_eq!(a.reserved_now("u", 2000).unwrap(), 12, "b's hold released");
    }

    #[test]
    fn startup_releases_only_the_holds_of_dead_owners() {
        let (dir, a) = ledger();
        let path = dir.path().join("sub").join("l.sqlite3");
        let ttl = Duration::from_secs(3600);
        a.reserve("u", &[], 7, 1000, ttl).unwrap().unwrap();
        // A second process-like opener sees a live owner: its hold stays.
        let b = Ledger::open(&path).unwrap();
        assert_ne!(a.instance_id(), b.instance_id());
        assert_eq!(b.reserved_now("u", 2000).unwrap(), 7);
        // A hold whose owner has no lock (it died) goes on the next start.
        b.lock()
            .execute(
                "INSERT INTO reservations (user_id, amount_nanos, created_ms, expires_ms, owner)
                 VALUES ('u', 5, 1000, 999999999, 'deadbeef')",
                [],
            )
            .unwrap();
        assert_eq!(b.reserved_now("u", 2000).unwrap(), 12);
        let c = Ledger::open(&path).unwrap();
        assert_eq!(c.reserved_now("u", 2000).unwrap(), 7);
        // A closed ledger's lock file goes with it; its holds are then free
        // for the next sweep.
        drop(a);
        let lock_files = std::fs::read_dir(owners::owners_dir(&path))
            .unwrap()
            .count();
        assert_eq!(lock_files, 2, "b and c remain");
        drop(Ledger::open(&path).unwrap());
        assert_eq!(c.reserved_now("u", 2000).unwrap(), 0);
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

    /// An alert and its deliveries' "queued" rows are one commit: an alert
    /// recorded without them (its process killed between two writes) was
    /// never sent, nor found again by the next server to send it.
    #[test]
    fn an_alert_is_recorded_with_its_deliveries_queued() {
        let (_d, l) = ledger();
        let id = l
            .record_alert("u", 1000, 0.5, 5, 10, 100, &["webhook", "email"])
            .unwrap()
            .unwrap();
        for channel in ["webhook", "email"] {
            let found = l.undelivered_alerts(channel, 0, 200, 3).unwrap();
            assert_eq!(
                found.iter().map(|a| a.id).collect::<Vec<_>>(),
                [id],
                "{channel}"
            );
        }
        // Refused (another limit stands): neither the alert nor a delivery.
        let v = BudgetRow {
            user_id: "v".into(),
            limit_nanos: 99,
            period: "monthly".into(),
            thresholds: vec![0.5],
            mode: "warn".into(),
            timezone: "UTC".into(),
            webhook_url: None,
            webhook_format: "json".into(),
        };
        l.set_budget(&v, 1).unwrap();
        assert_eq!(
            l.record_alert("v", 1000, 0.5, 5, 10, 100, &["webhook"])
                .unwrap(),
            None
        );
        let rows: i64 = l
            .lock()
            .query_row("SELECT count(*) FROM alert_deliveries", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 2);
    }

    #[test]
    fn alerts_are_recorded_once_per_period_and_threshold() {
        let (_d, l) = ledger();
        let a = l.record_alert("u", 1000, 0.5, 5, 10, 1, &[]).unwrap();
        assert!(a.is_some());
        assert_eq!(l.record_alert("u", 1000, 0.5, 6, 10, 2, &[]).unwrap(), None);
        assert!(
            l.record_alert("u", 2000, 0.5, 6, 10, 3, &[])
                .unwrap()
                .is_some()
        );
        assert!(
            l.record_alert("*", 1000, 0.5, 6, 10, 3, &[])
                .unwrap()
                .is_some()
        );
        // The limit changed mid-period: the threshold is armed again for the
        // new limit, once, under the same alert id.
        assert_eq!(l.record_alert("u", 1000, 0.5, 50, 100, 4, &[]).unwrap(), a);
        assert_eq!(
            l.record_alert("u", 1000, 0.5, 60, 100, 5, &[]).unwrap(),
            None
        );
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

    /// Retention over many rows deletes in batches: a server recording a
    /// paid call meanwhile (another connection, as another process) gets
    /// the lock between them instead of timing out, and the rollup stays
    /// exact.
    #[test]
    fn a_long_prune_lets_other_writers_in() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.sqlite3");
        let l = Ledger::open(&path).unwrap();
        l.lock()
            .execute_batch(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 60000)
                 INSERT INTO calls (ts_ms, user_id, request_id, attempt, provider, model, tier,
                    input_tokens, output_tokens, cost_nanos, cost_source, latency_ms, outcome,
                    prompt_sha256)
                 SELECT i, 'u', 'r' || i, 1, 'deepseek', 'deepseek/deepseek-v3.2', 'cheap',
                    10, 5, 1000, 'catalog', 1, 'ok', 'x' FROM n;",
            )
            .unwrap();
        let other = Ledger::open(&path).unwrap();
        other.set_busy_timeout(Duration::from_millis(500)).unwrap();
        let done = std::sync::atomic::AtomicBool::new(false);
        let (pruned, recorded) = std::thread::scope(|s| {
            let pruner = s.spawn(|| {
                let n = l.prune(1_000_000).unwrap();
                done.store(true, std::sync::atomic::Ordering::SeqCst);
                n
            });
            let mut recorded = 0;
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                other
                    .insert_call(&rec("v", 2_000_000 + recorded, 0.001, true))
                    .expect("a write during retention timed out");
                recorded += 1;
                // A busy server's pace, not a tight loop (which would
                // starve the pruner instead).
                std::thread::sleep(Duration::from_millis(10));
            }
            (pruner.join().unwrap(), recorded)
        });
        assert_eq!(pruned, 60_000);
        assert!(recorded > 0);
        assert_eq!(l.count_calls().unwrap(), recorded as u64);
        assert_eq!(l.spent_since("u", 0).unwrap(), 0);
        assert_eq!(l.spent_since("v", 0).unwrap(), recorded * to_nanos(0.001));
    }

    /// `spent` reads whole days from the rollup and the first partial day
    /// from `calls`; it must equal a plain sum over `calls` for any period
    /// start, user or global, across midnights and retention deletes.
    #[test]
    fn spent_from_the_rollup_equals_a_plain_sum() {
        let (_d, l) = ledger();
        let day = DAY_MS;
        // Calls spread over five days, two users, at awkward instants.
        let mut seed: u64 = 42;
        let mut next = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            seed >> 33
        };
        for i in 0..400 {
            let ts = 10 * day + (next() % (5 * day as u64)) as i64;
            let user = if i % 3 == 0 { "a" } else { "b" };
            let cost = (next() % 1000) as f64 * 1e-6;
            l.insert_call(&rec(user, ts, cost, i % 7 != 0)).unwrap();
        }
        // Exactly at midnight, just before and after.
        for ts in [12 * day - 1, 12 * day, 12 * day + 1] {
            l.insert_call(&rec("a", ts, 0.5, true)).unwrap();
        }
        l.prune(11 * day + 3_600_000).unwrap();
        let conn = l.lock();
        let plain = |scope: &str, since: i64| -> i64 {
            conn.query_row(
                "SELECT coalesce(sum(cost_nanos), 0) FROM calls
                 WHERE ts_ms >= ?1 AND (?2 = '*' OR user_id = ?2)",
                params![since, scope],
                |r| r.get(0),
            )
            .unwrap()
        };
        let starts = [
            0,
            10 * day,
            11 * day,
            11 * day + 1,
            12 * day - 1,
            12 * day,
            12 * day + 1,
            13 * day + 7 * 3_600_000,
            16 * day,
            -5 * day - 3,
        ];
        for scope in ["a", "b", "nobody", GLOBAL_SCOPE] {
            for since in starts {
                assert_eq!(
                    spent(&conn, scope, since).unwrap(),
                    plain(scope, since),
                    "scope {scope} since {since}"
                );
            }
        }
    }

    /// The proxy's steady 500 calls/s (about 100 writes a round) waits a
    /// second between checkpoints; a heavy load or a long WAL does not.
    #[test]
    fn checkpoints_wait_for_a_second_unless_the_load_is_heavy() {
        let load = |ms: u64, writes: u64, mib: u64| Load {
            since_checkpoint: Duration::from_millis(ms),
            writes_since: writes,
            wal_bytes: mib << 20,
        };
        assert!(!load(100, 100, 1).checkpoint_due());
        assert!(!load(900, 900, 14).checkpoint_due());
        assert!(load(1000, 1, 1).checkpoint_due());
        assert!(load(100, 1000, 1).checkpoint_due());
        assert!(load(100, 10, 33).checkpoint_due());
        // A restarted WAL keeps its trimmed size: that alone is no reason.
        assert!(!load(100, 10, WAL_SIZE_LIMIT as u64 >> 20).checkpoint_due());
    }

    /// The calls the database file holds without its WAL (a copy of the
    /// file alone, as a power cut before the next checkpoint would leave
    /// it), polled each syncer round until it holds `want` (up to 100
    /// rounds): what the syncer has checkpointed so far.
    fn calls_in_the_file_alone(path: &Path, want: i64) -> i64 {
        let snap = path.with_extension("snapshot");
        let mut in_file = 0;
        for _ in 0..100 {
            std::thread::sleep(SYNC_INTERVAL);
            std::fs::copy(path, &snap).unwrap();
            in_file = Connection::open(&snap)
                .and_then(|c| c.query_row("SELECT count(*) FROM calls", [], |r| r.get(0)))
                .unwrap_or(0);
            if in_file == want {
                break;
            }
        }
        in_file
    }

    /// In batched mode a commit is visible to another connection at once
    /// (it is committed), and the syncer checkpoints it into the database
    /// file itself within a few intervals: the file alone, copied without
    /// its WAL, then holds the call. Nobody else checkpoints here.
    #[test]
    fn batched_mode_syncs_the_wal_in_the_background() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.sqlite3");
        let l = Ledger::open_with(&path, Durability::Batched).unwrap();
        l.insert_call(&rec("u", 1, 0.25, true)).unwrap();
        let other = Connection::open(&path).unwrap();
        let n: i64 = other
            .query_row("SELECT count(*) FROM calls", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1);
        drop(other);
        let in_file = calls_in_the_file_alone(&path, 1);
        assert_eq!(in_file, 1, "the syncer never checkpointed the commit");
        drop(l); // joins the syncer thread
        let l = Ledger::open_with(&path, Durability::Full).unwrap();
        assert_eq!(l.count_calls().unwrap(), 1);
        let mode: i64 = l
            .lock()
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, 2, "full is synchronous=FULL");
        assert_eq!(Durability::parse(" Batched "), Some(Durability::Batched));
        assert_eq!(Durability::parse("full"), Some(Durability::Full));
        assert_eq!(Durability::parse("sometimes"), None);
    }

    /// Calls arriving a few milliseconds apart are checkpointed while they
    /// keep coming (not only once they stop), and all of them once quiet.
    /// How often: about once a second, not every syncer round (each WAL
    /// restart costs a call an fsync of the new header, 0.6–1.5 ms on a VM
    /// disk); that decision is [`Load::checkpoint_due`], tested exactly in
    /// `checkpoints_wait_for_a_second_unless_the_load_is_heavy`. The
    /// restarts seen here are printed, not asserted: wall-clock counts
    /// depend on how busy the machine is.
    #[test]
    fn a_trickle_of_calls_is_checkpointed_while_it_lasts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.sqlite3");
        let l = Ledger::open_with(&path, Durability::Batched).unwrap();
        // The WAL header's checkpoint sequence number (bytes 12..16, big
        // endian) goes up each time the WAL starts over.
        let sequence = || {
            let bytes = std::fs::read(wal_path(&path)).unwrap_or_default();
            bytes
                .get(12..16)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        };
        let mut restarts = 0;
        let mut last = None;
        let started = Instant::now();
        let mut i = 0;
        while started.elapsed() < Duration::from_millis(2500) {
            i += 1;
            l.insert_call(&rec("u", i, 0.001, true)).unwrap();
            let now = sequence();
            if last.is_some() && now != last {
                restarts += 1;
            }
            last = now;
            std::thread::sleep(Duration::from_millis(20));
        }
        // About two (once a second) on an idle machine.
        eprintln!("the WAL started over {restarts} times in 2.5 s");
        // Calls kept coming for over twice CHECKPOINT_EVERY: checkpoints
        // copied some of them into the database file meanwhile.
        // (A copy taken while a checkpoint writes the file may be torn:
        // a few tries, before the pause's own checkpoint.)
        let snap = path.with_extension("during");
        let copied = (0..5).any(|_| {
            std::fs::copy(&path, &snap).unwrap();
            let n: i64 = Connection::open(&snap)
                .and_then(|c| c.query_row("SELECT count(*) FROM calls", [], |r| r.get(0)))
                .unwrap_or(0);
            std::thread::sleep(Duration::from_millis(10));
            n > 0
        });
        assert!(copied, "no checkpoint while calls kept coming");
        // Quiet again: a round soon checkpoints, so the file alone holds
        // every call.
        assert_eq!(
            calls_in_the_file_alone(&path, i),
            i,
            "the quiet ledger was never checkpointed"
        );
    }

    /// Under steady load the WAL starts over instead of growing: four
    /// writers with no pause write about 30 KB of WAL per call, and a
    /// checkpoint running beside them never copies it all before the next
    /// write. Before the syncer held writers off for the end of a long
    /// checkpoint, 16,000 calls left a WAL of about 470 MB; now it stays
    /// within [`CHECKPOINT_BYTES`] and a round or two of writes.
    #[test]
    fn the_wal_starts_over_under_steady_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.sqlite3");
        let l = Ledger::open_with(&path, Durability::Batched).unwrap();
        let limit = [LimitCheck {
            scope: "u".into(),
            since_ms: 0,
            limit_nanos: i64::MAX / 4,
        }];
        let wal = wal_path(&path);
        let done = std::sync::atomic::AtomicBool::new(false);
        let wal_size = || std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
        let peak = std::thread::scope(|s| {
            let watcher = s.spawn(|| {
                let mut peak = 0;
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    peak = peak.max(wal_size());
                    std::thread::sleep(Duration::from_millis(10));
                }
                peak.max(wal_size())
            });
            let writers: Vec<_> = (0..4)
                .map(|t| {
                    let (l, limit) = (l.clone(), &limit);
                    s.spawn(move || {
                        for i in 0..4000 {
                            let hold = l
                                .reserve("u", limit, 10, 100, Duration::from_secs(60))
                                .unwrap()
                                .unwrap();
                            let mut r = rec("u", 100 + i, 0.001, true);
                            r.request_id = format!("t{t}-{i}");
                            l.settle(hold, &r).unwrap();
                        }
                    })
                })
                .collect();
            for w in writers {
                w.join().unwrap();
            }
            done.store(true, std::sync::atomic::Ordering::Relaxed);
            watcher.join().unwrap()
        });
        assert_eq!(l.count_calls().unwrap(), 16_000);
        assert!(
            peak < 128 << 20,
            "the WAL reached {} MB under load",
            peak >> 20
        );
        // Idle again: once the syncer has copied everything, the next
        // write starts the WAL over and trims the file to the limit.
        assert_eq!(calls_in_the_file_alone(&path, 16_000), 16_000);
        l.insert_call(&rec("u", 5, 0.1, true)).unwrap();
        assert!(wal_size() <= WAL_SIZE_LIMIT as u64, "{} bytes", wal_size());
    }

    /// A call that outlived its hold (expired and dropped by a later
    /// reservation) settles without touching the hold granted after it.
    #[test]
    fn a_late_settlement_leaves_a_newer_hold_alone() {
        let (_d, l) = ledger();
        let limit = [LimitCheck {
            scope: "u".into(),
            since_ms: 0,
            limit_nanos: i64::MAX / 4,
        }];
        for round in 0..20 {
            let t = 1_000_000 * (round + 1);
            let a = l
                .reserve("u", &limit, 10, t, Duration::from_millis(1))
                .unwrap()
                .unwrap();
            // Past a's expiry: this reservation's batch drops a first.
            let b = l
                .reserve("u", &limit, 20, t + 5000, Duration::from_secs(60))
                .unwrap()
                .unwrap();
            assert_ne!(a, b);
            assert_eq!(l.reserved_now("u", t + 5000).unwrap(), 20);
            l.settle(a, &rec("u", t + 5000, 0.1, true)).unwrap();
            assert_eq!(
                l.reserved_now("u", t + 5000).unwrap(),
                20,
                "the late settlement took the newer hold"
            );
            l.release(b).unwrap();
        }
    }

    /// Many threads settling at once: group commits write every row
    /// exactly once, drop every hold, and give each caller its own id.
    #[test]
    fn concurrent_settlements_are_group_committed_exactly_once() {
        let (_d, l) = ledger();
        let limit = [LimitCheck {
            scope: "u".into(),
            since_ms: 0,
            limit_nanos: i64::MAX / 4,
        }];
        let ids: Vec<(String, i64)> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|t| {
                    let l = l.clone();
                    let limit = &limit;
                    s.spawn(move || {
                        (0..150)
                            .map(|i| {
                                let hold = l
                                    .reserve("u", limit, 10, 100, Duration::from_secs(60))
                                    .unwrap()
                                    .unwrap();
                                let mut r = rec("u", 100 + t * 1000 + i, 0.001, true);
                                r.request_id = format!("t{t}-{i}");
                                let id = l.settle(hold, &r).unwrap();
                                (r.request_id, id)
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        });
        let mut unique: Vec<i64> = ids.iter().map(|(_, id)| *id).collect();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), 1200);
        assert_eq!(l.count_calls().unwrap(), 1200);
        assert_eq!(l.reserved_now("u", 100).unwrap(), 0);
        assert_eq!(l.spent_since("u", 0).unwrap(), 1200 * to_nanos(0.001));
        // Each id is the row of the request that got it.
        let conn = l.lock();
        let distinct: i64 = conn
            .query_row("SELECT count(DISTINCT request_id) FROM calls", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(distinct, 1200);
    }

    /// Writes queued while a batch runs are committed together in the
    /// next one, whatever order their callers wake in: with the
    /// connection held, the first of 8 holds leads (and waits for the
    /// connection), the other 7 queue; once it is free, exactly one more
    /// commit writes all 7.
    #[test]
    fn writes_queued_during_a_commit_share_the_next_one() {
        let (_d, l) = ledger();
        let limit = [LimitCheck {
            scope: "u".into(),
            since_ms: 0,
            limit_nanos: i64::MAX / 4,
        }];
        let (b0, o0) = l.commit_stats();
        let conn = l.lock();
        std::thread::scope(|s| {
            for _ in 0..8 {
                let l = l.clone();
                let limit = &limit;
                s.spawn(move || {
                    l.reserve("u", limit, 10, 100, Duration::from_secs(60))
                        .unwrap()
                        .unwrap();
                });
            }
            // Wait until one leads and 7 are queued behind it.
            loop {
                let st = lock_ignoring_poison(&l.queue.state);
                if st.lead == group_commit::Lead::Running && st.pending.len() == 7 {
                    break;
                }
                drop(st);
                std::thread::sleep(Duration::from_millis(1));
            }
            drop(conn);
        });
        let (b1, o1) = l.commit_stats();
        assert_eq!((b1 - b0, o1 - o0), (2, 8));
        assert_eq!(l.reserved_now("u", 100).unwrap(), 80);
    }

    /// Holds taken together in one group commit still see each other:
    /// 8 threads asking 20 holds of 10 each against a limit of 500 get
    /// exactly 50, never 51.
    #[test]
    fn group_committed_holds_never_overspend() {
        let (_d, l) = ledger();
        let limit = [LimitCheck {
            scope: "u".into(),
            since_ms: 0,
            limit_nanos: 500,
        }];
        let granted: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    let l = l.clone();
                    let limit = &limit;
                    s.spawn(move || {
                        (0..20)
                            .filter(|_| {
                                l.reserve("u", limit, 10, 100, Duration::from_secs(60))
                                    .unwrap()
                                    .is_ok()
                            })
                            .count()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(granted, 50);
        assert_eq!(l.reserved_now("u", 100).unwrap(), 500);
    }
}
