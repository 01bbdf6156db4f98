//! Learning from the user through the real binary: ratings recorded from the
//! CLI and from complete_prompt's `feedback` argument, calibration of the
//! thresholds from a seeded ledger history, `--apply` writing the config
//! file, and the next `recommend` routing by it.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::*;
use serde_json::{Value, json};

const DEEPSEEK_KEY: &str = "sk-test-deepseek-feedback-0000";
/// Scores about 0.18 with the bundled weights: the free tier by default, with room on
/// both sides of the test's bounds (0.1, 0.25). Re-pick it when the weights change
/// (`ai-cost-optimizer score` prints the score).
const LEGAL: &str = "Summarize the legal brief below in two sentences.";

fn run(data: &Path, args: &[&str], extra: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(binary());
    cmd.env_clear();
    for (k, v) in base_env(data) {
        cmd.env(k, v);
    }
    for (k, v) in extra {
        cmd.env(k, v);
    }
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap()
}

fn json_of(o: &Output) -> Value {
    assert!(
        o.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Adds an answered call an hour old (1,000 tokens in, 400 out) to the
/// ledger history, as the program records one.
fn seed_call(
    conn: &rusqlite::Connection,
    id: &str,
    score: f64,
    tier: &str,
    model: &str,
    forced: Option<&str>,
    cost_nanos: i64,
) {
    conn.execute(
        "INSERT INTO calls (ts_ms, user_id, request_id, attempt, provider, model, tier, score,
            input_tokens, output_tokens, cost_nanos, cost_source, latency_ms, outcome,
            prompt_sha256, forced)
         VALUES (?1, 'default', ?2, 1, ?3, ?4, ?5, ?6, 1000, 400, ?7, 'catalog', 10, 'ok', 'x', ?8)",
        rusqlite::params![
            now_ms() - 3_600_000,
            id,
            model.split('/').next().unwrap(),
            model,
            tier,
            score,
            cost_nanos,
            forced
        ],
    )
    .unwrap();
}

#[tokio::test]
async fn ratings_from_cli_and_mcp_are_recorded_and_bad_input_is_explained() {
    let fake = FakeProvider::start(openai_sse(
        "deepseek-v3.2",
        &["Paris."],
        json!({"prompt_tokens": 20, "completion_tokens": 3, "total_tokens": 23}),
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("DEEPSEEK_API_KEY", DEEPSEEK_KEY.to_string()),
        ("DEEPSEEK_BASE_URL", fake.base.clone()),
    ];
    let s = spawn(dir.path(), &env).await;
    let first = s
        .ok(
            "complete_prompt",
            json!({"prompt": "What is the capital of France?", "tier": "cheap"}),
        )
        .await;
    let id = first["request_id"].as_str().unwrap().to_string();
    assert!(first.get("feedback").is_none());

    // The next call rates the first one.
    let second = s
        .ok(
            "complete_prompt",
            json!({"prompt": "And of Italy?", "tier": "cheap",
                   "feedback": {"request_id": id, "rating": "bad", "note": "wrong city"}}),
        )
        .await;
    assert_eq!(second["feedback"]["rating"], 1);
    assert_eq!(second["feedback"]["model"], "deepseek/deepseek-v3.2");
    assert_eq!(second["feedback"]["tier"], "cheap");
    // Numbers work too, and bad ones are refused before anything is spent.
    let e = s
        .err(
            "complete_prompt",
            json!({"prompt": "x", "feedback": {"request_id": id, "rating": 9}}),
        )
        .await;
    assert!(e.contains("rating") && e.contains("out of range"), "{e}");
    let e = s
        .err(
            "complete_prompt",
            json!({"prompt": "x", "feedback": {"request_id": "no-such-call", "rating": 2}}),
        )
        .await;
    assert!(e.contains("no call \"no-such-call\""), "{e}");
    assert_eq!(fake.requests().len(), 2, "refused feedback must not call");
    s.stop().await;

    // The CLI: a later rating of the same call, and the errors.
    let o = run(
        dir.path(),
        &["feedback", &id, "--rating", "4", "--json"],
        &[],
    );
    let r = json_of(&o);
    assert_eq!(r["rating"], 4);
    assert_eq!(r["request_id"], id.as_str());
    let text = run(dir.path(), &["feedback", &id, "--rating", "good"], &[]);
    assert!(text.status.success());
    assert!(String::from_utf8_lossy(&text.stdout).contains("Recorded rating 5/5"));

    let o = run(dir.path(), &["feedback", "nope", "--rating", "bad"], &[]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("no call \"nope\" among the last"),
        "{}",
        stderr(&o)
    );
    let o = run(dir.path(), &["feedback", &id, "--rating", "meh"], &[]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("good, ok, bad or 1-5"),
        "{}",
        stderr(&o)
    );

    // Everything is in the ledger: four ratings of the first call, newest
    // last (the newest is what calibration uses).
    let conn = rusqlite::Connection::open(dir.path().join("ledger.sqlite3")).unwrap();
    let rows: Vec<(i64, String)> = conn
        .prepare("SELECT rating, source FROM feedback WHERE request_id = ?1 ORDER BY id")
        .unwrap()
        .query_map([&id], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        rows,
        vec![
            (1, "mcp".to_string()),
            (4, "cli".to_string()),
            (5, "cli".to_string())
        ]
    );
}

/// A ledger whose history says "prompts scoring like LEGAL got bad answers
/// on the free tier": calibrate must lower the free|cheap boundary, price
/// the change, and --apply must make `recommend` route LEGAL to cheap.
#[test]
fn calibrate_proposes_applies_and_recommend_follows() {
    let dir = tempfile::tempdir().unwrap();
    let keys = [("DEEPSEEK_API_KEY", DEEPSEEK_KEY)];
    // The prompt's score, and the tier it gets today.
    let before = json_of(&run(dir.path(), &["recommend", LEGAL, "--json"], &keys));
    let score = before["complexity"]["score"].as_f64().unwrap();
    assert_eq!(before["scored_tier"], "free", "score {score}");
    assert!(score > 0.1, "test prompt scores {score}; pick another");

    // No history yet: nothing to propose.
    let c = json_of(&run(dir.path(), &["calibrate", "--json"], &[]));
    assert_eq!(c["changed"], false);
    assert_eq!(c["evidence"]["calls"], 0);

    // Seed the history: calls near that score answered by the free tier,
    // plus one cheap-looking greeting answered fine on free.
    let ledger = dir.path().join("ledger.sqlite3");
    let conn = rusqlite::Connection::open(&ledger).unwrap();
    let seeded = [
        ("r1", score, "free", 0_i64),
        ("r2", score - 0.01, "free", 0),
        ("r3", score + 0.005, "free", 0),
        ("r4", 0.05, "free", 0),
        ("r5", 0.6, "medium", 2_000_000),
    ];
    for (id, s, tier, nanos) in seeded {
        let model = if tier == "free" {
            "ollama/llama3.1"
        } else {
            "anthropic/claude-haiku-4-5"
        };
        seed_call(&conn, id, s, tier, model, None, nanos);
    }
    drop(conn);
    for id in ["r1", "r2", "r3"] {
        assert!(
            run(dir.path(), &["feedback", id, "--rating", "bad"], &[])
                .status
                .success()
        );
    }
    assert!(
        run(dir.path(), &["feedback", "r4", "--rating", "good"], &[])
            .status
            .success()
    );

    let c = json_of(&run(dir.path(), &["calibrate", "--json"], &keys));
    assert_eq!(c["changed"], true, "{c}");
    assert_eq!(c["applied"], false);
    assert_eq!(c["evidence"]["calls"], 5);
    assert_eq!(c["evidence"]["rated_bad"], 3);
    assert_eq!(c["evidence"]["rated_good"], 1);
    let p: Vec<f64> = c["proposed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert!(p[0] < 0.25 && p[0] + 0.03 <= score - 0.01 + 1e-9, "{p:?}");
    assert_eq!(&p[1..], &[0.5, 0.75]);
    // The three bad calls move from free ($0) to the cheap tier's model.
    assert_eq!(c["cost"]["calls_up"], 3);
    assert_eq!(c["cost"]["calls_down"], 0);
    assert!(c["cost"]["delta_usd"].as_f64().unwrap() > 0.0, "{c}");
    assert!((c["cost"]["recorded_usd"].as_f64().unwrap() - 0.002).abs() < 1e-12);

    // Text form names the boundary and the effect.
    let t = run(dir.path(), &["calibrate"], &keys);
    let t = String::from_utf8_lossy(&t.stdout).into_owned();
    assert!(
        t.contains("| free / cheap | 0.25 |") && t.contains("Run with --apply"),
        "{t}"
    );
    // Four ratings are thin evidence, and the text says so.
    assert!(t.contains("rests on 4 ratings and overrides only"), "{t}");
    // One user's history proposes thresholds for everyone: said too.
    let t = run(dir.path(), &["calibrate", "--user", "default"], &keys);
    let t = String::from_utf8_lossy(&t.stdout).into_owned();
    assert!(t.contains("Learned from \"default\"'s calls only"), "{t}");

    // Apply: the config file (default path under HOME) gets the thresholds,
    // and the next recommend routes the prompt to the cheap tier.
    let a = json_of(&run(dir.path(), &["calibrate", "--apply", "--json"], &keys));
    assert_eq!(a["applied"], true);
    let cfg = a["config_file"].as_str().unwrap();
    assert!(cfg.starts_with(&dir.path().display().to_string()), "{cfg}");
    let text = std::fs::read_to_string(cfg).unwrap();
    assert!(
        text.contains("[routing]") && text.contains("thresholds"),
        "{text}"
    );
    let after = json_of(&run(dir.path(), &["recommend", LEGAL, "--json"], &keys));
    assert_eq!(after["scored_tier"], "cheap", "{after}");

    // Once applied, the same history proposes nothing more.
    let again = json_of(&run(dir.path(), &["calibrate", "--json"], &keys));
    assert_eq!(again["changed"], false, "{again}");

    // Bad arguments.
    let o = run(dir.path(), &["calibrate", "--days", "0"], &[]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--days must be between 1 and 3650"));
}

/// What a proposal would cost is priced where the calls would really go:
/// with no local model enabled, calls the proposal moves to the free tier
/// land on the cheap tier's cheapest enabled model, not on Ollama's $0.
#[test]
fn calibrate_prices_moved_calls_on_enabled_models_only() {
    let dir = tempfile::tempdir().unwrap();
    let keys = [("DEEPSEEK_API_KEY", DEEPSEEK_KEY)];
    // Ollama is off (tests disable the probe), DeepSeek is on.
    let costs = json_of(&run(
        dir.path(),
        &["costs", "--model", "deepseek/deepseek-v3.2", "--json"],
        &keys,
    ));
    let m = costs["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["model"] == "deepseek/deepseek-v3.2")
        .unwrap_or_else(|| panic!("{costs}"));
    let on_cheap = 1000.0 * m["input_per_mtok"].as_f64().unwrap() / 1e6
        + 400.0 * m["output_per_mtok"].as_f64().unwrap() / 1e6;
    // Create the ledger, then seed: the caller forced the free tier on three
    // prompts scoring cheap (the free|cheap boundary should rise), and two
    // unforced calls scoring between them went to the cheap tier at $0.001.
    json_of(&run(dir.path(), &["usage", "--json"], &keys));
    let conn = rusqlite::Connection::open(dir.path().join("ledger.sqlite3")).unwrap();
    let rows = [
        ("f1", 0.30, "free", "ollama/llama3.1", Some("tier"), 0_i64),
        ("f2", 0.31, "free", "ollama/llama3.1", Some("tier"), 0),
        ("f3", 0.32, "free", "ollama/llama3.1", Some("tier"), 0),
        (
            "u1",
            0.305,
            "cheap",
            "deepseek/deepseek-v3.2",
            None,
            1_000_000,
        ),
        (
            "u2",
            0.315,
            "cheap",
            "deepseek/deepseek-v3.2",
            None,
            1_000_000,
        ),
    ];
    for (id, s, tier, model, forced, nanos) in rows {
        seed_call(&conn, id, s, tier, model, forced, nanos);
    }
    drop(conn);
    let c = json_of(&run(dir.path(), &["calibrate", "--json"], &keys));
    assert_eq!(c["changed"], true, "{c}");
    assert_eq!(c["evidence"]["overrides_down"], 3, "{c}");
    assert!(c["proposed"][0].as_f64().unwrap() > 0.25, "{c}");
    assert_eq!(c["cost"]["calls_down"], 2, "{c}");
    // Each moved call is priced on deepseek-v3.2 (the nearest enabled
    // tier's cheapest model), not at $0.
    let delta = c["cost"]["delta_usd"].as_f64().unwrap();
    assert!(
        (delta - 2.0 * (on_cheap - 0.001)).abs() < 1e-12,
        "{delta} {c}"
    );
}
