//! Client API keys: how they are made, stored (a SHA-256 only), checked on
//! every request, and what each key may do.
//!
//! A key looks like `aco_<id>_<secret>`: `id` is public (it names the key in
//! `keys list` and lets the server find the row without scanning), `secret`
//! is 256 random bits. The ledger keeps `SHA-256(key)`; a salt or a slow
//! hash buys nothing for a 256-bit random secret. The stored and presented
//! hashes are compared in constant time.
//!
//! Each key belongs to a user, whose budget its calls spend. A plain key can
//! only act as that user; an admin key may name any user and set budgets.

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tracing::Instrument;

use crate::ledger::{ApiKeyRow, KeyReader, Ledger};

use super::AppState;
use super::openai::error_response;

const PREFIX: &str = "aco_";

/// Who is calling, put into each request's extensions by [`require_key`].
#[derive(Debug, Clone)]
pub struct Caller {
    /// The key's id; `None` when no key was needed or given (loopback
    /// without `require_auth`).
    pub key_id: Option<String>,
    /// The key's user; `None` without a key.
    pub user_id: Option<String>,
    /// May act for any user and set budgets. True without a key: on
    /// loopback without `require_auth` the caller is trusted like a stdio
    /// client.
    pub admin: bool,
}

impl Caller {
    /// The user a request acts for: the key's own user unless an admin
    /// names another. A plain key naming someone else is refused rather
    /// than silently re-pointed, so a misconfigured client notices.
    pub fn user_for(&self, requested: Option<&str>) -> Result<Option<String>, String> {
        let requested = requested.map(str::trim).filter(|s| !s.is_empty());
        match (&self.user_id, requested) {
            (_, Some(r)) if self.admin => Ok(Some(r.to_string())),
            (Some(own), Some(r)) if own != r => Err(format!(
                "this API key belongs to user {own:?} and cannot act for user {r:?}"
            )),
            (Some(own), _) => Ok(Some(own.clone())),
            (None, r) => Ok(r.map(str::to_string)),
        }
    }

    /// Whose figures a report (usage, dashboard) shows when the caller asks
    /// for `requested`. Unlike [`Caller::user_for`], an admin who names
    /// nobody sees what a local caller would, everyone's usage, not only
    /// the admin key's own user's calls. (Budgets still default to the
    /// key's user: a "default" user's budget caps nobody on a server where
    /// every call comes with a key.)
    pub fn scope_for(&self, requested: Option<&str>) -> Result<Option<String>, String> {
        if self.admin {
            return Ok(requested
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string));
        }
        self.user_for(requested)
    }
}

/// A key just created: the only time its secret exists outside the client.
pub struct NewKey {
    /// The full key, to be shown once.
    pub key: String,
    /// What was stored.
    pub row: ApiKeyRow,
}

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

fn random_bytes<const N: usize>() -> anyhow::Result<[u8; N]> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| anyhow::anyhow!("no system randomness: {e}"))?;
    Ok(b)
}

/// Makes a key for `user_id` and stores its hash.
pub fn create_key(
    ledger: &Ledger,
    user_id: &str,
    name: Option<&str>,
    admin: bool,
    now_ms: i64,
) -> anyhow::Result<NewKey> {
    let id = hex::encode(random_bytes::<6>()?);
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes::<32>()?);
    let key = format!("{PREFIX}{id}_{secret}");
    let row = ApiKeyRow {
        id,
        key_sha256: sha256_hex(&key),
        user_id: user_id.to_string(),
        name: name.map(str::to_string),
        admin,
        created_ms: now_ms,
        revoked_ms: None,
    };
    ledger.insert_api_key(&row)?;
    Ok(NewKey { key, row })
}

/// Why a presented key was refused. Deliberately coarse: which part was
/// wrong is not the client's business.
#[derive(Debug, PartialEq, Eq)]
pub enum KeyError {
    /// No `Authorization: Bearer` header.
    Missing,
    /// No key, on an open loopback server, from a request a proxy forwarded.
    Forwarded,
    /// Malformed, unknown, wrong or revoked.
    Invalid,
    /// The ledger could not be read.
    Unavailable(String),
}

/// The public id inside a whole key (its middle part), if `text` has a
/// key's shape: `keys revoke` given the key itself finds its id, and
/// never echoes the secret back.
pub fn key_id_of(text: &str) -> Option<&str> {
    text.strip_prefix(PREFIX)
        .and_then(|rest| rest.split_once('_'))
        .map(|(id, _)| id)
        .filter(|id| id.len() == 12 && id.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Checks a presented key against the ledger.
pub fn verify(keys: &KeyReader, presented: &str) -> Result<ApiKeyRow, KeyError> {
    let id = key_id_of(presented).ok_or(KeyError::Invalid)?;
    let row = keys
        .api_key(id)
        .map_err(|e| KeyError::Unavailable(e.to_string()))?
        .ok_or(KeyError::Invalid)?;
    let presented_hash = sha256_hex(presented);
    let same: bool = presented_hash
        .as_bytes()
        .ct_eq(row.key_sha256.as_bytes())
        .into();
    if !same || row.revoked_ms.is_some() {
        return Err(KeyError::Invalid);
    }
    Ok(row)
}

/// The bearer token: `None` when no `Authorization` header was sent,
/// `Some(Err)` when one was sent that is not `Bearer <token>` (a key pasted
/// without the scheme, `Basic` credentials...). The second must be refused,
/// not treated as "no key": on an open loopback server that would quietly
/// act as the admin instead of telling the client its key is not used.
fn bearer(req: &Request) -> Option<Result<&str, KeyError>> {
    let v = req.headers().get(header::AUTHORIZATION)?;
    let token = v
        .to_str()
        .ok()
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, token)| scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty())
        .map(|(_, token)| token.trim());
    Some(token.ok_or(KeyError::Invalid))
}

/// Whether a reverse proxy forwarded `req`, by the headers proxies add:
/// Caddy and Traefik always, cloud load balancers and most proxy setups;
/// nginx only when configured to (`proxy_set_header X-Forwarded-For`), so
/// this is a second line, not a substitute for keys behind a proxy.
fn forwarded(req: &Request) -> bool {
    [
        "forwarded",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-real-ip",
    ]
    .iter()
    .any(|h| req.headers().contains_key(*h))
}

/// Middleware: resolves the caller from the bearer key. A key of ours that
/// is given is always checked (a wrong key fails even where none is needed,
/// so a misconfigured client notices); a missing key fails only when the
/// server requires one.
pub async fn require_key(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let given = match bearer(&req) {
        // Where no key is needed, a token that is not one of ours is a
        // client's placeholder (`api_key="EMPTY"`, as for vLLM; LangChain
        // and the OpenAI SDKs refuse to start without one) or a provider
        // key inherited from the shell: no key was meant. Ours, and
        // malformed headers, are still checked.
        Some(Ok(token)) if !state.require_auth && !token.starts_with(PREFIX) => None,
        other => other,
    };
    let caller = match given {
        None if state.require_auth => return refuse(KeyError::Missing),
        // An open (loopback, no keys required) server reached through a
        // reverse proxy: the request is not from this machine, so it must
        // not act as the local admin.
        None if forwarded(&req) => return refuse(KeyError::Forwarded),
        None => Caller {
            key_id: None,
            user_id: None,
            admin: true,
        },
        Some(Err(e)) => return refuse(e),
        Some(Ok(token)) => {
            let checked = match &state.keys {
                Ok(keys) => verify(keys, token),
                Err(e) => Err(KeyError::Unavailable(e.clone())),
            };
            match checked {
                Ok(row) => Caller {
                    key_id: Some(row.id),
                    user_id: Some(row.user_id),
                    admin: row.admin,
                },
                Err(e) => return refuse(e),
            }
        }
    };
    // The key's id (never the key) on every log line of the request. An
    // inner span rather than a field recorded on the request's span: the
    // stderr and file log layers would each append a recorded field.
    let span = match &caller.key_id {
        Some(id) => tracing::info_span!("key", key_id = %id),
        None => tracing::Span::none(),
    };
    req.extensions_mut().insert(caller);
    next.run(req).instrument(span).await
}

fn refuse(e: KeyError) -> Response {
    let (status, msg, code) = match e {
        KeyError::Missing => (
            StatusCode::UNAUTHORIZED,
            "missing API key: send `Authorization: Bearer <key>` (create one with `ai-cost-optimizer keys create --user ID`)".to_string(),
            "missing_api_key",
        ),
        KeyError::Forwarded => (
            StatusCode::UNAUTHORIZED,
            "missing API key: this request came through a proxy (it carries Forwarded or \
             X-Forwarded-* headers), and only clients on this machine may call an open server \
             without a key. Send `Authorization: Bearer <key>`; the operator should set \
             http.require_auth = true and create keys with `ai-cost-optimizer keys create --user ID`"
                .to_string(),
            "missing_api_key",
        ),
        KeyError::Invalid => (
            StatusCode::UNAUTHORIZED,
            "invalid or revoked API key".to_string(),
            "invalid_api_key",
        ),
        KeyError::Unavailable(m) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot check API keys: the ledger is unavailable ({m})"),
            "ledger_unavailable",
        ),
    };
    let mut r = error_response(status, &msg, "authentication_error", Some(code));
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    r.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ledger() -> (tempfile::TempDir, Ledger) {
        let dir = tempfile::tempdir().unwrap();
        let l = Ledger::open(&dir.path().join("l.sqlite3")).unwrap();
        (dir, l)
    }

    #[test]
    fn a_created_key_verifies_and_a_changed_one_does_not() {
        let (_d, l) = ledger();
        let k = create_key(&l, "alice", Some("ci"), false, 1).unwrap();
        assert!(k.key.starts_with("aco_"));
        assert_ne!(k.row.key_sha256, k.key, "only the hash is stored");
        assert_eq!(
            verify(&KeyReader::new(&l), &k.key).unwrap().user_id,
            "alice"
        );
        let mut wrong = k.key.clone();
        let last = wrong.pop().unwrap();
        wrong.push(if last == 'A' { 'B' } else { 'A' });
        assert_eq!(verify(&KeyReader::new(&l), &wrong), Err(KeyError::Invalid));
        assert_eq!(
            verify(&KeyReader::new(&l), "sk-something"),
            Err(KeyError::Invalid)
        );
        assert_eq!(
            verify(&KeyReader::new(&l), "aco_zz_x"),
            Err(KeyError::Invalid)
        );
        l.revoke_api_key(&k.row.id, 2).unwrap();
        assert_eq!(verify(&KeyReader::new(&l), &k.key), Err(KeyError::Invalid));
    }

    #[test]
    fn plain_keys_act_only_for_their_user() {
        let plain = Caller {
            key_id: Some("k".into()),
            user_id: Some("alice".into()),
            admin: false,
        };
        assert_eq!(plain.user_for(None), Ok(Some("alice".into())));
        assert_eq!(plain.user_for(Some("alice")), Ok(Some("alice".into())));
        assert!(plain.user_for(Some("bob")).is_err());
        let admin = Caller {
            admin: true,
            ..plain.clone()
        };
        assert_eq!(admin.user_for(Some("bob")), Ok(Some("bob".into())));
        assert_eq!(admin.user_for(None), Ok(Some("alice".into())));
        // Reports: an admin naming nobody means everyone.
        assert_eq!(admin.scope_for(None), Ok(None));
        assert_eq!(admin.scope_for(Some(" bob ")), Ok(Some("bob".into())));
        assert_eq!(plain.scope_for(None), Ok(Some("alice".into())));
        assert!(plain.scope_for(Some("bob")).is_err());
        let open = Caller {
            key_id: None,
            user_id: None,
            admin: true,
        };
        assert_eq!(open.user_for(None), Ok(None));
        assert_eq!(open.user_for(Some("bob")), Ok(Some("bob".into())));
    }
}
