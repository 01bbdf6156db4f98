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

/// Registered values, longest first, each with whether pieces of it are
/// redacted too ([`redact`]): yes for keys, no for whole URLs and their
/// path segments, which hold ordinary words.
static REGISTERED: RwLock<Vec<(String, bool)>> = RwLock::new(Vec::new());

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
    // A whole URL is matched whole; its secret parts are registered by
    // [`register_url`].
    add(value, !value.contains("://"));
}

fn add(value: &str, pieces: bool) {
    let value = value.trim();
    if value.len() < MIN_SECRET_LEN {
        return;
    }
    let mut list = REGISTERED.write().unwrap_or_else(|e| e.into_inner());
    match list.iter_mut().find(|(v, _)| v == value) {
        Some(entry) => entry.1 |= pieces,
        None => {
            list.push((value.to_string(), pieces));
            // Longest first, so a key that contains another is replaced whole.
            list.sort_by_key(|(v, _)| std::cmp::Reverse(v.len()));
        }
    }
}

/// Registers a URL that is itself a secret (a webhook, the SMTP URL):
/// whole, its credentials and query values ([`register_url_credentials`]),
/// and its long path segments (a Slack or Discord token is the path),
/// so the token is redacted wherever it shows up without the rest of the
/// URL (a normalised host, a changed port, the path alone).
pub fn register_url(url: &str) {
    register(url);
    register_url_credentials(url);
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let path = rest.split(['?', '#']).next().unwrap_or("");
    for segment in path.split('/').skip(1) {
        if segment.len() >= 16 {
            add(segment, false);
        }
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
        // reqwest sends URL credentials decoded, as a Basic authorization
        // header: a proxy that echoes it back shows them in base64.
        let decoded = percent_decode(userinfo);
        register(&decoded);
        if let Some((_user, password)) = decoded.split_once(':') {
            register(password);
        }
        use base64::Engine as _;
        let basic = if decoded.contains(':') {
            decoded.clone()
        } else {
            format!("{decoded}:")
        };
        register(&base64::engine::general_purpose::STANDARD.encode(basic.as_bytes()));
    }
    // A gateway's token in the path (`/key/<token>/v1`): a long segment
    // of letters and digits mixed. `v1`, `api`, `openai` are not.
    let path = rest.split(['?', '#']).next().unwrap_or("");
    for segment in path.split('/').skip(1) {
        let mixed = segment.chars().any(|c| c.is_ascii_digit())
            && segment.chars().any(|c| c.is_ascii_alphabetic());
        // Whole only: its pieces are words (`ai-cost-optimizer` in an
        // ntfy topic) that must stay readable everywhere else.
        if segment.len() >= 16 && mixed {
            add(segment, false);
        }
    }
    if let Some((_, query)) = url.split_once('?') {
        let query = query.split('#').next().unwrap_or("");
        for pair in query.split('&') {
            let (name, value) = pair.split_once('=').unwrap_or(("", pair));
            // Settings (`tls=required`, `api-version=2024-06-01`) are not
            // secrets: registered, every "Field required" in a provider's
            // error became "Field [REDACTED]". A value is kept back when
            // its name says it is a credential or it looks like a token.
            if is_credential_name(name) {
                register(value);
            } else if looks_like_a_token(value) {
                add(value, false);
            }
        }
    }
}

/// A query parameter named like a credential (`key`, `api_key`, `token`,
/// `sig`, `password`, `auth`…).
fn is_credential_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    [
        "key", "token", "secret", "sig", "pass", "pwd", "auth", "cred", "session",
    ]
    .iter()
    .any(|w| name.contains(w))
}

/// A value that looks like a token rather than a setting: long, with
/// letters and digits mixed (`region=us-east-1` and
/// `api-version=2024-06-01` are settings).
fn looks_like_a_token(value: &str) -> bool {
    value.len() >= 16
        && value.chars().any(|c| c.is_ascii_digit())
        && value.chars().any(|c| c.is_ascii_alphabetic())
}

/// `%XX` escapes decoded (invalid ones kept as they are).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Some(v) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Shortest run of key characters taken for a piece of a secret: shorter
/// ones could be ordinary words or ids that a secret happens to contain.
const MIN_PIECE: usize = 12;

/// Returns `text` with every registered secret replaced by `[REDACTED]`,
/// and every piece of one: providers and gateways echo keys cut short
/// (`sk-proj-abcdefghijkl...wxyz`), and such a prefix names most of the key.
pub fn redact(text: &str) -> String {
    let list = REGISTERED.read().unwrap_or_else(|e| e.into_inner());
    if list.is_empty() {
        return text.to_string();
    }
    let mut out = text.to_string();
    for (secret, _) in list.iter() {
        if out.contains(secret.as_str()) {
            out = out.replace(secret.as_str(), "[REDACTED]");
        }
    }
    // Runs of the characters keys are made of, cut at anything else
    // (the dots or ellipsis of a shortened key included).
    let is_key_char = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    let mut pieces = Vec::new();
    let mut start = None;
    for (i, c) in out.char_indices().chain(std::iter::once((out.len(), ' '))) {
        match (is_key_char(c) && i < out.len(), start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                if i - s >= MIN_PIECE {
                    pieces.push((s, i));
                }
                start = None;
            }
            _ => {}
        }
    }
    for &(s, e) in pieces.iter().rev() {
        let piece = &out[s..e];
        // Pieces of keys only: a whole registered URL (a webhook, the SMTP
        // URL) holds ordinary words too (`ai-cost-optimizer-alerts` would
        // hide every path with the program's name in it); its secret parts
        // are registered on their own by `register_url`.
        if piece != "REDACTED"
            && list
                .iter()
                .any(|(secret, pieces)| *pieces && secret.contains(piece))
        {
            out.replace_range(s..e, "[REDACTED]");
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

    /// Keys echoed cut short (a gateway's "sk-...-012...CDEF") lose the
    /// piece they show; ordinary words and ids do not.
    #[test]
    fn pieces_of_a_key_are_redacted() {
        let _s = Secret::new("sk-piece-AUDITKEY-0123456789abcdefABCDEF");
        let out = redact(
            "Incorrect API key provided: sk-piece-AUDITKEY-012...CDEF (model claude-sonnet-4-6)",
        );
        assert!(!out.contains("AUDITKEY"), "{out}");
        assert!(out.contains("claude-sonnet-4-6"), "{out}");
        let out = redact("key 0123456789abcdefAB is wrong");
        assert!(!out.contains("0123456789abcdef"), "{out}");
    }

    /// A webhook's token is redacted wherever it shows up, the URL around
    /// it or not; credentials in an SMTP URL too.
    #[test]
    fn a_secret_urls_token_is_redacted_alone() {
        register_url("https://hooks.slack.com/services/T01ABCDEF/B01ABCDEF/XyZ123secretTokenAbc9");
        let out = redact(
            "POST https://HOOKS.slack.com:443/services/T01ABCDEF/B01ABCDEF/XyZ123secretTokenAbc9 failed",
        );
        assert!(!out.contains("XyZ123secretTokenAbc9"), "{out}");
        register_url("smtp://apikey:SG.abcdEFGHijkl.mnopQRST1234@smtp.sendgrid.net:587");
        let out = redact("535 auth failed for SG.abcdEFGHijkl.mnopQRST1234");
        assert!(!out.contains("SG.abcdEFGHijkl.mnopQRST1234"), "{out}");
    }

    /// A registered URL is redacted whole, but the words in it are not
    /// redacted wherever they appear.
    #[test]
    fn words_of_a_registered_url_stay_readable() {
        register_url("https://ntfy.sh/ai-cost-optimizer-alerts-xyz");
        let out = redact("/home/me/.local/share/ai-cost-optimizer-alerts-x/ledger.sqlite3");
        assert!(out.contains("ai-cost-optimizer-alerts-x"), "{out}");
        assert_eq!(
            redact("POST https://ntfy.sh/ai-cost-optimizer-alerts-xyz failed"),
            "POST [REDACTED] failed"
        );
    }

    /// URL credentials go out decoded, as a Basic authorization header: its
    /// base64 is as secret as they are.
    #[test]
    fn url_credentials_in_basic_auth_form_are_redacted() {
        register_url_credentials("http://olluser:p%40ssw0rd-77zz@127.0.0.1:11434");
        use base64::Engine as _;
        let basic = base64::engine::general_purpose::STANDARD.encode("olluser:p@ssw0rd-77zz");
        let out = redact(&format!(
            "proxy said: Authorization: Basic {basic}; password p@ssw0rd-77zz"
        ));
        assert!(!out.contains(&basic), "{out}");
        assert!(!out.contains("p@ssw0rd-77zz"), "{out}");
    }

    /// Query settings of a URL are not secrets (the README's SMTP example
    /// has `tls=required`); credentials and tokens in a query are.
    #[test]
    fn query_settings_stay_readable_and_query_tokens_do_not() {
        register_url_credentials(
            "smtp://alerts%40example.com:pw-77aa88bb@smtp.example.com:587?tls=required&ehlo_domain=example&region=us-east-1&x=Qx7Zk29LmNpRtV55aa",
        );
        assert_eq!(
            redact("messages: Field required; opportunistic example in us-east-1"),
            "messages: Field required; opportunistic example in us-east-1"
        );
        assert!(!redact("token Qx7Zk29LmNpRtV55aa").contains("Qx7Zk29LmNpRtV55aa"));
        assert!(!redact("pw-77aa88bb").contains("pw-77aa88bb"));
        // A token in a gateway's path is one too; the path's words are not.
        register_url_credentials("https://gw.example.com/key/a1b2c3d4e5f6g7h8i9/openai/v1");
        assert_eq!(
            redact("https://gw.example.com/key/a1b2c3d4e5f6g7h8i9/openai/v1"),
            "https://gw.example.com/key/[REDACTED]/openai/v1"
        );
        // Whole, not in pieces: the words of a topic stay readable.
        register_url_credentials("https://ntfy.sh/ai-cost-optimizer-alerts-42");
        assert_eq!(
            redact("run `ai-cost-optimizer pricing refresh`"),
            "run `ai-cost-optimizer pricing refresh`"
        );
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
