//! Budgets: a spending limit per user and calendar month, alert thresholds,
//! and what happens at the limit.
//!
//! Enforcement works on *worst cases*: before a call, its cost with the full
//! `max_tokens` is reserved in the ledger inside a transaction; after the
//! call the reservation is replaced by the real cost. So no set of concurrent
//! calls can together cross a `block` limit.

pub mod alerts;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use time::{Date, Month, OffsetDateTime, Time};

use crate::config::MAX_BUDGET_USD;
use crate::ledger::{BudgetRow, GLOBAL_SCOPE, Ledger, LedgerError, to_nanos, to_usd};

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

/// How long a budget period lasts; periods start on calendar boundaries
/// (midnight, Monday, the 1st) in the budget's time zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    /// From midnight to midnight.
    Daily,
    /// From Monday 00:00 to the next Monday.
    Weekly,
    /// From the 1st 00:00 to the next 1st.
    Monthly,
}

impl Period {
    /// Lowercase name, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Period::Daily => "daily",
            Period::Weekly => "weekly",
            Period::Monthly => "monthly",
        }
    }

    /// Parses a stored or typed name.
    pub fn parse(s: &str) -> Option<Period> {
        match s.trim().to_ascii_lowercase().as_str() {
            "daily" | "day" => Some(Period::Daily),
            "weekly" | "week" => Some(Period::Weekly),
            "monthly" | "month" => Some(Period::Monthly),
            _ => None,
        }
    }
}

/// Checks an IANA time zone name (`Europe/Berlin`, `UTC`).
pub fn validate_timezone(tz: &str) -> Result<(), String> {
    jiff::tz::TimeZone::get(tz).map(|_| ()).map_err(|_| {
        format!("timezone: {tz:?} is not a known IANA time zone (e.g. \"Europe/Berlin\", \"UTC\")")
    })
}

/// Start and end (exclusive) of the `period` containing `now_ms`, on the
/// calendar of time zone `tz`, as unix milliseconds. Falls back to UTC
/// for an unknown zone (validated zones never reach that).
pub fn period_bounds(period: Period, tz: &str, now_ms: i64) -> (i64, i64) {
    use jiff::{Timestamp, ToSpan, tz::TimeZone};
    let zone = TimeZone::get(tz).unwrap_or(TimeZone::UTC);
    let Ok(ts) = Timestamp::from_millisecond(now_ms) else {
        return month_bounds(now_ms);
    };
    let now = ts.to_zoned_datetime(zone);
    let bounds = (|| -> Result<(i64, i64), jiff::Error> {
        let start = match period {
            Period::Daily => now.start_of_day()?,
            Period::Weekly => {
                // Back to Monday first, then its midnight: the start of
                // today moved back whole days keeps today's clock time,
                // which is 01:00 where midnight fell in a DST gap (Beirut,
                // Cairo, Santiago...), starting the week an hour late.
                let back = now.weekday().to_monday_zero_offset();
                now.checked_sub((back as i64).days())?.start_of_day()?
            }
            Period::Monthly => now.first_of_month()?.start_of_day()?,
        };
        let end = match period {
            Period::Daily => start.checked_add(1.day())?,
            Period::Weekly => start.checked_add(1.week())?,
            Period::Monthly => start.checked_add(1.month())?,
        }
        .start_of_day()?;
        Ok((
            start.timestamp().as_millisecond(),
            end.timestamp().as_millisecond(),
        ))
    })();
    bounds.unwrap_or_else(|_| month_bounds(now_ms))
}

/// Checks an alert webhook URL: http(s) with a host.
pub fn validate_webhook_url(url: &str) -> Result<(), String> {
    let u = url.trim();
    let rest = u
        .strip_prefix("https://")
        .or_else(|| u.strip_prefix("http://"))
        .ok_or_else(|| "webhook_url must start with http:// or https://".to_string())?;
    if rest.is_empty()
        || rest.starts_with('/')
        || u.len() > 2048
        || u.chars().any(char::is_whitespace)
    {
        return Err("webhook_url is not a valid URL".into());
    }
    Ok(())
}

/// The smallest limit: one nano-dollar, the ledger's unit.
pub const MIN_BUDGET_USD: f64 = 1e-9;

/// The smallest alert threshold, 0.1% of the limit.
pub const MIN_THRESHOLD: f64 = 0.001;

/// The longest a budget's forecast waits before extrapolating (a day; a
/// shorter period waits a tenth of itself).
const FORECAST_AFTER_MS: f64 = 86_400_000.0;

/// Checks a limit in USD; the message names `field`.
pub fn validate_limit(field: &str, usd: f64) -> Result<(), String> {
    if !usd.is_finite() {
        return Err(format!("{field} must be a number of US dollars, got {usd}"));
    }
    if usd <= 0.0 {
        return Err(format!("{field} must be greater than 0, got {usd}"));
    }
    // The ledger keeps nano-dollars: a smaller limit would be stored as 0.
    if usd < MIN_BUDGET_USD {
        return Err(format!(
            "{field} of {usd:e} is below the smallest limit the ledger can hold, {MIN_BUDGET_USD} US dollars"
        ));
    }
    if usd > MAX_BUDGET_USD {
        return Err(format!(
            "{field} of {usd:e} is above the maximum of {MAX_BUDGET_USD} US dollars"
        ));
    }
    Ok(())
}

/// Checks alert thresholds: fractions in [0.001, 1], ascending, no repeats.
pub fn validate_thresholds(t: &[f64]) -> Result<(), String> {
    if t.is_empty() || t.len() > 10 {
        return Err("alert_thresholds must list 1 to 10 fractions, e.g. [0.5, 0.8, 1.0]".into());
    }
    for x in t {
        // Below 0.1% a threshold would count as crossed at $0 spent.
        if !x.is_finite() || *x < MIN_THRESHOLD || *x > 1.0 {
            return Err(format!(
                "alert_thresholds: {x} is outside [{MIN_THRESHOLD}, 1]; use fractions of the limit, e.g. 0.8 for 80%"
            ));
        }
    }
    if t.windows(2).any(|w| w[0] >= w[1]) {
        return Err("alert_thresholds must be in ascending order without repeats".into());
    }
    Ok(())
}

/// The earliest start of the current period among `budgets` at `now_ms`,
/// and whose it is (`now_ms` and the default user if there are none).
pub fn earliest_period_start(budgets: &[Budget], now_ms: i64) -> (i64, String) {
    budgets
        .iter()
        .map(|b| (b.bounds(now_ms).0, b.user_id.clone()))
        .min_by_key(|(start, _)| *start)
        .unwrap_or((now_ms, DEFAULT_USER.to_string()))
}

/// A budget as configured (stored, or the default): a user's, or the
/// global one (`user_id` = `*`) that caps every user together.
#[derive(Debug, Clone, PartialEq)]
pub struct Budget {
    /// Owner: a user id, or `*` for the global budget.
    pub user_id: String,
    /// Limit per period, USD.
    pub limit_usd: f64,
    /// Alert thresholds, fractions of the limit.
    pub thresholds: Vec<f64>,
    /// Behaviour at the limit.
    pub mode: BudgetMode,
    /// True when the user never set one and the default applies.
    pub is_default: bool,
    /// Period length.
    pub period: Period,
    /// IANA time zone of the period calendar.
    pub timezone: String,
    /// Where alerts are POSTed (overrides the configured default).
    pub webhook: Option<alerts::Webhook>,
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
            period: Period::parse(&row.period).unwrap_or(Period::Monthly),
            timezone: row.timezone,
            webhook: row.webhook_url.map(|url| alerts::Webhook {
                url,
                format: alerts::WebhookFormat::parse(&row.webhook_format)
                    .unwrap_or(alerts::WebhookFormat::Json),
            }),
        }
    }

    /// To a row for storage.
    pub fn to_row(&self) -> BudgetRow {
        BudgetRow {
            user_id: self.user_id.clone(),
            limit_nanos: to_nanos(self.limit_usd),
            period: self.period.as_str().into(),
            thresholds: self.thresholds.clone(),
            mode: self.mode.as_str().into(),
            timezone: self.timezone.clone(),
            webhook_url: self.webhook.as_ref().map(|w| w.url.clone()),
            webhook_format: self
                .webhook
                .as_ref()
                .map(|w| w.format.as_str())
                .unwrap_or("json")
                .into(),
        }
    }

    /// True for the budget over every user.
    pub fn is_global(&self) -> bool {
        self.user_id == GLOBAL_SCOPE
    }

    /// Bounds of the current period.
    pub fn bounds(&self, now_ms: i64) -> (i64, i64) {
        period_bounds(self.period, &self.timezone, now_ms)
    }
}

/// Where a budget stands now.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct BudgetStatus {
    /// Owner: a user id, or `*` for the global budget.
    pub user_id: String,
    /// `daily`, `weekly` or `monthly`.
    pub period: String,
    /// Time zone of the period calendar.
    pub timezone: String,
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
    /// Spend expected by period end at the current rate, USD; until a
    /// tenth of the period (at most a day) has passed, the spend so far
    /// (an hour's rate says nothing about a month).
    pub forecast_usd: f64,
    /// Alert thresholds (fractions).
    pub alert_thresholds: Vec<f64>,
    /// Thresholds already crossed this period.
    pub crossed_thresholds: Vec<f64>,
    /// The next threshold whose alert is still to come, if any (a call
    /// refused near the limit fires the 100% alert before spend crosses it).
    pub next_threshold: Option<f64>,
    /// Behaviour at the limit.
    pub mode: BudgetMode,
    /// True when this is the default budget (never set by the user).
    pub is_default: bool,
}

impl BudgetStatus {
    /// How the current period reads in a sentence, and its end: ("today",
    /// "the end of the day"), ("this week", …), ("this month", …).
    pub fn period_words(&self) -> (&'static str, &'static str) {
        match Period::parse(&self.period) {
            Some(Period::Daily) => ("today", "the end of the day"),
            Some(Period::Weekly) => ("this week", "the end of the week"),
            _ => ("this month", "the end of the month"),
        }
    }

    /// True when `downgrade` mode should route cheaper.
    pub fn wants_downgrade(&self) -> bool {
        self.mode == BudgetMode::Downgrade && !self.crossed_thresholds.is_empty()
    }

    /// One line for a tool's text when a threshold is crossed.
    pub fn alert_line(&self) -> Option<String> {
        let last = self.crossed_thresholds.last()?;
        let whose = if self.user_id == GLOBAL_SCOPE {
            "global".to_string()
        } else {
            format!("{}'s", self.user_id)
        };
        Some(format!(
            "Budget alert: {:.1}% of the {} {} {whose} budget used (threshold {} crossed).",
            self.percent_used,
            crate::render::usd(self.limit_usd),
            self.period,
            crate::render::percent(*last)
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
    statuses(ledger, std::slice::from_ref(budget), now_ms)?
        .pop()
        .ok_or_else(|| LedgerError::Sqlite("internal error: no budget status was read".into()))
}

/// [`status`] of several budgets at `now_ms`, read in one ledger
/// transaction (see [`Ledger::standings`]).
pub fn statuses(
    ledger: &Ledger,
    budgets: &[Budget],
    now_ms: i64,
) -> Result<Vec<BudgetStatus>, LedgerError> {
    let bounds: Vec<(i64, i64)> = budgets.iter().map(|b| b.bounds(now_ms)).collect();
    let scopes: Vec<(&str, i64)> = budgets
        .iter()
        .zip(&bounds)
        .map(|(b, (start, _))| (b.user_id.as_str(), *start))
        .collect();
    let standings = ledger.standings(&scopes, now_ms)?;
    let mut out: Vec<BudgetStatus> = budgets
        .iter()
        .zip(&bounds)
        .zip(standings)
        .map(|((b, (start, end)), (spent, reserved))| {
            compute_status(b, *start, *end, now_ms, to_usd(spent), to_usd(reserved))
        })
        .collect();
    // A call refused near the limit fires the 100% alert before spend
    // reaches it: that alert is not "next" any more. Looked up only where
    // it can have happened, so the usual status costs no extra read.
    for ((st, b), (start, _)) in out.iter_mut().zip(budgets).zip(&bounds) {
        while let Some(t) = st.next_threshold {
            if st.spent_usd < EXHAUSTED_AT * st.limit_usd
                || !ledger.alerted(&b.user_id, *start, t, to_nanos(b.limit_usd))?
            {
                break;
            }
            st.next_threshold = b.thresholds.iter().copied().find(|x| *x > t + 1e-12);
        }
    }
    Ok(out)
}

/// The share of a budget's limit spent from which a call it refuses fires
/// its 100% alert ("used up"; see `Optimizer::alert_refusal`): earlier, a
/// call refused for its own size (a forced premium model, a huge
/// max_tokens) or for other calls' holds would spend the period's one 100%
/// alert while plenty is left.
pub const EXHAUSTED_AT: f64 = 0.9;

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
    // Extrapolate only once a tenth of the period, or a day, has passed:
    // one call in the first hour of a month made a $0.50 spend forecast as
    // $369. Until then the forecast is what has been spent.
    let forecast = if (now_ms - start) as f64 >= (total / 10.0).min(FORECAST_AFTER_MS) {
        spent * total / elapsed
    } else {
        spent
    };
    BudgetStatus {
        user_id: budget.user_id.clone(),
        period: budget.period.as_str().into(),
        timezone: budget.timezone.clone(),
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

    /// A week that starts on a day whose midnight is not skipped, seen
    /// from a day whose midnight was (Beirut went 00:00 → 01:00 on Sunday
    /// 29 March 2026): Monday 00:00 local, not 01:00.
    #[test]
    fn a_week_starts_at_midnight_even_seen_from_a_dst_day() {
        let ms = |s: &str| s.parse::<jiff::Timestamp>().unwrap().as_millisecond();
        let (start, end) = period_bounds(Period::Weekly, "Asia/Beirut", ms("2026-03-29T09:00:00Z"));
        assert_eq!(start, ms("2026-03-22T22:00:00Z"));
        assert_eq!(end, ms("2026-03-29T21:00:00Z"));
    }

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

    fn utc(y: i32, m: u8, d: u8, h: u8, min: u8) -> i64 {
        jiff::civil::datetime(y as i16, m as i8, d as i8, h as i8, min as i8, 0, 0)
            .to_zoned_datetime(jiff::tz::TimeZone::UTC)
            .unwrap()
            .timestamp()
            .as_millisecond()
    }

    #[test]
    fn periods_follow_the_time_zone_calendar() {
        // 2026-11-27 23:30 UTC is already Saturday the 28th in Berlin (UTC+1).
        let now = utc(2026, 11, 27, 23, 30);
        assert_eq!(
            period_bounds(Period::Daily, "Europe/Berlin", now),
            (utc(2026, 11, 27, 23, 0), utc(2026, 11, 28, 23, 0))
        );
        assert_eq!(
            period_bounds(Period::Daily, "UTC", now),
            (utc(2026, 11, 27, 0, 0), utc(2026, 11, 28, 0, 0))
        );
        // Weeks start on Monday: Monday 2026-11-23.
        assert_eq!(
            period_bounds(Period::Weekly, "UTC", now),
            (utc(2026, 11, 23, 0, 0), utc(2026, 11, 30, 0, 0))
        );
        // Months in New York (UTC-5 in November, UTC-5 in December).
        assert_eq!(
            period_bounds(Period::Monthly, "America/New_York", now),
            (utc(2026, 11, 1, 4, 0), utc(2026, 12, 1, 5, 0))
        );
        // A DST change inside a day: Berlin's 2026-03-29 has 23 hours.
        let dst = utc(2026, 3, 29, 12, 0);
        let (s, e) = period_bounds(Period::Daily, "Europe/Berlin", dst);
        assert_eq!(e - s, 23 * 3_600_000);
        assert!(validate_timezone("Mars/Olympus").is_err());
        assert!(validate_timezone("Asia/Tokyo").is_ok());
    }

    #[test]
    fn webhook_urls() {
        assert!(validate_webhook_url("https://hooks.slack.com/services/T/B/x").is_ok());
        assert!(validate_webhook_url("http://127.0.0.1:9/hook").is_ok());
        assert!(validate_webhook_url("ftp://x").is_err());
        assert!(validate_webhook_url("javascript:alert(1)").is_err());
        assert!(validate_webhook_url("https://").is_err());
    }

    #[test]
    fn thresholds_validation() {
        assert!(validate_thresholds(&[0.5, 0.8, 1.0]).is_ok());
        assert!(validate_thresholds(&[0.8, 0.5]).is_err());
        assert!(validate_thresholds(&[0.0]).is_err());
        assert!(validate_thresholds(&[1.5]).is_err());
        assert!(validate_thresholds(&[f64::NAN]).is_err());
        assert!(validate_thresholds(&[]).is_err());
        // So small it would count as crossed at $0.
        assert!(validate_thresholds(&[1e-12, 0.5]).is_err());
        assert!(validate_thresholds(&[0.001, 0.5]).is_ok());
    }

    /// A limit the ledger would store as 0 nano-dollars (and then refuse
    /// with a CHECK constraint) is refused here, with a clear message.
    #[test]
    fn limits_below_a_nano_dollar_are_refused() {
        let e = validate_limit("monthly_limit", 1e-10).unwrap_err();
        assert!(e.contains("smallest limit"), "{e}");
        assert!(validate_limit("monthly_limit", 1e-9).is_ok());
        assert!(crate::ledger::to_nanos(1e-9) >= 1);
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

    /// Retention may prune only before every current period: the earliest
    /// start wins, whichever budget it belongs to.
    #[test]
    fn earliest_period_start_is_the_oldest_current_period() {
        let b = |user: &str, period, tz: &str| Budget {
            user_id: user.into(),
            limit_usd: 10.0,
            thresholds: vec![1.0],
            mode: BudgetMode::Block,
            is_default: false,
            period,
            timezone: tz.into(),
            webhook: None,
        };
        let now = utc(2026, 11, 27, 12, 0);
        let set = [
            b("daily", Period::Daily, "UTC"),
            b("*", Period::Weekly, "UTC"),
            b("ny", Period::Monthly, "America/New_York"),
            b("default", Period::Monthly, "UTC"),
        ];
        assert_eq!(
            earliest_period_start(&set, now),
            (utc(2026, 11, 1, 0, 0), "default".to_string())
        );
        // New York's month starts 4 hours (EDT) after UTC's: UTC's is earlier.
        assert_eq!(
            earliest_period_start(&set[..3], now),
            (utc(2026, 11, 1, 4, 0), "ny".to_string())
        );
        assert_eq!(
            earliest_period_start(&set[..2], now),
            (utc(2026, 11, 23, 0, 0), "*".to_string())
        );
        assert_eq!(
            earliest_period_start(&[], now),
            (now, DEFAULT_USER.to_string())
        );
    }

    #[test]
    fn status_arithmetic() {
        let b = Budget {
            user_id: "u".into(),
            limit_usd: 10.0,
            thresholds: vec![0.5, 0.8, 1.0],
            mode: BudgetMode::Downgrade,
            is_default: false,
            period: Period::Monthly,
            timezone: "UTC".into(),
            webhook: None,
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
        // An hour into the month the rate means nothing: no extrapolation
        // (it forecast $0.50 as $360) until a day has passed.
        let at = |day, hour| ms(2026, Month::November, day, hour);
        let s = compute_status(&b, start, end, at(1, 1), 0.5, 0.0);
        assert_eq!(s.forecast_usd, 0.5);
        let s = compute_status(&b, start, end, at(2, 0), 0.5, 0.0);
        assert!((s.forecast_usd - 15.0).abs() < 1e-9, "{}", s.forecast_usd);
        // A daily budget extrapolates after a tenth of its day.
        let day = Budget {
            period: Period::Daily,
            ..b.clone()
        };
        let (ds, de) = (at(5, 0), at(6, 0));
        let s = compute_status(&day, ds, de, at(5, 1), 0.5, 0.0);
        assert_eq!(s.forecast_usd, 0.5);
        let s = compute_status(&day, ds, de, at(5, 3), 0.5, 0.0);
        assert!((s.forecast_usd - 4.0).abs() < 1e-9, "{}", s.forecast_usd);
    }
}
