//! LLM providers: one file each, over a shared OpenAI-compatible module.
//!
//! Adding a provider means one file with a [`ProviderSpec`] and a line in
//! [`SPECS`]. A spec says which env vars enable it, where its API lives (and
//! which env var overrides that, so tests and proxies can point elsewhere) and
//! how to build its client. Clients normalise every provider's usage into one
//! [`Usage`] and every failure into one [`ProviderError`].

pub mod anthropic;
pub mod cartesia;
pub mod cerebras;
pub mod deepseek;
pub mod errors;
pub mod gemini;
pub mod health;
pub mod huggingface;
pub mod ollama;
pub mod openai_compat;
pub mod openrouter;
pub mod stream;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use errors::{ErrorKind, ProviderError};
pub use stream::{AttemptRoute, NoSink, StreamSink};

use crate::secrets::Secret;

/// The providers this program knows, in a stable order.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum ProviderId {
    /// Anthropic's Messages API.
    Anthropic,
    /// Google Gemini (native API).
    Gemini,
    /// Cerebras inference (OpenAI-compatible).
    Cerebras,
    /// DeepSeek (OpenAI-compatible).
    Deepseek,
    /// OpenRouter (OpenAI-compatible, reports its own cost).
    Openrouter,
    /// HuggingFace's inference router (OpenAI-compatible).
    Huggingface,
    /// A local Ollama server: free.
    Ollama,
    /// Cartesia text-to-speech.
    Cartesia,
}

impl ProviderId {
    /// Every provider.
    pub const ALL: [ProviderId; 8] = [
        ProviderId::Anthropic,
        ProviderId::Gemini,
        ProviderId::Cerebras,
        ProviderId::Deepseek,
        ProviderId::Openrouter,
        ProviderId::Huggingface,
        ProviderId::Ollama,
        ProviderId::Cartesia,
    ];

    /// The lowercase name used in model ids and tool arguments.
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderId::Anthropic => "anthropic",
            ProviderId::Gemini => "gemini",
            ProviderId::Cerebras => "cerebras",
            ProviderId::Deepseek => "deepseek",
            ProviderId::Openrouter => "openrouter",
            ProviderId::Huggingface => "huggingface",
            ProviderId::Ollama => "ollama",
            ProviderId::Cartesia => "cartesia",
        }
    }

    /// Parses a provider name, case-insensitively, accepting common aliases.
    pub fn parse(s: &str) -> Option<ProviderId> {
        let s = s.trim().to_ascii_lowercase();
        Some(match s.as_str() {
            "anthropic" | "claude" => ProviderId::Anthropic,
            "gemini" | "google" => ProviderId::Gemini,
            "cerebras" => ProviderId::Cerebras,
            "deepseek" => ProviderId::Deepseek,
            "openrouter" => ProviderId::Openrouter,
            "huggingface" | "hf" => ProviderId::Huggingface,
            "ollama" => ProviderId::Ollama,
            "cartesia" => ProviderId::Cartesia,
            _ => return None,
        })
    }
}

impl std::fmt::Display for ProviderId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A provider's base URL must be an absolute http(s) URL with a host, and
/// no query or fragment: the API's paths are appended to it, so
/// `…/v1?x=1` would call `…/v1?x=1/chat/completions` and read the 404 as
/// the model being unavailable.
fn check_base_url(spec: &ProviderSpec, base_url: &str) -> anyhow::Result<()> {
    let problem = match reqwest::Url::parse(base_url) {
        Ok(u) if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none() => {
            "must be an http:// or https:// URL with a host"
        }
        Ok(u) if u.query().is_some() || u.fragment().is_some() => {
            "must not have a query (?…) or fragment (#…): the API's paths are appended to it"
        }
        Ok(_) => return Ok(()),
        Err(_) => "must be an http:// or https:// URL with a host",
    };
    Err(crate::config::InvalidConfig(format!(
        "{} {problem}, got {:?}",
        spec.base_url_env,
        crate::secrets::redact(base_url)
    ))
    .into())
}

/// Token counts of one call, normalised across providers.
///
/// `input_tokens` excludes cached tokens (OpenAI-style `prompt_tokens`
/// includes them; the clients subtract). `output_tokens` includes reasoning
/// tokens, which `reasoning_tokens` breaks out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Usage {
    /// Uncached input tokens.
    pub input_tokens: u64,
    /// Input tokens read from the provider's prompt cache.
    pub cache_read_tokens: u64,
    /// Input tokens written to the provider's prompt cache.
    pub cache_write_tokens: u64,
    /// Output tokens, reasoning included.
    pub output_tokens: u64,
    /// Of the output, tokens spent on hidden reasoning.
    pub reasoning_tokens: u64,
}

/// Upper bound on any single token count a provider reports. Anything above
/// is treated as garbage and clamped, so a hostile or broken reply cannot
/// overflow the ledger's arithmetic.
pub const MAX_REPORTED_TOKENS: u64 = 100_000_000;

/// Reads a token count from JSON, tolerating absence, negatives, floats and
/// overflow: what providers should send is a small non-negative integer.
pub fn token_count(v: Option<&serde_json::Value>) -> u64 {
    let Some(v) = v else { return 0 };
    let n = if let Some(u) = v.as_u64() {
        u
    } else if let Some(f) = v.as_f64() {
        if f.is_finite() && f > 0.0 {
            f as u64
        } else {
            0
        }
    } else {
        0
    };
    n.min(MAX_REPORTED_TOKENS)
}

/// Sampling options the caller asked for; `None` leaves the provider's
/// default. Each client sends what its API has: Anthropic takes one of
/// temperature (at most 1) and top_p and no seed, Gemini, the
/// OpenAI-compatible APIs and Ollama take all three.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sampling {
    /// Randomness, 0 (most deterministic) to 2.
    pub temperature: Option<f64>,
    /// Nucleus sampling: the probability mass sampled from, (0, 1].
    pub top_p: Option<f64>,
    /// Seed for repeatable sampling, where the provider supports it.
    pub seed: Option<i64>,
}

/// One chat call, as a provider client receives it.
#[derive(Debug, Clone)]
pub struct ChatRequest {
    /// The model name as the provider's API expects it.
    pub model: String,
    /// Optional system prompt.
    pub system: Option<String>,
    /// The user's prompt.
    pub prompt: String,
    /// Output limit.
    pub max_tokens: u32,
    /// The prompt's tokens (system prompt included) as estimated before the
    /// call, for providers that must size a context themselves (Ollama).
    pub input_tokens_estimate: u64,
    /// The model's context window in the pricing catalog, when known.
    pub context_window: Option<u64>,
    /// Sampling options, as asked.
    pub sampling: Sampling,
}

/// A provider's answer.
#[derive(Debug, Clone)]
pub struct ChatResponse {
    /// The generated text.
    pub text: String,
    /// The model that answered, as the provider reports it.
    pub model: String,
    /// Token usage as reported.
    pub usage: Usage,
    /// The exact charge, when the provider reports it (OpenRouter).
    pub provider_cost_usd: Option<f64>,
    /// Why generation stopped (`stop`, `end_turn`, `length`…).
    pub finish_reason: Option<String>,
}

/// A client for one provider's API.
#[async_trait]
pub trait Provider: Send + Sync {
    /// Which provider this is.
    fn id(&self) -> ProviderId;
    /// Sends one chat request, streaming where the provider supports it
    /// (each piece of text goes to `sink` as it arrives), and returns the
    /// whole answer with the usage the provider reported. Dropping the
    /// future aborts the HTTP request.
    async fn complete(
        &self,
        req: &ChatRequest,
        sink: &dyn StreamSink,
    ) -> Result<ChatResponse, ProviderError>;
}

/// What a client needs to talk to its provider.
#[derive(Debug, Clone)]
pub struct ProviderConfig {
    /// The API key, if the provider needs one.
    pub api_key: Option<Secret>,
    /// Base URL (the documented one, or the env override).
    pub base_url: String,
    /// Shared HTTP client (connection pool, timeouts).
    pub http: reqwest::Client,
    /// How long a stream may go without an answer event before it counts
    /// as stalled (see [`stream::drive`]).
    pub idle: Duration,
}

/// Static description of a provider: how it is enabled and built.
pub struct ProviderSpec {
    /// Which provider.
    pub id: ProviderId,
    /// Name shown to people.
    pub display_name: &'static str,
    /// Env vars holding the key, first found wins. Empty for keyless providers.
    pub key_envs: &'static [&'static str],
    /// Env var that overrides the base URL.
    pub base_url_env: &'static str,
    /// The documented base URL.
    pub default_base_url: &'static str,
    /// Where a user manages their key, for error messages.
    pub key_help_url: &'static str,
    /// Builds the client; `None` when the client is not implemented yet.
    pub build: Option<fn(ProviderConfig) -> Arc<dyn Provider>>,
}

/// Every provider, in preference order when costs tie.
pub static SPECS: &[&ProviderSpec] = &[
    &anthropic::SPEC,
    &gemini::SPEC,
    &cerebras::SPEC,
    &deepseek::SPEC,
    &openrouter::SPEC,
    &huggingface::SPEC,
    &ollama::SPEC,
    &cartesia::SPEC,
];

/// The spec of `id`.
pub fn spec(id: ProviderId) -> &'static ProviderSpec {
    SPECS
        .iter()
        .copied()
        .find(|s| s.id == id)
        .unwrap_or(&anthropic::SPEC)
}

/// Env var: set to `0` to stop the server probing for a local Ollama when
/// OLLAMA_HOST is unset (tests set it so a developer's Ollama cannot leak in).
pub const OLLAMA_PROBE_ENV: &str = "COST_OPTIMIZER_OLLAMA_PROBE";

/// An enabled provider and why it is enabled.
#[derive(Clone)]
pub struct EnabledProvider {
    /// Its static description.
    pub spec: &'static ProviderSpec,
    /// The client.
    pub client: Arc<dyn Provider>,
    /// Base URL in use.
    pub base_url: String,
    /// Human reason, e.g. "ANTHROPIC_API_KEY is set".
    pub reason: String,
    /// The key, for `doctor`'s masked description.
    pub key: Option<Secret>,
}

/// Status of a provider that is not enabled, for `doctor`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct DisabledProvider {
    /// Which provider.
    pub provider: ProviderId,
    /// Why not, and how to enable it.
    pub reason: String,
}

/// The text-to-speech provider, when enabled.
#[derive(Clone)]
pub struct EnabledSpeech {
    /// The client.
    pub client: Arc<cartesia::Cartesia>,
    /// Base URL in use.
    pub base_url: String,
    /// Human reason.
    pub reason: String,
    /// The key, for `doctor`'s masked description.
    pub key: Option<Secret>,
}

/// The providers enabled in this process.
#[derive(Clone, Default)]
pub struct Registry {
    enabled: BTreeMap<ProviderId, EnabledProvider>,
    speech: Option<EnabledSpeech>,
    disabled: Vec<DisabledProvider>,
}

impl Registry {
    /// Builds the registry from env vars: a provider is enabled when its key
    /// is set (Ollama: when OLLAMA_HOST is set or a local server answers).
    pub fn from_env(
        env: &dyn Fn(&str) -> Option<String>,
        connect_timeout: Duration,
        idle_timeout: Duration,
        request_timeout: Duration,
    ) -> anyhow::Result<Registry> {
        // Two timeouts: the idle one (reset by every read) catches a
        // stalled provider quickly; the total one (reqwest's, which covers
        // the streamed body too) bounds every request, so holds and probe
        // slots outlive any call. An answer still streaming when it runs
        // out is not retried (`Optimizer::complete`): it would run out again.
        let http = reqwest::Client::builder()
            // No LLM API redirects; a gateway that does (to a login page)
            // would get the key: reqwest drops only `Authorization` across
            // hosts, not `x-api-key` nor `x-goog-api-key`, and would follow
            // https to plain http.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(connect_timeout)
            .read_timeout(idle_timeout)
            .timeout(request_timeout)
            .user_agent(concat!(
                env!("CARGO_PKG_NAME"),
                "/",
                env!("CARGO_PKG_VERSION")
            ))
            .build()?;
        let get = |k: &str| env(k).filter(|v| !v.trim().is_empty());
        let mut reg = Registry::default();
        for spec in SPECS.iter().copied() {
            let base_url = get(spec.base_url_env)
                .map(|b| b.trim().trim_end_matches('/').to_string())
                .unwrap_or_else(|| spec.default_base_url.to_string());
            crate::secrets::register_url_credentials(&base_url);
            let key = spec
                .key_envs
                .iter()
                .find_map(|k| get(k).map(|v| (*k, Secret::new(v.trim()))));
            let (enabled, reason, base_url) = if spec.id == ProviderId::Ollama {
                ollama::detect(&get, &base_url)
            } else {
                match &key {
                    Some((name, _)) => (true, format!("{name} is set"), base_url),
                    None => (
                        false,
                        format!("set {} to enable it", spec.key_envs.join(" or ")),
                        base_url,
                    ),
                }
            };
            if !enabled {
                reg.disabled.push(DisabledProvider {
                    provider: spec.id,
                    reason,
                });
                continue;
            }
            // Checked here, not at the first call: a base URL without its
            // scheme failed every call as a "connection" error, retried.
            check_base_url(spec, &base_url)?;
            if spec.id == ProviderId::Cartesia {
                let key = key.map(|(_, k)| k);
                reg.speech = Some(EnabledSpeech {
                    client: Arc::new(cartesia::Cartesia::new(ProviderConfig {
                        api_key: key.clone(),
                        base_url: base_url.clone(),
                        http: http.clone(),
                        idle: idle_timeout,
                    })),
                    base_url,
                    reason,
                    key,
                });
                continue;
            }
            let Some(build) = spec.build else {
                reg.disabled.push(DisabledProvider {
                    provider: spec.id,
                    reason: format!(
                        "{reason}, but this version has no {} client yet",
                        spec.display_name
                    ),
                });
                continue;
            };
            let key = key.map(|(_, k)| k);
            let client = build(ProviderConfig {
                api_key: key.clone(),
                base_url: base_url.clone(),
                http: http.clone(),
                idle: idle_timeout,
            });
            reg.enabled.insert(
                spec.id,
                EnabledProvider {
                    spec,
                    client,
                    base_url,
                    reason,
                    key,
                },
            );
        }
        Ok(reg)
    }

    /// The enabled provider `id`, if any.
    pub fn get(&self, id: ProviderId) -> Option<&EnabledProvider> {
        self.enabled.get(&id)
    }

    /// True when `id` is enabled.
    pub fn is_enabled(&self, id: ProviderId) -> bool {
        self.enabled.contains_key(&id)
    }

    /// The text-to-speech provider, if enabled.
    pub fn speech(&self) -> Option<&EnabledSpeech> {
        self.speech.as_ref()
    }

    /// Enabled providers.
    pub fn enabled(&self) -> impl Iterator<Item = &EnabledProvider> {
        self.enabled.values()
    }

    /// Providers that are not enabled, with the reason.
    pub fn disabled(&self) -> &[DisabledProvider] {
        &self.disabled
    }

    /// Adds a client directly; used by tests and by embedders.
    pub fn insert(&mut self, spec: &'static ProviderSpec, client: Arc<dyn Provider>) {
        self.enabled.insert(
            spec.id,
            EnabledProvider {
                spec,
                client,
                base_url: spec.default_base_url.to_string(),
                reason: "added programmatically".into(),
                key: None,
            },
        );
    }
}

/// Largest response body read from a provider. A provider (or something
/// pretending to be one) cannot make the server buffer more than this.
pub const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// Reads a response body up to [`MAX_RESPONSE_BYTES`].
pub async fn read_body(
    provider: ProviderId,
    resp: reqwest::Response,
) -> Result<Vec<u8>, ProviderError> {
    use futures_util::StreamExt;
    let mut body = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        // A body the transport breaks off is a connection failure (worth a
        // retry), not a reply that could not be understood.
        let chunk = chunk.map_err(|e| {
            let mut err = ProviderError::from_reqwest(provider, &e);
            if err.kind == ErrorKind::Malformed {
                err.kind = ErrorKind::Connection;
                err.detail = format!("the reply broke off: {}", err.detail);
            }
            err
        })?;
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(ProviderError::new(
                provider,
                ErrorKind::Malformed,
                None,
                format!("response body larger than {MAX_RESPONSE_BYTES} bytes"),
            ));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_counts_are_sanitised() {
        use serde_json::json;
        assert_eq!(token_count(Some(&json!(12))), 12);
        assert_eq!(token_count(Some(&json!(-5))), 0);
        assert_eq!(token_count(Some(&json!(3.7))), 3);
        assert_eq!(token_count(Some(&json!("12"))), 0);
        assert_eq!(token_count(Some(&json!(1e300))), MAX_REPORTED_TOKENS);
        assert_eq!(token_count(None), 0);
    }

    #[test]
    fn provider_names_round_trip() {
        for p in ProviderId::ALL {
            assert_eq!(ProviderId::parse(p.as_str()), Some(p));
        }
        assert_eq!(ProviderId::parse("Claude"), Some(ProviderId::Anthropic));
        assert_eq!(ProviderId::parse("nope"), None);
    }

    #[test]
    fn registry_enables_from_keys_and_overrides_base() {
        let env = |k: &str| match k {
            "DEEPSEEK_API_KEY" => Some("sk-deepseek-test-123456".to_string()),
            "DEEPSEEK_BASE_URL" => Some("http://127.0.0.1:9/".to_string()),
            OLLAMA_PROBE_ENV => Some("0".to_string()),
            _ => None,
        };
        let r = Registry::from_env(
            &env,
            Duration::from_secs(1),
            Duration::from_secs(1),
            Duration::from_secs(1),
        )
        .unwrap();
        let d = r.get(ProviderId::Deepseek).unwrap();
        assert_eq!(d.base_url, "http://127.0.0.1:9");
        assert_eq!(d.reason, "DEEPSEEK_API_KEY is set");
        assert!(!r.is_enabled(ProviderId::Anthropic));
        assert!(!r.is_enabled(ProviderId::Ollama));
        assert!(
            r.disabled()
                .iter()
                .any(|d| d.provider == ProviderId::Anthropic
                    && d.reason.contains("ANTHROPIC_API_KEY"))
        );
    }

    /// A base URL without its scheme is refused at start, by name.
    #[test]
    fn a_base_url_without_a_scheme_is_refused() {
        let no_scheme = "DEEPSEEK_BASE_URL must be an http";
        // A query or fragment would end up before the API path.
        let query = "DEEPSEEK_BASE_URL must not have a query";
        for (bad, said) in [
            ("localhost:9", no_scheme),
            ("ftp://example.com", no_scheme),
            ("http://", no_scheme),
            ("http://127.0.0.1:9/v1?x=1", query),
            ("http://127.0.0.1:9/v1#frag", query),
        ] {
            let env = |k: &str| match k {
                "DEEPSEEK_API_KEY" => Some("sk-deepseek-test-123456".to_string()),
                "DEEPSEEK_BASE_URL" => Some(bad.to_string()),
                OLLAMA_PROBE_ENV => Some("0".to_string()),
                _ => None,
            };
            let t = Duration::from_secs(1);
            let err = format!("{:#}", Registry::from_env(&env, t, t, t).err().unwrap());
            assert!(err.contains(said), "{bad}: {err}");
        }
    }
}
