//! Whole-process latency through the real binary over stdio, from rmcp's
//! client, each figure beside a baseline measured in the same run:
//!
//! 1. `get_recommendation` and `check_model_costs` round trips, against
//!    MCP `ping` (the protocol's own floor);
//! 2. `complete_prompt` against a local fake provider, against a direct
//!    HTTP call to the same fake: the difference is our overhead (routing,
//!    budget hold, ledger writes with fsync, rendering). Sequential, and
//!    with 32 calls in flight.
//!
//! Run: `cargo bench --bench mcp_roundtrip` (release build);
//! `AICO_BIN=<server binary>` measures another build of the server. Under
//! `cargo test` it runs a few iterations only, as a smoke test.

use std::time::{Duration, Instant};

use axum::response::IntoResponse;
use rmcp::model::CallToolRequestParams;
use rmcp::transport::{ConfigureCommandExt, TokioChildProcess};
use rmcp::{RoleClient, ServiceExt, service::RunningService};
use serde_json::json;

type Client = RunningService<RoleClient, ()>;

fn percentiles(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort();
    let at = |q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)].as_secs_f64() * 1e3;
    (at(0.50), at(0.99))
}

fn report(name: &str, v: Vec<Duration>) -> (f64, f64) {
    let n = v.len();
    let (p50, p99) = percentiles(v);
    println!("{name:<58} n={n:<5} p50 {p50:>8.3} ms   p99 {p99:>8.3} ms");
    (p50, p99)
}

async fn fake_provider() -> String {
    let reply = json!({
        "id": "c1", "object": "chat.completion", "created": 1, "model": "deepseek-v3.2",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 20, "completion_tokens": 2, "total_tokens": 22}
    });
    let app = axum::Router::new().fallback(move || {
        let r = reply.clone();
        async move { axum::Json(r).into_response() }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}

/// Resident memory of process `pid`, KiB (Linux; 0 elsewhere).
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

async fn spawn(data: &std::path::Path, base: &str) -> (Client, u32) {
    // AICO_BIN runs another build of the server (say, the previous
    // commit's) under the same client, for before/after pairs.
    let bin = std::env::var_os("AICO_BIN")
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_ai-cost-optimizer").into());
    let cmd = tokio::process::Command::new(bin).configure(|c| {
        c.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", data)
            .env("COST_OPTIMIZER_DATA_DIR", data)
            .env("COST_OPTIMIZER_CONFIG", "")
            .env("COST_OPTIMIZER_OLLAMA_PROBE", "0")
            .env("COST_OPTIMIZER_LOG", "warn")
            .env("COST_OPTIMIZER_MONTHLY_BUDGET", "1000000")
            .env("DEEPSEEK_API_KEY", "sk-bench-FAKE-0000000000")
            .env("DEEPSEEK_BASE_URL", base);
    });
    let (t, _) = TokioChildProcess::builder(cmd)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = t.id().unwrap_or(0);
    (().serve(t).await.unwrap(), pid)
}

async fn call(c: &Client, name: &'static str, args: serde_json::Value) -> Duration {
    let t0 = Instant::now();
    let r = c
        .call_tool(
            CallToolRequestParams::new(name).with_arguments(args.as_object().unwrap().clone()),
        )
        .await
        .unwrap();
    assert_ne!(r.is_error, Some(true), "{name} failed: {:?}", r.content);
    t0.elapsed()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let n = if bench { 2000 } else { 5 };
    let dir = tempfile::tempdir().unwrap();
    let base = fake_provider().await;
    let (c, pid) = spawn(dir.path(), &base).await;
    let idle_rss = rss_kib(pid);
    let http = reqwest::Client::new();
    println!("MCP round trips over stdio (rmcp client → real binary), {n} sequential calls each:");

    // Warm-up: tokenizer, connections, page cache.
    for _ in 0..20.min(n) {
        call(&c, "get_recommendation", json!({"prompt": "warm up"})).await;
    }
    let mut ping = Vec::new();
    for _ in 0..n {
        let t0 = Instant::now();
        c.send_request(rmcp::model::ClientRequest::PingRequest(Default::default()))
            .await
            .unwrap();
        ping.push(t0.elapsed());
    }
    report("baseline: MCP ping", ping);
    let prompt = "Summarise the main causes of the French Revolution in three bullet points.";
    let rec: Vec<_> = {
        let mut v = Vec::new();
        for _ in 0..n {
            v.push(call(&c, "get_recommendation", json!({"prompt": prompt})).await);
        }
        v
    };
    report("get_recommendation", rec);
    let costs: Vec<_> = {
        let mut v = Vec::new();
        for _ in 0..n {
            v.push(call(&c, "check_model_costs", json!({"provider": "deepseek"})).await);
        }
        v
    };
    report("check_model_costs {provider}", costs);

    println!("\ncomplete_prompt against a local fake provider (ledger writes included):");
    let body = json!({"model": "deepseek-v3.2", "messages": [{"role": "user", "content": prompt}],
                      "max_tokens": 64, "stream": true});
    let mut direct = Vec::new();
    for _ in 0..n {
        let t0 = Instant::now();
        let r = http
            .post(format!("{base}/chat/completions"))
            .json(&body)
            .send()
            .await
            .unwrap();
        let _ = r.bytes().await.unwrap();
        direct.push(t0.elapsed());
    }
    let (d50, d99) = report("baseline: direct HTTP call to the fake provider", direct);
    let args = json!({"prompt": prompt, "force_model": "deepseek/deepseek-v3.2", "max_tokens": 64});
    let mut through = Vec::new();
    for _ in 0..n {
        through.push(call(&c, "complete_prompt", args.clone()).await);
    }
    let (t50, t99) = report("complete_prompt through the server, sequential", through);
    println!(
        "{:<58}        p50 {:>8.3} ms   p99 {:>8.3} ms",
        "overhead (through − direct)",
        t50 - d50,
        t99 - d99
    );

    // 32 in flight.
    let inflight = 32;
    let rounds = (n / inflight).max(1);
    let mut direct = Vec::new();
    let mut through = Vec::new();
    for _ in 0..rounds {
        let calls = (0..inflight).map(|_| {
            let http = http.clone();
            let (base, body) = (base.clone(), body.clone());
            async move {
                let t0 = Instant::now();
                let r = http
                    .post(format!("{base}/chat/completions"))
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                let _ = r.bytes().await.unwrap();
                t0.elapsed()
            }
        });
        direct.extend(futures_util::future::join_all(calls).await);
        let calls = (0..inflight).map(|_| call(&c, "complete_prompt", args.clone()));
        through.extend(futures_util::future::join_all(calls).await);
    }
    let (d50, d99) = report("baseline: direct HTTP, 32 in flight", direct);
    let (t50, t99) = report("complete_prompt, 32 in flight", through);
    println!(
        "{:<58}        p50 {:>8.3} ms   p99 {:>8.3} ms",
        "overhead (through − direct), 32 in flight",
        t50 - d50,
        t99 - d99
    );

    // Memory: idle after initialize, then after each batch of calls.
    let batch = if bench { 1024 } else { 32 };
    println!("\nresident memory (VmRSS) of the server:");
    println!(
        "{:<58} {:>8} KiB",
        "baseline: this benchmark process (rmcp client + fake)",
        rss_kib(std::process::id())
    );
    println!("{:<58} {:>8} KiB", "server idle after initialize", idle_rss);
    let mut done = 2 * n + rounds * inflight;
    println!(
        "{:<58} {:>8} KiB",
        format!("server after {done} calls"),
        rss_kib(pid)
    );
    for _ in 0..5 {
        for _ in 0..batch / inflight {
            let calls = (0..inflight).map(|_| call(&c, "complete_prompt", args.clone()));
            futures_util::future::join_all(calls).await;
        }
        done += batch / inflight * inflight;
        println!(
            "{:<58} {:>8} KiB",
            format!("server after {done} calls"),
            rss_kib(pid)
        );
    }
    let _ = c.cancel().await;
}
