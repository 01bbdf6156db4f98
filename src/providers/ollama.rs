//! A local Ollama server (`/api/chat`): free, no key.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};

use super::stream::{self, NdjsonParser, StreamSink};
use super::{
    ChatRequest, ChatResponse, ErrorKind, OLLAMA_PROBE_ENV, Provider, ProviderConfig,
    ProviderError, ProviderId, ProviderSpec, Usage, token_count,
};

/// Ollama: enabled by `OLLAMA_HOST`, or by a server answering on the default port.
pub static SPEC: ProviderSpec = ProviderSpec {
    id: ProviderId::Ollama,
    display_name: "Ollama",
    key_envs: &[],
    base_url_env: "OLLAMA_HOST",
    default_base_url: "http://127.0.0.1:11434",
    key_help_url: "https://ollama.com/download",
    build: Some(build),
};

fn build(config: ProviderConfig) -> Arc<dyn Provider> {
    Arc::new(Ollama { config })
}

/// Turns an `OLLAMA_HOST` value (`0.0.0.0`, `localhost:11434`, `:8080`,
/// `http://host:port`) into a base URL, read the way Ollama's own client
/// reads it: without a scheme, `http` and port 11434; with `http://` or
/// `https://`, that scheme's usual port (80, 443) unless one is given; no
/// host means this machine; `0.0.0.0` (set so the server listens
/// everywhere) is reached on loopback.
pub fn normalise_host(raw: &str) -> String {
    let raw = raw.trim().trim_end_matches('/');
    let (scheme, rest, default_port) = match raw.split_once("://") {
        Some((s, r)) => {
            let s = s.to_ascii_lowercase();
            let port = if s == "https" { "443" } else { "80" };
            (s, r, port)
        }
        None => ("http".to_string(), raw, "11434"),
    };
    // A path after the address is kept (a proxy may serve Ollama there).
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    // Credentials (`user:pass@host`, a proxy's) are kept and do not count
    // as the port.
    let (userinfo, hostport) = match hostport.rsplit_once('@') {
        Some((u, h)) => (format!("{u}@"), h),
        None => (String::new(), hostport),
    };
    let (host, port) = match hostport.rsplit_once(':') {
        // `[::1]:port`, `host:port`, `:port`; a bare IPv6 address has
        // colons but no brackets and no port.
        Some((h, p))
            if !p.is_empty()
                && p.chars().all(|c| c.is_ascii_digit())
                && (h.is_empty() || !h.contains(':') || h.ends_with(']')) =>
        {
            (h, p)
        }
        _ => (hostport, default_port),
    };
    let host = match host {
        "" | "0.0.0.0" => "127.0.0.1",
        "[::]" | "::" => "[::1]",
        h => h,
    };
    format!("{scheme}://{userinfo}{host}:{port}{path}")
}

/// Decides whether Ollama is enabled: `OLLAMA_HOST` set, or a server
/// accepting connections on the default port (a loopback connect either
/// succeeds or is refused at once, so this costs well under a millisecond).
pub fn detect(get: &dyn Fn(&str) -> Option<String>, _base: &str) -> (bool, String, String) {
    if let Some(host) = get("OLLAMA_HOST") {
        return (true, "OLLAMA_HOST is set".into(), normalise_host(&host));
    }
    let default = SPEC.default_base_url.to_string();
    // `0`, `false`, `no` or `off`, like the other switches.
    if let Some(v) = get(OLLAMA_PROBE_ENV).filter(|v| crate::config::parse_bool(v) == Some(false)) {
        return (
            false,
            format!(
                "set OLLAMA_HOST to enable it (probing disabled by {OLLAMA_PROBE_ENV}={})",
                v.trim()
            ),
            default,
        );
    }
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 11434));
    if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(50)).is_ok() {
        (
            true,
            "a local Ollama answers on 127.0.0.1:11434".into(),
            default,
        )
    } else {
        (
            false,
            "no local Ollama on 127.0.0.1:11434; start it or set OLLAMA_HOST".into(),
            default,
        )
    }
}

/// An Ollama `/api/chat` client.
pub struct Ollama {
    config: ProviderConfig,
}

#[async_trait]
impl Provider for Ollama {
    fn id(&self) -> ProviderId {
        ProviderId::Ollama
    }

    async fn complete(
        &self,
        req: &ChatRequest,
        sink: &dyn StreamSink,
    ) -> Result<ChatResponse, ProviderError> {
        let mut messages = Vec::new();
        if let Some(system) = &req.system {
            messages.push(json!({"role": "system", "content": system}));
        }
        messages.push(json!({"role": "user", "content": req.prompt}));
        let mut options = json!({"num_predict": req.max_tokens});
        if let Some(n) = num_ctx(req) {
            options["num_ctx"] = json!(n);
        }
        let s = req.sampling;
        if let Some(t) = s.temperature {
            options["temperature"] = json!(t);
        }
        if let Some(p) = s.top_p {
            options["top_p"] = json!(p);
        }
        if let Some(seed) = s.seed {
            options["seed"] = json!(seed);
        }
        let body = json!({
            "model": req.model,
            "messages": messages,
            "stream": true,
            "options": options,
        });
        let builder = self
            .config
            .http
            .post(format!("{}/api/chat", self.config.base_url));
        let resp = stream::send(ProviderId::Ollama, builder, &body).await?;
        // From here on the request was accepted (a local model bills
        // nothing, but the caller decides that from the price).
        read_reply(
            resp,
            stream::reply_limit(req.max_tokens),
            self.config.idle,
            sink,
        )
        .await
        .map_err(|e| e.after_acceptance(Usage::default()))
    }
}

/// The smallest context an Ollama server may load a model with when the
/// request names none (2,048 tokens before Ollama 0.6; 4,096 or more now,
/// by GPU memory).
const SMALLEST_DEFAULT_CTX: u64 = 2048;

/// The context (`options.num_ctx`) to ask for, if the server's default may
/// be too small for the prompt and the answer.
///
/// Ollama does not refuse a prompt longer than its context: it silently
/// keeps the end of it, and the model answers a question it only half saw,
/// recorded as a success (so no fallback). The router already picks only
/// models whose catalog window fits, so the request asks for that room.
/// Rounded up to a power of two: every new size reloads the model, so
/// prompts of similar length share one. The tokenizer estimate (o200k) counts
/// fewer tokens than the smaller vocabularies of most local models, hence
/// a quarter more.
fn num_ctx(req: &ChatRequest) -> Option<u64> {
    // Room for the answer counts up to ANSWER_ROOM tokens: a client asking
    // for 32k tokens of a short prompt must not get a 64k-token KV cache
    // (gigabytes, or a "requires more system memory" refusal), nor a
    // reload for a prompt that fits; a longer answer shifts the context as
    // Ollama does by default.
    let need = req
        .input_tokens_estimate
        .saturating_add(req.input_tokens_estimate / 4)
        .saturating_add(u64::from(req.max_tokens).min(ANSWER_ROOM));
    if need <= SMALLEST_DEFAULT_CTX {
        return None;
    }
    let ctx = need
        .checked_next_power_of_two()
        .unwrap_or(u64::MAX)
        .max(4096);
    Some(match req.context_window {
        Some(w) if w > 0 => ctx.min(w.max(SMALLEST_DEFAULT_CTX)),
        // A model the catalog does not know: no more than most local models
        // hold.
        _ => ctx.min(UNKNOWN_MODEL_MAX_CTX),
    })
}

/// Answer tokens a requested context makes room for (see [`num_ctx`]).
const ANSWER_ROOM: u64 = 1024;

/// The largest context asked for a model whose window is unknown.
const UNKNOWN_MODEL_MAX_CTX: u64 = 32_768;

/// Reads an accepted `/api/chat` reply, streamed or not.
async fn read_reply(
    resp: reqwest::Response,
    limit: usize,
    idle: std::time::Duration,
    sink: &dyn StreamSink,
) -> Result<ChatResponse, ProviderError> {
    {
        // NDJSON: one object per line, the last with `done: true` and the
        // counts. A non-streaming reply is the same object on one line.
        let mut text = String::new();
        let mut last: Option<Value> = None;
        let mut parser = NdjsonParser::default();
        let mut handle = |line: &str| -> Result<bool, ProviderError> {
            let v = stream::json(ProviderId::Ollama, line)?;
            if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
                return Err(ollama_error(e));
            }
            if let Some(t) = v.pointer("/message/content").and_then(|c| c.as_str())
                && !t.is_empty()
            {
                text.push_str(t);
                sink.on_text(t);
            }
            let done = v.get("done").and_then(|d| d.as_bool()).unwrap_or(false);
            if done {
                last = Some(v);
            }
            Ok(done)
        };
        stream::drive(ProviderId::Ollama, resp, limit, idle, |chunk| {
            let mut step = stream::Step::default();
            for line in parser.push(chunk) {
                step.progressed = true;
                if handle(&line)? {
                    step.done = true;
                    return Ok(step);
                }
            }
            Ok(step)
        })
        .await?;
        for line in parser.finish() {
            handle(&line)?;
        }
        let last =
            last.ok_or_else(|| stream::truncated(ProviderId::Ollama, "the final done line"))?;
        Ok(ChatResponse {
            text,
            model: last
                .get("model")
                .and_then(|m| m.as_str())
                .unwrap_or_default()
                .to_string(),
            usage: Usage {
                input_tokens: token_count(last.get("prompt_eval_count")),
                output_tokens: token_count(last.get("eval_count")),
                ..Usage::default()
            },
            provider_cost_usd: None,
            finish_reason: last
                .get("done_reason")
                .and_then(|d| d.as_str())
                .map(str::to_string),
        })
    }
}

/// Ollama reports errors as `{"error": "..."}`; "not found" means the model
/// is not pulled: another model (perhaps another local one) can still take
/// the call.
fn ollama_error(msg: &str) -> ProviderError {
    let kind = if msg.contains("not found") {
        ErrorKind::ModelUnavailable
    } else {
        ErrorKind::Server
    };
    ProviderError::new(ProviderId::Ollama, kind, Some(200), msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The probe switch reads like every other switch: `false`, `off` and
    /// `no` disable it too (only `0` did; `false` still probed).
    #[test]
    fn the_probe_is_off_for_any_false_value() {
        for v in ["0", "false", "OFF", " no "] {
            let get = |k: &str| (k == OLLAMA_PROBE_ENV).then(|| v.to_string());
            let (enabled, why, _) = detect(&get, "");
            assert!(!enabled, "{v}");
            assert!(why.contains("probing disabled"), "{v}: {why}");
        }
    }

    fn req(input: u64, max_tokens: u32, window: Option<u64>) -> ChatRequest {
        ChatRequest {
            model: "llama3.1".into(),
            system: None,
            prompt: String::new(),
            max_tokens,
            input_tokens_estimate: input,
            context_window: window,
            sampling: Default::default(),
        }
    }

    #[test]
    fn the_context_asked_for_fits_prompt_and_answer() {
        // Small: the server's default is left alone (no reload).
        assert_eq!(num_ctx(&req(500, 1024, Some(8192))), None);
        // 5,000 tokens + a quarter + 1,024 answer: 7,274, so 8,192.
        assert_eq!(num_ctx(&req(5000, 1024, Some(131_072))), Some(8192));
        // Never past the catalog's window, nor below what fits in it.
        assert_eq!(num_ctx(&req(7000, 1024, Some(8192))), Some(8192));
        assert_eq!(num_ctx(&req(2000, 1024, None)), Some(4096));
        // A long answer asked of a short prompt does not size the cache.
        assert_eq!(num_ctx(&req(10, 32_768, None)), None);
        assert_eq!(num_ctx(&req(2000, 32_768, Some(131_072))), Some(4096));
        // Unknown window: capped.
        assert_eq!(num_ctx(&req(100_000, 1024, None)), Some(32_768));
        assert_eq!(num_ctx(&req(u64::MAX, u32::MAX, None)), Some(32_768));
    }

    #[test]
    fn host_forms() {
        assert_eq!(normalise_host("0.0.0.0"), "http://127.0.0.1:11434");
        assert_eq!(normalise_host("localhost:8080"), "http://localhost:8080");
        assert_eq!(
            normalise_host("http://10.1.2.3:11434/"),
            "http://10.1.2.3:11434"
        );
        assert_eq!(
            normalise_host("https://ollama.example"),
            "https://ollama.example:443"
        );
        // As Ollama reads it: a scheme brings its own default port.
        assert_eq!(normalise_host("http://ollama.lan"), "http://ollama.lan:80");
        assert_eq!(normalise_host("ollama.lan"), "http://ollama.lan:11434");
        assert_eq!(normalise_host(":8080"), "http://127.0.0.1:8080");
        assert_eq!(normalise_host("HTTP://10.0.0.2"), "http://10.0.0.2:80");
        assert_eq!(
            normalise_host("https://user:pa:ss@ollama.example:8443"),
            "https://user:pa:ss@ollama.example:8443"
        );
        assert_eq!(
            normalise_host("https://token@ollama.example"),
            "https://token@ollama.example:443"
        );
        assert_eq!(normalise_host("[::1]:11500"), "http://[::1]:11500");
        assert_eq!(normalise_host("0.0.0.0:11434"), "http://127.0.0.1:11434");
        assert_eq!(
            normalise_host("https://gw.example/ollama/"),
            "https://gw.example:443/ollama"
        );
    }
}
