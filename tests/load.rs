//! Load: many `complete_prompt` calls through one real server, 64 in
//! flight, against a fake provider. Zero errors, zero lost rows, sums that
//! match to the nano-dollar, memory flat across batches.
//!
//! `AICO_LOAD_CALLS` sets the count (default 2,000 to keep CI fast in a
//! debug build); the full run of the issue is
//! `AICO_LOAD_CALLS=10000 cargo test --test load -- --nocapture`
//! (figures in docs/RELIABILITY.md). No timing is asserted; the run prints
//! its duration and RSS per batch.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::*;
use rusqlite::Connection;
use serde_json::json;

const IN_FLIGHT: usize = 64;

/// What each call costs: DeepSeek V3.2's catalog price of the fake's
/// reported usage (1,000 tokens in at $0.28/MTok, 500 out at $0.40/MTok),
/// in nano-dollars.
const CALL_NANOS: i64 = 1_000 * 280 + 500 * 400;

#[tokio::test]
async fn many_calls_64_in_flight_lose_nothing() {
    let total: usize = std::env::var("AICO_LOAD_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
    let batch = (total / 10).max(1);
    let fake = FakeProvider::start(openai_sse(
        "deepseek-v3.2",
        &["ok"],
        json!({"prompt_tokens": 1000, "completion_tokens": 500, "total_tokens": 1500}),
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut s = spawn_raw(
        dir.path(),
        &[
            (
                "DEEPSEEK_API_KEY",
                "sk-deepseek-FAKE-load-8888888888".into(),
            ),
            ("DEEPSEEK_BASE_URL", fake.base.clone()),
        ],
    );
    s.init().await;
    let pid = s.pid();

    let started = Instant::now();
    let mut sent = 0usize;
    let mut done = 0usize;
    let mut errors = Vec::new();
    let mut request_ids = HashSet::new();
    let mut cost_nanos: i64 = 0;
    let mut rss = Vec::new();
    while done < total {
        while sent < total && sent - done < IN_FLIGHT {
            sent += 1;
            s.call(
                sent as i64,
                "complete_prompt",
                json!({"prompt": format!("load question {sent}"), "tier": "cheap", "max_tokens": 16}),
            )
            .await;
        }
        let v = s
            .next(Duration::from_secs(120))
            .await
            .expect("a reply within 2 minutes");
        assert!(v.get("unparsable").is_none(), "{v}");
        if v.get("id").is_none() {
            continue; // notification
        }
        done += 1;
        let c = &v["result"]["structuredContent"];
        if v["result"]["isError"] == json!(true) || c["recorded"] != json!(true) {
            errors.push(v.to_string());
        } else {
            request_ids.insert(c["request_id"].as_str().unwrap().to_string());
            let nanos = (c["cost_usd"].as_f64().unwrap() * 1e9).round() as i64;
            // The catalog's price of the reported usage, every time.
            if nanos != CALL_NANOS || c["model"] != json!("deepseek/deepseek-v3.2") {
                errors.push(format!("priced wrong: {c}"));
            }
            cost_nanos += nanos;
        }
        if done.is_multiple_of(batch) {
            rss.push(rss_kib(pid));
        }
    }
    let elapsed = started.elapsed();
    s.close().await;

    assert!(
        errors.is_empty(),
        "{} errors, first: {}",
        errors.len(),
        errors[0]
    );
    assert_eq!(
        request_ids.len(),
        total,
        "every call has its own request id"
    );
    let db = Connection::open(dir.path().join("ledger.sqlite3")).unwrap();
    let (rows, ok, sum): (i64, i64, i64) = db
        .query_row(
            "SELECT count(*), count(*) FILTER (WHERE outcome = 'ok'), sum(cost_nanos) FROM calls",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!(rows as usize, total, "ledger rows");
    assert_eq!(ok as usize, total);
    assert_eq!(
        sum, cost_nanos,
        "ledger sum equals the sum of reported costs"
    );
    assert_eq!(
        sum,
        total as i64 * CALL_NANOS,
        "ledger sum at catalog prices"
    );
    let (rollup_ok, rollup_sum): (i64, i64) = db
        .query_row(
            "SELECT sum(ok), sum(cost_nanos) FROM calls_daily",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((rollup_ok, rollup_sum), (ok, sum), "rollup agrees");
    let held: i64 = db
        .query_row("SELECT count(*) FROM reservations", [], |r| r.get(0))
        .unwrap();
    assert_eq!(held, 0, "no reservation left behind");
    assert_eq!(
        fake.requests().len(),
        total,
        "one provider request per call"
    );

    let rss: Vec<u64> = rss.into_iter().flatten().collect();
    eprintln!(
        "{total} calls, {IN_FLIGHT} in flight: {:.1} s ({:.0} calls/s); RSS per {batch} calls (KiB): {rss:?}",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64()
    );
    // /proc is always there on Linux: no reading would be a broken probe.
    #[cfg(target_os = "linux")]
    assert!(rss.len() >= 2, "RSS could not be read");
    if let (Some(first), Some(last)) = (rss.first(), rss.last()) {
        // Flat: after warm-up, growth stays far below what keeping each
        // call's data would cost. Generous, since allocators keep pages.
        assert!(
            *last < first + 64 * 1024,
            "RSS grew from {first} to {last} KiB over {total} calls"
        );
    }
}
