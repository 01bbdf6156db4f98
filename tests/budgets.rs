//! Budgets that hold: concurrent calls against a nearly spent budget,
//! threshold alerts delivered exactly once (Slack and Discord formats, MCP
//! notifications), failing receivers retried and recorded, global budgets,
//! downgrade mode, and period resets with an injectable clock.

mod common;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ai_cost_optimizer::ledger::Ledger;
use ai_cost_optimizer::optimizer::{CompleteArgs, Optimizer, SetBudgetArgs, ToolError};
use ai_cost_optimizer::pricing::Catalog;
use ai_cost_optimizer::providers::{NoSink, Registry};
use common::*;
#[allow(deprecated)]
use rmcp::model::LoggingMessageNotificationParam;
use rmcp::{ClientHandler, ServiceExt};
use serde_json::{Value, json};

const KEY: &str = "sk-ant-budget-FAKE-key-9999999999";

/// Haiku answering with 100 input and 200 output tokens: $0.0011 a call.
fn haiku(delay_ms: u64) -> Reply {
    anthropic_sse(
        "claude-haiku-4-5",
        &["fine"],
        json!({"input_tokens": 100, "output_tokens": 1}),
        200,
    )
    .delayed(Duration::from_millis(delay_ms))
}

const CALL_COST: f64 = 100.0 * 1e-6 + 200.0 * 5e-6;

fn call_args(user: &str, max_tokens: u32) -> Value {
    json!({"prompt": "Say fine.", "force_model": "anthropic/claude-haiku-4-5",
           "max_tokens": max_tokens, "user_id": user})
}

#[tokio::test]
async fn fifty_concurrent_calls_never_overspend() {
    let fake = FakeProvider::start(haiku(300)).await;
    let dir = tempfile::tempdir().unwrap();
    let s = spawn(
        dir.path(),
        &[
            ("ANTHROPIC_API_KEY", KEY.into()),
            ("ANTHROPIC_BASE_URL", fake.base.clone()),
        ],
    )
    .await;
    let limit = 0.01;
    s.ok(
        "set_budget",
        json!({"monthly_limit": limit, "user_id": "team"}),
    )
    .await;
    // The provider holds its answers: calls that got a budget hold stay in
    // flight, so the others are decided while those holds are all taken.
    // The worst case of a call (its estimated prompt at $1/MTok plus all
    // 400 output tokens at $5/MTok) is about $0.0021: exactly 4 fit in
    // $0.01.
    fake.close_gate();
    let refused_so_far = std::sync::atomic::AtomicUsize::new(0);
    let calls = (0..50).map(|_| async {
        let r = s.call("complete_prompt", call_args("team", 400)).await;
        if r.is_error == Some(true) {
            refused_so_far.fetch_add(1, Ordering::SeqCst);
        }
        r
    });
    let watch = async {
        // Every call is either refused or waiting at the provider; no
        // timing assumption (a server that ran calls one at a time would
        // never get here, and the test would time out).
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while refused_so_far.load(Ordering::SeqCst) + fake.requests().len() < 50 {
            assert!(std::time::Instant::now() < deadline, "calls never settled");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let in_flight = fake.requests().len();
        fake.open_gate();
        in_flight
    };
    let (results, in_flight) =
        futures_util::future::join(futures_util::future::join_all(calls), watch).await;
    assert_eq!(in_flight, 4, "holds granted while all were in flight");
    let ok: Vec<&rmcp::model::CallToolResult> = results
        .iter()
        .filter(|r| r.is_error != Some(true))
        .collect();
    let refused: Vec<String> = results
        .iter()
        .filter(|r| r.is_error == Some(true))
        .map(text)
        .collect();
    // Worst case per call ≈ $0.0021, real cost $0.0011.
    assert_eq!(ok.len(), 4, "{} calls passed", ok.len());
    assert!(
        ok.len() as f64 * CALL_COST <= limit + 1e-12,
        "{} calls passed",
        ok.len()
    );
    assert_eq!(ok.len() + refused.len(), 50);
    for e in &refused {
        assert!(
            e.contains("Refused by budget") && e.contains("set_budget"),
            "{e}"
        );
    }
    assert_eq!(
        fake.requests().len(),
        ok.len(),
        "a refused call reached the provider"
    );
    let u = s.ok("query_usage", json!({"user_id": "team"})).await;
    assert_eq!(u["calls"], json!(ok.len()));
    assert!(u["total_cost_usd"].as_f64().unwrap() <= limit + 1e-12);
    assert_usd(&u["total_cost_usd"], ok.len() as f64 * CALL_COST);
    assert_eq!(u["budget"]["reserved_usd"], json!(0.0));
    assert_eq!(u["totals"]["failed_attempts"], json!(0));
    s.stop().await;
}

#[allow(deprecated)]
#[derive(Clone, Default)]
struct LogClient {
    logs: Arc<Mutex<Vec<LoggingMessageNotificationParam>>>,
}

impl ClientHandler for LogClient {
    #[allow(deprecated)]
    async fn on_logging_message(
        &self,
        params: LoggingMessageNotificationParam,
        _ctx: rmcp::service::NotificationContext<rmcp::RoleClient>,
    ) {
        self.logs.lock().unwrap().push(params);
    }
}

/// `r` is an alert delivered again, marked so in its message.
fn assert_sent_again(r: &Recorded) {
    assert!(
        r.body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("Sent again"),
        "{:?}",
        r.body
    );
}

async fn wait_for(fake: &FakeProvider, n: usize) -> Vec<Recorded> {
    for _ in 0..200 {
        if fake.requests().len() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A little longer, to catch a duplicate that should not come.
    tokio::time::sleep(Duration::from_millis(200)).await;
    fake.requests()
}

#[tokio::test]
#[allow(deprecated)]
async fn each_threshold_alerts_exactly_once_per_period() {
    let provider = FakeProvider::start(haiku(0)).await;
    let slack = FakeProvider::start(Reply::json(200, json!({"ok": true}))).await;
    let discord = FakeProvider::start(Reply::json(204, json!({}))).await;
    let dir = tempfile::tempdir().unwrap();
    let (client, handler) = spawn_logged(dir.path(), &haiku_env(&provider)).await;
    let call = |name: &'static str, args: Value| {
        let client = &client;
        async move {
            let r = call_logged(client, name, args).await;
            assert_ne!(r.is_error, Some(true), "{name}: {}", text(&r));
            r
        }
    };

    // $0.005 with alerts at 25/50/100 %; warn mode, so calls go on past 100 %.
    let b = call(
        "set_budget",
        json!({"monthly_limit": 0.005, "alert_thresholds": [0.25, 0.5, 1.0], "mode": "warn",
               "user_id": "ann", "webhook_url": format!("{}/services/T0/B0/secret-token", slack.base),
               "webhook_format": "slack"}),
    )
    .await;
    let st = b.structured_content.unwrap();
    assert_eq!(st["webhook"], format!("{}/… (slack)", slack.base));
    // Spend: 22 %, 44 %, 66 %, 88 %, 110 %, 132 %.
    let mut fired = Vec::new();
    for _ in 0..6 {
        let r = call("complete_prompt", call_args("ann", 300)).await;
        let c = r.structured_content.clone().unwrap();
        fired.push(
            c["alerts"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a["threshold"].as_f64().unwrap())
                .collect::<Vec<_>>(),
        );
        if !c["alerts"].as_array().unwrap().is_empty() {
            assert!(text(&r).contains("Budget alert"), "{}", text(&r));
        }
    }
    assert_eq!(
        fired,
        vec![vec![], vec![0.25], vec![0.5], vec![], vec![1.0], vec![]]
    );
    let got = wait_for(&slack, 3).await;
    assert_eq!(got.len(), 3, "{got:?}");
    for (r, pct) in got.iter().zip(["25%", "50%", "100%"]) {
        assert_eq!(r.path, "/services/T0/B0/secret-token");
        let obj = r.body.as_object().unwrap();
        assert_eq!(obj.len(), 1, "Slack payload is just text: {obj:?}");
        let t = obj["text"].as_str().unwrap();
        assert!(
            t.contains(&format!("crossed {pct}")) && t.contains("ann's monthly budget"),
            "{t}"
        );
    }
    // The same crossings reached the client as MCP notifications.
    let logs = handler.logs.lock().unwrap().clone();
    let thresholds: Vec<f64> = logs
        .iter()
        .filter(|l| l.logger.as_deref() == Some("budget"))
        .map(|l| l.data["threshold"].as_f64().unwrap())
        .collect();
    assert_eq!(thresholds, vec![0.25, 0.5, 1.0]);

    // Discord format for another user; a limit set below the current spend
    // alerts at once for every threshold already passed, once.
    call("complete_prompt", call_args("bob", 300)).await;
    let b = call(
        "set_budget",
        json!({"monthly_limit": 0.001, "mode": "warn", "user_id": "bob",
               "webhook_url": format!("{}/api/webhooks/1/tok", discord.base), "webhook_format": "discord"}),
    )
    .await;
    let alerts = b.structured_content.unwrap()["alerts"].clone();
    assert_eq!(alerts.as_array().unwrap().len(), 3, "{alerts}");
    call(
        "set_budget",
        json!({"monthly_limit": 0.001, "mode": "warn", "user_id": "bob"}),
    )
    .await;
    let got = wait_for(&discord, 3).await;
    assert_eq!(got.len(), 3, "{got:?}");
    for r in &got {
        assert!(
            r.body["content"]
                .as_str()
                .unwrap()
                .contains("bob's monthly budget")
        );
    }
    client.cancel().await.unwrap();

    // Every delivery is in the ledger, without the webhook token.
    let ledger = Ledger::open(&dir.path().join("ledger.sqlite3")).unwrap();
    let alerts = ledger.alerts(None, 100).unwrap();
    assert_eq!(alerts.len(), 6);
    for a in &alerts {
        let d = ledger.deliveries(a.id).unwrap();
        assert_eq!(d.len(), 1);
        assert!(d[0].ok);
        assert!(!d[0].target.as_deref().unwrap().contains("secret-token"));
    }
}

/// A server whose client records the MCP logging notifications it gets.
async fn spawn_logged(
    dir: &std::path::Path,
    extra: &[(&str, String)],
) -> (
    rmcp::service::RunningService<rmcp::RoleClient, LogClient>,
    LogClient,
) {
    let mut vars = base_env(dir);
    vars.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
    let cmd = tokio::process::Command::new(binary());
    let cmd = rmcp::transport::ConfigureCommandExt::configure(cmd, |c| {
        c.env_clear();
        for (k, v) in &vars {
            c.env(k, v);
        }
    });
    let (transport, _) = rmcp::transport::TokioChildProcess::builder(cmd)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let handler = LogClient::default();
    let client = handler.clone().serve(transport).await.unwrap();
    (client, handler)
}

/// The environment of a server with Anthropic pointed at `provider`.
fn haiku_env(provider: &FakeProvider) -> [(&'static str, String); 2] {
    [
        ("ANTHROPIC_API_KEY", KEY.into()),
        ("ANTHROPIC_BASE_URL", provider.base.clone()),
    ]
}

async fn call_logged(
    client: &rmcp::service::RunningService<rmcp::RoleClient, LogClient>,
    name: &'static str,
    args: Value,
) -> rmcp::model::CallToolResult {
    client
        .call_tool(
            rmcp::model::CallToolRequestParams::new(name)
                .with_arguments(args.as_object().unwrap().clone()),
        )
        .await
        .unwrap()
}

/// In `block` mode spend never reaches the limit itself (a call that
/// could cross it is refused first), so the 100% alert fires when a call
/// is refused with at least 90% spent: once per period, by webhook, in the
/// refusal's text and as an MCP notification (a failed call has no
/// `alerts` field). A refusal with more left, or by the call's own
/// `budget_limit`, fires nothing.
#[tokio::test]
#[allow(deprecated)]
async fn a_refusal_fires_the_limit_alert_once() {
    let provider = FakeProvider::start(haiku(0)).await;
    let slack = FakeProvider::start(Reply::json(200, json!({"ok": true}))).await;
    let dir = tempfile::tempdir().unwrap();
    let (client, handler) = spawn_logged(dir.path(), &haiku_env(&provider)).await;
    // Each call costs $0.0011 (100 + 200 tokens); with max_tokens 220 its
    // worst case is $0.0012, and with 600, $0.0031.
    let set = call_logged(
        &client,
        "set_budget",
        json!({"monthly_limit": 0.0035, "alert_thresholds": [0.5, 1.0], "user_id": "cy",
               "webhook_url": format!("{}/services/T0/B0/tok", slack.base),
               "webhook_format": "slack"}),
    )
    .await;
    assert_ne!(set.is_error, Some(true), "{}", text(&set));
    // A call refused by its own budget_limit leaves the budget alone.
    let mut capped = call_args("cy", 300);
    capped["budget_limit"] = json!(0.000001);
    let r = call_logged(&client, "complete_prompt", capped).await;
    let e = text(&r);
    assert!(
        r.is_error == Some(true) && e.contains("budget_limit") && !e.contains("Budget alert"),
        "{e}"
    );
    // 31 %, 63 % (the 50 % alert); then a big call is refused with a
    // third of the budget left: no alert, the budget is not used up.
    for _ in 0..2 {
        let r = call_logged(&client, "complete_prompt", call_args("cy", 220)).await;
        assert_ne!(r.is_error, Some(true), "{}", text(&r));
    }
    let big = text(&call_logged(&client, "complete_prompt", call_args("cy", 600)).await);
    assert!(
        big.starts_with("Refused by budget") && !big.contains("Budget alert"),
        "{big}"
    );
    // 94 %; then even a small call no longer fits: used up.
    let r = call_logged(&client, "complete_prompt", call_args("cy", 220)).await;
    assert_ne!(r.is_error, Some(true), "{}", text(&r));
    let r = call_logged(&client, "complete_prompt", call_args("cy", 220)).await;
    let e = text(&r);
    assert!(e.starts_with("Refused by budget"), "{e}");
    assert!(
        e.contains("Budget alert: cy's monthly budget is used up"),
        "{e}"
    );
    let again = text(&call_logged(&client, "complete_prompt", call_args("cy", 220)).await);
    assert!(!again.contains("Budget alert"), "fired twice: {again}");
    // The status no longer promises the alert that fired: spend is still
    // under 100%, but no 100% alert is to come this month.
    let usage = call_logged(&client, "query_usage", json!({"user_id": "cy"})).await;
    let st = &usage.structured_content.as_ref().unwrap()["budget"];
    assert!(st["percent_used"].as_f64().unwrap() < 100.0, "{st}");
    assert_eq!(st["crossed_thresholds"], json!([0.5]), "{st}");
    assert_eq!(st["next_threshold"], Value::Null, "{st}");
    assert!(!text(&usage).contains("next alert at"), "{}", text(&usage));
    let got = wait_for(&slack, 2).await;
    assert_eq!(got.len(), 2, "{got:?}");
    let texts: Vec<&str> = got
        .iter()
        .map(|r| r.body["text"].as_str().unwrap())
        .collect();
    assert!(texts[0].contains("crossed 50%"), "{texts:?}");
    assert!(texts[1].contains("is used up"), "{texts:?}");
    assert_eq!(provider.requests().len(), 3);
    // Both alerts reached the client as notifications, the refusal's too.
    let notified: Vec<f64> = handler
        .logs
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.logger.as_deref() == Some("budget"))
        .map(|l| l.data["threshold"].as_f64().unwrap())
        .collect();
    assert_eq!(notified, vec![0.5, 1.0]);
    client.cancel().await.unwrap();
}

/// Alerts are `warning` logging notifications: a client that set its
/// level to `error` gets none; back at `warning`, it gets them again.
#[tokio::test]
#[allow(deprecated)]
async fn alert_notifications_follow_the_clients_log_level() {
    use rmcp::model::{LoggingLevel, SetLevelRequestParams};
    let provider = FakeProvider::start(haiku(0)).await;
    let dir = tempfile::tempdir().unwrap();
    let (client, handler) = spawn_logged(dir.path(), &haiku_env(&provider)).await;
    let r = call_logged(&client, "complete_prompt", call_args("dee", 300)).await;
    assert_ne!(r.is_error, Some(true), "{}", text(&r));
    let budget_notes = || {
        handler
            .logs
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.logger.as_deref() == Some("budget"))
            .count()
    };
    client
        .set_level(SetLevelRequestParams::new(LoggingLevel::Error))
        .await
        .unwrap();
    // A limit below what was spent crosses all three thresholds at once.
    let set = call_logged(
        &client,
        "set_budget",
        json!({"monthly_limit": 0.0005, "mode": "warn", "user_id": "dee"}),
    )
    .await;
    assert_eq!(
        set.structured_content.unwrap()["alerts"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(budget_notes(), 0, "notified below the client's level");
    client
        .set_level(SetLevelRequestParams::new(LoggingLevel::Warning))
        .await
        .unwrap();
    // A limit out of reach re-arms the thresholds; back below the spend,
    // they fire again.
    for limit in [0.01, 0.0006] {
        call_logged(
            &client,
            "set_budget",
            json!({"monthly_limit": limit, "mode": "warn", "user_id": "dee"}),
        )
        .await;
    }
    for _ in 0..50 {
        if budget_notes() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(budget_notes(), 3);
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn failing_and_unreachable_webhooks_are_retried_and_recorded() {
    let provider = FakeProvider::start(haiku(0)).await;
    let broken = FakeProvider::start(Reply::json(500, json!({"error": "down"}))).await;
    let closed_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dir = tempfile::tempdir().unwrap();
    let s = spawn(
        dir.path(),
        &[
            ("ANTHROPIC_API_KEY", KEY.into()),
            ("ANTHROPIC_BASE_URL", provider.base.clone()),
        ],
    )
    .await;
    // Bad webhook input is refused clearly.
    for (args, needle) in [
        (
            json!({"monthly_limit": 1.0, "webhook_url": "ftp://example.com/x"}),
            "http:// or https://",
        ),
        (
            json!({"monthly_limit": 1.0, "webhook_format": "teams", "webhook_url": "https://x.example/h"}),
            "webhook_format",
        ),
        (
            json!({"monthly_limit": 1.0, "webhook_format": "slack"}),
            "needs a webhook_url",
        ),
        (
            json!({"monthly_limit": 1.0, "timezone": "Mars/Olympus"}),
            "timezone",
        ),
        (json!({"monthly_limit": 1.0, "period": "yearly"}), "period"),
        (
            json!({"monthly_limit": 1.0, "global": true, "user_id": "x"}),
            "not both",
        ),
        (json!({"monthly_limit": 1.0, "user_id": "*"}), "reserved"),
    ] {
        let e = s.err("set_budget", args.clone()).await;
        assert!(e.contains(needle), "{args}: {e}");
    }
    s.ok(
        "set_budget",
        json!({"monthly_limit": 0.002, "alert_thresholds": [0.5], "mode": "warn", "user_id": "u1",
               "webhook_url": format!("{}/hook", broken.base)}),
    )
    .await;
    s.ok(
        "set_budget",
        json!({"monthly_limit": 0.002, "alert_thresholds": [0.5], "mode": "warn", "user_id": "u2",
               "webhook_url": format!("http://127.0.0.1:{closed_port}/hook")}),
    )
    .await;
    // The calls succeed even though no alert can be delivered.
    let c = s.ok("complete_prompt", call_args("u1", 300)).await;
    assert_eq!(c["alerts"].as_array().unwrap().len(), 1);
    let c = s.ok("complete_prompt", call_args("u2", 300)).await;
    assert_eq!(c["alerts"].as_array().unwrap().len(), 1);
    assert_eq!(
        wait_for(&broken, 3).await.len(),
        3,
        "three attempts expected"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.stop().await;
    let ledger = Ledger::open(&dir.path().join("ledger.sqlite3")).unwrap();
    let alerts = ledger.alerts(None, 10).unwrap();
    assert_eq!(alerts.len(), 2);
    for a in alerts {
        let d = ledger.deliveries(a.id).unwrap();
        assert_eq!(d.len(), 3, "{d:?}");
        assert!(d.iter().all(|x| !x.ok));
        if a.scope == "u1" {
            assert!(d.iter().all(|x| x.status == Some(500)));
        } else {
            assert!(d.iter().all(|x| x.status.is_none() && x.error.is_some()));
        }
    }

    // The receiver is back: the next servers to start (two at once) send
    // the failed alert again, once between them; the one after does not.
    // Slow to answer, so the second server starts while the first one's
    // delivery is still in flight.
    broken.push(Reply::json(200, json!({"ok": true})).delayed(Duration::from_millis(1500)));
    let env = [
        ("ANTHROPIC_API_KEY", KEY.to_string()),
        ("ANTHROPIC_BASE_URL", provider.base.clone()),
    ];
    for servers in [2, 1] {
        let mut running = Vec::new();
        for _ in 0..servers {
            running.push(spawn(dir.path(), &env).await);
        }
        let got = wait_for(&broken, 4).await;
        assert_eq!(got.len(), 4, "sent again once: {got:?}");
        assert_sent_again(&got[3]);
        // Long enough for a second, wrong, delivery to arrive.
        tokio::time::sleep(Duration::from_millis(500)).await;
        for s in running {
            s.stop().await;
        }
    }
    assert_eq!(broken.requests().len(), 4);
    let ledger = Ledger::open(&dir.path().join("ledger.sqlite3")).unwrap();
    let u1 = ledger.alerts(Some("u1"), 10).unwrap();
    let d = ledger.deliveries(u1[0].id).unwrap();
    assert!(d.last().unwrap().ok, "{d:?}");
}

/// Changing only the limit keeps the budget's other settings: a weekly
/// `warn` budget in Berlin with its own thresholds and webhook stays all of
/// that; each setting given changes only itself.
/// A receiver that is down for a moment misses the first round of three
/// quick attempts; a running server sends the alert again a few minutes
/// later (`alert_retry`, one second here), not only at its next start.
#[tokio::test]
async fn a_running_server_sends_a_failed_alert_again() {
    let provider = FakeProvider::start(haiku(0)).await;
    let hook = FakeProvider::start(Reply::json(200, json!({"ok": true}))).await;
    for _ in 0..3 {
        hook.push(Reply::json(503, json!({"error": "down"})));
    }
    let dir = tempfile::tempdir().unwrap();
    let s = spawn(
        dir.path(),
        &[
            ("ANTHROPIC_API_KEY", KEY.into()),
            ("ANTHROPIC_BASE_URL", provider.base.clone()),
            ("COST_OPTIMIZER_ALERT_RETRY_SECS", "1".into()),
            ("COST_OPTIMIZER_RETRY_BASE_MS", "20".into()),
        ],
    )
    .await;
    s.ok(
        "set_budget",
        json!({"monthly_limit": 0.002, "alert_thresholds": [0.5], "mode": "warn", "user_id": "u1",
               "webhook_url": format!("{}/hook", hook.base)}),
    )
    .await;
    let c = s.ok("complete_prompt", call_args("u1", 300)).await;
    assert_eq!(c["alerts"].as_array().unwrap().len(), 1);
    let started = std::time::Instant::now();
    while hook.requests().len() < 4 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "not sent again while running: {:?}",
            hook.requests().len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Long enough for a second, wrong, round to arrive.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let got = hook.requests();
    assert_eq!(got.len(), 4, "sent again once");
    assert_sent_again(&got[3]);
    s.stop().await;
}

/// An alert whose delivery never got to its first attempt (the server was
/// killed while the receiver was still answering its first POST) is sent
/// by the next server, as a failed one is: the ledger had no trace of it.
#[tokio::test]
async fn an_alert_cut_off_before_its_first_attempt_is_sent_by_the_next_server() {
    let provider = FakeProvider::start(haiku(0)).await;
    let hook = FakeProvider::start(Reply::json(200, json!({"ok": true}))).await;
    hook.push(Reply::json(200, json!({"ok": true})).delayed(Duration::from_secs(20)));
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("ANTHROPIC_API_KEY", KEY.to_string()),
        ("ANTHROPIC_BASE_URL", provider.base.clone()),
        ("COST_OPTIMIZER_ALERT_RETRY_SECS", "1".into()),
    ];
    let mut raw = spawn_raw(dir.path(), &env);
    raw.init().await;
    raw.call(
        1,
        "set_budget",
        json!({"monthly_limit": 0.002, "alert_thresholds": [0.5], "mode": "warn", "user_id": "u1",
               "webhook_url": format!("{}/hook", hook.base)}),
    )
    .await;
    raw.reply(1, Duration::from_secs(30)).await;
    raw.call(2, "complete_prompt", call_args("u1", 300)).await;
    let r = raw.reply(2, Duration::from_secs(30)).await;
    assert_eq!(
        r["result"]["structuredContent"]["alerts"]
            .as_array()
            .map(Vec::len),
        Some(1),
        "{r}"
    );
    assert_eq!(wait_for(&hook, 1).await.len(), 1, "first POST in flight");
    raw.kill().await;
    let path = dir.path().join("ledger.sqlite3");
    let ledger = Ledger::open(&path).unwrap();
    let alert = ledger.alerts(Some("u1"), 10).unwrap().remove(0);
    assert!(ledger.deliveries(alert.id).unwrap().is_empty());
    drop(ledger);
    // Past the window in which a delivery is left to the process that
    // queued it.
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let s = spawn(dir.path(), &env).await;
    assert_eq!(wait_for(&hook, 2).await.len(), 2, "sent by the next server");
    s.stop().await;
    let ledger = Ledger::open(&path).unwrap();
    assert!(ledger.deliveries(alert.id).unwrap().iter().any(|d| d.ok));
}

#[tokio::test]
async fn updating_a_budget_changes_only_what_is_given() {
    let dir = tempfile::tempdir().unwrap();
    let s = spawn(dir.path(), &[]).await;
    let first = s
        .ok(
            "set_budget",
            json!({"monthly_limit": 20, "user_id": "ana", "period": "weekly", "mode": "warn",
                   "alert_thresholds": [0.9, 1.0], "timezone": "Europe/Berlin",
                   "webhook_url": "https://hooks.example.com/services/T1/B2/abc",
                   "webhook_format": "slack"}),
        )
        .await;
    assert_eq!(first["status"]["period"], "weekly");
    let raised = s
        .ok("set_budget", json!({"monthly_limit": 30, "user_id": "ana"}))
        .await;
    let st = &raised["status"];
    assert_eq!(raised["previous_limit_usd"], 20.0);
    assert_eq!(st["limit_usd"], 30.0);
    assert_eq!(st["period"], "weekly", "{raised}");
    assert_eq!(st["mode"], "warn", "{raised}");
    assert_eq!(st["timezone"], "Europe/Berlin", "{raised}");
    assert_eq!(st["alert_thresholds"], json!([0.9, 1.0]), "{raised}");
    assert!(
        raised["webhook"]
            .as_str()
            .unwrap_or_default()
            .contains("hooks.example.com")
    );
    let moded = s
        .ok(
            "set_budget",
            json!({"monthly_limit": 30, "user_id": "ana", "mode": "block"}),
        )
        .await;
    assert_eq!(moded["status"]["mode"], "block");
    assert_eq!(moded["status"]["period"], "weekly");
    // A new budget still takes the defaults.
    let fresh = s
        .ok("set_budget", json!({"monthly_limit": 5, "user_id": "ben"}))
        .await;
    assert_eq!(fresh["status"]["period"], "monthly");
    assert_eq!(fresh["status"]["mode"], "block");
    assert_eq!(fresh["status"]["alert_thresholds"], json!([0.5, 0.8, 1.0]));
    s.stop().await;
}

#[tokio::test]
async fn global_budget_caps_all_users_together() {
    let fake = FakeProvider::start(haiku(0)).await;
    let dir = tempfile::tempdir().unwrap();
    let s = spawn(
        dir.path(),
        &[
            ("ANTHROPIC_API_KEY", KEY.into()),
            ("ANTHROPIC_BASE_URL", fake.base.clone()),
        ],
    )
    .await;
    let g = s
        .ok(
            "set_budget",
            json!({"monthly_limit": 0.004, "global": true}),
        )
        .await;
    assert_eq!(g["status"]["user_id"], "*");
    // Each user's own $100 budget has room; the global one runs out.
    let mut passed = 0;
    let mut refusal = String::new();
    for user in ["a", "b", "c", "a", "b", "c"] {
        let r = s.call("complete_prompt", call_args(user, 300)).await;
        if r.is_error == Some(true) {
            refusal = text(&r);
        } else {
            passed += 1;
        }
    }
    // Sequential calls: each hold is the call's worst case, each charge
    // CALL_COST; three fit under $0.004, a fourth's hold does not.
    assert_eq!(passed, 3, "{refusal}");
    assert!(refusal.contains("global budget"), "{refusal}");
    let u = s.ok("query_usage", json!({})).await;
    assert_usd(&u["global_budget"]["spent_usd"], 3.0 * CALL_COST);
    // The refused calls were the global budget's doing: each user's own
    // budget had room.
    for user in ["a", "b", "c"] {
        let mine = s.ok("query_usage", json!({"user_id": user})).await;
        assert!(
            mine["budget"]["spent_usd"].as_f64().unwrap() <= CALL_COST,
            "{mine}"
        );
        assert_eq!(mine["budget"]["limit_usd"], json!(100.0), "{mine}");
    }
    s.stop().await;
}

#[tokio::test]
async fn downgrade_mode_routes_cheaper_past_the_first_threshold() {
    let anthropic = FakeProvider::start(haiku(0)).await;
    let dir = tempfile::tempdir().unwrap();
    // Every prompt scoring at least UNSURE_MARGIN (0.03) above 0 is
    // "premium" under these boundaries; this one scores about 0.26.
    let cfg = dir.path().join("config.toml");
    std::fs::write(&cfg, "[routing]\nthresholds = [0.0, 0.0, 0.0]\n").unwrap();
    let s = spawn(
        dir.path(),
        &[
            ("ANTHROPIC_API_KEY", KEY.into()),
            ("ANTHROPIC_BASE_URL", anthropic.base.clone()),
            ("COST_OPTIMIZER_CONFIG", cfg.display().to_string()),
        ],
    )
    .await;
    s.ok(
        "set_budget",
        json!({"monthly_limit": 0.004, "alert_thresholds": [0.25, 1.0], "mode": "downgrade"}),
    )
    .await;
    let before = s
        .ok(
            "get_recommendation",
            json!({"prompt": "Prove that the square root of 2 is irrational.", "max_tokens": 100}),
        )
        .await;
    assert_eq!(before["tier"], "premium");
    s.ok("complete_prompt", call_args("default", 300)).await; // 27 % spent
    let after = s
        .ok(
            "get_recommendation",
            json!({"prompt": "Prove that the square root of 2 is irrational.", "max_tokens": 100}),
        )
        .await;
    assert_eq!(after["tier"], "medium", "{after}");
    assert!(
        after["notes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n.as_str().unwrap().contains("downgrade mode")),
        "{}",
        after["notes"]
    );
    s.stop().await;
}

#[tokio::test]
async fn periods_reset_on_the_calendar_with_an_injected_clock() {
    let fake = FakeProvider::start(haiku(0)).await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().display().to_string();
    let base = fake.base.clone();
    let env = move |k: &str| -> Option<String> {
        match k {
            "COST_OPTIMIZER_DATA_DIR" => Some(data.clone()),
            "COST_OPTIMIZER_CONFIG" => Some(String::new()),
            "COST_OPTIMIZER_OLLAMA_PROBE" => Some("0".into()),
            "ANTHROPIC_API_KEY" => Some(KEY.into()),
            "ANTHROPIC_BASE_URL" => Some(base.clone()),
            _ => None,
        }
    };
    let settings = ai_cost_optimizer::config::Settings::load_with(&env).unwrap();
    let registry = Registry::from_env(
        &env,
        Duration::from_secs(5),
        Duration::from_secs(5),
        Duration::from_secs(5),
    )
    .unwrap();
    // 2026-11-27 23:50 in Tokyo (UTC+9) is 14:50 UTC.
    let now = Arc::new(AtomicI64::new(1_795_791_000_000));
    let clock_now = now.clone();
    let clock: ai_cost_optimizer::optimizer::Clock =
        Arc::new(move || clock_now.load(Ordering::SeqCst));
    let core = Optimizer::new(settings, Catalog::bundled(), registry, clock);
    let set = core
        .set_budget(&SetBudgetArgs {
            monthly_limit: 0.003,
            alert_thresholds: Some(vec![0.5, 1.0]),
            period: Some("daily".into()),
            timezone: Some("Asia/Tokyo".into()),
            ..SetBudgetArgs::default()
        })
        .unwrap();
    assert_eq!(set.status.period_start, "2026-11-26T15:00:00Z");
    let args = CompleteArgs {
        prompt: "Say fine.".into(),
        force_model: Some("anthropic/claude-haiku-4-5".into()),
        max_tokens: Some(300),
        ..CompleteArgs::default()
    };
    let first = core.complete(&args, &NoSink).await.unwrap();
    assert_eq!(first.alerts.len(), 0);
    let second = core.complete(&args, &NoSink).await.unwrap();
    assert_eq!(second.alerts.len(), 1); // 73 % > 50 %
    let third = core.complete(&args, &NoSink).await;
    assert!(
        matches!(third, Err(ToolError::BudgetRefused(_))),
        "{third:?}"
    );

    // Twenty minutes later it is a new day in Tokyo: the budget is fresh,
    // and the 50 % alert may fire again, once, for the new day.
    now.fetch_add(20 * 60 * 1000, Ordering::SeqCst);
    let st = core.budget_status("default").unwrap();
    assert_eq!(st.period_start, "2026-11-27T15:00:00Z");
    assert_eq!(st.spent_usd, 0.0);
    let a = core.complete(&args, &NoSink).await.unwrap();
    assert!(a.alerts.is_empty());
    let b = core.complete(&args, &NoSink).await.unwrap();
    assert_eq!(b.alerts.len(), 1);
    assert_eq!(b.alerts[0].period_start, "2026-11-27T15:00:00Z");
}

/// A minimal SMTP server: enough of RFC 5321 for one client to hand over
/// messages, which it keeps.
async fn fake_smtp() -> (u16, Arc<Mutex<Vec<String>>>) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let inbox = Arc::new(Mutex::new(Vec::new()));
    let kept = inbox.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let inbox = kept.clone();
            tokio::spawn(async move {
                let (r, mut w) = sock.into_split();
                let mut lines = BufReader::new(r).lines();
                let _ = w.write_all(b"220 fake.smtp ESMTP\r\n").await;
                let mut data: Option<String> = None;
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Some(body) = data.as_mut() {
                        if line == "." {
                            inbox.lock().unwrap().push(data.take().unwrap());
                            let _ = w.write_all(b"250 2.0.0 queued\r\n").await;
                        } else {
                            body.push_str(&line);
                            body.push('\n');
                        }
                        continue;
                    }
                    let verb = line
                        .split_whitespace()
                        .next()
                        .unwrap_or("")
                        .to_ascii_uppercase();
                    let reply: &[u8] = match verb.as_str() {
                        "EHLO" | "HELO" => b"250 fake.smtp\r\n",
                        "DATA" => {
                            data = Some(String::new());
                            b"354 end with .\r\n"
                        }
                        "QUIT" => {
                            let _ = w.write_all(b"221 bye\r\n").await;
                            break;
                        }
                        _ => b"250 OK\r\n",
                    };
                    let _ = w.write_all(reply).await;
                }
            });
        }
    });
    (port, inbox)
}

#[tokio::test]
async fn alerts_are_emailed_through_smtp() {
    let provider = FakeProvider::start(haiku(0)).await;
    let (port, inbox) = fake_smtp().await;
    let dir = tempfile::tempdir().unwrap();
    let s = spawn(
        dir.path(),
        &[
            ("ANTHROPIC_API_KEY", KEY.into()),
            ("ANTHROPIC_BASE_URL", provider.base.clone()),
            (
                "COST_OPTIMIZER_SMTP_URL",
                format!("smtp://127.0.0.1:{port}"),
            ),
            (
                "COST_OPTIMIZER_ALERT_EMAIL_FROM",
                "Cost Optimizer <alerts@example.com>".into(),
            ),
            (
                "COST_OPTIMIZER_ALERT_EMAIL_TO",
                "ops@example.com, cfo@example.com".into(),
            ),
        ],
    )
    .await;
    s.ok(
        "set_budget",
        json!({"monthly_limit": 0.001, "mode": "warn"}),
    )
    .await;
    let c = s.ok("complete_prompt", call_args("default", 300)).await; // 110 %
    assert_eq!(c["alerts"].as_array().unwrap().len(), 3);
    for _ in 0..200 {
        if inbox.lock().unwrap().len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mails = inbox.lock().unwrap().clone();
    assert_eq!(mails.len(), 3, "{mails:?}");
    // Deliveries run concurrently, so the mails may arrive in any order.
    let mut seen: Vec<&str> = Vec::new();
    for m in &mails {
        let body = m.replace("=\n", ""); // quoted-printable soft breaks
        assert!(m.contains("To: ops@example.com, cfo@example.com"), "{m}");
        let pct = ["50%", "80%", "100%"]
            .into_iter()
            .find(|p| {
                m.contains(&format!(
                    "Subject: Budget alert: default monthly budget at {p}"
                ))
            })
            .unwrap_or_else(|| panic!("unexpected subject: {m}"));
        assert!(body.contains(&format!("crossed {pct}")), "{m}");
        seen.push(pct);
    }
    seen.sort();
    assert_eq!(seen, ["100%", "50%", "80%"]);
    s.stop().await;
    let ledger = Ledger::open(&dir.path().join("ledger.sqlite3")).unwrap();
    let alerts = ledger.alerts(None, 10).unwrap();
    assert_eq!(alerts.len(), 3, "{alerts:?}");
    for a in alerts {
        let d = ledger.deliveries(a.id).unwrap();
        assert_eq!(d.len(), 1);
        assert_eq!((d[0].channel.as_str(), d[0].ok), ("email", true));
    }

    // A broken SMTP setting is refused at start, naming the variables.
    let out = std::process::Command::new(binary())
        .env_clear()
        .envs(base_env(dir.path()))
        .env("COST_OPTIMIZER_SMTP_URL", "carrier-pigeon://coop")
        .env("COST_OPTIMIZER_ALERT_EMAIL_TO", "ops@example.com")
        .arg("doctor")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("COST_OPTIMIZER_SMTP_URL"), "{err}");
}

/// A call that fails after the provider accepted it is recorded at the
/// usage the stream had reported; when that spend crosses a threshold the
/// alert fires with the failure, not at the next successful call.
#[tokio::test]
async fn a_failed_call_that_was_charged_fires_its_alert() {
    let truncated = streamed(
        "text/event-stream",
        anthropic_sse_body(
            "claude-haiku-4-5",
            &["o"],
            json!({"input_tokens": 10, "output_tokens": 1}),
            0,
            false,
        ),
    );
    let fake = FakeProvider::start(truncated).await;
    let dir = tempfile::tempdir().unwrap();
    let s = spawn(
        dir.path(),
        &[
            ("ANTHROPIC_API_KEY", KEY.into()),
            ("ANTHROPIC_BASE_URL", fake.base.clone()),
        ],
    )
    .await;
    // The cut-off attempt costs $0.000015 (10 input, 1 output token): 60%.
    s.ok(
        "set_budget",
        json!({"monthly_limit": 0.000025, "alert_thresholds": [0.5, 1.0], "mode": "warn"}),
    )
    .await;
    let e = s.err("complete_prompt", call_args("default", 50)).await;
    assert!(e.contains("stream ended"), "{e}");
    assert!(e.contains("Budget alert") && e.contains("50%"), "{e}");
    // Recorded once: the next failure ($0.000006: 1 input token reported,
    // and the streamed "o" as 1 output token; 84% in all) does not alert
    // again.
    fake.push(streamed(
        "text/event-stream",
        anthropic_sse_body(
            "claude-haiku-4-5",
            &["o"],
            json!({"input_tokens": 1, "output_tokens": 0}),
            0,
            false,
        ),
    ));
    let e = s.err("complete_prompt", call_args("default", 50)).await;
    assert!(!e.contains("Budget alert"), "{e}");
}

/// Changing a budget sends again no alert that is still crossed under the
/// new settings: a slightly higher limit or a new time zone re-sent every
/// threshold already passed this period. A threshold the change put back
/// out of reach fires again when it is crossed anew.
#[tokio::test]
async fn changing_a_budget_resends_only_what_it_uncrossed() {
    let provider = FakeProvider::start(haiku(0)).await;
    let dir = tempfile::tempdir().unwrap();
    let (client, _handler) = spawn_logged(dir.path(), &haiku_env(&provider)).await;
    let alerts_of = |r: &rmcp::model::CallToolResult| -> Vec<f64> {
        assert_ne!(r.is_error, Some(true), "{}", text(r));
        r.structured_content.as_ref().unwrap()["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["threshold"].as_f64().unwrap())
            .collect()
    };
    let set = |args: Value| call_logged(&client, "set_budget", args);
    let spend = || call_logged(&client, "complete_prompt", call_args("ann", 300));
    let budget = |limit: f64, tz: &str| {
        json!({"monthly_limit": limit, "alert_thresholds": [0.25, 0.5, 1.0], "mode": "warn",
               "user_id": "ann", "timezone": tz})
    };
    assert_eq!(
        alerts_of(&set(budget(0.005, "UTC")).await),
        Vec::<f64>::new()
    );
    let mut fired = Vec::new();
    for _ in 0..4 {
        fired.extend(alerts_of(&spend().await));
    }
    // 88% of $0.005 spent.
    assert_eq!(fired, vec![0.25, 0.5]);
    // 96% of the new limit: 25% and 50% are still crossed.
    assert_eq!(
        alerts_of(&set(budget(0.0046, "UTC")).await),
        Vec::<f64>::new()
    );
    // The month now starts an hour earlier (Berlin): the same month.
    let moved = set(budget(0.0046, "Europe/Berlin")).await;
    assert_eq!(alerts_of(&moved), Vec::<f64>::new());
    assert_eq!(alerts_of(&spend().await), vec![1.0]);
    // 27.5% of $0.02: 50% and 100% are out of reach again, 25% is not.
    assert_eq!(
        alerts_of(&set(budget(0.02, "Europe/Berlin")).await),
        Vec::<f64>::new()
    );
    let mut fired = Vec::new();
    for _ in 0..5 {
        fired.extend(alerts_of(&spend().await));
    }
    // 55% of $0.02 after five more calls: 50% once more, nothing else.
    assert_eq!(fired, vec![0.5]);
    client.cancel().await.unwrap();
}

/// A fallback the budget can no longer cover does not end the call when a
/// cheaper one further on fits. DeepSeek (cheap) fails mid-stream after
/// reporting 10,000 prompt tokens, which are charged ($0.0028 of $0.005);
/// Claude Haiku (medium, tried next, worst case $0.0025) fitted when the
/// call was routed but no longer does; Gemini Flash-Lite (free tier) does
/// and answers. Haiku is never called.
#[tokio::test]
async fn a_fallback_too_dear_for_the_budget_gives_way_to_a_cheaper_one() {
    let mut failing = openai_sse_body("deepseek-v3.2", &["Hel"], None, false);
    failing.push_str(
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"error\":{\"code\":502,\"message\":\"upstream died\"},\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"error\"}],\"usage\":{\"prompt_tokens\":10000,\"completion_tokens\":5}}\n\n",
    );
    let deepseek = FakeProvider::start(streamed("text/event-stream", failing)).await;
    let haiku_fake = FakeProvider::start(haiku(0)).await;
    let gemini = FakeProvider::start(gemini_sse(
        "gemini-3.5-flash-lite",
        &["from gemini"],
        json!({"promptTokenCount": 10, "candidatesTokenCount": 5, "totalTokenCount": 15}),
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.toml");
    std::fs::write(
        &cfg,
        // Every prompt scoring over 0.03 is cheap (this one scores 0.13).
        "[routing]\nthresholds = [0.0, 0.8, 0.9]\n\
         [routing.tiers]\nfree = [\"gemini/gemini-3.5-flash-lite\"]\ncheap = [\"deepseek/deepseek-v3.2\"]\n\
         medium = [\"anthropic/claude-haiku-4-5\"]\npremium = [\"anthropic/claude-opus-4-5\"]\n",
    )
    .unwrap();
    let s = spawn(
        dir.path(),
        &[
            ("COST_OPTIMIZER_CONFIG", cfg.display().to_string()),
            ("COST_OPTIMIZER_MAX_RETRIES", "0".into()),
            ("DEEPSEEK_API_KEY", "sk-FAKE-deepseek-fallback-0000".into()),
            ("DEEPSEEK_BASE_URL", deepseek.base.clone()),
            ("ANTHROPIC_API_KEY", KEY.into()),
            ("ANTHROPIC_BASE_URL", haiku_fake.base.clone()),
            ("GEMINI_API_KEY", "AIza-FAKE-gemini-fallback-00000".into()),
            ("GEMINI_BASE_URL", gemini.base.clone()),
        ],
    )
    .await;
    s.ok("set_budget", json!({"monthly_limit": 0.005})).await;
    let c = s
        .ok(
            "complete_prompt",
            json!({"prompt": "Summarize the plot of Hamlet in two sentences.", "max_tokens": 500}),
        )
        .await;
    assert_eq!(c["answer"], "from gemini", "{c}");
    assert!(haiku_fake.requests().is_empty(), "Haiku was called");
    let tried: Vec<&str> = c["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["model"].as_str().unwrap())
        .collect();
    assert_eq!(
        tried,
        ["deepseek/deepseek-v3.2", "gemini/gemini-3.5-flash-lite"],
        "{c}"
    );
    assert_usd(
        &c["failed_attempts_cost_usd"],
        10_000.0 * 0.28e-6 + 5.0 * 0.40e-6,
    );
    s.stop().await;
}

/// A webhook that runs on the POST and answers with a redirect (Google
/// Apps Script) gets the alert once: the redirect is not followed (the
/// hook's URL, its secret, would go along) nor retried (each retry runs the
/// hook again), and the delivery is recorded as made, with a note.
#[tokio::test]
async fn a_redirecting_webhook_gets_the_alert_once() {
    let provider = FakeProvider::start(haiku(0)).await;
    let elsewhere = FakeProvider::start(Reply::json(200, json!({"ok": true}))).await;
    let hook = FakeProvider::start(Reply::json(302, json!({})).header(
        "location",
        &format!("{}/echo?user_content_key=x", elsewhere.base),
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let s = spawn(dir.path(), &haiku_env(&provider)).await;
    s.ok(
        "set_budget",
        json!({"monthly_limit": 0.002, "alert_thresholds": [0.5], "mode": "warn",
               "webhook_url": format!("{}/macros/s/abc/exec", hook.base)}),
    )
    .await;
    let c = s.ok("complete_prompt", call_args("default", 300)).await;
    assert_eq!(c["alerts"].as_array().unwrap().len(), 1);
    assert_eq!(wait_for(&hook, 1).await.len(), 1, "sent once, not retried");
    assert!(elsewhere.requests().is_empty(), "the redirect was followed");
    s.stop().await;
    let ledger = Ledger::open(&dir.path().join("ledger.sqlite3")).unwrap();
    let alert = &ledger.alerts(None, 10).unwrap()[0];
    let d = ledger.deliveries(alert.id).unwrap();
    assert_eq!(d.len(), 1, "{d:?}");
    assert!(d[0].ok && d[0].status == Some(302), "{d:?}");
    assert!(
        d[0].error.as_deref().unwrap().contains("not followed"),
        "{d:?}"
    );
    // Recorded as delivered: the next server does not send it again.
    let s = spawn(dir.path(), &haiku_env(&provider)).await;
    assert_eq!(wait_for(&hook, 2).await.len(), 1);
    s.stop().await;
}
