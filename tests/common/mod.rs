//! Test harness: fake providers as real HTTP servers on 127.0.0.1 speaking
//! each provider's wire format, and the real binary driven over stdio by
//! rmcp's client.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Request, StatusCode};
use axum::response::Response;
use rmcp::model::{CallToolRequestParams, CallToolResult};
use rmcp::service::RunningService;
use rmcp::transport::{ConfigureCommandExt, TokioChildProcess};
use rmcp::{RoleClient, ServiceExt};
use serde_json::{Value, json};

/// Reports a test that cannot run here (a tool missing). Under
/// `AICO_REQUIRE_TOOLS=1` (set by CI, which installs every tool) that is a
/// failure, not a silent pass.
pub fn skip(why: &str) {
    if std::env::var_os("AICO_REQUIRE_TOOLS").is_some_and(|v| v == "1") {
        panic!("cannot run: {why} (AICO_REQUIRE_TOOLS=1)");
    }
    eprintln!("SKIPPED: {why}");
}

/// One scripted reply.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub delay: Option<Duration>,
    /// Send the body, then break the connection instead of ending it.
    pub reset: bool,
    /// Binary body, sent instead of `body` when set (audio).
    pub raw: Option<Vec<u8>>,
    /// Send the body one SSE event (blank-line separated) at a time, with
    /// this pause between events.
    pub drip: Option<Duration>,
}

impl Reply {
    pub fn json(status: u16, body: Value) -> Reply {
        Reply {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.to_string(),
            delay: None,
            reset: false,
            raw: None,
            drip: None,
        }
    }

    pub fn header(mut self, k: &str, v: &str) -> Reply {
        self.headers.push((k.into(), v.into()));
        self
    }

    /// Delays the reply.
    pub fn delayed(mut self, d: Duration) -> Reply {
        self.delay = Some(d);
        self
    }

    /// Sends the body event by event, `d` apart.
    pub fn dripped(mut self, d: Duration) -> Reply {
        self.drip = Some(d);
        self
    }

    /// Breaks the connection after sending the body.
    pub fn reset_after_body(mut self) -> Reply {
        self.reset = true;
        self
    }
}

/// A request the fake received.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub at: std::time::Instant,
    pub path: String,
    /// The query string, if any (Gemini's `alt=sse`).
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub body: Value,
}

#[derive(Default)]
struct FakeState {
    /// While closed, requests are recorded but not answered (see
    /// [`FakeProvider::close_gate`]).
    gate: Option<tokio::sync::watch::Receiver<bool>>,
    gate_tx: Option<Arc<tokio::sync::watch::Sender<bool>>>,
    replies: VecDeque<Reply>,
    default: Option<Reply>,
    requests: Vec<Recorded>,
    /// Dripped replies whose client went away before the end.
    aborted: Arc<std::sync::atomic::AtomicUsize>,
    /// Events of dripped replies sent so far.
    sent: Arc<std::sync::atomic::AtomicUsize>,
}

/// Counts a dripped body dropped before its last event (the client hung up).
struct DripGuard {
    done: bool,
    aborted: Arc<std::sync::atomic::AtomicUsize>,
    sent: Arc<std::sync::atomic::AtomicUsize>,
}

impl Drop for DripGuard {
    fn drop(&mut self) {
        if !self.done {
            self.aborted
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

/// A fake provider: an HTTP server on 127.0.0.1 that answers with scripted
/// replies (then the default) and records every request.
#[derive(Clone)]
pub struct FakeProvider {
    pub base: String,
    state: Arc<Mutex<FakeState>>,
}

async fn handle(State(state): State<Arc<Mutex<FakeState>>>, req: Request<Body>) -> Response {
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(str::to_string);
    let headers = req.headers().clone();
    let bytes = axum::body::to_bytes(req.into_body(), 64 * 1024 * 1024)
        .await
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let (aborted, sent) = {
        let s = state.lock().unwrap();
        (s.aborted.clone(), s.sent.clone())
    };
    let reply = {
        let mut s = state.lock().unwrap();
        s.requests.push(Recorded {
            at: std::time::Instant::now(),
            path,
            query,
            headers,
            body,
        });
        s.replies.pop_front().or_else(|| s.default.clone())
    };
    let reply = reply
        .unwrap_or_else(|| Reply::json(500, json!({"error": {"message": "no scripted reply"}})));
    let gate = state.lock().unwrap().gate.clone();
    if let Some(mut open) = gate {
        while !*open.borrow_and_update() {
            if open.changed().await.is_err() {
                break;
            }
        }
    }
    if let Some(d) = reply.delay {
        tokio::time::sleep(d).await;
    }
    let mut resp = Response::builder().status(StatusCode::from_u16(reply.status).unwrap());
    for (k, v) in &reply.headers {
        resp = resp.header(k, v);
    }
    if let Some(pause) = reply.drip {
        let events: VecDeque<String> = reply
            .body
            .split_inclusive("\n\n")
            .map(str::to_string)
            .collect();
        let guard = DripGuard {
            done: false,
            aborted,
            sent,
        };
        let stream =
            futures_util::stream::unfold((events, guard), move |(mut q, mut g)| async move {
                let next = q.pop_front()?;
                g.sent.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::time::sleep(pause).await;
                if q.is_empty() {
                    g.done = true;
                }
                Some((Ok::<_, std::io::Error>(next.into_bytes()), (q, g)))
            });
        return resp.body(Body::from_stream(stream)).unwrap();
    }
    if reply.reset {
        use futures_util::StreamExt;
        // The break comes a moment after the body, so the status and the
        // body really reach the client first (an error in the same poll
        // makes hyper drop the whole response before its headers, which
        // would be a failure before the reply, not mid-body).
        let body = reply.body.into_bytes();
        let chunks = futures_util::stream::once(async move { Ok::<_, std::io::Error>(body) })
            .chain(futures_util::stream::once(async {
                tokio::time::sleep(Duration::from_millis(100)).await;
                Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "reset by fake",
                ))
            }));
        return resp.body(Body::from_stream(chunks)).unwrap();
    }
    match reply.raw {
        Some(raw) => resp.body(Body::from(raw)).unwrap(),
        None => resp.body(Body::from(reply.body)).unwrap(),
    }
}

impl FakeProvider {
    /// Starts a fake answering `default` to every request.
    pub async fn start(default: Reply) -> FakeProvider {
        let state = Arc::new(Mutex::new(FakeState {
            default: Some(default),
            ..FakeState::default()
        }));
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeProvider {
            base: format!("http://{addr}"),
            state,
        }
    }

    /// Holds every reply (requests are still recorded) until
    /// [`FakeProvider::open_gate`]: calls then stay in flight for as long as
    /// a test needs, with no timing guess.
    pub fn close_gate(&self) {
        let mut s = self.state.lock().unwrap();
        if s.gate.is_some() {
            return; // closed already: keep holding what it holds
        }
        let (tx, rx) = tokio::sync::watch::channel(false);
        s.gate = Some(rx);
        s.gate_tx = Some(Arc::new(tx));
    }

    /// Releases the held replies and answers the next ones at once.
    pub fn open_gate(&self) {
        let mut s = self.state.lock().unwrap();
        if let Some(tx) = s.gate_tx.take() {
            let _ = tx.send(true);
        }
        s.gate = None;
    }

    /// Queues a reply to be sent before the default.
    pub fn push(&self, r: Reply) {
        self.state.lock().unwrap().replies.push_back(r);
    }

    /// How many dripped replies were abandoned by the client mid-stream.
    pub fn aborted(&self) -> usize {
        self.state
            .lock()
            .unwrap()
            .aborted
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Events of dripped replies sent so far.
    pub fn drip_sent(&self) -> usize {
        self.state
            .lock()
            .unwrap()
            .sent
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().requests.clone()
    }
}

// ---- wire formats -------------------------------------------------------

/// An OpenAI-style chat completion (Cerebras, DeepSeek, OpenRouter, HF).
pub fn openai_ok(model: &str, text: &str, usage: Value) -> Reply {
    openai_finished(model, text, "stop", usage)
}

/// [`openai_ok`] that ended for `finish` (`length`, `content_filter` ...).
pub fn openai_finished(model: &str, text: &str, finish: &str, usage: Value) -> Reply {
    Reply::json(
        200,
        json!({
            "id": "chatcmpl-123", "object": "chat.completion", "created": 1_700_000_000,
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
            "usage": usage
        }),
    )
}

/// An OpenAI-style error body.
pub fn openai_error(status: u16, message: &str, kind: &str) -> Reply {
    Reply::json(
        status,
        json!({"error": {"message": message, "type": kind, "param": null, "code": null}}),
    )
}

/// An Anthropic Messages reply.
pub fn anthropic_ok(model: &str, text: &str, usage: Value) -> Reply {
    Reply::json(
        200,
        json!({
            "id": "msg_01", "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn", "stop_sequence": null, "usage": usage
        }),
    )
    .header("request-id", "req_01")
}

/// An Anthropic error body.
pub fn anthropic_error(status: u16, kind: &str, message: &str) -> Reply {
    Reply::json(
        status,
        json!({"type": "error", "error": {"type": kind, "message": message}, "request_id": "req_err"}),
    )
}

/// An Ollama /api/chat reply (non-streaming).
pub fn ollama_ok(model: &str, text: &str, prompt_eval: u64, eval: u64) -> Reply {
    Reply::json(
        200,
        json!({
            "model": model, "created_at": "2026-11-27T12:00:00Z",
            "message": {"role": "assistant", "content": text},
            "done": true, "done_reason": "stop", "total_duration": 5_000_000u64,
            "load_duration": 1_000_000u64, "prompt_eval_count": prompt_eval,
            "prompt_eval_duration": 1_000_000u64, "eval_count": eval, "eval_duration": 2_000_000u64
        }),
    )
}

/// A reply with a streamed body of the given content type.
pub fn streamed(content_type: &str, body: String) -> Reply {
    Reply {
        status: 200,
        headers: vec![
            ("content-type".into(), content_type.into()),
            ("cache-control".into(), "no-cache".into()),
        ],
        body,
        delay: None,
        reset: false,
        raw: None,
        drip: None,
    }
}

fn sse(events: &[(Option<&str>, Value)]) -> String {
    let mut out = String::new();
    for (name, data) in events {
        if let Some(n) = name {
            out.push_str(&format!("event: {n}\n"));
        }
        out.push_str(&format!("data: {data}\n\n"));
    }
    out
}

/// The SSE body of an OpenAI-style streamed completion, `usage` in the
/// last chunk (as with `stream_options.include_usage`). `done` adds the
/// closing `[DONE]`; without it and without usage the stream is truncated.
pub fn openai_sse_body(model: &str, pieces: &[&str], usage: Option<Value>, done: bool) -> String {
    let mut ev = vec![(
        None,
        json!({"id": "c1", "object": "chat.completion.chunk", "model": model,
        "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}]}),
    )];
    for p in pieces {
        ev.push((
            None,
            json!({"id": "c1", "object": "chat.completion.chunk", "model": model,
            "choices": [{"index": 0, "delta": {"content": p}, "finish_reason": null}]}),
        ));
    }
    let mut body = String::from(": keep-alive\n\n");
    if let Some(u) = usage {
        ev.push((
            None,
            json!({"id": "c1", "object": "chat.completion.chunk", "model": model,
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": null}),
        ));
        ev.push((
            None,
            json!({"id": "c1", "object": "chat.completion.chunk", "model": model,
            "choices": [], "usage": u}),
        ));
    }
    body.push_str(&sse(&ev));
    if done {
        body.push_str("data: [DONE]\n\n");
    }
    body
}

/// An OpenAI-style streamed completion.
pub fn openai_sse(model: &str, pieces: &[&str], usage: Value) -> Reply {
    streamed(
        "text/event-stream",
        openai_sse_body(model, pieces, Some(usage), true),
    )
}

/// The SSE body of an Anthropic Messages stream. `start_usage` is the
/// `message_start` usage; `output_tokens` the final cumulative count.
pub fn anthropic_sse_body(
    model: &str,
    pieces: &[&str],
    start_usage: Value,
    output_tokens: u64,
    stop: bool,
) -> String {
    let mut ev = vec![
        (
            Some("message_start"),
            json!({"type": "message_start", "message": {"id": "msg_1", "type": "message",
            "role": "assistant", "model": model, "content": [], "stop_reason": null, "usage": start_usage}}),
        ),
        (
            Some("content_block_start"),
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
        (Some("ping"), json!({"type": "ping"})),
    ];
    for p in pieces {
        ev.push((
            Some("content_block_delta"),
            json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "text_delta", "text": p}}),
        ));
    }
    if stop {
        ev.push((
            Some("content_block_stop"),
            json!({"type": "content_block_stop", "index": 0}),
        ));
        ev.push((Some("message_delta"), json!({"type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": output_tokens}})));
        ev.push((Some("message_stop"), json!({"type": "message_stop"})));
    }
    sse(&ev)
}

/// An Anthropic Messages stream.
pub fn anthropic_sse(
    model: &str,
    pieces: &[&str],
    start_usage: Value,
    output_tokens: u64,
) -> Reply {
    streamed(
        "text/event-stream",
        anthropic_sse_body(model, pieces, start_usage, output_tokens, true),
    )
}

/// The SSE body of a Gemini `streamGenerateContent?alt=sse` reply.
pub fn gemini_sse_body(model: &str, pieces: &[&str], usage: Option<Value>) -> String {
    let mut ev = Vec::new();
    let n = pieces.len();
    for (i, p) in pieces.iter().enumerate() {
        let mut chunk = json!({"candidates": [{"content": {"role": "model", "parts": [{"text": p}]}, "index": 0}],
            "modelVersion": model, "responseId": "r1"});
        if i + 1 == n
            && let Some(u) = &usage
        {
            chunk["candidates"][0]["finishReason"] = json!("STOP");
            chunk["usageMetadata"] = u.clone();
        }
        ev.push((None, chunk));
    }
    sse(&ev).replace("\n", "\r\n")
}

/// A Gemini stream.
pub fn gemini_sse(model: &str, pieces: &[&str], usage: Value) -> Reply {
    streamed(
        "text/event-stream",
        gemini_sse_body(model, pieces, Some(usage)),
    )
}

/// An Ollama NDJSON stream.
pub fn ollama_ndjson_body(model: &str, pieces: &[&str], counts: Option<(u64, u64)>) -> String {
    let mut out = String::new();
    for p in pieces {
        out.push_str(
            &json!({"model": model, "created_at": "2026-11-27T12:00:00Z",
            "message": {"role": "assistant", "content": p}, "done": false})
            .to_string(),
        );
        out.push('\n');
    }
    if let Some((pe, e)) = counts {
        out.push_str(
            &json!({"model": model, "created_at": "2026-11-27T12:00:01Z",
            "message": {"role": "assistant", "content": ""}, "done": true, "done_reason": "stop",
            "total_duration": 5_000_000u64, "load_duration": 1_000_000u64, "prompt_eval_count": pe,
            "prompt_eval_duration": 1_000_000u64, "eval_count": e, "eval_duration": 2_000_000u64})
            .to_string(),
        );
        out.push('\n');
    }
    out
}

/// An Ollama NDJSON stream.
pub fn ollama_ndjson(model: &str, pieces: &[&str], prompt_eval: u64, eval: u64) -> Reply {
    streamed(
        "application/x-ndjson",
        ollama_ndjson_body(model, pieces, Some((prompt_eval, eval))),
    )
}

// ---- the server under test ---------------------------------------------

/// Path of the binary under test.
/// A config file in `dir` whose medium tier is exactly `models`, in that
/// order of preference, and the `COST_OPTIMIZER_CONFIG` entry naming it:
/// for tests of what happens when one provider fails before another,
/// whatever the default tiers' cheapest model is.
pub fn medium_tier_config(dir: &Path, models: &[&str]) -> (&'static str, String) {
    let cfg = dir.join("medium-tier.toml");
    let list: Vec<String> = models.iter().map(|m| format!("{m:?}")).collect();
    std::fs::write(
        &cfg,
        format!("[routing.tiers]\nmedium = [{}]\n", list.join(", ")),
    )
    .unwrap();
    ("COST_OPTIMIZER_CONFIG", cfg.display().to_string())
}

pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ai-cost-optimizer"))
}

/// A running server and where its files are.
pub struct Server {
    pub client: RunningService<RoleClient, ()>,
    pub stderr_path: PathBuf,
}

/// The environment every test server gets: only what we pass, so a
/// developer's real keys or config can never leak in.
pub fn base_env(data_dir: &Path) -> Vec<(String, String)> {
    vec![
        (
            "COST_OPTIMIZER_DATA_DIR".into(),
            data_dir.display().to_string(),
        ),
        ("COST_OPTIMIZER_CONFIG".into(), String::new()),
        ("COST_OPTIMIZER_OLLAMA_PROBE".into(), "0".into()),
        ("COST_OPTIMIZER_REQUEST_TIMEOUT_SECS".into(), "10".into()),
        ("COST_OPTIMIZER_RETRY_BASE_MS".into(), "1".into()),
        ("PATH".into(), std::env::var("PATH").unwrap_or_default()),
        ("HOME".into(), data_dir.display().to_string()),
    ]
}

/// Spawns the real binary with `env` (on top of [`base_env`]) and connects.
pub async fn spawn(data_dir: &Path, env: &[(&str, String)]) -> Server {
    let mut vars = base_env(data_dir);
    vars.extend(env.iter().map(|(k, v)| (k.to_string(), v.clone())));
    let stderr_path = data_dir.join(format!(
        "stderr-{}.log",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    let stderr = std::fs::File::create(&stderr_path).unwrap();
    let cmd = tokio::process::Command::new(binary()).configure(|c| {
        c.env_clear();
        for (k, v) in &vars {
            c.env(k, v);
        }
    });
    let (transport, _) = TokioChildProcess::builder(cmd)
        .stderr(Stdio::from(stderr))
        .spawn()
        .unwrap();
    let client = ().serve(transport).await.expect("initialize");
    Server {
        client,
        stderr_path,
    }
}

impl Server {
    /// Calls a tool with JSON arguments.
    pub async fn call(&self, name: &'static str, args: Value) -> CallToolResult {
        let args = args.as_object().cloned().unwrap_or_default();
        self.client
            .call_tool(CallToolRequestParams::new(name).with_arguments(args))
            .await
            .unwrap_or_else(|e| panic!("{name} failed at the protocol level: {e}"))
    }

    /// Calls a tool that must succeed; returns its structured content.
    pub async fn ok(&self, name: &'static str, args: Value) -> Value {
        let r = self.call(name, args).await;
        assert_ne!(r.is_error, Some(true), "{name} failed: {}", text(&r));
        r.structured_content.clone().expect("structured content")
    }

    /// Calls a tool that must fail; returns its error text.
    pub async fn err(&self, name: &'static str, args: Value) -> String {
        let r = self.call(name, args).await;
        assert_eq!(
            r.is_error,
            Some(true),
            "{name} should have failed: {}",
            text(&r)
        );
        text(&r)
    }

    /// Stops the server.
    pub async fn stop(self) {
        let _ = self.client.cancel().await;
    }
}

/// The text content of a result.
pub fn text(r: &CallToolResult) -> String {
    r.content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Float equality to a nano-dollar.
/// A `complete_prompt` result that fell back: the first attempts went to
/// a model starting with `failing` and failed with `outcome`, the last one
/// answered. Returns the attempts.
pub fn assert_fell_back<'a>(c: &'a Value, failing: &str, outcome: &str) -> &'a [Value] {
    let attempts = c["attempts"].as_array().expect("attempts");
    assert!(attempts.len() >= 2, "{attempts:?}");
    let (last, failed) = attempts.split_last().unwrap();
    assert_eq!(last["outcome"], "ok", "{attempts:?}");
    assert!(
        failed.iter().all(
            |a| a["model"].as_str().is_some_and(|m| m.starts_with(failing))
                && a["outcome"] == outcome
        ),
        "{attempts:?}"
    );
    attempts
}

pub fn assert_usd(actual: &Value, expected: f64) {
    let a = actual
        .as_f64()
        .unwrap_or_else(|| panic!("not a number: {actual}"));
    assert!(
        (a - expected).abs() < 1e-9,
        "expected ${expected}, got ${a}"
    );
}

// ---- raw JSON-RPC over the binary's stdio ------------------------------

/// The real binary driven with hand-written JSON-RPC lines: for what rmcp's
/// client will not send (hostile bytes), for many calls in flight without a
/// client in between, and for killing the process at a chosen moment.
pub struct RawServer {
    pub child: tokio::process::Child,
    pub stdin: Option<tokio::process::ChildStdin>,
    /// Every line the server wrote to stdout, parsed (unparsable lines
    /// arrive as `{"unparsable": line}`, which a test should treat as a bug).
    pub lines: tokio::sync::mpsc::UnboundedReceiver<Value>,
    pub stderr_path: PathBuf,
}

/// Spawns the binary (env on top of [`base_env`]) without initialising.
pub fn spawn_raw(data_dir: &Path, env: &[(&str, String)]) -> RawServer {
    spawn_raw_with(data_dir, env, |_| {})
}

/// [`spawn_raw`], with a last say over the command (user id, limits).
pub fn spawn_raw_with(
    data_dir: &Path,
    env: &[(&str, String)],
    configure: impl FnOnce(&mut tokio::process::Command),
) -> RawServer {
    use tokio::io::AsyncBufReadExt;
    let mut cmd = tokio::process::Command::new(binary());
    cmd.env_clear();
    for (k, v) in base_env(data_dir) {
        cmd.env(k, v);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    // Beside the data dir when the server is to create it itself.
    let stderr_dir = if data_dir.exists() {
        data_dir.to_path_buf()
    } else {
        let parent = data_dir.parent().unwrap().to_path_buf();
        std::fs::create_dir_all(&parent).unwrap();
        parent
    };
    let stderr_path = stderr_dir.join(format!(
        "stderr-raw-{}.log",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    let stderr = std::fs::File::create(&stderr_path).unwrap();
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(stderr))
        .kill_on_drop(true);
    // Last, so it may redirect stderr too.
    configure(&mut cmd);
    let mut child = cmd.spawn().unwrap();
    let stdin = child.stdin.take();
    let stdout = child.stdout.take().unwrap();
    let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut out = tokio::io::BufReader::new(stdout).lines();
        while let Ok(Some(line)) = out.next_line().await {
            let v = serde_json::from_str(&line).unwrap_or_else(|_| json!({ "unparsable": line }));
            if tx.send(v).is_err() {
                break;
            }
        }
    });
    RawServer {
        child,
        stdin,
        lines,
        stderr_path,
    }
}

impl RawServer {
    /// Writes raw bytes to the server's stdin.
    pub async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        use tokio::io::AsyncWriteExt;
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(bytes).await?;
        stdin.flush().await
    }

    /// Writes one JSON-RPC message (one line).
    pub async fn send(&mut self, msg: &Value) {
        self.write(format!("{msg}\n").as_bytes()).await.unwrap();
    }

    /// The next line from the server, within `wait`.
    pub async fn next(&mut self, wait: Duration) -> Option<Value> {
        tokio::time::timeout(wait, self.lines.recv())
            .await
            .ok()
            .flatten()
    }

    /// The reply to request `id` (notifications before it are skipped).
    pub async fn reply(&mut self, id: i64, wait: Duration) -> Value {
        self.reply_to(json!(id), wait).await
    }

    /// The reply to the request whose id is `id` (any JSON-RPC id).
    pub async fn reply_to(&mut self, id: Value, wait: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let v = self
                .next(left)
                .await
                .unwrap_or_else(|| panic!("no reply to request {id} within {wait:?}"));
            assert!(v.get("unparsable").is_none(), "non-JSON on stdout: {v}");
            if v["id"] == id {
                return v;
            }
        }
    }

    /// `initialize` + `notifications/initialized`.
    pub async fn init(&mut self) {
        self.send(
            &json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "raw-test", "version": "0"}}}),
        )
        .await;
        let r = self.reply(0, Duration::from_secs(30)).await;
        assert!(r["result"]["protocolVersion"].is_string(), "{r}");
        self.send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            .await;
    }

    /// Sends a `tools/call` with id `id` (does not wait).
    pub async fn call(&mut self, id: i64, name: &str, args: Value) {
        self.send(&json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
            "params": {"name": name, "arguments": args}}))
            .await;
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    /// Is the process still running?
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILL, then reap.
    pub async fn kill(&mut self) {
        self.child.kill().await.unwrap();
    }

    /// Closes stdin (a clean shutdown) and waits for the exit.
    pub async fn close(mut self) -> std::process::ExitStatus {
        self.stdin.take();
        tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("server exits after stdin closes")
            .unwrap()
    }
}

/// Resident memory of a process in KiB (Linux `/proc`), if readable.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Writes a successful DeepSeek call of 100 + 10 tokens costing 5,000
/// nano-dollars at `ts_ms` straight into a ledger the binary created (its
/// triggers keep the rollup): history for reports and retention, dated as
/// a test needs.
pub fn insert_past_call(ledger: &Path, ts_ms: i64, request_id: &str) {
    let db = rusqlite::Connection::open(ledger).unwrap();
    db.execute(
        "INSERT INTO calls (ts_ms, user_id, request_id, attempt, provider, model, tier,
            score, input_tokens, output_tokens, cost_nanos, cost_source, latency_ms,
            outcome, prompt_sha256)
         VALUES (?1, 'default', ?2, 1, 'deepseek', 'deepseek/deepseek-v3.2', 'cheap',
            0.3, 100, 10, 5000, 'catalog', 10, 'ok', 'x')",
        rusqlite::params![ts_ms, request_id],
    )
    .unwrap();
}
