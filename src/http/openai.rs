//! The OpenAI-compatible API: `POST /v1/chat/completions` (plain and SSE
//! streaming) and `GET /v1/models`, so any tool that speaks OpenAI gets the
//! routing, the budgets and the ledger without code changes.
//!
//! Every call goes through [`Optimizer::complete`], exactly as an MCP
//! `complete_prompt` does. What does not map one to one:
//!
//! - **Conversations.** The core sends one prompt and an optional system
//!   prompt. `system`/`developer` messages before the first turn become the
//!   system prompt (joined by blank lines). A single user turn is sent as
//!   is; several turns are flattened into one prompt as a transcript
//!   (`User: …`, `Assistant: …`), which every model understands but which
//!   is not the provider's native multi-turn format. A system message
//!   later in the conversation stays where it was, as a `System: …` turn:
//!   moved to the front it would read as standing before the turns it
//!   came after (an instruction such as "from now on, answer in French").
//! - **Model.** `auto` (or no model) routes by complexity; anything else is
//!   honoured as `force_model` (`provider/model`, or a bare catalog id).
//! - **Sampling options.** `temperature`, `top_p` and `seed` are passed on
//!   (validated to OpenAI's ranges; each provider gets what its API has);
//!   the penalties and the like are accepted and ignored; `n > 1`, `stop`,
//!   tools and non-text content are refused with 400.
//! - **Extensions** in the body: `tier`, `provider`, `budget_limit` (USD),
//!   `prefer` (`cost` or `quality`: which tier a score near a boundary takes).
//! - **Streaming.** The response starts when the first answer text arrives
//!   (or the call ends), so its headers name the model that is answering
//!   (`x-routed-model`, `x-routed-provider`, `x-routed-tier`, `x-complexity`,
//!   `x-ledger-request-id`), and a call refused before any text (budget,
//!   bad model, every provider down) gets the same HTTP status and error
//!   body as without streaming. The cost is only known at the end, so it
//!   comes in the last chunk (`x_optimizer`). If a provider fails after part
//!   of its answer was streamed and the call falls back to another, the
//!   text already sent cannot be withdrawn: the stream ends with an `error`
//!   event.

use std::sync::Arc;

use axum::Extension;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::optimizer::{CompleteArgs, Completion, Optimizer, ToolError};
use crate::providers::{AttemptRoute, StreamSink};

use super::AppState;
use super::auth::Caller;

/// An error in OpenAI's body format: `{"error": {message, type, param, code}}`.
pub fn error_response(
    status: StatusCode,
    message: &str,
    kind: &str,
    code: Option<&str>,
) -> Response {
    (
        status,
        axum::Json(json!({
            "error": {"message": message, "type": kind, "param": null, "code": code}
        })),
    )
        .into_response()
}

/// Maps a core error to the status and error type OpenAI clients expect.
/// A budget refusal is 402, not 429: OpenAI clients retry 429 on their own,
/// and retrying cannot make a spent budget pass.
pub fn tool_error_response(e: &ToolError) -> Response {
    let msg = crate::secrets::redact(&e.to_string());
    match e {
        // An unknown model is 404 as at OpenAI; a known one that cannot be
        // used as asked (another provider, a contradicting tier, a prompt
        // past its window) is a bad request.
        ToolError::Invalid(m)
            if m.starts_with("force_model: ")
                && (m.contains("unknown model") || m.contains("is not enabled")) =>
        {
            error_response(
                StatusCode::NOT_FOUND,
                &msg,
                "invalid_request_error",
                Some("model_not_found"),
            )
        }
        ToolError::Invalid(_) => {
            error_response(StatusCode::BAD_REQUEST, &msg, "invalid_request_error", None)
        }
        // OpenAI's own status and code, which clients and frameworks look
        // for to shorten the prompt (a 502 read as a server fault).
        ToolError::ContextTooLong(_) => error_response(
            StatusCode::BAD_REQUEST,
            &msg,
            "invalid_request_error",
            Some("context_length_exceeded"),
        ),
        ToolError::BudgetRefused(_) => error_response(
            StatusCode::PAYMENT_REQUIRED,
            &msg,
            "insufficient_quota",
            Some("budget_exceeded"),
        ),
        // The core already retried and fell back; OpenAI's SDKs retry
        // every 5xx twice more on their own unless told not to, which would
        // repeat all of that, and an attempt cut off after the provider
        // accepted it (a timeout on a long answer) is billed each time.
        ToolError::ProviderFailed(_) => {
            let mut r = error_response(
                StatusCode::BAD_GATEWAY,
                &msg,
                "api_error",
                Some("provider_failed"),
            );
            r.headers_mut()
                .insert("x-should-retry", HeaderValue::from_static("false"));
            r
        }
        // Capacity, not failure: OpenAI clients back off and retry these.
        ToolError::ProvidersBusy {
            rate_limited,
            retry_after_secs,
            ..
        } => {
            let mut r = if *rate_limited {
                error_response(
                    StatusCode::TOO_MANY_REQUESTS,
                    &msg,
                    "rate_limit_error",
                    Some("rate_limit_exceeded"),
                )
            } else {
                error_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &msg,
                    "api_error",
                    Some("overloaded"),
                )
            };
            if let Some(secs) = retry_after_secs {
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(*secs));
            }
            r
        }
        ToolError::Ledger(_) => error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &msg,
            "api_error",
            Some("ledger_unavailable"),
        ),
    }
}

/// True when the `Content-Type` is `application/json` (parameters and
/// case aside).
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
}

fn bad_request(msg: impl AsRef<str>) -> Response {
    error_response(
        StatusCode::BAD_REQUEST,
        msg.as_ref(),
        "invalid_request_error",
        None,
    )
}

#[derive(Debug, Deserialize)]
struct ChatBody {
    #[serde(default)]
    model: Option<String>,
    messages: Vec<Message>,
    #[serde(default)]
    max_tokens: Option<i64>,
    #[serde(default)]
    max_completion_tokens: Option<i64>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    n: Option<u32>,
    #[serde(default)]
    tools: Option<Value>,
    #[serde(default)]
    functions: Option<Value>,
    #[serde(default)]
    response_format: Option<Value>,
    #[serde(default)]
    stop: Option<Value>,
    #[serde(default)]
    logprobs: Option<bool>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    top_p: Option<f64>,
    #[serde(default)]
    seed: Option<i64>,
    // Extensions.
    #[serde(default)]
    tier: Option<String>,
    #[serde(default)]
    provider: Option<String>,
    #[serde(default)]
    budget_limit: Option<f64>,
    #[serde(default)]
    prefer: Option<String>,
}

#[derive(Debug, Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

#[derive(Debug, Deserialize)]
struct Message {
    role: String,
    #[serde(default)]
    content: Option<Value>,
}

/// The text of a message's content: a string, or text parts.
fn content_text(i: usize, c: &Option<Value>) -> Result<String, String> {
    match c {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut out = Vec::new();
            for p in parts {
                match p.get("type").and_then(Value::as_str) {
                    Some("text") => out.push(
                        p.get("text")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_string(),
                    ),
                    other => {
                        return Err(format!(
                            "messages[{i}].content: only text parts are supported, got {:?}",
                            other.unwrap_or("no type")
                        ));
                    }
                }
            }
            Ok(out.join("\n"))
        }
        Some(_) => Err(format!(
            "messages[{i}].content must be a string or an array of text parts"
        )),
    }
}

/// Splits the messages into the core's system prompt and prompt (see the
/// module docs for how conversations are flattened).
fn flatten(messages: &[Message]) -> Result<(Option<String>, String), String> {
    let mut system = Vec::new();
    let mut turns: Vec<(&str, String)> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let text = content_text(i, &m.content)?;
        match m.role.as_str() {
            "system" | "developer" if turns.is_empty() => system.push(text),
            "system" | "developer" => turns.push(("System", text)),
            "user" => turns.push(("User", text)),
            "assistant" => turns.push(("Assistant", text)),
            "tool" | "function" => turns.push(("Tool result", text)),
            other => return Err(format!("messages[{i}].role {other:?} is not supported")),
        }
    }
    let system = (!system.is_empty()).then(|| system.join("\n\n"));
    // As the message says: a user turn, not only tool results or an
    // assistant's words (which were sent on as if someone had asked).
    if !turns.iter().any(|(who, _)| *who == "User") {
        return Err("messages must contain at least one user message".into());
    }
    let prompt = match turns.as_slice() {
        [("User", only)] => only.clone(),
        many => many
            .iter()
            .map(|(who, text)| format!("{who}: {text}"))
            .collect::<Vec<_>>()
            .join("\n\n"),
    };
    Ok((system, prompt))
}

/// OpenAI's name for why the answer ended, from the provider's: a
/// length cut is `length`, a safety stop `content_filter` (OpenAI-style
/// `content_filter`, Gemini `SAFETY` / `RECITATION` / `BLOCKLIST` /
/// `PROHIBITED_CONTENT` / `SPII`, Anthropic `refusal`), so a client does not
/// take a partial, filtered answer for a complete one.
fn finish_reason(c: &Completion) -> &'static str {
    match c.finish_reason.as_deref().map(str::to_ascii_lowercase) {
        Some(r) if r.contains("max") || r.contains("length") => "length",
        Some(r)
            if [
                "filter",
                "safety",
                "recitation",
                "refusal",
                "blocklist",
                "prohibited",
                "spii",
            ]
            .iter()
            .any(|k| r.contains(k)) =>
        {
            "content_filter"
        }
        _ => "stop",
    }
}

fn usage_json(c: &Completion) -> Value {
    let prompt = c.tokens.input + c.tokens.cached + c.tokens.cache_write;
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": c.tokens.output,
        "total_tokens": prompt + c.tokens.output,
        "prompt_tokens_details": {"cached_tokens": c.tokens.cached},
        "completion_tokens_details": {"reasoning_tokens": c.tokens.reasoning},
    })
}

/// What the optimizer adds to a response body: the route and the money.
fn optimizer_json(c: &Completion) -> Value {
    json!({
        "provider": c.provider.as_str(),
        "model": c.model,
        "tier": c.tier.map(|t| t.as_str()),
        "complexity": c.complexity.score,
        "cost_usd": c.cost_usd,
        "failed_attempts_cost_usd": c.failed_attempts_cost_usd,
        "cost_source": c.cost_source,
        "savings_usd": c.savings_usd,
        "request_id": c.request_id,
        "recorded": c.recorded,
        "warning": c.warning,
    })
}

fn now_secs() -> i64 {
    crate::optimizer::system_clock()() / 1000
}

fn route_headers(h: &mut HeaderMap, c: &Completion) {
    insert_headers(
        h,
        [
            // What the call cost the budget: attempts cut off after the
            // provider accepted them are charged too (same request id).
            (
                "x-cost-usd",
                format!("{:.9}", c.cost_usd + c.failed_attempts_cost_usd),
            ),
            ("x-routed-model", c.model.clone()),
            ("x-routed-provider", c.provider.as_str().to_string()),
            (
                "x-routed-tier",
                c.tier.map_or("forced", |t| t.as_str()).to_string(),
            ),
            ("x-complexity", format!("{:.3}", c.complexity.score)),
            ("x-ledger-request-id", c.request_id.clone()),
        ],
    );
}

fn insert_headers<const N: usize>(h: &mut HeaderMap, pairs: [(&'static str, String); N]) {
    for (k, v) in pairs {
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.insert(HeaderName::from_static(k), v);
        }
    }
}

/// `POST /v1/chat/completions`.
pub async fn chat_completions(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    // JSON only, as the body is: a web page can send a `text/plain` POST
    // to another port of this machine without asking first (no CORS
    // preflight), and on a loopback server without keys that would be a
    // paid call made by whatever page the user has open.
    if !is_json(&headers) {
        return error_response(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send the body as JSON, with Content-Type: application/json",
            "invalid_request_error",
            None,
        );
    }
    // An object first: serde reads a struct from an array too, and its
    // complaint ("expected struct ChatBody with 20 elements") names our
    // type, not the client's mistake.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return bad_request(
            "invalid request body: a JSON object is expected, such as {\"model\": \"auto\", \"messages\": [...]}",
        );
    }
    let req: ChatBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return bad_request(format!("invalid request body: {e}")),
    };
    if req.n.is_some_and(|n| n != 1) {
        return bad_request("n: only one choice per request is supported");
    }
    if req.tools.is_some() || req.functions.is_some() {
        return bad_request("tools and functions are not supported by this proxy");
    }
    // Said, not silently dropped: a client asking for JSON or a stop
    // sequence and given prose would misread the answer.
    if let Some(f) = &req.response_format
        && f.get("type").and_then(Value::as_str).unwrap_or("text") != "text"
    {
        return bad_request(
            "response_format other than text is not supported by this proxy (ask for JSON in the prompt)",
        );
    }
    let empty = |v: &Value| v.is_null() || v.as_str().is_some_and(str::is_empty);
    if req.stop.as_ref().is_some_and(|s| match s {
        Value::Array(a) => !a.iter().all(empty),
        s => !empty(s),
    }) {
        return bad_request("stop sequences are not supported by this proxy");
    }
    if req.logprobs == Some(true) {
        return bad_request("logprobs are not supported by this proxy");
    }
    let (system, prompt) = match flatten(&req.messages) {
        Ok(x) => x,
        Err(e) => return bad_request(e),
    };
    // A plain key always spends its own budget. OpenAI's `user` field is
    // an end-user tag many clients (chat UIs) set on every request, so it
    // picks the budget only when the caller may act for anyone *and* the
    // user is known here (a budget, a key, earlier calls): a made-up tag
    // must not move spending off the budget the operator set onto a fresh
    // default one.
    let tagged = match req.user.as_deref().map(str::trim).filter(|u| !u.is_empty()) {
        Some(u) if caller.admin => match state.core.knows_user(u) {
            Ok(true) => Some(u),
            Ok(false) => None,
            Err(e) => return tool_error_response(&e),
        },
        _ => None,
    };
    let user = match caller.user_for(tagged) {
        Ok(u) => u,
        Err(e) => {
            return error_response(StatusCode::FORBIDDEN, &e, "permission_error", None);
        }
    };
    let model = req
        .model
        .as_deref()
        .map(str::trim)
        .filter(|m| !m.is_empty() && *m != "auto")
        .map(str::to_string);
    if !caller.admin
        && let Err(e) = state.core.require_priced_model(model.as_deref())
    {
        return tool_error_response(&e);
    }
    let args = CompleteArgs {
        prompt,
        system,
        max_tokens: req.max_completion_tokens.or(req.max_tokens),
        budget_limit: req.budget_limit,
        force_provider: req.provider,
        force_model: model,
        tier: req.tier,
        prefer: req.prefer,
        user_id: user,
        speak: None,
        voice: None,
        language: None,
        temperature: req.temperature,
        top_p: req.top_p,
        seed: req.seed,
        feedback: None,
        feedback_owner: None,
    };
    if req.stream.unwrap_or(false) {
        let include_usage = req.stream_options.is_some_and(|o| o.include_usage);
        return stream(state, args, include_usage).await;
    }
    let _in_flight = state.in_flight.start();
    // Declared before the call's future, so dropped after it: the call's
    // guard has recorded its charge by the time this checks the thresholds.
    let alerts = AlertsIfLeft::armed(&state.core, &args);
    let result = state.core.complete(&args, &crate::providers::NoSink).await;
    alerts.disarm();
    match result {
        Ok(c) => {
            state.metrics.record_completion(&c);
            let body = json!({
                "id": format!("chatcmpl-{}", c.request_id),
                "object": "chat.completion",
                "created": now_secs(),
                "model": c.model,
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": c.answer},
                    "finish_reason": finish_reason(&c),
                }],
                "usage": usage_json(&c),
                "x_optimizer": optimizer_json(&c),
            });
            let mut resp = axum::Json(body).into_response();
            route_headers(resp.headers_mut(), &c);
            resp
        }
        Err(e) => {
            state.metrics.call_error(&e);
            tracing::info!(error = %e, "chat completion refused");
            tool_error_response(&e)
        }
    }
}

enum Event {
    /// An attempt is starting: the route headers, should its text come first.
    Attempt(HeaderMap),
    Text(String),
    Done(Box<Result<Completion, ToolError>>),
}

/// Forwards streamed answer text (and where each attempt goes) to the
/// response.
struct ChannelSink(mpsc::UnboundedSender<Event>);

impl StreamSink for ChannelSink {
    fn on_text(&self, delta: &str) {
        if !delta.is_empty() {
            let _ = self.0.send(Event::Text(delta.to_string()));
        }
    }

    fn on_attempt(&self, r: &AttemptRoute<'_>) {
        let mut h = HeaderMap::new();
        insert_headers(
            &mut h,
            [
                ("x-routed-model", r.model.to_string()),
                ("x-routed-provider", r.provider.as_str().to_string()),
                ("x-routed-tier", r.tier.to_string()),
                ("x-complexity", format!("{:.3}", r.score)),
                ("x-ledger-request-id", r.request_id.to_string()),
            ],
        );
        let _ = self.0.send(Event::Attempt(h));
    }

    fn is_final(&self) -> bool {
        true
    }
}

/// Checks the budget thresholds once a call is dropped unfinished (its
/// client hung up): the call's guard recorded the attempt at an estimate,
/// and none of the call's own code ran on to alert on that charge, so
/// without this a crossing would be alerted only at the next call, which
/// may never come. The MCP handler does the same after a cancellation.
struct AlertsIfLeft {
    armed: Option<(Arc<Optimizer>, Option<String>)>,
}

impl AlertsIfLeft {
    fn armed(core: &Arc<Optimizer>, args: &CompleteArgs) -> Self {
        AlertsIfLeft {
            armed: Some((core.clone(), args.user_id.clone())),
        }
    }

    /// The call ended (answered or refused): it alerted on its own.
    fn disarm(mut self) {
        self.armed = None;
    }
}

impl Drop for AlertsIfLeft {
    fn drop(&mut self) {
        let Some((core, user)) = self.armed.take() else {
            return;
        };
        // The check reads and writes the ledger: off the async workers.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn_blocking(move || core.alerts_after_cancel(user.as_deref()));
        }
    }
}

/// Aborts the call when the response stream is dropped (the client went
/// away): dropping the core's future stops the provider request and
/// releases the budget hold, as a cancelled MCP call does.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn sse(data: &Value) -> String {
    format!("data: {data}\n\n")
}

struct StreamState {
    rx: mpsc::UnboundedReceiver<Event>,
    /// The event that started the response, sent before reading more.
    first: Option<Event>,
    _task: AbortOnDrop,
    id: String,
    created: i64,
    model: String,
    sent: String,
    include_usage: bool,
    done: bool,
    /// The server's [`super::AppState::abandoned`].
    abandoned: tokio_util::sync::CancellationToken,
}

impl StreamState {
    fn chunk(&self, delta: Value, finish: Option<&str>) -> Value {
        json!({
            "id": self.id, "object": "chat.completion.chunk", "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        })
    }

    /// The closing events of a finished call.
    fn finish(&mut self, result: Result<Completion, ToolError>) -> String {
        let mut out = String::new();
        match result {
            Ok(c) => {
                self.model = c.model.clone();
                if let Some(rest) = c.answer.strip_prefix(self.sent.as_str()) {
                    // Providers that answered without streaming (or text the
                    // sink did not see) arrive here in one piece.
                    if !rest.is_empty() {
                        out.push_str(&sse(&self.chunk(json!({"content": rest}), None)));
                    }
                    let mut last = self.chunk(json!({}), Some(finish_reason(&c)));
                    last["x_optimizer"] = optimizer_json(&c);
                    out.push_str(&sse(&last));
                    if self.include_usage {
                        out.push_str(&sse(&json!({
                            "id": self.id, "object": "chat.completion.chunk",
                            "created": self.created, "model": self.model,
                            "choices": [], "usage": usage_json(&c),
                            "x_optimizer": optimizer_json(&c),
                        })));
                    }
                } else {
                    tracing::warn!(
                        request_id = c.request_id,
                        "a provider failed mid-stream and the call fell back; the streamed text is inconsistent"
                    );
                    out.push_str(&sse(&json!({"error": {
                        "message": format!(
                            "a provider failed after part of the answer was streamed, and the call was \
                             answered by {} instead; the text streamed so far is not that answer. \
                             Retry without streaming.", c.model),
                        "type": "api_error", "param": null, "code": "fallback_mid_stream",
                    }})));
                }
            }
            Err(e) => {
                tracing::info!(error = %e, "streamed chat completion refused");
                let (kind, code) = match &e {
                    ToolError::Invalid(_) => ("invalid_request_error", None),
                    ToolError::BudgetRefused(_) => ("insufficient_quota", Some("budget_exceeded")),
                    ToolError::ProviderFailed(_) => ("api_error", Some("provider_failed")),
                    ToolError::ContextTooLong(_) => {
                        ("invalid_request_error", Some("context_length_exceeded"))
                    }
                    ToolError::ProvidersBusy {
                        rate_limited: true, ..
                    } => ("rate_limit_error", Some("rate_limit_exceeded")),
                    ToolError::ProvidersBusy { .. } => ("api_error", Some("overloaded")),
                    ToolError::Ledger(_) => ("api_error", Some("ledger_unavailable")),
                };
                out.push_str(&sse(&json!({"error": {
                    "message": crate::secrets::redact(&e.to_string()),
                    "type": kind, "param": null, "code": code,
                }})));
            }
        }
        out.push_str("data: [DONE]\n\n");
        out
    }
}

/// The SSE events after the opening role chunk: each piece of answer text
/// as it arrives, then the closing events ([`StreamState::finish`]) and
/// `[DONE]`, also when the call's task ended without a result.
fn answer_events(
    st: StreamState,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    futures_util::stream::unfold(st, |mut st| async move {
        if st.done {
            return None;
        }
        let bytes = loop {
            let ev = match st.first.take() {
                Some(ev) => ev,
                None => tokio::select! {
                    biased;
                    ev = st.rx.recv() => match ev {
                        Some(ev) => ev,
                        // The call's task ended without its result (it
                        // panicked): close as a failure, or the client would
                        // take the text so far for a whole answer.
                        None => Event::Done(Box::new(Err(ToolError::ProviderFailed(
                            "the call stopped without a result (an internal error); \
                             the text streamed so far may be incomplete"
                                .into(),
                        )))),
                    },
                    () = st.abandoned.cancelled() => Event::Done(Box::new(Err(
                        ToolError::ProviderFailed(
                            "the server shut down before the answer was complete; \
                             the text streamed so far is incomplete. Retry the request."
                                .into(),
                        ),
                    ))),
                },
            };
            match ev {
                // A fallback after text was sent: `finish` says so.
                Event::Attempt(_) => continue,
                Event::Text(t) => {
                    let s = sse(&st.chunk(json!({"content": t}), None));
                    st.sent.push_str(&t);
                    break s;
                }
                Event::Done(r) => {
                    st.done = true;
                    break st.finish(*r);
                }
            }
        };
        Some((Ok::<_, std::io::Error>(Bytes::from(bytes)), st))
    })
}

/// The SSE response of a `stream: true` request. It starts when the first
/// answer text arrives or the call ends, so the headers can name the route
/// and an early refusal can keep its HTTP status.
async fn stream(state: AppState, args: CompleteArgs, include_usage: bool) -> Response {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let core = state.core.clone();
    let metrics = state.metrics.clone();
    let in_flight = state.in_flight.start();
    // Held from here on: if the client leaves while we wait for the first
    // text, dropping this future aborts the call.
    let task = AbortOnDrop(tokio::spawn(async move {
        let _in_flight = in_flight;
        let alerts = AlertsIfLeft::armed(&core, &args);
        let sink = ChannelSink(tx.clone());
        let result = core.complete(&args, &sink).await;
        alerts.disarm();
        match &result {
            Ok(c) => metrics.record_completion(c),
            Err(e) => metrics.call_error(e),
        }
        let _ = tx.send(Event::Done(Box::new(result)));
    }));
    let mut headers = HeaderMap::new();
    let first = loop {
        match rx.recv().await {
            Some(Event::Attempt(h)) => headers = h,
            Some(Event::Done(r)) => match *r {
                Err(e) => {
                    tracing::info!(error = %e, "streamed chat completion refused");
                    return tool_error_response(&e);
                }
                Ok(c) => {
                    // Answered before any text streamed: the whole route,
                    // cost included, fits in the headers.
                    headers.clear();
                    route_headers(&mut headers, &c);
                    break Event::Done(Box::new(Ok(c)));
                }
            },
            Some(text) => break text,
            None => {
                return error_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the call ended without a result",
                    "api_error",
                    None,
                );
            }
        }
    };
    let model = headers
        .get("x-routed-model")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("auto")
        .to_string();
    let st = StreamState {
        rx,
        first: Some(first),
        _task: task,
        // The ledger's request id, as a non-streamed reply's id carries it,
        // so a streamed answer can be traced to its ledger rows too.
        id: format!(
            "chatcmpl-{}",
            headers
                .get("x-ledger-request-id")
                .and_then(|v| v.to_str().ok())
                .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned)
        ),
        created: now_secs(),
        model,
        sent: String::new(),
        include_usage,
        done: false,
        abandoned: state.abandoned.clone(),
    };
    let role = sse(&st.chunk(json!({"role": "assistant", "content": ""}), None));
    let head =
        futures_util::stream::once(async move { Ok::<_, std::io::Error>(Bytes::from(role)) });
    let rest = answer_events(st);
    let body = Body::from_stream(futures_util::StreamExt::chain(head, rest));
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    (headers, body).into_response()
}

/// `GET /v1/models`: `auto`, then every catalog model of the enabled
/// providers.
pub async fn models(State(state): State<AppState>) -> Response {
    match model_list(&state) {
        Ok(data) => axum::Json(json!({"object": "list", "data": data})).into_response(),
        Err(e) => tool_error_response(&e),
    }
}

/// `GET /v1/models/{id}` (the SDKs' `models.retrieve`); ids hold slashes.
pub async fn model(
    State(state): State<AppState>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Response {
    // Whatever the chat endpoint accepts: `auto`, bare names, provider
    // aliases, local Ollama models and OpenRouter/HuggingFace models the
    // catalog does not price, of an enabled provider.
    if id == "auto" {
        return match model_list(&state) {
            Ok(data) => axum::Json(data[0].clone()).into_response(),
            Err(e) => tool_error_response(&e),
        };
    }
    let catalog = state.core.catalog();
    let found = catalog
        .resolve(&id)
        .ok()
        .and_then(|canonical| catalog.get_or_unpriced(&canonical))
        .filter(|m| state.core.registry().is_enabled(m.provider));
    match found {
        Some(m) => axum::Json(json!({
            "id": m.id, "object": "model", "created": 0, "owned_by": m.provider.as_str(),
        }))
        .into_response(),
        None => error_response(
            StatusCode::NOT_FOUND,
            &format!("no enabled model {id:?} (GET /v1/models lists them)"),
            "invalid_request_error",
            Some("model_not_found"),
        ),
    }
}

/// `auto` and every catalog model of an enabled provider (all of them:
/// `check_model_costs` shows the 50 cheapest), as OpenAI model objects.
fn model_list(state: &AppState) -> Result<Vec<Value>, ToolError> {
    let mut data = vec![json!({
        "id": "auto", "object": "model", "created": 0, "owned_by": "ai-cost-optimizer",
    })];
    let registry = state.core.registry();
    for m in state
        .core
        .catalog()
        .models()
        .filter(|m| registry.is_enabled(m.provider))
    {
        data.push(json!({
            "id": m.id, "object": "model", "created": 0,
            "owned_by": m.provider.as_str(),
        }));
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msgs(v: Value) -> Vec<Message> {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn one_user_turn_is_sent_as_is_and_systems_are_joined() {
        let (system, prompt) = flatten(&msgs(json!([
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "No lists."}]},
            {"role": "user", "content": "Hi"}
        ])))
        .unwrap();
        assert_eq!(system.as_deref(), Some("Be brief.\n\nNo lists."));
        assert_eq!(prompt, "Hi");
    }

    #[test]
    fn conversations_become_a_transcript() {
        let (system, prompt) = flatten(&msgs(json!([
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4"},
            {"role": "user", "content": "times 3?"}
        ])))
        .unwrap();
        assert_eq!(system, None);
        assert_eq!(prompt, "User: 2+2?\n\nAssistant: 4\n\nUser: times 3?");
    }

    /// A system message after the first turn keeps its place: at the front
    /// it would read as an instruction given before the turns it followed.
    #[test]
    fn a_late_system_message_stays_in_place() {
        let (system, prompt) = flatten(&msgs(json!([
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Capital of France?"},
            {"role": "assistant", "content": "Paris."},
            {"role": "developer", "content": "From now on, answer in French."},
            {"role": "user", "content": "And of Spain?"}
        ])))
        .unwrap();
        assert_eq!(system.as_deref(), Some("Be brief."));
        assert_eq!(
            prompt,
            "User: Capital of France?\n\nAssistant: Paris.\n\nSystem: From now on, answer in French.\n\nUser: And of Spain?"
        );
        // After a lone user turn it makes a transcript too.
        let (system, prompt) = flatten(&msgs(json!([
            {"role": "user", "content": "Hi"},
            {"role": "system", "content": "Reply in one word."}
        ])))
        .unwrap();
        assert_eq!(system, None);
        assert_eq!(prompt, "User: Hi\n\nSystem: Reply in one word.");
    }

    /// A call whose task ends without its result (a panic) closes the
    /// stream with an error event and `[DONE]`: a stream that just stopped
    /// would pass the text so far off as the whole answer.
    #[tokio::test]
    async fn a_stream_whose_call_vanished_ends_with_an_error() {
        let (tx, rx) = mpsc::unbounded_channel();
        tx.send(Event::Text("Half an ans".into())).unwrap();
        drop(tx);
        let st = StreamState {
            rx,
            first: None,
            _task: AbortOnDrop(tokio::spawn(async {})),
            id: "chatcmpl-test".into(),
            created: 0,
            model: "auto".into(),
            sent: String::new(),
            include_usage: true,
            done: false,
            abandoned: tokio_util::sync::CancellationToken::new(),
        };
        let parts: Vec<Bytes> = futures_util::StreamExt::collect::<Vec<_>>(answer_events(st))
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        let text: String = parts
            .iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect();
        assert!(text.contains("Half an ans"), "{text}");
        assert!(
            text.contains("\"code\":\"provider_failed\"") && text.contains("internal error"),
            "{text}"
        );
        assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    }

    #[test]
    fn unsupported_input_is_refused_with_the_field() {
        assert!(flatten(&msgs(json!([{"role": "system", "content": "x"}]))).is_err());
        let e = flatten(&msgs(
            json!([{"role": "user", "content": [{"type": "image_url"}]}]),
        ))
        .unwrap_err();
        assert!(e.contains("messages[0].content"), "{e}");
        assert!(flatten(&msgs(json!([{"role": "robot", "content": "x"}]))).is_err());
    }
}
