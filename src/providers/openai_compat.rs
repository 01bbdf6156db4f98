//! The OpenAI chat-completions wire format, shared by Cerebras, DeepSeek,
//! OpenRouter and HuggingFace's router. Each of those files only declares
//! its spec and the few quirks in [`Quirks`].

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{Value, json};

use super::stream::{self, SseEvent, StreamSink};
use super::{
    ChatRequest, ChatResponse, ErrorKind, Provider, ProviderConfig, ProviderError, ProviderId,
    Usage, token_count,
};

/// The small differences between OpenAI-compatible providers.
#[derive(Debug, Clone, Copy, Default)]
pub struct Quirks {
    /// Send `max_completion_tokens` instead of `max_tokens` (Cerebras
    /// reserves the limit against its token quota, so it must always be sent).
    pub max_completion_tokens: bool,
    /// Extra headers to send (OpenRouter's app attribution).
    pub extra_headers: &'static [(&'static str, &'static str)],
}

/// A client for one OpenAI-compatible provider.
pub struct OpenAiCompatible {
    id: ProviderId,
    config: ProviderConfig,
    quirks: Quirks,
}

impl OpenAiCompatible {
    /// Builds a client for provider `id`.
    pub fn client(id: ProviderId, config: ProviderConfig, quirks: Quirks) -> Arc<dyn Provider> {
        Arc::new(OpenAiCompatible { id, config, quirks })
    }

    fn body(&self, req: &ChatRequest) -> Value {
        let mut messages = Vec::new();
        if let Some(system) = &req.system {
            messages.push(json!({"role": "system", "content": system}));
        }
        messages.push(json!({"role": "user", "content": req.prompt}));
        let limit_field = if self.quirks.max_completion_tokens {
            "max_completion_tokens"
        } else {
            "max_tokens"
        };
        let mut body = json!({
            "model": req.model,
            "messages": messages,
            limit_field: req.max_tokens,
            "stream": true,
            // Without this the stream carries no usage, and cost is unknown.
            "stream_options": {"include_usage": true},
        });
        let s = req.sampling;
        if let Some(t) = s.temperature {
            body["temperature"] = json!(t);
        }
        if let Some(p) = s.top_p {
            body["top_p"] = json!(p);
        }
        if let Some(seed) = s.seed {
            body["seed"] = json!(seed);
        }
        body
    }
}

#[async_trait]
impl Provider for OpenAiCompatible {
    fn id(&self) -> ProviderId {
        self.id
    }

    async fn complete(
        &self,
        req: &ChatRequest,
        sink: &dyn StreamSink,
    ) -> Result<ChatResponse, ProviderError> {
        let url = format!("{}/chat/completions", self.config.base_url);
        let mut builder = self.config.http.post(url);
        if let Some(key) = &self.config.api_key {
            builder = builder.bearer_auth(key.expose());
        }
        for (k, v) in self.quirks.extra_headers {
            builder = builder.header(*k, *v);
        }
        let resp = stream::send(self.id, builder, &self.body(req)).await?;
        let id = self.id;
        // From here on the request was accepted: a failure may be billed.
        if !is_event_stream(&resp) {
            // Some compatible servers ignore `stream` and answer in one piece.
            return stream::read_json(id, resp)
                .await
                .and_then(|reply| parse_response(id, &reply))
                .map_err(|e| match e.accepted {
                    Some(_) => e,
                    None => e.after_acceptance(Usage::default()),
                });
        }
        let mut acc = StreamState::default();
        let limit = stream::reply_limit(req.max_tokens);
        let driven = stream::drive_sse(id, resp, limit, self.config.idle, |ev| {
            acc.event(id, ev, sink)
        })
        .await;
        // Usage comes in the last chunk, so a cut-off stream rarely has it;
        // an error chunk may carry it, with OpenRouter's cost.
        let (usage, cost) = acc.usage.unwrap_or_default();
        let finished = acc.done || acc.finish_reason.is_some();
        match driven {
            Err(e) if !(finished && stream::only_the_close_was_lost(&e)) => {
                Err(e.after_acceptance_at(usage, cost))
            }
            _ => acc
                .finish(id)
                .map_err(|e| e.after_acceptance_at(usage, cost)),
        }
    }
}

/// True when the reply is an SSE stream.
pub fn is_event_stream(resp: &reqwest::Response) -> bool {
    resp.headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"))
}

/// What a chat-completions stream has delivered so far.
#[derive(Default)]
struct StreamState {
    text: String,
    model: String,
    usage: Option<(Usage, Option<f64>)>,
    finish_reason: Option<String>,
    done: bool,
}

impl StreamState {
    /// Handles one event; `Ok(true)` when the stream is complete.
    fn event(
        &mut self,
        id: ProviderId,
        ev: &SseEvent,
        sink: &dyn StreamSink,
    ) -> Result<bool, ProviderError> {
        let data = ev.data.trim();
        if data == "[DONE]" {
            self.done = true;
            return Ok(true);
        }
        let v = stream::json(id, data)?;
        // Read first: OpenRouter's mid-stream error chunk carries the usage
        // of what was generated before the failure, which is billed.
        if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
            self.usage = Some(parse_usage(u));
        }
        if let Some(err) = v.get("error").filter(|e| !e.is_null()) {
            return Err(error_in_body(id, err, v.get("status_code")));
        }
        if let Some(m) = v.get("model").and_then(|m| m.as_str()) {
            self.model = m.to_string();
        }
        if let Some(choices) = v.get("choices").and_then(|c| c.as_array()) {
            for c in choices {
                if let Some(t) = c.pointer("/delta/content").and_then(|t| t.as_str())
                    && !t.is_empty()
                {
                    self.text.push_str(t);
                    sink.on_text(t);
                }
                // DeepSeek's `reasoning_content`, OpenRouter's `reasoning`.
                for key in ["/delta/reasoning_content", "/delta/reasoning"] {
                    if let Some(t) = c.pointer(key).and_then(|t| t.as_str())
                        && !t.is_empty()
                    {
                        sink.on_reasoning(t);
                    }
                }
                if let Some(f) = c.get("finish_reason").and_then(|f| f.as_str()) {
                    if f == "error" {
                        return Err(ProviderError::new(
                            id,
                            ErrorKind::Server,
                            Some(200),
                            "the provider ended the stream with an error",
                        ));
                    }
                    self.finish_reason = Some(f.to_string());
                }
            }
        }
        Ok(false)
    }

    fn finish(self, id: ProviderId) -> Result<ChatResponse, ProviderError> {
        if !self.done && self.finish_reason.is_none() {
            return Err(stream::truncated(id, "the answer was complete"));
        }
        // The answer is complete (it finished) but its usage chunk, which
        // comes after the finish, did not (a connection dropped just
        // then, a server that ignores `stream_options`): the answer is
        // kept, its cost flagged unknown by the caller (as for usage of
        // the wrong types), rather than thrown away and paid for again
        // elsewhere.
        let (usage, cost) = self.usage.unwrap_or_default();
        Ok(ChatResponse {
            text: self.text,
            model: self.model,
            usage,
            provider_cost_usd: cost,
            finish_reason: self.finish_reason,
        })
    }
}

/// An error object inside a 200 reply or a stream (OpenRouter, Cerebras).
fn error_in_body(id: ProviderId, err: &Value, status_code: Option<&Value>) -> ProviderError {
    let msg = err
        .get("message")
        .and_then(|m| m.as_str())
        .or_else(|| err.as_str())
        .unwrap_or("unknown error");
    let given = status_code
        .and_then(|c| c.as_u64())
        .or_else(|| err.get("code").and_then(|c| c.as_u64()))
        .filter(|c| (400..600).contains(c))
        .map(|c| c as u16);
    // `metadata`: OpenRouter's upstream name and raw error, which say why.
    let body = json!({"error": {"message": msg, "type": err.get("type"),
        "metadata": err.get("metadata")}})
    .to_string();
    // Classified as a server error when the event gives no status; but the
    // reply itself was a 200, so no "HTTP 500" is claimed in the message.
    let mut e = ProviderError::from_http(
        id,
        given.unwrap_or(500),
        &reqwest::header::HeaderMap::new(),
        body.as_bytes(),
    );
    if given.is_none() {
        e.status = None;
        e.detail = format!("error event in the stream: {}", e.detail);
    }
    e
}

/// Reads a chat completion. Some providers send errors inside a 200 reply
/// (OpenRouter's top-level `error`), which is an error here too.
pub fn parse_response(id: ProviderId, reply: &Value) -> Result<ChatResponse, ProviderError> {
    if let Some(err) = reply.get("error").filter(|e| !e.is_null()) {
        let msg = err
            .get("message")
            .and_then(|m| m.as_str())
            .or_else(|| err.as_str())
            .unwrap_or("unknown error");
        let code = err.get("code").and_then(|c| c.as_u64()).unwrap_or(500) as u16;
        let headers = reqwest::header::HeaderMap::new();
        let body = json!({"error": {"message": msg, "metadata": err.get("metadata")}}).to_string();
        let e = ProviderError::from_http(id, code, &headers, body.as_bytes());
        // Usage beside the error: what was generated before it, billed.
        return Err(match reply.get("usage").filter(|u| u.is_object()) {
            Some(u) => {
                let (usage, cost) = parse_usage(u);
                e.after_acceptance_at(usage, cost)
            }
            None => e,
        });
    }
    let choice = reply
        .pointer("/choices/0")
        .ok_or_else(|| malformed(id, "no choices in the reply"))?;
    let text = choice
        .pointer("/message/content")
        .and_then(|c| c.as_str())
        .unwrap_or_default()
        .to_string();
    let finish_reason = choice
        .get("finish_reason")
        .and_then(|f| f.as_str())
        .map(str::to_string);
    // No usage (a gateway that drops it): the answer is kept and charged an
    // estimate by the caller, as for a stream whose usage never came,
    // rather than thrown away and paid for again elsewhere.
    let (usage, cost) = reply
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
        provider_cost_usd: cost,
        finish_reason,
    })
}

/// Normalises an OpenAI-style `usage` object (with DeepSeek's and
/// OpenRouter's additions) and returns the provider-reported cost, if any.
pub fn parse_usage(u: &Value) -> (Usage, Option<f64>) {
    let prompt = token_count(u.get("prompt_tokens"));
    let cached = token_count(u.pointer("/prompt_tokens_details/cached_tokens"))
        .max(token_count(u.get("prompt_cache_hit_tokens")));
    let cache_write = token_count(u.pointer("/prompt_tokens_details/cache_write_tokens"));
    let completion = token_count(u.get("completion_tokens"));
    let reasoning = token_count(u.pointer("/completion_tokens_details/reasoning_tokens"));
    let cached = cached.min(prompt);
    let cache_write = cache_write.min(prompt - cached);
    let usage = Usage {
        input_tokens: prompt - cached - cache_write,
        cache_read_tokens: cached,
        cache_write_tokens: cache_write,
        output_tokens: completion,
        reasoning_tokens: reasoning.min(completion),
    };
    let usd = |v: Option<&Value>| {
        v.and_then(|c| c.as_f64())
            .filter(|c| c.is_finite() && *c >= 0.0)
    };
    let cost = usd(u.get("cost"));
    // OpenRouter with the user's own provider key ("BYOK"): `cost` is only
    // OpenRouter's fee ($0 within the free allowance) and the tokens are
    // billed by the provider, as `cost_details.upstream_inference_cost`.
    // Without the key it reports that field too, equal to `cost`, so it is
    // added only when `is_byok` says so.
    let byok = u.get("is_byok").and_then(Value::as_bool) == Some(true);
    let cost = match usd(u.pointer("/cost_details/upstream_inference_cost")) {
        Some(upstream) if byok => Some(cost.unwrap_or(0.0) + upstream),
        _ => cost,
    };
    (usage, cost)
}

fn malformed(id: ProviderId, what: &str) -> ProviderError {
    ProviderError::new(id, ErrorKind::Malformed, Some(200), what)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_subtracts_cache_and_keeps_reasoning() {
        let (u, cost) = parse_usage(&json!({
            "prompt_tokens": 1000, "completion_tokens": 400, "total_tokens": 1400,
            "prompt_tokens_details": {"cached_tokens": 600, "cache_write_tokens": 100},
            "completion_tokens_details": {"reasoning_tokens": 150},
            "cost": 0.00123
        }));
        assert_eq!(u.input_tokens, 300);
        assert_eq!(u.cache_read_tokens, 600);
        assert_eq!(u.cache_write_tokens, 100);
        assert_eq!(u.output_tokens, 400);
        assert_eq!(u.reasoning_tokens, 150);
        assert_eq!(cost, Some(0.00123));
    }

    /// OpenRouter's `cost` is its own charge: with the user's provider key
    /// the tokens' cost comes as `upstream_inference_cost` and is added;
    /// without it the same field repeats `cost` and is not.
    #[test]
    fn openrouter_byok_cost_includes_the_upstream_charge() {
        let usage = |byok: bool, cost: f64, upstream: f64| {
            parse_usage(&json!({
                "prompt_tokens": 10000, "completion_tokens": 2000,
                "cost": cost, "is_byok": byok,
                "cost_details": {"upstream_inference_cost": upstream}
            }))
            .1
        };
        assert_eq!(usage(true, 0.0, 0.06), Some(0.06));
        assert_eq!(usage(true, 0.003, 0.06), Some(0.063));
        assert_eq!(usage(false, 0.06, 0.06), Some(0.06));
        let (_, no_cost) = parse_usage(&json!({
            "prompt_tokens": 1, "completion_tokens": 1, "is_byok": true,
            "cost_details": {"upstream_inference_cost": 0.5}
        }));
        assert_eq!(no_cost, Some(0.5));
    }

    #[test]
    fn deepseek_cache_hit_fields() {
        let (u, _) = parse_usage(&json!({
            "prompt_tokens": 50, "completion_tokens": 5,
            "prompt_cache_hit_tokens": 40, "prompt_cache_miss_tokens": 10
        }));
        assert_eq!((u.input_tokens, u.cache_read_tokens), (10, 40));
    }

    #[test]
    fn hostile_usage_cannot_underflow() {
        let (u, cost) = parse_usage(&json!({
            "prompt_tokens": 5, "completion_tokens": -3,
            "prompt_tokens_details": {"cached_tokens": 900},
            "completion_tokens_details": {"reasoning_tokens": 70},
            "cost": -1
        }));
        assert_eq!(u.input_tokens, 0);
        assert_eq!(u.cache_read_tokens, 5);
        assert_eq!(u.output_tokens, 0);
        assert_eq!(u.reasoning_tokens, 0);
        assert_eq!(cost, None);
    }

    fn run_stream(raw: &str) -> Result<ChatResponse, ProviderError> {
        run_stream_into(raw, &super::super::stream::Recorder::default())
    }

    fn run_stream_into(
        raw: &str,
        sink: &super::super::stream::Recorder,
    ) -> Result<ChatResponse, ProviderError> {
        use super::super::stream::SseParser;
        let mut st = StreamState::default();
        let mut p = SseParser::default();
        for ev in p.push(raw.as_bytes()).into_iter().chain(p.finish()) {
            if st.event(ProviderId::Deepseek, &ev, sink)? {
                break;
            }
        }
        let r = st.finish(ProviderId::Deepseek)?;
        assert_eq!(*sink.text.lock().unwrap(), r.text);
        Ok(r)
    }

    /// DeepSeek's `reasoning_content` and OpenRouter's `reasoning` are
    /// counted (billed output), never part of the answer.
    #[test]
    fn reasoning_deltas_are_told_apart_from_text() {
        let raw = "data: {\"model\":\"deepseek-reasoner\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":null,\"reasoning_content\":\"Two plus \"}}]}\n\n\
            data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":null,\"reasoning\":\"two.\"}}]}\n\n\
            data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"4\"},\"finish_reason\":\"stop\"}]}\n\n\
            data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":9,\"completion_tokens_details\":{\"reasoning_tokens\":8}}}\n\n\
            data: [DONE]\n\n";
        let sink = super::super::stream::Recorder::default();
        let r = run_stream_into(raw, &sink).unwrap();
        assert_eq!(r.text, "4");
        assert_eq!(*sink.reasoning.lock().unwrap(), "Two plus two.");
        assert_eq!(r.usage.reasoning_tokens, 8);
    }

    #[test]
    fn stream_collects_text_and_final_usage() {
        let raw = ": keep-alive\n\n\
            data: {\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n\
            data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"}}]}\n\n\
            data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo\"},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n\
            data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2}}\n\n\
            data: [DONE]\n\n";
        let r = run_stream(raw).unwrap();
        assert_eq!(r.text, "Hello");
        assert_eq!((r.usage.input_tokens, r.usage.output_tokens), (5, 2));
        assert_eq!(r.finish_reason.as_deref(), Some("stop"));
    }

    #[test]
    fn truncated_stream_and_midstream_error_fail() {
        let cut = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"}}]}\n\n";
        assert_eq!(run_stream(cut).unwrap_err().kind, ErrorKind::Malformed);
        let err = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"}}]}\n\n\
            data: {\"error\":{\"code\":502,\"message\":\"upstream died\"},\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"error\"}]}\n\n";
        let e = run_stream(err).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Server);
        assert!(e.detail.contains("upstream died"));
        // An error event with no status: a server error, but not "HTTP 500"
        // (the reply was a 200).
        let bare = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"}}]}\n\n\
            data: {\"error\":{\"message\":\"upstream exploded\"}}\n\n";
        let e = run_stream(bare).unwrap_err();
        assert_eq!((e.kind, e.status), (ErrorKind::Server, None));
        let m = e.user_message();
        assert!(
            m.contains("error event in the stream: upstream exploded") && !m.contains("HTTP"),
            "{m}"
        );
        let no_usage = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"x\"},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n";
        // Finished, but no usage came: the answer is kept, its usage zero
        // (the caller flags the cost unknown).
        let r = run_stream(no_usage).unwrap();
        assert_eq!(r.text, "x");
        assert_eq!(r.usage.input_tokens + r.usage.output_tokens, 0);
    }

    /// Cerebras ends a failing stream with `{"error": {…}, "status_code": N}`:
    /// the status it gives (not the 200 the stream began with) classifies it.
    #[test]
    fn a_cerebras_stream_error_is_classified_by_its_status_code() {
        use super::super::stream::SseParser;
        let sink = super::super::stream::Recorder::default();
        for (status, kind) in [
            (429, ErrorKind::RateLimit),
            (503, ErrorKind::Overloaded),
            (400, ErrorKind::BadRequest),
        ] {
            let raw = format!(
                "data: {{\"error\":{{\"message\":\"We're experiencing high traffic right now! Please try again soon.\",\"type\":\"too_many_requests_error\",\"param\":\"queue\",\"code\":\"queue_exceeded\"}},\"status_code\":{status}}}\n\n"
            );
            let mut st = StreamState::default();
            let mut p = SseParser::default();
            let ev = p.push(raw.as_bytes()).pop().unwrap();
            let e = st.event(ProviderId::Cerebras, &ev, &sink).unwrap_err();
            assert_eq!(e.kind, kind, "{status}: {e:?}");
            assert_eq!(e.status, Some(status), "{e:?}");
        }
    }

    /// OpenRouter's mid-stream error chunk carries the usage of what was
    /// generated before it failed: that usage is what the attempt is billed.
    #[test]
    fn a_midstream_error_keeps_the_usage_it_carries() {
        use super::super::stream::SseParser;
        let raw = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"}}]}\n\n\
            data: {\"error\":{\"code\":502,\"message\":\"upstream died\"},\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"error\"}],\"usage\":{\"prompt_tokens\":40,\"completion_tokens\":7,\"cost\":0.0003}}\n\n";
        let mut st = StreamState::default();
        let mut p = SseParser::default();
        let sink = super::super::stream::Recorder::default();
        let mut failed = false;
        for ev in p.push(raw.as_bytes()) {
            if st.event(ProviderId::Openrouter, &ev, &sink).is_err() {
                failed = true;
                break;
            }
        }
        assert!(failed);
        let (usage, cost) = st.usage.expect("the error chunk's usage");
        assert_eq!((usage.input_tokens, usage.output_tokens), (40, 7));
        assert_eq!(cost, Some(0.0003));
    }

    #[test]
    fn error_inside_200_is_an_error() {
        let e = parse_response(
            ProviderId::Openrouter,
            &json!({"error": {"code": 429, "message": "Rate limit exceeded"}}),
        )
        .unwrap_err();
        assert_eq!(e.kind, ErrorKind::RateLimit);
        assert_eq!(e.accepted, None, "no usage: charged as any accepted reply");
        // Usage beside the error is what the attempt is billed.
        let e = parse_response(
            ProviderId::Openrouter,
            &json!({"error": {"code": 502, "message": "Upstream died"},
                    "usage": {"prompt_tokens": 40, "completion_tokens": 7, "cost": 0.0123}}),
        )
        .unwrap_err();
        let usage = e.accepted.expect("usage beside the error");
        assert_eq!((usage.input_tokens, usage.output_tokens), (40, 7));
        assert_eq!(e.accepted_cost_usd, Some(0.0123));
    }
}
