//! The CLI as a person or script uses it: real binary, real files.

mod common;

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

/// The binary with only the test environment (`base_env`) over `data`.
fn command(data: &std::path::Path) -> Command {
    let mut cmd = Command::new(common::binary());
    cmd.env_clear();
    for (k, v) in common::base_env(data) {
        cmd.env(k, v);
    }
    cmd
}

fn run(data: &std::path::Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = command(data);
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    if let Some(input) = stdin {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    child.wait_with_output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Claude Desktop passes a blank optional extension field through as its
/// unfilled template (`${user_config.…}`): that is no key and no budget, not
/// a key that enables the provider or a budget that fails to parse.
/// A command's `--json` failure: the kind, and a message naming `mentions`.
fn json_error(o: &std::process::Output, kind: &str, mentions: &str) {
    let e: Value = serde_json::from_str(&stdout(o)).unwrap();
    assert_eq!(e["error"]["kind"], kind, "{e}");
    assert!(
        e["error"]["message"].as_str().unwrap().contains(mentions),
        "{e}"
    );
}

/// A setting that does nothing is said, on stderr, even though it is found
/// before logging is set up.
#[test]
fn e_mail_addresses_without_a_server_are_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let o = command(dir.path())
        .env("COST_OPTIMIZER_ALERT_EMAIL_TO", "me@example.com")
        .args(["doctor", "--json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("no SMTP server: no e-mail alerts are sent"),
        "{}",
        stderr(&o)
    );
    serde_json::from_str::<Value>(&stdout(&o)).expect("stdout stays JSON");
}

#[test]
fn unfilled_extension_templates_count_as_unset() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = command(dir.path());
    let o = cmd
        .env("ANTHROPIC_API_KEY", "${user_config.anthropic_api_key}")
        .env("DEEPSEEK_API_KEY", "sk-FAKE-deepseek-template-test")
        .env(
            "COST_OPTIMIZER_MONTHLY_BUDGET",
            "${user_config.monthly_budget}",
        )
        .args(["doctor", "--json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let d: Value = serde_json::from_str(&stdout(&o)).unwrap();
    let enabled = |name: &str| {
        d["providers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["provider"] == name)
            .unwrap_or_else(|| panic!("{d}"))["enabled"]
            .clone()
    };
    assert_eq!(enabled("anthropic"), false, "{d}");
    assert_eq!(enabled("deepseek"), true, "{d}");
    assert_eq!(d["default_monthly_budget_usd"], 100.0, "{d}");
}

#[test]
fn doctor_reports_providers_and_paths_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let o = run(dir.path(), &["doctor", "--json"], None);
    assert!(o.status.success(), "{}", stderr(&o));
    let d: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(d["providers"].as_array().unwrap().len(), 8);
    assert!(d["ledger"].as_str().unwrap().starts_with("ok"));
    assert_eq!(d["data_dir"], dir.path().display().to_string());
    assert_eq!(d["baseline_priced"], true, "{d}");

    // A typo in baseline_model is said, not silently ignored.
    let cfg = dir.path().join("c.toml");
    // A typo in [routing.tiers] too: said, not silently skipped.
    std::fs::write(
        &cfg,
        "baseline_model = \"anthropic/claude-opus-typo\"\n[routing.tiers]\ncheap = [\"deepseek/deepseek-v3.2-typo\", \"deepseek/deepseek-v3.2\"]\n",
    )
    .unwrap();
    let mut cmd = command(dir.path());
    let o = cmd
        .env("COST_OPTIMIZER_CONFIG", &cfg)
        .arg("doctor")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("NOT IN THE CATALOG"), "{}", stdout(&o));
    assert!(
        stdout(&o).contains("NOT IN THE CATALOG, skipped: deepseek/deepseek-v3.2-typo ("),
        "{}",
        stdout(&o)
    );

    // Names as the tools accept them (a bare name one provider has, a
    // provider alias) are priced models, not typos.
    std::fs::write(
        &cfg,
        "baseline_model = \"claude-sonnet-4-6\"\n[routing.tiers]\ncheap = [\"claude-haiku-4-5\", \"google/gemini-2.5-flash-lite\"]\n",
    )
    .unwrap();
    let o = command(dir.path())
        .env("COST_OPTIMIZER_CONFIG", &cfg)
        .args(["doctor", "--json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let d: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(d["baseline_priced"], true, "{d}");
    assert_eq!(d["baseline_model"], "anthropic/claude-sonnet-4-6", "{d}");
    assert_eq!(d["unpriced_tier_models"], serde_json::json!([]), "{d}");

    // The default budget is said per its period.
    std::fs::write(&cfg, "monthly_budget_usd = 30\nbudget_period = \"daily\"\n").unwrap();
    let o = command(dir.path())
        .env("COST_OPTIMIZER_CONFIG", &cfg)
        .arg("doctor")
        .output()
        .unwrap();
    assert!(
        stdout(&o).contains("$30.00/day by default"),
        "{}",
        stdout(&o)
    );
    // The routing in force: boundaries, preference, and tiers switched
    // off by equal boundaries (what `calibrate --apply` wrote, say).
    assert_eq!(
        d["routing_thresholds"],
        serde_json::json!([0.25, 0.5, 0.75]),
        "{d}"
    );
    assert_eq!(d["prefer"], "cost", "{d}");
    assert_eq!(d["tiers_off"], serde_json::json!([]), "{d}");
    std::fs::write(
        &cfg,
        "[routing]\nthresholds = [0.5, 0.5, 0.5]\nprefer = \"quality\"\n",
    )
    .unwrap();
    let o = command(dir.path())
        .env("COST_OPTIMIZER_CONFIG", &cfg)
        .arg("doctor")
        .output()
        .unwrap();
    let out = stdout(&o);
    assert!(
        out.contains("routing:     boundaries 0.50 / 0.50 / 0.50; near one, prefer quality; switched off (no score reaches it, or no model listed): cheap, medium"),
        "{out}"
    );
}

#[test]
fn score_streams_jsonl_and_survives_bad_lines() {
    let dir = tempfile::tempdir().unwrap();
    let input = "{\"id\":\"a\",\"prompt\":\"hi\"}\nnot json\n\n{\"id\":7,\"prompt\":\"Prove that the square root of 2 is irrational, step by step.\"}\n[1,\"hi\"]\n{\"id\":\"b\",\"prompt\":5}\n";
    let o = run(dir.path(), &["score"], Some(input));
    // Every line answered, and the exit status says some failed.
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("3 of 6 lines could not be scored"),
        "{}",
        stderr(&o)
    );
    let lines: Vec<Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 5);
    // An array is not an object with an id and a prompt.
    assert!(
        lines[3]["error"]
            .as_str()
            .unwrap()
            .contains("not a JSON object"),
        "{}",
        lines[3]
    );
    // A bad prompt's line keeps its id.
    assert_eq!(lines[4]["id"], "b", "{}", lines[4]);
    assert!(lines[4]["error"].is_string());
    let lines = &lines[..3];
    assert_eq!(lines[0]["id"], "a");
    assert!(lines[1]["error"].as_str().unwrap().contains("expected"));
    assert_eq!(lines[1]["line"], 2);
    assert_eq!(lines[2]["id"], 7);
    for l in [&lines[0], &lines[2]] {
        let s = l["score"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&s));
        assert!(["free", "cheap", "medium", "premium"].contains(&l["tier"].as_str().unwrap()));
        assert!(l["model"].as_str().unwrap().contains('/'));
        assert!(l["reasons"].is_array());
    }
}

/// The tier `score` prints is the one its model is from: with only
/// Anthropic enabled, a trivial prompt lands in the cheap tier (where
/// Claude Haiku 5.5 is, Anthropic's cheapest), as `recommend` says, not
/// "free" beside a paid model.
#[test]
fn score_prints_the_tier_its_model_is_from() {
    let dir = tempfile::tempdir().unwrap();
    let o = command(dir.path())
        .env("ANTHROPIC_API_KEY", "sk-ant-FAKE-score-0000000000")
        .env("ANTHROPIC_BASE_URL", "http://127.0.0.1:9")
        .arg("score")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin
                .take()
                .unwrap()
                .write_all(b"{\"id\":\"a\",\"prompt\":\"hello\"}\n")?;
            c.wait_with_output()
        })
        .unwrap();
    let line: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(line["tier"], "cheap", "{line}");
    assert!(
        line["model"].as_str().unwrap().starts_with("anthropic/"),
        "{line}"
    );
    let r = command(dir.path())
        .env("ANTHROPIC_API_KEY", "sk-ant-FAKE-score-0000000000")
        .env("ANTHROPIC_BASE_URL", "http://127.0.0.1:9")
        .args(["recommend", "hello", "--json"])
        .output()
        .unwrap();
    let r: Value = serde_json::from_str(&stdout(&r)).unwrap();
    assert_eq!(r["tier"], line["tier"], "{r}");
}

/// `score` answers each line as soon as it is read (a caller that writes
/// a line and waits is not left hanging until EOF), survives a line that
/// is not UTF-8, accepts a byte-order mark, and reports the tier routing
/// would use (one cheaper when the score is unsure) with a model of it.
#[test]
fn score_answers_line_by_line_and_survives_bytes_that_are_not_utf8() {
    use std::io::{BufRead, BufReader, Write};
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = command(dir.path());
    let mut child = cmd
        .env("DEEPSEEK_API_KEY", "sk-FAKE-score-0000000000")
        .arg("score")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let answers = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(answers).lines() {
            let _ = tx.send(line.unwrap());
        }
    });
    let next = || {
        let l = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("no answer to a line while stdin stays open");
        serde_json::from_str::<Value>(&l).unwrap()
    };
    stdin
        .write_all("\u{feff}{\"id\":\"bom\",\"prompt\":\"hi\"}\n".as_bytes())
        .unwrap();
    stdin.flush().unwrap();
    let first = next();
    assert_eq!(first["id"], "bom", "{first}");
    stdin
        .write_all(b"{\"id\":\"x\",\"prompt\":\"\xff\xfe\"}\n")
        .unwrap();
    stdin.flush().unwrap();
    let bad = next();
    assert_eq!(bad["line"], 2, "{bad}");
    assert!(
        bad["error"].as_str().unwrap().contains("not UTF-8"),
        "{bad}"
    );
    stdin
        .write_all(b"{\"id\":3,\"prompt\":\"What is the capital of France?\"}\n")
        .unwrap();
    drop(stdin);
    let third = next();
    assert_eq!(third["id"], 3, "{third}");
    // Every line answered; the status says one could not be scored.
    assert_eq!(child.wait().unwrap().code(), Some(1));
    // Only DeepSeek is enabled: every tier is answered by one of its
    // models, the way routing would move to the nearest enabled tier.
    for l in [&first, &third] {
        let model = l["model"].as_str().unwrap();
        assert!(model.starts_with("deepseek/"), "{l}");
    }
    // The tier is routing's: one cheaper than the scored tier when unsure.
    let cfg = dir.path().join("cfg.toml");
    let s = third["score"].as_f64().unwrap();
    std::fs::write(
        &cfg,
        format!("[routing]\nthresholds = [{:.6}, 0.98, 0.99]\n", s - 0.01),
    )
    .unwrap();
    let mut cmd = command(dir.path());
    let o = cmd
        .env("COST_OPTIMIZER_CONFIG", &cfg)
        .arg("score")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin
                .take()
                .unwrap()
                .write_all(b"{\"id\":1,\"prompt\":\"What is the capital of France?\"}\n")?;
            c.wait_with_output()
        })
        .unwrap();
    let l: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(
        l["tier"], "free",
        "score {s} is within 0.03 above the cheap boundary: {l}"
    );
}

#[test]
fn budget_and_usage_commands_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let o = run(
        dir.path(),
        &["budget", "--set", "12.5", "--mode", "warn", "--json"],
        None,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let b: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(b["status"]["limit_usd"], 12.5);
    let o = run(dir.path(), &["usage", "--json"], None);
    let u: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(u["budget"]["limit_usd"], 12.5);
    assert_eq!(u["budget"]["mode"], "warn");
    // Showing a budget says where its alerts go, as setting it did (it
    // said no webhook at all, so a script concluded none was set).
    let o = run(
        dir.path(),
        &[
            "budget",
            "--set",
            "12.5",
            "--webhook-url",
            "https://hooks.example.com/secret/path",
        ],
        None,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(dir.path(), &["budget", "--json"], None);
    let b: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(b["status"]["limit_usd"], 12.5);
    let hook = b["webhook"].as_str().unwrap_or_else(|| panic!("{b}"));
    assert!(
        hook.contains("hooks.example.com") && !hook.contains("secret"),
        "{b}"
    );
    let o = run(dir.path(), &["budget"], None);
    assert!(stdout(&o).contains("hooks.example.com"), "{}", stdout(&o));
    // `recommend --user` sees that user's budget, as `get_recommendation`
    // with `user_id` does.
    let o = run(
        dir.path(),
        &["budget", "--set", "0.0001", "--user", "bob"],
        None,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let recommend = |args: &[&str]| {
        command(dir.path())
            .env("DEEPSEEK_API_KEY", "sk-FAKE-recommend")
            .env("DEEPSEEK_BASE_URL", "http://127.0.0.1:9")
            .args(["recommend", "hello", "--json"])
            .args(args)
            .output()
            .unwrap()
    };
    json_error(
        &recommend(&["--user", "bob"]),
        "budget_refused",
        "remaining budget",
    );
    let o = recommend(&[]);
    assert!(o.status.success(), "{}", stderr(&o));
    // Bad input: exit code 2 and a message naming the field.
    let o = run(dir.path(), &["budget", "--set", "-3"], None);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("monthly_limit"), "{}", stderr(&o));
    // With --json the failure is JSON on stdout too, for scripts.
    let o = run(dir.path(), &["budget", "--set", "-3", "--json"], None);
    assert_eq!(o.status.code(), Some(2));
    let e: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(e["error"]["kind"], "invalid_argument", "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("monthly_limit"),
        "{e}"
    );
}

/// A one-connection HTTP server on 127.0.0.1: answers its request with
/// `head`, then `mib` MiB of spaces (or until the client hangs up). Returns
/// its port.
fn answer_once(head: &'static [u8], mib: usize) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        if let Ok((mut conn, _)) = listener.accept() {
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            let _ = conn.write_all(head);
            let chunk = vec![b' '; 1 << 20];
            for _ in 0..mib {
                if conn.write_all(&chunk).is_err() {
                    break;
                }
            }
        }
    });
    port
}

#[test]
fn pricing_refresh_validates_before_replacing() {
    let dir = tempfile::tempdir().unwrap();
    // A catalog that lost almost everything is refused, and nothing is written.
    let tiny = dir.path().join("tiny.json");
    std::fs::write(
        &tiny,
        r#"{"claude-x":{"litellm_provider":"anthropic","mode":"chat","input_cost_per_token":1e-6,"output_cost_per_token":2e-6}}"#,
    )
    .unwrap();
    let o = run(
        dir.path(),
        &["pricing", "refresh", "--file", tiny.to_str().unwrap()],
        None,
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("shrink"), "{}", stderr(&o));
    assert!(!dir.path().join("pricing/catalog.json").exists());
    // Plain http to another machine is refused before anything is fetched.
    let o = run(
        dir.path(),
        &[
            "pricing",
            "refresh",
            "--url",
            "http://prices.example/catalog.json",
        ],
        None,
    );
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("must be an https URL"),
        "{}",
        stderr(&o)
    );
    // A server that never stops sending (plain http is fine to this
    // machine) is cut off at 64 MiB.
    let port = answer_once(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n{",
        80,
    );
    let url = format!("http://127.0.0.1:{port}/catalog.json");
    let o = run(dir.path(), &["pricing", "refresh", "--url", &url], None);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("larger than 64 MiB"), "{}", stderr(&o));
    assert!(!dir.path().join("pricing/catalog.json").exists());
    // A redirect to plain http elsewhere is not followed.
    let port = answer_once(
        b"HTTP/1.1 302 Found\r\nlocation: http://prices.example/catalog.json\r\ncontent-length: 0\r\n\r\n",
        0,
    );
    let url = format!("http://localhost:{port}/catalog.json");
    let o = run(dir.path(), &["pricing", "refresh", "--url", &url], None);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("HTTP 302"), "{}", stderr(&o));
    // Garbage is refused.
    std::fs::write(&tiny, "<html>rate limited</html>").unwrap();
    let o = run(
        dir.path(),
        &["pricing", "refresh", "--file", tiny.to_str().unwrap()],
        None,
    );
    assert!(!o.status.success());
    // The error names the file, and what is wrong with it.
    let e = stderr(&o);
    assert!(
        e.contains(&format!("the catalog from {} was not used", tiny.display()))
            && e.contains("not a LiteLLM catalog"),
        "{e}"
    );
    // A complete catalog with a changed price is accepted and used.
    let bundled = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/pricing/litellm_subset.json"),
    )
    .unwrap();
    let mut cat: Value = serde_json::from_str(&bundled).unwrap();
    cat["claude-haiku-4-5"]["input_cost_per_token"] = Value::from(2e-6);
    let full = dir.path().join("full.json");
    std::fs::write(&full, cat.to_string()).unwrap();
    let o = run(
        dir.path(),
        &["pricing", "refresh", "--file", full.to_str().unwrap()],
        None,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("pricing refreshed"));
    let o = run(
        dir.path(),
        &["costs", "--model", "anthropic/claude-haiku-4-5", "--json"],
        None,
    );
    let t: Value = serde_json::from_str(&stdout(&o)).unwrap();
    let row = t["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["model"] == "anthropic/claude-haiku-4-5")
        .unwrap()
        .clone();
    assert_eq!(row["input_per_mtok"], 2.0);
    let doctor = |dir: &std::path::Path| -> Value {
        let o = run(dir, &["doctor", "--json"], None);
        assert!(o.status.success(), "{}", stderr(&o));
        serde_json::from_str(&stdout(&o)).unwrap()
    };
    assert_eq!(doctor(dir.path())["pricing_source"]["kind"], "refreshed");
    let haiku_input = |dir: &std::path::Path| {
        let o = run(
            dir,
            &["costs", "--model", "anthropic/claude-haiku-4-5", "--json"],
            None,
        );
        let t: Value = serde_json::from_str(&stdout(&o)).unwrap();
        t["models"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["model"] == "anthropic/claude-haiku-4-5")
            .unwrap()["input_per_mtok"]
            .clone()
    };
    // A catalog refreshed before this version's bundle (an upgrade since)
    // is still the user's choice: used, and doctor suggests a refresh.
    let refreshed = dir.path().join("pricing/catalog.json");
    std::fs::File::options()
        .write(true)
        .open(&refreshed)
        .unwrap()
        .set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_767_225_600))
        .unwrap();
    assert_eq!(
        haiku_input(dir.path()),
        Value::from(2.0),
        "the refreshed price"
    );
    let d = doctor(dir.path());
    assert_eq!(d["pricing_source"]["kind"], "refreshed", "{d}");
    assert_eq!(d["pricing_source"]["older_than_bundle"], true, "{d}");
    assert_eq!(d["pricing_source"]["as_of"], "2026-01-01", "{d}");
    let o = run(dir.path(), &["doctor"], None);
    assert!(
        stdout(&o).contains("OLDER than this version's bundled catalog"),
        "{}",
        stdout(&o)
    );
    // A refreshed file cut short (a crash, a hand edit) does not stop the
    // commands, nor the refresh that replaces it: the bundled prices apply.
    std::fs::write(dir.path().join("pricing/catalog.json"), "").unwrap();
    let o = run(dir.path(), &["doctor", "--json"], None);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("pricing refresh"), "{}", stderr(&o));
    let d: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(d["pricing_source"]["kind"], "refresh_set_aside", "{d}");
    let o = run(
        dir.path(),
        &["pricing", "refresh", "--file", full.to_str().unwrap()],
        None,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(dir.path(), &["pricing", "reset"], None);
    assert!(o.status.success());
    assert!(!dir.path().join("pricing/catalog.json").exists());
}

#[test]
fn retention_prunes_and_corrupt_ledger_is_explained() {
    let dir = tempfile::tempdir().unwrap();
    // 40 days: always before the default monthly period.
    let o = run(dir.path(), &["retention", "--older-than-days", "40"], None);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("deleted 0 ledger rows"));
    // Whole UTC days are pruned: the cut is at a midnight.
    assert!(stdout(&o).contains("T00:00:00"), "{}", stdout(&o));
    // Calls 50 and 10 days old: the first goes, the second stays, and the
    // daily rollup the reports read follows.
    let day_ms: i64 = 86_400_000;
    let now_ms = jiff::Timestamp::now().as_millisecond();
    for (id, age_days) in [("old", 50), ("recent", 10)] {
        common::insert_past_call(
            &dir.path().join("ledger.sqlite3"),
            now_ms - age_days * day_ms,
            id,
        );
    }
    let o = run(dir.path(), &["retention", "--older-than-days", "40"], None);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("deleted 1 ledger rows"),
        "{}",
        stdout(&o)
    );
    let db = rusqlite::Connection::open(dir.path().join("ledger.sqlite3")).unwrap();
    let left: Vec<String> = db
        .prepare("SELECT request_id FROM calls")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(left, ["recent"]);
    let rollup: (i64, i64) = db
        .query_row(
            "SELECT sum(ok), sum(cost_nanos) FROM calls_daily",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(rollup, (1, 5000));
    drop(db);
    let o = run(dir.path(), &["usage", "--days", "60", "--json"], None);
    let u: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(u["calls"], 1, "{u}");
    // Pruning into the current period would take its calls out of the
    // budget's spend: refused. A daily budget set for "u" does not move the
    // floor, which is the default budget's month (UTC): from the 3rd of a
    // month on, keeping 1 day would cut into it (on the 1st and 2nd, 1 day
    // still reaches back before it, and the command rightly runs).
    let o = run(
        dir.path(),
        &["budget", "--set", "5", "--user", "u", "--period", "daily"],
        None,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    // Nor does a daily budget stored for user "default": the configured
    // monthly default still governs every user without a budget of their
    // own (it used to be skipped once "default" had a row).
    let o = run(
        dir.path(),
        &["budget", "--set", "5", "--period", "daily"],
        None,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(dir.path(), &["retention", "--older-than-days", "1"], None);
    let day = jiff::Timestamp::now().in_tz("UTC").unwrap().day();
    if day >= 3 {
        assert!(!o.status.success());
        let e = stderr(&o);
        assert!(
            e.contains("current budget period") && e.contains("\"default\"'s budget"),
            "{e}"
        );
        // The least it accepts, as it says (it said one day more).
        let need = day - 1;
        assert!(e.contains(&format!("keep at least {need} days")), "{e}");
        let fewer = (need - 1).to_string();
        let o = run(
            dir.path(),
            &["retention", "--older-than-days", &fewer],
            None,
        );
        assert!(!o.status.success(), "{fewer} days must be refused");
        let o = run(
            dir.path(),
            &["retention", "--older-than-days", &need.to_string()],
            None,
        );
        assert!(o.status.success(), "{}", stderr(&o));
    } else {
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let o = run(dir.path(), &["retention"], None);
    assert_eq!(o.status.code(), Some(2), "a wrong argument: exit 2");
    assert!(stderr(&o).contains("--older-than-days"));
    for args in [
        &["retention", "--older-than-days", "0"][..],
        &["calibrate", "--days", "0"],
        &["budget", "--thresholds", "0.5"],
    ] {
        let o = run(dir.path(), args, None);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
    }
    // With --json the failure is JSON on stdout too, whichever check
    // refused it.
    let o = run(dir.path(), &["calibrate", "--days", "0", "--json"], None);
    assert_eq!(o.status.code(), Some(2));
    let e: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(e["error"]["kind"], "invalid_argument", "{e}");
    // So does an argument clap refuses.
    let o = run(dir.path(), &["usage", "--days", "abc", "--json"], None);
    assert_eq!(o.status.code(), Some(2));
    let e: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(e["error"]["kind"], "invalid_argument", "{e}");
    assert!(
        e["error"]["message"].as_str().unwrap().contains("'abc'"),
        "{e}"
    );
    // A config file that cannot be loaded fails before any command runs:
    // as JSON too.
    let cfg = dir.path().join("broken.toml");
    std::fs::write(&cfg, "[budget\nmonthly_usd = 5\n").unwrap();
    let o = command(dir.path())
        .env("COST_OPTIMIZER_CONFIG", &cfg)
        .args(["usage", "--json"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    json_error(&o, "invalid_config", "broken.toml");
    // So is a setting found wrong later, when the core is built.
    std::fs::write(
        &cfg,
        "[pricing.overrides.\"openai/gpt-4o\"]\ninput_per_mtok = 1.0\noutput_per_mtok = 2.0\n",
    )
    .unwrap();
    let o = command(dir.path())
        .env("COST_OPTIMIZER_CONFIG", &cfg)
        .args(["recommend", "hello", "--json"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    json_error(&o, "invalid_config", "broken.toml");
    // A base URL without its scheme is a setting to fix, by name.
    let o = command(dir.path())
        .env("DEEPSEEK_API_KEY", "sk-FAKE-0000000000000")
        .env("DEEPSEEK_BASE_URL", "localhost:9")
        .args(["recommend", "hello", "--json"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    json_error(&o, "invalid_config", "DEEPSEEK_BASE_URL");
    // Output piped into a reader that stops early ends quietly.
    let mut child = command(dir.path())
        .args(["costs", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
    assert_ne!(o.status.code(), Some(101), "{}", stderr(&o));

    let bad = tempfile::tempdir().unwrap();
    std::fs::write(
        bad.path().join("ledger.sqlite3"),
        "this is not a database, it is a text file that got in the way".repeat(100),
    )
    .unwrap();
    let o = run(bad.path(), &["usage"], None);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("damaged or not a database"), "{e}");
    assert!(!e.contains("panicked"), "{e}");
    // Read-only commands that need no ledger still work.
    let o = run(bad.path(), &["costs", "--provider", "anthropic"], None);
    assert!(o.status.success(), "{}", stderr(&o));
}

/// A log directory that cannot be written is said (stderr still gets the
/// logs), instead of `doctor` naming a log file that never fills.
#[test]
fn an_unwritable_log_directory_is_said() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("logs"), "not a directory").unwrap();
    let o = run(dir.path(), &["doctor"], None);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("cannot write the log file; logging to stderr only"),
        "{}",
        stderr(&o)
    );
    assert!(!stdout(&o).contains("cannot write"), "stdout stays clean");
}

/// A secret set in the wrong variable (a Slack webhook URL as the webhook
/// format) is not quoted back by the settings error: nothing is registered
/// for redaction before the settings load.
#[test]
fn a_settings_error_does_not_quote_a_secret_back() {
    let dir = tempfile::tempdir().unwrap();
    let hook = "https://hooks.slack.com/services/T0AAAA/B0BBBB/SecretToken12345";
    let o = command(dir.path())
        .arg("doctor")
        .env("COST_OPTIMIZER_ALERT_WEBHOOK_FORMAT", hook)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(err.contains("COST_OPTIMIZER_ALERT_WEBHOOK_FORMAT"), "{err}");
    assert!(!err.contains("SecretToken12345"), "{err}");
}

/// `--prefer` on `recommend` (and `complete`) reaches routing: a bad value
/// exits 2 naming the flag's values; `quality` moves a score just below a
/// boundary up a tier, and `score` follows the configured preference.
#[test]
fn prefer_flag_and_setting_reach_routing() {
    let dir = tempfile::tempdir().unwrap();
    let gemini = [
        ("GEMINI_API_KEY", "FAKE-gemini-cli-prefer-0000000"),
        ("GEMINI_BASE_URL", "http://127.0.0.1:9"),
    ];
    let recommend = |extra: &[&str], env: &[(&str, &str)]| {
        let mut c = command(dir.path());
        c.envs(gemini).envs(env.iter().copied());
        c.args(["recommend", "Write a short poem about the sea.", "--json"])
            .args(extra);
        c.output().unwrap()
    };
    let o = recommend(&["--prefer", "fast"], &[]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("neither cost nor quality"),
        "{o:?}"
    );
    let o = command(dir.path())
        .envs(gemini)
        .args(["complete", "hello", "--prefer", "fast"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("prefer"),
        "{o:?}"
    );
    let plain: Value = serde_json::from_str(&stdout(&recommend(&[], &[]))).unwrap();
    let score = plain["complexity"]["score"].as_f64().unwrap();
    let cfg = dir.path().join("near.toml");
    std::fs::write(
        &cfg,
        format!("[routing]\nthresholds = [{}, 0.97, 0.98]\n", score + 0.01),
    )
    .unwrap();
    let cfg = cfg.to_str().unwrap();
    let near = [("COST_OPTIMIZER_CONFIG", cfg)];
    let tier = |o: Output| -> String {
        let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
        v["tier"].as_str().unwrap().to_string()
    };
    assert_eq!(tier(recommend(&[], &near)), "free");
    assert_eq!(tier(recommend(&["--prefer", "quality"], &near)), "cheap");
    // `score` reads the configured preference.
    let line = r#"{"id":"a","prompt":"Write a short poem about the sea."}"#;
    let scored = |prefer: &str| -> Value {
        let mut c = command(dir.path());
        c.envs(gemini)
            .env("COST_OPTIMIZER_CONFIG", cfg)
            .env("COST_OPTIMIZER_PREFER", prefer)
            .arg("score")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        let mut child = c.spawn().unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(line.as_bytes())
            .unwrap();
        let o = child.wait_with_output().unwrap();
        serde_json::from_str(stdout(&o).trim()).unwrap()
    };
    assert_eq!(scored("cost")["tier"], "free");
    assert_eq!(scored("quality")["tier"], "cheap");
}

/// `recommend -` reads the prompt from stdin without the line end `echo`
/// adds: the same prompt, the same score, typed or piped.
#[test]
fn a_prompt_from_stdin_is_the_prompt_typed() {
    let dir = tempfile::tempdir().unwrap();
    let prompt = "What is 2+2?";
    let recommend = |arg: &str, stdin: Option<&str>| -> Output {
        let mut c = command(dir.path());
        c.envs([
            ("DEEPSEEK_API_KEY", "FAKE-deepseek-cli-stdin-000000"),
            ("DEEPSEEK_BASE_URL", "http://127.0.0.1:9"),
        ])
        .args(["recommend", arg, "--json"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        {
            use std::io::Write;
            let mut w = child.stdin.take().unwrap();
            w.write_all(stdin.unwrap_or_default().as_bytes()).unwrap();
        }
        child.wait_with_output().unwrap()
    };
    let typed = recommend(prompt, None);
    let piped = recommend("-", Some(&format!("{prompt}\n")));
    let score = |o: &Output| -> f64 {
        let v: Value = serde_json::from_str(&stdout(o)).unwrap_or_else(|e| panic!("{e}: {o:?}"));
        v["complexity"]["score"].as_f64().unwrap()
    };
    assert_eq!(score(&typed), score(&piped));
}

/// `doctor` with a setting that does not load still says what it can:
/// the error, where it looked, which providers have keys (never the keys).
#[test]
fn doctor_with_a_bad_setting_still_reports_what_it_can() {
    let dir = tempfile::tempdir().unwrap();
    let key = "FAKE-deepseek-doctor-key-0000001";
    let o = command(dir.path())
        .envs([
            ("COST_OPTIMIZER_MONTHLY_BUDGET", "abc"),
            ("DEEPSEEK_API_KEY", key),
        ])
        .arg("doctor")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    let out = stdout(&o);
    assert!(out.contains("Settings: NOT LOADED"), "{out}");
    assert!(out.contains("COST_OPTIMIZER_MONTHLY_BUDGET"), "{out}");
    assert!(
        out.contains("Provider keys in the environment: DeepSeek"),
        "{out}"
    );
    assert!(
        out.contains("run `ai-cost-optimizer doctor` again"),
        "{out}"
    );
    assert!(!out.contains(key) && !stderr(&o).contains(key));
}

/// `complete` keeps SIGPIPE ignored (a reader gone must not kill it before
/// its billed call is recorded); a reader gone before the answer is
/// printed then ends it quietly, the call recorded, not with a panic.
#[tokio::test(flavor = "multi_thread")]
async fn complete_to_a_reader_that_left_records_and_exits_quietly() {
    let fake = common::FakeProvider::start(common::openai_ok(
        "deepseek-v3.2",
        "Hello there.",
        serde_json::json!({"prompt_tokens": 5, "completion_tokens": 3}),
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    for json in [true, false] {
        let mut c = command(dir.path());
        c.envs([
            (
                "DEEPSEEK_API_KEY",
                "FAKE-deepseek-cli-pipe-0000000".to_string(),
            ),
            ("DEEPSEEK_BASE_URL", fake.base.clone()),
        ])
        .args(["complete", "hello"])
        .args(if json { vec!["--json"] } else { vec![] })
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        // The reader leaves before anything is written.
        drop(child.stdout.take());
        let o = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
            .await
            .unwrap();
        let err = stderr(&o);
        assert!(!err.contains("panicked"), "{err}");
        assert_ne!(o.status.code(), Some(101), "{err}");
    }
    let o = run(dir.path(), &["usage", "--json"], None);
    let u: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(u["calls"], 2, "{u}");
}
