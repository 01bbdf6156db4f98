//! Crash safety: the real server is SIGKILLed in the middle of a burst of
//! concurrent `complete_prompt` calls, at several points, then restarted on
//! the same ledger. Every call whose result reached the client must be in
//! the ledger at its cost, the rollup must agree with the calls, the killed
//! process's reservations must be released on start-up, and SQLite's
//! integrity check must pass.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use common::*;
use rusqlite::Connection;
use serde_json::json;

const KEY: &str = "sk-deepseek-FAKE-crash-key-5151515151";
const BURST: usize = 12;

/// Where in the burst the process dies.
#[derive(Debug, Clone, Copy)]
enum KillAt {
    /// Every request reached the provider; no answer yet.
    BeforeAnyReply,
    /// After this many results reached the client.
    AfterReplies(usize),
}

fn env(fake: &FakeProvider) -> Vec<(&'static str, String)> {
    vec![
        ("DEEPSEEK_API_KEY", KEY.into()),
        ("DEEPSEEK_BASE_URL", fake.base.clone()),
    ]
}

/// Sums that must agree between `calls` and its trigger-kept rollup.
fn rollup_matches(db: &Connection) {
    let from_calls: (i64, i64, i64) = db
        .query_row(
            "SELECT count(*) FILTER (WHERE outcome = 'ok'), count(*) FILTER (WHERE outcome = 'error'),
                    coalesce(sum(cost_nanos), 0) FROM calls",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    let from_rollup: (i64, i64, i64) = db
        .query_row(
            "SELECT coalesce(sum(ok), 0), coalesce(sum(failed), 0), coalesce(sum(cost_nanos), 0)
             FROM calls_daily",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!(from_calls, from_rollup, "calls vs calls_daily");
}

fn reservations(db: &Connection) -> Vec<(i64, Option<String>)> {
    let mut st = db
        .prepare("SELECT amount_nanos, owner FROM reservations")
        .unwrap();
    st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

async fn crash_and_recover(kill_at: KillAt) {
    let fake = FakeProvider::start(openai_sse(
        "deepseek-v3.2",
        &["ok"],
        json!({"prompt_tokens": 1000, "completion_tokens": 500, "total_tokens": 1500}),
    ))
    .await;
    // Staggered answers, so the kill lands between them.
    for i in 0..BURST {
        fake.push(
            openai_sse(
                "deepseek-v3.2",
                &["ok"],
                json!({"prompt_tokens": 1000 + i, "completion_tokens": 500, "total_tokens": 1500 + i}),
            )
            .delayed(Duration::from_millis(300 + 150 * i as u64)),
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let mut s = spawn_raw(dir.path(), &env(&fake));
    s.init().await;
    for id in 1..=BURST as i64 {
        s.call(
            id,
            "complete_prompt",
            json!({"prompt": format!("question {id}"), "tier": "cheap", "max_tokens": 600}),
        )
        .await;
    }
    // Wait until every call is at the provider, i.e. holds its reservation.
    for _ in 0..600 {
        if fake.requests().len() >= BURST {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        fake.requests().len(),
        BURST,
        "{kill_at:?}: burst reached the provider"
    );

    // Results the client received: request_id → cost.
    let mut received: HashMap<String, f64> = HashMap::new();
    let wanted = match kill_at {
        KillAt::BeforeAnyReply => 0,
        KillAt::AfterReplies(n) => n,
    };
    while received.len() < wanted {
        let v = s
            .next(Duration::from_secs(30))
            .await
            .expect("a reply before the kill");
        if v.get("id").is_none() {
            continue; // a notification
        }
        let c = &v["result"]["structuredContent"];
        assert_eq!(c["recorded"], json!(true), "{v}");
        received.insert(
            c["request_id"].as_str().unwrap().to_string(),
            c["cost_usd"].as_f64().unwrap(),
        );
    }
    s.kill().await;

    let ledger = dir.path().join("ledger.sqlite3");
    let (before, recorded) = {
        let db = Connection::open(&ledger).unwrap();
        rollup_matches(&db);
        let rows: i64 = db
            .query_row("SELECT count(*) FROM calls", [], |r| r.get(0))
            .unwrap();
        (reservations(&db), rows as usize)
    };
    // Every call of the burst reached the provider holding money; a
    // settlement records its row and drops its hold in one commit, so
    // each call is exactly one of the two when the process dies. Every
    // hold names its owner.
    assert_eq!(
        before.len() + recorded,
        BURST,
        "{kill_at:?}: holds {before:?}, recorded rows {recorded}"
    );
    assert!(
        recorded >= wanted,
        "{kill_at:?}: {recorded} rows, {wanted} replies"
    );
    assert!(before.iter().all(|(_, o)| o.is_some()), "{before:?}");

    // Restart on the same ledger: start-up releases the dead holds.
    let s2 = spawn(dir.path(), &env(&fake)).await;
    let status = s2.ok("query_usage", json!({"days": 1})).await;
    check_ledger(&ledger, &received, kill_at);
    // The released money is spendable again: a new call goes through.
    let c = s2
        .ok(
            "complete_prompt",
            json!({"prompt": "after the crash", "tier": "cheap", "max_tokens": 600}),
        )
        .await;
    assert_eq!(c["recorded"], json!(true));
    s2.stop().await;
    let db = Connection::open(&ledger).unwrap();
    assert!(reservations(&db).is_empty());
    rollup_matches(&db);
    eprintln!(
        "{kill_at:?}: {} results received before the kill, {} holds released at restart, usage calls {}",
        received.len(),
        before.len(),
        status["calls"]
    );
}

fn check_ledger(ledger: &Path, received: &HashMap<String, f64>, kill_at: KillAt) {
    let db = Connection::open(ledger).unwrap();
    let integrity: String = db
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(integrity, "ok", "{kill_at:?}");
    assert_eq!(
        reservations(&db),
        vec![],
        "{kill_at:?}: holds of the killed process survive a restart"
    );
    rollup_matches(&db);
    for (request_id, cost) in received {
        let rows: Vec<(String, i64)> = db
            .prepare("SELECT outcome, cost_nanos FROM calls WHERE request_id = ?1")
            .unwrap()
            .query_map([request_id], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            rows.len(),
            1,
            "{kill_at:?}: {request_id} answered but has {rows:?}"
        );
        assert_eq!(rows[0].0, "ok");
        assert!(
            (rows[0].1 as f64 / 1e9 - cost).abs() < 1e-9,
            "{kill_at:?}: {request_id} cost ${cost} recorded as {} nanos",
            rows[0].1
        );
        assert!(rows[0].1 > 0, "a priced call is not free");
    }
    // Nothing beyond the burst was invented.
    let n: i64 = db
        .query_row("SELECT count(*) FROM calls", [], |r| r.get(0))
        .unwrap();
    assert!(n as usize >= received.len() && n as usize <= BURST, "{n}");
}

#[tokio::test]
async fn sigkill_before_any_reply() {
    crash_and_recover(KillAt::BeforeAnyReply).await;
}

#[tokio::test]
async fn sigkill_after_the_first_replies() {
    crash_and_recover(KillAt::AfterReplies(2)).await;
}

#[tokio::test]
async fn sigkill_mid_burst() {
    crash_and_recover(KillAt::AfterReplies(BURST / 2)).await;
}

#[tokio::test]
async fn sigkill_with_one_call_left() {
    crash_and_recover(KillAt::AfterReplies(BURST - 1)).await;
}

/// Holds of a process that is still running survive another process's
/// start-up: a CLI command opening the ledger must not free the server's
/// in-flight money.
#[tokio::test]
async fn a_second_process_keeps_the_live_servers_holds() {
    let fake = FakeProvider::start(
        openai_sse(
            "deepseek-v3.2",
            &["ok"],
            json!({"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}),
        )
        .delayed(Duration::from_secs(3)),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut s = spawn_raw(dir.path(), &env(&fake));
    s.init().await;
    s.call(
        1,
        "complete_prompt",
        json!({"prompt": "slow one", "tier": "cheap", "max_tokens": 600}),
    )
    .await;
    for _ in 0..500 {
        if !fake.requests().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(fake.requests().len(), 1);
    // A second process (the CLI) opens the ledger while the call is out.
    let mut vars = base_env(dir.path());
    vars.push(("DEEPSEEK_API_KEY".into(), KEY.into()));
    let out = std::process::Command::new(binary())
        .env_clear()
        .envs(vars)
        .args(["usage"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let db = Connection::open(dir.path().join("ledger.sqlite3")).unwrap();
    assert_eq!(reservations(&db).len(), 1, "the live hold survives");
    let r = s.reply(1, Duration::from_secs(30)).await;
    assert_eq!(r["result"]["structuredContent"]["recorded"], json!(true));
    assert!(reservations(&db).is_empty());
    s.close().await;
}

/// A server that keeps running while another process dies mid-call: the
/// dead process's hold must not block this server's calls until the hold
/// expires (minutes). When a hold is refused with money held, the server
/// releases the holds of processes that are gone and tries again.
#[tokio::test]
async fn a_running_server_releases_a_dead_process_hold_when_it_matters() {
    let fake = FakeProvider::start(openai_sse(
        "deepseek-v3.2",
        &["ok"],
        json!({"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}),
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let a = spawn(dir.path(), &env(&fake)).await;
    let args =
        json!({"prompt": "hold", "force_model": "deepseek/deepseek-v3.2", "max_tokens": 4000});
    let costs = a
        .ok("check_model_costs", json!({"provider": "deepseek"}))
        .await;
    let row = costs["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["model"] == "deepseek/deepseek-v3.2")
        .unwrap_or_else(|| panic!("{costs}"))
        .clone();
    // A call's worst case is its 4,000 output tokens plus a few of input:
    // room for one, not two.
    let output_worst = 4000.0 * row["output_per_mtok"].as_f64().unwrap() / 1e6;
    assert!(output_worst > 0.0, "{row}");
    a.ok("set_budget", json!({"monthly_limit": output_worst * 1.5}))
        .await;

    // Another process takes the hold and dies before the provider answers.
    fake.push(
        openai_sse(
            "deepseek-v3.2",
            &["late"],
            json!({"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}),
        )
        .delayed(Duration::from_secs(30)),
    );
    let mut b = spawn_raw(dir.path(), &env(&fake));
    b.init().await;
    b.call(1, "complete_prompt", args.clone()).await;
    for _ in 0..600 {
        if !fake.requests().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        fake.requests().len(),
        1,
        "the other process is at the provider"
    );
    b.kill().await;
    let held = reservations(&Connection::open(dir.path().join("ledger.sqlite3")).unwrap());
    assert_eq!(
        held.len(),
        1,
        "the dead process's hold is still there: {held:?}"
    );

    // The running server's call fits once that hold is released.
    let c = a.ok("complete_prompt", args).await;
    assert_eq!(c["answer"], "ok", "{c}");
    assert_eq!(c["recorded"], json!(true));
    a.stop().await;
    let db = Connection::open(dir.path().join("ledger.sqlite3")).unwrap();
    assert!(reservations(&db).is_empty());
}
