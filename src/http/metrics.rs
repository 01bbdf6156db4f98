//! `GET /metrics`: Prometheus (OpenMetrics) text from `prometheus-client`.
//!
//! Request counts and latencies come from a middleware over every route;
//! calls and tokens from each completion this process serves (over
//! `/v1/chat/completions` and `/mcp` alike); costs and provider errors from
//! every attempt the core records, answered or not; budget
//! gauges are read from the ledger at scrape time, so they also show spend
//! recorded by other processes (the stdio server, the CLI).

use std::sync::atomic::AtomicU64;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::budget::DEFAULT_USER;
use crate::ledger::CallRecord;
use crate::optimizer::{ChargeListener, Completion, Optimizer};

use super::AppState;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabels {
    provider: String,
    model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    provider: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BudgetLabels {
    scope: String,
}

/// A label value as the text format needs it: prometheus-client writes
/// label values as given, and a user id, a forced model id or a provider's
/// error kind may hold `"`, `\` or a line break, which would end the value
/// early and make the whole scrape unparseable.
fn label(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// The method label: the standard methods by name, anything else as
/// `OTHER`. hyper accepts any token as a method, so labelling raw methods
/// would let anyone (this middleware runs before authentication) add a
/// series per request.
fn method_label(m: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "OTHER",
    }
}

fn latency_histogram() -> Histogram {
    // 0.5 ms … ~33 s: proxy overhead at the low end, slow models at the top.
    Histogram::new(exponential_buckets(0.0005, 2.0, 17))
}

/// The process's metrics.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram, fn() -> Histogram>,
    cost: Family<ModelLabels, Counter<f64, AtomicU64>>,
    calls: Family<ModelLabels, Counter>,
    tokens_in: Family<ModelLabels, Counter>,
    tokens_out: Family<ModelLabels, Counter>,
    provider_errors: Family<ErrorLabels, Counter>,
    call_errors: Family<KindLabels, Counter>,
    budget_limit: Family<BudgetLabels, Gauge<f64, AtomicU64>>,
    budget_spent: Family<BudgetLabels, Gauge<f64, AtomicU64>>,
    budget_reserved: Family<BudgetLabels, Gauge<f64, AtomicU64>>,
    /// One scrape at a time: the budget families are cleared and filled
    /// again on each, and a second scrape clearing them while the first
    /// encodes sent Prometheus a page without its budget series.
    scrape: std::sync::Mutex<()>,
}

/// Every attempt's charge goes to the cost counter of its provider and
/// model, answered or not (what the budget counts), and every failure of a
/// provider to its error counter, whether or not the call then found an
/// answer elsewhere. A cancelled attempt (the caller went away) is charged
/// but is no provider error.
impl ChargeListener for Metrics {
    fn attempt_recorded(&self, r: &CallRecord) {
        let labels = ModelLabels {
            provider: label(&r.provider),
            model: label(&r.model),
        };
        if r.cost_usd > 0.0 {
            self.cost.get_or_create(&labels).inc_by(r.cost_usd);
        }
        if let Some(kind) = r.error_kind.as_deref().filter(|k| *k != "cancelled") {
            self.provider_error(&r.provider, kind);
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("aco");
        let m = Metrics {
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            cost: Family::default(),
            calls: Family::default(),
            tokens_in: Family::default(),
            tokens_out: Family::default(),
            provider_errors: Family::default(),
            call_errors: Family::default(),
            budget_limit: Family::default(),
            budget_spent: Family::default(),
            budget_reserved: Family::default(),
            scrape: std::sync::Mutex::new(()),
            registry: Registry::default(),
        };
        registry.register(
            "http_requests",
            "HTTP requests by route, method and status",
            m.requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time to the response headers by route (for streams: to the first byte)",
            m.latency.clone(),
        );
        registry.register(
            "llm_cost_usd",
            "What this process's provider attempts were charged, USD: answers, failed or cancelled attempts the provider bills, speech",
            m.cost.clone(),
        );
        registry.register(
            "llm_calls",
            "Successful LLM calls served by this process",
            m.calls.clone(),
        );
        registry.register(
            "llm_input_tokens",
            "Input tokens (cache included) of successful calls",
            m.tokens_in.clone(),
        );
        registry.register(
            "llm_output_tokens",
            "Output tokens of successful calls",
            m.tokens_out.clone(),
        );
        registry.register(
            "provider_errors",
            "Failed provider attempts by provider and error kind",
            m.provider_errors.clone(),
        );
        registry.register(
            "call_errors",
            "Calls that returned no answer, by reason (invalid, budget_refused, provider_failed, providers_busy, ledger)",
            m.call_errors.clone(),
        );
        registry.register(
            "budget_limit_usd",
            "Budget limit of the current period",
            m.budget_limit.clone(),
        );
        registry.register(
            "budget_spent_usd",
            "Spend recorded in the current budget period",
            m.budget_spent.clone(),
        );
        registry.register(
            "budget_reserved_usd",
            "Worst-case cost held by calls in flight",
            m.budget_reserved.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Counts one answered call and its tokens. (Its cost and its failed
    /// attempts are counted as each attempt is recorded:
    /// [`ChargeListener`].)
    pub fn record_completion(&self, c: &Completion) {
        let labels = ModelLabels {
            provider: c.provider.as_str().to_string(),
            model: label(&c.model),
        };
        self.calls.get_or_create(&labels).inc();
        self.tokens_in
            .get_or_create(&labels)
            .inc_by(c.tokens.input + c.tokens.cached + c.tokens.cache_write);
        self.tokens_out
            .get_or_create(&labels)
            .inc_by(c.tokens.output);
    }

    /// Counts a call that returned no answer.
    pub fn call_error(&self, e: &crate::optimizer::ToolError) {
        use crate::optimizer::ToolError;
        let kind = match e {
            ToolError::Invalid(_) => "invalid",
            ToolError::BudgetRefused(_) => "budget_refused",
            ToolError::ProviderFailed(_) => "provider_failed",
            ToolError::ContextTooLong(_) => "context_too_long",
            ToolError::ProvidersBusy { .. } => "providers_busy",
            ToolError::Ledger(_) => "ledger",
        };
        self.call_errors
            .get_or_create(&KindLabels { kind: kind.into() })
            .inc();
    }

    /// Counts one failed provider attempt.
    pub fn provider_error(&self, provider: &str, kind: &str) {
        self.provider_errors
            .get_or_create(&ErrorLabels {
                provider: label(provider),
                kind: label(kind),
            })
            .inc();
    }

    fn observe(&self, route: &str, method: &str, status: u16, seconds: f64) {
        self.requests
            .get_or_create(&RequestLabels {
                route: route.to_string(),
                method: method.to_string(),
                status: status.to_string(),
            })
            .inc();
        self.latency
            .get_or_create(&RouteLabels {
                route: route.to_string(),
            })
            .observe(seconds);
    }

    /// Reads the budgets worth showing (the default user's, every key
    /// owner's, the global one) from the ledger into the gauges.
    fn refresh_budgets(&self, core: &Optimizer) {
        let Ok(ledger) = core.ledger() else {
            return;
        };
        let mut users = vec![DEFAULT_USER.to_string()];
        if let Ok(keys) = ledger.api_keys() {
            for k in keys.into_iter().filter(|k| k.revoked_ms.is_none()) {
                if !users.contains(&k.user_id) {
                    users.push(k.user_id);
                }
            }
        }
        let mut statuses: Vec<_> = users
            .iter()
            .filter_map(|u| core.budget_status(u).ok())
            .collect();
        if let Ok(Some(g)) = core.global_budget_status() {
            statuses.push(g);
        }
        // Start from empty families, so a user whose keys were all revoked
        // stops being reported instead of showing stale figures forever.
        self.budget_limit.clear();
        self.budget_spent.clear();
        self.budget_reserved.clear();
        for s in statuses {
            let l = BudgetLabels {
                scope: label(&s.user_id),
            };
            self.budget_limit.get_or_create(&l).set(s.limit_usd);
            self.budget_spent.get_or_create(&l).set(s.spent_usd);
            self.budget_reserved.get_or_create(&l).set(s.reserved_usd);
        }
    }

    /// The OpenMetrics text.
    pub fn render(&self, core: &Optimizer) -> Result<String, std::fmt::Error> {
        // Poisoned only by a panic mid-scrape; the families are still whole.
        let _one_at_a_time = self
            .scrape
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.refresh_budgets(core);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// Middleware: counts every request and times it to its response headers.
pub async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        // Unmatched paths share one label so scanners cannot blow up the
        // label set.
        .unwrap_or_else(|| "unmatched".to_string());
    let method = method_label(req.method());
    let t0 = Instant::now();
    let resp = next.run(req).await;
    state.metrics.observe(
        &route,
        method,
        resp.status().as_u16(),
        t0.elapsed().as_secs_f64(),
    );
    resp
}

/// `GET /metrics`. Admin keys only (or an open loopback server): the
/// budget gauges name every key owner with their limit and spend, and a
/// plain key sees only its own user everywhere else.
pub async fn handler(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<super::auth::Caller>,
) -> Response {
    if !caller.admin {
        return super::openai::error_response(
            StatusCode::FORBIDDEN,
            "metrics show every user's budget; they need an admin key (`keys create --admin`)",
            "permission_error",
            None,
        );
    }
    let core = state.core.clone();
    let metrics = state.metrics.clone();
    let text = tokio::task::spawn_blocking(move || metrics.render(&core)).await;
    match text {
        Ok(Ok(body)) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics").into_response(),
    }
}
