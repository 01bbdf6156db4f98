//! One error type for every provider failure, classified so the caller can
//! decide to retry, fall back or give up, and worded so a person can act.

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::ProviderId;
use crate::secrets::redact;

/// What kind of failure a provider call hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The key was rejected (401/403, Gemini API_KEY_INVALID).
    Auth,
    /// Out of credits, or a spend limit at the provider (402).
    Billing,
    /// Too many requests (429).
    RateLimit,
    /// The provider is overloaded (503, Anthropic 529).
    Overloaded,
    /// No answer in time.
    Timeout,
    /// The provider failed (other 5xx).
    Server,
    /// The request was refused as invalid (400/404/422).
    BadRequest,
    /// The prompt does not fit the model's context window.
    ContextTooLong,
    /// This model cannot serve the call here, though others may: not
    /// found (404, an Ollama model not pulled), no endpoint for it at a
    /// gateway, a free model's daily quota used up, or not offered where
    /// the account is (Gemini `FAILED_PRECONDITION`). Another model is
    /// tried; the provider is not counted as failing.
    ModelUnavailable,
    /// The model answered with no text because it stopped early: its
    /// output limit was used up (reasoning models spend it on thinking
    /// first) or a safety filter ended it. Billed, useless: another model
    /// is tried.
    EmptyAnswer,
    /// The reply could not be understood.
    Malformed,
    /// The provider could not be reached.
    Connection,
}

impl ErrorKind {
    /// Worth trying the same provider again after a pause.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorKind::RateLimit
                | ErrorKind::Overloaded
                | ErrorKind::Timeout
                | ErrorKind::Server
                | ErrorKind::Connection
        )
    }

    /// Worth trying another provider: every failure that is not the
    /// request's own fault.
    pub fn allows_fallback(self) -> bool {
        !matches!(self, ErrorKind::BadRequest)
    }

    /// Short snake_case name for the ledger and structured output.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Auth => "auth",
            ErrorKind::Billing => "billing",
            ErrorKind::RateLimit => "rate_limit",
            ErrorKind::Overloaded => "overloaded",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Server => "server",
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::ContextTooLong => "context_too_long",
            ErrorKind::ModelUnavailable => "model_unavailable",
            ErrorKind::EmptyAnswer => "empty_answer",
            ErrorKind::Malformed => "malformed",
            ErrorKind::Connection => "connection",
        }
    }
}

/// A failed provider call.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderError {
    /// Which provider failed.
    pub provider: ProviderId,
    /// The classification.
    pub kind: ErrorKind,
    /// HTTP status, when there was a reply.
    pub status: Option<u16>,
    /// The provider's own message, redacted and shortened.
    pub detail: String,
    /// How long the provider asked us to wait, if it said.
    pub retry_after: Option<Duration>,
    /// Set when the failure came after the provider accepted the request
    /// (a 2xx reply whose body then broke off, ended early, carried an
    /// error or could not be read): it had started working, so it may bill
    /// for what it produced. Holds the usage the reply reported before it
    /// failed (all zero when it reported none). `None`: the request was
    /// refused or never answered, and nothing was billed.
    pub accepted: Option<super::Usage>,
    /// What the provider said the accepted attempt cost, when its reply
    /// was complete enough to say (OpenRouter's `usage.cost` on an answer
    /// refused as empty): recorded instead of an estimate.
    pub accepted_cost_usd: Option<f64>,
    /// The provider will refuse this request whatever model of its own is
    /// asked (Gemini blocking the prompt itself): its other models are
    /// skipped, though the failure says nothing of its health.
    pub whole_provider: bool,
    /// The provider said the failure is the chosen model's alone (OpenRouter's
    /// 502 "your chosen model is down", its 503 "no available model
    /// provider"): retried as usual, but the provider's other models stay
    /// worth a try and its breaker does not count it.
    pub model_only: bool,
}

/// Longest provider message kept in an error.
const MAX_DETAIL_CHARS: usize = 300;

impl ProviderError {
    /// A new error; `detail` is redacted and shortened.
    pub fn new(
        provider: ProviderId,
        kind: ErrorKind,
        status: Option<u16>,
        detail: impl AsRef<str>,
    ) -> Self {
        ProviderError {
            provider,
            kind,
            status,
            detail: clean_detail(detail.as_ref()),
            retry_after: None,
            accepted: None,
            accepted_cost_usd: None,
            whole_provider: false,
            model_only: false,
        }
    }

    /// Marks a failure that came after the provider accepted the request,
    /// with the usage its reply had reported so far (see
    /// [`ProviderError::accepted`]).
    pub fn after_acceptance(mut self, usage_so_far: super::Usage) -> Self {
        self.accepted = Some(usage_so_far);
        self
    }

    /// [`ProviderError::after_acceptance`] with the cost the provider
    /// reported beside that usage (OpenRouter's `usage.cost` in an error
    /// chunk), which is billed instead of an estimate from the catalog.
    pub fn after_acceptance_at(
        mut self,
        usage_so_far: super::Usage,
        reported_cost_usd: Option<f64>,
    ) -> Self {
        self.accepted = Some(usage_so_far);
        self.accepted_cost_usd = reported_cost_usd;
        self
    }

    /// Classifies a transport-level failure.
    pub fn from_reqwest(provider: ProviderId, e: &reqwest::Error) -> Self {
        let kind = if e.is_timeout() {
            ErrorKind::Timeout
        } else if e.is_connect() {
            ErrorKind::Connection
        } else if e.is_decode() || e.is_body() {
            ErrorKind::Malformed
        } else {
            ErrorKind::Connection
        };
        // Without the URL: its path or query can hold a token (a gateway's
        // `/key/<token>/v1`), and the messages name the *_BASE_URL setting.
        let mut msg = e.to_string();
        if let Some(url) = e.url() {
            msg = msg.replace(&format!(" for url ({url})"), "");
        }
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            // Layers of hyper and reqwest wrap one error in the same words
            // ("request or response body error: request or response body
            // error: …"): each clause once.
            append_cause(&mut msg, &s.to_string());
            source = s.source();
        }
        ProviderError::new(provider, kind, e.status().map(|s| s.as_u16()), msg)
    }

    /// Classifies a non-2xx HTTP reply from its status, headers and body.
    pub fn from_http(
        provider: ProviderId,
        status: u16,
        headers: &reqwest::header::HeaderMap,
        body: &[u8],
    ) -> Self {
        let json: Option<serde_json::Value> = serde_json::from_slice(body).ok();
        let message = json
            .as_ref()
            .and_then(extract_message)
            // Redacted before it is cut short: a key straddling the cut
            // would otherwise leak its first part.
            .unwrap_or_else(|| {
                redact(&without_controls(&String::from_utf8_lossy(body)))
                    .chars()
                    .take(200)
                    .collect()
            });
        // OpenRouter wraps an upstream's refusal as "Provider returned
        // error": the cause is in `metadata.raw`, from `provider_name`.
        let upstream = (provider == ProviderId::Openrouter)
            .then(|| json.as_ref().and_then(openrouter_upstream))
            .flatten();
        let message = match &upstream {
            Some(u) => format!("{message} ({u})"),
            None => message,
        };
        let error_type = json
            .as_ref()
            .and_then(|j| {
                j.pointer("/error/type")
                    .or_else(|| j.pointer("/error/status"))
                    .or_else(|| j.pointer("/error/code"))
            })
            .map(|v| v.to_string().to_ascii_lowercase())
            .unwrap_or_default();
        let lower = format!("{} {}", message.to_ascii_lowercase(), error_type);
        let spend_limit = lower.contains("spend_limit")
            || json
                .as_ref()
                .and_then(|j| j.pointer("/error/details/error_code"))
                .and_then(|v| v.as_str())
                .is_some_and(|c| c.contains("spend_limit"));
        // Gemini names the reason only in `details` ("API key expired"
        // has no other sign of being about the key).
        let reasons: String = json
            .as_ref()
            .and_then(|j| j.pointer("/error/details"))
            .and_then(|d| d.as_array())
            .into_iter()
            .flatten()
            .filter_map(|d| d.get("reason").and_then(|r| r.as_str()))
            .map(|r| r.to_ascii_lowercase())
            .collect::<Vec<_>>()
            .join(" ");
        let bad_key = lower.contains("api_key_invalid")
            || lower.contains("api key not valid")
            || reasons.contains("api_key_invalid");
        // Anthropic says "Your credit balance is too low" with a 400.
        let no_credit = lower.contains("credit balance") || lower.contains("insufficient_quota");
        let kind = match status {
            // Redirects are not followed (the key would go with them): a
            // base URL pointing at something other than the API itself.
            300..=399 => ErrorKind::Malformed,
            401 => ErrorKind::Auth,
            // 403 is also "not this prompt" (OpenRouter's moderation of
            // some models) and "not this model" (a gated HuggingFace
            // repo): another model may answer, and the key is fine.
            403 if is_model_refusal(&lower) => ErrorKind::ModelUnavailable,
            403 => ErrorKind::Auth,
            400 if bad_key => ErrorKind::Auth,
            // OpenRouter's "requires more credits, or fewer max_tokens ...
            // can only afford N": this request is too dear for what is
            // left; a cheaper model (or another provider) may still run,
            // and the breaker must not shut the provider for everyone.
            402 if lower.contains("can only afford") || lower.contains("fewer max_tokens") => {
                ErrorKind::ModelUnavailable
            }
            402 => ErrorKind::Billing,
            400 if no_credit => ErrorKind::Billing,
            429 if spend_limit || no_credit => ErrorKind::Billing,
            // OpenRouter's daily quota of free-model calls ("free-models-
            // per-day ... add credits"): the paid models still work.
            429 if lower.contains("free-models-per") => ErrorKind::ModelUnavailable,
            429 if lower.contains("credit") => ErrorKind::Billing,
            429 => ErrorKind::RateLimit,
            503 | 529 => ErrorKind::Overloaded,
            408 | 504 => ErrorKind::Timeout,
            413 => ErrorKind::ContextTooLong,
            400 | 404 | 422 if is_context_message(&lower) => ErrorKind::ContextTooLong,
            // Model not found or retired (410), no endpoint for it
            // (OpenRouter), not served where the account is (Gemini).
            404 | 410 => ErrorKind::ModelUnavailable,
            // Misdirected / too early: the connection's fault, not the
            // request's; a new one may do.
            421 | 425 => ErrorKind::Connection,
            400 if lower.contains("failed_precondition") => ErrorKind::ModelUnavailable,
            // DeepSeek answers a retired or unknown model with a 400.
            400 | 422 if is_unknown_model(&lower) => ErrorKind::ModelUnavailable,
            // An OpenRouter upstream refused this model's request (a
            // parameter that model's provider does not take, …): another
            // model may well take it.
            400 | 422 if upstream.is_some() => ErrorKind::ModelUnavailable,
            400..=499 => ErrorKind::BadRequest,
            // Ollama's 500 for a model too big for the machine's memory: a
            // smaller local model may still load.
            500 if provider == ProviderId::Ollama && is_out_of_memory(&lower) => {
                ErrorKind::ModelUnavailable
            }
            _ => ErrorKind::Server,
        };
        let message = if (300..400).contains(&status) {
            let to = redirect_host(headers)
                .map(|h| format!(" to {h}"))
                .unwrap_or_default();
            format!(
                "the provider answered with a redirect{to}; redirects are not followed, since the \
                 API key would be sent along: point its base URL at the API itself"
            )
        } else {
            message
        };
        let mut err = ProviderError::new(provider, kind, Some(status), message);
        // A redirect says nothing about one model: the base URL is wrong.
        err.whole_provider = (300..400).contains(&status);
        // OpenRouter routes each model to its own upstreams: a 502 or 503 in
        // its own JSON error shape is about them (per its error reference),
        // not about OpenRouter. An HTML page from its edge is OpenRouter
        // itself down: that counts against its breaker as ever.
        err.model_only = provider == ProviderId::Openrouter
            && (upstream.is_some()
                || matches!(status, 502 | 503)
                    && json
                        .as_ref()
                        .is_some_and(|j| j.get("error").is_some_and(|e| e.is_object())));
        // OpenAI-style reset headers come with every reply: they say when
        // to retry only when the reply is a rate limit.
        err.retry_after = retry_after(headers)
            .or_else(|| anthropic_reset(headers))
            .or_else(|| {
                (kind == ErrorKind::RateLimit)
                    .then(|| ratelimit_reset(headers))
                    .flatten()
            })
            .or_else(|| json.as_ref().and_then(gemini_retry_delay));
        err
    }

    /// A message a person can act on.
    pub fn user_message(&self) -> String {
        let spec = super::spec(self.provider);
        let name = spec.display_name;
        let status = self
            .status
            .map(|s| format!(" (HTTP {s})"))
            .unwrap_or_default();
        let detail = if self.detail.is_empty() {
            String::new()
        } else {
            format!(": {}", self.detail)
        };
        match self.kind {
            ErrorKind::Auth => format!(
                "{} was rejected by {name}{status}{detail}; check the key at {}",
                spec.key_envs.first().copied().unwrap_or("the API key"),
                spec.key_help_url
            ),
            ErrorKind::Billing => format!(
                "{name} refused the call for billing reasons{status}{detail}; add credits or raise the spend limit at {}",
                spec.key_help_url
            ),
            ErrorKind::RateLimit => format!("{name} is rate-limiting requests{status}{detail}"),
            ErrorKind::Overloaded => format!("{name} is overloaded{status}{detail}"),
            ErrorKind::Timeout => format!("{name} did not answer in time{status}{detail}"),
            ErrorKind::Server => format!("{name} had a server error{status}{detail}"),
            ErrorKind::BadRequest => format!("{name} refused the request{status}{detail}"),
            ErrorKind::ModelUnavailable => {
                format!("the model is not available at {name}{status}{detail}")
            }
            ErrorKind::EmptyAnswer => format!("{name} answered with no text{detail}"),
            ErrorKind::ContextTooLong => {
                format!("the prompt is too long for the model at {name}{status}{detail}")
            }
            ErrorKind::Malformed => format!("{name} sent a reply that could not be read{detail}"),
            ErrorKind::Connection if self.accepted.is_some() => {
                format!("the connection to {name} broke during its reply{detail}")
            }
            ErrorKind::Connection => format!(
                "could not reach {name} at its base URL ({}){detail}",
                spec.base_url_env
            ),
        }
    }
}

impl std::fmt::Display for ProviderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.user_message())
    }
}

impl std::error::Error for ProviderError {}

/// Control characters out *before* redaction: a key a provider echoes
/// wrapped over lines (`sk-abc\ndef`) matches no secret until they are gone,
/// and removing them afterwards put it back together, whole.
fn without_controls(s: &str) -> String {
    s.chars().filter(|c| !c.is_control() || *c == ' ').collect()
}

fn clean_detail(s: &str) -> String {
    let s = redact(&without_controls(s));
    let mut out: String = s.chars().take(MAX_DETAIL_CHARS).collect();
    if s.chars().count() > MAX_DETAIL_CHARS {
        out.push('…');
    }
    out.trim().to_string()
}

/// The host a redirect points to, from its `Location` (an absolute URL):
/// shown to say where it went, never its path or query, which may carry
/// a token.
pub fn redirect_host(headers: &reqwest::header::HeaderMap) -> Option<String> {
    let location = headers.get(reqwest::header::LOCATION)?.to_str().ok()?;
    reqwest::Url::parse(location)
        .ok()?
        .host_str()
        .map(str::to_string)
}

fn is_context_message(lower: &str) -> bool {
    [
        "context length",
        "context_length",
        "context window",
        "too long",
        "maximum context",
        "prompt is too long",
        "too many tokens",
        // Anthropic: "input length and `max_tokens` exceed context limit".
        "context limit",
        // Gemini: "The input token count (…) exceeds the maximum number of
        // tokens allowed (…)".
        "maximum number of tokens",
        // Cerebras: "Please reduce the length of the messages or completion".
        "reduce the length",
        // HuggingFace's TGI: "Input validation error: `inputs` tokens +
        // `max_new_tokens` must be <= 8192".
        "max_new_tokens",
        "`inputs` tokens",
    ]
    .iter()
    .any(|p| lower.contains(p))
}

/// A 400 about the model name rather than the request: DeepSeek's "Model
/// Not Exist", OpenAI-style `model_not_found`, OpenRouter's "is not a
/// valid model ID".
fn is_unknown_model(lower: &str) -> bool {
    [
        "model not exist",
        "model_not_found",
        "not a valid model",
        "model does not exist",
        "unknown model",
        // HuggingFace's router: "The requested model 'X' is not supported by
        // any provider you have enabled", "Model not supported by provider
        // together".
        "not supported by any provider",
        "not supported by provider",
        "model_not_supported",
    ]
    .iter()
    .any(|p| lower.contains(p))
}

/// A model that does not fit the server's memory ("model requires more
/// system memory (…) than is available", Ollama).
fn is_out_of_memory(lower: &str) -> bool {
    lower.contains("requires more system memory") || lower.contains("out of memory")
}

/// A 403 that refuses this model or this prompt, not the key.
fn is_model_refusal(lower: &str) -> bool {
    [
        // OpenRouter: "… requires moderation on OpenRouter. Your input was
        // flagged for …".
        "requires moderation",
        "input was flagged",
        // HuggingFace: "Access to model … is restricted", "… is a gated
        // model".
        "access to model",
        "gated model",
        "gated repo",
    ]
    .iter()
    .any(|p| lower.contains(p))
}

/// The human message in the error bodies of every provider we speak to:
/// `{"error":{"message"}}` (OpenAI family, Anthropic, Gemini), a plain
/// `{"error":"…"}` (HuggingFace, Ollama) or `{"message"}`.
fn extract_message(j: &serde_json::Value) -> Option<String> {
    j.pointer("/error/message")
        .or_else(|| j.get("error").filter(|e| e.is_string()))
        .or_else(|| j.get("message"))
        .or_else(|| j.get("detail"))
        .and_then(|v| v.as_str())
        .map(|s| s.to_string())
}

/// What an OpenRouter error says about the upstream that failed:
/// `error.metadata.provider_name` and the upstream's own message from
/// `error.metadata.raw` (a JSON string of its error body, or text),
/// redacted and cut to 300 characters. `None` without either.
fn openrouter_upstream(j: &serde_json::Value) -> Option<String> {
    let meta = j.pointer("/error/metadata")?;
    let who = meta.get("provider_name").and_then(|v| v.as_str());
    let raw = meta.get("raw").and_then(|raw| match raw {
        serde_json::Value::String(s) => Some(
            serde_json::from_str::<serde_json::Value>(s)
                .ok()
                .as_ref()
                .and_then(extract_message)
                .unwrap_or_else(|| s.clone()),
        ),
        serde_json::Value::Object(_) => extract_message(raw),
        _ => None,
    });
    let raw = raw.map(|r| {
        redact(&without_controls(&r))
            .chars()
            .take(300)
            .collect::<String>()
    });
    match (who, raw) {
        (Some(who), Some(raw)) => Some(format!("upstream {who}: {raw}")),
        (Some(who), None) => Some(format!("upstream {who}")),
        (None, Some(raw)) => Some(format!("upstream: {raw}")),
        (None, None) => None,
    }
}

/// `retry-after` as seconds or an HTTP date.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let v = headers.get("retry-after")?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<f64>() {
        if secs.is_finite() && secs >= 0.0 {
            return Some(Duration::from_secs_f64(secs.min(3600.0)));
        }
        return None;
    }
    let when =
        time::OffsetDateTime::parse(v, &time::format_description::well_known::Rfc2822).ok()?;
    let delta = when - time::OffsetDateTime::now_utc();
    Some(Duration::from_secs_f64(
        delta.as_seconds_f64().clamp(0.0, 3600.0),
    ))
}

/// Anthropic's `anthropic-ratelimit-*-reset` (RFC 3339) for the limits whose
/// `-remaining` is 0: the latest of those resets is when a retry can pass.
fn anthropic_reset(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let now = time::OffsetDateTime::now_utc();
    ["requests", "tokens", "input-tokens", "output-tokens"]
        .iter()
        .filter(|l| {
            headers
                .get(format!("anthropic-ratelimit-{l}-remaining"))
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.trim() == "0")
        })
        .filter_map(|l| {
            let v = headers
                .get(format!("anthropic-ratelimit-{l}-reset"))?
                .to_str()
                .ok()?;
            let t = time::OffsetDateTime::parse(
                v.trim(),
                &time::format_description::well_known::Rfc3339,
            )
            .ok()?;
            Some(Duration::from_secs_f64(
                (t - now).as_seconds_f64().clamp(0.0, 3600.0),
            ))
        })
        .max()
}

/// The `x-ratelimit-reset-*` headers of the OpenAI family (Cerebras:
/// `-tokens-minute` and `-requests-day`, in float seconds; OpenAI style:
/// `-tokens` and `-requests`, as `1s`, `6m0s`, `250ms`). The latest reset of
/// the limits whose `-remaining` is 0 is when a retry can pass; with no
/// exhausted limit named, the soonest reset. Read for a 429 only. Without
/// this a Cerebras 429 was retried after 0.5 s and 1 s, both bound to fail.
fn ratelimit_reset(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let mut exhausted: Option<Duration> = None;
    let mut soonest: Option<Duration> = None;
    for limit in ["tokens-minute", "requests-day", "tokens", "requests"] {
        let Some(reset) = headers
            .get(format!("x-ratelimit-reset-{limit}"))
            .and_then(|v| v.to_str().ok())
            .and_then(parse_reset)
        else {
            continue;
        };
        let spent = headers
            .get(format!("x-ratelimit-remaining-{limit}"))
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .is_some_and(|r| r <= 0.0);
        if spent {
            exhausted = exhausted.max(Some(reset));
        }
        soonest = Some(soonest.map_or(reset, |s| s.min(reset)));
    }
    exhausted
        .or(soonest)
        .map(|d| d.min(Duration::from_secs(3600)))
}

/// `1.5` (seconds), or a Go-style duration: `1s`, `6m0s`, `1h2m`, `250ms`.
fn parse_reset(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0)
            .then(|| Duration::from_secs_f64(secs.min(3600.0)));
    }
    let mut total = 0.0;
    let mut rest = v;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .filter(|&i| i > 0)?;
        let n: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 0.001,
            _ => return None,
        };
        total += n * scale;
        rest = &rest[unit_len..];
    }
    (total.is_finite() && !v.is_empty()).then(|| Duration::from_secs_f64(total.min(3600.0)))
}

/// Gemini puts the delay in the body: `RetryInfo.retryDelay = "37s"`.
fn gemini_retry_delay(j: &serde_json::Value) -> Option<Duration> {
    let details = j.pointer("/error/details")?.as_array()?;
    details.iter().find_map(|d| {
        let delay = d.get("retryDelay")?.as_str()?;
        let secs: f64 = delay.trim_end_matches('s').parse().ok()?;
        (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(3600.0)))
    })
}

/// Appends `cause` to an error message as ": cause", unless the message
/// already says it (wrapping layers repeat one error's words).
fn append_cause(msg: &mut String, cause: &str) {
    if cause.is_empty() || msg.ends_with(cause) || msg.contains(&format!("{cause}: ")) {
        return;
    }
    msg.push_str(": ");
    msg.push_str(cause);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cause_said_twice_is_said_once() {
        let mut m = "error decoding response body".to_string();
        for cause in [
            "request or response body error",
            "request or response body error",
            "operation timed out",
        ] {
            append_cause(&mut m, cause);
        }
        assert_eq!(
            m,
            "error decoding response body: request or response body error: operation timed out"
        );
    }
    use reqwest::header::{HeaderMap, HeaderValue};

    fn classify(status: u16, body: &str) -> ProviderError {
        ProviderError::from_http(
            ProviderId::Anthropic,
            status,
            &HeaderMap::new(),
            body.as_bytes(),
        )
    }

    /// Statuses that are not the prompt's fault do not end the call: a
    /// redirect (not followed: the key would go along) sets the provider
    /// aside, a retired model (410) tries another, a misdirected request
    /// (421) another connection; TGI's context error is one.
    #[test]
    fn redirects_retired_models_and_tgi_context_errors() {
        let mut h = HeaderMap::new();
        h.insert(
            "location",
            HeaderValue::from_static("http://sso.corp.example/login?next=/v1/messages"),
        );
        let e = ProviderError::from_http(ProviderId::Anthropic, 302, &h, b"");
        assert_eq!(e.kind, ErrorKind::Malformed);
        assert!(!e.kind.is_retryable() && e.kind.allows_fallback());
        assert!(e.whole_provider);
        assert!(
            e.detail.contains("redirect to sso.corp.example"),
            "{}",
            e.detail
        );
        assert!(!e.detail.contains("login"), "{}", e.detail);
        assert_eq!(
            classify(410, r#"{"error":{"message":"gone"}}"#).kind,
            ErrorKind::ModelUnavailable
        );
        assert_eq!(classify(421, "").kind, ErrorKind::Connection);
        let tgi = r#"{"error":"Input validation error: `inputs` tokens + `max_new_tokens` must be <= 8192. Given: 9000 `inputs` tokens and 1024 `max_new_tokens`","error_type":"validation"}"#;
        assert_eq!(
            ProviderError::from_http(
                ProviderId::Huggingface,
                422,
                &HeaderMap::new(),
                tgi.as_bytes()
            )
            .kind,
            ErrorKind::ContextTooLong
        );
    }

    /// Cerebras and OpenAI-style rate-limit headers give the wait when no
    /// `retry-after` does: the exhausted limit's reset.
    #[test]
    fn ratelimit_reset_headers_give_the_wait() {
        let with = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(*k, HeaderValue::from_static(v));
            }
            ProviderError::from_http(ProviderId::Cerebras, 429, &h, b"{}").retry_after
        };
        let secs = |s: f64| Some(Duration::from_secs_f64(s));
        assert_eq!(
            with(&[
                ("x-ratelimit-reset-tokens-minute", "1.5"),
                ("x-ratelimit-remaining-tokens-minute", "0"),
                ("x-ratelimit-reset-requests-day", "40000.2"),
                ("x-ratelimit-remaining-requests-day", "1200"),
            ]),
            secs(1.5)
        );
        // The daily limit is the one spent: no point retrying within the hour.
        assert_eq!(
            with(&[
                ("x-ratelimit-reset-tokens-minute", "1.5"),
                ("x-ratelimit-remaining-tokens-minute", "5000"),
                ("x-ratelimit-reset-requests-day", "40000.2"),
                ("x-ratelimit-remaining-requests-day", "0"),
            ]),
            secs(3600.0)
        );
        assert_eq!(
            with(&[("x-ratelimit-reset-tokens-minute", "2.25")]),
            secs(2.25)
        );
        assert_eq!(
            with(&[
                ("x-ratelimit-reset-requests", "6m0s"),
                ("x-ratelimit-remaining-requests", "0")
            ]),
            secs(360.0)
        );
        assert_eq!(with(&[("x-ratelimit-reset-tokens", "250ms")]), secs(0.25));
        assert_eq!(with(&[("x-ratelimit-reset-tokens", "soon")]), None);
        assert_eq!(with(&[]), None);
        // On a 503 the same headers (sent with every reply) set no wait.
        let mut h = HeaderMap::new();
        h.insert(
            "x-ratelimit-reset-tokens-minute",
            HeaderValue::from_static("45"),
        );
        let e = ProviderError::from_http(ProviderId::Cerebras, 503, &h, b"{}");
        assert_eq!(e.retry_after, None);
    }

    /// A key echoed in a non-JSON error page (a proxy's HTML 502) is
    /// redacted before the page is cut to its first 200 characters, so no
    /// part of it survives even where it straddles the cut.
    #[test]
    fn a_key_straddling_the_cut_of_an_error_page_is_not_leaked() {
        let key = "sk-straddle-0123456789abcdefghijklmnopqrstuv";
        crate::secrets::register(key);
        for pad in [180, 190, 195, 199] {
            let body = format!("<html>{}{key} bad gateway</html>", "x".repeat(pad - 6));
            let e = classify(502, &body);
            let shown = e.user_message();
            for window in key.as_bytes().windows(8) {
                let part = std::str::from_utf8(window).unwrap();
                assert!(!shown.contains(part), "pad {pad}: {part:?} in {shown}");
            }
        }
    }

    #[test]
    fn statuses_map_to_kinds() {
        assert_eq!(classify(401, "{}").kind, ErrorKind::Auth);
        assert_eq!(classify(402, "{}").kind, ErrorKind::Billing);
        assert_eq!(classify(429, "{}").kind, ErrorKind::RateLimit);
        assert_eq!(classify(529, "{}").kind, ErrorKind::Overloaded);
        assert_eq!(classify(500, "{}").kind, ErrorKind::Server);
        assert_eq!(classify(422, "{}").kind, ErrorKind::BadRequest);
        assert_eq!(
            classify(
                400,
                r#"{"error":{"message":"prompt is too long: 250000 tokens > 200000 maximum"}}"#
            )
            .kind,
            ErrorKind::ContextTooLong
        );
        assert_eq!(
            classify(400, r#"{"error":{"code":400,"message":"API key not valid. Please pass a valid API key.","status":"INVALID_ARGUMENT","details":[{"reason":"API_KEY_INVALID"}]}}"#).kind,
            ErrorKind::Auth
        );
        assert_eq!(
            classify(429, r#"{"type":"error","error":{"type":"rate_limit_error","message":"spend limit","details":{"error_code":"enforced_spend_limit_reached"}}}"#).kind,
            ErrorKind::Billing
        );
    }

    /// Failures of one model, or of the account, that must not end the
    /// whole call the way a malformed request does (wire bodies as the
    /// providers send them).
    #[test]
    fn model_and_account_failures_are_not_bad_requests() {
        // Anthropic: out of credit, with a 400.
        assert_eq!(
            classify(400, r#"{"type":"error","error":{"type":"invalid_request_error","message":"Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing to upgrade or purchase credits."}}"#).kind,
            ErrorKind::Billing
        );
        // OpenAI-style model not found; OpenRouter without an endpoint.
        assert_eq!(
            classify(404, r#"{"error":{"message":"The model `x` does not exist","type":"invalid_request_error","code":"model_not_found"}}"#).kind,
            ErrorKind::ModelUnavailable
        );
        assert_eq!(
            classify(
                404,
                r#"{"error":{"message":"No endpoints found for some-lab/some-model.","code":404}}"#
            )
            .kind,
            ErrorKind::ModelUnavailable
        );
        // OpenRouter's free-model daily quota: the paid models still work.
        let free = classify(
            429,
            r#"{"error":{"message":"Rate limit exceeded: free-models-per-day. Add 10 credits to unlock 1000 free model requests per day","code":429}}"#,
        );
        assert_eq!(free.kind, ErrorKind::ModelUnavailable);
        // Gemini: not offered where the account is.
        assert_eq!(
            classify(400, r#"{"error":{"code":400,"message":"User location is not supported for the API use.","status":"FAILED_PRECONDITION"}}"#).kind,
            ErrorKind::ModelUnavailable
        );
        // Still the request's fault: a bad parameter.
        assert_eq!(
            classify(
                400,
                r#"{"error":{"message":"temperature: must be at most 2"}}"#
            )
            .kind,
            ErrorKind::BadRequest
        );
        assert!(ErrorKind::ModelUnavailable.allows_fallback());
        assert!(!ErrorKind::ModelUnavailable.is_retryable());
    }

    /// Wire bodies the providers send for a key, a model or a prompt
    /// length, which must not be read as a malformed request (that ends
    /// the call with no fallback).
    /// A key echoed wrapped over lines is redacted, not put back together
    /// whole when the line breaks are taken out.
    #[test]
    fn a_wrapped_key_in_an_error_is_redacted() {
        // Halves shorter than a key piece: only taking the line break out
        // before redacting catches it.
        let _k = crate::secrets::Secret::new("sk-wr4pK3y9zQ1x7");
        for body in [
            "Incorrect API key provided: sk-wr4pK\n3y9zQ1x7",
            r#"{"error":{"message":"Incorrect API key provided: sk-wr4pK\r\n3y9zQ1x7"}}"#,
        ] {
            let e = classify(401, body);
            assert!(!e.detail.contains("sk-wr4pK3y9zQ1x7"), "{}", e.detail);
            assert!(e.detail.contains("[REDACTED]"), "{}", e.detail);
        }
    }

    #[test]
    fn keys_models_and_lengths_are_told_apart() {
        // Gemini: an expired key says so only in `details[].reason`.
        assert_eq!(
            classify(400, r#"{"error":{"code":400,"message":"API key expired. Please renew the API key.","status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"API_KEY_INVALID","domain":"googleapis.com"}]}}"#).kind,
            ErrorKind::Auth
        );
        for body in [
            r#"{"type":"error","error":{"type":"invalid_request_error","message":"input length and `max_tokens` exceed context limit: 199759 + 8192 > 200000, decrease input length or `max_tokens` and try again"}}"#,
            r#"{"error":{"code":400,"message":"The input token count (1231302) exceeds the maximum number of tokens allowed (1048576).","status":"INVALID_ARGUMENT"}}"#,
            r#"{"message":"Please reduce the length of the messages or completion. Current length is 70000 while limit is 65536","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}"#,
        ] {
            assert_eq!(
                classify(400, body).kind,
                ErrorKind::ContextTooLong,
                "{body}"
            );
        }
        // HuggingFace: no provider the account enabled serves the model.
        for body in [
            r#"{"error":"The requested model 'meta-llama/Llama-3.3-70B-Instruct' is not supported by any provider you have enabled."}"#,
            r#"{"error":"Model not supported by provider together"}"#,
        ] {
            assert_eq!(
                classify(400, body).kind,
                ErrorKind::ModelUnavailable,
                "{body}"
            );
        }
        // Ollama: a model too big for this machine; a smaller one may load.
        // Elsewhere "out of memory" is a server's passing trouble.
        let ollama = |body: &str| {
            ProviderError::from_http(ProviderId::Ollama, 500, &HeaderMap::new(), body.as_bytes())
        };
        assert_eq!(
            ollama(r#"{"error":"model requires more system memory (45.2 GiB) than is available (15.1 GiB)"}"#).kind,
            ErrorKind::ModelUnavailable
        );
        assert_eq!(ollama(r#"{"error":"internal"}"#).kind, ErrorKind::Server);
        assert_eq!(
            classify(500, r#"{"error":"CUDA out of memory"}"#).kind,
            ErrorKind::Server
        );
        // OpenRouter's "Provider returned error" carries the upstream's
        // cause in metadata: it is classified (a context overflow), shown,
        // and a refusal there is the model's, not OpenRouter's.
        let openrouter = |status, body: &str| {
            ProviderError::from_http(
                ProviderId::Openrouter,
                status,
                &HeaderMap::new(),
                body.as_bytes(),
            )
        };
        let e = openrouter(
            400,
            r#"{"error":{"code":400,"message":"Provider returned error","metadata":{"provider_name":"Anthropic","raw":"{\"type\":\"error\",\"error\":{\"type\":\"invalid_request_error\",\"message\":\"`temperature` is deprecated for this model.\"}}"}}}"#,
        );
        assert_eq!(e.kind, ErrorKind::ModelUnavailable);
        assert!(e.model_only);
        assert!(
            e.detail
                .contains("upstream Anthropic: `temperature` is deprecated"),
            "{}",
            e.detail
        );
        let e = openrouter(
            400,
            r#"{"error":{"code":400,"message":"Provider returned error","metadata":{"provider_name":"DeepInfra","raw":"This model's maximum context length is 8192 tokens"}}}"#,
        );
        assert_eq!(e.kind, ErrorKind::ContextTooLong);
        // Without metadata a 400 is still a bad request.
        let e = openrouter(400, r#"{"error":{"code":400,"message":"Input required"}}"#);
        assert_eq!(e.kind, ErrorKind::BadRequest);
        assert!(!e.model_only);
        // OpenRouter's 502/503 are about the chosen model (retried all the
        // same); elsewhere a 503 is the provider overloaded.
        for status in [502, 503] {
            let e = ProviderError::from_http(
                ProviderId::Openrouter,
                status,
                &HeaderMap::new(),
                br#"{"error":{"code":503,"message":"No available model provider that meets your routing requirements"}}"#,
            );
            assert!(e.model_only && e.kind.is_retryable(), "{status}");
        }
        // Its edge's HTML page: OpenRouter itself is down.
        let e = ProviderError::from_http(
            ProviderId::Openrouter,
            503,
            &HeaderMap::new(),
            b"<html><body>503 Service Temporarily Unavailable</body></html>",
        );
        assert!(!e.model_only);
        let e = classify(503, "{}");
        assert!(e.kind == ErrorKind::Overloaded && !e.model_only);
        // DeepSeek: a retired model.
        assert_eq!(
            classify(400, r#"{"error":{"message":"Model Not Exist","type":"invalid_request_error","param":null,"code":"invalid_request_error"}}"#).kind,
            ErrorKind::ModelUnavailable
        );
        // OpenRouter: this request is too dear for the credit left, not an
        // empty account (a plain 402 stays billing).
        assert_eq!(
            classify(402, r#"{"error":{"message":"This request requires more credits, or fewer max_tokens. You requested up to 16384 tokens, but can only afford 5291. To increase, visit https://openrouter.ai/settings/credits and upgrade to a paid account","code":402}}"#).kind,
            ErrorKind::ModelUnavailable
        );
        assert_eq!(
            classify(
                402,
                r#"{"error":{"message":"Insufficient credits","code":402}}"#
            )
            .kind,
            ErrorKind::Billing
        );
        // OpenRouter's moderation and a gated HuggingFace model: not the key.
        assert_eq!(
            classify(403, r#"{"error":{"code":403,"message":"openai/gpt-4o requires moderation on OpenRouter. Your input was flagged for \"harassment\". No credits were charged.","metadata":{"reasons":["harassment"],"flagged_input":"..."}}}"#).kind,
            ErrorKind::ModelUnavailable
        );
        assert_eq!(
            classify(403, r#"{"error":"Access to model meta-llama/Llama-3.1-8B-Instruct is restricted. You must have access to it and be authenticated to access it. Please log in."}"#).kind,
            ErrorKind::ModelUnavailable
        );
        // Anthropic's and Gemini's 403 for the key itself stay auth errors,
        // whatever words they use.
        assert_eq!(
            classify(403, r#"{"error":{"code":403,"message":"API key suspended while usage is investigated; your account has been flagged","status":"PERMISSION_DENIED"}}"#).kind,
            ErrorKind::Auth
        );
        assert_eq!(
            classify(403, r#"{"type":"error","error":{"type":"permission_error","message":"Your API key does not have permission to use the specified resource."}}"#).kind,
            ErrorKind::Auth
        );
        assert_eq!(
            classify(403, r#"{"error":{"code":403,"message":"Your API key was reported as leaked. Please use another API key.","status":"PERMISSION_DENIED"}}"#).kind,
            ErrorKind::Auth
        );
    }

    #[test]
    fn retry_after_from_header_and_gemini_body() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("7"));
        let e = ProviderError::from_http(ProviderId::Openrouter, 429, &h, b"{}");
        assert_eq!(e.retry_after, Some(Duration::from_secs(7)));
        let body = r#"{"error":{"code":429,"status":"RESOURCE_EXHAUSTED","message":"quota","details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"37s"}]}}"#;
        let e =
            ProviderError::from_http(ProviderId::Gemini, 429, &HeaderMap::new(), body.as_bytes());
        assert_eq!(e.retry_after, Some(Duration::from_secs(37)));
    }

    #[test]
    fn anthropic_reset_headers_give_the_wait() {
        let mut h = HeaderMap::new();
        let reset = time::OffsetDateTime::now_utc() + time::Duration::seconds(20);
        let reset = reset
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap();
        h.insert(
            "anthropic-ratelimit-tokens-remaining",
            HeaderValue::from_static("0"),
        );
        h.insert(
            "anthropic-ratelimit-tokens-reset",
            HeaderValue::from_str(&reset).unwrap(),
        );
        h.insert(
            "anthropic-ratelimit-requests-remaining",
            HeaderValue::from_static("40"),
        );
        let e = ProviderError::from_http(ProviderId::Anthropic, 429, &h, b"{}");
        let wait = e.retry_after.unwrap().as_secs_f64();
        assert!((18.0..=20.5).contains(&wait), "{wait}");
    }

    #[test]
    fn auth_message_names_the_env_var_and_hides_the_key() {
        let key = crate::secrets::Secret::new("sk-ant-leaky-key-000111222");
        let body = format!(
            r#"{{"error":{{"message":"invalid x-api-key {}"}}}}"#,
            key.expose()
        );
        let e = classify(401, &body);
        let msg = e.user_message();
        assert!(msg.contains("ANTHROPIC_API_KEY was rejected"), "{msg}");
        assert!(!msg.contains(key.expose()), "{msg}");
    }

    #[test]
    fn plain_string_errors_are_read() {
        let e = ProviderError::from_http(
            ProviderId::Huggingface,
            503,
            &HeaderMap::new(),
            br#"{"error":"Model is loading"}"#,
        );
        assert_eq!(e.kind, ErrorKind::Overloaded);
        assert_eq!(e.detail, "Model is loading");
    }
}
