//! API keys and the redaction that keeps them out of logs, errors and the ledger.
//!
//! Every key the server reads is wrapped in [`Secret`] (whose `Debug` and
//! `Display` never show the value) and registered with a process-wide list.
//! [`redact`] replaces any registered value in a string; the log writer and
//! every provider error message pass through it, so a key echoed back by a
//! provider or a proxy still never reaches an output.

use std::sync::RwLock;

/// Values shorter than this are not registered: redacting a 3-character
/// "key" would mangle ordinary text, and no real API key is that short.
const MIN_SECRET_LEN: usize = 8;

static REGISTERED: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// A credential read from the environment. The value is reachable only
/// through [`Secret::expose`], which the HTTP clients call when building
/// a request header.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps `value` and registers it for redaction.
    pub fn new(value: impl Into<String>) -> Self {
        let value = value.into();
        register(&value);
        Secret(value)
    }

    /// The raw value, for an outgoing request header and nothing else.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// Adds a value to the process-wide redaction list.
pub fn register(value: &str) {
    let value = value.trim();
    if value.len() < MIN_SECRET_LEN {
        return;
    }
    let mut list = REGISTERED.write().unwrap_or_else(|e| e.into_inner());
    if !list.iter().any(|v| v == value) {
        list.push(value.to_string());
        // Longest first, so a key that contains another is replaced whole.
        list.sort_by_key(|v| std::cmp::Reverse(v.len()));
    }
}

/// Registers the credentials a URL carries: the password (or lone user
/// token) of `user:pass@host`, and every query value, since proxies and
/// self-hosted gateways are often reached as `https://token@host/v1` or
/// `…/v1?key=…`. reqwest's errors quote the URL, so without this a base URL
/// override could carry a credential into a log line or an error.
pub fn register_url_credentials(url: &str) {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if let Some((userinfo, _host)) = authority.rsplit_once('@') {
        register(userinfo);
        if let Some((_user, password)) = userinfo.split_once(':') {
            register(password);
        }
    }
    if let Some((_, query)) = url.split_once('?') {
        let query = query.split('#').next().unwrap_or("");
        for pair in query.split('&') {
            register(pair.split_once('=').map_or(pair, |(_, v)| v));
        }
    }
}

/// Returns `text` with every registered secret replaced by `[REDACTED]`.
pub fn redact(text: &str) -> String {
    let list = REGISTERED.read().unwrap_or_else(|e| e.into_inner());
    let mut out = text.to_string();
    for secret in list.iter() {
        if out.contains(secret.as_str()) {
            out = out.replace(secret.as_str(), "[REDACTED]");
        }
    }
    out
}

/// A short, non-reversible description of a key for `doctor`: its length and
/// last four characters are enough for a person to tell which key is set.
pub fn describe(secret: &Secret) -> String {
    let v = secret.expose();
    let tail: String = v
        .chars()
        .rev()
        .take(4)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    if v.chars().count() <= 12 {
        format!("set ({} characters)", v.chars().count())
    } else {
        format!("set (…{tail}, {} characters)", v.chars().count())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_credentials_are_registered_but_hosts_are_not() {
        register_url_credentials(
            "https://gateway-user:pw-3f9a7c1e2b@proxy.example.com:8443/v1?api_key=qk-55aa77bb99&x=1#frag",
        );
        let shown = redact(
            "error sending request for url (https://gateway-user:pw-3f9a7c1e2b@proxy.example.com:8443/v1?api_key=qk-55aa77bb99&x=1)",
        );
        assert!(!shown.contains("pw-3f9a7c1e2b"), "{shown}");
        assert!(!shown.contains("qk-55aa77bb99"), "{shown}");
        assert!(shown.contains("proxy.example.com:8443/v1"), "{shown}");
        // A plain URL registers nothing.
        register_url_credentials("http://127.0.0.1:11434");
        assert_eq!(redact("http://127.0.0.1:11434"), "http://127.0.0.1:11434");
    }

    #[test]
    fn debug_and_display_hide_the_value() {
        let s = Secret::new("sk-test-very-secret-value-1234");
        assert_eq!(format!("{s:?}"), "Secret(***)");
        assert_eq!(format!("{s}"), "***");
    }

    #[test]
    fn redact_replaces_registered_values() {
        let _s = Secret::new("sk-redact-me-0987654321");
        let out = redact("error: key sk-redact-me-0987654321 was rejected");
        assert_eq!(out, "error: key [REDACTED] was rejected");
    }

    #[test]
    fn short_values_are_not_registered() {
        register("abc");
        assert_eq!(redact("abc def"), "abc def");
    }

    #[test]
    fn describe_shows_only_the_tail() {
        let s = Secret::new("sk-ant-abcdefghijklmnop-WXYZ");
        let d = describe(&s);
        assert!(d.contains("WXYZ"));
        assert!(!d.contains("abcdefgh"));
    }
}
