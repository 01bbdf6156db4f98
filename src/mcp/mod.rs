//! The MCP server: five tools, each a thin handler over [`Optimizer`].
//!
//! Every tool returns a short Markdown text for the person reading Claude's
//! window plus `structuredContent` matching its `outputSchema` for programs.
//! Argument problems and refusals come back as tool errors (`isError: true`)
//! with a message naming the field, so the model can correct itself; the
//! server itself never stops over a bad call.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::tool::schema_for_output;
use rmcp::handler::server::wrapper::Parameters;
#[allow(deprecated)]
use rmcp::model::{
    CallToolResult, ContentBlock, Implementation, ListResourcesResult, LoggingLevel,
    LoggingMessageNotificationParam, PaginatedRequestParams, ProgressNotificationParam,
    ProtocolVersion, ReadResourceRequestParams, ReadResourceResponse, ServerCapabilities,
    ServerConfig, SetLevelRequestParams,
};
use rmcp::service::RequestContext;
use rmcp::{
    ErrorData as McpError, RoleServer, ServerHandler, ServiceExt, tool, tool_handler, tool_router,
};
use serde::Serialize;

use crate::optimizer::{
    BudgetUpdate, CompleteArgs, Completion, CostArgs, CostTable, Optimizer, RecommendArgs,
    Recommendation, SetBudgetArgs, ToolError, UsageArgs, UsageReport,
};
use crate::providers::StreamSink;

mod app;
pub mod stdio;
use crate::render;

/// How often streamed progress is reported to a client that asked for it.
const PROGRESS_INTERVAL: std::time::Duration = std::time::Duration::from_millis(200);

/// Counts the characters of a streamed answer for progress notifications.
#[derive(Default)]
struct ProgressSink {
    chars: AtomicU64,
    /// Alerts fired by a call that then failed, to notify the client.
    alerts: std::sync::Mutex<Vec<crate::budget::alerts::BudgetAlert>>,
}

impl StreamSink for ProgressSink {
    fn on_text(&self, delta: &str) {
        self.chars
            .fetch_add(delta.chars().count() as u64, Ordering::Relaxed);
    }

    fn on_alert(&self, alert: &crate::budget::alerts::BudgetAlert) {
        self.alerts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(alert.clone());
    }
}

/// What a transport wants to know about calls: the HTTP server counts
/// completions for its metrics and waits for calls in flight at shutdown.
/// The stdio server needs neither.
pub trait CallObserver: Send + Sync {
    /// A `complete_prompt` call starts; the returned guard lives until it
    /// ends.
    fn call_started(&self) -> Box<dyn Send>;
    /// A `complete_prompt` call succeeded.
    fn completed(&self, c: &Completion);
    /// A `complete_prompt` call returned no answer.
    fn failed(&self, e: &ToolError);
}

/// The MCP server state: the shared core and the tool table.
#[derive(Clone)]
pub struct CostServer {
    core: Arc<Optimizer>,
    tool_router: ToolRouter<CostServer>,
    observer: Option<Arc<dyn CallObserver>>,
    /// The least severe logging level the client wants (`logging/setLevel`),
    /// as [`level_rank`]; alerts below it are not sent. Per session.
    min_level: Arc<AtomicU8>,
}

/// Severity order of MCP logging levels (RFC 5424's, lowest first).
#[allow(deprecated)]
fn level_rank(l: LoggingLevel) -> u8 {
    match l {
        LoggingLevel::Debug => 0,
        LoggingLevel::Info => 1,
        LoggingLevel::Notice => 2,
        LoggingLevel::Warning => 3,
        LoggingLevel::Error => 4,
        LoggingLevel::Critical => 5,
        LoggingLevel::Alert => 6,
        LoggingLevel::Emergency => 7,
    }
}

/// The HTTP caller of a request, if it came over HTTP: its key decides
/// which users the request may act for.
fn caller(ctx: &RequestContext<RoleServer>) -> Option<crate::http::auth::Caller> {
    ctx.extensions
        .get::<http::request::Parts>()
        .and_then(|p| p.extensions.get::<crate::http::auth::Caller>())
        .cloned()
}

/// The user a tool call acts for, after the caller's key has had its say
/// (stdio clients are trusted as they are).
fn scoped_user(
    ctx: &RequestContext<RoleServer>,
    requested: Option<String>,
) -> Result<Option<String>, ToolError> {
    match caller(ctx) {
        Some(c) => c.user_for(requested.as_deref()).map_err(ToolError::Invalid),
        None => Ok(requested),
    }
}

/// [`scoped_user`] for reports: an admin key that names nobody sees
/// everyone's usage, as a local client does, not only its own user's.
fn scoped_report(
    ctx: &RequestContext<RoleServer>,
    requested: Option<String>,
) -> Result<Option<String>, ToolError> {
    match caller(ctx) {
        Some(c) => c
            .scope_for(requested.as_deref())
            .map_err(ToolError::Invalid),
        None => Ok(requested),
    }
}

/// Builds a tool result: Markdown for people, structured JSON for programs.
fn result<T: Serialize>(value: &T, text: String) -> Result<CallToolResult, McpError> {
    let json = serde_json::to_value(value)
        .map_err(|e| McpError::internal_error(format!("cannot serialise result: {e}"), None))?;
    let mut r = CallToolResult::success(vec![ContentBlock::text(text)]);
    r.structured_content = Some(json);
    Ok(r)
}

/// Sends each new budget alert to the client as an MCP logging
/// notification (level `warning`, logger `budget`), so clients that show
/// server logs surface it even when the tool text is not read.
///
/// Logging is deprecated by SEP-2577 in the spec work after 2025-11-25, but
/// it is still the only server-to-client message that protocol version and
/// today's clients offer for this, so we keep using it knowingly.
#[allow(deprecated)]
async fn notify_alerts(
    peer: &rmcp::Peer<RoleServer>,
    min_level: &AtomicU8,
    alerts: &[crate::budget::alerts::BudgetAlert],
) {
    if level_rank(LoggingLevel::Warning) < min_level.load(Ordering::Relaxed) {
        return;
    }
    for a in alerts {
        let data = serde_json::to_value(a).unwrap_or_else(|_| serde_json::json!(a.message));
        let note =
            LoggingMessageNotificationParam::new(LoggingLevel::Warning, data).with_logger("budget");
        if let Err(e) = peer.notify_logging_message(note).await {
            tracing::warn!(error = %e, "could not send the budget alert notification");
        }
    }
}

/// A tool error the model can read and act on.
fn tool_error(e: ToolError) -> Result<CallToolResult, McpError> {
    let prefix = match &e {
        ToolError::Invalid(_) => "Invalid argument",
        ToolError::BudgetRefused(_) => "Refused by budget",
        ToolError::ProviderFailed(_) => "Provider failure",
        ToolError::ContextTooLong(_) => "Prompt too long",
        ToolError::ProvidersBusy { .. } => "Providers busy (try again later)",
        ToolError::Ledger(_) => "Ledger unavailable",
    };
    // Redacted here too: every error text a client sees passes this one
    // place, whatever path built it.
    let text = crate::secrets::redact(&format!("{prefix}: {e}"));
    tracing::info!(error = %text, "tool error");
    Ok(CallToolResult::error(vec![ContentBlock::text(text)]))
}

#[tool_router]
impl CostServer {
    /// A server over `core`.
    pub fn new(core: Arc<Optimizer>) -> CostServer {
        CostServer {
            core,
            tool_router: Self::tool_router(),
            observer: None,
            min_level: Arc::default(),
        }
    }

    /// A server whose calls are reported to `observer`.
    pub fn with_observer(core: Arc<Optimizer>, observer: Arc<dyn CallObserver>) -> CostServer {
        CostServer {
            observer: Some(observer),
            ..CostServer::new(core)
        }
    }

    #[tool(
        name = "complete_prompt",
        description = "Answer a prompt with the cheapest model that can handle it. Scores the prompt's complexity, picks a tier (free → cheap → medium → premium) and model, calls it (falling back to another provider on failure), and records the real cost against the budget. Returns the answer, cost, tokens, model, why it was chosen, and the saving against an always-premium baseline. Use force_model / force_provider / tier to override routing, prefer: \"quality\" when quality matters more than cost (a score near a tier boundary then takes the stronger tier), budget_limit to cap this call.",
        output_schema = schema_for_output::<Completion>(),
        annotations(
            title = "Complete prompt (cost-optimised)",
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = false,
            open_world_hint = true
        )
    )]
    async fn complete_prompt(
        &self,
        Parameters(mut args): Parameters<CompleteArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, McpError> {
        args.user_id = match scoped_user(&ctx, args.user_id.take()) {
            Ok(u) => u,
            Err(e) => return tool_error(e),
        };
        if caller(&ctx).is_some_and(|c| !c.admin)
            && let Err(e) = self.core.require_priced_model(args.force_model.as_deref())
        {
            return tool_error(e);
        }
        // A plain key rates only its own user's calls.
        args.feedback_owner = caller(&ctx).filter(|c| !c.admin).and_then(|c| c.user_id);
        let _in_flight = self.observer.as_ref().map(|o| o.call_started());
        let core = self.core.clone();
        let sink = Arc::new(ProgressSink::default());
        // When the client asked for progress, report the streamed answer's
        // growth a few times a second (not per token: that would flood it).
        let ticker = ctx.meta.get_progress_token().map(|token| {
            let sink = sink.clone();
            let peer = ctx.peer.clone();
            tokio::spawn(async move {
                let mut last = 0;
                let mut interval = tokio::time::interval(PROGRESS_INTERVAL);
                loop {
                    interval.tick().await;
                    let n = sink.chars.load(Ordering::Relaxed);
                    if n != last {
                        last = n;
                        let note = ProgressNotificationParam::new(token.clone(), n as f64)
                            .with_message(format!("{n} characters of the answer received"));
                        if peer.notify_progress(note).await.is_err() {
                            break;
                        }
                    }
                }
            })
        });
        // Dropping the call's future on cancellation stops the provider
        // request and releases its budget reservation.
        let outcome = tokio::select! {
            r = core.complete(&args, sink.as_ref()) => match r {
                Ok(c) => {
                    if let Some(o) = &self.observer {
                        o.completed(&c);
                    }
                    notify_alerts(&ctx.peer, &self.min_level, &c.alerts).await;
                    let text = render::completion(&c);
                    result(&c, text)
                }
                Err(e) => {
                    if let Some(o) = &self.observer {
                        o.failed(&e);
                    }
                    let alerts = std::mem::take(
                        &mut *sink.alerts.lock().unwrap_or_else(|e| e.into_inner()),
                    );
                    notify_alerts(&ctx.peer, &self.min_level, &alerts).await;
                    tool_error(e)
                }
            },
            _ = ctx.ct.cancelled() => {
                tracing::info!("complete_prompt cancelled by the client");
                Err(McpError::internal_error("cancelled by the client", None))
            }
        };
        if let Some(t) = ticker {
            t.abort();
        }
        // Cancelled: the dropped call recorded its attempt at an estimate
        // (its guard), and no later code of the call ran to alert on it. The
        // session is still open, so the client hears of a crossing now, as
        // does the webhook, not at the next call (which may never come).
        if ctx.ct.is_cancelled() {
            let alerts = self.core.alerts_after_cancel(args.user_id.as_deref());
            notify_alerts(&ctx.peer, &self.min_level, &alerts).await;
        }
        outcome
    }

    #[tool(
        name = "check_model_costs",
        description = "List model prices (USD per million input/output tokens, cached input, context window) from the pricing catalog, for the enabled providers' routing models by default, or filtered by provider or model name. Give a prompt to see its estimated cost on each model.",
        output_schema = schema_for_output::<CostTable>(),
        annotations(title = "Check model costs", read_only_hint = true, open_world_hint = false)
    )]
    async fn check_model_costs(
        &self,
        Parameters(args): Parameters<CostArgs>,
    ) -> Result<CallToolResult, McpError> {
        match self.core.check_costs(&args) {
            Ok(t) => result(&t, render::cost_table(&t)),
            Err(e) => tool_error(e),
        }
    }

    #[tool(
        name = "get_recommendation",
        description = "Analyse a prompt without calling any model: its complexity score and the reasons behind it, the tier and model complete_prompt would use, fallbacks, the best alternative in each other tier with estimated costs, and the saving against an always-premium baseline.",
        output_schema = schema_for_output::<Recommendation>(),
        annotations(title = "Get routing recommendation", read_only_hint = true, open_world_hint = false)
    )]
    async fn get_recommendation(
        &self,
        Parameters(mut args): Parameters<RecommendArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, McpError> {
        args.user_id = match scoped_user(&ctx, args.user_id.take()) {
            Ok(u) => u,
            Err(e) => return tool_error(e),
        };
        match self.core.recommend(&args) {
            Ok(r) => result(&r, render::recommendation(&r)),
            Err(e) => tool_error(e),
        }
    }

    #[tool(
        name = "query_usage",
        description = "Spending report from the local ledger: total cost and calls in a period (last `days`, default 30, or `since` a date), savings against always-premium, breakdowns by model, provider and day (or tier/user via group_by), and the budget status with forecast.",
        output_schema = schema_for_output::<UsageReport>(),
        meta = app::usage_tool_meta(),
        annotations(title = "Query usage and spending", read_only_hint = true, open_world_hint = false)
    )]
    async fn query_usage(
        &self,
        Parameters(mut args): Parameters<UsageArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, McpError> {
        args.user_id = match scoped_report(&ctx, args.user_id.take()) {
            Ok(u) => u,
            Err(e) => return tool_error(e),
        };
        // Reports read the ledger for as long as a period takes: on the
        // blocking pool, not on one of the two runtime workers every
        // call's streaming and the protocol share.
        let core = self.core.clone();
        match tokio::task::spawn_blocking(move || core.usage(&args)).await {
            Ok(Ok(u)) => result(&u, render::usage(&u)),
            Ok(Err(e)) => tool_error(e),
            Err(e) => tool_error(ToolError::Ledger(format!("usage report failed: {e}"))),
        }
    }

    #[tool(
        name = "set_budget",
        description = "Set or change a spending limit (USD per month, or per the budget's period) with alert thresholds (fractions of the limit; configured default, normally 0.5, 0.8, 1.0) and a mode: block (refuse calls that could cross the limit; the usual default), downgrade (route cheaper past the first threshold), or warn (alert only). On an existing budget, settings left out keep their current values. Returns the resulting budget status.",
        output_schema = schema_for_output::<BudgetUpdate>(),
        annotations(
            title = "Set budget",
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = true,
            // A new limit already past a threshold sends the configured
            // webhook or e-mail alert.
            open_world_hint = true
        )
    )]
    async fn set_budget(
        &self,
        Parameters(mut args): Parameters<SetBudgetArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, McpError> {
        // A key that could raise its own limit would make limits pointless.
        if caller(&ctx).is_some_and(|c| !c.admin) {
            return tool_error(ToolError::Invalid(
                "setting budgets needs an admin API key (`keys create --admin`)".into(),
            ));
        }
        if args.global != Some(true) {
            args.user_id = match scoped_user(&ctx, args.user_id.take()) {
                Ok(u) => u,
                Err(e) => return tool_error(e),
            };
        }
        match self.core.set_budget(&args) {
            Ok(b) => {
                notify_alerts(&ctx.peer, &self.min_level, &b.alerts).await;
                result(&b, render::budget_update(&b))
            }
            Err(e) => tool_error(e),
        }
    }
}

/// Why a tool's arguments do not deserialize, naming the field (`None`
/// when they do, or the tool is not ours: the router answers those).
///
/// Why here and not in rmcp: its `Parameters<T>` reports serde's message
/// alone ("invalid type: string \"1\", expected f64"), which names no
/// field, so a model sending five numbers cannot tell which one to fix.
fn argument_error(name: &str, args: Option<&rmcp::model::JsonObject>) -> Option<String> {
    fn check<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Option<String> {
        serde_path_to_error::deserialize::<_, T>(v).err().map(|e| {
            let path = e.path().to_string();
            if path == "." {
                e.into_inner().to_string()
            } else {
                format!("{path}: {}", e.into_inner())
            }
        })
    }
    let v = serde_json::Value::Object(args.cloned().unwrap_or_default());
    match name {
        "complete_prompt" => check::<CompleteArgs>(v),
        "get_recommendation" => check::<RecommendArgs>(v),
        "check_model_costs" => check::<CostArgs>(v),
        "query_usage" => check::<UsageArgs>(v),
        "set_budget" => check::<SetBudgetArgs>(v),
        _ => None,
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for CostServer {
    /// Arguments that do not fit their tool are refused as a tool error
    /// naming the field (see [`argument_error`]); the rest go to the
    /// tool router, as the macro's default `call_tool` does.
    async fn call_tool(
        &self,
        request: rmcp::model::CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::CallToolResponse, McpError> {
        if let Some(e) = argument_error(&request.name, request.arguments.as_ref()) {
            return tool_error(ToolError::Invalid(e)).map(Into::into);
        }
        let tcc = rmcp::handler::server::tool::ToolCallContext::new(self, request, context);
        self.tool_router.call(tcc).await
    }

    /// Budget alerts are sent as `warning` logging notifications; a client
    /// that sets a more severe minimum (`error` and up) gets none.
    #[allow(deprecated)]
    async fn set_level(
        &self,
        request: SetLevelRequestParams,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        tracing::info!(level = ?request.level, "client set the log level");
        self.min_level
            .store(level_rank(request.level), Ordering::Relaxed);
        Ok(())
    }

    // `logging` is advertised for budget alerts; see `notify_alerts`.
    #[allow(deprecated)]
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_logging()
                .enable_resources()
                .build(),
        )
        .with_server_info(Implementation::new(
            env!("CARGO_PKG_NAME"),
            env!("CARGO_PKG_VERSION"),
        ))
        .with_protocol_version(ProtocolVersion::V_2025_11_25)
        .with_instructions(
            "Cost-optimised LLM calls. Use get_recommendation to see which model a prompt \
                 needs and what it would cost; complete_prompt to get an answer from the cheapest \
                 capable model with its real cost recorded; check_model_costs for prices; \
                 query_usage for spending and savings; set_budget to set a monthly limit.",
        )
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, McpError> {
        Ok(ListResourcesResult::with_all_items(vec![app::resource()]))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, McpError> {
        // A plain HTTP key sees only its own user's calls.
        let user = caller(&context)
            .filter(|c| !c.admin)
            .and_then(|c| c.user_id);
        let core = self.core.clone();
        tokio::task::spawn_blocking(move || app::read(&core, &request.uri, user))
            .await
            .map_err(|e| McpError::internal_error(format!("dashboard failed: {e}"), None))?
            .map(Into::into)
    }
}

/// How long the server waits, after the client hangs up, for alert
/// deliveries still in flight (rmcp's own client gives a child 3 s after
/// closing stdin before it sends SIGTERM).
const SHUTDOWN_FLUSH: std::time::Duration = std::time::Duration::from_secs(3);

/// Serves MCP over stdin/stdout until the client disconnects.
pub async fn serve_stdio(core: Arc<Optimizer>) -> anyhow::Result<()> {
    let server = CostServer::new(core.clone());
    // Non-blocking pipes when the client launched us with pipes (as MCP
    // clients do): reads and writes stay on the IO reactor instead of a
    // blocking-pool thread hand-off per message, which dominated the
    // latency of small requests. Anything else falls back to plain stdio.
    // Our transport reads the lines itself (bounded, 16 MiB) so that junk
    // gets the JSON-RPC error reply rmcp's own transport would not send.
    let (stdin, stdout) = rmcp::transport::stdio_pipes();
    let running = server
        .serve(stdio::StdioTransport::new(stdin, stdout))
        .await?;
    tracing::info!("MCP server ready on stdio");
    let _redelivery = Optimizer::keep_redelivering_alerts(&core);
    let reason = running.waiting().await?;
    tracing::info!(?reason, "MCP client disconnected");
    // Alert deliveries run in the background; a client that hangs up right
    // after the call that crossed a threshold must not cut them off, or the
    // ledger would show an alert with no delivery record. Bounded, because
    // a client closing stdin expects the process to exit soon.
    if tokio::time::timeout(SHUTDOWN_FLUSH, core.flush_alerts())
        .await
        .is_err()
    {
        tracing::warn!("alert deliveries still running at exit; abandoned");
    }
    Ok(())
}
