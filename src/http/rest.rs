//! REST for probes, dashboards and scripts: `/health`, `/ready`,
//! `/v1/usage`, `/v1/recommendation`, `PUT /v1/budget` and `/dashboard`.
//! Each is a thin layer over the same [`Optimizer`](crate::optimizer::Optimizer)
//! operation as the MCP tool of the same purpose, with the caller's key
//! deciding whose data it may see or change.

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use crate::optimizer::{RecommendArgs, SetBudgetArgs, UsageArgs};

use super::AppState;
use super::auth::Caller;
use super::openai::{error_response, tool_error_response};

fn forbidden(msg: &str) -> Response {
    error_response(StatusCode::FORBIDDEN, msg, "permission_error", None)
}

fn bad_request(msg: &str) -> Response {
    error_response(StatusCode::BAD_REQUEST, msg, "invalid_request_error", None)
}

/// `GET /health`: the process is up and serving. Cheap and unauthenticated
/// so container health checks need no key.
pub async fn health() -> Response {
    axum::Json(json!({"status": "ok", "version": env!("CARGO_PKG_VERSION")})).into_response()
}

/// The last readiness check and when it ran. The check takes the ledger's
/// write lock; `/ready` needs no key, so without this a flood of probes
/// would queue every call's hold and settlement behind them.
#[derive(Default)]
pub struct Readiness(tokio::sync::Mutex<Option<(std::time::Instant, Vec<String>)>>);

/// How long a readiness verdict is reused.
const READY_TTL: std::time::Duration = std::time::Duration::from_secs(2);

/// `GET /ready`: the server can do useful work: the ledger takes writes
/// and at least one provider is enabled. 503 with the reasons otherwise.
/// Checked at most once per [`READY_TTL`]; probes meanwhile get that answer.
pub async fn ready(State(state): State<AppState>) -> Response {
    let mut last = state.readiness.0.lock().await;
    let reasons = match &*last {
        Some((at, reasons)) if at.elapsed() < READY_TTL => reasons.clone(),
        _ => {
            let reasons = check_ready(&state).await;
            *last = Some((std::time::Instant::now(), reasons.clone()));
            reasons
        }
    };
    drop(last);
    if reasons.is_empty() {
        axum::Json(json!({"status": "ready"})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"status": "not ready", "reasons": reasons})),
        )
            .into_response()
    }
}

/// Why the server is not ready (empty: it is).
async fn check_ready(state: &AppState) -> Vec<String> {
    let core = state.core.clone();
    tokio::task::spawn_blocking(move || {
        let mut reasons = Vec::new();
        match core.ledger() {
            Ok(l) => {
                if let Err(e) = l.check_writable() {
                    reasons.push(format!("ledger not writable: {e}"));
                }
            }
            Err(e) => reasons.push(format!("ledger unavailable: {e}")),
        }
        if core.registry().enabled().next().is_none() {
            reasons.push(
                "no provider is enabled: set at least one provider API key (see `ai-cost-optimizer doctor`)"
                    .to_string(),
            );
        }
        reasons
    })
    .await
    .unwrap_or_else(|e| vec![format!("readiness check failed: {e}")])
}

/// `GET /v1/usage`: the `query_usage` report as JSON. Query parameters as
/// the tool's arguments (`days`, `since`, `user_id`, `group_by`); a plain
/// key sees only its own user.
pub async fn usage(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(mut args): Query<UsageArgs>,
) -> Response {
    args.user_id = match caller.scope_for(args.user_id.as_deref()) {
        Ok(u) => u,
        Err(e) => return forbidden(&e),
    };
    let core = state.core.clone();
    match tokio::task::spawn_blocking(move || core.usage(&args)).await {
        Ok(Ok(r)) => axum::Json(r).into_response(),
        Ok(Err(e)) => tool_error_response(&e),
        Err(e) => error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("usage failed: {e}"),
            "api_error",
            None,
        ),
    }
}

/// `GET /v1/recommendation?prompt=…`: the `get_recommendation` analysis.
pub async fn recommendation(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(mut args): Query<RecommendArgs>,
) -> Response {
    args.user_id = match caller.user_for(args.user_id.as_deref()) {
        Ok(u) => u,
        Err(e) => return forbidden(&e),
    };
    match state.core.recommend(&args) {
        Ok(r) => axum::Json(r).into_response(),
        Err(e) => tool_error_response(&e),
    }
}

/// `PUT /v1/budget`: `set_budget` with a JSON body of the tool's
/// arguments. Only admin keys (or an open loopback server): a key that
/// could raise its own limit would make the limit meaningless.
pub async fn set_budget(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Response {
    if !caller.admin {
        return forbidden("setting budgets needs an admin key (`keys create --admin`)");
    }
    let mut args: SetBudgetArgs = match serde_json::from_slice(&body) {
        Ok(a) => a,
        Err(e) => return bad_request(&format!("invalid request body: {e}")),
    };
    if args.global != Some(true) {
        args.user_id = match caller.user_for(args.user_id.as_deref()) {
            Ok(u) => u,
            Err(e) => return forbidden(&e),
        };
    }
    match state.core.set_budget(&args) {
        Ok(b) => axum::Json(b).into_response(),
        Err(e) => tool_error_response(&e),
    }
}

/// Query of `GET /dashboard`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DashboardQuery {
    #[serde(default)]
    days: Option<i64>,
    #[serde(default)]
    user_id: Option<String>,
}

/// `GET /dashboard`: the self-contained HTML page of `ai-cost-optimizer
/// dashboard`, rendered per request.
pub async fn dashboard(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<DashboardQuery>,
) -> Response {
    let user_id = match caller.scope_for(q.user_id.as_deref()) {
        Ok(u) => u,
        Err(e) => return forbidden(&e),
    };
    let opts = crate::dashboard::DashboardOptions {
        days: q.days.unwrap_or(30),
        user_id,
    };
    let core = state.core.clone();
    let page = tokio::task::spawn_blocking(move || {
        let now = crate::optimizer::system_clock()();
        crate::dashboard::collect(&core, &opts, now).map(|d| crate::dashboard::render(&d))
    })
    .await;
    match page {
        Ok(Ok(html)) => (
            // The page is self-contained (inline CSS/SVG, no scripts from
            // elsewhere); forbid loading anything else.
            [(
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; style-src 'unsafe-inline'; img-src data:; script-src 'unsafe-inline'",
            )],
            Html(html),
        )
            .into_response(),
        Ok(Err(e)) => tool_error_response(&e),
        Err(e) => error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("dashboard failed: {e}"),
            "api_error",
            None,
        ),
    }
}
