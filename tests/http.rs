//! `serve --http`: the real binary on 127.0.0.1 (port 0, address read from
//! its stderr) against fake providers, driven by plain HTTP (reqwest) and
//! by rmcp's streamable-HTTP MCP client.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use reqwest::Method;
use rmcp::ServiceExt;
use rmcp::model::CallToolRequestParams;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use serde_json::{Value, json};

const DS_KEY: &str = "sk-http-FAKE-deepseek-0000000000";

/// The binary serving HTTP; killed on drop.
struct HttpServer {
    child: Child,
    base: String,
    stderr: PathBuf,
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn env_for(dir: &Path, extra: &[(&str, String)]) -> Vec<(String, String)> {
    let mut vars = base_env(dir);
    vars.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
    vars
}

/// Runs a CLI command of the binary; returns (status ok, stdout, stderr).
fn cli(dir: &Path, extra: &[(&str, String)], args: &[&str]) -> (bool, String, String) {
    let out = Command::new(binary())
        .env_clear()
        .envs(env_for(dir, extra))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Starts `serve --http ADDR` and waits for its "listening on" line.
fn start(dir: &Path, extra: &[(&str, String)], addr: &str) -> HttpServer {
    let stderr_path = dir.join(format!("http-{}.log", fastrand::u64(..)));
    let mut child = Command::new(binary())
        .env_clear()
        .envs(env_for(dir, extra))
        .args(["serve", "--http", addr])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let log = stderr_path.clone();
    std::thread::spawn(move || {
        use std::io::Write;
        let mut file = std::fs::File::create(&log).unwrap();
        let mut sent = false;
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let _ = writeln!(file, "{line}");
            if !sent && let Some(a) = line.split("listening on ").nth(1) {
                let _ = tx.send(a.trim().to_string());
                sent = true;
            }
        }
    });
    let base = rx
        .recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| {
            panic!(
                "server did not start: {}",
                std::fs::read_to_string(&stderr_path).unwrap_or_default()
            )
        });
    HttpServer {
        child,
        base,
        stderr: stderr_path,
    }
}

fn deepseek_env(fake: &FakeProvider) -> Vec<(&'static str, String)> {
    vec![
        ("DEEPSEEK_API_KEY", DS_KEY.to_string()),
        ("DEEPSEEK_BASE_URL", fake.base.clone()),
    ]
}

/// DeepSeek's answer as it sends it to our streaming request (SSE, usage
/// in the last chunk).
fn ds_reply() -> Reply {
    openai_sse(
        "deepseek-v3.2",
        &["Paris."],
        json!({"prompt_tokens": 1000, "completion_tokens": 500, "total_tokens": 1500}),
    )
}

fn http() -> reqwest::Client {
    reqwest::Client::new()
}

/// Sends one request, with a bearer key and a JSON body when given.
async fn request(
    c: &reqwest::Client,
    method: Method,
    url: impl reqwest::IntoUrl,
    key: Option<&str>,
    body: Option<&Value>,
) -> reqwest::Response {
    let mut r = c.request(method, url);
    if let Some(key) = key {
        r = r.bearer_auth(key);
    }
    if let Some(body) = body {
        r = r.json(body);
    }
    r.send().await.unwrap()
}

/// A GET, with a bearer key when given.
async fn get(
    c: &reqwest::Client,
    url: impl reqwest::IntoUrl,
    key: Option<&str>,
) -> reqwest::Response {
    request(c, Method::GET, url, key, None).await
}

/// A 400 whose OpenAI-style error message names `what`.
async fn assert_bad_request(r: reqwest::Response, what: &str) {
    assert_eq!(r.status(), 400);
    let e = json_of(r).await;
    assert!(
        e["error"]["message"].as_str().unwrap().contains(what),
        "{e}"
    );
}

async fn json_of(r: reqwest::Response) -> Value {
    let status = r.status();
    let text = r.text().await.unwrap();
    serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}"))
}

/// A fake DeepSeek streaming `pieces`, with that usage.
async fn deepseek_answering(pieces: &[&str], prompt: u64, completion: u64) -> FakeProvider {
    FakeProvider::start(openai_sse(
        "deepseek-v3.2",
        pieces,
        json!({"prompt_tokens": prompt, "completion_tokens": completion}),
    ))
    .await
}

/// `POST /v1/chat/completions` with `body`, no key.
async fn chat(s: &HttpServer, body: &Value) -> reqwest::Response {
    request(
        &http(),
        Method::POST,
        format!("{}/v1/chat/completions", s.base),
        None,
        Some(body),
    )
    .await
}

/// The sum of a Prometheus metric's samples whose labels contain `labels`,
/// read from the server's `/metrics`.
async fn metric_sum(s: &HttpServer, name: &str, labels: &str) -> f64 {
    let text = get(&http(), format!("{}/metrics", s.base), None)
        .await
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(labels))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

fn create_key(dir: &Path, user: &str, admin: bool) -> (String, String) {
    let mut args = vec!["keys", "create", "--user", user];
    if admin {
        args.push("--admin");
    }
    let (ok, out, err) = cli(dir, &[], &args);
    assert!(ok, "keys create failed: {err}");
    let key = out.trim().to_string();
    let id = key.split('_').nth(1).unwrap().to_string();
    (key, id)
}

/// Every file the server wrote (logs, stderr) must be free of `secret`.
fn assert_not_logged(dir: &Path, secret: &str) {
    fn walk(p: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(p).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(dir, &mut files);
    for f in files {
        if f.extension().is_some_and(|e| e == "log") || f.to_string_lossy().contains("logs") {
            let text = String::from_utf8_lossy(&std::fs::read(&f).unwrap()).into_owned();
            assert!(!text.contains(secret), "{} contains a secret", f.display());
        }
    }
}

#[tokio::test]
async fn probes_openai_completion_usage_and_metrics() {
    let fake = FakeProvider::start(ds_reply()).await;
    let dir = tempfile::tempdir().unwrap();
    // A key owner whose user id needs escaping in the metrics text.
    create_key(dir.path(), "o\"brien\\ops", false);
    let s = start(dir.path(), &deepseek_env(&fake), "127.0.0.1:0");
    let c = http();

    let h = get(&c, format!("{}/health", s.base), None).await;
    assert_eq!(h.status(), 200);
    assert!(h.headers().contains_key("x-request-id"));
    let r = get(&c, format!("{}/ready", s.base), None).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    // The container's HEALTHCHECK: the binary probes itself.
    let (ok, out, err) = cli(
        dir.path(),
        &[],
        &["healthcheck", &format!("{}/health", s.base)],
    );
    assert!(ok && out.trim() == "ok", "{err}");
    // The server's bare URL probes its /health.
    let (ok, out, err) = cli(dir.path(), &[], &["healthcheck", &s.base]);
    assert!(ok && out.trim() == "ok", "{err}");
    let (ok, _, _) = cli(
        dir.path(),
        &[],
        &["healthcheck", &format!("{}/nope", s.base)],
    );
    assert!(!ok);

    let models = json_of(get(&c, format!("{}/v1/models", s.base), None).await).await;
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids[0], "auto");
    assert!(ids.iter().any(|i| i.starts_with("deepseek/")), "{ids:?}");
    // One model by id (the SDKs' models.retrieve); ids hold a slash.
    let m = json_of(
        get(
            &c,
            format!("{}/v1/models/deepseek/deepseek-v3.2", s.base),
            None,
        )
        .await,
    )
    .await;
    assert_eq!(
        (m["id"].as_str(), m["owned_by"].as_str()),
        (Some("deepseek/deepseek-v3.2"), Some("deepseek")),
        "{m}"
    );
    // What the chat endpoint takes, a bare name included.
    let m = json_of(get(&c, format!("{}/v1/models/deepseek-v3.2", s.base), None).await).await;
    assert_eq!(m["id"], "deepseek/deepseek-v3.2", "{m}");
    let r = get(
        &c,
        format!("{}/v1/models/anthropic/claude-haiku-4-5", s.base),
        None,
    )
    .await;
    assert_eq!(r.status(), 404, "a provider not enabled");
    assert_eq!(json_of(r).await["error"]["code"], "model_not_found");
    assert!(!ids.iter().any(|i| i.starts_with("anthropic/")), "{ids:?}");

    let resp = c
        .post(format!("{}/v1/chat/completions", s.base))
        .header("x-request-id", "test-req-42")
        .json(&json!({
            "model": "auto",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "What is the capital of France?"}
            ]
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let h = resp.headers().clone();
    assert_eq!(h["x-request-id"], "test-req-42", "the client's id is kept");
    assert_eq!(h["x-routed-provider"], "deepseek");
    assert!(
        h["x-routed-model"]
            .to_str()
            .unwrap()
            .starts_with("deepseek/")
    );
    assert!(h.contains_key("x-complexity"));
    let cost: f64 = h["x-cost-usd"].to_str().unwrap().parse().unwrap();
    // The catalog's price of the reported usage: DeepSeek V3.2, 1,000
    // tokens in at $0.28/MTok and 500 out at $0.40/MTok.
    assert_eq!(h["x-routed-model"], "deepseek/deepseek-v3.2");
    assert!(
        (cost - (1000.0 * 0.28e-6 + 500.0 * 0.40e-6)).abs() < 1e-12,
        "{cost}"
    );
    let body = json_of(resp).await;
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["choices"][0]["message"]["content"], "Paris.");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(body["usage"]["prompt_tokens"], 1000);
    assert_eq!(body["usage"]["completion_tokens"], 500);
    assert_eq!(body["usage"]["total_tokens"], 1500);
    // The provider got the system prompt and the user turn as they were.
    let sent = &fake.requests()[0].body;
    assert_eq!(sent["messages"][0]["content"], "Be brief.");
    assert_eq!(
        sent["messages"][1]["content"],
        "What is the capital of France?"
    );

    // The ledger has it, at the cost the header gave.
    let usage = json_of(get(&c, format!("{}/v1/usage", s.base), None).await).await;
    assert_eq!(usage["calls"], 1);
    assert_usd(&usage["total_cost_usd"], cost);

    let rec = json_of(
        c.get(format!("{}/v1/recommendation", s.base))
            .query(&[("prompt", "hello")])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert!(rec["recommended"]["model"].is_string(), "{rec}");

    // No key is needed here (loopback), but a malformed one is still refused.
    let r = c
        .get(format!("{}/v1/models", s.base))
        .header("authorization", "Basic dXNlcjpwYXNz")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // A client's placeholder key (`api_key="EMPTY"`) or a provider key
    // from the shell is no key of ours: as if none was sent. One of ours
    // that is wrong is refused.
    for (token, status) in [
        ("EMPTY", 200),
        ("sk-proj-abc123", 200),
        ("aco_zz_nope", 401),
    ] {
        let r = c
            .get(format!("{}/v1/models", s.base))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status, "{token}");
    }
    // Made-up methods share one label, so they cannot grow the series.
    for m in ["FOO", "BAR"] {
        let r = c
            .request(
                Method::from_bytes(m.as_bytes()).unwrap(),
                format!("{}/nope", s.base),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
    }

    let metrics = get(&c, format!("{}/metrics", s.base), None)
        .await
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(
            r#"aco_http_requests_total{route="/v1/chat/completions",method="POST",status="200"} 1"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            r#"aco_http_requests_total{route="unmatched",method="OTHER",status="404"} 2"#
        ),
        "{metrics}"
    );
    assert!(!metrics.contains("FOO"), "{metrics}");
    assert!(
        metrics.contains(r#"aco_budget_limit_usd{scope="o\"brien\\ops"} 100"#),
        "label values are escaped: {metrics}"
    );
    assert!(metrics.contains("aco_http_request_duration_seconds_bucket"));
    let cost_line = metrics
        .lines()
        .find(|l| l.starts_with("aco_llm_cost_usd_total{") && l.contains(r#"provider="deepseek""#))
        .unwrap_or_else(|| panic!("no cost counter: {metrics}"));
    let counted: f64 = cost_line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!((counted - cost).abs() < 1e-9, "{cost_line} vs {cost}");
    assert!(
        metrics.contains(r#"aco_budget_limit_usd{scope="default"} 100"#),
        "{metrics}"
    );
    // Scrapes at the same time (two Prometheus servers, an agent) each get
    // every budget series: one clearing them while another encoded lost them.
    let scrapes = (0..64).map(|_| {
        let c = c.clone();
        let url = format!("{}/metrics", s.base);
        tokio::spawn(async move { c.get(url).send().await.unwrap().text().await.unwrap() })
    });
    for page in futures_util::future::join_all(scrapes).await {
        let page = page.unwrap();
        for series in [
            r#"aco_budget_limit_usd{scope="default"} 100"#,
            r#"aco_budget_spent_usd{scope="default"}"#,
            r#"aco_budget_reserved_usd{scope="default"}"#,
        ] {
            assert!(page.contains(series), "{series} missing: {page}");
        }
    }

    let page = get(&c, format!("{}/dashboard", s.base), None).await;
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("<html"));

    // Request ids reach the logs.
    let log = std::fs::read_to_string(&s.stderr).unwrap();
    assert!(log.contains("test-req-42"), "{log}");
    assert_not_logged(dir.path(), DS_KEY);
}

#[tokio::test]
async fn openai_errors_have_openai_bodies_and_statuses() {
    let fake = FakeProvider::start(ds_reply()).await;
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), &deepseek_env(&fake), "127.0.0.1:0");
    let c = http();
    let url = format!("{}/v1/chat/completions", s.base);
    for (body, status) in [
        (json!({"messages": "nope"}), 400),
        (json!({"model": "auto", "messages": []}), 400),
        (
            json!({"model": "auto", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}),
            400,
        ),
        (
            json!({"model": "auto", "messages": [{"role": "user", "content": "hi"}], "max_tokens": -5}),
            400,
        ),
        (
            json!({"model": "no-such/model-x", "messages": [{"role": "user", "content": "hi"}]}),
            404,
        ),
        // A known model used as it cannot be: a bad request, not "no such model".
        (
            json!({"model": "deepseek/deepseek-v3.2", "tier": "premium", "messages": [{"role": "user", "content": "hi"}]}),
            400,
        ),
        // The `prefer` extension reaches the same checks as the tools'.
        (
            json!({"model": "auto", "prefer": "fast", "messages": [{"role": "user", "content": "hi"}]}),
            400,
        ),
        // What the proxy cannot honour is said, not dropped.
        (
            json!({"model": "auto", "messages": [{"role": "user", "content": "hi"}], "response_format": {"type": "json_object"}}),
            400,
        ),
        (
            json!({"model": "auto", "messages": [{"role": "user", "content": "hi"}], "stop": ["there"]}),
            400,
        ),
        (
            json!({"model": "auto", "messages": [{"role": "user", "content": "hi"}], "logprobs": true}),
            400,
        ),
        // A model whose provider is not enabled: 404, as GET /v1/models/{id}.
        (
            json!({"model": "anthropic/claude-haiku-4-5", "messages": [{"role": "user", "content": "hi"}]}),
            404,
        ),
        // An array: the client's mistake named, not our struct's.
        (json!([{"role": "user", "content": "hi"}]), 400),
        // Tool results alone are not a question.
        (
            json!({"model": "auto", "messages": [{"role": "tool", "content": "42", "tool_call_id": "c1"}]}),
            400,
        ),
    ] {
        let r = request(&c, Method::POST, &url, None, Some(&body)).await;
        assert_eq!(r.status(), status, "{body}");
        let e = json_of(r).await;
        let m = e["error"]["message"].as_str().unwrap();
        assert!(m.len() > 3 && !m.contains("ChatBody"), "{e}");
        assert!(e["error"]["type"].is_string());
    }
    // Bad input never reached the provider nor the ledger.
    assert!(fake.requests().is_empty());
    // Over the body limit: refused from the announced length, before any of
    // the body is read. (Raw TCP: a client still writing the body could see
    // the early close as a broken pipe instead of the answer.)
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let hostport = s.base.trim_start_matches("http://");
        let mut tcp = tokio::net::TcpStream::connect(hostport).await.unwrap();
        let head = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: {hostport}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            9 * 1024 * 1024
        );
        tcp.write_all(head.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 512];
        let n = tcp.read(&mut buf).await.unwrap();
        let reply = String::from_utf8_lossy(&buf[..n]);
        assert!(
            reply.starts_with("HTTP/1.1 413"),
            "body size limit: {reply}"
        );
        // In the JSON error shape OpenAI clients read, like every error.
        assert!(
            reply.contains("content-type: application/json") && reply.contains(r#""error""#),
            "{reply}"
        );
        // Which limit, and where it is set.
        assert!(
            reply.contains("limit of 8388608 bytes") && reply.contains("MAX_BODY_BYTES"),
            "{reply}"
        );
    }
    // So are a wrong method and a query string that does not parse.
    for (method, path, status) in [
        (Method::GET, "/v1/chat/completions", 405),
        (Method::GET, "/v1/usage?days=abc", 400),
    ] {
        let r = request(&c, method, &format!("{}{path}", s.base), None, None).await;
        assert_eq!(r.status(), status, "{path}");
        let e = json_of(r).await;
        assert!(
            e["error"]["message"].as_str().unwrap().len() > 3,
            "{path}: {e}"
        );
    }
    // Under the configured limit (8 MiB) but over axum's own 2 MiB default
    // for body extractors: the body is read and judged on its content (here
    // a bad max_tokens), with the usual JSON error, not a bare 413.
    let big = json!({"model": "auto", "max_tokens": -5,
        "messages": [{"role": "user", "content": "x".repeat(3 * 1024 * 1024)}]});
    let r = request(&c, Method::POST, &url, None, Some(&big)).await;
    assert_bad_request(r, "max_tokens").await;
    let r = get(&c, format!("{}/nope", s.base), None).await;
    assert_eq!(r.status(), 404);
}

/// Every attempt rate-limited is a 429 (OpenAI clients back off and
/// retry it), every one overloaded a 503; not a 502 "provider failed".
#[tokio::test]
async fn capacity_refusals_keep_their_status() {
    for (status, want, code) in [(429, 429, "rate_limit_exceeded"), (503, 503, "overloaded")] {
        let fake = FakeProvider::start(
            openai_error(status, "slow down", "rate_limit_error").header("retry-after", "1"),
        )
        .await;
        let dir = tempfile::tempdir().unwrap();
        let s = start(dir.path(), &deepseek_env(&fake), "127.0.0.1:0");
        let body = json!({"model": "auto", "messages": [{"role": "user", "content": "hi"}]});
        let r = chat(&s, &body).await;
        assert_eq!(r.status(), want);
        // The provider's own wait is passed on to the client.
        assert_eq!(r.headers()["retry-after"], "1");
        let e = json_of(r).await;
        assert_eq!(e["error"]["code"], code, "{e}");
        assert!(fake.requests().len() >= 2, "retried before giving up");
    }
}

/// A call that failed after the core's own retries and fallbacks is a 502
/// that tells OpenAI's SDKs not to retry it (they retry any 5xx twice by
/// default, which would repeat every attempt, billed ones included).
#[tokio::test]
async fn a_failed_call_tells_openai_clients_not_to_retry() {
    let fake = FakeProvider::start(openai_error(500, "internal error", "server_error")).await;
    let dir = tempfile::tempdir().unwrap();
    let mut env = deepseek_env(&fake);
    env.push(("COST_OPTIMIZER_MAX_RETRIES", "0".into()));
    let s = start(dir.path(), &env, "127.0.0.1:0");
    let body = json!({"model": "auto", "messages": [{"role": "user", "content": "hi"}]});
    let r = chat(&s, &body).await;
    assert_eq!(r.status(), 502);
    assert_eq!(r.headers()["x-should-retry"], "false");
    let e = json_of(r).await;
    assert_eq!(e["error"]["code"], "provider_failed", "{e}");
    // DeepSeek's other model was passed over (a server error is taken as
    // the provider's), and the message says so, sentence by sentence.
    let m = e["error"]["message"].as_str().unwrap();
    assert!(m.contains("internal error. Tried: deepseek/"), "{m}");
    assert!(m.contains("Not tried: deepseek/deepseek-v4-pro"), "{m}");
    // The provider's failure is in the metrics even though no answer came
    // (they counted only the failed attempts before an answer).
    assert_eq!(fake.requests().len(), 1);
    assert_eq!(
        metric_sum(&s, "aco_provider_errors_total", r#"provider="deepseek""#).await,
        1.0
    );
}

/// Every model tried said the prompt exceeds its context: OpenAI's 400
/// `context_length_exceeded`, which clients act on by shortening the
/// prompt, not a 502 read as a server fault; over MCP it says the prompt
/// is too long.
#[tokio::test]
async fn a_prompt_too_long_for_every_model_is_openais_context_error() {
    let fake = FakeProvider::start(openai_error(
        400,
        "This model's maximum context length is 131072 tokens. However, you requested 200000 tokens.",
        "invalid_request_error",
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), &deepseek_env(&fake), "127.0.0.1:0");
    let body = json!({"model": "auto", "messages": [{"role": "user", "content": "hi"}]});
    let r = chat(&s, &body).await;
    assert_eq!(r.status(), 400);
    let e = json_of(r).await;
    assert_eq!(e["error"]["type"], "invalid_request_error", "{e}");
    assert_eq!(e["error"]["code"], "context_length_exceeded", "{e}");
    // DeepSeek's other model was tried too (a longer context, maybe).
    assert!(fake.requests().len() >= 2, "{}", fake.requests().len());
}

/// An answer the provider stopped for safety is `content_filter` to an
/// OpenAI client, streamed or not: read as `stop`, a partial answer passes
/// for a whole one.
#[tokio::test]
async fn a_filtered_answer_is_reported_as_content_filter() {
    let filtered = || {
        streamed(
            "text/event-stream",
            openai_sse_body(
                "deepseek-v3.2",
                &["Here is how to"],
                Some(json!({"prompt_tokens": 4, "completion_tokens": 4})),
                true,
            )
            .replace(
                "\"finish_reason\":\"stop\"",
                "\"finish_reason\":\"content_filter\"",
            ),
        )
    };
    let fake = FakeProvider::start(filtered()).await;
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), &deepseek_env(&fake), "127.0.0.1:0");
    let url = format!("{}/v1/chat/completions", s.base);
    let body = json!({"model": "deepseek/deepseek-v3.2",
        "messages": [{"role": "user", "content": "how do I"}]});
    let r = request(&http(), Method::POST, &url, None, Some(&body)).await;
    assert_eq!(r.status(), 200);
    let c = json_of(r).await;
    assert_eq!(c["choices"][0]["message"]["content"], "Here is how to");
    assert_eq!(c["choices"][0]["finish_reason"], "content_filter", "{c}");

    let mut body = body;
    body["stream"] = json!(true);
    let text = request(&http(), Method::POST, &url, None, Some(&body))
        .await
        .text()
        .await
        .unwrap();
    let last = text
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter(|e| *e != "[DONE]")
        .map(|e| serde_json::from_str::<Value>(e).unwrap())
        .filter(|c| !c["choices"][0]["finish_reason"].is_null())
        .last()
        .unwrap_or_else(|| panic!("no finish: {text}"));
    assert_eq!(
        last["choices"][0]["finish_reason"], "content_filter",
        "{text}"
    );
}

/// An attempt cut off after the provider accepted it is charged (it may
/// be billed), then the call is retried: `x-cost-usd` is what the call
/// cost the budget, both attempts, as the ledger has it.
#[tokio::test]
async fn the_cost_header_counts_charged_failed_attempts() {
    let ok = openai_sse(
        "deepseek-v3.2",
        &["Paris."],
        json!({"prompt_tokens": 10, "completion_tokens": 3}),
    );
    let fake = FakeProvider::start(ok).await;
    fake.push(
        streamed(
            "text/event-stream",
            openai_sse_body("deepseek-v3.2", &["A long answer, cut"], None, false),
        )
        .reset_after_body(),
    );
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), &deepseek_env(&fake), "127.0.0.1:0");
    let body = json!({"model": "deepseek/deepseek-v3.2",
        "messages": [{"role": "user", "content": "Capital of France?"}]});
    let r = chat(&s, &body).await;
    assert_eq!(r.status(), 200);
    let header: f64 = r.headers()["x-cost-usd"].to_str().unwrap().parse().unwrap();
    let c = json_of(r).await;
    assert_eq!(fake.requests().len(), 2, "retried after the cut");
    let answer = c["x_optimizer"]["cost_usd"].as_f64().unwrap();
    let failed = c["x_optimizer"]["failed_attempts_cost_usd"]
        .as_f64()
        .unwrap();
    assert!(failed > 0.0, "{c}");
    assert!((header - (answer + failed)).abs() < 1e-9, "{header} vs {c}");
    let usage = json_of(
        request(
            &http(),
            Method::GET,
            format!("{}/v1/usage", s.base),
            None,
            None,
        )
        .await,
    )
    .await;
    let total = usage["total_cost_usd"].as_f64().unwrap();
    assert!(
        (total - header).abs() < 1e-9,
        "ledger {total} vs header {header}"
    );
    // The metrics' cost counters count the charged attempt too, as the
    // budget does.
    let counted = metric_sum(&s, "aco_llm_cost_usd_total", r#"provider="deepseek""#).await;
    assert!(
        (counted - header).abs() < 1e-9,
        "metrics {counted} vs {header}"
    );
    assert_eq!(
        metric_sum(&s, "aco_provider_errors_total", r#"provider="deepseek""#).await,
        1.0
    );
}

/// OpenAI's sampling options reach the provider (they were dropped, so
/// `temperature: 0` evaluations ran at the provider's default); out of
/// range they are a 400, as at OpenAI.
#[tokio::test]
async fn sampling_options_are_passed_on() {
    let fake = deepseek_answering(&["4"], 5, 1).await;
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), &deepseek_env(&fake), "127.0.0.1:0");
    let body = json!({"model": "deepseek/deepseek-v3.2", "temperature": 0, "top_p": 0.5, "seed": 7,
        "messages": [{"role": "user", "content": "2+2?"}]});
    let r = chat(&s, &body).await;
    assert_eq!(r.status(), 200);
    let sent = &fake.requests()[0].body;
    assert_eq!(sent["temperature"], json!(0.0), "{sent}");
    assert_eq!(sent["top_p"], json!(0.5), "{sent}");
    assert_eq!(sent["seed"], json!(7), "{sent}");
    let mut bad = body.clone();
    bad["temperature"] = json!(3);
    let r = chat(&s, &bad).await;
    assert_bad_request(r, "temperature").await;
    assert_eq!(fake.requests().len(), 1);
}

/// A provider that fails after part of the answer was streamed to an
/// OpenAI client: that text cannot be taken back, so the call is neither
/// retried nor sent elsewhere (which would append a second answer to the
/// first); the stream ends with an error event.
#[tokio::test]
async fn a_failure_after_streamed_text_is_not_retried() {
    let fake = deepseek_answering(&["A second answer."], 4, 3).await;
    let mut broken = openai_sse_body("deepseek-v3.2", &["Hel", "lo"], None, false);
    broken.push_str(
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"error\":{\"code\":502,\"message\":\"Upstream provider error\"},\"choices\":[{\"index\":0,\"delta\":{\"content\":\"\"},\"finish_reason\":\"error\"}]}\n\n",
    );
    fake.push(streamed("text/event-stream", broken));
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), &deepseek_env(&fake), "127.0.0.1:0");
    let url = format!("{}/v1/chat/completions", s.base);
    let body = json!({"model": "deepseek/deepseek-v3.2", "stream": true,
        "messages": [{"role": "user", "content": "Say hello"}]});
    let r = request(&http(), Method::POST, &url, None, Some(&body)).await;
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    let events: Vec<Value> = text
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter(|e| *e != "[DONE]")
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let answer: String = events
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(answer, "Hello", "only the first attempt's text: {text}");
    let err = &events.last().unwrap()["error"];
    assert_eq!(err["code"], "provider_failed", "{text}");
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("already streamed"),
        "{err}"
    );
    assert!(text.ends_with("data: [DONE]\n\n"));
    assert_eq!(fake.requests().len(), 1, "no retry after text was sent");

    // Without streaming the same failure is retried, as before.
    fake.push({
        let mut b = openai_sse_body("deepseek-v3.2", &["Hel"], None, false);
        b.push_str("data: {\"error\":{\"code\":502,\"message\":\"boom\"}}\n\n");
        streamed("text/event-stream", b)
    });
    let mut plain = body.clone();
    plain["stream"] = json!(false);
    let r = request(&http(), Method::POST, &url, None, Some(&plain)).await;
    assert_eq!(r.status(), 200);
    let v = json_of(r).await;
    assert_eq!(v["choices"][0]["message"]["content"], "A second answer.");
    assert_eq!(fake.requests().len(), 3);
}

#[tokio::test]
async fn streaming_sends_openai_chunks_and_a_usage_chunk() {
    let fake = deepseek_answering(&["Hel", "lo ", "there."], 40, 3).await;
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), &deepseek_env(&fake), "127.0.0.1:0");
    let completions = format!("{}/v1/chat/completions", s.base);
    let say_hello = json!({
        "model": "auto", "stream": true,
        "messages": [{"role": "user", "content": "Say hello"}]
    });
    let mut with_usage = say_hello.clone();
    with_usage["stream_options"] = json!({"include_usage": true});
    let r = request(&http(), Method::POST, &completions, None, Some(&with_usage)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let headers = r.headers().clone();
    let text = r.text().await.unwrap();
    let events: Vec<&str> = text
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .collect();
    assert_eq!(events.last(), Some(&"[DONE]"), "{text}");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let answer: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(answer, "Hello there.");
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk")
    );
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["prompt_tokens"], 40);
    assert_eq!(usage["usage"]["completion_tokens"], 3);
    let cost = usage["x_optimizer"]["cost_usd"].as_f64().unwrap();
    assert!(cost > 0.0);
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    // The headers named the route before the text: the model that answered.
    let routed = &usage["x_optimizer"];
    assert_eq!(headers["x-routed-provider"], "deepseek");
    assert_eq!(headers["x-routed-model"], routed["model"].as_str().unwrap());
    assert_eq!(headers["x-routed-tier"], routed["tier"].as_str().unwrap());
    assert_eq!(
        headers["x-ledger-request-id"],
        routed["request_id"].as_str().unwrap()
    );
    let complexity: f64 = headers["x-complexity"].to_str().unwrap().parse().unwrap();
    assert!((complexity - routed["complexity"].as_f64().unwrap()).abs() < 1e-3);
    assert!(chunks.iter().all(|c| c["model"] == routed["model"]));
    // Every chunk's id names the ledger's request, as a plain reply's does.
    let id = format!("chatcmpl-{}", routed["request_id"].as_str().unwrap());
    assert!(chunks.iter().all(|c| c["id"] == id.as_str()), "{text}");

    let usage = json_of(get(&http(), format!("{}/v1/usage", s.base), None).await).await;
    assert_usd(&usage["total_cost_usd"], cost);

    // Refused before any text: the same status and body as without streaming.
    let r = request(
        &http(),
        Method::PUT,
        format!("{}/v1/budget", s.base),
        None,
        Some(&json!({"monthly_limit": 0.000001})),
    )
    .await;
    assert_eq!(r.status(), 200);
    let r = request(&http(), Method::POST, &completions, None, Some(&say_hello)).await;
    assert_eq!(r.status(), 402);
    assert_eq!(json_of(r).await["error"]["code"], "budget_exceeded");
    assert_eq!(fake.requests().len(), 1, "the refused call never left");
}

#[test]
fn a_public_address_needs_a_key_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(binary())
        .env_clear()
        .envs(env_for(dir.path(), &[]))
        .args(["serve", "--http", "0.0.0.0:0"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refusing to serve on 0.0.0.0:0 without API keys")
            && err.contains("keys create"),
        "{err}"
    );
}

#[tokio::test]
async fn keys_are_required_checked_revocable_and_never_logged() {
    let fake = FakeProvider::start(ds_reply()).await;
    let dir = tempfile::tempdir().unwrap();
    let (alice, alice_id) = create_key(dir.path(), "alice", false);
    let (_, listed, _) = cli(dir.path(), &[], &["keys", "list"]);
    assert!(listed.contains(&alice_id) && listed.contains("user=alice"));
    assert!(
        !listed.contains(&alice),
        "the key itself is never shown again"
    );
    // An empty --user (an unset shell variable) is refused, not a key for
    // the default user.
    let (ok, _, err) = cli(dir.path(), &[], &["keys", "create", "--user", " "]);
    assert!(!ok && err.contains("--user must name"), "{err}");

    let mut env = deepseek_env(&fake);
    env.push(("COST_OPTIMIZER_HTTP_REQUIRE_AUTH", "true".into()));
    let s = start(dir.path(), &env, "127.0.0.1:0");
    let c = http();
    let url = format!("{}/v1/chat/completions", s.base);
    let body = json!({"model": "auto", "messages": [{"role": "user", "content": "hi"}]});

    // Probes need no key.
    assert_eq!(
        get(&c, format!("{}/health", s.base), None).await.status(),
        200
    );
    let none = request(&c, Method::POST, &url, None, Some(&body)).await;
    assert_eq!(none.status(), 401);
    assert_eq!(none.headers()["www-authenticate"], "Bearer");
    assert_eq!(json_of(none).await["error"]["code"], "missing_api_key");
    let wrong = format!("{}X", &alice[..alice.len() - 1]);
    for bad in [wrong.as_str(), "sk-not-ours", "aco_zzzz_nope"] {
        let r = request(&c, Method::POST, &url, Some(bad), Some(&body)).await;
        assert_eq!(r.status(), 401, "{bad}");
    }
    // An Authorization header that is not `Bearer <key>` is a key given
    // wrongly, not "no key": refused as invalid (also where no key is
    // needed: see `probes_openai_completion_usage_and_metrics`).
    for header in [alice.clone(), format!("Basic {alice}"), "Bearer ".into()] {
        let r = c
            .post(&url)
            .header("authorization", &header)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{header}");
        assert_eq!(json_of(r).await["error"]["code"], "invalid_api_key");
    }
    for path in ["/metrics", "/v1/usage", "/v1/models", "/dashboard"] {
        let r = get(&c, format!("{}{path}", s.base), None).await;
        assert_eq!(r.status(), 401, "{path}");
    }
    let ok = request(&c, Method::POST, &url, Some(&alice), Some(&body)).await;
    assert_eq!(ok.status(), 200);

    // The call was charged to the key's user.
    let u = json_of(
        get(
            &c,
            format!("{}/v1/usage?group_by=user", s.base),
            Some(&alice),
        )
        .await,
    )
    .await;
    assert_eq!(u["user_id"], "alice");
    assert_eq!(u["calls"], 1);
    // A plain key cannot look at someone else.
    let r = get(&c, format!("{}/v1/usage?user_id=bob", s.base), Some(&alice)).await;
    assert_eq!(r.status(), 403);

    let (ok, _, err) = cli(dir.path(), &[], &["keys", "revoke", &alice_id]);
    assert!(ok, "{err}");
    let r = request(&c, Method::POST, &url, Some(&alice), Some(&body)).await;
    assert_eq!(r.status(), 401, "a revoked key is refused at once");
    let (ok, _, _) = cli(dir.path(), &[], &["keys", "revoke", &alice_id]);
    assert!(!ok, "revoking twice says so");
    // The whole key finds its id, and the secret is not echoed back.
    let (ok, out, err) = cli(dir.path(), &[], &["keys", "revoke", &alice]);
    assert!(!ok && err.contains(&alice_id), "{err}");
    assert!(!out.contains(&alice) && !err.contains(&alice), "{out}{err}");
    let (bob_key, _) = create_key(dir.path(), "bob", false);
    let (ok, out, err) = cli(dir.path(), &[], &["keys", "revoke", &bob_key]);
    assert!(ok, "{err}");
    assert!(
        out.starts_with("revoked key ") && !out.contains(&bob_key),
        "{out}"
    );

    drop(s);
    assert_not_logged(dir.path(), &alice);
    assert_not_logged(dir.path(), &alice[alice.len() - 20..]);
}

#[tokio::test]
async fn budgets_apply_per_key_and_only_admins_set_them() {
    let fake = FakeProvider::start(ds_reply()).await;
    let dir = tempfile::tempdir().unwrap();
    let (admin, _) = create_key(dir.path(), "ops", true);
    let (alice, _) = create_key(dir.path(), "alice", false);
    let (bob, _) = create_key(dir.path(), "bob", false);
    let or = FakeProvider::start(openai_sse(
        "some-lab/unlisted-model",
        &["Paris."],
        json!({"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12}),
    ))
    .await;
    let mut env = deepseek_env(&fake);
    env.push(("COST_OPTIMIZER_HTTP_REQUIRE_AUTH", "1".into()));
    env.push(("OPENROUTER_API_KEY", "sk-or-FAKE-http-000000000000".into()));
    env.push(("OPENROUTER_BASE_URL", format!("{}/api/v1", or.base)));
    let s = start(dir.path(), &env, "127.0.0.1:0");
    let c = http();
    let budget = format!("{}/v1/budget", s.base);

    let r = request(
        &c,
        Method::PUT,
        &budget,
        Some(&alice),
        Some(&json!({"monthly_limit": 1000})),
    )
    .await;
    assert_eq!(r.status(), 403, "a plain key cannot raise its own limit");
    let r = request(
        &c,
        Method::PUT,
        &budget,
        Some(&admin),
        Some(&json!({"monthly_limit": 0.000001, "user_id": "alice"})),
    )
    .await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());

    let url = format!("{}/v1/chat/completions", s.base);
    // Routed among DeepSeek's models (OpenRouter, enabled below for the
    // unpriced model, lists free ones).
    let body = json!({"model": "auto", "provider": "deepseek", "messages": [{"role": "user", "content": "hi"}]});
    let r = request(&c, Method::POST, &url, Some(&alice), Some(&body)).await;
    assert_eq!(r.status(), 402);
    let e = json_of(r).await;
    assert_eq!(e["error"]["code"], "budget_exceeded");
    assert!(
        e["error"]["message"].as_str().unwrap().contains("budget"),
        "{e}"
    );
    let r = request(&c, Method::POST, &url, Some(&bob), Some(&body)).await;
    assert_eq!(r.status(), 200, "bob's budget is his own");
    // A model with no known price would hold $0 against the budget, so a
    // plain key may not force one (an admin may).
    let mut unpriced = body.clone();
    unpriced["model"] = json!("openrouter/some-lab/unlisted-model");
    unpriced.as_object_mut().unwrap().remove("provider");
    let r = request(&c, Method::POST, &url, Some(&bob), Some(&unpriced)).await;
    assert_bad_request(r, "no known price").await;
    assert!(or.requests().is_empty(), "refused before any call");
    let r = request(&c, Method::POST, &url, Some(&admin), Some(&unpriced)).await;
    assert_eq!(r.status(), 200, "admins may force unpriced models");
    let e = json_of(r).await;
    assert_eq!(e["x_optimizer"]["cost_source"], "unpriced", "{e}");
    assert_eq!(or.requests().len(), 1);
    // `user` in the body does not move a plain key's spending elsewhere.
    let mut as_bob = body.clone();
    as_bob["user"] = json!("bob");
    let r = request(&c, Method::POST, &url, Some(&alice), Some(&as_bob)).await;
    assert_eq!(r.status(), 402);
    assert_eq!(
        fake.requests().len(),
        1,
        "refused calls never reach the provider"
    );
    // An admin's `user` picks a budget only when that user has one: a
    // chat UI's end-user tag must not move spending onto a fresh default
    // budget. "alice" has one (refused); the tag is the admin's own spend.
    let mut as_alice = body.clone();
    as_alice["user"] = json!("alice");
    let r = request(&c, Method::POST, &url, Some(&admin), Some(&as_alice)).await;
    assert_eq!(r.status(), 402, "alice's budget applies");
    let mut tagged = body.clone();
    tagged["user"] = json!("end-user-8f3a");
    let r = request(&c, Method::POST, &url, Some(&admin), Some(&tagged)).await;
    assert_eq!(r.status(), 200);
    let u = json_of(
        get(
            &c,
            format!("{}/v1/usage?group_by=user", s.base),
            Some(&admin),
        )
        .await,
    )
    .await;
    let users: Vec<&str> = u["by_user"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|g| g["key"].as_str())
        .collect();
    assert!(
        users.contains(&"ops") && !users.contains(&"end-user-8f3a"),
        "{u}"
    );

    let metrics = get(&c, format!("{}/metrics", s.base), Some(&admin))
        .await
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"aco_budget_limit_usd{scope="alice"} 0.000001"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"aco_budget_spent_usd{scope="bob"}"#));
    assert!(
        metrics.contains(r#"aco_call_errors_total{kind="budget_refused"} 3"#),
        "{metrics}"
    );

    // An admin naming nobody sees everyone's usage (bob's call included,
    // not only the admin key's own user's), and sets the default budget.
    let u = json_of(get(&c, format!("{}/v1/usage", s.base), Some(&admin)).await).await;
    assert_eq!(u["calls"], json!(3), "bob's, and the admin's two: {u}");
    let b = json_of(get(&c, format!("{}/v1/usage", s.base), Some(&bob)).await).await;
    assert_eq!(b["calls"], json!(1), "a plain key sees its own: {b}");
    // Budgets default to the key's user ("default" would cap nobody here).
    let r = request(
        &c,
        Method::PUT,
        &budget,
        Some(&admin),
        Some(&json!({"monthly_limit": 42})),
    )
    .await;
    assert_eq!(r.status(), 200);
    let set = json_of(r).await;
    assert_eq!(set["status"]["user_id"], "ops", "{set}");
}

async fn complete_over_mcp(
    client: &rmcp::service::RunningService<rmcp::RoleClient, ()>,
    args: Value,
) -> rmcp::model::CallToolResult {
    client
        .call_tool(
            CallToolRequestParams::new("complete_prompt")
                .with_arguments(args.as_object().unwrap().clone()),
        )
        .await
        .unwrap()
}

/// Numbers in a URL query are text: `?days=7` and `?max_tokens=100` are
/// read as the numbers they are (every `days` was refused with 400).
#[tokio::test]
async fn numbers_in_query_strings_are_read() {
    let fake = FakeProvider::start(ds_reply()).await;
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), &deepseek_env(&fake), "127.0.0.1:0");
    let r = get(&http(), format!("{}/v1/usage?days=7", s.base), None).await;
    assert_eq!(r.status(), 200);
    let u = json_of(r).await;
    assert!(u["since"].as_str().is_some(), "{u}");
    let r = get(
        &http(),
        format!("{}/v1/recommendation?prompt=hello&max_tokens=100", s.base),
        None,
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(json_of(r).await["assumed_output_tokens"], 100);
    for bad in ["days=abc", "days=1.5", "days=0"] {
        let r = get(&http(), format!("{}/v1/usage?{bad}", s.base), None).await;
        assert_eq!(r.status(), 400, "{bad}");
    }
}

/// One raw MCP-over-HTTP request: JSON-RPC `body` (or none), a key, a
/// session id.
async fn mcp_request(
    s: &HttpServer,
    method: Method,
    key: &str,
    session: Option<&str>,
    body: Option<Value>,
) -> reqwest::Response {
    let mut r = http()
        .request(method, format!("{}/mcp", s.base))
        .bearer_auth(key)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-06-18");
    if let Some(id) = session {
        r = r.header("mcp-session-id", id);
    }
    if let Some(body) = body {
        r = r.json(&body);
    }
    r.send().await.unwrap()
}

/// An MCP session is the key's that opened it: another valid key that
/// learns its id can neither attach to it, call through it nor end it, and
/// is told what an unknown session gets (so it learns nothing either).
#[tokio::test]
async fn an_mcp_session_belongs_to_the_key_that_opened_it() {
    let dir = tempfile::tempdir().unwrap();
    let (alice, _) = create_key(dir.path(), "alice", false);
    let (bob, _) = create_key(dir.path(), "bob", true);
    let env = [("COST_OPTIMIZER_HTTP_REQUIRE_AUTH", "true".to_string())];
    let s = start(dir.path(), &env, "127.0.0.1:0");
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"}}});
    let r = mcp_request(&s, Method::POST, &alice, None, Some(init)).await;
    assert_eq!(r.status(), 200);
    let id = r.headers()["mcp-session-id"].to_str().unwrap().to_string();
    let _ = r.text().await;
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    let r = mcp_request(&s, Method::POST, &alice, Some(&id), Some(initialized)).await;
    assert!(r.status().is_success(), "{}", r.status());
    let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"});

    // Bob's key is valid (an admin's, even), the session is not his.
    let unknown = mcp_request(&s, Method::GET, &bob, Some("no-such-session"), None).await;
    assert_eq!(unknown.status(), 404);
    let unknown = unknown.text().await.unwrap();
    for (m, body) in [
        (Method::GET, None),
        (Method::POST, Some(list.clone())),
        (Method::DELETE, None),
    ] {
        let r = mcp_request(&s, m.clone(), &bob, Some(&id), body).await;
        assert_eq!(r.status(), 404, "{m}");
        assert_eq!(r.text().await.unwrap(), unknown, "{m}");
    }

    // Still Alice's, and hers to end.
    let r = mcp_request(&s, Method::POST, &alice, Some(&id), Some(list.clone())).await;
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("complete_prompt"));
    let r = mcp_request(&s, Method::DELETE, &alice, Some(&id), None).await;
    // 204: the Python SDK takes only 200 or 204 as a session ended.
    assert_eq!(r.status(), 204);
    let r = mcp_request(&s, Method::POST, &alice, Some(&id), Some(list)).await;
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn mcp_over_streamable_http_with_a_key() {
    let fake = FakeProvider::start(ds_reply()).await;
    let dir = tempfile::tempdir().unwrap();
    let (alice, _) = create_key(dir.path(), "alice", false);
    let (ops, _) = create_key(dir.path(), "ops", true);
    let mut env = deepseek_env(&fake);
    env.push(("COST_OPTIMIZER_HTTP_REQUIRE_AUTH", "true".into()));
    let s = start(dir.path(), &env, "127.0.0.1:0");

    // Without a key the transport cannot even initialize.
    let anon = StreamableHttpClientTransport::from_uri(format!("{}/mcp", s.base));
    assert!(().serve(anon).await.is_err());

    let transport = StreamableHttpClientTransport::from_config(
        StreamableHttpClientTransportConfig::with_uri(format!("{}/mcp", s.base))
            .auth_header(alice.clone()),
    );
    let client = ().serve(transport).await.expect("initialize over HTTP");
    let info = client.peer_info().unwrap();
    assert_eq!(info.server_info.as_ref().unwrap().name, "ai-cost-optimizer");
    let tools = client.list_all_tools().await.unwrap();
    let mut names: Vec<_> = tools.iter().map(|t| t.name.to_string()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "check_model_costs",
            "complete_prompt",
            "get_recommendation",
            "query_usage",
            "set_budget"
        ]
    );
    let r = client
        .call_tool(
            CallToolRequestParams::new("complete_prompt").with_arguments(
                json!({"prompt": "capital of France?"})
                    .as_object()
                    .unwrap()
                    .clone(),
            ),
        )
        .await
        .unwrap();
    assert_ne!(r.is_error, Some(true), "{}", text(&r));
    let sc = r.structured_content.unwrap();
    assert_eq!(sc["answer"], "Paris.");
    let cost = sc["cost_usd"].as_f64().unwrap();

    // The key's user paid; a plain key can act for nobody else.
    let r = client
        .call_tool(
            CallToolRequestParams::new("query_usage")
                .with_arguments(json!({}).as_object().unwrap().clone()),
        )
        .await
        .unwrap();
    let u = r.structured_content.unwrap();
    assert_eq!(u["user_id"], "alice");
    assert_usd(&u["total_cost_usd"], cost);
    let r = client
        .call_tool(
            CallToolRequestParams::new("complete_prompt").with_arguments(
                json!({"prompt": "hi", "user_id": "bob"})
                    .as_object()
                    .unwrap()
                    .clone(),
            ),
        )
        .await
        .unwrap();
    assert_eq!(r.is_error, Some(true));
    assert!(
        text(&r).contains("cannot act for user \"bob\""),
        "{}",
        text(&r)
    );
    let r = client
        .call_tool(
            CallToolRequestParams::new("set_budget")
                .with_arguments(json!({"monthly_limit": 500}).as_object().unwrap().clone()),
        )
        .await
        .unwrap();
    assert_eq!(r.is_error, Some(true), "plain keys cannot set budgets");
    let r = client
        .call_tool(
            CallToolRequestParams::new("complete_prompt").with_arguments(
                json!({"prompt": "hi", "force_model": "openrouter/some-lab/unlisted-model"})
                    .as_object()
                    .unwrap()
                    .clone(),
            ),
        )
        .await
        .unwrap();
    assert_eq!(r.is_error, Some(true));
    assert!(text(&r).contains("no known price"), "{}", text(&r));

    // A plain key rates only its own user's calls: bob's request id is
    // refused like an unknown one (revealing nothing of bob's call), and
    // nothing is called or charged; alice's own is recorded.
    let admin = ()
        .serve(StreamableHttpClientTransport::from_config(
            StreamableHttpClientTransportConfig::with_uri(format!("{}/mcp", s.base))
                .auth_header(ops.clone()),
        ))
        .await
        .expect("initialize over HTTP");
    let r = complete_over_mcp(
        &admin,
        json!({"prompt": "capital of Spain?", "user_id": "bob"}),
    )
    .await;
    assert_ne!(r.is_error, Some(true), "{}", text(&r));
    let bobs = r.structured_content.unwrap()["request_id"].clone();
    let alices = sc["request_id"].clone();
    let before = fake.requests().len();
    let r = complete_over_mcp(
        &client,
        json!({"prompt": "hi", "feedback": {"request_id": bobs, "rating": "bad"}}),
    )
    .await;
    assert_eq!(r.is_error, Some(true), "{}", text(&r));
    assert!(text(&r).contains("no call"), "{}", text(&r));
    assert_eq!(
        fake.requests().len(),
        before,
        "a refused rating calls nothing"
    );
    let r = complete_over_mcp(
        &client,
        json!({"prompt": "hi", "feedback": {"request_id": alices, "rating": "good"}}),
    )
    .await;
    assert_ne!(r.is_error, Some(true), "{}", text(&r));
    assert_eq!(r.structured_content.unwrap()["feedback"]["rating"], 5);
    // An admin may rate anyone's.
    let r = complete_over_mcp(
        &admin,
        json!({"prompt": "hi", "feedback": {"request_id": bobs, "rating": "ok"}}),
    )
    .await;
    assert_ne!(r.is_error, Some(true), "{}", text(&r));
    let _ = admin.cancel().await;
    let _ = client.cancel().await;

    // Metrics name every user's budget: admin keys only.
    let r = get(&http(), format!("{}/metrics", s.base), Some(&alice)).await;
    assert_eq!(r.status(), 403);
    let metrics = get(&http(), format!("{}/metrics", s.base), Some(&ops))
        .await
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"aco_llm_calls_total{provider="deepseek""#),
        "MCP calls are counted too: {metrics}"
    );
    assert_not_logged(dir.path(), &alice);
}

#[tokio::test]
async fn rebinding_hosts_and_foreign_origins_are_refused() {
    let fake = FakeProvider::start(ds_reply()).await;
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), &deepseek_env(&fake), "127.0.0.1:0");
    let c = http();
    let port = s.base.rsplit(':').next().unwrap().to_string();
    let r = c
        .get(format!("{}/v1/models", s.base))
        .header("host", format!("evil.example:{port}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = c
        .get(format!("{}/v1/models", s.base))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.headers().get("access-control-allow-origin").is_none());
    let r = c
        .get(format!("{}/v1/models", s.base))
        .header("host", format!("localhost:{port}"))
        .header("origin", format!("http://localhost:{port}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .post(format!("{}/mcp", s.base))
        .header("host", "evil.example")
        .header("accept", "application/json, text/event-stream")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // A page on another port of this machine can POST `text/plain`
    // without a CORS preflight: on this keyless server that was a paid
    // call. Only JSON bodies are read.
    let body = json!({"model": "auto", "messages": [{"role": "user", "content": "hi"}]});
    for content_type in [Some("text/plain;charset=UTF-8"), None] {
        let mut req = c
            .post(format!("{}/v1/chat/completions", s.base))
            .header("origin", "http://localhost:3000")
            .body(body.to_string());
        if let Some(t) = content_type {
            req = req.header("content-type", t);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 415, "{content_type:?}");
        let e = json_of(r).await;
        assert!(
            e["error"]["message"]
                .as_str()
                .unwrap()
                .contains("application/json"),
            "{e}"
        );
    }
    assert!(fake.requests().is_empty(), "a call was made");
    let r = c
        .post(format!("{}/v1/chat/completions", s.base))
        .header("content-type", "Application/JSON; charset=utf-8")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// The TLS recipe of DEPLOY.md: bound to loopback behind a reverse proxy
/// that forwards a public Host. Such a server is reachable by anyone who
/// reaches that name, so it needs keys like a public bind; its probes still
/// answer the container's own health check (Host 127.0.0.1); and an open
/// loopback server refuses keyless requests a proxy forwarded.
#[tokio::test]
async fn behind_a_reverse_proxy_keys_are_required_and_probes_answer() {
    let fake = FakeProvider::start(ds_reply()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut env = deepseek_env(&fake);
    env.push((
        "COST_OPTIMIZER_HTTP_ALLOWED_HOSTS",
        "optimizer.example.com".into(),
    ));
    let out = Command::new(binary())
        .env_clear()
        .envs(env_for(dir.path(), &env))
        .args(["serve", "--http", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("http.allowed_hosts") && err.contains("keys create"),
        "{err}"
    );

    let (alice, _) = create_key(dir.path(), "alice", false);
    let s = start(dir.path(), &env, "127.0.0.1:0");
    let c = http();
    let models = format!("{}/v1/models", s.base);
    let r = c
        .get(&models)
        .header("host", "optimizer.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "a keyless request through the proxy");
    let r = c
        .get(&models)
        .header("host", "optimizer.example.com")
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // The guard still refuses other names on other routes...
    let r = c.get(&models).bearer_auth(&alice).send().await.unwrap();
    assert_eq!(r.status(), 403);
    // ...but not on the probes, which `healthcheck` calls by 127.0.0.1.
    let r = c.get(format!("{}/health", s.base)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = c.get(format!("{}/ready", s.base)).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    let (ok, _, err) = cli(
        dir.path(),
        &[],
        &["healthcheck", &format!("{}/health", s.base)],
    );
    assert!(ok, "{err}");
    drop(s);

    // An open loopback server (no key needed from this machine) refuses a
    // keyless request that a proxy forwarded, instead of making it admin.
    let s = start(dir.path(), &deepseek_env(&fake), "127.0.0.1:0");
    let models = format!("{}/v1/models", s.base);
    assert_eq!(c.get(&models).send().await.unwrap().status(), 200);
    for h in [
        "x-forwarded-for",
        "forwarded",
        "x-real-ip",
        "x-forwarded-host",
    ] {
        let r = c
            .get(&models)
            .header(h, "203.0.113.7")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{h}");
        let body = json_of(r).await;
        assert_eq!(body["error"]["code"], "missing_api_key", "{body}");
    }
    let r = c
        .get(&models)
        .header("x-forwarded-for", "203.0.113.7")
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn cors_is_off_by_default_and_on_for_configured_origins() {
    let fake = FakeProvider::start(ds_reply()).await;
    let dir = tempfile::tempdir().unwrap();
    let c = http();
    let preflight = |base: &str, origin: &str| {
        c.request(
            reqwest::Method::OPTIONS,
            format!("{base}/v1/chat/completions"),
        )
        .header("origin", origin.to_string())
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type,x-stainless-lang,x-stainless-runtime",
        )
        .send()
    };
    let s = start(dir.path(), &deepseek_env(&fake), "127.0.0.1:0");
    let r = preflight(&s.base, "https://app.example").await.unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());
    drop(s);

    let mut env = deepseek_env(&fake);
    env.push((
        "COST_OPTIMIZER_HTTP_CORS_ORIGINS",
        "https://app.example".into(),
    ));
    let s = start(dir.path(), &env, "127.0.0.1:0");
    let r = preflight(&s.base, "https://app.example").await.unwrap();
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    // The headers the `openai` JS SDK adds in a browser are allowed.
    let allowed = r.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(
        allowed.contains("x-stainless-runtime") && allowed.contains("authorization"),
        "{allowed}"
    );
    let r = c
        .get(format!("{}/v1/models", s.base))
        .header("origin", "https://app.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let exposed = r.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    for h in [
        "x-cost-usd",
        "x-routed-tier",
        "x-ledger-request-id",
        "x-should-retry",
        "retry-after",
    ] {
        assert!(exposed.contains(h), "{h} not exposed: {exposed}");
    }
    let r = preflight(&s.base, "https://other.example").await.unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());
}

/// Starts a chat completion, waits until the (gated) provider has it, and
/// sends the server SIGTERM: the call is in flight as the shutdown begins.
async fn sigterm_with_a_call_in_flight(
    s: &HttpServer,
    fake: &FakeProvider,
) -> tokio::task::JoinHandle<reqwest::Result<reqwest::Response>> {
    let url = format!("{}/v1/chat/completions", s.base);
    let call = tokio::spawn(async move {
        http()
            .post(url)
            .json(&json!({"model": "auto", "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
    });
    // (The first call also waits for the tokenizer to load.)
    for _ in 0..3000 {
        if !fake.requests().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(fake.requests().len(), 1);
    sigterm(s);
    call
}

/// Sends the server SIGTERM.
fn sigterm(s: &HttpServer) {
    let pid = s.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
}

/// Waits for the server to exit, which must be clean; returns its log.
async fn clean_exit_log(mut s: HttpServer) -> String {
    let (status, s) = tokio::task::spawn_blocking(move || {
        let st = s.child.wait().unwrap();
        (st, s)
    })
    .await
    .unwrap();
    assert!(status.success(), "clean exit after SIGTERM");
    std::fs::read_to_string(&s.stderr).unwrap()
}

#[tokio::test]
async fn sigterm_lets_a_call_in_flight_finish() {
    let fake = FakeProvider::start(ds_reply()).await;
    // The provider holds its answer until the test has seen new clients
    // refused: the call stays in flight with no timing guess.
    fake.close_gate();
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), &deepseek_env(&fake), "127.0.0.1:0");
    let call = sigterm_with_a_call_in_flight(&s, &fake).await;
    // While it drains, new clients are refused at once, not left waiting
    // in the accept backlog until the call in flight ends. Until the
    // signal is handled the listener may still accept: try again until a
    // connection is refused (a client left waiting times out instead,
    // which fails the test).
    // A new connection each time (a pooled one would be reset, not
    // refused, when the server stops).
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "never stopped accepting"
        );
        match client.get(format!("{}/health", s.base)).send().await {
            Err(e) if e.is_connect() => break,
            // Accepted, or closed during the switch-over: try again. What
            // must never happen is a client left waiting (a timeout).
            Err(e) => assert!(!e.is_timeout(), "left waiting, not refused: {e:?}"),
            Ok(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    fake.open_gate();
    let r = call.await.unwrap().expect("the call in flight is answered");
    assert_eq!(r.status(), 200);
    assert_eq!(
        json_of(r).await["choices"][0]["message"]["content"],
        "Paris."
    );
    let log = clean_exit_log(s).await;
    assert!(
        log.contains("SIGTERM received") && log.contains("HTTP server stopped"),
        "{log}"
    );
    // The call is in the ledger.
    let (ok, out, err) = cli(dir.path(), &deepseek_env(&fake), &["usage", "--json"]);
    assert!(ok, "{err}");
    let u: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(u["calls"], 1, "{out}");
}

/// A call still running when the shutdown grace ends is abandoned, and
/// recorded (charged at its estimate: the provider had accepted it) before
/// the process exits, which it does promptly after the grace.
#[tokio::test]
async fn a_call_outliving_the_shutdown_grace_is_recorded() {
    let fake = FakeProvider::start(ds_reply()).await;
    fake.close_gate();
    let dir = tempfile::tempdir().unwrap();
    let mut env = deepseek_env(&fake);
    env.push(("COST_OPTIMIZER_HTTP_SHUTDOWN_GRACE_SECS", "0.5".into()));
    let s = start(dir.path(), &env, "127.0.0.1:0");
    let call = sigterm_with_a_call_in_flight(&s, &fake).await;
    let log = clean_exit_log(s).await;
    assert!(log.contains("abandoning them"), "{log}");
    // The client is not left hanging, nor told it has an answer.
    if let Ok(r) = call.await.unwrap() {
        assert_ne!(r.status(), 200);
    }
    fake.open_gate();
    let (ok, out, err) = cli(dir.path(), &deepseek_env(&fake), &["usage", "--json"]);
    assert!(ok, "{err}");
    let u: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(u["calls"], 0, "{out}");
    assert_eq!(u["totals"]["failed_attempts"], 1, "{out}");
    assert!(u["totals"]["cost_usd"].as_f64().unwrap() > 0.0, "{out}");
}

/// A streamed answer still running when the shutdown grace ends closes
/// with an error event and `[DONE]`, not a bare end of stream an OpenAI
/// client takes for the whole answer.
#[tokio::test]
async fn a_stream_outliving_the_shutdown_grace_ends_with_an_error() {
    let fake = forty_slow_words().await;
    let dir = tempfile::tempdir().unwrap();
    let mut env = deepseek_env(&fake);
    env.push(("COST_OPTIMIZER_HTTP_SHUTDOWN_GRACE_SECS", "0.5".into()));
    let s = start(dir.path(), &env, "127.0.0.1:0");
    let mut r = http()
        .post(format!("{}/v1/chat/completions", s.base))
        .json(&json!({"model": "auto", "stream": true,
                      "messages": [{"role": "user", "content": "count"}]}))
        .send()
        .await
        .unwrap();
    read_until_word1(&mut r).await;
    sigterm(&s);
    let mut rest = String::new();
    while let Ok(Some(chunk)) = r.chunk().await {
        rest.push_str(&String::from_utf8_lossy(&chunk));
    }
    let log = clean_exit_log(s).await;
    assert!(log.contains("abandoning them"), "{log}");
    assert!(
        !rest.contains("word39"),
        "the answer did not finish: {rest}"
    );
    assert!(
        rest.contains("\"error\"") && rest.contains("shut down before the answer was complete"),
        "{rest}"
    );
    assert!(rest.trim_end().ends_with("data: [DONE]"), "{rest}");
}

/// A DeepSeek stand-in streaming 40 words, one every 100 ms.
async fn forty_slow_words() -> FakeProvider {
    let pieces: Vec<String> = (0..40).map(|i| format!("word{i} ")).collect();
    let refs: Vec<&str> = pieces.iter().map(String::as_str).collect();
    FakeProvider::start(
        openai_sse(
            "deepseek-v3.2",
            &refs,
            json!({"prompt_tokens": 5, "completion_tokens": 40}),
        )
        .dripped(Duration::from_millis(100)),
    )
    .await
}

/// Reads a streamed answer until its second word has arrived.
async fn read_until_word1(r: &mut reqwest::Response) {
    let mut got = String::new();
    while !got.contains("word1") {
        let chunk = r.chunk().await.unwrap().expect("stream ended early");
        got.push_str(&String::from_utf8_lossy(&chunk));
    }
}

/// A client that hangs up leaves a charge (the prompt and the text streamed
/// so far, at an estimate); a threshold it crosses is alerted at once, not
/// at the next call, streaming or not.
#[tokio::test]
async fn a_charge_left_by_a_client_that_hung_up_alerts_at_once() {
    let fake = forty_slow_words().await;
    let hook = FakeProvider::start(Reply::json(200, json!({"ok": true}))).await;
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), &deepseek_env(&fake), "127.0.0.1:0");
    let completions = format!("{}/v1/chat/completions", s.base);
    let budget = |threshold: f64| {
        json!({"monthly_limit": 0.00001, "alert_thresholds": [threshold], "mode": "warn",
               "webhook_url": format!("{}/hook", hook.base)})
    };
    let set = |threshold: f64| {
        let url = format!("{}/v1/budget", s.base);
        let body = budget(threshold);
        async move {
            let r = request(&http(), Method::PUT, url, None, Some(&body)).await;
            assert_eq!(r.status(), 200, "{:?}", r.text().await);
        }
    };
    let wait_for_hook = |n: usize| {
        let hook = &hook;
        async move {
            for _ in 0..250 {
                if hook.requests().len() >= n {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            hook.requests()
        }
    };

    // Streaming: read until answer text arrives, then hang up.
    set(0.1).await;
    let mut r = request(
        &http(),
        Method::POST,
        &completions,
        None,
        Some(&json!({"model": "auto", "stream": true,
            "messages": [{"role": "user", "content": "Count"}]})),
    )
    .await;
    read_until_word1(&mut r).await;
    assert!(hook.requests().is_empty(), "nothing was charged yet");
    drop(r);
    let got = wait_for_hook(1).await;
    assert_eq!(got.len(), 1, "the crossing was alerted: {got:?}");
    assert_eq!(got[0].body["threshold"], json!(0.1), "{:?}", got[0].body);

    // Not streaming: the client gives up waiting for the whole answer.
    set(0.5).await;
    assert_eq!(
        hook.requests().len(),
        1,
        "setting the budget alerted nothing"
    );
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(700))
        .build()
        .unwrap();
    let gave_up = impatient
        .post(&completions)
        .json(&json!({"model": "auto",
            "messages": [{"role": "user", "content": "Count again"}]}))
        .send()
        .await;
    assert!(gave_up.is_err(), "the 4 s answer came within 0.7 s");
    let got = wait_for_hook(2).await;
    assert_eq!(got.len(), 2, "the second crossing was alerted: {got:?}");
    assert_eq!(got[1].body["threshold"], json!(0.5), "{:?}", got[1].body);
}

#[tokio::test]
async fn ready_says_why_not() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), &[], "127.0.0.1:0");
    let r = get(&http(), format!("{}/ready", s.base), None).await;
    assert_eq!(r.status(), 503);
    let b = json_of(r).await;
    assert!(
        b["reasons"][0]
            .as_str()
            .unwrap()
            .contains("no provider is enabled"),
        "{b}"
    );
}

#[tokio::test]
async fn a_client_leaving_a_stream_stops_the_provider_and_releases_the_hold() {
    let fake = forty_slow_words().await;
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), &deepseek_env(&fake), "127.0.0.1:0");
    let mut r = request(
        &http(),
        Method::POST,
        format!("{}/v1/chat/completions", s.base),
        None,
        Some(&json!({"model": "auto", "stream": true,
            "messages": [{"role": "user", "content": "Count"}]})),
    )
    .await;
    // Read until answer text arrives, then hang up.
    read_until_word1(&mut r).await;
    drop(r);
    let at_hangup = fake.drip_sent();
    for _ in 0..100 {
        if fake.aborted() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        fake.aborted(),
        1,
        "the provider stream kept going after the client left ({at_hangup} → {} events)",
        fake.drip_sent()
    );
    let u = json_of(get(&http(), format!("{}/v1/usage", s.base), None).await).await;
    assert_eq!(u["budget"]["reserved_usd"], json!(0.0), "{u}");
    assert_eq!(u["calls"], json!(0));
    assert_eq!(u["totals"]["failed_attempts"], json!(1));
    // Hanging up does not make the call free: the prompt and the text
    // streamed before the hang-up are charged as an estimate.
    let t = &u["totals"];
    assert!(t["input_tokens"].as_u64().unwrap() >= 1, "{u}");
    assert!(t["output_tokens"].as_u64().unwrap() >= 1, "{u}");
    assert!(t["cost_usd"].as_f64().unwrap() > 0.0, "{u}");
    assert_eq!(u["budget"]["spent_usd"], t["cost_usd"], "{u}");
    // The metrics count that charge as well, and a client leaving is no
    // provider error.
    let counted = metric_sum(&s, "aco_llm_cost_usd_total", r#"provider="deepseek""#).await;
    let charged = t["cost_usd"].as_f64().unwrap();
    assert!((counted - charged).abs() < 1e-9, "metrics {counted} vs {u}");
    assert_eq!(metric_sum(&s, "aco_provider_errors_total", "").await, 0.0);
}
