//! Budget alerts: when spending crosses a threshold, say so exactly once per
//! period, through a webhook (generic JSON, Slack or Discord format), an MCP
//! notification to the connected client, and a line in the tool's text.
//!
//! "Exactly once" rests on the ledger's `alerts` table: a crossing is sent
//! only by the caller whose insert created its row. Delivery runs in the
//! background with retries and a timeout; every attempt is recorded, and a
//! failed delivery never fails the call that caused it.

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::BudgetStatus;
use crate::ledger::{DeliveryRow, GLOBAL_SCOPE, Ledger};

/// Payload shape a webhook receiver expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum WebhookFormat {
    /// A JSON object with every field of the alert.
    Json,
    /// Slack incoming webhook: `{"text": ...}`.
    Slack,
    /// Discord webhook: `{"content": ...}`.
    Discord,
}

impl WebhookFormat {
    /// Lowercase name, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookFormat::Json => "json",
            WebhookFormat::Slack => "slack",
            WebhookFormat::Discord => "discord",
        }
    }

    /// Parses a stored or typed name.
    pub fn parse(s: &str) -> Option<WebhookFormat> {
        match s.trim().to_ascii_lowercase().as_str() {
            "json" | "generic" => Some(WebhookFormat::Json),
            "slack" => Some(WebhookFormat::Slack),
            "discord" => Some(WebhookFormat::Discord),
            _ => None,
        }
    }
}

/// Where to POST alerts.
#[derive(Debug, Clone, PartialEq)]
pub struct Webhook {
    /// The URL (may embed a token: it is registered for redaction).
    pub url: String,
    /// Payload shape.
    pub format: WebhookFormat,
}

/// A threshold crossing fired by a call.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct BudgetAlert {
    /// Ledger id of the alert.
    pub id: i64,
    /// User id, or `*` for the global budget.
    pub scope: String,
    /// The threshold crossed (fraction of the limit).
    pub threshold: f64,
    /// Spend as a percentage of the limit.
    pub percent_used: f64,
    /// Spend in the period, USD.
    pub spent_usd: f64,
    /// The limit, USD.
    pub limit_usd: f64,
    /// `daily`, `weekly` or `monthly`.
    pub period: String,
    /// Start of the period (RFC 3339).
    pub period_start: String,
    /// What happens at the limit.
    pub mode: String,
    /// A sentence for people.
    pub message: String,
}

/// "The global" or "alice's": whose budget an alert sentence is about.
fn whose(status: &BudgetStatus) -> String {
    if status.user_id == GLOBAL_SCOPE {
        "The global".to_string()
    } else {
        format!("{}'s", status.user_id)
    }
}

impl BudgetAlert {
    /// Builds the alert for `status` crossing `threshold`.
    pub fn new(id: i64, status: &BudgetStatus, threshold: f64) -> BudgetAlert {
        let whose = whose(status);
        let message = format!(
            "{whose} {} budget crossed {}: {} of {} spent ({:.1}%) since {}. Mode: {}.",
            status.period,
            crate::render::percent(threshold),
            crate::render::usd(status.spent_usd),
            crate::render::usd(status.limit_usd),
            status.percent_used,
            status.period_start,
            status.mode.as_str()
        );
        BudgetAlert {
            id,
            scope: status.user_id.clone(),
            threshold,
            percent_used: status.percent_used,
            spent_usd: status.spent_usd,
            limit_usd: status.limit_usd,
            period: status.period.clone(),
            period_start: status.period_start.clone(),
            mode: status.mode.as_str().into(),
            message,
        }
    }

    /// An alert as recorded (`row`), for sending again: the budget `b`
    /// gives its period and mode.
    pub fn from_row(row: &crate::ledger::AlertRow, b: &super::Budget) -> BudgetAlert {
        let whose = if row.scope == GLOBAL_SCOPE {
            "The global".to_string()
        } else {
            format!("{}'s", row.scope)
        };
        let percent_used = if row.limit_usd > 0.0 {
            row.spent_usd / row.limit_usd * 100.0
        } else {
            0.0
        };
        let period_start = super::rfc3339(row.period_start_ms);
        let message = format!(
            "{whose} {} budget crossed {}: {} of {} spent ({:.1}%) since {}. Mode: {}. \
             (Sent again: the first delivery failed.)",
            b.period.as_str(),
            crate::render::percent(row.threshold),
            crate::render::usd(row.spent_usd),
            crate::render::usd(row.limit_usd),
            percent_used,
            period_start,
            b.mode.as_str()
        );
        BudgetAlert {
            id: row.id,
            scope: row.scope.clone(),
            threshold: row.threshold,
            percent_used,
            spent_usd: row.spent_usd,
            limit_usd: row.limit_usd,
            period: b.period.as_str().into(),
            period_start,
            mode: b.mode.as_str().into(),
            message,
        }
    }

    /// The alert for the top threshold (100%) of a budget that refused a
    /// call: in `block` and `downgrade` modes spend never reaches the limit
    /// itself (a call that could cross it is refused first), so without
    /// this the last alert never fired while calls were being refused.
    pub fn exhausted(id: i64, status: &BudgetStatus, threshold: f64) -> BudgetAlert {
        let mut a = BudgetAlert::new(id, status, threshold);
        let whose = whose(status);
        a.message = format!(
            "{whose} {} budget is used up: a call was refused because it could cost more than \
             what is left ({} of {} spent, {} held by calls in flight, since {}). Mode: {}.",
            status.period,
            crate::render::usd(status.spent_usd),
            crate::render::usd(status.limit_usd),
            crate::render::usd(status.reserved_usd),
            status.period_start,
            status.mode.as_str()
        );
        a
    }

    /// The webhook body in `format`.
    pub fn payload(&self, format: WebhookFormat) -> serde_json::Value {
        let text = format!(":warning: AI Cost Optimizer — {}", self.message);
        match format {
            WebhookFormat::Slack => json!({ "text": text }),
            WebhookFormat::Discord => json!({ "content": text }),
            WebhookFormat::Json => json!({
                "event": "budget_threshold_crossed",
                "alert_id": self.id,
                "scope": self.scope,
                "threshold": self.threshold,
                "percent_used": self.percent_used,
                "spent_usd": self.spent_usd,
                "limit_usd": self.limit_usd,
                "period": self.period,
                "period_start": self.period_start,
                "mode": self.mode,
                "message": self.message,
            }),
        }
    }
}

/// Delivery attempts per webhook alert.
pub const WEBHOOK_ATTEMPTS: u32 = 3;
/// Timeout of one webhook POST.
pub const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(5);

/// A webhook URL with everything after the host hidden, for the ledger and
/// logs: tokens usually live in the path (Slack, Discord) or the query.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = host.rsplit('@').next().unwrap_or(host);
    format!("{scheme}://{host}/…")
}

/// An error and its causes on one line (reqwest's own text names only the
/// outermost, "error sending request").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// POSTs `alert` to `hook`, retrying failures with backoff, and records
/// every attempt in the ledger. Returns whether it was delivered.
pub async fn deliver_webhook(
    http: &reqwest::Client,
    ledger: &Ledger,
    hook: &Webhook,
    alert: &BudgetAlert,
    backoff_base: Duration,
    now: impl Fn() -> i64,
) -> bool {
    crate::secrets::register_url(&hook.url);
    let body = alert.payload(hook.format);
    let target = redact_url(&hook.url);
    for attempt in 1..=WEBHOOK_ATTEMPTS {
        let result = http
            .post(&hook.url)
            .timeout(WEBHOOK_TIMEOUT)
            .json(&body)
            .send()
            .await;
        let (ok, status, error) = match result {
            Ok(r) if r.status().is_success() => (true, Some(r.status().as_u16()), None),
            // The POST reached the receiver, which answered with a redirect
            // (Google Apps Script runs the hook, then redirects to its
            // output). Not followed (the URL's secret would go along) and
            // not sent again: each retry would run the hook once more.
            Ok(r) if r.status().is_redirection() => {
                let to = crate::providers::errors::redirect_host(r.headers())
                    .map(|h| format!(" to {h}"))
                    .unwrap_or_default();
                let note = format!(
                    "the receiver answered HTTP {} (a redirect{to}, not followed); counted as \
                     delivered, since the POST reached it; if the hook has moved, set its new URL",
                    r.status().as_u16()
                );
                tracing::warn!(alert = alert.id, target, "{note}");
                (true, Some(r.status().as_u16()), Some(note))
            }
            Ok(r) => (
                false,
                Some(r.status().as_u16()),
                Some(format!("receiver answered HTTP {}", r.status().as_u16())),
            ),
            Err(e) => (
                false,
                None,
                // Without its URL: reqwest prints the URL normalised
                // (lower-cased host, `/` added before `?`), which the
                // redaction of the URL as configured would not match, and a
                // webhook URL's path or query is often its secret.
                Some(crate::secrets::redact(&if e.is_timeout() {
                    "timed out".to_string()
                } else {
                    error_chain(&e.without_url())
                })),
            ),
        };
        let row = DeliveryRow {
            alert_id: alert.id,
            channel: "webhook".into(),
            target: Some(target.clone()),
            attempt,
            ok,
            status,
            error: error.clone(),
        };
        if let Err(e) = ledger.record_delivery(&row, now()) {
            tracing::warn!(error = %e, "could not record an alert delivery");
        }
        if ok {
            tracing::info!(alert = alert.id, target, "budget alert delivered");
            return true;
        }
        tracing::warn!(
            alert = alert.id,
            target,
            attempt,
            error = error.as_deref().unwrap_or(""),
            "budget alert delivery failed"
        );
        if attempt < WEBHOOK_ATTEMPTS {
            tokio::time::sleep(backoff_base * 2u32.pow(attempt - 1)).await;
        }
    }
    false
}

/// SMTP settings for e-mailed alerts.
#[derive(Debug, Clone, PartialEq)]
pub struct EmailConfig {
    /// `smtp://user:pass@host:587?tls=required`, `smtps://…:465`, or plain
    /// `smtp://host:25` (registered for redaction: it holds a password).
    pub url: String,
    /// Sender address.
    pub from: String,
    /// Recipients.
    pub to: Vec<String>,
}

impl EmailConfig {
    /// Checks the URL and addresses before the first alert needs them.
    pub fn validate(&self) -> Result<(), String> {
        use lettre::message::Mailbox;
        lettre::AsyncSmtpTransport::<lettre::Tokio1Executor>::from_url(&self.url)
            .map_err(|e| format!("the SMTP URL is not valid: {e}"))?;
        self.from
            .parse::<Mailbox>()
            .map_err(|e| format!("alert e-mail sender {:?}: {e}", self.from))?;
        if self.to.is_empty() {
            return Err("alert e-mail needs at least one recipient".into());
        }
        for t in &self.to {
            t.parse::<Mailbox>()
                .map_err(|e| format!("alert e-mail recipient {t:?}: {e}"))?;
        }
        Ok(())
    }
}

/// E-mails `alert` through SMTP, retrying failures, recording every attempt.
pub async fn deliver_email(
    cfg: &EmailConfig,
    ledger: &Ledger,
    alert: &BudgetAlert,
    backoff_base: Duration,
    now: impl Fn() -> i64,
) -> bool {
    use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
    crate::secrets::register_url(&cfg.url);
    let target = cfg.to.join(", ");
    let build = || -> Result<(AsyncSmtpTransport<Tokio1Executor>, Message), String> {
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(&cfg.url)
            .map_err(|e| e.to_string())?
            .timeout(Some(WEBHOOK_TIMEOUT))
            .build();
        let mut msg = Message::builder()
            .from(cfg.from.parse().map_err(|e| format!("{e}"))?)
            .subject(format!(
                "Budget alert: {} {} budget at {:.0}%",
                if alert.scope == GLOBAL_SCOPE {
                    "global"
                } else {
                    alert.scope.as_str()
                },
                alert.period,
                alert.threshold * 100.0
            ));
        for t in &cfg.to {
            msg = msg.to(t.parse().map_err(|e| format!("{e}"))?);
        }
        let msg = msg
            .body(format!("{}\n\n— AI Cost Optimizer\n", alert.message))
            .map_err(|e| e.to_string())?;
        Ok((transport, msg))
    };
    let (transport, msg) = match build() {
        Ok(v) => v,
        Err(e) => {
            let row = DeliveryRow {
                alert_id: alert.id,
                channel: "email".into(),
                target: Some(target),
                attempt: 1,
                ok: false,
                status: None,
                error: Some(crate::secrets::redact(&e)),
            };
            let _ = ledger.record_delivery(&row, now());
            return false;
        }
    };
    for attempt in 1..=WEBHOOK_ATTEMPTS {
        let result = transport.send(msg.clone()).await;
        let (ok, status, error) = match &result {
            Ok(resp) => (true, resp.code().to_string().parse::<u16>().ok(), None),
            Err(e) => (false, None, Some(crate::secrets::redact(&e.to_string()))),
        };
        let row = DeliveryRow {
            alert_id: alert.id,
            channel: "email".into(),
            target: Some(target.clone()),
            attempt,
            ok,
            status,
            error,
        };
        if let Err(e) = ledger.record_delivery(&row, now()) {
            tracing::warn!(error = %e, "could not record an alert delivery");
        }
        if ok {
            return true;
        }
        if attempt < WEBHOOK_ATTEMPTS {
            tokio::time::sleep(backoff_base * 2u32.pow(attempt - 1)).await;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status() -> BudgetStatus {
        BudgetStatus {
            user_id: "alice".into(),
            period: "monthly".into(),
            timezone: "UTC".into(),
            period_start: "2026-11-01T00:00:00Z".into(),
            period_end: "2026-12-01T00:00:00Z".into(),
            limit_usd: 10.0,
            spent_usd: 8.2,
            reserved_usd: 0.0,
            remaining_usd: 1.8,
            percent_used: 82.0,
            forecast_usd: 9.0,
            alert_thresholds: vec![0.5, 0.8, 1.0],
            crossed_thresholds: vec![0.5, 0.8],
            next_threshold: Some(1.0),
            mode: super::super::BudgetMode::Block,
            is_default: false,
        }
    }

    #[test]
    fn payload_formats() {
        let a = BudgetAlert::new(7, &status(), 0.8);
        assert!(
            a.message.contains("alice's monthly budget crossed 80%"),
            "{}",
            a.message
        );
        let slack = a.payload(WebhookFormat::Slack);
        assert!(slack["text"].as_str().unwrap().contains("80%"));
        assert_eq!(slack.as_object().unwrap().len(), 1);
        let discord = a.payload(WebhookFormat::Discord);
        assert!(discord["content"].as_str().unwrap().contains("80%"));
        let generic = a.payload(WebhookFormat::Json);
        assert_eq!(generic["event"], "budget_threshold_crossed");
        assert_eq!(generic["threshold"], 0.8);
        assert_eq!(generic["alert_id"], 7);
    }

    /// A receiver that cannot be reached: the recorded error says why, but
    /// not the URL's secret, even though reqwest prints the URL normalised
    /// (host lower-cased, `/` before the query), unlike the configured text.
    #[tokio::test]
    async fn a_failed_delivery_does_not_record_the_url_secret() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(&dir.path().join("l.sqlite3")).unwrap();
        let id = ledger
            .record_alert("alice", 0, 0.8, 8, 10, 1, &[])
            .unwrap()
            .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let hook = Webhook {
            url: format!("http://LOCALHOST:{port}?token=Hook-Secret-4242"),
            format: WebhookFormat::Json,
        };
        let mut alert = BudgetAlert::new(7, &status(), 0.8);
        alert.id = id;
        let http = reqwest::Client::new();
        let ok = deliver_webhook(
            &http,
            &ledger,
            &hook,
            &alert,
            Duration::from_millis(1),
            || 1,
        )
        .await;
        assert!(!ok);
        let rows = ledger.deliveries(id).unwrap();
        assert_eq!(rows.len(), WEBHOOK_ATTEMPTS as usize);
        for r in &rows {
            let e = r.error.as_deref().unwrap_or_default();
            assert!(!e.is_empty() && !e.contains("Hook-Secret-4242"), "{e}");
        }
    }

    #[test]
    fn urls_are_redacted_to_the_host() {
        assert_eq!(
            redact_url("https://hooks.slack.com/services/T000/B000/XXXX"),
            "https://hooks.slack.com/…"
        );
        assert_eq!(
            redact_url("https://user:pw@example.com:8443/x?token=1"),
            "https://example.com:8443/…"
        );
    }
}
