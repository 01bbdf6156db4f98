//! The ledger in process, each figure beside a baseline measured in the
//! same run on the same disk:
//!
//! 1. **Recorded calls/s.** What every `complete_prompt` writes: a budget
//!    hold (`reserve`: `BEGIN IMMEDIATE`, spend and holds checked against
//!    the user's and the global budget, hold inserted) and its settlement
//!    (`settle`: the call row with its indexes and rollup trigger, hold
//!    dropped). Sequential, from 8 threads, and from 32 and 128 tasks on a
//!    two-worker runtime (the async API the server uses), in both
//!    durability modes.
//!    Baseline: a bare `INSERT` of the same columns into a table with no
//!    index or trigger, one transaction per row, same sync mode.
//! 2. **A hold on a big ledger**: `reserve` + `release` with ROWS calls in
//!    the current month, beside the plain `SUM` over the period that spend
//!    used to cost before it read the daily rollup.
//! 3. **`query_usage` over ROWS calls** (the tool's core, default 30 days:
//!    totals, by model, provider and day), beside `SELECT count(*)`.
//!
//! Run: `cargo bench --bench ledger` (ROWS=1000000 by default). Under
//! `cargo test` it runs with tiny counts, as a smoke test.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ai_cost_optimizer::ledger::{CallRecord, Durability, GLOBAL_SCOPE, Ledger, LimitCheck};
use rusqlite::Connection;

const DAY: i64 = 86_400_000;

fn record(ts_ms: i64, i: u64) -> CallRecord {
    CallRecord {
        ts_ms,
        user_id: "default".into(),
        request_id: format!("req-{i:016x}"),
        attempt: 1,
        provider: "deepseek".into(),
        model: "deepseek/deepseek-v3.2".into(),
        tier: Some("cheap".into()),
        score: Some(0.31),
        input_tokens: 812,
        cache_read_tokens: 0,
        cache_write_tokens: 0,
        output_tokens: 240,
        reasoning_tokens: 0,
        cost_usd: 0.000_328,
        cost_source: "provider".into(),
        baseline_cost_usd: Some(0.006_036),
        latency_ms: 412,
        ok: true,
        error_kind: None,
        error_message: None,
        forced: None,
        prefer: Some("cost".into()),
        prompt_sha256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".into(),
        prompt_text: None,
    }
}

fn checks(since_ms: i64) -> Vec<LimitCheck> {
    vec![
        LimitCheck {
            scope: "default".into(),
            since_ms,
            limit_nanos: i64::MAX / 4,
        },
        LimitCheck {
            scope: GLOBAL_SCOPE.into(),
            since_ms,
            limit_nanos: i64::MAX / 4,
        },
    ]
}

/// One call's two writes.
fn one_call(l: &Ledger, now: i64, i: u64) {
    let hold = l
        .reserve(
            "default",
            &checks(now - 20 * DAY),
            10_000,
            now,
            Duration::from_secs(600),
        )
        .expect("reserve")
        .expect("within budget");
    l.settle(hold, &record(now, i)).expect("settle");
}

fn calls_per_sec(l: &Ledger, n: u64, threads: u64, now: i64) -> f64 {
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            s.spawn(move || {
                for i in 0..n / threads {
                    one_call(l, now, t * n + i);
                }
            });
        }
    });
    n as f64 / t0.elapsed().as_secs_f64()
}

/// Calls from `in_flight` tasks on a two-worker runtime, as the server
/// runs them: waiting tasks do not hold a worker, so holds and
/// settlements queue up and share commits.
fn calls_per_sec_tasks(l: &Ledger, n: u64, in_flight: u64, now: i64) -> f64 {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .expect("runtime");
    let t0 = Instant::now();
    rt.block_on(async {
        let tasks: Vec<_> = (0..in_flight)
            .map(|t| {
                let l = l.clone();
                tokio::spawn(async move {
                    let checks = checks(now - 20 * DAY);
                    for i in 0..n / in_flight {
                        let hold = l
                            .reserve_async(
                                "default",
                                &checks,
                                10_000,
                                now,
                                Duration::from_secs(600),
                            )
                            .await
                            .expect("reserve")
                            .expect("within budget");
                        l.settle_async(hold, &record(now, t * n + i))
                            .await
                            .expect("settle");
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("task");
        }
    });
    n as f64 / t0.elapsed().as_secs_f64()
}

fn baseline_inserts_per_sec(path: &Path, sync: &str, n: u64, now: i64) -> f64 {
    let c = Connection::open(path).expect("open");
    c.execute_batch(&format!(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous={sync};
         CREATE TABLE t (ts_ms, user_id, request_id, attempt, provider, model, tier, score,
            input_tokens, output_tokens, cost_nanos, cost_source, baseline_cost_nanos,
            latency_ms, outcome, prompt_sha256);"
    ))
    .expect("schema");
    let r = record(now, 0);
    let t0 = Instant::now();
    for i in 0..n {
        c.execute_batch("BEGIN IMMEDIATE").expect("begin");
        c.prepare_cached(
            "INSERT INTO t VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,?16)",
        )
        .expect("prepare")
        .execute(rusqlite::params![
            now,
            r.user_id,
            format!("req-{i:016x}"),
            1,
            r.provider,
            r.model,
            r.tier,
            r.score,
            812,
            240,
            328_000,
            r.cost_source,
            6_036_000,
            412,
            "ok",
            r.prompt_sha256
        ])
        .expect("insert");
        c.execute_batch("COMMIT").expect("commit");
    }
    n as f64 / t0.elapsed().as_secs_f64()
}

/// ROWS calls over the last 30 days, in time order, as the program writes
/// them (one statement, so seeding does not dominate the run).
fn seed(path: &Path, rows: u64, now: i64) {
    let c = Connection::open(path).expect("open");
    c.execute_batch("PRAGMA synchronous=OFF").expect("pragma");
    let span = 30 * DAY - 60_000;
    c.execute_batch(&format!(
        "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < {rows} - 1)
         INSERT INTO calls (ts_ms, user_id, request_id, attempt, provider, model, tier, score,
             input_tokens, output_tokens, cost_nanos, cost_source, baseline_cost_nanos,
             latency_ms, outcome, prompt_sha256)
         SELECT {now} - 1000 - {span} + i * {span} / {rows},
             CASE i % 4 WHEN 0 THEN 'default' WHEN 1 THEN 'alice' WHEN 2 THEN 'bob' ELSE 'ci' END,
             printf('seed-%d', i), 1,
             CASE i % 3 WHEN 0 THEN 'deepseek' WHEN 1 THEN 'anthropic' ELSE 'gemini' END,
             CASE i % 3 WHEN 0 THEN 'deepseek/deepseek-v3.2'
                 WHEN 1 THEN 'anthropic/claude-haiku-4-5' ELSE 'gemini/gemini-2.5-flash' END,
             CASE i % 4 WHEN 0 THEN 'free' WHEN 1 THEN 'cheap' WHEN 2 THEN 'medium' ELSE 'premium' END,
             (i % 100) / 100.0, 500 + i % 3000, 100 + i % 900, 1000 + (i * 7919) % 900000,
             'catalog', 5000000, i % 3000, 'ok', 'x'
         FROM n;
         ANALYZE;"
    ))
    .expect("seed");
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn time_ms(runs: usize, mut f: impl FnMut()) -> f64 {
    f(); // warm the page cache
    median(
        (0..runs)
            .map(|_| {
                let t0 = Instant::now();
                f();
                t0.elapsed().as_secs_f64() * 1e3
            })
            .collect(),
    )
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let rows: u64 = std::env::var("ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if bench { 1_000_000 } else { 2_000 });
    let (n, runs) = if bench { (20_000, 15) } else { (200, 2) };
    let now = 1_800_000_000_000;
    let dir = tempfile::tempdir().expect("tempdir");

    println!("1. recorded calls/s (reserve + settle), {n} calls:");
    for (mode, sync) in [(Durability::Batched, "NORMAL"), (Durability::Full, "FULL")] {
        let base = baseline_inserts_per_sec(&dir.path().join(format!("b-{sync}.db")), sync, n, now);
        println!(
            "   {mode:?}: baseline bare INSERT, 1 tx/row (synchronous={sync}) {base:>10.0} rows/s"
        );
        let l = Ledger::open_with(&dir.path().join(format!("l-{sync}.db")), mode).expect("open");
        for threads in [1, 8] {
            let (b0, o0) = l.commit_stats();
            let rate = calls_per_sec(&l, n, threads, now);
            let (b1, o1) = l.commit_stats();
            let per_commit = (o1 - o0) as f64 / (b1 - b0).max(1) as f64;
            println!(
                "   {mode:?}: reserve + settle, {threads} thread(s)               {rate:>10.0} calls/s  ({per_commit:.2} writes per commit)"
            );
        }
        for tasks in [32, 128] {
            let (b0, o0) = l.commit_stats();
            let rate = calls_per_sec_tasks(&l, n, tasks, now);
            let (b1, o1) = l.commit_stats();
            let per_commit = (o1 - o0) as f64 / (b1 - b0).max(1) as f64;
            println!(
                "   {mode:?}: reserve_async + settle_async, {tasks:>3} tasks      {rate:>10.0} calls/s  ({per_commit:.2} writes per commit)"
            );
        }
    }

    println!("\n2. a budget hold with {rows} calls in the last 30 days (median of {runs}):");
    let path = dir.path().join("big.db");
    drop(Ledger::open(&path).expect("create"));
    let t0 = Instant::now();
    seed(&path, rows, now);
    println!("   (seeded in {:.1} s)", t0.elapsed().as_secs_f64());
    let l = Ledger::open(&path).expect("open");
    let raw = Connection::open(&path).expect("open");
    let since = now - 29 * DAY - 12 * 3_600_000;
    let scan = time_ms(runs, || {
        let s: i64 = raw
            .query_row(
                "SELECT coalesce(sum(cost_nanos), 0) FROM calls WHERE user_id = 'default' AND ts_ms >= ?1",
                [since],
                |r| r.get(0),
            )
            .expect("sum");
        std::hint::black_box(s);
    });
    println!("   baseline: SUM(cost) over the user's period (the old spend query) {scan:>8.3} ms");
    let hold = time_ms(runs, || {
        let h = l
            .reserve("default", &checks(since), 1, now, Duration::from_secs(60))
            .expect("reserve")
            .expect("within budget");
        l.release(h).expect("release");
    });
    println!("   reserve + release (user + global budget)                      {hold:>8.3} ms");

    println!("\n3. query_usage over {rows} calls (median of {runs}):");
    let count = time_ms(runs, || {
        let c: i64 = raw
            .query_row("SELECT count(*) FROM calls", [], |r| r.get(0))
            .expect("count");
        std::hint::black_box(c);
    });
    println!("   baseline: SELECT count(*) FROM calls                          {count:>8.3} ms");
    let settings = Arc::new(dir.path().to_path_buf());
    let env = move |k: &str| -> Option<String> {
        match k {
            "COST_OPTIMIZER_DATA_DIR" => Some(settings.to_string_lossy().into_owned()),
            "COST_OPTIMIZER_CONFIG" => Some(String::new()),
            "COST_OPTIMIZER_OLLAMA_PROBE" => Some("0".into()),
            _ => None,
        }
    };
    drop((l, raw)); // the last close folds the WAL into the file
    std::fs::rename(&path, dir.path().join("ledger.sqlite3")).expect("rename");
    let core = ai_cost_optimizer::optimizer::Optimizer::new(
        ai_cost_optimizer::config::Settings::load_with(&env).expect("settings"),
        ai_cost_optimizer::pricing::Catalog::bundled(),
        ai_cost_optimizer::providers::Registry::from_env(
            &env,
            Duration::from_secs(5),
            Duration::from_secs(5),
            Duration::from_secs(5),
        )
        .expect("registry"),
        Arc::new(move || now),
    );
    let usage = time_ms(runs, || {
        let r = core
            .usage(&ai_cost_optimizer::optimizer::UsageArgs::default())
            .expect("usage");
        std::hint::black_box(r);
    });
    println!("   query_usage (30 days: totals, by model, provider, day)        {usage:>8.3} ms");
}
