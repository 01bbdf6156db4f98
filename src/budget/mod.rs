//! Budgets: a spending limit per user and calendar month, alert thresholds,
//! and what happens at the limit.
//!
//! Enforcement works on *worst cases*: before a call, its cost with the full
//! `max_tokens` is reserved in the ledger inside a transaction; after the
//! call the reservation is replaced by the real cost. So no set of concurrent
//! calls can together cross a `block` limit.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use time::{Date, Month, OffsetDateTime, Time};

use crate::config::MAX_BUDGET_USD;
use crate::ledger::{BudgetRow, Ledger, LedgerError, to_nanos, to_usd};

/// The user id used when a caller gives none.
pub const DEFAULT_USER: &str = "default";

/// What happens when spending reaches the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum BudgetMode {
    /// Alert only; calls continue past the limit.
    Warn,
    /// Past the first threshold, route to a cheaper tier; refuse at the limit.
    Downgrade,
    /// Refuse any call whose worst case would cross the limit.
    Block,
}

impl BudgetMode {
    /// Lowercase name, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            BudgetMode::Warn => "warn",
            BudgetMode::Downgrade => "downgrade",
            BudgetMode::Block => "block",
        }
    }

    /// Parses a stored or typed name.
    pub fn parse(s: &str) -> Option<BudgetMode> {
        match s.trim().to_ascii_lowercase().as_str() {
            "warn" => Some(BudgetMode::Warn),
            "downgrade" => Some(BudgetMode::Downgrade),
            "block" => Some(BudgetMode::Block),
            _ => None,
        }
    }

    /// Whether the hard limit refuses calls.
    pub fn enforces_limit(self) -> bool {
        !matches!(self, BudgetMode::Warn)
    }
}

/// Checks a limit in USD; the message names `field`.
pub fn validate_limit(field: &str, usd: f64) -> Result<(), String> {
    if !usd.is_finite() {
        return Err(format!("{field} must be a number of US dollars, got {usd}"));
    }
    if usd <= 0.0 {
        return Err(format!("{field} must be greater than 0, got {usd}"));
    }
    if usd > MAX_BUDGET_USD {
        return Err(format!(
            "{field} of {usd} is above the maximum of {MAX_BUDGET_USD} US dollars"
        ));
    }
    Ok(())
}

/// Checks alert thresholds: fractions in (0, 1], ascending, no repeats.
pub fn validate_thresholds(t: &[f64]) -> Result<(), String> {
    if t.is_empty() || t.len() > 10 {
        return Err("alert_thresholds must list 1 to 10 fractions, e.g. [0.5, 0.8, 1.0]".into());
    }
    for x in t {
        if !x.is_finite() || *x <= 0.0 || *x > 1.0 {
            return Err(format!(
                "alert_thresholds: {x} is outside (0, 1]; use fractions of the limit, e.g. 0.8 for 80%"
            ));
        }
    }
    if t.windows(2).any(|w| w[0] >= w[1]) {
        return Err("alert_thresholds must be in ascending order without repeats".into());
    }
    Ok(())
}

/// A user's budget as configured (stored, or the default).
#[derive(Debug, Clone, PartialEq)]
pub struct Budget {
    /// Owner.
    pub user_id: String,
    /// Limit per calendar month, USD.
    pub limit_usd: f64,
    /// Alert thresholds, fractions of the limit.
    pub thresholds: Vec<f64>,
    /// Behaviour at the limit.
    pub mode: BudgetMode,
    /// True when the user never set one and the default applies.
    pub is_default: bool,
}

impl Budget {
    /// From a stored row.
    pub fn from_row(row: BudgetRow) -> Budget {
        Budget {
            user_id: row.user_id,
            limit_usd: to_usd(row.limit_nanos),
            thresholds: row.thresholds,
            mode: BudgetMode::parse(&row.mode).unwrap_or(BudgetMode::Block),
            is_default: false,
        }
    }

    /// To a row for storage.
    pub fn to_row(&self) -> BudgetRow {
        BudgetRow {
            user_id: self.user_id.clone(),
            limit_nanos: to_nanos(self.limit_usd),
            period: "monthly".into(),
            thresholds: self.thresholds.clone(),
            mode: self.mode.as_str().into(),
        }
    }
}

/// Where a budget stands now.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct BudgetStatus {
    /// Owner.
    pub user_id: String,
    /// `monthly`.
    pub period: String,
    /// Start of the current period (RFC 3339, UTC).
    pub period_start: String,
    /// End of the current period (RFC 3339, UTC, exclusive).
    pub period_end: String,
    /// Limit, USD.
    pub limit_usd: f64,
    /// Settled spend this period, USD.
    pub spent_usd: f64,
    /// Held by calls in flight, USD.
    pub reserved_usd: f64,
    /// Limit minus spent minus reserved (never below 0), USD.
    pub remaining_usd: f64,
    /// Spent as a percentage of the limit.
    pub percent_used: f64,
    /// Spend expected by period end at the current rate, USD.
    pub forecast_usd: f64,
    /// Alert thresholds (fractions).
    pub alert_thresholds: Vec<f64>,
    /// Thresholds already crossed this period.
    pub crossed_thresholds: Vec<f64>,
    /// The next threshold to be crossed, if any.
    pub next_threshold: Option<f64>,
    /// Behaviour at the limit.
    pub mode: BudgetMode,
    /// True when this is the default budget (never set by the user).
    pub is_default: bool,
}

impl BudgetStatus {
    /// True when `downgrade` mode should route cheaper.
    pub fn wants_downgrade(&self) -> bool {
        self.mode == BudgetMode::Downgrade && !self.crossed_thresholds.is_empty()
    }

    /// One line for a tool's text when a threshold is crossed.
    pub fn alert_line(&self) -> Option<String> {
        let last = self.crossed_thresholds.last()?;
        Some(format!(
            "Budget alert: {:.1}% of the ${:.2} monthly budget used (threshold {:.0}% crossed).",
            self.percent_used,
            self.limit_usd,
            last * 100.0
        ))
    }
}

/// Start and end (exclusive) of the calendar month containing `now`, UTC,
/// as unix milliseconds.
pub fn month_bounds(now_ms: i64) -> (i64, i64) {
    let now = OffsetDateTime::from_unix_timestamp_nanos(now_ms as i128 * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let start = first_of_month(now.year(), now.month());
    let (ny, nm) = if now.month() == Month::December {
        (now.year() + 1, Month::January)
    } else {
        (now.year(), now.month().next())
    };
    let end = first_of_month(ny, nm);
    (start, end)
}

fn first_of_month(year: i32, month: Month) -> i64 {
    Date::from_calendar_date(year, month, 1)
        .map(|d| d.with_time(Time::MIDNIGHT).assume_utc())
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
        .unwrap_or(0)
}

/// Unix ms → RFC 3339.
pub fn rfc3339(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// Computes where `budget` stands at `now_ms`.
pub fn status(ledger: &Ledger, budget: &Budget, now_ms: i64) -> Result<BudgetStatus, LedgerError> {
    let (start, end) = month_bounds(now_ms);
    let spent = to_usd(ledger.spent_since(&budget.user_id, start)?);
    let reserved = to_usd(ledger.reserved_now(&budget.user_id, now_ms)?);
    Ok(compute_status(budget, start, end, now_ms, spent, reserved))
}

/// The arithmetic of [`status`], separated so it can be tested by value.
pub fn compute_status(
    budget: &Budget,
    start: i64,
    end: i64,
    now_ms: i64,
    spent: f64,
    reserved: f64,
) -> BudgetStatus {
    let fraction = if budget.limit_usd > 0.0 {
        spent / budget.limit_usd
    } else {
        1.0
    };
    let crossed: Vec<f64> = budget
        .thresholds
        .iter()
        .copied()
        .filter(|t| fraction >= *t - 1e-12)
        .collect();
    let next = budget
        .thresholds
        .iter()
        .copied()
        .find(|t| fraction < *t - 1e-12);
    let elapsed = (now_ms - start).max(1) as f64;
    let total = (end - start).max(1) as f64;
    // Forecast only once an hour of the period has passed; before that the
    // rate is noise.
    let forecast = if now_ms - start >= 3_600_000 {
        spent * total / elapsed
    } else {
        spent
    };
    BudgetStatus {
        user_id: budget.user_id.clone(),
        period: "monthly".into(),
        period_start: rfc3339(start),
        period_end: rfc3339(end),
        limit_usd: budget.limit_usd,
        spent_usd: spent,
        reserved_usd: reserved,
        remaining_usd: (budget.limit_usd - spent - reserved).max(0.0),
        percent_used: fraction * 100.0,
        forecast_usd: forecast,
        alert_thresholds: budget.thresholds.clone(),
        crossed_thresholds: crossed,
        next_threshold: next,
        mode: budget.mode,
        is_default: budget.is_default,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(y: i32, m: Month, d: u8, h: u8) -> i64 {
        let t = Date::from_calendar_date(y, m, d)
            .unwrap()
            .with_hms(h, 0, 0)
            .unwrap()
            .assume_utc();
        (t.unix_timestamp_nanos() / 1_000_000) as i64
    }

    #[test]
    fn month_bounds_wrap_the_year() {
        let (s, e) = month_bounds(ms(2026, Month::December, 15, 12));
        assert_eq!(s, ms(2026, Month::December, 1, 0));
        assert_eq!(e, ms(2027, Month::January, 1, 0));
        assert_eq!(rfc3339(s), "2026-12-01T00:00:00Z");
    }

    #[test]
    fn thresholds_validation() {
        assert!(validate_thresholds(&[0.5, 0.8, 1.0]).is_ok());
        assert!(validate_thresholds(&[0.8, 0.5]).is_err());
        assert!(validate_thresholds(&[0.0]).is_err());
        assert!(validate_thresholds(&[1.5]).is_err());
        assert!(validate_thresholds(&[f64::NAN]).is_err());
        assert!(validate_thresholds(&[]).is_err());
    }

    #[test]
    fn limit_validation_names_the_field() {
        assert!(
            validate_limit("monthly_limit", -1.0)
                .unwrap_err()
                .contains("monthly_limit")
        );
        assert!(validate_limit("monthly_limit", f64::NAN).is_err());
        assert!(validate_limit("monthly_limit", 1e12).is_err());
        assert!(validate_limit("monthly_limit", 10.0).is_ok());
    }

    #[test]
    fn status_arithmetic() {
        let b = Budget {
            user_id: "u".into(),
            limit_usd: 10.0,
            thresholds: vec![0.5, 0.8, 1.0],
            mode: BudgetMode::Downgrade,
            is_default: false,
        };
        let start = ms(2026, Month::November, 1, 0);
        let end = ms(2026, Month::December, 1, 0);
        // 6 dollars after 10 of 30 days: forecast 18.
        let s = compute_status(&b, start, end, ms(2026, Month::November, 11, 0), 6.0, 1.0);
        assert_eq!(s.crossed_thresholds, vec![0.5]);
        assert_eq!(s.next_threshold, Some(0.8));
        assert!((s.remaining_usd - 3.0).abs() < 1e-12);
        assert!((s.forecast_usd - 18.0).abs() < 1e-9);
        assert!(s.wants_downgrade());
        assert!(s.alert_line().unwrap().contains("50%"));
    }
}
