//! Google Gemini's native API, streamed (`streamGenerateContent?alt=sse`).
//!
//! Usage comes from `usageMetadata` on the last chunk: `promptTokenCount`
//! includes cached tokens, and thinking tokens (`thoughtsTokenCount`) are
//! reported apart from `candidatesTokenCount` but billed as output.

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{Value, json};

use super::stream::{self, SseEvent, StreamSink};
use super::{
    ChatRequest, ChatResponse, ErrorKind, Provider, ProviderConfig, ProviderError, ProviderId,
    ProviderSpec, Usage, token_count,
};

/// Gemini: `GEMINI_API_KEY` or `GOOGLE_API_KEY`, base `GEMINI_BASE_URL`
/// (the client appends `/v1beta/models/{model}:streamGenerateContent`).
pub static SPEC: ProviderSpec = ProviderSpec {
    id: ProviderId::Gemini,
    display_name: "Google Gemini",
    key_envs: &["GEMINI_API_KEY", "GOOGLE_API_KEY"],
    base_url_env: "GEMINI_BASE_URL",
    default_base_url: "https://generativelanguage.googleapis.com",
    key_help_url: "https://aistudio.google.com/apikey",
    build: Some(build),
};

fn build(config: ProviderConfig) -> Arc<dyn Provider> {
    Arc::new(Gemini { config })
}

/// A `generateContent` client.
pub struct Gemini {
    config: ProviderConfig,
}

#[async_trait]
impl Provider for Gemini {
    fn id(&self) -> ProviderId {
        ProviderId::Gemini
    }

    async fn complete(
        &self,
        req: &ChatRequest,
        sink: &dyn StreamSink,
    ) -> Result<ChatResponse, ProviderError> {
        let mut body = json!({
            "contents": [{"role": "user", "parts": [{"text": req.prompt}]}],
            "generationConfig": {"maxOutputTokens": req.max_tokens},
        });
        if let Some(system) = &req.system {
            body["systemInstruction"] = json!({"parts": [{"text": system}]});
        }
        let s = req.sampling;
        if let Some(t) = s.temperature {
            body["generationConfig"]["temperature"] = json!(t);
        }
        if let Some(p) = s.top_p {
            body["generationConfig"]["topP"] = json!(p);
        }
        if let Some(seed) = s.seed {
            body["generationConfig"]["seed"] = json!(seed);
        }
        // Model names may contain characters that need escaping in a path.
        let model: String = req
            .model
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
            .collect();
        let url = format!(
            "{}/v1beta/models/{model}:streamGenerateContent?alt=sse",
            self.config.base_url
        );
        let mut builder = self.config.http.post(url);
        if let Some(key) = &self.config.api_key {
            builder = builder.header("x-goog-api-key", key.expose());
        }
        let resp = stream::send(ProviderId::Gemini, builder, &body).await?;
        let mut st = StreamState::default();
        // Gemini's stream has no closing event: it ends with the body.
        let driven = stream::drive_sse(
            ProviderId::Gemini,
            resp,
            stream::reply_limit(req.max_tokens),
            self.config.idle,
            |ev| st.event(ev, sink).map(|()| false),
        )
        .await;
        // From here on the request was accepted: a failure may be billed,
        // at least for the usage the chunks so far reported.
        let usage = st.usage.unwrap_or_default();
        match driven {
            // The chunk with the finish reason (and usage) arrived: the
            // body's end is all that was lost.
            Err(e) if !(st.finish_reason.is_some() && stream::only_the_close_was_lost(&e)) => {
                Err(e.after_acceptance(usage))
            }
            _ => st.finish().map_err(|e| e.after_acceptance(usage)),
        }
    }
}

/// What a Gemini stream has delivered so far.
#[derive(Default)]
struct StreamState {
    text: String,
    model: String,
    usage: Option<Usage>,
    finish_reason: Option<String>,
}

impl StreamState {
    fn event(&mut self, ev: &SseEvent, sink: &dyn StreamSink) -> Result<(), ProviderError> {
        let v = stream::json(ProviderId::Gemini, &ev.data)?;
        if let Some(err) = v.get("error") {
            let code = err
                .get("code")
                .and_then(|c| c.as_u64())
                .filter(|c| (400..600).contains(c))
                .unwrap_or(500) as u16;
            return Err(ProviderError::from_http(
                ProviderId::Gemini,
                code,
                &reqwest::header::HeaderMap::new(),
                v.to_string().as_bytes(),
            ));
        }
        if let Some(reason) = v
            .pointer("/promptFeedback/blockReason")
            .and_then(|r| r.as_str())
        {
            // Gemini's filters, not the request's fault: another
            // provider's model may answer it (as for a safety finish or
            // OpenRouter's moderation).
            let mut e = ProviderError::new(
                ProviderId::Gemini,
                ErrorKind::ModelUnavailable,
                Some(200),
                format!("Gemini blocked the prompt ({reason})"),
            );
            // The prompt, not the model: Gemini's other models block it too.
            e.whole_provider = true;
            return Err(e);
        }
        if let Some(m) = v.get("modelVersion").and_then(|m| m.as_str()) {
            self.model = m.to_string();
        }
        if let Some(cand) = v.pointer("/candidates/0") {
            if let Some(parts) = cand.pointer("/content/parts").and_then(|p| p.as_array()) {
                for p in parts {
                    // Thought summaries are not part of the answer.
                    if p.get("thought").and_then(|t| t.as_bool()) == Some(true) {
                        if let Some(t) = p.get("text").and_then(|t| t.as_str()) {
                            sink.on_reasoning(t);
                        }
                        continue;
                    }
                    if let Some(t) = p.get("text").and_then(|t| t.as_str()) {
                        self.text.push_str(t);
                        sink.on_text(t);
                    }
                }
            }
            if let Some(f) = cand.get("finishReason").and_then(|f| f.as_str()) {
                self.finish_reason = Some(f.to_string());
            }
        }
        if let Some(u) = v.get("usageMetadata") {
            self.usage = Some(parse_usage(u));
        }
        Ok(())
    }

    fn finish(self) -> Result<ChatResponse, ProviderError> {
        if self.finish_reason.is_none() {
            return Err(stream::truncated(ProviderId::Gemini, "a finishReason"));
        }
        // A finished answer without usageMetadata (a proxy that drops it)
        // is kept, as the other clients keep theirs: the caller charges an
        // estimate and flags it, rather than pay for the answer again.
        let usage = self.usage.unwrap_or_default();
        Ok(ChatResponse {
            text: self.text,
            model: self.model,
            usage,
            provider_cost_usd: None,
            finish_reason: self.finish_reason,
        })
    }
}

/// Normalises `usageMetadata`.
pub fn parse_usage(u: &Value) -> Usage {
    let prompt =
        token_count(u.get("promptTokenCount")) + token_count(u.get("toolUsePromptTokenCount"));
    let cached = token_count(u.get("cachedContentTokenCount")).min(prompt);
    let thoughts = token_count(u.get("thoughtsTokenCount"));
    Usage {
        input_tokens: prompt - cached,
        cache_read_tokens: cached,
        cache_write_tokens: 0,
        output_tokens: token_count(u.get("candidatesTokenCount")) + thoughts,
        reasoning_tokens: thoughts,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_stream(raw: &str) -> Result<ChatResponse, ProviderError> {
        run_stream_into(raw, &stream::Recorder::default())
    }

    fn run_stream_into(raw: &str, sink: &stream::Recorder) -> Result<ChatResponse, ProviderError> {
        use super::super::stream::SseParser;
        let mut st = StreamState::default();
        let mut p = SseParser::default();
        for ev in p.push(raw.as_bytes()).into_iter().chain(p.finish()) {
            st.event(&ev, sink)?;
        }
        st.finish()
    }

    #[test]
    fn stream_counts_thoughts_as_output() {
        let raw = "data: {\"candidates\":[{\"content\":{\"role\":\"model\",\"parts\":[{\"text\":\"thinking…\",\"thought\":true},{\"text\":\"Hel\"}]},\"index\":0}],\"modelVersion\":\"gemini-2.5-flash\"}\r\n\r\n\
                   data: {\"candidates\":[{\"content\":{\"role\":\"model\",\"parts\":[{\"text\":\"lo\"}]},\"finishReason\":\"STOP\",\"index\":0}],\"usageMetadata\":{\"promptTokenCount\":100,\"cachedContentTokenCount\":40,\"candidatesTokenCount\":20,\"thoughtsTokenCount\":30,\"totalTokenCount\":150}}";
        let sink = stream::Recorder::default();
        let r = run_stream_into(raw, &sink).unwrap();
        assert_eq!(r.text, "Hello");
        assert_eq!(*sink.text.lock().unwrap(), "Hello");
        assert_eq!(*sink.reasoning.lock().unwrap(), "thinking…");
        assert_eq!(r.usage.input_tokens, 60);
        assert_eq!(r.usage.cache_read_tokens, 40);
        assert_eq!(r.usage.output_tokens, 50);
        assert_eq!(r.usage.reasoning_tokens, 30);
        assert_eq!(r.model, "gemini-2.5-flash");
    }

    #[test]
    fn stream_errors() {
        let raw = "data: {\"error\":{\"code\":503,\"message\":\"The model is overloaded.\",\"status\":\"UNAVAILABLE\"}}\n\n";
        assert_eq!(run_stream(raw).unwrap_err().kind, ErrorKind::Overloaded);
        let cut = "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"Hel\"}]}}]}\n\n";
        assert_eq!(run_stream(cut).unwrap_err().kind, ErrorKind::Malformed);
        let blocked = "data: {\"promptFeedback\":{\"blockReason\":\"SAFETY\"}}\n\n";
        let e = run_stream(blocked).unwrap_err();
        assert_eq!(e.kind, ErrorKind::ModelUnavailable);
        assert!(e.whole_provider, "Gemini's other models would block it too");
    }
}
