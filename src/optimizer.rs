//! The core: validate a request, route it, reserve its worst case against
//! the budget, call the provider (falling back on failure), price the real
//! usage and record it. The MCP tools and the CLI are thin layers over the
//! five operations here, so both behave identically.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::budget::alerts::{BudgetAlert, Webhook, WebhookFormat};
use crate::budget::{self, Budget, BudgetMode, BudgetStatus, DEFAULT_USER};
use crate::config::{MAX_OUTPUT_TOKENS, MAX_PROMPT_BYTES, Settings};
use crate::ledger::{
    AlertRow, BandStat, Breakdown, CallRecord, CallRow, GLOBAL_SCOPE, Group, Ledger, LimitCheck,
    SnapshotRequest, Totals, to_nanos, to_usd,
};
use crate::pricing::{Catalog, CostSource, PriceOrigin};
use crate::providers::health::{Admission, Breakers};
use crate::providers::{
    AttemptRoute, ChatRequest, ErrorKind, ProviderId, Registry, StreamSink, Usage,
};
use crate::router::{Candidate, Preference, Reason, RoutePlan, RouteRequest, Router, Tier};

/// Returns the current time as unix milliseconds. Injectable so budget
/// periods can be tested without waiting.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// The system clock.
pub fn system_clock() -> Clock {
    Arc::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    })
}

/// A failed operation, worded for the person (or model) who called it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ToolError {
    /// An argument is wrong; the message names it.
    #[error("{0}")]
    Invalid(String),
    /// The budget refused the call.
    #[error("{0}")]
    BudgetRefused(String),
    /// Every provider tried failed.
    #[error("{0}")]
    ProviderFailed(String),
    /// Every provider tried said the prompt does not fit its model's
    /// context window: the caller must shorten it (HTTP clients get 400
    /// `context_length_exceeded`, which OpenAI clients act on), not retry.
    #[error("{0}")]
    ContextTooLong(String),
    /// Every attempt was refused for capacity (rate limits, overload): the
    /// same call may succeed later. `rate_limited` when every attempt was
    /// a rate limit (HTTP clients get 429, else 503).
    #[error("{message}")]
    ProvidersBusy {
        /// What happened, attempts included.
        message: String,
        /// Every attempt was a rate limit.
        rate_limited: bool,
        /// The longest wait a provider asked for, if any (HTTP clients get
        /// it as `Retry-After`).
        retry_after_secs: Option<u64>,
    },
    /// The ledger is unusable.
    #[error("{0}")]
    Ledger(String),
}

impl ToolError {
    /// A stable name of the error's kind, for programs (`--json` output).
    pub fn kind(&self) -> &'static str {
        match self {
            ToolError::Invalid(_) => "invalid_argument",
            ToolError::BudgetRefused(_) => "budget_refused",
            ToolError::ProviderFailed(_) => "provider_failed",
            ToolError::ContextTooLong(_) => "context_too_long",
            ToolError::ProvidersBusy { .. } => "providers_busy",
            ToolError::Ledger(_) => "ledger_unavailable",
        }
    }
}

fn invalid(msg: impl Into<String>) -> ToolError {
    ToolError::Invalid(msg.into())
}

// ---------------------------------------------------------------------------
// Arguments (shared by the MCP tools and the CLI; doc comments become the
// field descriptions in the tools' JSON schemas).
// ---------------------------------------------------------------------------

/// Arguments of `complete_prompt`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CompleteArgs {
    /// The prompt to send to the model.
    pub prompt: String,
    /// Optional system prompt.
    #[serde(default)]
    pub system: Option<String>,
    /// Maximum output tokens (default 1024, at most 200000). The worst case
    /// at this length is reserved against the budget before the call.
    #[serde(default, deserialize_with = "whole_number")]
    pub max_tokens: Option<i64>,
    /// Most this single call may cost in USD (worst case). Cheaper tiers are
    /// chosen to fit; the call is refused if nothing fits.
    #[serde(default)]
    pub budget_limit: Option<f64>,
    /// Only use this provider: anthropic, gemini, cerebras, deepseek,
    /// openrouter, huggingface, ollama.
    #[serde(default)]
    pub force_provider: Option<String>,
    /// Use exactly this model, as `provider/model` (e.g.
    /// `anthropic/claude-haiku-4-5`); skips routing.
    #[serde(default)]
    pub force_model: Option<String>,
    /// Use this tier instead of the one the complexity score picks. Honoured
    /// exactly: refused (with the reason) rather than swapped for another
    /// tier when none of its models is available, fits the prompt or fits
    /// the budget.
    #[serde(default)]
    #[schemars(extend("enum" = ["free", "cheap", "medium", "premium", null]))]
    pub tier: Option<String>,
    /// When the complexity score is within 0.03 of a tier boundary: `cost`
    /// takes the cheaper of the two tiers, `quality` the stronger. Default:
    /// the server's `[routing] prefer` setting (`cost` unless configured).
    #[serde(default)]
    #[schemars(extend("enum" = ["cost", "quality", null]))]
    pub prefer: Option<String>,
    /// Whose budget pays (default "default").
    #[serde(default)]
    pub user_id: Option<String>,
    /// Also read the answer aloud with Cartesia text-to-speech (needs
    /// CARTESIA_API_KEY); the WAV file's path is returned in `audio`.
    #[serde(default)]
    pub speak: Option<bool>,
    /// Cartesia voice id for `speak` (default: a stock English voice).
    #[serde(default)]
    pub voice: Option<String>,
    /// Language `speak` reads the answer in, as Cartesia's `sonic-3` names
    /// it (ISO 639-1: `en`, `fr`, `de`, `es`, `ja`, `zh`, `hi`, `ar`, `vi`
    /// and 33 more, listed in the schema). Default: the answer's language
    /// when it is clear, else English.
    #[serde(default)]
    #[schemars(extend("enum" = ["en", "de", "es", "fr", "ja", "pt", "zh", "hi", "ko", "it", "nl", "pl", "ru", "sv", "tr", "tl", "bg", "ro", "ar", "cs", "el", "fi", "hr", "ms", "sk", "da", "ta", "uk", "hu", "no", "vi", "bn", "th", "he", "ka", "id", "te", "gu", "kn", "ml", "mr", "pa", null]))]
    pub language: Option<String>,
    /// Sampling temperature, 0-2 (default: the provider's). Anthropic
    /// takes at most 1: higher is sent as 1; Claude Opus 4.7 and later
    /// models take none, so it is not sent to them.
    #[serde(default)]
    pub temperature: Option<f64>,
    /// Nucleus sampling, (0, 1] (default: the provider's). Not sent to
    /// Anthropic together with `temperature` (its 4.x models refuse both),
    /// nor to Claude Opus 4.7 and later at all.
    #[serde(default)]
    pub top_p: Option<f64>,
    /// Seed for repeatable sampling where the provider supports one
    /// (Gemini, the OpenAI-compatible APIs, Ollama; not Anthropic).
    #[serde(default, deserialize_with = "whole_number")]
    pub seed: Option<i64>,
    /// Rate an earlier answer while asking this prompt: its `request_id`
    /// and a rating (`good`, `ok`, `bad` or 1-5). Recorded before this call
    /// is routed; `ai-cost-optimizer calibrate` learns thresholds from it.
    #[serde(default)]
    pub feedback: Option<crate::feedback::FeedbackArgs>,
    /// Set by the transport, never by a client: the only user whose calls
    /// `feedback` may rate (a plain HTTP key's user). Ratings reveal the
    /// rated call's model and score and feed calibration for everyone, so
    /// one key must not rate another user's calls.
    #[serde(skip)]
    #[schemars(skip)]
    pub feedback_owner: Option<String>,
}

/// Arguments of `get_recommendation`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RecommendArgs {
    /// The prompt to analyse. Nothing is sent to any model.
    pub prompt: String,
    /// Maximum output tokens the call would allow (default 1024).
    #[serde(default, deserialize_with = "whole_number")]
    pub max_tokens: Option<i64>,
    /// Most the call may cost in USD (worst case).
    #[serde(default)]
    pub budget_limit: Option<f64>,
    /// When the complexity score is within 0.03 of a tier boundary: `cost`
    /// takes the cheaper of the two tiers, `quality` the stronger. Default:
    /// the server's `[routing] prefer` setting (`cost` unless configured).
    #[serde(default)]
    #[schemars(extend("enum" = ["cost", "quality", null]))]
    pub prefer: Option<String>,
    /// Whose budget to check (default "default").
    #[serde(default)]
    pub user_id: Option<String>,
}

/// Arguments of `check_model_costs`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CostArgs {
    /// Only this provider's models (anthropic, gemini, cerebras, deepseek,
    /// openrouter, huggingface, ollama).
    #[serde(default)]
    pub provider: Option<String>,
    /// Only models whose id contains this text (e.g. "haiku").
    #[serde(default)]
    pub model: Option<String>,
    /// A prompt to estimate the cost of on each model.
    #[serde(default)]
    pub prompt: Option<String>,
}

/// Arguments of `query_usage`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UsageArgs {
    /// Whole UTC days to report, today included (default 30: today and the
    /// 29 days before it; at most 3650), as the dashboard counts them.
    #[serde(default, deserialize_with = "whole_number")]
    pub days: Option<i64>,
    /// Start date instead of `days`: `YYYY-MM-DD` or RFC 3339.
    #[serde(default)]
    pub since: Option<String>,
    /// Only this user's calls (default: everyone's; the budget shown is this
    /// user's or "default").
    #[serde(default)]
    pub user_id: Option<String>,
    /// Breakdown to include: model, provider, day, week, month, tier, user
    /// or band (complexity band; default: model, provider and day).
    #[serde(default)]
    #[schemars(extend("enum" = ["model", "provider", "day", "week", "month", "tier", "user", "band", null]))]
    pub group_by: Option<String>,
}

/// Arguments of `set_budget`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SetBudgetArgs {
    /// Spending limit per calendar month, in USD (> 0).
    pub monthly_limit: f64,
    /// Alert thresholds as fractions of the limit, ascending, each from
    /// 0.001 to 1 (omitted: the budget's current ones, or for a new budget
    /// the configured defaults, normally [0.5, 0.8, 1.0]).
    #[serde(default)]
    pub alert_thresholds: Option<Vec<f64>>,
    /// Whose budget (default "default").
    #[serde(default)]
    pub user_id: Option<String>,
    /// At the limit: "block" refuses calls, "downgrade" routes cheaper past
    /// the first threshold and refuses at the limit, "warn" only alerts
    /// (omitted: the budget's current mode, or for a new budget the
    /// configured default, normally "block").
    #[serde(default)]
    #[schemars(extend("enum" = ["warn", "downgrade", "block", null]))]
    pub mode: Option<String>,
    /// Budget period: "monthly", "weekly" (from Monday) or "daily" (omitted:
    /// the budget's current period, or for a new budget the configured
    /// default, normally "monthly").
    /// `monthly_limit` is then the limit per that period.
    #[serde(default)]
    #[schemars(extend("enum" = ["daily", "weekly", "monthly", null]))]
    pub period: Option<String>,
    /// IANA time zone whose calendar starts the periods, e.g. "Europe/Berlin"
    /// (omitted: the budget's current one, or the config's, else "UTC").
    #[serde(default)]
    pub timezone: Option<String>,
    /// http(s) URL that receives an alert each time a threshold is crossed
    /// (once per threshold per period). Empty string removes it.
    #[serde(default)]
    pub webhook_url: Option<String>,
    /// Webhook payload: "json" (default for a new webhook), "slack" or
    /// "discord".
    #[serde(default)]
    #[schemars(extend("enum" = ["json", "slack", "discord", null]))]
    pub webhook_format: Option<String>,
    /// Set the global budget, which caps all users together, instead of a
    /// user's (do not combine with user_id).
    #[serde(default)]
    pub global: Option<bool>,
}

// ---------------------------------------------------------------------------
// Results.
// ---------------------------------------------------------------------------

/// The complexity analysis of a prompt.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Complexity {
    /// 0.0 (trivial) to 1.0 (needs the strongest model).
    pub score: f64,
    /// The features that moved the score most.
    pub reasons: Vec<Reason>,
}

/// Token counts of a completed call.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct TokenCounts {
    /// Uncached input tokens.
    pub input: u64,
    /// Input tokens read from the provider's cache.
    pub cached: u64,
    /// Input tokens written to the provider's cache.
    pub cache_write: u64,
    /// Output tokens (reasoning included).
    pub output: u64,
    /// Of the output, reasoning tokens.
    pub reasoning: u64,
}

impl From<Usage> for TokenCounts {
    fn from(u: Usage) -> Self {
        TokenCounts {
            input: u.input_tokens,
            cached: u.cache_read_tokens,
            cache_write: u.cache_write_tokens,
            output: u.output_tokens,
            reasoning: u.reasoning_tokens,
        }
    }
}

/// One provider attempt of a call.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Attempt {
    /// Provider tried.
    pub provider: ProviderId,
    /// Model tried.
    pub model: String,
    /// `ok` or the error kind.
    pub outcome: String,
    /// The error, if it failed.
    pub error: Option<String>,
    /// Wall time, ms.
    pub latency_ms: u64,
    /// The pause before the next attempt on the same model, ms, when it
    /// was retried: the provider's `retry-after` when it gave one, else
    /// the backoff. Says where a slow call's time went.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retried_after_ms: Option<u64>,
}

/// What an always-premium user would have paid.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Baseline {
    /// The baseline model.
    pub model: String,
    /// Its cost for the same usage (or the estimate), USD.
    pub cost_usd: f64,
}

/// The spoken answer, when `speak` was asked for.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Audio {
    /// Where the WAV file was written.
    pub path: Option<String>,
    /// Size of the file in bytes.
    pub bytes: u64,
    /// Characters synthesised (what Cartesia bills).
    pub characters: u64,
    /// Cartesia model.
    pub model: String,
    /// Voice id.
    pub voice: String,
    /// Language the answer was read in (ISO 639-1).
    pub language: String,
    /// How that language was chosen: `asked` (the `language` argument),
    /// `detected` (from the answer's text) or `default` (English: the
    /// answer's language was unclear or not one Cartesia's model speaks).
    pub language_source: &'static str,
    /// What the speech cost, USD (on top of `cost_usd`).
    pub cost_usd: f64,
    /// Why there is no audio, if synthesis failed or was skipped.
    pub error: Option<String>,
    /// A speech attempt's row that the ledger refused (its cost is not in
    /// the totals): the completion then says it was not recorded.
    #[serde(skip)]
    pub unrecorded: Option<String>,
}

/// Result of `complete_prompt`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Completion {
    /// The model's answer.
    pub answer: String,
    /// Model that answered (`provider/model`).
    pub model: String,
    /// Provider that answered.
    pub provider: ProviderId,
    /// Tier the model came from; null for a model forced by the caller
    /// that is in no routing tier (reports count it as `forced`).
    pub tier: Option<Tier>,
    /// What the answer cost, USD (the attempt that answered).
    pub cost_usd: f64,
    /// What earlier attempts of this call were charged, USD: attempts cut
    /// off after the provider accepted them (it bills them), recorded in
    /// the ledger under the same `request_id`. Usually 0.
    pub failed_attempts_cost_usd: f64,
    /// How the cost was determined (provider, catalog, local, unpriced).
    pub cost_source: CostSource,
    /// Token counts reported by the provider.
    pub tokens: TokenCounts,
    /// The complexity analysis.
    pub complexity: Complexity,
    /// The always-premium baseline for the same usage.
    pub baseline: Option<Baseline>,
    /// Baseline cost minus actual cost, USD.
    pub savings_usd: f64,
    /// Savings as a percentage of the baseline.
    pub savings_percent: f64,
    /// Time from request to answer, ms (all attempts).
    pub latency_ms: u64,
    /// Why generation stopped.
    pub finish_reason: Option<String>,
    /// Every provider tried, in order.
    pub attempts: Vec<Attempt>,
    /// Routing notes: why this model.
    pub notes: Vec<String>,
    /// The user's budget after this call.
    pub budget: Option<BudgetStatus>,
    /// Whether the call is in the ledger. False only if the ledger failed
    /// after the provider answered; `warning` says why.
    pub recorded: bool,
    /// Anything the user must know (unrecorded call, unpriced model).
    pub warning: Option<String>,
    /// The spoken answer, when `speak` was asked for.
    pub audio: Option<Audio>,
    /// Budget thresholds this call crossed (each is sent once per period).
    pub alerts: Vec<BudgetAlert>,
    /// The global budget after this call, if one is set.
    pub global_budget: Option<BudgetStatus>,
    /// Id grouping this call's ledger rows.
    pub request_id: String,
    /// The rating recorded from the `feedback` argument, if given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub feedback: Option<crate::feedback::FeedbackReceipt>,
}

/// Result of `get_recommendation`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Recommendation {
    /// The complexity analysis.
    pub complexity: Complexity,
    /// Tier the score alone points to.
    pub scored_tier: Tier,
    /// Tier recommended after availability and budget.
    pub tier: Tier,
    /// The model `complete_prompt` would call first.
    pub recommended: Candidate,
    /// Models it would fall back to, in order.
    pub fallbacks: Vec<Candidate>,
    /// The best model of each other tier.
    pub alternatives: Vec<Candidate>,
    /// The always-premium baseline.
    pub baseline: Option<Candidate>,
    /// Expected saving against the baseline, USD: negative when the
    /// recommended model costs more (a forced dearer model, or a baseline
    /// configured cheaper than the tier chosen), as `complete_prompt`'s
    /// `savings_usd` and `query_usage` report it.
    pub estimated_savings_usd: f64,
    /// Output tokens the estimates assume.
    pub assumed_output_tokens: u64,
    /// Why this recommendation.
    pub notes: Vec<String>,
    /// The user's budget, if the ledger is available.
    pub budget: Option<BudgetStatus>,
}

/// One row of `check_model_costs`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ModelCost {
    /// `provider/model`.
    pub model: String,
    /// Provider.
    pub provider: ProviderId,
    /// Tier, if the model is in a routing tier.
    pub tier: Option<Tier>,
    /// Whether the provider is enabled here.
    pub enabled: bool,
    /// USD per million input tokens.
    pub input_per_mtok: f64,
    /// USD per million output tokens.
    pub output_per_mtok: f64,
    /// USD per million cached input tokens, if different.
    pub cache_read_per_mtok: Option<f64>,
    /// Context window in tokens.
    pub context_window: Option<u64>,
    /// Estimated cost of the given prompt (with the assumed output), USD;
    /// none when the prompt does not fit the model (`prompt_fits`).
    pub estimated_cost_usd: Option<f64>,
    /// With a prompt: whether it fits the model's context window (a model
    /// it does not fit cannot take it at any price; listed last).
    pub prompt_fits: Option<bool>,
}

/// Result of `check_model_costs`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct CostTable {
    /// Matching models, cheapest first.
    pub models: Vec<ModelCost>,
    /// Matches left out of `models` (at most 50 are listed).
    pub omitted: usize,
    /// Output tokens assumed for estimates.
    pub assumed_output_tokens: Option<u64>,
    /// Which models were listed and why.
    pub scope: String,
    /// Models in the catalog.
    pub catalog_models: usize,
}

/// Result of `query_usage`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct UsageReport {
    /// Start of the period (RFC 3339).
    pub since: String,
    /// End of the period (RFC 3339).
    pub until: String,
    /// User filter, if any.
    pub user_id: Option<String>,
    /// Total spend in the period, USD.
    pub total_cost_usd: f64,
    /// Successful calls.
    pub calls: u64,
    /// Totals in detail.
    pub totals: Totals,
    /// The successful calls' baseline minus the period's spend on answers
    /// (failed attempts included: conservative; speech left out, as the
    /// baseline has none), USD; negative when the calls cost more than
    /// always-premium.
    pub savings_usd: f64,
    /// Savings as a percentage of the baseline.
    pub savings_percent: f64,
    /// Per model, largest spend first.
    pub by_model: Vec<Group>,
    /// Per provider.
    pub by_provider: Vec<Group>,
    /// Per day, oldest first.
    pub by_day: Vec<Group>,
    /// Per tier (when asked).
    pub by_tier: Vec<Group>,
    /// Per user (when asked).
    pub by_user: Vec<Group>,
    /// Per UTC week, keyed by its Monday (when asked).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub by_week: Vec<Group>,
    /// Per UTC month (when asked).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub by_month: Vec<Group>,
    /// Average cost per call per complexity band (when asked).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub by_band: Vec<BandStat>,
    /// The most expensive successful calls of the period, most expensive first.
    pub top_calls: Vec<CallRow>,
    /// The budget of the user; for a report on every user, the global
    /// budget if one is set, else the default user's.
    pub budget: BudgetStatus,
    /// The global budget, if one is set.
    pub global_budget: Option<BudgetStatus>,
    /// Set when the report comes from a ledger opened read-only: why, and
    /// that calls which spend money are refused until it is writable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// Result of `set_budget`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct BudgetUpdate {
    /// The budget before, if one was set.
    pub previous_limit_usd: Option<f64>,
    /// Where the new budget stands.
    pub status: BudgetStatus,
    /// Where alerts go, redacted to the host (none: the tool text and MCP
    /// notifications only).
    pub webhook: Option<String>,
    /// Thresholds already crossed under the new limit (alerted now).
    pub alerts: Vec<BudgetAlert>,
}

/// One provider in `doctor`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ProviderStatus {
    /// Provider.
    pub provider: ProviderId,
    /// Enabled here.
    pub enabled: bool,
    /// Why (or why not).
    pub reason: String,
    /// Base URL in use.
    pub base_url: String,
    /// Masked key description.
    pub key: Option<String>,
}

/// Result of `doctor`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct DoctorReport {
    /// Program version.
    pub version: String,
    /// Data directory.
    pub data_dir: String,
    /// Ledger file.
    pub ledger_path: String,
    /// `ok (N calls recorded)` or the error.
    pub ledger: String,
    /// Log directory.
    pub log_dir: String,
    /// Config file read, if any.
    pub config_file: Option<String>,
    /// Every provider.
    pub providers: Vec<ProviderStatus>,
    /// Priced models.
    pub catalog_models: usize,
    /// Where the prices come from (a refreshed catalog set aside shows
    /// here, not only in the log).
    pub pricing_source: crate::pricing::PricesSource,
    /// Default budget limit, USD, per `default_period` (the config key
    /// keeps its historical name).
    pub default_monthly_budget_usd: f64,
    /// The default budget's period.
    pub default_period: crate::budget::Period,
    /// Whether prompts are stored in the ledger.
    pub store_prompts: bool,
    /// The "always premium" model savings are measured against, and
    /// whether the catalog prices it (if not, no savings can be shown).
    pub baseline_model: String,
    /// False when `baseline_model` has no price: a typo in the config.
    pub baseline_priced: bool,
    /// Models of the routing tiers the catalog does not price (a typo in
    /// `[routing.tiers]`): routing skips them.
    pub unpriced_tier_models: Vec<String>,
    /// The routing boundaries in force (free|cheap, cheap|medium,
    /// medium|premium): after `calibrate --apply`, what routes now.
    pub routing_thresholds: [f64; 3],
    /// Which tier an unsure score takes by default.
    pub prefer: Preference,
    /// Tiers no score reaches (equal boundaries) or with no model listed.
    pub tiers_off: Vec<Tier>,
}

// ---------------------------------------------------------------------------
// The optimizer.
// ---------------------------------------------------------------------------

/// Everything a call needs, shared by all tool handlers.
pub struct Optimizer {
    settings: Settings,
    catalog: Catalog,
    registry: Registry,
    router: Router,
    ledger: Result<Ledger, String>,
    breakers: Breakers,
    clock: Clock,
    /// HTTP client for alert webhooks (short timeouts, no provider keys).
    alert_http: reqwest::Client,
    /// Webhook deliveries still running, so a CLI run can wait for them.
    deliveries: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Held by `set_budget` from reading a budget to writing it back: two
    /// partial updates at once (`PUT /v1/budget`) must not each write the
    /// other's fields back as they were.
    budget_writes: std::sync::Mutex<()>,
    /// Told about every attempt the ledger is asked to record (the HTTP
    /// server's metrics); set once, after construction.
    charge_listener: std::sync::OnceLock<Arc<dyn ChargeListener>>,
}

/// Told about every provider attempt as the ledger is asked to record it:
/// answered, failed, cancelled, and speech, whether or not the write then
/// succeeds (the provider's bill does not depend on it).
///
/// Why a hook at the settlement and not the call's result: a call that
/// fails returns no attempts and no costs, and a cancelled one returns
/// nothing at all, yet both can have been charged; the settlement is the
/// one place every charge passes.
pub trait ChargeListener: Send + Sync {
    /// One attempt's row, as it is being written (`cost_usd`, `ok`,
    /// `error_kind`, provider and model filled in).
    fn attempt_recorded(&self, record: &CallRecord);
}

/// How long a reservation may outlive its call before it stops counting:
/// longer than any request timeout, so only a crashed process's
/// reservations ever expire.
fn reservation_ttl(settings: &Settings) -> Duration {
    settings.request_timeout * 4 + Duration::from_secs(60)
}

/// The config's model names as catalog ids: `[routing.tiers]` and
/// `baseline_model` may name a model as the tools accept it (a bare name
/// that one provider has, a provider alias such as `google/…`); routing
/// looks them up by id, and skipped such a name as unpriced. A name that
/// resolves to nothing (or to several) is kept, and warned about.
pub fn resolve_model_names(settings: &mut Settings, catalog: &Catalog) {
    for list in settings.tier_models.values_mut() {
        for name in list.iter_mut() {
            if let Ok(id) = catalog.resolve(name) {
                *name = id;
            }
        }
    }
    if let Ok(id) = catalog.resolve(&settings.baseline_model) {
        settings.baseline_model = id;
    }
}

impl Optimizer {
    /// Builds the optimizer from settings and the process environment.
    pub fn from_env(settings: Settings) -> anyhow::Result<Optimizer> {
        let registry = Registry::from_env(
            &|k| crate::config::env_var(k),
            settings.connect_timeout,
            settings.idle_timeout,
            settings.request_timeout,
        )?;
        let catalog = Catalog::load(
            Some(&settings.refreshed_pricing_path()),
            &settings.price_overrides,
        )
        .map_err(|e| {
            let file = settings
                .config_file
                .as_ref()
                .map(|f| format!(" (in {})", f.display()))
                .unwrap_or_default();
            crate::config::InvalidConfig(format!("{e:#}{file}"))
        })?;
        let core = Self::new(settings, catalog, registry, system_clock());
        if core.catalog.get(&core.settings.baseline_model).is_none() {
            tracing::warn!(
                baseline_model = core.settings.baseline_model,
                "the baseline model has no price in the catalog: savings cannot be computed (check baseline_model in the config file)"
            );
        }
        let unpriced = core.unpriced_tier_models();
        if !unpriced.is_empty() {
            tracing::warn!(
                models = unpriced.join(", "),
                "routing tiers list models the catalog does not price; routing skips them (check [routing.tiers] in the config file, or price them with [pricing.overrides])"
            );
        }
        Ok(core)
    }

    /// Builds the optimizer from parts (tests, embedders). A ledger that
    /// cannot be opened does not stop the server: read-only tools keep
    /// working and the others say what is wrong.
    pub fn new(
        settings: Settings,
        catalog: Catalog,
        registry: Registry,
        clock: Clock,
    ) -> Optimizer {
        let ledger = Ledger::open_or_read_only(&settings.ledger_path(), settings.ledger_sync)
            .map_err(|e| e.to_string());
        if let Err(e) = &ledger {
            tracing::error!(error = %e, "ledger unavailable; spending tools will refuse");
        }
        let mut settings = settings;
        resolve_model_names(&mut settings, &catalog);
        let router = Router::new(settings.tier_thresholds, &settings.tier_models);
        let breakers = Breakers::new(settings.breaker_threshold, settings.breaker_cooldown);
        let alert_http = reqwest::Client::builder()
            // A webhook URL carries its secret; a redirect would hand the
            // alert (and, to plain http, the URL's host) to another server.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(3))
            .timeout(crate::budget::alerts::WEBHOOK_TIMEOUT)
            .build()
            .unwrap_or_default();
        Optimizer {
            alert_http,
            deliveries: std::sync::Mutex::new(Vec::new()),
            budget_writes: std::sync::Mutex::new(()),
            charge_listener: std::sync::OnceLock::new(),
            breakers,
            settings,
            catalog,
            registry,
            router,
            ledger,
            clock,
        }
    }

    /// Sets the listener told about every recorded attempt (once; false
    /// if one was already set).
    pub fn set_charge_listener(&self, listener: Arc<dyn ChargeListener>) -> bool {
        self.charge_listener.set(listener).is_ok()
    }

    /// A reservation guard for `id` that tells the listener about what it
    /// records.
    fn guard(&self, ledger: &Ledger, id: crate::ledger::ReservationId) -> ReservationGuard {
        ReservationGuard {
            ledger: ledger.clone(),
            id: Some(id),
            pending: None,
            listener: self.charge_listener.get().cloned(),
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The providers: which are enabled and why.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The pricing catalog.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The router in force (thresholds and tier lists).
    pub fn router(&self) -> &Router {
        &self.router
    }

    /// The ledger, or why it is unavailable.
    pub fn ledger(&self) -> Result<&Ledger, ToolError> {
        self.ledger
            .as_ref()
            .map_err(|e| ToolError::Ledger(e.clone()))
    }

    fn now(&self) -> i64 {
        (self.clock)()
    }

    /// Whether `user` is known here (a budget, an API key or a recorded
    /// call of theirs), not a name seen for the first time.
    pub fn knows_user(&self, user: &str) -> Result<bool, ToolError> {
        self.ledger()?
            .knows_user(user)
            .map_err(|e| ToolError::Ledger(e.to_string()))
    }

    fn budget_of(&self, ledger: &Ledger, user: &str) -> Result<Budget, ToolError> {
        let row = ledger
            .budget(user)
            .map_err(|e| ToolError::Ledger(e.to_string()))?;
        Ok(match row {
            Some(r) => Budget::from_row(r),
            None => self.configured_default(user),
        })
    }

    /// The budget of a user who never set one: the configured default.
    fn configured_default(&self, user: &str) -> Budget {
        Budget {
            user_id: user.to_string(),
            limit_usd: self.settings.default_monthly_budget_usd,
            thresholds: self.settings.default_alert_thresholds.clone(),
            mode: self.settings.default_budget_mode,
            is_default: true,
            period: self.settings.default_period,
            timezone: self.settings.default_timezone.clone(),
            webhook: None,
        }
    }

    /// The earliest start of a current budget period: of the configured
    /// default and of every stored budget. Calls from then on are what
    /// those budgets have spent, so history before it is all that may be
    /// pruned (deleting a call takes its cost out of the period's spend).
    /// The configured default counts even when user `default` stored a
    /// budget of its own: it still governs every user without one.
    pub fn earliest_period_start(&self, now_ms: i64) -> Result<(i64, String), ToolError> {
        let ledger = self.ledger()?;
        let mut budgets = vec![self.configured_default(DEFAULT_USER)];
        budgets.extend(
            ledger
                .budget_rows()
                .map_err(|e| ToolError::Ledger(e.to_string()))?
                .into_iter()
                .map(Budget::from_row),
        );
        Ok(budget::earliest_period_start(&budgets, now_ms))
    }

    /// The budgets a call by `user` must respect: theirs (or the default),
    /// then the global one if it was set.
    fn budgets_for(&self, ledger: &Ledger, user: &str) -> Result<Vec<Budget>, ToolError> {
        let mut v = vec![self.budget_of(ledger, user)?];
        if let Some(g) = ledger
            .budget(GLOBAL_SCOPE)
            .map_err(|e| ToolError::Ledger(e.to_string()))?
        {
            v.push(Budget::from_row(g));
        }
        Ok(v)
    }

    /// Where the global budget stands, if one is set.
    pub fn global_budget_status(&self) -> Result<Option<BudgetStatus>, ToolError> {
        let ledger = self.ledger()?;
        match ledger
            .budget(GLOBAL_SCOPE)
            .map_err(|e| ToolError::Ledger(e.to_string()))?
        {
            Some(row) => budget::status(ledger, &Budget::from_row(row), self.now())
                .map(Some)
                .map_err(|e| ToolError::Ledger(e.to_string())),
            None => Ok(None),
        }
    }

    /// Records each threshold crossed by `budgets` that was not alerted yet
    /// this period, and starts its webhook delivery. Returns the new alerts
    /// and each budget's status as read for them (`None` where the ledger
    /// could not say), so callers that report the status too do not query
    /// it a second time.
    fn fire_alerts(
        &self,
        ledger: &Ledger,
        budgets: &[Budget],
    ) -> (Vec<BudgetAlert>, Vec<Option<BudgetStatus>>) {
        let now = self.now();
        // As the budgets stand now, not as a call read them when it began:
        // a limit changed meanwhile would otherwise be undone for the
        // alerts (a stale limit re-fires thresholds set_budget re-armed).
        let fresh: Vec<Budget> = budgets
            .iter()
            .map(|b| match ledger.budget(&b.user_id) {
                Ok(Some(row)) => Budget::from_row(row),
                _ => b.clone(),
            })
            .collect();
        let budgets = &fresh[..];
        let mut fired = Vec::new();
        let mut statuses = Vec::with_capacity(budgets.len());
        // One read for all of them; if it fails, each status is unknown.
        let read: Vec<Option<BudgetStatus>> = match budget::statuses(ledger, budgets, now) {
            Ok(v) => v.into_iter().map(Some).collect(),
            Err(_) => vec![None; budgets.len()],
        };
        for (b, st) in budgets.iter().zip(read) {
            let Some(st) = st else {
                statuses.push(None);
                continue;
            };
            let (start, _) = b.bounds(now);
            let channels = self.alert_channels(b);
            for t in &st.crossed_thresholds {
                let id = match ledger.record_alert(
                    &b.user_id,
                    start,
                    *t,
                    to_nanos(st.spent_usd),
                    to_nanos(st.limit_usd),
                    now,
                    &channels,
                ) {
                    Ok(Some(id)) => id,
                    Ok(None) => continue,
                    Err(e) => {
                        tracing::warn!(error = %e, "could not record a budget alert");
                        continue;
                    }
                };
                let alert = BudgetAlert::new(id, &st, *t);
                self.send_alert(ledger, b, &alert);
                fired.push(alert);
            }
            statuses.push(Some(st));
        }
        (fired, statuses)
    }

    /// The alerts a cancelled call's charge crossed: its guard recorded the
    /// attempt at an estimate when the call was dropped, after which no code
    /// of the call ran to check the thresholds.
    pub fn alerts_after_cancel(&self, user_id: Option<&str>) -> Vec<BudgetAlert> {
        let Ok(ledger) = self.ledger() else {
            return Vec::new();
        };
        // A call dropped while its settlement was queued left the write to
        // a batch that may not have run yet: the spend read below must see it.
        ledger.drain_writes();
        let Ok(user) = validate_user(user_id) else {
            return Vec::new();
        };
        match self.budgets_for(ledger, &user) {
            Ok(budgets) => self.fire_alerts(ledger, &budgets).0,
            Err(_) => Vec::new(),
        }
    }

    /// The channels an alert of budget `b` goes to: its webhook (or the
    /// configured one) and e-mail, when set. Queued with the alert in the
    /// ledger, in the commit that records it, so a process killed before
    /// the first attempt leaves the next one a trace to send it from.
    fn alert_channels(&self, b: &Budget) -> Vec<&'static str> {
        let mut channels = Vec::new();
        if b.webhook.is_some() || self.settings.alert_webhook.is_some() {
            channels.push("webhook");
        }
        if self.settings.alert_email.is_some() {
            channels.push("email");
        }
        channels
    }

    /// Logs a recorded alert of budget `b` and starts its delivery (the
    /// budget's webhook, else the configured one, and e-mail if set).
    fn send_alert(&self, ledger: &Ledger, b: &Budget, alert: &BudgetAlert) {
        tracing::warn!(
            scope = b.user_id,
            threshold = alert.threshold,
            "{}",
            alert.message
        );
        let hook = b
            .webhook
            .clone()
            .or_else(|| self.settings.alert_webhook.clone());
        if hook.is_some() || self.settings.alert_email.is_some() {
            self.spawn_delivery(ledger.clone(), hook, true, alert.clone());
        }
    }

    fn spawn_delivery(
        &self,
        ledger: Ledger,
        hook: Option<Webhook>,
        email: bool,
        alert: BudgetAlert,
    ) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            tracing::warn!("no async runtime; budget alert webhook not sent");
            return;
        };
        let http = self.alert_http.clone();
        let clock = self.clock.clone();
        let base = self.settings.retry_base.max(Duration::from_millis(1));
        let email = self.settings.alert_email.clone().filter(|_| email);
        // Side by side: a slow receiver must not hold the e-mail back
        // past the few seconds a closing server waits for deliveries.
        let task = rt.spawn(async move {
            let webhook = async {
                if let Some(hook) = hook {
                    budget::alerts::deliver_webhook(&http, &ledger, &hook, &alert, base, || {
                        clock()
                    })
                    .await;
                }
            };
            let mail = async {
                if let Some(cfg) = email {
                    budget::alerts::deliver_email(&cfg, &ledger, &alert, base, || clock()).await;
                }
            };
            tokio::join!(webhook, mail);
        });
        let mut pending = self.deliveries.lock().unwrap_or_else(|e| e.into_inner());
        pending.retain(|h| !h.is_finished());
        pending.push(task);
    }

    /// Sends again, in the background, the alerts of the last day whose
    /// webhook or e-mail delivery failed (the receiver was down, or the
    /// server stopped mid-delivery), on the channels configured now.
    /// Servers call this when they start. Returns how many deliveries it
    /// started.
    pub fn redeliver_failed_alerts(&self) -> usize {
        let Ok(ledger) = self.ledger() else { return 0 };
        let now = self.now();
        let since = now - 86_400_000;
        // A round in progress in another process is left alone: its
        // attempts are minutes apart at most.
        let quiet_before =
            now - i64::try_from(self.settings.alert_retry.as_millis()).unwrap_or(300_000);
        let rounds = budget::alerts::WEBHOOK_ATTEMPTS;
        let mut started = 0;
        let mut ids = std::collections::BTreeMap::<i64, (AlertRow, bool, bool)>::new();
        for (channel, is_webhook) in [("webhook", true), ("email", false)] {
            match ledger.undelivered_alerts(channel, since, quiet_before, rounds) {
                Ok(rows) => {
                    for r in rows {
                        let e = ids.entry(r.id).or_insert((r, false, false));
                        if is_webhook {
                            e.1 = true;
                        } else {
                            e.2 = true;
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "could not look for undelivered alerts"),
            }
        }
        for (row, webhook, email) in ids.into_values() {
            let Ok(b) = self.budget_of(ledger, &row.scope) else {
                continue;
            };
            // Claimed first, per channel: of two servers starting together
            // one sends it.
            let claim = |wanted: bool, channel: &str| {
                wanted
                    && ledger
                        .claim_redelivery(row.id, channel, quiet_before, now)
                        .unwrap_or(false)
            };
            let hook = b
                .webhook
                .clone()
                .or_else(|| self.settings.alert_webhook.clone())
                .filter(|_| claim(webhook, "webhook"));
            let email = self.settings.alert_email.is_some() && claim(email, "email");
            if hook.is_none() && !email {
                continue;
            }
            tracing::info!(
                alert = row.id,
                scope = row.scope,
                "sending a failed budget alert again"
            );
            let alert = budget::alerts::BudgetAlert::from_row(&row, &b);
            self.spawn_delivery(ledger.clone(), hook, email, alert);
            started += 1;
        }
        started
    }

    /// Sends failed alerts again now and then every
    /// [`Settings::alert_retry`](crate::config::Settings::alert_retry),
    /// for as long as the server runs: a receiver that was down for a few
    /// seconds (three attempts about a second apart) must not leave an
    /// alert unsent until the next restart. Stops when the core is gone.
    pub fn keep_redelivering_alerts(core: &Arc<Optimizer>) -> tokio::task::JoinHandle<()> {
        let every = core.settings.alert_retry;
        let core = Arc::downgrade(core);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(core) = core.upgrade() else { return };
                // Ledger reads and claims: off the runtime's workers.
                let _ = tokio::task::spawn_blocking(move || core.redeliver_failed_alerts()).await;
            }
        })
    }

    /// Waits for webhook deliveries still running (the CLI calls this
    /// before exiting so alerts are not cut off).
    pub async fn flush_alerts(&self) {
        let pending: Vec<_> = {
            let mut p = self.deliveries.lock().unwrap_or_else(|e| e.into_inner());
            std::mem::take(&mut *p)
        };
        for h in pending {
            let _ = h.await;
        }
    }

    /// Where `user`'s budget stands.
    pub fn budget_status(&self, user: &str) -> Result<BudgetStatus, ToolError> {
        let ledger = self.ledger()?;
        let b = self.budget_of(ledger, user)?;
        budget::status(ledger, &b, self.now()).map_err(|e| ToolError::Ledger(e.to_string()))
    }

    /// The budget a report on `user`'s calls shows: theirs; for a report
    /// on every user's calls, the global budget when one is set (the one
    /// that covers them all: an admin's report showed the budget of a
    /// user named "default" that, on a server with keys, nobody is), else
    /// the default user's (on stdio, the one user).
    pub fn report_budget(&self, user: Option<&str>) -> Result<BudgetStatus, ToolError> {
        if user.is_none()
            && let Some(g) = self.global_budget_status()?
        {
            return Ok(g);
        }
        self.budget_status(user.unwrap_or(DEFAULT_USER))
    }

    /// `get_recommendation`: the routing decision, without calling anything.
    pub fn recommend(&self, args: &RecommendArgs) -> Result<Recommendation, ToolError> {
        let prompt = validate_prompt("prompt", &args.prompt)?;
        let max_tokens = validate_max_tokens(args.max_tokens, self.settings.default_max_tokens)?;
        let budget_limit = validate_budget_limit(args.budget_limit)?;
        let prefer = self.validate_prefer(args.prefer.as_deref())?;
        let user = validate_user(args.user_id.as_deref())?;
        let status = self.budget_status(&user).ok();
        let global = self.global_budget_status().ok().flatten();
        let binding = status
            .iter()
            .chain(global.iter())
            .filter(|s| s.mode.enforces_limit())
            .min_by(|a, b| a.remaining_usd.total_cmp(&b.remaining_usd));
        let req = RouteRequest {
            prompt,
            system: None,
            max_tokens,
            budget_limit,
            budget_remaining: binding.map(|s| s.remaining_usd),
            remaining_is_global: binding.is_some_and(|s| s.user_id == GLOBAL_SCOPE),
            downgrade: status
                .iter()
                .chain(global.iter())
                .any(|s| s.wants_downgrade()),
            prefer,
            ..RouteRequest::default()
        };
        let plan = self.plan(&req)?;
        let mut candidates = plan.candidates.into_iter();
        let recommended = candidates
            .next()
            .ok_or_else(|| invalid("no model available"))?;
        let estimated_savings_usd = plan
            .baseline
            .as_ref()
            .map(|b| b.estimated_cost_usd - recommended.estimated_cost_usd)
            .unwrap_or(0.0);
        Ok(Recommendation {
            complexity: Complexity {
                score: plan.score,
                reasons: plan.reasons,
            },
            scored_tier: plan.scored_tier,
            tier: plan.tier,
            recommended,
            fallbacks: candidates.collect(),
            alternatives: plan.alternatives,
            baseline: plan.baseline,
            estimated_savings_usd,
            assumed_output_tokens: plan.assumed_output_tokens,
            notes: plan.notes,
            budget: status,
        })
    }

    /// The `prefer` argument, or the configured default when it is unset.
    fn validate_prefer(&self, prefer: Option<&str>) -> Result<Preference, ToolError> {
        match prefer.map(str::trim).filter(|p| !p.is_empty()) {
            None => Ok(self.settings.prefer),
            Some(p) => Preference::parse(p)
                .ok_or_else(|| invalid(format!("prefer: {p:?} is neither cost nor quality"))),
        }
    }

    fn plan(&self, req: &RouteRequest<'_>) -> Result<RoutePlan, ToolError> {
        let req = &RouteRequest {
            today: Some(utc_date(self.now())),
            ..req.clone()
        };
        self.router
            .plan(
                req,
                &self.catalog,
                &self.registry,
                &self.settings.baseline_model,
            )
            .map_err(|e| {
                if e.0.contains("budget") {
                    ToolError::BudgetRefused(e.0)
                } else {
                    ToolError::Invalid(e.0)
                }
            })
    }

    /// Refuses a forced model with no known price for a caller held to a
    /// budget it cannot change (a plain HTTP key). Such a model holds $0
    /// against the budget before the call, so calls to it are never
    /// refused and parallel ones all pass; an admin or a local user may
    /// still choose one, with the router's note.
    pub fn require_priced_model(&self, force_model: Option<&str>) -> Result<(), ToolError> {
        let Some(m) = force_model
            .map(str::trim)
            .filter(|m| !m.is_empty() && *m != "auto")
        else {
            return Ok(());
        };
        let Ok(id) = self.catalog.resolve(m) else {
            // Unknown models are refused by the router with its own message.
            return Ok(());
        };
        match self.catalog.get_or_unpriced(&id) {
            Some(p) if p.origin == PriceOrigin::Unknown => Err(invalid(format!(
                "{id} has no known price, so a budget cannot bound what a call to it costs; \
                 this key may only use priced models (an admin can add its price under \
                 [pricing.overrides], or use an admin key)"
            ))),
            _ => Ok(()),
        }
    }

    /// `check_model_costs`: prices, and the cost of a prompt on each model.
    pub fn check_costs(&self, args: &CostArgs) -> Result<CostTable, ToolError> {
        let provider = match args
            .provider
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            Some(p) => Some(parse_provider("provider", p)?),
            None => None,
        };
        let needle = args
            .model
            .as_deref()
            .map(|m| m.trim().to_ascii_lowercase())
            .filter(|m| !m.is_empty());
        if let Some(n) = &needle
            && n.len() > 200
        {
            return Err(invalid("model: at most 200 characters"));
        }
        // A blank prompt is "no prompt", as blank optional strings are
        // everywhere else (models often send "" for an argument they skip).
        let prompt = match args.prompt.as_deref().filter(|p| !p.trim().is_empty()) {
            Some(p) => Some(validate_prompt("prompt", p)?),
            None => None,
        };
        let any_enabled = self.registry.enabled().next().is_some();
        let mut rows: Vec<ModelCost> = Vec::new();
        let filtered = provider.is_some() || needle.is_some();
        for m in self.catalog.models() {
            if let Some(p) = provider
                && m.provider != p
            {
                continue;
            }
            if let Some(n) = &needle
                && !m.id.to_ascii_lowercase().contains(n.as_str())
            {
                continue;
            }
            let tier = self.router.tier_of(&m.id);
            let enabled = self.registry.is_enabled(m.provider);
            // Without a filter, list the routing tiers' models (those the
            // router can pick), limited to enabled providers when any is.
            if !filtered && (tier.is_none() || (any_enabled && !enabled)) {
                continue;
            }
            rows.push(ModelCost {
                model: m.id.clone(),
                provider: m.provider,
                tier,
                enabled,
                input_per_mtok: m.input_per_mtok(),
                output_per_mtok: m.output_per_mtok(),
                cache_read_per_mtok: m
                    .cache_read
                    .map(crate::pricing::per_mtok)
                    .filter(|c| *c != m.input_per_mtok()),
                context_window: m.max_input_tokens,
                estimated_cost_usd: None,
                prompt_fits: None,
            });
        }
        let scope = match (provider, &needle) {
            (Some(p), Some(n)) => format!("{p} models matching {n:?}"),
            (Some(p), None) => format!("all {p} models"),
            (None, Some(n)) => format!("models matching {n:?}"),
            (None, None) if any_enabled => "routing-tier models of the enabled providers".into(),
            (None, None) => "routing-tier models of all providers (none is enabled yet)".into(),
        };
        if let Some(p) = prompt {
            let assumed = crate::router::EXPECTED_OUTPUT_TOKENS;
            let counted = crate::tokens::PromptCount::of(None, p);
            for r in &mut rows {
                if let Some(price) = self.catalog.get(&r.model) {
                    let input = counted.for_model(r.provider, &r.model);
                    let fits = price.max_input_tokens.is_none_or(|max| input <= max);
                    r.prompt_fits = Some(fits);
                    r.estimated_cost_usd = fits.then(|| price.estimate(input, assumed));
                }
            }
            // Cheapest first; models the prompt does not fit last.
            rows.sort_by(|a, b| {
                (a.prompt_fits == Some(false))
                    .cmp(&(b.prompt_fits == Some(false)))
                    .then_with(|| {
                        a.estimated_cost_usd
                            .unwrap_or(0.0)
                            .total_cmp(&b.estimated_cost_usd.unwrap_or(0.0))
                    })
                    .then_with(|| a.model.cmp(&b.model))
            });
        } else {
            rows.sort_by(|a, b| {
                (a.input_per_mtok + a.output_per_mtok)
                    .total_cmp(&(b.input_per_mtok + b.output_per_mtok))
                    .then_with(|| a.model.cmp(&b.model))
            });
        }
        if rows.is_empty() {
            let what = needle
                .map(|n| format!(" matching {n:?}"))
                .unwrap_or_default();
            return Err(invalid(format!(
                "no priced model{what}{}; leave out the provider and model filters to list every priced model",
                provider
                    .map(|p| format!(" for provider {p}"))
                    .unwrap_or_default()
            )));
        }
        let omitted = rows.len().saturating_sub(50);
        rows.truncate(50);
        Ok(CostTable {
            models: rows,
            omitted,
            assumed_output_tokens: prompt.map(|_| crate::router::EXPECTED_OUTPUT_TOKENS),
            scope,
            catalog_models: self.catalog.len(),
        })
    }

    /// `complete_prompt`: route, reserve, call (with fallback), price, record.
    pub async fn complete(
        &self,
        args: &CompleteArgs,
        sink: &dyn StreamSink,
    ) -> Result<Completion, ToolError> {
        let mut refused_by_call_limit = false;
        match self
            .complete_once(args, sink, &mut refused_by_call_limit)
            .await
        {
            Err(ToolError::BudgetRefused(msg)) if !refused_by_call_limit => Err(
                ToolError::BudgetRefused(self.alert_refusal(args, msg, sink)),
            ),
            r => r,
        }
    }

    /// Fires the 100% alert of the budget that refused a call, once its
    /// settled spend is at least [`EXHAUSTED_AT`] of the limit (see
    /// [`BudgetAlert::exhausted`]), once per period and limit like any
    /// alert, and appends it to the refusal's text. The refusing budget is
    /// the enforcing one with the least room, as in routing.
    fn alert_refusal(&self, args: &CompleteArgs, mut msg: String, sink: &dyn StreamSink) -> String {
        let Ok(ledger) = self.ledger() else {
            return msg;
        };
        let Ok(user) = validate_user(args.user_id.as_deref()) else {
            return msg;
        };
        let Ok(budgets) = self.budgets_for(ledger, &user) else {
            return msg;
        };
        let now = self.now();
        let Ok(statuses) = budget::statuses(ledger, &budgets, now) else {
            return msg;
        };
        let Some((b, st)) = budgets
            .iter()
            .zip(&statuses)
            .filter(|(b, _)| b.mode.enforces_limit())
            .min_by(|(_, x), (_, y)| x.remaining_usd.total_cmp(&y.remaining_usd))
        else {
            return msg;
        };
        // A refusal says the budget is used up only once most of it is
        // spent: earlier, a call refused for its own size (a forced premium
        // model, a huge max_tokens) or for other calls' holds would spend
        // the period's one 100% alert while plenty is left. Settled spend
        // only, so holds of calls in flight do not count.
        if st.spent_usd < budget::EXHAUSTED_AT * st.limit_usd {
            return msg;
        }
        // Only a budget that alerts at its limit: thresholds under 100%
        // keep their meaning (spend actually crossed).
        let Some(&top) = b.thresholds.iter().rfind(|t| **t >= 1.0 - 1e-9) else {
            return msg;
        };
        let (start, _) = b.bounds(now);
        let id = match ledger.record_alert(
            &b.user_id,
            start,
            top,
            to_nanos(st.spent_usd),
            to_nanos(st.limit_usd),
            now,
            &self.alert_channels(b),
        ) {
            Ok(Some(id)) => id,
            Ok(None) => return msg,
            Err(e) => {
                tracing::warn!(error = %e, "could not record a budget alert");
                return msg;
            }
        };
        let alert = BudgetAlert::exhausted(id, st, top);
        self.send_alert(ledger, b, &alert);
        msg = sentence(&msg);
        msg.push_str(" Budget alert: ");
        msg.push_str(&alert.message);
        sink.on_alert(&alert);
        msg
    }

    /// The call itself. `refused_by_call_limit` tells [`Optimizer::complete`]
    /// whether a budget refusal came from the call's own `budget_limit`
    /// rather than from a budget.
    async fn complete_once(
        &self,
        args: &CompleteArgs,
        sink: &dyn StreamSink,
        refused_by_call_limit: &mut bool,
    ) -> Result<Completion, ToolError> {
        let prompt = validate_prompt("prompt", &args.prompt)?;
        let system = match &args.system {
            Some(s) if s.trim().is_empty() => None,
            Some(s) => Some(validate_prompt("system", s)?),
            None => None,
        };
        if prompt.len() + system.map_or(0, str::len) > MAX_PROMPT_BYTES {
            return Err(invalid(format!(
                "prompt and system together exceed {MAX_PROMPT_BYTES} bytes"
            )));
        }
        let max_tokens = validate_max_tokens(args.max_tokens, self.settings.default_max_tokens)?;
        let budget_limit = validate_budget_limit(args.budget_limit)?;
        let user = validate_user(args.user_id.as_deref())?;
        let force_provider = match args
            .force_provider
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            Some(p) => match parse_provider("force_provider", p)? {
                // Speech only: it has no chat model to force.
                ProviderId::Cartesia => {
                    return Err(invalid(
                        "force_provider: cartesia only reads answers aloud; use speak: true \
                         (with any chat provider) to hear the answer",
                    ));
                }
                p => Some(p),
            },
            None => None,
        };
        let force_model = match args
            .force_model
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            Some(m) => Some(
                self.catalog
                    .resolve(m)
                    .map_err(|e| invalid(format!("force_model: {e}")))?,
            ),
            None => None,
        };
        let tier = match args
            .tier
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            Some(t) => Some(Tier::parse(t).ok_or_else(|| {
                invalid(format!(
                    "tier: {t:?} is not a tier; use free, cheap, medium or premium"
                ))
            })?),
            None => None,
        };
        let prefer = self.validate_prefer(args.prefer.as_deref())?;

        let speak = args.speak.unwrap_or(false);
        let voice = match args
            .voice
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            Some(v)
                if v.len() <= 64 && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') =>
            {
                v.to_string()
            }
            Some(v) => return Err(invalid(format!("voice: {v:?} is not a Cartesia voice id"))),
            None => crate::providers::cartesia::DEFAULT_VOICE.to_string(),
        };
        if args.voice.as_deref().is_some_and(|v| !v.trim().is_empty()) && !speak {
            return Err(invalid("voice is only used with speak: true"));
        }
        let language = validate_language(args.language.as_deref(), speak)?;
        let sampling = validate_sampling(args.temperature, args.top_p, args.seed)?;
        if speak && self.registry.speech().is_none() {
            return Err(invalid(
                "speak: text-to-speech needs Cartesia; set CARTESIA_API_KEY",
            ));
        }

        // A call whose cost cannot be recorded is not made: refuse before
        // anything is written or sent.
        self.ledger()?
            .ensure_writable()
            .map_err(|e| ToolError::Ledger(e.to_string()))?;
        // A rating of an earlier answer is stored first: it stands on its
        // own, whatever happens to this call.
        let feedback = match &args.feedback {
            Some(f) => Some(crate::feedback::record(
                self,
                f,
                "mcp",
                self.now(),
                args.feedback_owner.as_deref(),
            )?),
            None => None,
        };
        let ledger = self.ledger()?.clone();
        let budgets = self.budgets_for(&ledger, &user)?;
        // Dead processes' holds are looked for at most once per call.
        let mut swept_dead = false;
        let now = self.now();
        let route = |statuses: &[BudgetStatus]| {
            let binding = statuses
                .iter()
                .filter(|s| s.mode.enforces_limit())
                .min_by(|a, b| a.remaining_usd.total_cmp(&b.remaining_usd));
            self.plan(&RouteRequest {
                prompt,
                system,
                max_tokens,
                budget_limit,
                force_provider,
                force_model: force_model.clone(),
                tier,
                budget_remaining: binding.map(|s| s.remaining_usd),
                remaining_is_global: binding.is_some_and(|s| s.user_id == GLOBAL_SCOPE),
                downgrade: statuses.iter().any(BudgetStatus::wants_downgrade),
                prefer,
                // Set by `plan`.
                today: None,
            })
        };
        let read = |now| {
            budget::statuses(&ledger, &budgets, now).map_err(|e| ToolError::Ledger(e.to_string()))
        };
        let statuses = read(now)?;
        // Routing caps candidates at the tighter of `budget_limit` and the
        // room left: if it refuses, this says which one did.
        let by_call_limit = |statuses: &[BudgetStatus]| {
            budget_limit.is_some_and(|l| {
                statuses
                    .iter()
                    .filter(|s| s.mode.enforces_limit())
                    .all(|s| l <= s.remaining_usd)
            })
        };
        *refused_by_call_limit = by_call_limit(&statuses);
        let plan = match route(&statuses) {
            // Refused with money held by calls in flight: some of it may
            // belong to a process that died mid-call (a CLI `complete`
            // stopped with Ctrl-C, a crashed server), which would block
            // calls until its hold expires. Release those holds and route
            // again. Only on a refusal: the lock-file checks cost nothing on
            // the normal path.
            Err(ToolError::BudgetRefused(_)) if statuses.iter().any(|s| s.reserved_usd > 0.0) => {
                swept_dead = true;
                match ledger.release_dead_holds() {
                    Ok(n) if n > 0 => {
                        tracing::info!(
                            released = n,
                            "released holds of processes no longer running"
                        );
                        let fresh = read(now)?;
                        *refused_by_call_limit = by_call_limit(&fresh);
                        route(&fresh)?
                    }
                    Ok(_) => route(&statuses)?,
                    Err(e) => {
                        tracing::warn!(error = %e, "could not check for dead processes' holds");
                        route(&statuses)?
                    }
                }
            }
            r => r?,
        };

        *refused_by_call_limit = false;
        let forced = forced_kind(
            force_model.is_some(),
            force_provider.is_some(),
            tier.is_some(),
        );
        // A forced model in no routing tier has none: not the tier the
        // score points to (recorded, that would read to calibration as the
        // caller overriding the router; shown, as a paid model "free").
        let routed_tier = |c: &Candidate| {
            (forced != Some("model") || self.router.tier_of(&c.model).is_some()).then_some(c.tier)
        };
        let request_id = uuid::Uuid::new_v4().to_string();
        let prompt_sha256 = prompt_hash(system, prompt);
        let prompt_text = self.settings.store_prompts.then(|| match system {
            Some(s) => format!("[system] {s}\n\n{prompt}"),
            None => prompt.to_string(),
        });
        // Only `block` and `downgrade` budgets refuse calls; `warn` alerts.
        // Each hold counts the period it is taken in: a retry or the audio
        // after midnight belongs to the new day's budget, not yesterday's.
        let checks_at = |now: i64| -> Vec<LimitCheck> {
            budgets
                .iter()
                .filter(|b| b.mode.enforces_limit())
                .map(|b| LimitCheck {
                    scope: b.user_id.clone(),
                    since_ms: b.bounds(now).0,
                    limit_nanos: to_nanos(b.limit_usd),
                })
                .collect()
        };
        let ttl = reservation_ttl(&self.settings);
        let baseline_price = self.catalog.get(&self.settings.baseline_model);

        let started = Instant::now();
        let mut notes = plan.notes.clone();
        let mut attempts: Vec<Attempt> = Vec::new();
        let mut last_error: Option<String> = None;
        let mut stopped_by_budget = false;
        // Attempts cut off after the provider accepted them, which it may
        // bill: the caller is told, whatever the outcome of the call.
        let mut cut_off: Vec<CutOff> = Vec::new();
        // The longest wait a rate-limited or overloaded provider asked for.
        let mut busy_wait: Option<Duration> = None;
        // What this call's failed attempts were charged so far: `budget_limit`
        // caps the whole call, retries and fallbacks included.
        let mut call_spent = 0.0_f64;
        // Providers that failed as a whole in this call (bad key, no credit,
        // down after retries): their other models are not worth a try.
        let mut failed_providers: Vec<ProviderId> = Vec::new();
        // Fallbacks passed over because their provider failed as a whole
        // (a server error, an outage): the final error names them, or a
        // call that "tried" one model looks as if it had no fallback.
        let mut skipped: Vec<String> = Vec::new();
        // Providers whose rate limit already counted against their breaker
        // in this call, and only the account's (see `counts` below): a
        // quota is usually per model (Gemini, Anthropic, OpenRouter), so one
        // model's 429s must not open the breaker on the provider's other
        // models for everyone.
        let mut rate_limit_counted: Vec<ProviderId> = Vec::new();
        // The models already rate-limited in this call: when another model
        // of the same provider is limited too, the limit is likely the
        // account's, so that one is not retried (each retry would wait).
        let mut rate_limited: Vec<(ProviderId, String)> = Vec::new();

        // Skip providers whose circuit breaker is open, unless that would
        // leave nothing to try.
        let now = self.now();
        let mut try_anyway = false;
        let mut order: Vec<&Candidate> = plan
            .candidates
            .iter()
            .filter(|c| self.registry.get(c.provider).is_some())
            .collect();
        let healthy: Vec<&Candidate> = order
            .iter()
            .copied()
            .filter(|c| self.breakers.check(c.provider, now).is_ok())
            .collect();
        if healthy.len() < order.len() {
            let mut cooling: Vec<String> = Vec::new();
            for c in &order {
                if let Err(ms) = self.breakers.check(c.provider, now) {
                    let line = format!("{} (for {}s more)", c.provider, (ms + 999) / 1000);
                    if !cooling.contains(&line) {
                        cooling.push(line);
                    }
                }
            }
            try_anyway = healthy.is_empty();
            if try_anyway {
                notes.push(format!(
                    "Every candidate provider is cooling down after repeated failures ({}); trying anyway.",
                    cooling.join(", ")
                ));
            } else {
                notes.push(format!(
                    "Skipped providers cooling down after repeated failures: {}.",
                    cooling.join(", ")
                ));
                order = healthy;
            }
        }

        let last_candidate = order.len().saturating_sub(1);
        'candidates: for (index, cand) in order.into_iter().enumerate() {
            if failed_providers.contains(&cand.provider) {
                if !skipped.contains(&cand.model) {
                    skipped.push(cand.model.clone());
                }
                continue;
            }
            let Some(provider) = self.registry.get(cand.provider) else {
                continue;
            };
            // A cooled-down breaker lets one call through (the probe, whose
            // slot `_probe` holds until this candidate is done); the others
            // move on — except the last candidate of a call that tried
            // nothing yet, which goes anyway, as when every candidate
            // cools down.
            let _probe = match try_anyway {
                true => None,
                false => match self.breakers.admit(cand.provider, self.now()) {
                    Admission::Go => None,
                    Admission::Probe(id) => Some(self.breakers.slot(cand.provider, id)),
                    Admission::Wait if index == last_candidate && attempts.is_empty() => None,
                    Admission::Wait => continue,
                },
            };
            let mut retries = 0u32;
            let mut waited = Duration::ZERO;
            // Timeouts of this candidate so far: one is retried (a blip),
            // a second falls back. Each costs a whole idle (or total)
            // timeout, so max_retries of them on one provider kept a call
            // waiting minutes while others stood by.
            let mut timeouts = 0u32;
            loop {
                if let Some(limit) = budget_limit
                    && call_spent > 0.0
                    && call_spent + cand.worst_case_cost_usd > limit
                {
                    last_error = Some(format!(
                        "budget_limit of {} reached: earlier attempts of this call were charged {}, \
                         and {} could cost up to {} more (max_tokens {max_tokens}). Raise budget_limit \
                         or lower max_tokens.",
                        crate::render::usd(limit),
                        crate::render::usd(call_spent),
                        cand.model,
                        crate::render::usd(cand.worst_case_cost_usd),
                    ));
                    stopped_by_budget = true;
                    *refused_by_call_limit = true;
                    // A cheaper candidate further on may still fit.
                    continue 'candidates;
                }
                // Reserve the worst case before calling; refuse if it cannot fit.
                let now = self.now();
                // Awaits instead of blocking the worker while another
                // call's batch commits, so concurrent holds share a commit.
                // Cancel-safe: a hold granted to a dropped future is
                // released by the ledger itself.
                let amount = to_nanos(cand.worst_case_cost_usd);
                let checks = checks_at(now);
                let mut reserve = ledger.reserve_async(&user, &checks, amount, now, ttl).await;
                // Refused with money held by calls in flight: some of it may
                // belong to a process that died mid-call. Release those
                // holds and try once more (only on a refusal, so the file
                // checks cost nothing on the normal path).
                if let Ok(Err(over)) = &reserve
                    && over.reserved_nanos > 0
                    && !swept_dead
                {
                    swept_dead = true;
                    match ledger.release_dead_holds() {
                        Ok(0) => {}
                        Ok(n) => {
                            tracing::info!(
                                released = n,
                                "released holds of processes no longer running"
                            );
                            reserve = ledger.reserve_async(&user, &checks, amount, now, ttl).await;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "could not check for dead processes' holds")
                        }
                    }
                }
                let reservation = match reserve {
                    Err(e) => return Err(ToolError::Ledger(e.to_string())),
                    Ok(Err(over)) => {
                        let whose = if over.scope == GLOBAL_SCOPE {
                            "the global budget".to_string()
                        } else {
                            format!("user {:?}'s budget", over.scope)
                        };
                        let msg = format!(
                            "Budget limit reached: this call could cost up to {} on {} (max_tokens {max_tokens}), \
                             but {whose} of {} has {} spent and {} held by calls in flight this period. \
                             Raise the limit (set_budget, or `ai-cost-optimizer budget --set`), lower max_tokens, \
                             or ask for a cheaper tier.",
                            crate::render::usd(cand.worst_case_cost_usd),
                            cand.model,
                            crate::render::usd(to_usd(over.limit_nanos)),
                            crate::render::usd(to_usd(over.spent_nanos)),
                            crate::render::usd(to_usd(over.reserved_nanos)),
                        );
                        // The routed choice itself does not fit: say so
                        // (the caller may ask for a cheaper tier) rather
                        // than quietly answer with a weaker model.
                        if attempts.is_empty() {
                            return Err(ToolError::BudgetRefused(msg));
                        }
                        // A fallback after a failure: a cheaper one further
                        // on may still fit what is left.
                        last_error = Some(msg);
                        stopped_by_budget = true;
                        *refused_by_call_limit = false;
                        continue 'candidates;
                    }
                    Ok(Ok(r)) => self.guard(&ledger, r),
                };

                let max_out = cand_max_output(
                    &self.catalog,
                    &cand.model,
                    max_tokens,
                    cand.estimated_input_tokens,
                );
                let req = ChatRequest {
                    sampling,
                    model: api_model_name(&cand.model),
                    system: system.map(str::to_string),
                    prompt: prompt.to_string(),
                    max_tokens: max_out,
                    input_tokens_estimate: cand.estimated_input_tokens,
                    context_window: self
                        .catalog
                        .get(&cand.model)
                        .and_then(|p| p.max_input_tokens),
                };
                let mut base_record = CallRecord {
                    ts_ms: self.now(),
                    user_id: user.clone(),
                    request_id: request_id.clone(),
                    attempt: (attempts.len() + 1) as u32,
                    provider: cand.provider.as_str().to_string(),
                    model: cand.model.clone(),
                    // A forced model in no routing tier has none (shown as
                    // `forced`): recording the score's tier would read to
                    // calibration as the caller overriding the router.
                    tier: routed_tier(cand).map(|t| t.as_str().to_string()),
                    score: Some(plan.score),
                    forced: forced.map(str::to_string),
                    prefer: Some(prefer.as_str().to_string()),
                    prompt_sha256: prompt_sha256.clone(),
                    prompt_text: prompt_text.clone(),
                    ..CallRecord::default()
                };
                // Counts the answer text as it streams, so a cancelled
                // attempt can be charged for what the provider already
                // generated (see `CancelCharge`).
                let counting = CountingSink {
                    inner: sink,
                    bytes: Arc::default(),
                    reasoning_bytes: Arc::default(),
                };
                let reservation = reservation.pending(
                    base_record.clone(),
                    self.cancel_charge(&cand.model, cand.estimated_input_tokens, &counting),
                );
                let sink: &dyn StreamSink = &counting;
                sink.on_attempt(&AttemptRoute {
                    provider: cand.provider,
                    model: &cand.model,
                    tier: routed_tier(cand).map_or("forced", Tier::as_str),
                    score: plan.score,
                    request_id: &request_id,
                });
                let t0 = Instant::now();
                let result = provider
                    .client
                    .complete(&req, sink)
                    .await
                    .and_then(|r| refuse_empty(cand.provider, r));
                let latency_ms = t0.elapsed().as_millis() as u64;
                base_record.latency_ms = latency_ms;
                let err = match result {
                    Ok(resp) => {
                        self.breakers.success(cand.provider);
                        let (mut cost, mut source) = self.catalog.price_call(
                            &cand.model,
                            &resp.usage,
                            resp.provider_cost_usd,
                        );
                        // A provider that answered but reported no usable
                        // token counts (absent, negative, mistyped; a
                        // gateway ignoring `stream_options`) makes a catalog
                        // price of $0 — which would read as a free call, and
                        // let such calls spend past every budget. Charge an
                        // estimate instead (the prompt's estimated tokens,
                        // the answer at 4 bytes a token), flagged as one.
                        let mut resp = resp;
                        let u = &resp.usage;
                        let no_usage = source == CostSource::Catalog
                            && u.input_tokens
                                + u.cache_read_tokens
                                + u.cache_write_tokens
                                + u.output_tokens
                                == 0;
                        if no_usage {
                            // The thinking streamed too (reasoning models
                            // bill it as output, often most of it); it never
                            // reaches `resp.text`.
                            let reasoning = counting
                                .reasoning_bytes
                                .load(Ordering::Relaxed)
                                .div_ceil(BYTES_PER_OUTPUT_TOKEN);
                            let output = (resp.text.len() as u64).div_ceil(BYTES_PER_OUTPUT_TOKEN);
                            resp.usage = Usage {
                                input_tokens: cand.estimated_input_tokens,
                                output_tokens: output + reasoning,
                                reasoning_tokens: reasoning,
                                ..Usage::default()
                            };
                            cost = self.catalog.price_call(&cand.model, &resp.usage, None).0;
                            source = CostSource::Estimate;
                        }
                        // An unpriced call's own cost is unknown, so what
                        // it saved is too: no baseline, rather than the whole
                        // baseline counted as saved.
                        let baseline_cost = baseline_price
                            .as_ref()
                            .filter(|_| source != CostSource::Unpriced)
                            .map(|b| b.cost_of(&resp.usage));
                        let record = CallRecord {
                            input_tokens: resp.usage.input_tokens,
                            cache_read_tokens: resp.usage.cache_read_tokens,
                            cache_write_tokens: resp.usage.cache_write_tokens,
                            output_tokens: resp.usage.output_tokens,
                            reasoning_tokens: resp.usage.reasoning_tokens,
                            cost_usd: cost,
                            cost_source: cost_source_name(source).into(),
                            baseline_cost_usd: baseline_cost,
                            ok: true,
                            ..base_record
                        };
                        let settled = reservation.settle(record).await;
                        attempts.push(Attempt {
                            provider: cand.provider,
                            model: cand.model.clone(),
                            outcome: "ok".into(),
                            error: None,
                            latency_ms,
                            retried_after_ms: None,
                        });
                        let mut warnings = Vec::new();
                        if let Err(e) = &settled {
                            tracing::error!(error = %e, request_id, "answer received but not recorded");
                            warnings.push(format!(
                                "This call ({}) could NOT be recorded in the ledger: {e}. Its cost is not in your usage totals.",
                                crate::render::usd(cost)
                            ));
                        }
                        if let Some(note) = billed_note(&cut_off) {
                            warnings.push(note);
                        }
                        if no_usage {
                            warnings.push(format!(
                                "{} answered without usable token counts; the call is recorded at an estimate of {} (the prompt's estimated tokens and the answer's length), flagged `estimate`.",
                                cand.model,
                                crate::render::usd(cost)
                            ));
                        } else if source == CostSource::Unpriced {
                            warnings.push(format!(
                                "{} has no known price; the call is recorded at $0 and flagged unpriced. Add [pricing.overrides] for it.",
                                cand.model
                            ));
                        } else if let Some(odd) =
                            implausible_usage(&resp.usage, max_out, cand.estimated_input_tokens)
                        {
                            // Billed as reported (the provider's word is the
                            // bill), but not silently: far more tokens than
                            // the call allowed or sent is a provider's (or a
                            // proxy's) error worth checking on the bill.
                            tracing::warn!(
                                request_id,
                                model = cand.model,
                                odd,
                                "implausible usage reported"
                            );
                            warnings.push(format!(
                                "{} reported {odd}; the call is recorded at the {} that usage costs. Check it against the provider's bill.",
                                cand.model,
                                crate::render::usd(cost)
                            ));
                        }
                        let audio = if speak {
                            let job = SpeechJob {
                                ledger: &ledger,
                                user: &user,
                                request_id: &request_id,
                                first_attempt: attempts.len() as u32 + 1,
                                checks: &checks_at,
                                prompt_sha256: &prompt_sha256,
                                // `budget_limit` caps the whole call, the
                                // audio included.
                                budget_left: budget_limit
                                    .map(|l| l - call_spent - crate::pricing::sane_cost(cost)),
                            };
                            Some(self.speak(&resp.text, &voice, language, job).await)
                        } else {
                            None
                        };
                        if let Some(Audio { error: Some(e), .. }) = &audio {
                            warnings.push(format!("No audio: {e}"));
                        }
                        let audio_unrecorded = audio.as_ref().and_then(|a| a.unrecorded.clone());
                        if let Some(w) = &audio_unrecorded {
                            warnings.push(w.clone());
                        }
                        // The statuses read for the alerts are the budgets
                        // after this call: report those rather than reading
                        // them again.
                        let (alerts, mut after) = self.fire_alerts(&ledger, &budgets);
                        let global_budget = after.get_mut(1).and_then(Option::take);
                        let budget_after = after.get_mut(0).and_then(Option::take);
                        let (savings, pct) = match baseline_cost {
                            // Negative when the model cost more than the
                            // baseline (e.g. a forced dearer model).
                            Some(b) if b > 0.0 => (b - cost, (b - cost) / b * 100.0),
                            _ => (0.0, 0.0),
                        };
                        if max_out < max_tokens {
                            notes.push(format!(
                                "max_tokens lowered to {max_out}: the output limit of {}, or the context left after the prompt.",
                                cand.model
                            ));
                        }
                        // A fallback into another tier changes what the
                        // call is (a weaker answer, or a dearer one): said.
                        if cand.tier != plan.tier && forced != Some("model") {
                            notes.push(format!(
                                "Answered by a {} model: the {} tier's models failed or were skipped.",
                                cand.tier, plan.tier
                            ));
                        }
                        return Ok(Completion {
                            answer: resp.text,
                            model: cand.model.clone(),
                            provider: cand.provider,
                            tier: routed_tier(cand),
                            cost_usd: cost,
                            failed_attempts_cost_usd: call_spent,
                            cost_source: source,
                            tokens: resp.usage.into(),
                            complexity: Complexity {
                                score: plan.score,
                                reasons: plan.reasons.clone(),
                            },
                            baseline: baseline_cost.map(|c| Baseline {
                                model: self.settings.baseline_model.clone(),
                                cost_usd: c,
                            }),
                            savings_usd: savings,
                            savings_percent: pct,
                            latency_ms: started.elapsed().as_millis() as u64,
                            finish_reason: resp.finish_reason,
                            attempts,
                            notes,
                            budget: budget_after,
                            global_budget,
                            alerts,
                            recorded: settled.is_ok() && audio_unrecorded.is_none(),
                            warning: (!warnings.is_empty()).then(|| warnings.join(" ")),
                            audio,
                            request_id,
                            feedback,
                        });
                    }
                    Err(err) => err,
                };

                // The total timeout ran out on an answer still arriving (the
                // idle one catches a stalled provider long before it): the
                // same answer would run out again, each attempt billed.
                let out_of_time = err.kind == ErrorKind::Timeout
                    && err.accepted.is_some()
                    && Duration::from_millis(latency_ms) + Duration::from_secs(1)
                        >= self.settings.request_timeout;
                let mut message = err.user_message();
                if out_of_time {
                    message.push_str(&format!(
                        " The answer was still arriving when the request timeout ({} s) ran out; \
                         not retried or sent to another model, as a long answer would run out of time \
                         again and be paid for twice. Raise COST_OPTIMIZER_REQUEST_TIMEOUT_SECS \
                         (request_timeout_secs) or lower max_tokens.",
                        self.settings.request_timeout.as_secs()
                    ));
                }
                tracing::warn!(
                    provider = %cand.provider,
                    model = %cand.model,
                    kind = err.kind.as_str(),
                    retry = retries,
                    "provider attempt failed: {message}"
                );
                // Refused or unanswered: nothing was billed. Cut off after
                // the provider accepted: it may bill what it produced, so
                // the attempt is recorded at the cost of the usage seen.
                let partial = err.accepted.map(|usage| match err.accepted_cost_usd {
                    Some(cost) => PartialCharge {
                        usage,
                        cost_usd: crate::pricing::sane_cost(cost),
                        source: "provider",
                        maybe_billed: true,
                        basis: PartialBasis::Provider,
                    },
                    None => partial_charge(
                        &self.catalog,
                        &cand.model,
                        usage,
                        reservation.cancel_usage(),
                    ),
                });
                let (cost, source, usage) = match &partial {
                    Some(p) => (p.cost_usd, p.source, p.usage),
                    None => (0.0, "provider", Usage::default()),
                };
                let record = CallRecord {
                    input_tokens: usage.input_tokens,
                    cache_read_tokens: usage.cache_read_tokens,
                    cache_write_tokens: usage.cache_write_tokens,
                    output_tokens: usage.output_tokens,
                    reasoning_tokens: usage.reasoning_tokens,
                    cost_usd: cost,
                    cost_source: source.into(),
                    ok: false,
                    error_kind: Some(err.kind.as_str().into()),
                    error_message: Some(message.clone()),
                    ..base_record
                };
                let recorded = reservation.settle(record).await;
                if let Err(e) = &recorded {
                    tracing::error!(error = %e, "failed attempt not recorded");
                }
                call_spent += cost;
                if let Some(p) = partial.filter(|p| p.maybe_billed) {
                    cut_off.push(CutOff {
                        model: cand.model.clone(),
                        cost_usd: p.cost_usd,
                        basis: p.basis,
                        recorded: recorded.is_ok(),
                    });
                }
                let account_limited = err.kind == ErrorKind::RateLimit
                    && rate_limited
                        .iter()
                        .any(|(p, m)| *p == cand.provider && *m != cand.model);
                // A rate limit counts against the provider's breaker only
                // when it is the account's (two of its models limited in
                // this call), once: one model's quota, hit by a few calls
                // at once, shut the provider's other models for everyone.
                let counts = !out_of_time
                    && !err.model_only
                    && (err.kind != ErrorKind::RateLimit
                        || account_limited && !rate_limit_counted.contains(&cand.provider));
                if err.kind == ErrorKind::RateLimit {
                    if account_limited {
                        rate_limit_counted.push(cand.provider);
                    }
                    rate_limited.push((cand.provider, cand.model.clone()));
                }
                if counts && self.breakers.failure(cand.provider, err.kind, self.now()) {
                    notes.push(format!(
                        "{} failed repeatedly; it is skipped for the next {}s.",
                        cand.provider,
                        self.settings.breaker_cooldown.as_secs()
                    ));
                }
                attempts.push(Attempt {
                    provider: cand.provider,
                    model: cand.model.clone(),
                    outcome: err.kind.as_str().into(),
                    error: Some(message.clone()),
                    latency_ms,
                    retried_after_ms: None,
                });
                last_error = Some(message);
                if matches!(err.kind, ErrorKind::RateLimit | ErrorKind::Overloaded) {
                    busy_wait = busy_wait.max(err.retry_after);
                }
                stopped_by_budget = false;
                if out_of_time {
                    break 'candidates;
                }
                // Text that already reached a client that cannot take it
                // back (an OpenAI-style SSE stream) must not be followed by
                // another answer: a retry or a fallback would append a
                // second, different answer to the part already shown, and
                // be paid for only to be garbled.
                if counting.bytes.load(Ordering::Relaxed) > 0 && sink.is_final() {
                    last_error = last_error.map(|m| {
                        format!(
                            "{} Not retried or sent elsewhere: part of the answer was already streamed to you.",
                            sentence(&m)
                        )
                    });
                    break 'candidates;
                }
                // A retry must fit in what `budget_limit` leaves (checked
                // before waiting for it); if not, fall back as when the
                // retries are used up, and say why if nothing else runs.
                let retry_fits =
                    budget_limit.is_none_or(|l| call_spent + cand.worst_case_cost_usd <= l);
                if err.kind.is_retryable()
                    && retries < self.settings.max_retries
                    && !retry_fits
                    && let Some(l) = budget_limit
                {
                    last_error = last_error.map(|m| {
                        format!(
                            "{} Not retried: budget_limit of {} leaves {} after the {} this call was charged, \
                             and a retry could cost up to {}. Raise budget_limit or lower max_tokens.",
                            sentence(&m),
                            crate::render::usd(l),
                            crate::render::usd((l - call_spent).max(0.0)),
                            crate::render::usd(call_spent),
                            crate::render::usd(cand.worst_case_cost_usd),
                        )
                    });
                    stopped_by_budget = true;
                    *refused_by_call_limit = true;
                }
                if err.kind == ErrorKind::Timeout {
                    timeouts += 1;
                }
                if err.kind.is_retryable()
                    && retries < self.settings.max_retries
                    && retry_fits
                    && !account_limited
                    && timeouts < 2
                    && let Some(delay) = self.backoff(retries, err.retry_after)
                    && waited + delay <= self.settings.max_retry_wait
                {
                    if let Some(a) = attempts.last_mut() {
                        a.retried_after_ms = Some(delay.as_millis() as u64);
                    }
                    tokio::time::sleep(delay).await;
                    waited += delay;
                    retries += 1;
                    continue;
                }
                if !err.kind.allows_fallback() {
                    break 'candidates;
                }
                // A model-specific failure leaves the provider's other
                // models worth a try.
                // So does a rate limit: quotas are per model at Gemini,
                // Anthropic, OpenRouter and Cerebras, and a 429 is quick
                // and free where the whole account is limited.
                if err.whole_provider
                    || !err.model_only
                        && !matches!(
                            err.kind,
                            ErrorKind::ContextTooLong
                                | ErrorKind::ModelUnavailable
                                | ErrorKind::EmptyAnswer
                                | ErrorKind::RateLimit
                        )
                {
                    failed_providers.push(cand.provider);
                }
                break;
            }
        }
        // Attempts cut off after the provider accepted them were recorded at
        // a cost: that spend may cross a threshold, whose alert must not
        // wait for the next successful call. The error has no alerts field:
        // its text carries them, and the sink hears of each (MCP notifies).
        let mut alerted = String::new();
        if cut_off.iter().any(|c| c.recorded && c.cost_usd > 0.0) {
            for a in self.fire_alerts(&ledger, &budgets).0 {
                alerted.push_str(&format!(" Budget alert: {}", a.message));
                sink.on_alert(&a);
            }
        }
        let tried = attempts
            .iter()
            .map(|a| format!("{} ({})", a.model, a.outcome))
            .collect::<Vec<_>>()
            .join(", ");
        // A fallback the budget could not cover ends the call on the
        // budget, not on the provider that failed first: the caller should
        // raise the limit or ask for less, not retry.
        let busy = |o: &str| matches!(o, "rate_limit" | "overloaded");
        let kind: Box<dyn Fn(String) -> ToolError> = if stopped_by_budget {
            Box::new(ToolError::BudgetRefused)
        } else if !attempts.is_empty()
            && cut_off.is_empty()
            && attempts.iter().all(|a| busy(&a.outcome))
        {
            // Busy only when nothing was answered: an answer cut short is
            // a failure of that answer, whatever ended it.
            let rate_limited = attempts.iter().all(|a| a.outcome == "rate_limit");
            let retry_after_secs = busy_wait.map(|d| d.as_secs_f64().ceil() as u64);
            Box::new(move |message| ToolError::ProvidersBusy {
                message,
                rate_limited,
                retry_after_secs,
            })
        } else if !attempts.is_empty()
            && cut_off.is_empty()
            && attempts.iter().all(|a| a.outcome == "context_too_long")
        {
            Box::new(ToolError::ContextTooLong)
        } else {
            Box::new(ToolError::ProviderFailed)
        };
        let not_tried = if skipped.is_empty() {
            String::new()
        } else {
            format!(
                " Not tried: {} (the same provider's; its failure was taken as the whole provider's, not one model's).",
                skipped.join(", ")
            )
        };
        Err(kind(
            format!(
                "{} Tried: {}.{not_tried} {}",
                last_error.map_or_else(
                    || "No provider could take the call.".into(),
                    |m| sentence(&m)
                ),
                if tried.is_empty() {
                    "none"
                } else {
                    tried.as_str()
                },
                match billed_note(&cut_off) {
                    Some(note) => note,
                    None => "Nothing was charged.".into(),
                }
            ) + &alerted,
        ))
    }

    /// How to charge an attempt on `model` if the caller goes away before
    /// it finishes: the estimated prompt plus the text streamed so far.
    fn cancel_charge(&self, model: &str, input_tokens: u64, sink: &CountingSink) -> CancelCharge {
        let price = match self.catalog.get(model) {
            Some(p) if crate::pricing::is_local_price(&p) => CancelPrice::Local,
            Some(p) if p.origin != PriceOrigin::Unknown => CancelPrice::Catalog(Box::new(p)),
            _ => CancelPrice::Unpriced,
        };
        CancelCharge {
            price,
            input_tokens,
            streamed_bytes: sink.bytes.clone(),
            reasoning_bytes: sink.reasoning_bytes.clone(),
        }
    }

    /// Reads `text` aloud with Cartesia, records the cost, writes the WAV.
    /// Never fails the call: the answer is already paid for, so problems
    /// come back in [`Audio::error`].
    async fn speak(
        &self,
        text: &str,
        voice: &str,
        language: Option<&'static str>,
        job: SpeechJob<'_>,
    ) -> Audio {
        use crate::providers::cartesia::{self, SpeechRequest};
        let model = cartesia::DEFAULT_MODEL;
        let transcript: String = text
            .trim()
            .chars()
            .take(cartesia::MAX_TRANSCRIPT_CHARS)
            .collect();
        let characters = transcript.chars().count() as u64;
        let (language, language_source) = match language {
            Some(l) => (l, "asked"),
            None => match cartesia::detect_language(&transcript) {
                Some(l) => (l, "detected"),
                None => ("en", "default"),
            },
        };
        let per_char = self
            .catalog
            .get(&format!("cartesia/{model}"))
            .map(|p| p.input)
            .or_else(|| cartesia::price_per_char(model))
            .unwrap_or(0.0);
        let cost = crate::pricing::sane_cost(characters as f64 * per_char);
        let mut audio = Audio {
            path: None,
            bytes: 0,
            characters,
            model: format!("cartesia/{model}"),
            voice: voice.to_string(),
            language: language.to_string(),
            language_source,
            cost_usd: 0.0,
            error: None,
            unrecorded: None,
        };
        if transcript.is_empty() {
            audio.error = Some("the answer is empty".into());
            return audio;
        }
        let Some(speech) = self.registry.speech() else {
            audio.error = Some("Cartesia is not enabled".into());
            return audio;
        };
        let req = SpeechRequest {
            transcript,
            model: model.to_string(),
            voice: voice.to_string(),
            language: language.to_string(),
        };
        let mut retries = 0;
        let mut waited = Duration::ZERO;
        let mut attempt = job.first_attempt;
        loop {
            // Each attempt (a retry after a billed failure too) must fit
            // in what `budget_limit` leaves.
            if let Some(left) = job.budget_left
                && audio.cost_usd + cost > left
            {
                audio.error = Some(format!(
                    "reading the answer aloud would cost {}, more than budget_limit leaves ({}{})",
                    crate::render::usd(cost),
                    crate::render::usd((left - audio.cost_usd).max(0.0)),
                    if audio.cost_usd > 0.0 {
                        format!(
                            " after {} charged for a failed attempt at it",
                            crate::render::usd(audio.cost_usd)
                        )
                    } else {
                        String::new()
                    }
                ));
                return audio;
            }
            let now = self.now();
            // Cancel-safe, as in `complete`.
            let reserve = job
                .ledger
                .reserve_async(
                    job.user,
                    &(job.checks)(now),
                    to_nanos(cost),
                    now,
                    reservation_ttl(&self.settings),
                )
                .await;
            let reservation = match reserve {
                Ok(Ok(r)) => self.guard(job.ledger, r),
                Ok(Err(_)) => {
                    audio.error = Some(format!(
                        "reading the answer aloud would cost {}, more than the budget has left",
                        crate::render::usd(cost)
                    ));
                    return audio;
                }
                Err(e) => {
                    audio.error = Some(e.to_string());
                    return audio;
                }
            };
            let path = match audio_path(&self.settings.data_dir, job.request_id) {
                Ok(p) => p,
                Err(e) => {
                    audio.error = Some(format!("could not save the audio: {e}"));
                    return audio;
                }
            };
            let mut record = CallRecord {
                ts_ms: self.now(),
                user_id: job.user.to_string(),
                request_id: job.request_id.to_string(),
                attempt,
                provider: ProviderId::Cartesia.as_str().into(),
                model: audio.model.clone(),
                // Not a routed answer: reports keep speech apart.
                tier: Some(crate::ledger::SPEECH_TIER.into()),
                // Cartesia bills characters; they are recorded as input tokens.
                input_tokens: characters,
                prompt_sha256: job.prompt_sha256.to_string(),
                cost_source: "catalog".into(),
                ..CallRecord::default()
            };
            // Cancelled while Cartesia reads it out: the characters are
            // billed all the same, so the guard records the attempt at its
            // price.
            let reservation = reservation.pending(
                record.clone(),
                CancelCharge {
                    price: CancelPrice::Fixed(cost),
                    input_tokens: characters,
                    streamed_bytes: Arc::default(),
                    reasoning_bytes: Arc::default(),
                },
            );
            let t0 = Instant::now();
            let result = speech.client.synthesize_to(&req, &path).await;
            record.latency_ms = t0.elapsed().as_millis() as u64;
            attempt += 1;
            match result {
                Ok(size) => {
                    let settled = reservation
                        .settle(CallRecord {
                            cost_usd: cost,
                            ok: true,
                            ..record
                        })
                        .await;
                    note_unrecorded(&mut audio, settled, cost);
                    audio.cost_usd += cost;
                    audio.bytes = size;
                    audio.path = Some(path.display().to_string());
                    return audio;
                }
                Err(err) => {
                    let message = err.user_message();
                    // Cartesia bills the characters once it accepted the
                    // request, whether or not the audio arrived whole.
                    let billed = err.accepted.is_some();
                    let settled = reservation
                        .settle(CallRecord {
                            ok: false,
                            error_kind: Some(err.kind.as_str().into()),
                            error_message: Some(message.clone()),
                            cost_usd: if billed { cost } else { 0.0 },
                            cost_source: if billed { "estimate" } else { "provider" }.into(),
                            ..record
                        })
                        .await;
                    note_unrecorded(&mut audio, settled, if billed { cost } else { 0.0 });
                    if billed {
                        audio.cost_usd += cost;
                    }
                    if err.kind.is_retryable()
                        && retries < self.settings.max_retries
                        && let Some(d) = self.backoff(retries, err.retry_after)
                        && waited + d <= self.settings.max_retry_wait
                    {
                        tokio::time::sleep(d).await;
                        waited += d;
                        retries += 1;
                        continue;
                    }
                    audio.error = Some(message);
                    return audio;
                }
            }
        }
    }

    /// How long to wait before retry number `retry + 1`: the provider's own
    /// `retry-after` if it gave one (none if that is longer than we are
    /// willing to wait: better to fall back at once), else exponential
    /// backoff with jitter so concurrent calls do not retry in lockstep.
    fn backoff(&self, retry: u32, retry_after: Option<Duration>) -> Option<Duration> {
        if let Some(ra) = retry_after {
            return (ra <= self.settings.max_retry_wait).then_some(ra);
        }
        let base = self.settings.retry_base.as_secs_f64() * 2f64.powi(retry.min(16) as i32);
        Some(Duration::from_secs_f64(
            base * (0.5 + 0.5 * fastrand::f64()),
        ))
    }

    /// `query_usage`: spend, calls, savings and breakdowns for a period.
    pub fn usage(&self, args: &UsageArgs) -> Result<UsageReport, ToolError> {
        let now = self.now();
        let since = match (
            args.since
                .as_deref()
                .map(str::trim)
                .filter(|s| !s.is_empty()),
            args.days,
        ) {
            (Some(_), Some(_)) => return Err(invalid("give either days or since, not both")),
            (Some(s), None) => parse_since(s)?,
            (None, days) => {
                let d = days.unwrap_or(30);
                if !(1..=3650).contains(&d) {
                    return Err(invalid(format!("days must be between 1 and 3650, got {d}")));
                }
                // Midnight-aligned like the dashboard's days, so the two
                // agree for the same `days` (a rolling window did not).
                (now.div_euclid(86_400_000) - (d - 1)) * 86_400_000
            }
        };
        if since > now {
            return Err(invalid("since is in the future"));
        }
        // Blank means "not given" (every user), as for the other tools'
        // optional fields: models often send "" for an optional string.
        let user = match args
            .user_id
            .as_deref()
            .map(str::trim)
            .filter(|u| !u.is_empty())
        {
            Some(u) => Some(validate_user(Some(u))?),
            None => None,
        };
        let mut groups: Vec<Breakdown> = match args
            .group_by
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            None => vec![Breakdown::Model, Breakdown::Provider, Breakdown::Day],
            Some(g) => vec![match g.to_ascii_lowercase().as_str() {
                "model" => Breakdown::Model,
                "provider" => Breakdown::Provider,
                "day" => Breakdown::Day,
                "week" => Breakdown::Week,
                "month" => Breakdown::Month,
                "tier" => Breakdown::Tier,
                "user" => Breakdown::User,
                "band" => Breakdown::Band,
                other => {
                    return Err(invalid(format!(
                        "group_by: {other:?} is not one of model, provider, day, week, month, tier, user, band"
                    )));
                }
            }],
        };
        // The provider breakdown is always read: savings leave speech out.
        let want_providers = groups.contains(&Breakdown::Provider);
        if !want_providers {
            groups.push(Breakdown::Provider);
        }
        let ledger = self.ledger()?;
        let until = now + 1;
        let led = |e: crate::ledger::LedgerError| ToolError::Ledger(e.to_string());
        // One consistent read; every breakdown is aggregate SQL over it.
        let snap = ledger
            .snapshot(&SnapshotRequest {
                user_id: user.clone(),
                since_ms: since,
                until_ms: until,
                breakdowns: groups,
                day_provider: false,
                top_calls: 5,
                recent: 0,
            })
            .map_err(led)?;
        let totals = snap.totals.clone();
        // Signed: calls dearer than the baseline count against it. Speech
        // is left out (the baseline covers answers only); failed attempts
        // stay in (conservative). No baseline (none recorded, e.g. the
        // baseline model has no price): nothing saved or lost is claimed.
        let saved = totals.savings_usd();
        let mut report = UsageReport {
            since: budget::rfc3339(since),
            until: budget::rfc3339(now),
            user_id: user.clone(),
            total_cost_usd: totals.cost_usd,
            calls: totals.calls,
            savings_usd: saved.unwrap_or(0.0),
            savings_percent: saved
                .map(|s| s / totals.baseline_cost_usd * 100.0)
                .unwrap_or(0.0),
            totals,
            by_model: Vec::new(),
            by_provider: Vec::new(),
            by_day: Vec::new(),
            by_tier: Vec::new(),
            by_user: Vec::new(),
            by_week: Vec::new(),
            by_month: Vec::new(),
            by_band: snap.bands,
            top_calls: snap.top_calls,
            budget: self.report_budget(user.as_deref())?,
            global_budget: self.global_budget_status()?,
            warning: ledger.ensure_writable().err().map(|e| e.to_string()),
        };
        for (g, rows) in snap.groups {
            match g {
                Breakdown::Model => report.by_model = rows,
                Breakdown::Provider if want_providers => report.by_provider = rows,
                Breakdown::Provider => {}
                Breakdown::Day => report.by_day = rows,
                Breakdown::Week => report.by_week = rows,
                Breakdown::Month => report.by_month = rows,
                Breakdown::Tier => report.by_tier = rows,
                Breakdown::User => report.by_user = rows,
                // Band rows carry the average per call; `by_band` has them.
                Breakdown::Band => {}
            }
        }
        Ok(report)
    }

    /// `set_budget`: creates a user's budget, or updates it: a setting the
    /// call leaves out keeps its stored value (only a new budget takes the
    /// configured defaults), so "raise it to $30" does not also turn a
    /// weekly `warn` budget into a monthly `block` one.
    pub fn set_budget(&self, args: &SetBudgetArgs) -> Result<BudgetUpdate, ToolError> {
        budget::validate_limit("monthly_limit", args.monthly_limit).map_err(invalid)?;
        if let Some(t) = &args.alert_thresholds {
            budget::validate_thresholds(t).map_err(invalid)?;
        }
        let mode = match args
            .mode
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            Some(m) => Some(BudgetMode::parse(m).ok_or_else(|| {
                invalid(format!("mode: {m:?} is not one of warn, downgrade, block"))
            })?),
            None => None,
        };
        let global = args.global.unwrap_or(false);
        if global
            && args
                .user_id
                .as_deref()
                .is_some_and(|u| !u.trim().is_empty())
        {
            return Err(invalid(
                "give either global (every user together) or user_id (one user), not both",
            ));
        }
        let user = if global {
            GLOBAL_SCOPE.to_string()
        } else {
            let u = validate_user(args.user_id.as_deref())?;
            if u == GLOBAL_SCOPE {
                return Err(invalid("user_id \"*\" is reserved; use global: true"));
            }
            u
        };
        let period = match args
            .period
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            Some(p) => Some(budget::Period::parse(p).ok_or_else(|| {
                invalid(format!(
                    "period: {p:?} is not one of daily, weekly, monthly"
                ))
            })?),
            None => None,
        };
        let timezone = match args
            .timezone
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            Some(tz) => {
                budget::validate_timezone(tz).map_err(invalid)?;
                Some(tz.to_string())
            }
            None => None,
        };
        let format = match args
            .webhook_format
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            Some(f) => Some(WebhookFormat::parse(f).ok_or_else(|| {
                invalid(format!(
                    "webhook_format: {f:?} is not one of json, slack, discord"
                ))
            })?),
            None => None,
        };
        let ledger = self.ledger()?;
        ledger
            .ensure_writable()
            .map_err(|e| ToolError::Ledger(e.to_string()))?;
        let _one_at_a_time = self.budget_writes.lock().unwrap_or_else(|e| e.into_inner());
        let previous_row = ledger
            .budget(&user)
            .map_err(|e| ToolError::Ledger(e.to_string()))?;
        let previous = previous_row.as_ref().map(|b| to_usd(b.limit_nanos));
        let stored = previous_row.clone().map(Budget::from_row);
        let thresholds = match (&args.alert_thresholds, &stored) {
            (Some(t), _) => t.clone(),
            (None, Some(b)) => b.thresholds.clone(),
            (None, None) => self.settings.default_alert_thresholds.clone(),
        };
        let mode = mode
            .or(stored.as_ref().map(|b| b.mode))
            .unwrap_or(self.settings.default_budget_mode);
        let period = period
            .or(stored.as_ref().map(|b| b.period))
            .unwrap_or(self.settings.default_period);
        let timezone = timezone
            .or(stored.as_ref().map(|b| b.timezone.clone()))
            .unwrap_or_else(|| self.settings.default_timezone.clone());
        // Keep an existing webhook unless the call changes it; "" removes it.
        let webhook = match args.webhook_url.as_deref().map(str::trim) {
            Some("") => None,
            Some(url) => {
                budget::validate_webhook_url(url).map_err(invalid)?;
                // Its path is often the token (Slack, Discord): keep it out
                // of every log line and error from here on.
                crate::secrets::register_url(url);
                Some(Webhook {
                    url: url.to_string(),
                    format: format.unwrap_or(WebhookFormat::Json),
                })
            }
            None => previous_row
                .map(|r| Budget::from_row(r).webhook)
                .unwrap_or(None)
                .map(|mut w| {
                    if let Some(f) = format {
                        w.format = f;
                    }
                    w
                }),
        };
        if format.is_some() && webhook.is_none() {
            return Err(invalid("webhook_format needs a webhook_url"));
        }
        let b = Budget {
            user_id: user.clone(),
            limit_usd: args.monthly_limit,
            thresholds,
            mode,
            is_default: false,
            period,
            timezone,
            webhook,
        };
        let now = self.now();
        // Thresholds still crossed under the new settings were alerted
        // already: not again (a limit raised from $100 to $105 with $85
        // spent re-sent 50% and 80%; a new time zone, the whole month's).
        // Those the change put out of reach fire again when crossed anew.
        // The status needs no stored row: read before writing, so the
        // budget and its alerts change in one transaction.
        let before = stored.unwrap_or_else(|| self.configured_default(&user));
        let status_now =
            budget::status(ledger, &b, now).map_err(|e| ToolError::Ledger(e.to_string()))?;
        ledger
            .set_budget_carrying_alerts(
                &b.to_row(),
                now,
                before.bounds(now).0,
                b.bounds(now).0,
                &status_now.crossed_thresholds,
                to_nanos(before.limit_usd),
            )
            .map_err(|e| ToolError::Ledger(e.to_string()))?;
        tracing::info!(
            user,
            limit = args.monthly_limit,
            mode = mode.as_str(),
            period = period.as_str(),
            "budget set"
        );
        // A lower limit may already be past some thresholds: alert now.
        let (alerts, mut after) = self.fire_alerts(ledger, std::slice::from_ref(&b));
        let status = match after.pop().flatten() {
            Some(s) => s,
            None => budget::status(ledger, &b, self.now())
                .map_err(|e| ToolError::Ledger(e.to_string()))?,
        };
        Ok(BudgetUpdate {
            previous_limit_usd: previous,
            status,
            webhook: self.alert_destination(&b),
            alerts,
        })
    }

    /// Where `b`'s alerts go by webhook, redacted to the host (its own
    /// webhook, else the configured one).
    fn alert_destination(&self, b: &Budget) -> Option<String> {
        b.webhook
            .as_ref()
            .or(self.settings.alert_webhook.as_ref())
            .map(|w| {
                format!(
                    "{} ({})",
                    budget::alerts::redact_url(&w.url),
                    w.format.as_str()
                )
            })
    }

    /// A budget as `budget` (the CLI, without `--set`) shows it: its status
    /// and where its alerts go, in `set_budget`'s result shape. `None` for
    /// the global budget when none is set.
    pub fn show_budget(&self, user: Option<&str>) -> Result<Option<BudgetUpdate>, ToolError> {
        let ledger = self.ledger()?;
        let b = match user {
            Some(user) => self.budget_of(ledger, user)?,
            None => match ledger
                .budget(GLOBAL_SCOPE)
                .map_err(|e| ToolError::Ledger(e.to_string()))?
            {
                Some(row) => Budget::from_row(row),
                None => return Ok(None),
            },
        };
        let status =
            budget::status(ledger, &b, self.now()).map_err(|e| ToolError::Ledger(e.to_string()))?;
        Ok(Some(BudgetUpdate {
            previous_limit_usd: None,
            webhook: self.alert_destination(&b),
            status,
            alerts: Vec::new(),
        }))
    }

    /// `doctor`: what is configured and why.
    pub fn doctor(&self) -> DoctorReport {
        let mut providers: Vec<ProviderStatus> = self
            .registry
            .enabled()
            .map(|p| ProviderStatus {
                provider: p.spec.id,
                enabled: true,
                reason: p.reason.clone(),
                // A base URL may carry a credential (`https://token@proxy`).
                base_url: crate::secrets::redact(&p.base_url),
                key: p.key.as_ref().map(crate::secrets::describe),
            })
            .collect();
        providers.extend(self.registry.disabled().iter().map(|d| {
            ProviderStatus {
                provider: d.provider,
                enabled: false,
                reason: d.reason.clone(),
                base_url: crate::providers::spec(d.provider)
                    .default_base_url
                    .to_string(),
                key: None,
            }
        }));
        providers.sort_by_key(|p| p.provider);
        let ledger = match &self.ledger {
            Ok(l) => match (l.count_calls(), l.ensure_writable()) {
                (Ok(n), Err(read_only)) => format!("READ-ONLY ({n} calls recorded): {read_only}"),
                (Ok(n), Ok(())) => format!(
                    "ok ({n} calls recorded; {})",
                    match self.settings.ledger_sync {
                        crate::ledger::Durability::Full => "fsync on every commit",
                        crate::ledger::Durability::Batched => "fsync batched every 100 ms",
                    }
                ),
                (Err(e), _) => e.to_string(),
            },
            Err(e) => e.clone(),
        };
        DoctorReport {
            version: env!("CARGO_PKG_VERSION").to_string(),
            data_dir: self.settings.data_dir.display().to_string(),
            ledger_path: self.settings.ledger_path().display().to_string(),
            ledger,
            log_dir: self.settings.log_dir().display().to_string(),
            config_file: self
                .settings
                .config_file
                .as_ref()
                .map(|p| p.display().to_string()),
            providers,
            catalog_models: self.catalog.len(),
            pricing_source: self.catalog.source().clone(),
            default_monthly_budget_usd: self.settings.default_monthly_budget_usd,
            default_period: self.settings.default_period,
            store_prompts: self.settings.store_prompts,
            baseline_model: self.settings.baseline_model.clone(),
            baseline_priced: self.catalog.get(&self.settings.baseline_model).is_some(),
            unpriced_tier_models: self.unpriced_tier_models(),
            routing_thresholds: self.router.thresholds(),
            prefer: self.settings.prefer,
            tiers_off: {
                let t = self.router.thresholds();
                let bands = [(0.0, t[0]), (t[0], t[1]), (t[1], t[2]), (t[2], 1.0)];
                Tier::ALL
                    .iter()
                    .zip(bands)
                    .filter(|(tier, (lo, hi))| hi <= lo || self.router.models(**tier).is_empty())
                    .map(|(tier, _)| *tier)
                    .collect()
            },
        }
    }

    /// Models listed in the routing tiers that the catalog does not price.
    pub fn unpriced_tier_models(&self) -> Vec<String> {
        crate::router::Tier::ALL
            .iter()
            .flat_map(|t| self.router.models(*t))
            .filter(|m| self.catalog.get(m).is_none())
            .cloned()
            .collect()
    }
}

/// Keeps a speech attempt's failed ledger write for the completion's
/// warning (and the log): Cartesia billed it whether or not we recorded it.
fn note_unrecorded(audio: &mut Audio, settled: Result<i64, crate::ledger::LedgerError>, cost: f64) {
    if let Err(e) = settled {
        tracing::error!(error = %e, "speech attempt not recorded");
        audio.unrecorded = Some(format!(
            "The audio ({}) could NOT be recorded in the ledger: {e}. Its cost is not in your usage totals.",
            crate::render::usd(cost)
        ));
    }
}

/// What a speech synthesis needs from the call it belongs to.
struct SpeechJob<'a> {
    ledger: &'a Ledger,
    user: &'a str,
    request_id: &'a str,
    first_attempt: u32,
    /// The budget checks of a hold taken at a time: each attempt's hold
    /// counts the period it is taken in (a retry after midnight belongs
    /// to the new day).
    checks: &'a (dyn Fn(i64) -> Vec<LimitCheck> + Sync),
    prompt_sha256: &'a str,
    /// What the call's `budget_limit` leaves after the answer and any
    /// failed attempts (USD); None without a limit.
    budget_left: Option<f64>,
}

/// Checks `complete_prompt`'s sampling options against the range every
/// provider accepts (OpenAI's): a temperature of 0-2, a top_p in (0, 1].
fn validate_sampling(
    temperature: Option<f64>,
    top_p: Option<f64>,
    seed: Option<i64>,
) -> Result<crate::providers::Sampling, ToolError> {
    if let Some(t) = temperature
        && !(t.is_finite() && (0.0..=2.0).contains(&t))
    {
        return Err(invalid(format!(
            "temperature must be between 0 and 2, got {t}"
        )));
    }
    if let Some(p) = top_p
        && !(p.is_finite() && p > 0.0 && p <= 1.0)
    {
        return Err(invalid(format!(
            "top_p must be more than 0 and at most 1, got {p}"
        )));
    }
    Ok(crate::providers::Sampling {
        temperature,
        top_p,
        seed,
    })
}

/// Checks the `language` argument of `complete_prompt`: one of the
/// languages Cartesia's model speaks, and only with `speak`. `None` (absent
/// or blank) lets `speak` detect it from the answer.
fn validate_language(
    language: Option<&str>,
    speak: bool,
) -> Result<Option<&'static str>, ToolError> {
    use crate::providers::cartesia::LANGUAGES;
    let Some(l) = language.map(str::trim).filter(|l| !l.is_empty()) else {
        return Ok(None);
    };
    if !speak {
        return Err(invalid("language is only used with speak: true"));
    }
    let lower = l.to_ascii_lowercase();
    match LANGUAGES.iter().find(|c| **c == lower) {
        Some(c) => Ok(Some(*c)),
        // Not echoed when long: an error should not repeat a megabyte.
        None if l.len() > 16 => Err(invalid(format!(
            "language: not a language code ({} bytes); use one of {}",
            l.len(),
            LANGUAGES.join(", ")
        ))),
        None => Err(invalid(format!(
            "language: {l:?} is not one Cartesia reads aloud; use one of {}",
            LANGUAGES.join(", ")
        ))),
    }
}

/// Writes audio to `<data dir>/audio/<request id>.wav`, owner-only.
/// Where the audio of `request_id` is saved: `<data dir>/audio/<id>.wav`,
/// the directory created private if missing.
fn audio_path(data_dir: &std::path::Path, request_id: &str) -> std::io::Result<std::path::PathBuf> {
    let dir = data_dir.join("audio");
    crate::ledger::create_private_dir(&dir).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(dir.join(format!("{request_id}.wav")))
}

/// Releases its reservation when dropped unless settled, so a cancelled or
/// panicking call never leaves money held. If it was given the attempt's
/// record, a dropped guard also records the attempt as cancelled.
struct ReservationGuard {
    ledger: Ledger,
    id: Option<crate::ledger::ReservationId>,
    pending: Option<(CallRecord, Instant, CancelCharge)>,
    listener: Option<Arc<dyn ChargeListener>>,
}

/// Forwards answer text to the caller's sink and counts its bytes, so a
/// cancelled attempt knows how much the provider had generated.
struct CountingSink<'a> {
    inner: &'a dyn StreamSink,
    /// Answer text passed on (what a final sink has shown).
    bytes: Arc<AtomicU64>,
    /// Thinking received: billed, never shown.
    reasoning_bytes: Arc<AtomicU64>,
}

impl StreamSink for CountingSink<'_> {
    fn on_text(&self, delta: &str) {
        self.bytes.fetch_add(delta.len() as u64, Ordering::Relaxed);
        self.inner.on_text(delta);
    }

    fn on_reasoning(&self, delta: &str) {
        self.reasoning_bytes
            .fetch_add(delta.len() as u64, Ordering::Relaxed);
        self.inner.on_reasoning(delta);
    }

    fn on_attempt(&self, route: &AttemptRoute<'_>) {
        self.inner.on_attempt(route);
    }

    fn is_final(&self) -> bool {
        self.inner.is_final()
    }
}

/// What is implausible about the usage a provider reported, if anything:
/// output far past the `max_tokens` the call sent (limits include thinking
/// at every provider here; twice the limit leaves room for one that does
/// not), or input far past the prompt's estimate (a tenfold miss plus
/// room for tool and template overhead). Such a call is still billed as
/// reported.
fn implausible_usage(u: &Usage, max_tokens: u32, estimated_input: u64) -> Option<String> {
    let input = u.input_tokens + u.cache_read_tokens + u.cache_write_tokens;
    let mut odd = Vec::new();
    if u.output_tokens > 2 * u64::from(max_tokens) + 64 {
        odd.push(format!(
            "{} output tokens for an answer limited to {max_tokens}",
            u.output_tokens
        ));
    }
    if input > 10 * estimated_input + 1_000 {
        odd.push(format!(
            "{input} input tokens for a prompt estimated at {estimated_input}"
        ));
    }
    (!odd.is_empty()).then(|| odd.join(" and "))
}

/// `text` ending as a sentence does (a provider's message often ends bare:
/// "HTTP 500): boom"), so what is appended after it reads as the next one.
fn sentence(text: &str) -> String {
    let t = text.trim_end();
    if t.is_empty() || t.ends_with(['.', '!', '?', ':']) {
        t.to_string()
    } else {
        format!("{t}.")
    }
}

/// Bytes of answer text per output token assumed for a cancelled attempt
/// (about 4 for English with the o200k and cl100k tokenizers; rounding up
/// charges at least one token for any text).
const BYTES_PER_OUTPUT_TOKEN: u64 = 4;

/// An answer with no text that stopped early (output limit used up, often
/// by a reasoning model's thinking; a safety stop or refusal) is billed but useless:
/// it becomes a failure after acceptance, recorded at the usage the reply
/// reported, so the next model is tried. An empty answer that ended
/// normally is returned as it is.
fn refuse_empty(
    provider: ProviderId,
    r: crate::providers::ChatResponse,
) -> Result<crate::providers::ChatResponse, crate::providers::ProviderError> {
    // DeepSeek ends an answer it could not finish ("interrupted due to
    // insufficient resource of the inference system") as if it were done:
    // a server failure after acceptance, billed at its usage and retried.
    if r.finish_reason
        .as_deref()
        .is_some_and(|f| f.eq_ignore_ascii_case("insufficient_system_resource"))
    {
        let mut e = crate::providers::ProviderError::new(
            provider,
            ErrorKind::Server,
            None,
            "the answer was cut short (finish reason insufficient_system_resource)",
        );
        e.accepted = Some(r.usage);
        e.accepted_cost_usd = r.provider_cost_usd;
        return Err(e);
    }
    let stopped_early = r.finish_reason.as_deref().is_some_and(|f| {
        let f = f.to_ascii_lowercase();
        [
            "length",
            "max",
            "safety",
            "content_filter",
            "recitation",
            "prohibited",
            "blocklist",
            // Anthropic's classifiers stopping the answer.
            "refusal",
            // Gemini: personal data, an unsupported language, anything else.
            "spii",
            "language",
            "other",
            // Anthropic: the prompt left no room in the context window.
            "context_window",
        ]
        .iter()
        .any(|k| f.contains(k))
    });
    if !r.text.trim().is_empty() || !stopped_early {
        return Ok(r);
    }
    let mut e = crate::providers::ProviderError::new(
        provider,
        ErrorKind::EmptyAnswer,
        None,
        match r.finish_reason.as_deref().unwrap_or("?") {
            // Gemini says MAX_TOKENS.
            f if f.to_ascii_lowercase().contains("context_window") => {
                format!(
                    "finish reason {f}: the prompt left no room for an answer in the model's context window"
                )
            }
            f if f.to_ascii_lowercase().contains("length")
                || f.to_ascii_lowercase().contains("max") =>
            {
                format!("finish reason {f}; raise max_tokens if the model reasons before answering")
            }
            f if ["other", "language"].contains(&f.to_ascii_lowercase().as_str()) => {
                format!("finish reason {f}: the model stopped without answering")
            }
            f => format!("finish reason {f}: the model declined or a safety filter stopped it"),
        },
    );
    e.accepted = Some(r.usage);
    e.accepted_cost_usd = r.provider_cost_usd;
    Err(e)
}

/// What a cancelled attempt is charged. The provider bills a request it
/// accepted, and the caller going away (an MCP cancel, an HTTP client
/// hanging up) does not undo that: recording such attempts at $0 would let
/// a caller spend without limit by leaving every call just before it ends.
/// No usage came back, so the charge is an estimate: the prompt as the
/// router estimated it plus the answer text and thinking streamed so far,
/// at catalog prices, recorded with `cost_source = "estimate"`.
struct CancelCharge {
    price: CancelPrice,
    input_tokens: u64,
    streamed_bytes: Arc<AtomicU64>,
    reasoning_bytes: Arc<AtomicU64>,
}

enum CancelPrice {
    /// A local model: free.
    Local,
    Catalog(Box<crate::pricing::ModelPrice>),
    /// No known price: recorded at $0 and flagged, as for a finished call.
    Unpriced,
    /// A fixed price, whatever was received (speech: Cartesia bills the
    /// transcript's characters once it accepted the request).
    Fixed(f64),
}

impl CancelCharge {
    /// The usage, cost and cost source to record.
    fn settle(&self) -> (Usage, f64, &'static str) {
        let text = self
            .streamed_bytes
            .load(Ordering::Relaxed)
            .div_ceil(BYTES_PER_OUTPUT_TOKEN);
        let reasoning = self
            .reasoning_bytes
            .load(Ordering::Relaxed)
            .div_ceil(BYTES_PER_OUTPUT_TOKEN);
        let usage = Usage {
            input_tokens: self.input_tokens,
            output_tokens: text + reasoning,
            reasoning_tokens: reasoning,
            ..Usage::default()
        };
        match &self.price {
            CancelPrice::Local => (usage, 0.0, "local"),
            CancelPrice::Catalog(p) => {
                let cost = p.cost_of(&usage);
                (usage, cost, "estimate")
            }
            CancelPrice::Unpriced => (usage, 0.0, "unpriced"),
            CancelPrice::Fixed(cost) => (
                Usage {
                    output_tokens: 0,
                    ..usage
                },
                *cost,
                "estimate",
            ),
        }
    }
}

impl ReservationGuard {
    /// The usage a cancellation would record for the pending attempt now
    /// (zero when none is pending).
    fn cancel_usage(&self) -> Usage {
        self.pending
            .as_ref()
            .map(|(_, _, charge)| charge.settle().0)
            .unwrap_or_default()
    }

    /// Remembers the attempt about to start, so a cancellation can record
    /// it, charged as `charge` says.
    fn pending(mut self, record: CallRecord, charge: CancelCharge) -> Self {
        self.pending = Some((record, Instant::now(), charge));
        self
    }

    /// Records the attempt and drops the reservation in one transaction.
    ///
    /// Group-committed on the calling task (no hand-off to the blocking
    /// pool, which cost two thread wake-ups per call); while another
    /// call's batch commits it awaits rather than blocking the worker.
    /// Cancel-safe: once this runs, the row is queued and the ledger
    /// commits it even if the future is dropped.
    async fn settle(mut self, record: CallRecord) -> Result<i64, crate::ledger::LedgerError> {
        self.pending = None;
        if let Some(l) = &self.listener {
            l.attempt_recorded(&record);
        }
        let Some(id) = self.id.take() else {
            return self.ledger.insert_call(&record);
        };
        let result = self.ledger.settle_async(id, &record).await;
        if result.is_err() {
            // Keep the money held no longer than the failed write.
            let _ = self.ledger.release(id);
        }
        result
    }
}

impl Drop for ReservationGuard {
    fn drop(&mut self) {
        let Some(id) = self.id.take() else { return };
        let result = match self.pending.take() {
            Some((mut rec, started, charge)) => {
                let (usage, cost, source) = charge.settle();
                rec.latency_ms = started.elapsed().as_millis() as u64;
                rec.ok = false;
                rec.error_kind = Some("cancelled".into());
                rec.error_message = Some(
                    "cancelled before the answer finished; charged an estimate: the prompt and the answer text received so far".into(),
                );
                rec.input_tokens = usage.input_tokens;
                rec.output_tokens = usage.output_tokens;
                rec.reasoning_tokens = usage.reasoning_tokens;
                rec.cost_usd = cost;
                rec.cost_source = source.into();
                if let Some(l) = &self.listener {
                    l.attempt_recorded(&rec);
                }
                // A settlement that failed (the ledger locked by another
                // process past its timeouts) must still free the money it
                // held, or this live process keeps it from the user until
                // the hold's TTL (an hour with the default timeout).
                self.ledger.settle(id, &rec).map(|_| ()).or_else(|e| {
                    tracing::error!(error = %e, "could not record a cancelled attempt; releasing its hold");
                    self.ledger.release(id)
                })
            }
            None => self.ledger.release(id),
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "could not release the hold of a cancelled attempt; it will expire");
        }
    }
}

/// What to record for an attempt on `model` that failed after the
/// provider accepted it, having reported `reported` so far.
///
/// What the reply did not report is filled in as for a cancelled
/// attempt (`guess`, see [`CancelCharge`]): the router's estimate of the prompt when no
/// prompt tokens came back, and the text received so far when it is
/// more than the output reported. OpenAI-style streams report usage
/// only in their last chunk, so without this a stream broken just
/// before its end was recorded at $0 — and a budget could be spent
/// past its limit by calls that all fail late.
///
/// A reply that reported nothing and delivered no text (an error event
/// before the stream started, an unreadable body) shows no sign of work
/// done: it stays at $0, flagged `unpriced` ("may have been billed"),
/// rather than charged a prompt each retry for an error the provider
/// usually does not bill.
fn partial_charge(catalog: &Catalog, model: &str, reported: Usage, guess: Usage) -> PartialCharge {
    let prompt_reported =
        reported.input_tokens + reported.cache_read_tokens + reported.cache_write_tokens > 0;
    let output_reported = reported.output_tokens >= guess.output_tokens;
    let mut usage = reported;
    if !prompt_reported {
        usage.input_tokens = guess.input_tokens;
    }
    usage.output_tokens = reported.output_tokens.max(guess.output_tokens);
    let basis = match (prompt_reported, output_reported) {
        (true, true) => PartialBasis::Reported,
        (false, _) if reported.output_tokens == 0 => PartialBasis::Estimated,
        _ => PartialBasis::Mixed,
    };
    let nothing_seen = !prompt_reported && reported.output_tokens == 0 && guess.output_tokens == 0;
    let (cost, source) = catalog.price_call(model, &usage, None);
    let (cost_usd, source, maybe_billed, basis) = match source {
        CostSource::Local => (0.0, "local", false, basis),
        CostSource::Unpriced => (0.0, "unpriced", true, PartialBasis::NoPrice),
        _ if nothing_seen => {
            usage = reported;
            (0.0, "unpriced", true, PartialBasis::NoUsage)
        }
        CostSource::Catalog | CostSource::Provider | CostSource::Estimate => {
            (cost, "estimate", true, basis)
        }
    };
    PartialCharge {
        usage,
        cost_usd,
        source,
        maybe_billed,
        basis,
    }
}

/// What an attempt cut off after the provider accepted it may have cost.
struct PartialCharge {
    /// The usage to record: what the reply reported, completed by the
    /// estimate where it reported less (see [`partial_charge`]).
    usage: Usage,
    /// The cost recorded for it.
    cost_usd: f64,
    /// `estimate` (usage × catalog price), `unpriced` (no known price:
    /// cost unknown, recorded at $0 and flagged) or `local` (a local
    /// model: free).
    source: &'static str,
    /// Whether the provider may bill it at all.
    maybe_billed: bool,
    /// Where the recorded usage came from.
    basis: PartialBasis,
}

/// Where the usage recorded for a cut-off attempt came from, so the
/// caller is told how far to trust its cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PartialBasis {
    /// The cost the provider itself reported.
    Provider,
    /// All of it from the provider's reply.
    Reported,
    /// The reply's usage, with the output raised to the text received.
    Mixed,
    /// None reported: the prompt estimate and the text received.
    Estimated,
    /// Nothing reported or received: cost unknown, recorded at $0.
    NoUsage,
    /// The model has no known price: recorded at $0.
    NoPrice,
}

/// An attempt the provider may bill although it failed.
struct CutOff {
    model: String,
    cost_usd: f64,
    /// How its cost was found (or why it is unknown).
    basis: PartialBasis,
    recorded: bool,
}

/// The sentence telling the caller about attempts that were cut off after
/// the provider accepted them, if there were any.
fn billed_note(cut_off: &[CutOff]) -> Option<String> {
    if cut_off.is_empty() {
        return None;
    }
    let parts: Vec<String> = cut_off
        .iter()
        .map(|c| {
            let what = match c.basis {
                PartialBasis::Provider => {
                    format!("{}, the cost it reported", crate::render::usd(c.cost_usd))
                }
                PartialBasis::Reported => {
                    format!(
                        "an estimated {} from the usage it reported",
                        crate::render::usd(c.cost_usd)
                    )
                }
                PartialBasis::Mixed => format!(
                    "an estimated {} from the usage it reported and the text received",
                    crate::render::usd(c.cost_usd)
                ),
                PartialBasis::Estimated => format!(
                    "an estimated {} from the prompt and the text received; it reported no usage",
                    crate::render::usd(c.cost_usd)
                ),
                PartialBasis::NoUsage => {
                    "$0 and flagged unpriced: it reported no usage, so its cost is unknown".into()
                }
                PartialBasis::NoPrice => {
                    "$0 and flagged unpriced: the model has no known price".into()
                }
            };
            if c.recorded {
                format!("{} (recorded at {what})", c.model)
            } else {
                format!(
                    "{} (NOT recorded: the ledger write failed; {what})",
                    c.model
                )
            }
        })
        .collect();
    Some(format!(
        "The provider may have billed the partial answer of {} cut off mid-response: {}.",
        if cut_off.len() == 1 {
            "an attempt"
        } else {
            "attempts"
        },
        parts.join("; ")
    ))
}

fn cost_source_name(s: CostSource) -> &'static str {
    match s {
        CostSource::Provider => "provider",
        CostSource::Catalog => "catalog",
        CostSource::Local => "local",
        CostSource::Unpriced => "unpriced",
        CostSource::Estimate => "estimate",
    }
}

fn api_model_name(id: &str) -> String {
    id.split_once('/').map(|(_, m)| m).unwrap_or(id).to_string()
}

/// What the ledger records as forced by the caller, the strongest first: a
/// model (it decides the tier), then a tier (with or without a provider: it
/// is an override of the router, which calibration learns from), then a
/// provider alone (the tier is still the score's).
fn forced_kind(model: bool, provider: bool, tier: bool) -> Option<&'static str> {
    if model {
        Some("model")
    } else if tier {
        Some("tier")
    } else if provider {
        Some("provider")
    } else {
        None
    }
}

/// The `max_tokens` sent to `model`: what was asked, capped by the model's
/// output limit and by the context the estimated prompt leaves. Anthropic
/// (and others) refuse a request whose prompt plus `max_tokens` exceeds
/// the context window rather than shortening it. No margin is kept for the
/// estimate's error: a margin would cut answers that fit (a 185k-token
/// prompt in a 200k window would get a handful of tokens); a prompt the
/// estimate undercounts fails as too long and the next model is tried, as
/// before. A prompt the router let through but that leaves no room at all
/// keeps what was asked, for the provider to judge.
fn cand_max_output(catalog: &Catalog, model: &str, asked: u32, input_tokens: u64) -> u32 {
    let Some(p) = catalog.get(model) else {
        return asked;
    };
    let cap = p.output_cap(asked);
    match p.max_input_tokens.map(|w| w.saturating_sub(input_tokens)) {
        Some(room) if room > 0 => cap.min(u32::try_from(room).unwrap_or(u32::MAX)),
        _ => cap,
    }
}

fn prompt_hash(system: Option<&str>, prompt: &str) -> String {
    let mut h = Sha256::new();
    if let Some(s) = system {
        h.update(s.as_bytes());
        h.update(b"\n\n");
    }
    h.update(prompt.as_bytes());
    hex::encode(h.finalize())
}

/// A prompt must have visible text and fit the size limit.
pub fn validate_prompt<'a>(field: &str, p: &'a str) -> Result<&'a str, ToolError> {
    if p.len() > MAX_PROMPT_BYTES {
        return Err(invalid(format!(
            "{field} is {} bytes; the limit is {MAX_PROMPT_BYTES} bytes (4 MiB)",
            p.len()
        )));
    }
    // Blank also when only zero-width or other invisible characters are
    // left: a paid model was called to answer nothing.
    if p.chars()
        .all(|c| c.is_whitespace() || is_invisible_format(c) || c.is_control())
    {
        return Err(invalid(format!("{field} is empty; give the text to send")));
    }
    if p.contains('\0') {
        return Err(invalid(format!("{field} contains a NUL character")));
    }
    Ok(p)
}

fn validate_max_tokens(v: Option<i64>, default: u32) -> Result<u32, ToolError> {
    match v {
        None => Ok(default),
        Some(n) if n >= 1 && n <= MAX_OUTPUT_TOKENS as i64 => Ok(n as u32),
        Some(n) => Err(invalid(format!(
            "max_tokens must be between 1 and {MAX_OUTPUT_TOKENS}, got {n}"
        ))),
    }
}

fn validate_budget_limit(v: Option<f64>) -> Result<Option<f64>, ToolError> {
    match v {
        None => Ok(None),
        Some(x) => {
            budget::validate_limit("budget_limit", x).map_err(invalid)?;
            Ok(Some(x))
        }
    }
}

/// A user id: 1–128 printable characters.
pub fn validate_user(u: Option<&str>) -> Result<String, ToolError> {
    let Some(u) = u.map(str::trim).filter(|s| !s.is_empty()) else {
        return Ok(DEFAULT_USER.to_string());
    };
    // Invisible format characters too: a right-to-left override turned a
    // report's row around, and "bob\u{200b}" looked like bob with a budget
    // of its own.
    // Zero-width (non-)joiners are letters' business in Persian and Indic
    // names and emoji: allowed inside an id, not as all of it.
    let hidden = |c: char| is_invisible_format(c) && !matches!(c, '\u{200C}' | '\u{200D}');
    if u.chars().count() > 128
        || u.chars().any(|c| c.is_control() || hidden(c))
        || u.chars().all(is_invisible_format)
    {
        return Err(invalid(
            "user_id must be 1 to 128 printable characters (no control or invisible formatting characters)",
        ));
    }
    // `*` names the global budget's scope in the ledger; a user by that
    // name would mix their calls and alerts with the global ones.
    if u == GLOBAL_SCOPE {
        return Err(invalid(
            "user_id \"*\" is reserved for the global budget; use set_budget with global: true",
        ));
    }
    Ok(u.to_string())
}

fn parse_provider(field: &str, p: &str) -> Result<ProviderId, ToolError> {
    ProviderId::parse(p).ok_or_else(|| {
        invalid(format!(
            "{field}: unknown provider {p:?}; use one of {}",
            ProviderId::ALL
                .iter()
                .map(|p| p.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })
}

/// An integer argument, also when a client sends it as a whole-valued
/// float (`5.0`: an integer to JSON Schema, and what some JSON encoders
/// write) or as text (`?days=7` in a URL query, where every value is
/// text); `5.5` and out-of-range values are refused by name.
fn whole_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum NumberOrText {
        Number(serde_json::Number),
        Text(String),
    }
    let n = match Option::<NumberOrText>::deserialize(d)? {
        None => return Ok(None),
        Some(NumberOrText::Number(n)) => n,
        Some(NumberOrText::Text(t)) => t
            .trim()
            .parse::<serde_json::Number>()
            .map_err(|_| serde::de::Error::custom(format!("expected a whole number, got {t:?}")))?,
    };
    match (n.as_i64(), n.as_f64()) {
        (Some(i), _) => Ok(Some(i)),
        (None, Some(f)) if f.fract() == 0.0 && f.abs() < 9.2e18 => Ok(Some(f as i64)),
        _ => Err(serde::de::Error::custom(format!(
            "expected a whole number, got {n}"
        ))),
    }
}

/// Unicode format characters that show as nothing (zero-width spaces and
/// joiners, direction marks and overrides, the word joiner family, BOM).
fn is_invisible_format(c: char) -> bool {
    matches!(c, '\u{00AD}' | '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}'
        | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{206F}' | '\u{FEFF}')
}

/// The UTC date of a time in ms since the epoch, as `YYYY-MM-DD`.
fn utc_date(ms: i64) -> String {
    let d = time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
        .date();
    format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}

fn parse_since(s: &str) -> Result<i64, ToolError> {
    use time::format_description::well_known::Rfc3339;
    let ms = if let Ok(t) = time::OffsetDateTime::parse(s, &Rfc3339) {
        (t.unix_timestamp_nanos() / 1_000_000) as i64
    } else {
        let fmt = time::macros::format_description!("[year]-[month]-[day]");
        time::Date::parse(s, &fmt)
            .map(|d| (d.midnight().assume_utc().unix_timestamp_nanos() / 1_000_000) as i64)
            .map_err(|_| {
                invalid(format!(
                    "since: {s:?} is not a date; use YYYY-MM-DD or RFC 3339"
                ))
            })?
    };
    // Years before 1970 hold no calls, and years below 1 cannot even be
    // written back as RFC 3339 (the report's `since` came out empty).
    Ok(ms.max(0))
}

#[cfg(test)]
mod tests {
    /// Invisible characters make no user id and no prompt; a date before
    /// 1970 (even a negative year) reports from the first call.
    #[test]
    fn invisible_input_is_refused_and_old_dates_clamped() {
        assert!(validate_user(Some("\u{202e}evil")).is_err());
        assert!(validate_user(Some("bob\u{200b}")).is_err());
        assert_eq!(validate_user(Some("Zoë Ng")).unwrap(), "Zoë Ng");
        // A zero-width non-joiner inside a Persian name is part of it.
        assert!(validate_user(Some("\u{645}\u{6cc}\u{200c}\u{62e}\u{648}\u{627}\u{645}")).is_ok());
        assert!(validate_user(Some("\u{200d}\u{200d}")).is_err());
        assert!(validate_prompt("prompt", "\u{200b}\u{200b} \u{feff}").is_err());
        assert!(validate_prompt("prompt", "hi\u{200b}").is_ok());
        assert_eq!(parse_since("-9999-01-01").unwrap(), 0);
        assert_eq!(parse_since("1969-12-31").unwrap(), 0);
        // 5.0 is a whole number, as JSON Schema says; 5.5 is not.
        let a: RecommendArgs =
            serde_json::from_value(serde_json::json!({"prompt": "x", "max_tokens": 5.0})).unwrap();
        assert_eq!(a.max_tokens, Some(5));
        let e = serde_json::from_value::<RecommendArgs>(
            serde_json::json!({"prompt": "x", "max_tokens": 5.5}),
        )
        .unwrap_err();
        assert!(e.to_string().contains("whole number"), "{e}");
    }

    /// A cancelled attempt whose record cannot be written still frees the
    /// money it held: the process is alive, so nothing else would release
    /// the hold before its TTL (an hour by default).
    #[test]
    fn a_cancelled_attempt_that_cannot_be_recorded_releases_its_hold() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(&dir.path().join("l.sqlite3")).unwrap();
        let id = ledger
            .reserve("u", &[], 5_000, 1000, std::time::Duration::from_secs(3600))
            .unwrap()
            .unwrap();
        assert_eq!(ledger.reserved_now("u", 2000).unwrap(), 5_000);
        let record = crate::ledger::tests::rec("u", 1500, 0.001, false);
        let guard = ReservationGuard {
            ledger: ledger.clone(),
            id: Some(id),
            pending: None,
            listener: None,
        }
        .pending(
            record,
            CancelCharge {
                price: CancelPrice::Local,
                input_tokens: 10,
                streamed_bytes: Arc::default(),
                reasoning_bytes: Arc::default(),
            },
        );
        ledger.fail_call_writes();
        drop(guard);
        assert_eq!(ledger.count_calls().unwrap(), 0, "the write did fail");
        assert_eq!(
            ledger.reserved_now("u", 2000).unwrap(),
            0,
            "the hold stayed"
        );
    }

    #[test]
    fn a_tier_forced_with_a_provider_is_recorded_as_a_tier_override() {
        assert_eq!(forced_kind(false, true, true), Some("tier"));
        assert_eq!(forced_kind(false, true, false), Some("provider"));
        assert_eq!(forced_kind(true, true, true), Some("model"));
        assert_eq!(forced_kind(false, false, false), None);
    }

    /// An empty answer cut at the output limit says to raise max_tokens,
    /// whatever case the provider spells it in (Gemini: MAX_TOKENS); a
    /// refusal says the model declined.
    #[test]
    fn empty_answers_say_why() {
        let empty = |finish: &str| crate::providers::ChatResponse {
            text: String::new(),
            model: "m".into(),
            usage: Usage::default(),
            provider_cost_usd: None,
            finish_reason: Some(finish.into()),
        };
        for f in ["MAX_TOKENS", "length"] {
            let e = refuse_empty(ProviderId::Gemini, empty(f)).unwrap_err();
            assert!(e.detail.contains("raise max_tokens"), "{f}: {}", e.detail);
        }
        let e = refuse_empty(ProviderId::Anthropic, empty("refusal")).unwrap_err();
        assert!(e.detail.contains("declined"), "{}", e.detail);
        assert!(refuse_empty(ProviderId::Anthropic, empty("end_turn")).is_ok());
        // Reasons that leave an empty answer without being a limit or a
        // filter the list above knew: still no answer, so the next model.
        for f in ["SPII", "OTHER", "LANGUAGE", "model_context_window_exceeded"] {
            let e = refuse_empty(ProviderId::Gemini, empty(f)).unwrap_err();
            assert_eq!(e.kind, ErrorKind::EmptyAnswer, "{f}");
        }
        let e = refuse_empty(
            ProviderId::Anthropic,
            empty("model_context_window_exceeded"),
        )
        .unwrap_err();
        assert!(e.detail.contains("context window"), "{}", e.detail);
        assert!(refuse_empty(ProviderId::Gemini, empty("STOP")).is_ok());
    }
    use super::*;

    #[test]
    fn usage_far_past_what_the_call_allowed_is_called_out() {
        let u = |input: u64, output: u64| Usage {
            input_tokens: input,
            output_tokens: output,
            ..Usage::default()
        };
        assert_eq!(implausible_usage(&u(40, 1024), 1024, 35), None);
        // Thinking past the limit at a provider that counts it apart.
        assert_eq!(implausible_usage(&u(40, 2000), 1024, 35), None);
        // A tokenizer far denser than the estimate's, plus a template.
        assert_eq!(implausible_usage(&u(1_300, 10), 1024, 35), None);
        let odd =
            implausible_usage(&u(1_000_000_000_000_000, 1_000_000_000_000_000), 1024, 8).unwrap();
        assert!(
            odd.contains("output tokens for an answer limited to 1024"),
            "{odd}"
        );
        assert!(
            odd.contains("input tokens for a prompt estimated at 8"),
            "{odd}"
        );
        assert!(
            implausible_usage(&u(8, 5000), 1024, 8)
                .unwrap()
                .contains("5000 output")
        );
    }

    #[test]
    fn messages_end_as_sentences_before_more_is_appended() {
        assert_eq!(
            sentence("DeepSeek had a server error (HTTP 500): boom"),
            "DeepSeek had a server error (HTTP 500): boom."
        );
        assert_eq!(sentence("the key was rejected. "), "the key was rejected.");
        assert_eq!(sentence("Why?"), "Why?");
        assert_eq!(sentence("Tried:"), "Tried:");
        assert_eq!(sentence(""), "");
    }

    /// The `language` enum the tool schema offers is exactly what the
    /// speech client validates against (plus null).
    #[test]
    fn the_language_schema_lists_the_spoken_languages() {
        let schema = serde_json::to_value(schemars::schema_for!(CompleteArgs)).unwrap();
        let offered = &schema["properties"]["language"]["enum"];
        let mut want: Vec<serde_json::Value> = crate::providers::cartesia::LANGUAGES
            .iter()
            .map(|l| serde_json::json!(l))
            .collect();
        want.push(serde_json::Value::Null);
        assert_eq!(offered, &serde_json::Value::Array(want), "{schema}");
    }

    /// max_tokens is capped by the model's output limit and by the
    /// context window the prompt leaves; a prompt near the window keeps
    /// every token of room it has.
    #[test]
    fn max_tokens_fits_the_output_limit_and_the_context_left() {
        let catalog = Catalog::bundled();
        let model = "anthropic/claude-haiku-4-5";
        let p = catalog.get(model).unwrap();
        let (window, out) = (p.max_input_tokens.unwrap(), p.max_output_tokens.unwrap());
        assert_eq!(cand_max_output(&catalog, model, 1024, 100), 1024);
        assert_eq!(cand_max_output(&catalog, model, u32::MAX, 100), out as u32);
        // A prompt of 90% of the window leaves the other 10%.
        let input = window * 9 / 10;
        let left = window - input;
        assert!(left < out, "{left} {out}");
        assert_eq!(
            cand_max_output(&catalog, model, out as u32, input),
            left as u32
        );
        assert_eq!(cand_max_output(&catalog, model, 1024, input), 1024);
        // 185k of 200k: the 1,024 asked fit and are sent whole.
        assert_eq!(
            cand_max_output(&catalog, model, 1024, window - 15_000),
            1024
        );
        assert_eq!(cand_max_output(&catalog, model, 4096, window - 100), 100);
        assert_eq!(cand_max_output(&catalog, model, 4096, window), 4096);
        assert_eq!(
            cand_max_output(&catalog, "acme/unknown", 77, 10_000_000),
            77
        );
    }

    /// A cut-off attempt is recorded at the usage its reply reported,
    /// completed by the estimate (prompt, text received) where the reply
    /// reported less: an OpenAI-style stream broken before its last chunk
    /// reported nothing and must not be recorded at $0.
    #[test]
    fn partial_charge_completes_the_reported_usage_with_the_estimate() {
        let catalog = Catalog::bundled();
        let model = "deepseek/deepseek-v3.2";
        let price = catalog.get(model).unwrap();
        let usage = |input_tokens, output_tokens| Usage {
            input_tokens,
            output_tokens,
            ..Usage::default()
        };
        let cost =
            |u: Usage| u.input_tokens as f64 * price.input + u.output_tokens as f64 * price.output;
        for (reported, guess, recorded, basis) in [
            // Anthropic's message_start: prompt and first token reported.
            (
                usage(10, 1),
                usage(50, 1),
                usage(10, 1),
                PartialBasis::Reported,
            ),
            // More text arrived than the last usage event counted.
            (
                usage(10, 1),
                usage(50, 5),
                usage(10, 5),
                PartialBasis::Mixed,
            ),
            // An OpenAI-style stream cut before its usage chunk.
            (
                usage(0, 0),
                usage(50, 3),
                usage(50, 3),
                PartialBasis::Estimated,
            ),
        ] {
            let p = partial_charge(&catalog, model, reported, guess);
            assert_eq!(p.usage, recorded, "{reported:?} + {guess:?}");
            assert_eq!(p.basis, basis, "{reported:?} + {guess:?}");
            assert_eq!(p.source, "estimate");
            assert!(p.maybe_billed);
            assert!(p.cost_usd > 0.0 && (p.cost_usd - cost(recorded)).abs() < 1e-15);
        }
        // A 200 whose body could not be read, or an error event before
        // any text: no sign of work, so $0 flagged unpriced, not a prompt.
        let nothing = partial_charge(&catalog, model, usage(0, 0), usage(50, 0));
        assert_eq!(
            (
                nothing.cost_usd,
                nothing.source,
                nothing.basis,
                nothing.usage
            ),
            (0.0, "unpriced", PartialBasis::NoUsage, usage(0, 0))
        );
        assert!(nothing.maybe_billed);
        let local = partial_charge(&catalog, "ollama/llama3.1", usage(0, 0), usage(50, 3));
        assert_eq!(
            (local.cost_usd, local.source, local.maybe_billed),
            (0.0, "local", false)
        );
        let unknown = partial_charge(
            &catalog,
            "huggingface/acme/unknown-7b",
            usage(0, 0),
            usage(50, 3),
        );
        assert_eq!(
            (unknown.cost_usd, unknown.source, unknown.maybe_billed),
            (0.0, "unpriced", true)
        );
    }

    /// A cancelled attempt is charged the estimated prompt plus the text
    /// streamed so far (rounded up to whole tokens) at catalog prices; a
    /// local model is free and a model without a price stays flagged.
    #[test]
    fn cancel_charge_counts_prompt_and_streamed_text() {
        let catalog = Catalog::bundled();
        let price = catalog.get("deepseek/deepseek-v3.2").unwrap();
        let streamed = Arc::new(AtomicU64::new(9)); // 9 bytes → 3 tokens
        let thought = Arc::new(AtomicU64::new(0));
        let charge = |price| CancelCharge {
            price,
            input_tokens: 100,
            streamed_bytes: streamed.clone(),
            reasoning_bytes: thought.clone(),
        };
        let (usage, cost, source) = charge(CancelPrice::Catalog(Box::new(price.clone()))).settle();
        assert_eq!((usage.input_tokens, usage.output_tokens), (100, 3));
        assert_eq!(source, "estimate");
        let expected = 100.0 * price.input + 3.0 * price.output;
        assert!(
            cost > 0.0 && (cost - expected).abs() < 1e-15,
            "{cost} vs {expected}"
        );
        assert_eq!(charge(CancelPrice::Local).settle().1, 0.0);
        assert_eq!(charge(CancelPrice::Local).settle().2, "local");
        assert_eq!(charge(CancelPrice::Unpriced).settle().2, "unpriced");
        // Thinking streamed before a cancel is charged as output too.
        thought.store(4000, Ordering::Relaxed);
        let (usage, cost, _) = charge(CancelPrice::Catalog(Box::new(price.clone()))).settle();
        assert_eq!((usage.output_tokens, usage.reasoning_tokens), (1003, 1000));
        assert!(cost > 1000.0 * price.output, "{cost}");
        thought.store(0, Ordering::Relaxed);
        streamed.store(0, Ordering::Relaxed);
        let (usage, _, _) = charge(CancelPrice::Unpriced).settle();
        assert_eq!(usage.output_tokens, 0);
    }

    #[test]
    fn prompt_validation() {
        assert!(validate_prompt("prompt", "  \n\t ").is_err());
        assert!(validate_prompt("prompt", "a\0b").is_err());
        let big = "x".repeat(MAX_PROMPT_BYTES + 1);
        let e = validate_prompt("prompt", &big).unwrap_err().to_string();
        assert!(e.contains("prompt is"), "{e}");
        assert!(validate_prompt("prompt", "hi").is_ok());
    }

    #[test]
    fn since_parsing() {
        assert_eq!(parse_since("1970-01-02").unwrap(), 86_400_000);
        assert_eq!(parse_since("1970-01-01T00:00:01Z").unwrap(), 1000);
        assert!(parse_since("yesterday").is_err());
    }

    #[test]
    fn user_validation() {
        assert_eq!(validate_user(None).unwrap(), "default");
        assert_eq!(validate_user(Some("  ")).unwrap(), "default");
        assert!(validate_user(Some("a\u{7}b")).is_err());
        assert!(validate_user(Some(&"x".repeat(129))).is_err());
        let e = validate_user(Some(" * ")).unwrap_err().to_string();
        assert!(e.contains("reserved for the global budget"), "{e}");
    }

    #[test]
    fn max_tokens_validation() {
        assert_eq!(validate_max_tokens(None, 1024).unwrap(), 1024);
        assert!(validate_max_tokens(Some(0), 1024).is_err());
        assert!(validate_max_tokens(Some(-5), 1024).is_err());
        assert!(validate_max_tokens(Some(10_000_000), 1024).is_err());
    }
}
