//! Keys never leave: every tool and several faults (a 401 and a 500 that
//! echo the key, a webhook URL carrying a token that fails and echoes its
//! URL) run with recognisable fake keys; then stdout, stderr, the log
//! files, the ledger and its WAL, and `doctor`/CLI output are searched for
//! them. Also: the data dir and every file in it are the user's alone.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use rusqlite::Connection;
use serde_json::{Value, json};

const DEEPSEEK: &str = "sk-LEAKCHECK-deepseek-0123456789abcdef";
const ANTHROPIC: &str = "sk-ant-LEAKCHECK-anthropic-fedcba9876543210";
const GEMINI: &str = "AIzaLEAKCHECK-gemini-5555555555555555";
const CEREBRAS: &str = "csk-LEAKCHECK-cerebras-4444444444444444";
const OPENROUTER: &str = "sk-or-LEAKCHECK-openrouter-3333333333333";
const HF: &str = "hf_LEAKCHECKhuggingface2222222222222222";
const HOOK_TOKEN: &str = "LEAKCHECK-hook-token-ZZZ999888777";
/// A gateway password in a base URL override (`http://user:pass@host`).
const PROXY_PASSWORD: &str = "LEAKCHECK-proxy-pass-AAA111222333";

const KEYS: [&str; 6] = [DEEPSEEK, ANTHROPIC, GEMINI, CEREBRAS, OPENROUTER, HF];

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// A reply that echoes `secret` back, as misbehaving providers and proxies do.
fn echo(status: u16, secret: &str) -> Reply {
    openai_error(
        status,
        &format!("Incorrect API key provided: {secret}. Authorization: Bearer {secret}"),
        "invalid_request_error",
    )
}

fn assert_clean(what: &str, hay: &str, secrets: &[&str]) {
    for s in secrets {
        if let Some(at) = hay.find(s) {
            let before: Vec<char> = hay[..at].chars().rev().take(300).collect();
            let context: String = before.into_iter().rev().collect();
            panic!("{what} contains the secret {s}: …{context}{s}");
        }
    }
}

#[tokio::test]
async fn no_output_or_file_holds_a_key_and_files_are_private() {
    let ok = FakeProvider::start(openai_sse(
        "deepseek-v3.2",
        &["fine"],
        json!({"prompt_tokens": 100, "completion_tokens": 50, "total_tokens": 150}),
    ))
    .await;
    // The first DeepSeek calls fail: 401 and 500, echoing the key.
    ok.push(echo(401, DEEPSEEK));
    ok.push(echo(500, DEEPSEEK));
    ok.push(echo(500, DEEPSEEK));
    ok.push(echo(500, DEEPSEEK));
    let anthropic = FakeProvider::start(anthropic_error(
        401,
        "authentication_error",
        &format!("invalid x-api-key: {ANTHROPIC}"),
    ))
    .await;
    let mut echoing = Vec::new();
    for key in [GEMINI, CEREBRAS, OPENROUTER, HF] {
        echoing.push(FakeProvider::start(echo(500, key)).await);
    }
    let hook = FakeProvider::start(Reply::json(
        500,
        json!({"error": format!("bad token {HOOK_TOKEN}")}),
    ))
    .await;
    let hook_url = format!("{}/services/T000/B000/{HOOK_TOKEN}", hook.base);

    let root = tempfile::tempdir().unwrap();
    // A data dir the server creates itself, to check the modes it picks.
    let data = root.path().join("fresh").join("data");
    let env: Vec<(&str, String)> = vec![
        ("DEEPSEEK_API_KEY", DEEPSEEK.into()),
        ("DEEPSEEK_BASE_URL", ok.base.clone()),
        ("ANTHROPIC_API_KEY", ANTHROPIC.into()),
        ("ANTHROPIC_BASE_URL", anthropic.base.clone()),
        ("GEMINI_API_KEY", GEMINI.into()),
        ("GEMINI_BASE_URL", echoing[0].base.clone()),
        ("CEREBRAS_API_KEY", CEREBRAS.into()),
        (
            "CEREBRAS_BASE_URL",
            echoing[1]
                .base
                .replacen("http://", &format!("http://gateway:{PROXY_PASSWORD}@"), 1),
        ),
        ("OPENROUTER_API_KEY", OPENROUTER.into()),
        ("OPENROUTER_BASE_URL", echoing[2].base.clone()),
        ("HF_TOKEN", HF.into()),
        ("HF_BASE_URL", echoing[3].base.clone()),
        ("COST_OPTIMIZER_LOG", "debug".into()),
    ];
    let stderr_path = root.path().join("server.stderr");
    let stderr = std::fs::File::create(&stderr_path).unwrap();
    let mut s = spawn_raw_with(&data, &env, |cmd| {
        cmd.stderr(stderr);
    });
    s.init().await;

    let mut id = 0;
    let mut outputs: Vec<Value> = Vec::new();
    let mut run = async |s: &mut RawServer, name: &str, args: Value| {
        id += 1;
        s.call(id, name, args).await;
        let r = s.reply(id, Duration::from_secs(60)).await;
        outputs.push(r.clone());
        r
    };
    // Faults first: 401, then 500s (retried), each echoing the key.
    run(
        &mut s,
        "complete_prompt",
        json!({"prompt": "hi", "force_provider": "deepseek"}),
    )
    .await;
    run(
        &mut s,
        "complete_prompt",
        json!({"prompt": "hi", "force_provider": "deepseek"}),
    )
    .await;
    for provider in ["anthropic", "gemini", "cerebras", "openrouter"] {
        run(
            &mut s,
            "complete_prompt",
            json!({"prompt": "hi", "force_provider": provider}),
        )
        .await;
    }
    // No routing tier lists a HuggingFace model: name one.
    run(
        &mut s,
        "complete_prompt",
        json!({"prompt": "hi", "force_model": "huggingface/meta-llama/Llama-3.1-8B-Instruct"}),
    )
    .await;
    // Every tool, with a webhook whose URL carries a token.
    run(
        &mut s,
        "set_budget",
        json!({"monthly_limit": 0.00001, "alert_thresholds": [0.5], "mode": "warn", "webhook_url": hook_url}),
    )
    .await;
    let r = run(
        &mut s,
        "complete_prompt",
        json!({"prompt": "hi", "force_provider": "deepseek"}),
    )
    .await;
    assert_eq!(
        r["result"]["structuredContent"]["recorded"],
        json!(true),
        "{r}"
    );
    run(&mut s, "get_recommendation", json!({"prompt": "hi"})).await;
    run(&mut s, "check_model_costs", json!({})).await;
    run(&mut s, "query_usage", json!({"days": 1})).await;
    run(&mut s, "set_budget", json!({})).await;
    // The alert's webhook delivery (which fails, echoing its URL).
    for _ in 0..300 {
        if !hook.requests().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !hook.requests().is_empty(),
        "the alert webhook was called: {:#?}",
        &outputs[7..9]
    );
    // The failed delivery is recorded (with the error that once carried
    // the token): wait for its row rather than for a guessed time.
    let mut delivered = 0;
    for _ in 0..500 {
        delivered = Connection::open(data.join("ledger.sqlite3"))
            .and_then(|db| {
                db.query_row("SELECT count(*) FROM alert_deliveries", [], |r| {
                    r.get::<_, i64>(0)
                })
            })
            .unwrap_or(0);
        if delivered > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(delivered > 0, "no alert delivery was recorded");

    // The faults really carried the keys back to the server: every fake
    // was called, and each provider's error (the two DeepSeek calls, then
    // anthropic, gemini, cerebras, openrouter, huggingface) quotes the
    // echoed key as redacted.
    assert!(!anthropic.requests().is_empty(), "anthropic was called");
    for (fake, name) in echoing
        .iter()
        .zip(["gemini", "cerebras", "openrouter", "huggingface"])
    {
        assert!(!fake.requests().is_empty(), "{name} was called");
    }
    for (i, o) in outputs.iter().take(7).enumerate() {
        assert!(
            o.to_string().contains("[REDACTED]"),
            "output {i} quotes the echoed key, redacted: {o}"
        );
    }

    // Files while the server runs: the WAL still holds the recent writes.
    let mut all_secrets: Vec<&str> = KEYS.to_vec();
    all_secrets.push(HOOK_TOKEN);
    all_secrets.push(PROXY_PASSWORD);
    let ledger = data.join("ledger.sqlite3");
    let wal = data.join("ledger.sqlite3-wal");
    assert!(wal.exists(), "WAL present while running");
    for f in files_under(&data) {
        let bytes = std::fs::read(&f).unwrap();
        let hay = String::from_utf8_lossy(&bytes);
        // The webhook URL must be stored to be used: it lives in
        // budgets.webhook_url (checked below by table); every other file
        // must hold neither keys nor the token.
        let in_ledger = f.to_string_lossy().starts_with(&*ledger.to_string_lossy());
        let secrets: &[&str] = if in_ledger { &KEYS } else { &all_secrets };
        assert_clean(&f.display().to_string(), &hay, secrets);
    }
    let stdout: String = outputs.iter().map(|o| o.to_string() + "\n").collect();
    assert_clean("stdout", &stdout, &all_secrets);
    s.kill().await;
    let stderr_text = std::fs::read_to_string(&stderr_path).unwrap();
    assert!(stderr_text.contains("DEBUG") || stderr_text.contains("INFO"));
    assert_clean("stderr", &stderr_text, &all_secrets);

    // The ledger by table: the token is only where it must be.
    let db = Connection::open(&ledger).unwrap();
    let dump: String = db
        .prepare(
            "SELECT coalesce(error_message, '') || ' ' || coalesce(error_kind, '') FROM calls
             UNION ALL SELECT coalesce(target, '') || ' ' || coalesce(error, '') FROM alert_deliveries",
        )
        .unwrap()
        .query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .map(Result::unwrap)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        dump.contains("REDACTED") || dump.contains("rejected"),
        "{dump}"
    );
    assert_clean("calls / alert_deliveries", &dump, &all_secrets);
    drop(db);

    // The CLI over the same data: doctor, usage, budget.
    for args in [&["doctor"][..], &["usage"], &["budget"], &["costs"]] {
        let out = std::process::Command::new(binary())
            .env_clear()
            .envs(base_env(&data))
            .envs(env.iter().map(|(k, v)| (k.to_string(), v.clone())))
            .args(args)
            .output()
            .unwrap();
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_clean(&format!("`{}`", args.join(" ")), &all, &all_secrets);
        if args == ["doctor"] {
            assert!(
                all.contains("characters"),
                "doctor describes the keys: {all}"
            );
        }
    }

    // User-only permissions on what the server created.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700, "data dir");
    let mut dirs = vec![data.clone()];
    for f in files_under(&data) {
        if f.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("stderr")
        {
            continue; // made by the test harness
        }
        assert_eq!(mode(&f), 0o600, "{}", f.display());
        dirs.push(f.parent().unwrap().to_path_buf());
    }
    for d in dirs {
        assert_eq!(mode(&d), 0o700, "{}", d.display());
    }
}
