//! `serve --http`: the same core over HTTP for servers, containers and
//! every tool that speaks the OpenAI API.
//!
//! Routes (one file per concern):
//! - `/mcp`: MCP streamable HTTP (rmcp's transport), the same five tools as
//!   stdio;
//! - `/v1/chat/completions`, `/v1/models`: the OpenAI-compatible proxy
//!   ([`openai`]);
//! - `/health`, `/ready`, `/v1/usage`, `/v1/recommendation`, `PUT /v1/budget`,
//!   `/dashboard` ([`rest`]); `/metrics` ([`metrics`]).
//!
//! Around them, outermost first: a request id (`x-request-id`, generated
//! unless the client sent one, echoed back and put in every log line of
//! the request), a trace span, CORS (only if origins are configured), a
//! body size limit, the `Host`/`Origin` guard against DNS rebinding, the
//! metrics, and bearer-key auth ([`auth`]) on everything but the probes.

pub mod auth;
pub mod metrics;
pub mod openai;
pub mod rest;
pub mod sessions;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post, put};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnResponse, TraceLayer};

use crate::config::HttpSettings;
use crate::ledger::KeyReader;
use crate::mcp::{CallObserver, CostServer};
use crate::optimizer::{Completion, Optimizer};

use metrics::Metrics;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// How long, after the calls in flight are done, idle MCP streams get to
/// close before the server ends them.
const MCP_STREAM_GRACE: Duration = Duration::from_secs(1);
/// How long shutdown waits for alert deliveries (webhook, e-mail).
const ALERT_FLUSH: Duration = Duration::from_secs(3);

/// Calls in flight (chat completions and MCP `complete_prompt`), so
/// shutdown can let them finish.
#[derive(Default)]
pub struct InFlight {
    n: AtomicUsize,
    zero: Notify,
}

/// Counts one call while alive.
pub struct InFlightGuard(Arc<InFlight>);

impl InFlight {
    /// Starts counting a call.
    pub fn start(self: &Arc<Self>) -> InFlightGuard {
        self.n.fetch_add(1, Ordering::SeqCst);
        InFlightGuard(self.clone())
    }

    async fn wait_zero(&self) {
        loop {
            let notified = self.zero.notified();
            if self.n.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if self.0.n.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.zero.notify_waiters();
        }
    }
}

/// State shared by every handler.
#[derive(Clone)]
pub struct AppState {
    /// The core.
    pub core: Arc<Optimizer>,
    /// The Prometheus registry.
    pub metrics: Arc<Metrics>,
    /// Calls in flight.
    pub in_flight: Arc<InFlight>,
    /// Whether every request (but the probes) needs a key.
    pub require_auth: bool,
    /// API-key lookups, off the ledger's write connection (the error when
    /// there is no ledger).
    pub keys: Result<Arc<KeyReader>, String>,
    /// The last readiness verdict (see [`rest::ready`]).
    pub readiness: Arc<rest::Readiness>,
    /// Cancelled when the shutdown grace runs out with calls still in
    /// flight: a streamed answer then ends with an error event before its
    /// connection closes, not with a bare end of stream a client would
    /// take for a whole answer.
    pub abandoned: CancellationToken,
}

impl CallObserver for AppState {
    fn call_started(&self) -> Box<dyn Send> {
        Box::new(self.in_flight.start())
    }

    fn completed(&self, c: &Completion) {
        self.metrics.record_completion(c);
    }

    fn failed(&self, e: &crate::optimizer::ToolError) {
        self.metrics.call_error(e);
    }
}

/// Which `Host` and `Origin` values are accepted (the DNS-rebinding guard).
#[derive(Debug, Clone)]
struct HostGuard {
    /// Accepted hosts, with or without port; empty: any.
    hosts: Vec<String>,
    /// Accepted origins beyond loopback ones (the CORS list).
    origins: Vec<String>,
    /// Whether browser origins on loopback hosts are accepted (loopback
    /// binds only).
    loopback_origins: bool,
}

const LOOPBACK_HOSTS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

fn host_name(authority: &str) -> &str {
    let a = authority.trim();
    if let Some(rest) = a.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match a.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => a,
    }
}

/// True when an `allowed_hosts` entry (a name, with or without a port)
/// names this machine's loopback interface only.
fn names_loopback(entry: &str) -> bool {
    let entry = entry.trim();
    // A bare IPv6 address first: "::1" would otherwise lose its last
    // group to the port split.
    if let Ok(ip) = entry.parse::<std::net::IpAddr>() {
        return ip.is_loopback();
    }
    let name = host_name(entry).trim_matches(|c| c == '[' || c == ']');
    let name = name.to_ascii_lowercase();
    LOOPBACK_HOSTS.contains(&name.as_str())
        || name.ends_with(".localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl HostGuard {
    fn host_ok(&self, host: Option<&str>) -> bool {
        if self.hosts.is_empty() {
            return true;
        }
        let Some(host) = host else { return false };
        let host = host.trim().to_ascii_lowercase();
        let name = host_name(&host);
        self.hosts.iter().any(|h| {
            let h = h.to_ascii_lowercase();
            h == host || h.trim_matches(|c| c == '[' || c == ']') == name
        })
    }

    fn origin_ok(&self, origin: Option<&str>) -> bool {
        let Some(origin) = origin else { return true };
        let origin = origin.trim().to_ascii_lowercase();
        if self
            .origins
            .iter()
            .any(|o| o.to_ascii_lowercase() == origin)
        {
            return true;
        }
        if !self.loopback_origins {
            // Not a loopback bind: a key is required, which a page on
            // another site cannot send, so the origin adds nothing.
            return self.hosts.is_empty();
        }
        let Some(authority) = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
        else {
            return false;
        };
        let name = host_name(authority);
        LOOPBACK_HOSTS.contains(&name)
    }
}

async fn guard_host(State(guard): State<Arc<HostGuard>>, req: Request, next: Next) -> Response {
    // The probes answer anyone (no key, nothing secret, nothing spent), and
    // container health checks and orchestrators call them by IP or
    // 127.0.0.1, which a list naming the public host would refuse: the
    // image's HEALTHCHECK then failed whenever allowed_hosts was set.
    if matches!(req.uri().path(), "/health" | "/ready") {
        return next.run(req).await;
    }
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()));
    if !guard.host_ok(host) {
        return openai::error_response(
            StatusCode::FORBIDDEN,
            "Host not allowed (DNS-rebinding protection); add it to http.allowed_hosts",
            "permission_error",
            Some("host_not_allowed"),
        );
    }
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok());
    if !guard.origin_ok(origin) {
        return openai::error_response(
            StatusCode::FORBIDDEN,
            "Origin not allowed; add it to http.cors_origins",
            "permission_error",
            Some("origin_not_allowed"),
        );
    }
    next.run(req).await
}

/// Everything needed to build the router.
pub struct Server {
    state: AppState,
    settings: HttpSettings,
    loopback: bool,
    mcp_cancel: CancellationToken,
}

impl Server {
    /// Checks the configuration for `addr` and prepares the state. Refuses
    /// a non-loopback address (or `require_auth`) with no active key: such
    /// a server would either be open to anyone or refuse everyone.
    pub fn new(core: Arc<Optimizer>, addr: SocketAddr) -> Result<Server> {
        let settings = core.settings().http.clone();
        let loopback = addr.ip().is_loopback();
        // A loopback bind that allows other host names is reached through
        // a reverse proxy or a tunnel (the TLS recipe in DEPLOY.md): open
        // to whoever reaches that name, so keys are required as for a
        // public bind.
        let public_names = settings.allowed_hosts.iter().any(|h| !names_loopback(h));
        let require_auth = !loopback || settings.require_auth || public_names;
        if require_auth {
            let keys = core
                .ledger()
                .map_err(anyhow::Error::new)
                .and_then(|l| l.active_api_keys().map_err(anyhow::Error::new))
                .context("cannot read the API keys from the ledger")?;
            if keys == 0 {
                if loopback && public_names {
                    bail!(
                        "refusing to serve {addr} to the host names in http.allowed_hosts without \
                         API keys: a reverse proxy or tunnel makes it reachable by anyone who \
                         reaches that name. Create a client key with \
                         `ai-cost-optimizer keys create --user ID`"
                    );
                }
                if loopback {
                    bail!(
                        "require_auth is on but no API key exists; create one with \
                         `ai-cost-optimizer keys create --user ID`"
                    );
                }
                bail!(
                    "refusing to serve on {addr} without API keys: anyone who can reach a \
                     non-loopback address could spend your budget. Create a client key with \
                     `ai-cost-optimizer keys create --user ID` (or bind 127.0.0.1)"
                );
            }
        }
        let keys = core
            .ledger()
            .map(|l| Arc::new(KeyReader::new(l)))
            .map_err(|e| e.to_string());
        let metrics = Arc::new(Metrics::new());
        core.set_charge_listener(metrics.clone());
        Ok(Server {
            state: AppState {
                core,
                metrics,
                in_flight: Arc::new(InFlight::default()),
                require_auth,
                keys,
                readiness: Arc::default(),
                abandoned: CancellationToken::new(),
            },
            settings,
            loopback,
            mcp_cancel: CancellationToken::new(),
        })
    }

    fn host_guard(&self) -> HostGuard {
        let hosts = if !self.settings.allowed_hosts.is_empty() {
            self.settings.allowed_hosts.clone()
        } else if self.loopback {
            LOOPBACK_HOSTS.iter().map(|s| s.to_string()).collect()
        } else {
            Vec::new()
        };
        HostGuard {
            hosts,
            origins: self.settings.cors_origins.clone(),
            loopback_origins: self.loopback,
        }
    }

    /// The whole application.
    pub fn router(&self) -> Router {
        let state = self.state.clone();
        let guard = self.host_guard();

        let mut mcp_config = StreamableHttpServerConfig::default()
            .with_cancellation_token(self.mcp_cancel.clone())
            .with_max_request_body_bytes(self.settings.max_body_bytes);
        // Our own guard checks Host and Origin on every route; rmcp's copy
        // of the check stays on with the same lists, as a second line.
        mcp_config = if guard.hosts.is_empty() {
            mcp_config.disable_allowed_hosts()
        } else {
            mcp_config.with_allowed_hosts(guard.hosts.clone())
        };
        let mut origins = guard.origins.clone();
        if guard.loopback_origins {
            for h in ["localhost", "127.0.0.1", "[::1]"] {
                origins.push(format!("http://{h}:*"));
                origins.push(format!("https://{h}:*"));
            }
            mcp_config = mcp_config.with_allowed_origins(origins);
        } else if !guard.origins.is_empty() {
            mcp_config = mcp_config.with_allowed_origins(origins);
        }
        let observer: Arc<dyn CallObserver> = Arc::new(state.clone());
        let core = state.core.clone();
        let manager = Arc::new(LocalSessionManager::default());
        let owners = Arc::new(sessions::SessionOwners::new(manager.clone()));
        let mcp = StreamableHttpService::new(
            move || Ok(CostServer::with_observer(core.clone(), observer.clone())),
            manager,
            mcp_config,
        );
        // Inside the key check (added below): a session is its key's.
        let mcp = Router::new()
            .nest_service("/mcp", mcp)
            .layer(middleware::from_fn_with_state(
                owners,
                sessions::owned_sessions,
            ));

        let protected = mcp
            .route("/v1/chat/completions", post(openai::chat_completions))
            .route("/v1/models", get(openai::models))
            .route("/v1/models/{*id}", get(openai::model))
            .route("/v1/usage", get(rest::usage))
            .route("/v1/recommendation", get(rest::recommendation))
            .route("/v1/budget", put(rest::set_budget))
            .route("/dashboard", get(rest::dashboard))
            .route("/metrics", get(metrics::handler))
            .route_layer(middleware::from_fn_with_state(
                state.clone(),
                auth::require_key,
            ));
        let open = Router::new()
            .route("/health", get(rest::health))
            .route("/ready", get(rest::ready));

        let mut app = protected
            .merge(open)
            .fallback(|| async {
                openai::error_response(
                    StatusCode::NOT_FOUND,
                    "no such route",
                    "invalid_request_error",
                    Some("not_found"),
                )
            })
            .layer(middleware::from_fn_with_state(
                state.clone(),
                metrics::track,
            ))
            .layer(middleware::from_fn_with_state(Arc::new(guard), guard_host))
            .layer(RequestBodyLimitLayer::new(self.settings.max_body_bytes))
            // axum's body extractors stop at 2 MiB by their own default,
            // whatever the layer above allows: set theirs to the same limit.
            .layer(axum::extract::DefaultBodyLimit::max(
                self.settings.max_body_bytes,
            ))
            .layer({
                let limit = self.settings.max_body_bytes;
                middleware::map_response(move |uri, response| json_errors(uri, response, limit))
            })
            .with_state(state);
        if !self.settings.cors_origins.is_empty() {
            let origins: Vec<HeaderValue> = self
                .settings
                .cors_origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok())
                .collect();
            app = app.layer(
                CorsLayer::new()
                    .allow_origin(AllowOrigin::list(origins))
                    .allow_methods([Method::GET, Method::POST, Method::PUT, Method::DELETE])
                    // Whatever headers the listed origins' preflights ask
                    // for: client libraries add their own (the `openai` JS
                    // SDK sends six `x-stainless-*` headers on every call,
                    // which a fixed list blocked). Safe: the origins are the
                    // operator's own list, and a key is still needed.
                    .allow_headers(AllowHeaders::mirror_request())
                    .expose_headers([
                        REQUEST_ID,
                        HeaderName::from_static("mcp-session-id"),
                        HeaderName::from_static("x-cost-usd"),
                        HeaderName::from_static("x-routed-model"),
                        HeaderName::from_static("x-routed-provider"),
                        HeaderName::from_static("x-routed-tier"),
                        HeaderName::from_static("x-complexity"),
                        HeaderName::from_static("x-ledger-request-id"),
                        // Read by OpenAI's SDKs to decide whether to send a
                        // failed call again: hidden from a page, a billed
                        // failure was retried twice.
                        HeaderName::from_static("x-should-retry"),
                        http::header::RETRY_AFTER,
                    ]),
            );
        }
        app.layer(PropagateRequestIdLayer::new(REQUEST_ID))
            .layer(
                TraceLayer::new_for_http()
                    .make_span_with(|req: &Request| {
                        let id = req
                            .headers()
                            .get(REQUEST_ID)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("-");
                        // Only method, path and id: never headers (the key).
                        tracing::info_span!(
                            "http",
                            request_id = %id,
                            method = %req.method(),
                            path = %req.uri().path(),
                        )
                    })
                    .on_response(DefaultOnResponse::new().level(tracing::Level::INFO)),
            )
            .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
    }

    /// Serves on `listener` until SIGTERM or ctrl-c, then shuts down
    /// gracefully: stop accepting, let calls in flight finish (bounded by
    /// `http.shutdown_grace`), close MCP streams, flush alert deliveries.
    pub async fn run(self, listener: tokio::net::TcpListener) -> Result<()> {
        let app = self.router();
        let stop = CancellationToken::new();
        {
            let stop = stop.clone();
            tokio::spawn(async move {
                shutdown_signal().await;
                stop.cancel();
            });
        }
        let serve =
            axum::serve(listener, app).with_graceful_shutdown(stop.clone().cancelled_owned());
        let mut serve = Box::pin(serve.into_future());
        tokio::select! {
            r = &mut serve => { r.context("the HTTP server failed")?; }
            _ = stop.cancelled() => {
                let grace = self.settings.shutdown_grace;
                tracing::info!(?grace, "shutting down: no new connections; waiting for calls in flight");
                // Keep polling the server while waiting: its next poll drops
                // the listener, so new clients are refused at once instead
                // of sitting in the accept backlog for the whole grace.
                let drained = tokio::time::timeout(grace, self.state.in_flight.wait_zero());
                tokio::pin!(drained);
                let mut served = false;
                let waited = tokio::select! {
                    r = &mut serve => {
                        served = true;
                        r.context("the HTTP server failed")?;
                        drained.await
                    }
                    w = &mut drained => w,
                };
                // After the grace, no more waiting on MCP streams: a
                // container host kills the process soon after its own stop
                // timeout, and calls abandoned here are only recorded (at
                // their estimate) once the process winds down.
                let stream_grace = if waited.is_err() {
                    tracing::warn!("calls still in flight after the grace period; abandoning them");
                    self.state.abandoned.cancel();
                    Duration::ZERO
                } else {
                    MCP_STREAM_GRACE
                };
                // Standalone MCP streams never end by themselves.
                if !served && tokio::time::timeout(stream_grace, &mut serve).await.is_err() {
                    self.mcp_cancel.cancel();
                    if tokio::time::timeout(Duration::from_secs(1), &mut serve).await.is_err() {
                        tracing::warn!("connections still open at exit; closing them");
                    }
                }
            }
        }
        if tokio::time::timeout(ALERT_FLUSH, self.state.core.flush_alerts())
            .await
            .is_err()
        {
            tracing::warn!("alert deliveries still running at exit; abandoned");
        }
        tracing::info!("HTTP server stopped");
        Ok(())
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("ctrl-c received"),
        _ = term => tracing::info!("SIGTERM received"),
    }
}

/// Parses the bind address (`HOST:PORT`, IPv6 in brackets).
pub fn parse_addr(addr: &str) -> Result<SocketAddr> {
    addr.trim().parse().with_context(|| {
        format!(
            "{addr:?} is not an address to bind; use IP:PORT, e.g. 127.0.0.1:8080 or 0.0.0.0:8080"
        )
    })
}

/// `serve --http ADDR`: binds, says where on stderr, and serves.
pub async fn serve_http(core: Arc<Optimizer>, addr: &str) -> Result<()> {
    let addr = parse_addr(addr)?;
    let server = Server::new(core, addr)?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let bound = listener.local_addr().context("no local address")?;
    tracing::info!(%bound, auth = server.state.require_auth, "HTTP server ready");
    // A stable line for scripts and tests that bind port 0.
    eprintln!("ai-cost-optimizer: listening on http://{bound}");
    let _redelivery = Optimizer::keep_redelivering_alerts(&server.state.core);
    server.run(listener).await
}

/// Errors axum or a layer answers by itself — a body over the limit, a
/// wrong method, a query string that does not parse — come as plain text
/// (or nothing); OpenAI clients and scripts read `{"error": {…}}`, as every
/// other error here is. Headers (`Allow`, `WWW-Authenticate`) are kept.
/// `/mcp` answers in its own protocol and is left alone.
async fn json_errors(uri: axum::http::Uri, response: Response, body_limit: usize) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error())
        || is_json
        || uri.path().starts_with("/mcp")
    {
        return response;
    }
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, 8 * 1024)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes).trim().to_string();
    let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
        // The layer's own words ("length limit exceeded") say neither
        // which limit nor where it is set.
        format!(
            "the request body is over this server's limit of {body_limit} bytes \
             (COST_OPTIMIZER_HTTP_MAX_BODY_BYTES, [http] max_body_bytes)"
        )
    } else if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        text
    };
    let kind = if status.is_server_error() {
        "api_error"
    } else {
        "invalid_request_error"
    };
    let mut r = openai::error_response(status, &message, kind, None);
    for (k, v) in &parts.headers {
        if k != header::CONTENT_TYPE && k != header::CONTENT_LENGTH {
            r.headers_mut().append(k.clone(), v.clone());
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::names_loopback;

    /// Which `allowed_hosts` entries keep a loopback server keyless: only
    /// names of this machine, with or without a port, IPv6 included.
    #[test]
    fn loopback_entries_are_told_from_public_names() {
        for e in [
            "localhost",
            "LOCALHOST:8080",
            "127.0.0.1",
            "127.0.0.1:8080",
            "127.1.2.3",
            "::1",
            "[::1]",
            "[::1]:8080",
            "0:0:0:0:0:0:0:1",
            "app.localhost",
        ] {
            assert!(names_loopback(e), "{e}");
        }
        for e in [
            "optimizer.example.com",
            "optimizer.example.com:443",
            "10.0.0.5",
            "[2001:db8::1]:8080",
            "2001:db8::1",
            "localhost.example.com",
        ] {
            assert!(!names_loopback(e), "{e}");
        }
    }
}
