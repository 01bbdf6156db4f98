//! Storage faults under the real server: a read-only data directory, a
//! ledger locked by another process, a disk that fills up in the middle of
//! a call. The server must say what is wrong and where, keep answering the
//! tools that do not write, refuse to spend money it cannot record, and
//! never present a call it could not record as recorded.
//! (A corrupt ledger file: tests/mcp_tools.rs
//! `corrupt_ledger_keeps_read_only_tools_working`.)

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use rusqlite::Connection;
use serde_json::{Value, json};

const KEY: &str = "sk-deepseek-FAKE-storage-key-6262626262";

fn env(fake: &FakeProvider) -> Vec<(&'static str, String)> {
    vec![
        ("DEEPSEEK_API_KEY", KEY.into()),
        ("DEEPSEEK_BASE_URL", fake.base.clone()),
    ]
}

fn reply_ok() -> Reply {
    openai_sse(
        "deepseek-v3.2",
        &["ok"],
        json!({"prompt_tokens": 1000, "completion_tokens": 500, "total_tokens": 1500}),
    )
}

fn prompt(p: &str) -> Value {
    json!({"prompt": p, "tier": "cheap", "max_tokens": 600})
}

/// The text of a `tools/call` reply, and whether it is an error.
fn tool_text(v: &Value) -> (String, bool) {
    let r = &v["result"];
    let text = r["content"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|c| c["text"].as_str())
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default();
    (text, r["isError"] == json!(true))
}

async fn call(s: &mut RawServer, id: i64, name: &str, args: Value) -> Value {
    s.call(id, name, args).await;
    s.reply(id, Duration::from_secs(60)).await
}

/// The read-only tools still answer.
async fn read_only_tools_answer(s: &mut RawServer, id: i64) {
    let v = call(s, id, "check_model_costs", json!({"provider": "deepseek"})).await;
    assert!(!tool_text(&v).1, "check_model_costs: {v}");
    let v = call(s, id + 1, "get_recommendation", json!({"prompt": "hello"})).await;
    assert!(!tool_text(&v).1, "get_recommendation: {v}");
}

async fn wait_for_requests(fake: &FakeProvider, n: usize) {
    for _ in 0..1000 {
        if fake.requests().len() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the provider never got request {n}");
}

fn calls_in(ledger: &Path) -> i64 {
    Connection::open(ledger)
        .unwrap()
        .query_row("SELECT count(*) FROM calls", [], |r| r.get(0))
        .unwrap()
}

/// Runs the CLI as `uid` (when set) with the test environment.
fn cli_as(data: &Path, uid: Option<u32>, args: &[&str]) -> std::process::Output {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new(binary());
    cmd.env_clear();
    for (k, v) in base_env(data) {
        cmd.env(k, v);
    }
    if let Some(uid) = uid {
        cmd.uid(uid).gid(uid);
    }
    cmd.args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

#[tokio::test]
async fn read_only_data_directory() {
    let fake = FakeProvider::start(reply_ok()).await;
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let ledger = data.join("ledger.sqlite3");
    // A ledger with one call in it, then the directory turns read-only.
    let s = spawn(&data, &env(&fake)).await;
    let first = s.ok("complete_prompt", prompt("first")).await;
    s.stop().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // 1000 input and 500 output tokens on deepseek-v3.2.
    assert_usd(&first["cost_usd"], 1000.0 * 0.28e-6 + 500.0 * 0.40e-6);

    make_read_only(&data);
    set_mode(root.path(), 0o755);
    // An empty read-only directory too: there is no ledger to read.
    let empty = root.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    set_mode(&empty, 0o555);
    // Root writes anywhere, so as root the server runs as `nobody`.
    let as_root = unsafe { libc::geteuid() } == 0;
    let uid = as_root.then_some(65534);
    let stderr_path = root.path().join("stderr.log");
    let stderr = std::fs::File::create(&stderr_path).unwrap();
    set_mode(&stderr_path, 0o666);
    let mut s = spawn_raw_with(&data, &env(&fake), |cmd| {
        if let Some(uid) = uid {
            cmd.uid(uid).gid(uid);
        }
        cmd.stderr(stderr);
    });
    s.init().await;
    read_only_tools_answer(&mut s, 1).await;

    // Reports read the ledger as it is, and say it is read-only.
    let v = call(&mut s, 3, "query_usage", json!({"days": 1})).await;
    let (text, is_error) = tool_text(&v);
    assert!(!is_error, "{v}");
    let u = &v["result"]["structuredContent"];
    assert_eq!(u["calls"], json!(1), "{u}");
    assert_usd(&u["total_cost_usd"], first["cost_usd"].as_f64().unwrap());
    assert_eq!(u["totals"]["input_tokens"], json!(1000), "{u}");
    assert_eq!(u["totals"]["output_tokens"], json!(500), "{u}");
    assert_eq!(u["totals"]["failed_attempts"], json!(0), "{u}");
    let dir = data.display().to_string();
    let reason = format!("the data directory {dir} is not writable by this user");
    let read_only = format!(
        "the ledger at {} is read-only ({reason}): usage reports work, but calls that spend money and budget changes are refused, since their cost could not be recorded. Make {dir} and the files in it writable by this user, or set COST_OPTIMIZER_DATA_DIR to a writable directory",
        ledger.display()
    );
    assert_eq!(u["warning"], json!(read_only), "{u}");
    assert!(text.contains(&read_only), "the text says it too: {text}");
    // Budget status is shown with the recommendation.
    let v = call(&mut s, 4, "get_recommendation", json!({"prompt": "hello"})).await;
    assert!(
        v["result"]["structuredContent"]["budget"].is_object(),
        "{v}"
    );

    // Spending is refused, before any provider call, saying why and how.
    let before = fake.requests().len();
    let v = call(&mut s, 5, "complete_prompt", prompt("second")).await;
    let (text, is_error) = tool_text(&v);
    assert!(is_error, "{v}");
    assert_eq!(text, format!("Ledger unavailable: {read_only}"));
    assert_eq!(
        fake.requests().len(),
        before,
        "no provider call without a ledger to record it"
    );
    let v = call(&mut s, 6, "set_budget", json!({"monthly_limit": 5})).await;
    let (text, is_error) = tool_text(&v);
    assert!(is_error, "{v}");
    assert_eq!(text, format!("Ledger unavailable: {read_only}"));
    assert!(s.alive());
    s.close().await;

    // The CLI reports too.
    let o = cli_as(&data, uid, &["usage", "--days", "1", "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let u: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(u["calls"], json!(1), "{u}");
    assert_eq!(u["warning"], json!(read_only), "{u}");
    let o = cli_as(&data, uid, &["budget", "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let b: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_usd(
        &b["status"]["spent_usd"],
        first["cost_usd"].as_f64().unwrap(),
    );

    // No ledger at all in a read-only directory: the error names the
    // directory (and the file it could not create).
    let mut s = spawn_raw_with(&empty, &env(&fake), |cmd| {
        if let Some(uid) = uid {
            cmd.uid(uid).gid(uid);
        }
        cmd.stderr(std::fs::File::create(root.path().join("stderr2.log")).unwrap());
    });
    s.init().await;
    let v = call(&mut s, 1, "complete_prompt", prompt("third")).await;
    let (text, is_error) = tool_text(&v);
    assert!(is_error, "{v}");
    assert!(
        text.starts_with(&format!(
            "Ledger unavailable: cannot use the data directory {}: ",
            empty.display()
        )) && text.contains(&format!(
            "(ledger file {})",
            empty.join("ledger.sqlite3").display()
        )),
        "{text}"
    );
    assert_eq!(fake.requests().len(), before);
    s.close().await;

    make_writable(&data);
    set_mode(&empty, 0o755);
    assert_eq!(calls_in(&ledger), 1);
}

/// A writer that died (SIGKILL) leaves its `-wal` (with commits the main
/// file does not have yet) and `-shm` behind; then the directory turns
/// read-only. The reader must open through them (`mode=ro`), not around
/// them (`immutable=1` would not see the WAL's commits).
#[tokio::test]
async fn read_only_directory_after_a_writer_crashed() {
    let fake = FakeProvider::start(reply_ok()).await;
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let ledger = data.join("ledger.sqlite3");
    // `full`: no background checkpoint, so the commits stay in the WAL.
    let mut env_full = env(&fake);
    env_full.push(("COST_OPTIMIZER_LEDGER_SYNC", "full".into()));
    let mut s = spawn_raw(&data, &env_full);
    s.init().await;
    let v = call(&mut s, 1, "complete_prompt", prompt("first")).await;
    let cost = v["result"]["structuredContent"]["cost_usd"].clone();
    assert!(cost.as_f64().unwrap() > 0.0, "{v}");
    s.kill().await;
    let wal = data.join("ledger.sqlite3-wal");
    assert!(
        std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0) > 0,
        "the WAL holds the commits"
    );

    make_read_only(&data);
    set_mode(root.path(), 0o755);
    let uid = (unsafe { libc::geteuid() } == 0).then_some(65534);
    let stderr = std::fs::File::create(root.path().join("stderr.log")).unwrap();
    let mut s = spawn_raw_with(&data, &env(&fake), |cmd| {
        if let Some(uid) = uid {
            cmd.uid(uid).gid(uid);
        }
        cmd.stderr(stderr);
    });
    s.init().await;
    let v = call(&mut s, 2, "query_usage", json!({"days": 1})).await;
    let u = &v["result"]["structuredContent"];
    assert_eq!(u["calls"], json!(1), "the WAL's commit is read: {v}");
    assert_usd(&u["total_cost_usd"], cost.as_f64().unwrap());
    assert!(
        u["warning"]
            .as_str()
            .unwrap_or_default()
            .contains("is read-only"),
        "{u}"
    );
    let v = call(&mut s, 3, "complete_prompt", prompt("second")).await;
    assert!(tool_text(&v).1, "{v}");
    assert_eq!(fake.requests().len(), 1, "no provider call");
    s.close().await;
    make_writable(&data);
    assert_eq!(calls_in(&ledger), 1);
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}

fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap()
}

/// Makes `dir` and everything in it read-only (dirs 0555, files 0444).
fn make_read_only(dir: &Path) {
    chmod_tree(dir, 0o555, 0o444);
}

/// Undoes [`make_read_only`], so the test can read the ledger back.
fn make_writable(dir: &Path) {
    chmod_tree(dir, 0o755, 0o644);
}

fn chmod_tree(dir: &Path, dirs: u32, files: u32) {
    for entry in walk(dir) {
        set_mode(&entry, if entry.is_dir() { dirs } else { files });
    }
    set_mode(dir, dirs);
}

#[tokio::test]
async fn ledger_locked_by_another_process() {
    let fake = FakeProvider::start(reply_ok()).await;
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger.sqlite3");
    let mut s = spawn_raw(dir.path(), &env(&fake));
    s.init().await;
    let v = call(&mut s, 1, "complete_prompt", prompt("first")).await;
    assert!(!tool_text(&v).1, "{v}");

    // Another process holds the write lock.
    let other = Connection::open(&ledger).unwrap();
    other.execute_batch("BEGIN EXCLUSIVE").unwrap();
    read_only_tools_answer(&mut s, 2).await;
    let v = call(&mut s, 4, "query_usage", json!({"days": 1})).await;
    assert!(!tool_text(&v).1, "reports read through a writer: {v}");
    let v = call(&mut s, 5, "complete_prompt", prompt("while locked")).await;
    let (text, is_error) = tool_text(&v);
    assert!(is_error, "{v}");
    assert!(
        text.contains("locked by another process") && text.contains(&ledger.display().to_string()),
        "{text}"
    );
    assert_eq!(fake.requests().len(), 1, "refused before calling anyone");
    other.execute_batch("ROLLBACK").unwrap();

    // The lock is taken while the provider is answering: the answer comes
    // back, and says plainly that its cost is not in the ledger.
    // The provider holds its answer until the lock is taken.
    fake.close_gate();
    s.call(6, "complete_prompt", prompt("locked mid-call"))
        .await;
    wait_for_requests(&fake, 2).await;
    other.execute_batch("BEGIN EXCLUSIVE").unwrap();
    fake.open_gate();
    // Longer than the ledger's busy timeout (5 s) after the answer.
    let v = s.reply(6, Duration::from_secs(60)).await;
    other.execute_batch("ROLLBACK").unwrap();
    let (text, is_error) = tool_text(&v);
    let c = &v["result"]["structuredContent"];
    assert!(!is_error, "the answer is delivered: {v}");
    assert_eq!(c["answer"], "ok");
    assert_eq!(c["recorded"], json!(false), "{v}");
    assert!(
        c["warning"]
            .as_str()
            .unwrap()
            .contains("could NOT be recorded"),
        "{c}"
    );
    assert!(
        text.contains("NOT be recorded"),
        "the text says it too: {text}"
    );
    assert_eq!(calls_in(&ledger), 1);

    // Lock gone: business as usual.
    let v = call(&mut s, 7, "complete_prompt", prompt("after")).await;
    assert_eq!(v["result"]["structuredContent"]["recorded"], json!(true));
    assert_eq!(calls_in(&ledger), 2);
    s.close().await;
}

/// The disk fills up (here: a file-size limit, RLIMIT_FSIZE, lowered on
/// the running server with `prlimit`, so writes past the end of any file
/// fail as on a full disk) after the call reserved its budget and while
/// the provider is answering.
#[tokio::test]
async fn disk_full_in_the_middle_of_a_call() {
    if std::process::Command::new("prlimit")
        .arg("--version")
        .output()
        .is_err()
    {
        skip("prlimit (util-linux) is not installed");
        return;
    }
    let fake = FakeProvider::start(reply_ok()).await;
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger.sqlite3");
    let mut s = spawn_raw(dir.path(), &env(&fake));
    s.init().await;
    let v = call(&mut s, 1, "complete_prompt", prompt("first")).await;
    assert_eq!(v["result"]["structuredContent"]["recorded"], json!(true));

    // The provider holds its answer until the limit is lowered.
    fake.close_gate();
    s.call(2, "complete_prompt", prompt("disk fills")).await;
    wait_for_requests(&fake, 2).await;
    let out = std::process::Command::new("prlimit")
        .args(["--pid", &s.pid().to_string(), "--fsize=1"])
        .output()
        .unwrap();
    if !out.status.success() {
        skip(&format!(
            "prlimit cannot lower the limit here: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
        return;
    }
    fake.open_gate();
    let v = s.reply(2, Duration::from_secs(60)).await;
    let c = &v["result"]["structuredContent"];
    assert_eq!(c["answer"], "ok", "{v}");
    assert_eq!(c["recorded"], json!(false), "{v}");
    let warning = c["warning"].as_str().unwrap();
    assert!(warning.contains("could NOT be recorded"), "{warning}");
    assert!(
        warning.contains(&format!(
            "cannot use the data directory {}: ",
            dir.path().display()
        )) && warning.contains(&format!("(ledger file {})", ledger.display())),
        "names the directory and the file: {warning}"
    );
    // A new call cannot reserve: refused before any provider is called.
    let v = call(&mut s, 3, "complete_prompt", prompt("still full")).await;
    let (text, is_error) = tool_text(&v);
    assert!(is_error, "{v}");
    assert!(text.contains(&dir.path().display().to_string()), "{text}");
    assert_eq!(fake.requests().len(), 2);
    read_only_tools_answer(&mut s, 4).await;
    assert!(s.alive(), "SIGXFSZ did not kill the server");
    s.kill().await;
    let db = Connection::open(&ledger).unwrap();
    let integrity: String = db
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(integrity, "ok");
    assert_eq!(calls_in(&ledger), 1, "only the recorded call is there");
}
