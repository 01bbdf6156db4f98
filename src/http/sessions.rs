//! MCP-over-HTTP sessions belong to the key that opened them.
//!
//! rmcp's streamable HTTP transport knows sessions only by their id (the
//! `Mcp-Session-Id` header). Every request to `/mcp` is authenticated, and
//! each tool call acts for the key that sent it, but the session itself
//! was anybody's: another valid key that learned an id (from a log, a
//! proxy, a shared machine) could end the session (`DELETE`) or attach to
//! its stream (`GET`) and read what the server sends it, budget alerts
//! included. This layer records which key opened each session and answers
//! any other caller as rmcp answers an unknown session (404), so a
//! session's existence is not revealed either.
//!
//! A request naming a session this layer never saw opened is refused the
//! same way: the owner's record is written before the response that
//! carries the new id leaves, so no legitimate request can come first.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;

use super::auth::Caller;

/// The header rmcp reads and writes the session id in.
const SESSION_ID: &str = "mcp-session-id";
/// Owner records kept before the first sweep for ended sessions.
const FIRST_SWEEP: usize = 1024;

/// Which key (by id; `None` for a keyless loopback caller) opened each
/// live session.
pub struct SessionOwners {
    /// rmcp's session table, to forget sessions that ended on their own
    /// (idle timeout, the client gone) without a `DELETE`.
    manager: Arc<LocalSessionManager>,
    inner: Mutex<Owners>,
}

struct Owners {
    by_session: HashMap<String, Option<String>>,
    /// Sweep ended sessions when the table reaches this size: twice what
    /// was live at the last sweep, so the work per new session stays
    /// constant and the table stays within twice the live sessions.
    sweep_at: usize,
}

/// Whether `key` may use the session `id`.
enum Access {
    Allowed,
    Refused,
}

impl SessionOwners {
    /// An empty table over rmcp's session manager.
    pub fn new(manager: Arc<LocalSessionManager>) -> SessionOwners {
        SessionOwners {
            manager,
            inner: Mutex::new(Owners {
                by_session: HashMap::new(),
                sweep_at: FIRST_SWEEP,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Owners> {
        // The table holds no invariant a panic could break halfway.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn access(&self, id: &str, key: Option<&str>) -> Access {
        match self.lock().by_session.get(id) {
            Some(owner) if owner.as_deref() == key => Access::Allowed,
            _ => Access::Refused,
        }
    }

    fn forget(&self, id: &str) {
        self.lock().by_session.remove(id);
    }

    async fn record(&self, id: String, key: Option<String>) {
        let sweep = {
            let mut o = self.lock();
            o.by_session.insert(id, key);
            o.by_session.len() >= o.sweep_at
        };
        if sweep {
            let live = self.manager.sessions.read().await;
            let mut o = self.lock();
            o.by_session.retain(|id, _| live.contains_key(id.as_str()));
            o.sweep_at = (o.by_session.len() * 2).max(FIRST_SWEEP);
        }
    }

    /// How many sessions have an owner on record (for tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().by_session.len()
    }
}

/// What rmcp answers for a session it does not have.
fn no_such_session() -> Response {
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "Not Found: Session not found",
    )
        .into_response()
}

/// Middleware on `/mcp` (inside the key check): a request naming a
/// session must come from the key that opened it; a response opening a
/// session records its key; a successful `DELETE` forgets it.
pub async fn owned_sessions(
    State(owners): State<Arc<SessionOwners>>,
    req: Request,
    next: Next,
) -> Response {
    let key = req
        .extensions()
        .get::<Caller>()
        .and_then(|c| c.key_id.clone());
    let session = req
        .headers()
        .get(SESSION_ID)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if let Some(id) = &session
        && let Access::Refused = owners.access(id, key.as_deref())
    {
        return no_such_session();
    }
    let deleting = req.method() == Method::DELETE;
    let mut resp = next.run(req).await;
    // rmcp ends a session with 202 Accepted; the Python SDK counts only
    // 200 and 204 as ended, and logged "Session termination failed: 202"
    // at every client's exit. 204 is what a finished DELETE with no body
    // says (rmcp's own client takes either).
    if deleting && resp.status() == StatusCode::ACCEPTED {
        *resp.status_mut() = StatusCode::NO_CONTENT;
    }
    match session {
        None => {
            if let Some(id) = resp.headers().get(SESSION_ID).and_then(|v| v.to_str().ok()) {
                owners.record(id.to_owned(), key).await;
            }
        }
        Some(id) if deleting && resp.status().is_success() => owners.forget(&id),
        Some(_) => {}
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sessions_that_ended_are_swept_as_the_table_grows() {
        let owners = SessionOwners::new(Arc::new(LocalSessionManager::default()));
        // None of these is live in rmcp's table: the sweep at FIRST_SWEEP
        // drops them all, so the table never holds more than that.
        for i in 0..FIRST_SWEEP * 3 {
            owners.record(format!("s{i}"), Some("k".into())).await;
            assert!(owners.len() < FIRST_SWEEP, "{} at {i}", owners.len());
        }
    }

    #[tokio::test]
    async fn only_the_opening_key_may_use_a_session() {
        let owners = SessionOwners::new(Arc::new(LocalSessionManager::default()));
        owners.record("s1".into(), Some("alice".into())).await;
        owners.record("s2".into(), None).await;
        assert!(matches!(
            owners.access("s1", Some("alice")),
            Access::Allowed
        ));
        assert!(matches!(owners.access("s1", Some("bob")), Access::Refused));
        assert!(matches!(owners.access("s1", None), Access::Refused));
        assert!(matches!(owners.access("s2", None), Access::Allowed));
        assert!(matches!(owners.access("s2", Some("bob")), Access::Refused));
        assert!(matches!(owners.access("s3", None), Access::Refused));
        owners.forget("s1");
        assert!(matches!(
            owners.access("s1", Some("alice")),
            Access::Refused
        ));
    }
}
