//! Every setting in one place: defaults, the optional TOML file, and the
//! environment variables that override both.
//!
//! Precedence, lowest first: built-in defaults → config file
//! (`COST_OPTIMIZER_CONFIG`, else `config.toml` in the platform config dir) →
//! environment variables. Provider keys and base URLs are read by
//! [`crate::providers`], which owns the list of providers.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use crate::budget::alerts::{EmailConfig, Webhook, WebhookFormat};
use crate::budget::{BudgetMode, Period};
use crate::router::Tier;

/// Env var naming the data directory (ledger, logs, refreshed pricing).
pub const DATA_DIR_ENV: &str = "COST_OPTIMIZER_DATA_DIR";
/// Env var naming the TOML config file.
pub const CONFIG_ENV: &str = "COST_OPTIMIZER_CONFIG";
/// Env var overriding the default monthly budget in USD.
pub const MONTHLY_BUDGET_ENV: &str = "COST_OPTIMIZER_MONTHLY_BUDGET";
/// Env var: `1`/`true` stores prompt texts in the ledger (default: only a hash).
pub const STORE_PROMPTS_ENV: &str = "COST_OPTIMIZER_STORE_PROMPTS";
/// `full` or `batched`: when a ledger commit is fsynced (see
/// [`crate::ledger::Durability`]).
pub const LEDGER_SYNC_ENV: &str = "COST_OPTIMIZER_LEDGER_SYNC";
/// Env var: total per-request timeout towards a provider, in seconds.
pub const REQUEST_TIMEOUT_ENV: &str = "COST_OPTIMIZER_REQUEST_TIMEOUT_SECS";
/// Env var for [`Settings::alert_retry`].
pub const ALERT_RETRY_ENV: &str = "COST_OPTIMIZER_ALERT_RETRY_SECS";
/// Env var: longest wait for the next bytes of a provider's reply, in
/// seconds (the first byte included).
pub const IDLE_TIMEOUT_ENV: &str = "COST_OPTIMIZER_IDLE_TIMEOUT_SECS";
/// Env var: connect timeout towards a provider, in seconds.
pub const CONNECT_TIMEOUT_ENV: &str = "COST_OPTIMIZER_CONNECT_TIMEOUT_SECS";
/// Env var: retries of one provider on a transient failure (default 2).
pub const MAX_RETRIES_ENV: &str = "COST_OPTIMIZER_MAX_RETRIES";
/// Env var: first backoff delay in milliseconds (default 500; doubles each retry).
pub const RETRY_BASE_MS_ENV: &str = "COST_OPTIMIZER_RETRY_BASE_MS";
/// Env var: seconds a failing provider is skipped once its breaker opens (default 30).
pub const BREAKER_COOLDOWN_ENV: &str = "COST_OPTIMIZER_BREAKER_COOLDOWN_SECS";
/// Env var: IANA time zone whose calendar defines budget periods (default UTC).
pub const TIMEZONE_ENV: &str = "COST_OPTIMIZER_TIMEZONE";
/// Env var: default webhook URL for budget alerts.
pub const ALERT_WEBHOOK_ENV: &str = "COST_OPTIMIZER_ALERT_WEBHOOK_URL";
/// Env var: payload format of that webhook: json, slack or discord.
pub const ALERT_WEBHOOK_FORMAT_ENV: &str = "COST_OPTIMIZER_ALERT_WEBHOOK_FORMAT";
/// Env var: SMTP server for e-mailed budget alerts, as a URL
/// (`smtps://user:pass@smtp.example.com:465`, `smtp://…:587?tls=required`).
pub const SMTP_URL_ENV: &str = "COST_OPTIMIZER_SMTP_URL";
/// Env var: sender of alert e-mails.
pub const ALERT_EMAIL_FROM_ENV: &str = "COST_OPTIMIZER_ALERT_EMAIL_FROM";
/// Env var: recipients of alert e-mails, comma-separated.
pub const ALERT_EMAIL_TO_ENV: &str = "COST_OPTIMIZER_ALERT_EMAIL_TO";
/// Env var: `cost` or `quality`, which tier an unsure complexity score
/// takes when the call says nothing ([`Settings::prefer`]).
pub const PREFER_ENV: &str = "COST_OPTIMIZER_PREFER";
/// Env var: address `serve --http` binds when none is given (default 127.0.0.1:8080).
pub const HTTP_ADDR_ENV: &str = "COST_OPTIMIZER_HTTP_ADDR";
/// Env var: `true` requires a client API key even on a loopback address.
pub const HTTP_REQUIRE_AUTH_ENV: &str = "COST_OPTIMIZER_HTTP_REQUIRE_AUTH";
/// Env var: browser origins allowed by CORS, comma-separated (default none: CORS off).
pub const HTTP_CORS_ORIGINS_ENV: &str = "COST_OPTIMIZER_HTTP_CORS_ORIGINS";
/// Env var: `Host` header values accepted, comma-separated (DNS-rebinding guard).
pub const HTTP_ALLOWED_HOSTS_ENV: &str = "COST_OPTIMIZER_HTTP_ALLOWED_HOSTS";
/// Env var: largest request body the HTTP server reads, in bytes.
pub const HTTP_MAX_BODY_ENV: &str = "COST_OPTIMIZER_HTTP_MAX_BODY_BYTES";
/// Env var overriding `http.shutdown_grace_secs`: a container host's own
/// stop timeout decides it (Docker's is 10 s).
pub const HTTP_SHUTDOWN_GRACE_ENV: &str = "COST_OPTIMIZER_HTTP_SHUTDOWN_GRACE_SECS";
/// Env var: tracing filter for the logs (e.g. `debug`, `ai_cost_optimizer=trace`).
pub const LOG_ENV: &str = "COST_OPTIMIZER_LOG";

/// Largest prompt (system + user text) accepted, in bytes. Larger inputs are
/// refused before any tokenizing so a pasted file cannot stall the server.
pub const MAX_PROMPT_BYTES: usize = 4 * 1024 * 1024;

/// The largest `http.max_body_bytes` allowed: 16 times the longest prompt
/// (a JSON body escapes it, and a conversation adds its turns).
pub const MAX_BODY_BYTES: usize = MAX_PROMPT_BYTES * 16;
/// Largest `max_tokens` a caller may ask for.
pub const MAX_OUTPUT_TOKENS: u32 = 200_000;
/// Largest budget a user can set, in USD; anything above is a typo.
pub const MAX_BUDGET_USD: f64 = 1_000_000.0;

/// A setting the user must fix (a bad price override, a provider base
/// URL): the CLI exits 2 and, with `--json`, reports kind
/// `invalid_config`, as for a config file that does not parse.
#[derive(Debug)]
pub struct InvalidConfig(pub String);

impl std::fmt::Display for InvalidConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InvalidConfig {}

/// The resolved settings the rest of the program reads.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where the ledger, logs and refreshed pricing live.
    pub data_dir: PathBuf,
    /// Problems that do not stop the program, found while loading: logged
    /// by the caller once logging is set up (which needs these settings),
    /// so they are not lost before it.
    pub warnings: Vec<String>,
    /// The config file that was read, if any.
    pub config_file: Option<PathBuf>,
    /// Budget applied to a user who never called `set_budget`.
    pub default_monthly_budget_usd: f64,
    /// Alert thresholds as fractions of the limit, ascending, each in (0, 1].
    pub default_alert_thresholds: Vec<f64>,
    /// What happens at the hard limit when the user did not say.
    pub default_budget_mode: BudgetMode,
    /// Period of budgets that do not say.
    pub default_period: Period,
    /// Time zone of budgets that do not say.
    pub default_timezone: String,
    /// Webhook for alerts of budgets that have none of their own.
    pub alert_webhook: Option<Webhook>,
    /// SMTP delivery of alerts, when configured.
    pub alert_email: Option<EmailConfig>,
    /// `max_tokens` used when a call does not give one.
    pub default_max_tokens: u32,
    /// Store prompt texts in the ledger (opt-in; otherwise only a SHA-256).
    pub store_prompts: bool,
    /// Model whose price defines the "always premium" baseline for savings.
    pub baseline_model: String,
    /// Connect timeout towards providers.
    pub connect_timeout: Duration,
    /// Total timeout of one provider request, streamed answer included
    /// (default 15 minutes: long answers from slow local models or
    /// reasoning models must not be cut off while they are still coming).
    pub request_timeout: Duration,
    /// How often a running server sends budget alerts whose webhook or
    /// e-mail delivery failed again (default 5 minutes), and how long a
    /// delivery may go without a recorded attempt before another process
    /// may take it over. Failed alerts are tried for a day.
    pub alert_retry: Duration,
    /// Longest silence within one provider request: no first byte, or no
    /// further bytes of a streamed answer, for this long ends it (default
    /// 120 s). This, not the total, is what catches a stalled provider.
    pub idle_timeout: Duration,
    /// Retries of one provider on a transient failure (rate limit,
    /// overload, 5xx, timeout, connection) before falling back.
    pub max_retries: u32,
    /// First backoff delay; doubles per retry, with jitter.
    pub retry_base: Duration,
    /// Longest a provider's `retry-after` may ask us to wait; longer asks
    /// fall back to another provider at once instead.
    pub max_retry_wait: Duration,
    /// Consecutive failures that open a provider's circuit breaker.
    pub breaker_threshold: u32,
    /// How long an open breaker skips its provider.
    pub breaker_cooldown: Duration,
    /// Score boundaries between free|cheap, cheap|medium, medium|premium.
    pub tier_thresholds: [f64; 3],
    /// Which tier a score near a boundary takes when a call does not say:
    /// the cheaper (default) or the stronger.
    pub prefer: crate::router::Preference,
    /// Ordered model ids per tier, replacing the defaults for that tier.
    pub tier_models: BTreeMap<Tier, Vec<String>>,
    /// Per-model price overrides (USD per million tokens).
    pub price_overrides: BTreeMap<String, PriceOverride>,
    /// Days of ledger history kept by `retention`, if set in the file.
    pub retention_days: Option<u32>,
    /// When ledger commits reach the disk platter, not just the OS.
    pub ledger_sync: crate::ledger::Durability,
    /// The HTTP server (`serve --http`).
    pub http: HttpSettings,
}

/// Settings of `serve --http`: the `[http]` table of the config file and the
/// `COST_OPTIMIZER_HTTP_*` variables.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// Address bound when `--http` is given without one.
    pub addr: String,
    /// Require a client key on a loopback address too. A non-loopback
    /// address always requires one: anyone who can reach it could spend.
    pub require_auth: bool,
    /// Browser origins allowed by CORS. Empty (the default) sends no CORS
    /// headers, so browsers cannot call the API from other sites.
    pub cors_origins: Vec<String>,
    /// `Host` values accepted (with or without port). Empty means the
    /// loopback names on a loopback address (a DNS-rebinding guard), and any
    /// host on other addresses, where a key is required anyway.
    pub allowed_hosts: Vec<String>,
    /// Largest request body read, in bytes: the prompt limit plus room for
    /// JSON, so a client cannot make the server buffer arbitrary input.
    pub max_body_bytes: usize,
    /// How long shutdown waits for calls in flight before giving up.
    pub shutdown_grace: Duration,
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            addr: "127.0.0.1:8080".into(),
            require_auth: false,
            cors_origins: Vec::new(),
            allowed_hosts: Vec::new(),
            max_body_bytes: MAX_PROMPT_BYTES * 2,
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpFile {
    addr: Option<String>,
    require_auth: Option<bool>,
    cors_origins: Option<Vec<String>>,
    allowed_hosts: Option<Vec<String>>,
    max_body_bytes: Option<usize>,
    shutdown_grace_secs: Option<f64>,
}

/// A user's price for one model, in USD per million tokens.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PriceOverride {
    /// Price of an uncached input token.
    pub input_per_mtok: f64,
    /// Price of an output token (reasoning included).
    pub output_per_mtok: f64,
    /// Price of a cache-read input token; defaults to the catalog's, scaled
    /// by this input price's ratio to the catalog's (the input price for a
    /// model the catalog does not list). Long-context (>200k) and
    /// reasoning prices are kept scaled the same way.
    pub cache_read_per_mtok: Option<f64>,
    /// Price of a cache-write input token; defaults as `cache_read_per_mtok`.
    pub cache_write_per_mtok: Option<f64>,
    /// Context window, if known.
    pub max_input_tokens: Option<u64>,
}

/// The config file as written by a user. Every field is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    monthly_budget_usd: Option<f64>,
    alert_thresholds: Option<Vec<f64>>,
    budget_mode: Option<BudgetMode>,
    budget_period: Option<Period>,
    timezone: Option<String>,
    alert_webhook_url: Option<String>,
    alert_webhook_format: Option<WebhookFormat>,
    smtp_url: Option<String>,
    alert_email_from: Option<String>,
    alert_email_to: Option<Vec<String>>,
    default_max_tokens: Option<u32>,
    store_prompts: Option<bool>,
    baseline_model: Option<String>,
    connect_timeout_secs: Option<f64>,
    request_timeout_secs: Option<f64>,
    alert_retry_secs: Option<f64>,
    idle_timeout_secs: Option<f64>,
    retention_days: Option<u32>,
    ledger_sync: Option<crate::ledger::Durability>,
    max_retries: Option<u32>,
    retry_base_ms: Option<u64>,
    max_retry_wait_secs: Option<f64>,
    breaker_threshold: Option<u32>,
    breaker_cooldown_secs: Option<f64>,
    #[serde(default)]
    routing: RoutingFile,
    #[serde(default)]
    pricing: PricingFile,
    #[serde(default)]
    http: HttpFile,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RoutingFile {
    thresholds: Option<[f64; 3]>,
    prefer: Option<String>,
    #[serde(default)]
    tiers: BTreeMap<Tier, Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PricingFile {
    #[serde(default)]
    overrides: BTreeMap<String, PriceOverride>,
}

/// Default alert thresholds: 50 %, 80 % and 100 % of the limit.
pub const DEFAULT_THRESHOLDS: [f64; 3] = [0.5, 0.8, 1.0];

/// A variable of the process environment, as every setting and provider
/// reads it. A value that is a host's template left unfilled — Claude
/// Desktop passes `${user_config.anthropic_api_key}` through as it is when
/// the user left an optional extension field blank — counts as unset: it
/// would otherwise enable a provider with a bogus key.
pub fn env_var(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|v| !is_unfilled_template(v))
}

/// `${user_config.…}` (or any `${…}`) with nothing substituted.
pub fn is_unfilled_template(v: &str) -> bool {
    let v = v.trim();
    v.starts_with("${") && v.ends_with('}') && !v[2..].contains("${")
}

impl Settings {
    /// Reads the settings from the process environment and the config file.
    pub fn load() -> Result<Settings> {
        Self::load_with(&|k| env_var(k))
    }

    /// Reads the settings through `env`, so tests can supply variables
    /// without touching the process environment.
    pub fn load_with(env: &dyn Fn(&str) -> Option<String>) -> Result<Settings> {
        let dirs = directories::ProjectDirs::from("dev", "ai-cost-optimizer", "ai-cost-optimizer");
        let data_dir = match non_empty(env(DATA_DIR_ENV)) {
            Some(d) => {
                let dir = expand_home(d.trim());
                // Claude Desktop starts servers in `/` (or anywhere): a
                // relative directory would be a different ledger from each
                // place, or an unwritable one.
                if !dir.is_absolute() {
                    bail!(
                        "{DATA_DIR_ENV} must be an absolute path (\"~/\" is expanded), got {:?}",
                        d.trim()
                    );
                }
                dir
            }
            None => dirs
                .as_ref()
                .map(|d| d.data_dir().to_path_buf())
                .context("no home directory found; set COST_OPTIMIZER_DATA_DIR")?,
        };
        let config_file = match non_empty(env(CONFIG_ENV)) {
            Some(p) => Some(expand_home(p.trim())),
            None => dirs
                .as_ref()
                .map(|d| d.config_dir().join("config.toml"))
                .filter(|p| p.exists()),
        };
        let file = match &config_file {
            Some(path) => read_file_config(path)?,
            None => FileConfig::default(),
        };
        let file_webhook_format = file.alert_webhook_format;
        // The SMTP URL (a password) in the environment, the addresses in
        // the file is the natural split, as for the webhook.
        let file_email = (file.alert_email_from.clone(), file.alert_email_to.clone());

        let mut settings = Settings {
            warnings: Vec::new(),
            data_dir,
            config_file,
            default_monthly_budget_usd: file.monthly_budget_usd.unwrap_or(100.0),
            default_alert_thresholds: file
                .alert_thresholds
                .unwrap_or_else(|| DEFAULT_THRESHOLDS.to_vec()),
            default_budget_mode: file.budget_mode.unwrap_or(BudgetMode::Block),
            default_period: file.budget_period.unwrap_or(Period::Monthly),
            default_timezone: file.timezone.unwrap_or_else(|| "UTC".into()),
            alert_webhook: file.alert_webhook_url.map(|url| Webhook {
                url,
                format: file.alert_webhook_format.unwrap_or(WebhookFormat::Json),
            }),
            alert_email: file.smtp_url.map(|url| EmailConfig {
                url,
                from: file.alert_email_from.unwrap_or_default(),
                to: file.alert_email_to.unwrap_or_default(),
            }),
            default_max_tokens: file.default_max_tokens.unwrap_or(1024),
            store_prompts: file.store_prompts.unwrap_or(false),
            baseline_model: file
                .baseline_model
                .unwrap_or_else(|| crate::router::DEFAULT_BASELINE_MODEL.to_string()),
            connect_timeout: secs(
                "connect_timeout_secs",
                file.connect_timeout_secs.unwrap_or(10.0),
            )?,
            request_timeout: secs(
                "request_timeout_secs",
                file.request_timeout_secs.unwrap_or(900.0),
            )?,
            idle_timeout: secs("idle_timeout_secs", file.idle_timeout_secs.unwrap_or(120.0))?,
            alert_retry: secs("alert_retry_secs", file.alert_retry_secs.unwrap_or(300.0))?,
            max_retries: file.max_retries.unwrap_or(2),
            retry_base: Duration::from_millis(file.retry_base_ms.unwrap_or(500)),
            max_retry_wait: secs(
                "max_retry_wait_secs",
                file.max_retry_wait_secs.unwrap_or(20.0),
            )?,
            breaker_threshold: file.breaker_threshold.unwrap_or(3),
            breaker_cooldown: secs(
                "breaker_cooldown_secs",
                file.breaker_cooldown_secs.unwrap_or(30.0),
            )?,
            tier_thresholds: file
                .routing
                .thresholds
                .unwrap_or(crate::router::DEFAULT_TIER_THRESHOLDS),
            prefer: match file.routing.prefer.as_deref() {
                None => crate::router::Preference::default(),
                Some(p) => crate::router::Preference::parse(p).with_context(|| {
                    format!("routing.prefer = {p:?} is neither \"cost\" nor \"quality\"")
                })?,
            },
            tier_models: file.routing.tiers,
            price_overrides: file.pricing.overrides,
            retention_days: file.retention_days,
            ledger_sync: file.ledger_sync.unwrap_or_default(),
            http: HttpSettings {
                addr: file
                    .http
                    .addr
                    .unwrap_or_else(|| HttpSettings::default().addr),
                require_auth: file.http.require_auth.unwrap_or(false),
                cors_origins: file.http.cors_origins.unwrap_or_default(),
                allowed_hosts: file.http.allowed_hosts.unwrap_or_default(),
                max_body_bytes: file
                    .http
                    .max_body_bytes
                    .unwrap_or(HttpSettings::default().max_body_bytes),
                shutdown_grace: secs(
                    "http.shutdown_grace_secs",
                    file.http.shutdown_grace_secs.unwrap_or(30.0),
                )?,
            },
        };
        if let Some(v) = non_empty(env(HTTP_ADDR_ENV)) {
            settings.http.addr = v.trim().to_string();
        }
        if let Some(v) = non_empty(env(HTTP_REQUIRE_AUTH_ENV)) {
            settings.http.require_auth = parse_bool(&v)
                .with_context(|| format!("{HTTP_REQUIRE_AUTH_ENV}={v:?}: use true or false"))?;
        }
        // Empty counts as unset, as everywhere: an empty allowed-hosts
        // variable must not wipe the file's list (and with it the guard
        // against DNS rebinding).
        if let Some(v) = non_empty(env(HTTP_CORS_ORIGINS_ENV)) {
            settings.http.cors_origins = comma_list(&v);
        }
        if let Some(v) = non_empty(env(HTTP_ALLOWED_HOSTS_ENV)) {
            settings.http.allowed_hosts = comma_list(&v);
        }
        if let Some(v) = non_empty(env(HTTP_MAX_BODY_ENV)) {
            settings.http.max_body_bytes = v
                .trim()
                .parse()
                .with_context(|| format!("{HTTP_MAX_BODY_ENV}={v:?} is not a number of bytes"))?;
        }
        if let Some(v) = non_empty(env(HTTP_SHUTDOWN_GRACE_ENV)) {
            settings.http.shutdown_grace = secs(
                HTTP_SHUTDOWN_GRACE_ENV,
                v.trim().parse().with_context(|| {
                    format!("{HTTP_SHUTDOWN_GRACE_ENV}={v:?} is not a number of seconds")
                })?,
            )?;
        }

        if let Some(v) = non_empty(env(MONTHLY_BUDGET_ENV)) {
            settings.default_monthly_budget_usd = v.trim().parse().with_context(|| {
                format!("{MONTHLY_BUDGET_ENV}={v:?} is not a number of US dollars")
            })?;
        }
        if let Some(v) = non_empty(env(STORE_PROMPTS_ENV)) {
            settings.store_prompts = parse_bool(&v)
                .with_context(|| format!("{STORE_PROMPTS_ENV}={v:?}: use true or false"))?;
        }
        if let Some(v) = non_empty(env(LEDGER_SYNC_ENV)) {
            settings.ledger_sync = crate::ledger::Durability::parse(&v)
                .with_context(|| format!("{LEDGER_SYNC_ENV}={v:?}: use full or batched"))?;
        }
        if let Some(v) = non_empty(env(REQUEST_TIMEOUT_ENV)) {
            settings.request_timeout = secs(
                REQUEST_TIMEOUT_ENV,
                v.trim().parse().with_context(|| {
                    format!("{REQUEST_TIMEOUT_ENV}={v:?} is not a number of seconds")
                })?,
            )?;
        }
        if let Some(v) = non_empty(env(ALERT_RETRY_ENV)) {
            settings.alert_retry = secs(
                ALERT_RETRY_ENV,
                v.trim().parse().with_context(|| {
                    format!("{ALERT_RETRY_ENV}={v:?} is not a number of seconds")
                })?,
            )?;
        }
        if let Some(v) = non_empty(env(IDLE_TIMEOUT_ENV)) {
            settings.idle_timeout = secs(
                IDLE_TIMEOUT_ENV,
                v.trim().parse().with_context(|| {
                    format!("{IDLE_TIMEOUT_ENV}={v:?} is not a number of seconds")
                })?,
            )?;
        }
        if let Some(v) = non_empty(env(CONNECT_TIMEOUT_ENV)) {
            settings.connect_timeout = secs(
                CONNECT_TIMEOUT_ENV,
                v.trim().parse().with_context(|| {
                    format!("{CONNECT_TIMEOUT_ENV}={v:?} is not a number of seconds")
                })?,
            )?;
        }
        if let Some(v) = non_empty(env(TIMEZONE_ENV)) {
            settings.default_timezone = v.trim().to_string();
        }
        // The format applies to the webhook wherever its URL was set (here
        // or in the config file), and a wrong value is an error either way.
        let env_format = match non_empty(env(ALERT_WEBHOOK_FORMAT_ENV)) {
            Some(f) => Some(WebhookFormat::parse(&f).with_context(|| {
                format!("{ALERT_WEBHOOK_FORMAT_ENV}={f:?}: use json, slack or discord")
            })?),
            None => None,
        };
        if let Some(v) = non_empty(env(ALERT_WEBHOOK_ENV)) {
            // The URL (a token) in the environment, the format in the file
            // is the natural split: keep the file's format then.
            settings.alert_webhook = Some(Webhook {
                url: v.trim().to_string(),
                format: env_format
                    .or(file_webhook_format)
                    .unwrap_or(WebhookFormat::Json),
            });
        } else if let (Some(hook), Some(f)) = (settings.alert_webhook.as_mut(), env_format) {
            hook.format = f;
        }
        if let Some(url) = non_empty(env(SMTP_URL_ENV)) {
            crate::secrets::register_url(url.trim());
            let mut cfg = settings.alert_email.take().unwrap_or(EmailConfig {
                url: String::new(),
                from: file_email.0.clone().unwrap_or_default(),
                to: file_email.1.clone().unwrap_or_default(),
            });
            cfg.url = url.trim().to_string();
            settings.alert_email = Some(cfg);
        }
        if settings.alert_email.is_none()
            && (file_email.0.is_some()
                || file_email.1.is_some()
                || non_empty(env(ALERT_EMAIL_FROM_ENV)).is_some()
                || non_empty(env(ALERT_EMAIL_TO_ENV)).is_some())
        {
            settings.warnings.push(format!(
                "alert e-mail addresses are set but no SMTP server: no e-mail alerts are sent (set smtp_url in the config file or {SMTP_URL_ENV})"
            ));
        }
        if let Some(cfg) = settings.alert_email.as_mut() {
            if let Some(f) = non_empty(env(ALERT_EMAIL_FROM_ENV)) {
                cfg.from = f.trim().to_string();
            }
            if let Some(t) = non_empty(env(ALERT_EMAIL_TO_ENV)) {
                cfg.to = t
                    .split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect();
            }
        }
        if let Some(v) = non_empty(env(MAX_RETRIES_ENV)) {
            settings.max_retries = v
                .trim()
                .parse()
                .with_context(|| format!("{MAX_RETRIES_ENV}={v:?} is not a whole number"))?;
        }
        if let Some(v) = non_empty(env(RETRY_BASE_MS_ENV)) {
            settings.retry_base = Duration::from_millis(v.trim().parse().with_context(|| {
                format!("{RETRY_BASE_MS_ENV}={v:?} is not a number of milliseconds")
            })?);
        }
        if let Some(v) = non_empty(env(PREFER_ENV)) {
            settings.prefer = crate::router::Preference::parse(&v)
                .with_context(|| format!("{PREFER_ENV}={v:?} is neither cost nor quality"))?;
        }
        if let Some(v) = non_empty(env(BREAKER_COOLDOWN_ENV)) {
            settings.breaker_cooldown = secs(
                BREAKER_COOLDOWN_ENV,
                v.trim().parse().with_context(|| {
                    format!("{BREAKER_COOLDOWN_ENV}={v:?} is not a number of seconds")
                })?,
            )?;
        }
        settings.http.cors_origins = settings
            .http
            .cors_origins
            .iter()
            .enumerate()
            .map(|(i, o)| cors_origin(i + 1, o))
            .collect::<Result<_>>()?;
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<()> {
        // Named both ways: the value may come from the file or the env.
        crate::budget::validate_limit(
            &format!("monthly_budget_usd ({MONTHLY_BUDGET_ENV})"),
            self.default_monthly_budget_usd,
        )
        .map_err(anyhow::Error::msg)?;
        crate::budget::validate_thresholds(&self.default_alert_thresholds)
            .map_err(anyhow::Error::msg)?;
        crate::budget::validate_timezone(&self.default_timezone)
            .map_err(|m| anyhow::anyhow!("{m} (set by {TIMEZONE_ENV} or the config file)"))?;
        if let Some(e) = &self.alert_email {
            crate::secrets::register_url(&e.url);
            e.validate().map_err(|m| {
                anyhow::anyhow!(
                    "{m} ({SMTP_URL_ENV}, {ALERT_EMAIL_FROM_ENV}, {ALERT_EMAIL_TO_ENV})"
                )
            })?;
        }
        if let Some(w) = &self.alert_webhook {
            crate::budget::validate_webhook_url(&w.url).map_err(|m| {
                anyhow::anyhow!("{m} (set by {ALERT_WEBHOOK_ENV} or alert_webhook_url)")
            })?;
            crate::secrets::register_url(&w.url);
        }
        let t = self.tier_thresholds;
        if !(t.iter().all(|x| x.is_finite() && (0.0..=1.0).contains(x))
            && t[0] <= t[1]
            && t[1] <= t[2])
        {
            bail!(
                "routing.thresholds must be three numbers in [0, 1], none below the one before (equal ones switch the tiers between them off), got {t:?}"
            );
        }
        if self.max_retries > 10 {
            bail!("max_retries ({MAX_RETRIES_ENV}) must be at most 10");
        }
        if self.breaker_threshold == 0 {
            bail!(
                "breaker_threshold must be at least 1 (failures in a row before a provider is skipped)"
            );
        }
        if self.retry_base > Duration::from_secs(60) {
            bail!("retry_base_ms ({RETRY_BASE_MS_ENV}) must be at most 60000");
        }
        // The limit is there to bound what one request can make the
        // server hold: a prompt is at most MAX_PROMPT_BYTES, so a body far
        // past it buys nothing but memory.
        if !(1024..=MAX_BODY_BYTES).contains(&self.http.max_body_bytes) {
            bail!(
                "http.max_body_bytes ({HTTP_MAX_BODY_ENV}) must be between 1024 and {MAX_BODY_BYTES}, got {}",
                self.http.max_body_bytes
            );
        }
        if self.retention_days == Some(0) {
            bail!("retention_days must be at least 1 (leave it out to keep every record)");
        }
        if self.default_max_tokens == 0 || self.default_max_tokens > MAX_OUTPUT_TOKENS {
            bail!("default_max_tokens must be between 1 and {MAX_OUTPUT_TOKENS}");
        }
        for (model, p) in &self.price_overrides {
            let prices = [
                Some(p.input_per_mtok),
                Some(p.output_per_mtok),
                p.cache_read_per_mtok,
                p.cache_write_per_mtok,
            ];
            if prices.iter().flatten().any(|x| !x.is_finite() || *x < 0.0) {
                bail!("pricing.overrides.{model:?}: prices must be non-negative numbers");
            }
            // As a refreshed catalog may not: a price past it is a slip
            // (per token instead of per million), never a real model.
            let most = crate::pricing::MAX_PRICE_PER_TOKEN * 1e6;
            if prices.iter().flatten().any(|x| *x > most) {
                bail!(
                    "pricing.overrides.{model:?}: prices are USD per million tokens and at most {most}"
                );
            }
        }
        Ok(())
    }

    /// Path of the SQLite ledger.
    pub fn ledger_path(&self) -> PathBuf {
        self.data_dir.join("ledger.sqlite3")
    }

    /// Directory of the rotating log files.
    pub fn log_dir(&self) -> PathBuf {
        self.data_dir.join("logs")
    }

    /// Where `pricing refresh` stores a validated catalog that replaces the
    /// bundled one.
    pub fn refreshed_pricing_path(&self) -> PathBuf {
        self.data_dir.join("pricing").join("catalog.json")
    }
}

fn read_file_config(path: &Path) -> Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    toml::from_str(&text).map_err(|e| {
        // toml's own message quotes the offending line, which may hold a
        // secret (an unquoted webhook URL, a misspelt `smtp_url` with its
        // password): say where and what, never the line itself.
        let at = e
            .span()
            .and_then(|s| text.get(..s.start))
            .map(|before| {
                let line = before.matches('\n').count() + 1;
                let line_start = before.rfind('\n').map_or(0, |i| i + 1);
                let column = before[line_start..].chars().count() + 1;
                format!(" at line {line}, column {column}")
            })
            .unwrap_or_default();
        anyhow::anyhow!(
            "config file {} is not valid{at}: {}",
            path.display(),
            without_values(e.message().trim())
        )
    })
}

/// A parse message with the values it quotes shortened: serde repeats a
/// wrong value (`unknown variant \`https://hooks…/TOKEN\``), which may be a
/// secret put under the wrong key. Short quoted words (field names, the
/// variants expected) are kept. Also applied to every settings error
/// (`Settings::load`'s callers): an env var's value is quoted before any
/// provider key has been registered for redaction.
pub fn without_values(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut rest = msg;
    while let Some(i) = rest.find(['`', '"']) {
        let quote = rest[i..].chars().next().unwrap_or('`');
        out.push_str(&rest[..=i]);
        let after = &rest[i + 1..];
        match after.find(quote) {
            Some(j) => {
                let quoted = &after[..j];
                let secret_like =
                    quoted.chars().count() > 24 || quoted.contains("://") || quoted.contains('@');
                out.push_str(if secret_like { "…" } else { quoted });
                out.push(quote);
                rest = &after[j + 1..];
            }
            None => {
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// One CORS origin as browsers send it (`scheme://host[:port]`, lowercase,
/// no path), or a clear error: `*` made tower-http panic at start-up, and an
/// origin written with a path, a trailing slash or capitals never matched
/// the `Origin` header, so browsers were refused with no clue why.
fn cors_origin(position: usize, o: &str) -> Result<String> {
    let o = o.trim();
    if o == "*" {
        bail!(
            "http.cors_origins ({HTTP_CORS_ORIGINS_ENV}): list the web origins one by one; \
             \"*\" would let any page a user visits call this server"
        );
    }
    let url = reqwest::Url::parse(o).ok().filter(|u| {
        matches!(u.scheme(), "http" | "https")
            && u.host_str().is_some()
            && u.username().is_empty()
            && u.password().is_none()
            && u.path() == "/"
            && u.query().is_none()
            && u.fragment().is_none()
    });
    let Some(url) = url else {
        // Named without its scheme and unquoted: settings errors shorten
        // quoted URLs (they may hold secrets), which hid which entry it was.
        let shown = o.split_once("://").map_or(o, |(_, rest)| rest);
        bail!(
            "http.cors_origins ({HTTP_CORS_ORIGINS_ENV}) entry {position} ({shown}) is not a web \
             origin; write scheme://host[:port] with no path, e.g. https://chat.example.com"
        );
    };
    // `Url` lowercases the host and drops a default port, as browsers do.
    Ok(url.origin().ascii_serialization())
}

fn comma_list(v: &str) -> Vec<String> {
    v.split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// `~` or `~/…` as the user's home directory: a path typed into Claude
/// Desktop's config (or an MCPB field) reaches us unexpanded.
fn expand_home(path: &str) -> PathBuf {
    let home = || directories::BaseDirs::new().map(|b| b.home_dir().to_path_buf());
    match path.strip_prefix('~') {
        Some("") => home().unwrap_or_else(|| PathBuf::from(path)),
        Some(rest) if rest.starts_with('/') || rest.starts_with(std::path::MAIN_SEPARATOR) => {
            match home() {
                Some(h) => h.join(rest.trim_start_matches(['/', std::path::MAIN_SEPARATOR])),
                None => PathBuf::from(path),
            }
        }
        _ => PathBuf::from(path),
    }
}

fn non_empty(v: Option<String>) -> Option<String> {
    v.filter(|s| !s.trim().is_empty())
}

/// A yes/no setting as people write it (`1`/`0`, `true`/`false`,
/// `yes`/`no`, `on`/`off`); `None` for anything else.
pub fn parse_bool(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// A duration setting `what` (its config key or env var, named in the
/// error) in seconds: more than 0, at most an hour.
fn secs(what: &str, v: f64) -> Result<Duration> {
    if !v.is_finite() || v <= 0.0 || v > 3600.0 {
        bail!("{what} must be more than 0 and at most 3600 seconds, got {v}");
    }
    Ok(Duration::from_secs_f64(v))
}

#[cfg(test)]
mod tests {

    #[test]
    fn unfilled_templates_are_unset() {
        assert!(is_unfilled_template("${user_config.anthropic_api_key}"));
        assert!(is_unfilled_template(" ${user_config.monthly_budget} "));
        assert!(!is_unfilled_template("sk-ant-123"));
        assert!(!is_unfilled_template("${a}-${b}"));
        assert!(!is_unfilled_template("$5"));
        assert!(!is_unfilled_template(""));
    }

    use super::*;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| pairs.iter().find(|(kk, _)| kk == k).map(|(_, v)| v.clone())
    }

    /// Loads settings from a config file holding `toml` plus `extra` env.
    fn with_file(toml: &str, extra: &[(&str, &str)]) -> Result<Settings> {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("c.toml");
        std::fs::write(&cfg, toml).unwrap();
        let (d, c) = (
            dir.path().to_str().unwrap().to_string(),
            cfg.to_str().unwrap().to_string(),
        );
        let mut pairs = vec![(DATA_DIR_ENV, d.as_str()), (CONFIG_ENV, c.as_str())];
        pairs.extend_from_slice(extra);
        Settings::load_with(&env_of(&pairs))
    }

    /// A config file that does not parse is reported by line and column,
    /// never by quoting the line: it may hold a secret.
    #[test]
    fn config_errors_never_quote_the_line() {
        for (toml, secret, line) in [
            (
                "monthly_budget_usd = 5\nalert_webhook_url = https://hooks.slack.com/services/T0/B0/XXSECRETXX\n",
                "XXSECRETXX",
                2,
            ),
            (
                "smtp_ulr = \"smtps://alerts:Sup3rS3cretPassw0rd@mail.example\"\n",
                "Sup3rS3cretPassw0rd",
                1,
            ),
            // A URL under the wrong key: serde quotes the value it refused.
            (
                "# café\nalert_webhook_format = \"https://hooks.slack.com/services/T0/B0/XXSECRETXX\"\n",
                "XXSECRETXX",
                2,
            ),
        ] {
            let e = format!("{:#}", with_file(toml, &[]).unwrap_err());
            assert!(!e.contains(secret), "{e}");
            assert!(e.contains(&format!("at line {line}")), "{e}");
        }
    }

    /// The webhook's URL in the environment keeps the file's format; an
    /// empty list variable does not wipe the file's list; a bad duration
    /// names its setting.
    #[test]
    fn env_and_file_combine() {
        let s = with_file(
            "alert_webhook_format = \"slack\"\n",
            &[(
                ALERT_WEBHOOK_ENV,
                "https://hooks.slack.com/services/T/B/tok",
            )],
        )
        .unwrap();
        assert_eq!(s.alert_webhook.unwrap().format, WebhookFormat::Slack);
        let s = with_file(
            "[http]\nallowed_hosts = [\"opt.example\"]\n",
            &[(HTTP_ALLOWED_HOSTS_ENV, " "), (HTTP_CORS_ORIGINS_ENV, "")],
        )
        .unwrap();
        assert_eq!(s.http.allowed_hosts, ["opt.example"]);
        let e = format!(
            "{:#}",
            with_file("", &[(REQUEST_TIMEOUT_ENV, "0")]).unwrap_err()
        );
        assert!(
            e.contains(REQUEST_TIMEOUT_ENV) && e.contains("more than 0"),
            "{e}"
        );
        let e = format!(
            "{:#}",
            with_file("idle_timeout_secs = 7200\n", &[]).unwrap_err()
        );
        assert!(e.contains("idle_timeout_secs"), "{e}");
    }

    #[test]
    fn defaults_apply_without_file_or_env() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        let s = Settings::load_with(&env_of(&[(DATA_DIR_ENV, d), (CONFIG_ENV, "")])).unwrap();
        assert_eq!(s.default_monthly_budget_usd, 100.0);
        assert_eq!(s.default_alert_thresholds, vec![0.5, 0.8, 1.0]);
        assert_eq!(s.ledger_path(), dir.path().join("ledger.sqlite3"));
    }

    #[test]
    fn file_then_env_override() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("c.toml");
        std::fs::write(
            &cfg,
            "monthly_budget_usd = 20\n[routing.tiers]\ncheap = [\"deepseek/deepseek-chat\"]\n\
             [pricing.overrides.\"ollama/x\"]\ninput_per_mtok = 0\noutput_per_mtok = 0\n",
        )
        .unwrap();
        let env = env_of(&[
            (DATA_DIR_ENV, dir.path().to_str().unwrap()),
            (CONFIG_ENV, cfg.to_str().unwrap()),
            (MONTHLY_BUDGET_ENV, "35.5"),
        ]);
        let s = Settings::load_with(&env).unwrap();
        assert_eq!(s.default_monthly_budget_usd, 35.5);
        assert_eq!(s.tier_models[&Tier::Cheap], vec!["deepseek/deepseek-chat"]);
        assert!(s.price_overrides.contains_key("ollama/x"));
    }

    /// The SMTP URL (a password) from the environment keeps the file's
    /// addresses; a relative data directory is refused, `~` expanded.
    #[test]
    fn email_from_env_and_file_and_data_dir_paths() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("c.toml");
        std::fs::write(
            &cfg,
            "alert_email_from = \"alerts@example.com\"\nalert_email_to = [\"me@example.com\"]\n",
        )
        .unwrap();
        let d = dir.path().to_str().unwrap();
        let c = cfg.to_str().unwrap();
        let s = Settings::load_with(&env_of(&[
            (DATA_DIR_ENV, d),
            (CONFIG_ENV, c),
            (SMTP_URL_ENV, "smtps://u:p@smtp.example.com:465"),
        ]))
        .unwrap();
        let e = s.alert_email.unwrap();
        assert_eq!(e.from, "alerts@example.com");
        assert_eq!(e.to, ["me@example.com"]);

        let err = format!(
            "{:#}",
            Settings::load_with(&env_of(&[(DATA_DIR_ENV, "aco-data"), (CONFIG_ENV, c)]))
                .unwrap_err()
        );
        assert!(err.contains("must be an absolute path"), "{err}");
        if let Some(home) = directories::BaseDirs::new().map(|b| b.home_dir().to_path_buf()) {
            assert_eq!(expand_home("~/aco"), home.join("aco"));
            assert_eq!(expand_home("~"), home);
        }
        assert_eq!(expand_home("~bob/x"), PathBuf::from("~bob/x"));
    }

    /// `[routing] prefer` in any case, overridden by the environment; a
    /// wrong value in either is an error naming where it came from.
    #[test]
    fn routing_preference_from_file_then_env() {
        use crate::router::Preference;
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("c.toml");
        let d = dir.path().to_str().unwrap();
        let c = cfg.to_str().unwrap();
        let load = |text: &str, env: Option<&str>| {
            std::fs::write(&cfg, text).unwrap();
            let mut vars = vec![(DATA_DIR_ENV, d), (CONFIG_ENV, c)];
            if let Some(v) = env {
                vars.push((PREFER_ENV, v));
            }
            Settings::load_with(&env_of(&vars)).map(|s| s.prefer)
        };
        assert_eq!(load("", None).unwrap(), Preference::Cost);
        let quality = "[routing]\nprefer = \"Quality\"\n";
        assert_eq!(load(quality, None).unwrap(), Preference::Quality);
        assert_eq!(load(quality, Some("cost")).unwrap(), Preference::Cost);
        assert_eq!(load("", Some(" QUALITY ")).unwrap(), Preference::Quality);
        let err = format!(
            "{:#}",
            load("[routing]\nprefer = \"fast\"\n", None).unwrap_err()
        );
        assert!(err.contains("routing.prefer"), "{err}");
        let err = format!("{:#}", load("", Some("fast")).unwrap_err());
        assert!(err.contains(PREFER_ENV), "{err}");
    }

    /// The webhook format from the environment applies to a webhook set
    /// in the file too, and a wrong one is an error even then.
    #[test]
    fn webhook_format_env_applies_to_the_file_webhook() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("c.toml");
        std::fs::write(&cfg, "alert_webhook_url = \"https://hooks.example/x\"\n").unwrap();
        let d = dir.path().to_str().unwrap();
        let c = cfg.to_str().unwrap();
        let s = Settings::load_with(&env_of(&[
            (DATA_DIR_ENV, d),
            (CONFIG_ENV, c),
            (ALERT_WEBHOOK_FORMAT_ENV, "slack"),
        ]))
        .unwrap();
        assert_eq!(s.alert_webhook.unwrap().format, WebhookFormat::Slack);
        let err = format!(
            "{:#}",
            Settings::load_with(&env_of(&[
                (DATA_DIR_ENV, d),
                (CONFIG_ENV, c),
                (ALERT_WEBHOOK_FORMAT_ENV, "bogus"),
            ]))
            .unwrap_err()
        );
        assert!(err.contains(ALERT_WEBHOOK_FORMAT_ENV), "{err}");
    }

    #[test]
    fn http_settings_from_file_then_env() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        let s = Settings::load_with(&env_of(&[(DATA_DIR_ENV, d), (CONFIG_ENV, "")])).unwrap();
        assert_eq!(s.http.addr, "127.0.0.1:8080");
        assert!(!s.http.require_auth);
        assert!(s.http.cors_origins.is_empty(), "CORS is off by default");
        let cfg = dir.path().join("c.toml");
        std::fs::write(
            &cfg,
            "[http]
addr = \"0.0.0.0:9000\"
cors_origins = [\"https://a.example\"]
\
             allowed_hosts = [\"opt.example\"]
shutdown_grace_secs = 5
",
        )
        .unwrap();
        let env = env_of(&[
            (DATA_DIR_ENV, d),
            (CONFIG_ENV, cfg.to_str().unwrap()),
            (HTTP_REQUIRE_AUTH_ENV, "yes"),
            (
                HTTP_CORS_ORIGINS_ENV,
                "https://b.example, https://c.example",
            ),
        ]);
        let s = Settings::load_with(&env).unwrap();
        assert_eq!(s.http.addr, "0.0.0.0:9000");
        assert!(s.http.require_auth);
        assert_eq!(
            s.http.cors_origins,
            ["https://b.example", "https://c.example"]
        );
        assert_eq!(s.http.allowed_hosts, ["opt.example"]);
        assert_eq!(s.http.shutdown_grace, Duration::from_secs(5));
        let grace = Settings::load_with(&env_of(&[
            (DATA_DIR_ENV, d),
            (CONFIG_ENV, cfg.to_str().unwrap()),
            (HTTP_REQUIRE_AUTH_ENV, "yes"),
            (HTTP_SHUTDOWN_GRACE_ENV, "7.5"),
        ]))
        .unwrap();
        assert_eq!(grace.http.shutdown_grace, Duration::from_millis(7500));
        // Origins are written as browsers send them; what can never match
        // an `Origin` header, or would match every page, is refused.
        let origins = |v: &str| {
            Settings::load_with(&env_of(&[
                (DATA_DIR_ENV, d),
                (CONFIG_ENV, ""),
                (HTTP_CORS_ORIGINS_ENV, v),
            ]))
            .map(|s| s.http.cors_origins)
            .map_err(|e| format!("{e:#}"))
        };
        assert_eq!(
            origins("https://App.Example.com/, http://localhost:3000, https://x.example:443")
                .unwrap(),
            [
                "https://app.example.com",
                "http://localhost:3000",
                "https://x.example"
            ]
        );
        for bad in [
            "*",
            "app.example.com",
            "https://a.example/chat",
            "ftp://a.example",
            "https://a.example/?x=1",
        ] {
            let e = origins(bad).unwrap_err();
            assert!(e.contains(HTTP_CORS_ORIGINS_ENV), "{bad}: {e}");
            // As the user sees it: the entry stays visible.
            let shown = without_values(&e);
            assert!(
                bad == "*"
                    || shown.contains("entry 1 (") && shown.contains("https://chat.example.com"),
                "{shown}"
            );
        }
        let e = without_values(&origins("https://ok.example, https://a.example/chat").unwrap_err());
        assert!(e.contains("entry 2 (a.example/chat)"), "{e}");
        let bad = env_of(&[
            (DATA_DIR_ENV, d),
            (CONFIG_ENV, ""),
            (HTTP_MAX_BODY_ENV, "12"),
        ]);
        assert!(
            Settings::load_with(&bad).is_err(),
            "a tiny body limit is refused"
        );
    }

    #[test]
    fn bad_values_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let env = env_of(&[
            (DATA_DIR_ENV, dir.path().to_str().unwrap()),
            (MONTHLY_BUDGET_ENV, "-5"),
        ]);
        let err = Settings::load_with(&env).unwrap_err().to_string();
        assert!(err.contains("monthly_budget_usd"), "{err}");
        let env = env_of(&[
            (DATA_DIR_ENV, dir.path().to_str().unwrap()),
            (MONTHLY_BUDGET_ENV, "lots"),
        ]);
        let err = format!("{:#}", Settings::load_with(&env).unwrap_err());
        assert!(err.contains(MONTHLY_BUDGET_ENV), "{err}");
    }

    #[test]
    fn unknown_keys_in_file_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("c.toml");
        std::fs::write(&cfg, "montly_budget = 3\n").unwrap();
        let env = env_of(&[
            (DATA_DIR_ENV, dir.path().to_str().unwrap()),
            (CONFIG_ENV, cfg.to_str().unwrap()),
        ]);
        let err = format!("{:#}", Settings::load_with(&env).unwrap_err());
        assert!(err.contains("montly_budget"), "{err}");
    }

    /// The README's config file example is a config file this version
    /// accepts, every key of it (unknown keys are refused).
    #[test]
    fn the_readme_config_example_loads() {
        let readme = include_str!("../README.md");
        let start = readme
            .find("### Config file (optional)")
            .and_then(|i| readme[i..].find("```toml").map(|j| i + j + "```toml".len()))
            .expect("README has the config example");
        let end = start + readme[start..].find("```").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("c.toml");
        std::fs::write(&cfg, &readme[start..end]).unwrap();
        let env = env_of(&[
            (DATA_DIR_ENV, dir.path().to_str().unwrap()),
            (CONFIG_ENV, cfg.to_str().unwrap()),
        ]);
        let s = Settings::load_with(&env).unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(s.breaker_threshold, 3);
        assert!(s.alert_email.is_some());
    }

    /// Values that parse but cannot be meant are refused by name: a price
    /// per token written where a price per million belongs, a body limit
    /// that limits nothing, a retention that would delete every record.
    #[test]
    fn out_of_range_settings_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("c.toml");
        for (toml, needle) in [
            (
                "[pricing.overrides.\"deepseek/deepseek-v3.2\"]\ninput_per_mtok = 1e12\noutput_per_mtok = 1\n",
                "per million tokens",
            ),
            ("retention_days = 0\n", "retention_days must be at least 1"),
            (
                "[http]\nmax_body_bytes = 99999999999999\n",
                "max_body_bytes",
            ),
        ] {
            std::fs::write(&cfg, toml).unwrap();
            let env = env_of(&[
                (DATA_DIR_ENV, dir.path().to_str().unwrap()),
                (CONFIG_ENV, cfg.to_str().unwrap()),
            ]);
            let err = format!("{:#}", Settings::load_with(&env).unwrap_err());
            assert!(err.contains(needle), "{toml}: {err}");
        }
        let env = env_of(&[
            (DATA_DIR_ENV, dir.path().to_str().unwrap()),
            (CONFIG_ENV, ""),
            (HTTP_MAX_BODY_ENV, "99999999999999"),
        ]);
        let err = format!("{:#}", Settings::load_with(&env).unwrap_err());
        assert!(err.contains(HTTP_MAX_BODY_ENV), "{err}");
        // The largest real price still passes.
        std::fs::write(
            &cfg,
            "[pricing.overrides.\"deepseek/deepseek-v3.2\"]\ninput_per_mtok = 150\noutput_per_mtok = 600\n",
        )
        .unwrap();
        let env = env_of(&[
            (DATA_DIR_ENV, dir.path().to_str().unwrap()),
            (CONFIG_ENV, cfg.to_str().unwrap()),
        ]);
        assert!(Settings::load_with(&env).is_ok());
    }
}
