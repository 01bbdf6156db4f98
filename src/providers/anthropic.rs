//! Anthropic's Messages API.

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{Value, json};

use super::openai_compat::is_event_stream;
use super::stream::{self, SseEvent, StreamSink};
use super::{
    ChatRequest, ChatResponse, ErrorKind, Provider, ProviderConfig, ProviderError, ProviderId,
    ProviderSpec, Usage, token_count,
};

/// Anthropic: `ANTHROPIC_API_KEY`, base `ANTHROPIC_BASE_URL` (host part; the
/// client appends `/v1/messages`).
pub static SPEC: ProviderSpec = ProviderSpec {
    id: ProviderId::Anthropic,
    display_name: "Anthropic",
    key_envs: &["ANTHROPIC_API_KEY"],
    base_url_env: "ANTHROPIC_BASE_URL",
    default_base_url: "https://api.anthropic.com",
    key_help_url: "https://console.anthropic.com/settings/keys",
    build: Some(build),
};

/// The API version this client speaks.
const API_VERSION: &str = "2023-06-01";

fn build(config: ProviderConfig) -> Arc<dyn Provider> {
    Arc::new(Anthropic { config })
}

/// A Messages API client.
pub struct Anthropic {
    config: ProviderConfig,
}

/// Whether `model` takes `temperature` / `top_p`. Claude Opus 4.7 and the
/// models after it refuse them (400 "`temperature` is deprecated for this
/// model"), which failed the whole call (a bad request has no fallback), so
/// they are sent only to the Claude 2, 3 and 4.0–4.6 models known to take
/// them; a name this cannot read (an Anthropic-compatible server's own
/// models) gets none either. Leaving them out costs determinism, never the
/// answer.
fn accepts_sampling(model: &str) -> bool {
    let m = model
        .rsplit('/')
        .next()
        .unwrap_or(model)
        .to_ascii_lowercase();
    let Some(rest) = m.strip_prefix("claude-") else {
        return false;
    };
    // Older names put the version first: claude-3-5-sonnet-20241022.
    if rest.starts_with("instant") || rest.starts_with('2') || rest.starts_with('3') {
        return true;
    }
    // Newer ones: claude-<family>-<major>[-<minor>][-<yyyymmdd>].
    let mut parts = rest.split('-').skip(1);
    let Some(major) = parts.next().and_then(|p| p.parse::<u32>().ok()) else {
        return false;
    };
    let minor = parts
        .next()
        .filter(|p| p.len() <= 2)
        .and_then(|p| p.parse::<u32>().ok())
        .unwrap_or(0);
    (major, minor) < (4, 7)
}

#[async_trait]
impl Provider for Anthropic {
    fn id(&self) -> ProviderId {
        ProviderId::Anthropic
    }

    async fn complete(
        &self,
        req: &ChatRequest,
        sink: &dyn StreamSink,
    ) -> Result<ChatResponse, ProviderError> {
        let mut body = json!({
            "model": req.model,
            "max_tokens": req.max_tokens,
            "messages": [{"role": "user", "content": req.prompt}],
            "stream": true,
        });
        if let Some(system) = &req.system {
            body["system"] = json!(system);
        }
        // Anthropic's range is 0-1 (OpenAI's 0-2), and its 4.x models
        // refuse temperature and top_p together: temperature wins.
        match (req.sampling.temperature, req.sampling.top_p) {
            _ if !accepts_sampling(&req.model) => {}
            (Some(t), _) => body["temperature"] = json!(t.clamp(0.0, 1.0)),
            (None, Some(p)) => body["top_p"] = json!(p),
            (None, None) => {}
        }
        let mut builder = self
            .config
            .http
            .post(format!("{}/v1/messages", self.config.base_url))
            .header("anthropic-version", API_VERSION);
        if let Some(key) = &self.config.api_key {
            builder = builder.header("x-api-key", key.expose());
        }
        let resp = stream::send(ProviderId::Anthropic, builder, &body).await?;
        // From here on the request was accepted: a failure may be billed.
        if !is_event_stream(&resp) {
            return stream::read_json(ProviderId::Anthropic, resp)
                .await
                .and_then(|reply| parse_response(&reply))
                .map_err(|e| e.after_acceptance(Usage::default()));
        }
        let mut st = StreamState::default();
        let driven = stream::drive_sse(
            ProviderId::Anthropic,
            resp,
            stream::reply_limit(req.max_tokens),
            self.config.idle,
            |ev| st.event(ev, sink),
        )
        .await;
        // `message_start` reports the input tokens: a stream cut off after
        // it is billed at least for those.
        let usage = st.usage;
        match driven {
            // `message_delta` carried the stop reason and the final usage:
            // only `message_stop` was lost.
            Err(e)
                if st.started
                    && st.stop_reason.is_some()
                    && stream::only_the_close_was_lost(&e) =>
            {
                st.stopped = true;
                st.finish().map_err(|e| e.after_acceptance(usage))
            }
            Err(e) => Err(e.after_acceptance(usage)),
            Ok(()) => st.finish().map_err(|e| e.after_acceptance(usage)),
        }
    }
}

/// What a Messages stream has delivered so far.
#[derive(Default)]
struct StreamState {
    text: String,
    model: String,
    usage: Usage,
    started: bool,
    stop_reason: Option<String>,
    stopped: bool,
}

impl StreamState {
    /// Handles one event; `Ok(true)` at `message_stop`.
    fn event(&mut self, ev: &SseEvent, sink: &dyn StreamSink) -> Result<bool, ProviderError> {
        let v = stream::json(ProviderId::Anthropic, &ev.data)?;
        let kind = ev
            .event
            .as_deref()
            .or_else(|| v.get("type").and_then(|t| t.as_str()))
            .unwrap_or_default();
        match kind {
            "message_start" => {
                self.started = true;
                if let Some(m) = v.pointer("/message/model").and_then(|m| m.as_str()) {
                    self.model = m.to_string();
                }
                if let Some(u) = v.pointer("/message/usage") {
                    self.usage = parse_usage(u);
                }
            }
            "content_block_delta" => match v.pointer("/delta/type").and_then(|t| t.as_str()) {
                Some("text_delta") => {
                    if let Some(t) = v.pointer("/delta/text").and_then(|t| t.as_str()) {
                        self.text.push_str(t);
                        sink.on_text(t);
                    }
                }
                Some("thinking_delta") => {
                    if let Some(t) = v.pointer("/delta/thinking").and_then(|t| t.as_str()) {
                        sink.on_reasoning(t);
                    }
                }
                _ => {}
            },
            "message_delta" => {
                if let Some(r) = v.pointer("/delta/stop_reason").and_then(|r| r.as_str()) {
                    self.stop_reason = Some(r.to_string());
                }
                // `usage` here is cumulative; newer API versions repeat the
                // input counts too, so take every field that is present.
                if let Some(u) = v.get("usage") {
                    let later = parse_usage(u);
                    self.usage.output_tokens = later.output_tokens.max(self.usage.output_tokens);
                    // A field given as `null` (the SDKs type them optional;
                    // a proxy may send them so) is absent, not zero.
                    let given = |k: &str| u.get(k).is_some_and(|v| !v.is_null());
                    if given("input_tokens") {
                        self.usage.input_tokens = later.input_tokens;
                    }
                    if given("cache_read_input_tokens") {
                        self.usage.cache_read_tokens = later.cache_read_tokens;
                    }
                    if given("cache_creation_input_tokens") {
                        self.usage.cache_write_tokens = later.cache_write_tokens;
                    }
                }
            }
            "message_stop" => {
                self.stopped = true;
                return Ok(true);
            }
            "error" => return Err(stream_error(&v)),
            _ => {} // ping, content_block_start/stop
        }
        Ok(false)
    }

    fn finish(self) -> Result<ChatResponse, ProviderError> {
        if !self.started || !self.stopped {
            return Err(stream::truncated(ProviderId::Anthropic, "message_stop"));
        }
        Ok(ChatResponse {
            text: self.text,
            model: self.model,
            usage: self.usage,
            provider_cost_usd: None,
            finish_reason: self.stop_reason,
        })
    }
}

/// An `error` event inside a 200 stream, mapped to the status the same
/// error would have had before the stream started.
fn stream_error(v: &Value) -> ProviderError {
    let status = match v.pointer("/error/type").and_then(|t| t.as_str()) {
        Some("overloaded_error") => 529,
        Some("rate_limit_error") => 429,
        Some("authentication_error") => 401,
        Some("permission_error") => 403,
        Some("billing_error") => 402,
        Some("invalid_request_error") => 400,
        Some("not_found_error") => 404,
        Some("request_too_large") => 413,
        Some("timeout_error") => 504,
        _ => 500,
    };
    ProviderError::from_http(
        ProviderId::Anthropic,
        status,
        &reqwest::header::HeaderMap::new(),
        v.to_string().as_bytes(),
    )
}

/// Reads a Messages API reply: text blocks joined, usage normalised.
pub fn parse_response(reply: &Value) -> Result<ChatResponse, ProviderError> {
    if reply.get("type").and_then(|t| t.as_str()) == Some("error") {
        let msg = reply
            .pointer("/error/message")
            .and_then(|m| m.as_str())
            .unwrap_or("error");
        return Err(ProviderError::new(
            ProviderId::Anthropic,
            ErrorKind::Server,
            Some(200),
            msg,
        ));
    }
    let content = reply
        .get("content")
        .and_then(|c| c.as_array())
        .ok_or_else(|| malformed("no content in the reply"))?;
    let text: String = content
        .iter()
        .filter(|b| b.get("type").and_then(|t| t.as_str()) == Some("text"))
        .filter_map(|b| b.get("text").and_then(|t| t.as_str()))
        .collect::<Vec<_>>()
        .join("");
    // No usage: the answer is kept and charged an estimate by the caller
    // (see `openai_compat`), not thrown away and paid for again elsewhere.
    let usage = reply
        .get("usage")
        .filter(|u| u.is_object())
        .map(parse_usage)
        .unwrap_or_default();
    Ok(ChatResponse {
        text,
        model: reply
            .get("model")
            .and_then(|m| m.as_str())
            .unwrap_or_default()
            .to_string(),
        usage,
        provider_cost_usd: None,
        finish_reason: reply
            .get("stop_reason")
            .and_then(|s| s.as_str())
            .map(str::to_string),
    })
}

/// Anthropic's `input_tokens` already exclude cache reads and writes;
/// `output_tokens` include thinking, which the API does not break out.
pub fn parse_usage(u: &Value) -> Usage {
    Usage {
        input_tokens: token_count(u.get("input_tokens")),
        cache_read_tokens: token_count(u.get("cache_read_input_tokens")),
        cache_write_tokens: token_count(u.get("cache_creation_input_tokens")),
        output_tokens: token_count(u.get("output_tokens")),
        reasoning_tokens: 0,
    }
}

fn malformed(what: &str) -> ProviderError {
    ProviderError::new(ProviderId::Anthropic, ErrorKind::Malformed, Some(200), what)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_goes_only_to_models_that_take_it() {
        for m in [
            "claude-3-5-sonnet-20241022",
            "claude-3-haiku-20240307",
            "claude-sonnet-4-20250514",
            "claude-opus-4-1-20250805",
            "claude-haiku-4-5",
            "anthropic/claude-sonnet-4-6",
            "claude-opus-4-6-20260205",
        ] {
            assert!(accepts_sampling(m), "{m}");
        }
        for m in [
            "claude-opus-4-7",
            "claude-opus-4-7-20260416",
            "claude-opus-4-8",
            "claude-sonnet-5",
            "claude-haiku-5-5",
            "claude-fable-5-1",
            "claude-mythos-preview",
            "deepseek-chat",
        ] {
            assert!(!accepts_sampling(m), "{m}");
        }
    }

    #[test]
    fn reads_text_and_cache_usage() {
        let r = parse_response(&json!({
            "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-haiku-4-5",
            "content": [{"type": "thinking", "thinking": "hmm"}, {"type": "text", "text": "Hi"}, {"type": "text", "text": "!"}],
            "stop_reason": "end_turn",
            "usage": {"input_tokens": 12, "output_tokens": 7, "cache_creation_input_tokens": 3, "cache_read_input_tokens": 40}
        }))
        .unwrap();
        assert_eq!(r.text, "Hi!");
        assert_eq!(r.usage.input_tokens, 12);
        assert_eq!(r.usage.cache_read_tokens, 40);
        assert_eq!(r.usage.cache_write_tokens, 3);
        assert_eq!(r.finish_reason.as_deref(), Some("end_turn"));
    }

    fn run_stream(raw: &str) -> Result<ChatResponse, ProviderError> {
        run_stream_into(raw, &stream::Recorder::default())
    }

    fn run_stream_into(raw: &str, sink: &stream::Recorder) -> Result<ChatResponse, ProviderError> {
        use super::super::stream::SseParser;
        let mut st = StreamState::default();
        let mut p = SseParser::default();
        for ev in p.push(raw.as_bytes()).into_iter().chain(p.finish()) {
            if st.event(&ev, sink)? {
                break;
            }
        }
        st.finish()
    }

    /// Thinking deltas are counted (billed output) but are not the answer.
    #[test]
    fn thinking_deltas_are_told_apart_from_text() {
        let raw = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-sonnet-4-6\",\"usage\":{\"input_tokens\":9,\"output_tokens\":1}}}\n\n\
            event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"thinking_delta\",\"thinking\":\"Let me see\"}}\n\n\
            event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"signature_delta\",\"signature\":\"EqQB\"}}\n\n\
            event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"text_delta\",\"text\":\"Four.\"}}\n\n\
            event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":30}}\n\n\
            event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
        let sink = stream::Recorder::default();
        let r = run_stream_into(raw, &sink).unwrap();
        assert_eq!(r.text, "Four.");
        assert_eq!(*sink.text.lock().unwrap(), "Four.");
        assert_eq!(*sink.reasoning.lock().unwrap(), "Let me see");
        assert_eq!(r.usage.output_tokens, 30);
    }

    const START: &str = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-haiku-4-5\",\"content\":[],\"usage\":{\"input_tokens\":25,\"cache_read_input_tokens\":100,\"output_tokens\":1}}}\n\n";

    #[test]
    fn stream_reads_usage_from_start_and_delta() {
        let raw = format!(
            "{START}event: ping\ndata: {{\"type\":\"ping\"}}\n\n\
             event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"Hi\"}}}}\n\n\
             event: message_delta\ndata: {{\"type\":\"message_delta\",\"delta\":{{\"stop_reason\":\"end_turn\"}},\"usage\":{{\"output_tokens\":15}}}}\n\n\
             event: message_stop\ndata: {{\"type\":\"message_stop\"}}\n\n"
        );
        let r = run_stream(&raw).unwrap();
        assert_eq!(r.text, "Hi");
        assert_eq!(r.usage.input_tokens, 25);
        assert_eq!(r.usage.cache_read_tokens, 100);
        assert_eq!(r.usage.output_tokens, 15);
    }

    /// A `message_delta` that gives the input counts as `null` keeps the
    /// ones `message_start` reported; given as numbers, they replace them.
    #[test]
    fn null_counts_in_message_delta_keep_the_start_usage() {
        let raw = |usage: &str| {
            format!(
                "{START}event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"Hi\"}}}}\n\n\
                 event: message_delta\ndata: {{\"type\":\"message_delta\",\"delta\":{{\"stop_reason\":\"end_turn\"}},\"usage\":{usage}}}\n\n\
                 event: message_stop\ndata: {{\"type\":\"message_stop\"}}\n\n"
            )
        };
        let r = run_stream(&raw(
            r#"{"input_tokens":null,"cache_read_input_tokens":null,"cache_creation_input_tokens":null,"output_tokens":800}"#,
        ))
        .unwrap();
        assert_eq!(
            (
                r.usage.input_tokens,
                r.usage.cache_read_tokens,
                r.usage.output_tokens
            ),
            (25, 100, 800)
        );
        let r = run_stream(&raw(
            r#"{"input_tokens":30,"cache_read_input_tokens":0,"output_tokens":800}"#,
        ))
        .unwrap();
        assert_eq!((r.usage.input_tokens, r.usage.cache_read_tokens), (30, 0));
    }

    #[test]
    fn stream_error_event_and_truncation() {
        let raw = format!(
            "{START}event: error\ndata: {{\"type\":\"error\",\"error\":{{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}}}\n\n"
        );
        assert_eq!(run_stream(&raw).unwrap_err().kind, ErrorKind::Overloaded);
        assert_eq!(run_stream(START).unwrap_err().kind, ErrorKind::Malformed);
    }

    #[test]
    fn an_answer_without_usage_is_kept() {
        let r = parse_response(&json!({"type": "message",
            "content": [{"type": "text", "text": "hi"}], "stop_reason": "end_turn"}))
        .unwrap();
        assert_eq!(r.text, "hi");
        assert_eq!(r.usage.input_tokens + r.usage.output_tokens, 0);
        let e = parse_response(&json!({"type": "message"})).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Malformed);
    }
}
