//! Fault injection: for every chat provider's wire format, the failures
//! providers really produce — bad key, no credit, rate limits with and
//! without `retry-after`, 5xx, overload, connection refused, a connection
//! reset mid-body, a reply slower than the timeout, malformed JSON, a
//! truncated stream, an error event mid-stream. Each asserts the outcome
//! (an answer after a retry, or a clear error), the attempts recorded, the
//! cost, and that the server still serves the next call.

mod common;

use ai_cost_optimizer::render::usd;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

/// How one provider speaks, for the fault matrix.
struct Case {
    /// Env var of the key (None: keyless).
    key_env: Option<&'static str>,
    /// Env var of the base URL, and the path the fake base must end with.
    base_env: &'static str,
    base_suffix: &'static str,
    /// The model forced for every call.
    model: &'static str,
    /// A successful streamed answer "ok!".
    ok: fn() -> Reply,
    /// Its cost.
    ok_cost: f64,
    /// An error reply in the provider's format.
    error: fn(u16, &str) -> Reply,
    /// The status an overloaded provider sends.
    overloaded: u16,
    /// Auth failure, if the provider has keys: (status, body).
    auth: Option<fn() -> Reply>,
    /// A stream cut before its end.
    truncated: fn() -> Reply,
    /// A stream that starts, then reports an error.
    midstream_error: fn() -> Reply,
    /// The env-var name the auth message must mention.
    key_name: &'static str,
    /// The cost of the usage a stream reports before it breaks
    /// (Anthropic's `message_start` carries the input tokens and the first
    /// output token); 0 for the others, which report usage only at the
    /// end, so a cut-off attempt is charged an estimate instead.
    partial_cost: f64,
}

fn openai_error_reply(status: u16, msg: &str) -> Reply {
    openai_error(status, msg, "api_error")
}

fn openai_family(
    key_env: &'static str,
    base_env: &'static str,
    base_suffix: &'static str,
    model: &'static str,
    ok: fn() -> Reply,
    ok_cost: f64,
) -> Case {
    Case {
        key_env: Some(key_env),
        base_env,
        base_suffix,
        model,
        ok,
        ok_cost,
        error: openai_error_reply,
        overloaded: 503,
        auth: Some(|| openai_error(401, "Incorrect API key provided", "invalid_request_error")),
        truncated: || {
            streamed(
                "text/event-stream",
                openai_sse_body("m", &["o", "k"], None, false),
            )
        },
        midstream_error: || {
            let mut body = openai_sse_body("m", &["o"], None, false);
            body.push_str(
                "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"error\":{\"code\":502,\"message\":\"Upstream provider error\"},\"choices\":[{\"index\":0,\"delta\":{\"content\":\"\"},\"finish_reason\":\"error\"}]}\n\n",
            );
            streamed("text/event-stream", body)
        },
        key_name: key_env,
        partial_cost: 0.0,
    }
}

fn usage10() -> Value {
    json!({"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20})
}

fn cases() -> Vec<(&'static str, Case)> {
    vec![
        (
            "anthropic",
            Case {
                key_env: Some("ANTHROPIC_API_KEY"),
                base_env: "ANTHROPIC_BASE_URL",
                base_suffix: "",
                model: "anthropic/claude-haiku-4-5",
                ok: || {
                    anthropic_sse(
                        "claude-haiku-4-5",
                        &["o", "k!"],
                        json!({"input_tokens": 10, "output_tokens": 1}),
                        10,
                    )
                },
                ok_cost: 10.0 * 1e-6 + 10.0 * 5e-6,
                error: |status, msg| {
                    let kind = match status {
                        402 => "billing_error",
                        429 => "rate_limit_error",
                        529 => "overloaded_error",
                        500 => "api_error",
                        _ => "invalid_request_error",
                    };
                    anthropic_error(status, kind, msg)
                },
                overloaded: 529,
                auth: Some(|| anthropic_error(401, "authentication_error", "invalid x-api-key")),
                truncated: || {
                    streamed(
                        "text/event-stream",
                        anthropic_sse_body(
                            "claude-haiku-4-5",
                            &["o"],
                            json!({"input_tokens": 10, "output_tokens": 1}),
                            0,
                            false,
                        ),
                    )
                },
                midstream_error: || {
                    let mut body = anthropic_sse_body(
                        "claude-haiku-4-5",
                        &["o"],
                        json!({"input_tokens": 10, "output_tokens": 1}),
                        0,
                        false,
                    );
                    body.push_str("event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n");
                    streamed("text/event-stream", body)
                },
                key_name: "ANTHROPIC_API_KEY",
                // message_start: 10 input + 1 output token at $1/$5 per M.
                partial_cost: 10.0 * 1e-6 + 1.0 * 5e-6,
            },
        ),
        (
            "gemini",
            Case {
                key_env: Some("GEMINI_API_KEY"),
                base_env: "GEMINI_BASE_URL",
                base_suffix: "",
                model: "gemini/gemini-2.5-flash-lite",
                ok: || {
                    gemini_sse(
                        "gemini-2.5-flash-lite",
                        &["o", "k!"],
                        json!({"promptTokenCount": 10, "candidatesTokenCount": 10, "totalTokenCount": 20}),
                    )
                },
                ok_cost: 10.0 * 0.1e-6 + 10.0 * 0.4e-6,
                error: |status, msg| {
                    let s = match status {
                        429 => "RESOURCE_EXHAUSTED",
                        503 => "UNAVAILABLE",
                        500 => "INTERNAL",
                        403 => "PERMISSION_DENIED",
                        _ => "INVALID_ARGUMENT",
                    };
                    Reply::json(
                        status,
                        json!({"error": {"code": status, "message": msg, "status": s}}),
                    )
                },
                overloaded: 503,
                auth: Some(|| {
                    Reply::json(
                        400,
                        json!({"error": {"code": 400, "message": "API key not valid. Please pass a valid API key.", "status": "INVALID_ARGUMENT",
                        "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID", "domain": "googleapis.com"}]}}),
                    )
                }),
                truncated: || {
                    streamed(
                        "text/event-stream",
                        gemini_sse_body("gemini-2.5-flash-lite", &["o", "k"], None),
                    )
                },
                midstream_error: || {
                    let mut body = gemini_sse_body("gemini-2.5-flash-lite", &["o"], None);
                    body.push_str("data: {\"error\":{\"code\":503,\"message\":\"The model is overloaded. Please try again later.\",\"status\":\"UNAVAILABLE\"}}\r\n\r\n");
                    streamed("text/event-stream", body)
                },
                key_name: "GEMINI_API_KEY",
                partial_cost: 0.0,
            },
        ),
        (
            "cerebras",
            openai_family(
                "CEREBRAS_API_KEY",
                "CEREBRAS_BASE_URL",
                "/v1",
                "cerebras/gpt-oss-120b",
                || openai_sse("gpt-oss-120b", &["o", "k!"], usage10()),
                10.0 * 0.35e-6 + 10.0 * 0.75e-6,
            ),
        ),
        (
            "deepseek",
            openai_family(
                "DEEPSEEK_API_KEY",
                "DEEPSEEK_BASE_URL",
                "",
                "deepseek/deepseek-v3.2",
                || openai_sse("deepseek-v3.2", &["o", "k!"], usage10()),
                10.0 * 0.28e-6 + 10.0 * 0.40e-6,
            ),
        ),
        (
            "openrouter",
            openai_family(
                "OPENROUTER_API_KEY",
                "OPENROUTER_BASE_URL",
                "/api/v1",
                "openrouter/google/gemini-2.5-flash-lite",
                || {
                    openai_sse(
                        "google/gemini-2.5-flash-lite",
                        &["o", "k!"],
                        json!({"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20, "cost": 0.000123}),
                    )
                },
                0.000123,
            ),
        ),
        (
            "huggingface",
            Case {
                error: |status, msg| Reply::json(status, json!({"error": msg})),
                ..openai_family(
                    "HF_TOKEN",
                    "HF_BASE_URL",
                    "/v1",
                    "huggingface/meta-llama/Llama-3.1-8B-Instruct",
                    || openai_sse("meta-llama/Llama-3.1-8B-Instruct", &["o", "k!"], usage10()),
                    0.0,
                )
            },
        ),
        (
            "ollama",
            Case {
                key_env: None,
                base_env: "OLLAMA_HOST",
                base_suffix: "",
                model: "ollama/llama3.1",
                ok: || ollama_ndjson("llama3.1", &["o", "k!"], 10, 10),
                ok_cost: 0.0,
                error: |status, msg| Reply::json(status, json!({"error": msg})),
                overloaded: 503,
                auth: None,
                truncated: || {
                    streamed(
                        "application/x-ndjson",
                        ollama_ndjson_body("llama3.1", &["o", "k"], None),
                    )
                },
                midstream_error: || {
                    let mut body = ollama_ndjson_body("llama3.1", &["o"], None);
                    body.push_str("{\"error\":\"an error was encountered while running the model: unexpected EOF\"}\n");
                    streamed("application/x-ndjson", body)
                },
                key_name: "",
                partial_cost: 0.0,
            },
        ),
    ]
}

const FAKE_KEY: &str = "fault-suite-FAKE-key-0123456789abcdef";

struct Harness {
    s: Server,
    fake: FakeProvider,
    case: Case,
    name: &'static str,
    failed: u64,
    calls: u64,
    cost: f64,
    /// USD of the test prompt's estimated input tokens and of one output
    /// token, as `check_model_costs` prices them (0 for an unpriced or
    /// local model): what an attempt that reported no usage is charged.
    prompt_cost: f64,
    token_cost: f64,
}

impl Harness {
    async fn start(name: &'static str, case: Case, dir: &std::path::Path) -> Harness {
        let fake = FakeProvider::start((case.ok)()).await;
        let mut env = vec![
            (case.base_env, format!("{}{}", fake.base, case.base_suffix)),
            // Long enough that a normal reply never hits it on a loaded
            // machine running seven matrices at once.
            ("COST_OPTIMIZER_REQUEST_TIMEOUT_SECS", "4".to_string()),
            ("COST_OPTIMIZER_BREAKER_COOLDOWN_SECS", "0.001".to_string()),
        ];
        if let Some(k) = case.key_env {
            env.push((k, FAKE_KEY.to_string()));
        }
        let s = spawn(dir, &env).await;
        // HuggingFace's model has no price (nothing to estimate) and
        // Ollama's is local (free).
        let priced = !matches!(name, "huggingface" | "ollama");
        let costs = if priced {
            s.ok(
                "check_model_costs",
                json!({"model": case.model, "prompt": "say ok"}),
            )
            .await
        } else {
            json!({"models": []})
        };
        let row = costs["models"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["model"] == case.model)
            .cloned();
        assert_eq!(row.is_some(), priced, "[{name}] {costs}");
        let (prompt_cost, token_cost) = match row {
            Some(m) => {
                let token = m["output_per_mtok"].as_f64().unwrap() / 1e6;
                let assumed = costs["assumed_output_tokens"].as_f64().unwrap();
                let estimate = m["estimated_cost_usd"].as_f64().unwrap();
                (estimate - assumed * token, token)
            }
            _ => (0.0, 0.0),
        };
        Harness {
            s,
            fake,
            case,
            name,
            failed: 0,
            calls: 0,
            cost: 0.0,
            prompt_cost,
            token_cost,
        }
    }

    /// What an attempt cut off after the provider accepted it is recorded
    /// at: the usage its stream reported, or, when it reported none, the
    /// estimated prompt plus the text received (every cut-off stream of
    /// this suite delivered one or two bytes: one token). A reply with no
    /// usage and no text (an unreadable body) is recorded at $0.
    fn cut_off_cost(&self, streamed: bool) -> f64 {
        if !streamed {
            0.0
        } else if self.case.partial_cost > 0.0 {
            self.case.partial_cost
        } else {
            self.prompt_cost + self.token_cost
        }
    }

    async fn call(&self) -> rmcp::model::CallToolResult {
        self.s
            .call(
                "complete_prompt",
                json!({"prompt": "say ok", "force_model": self.case.model, "max_tokens": 50}),
            )
            .await
    }

    /// What the caller is told about an attempt cut off after the
    /// provider accepted it: a local model bills nothing; otherwise the
    /// provider may have billed it, recorded at the cost of the usage the
    /// stream reported or at an estimate when it reported none, or at $0
    /// flagged unpriced when the model has no price.
    fn cut_off_note(&self, streamed: bool) -> String {
        if self.name == "ollama" {
            return "Nothing was charged.".into();
        }
        let cost = self.cut_off_cost(streamed);
        let recorded = if self.name == "huggingface" {
            "$0 and flagged unpriced: the model has no known price".into()
        } else if !streamed {
            "$0 and flagged unpriced: it reported no usage, so its cost is unknown".into()
        } else if self.case.partial_cost > 0.0 {
            format!("an estimated {} from the usage it reported", usd(cost))
        } else {
            format!(
                "an estimated {} from the prompt and the text received; it reported no usage",
                usd(cost)
            )
        };
        format!(
            "The provider may have billed the partial answer of an attempt cut off mid-response: {} (recorded at {recorded}).",
            self.case.model
        )
    }

    /// The call succeeds after a stream cut off mid-answer: the answer's
    /// own cost is exact, the cut-off attempt is in the ledger at the cost
    /// of the usage it reported, and the caller is told.
    async fn expect_recovery_after_cutoff(&mut self, what: &str) {
        self.cost += self.cut_off_cost(true);
        let c = self.expect_recovery(what, 1).await;
        // The answer's cost and, beside it, what the cut-off attempt was
        // charged: both are in the ledger under this request id.
        assert_usd(&c["failed_attempts_cost_usd"], self.cut_off_cost(true));
        let warning = c["warning"].as_str().unwrap_or_default().to_string();
        let note = self.cut_off_note(true);
        match self.name {
            // A local model: nothing to warn about.
            "ollama" => assert_eq!(c["warning"], Value::Null, "[ollama] {what}"),
            // Unpriced: its own warning follows.
            "huggingface" => assert!(
                warning.starts_with(&format!("{note} ")) && warning.contains("no known price"),
                "[huggingface] {what}: {warning}"
            ),
            _ => assert_eq!(warning, note, "[{}] {what}", self.name),
        }
    }

    /// The call succeeds after `failures` failed attempts; returns its
    /// structured content.
    async fn expect_recovery(&mut self, what: &str, failures: u64) -> Value {
        let before = self.fake.requests().len();
        let r = self.call().await;
        assert_ne!(
            r.is_error,
            Some(true),
            "[{}] {what}: {}",
            self.name,
            text(&r)
        );
        let c = r.structured_content.clone().unwrap();
        assert_eq!(c["answer"], "ok!", "[{}] {what}", self.name);
        assert_eq!(
            c["attempts"].as_array().unwrap().len() as u64,
            failures + 1,
            "[{}] {what}: {}",
            self.name,
            c["attempts"]
        );
        assert_usd(&c["cost_usd"], self.case.ok_cost);
        assert_eq!(
            self.fake.requests().len() - before,
            failures as usize + 1,
            "[{}] {what}",
            self.name
        );
        self.failed += failures;
        self.calls += 1;
        self.cost += self.case.ok_cost;
        self.check_ledger(what).await;
        c
    }

    /// The call fails with an error containing `needle`, after `attempts`
    /// that cost nothing.
    async fn expect_error(&mut self, what: &str, needle: &str, attempts: u64) {
        self.expect_failure(what, needle, attempts, "Nothing was charged.")
            .await;
    }

    /// The call fails with an error containing `needle`, after `attempts`,
    /// its text ending with `charged` (what the caller may have paid).
    async fn expect_failure(&mut self, what: &str, needle: &str, attempts: u64, charged: &str) {
        let before = self.fake.requests().len();
        let r = self.call().await;
        assert_eq!(
            r.is_error,
            Some(true),
            "[{}] {what} should fail: {}",
            self.name,
            text(&r)
        );
        let t = text(&r);
        assert!(t.contains(needle), "[{}] {what}: {t}", self.name);
        assert!(t.ends_with(charged), "[{}] {what}: {t}", self.name);
        assert!(!t.contains(FAKE_KEY), "[{}] {what}: key leaked", self.name);
        assert_eq!(
            self.fake.requests().len() - before,
            attempts as usize,
            "[{}] {what}",
            self.name
        );
        self.failed += attempts;
        self.check_ledger(what).await;
        // And the server still serves.
        self.expect_recovery(&format!("call after {what}"), 0).await;
    }

    async fn check_ledger(&self, what: &str) {
        let u = self.s.ok("query_usage", json!({})).await;
        assert_eq!(u["calls"], json!(self.calls), "[{}] {what}", self.name);
        assert_eq!(
            u["totals"]["failed_attempts"],
            json!(self.failed),
            "[{}] {what}",
            self.name
        );
        assert_usd(&u["total_cost_usd"], self.cost);
    }
}

/// A 429 telling the client to wait `secs`, as each provider says it:
/// Gemini in the body (`RetryInfo.retryDelay`, no headers), Cerebras in its
/// `x-ratelimit-*` headers (float seconds, the exhausted limit's remaining
/// at 0), Anthropic and the others with `retry-after`.
fn rate_limited(name: &str, case: &Case, secs: &str) -> Reply {
    match name {
        "gemini" => Reply::json(
            429,
            json!({"error": {"code": 429, "message": "Resource has been exhausted (e.g. check quota).", "status": "RESOURCE_EXHAUSTED",
            "details": [
                {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{"quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests"}]},
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": format!("{secs}s")}
            ]}}),
        ),
        "cerebras" => (case.error)(
            429,
            "Tokens per minute limit exceeded - too many tokens processed.",
        )
        .header("x-ratelimit-limit-tokens-minute", "60000")
        .header("x-ratelimit-remaining-tokens-minute", "0")
        .header("x-ratelimit-reset-tokens-minute", &format!("{secs}.0"))
        .header("x-ratelimit-limit-requests-day", "14400")
        .header("x-ratelimit-remaining-requests-day", "14000")
        .header("x-ratelimit-reset-requests-day", "51234.5"),
        _ => (case.error)(429, "Rate limit exceeded").header("retry-after", secs),
    }
}

async fn run_matrix(name: &'static str) {
    let case = cases().into_iter().find(|(n, _)| *n == name).unwrap().1;
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::start(name, case, dir.path()).await;
    h.expect_recovery("plain success", 0).await;

    // Rejected key: no retry, no charge, a message naming the env var.
    if let Some(auth) = h.case.auth {
        h.fake.push(auth());
        let needle = format!("{} was rejected", h.case.key_name);
        h.expect_error("401", &needle, 1).await;
    }
    // Out of credit (providers that bill: 402).
    if h.case.key_env.is_some() && name != "gemini" {
        h.fake.push((h.case.error)(402, "Insufficient credits"));
        h.expect_error("402", "billing reasons", 1).await;
    }
    // Rate limited, told to wait 1 s the way the provider says it: waits,
    // then succeeds.
    h.fake.push(rate_limited(name, &h.case, "1"));
    let c = h.expect_recovery("429 with retry-after", 1).await;
    // The wait taken is the provider's, not our backoff (100 ms-scale).
    assert_eq!(
        c["attempts"][0]["retried_after_ms"],
        json!(1000),
        "[{name}] retry-after ignored: {}",
        c["attempts"]
    );
    assert!(c["attempts"][1].get("retried_after_ms").is_none());
    // Rate limited, told to wait an hour: no point waiting; fail now.
    h.fake.push(rate_limited(name, &h.case, "3600"));
    h.expect_error("429 with long retry-after", "rate-limiting", 1)
        .await;
    // Rate limited without a hint: exponential backoff, then success.
    h.fake.push((h.case.error)(429, "Too many requests"));
    h.expect_recovery("429 without retry-after", 1).await;
    // Server errors: retried twice, then given up.
    for _ in 0..3 {
        h.fake.push((h.case.error)(500, "Internal server error"));
    }
    h.expect_error("500 x3", "server error", 3).await;
    // Overloaded once: retried.
    h.fake.push((h.case.error)(h.case.overloaded, "Overloaded"));
    h.expect_recovery("overloaded", 1).await;
    // Connection reset mid-body: retried; the cut-off attempt may be
    // billed, so it is recorded at what its usage so far cost.
    h.fake.push(((h.case.truncated)()).reset_after_body());
    h.expect_recovery_after_cutoff("reset mid-body").await;
    // Slower than the 4 s timeout: retried.
    h.fake.push(((h.case.ok)()).delayed(Duration::from_secs(8)));
    h.expect_recovery("slow reply", 1).await;
    // Slower than the timeout twice: the second is not retried (each one
    // costs a whole timeout; another provider would be tried next). Once,
    // for one provider: the path is the same for all.
    if name == "deepseek" {
        for _ in 0..2 {
            h.fake.push(((h.case.ok)()).delayed(Duration::from_secs(8)));
        }
        h.expect_error("slow twice", "did not answer in time", 2)
            .await;
    }
    // Malformed JSON: not retried (the same request would get the same).
    h.fake.push(Reply {
        status: 200,
        headers: vec![("content-type".into(), "application/json".into())],
        body: "{\"choices\": [oops".into(),
        delay: None,
        reset: false,
        raw: None,
        drip: None,
    });
    // The provider accepted the request (200), so it may bill it; the
    // reply reported no usage and gave no text, so its cost is unknown.
    h.cost += h.cut_off_cost(false);
    let note = h.cut_off_note(false);
    h.expect_failure("malformed JSON", "could not be read", 1, &note)
        .await;
    // A stream that stops before its end.
    h.fake.push((h.case.truncated)());
    h.cost += h.cut_off_cost(true);
    let note = h.cut_off_note(true);
    h.expect_failure("truncated stream", "stream ended", 1, &note)
        .await;
    // An error event mid-stream: a server-side failure, retried.
    h.fake.push((h.case.midstream_error)());
    h.expect_recovery_after_cutoff("error mid-stream").await;

    let stderr = std::fs::read_to_string(&h.s.stderr_path).unwrap();
    assert!(!stderr.contains(FAKE_KEY), "[{name}] key in stderr");
    assert!(!stderr.contains("panicked"), "[{name}] panic: {stderr}");
    h.s.stop().await;

    // Connection refused: nothing listens at the base URL. Retried (it may
    // be a blip), then a clear error naming the env var to check.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut env = vec![(
        h.case.base_env,
        format!("http://127.0.0.1:{port}{}", h.case.base_suffix),
    )];
    if let Some(k) = h.case.key_env {
        env.push((k, FAKE_KEY.to_string()));
    }
    let refused_dir = tempfile::tempdir().unwrap();
    let s = spawn(refused_dir.path(), &env).await;
    let e = s
        .err(
            "complete_prompt",
            json!({"prompt": "say ok", "force_model": h.case.model}),
        )
        .await;
    assert!(
        e.contains("could not reach") && e.contains(h.case.base_env),
        "[{name}] {e}"
    );
    let u = s.ok("query_usage", json!({})).await;
    assert_eq!(
        u["totals"]["failed_attempts"],
        json!(3),
        "[{name}] retried twice"
    );
    assert_eq!(u["calls"], json!(0));
    s.stop().await;
}

#[tokio::test]
async fn anthropic_faults() {
    run_matrix("anthropic").await;
}

#[tokio::test]
async fn gemini_faults() {
    run_matrix("gemini").await;
}

#[tokio::test]
async fn cerebras_faults() {
    run_matrix("cerebras").await;
}

#[tokio::test]
async fn deepseek_faults() {
    run_matrix("deepseek").await;
}

#[tokio::test]
async fn openrouter_faults() {
    run_matrix("openrouter").await;
}

#[tokio::test]
async fn huggingface_faults() {
    run_matrix("huggingface").await;
}

#[tokio::test]
async fn ollama_faults() {
    run_matrix("ollama").await;
}

#[tokio::test]
async fn connection_refused_is_explained_and_falls_back() {
    // A port with nothing listening.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let good = FakeProvider::start(anthropic_sse(
        "claude-haiku-4-5",
        &["ok!"],
        json!({"input_tokens": 10, "output_tokens": 1}),
        10,
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let s = spawn(
        dir.path(),
        &[
            ("DEEPSEEK_API_KEY", FAKE_KEY.into()),
            ("DEEPSEEK_BASE_URL", format!("http://127.0.0.1:{port}")),
        ],
    )
    .await;
    let e = s
        .err(
            "complete_prompt",
            json!({"prompt": "hi", "force_model": "deepseek/deepseek-v3.2"}),
        )
        .await;
    assert!(
        e.contains("could not reach DeepSeek") && e.contains("DEEPSEEK_BASE_URL"),
        "{e}"
    );
    s.stop().await;

    // With a second provider, the call falls back to it.
    let s = spawn(
        dir.path(),
        &[
            ("DEEPSEEK_API_KEY", FAKE_KEY.into()),
            ("DEEPSEEK_BASE_URL", format!("http://127.0.0.1:{port}")),
            ("ANTHROPIC_API_KEY", FAKE_KEY.into()),
            ("ANTHROPIC_BASE_URL", good.base.clone()),
            medium_tier_config(
                dir.path(),
                &["deepseek/deepseek-v4-pro", "anthropic/claude-haiku-4-5"],
            ),
        ],
    )
    .await;
    let c = s
        .ok("complete_prompt", json!({"prompt": "hi", "tier": "medium"}))
        .await;
    assert_eq!(c["provider"], "anthropic");
    // DeepSeek (first in the medium tier) was tried first and refused.
    assert_fell_back(&c, "deepseek/", "connection");
    s.stop().await;
}

/// A server whose medium tier tries DeepSeek (`bad`) first, then a
/// healthy Anthropic, with a circuit-breaker cooldown of `cooldown` s.
async fn deepseek_before_haiku(
    bad: &FakeProvider,
    cooldown: &str,
) -> (FakeProvider, tempfile::TempDir, Server) {
    let good = FakeProvider::start(anthropic_sse(
        "claude-haiku-4-5",
        &["ok!"],
        json!({"input_tokens": 10, "output_tokens": 1}),
        10,
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let s = spawn(
        dir.path(),
        &[
            ("DEEPSEEK_API_KEY", FAKE_KEY.into()),
            ("DEEPSEEK_BASE_URL", bad.base.clone()),
            ("ANTHROPIC_API_KEY", FAKE_KEY.into()),
            ("ANTHROPIC_BASE_URL", good.base.clone()),
            ("COST_OPTIMIZER_BREAKER_COOLDOWN_SECS", cooldown.into()),
            medium_tier_config(
                dir.path(),
                &["deepseek/deepseek-v4-pro", "anthropic/claude-haiku-4-5"],
            ),
        ],
    )
    .await;
    (good, dir, s)
}

#[tokio::test]
async fn a_failing_provider_is_cooled_down_for_later_calls() {
    let bad = FakeProvider::start(openai_error(503, "overloaded", "server_error")).await;
    let (_good, _dir, s) = deepseek_before_haiku(&bad, "60").await;
    // First call: DeepSeek (cheaper) fails three times, opening its breaker.
    let c = s
        .ok("complete_prompt", json!({"prompt": "hi", "tier": "medium"}))
        .await;
    assert_eq!(c["provider"], "anthropic");
    assert_eq!(bad.requests().len(), 3);
    assert!(
        c["notes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n.as_str().unwrap().contains("skipped for the next 60s")),
        "{}",
        c["notes"]
    );
    // Second call goes straight to Anthropic and says why.
    let c = s
        .ok("complete_prompt", json!({"prompt": "hi", "tier": "medium"}))
        .await;
    assert_eq!(c["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(
        bad.requests().len(),
        3,
        "the cooled-down provider was called again"
    );
    assert!(
        c["notes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n.as_str().unwrap().contains("cooling down")),
        "{}",
        c["notes"]
    );
    s.stop().await;
}

/// After the cooldown, one call probes the provider while the others keep
/// going elsewhere: a provider still down costs one call's wait, not one
/// per caller. The probe's answer is held at the fake, so the check needs
/// no timing beyond outwaiting the cooldown.
#[tokio::test]
async fn after_the_cooldown_one_call_probes_the_provider() {
    let bad = FakeProvider::start(openai_sse(
        "deepseek-v4-pro",
        &["probe ok"],
        json!({"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12}),
    ))
    .await;
    for _ in 0..3 {
        bad.push(openai_error(503, "overloaded", "server_error"));
    }
    let (_good, _dir, s) = deepseek_before_haiku(&bad, "1").await;
    let args = json!({"prompt": "hi", "tier": "medium"});
    let c = s.ok("complete_prompt", args.clone()).await;
    assert_eq!(c["provider"], "anthropic");
    assert_eq!(bad.requests().len(), 3, "DeepSeek's breaker is open");
    tokio::time::sleep(Duration::from_millis(1500)).await;

    bad.close_gate();
    let answered = std::sync::atomic::AtomicUsize::new(0);
    let calls = (0..5).map(|_| async {
        let c = s.ok("complete_prompt", args.clone()).await;
        answered.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        c
    });
    let watch = async {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while answered.load(std::sync::atomic::Ordering::SeqCst) < 4 {
            assert!(std::time::Instant::now() < deadline, "calls never answered");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Four answered elsewhere while the probe is held: one request.
        let probes = bad.requests().len() - 3;
        bad.open_gate();
        probes
    };
    let (results, probes) =
        futures_util::future::join(futures_util::future::join_all(calls), watch).await;
    assert_eq!(probes, 1, "one probe while the breaker was half-open");
    let by = |p: &str| results.iter().filter(|c| c["provider"] == p).count();
    assert_eq!((by("deepseek"), by("anthropic")), (1, 4));
    // The probe succeeded: the breaker is closed for the next call.
    let c = s.ok("complete_prompt", args).await;
    assert_eq!(c["provider"], "deepseek", "{c}");
    s.stop().await;
}

/// A minimal valid WAV file: RIFF header, fmt chunk, a little silence.
fn wav() -> Vec<u8> {
    wav_of(64)
}

/// A valid WAV file with `len` bytes of silence.
fn wav_of(len: usize) -> Vec<u8> {
    let data = vec![0u8; len];
    let mut w = Vec::new();
    w.extend_from_slice(b"RIFF");
    w.extend_from_slice(&((36 + data.len()) as u32).to_le_bytes());
    w.extend_from_slice(b"WAVEfmt ");
    w.extend_from_slice(&16u32.to_le_bytes());
    w.extend_from_slice(&1u16.to_le_bytes()); // PCM
    w.extend_from_slice(&1u16.to_le_bytes()); // mono
    w.extend_from_slice(&44100u32.to_le_bytes());
    w.extend_from_slice(&(44100u32 * 2).to_le_bytes());
    w.extend_from_slice(&2u16.to_le_bytes());
    w.extend_from_slice(&16u16.to_le_bytes());
    w.extend_from_slice(b"data");
    w.extend_from_slice(&(data.len() as u32).to_le_bytes());
    w.extend_from_slice(&data);
    w
}

fn wav_reply() -> Reply {
    Reply {
        status: 200,
        headers: vec![("content-type".into(), "audio/wav".into())],
        body: String::new(),
        delay: None,
        reset: false,
        raw: Some(wav()),
        drip: None,
    }
}

fn cartesia_error(status: u16, msg: &str) -> Reply {
    Reply::json(
        status,
        json!({"title": "Error", "message": msg, "error_code": "error", "request_id": "r1"}),
    )
}

/// DeepSeek answering at `chat` and Cartesia reading aloud at `tts`.
fn speech_env(chat: &FakeProvider, tts: &FakeProvider) -> Vec<(&'static str, String)> {
    vec![
        ("DEEPSEEK_API_KEY", FAKE_KEY.into()),
        ("DEEPSEEK_BASE_URL", chat.base.clone()),
        ("CARTESIA_API_KEY", "sk_car_FAKE_0000000000000000".into()),
        ("CARTESIA_BASE_URL", tts.base.clone()),
    ]
}

#[tokio::test]
async fn cartesia_speaks_the_answer_and_survives_faults() {
    let chat =
        FakeProvider::start(openai_sse("deepseek-v3.2", &["Hello", " there"], usage10())).await;
    let tts = FakeProvider::start(wav_reply()).await;
    let dir = tempfile::tempdir().unwrap();

    // Without a Cartesia key, speak is refused before anything is spent.
    let s = spawn(
        dir.path(),
        &[
            ("DEEPSEEK_API_KEY", FAKE_KEY.into()),
            ("DEEPSEEK_BASE_URL", chat.base.clone()),
        ],
    )
    .await;
    let e = s
        .err("complete_prompt", json!({"prompt": "hi", "speak": true}))
        .await;
    assert!(e.contains("CARTESIA_API_KEY"), "{e}");
    assert!(chat.requests().is_empty());
    s.stop().await;

    let mut env = speech_env(&chat, &tts);
    env.push(("COST_OPTIMIZER_REQUEST_TIMEOUT_SECS", "4".into()));
    let s = spawn(dir.path(), &env).await;
    let chat_cost = 10.0 * 0.28e-6 + 10.0 * 0.40e-6;
    let speech_cost = "Hello there".len() as f64 * 0.000_05;
    let c = s
        .ok(
            "complete_prompt",
            json!({"prompt": "greet me", "tier": "cheap", "speak": true, "voice": "abc-123"}),
        )
        .await;
    assert_eq!(c["answer"], "Hello there");
    let audio = &c["audio"];
    assert_eq!(audio["characters"], json!(11));
    assert_usd(&audio["cost_usd"], speech_cost);
    assert_usd(&c["cost_usd"], chat_cost);
    let path = audio["path"].as_str().unwrap();
    assert_eq!(std::fs::read(path).unwrap(), wav());
    let r = &tts.requests()[0];
    assert_eq!(r.path, "/tts/bytes");
    assert_eq!(
        r.headers["cartesia-version"].to_str().unwrap(),
        "2025-04-16"
    );
    assert_eq!(
        r.headers["authorization"].to_str().unwrap(),
        "Bearer sk_car_FAKE_0000000000000000"
    );
    assert_eq!(r.body["transcript"], "Hello there");
    assert_eq!(r.body["voice"]["id"], "abc-123");
    assert_eq!(r.body["output_format"]["container"], "wav");
    let u = s.ok("query_usage", json!({"group_by": "provider"})).await;
    assert_usd(&u["total_cost_usd"], chat_cost + speech_cost);
    // Savings compare answers with the baseline: speech is left out.
    let baseline = u["totals"]["baseline_cost_usd"].as_f64().unwrap();
    assert!(baseline > 0.0, "{u}");
    assert_usd(&u["savings_usd"], baseline - chat_cost);
    let by_tier = s.ok("query_usage", json!({"group_by": "tier"})).await;
    assert_usd(&by_tier["savings_usd"], baseline - chat_cost);
    assert_eq!(by_tier["by_provider"], json!([]), "only what was asked for");
    assert!(
        u["by_provider"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["key"] == "cartesia")
    );

    // Faults: the answer is still delivered; the audio says what went wrong.
    let mut failed = 0;
    let cases: Vec<(Vec<Reply>, Option<&str>, u64)> = vec![
        (
            vec![cartesia_error(401, "Invalid API key")],
            Some("CARTESIA_API_KEY was rejected"),
            1,
        ),
        (
            vec![cartesia_error(402, "Out of credits")],
            Some("billing"),
            1,
        ),
        (
            vec![cartesia_error(429, "Too many requests").header("retry-after", "0")],
            None,
            1,
        ),
        (
            vec![cartesia_error(500, "boom"); 3],
            Some("server error"),
            3,
        ),
        (
            vec![Reply::json(200, json!({"not": "audio"}))],
            Some("not WAV audio"),
            1,
        ),
        (vec![wav_reply().delayed(Duration::from_secs(8))], None, 1),
        (vec![wav_reply().reset_after_body()], None, 1),
    ];
    for (replies, error, failures) in cases {
        for r in replies {
            tts.push(r);
        }
        let c = s
            .ok(
                "complete_prompt",
                json!({"prompt": "greet me", "tier": "cheap", "speak": true}),
            )
            .await;
        assert_eq!(c["answer"], "Hello there");
        match error {
            Some(needle) => {
                let e = c["audio"]["error"].as_str().unwrap_or_default();
                assert!(e.contains(needle), "{needle}: {}", c["audio"]);
                assert!(c["audio"]["path"].is_null());
                assert!(c["warning"].as_str().unwrap().contains("No audio"));
            }
            None => assert!(c["audio"]["path"].is_string(), "{}", c["audio"]),
        }
        failed += failures;
        let u = s.ok("query_usage", json!({})).await;
        assert_eq!(u["totals"]["failed_attempts"], json!(failed), "{error:?}");
    }

    // Audio far longer than its transcript could take (6 MB for "Hello
    // there", over a minute of silence per character) is refused, and no
    // partial file is left; Cartesia accepted the request, so the
    // characters are charged.
    let audio_dir = dir.path().join("audio");
    let before = std::fs::read_dir(&audio_dir).unwrap().count();
    let spent = s.ok("query_usage", json!({})).await["total_cost_usd"]
        .as_f64()
        .unwrap();
    tts.push(Reply {
        raw: Some(wav_of(6_000_000)),
        ..wav_reply()
    });
    let c = s
        .ok(
            "complete_prompt",
            json!({"prompt": "greet me", "tier": "cheap", "speak": true}),
        )
        .await;
    let e = c["audio"]["error"].as_str().unwrap_or_default();
    assert!(e.contains("longer than"), "{}", c["audio"]);
    assert_eq!(std::fs::read_dir(&audio_dir).unwrap().count(), before);
    assert_usd(&c["audio"]["cost_usd"], speech_cost);
    let u = s.ok("query_usage", json!({})).await;
    assert_usd(&u["total_cost_usd"], spent + chat_cost + speech_cost);
    failed += 1;
    // A long answer's audio, over the 16 MiB any other reply may take, is
    // saved whole: 1,500 characters read aloud are about 100 s (9 MB) at
    // a normal pace; 20 MiB is within what they can take.
    let long = "word ".repeat(300);
    chat.push(openai_sse("deepseek-v3.2", &[long.as_str()], usage10()));
    let big = wav_of(20 * 1024 * 1024);
    tts.push(Reply {
        raw: Some(big.clone()),
        ..wav_reply()
    });
    let c = s
        .ok(
            "complete_prompt",
            json!({"prompt": "read me a long text", "tier": "cheap", "speak": true}),
        )
        .await;
    assert_eq!(c["audio"]["error"], Value::Null, "{}", c["audio"]);
    assert_eq!(c["audio"]["bytes"], json!(big.len()));
    let saved = std::fs::read(c["audio"]["path"].as_str().unwrap()).unwrap();
    assert!(saved == big, "the file holds the audio as sent");
    let u = s.ok("query_usage", json!({})).await;
    assert_eq!(u["totals"]["failed_attempts"], json!(failed));
    s.stop().await;

    // Nothing listening at CARTESIA_BASE_URL: the answer still arrives.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let s = spawn(
        dir.path(),
        &[
            ("DEEPSEEK_API_KEY", FAKE_KEY.into()),
            ("DEEPSEEK_BASE_URL", chat.base.clone()),
            ("CARTESIA_API_KEY", "sk_car_FAKE_0000000000000000".into()),
            ("CARTESIA_BASE_URL", format!("http://127.0.0.1:{port}")),
        ],
    )
    .await;
    let c = s
        .ok(
            "complete_prompt",
            json!({"prompt": "greet me", "tier": "cheap", "speak": true}),
        )
        .await;
    assert_eq!(c["answer"], "Hello there");
    let e = c["audio"]["error"].as_str().unwrap();
    assert!(
        e.contains("could not reach Cartesia") && e.contains("CARTESIA_BASE_URL"),
        "{e}"
    );
    s.stop().await;
}

/// Speech is read in the answer's language: detected when the text makes
/// it clear, English when it does not, and exactly the one asked for with
/// `language`; a language Cartesia's model does not speak, or `language`
/// without `speak`, is refused before anything is spent.
#[tokio::test]
async fn speech_is_read_in_the_answers_language() {
    let french = [
        "La capitale de la France est Paris,",
        " une ville connue pour ses musées et sa cuisine.",
    ];
    let chat = FakeProvider::start(openai_sse("deepseek-v3.2", &french, usage10())).await;
    let tts = FakeProvider::start(wav_reply()).await;
    let dir = tempfile::tempdir().unwrap();
    let s = spawn(dir.path(), &speech_env(&chat, &tts)).await;
    let call = |extra: Value| {
        let mut args = json!({"prompt": "parle-moi de Paris", "tier": "cheap", "speak": true});
        args.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        args
    };

    // Detected from the answer.
    let c = s.ok("complete_prompt", call(json!({}))).await;
    assert_eq!(tts.requests()[0].body["language"], "fr");
    assert_eq!(tts.requests()[0].body["model_id"], "sonic-3");
    assert_eq!(c["audio"]["language"], "fr");
    assert_eq!(c["audio"]["language_source"], "detected");
    let shown = text(&s.call("complete_prompt", call(json!({}))).await);
    assert!(
        shown.contains("read in fr (the answer's language)"),
        "{shown}"
    );

    // Asked for: honoured over the detection (case and spaces forgiven).
    let c = s
        .ok("complete_prompt", call(json!({"language": " DE "})))
        .await;
    assert_eq!(tts.requests()[2].body["language"], "de");
    assert_eq!(c["audio"]["language_source"], "asked");

    // Too short to tell: English, and said so.
    chat.push(openai_sse("deepseek-v3.2", &["Oui."], usage10()));
    let c = s.ok("complete_prompt", call(json!({}))).await;
    assert_eq!(tts.requests()[3].body["language"], "en");
    assert_eq!(c["audio"]["language"], "en");
    assert_eq!(c["audio"]["language_source"], "default");

    // Refused before any model or Cartesia is called.
    let before = (chat.requests().len(), tts.requests().len());
    let e = s
        .err("complete_prompt", call(json!({"language": "eo"})))
        .await;
    assert!(e.contains("\"eo\"") && e.contains("en, de"), "{e}");
    let e = s
        .err(
            "complete_prompt",
            call(json!({"language": "x".repeat(100_000)})),
        )
        .await;
    assert!(e.contains("100000 bytes") && e.len() < 300, "{e}");
    let e = s
        .err(
            "complete_prompt",
            json!({"prompt": "hi", "tier": "cheap", "language": "fr"}),
        )
        .await;
    assert!(e.contains("only used with speak"), "{e}");
    assert_eq!((chat.requests().len(), tts.requests().len()), before);
    s.stop().await;
}

/// `budget_limit` caps the whole call, the audio included: speech that
/// does not fit in what the answer left is not asked for, and a retry
/// after a billed failure is not made when it would go past the limit.
#[tokio::test]
async fn budget_limit_covers_the_audio_and_its_retries() {
    let chat =
        FakeProvider::start(openai_sse("deepseek-v3.2", &["Hello", " there"], usage10())).await;
    let tts = FakeProvider::start(wav_reply()).await;
    let dir = tempfile::tempdir().unwrap();
    let s = spawn(dir.path(), &speech_env(&chat, &tts)).await;
    let speech_cost = "Hello there".len() as f64 * 0.000_05;
    let call = |limit: f64| {
        json!({"prompt": "greet me", "tier": "cheap", "speak": true,
               "max_tokens": 100, "budget_limit": limit})
    };
    // Room for the answer, not for its audio: Cartesia is not called.
    let c = s.ok("complete_prompt", call(0.0003)).await;
    assert_eq!(c["answer"], "Hello there");
    let e = c["audio"]["error"].as_str().unwrap_or_default();
    assert!(e.contains("budget_limit"), "{}", c["audio"]);
    assert!(tts.requests().is_empty());
    assert_usd(&c["audio"]["cost_usd"], 0.0);

    // Room for one reading: the first breaks off after Cartesia accepted
    // it (billed), and the retry, which would go past the limit, is not made.
    chat.push(openai_sse("deepseek-v3.2", &["Hello", " there"], usage10()));
    tts.push(wav_reply().reset_after_body());
    let c = s.ok("complete_prompt", call(0.0009)).await;
    assert_eq!(c["answer"], "Hello there");
    let e = c["audio"]["error"].as_str().unwrap_or_default();
    assert!(
        e.contains("budget_limit") && e.contains("failed attempt"),
        "{}",
        c["audio"]
    );
    assert_eq!(tts.requests().len(), 1, "not retried");
    assert_usd(&c["audio"]["cost_usd"], speech_cost);
    assert!(c["audio"]["cost_usd"].as_f64().unwrap() + c["cost_usd"].as_f64().unwrap() <= 0.0009);
    s.stop().await;
}

/// One model's quota, hit by several calls, does not open the provider's
/// breaker: its other models keep answering. (Each 429 counted, so two
/// calls to Gemini Pro over its quota sent every later call elsewhere.)
#[tokio::test]
async fn one_models_rate_limit_does_not_shut_the_provider() {
    let gemini = FakeProvider::start(gemini_sse(
        "gemini-3.5-flash-lite",
        &["from flash"],
        json!({"promptTokenCount": 10, "candidatesTokenCount": 5, "totalTokenCount": 15}),
    ))
    .await;
    for _ in 0..2 {
        gemini.push(
            Reply::json(
                429,
                json!({"error": {"code": 429, "status": "RESOURCE_EXHAUSTED",
                    "message": "Quota exceeded for metric: generate_content_requests, model: gemini-3.1-pro"}}),
            )
            .header("retry-after", "3600"),
        );
    }
    let deepseek = FakeProvider::start(openai_sse(
        "deepseek-v3.2",
        &["from deepseek"],
        json!({"prompt_tokens": 10, "completion_tokens": 5}),
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.toml");
    std::fs::write(
        &cfg,
        "breaker_threshold = 2\n[routing]\nthresholds = [0.0, 0.8, 0.9]\n[routing.tiers]\n\
         cheap = [\"gemini/gemini-2.5-flash-lite\", \"deepseek/deepseek-v3.2\"]\n",
    )
    .unwrap();
    let s = spawn(
        dir.path(),
        &[
            ("COST_OPTIMIZER_CONFIG", cfg.display().to_string()),
            ("GEMINI_API_KEY", FAKE_KEY.into()),
            ("GEMINI_BASE_URL", gemini.base.clone()),
            ("DEEPSEEK_API_KEY", FAKE_KEY.into()),
            ("DEEPSEEK_BASE_URL", deepseek.base.clone()),
        ],
    )
    .await;
    for _ in 0..2 {
        let e = s
            .err(
                "complete_prompt",
                json!({"prompt": "hi", "force_model": "gemini/gemini-3.1-pro-preview"}),
            )
            .await;
        assert!(e.contains("rate"), "{e}");
    }
    let c = s
        .ok(
            "complete_prompt",
            json!({"prompt": "Summarize the plot of Hamlet in two sentences."}),
        )
        .await;
    assert_eq!(c["answer"], "from flash", "{c}");
    assert!(deepseek.requests().is_empty());
    s.stop().await;
}
