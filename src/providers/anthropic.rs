//! Anthropic's Messages API.

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{Value, json};

use super::{
    ChatRequest, ChatResponse, ErrorKind, Provider, ProviderConfig, ProviderError, ProviderId,
    ProviderSpec, Usage, post_json, token_count,
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

#[async_trait]
impl Provider for Anthropic {
    fn id(&self) -> ProviderId {
        ProviderId::Anthropic
    }

    async fn complete(&self, req: &ChatRequest) -> Result<ChatResponse, ProviderError> {
        let mut body = json!({
            "model": req.model,
            "max_tokens": req.max_tokens,
            "messages": [{"role": "user", "content": req.prompt}],
        });
        if let Some(system) = &req.system {
            body["system"] = json!(system);
        }
        let mut builder = self
            .config
            .http
            .post(format!("{}/v1/messages", self.config.base_url))
            .header("anthropic-version", API_VERSION);
        if let Some(key) = &self.config.api_key {
            builder = builder.header("x-api-key", key.expose());
        }
        let reply = post_json(ProviderId::Anthropic, builder, &body).await?;
        parse_response(&reply)
    }
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
    let u = reply
        .get("usage")
        .ok_or_else(|| malformed("the reply has no usage; cost cannot be known"))?;
    Ok(ChatResponse {
        text,
        model: reply
            .get("model")
            .and_then(|m| m.as_str())
            .unwrap_or_default()
            .to_string(),
        usage: parse_usage(u),
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

    #[test]
    fn missing_usage_is_malformed() {
        let e = parse_response(&json!({"type": "message", "content": []})).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Malformed);
    }
}
