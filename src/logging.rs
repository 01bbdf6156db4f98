//! Logs go to stderr and to a daily-rotated file in the data dir — never to
//! stdout, which belongs to the MCP protocol. Every line passes through
//! [`crate::secrets::redact`] on its way out, so a key can't reach a log even
//! if some code path formats one by mistake.

use std::io::Write;
use std::path::Path;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::LOG_ENV;

/// Log files kept (one per day).
const KEEP_LOG_FILES: usize = 7;

/// A writer that redacts registered secrets from each formatted event.
pub struct Redacting<W>(W);

impl<W: Write> Write for Redacting<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        self.0.write_all(crate::secrets::redact(&text).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// Wraps a `MakeWriter` so every writer it makes redacts.
pub struct RedactingMake<M>(M);

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for RedactingMake<M> {
    type Writer = Redacting<M::Writer>;
    fn make_writer(&'a self) -> Self::Writer {
        Redacting(self.0.make_writer())
    }
}

/// Keeps the file writer's background thread alive; drop it last.
pub struct LogGuard(#[allow(dead_code)] Option<tracing_appender::non_blocking::WorkerGuard>);

/// At debug level rmcp logs every request whole — prompts, and arguments
/// such as a budget's webhook URL whose path is its token — before any of
/// our code sees them, so redaction cannot know what to hide. Cap rmcp at
/// info unless the filter names it explicitly (a developer debugging the
/// transport on purpose). A cap only: under an overall `warn` or `error`
/// rmcp stays there (a directive for it would raise it to info).
fn quiet_transport(filter: EnvFilter, directives: &str) -> EnvFilter {
    let explicit = directives.contains("rmcp");
    // The overall level, however written (`debug`, `DEBUG`, `4`).
    let verbose = directives
        .split(',')
        .map(str::trim)
        .filter(|d| !d.contains('='))
        .filter_map(|d| d.parse::<tracing::level_filters::LevelFilter>().ok())
        .any(|l| l > tracing::level_filters::LevelFilter::INFO);
    match "rmcp=info".parse() {
        Ok(d) if verbose && !explicit => filter.add_directive(d),
        _ => filter,
    }
}

/// Installs the global subscriber: stderr always, plus a rotating file in
/// `log_dir` when it can be created. `default_level` applies unless
/// `COST_OPTIMIZER_LOG` says otherwise.
pub fn init(log_dir: Option<&Path>, default_level: &str) -> LogGuard {
    let (directives, warning) =
        filter_directives(crate::config::env_var(LOG_ENV).as_deref(), default_level);
    let filter = || {
        quiet_transport(
            EnvFilter::try_new(&directives).unwrap_or_else(|_| EnvFilter::new(default_level)),
            &directives,
        )
    };
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(RedactingMake(std::io::stderr))
        .with_ansi(false)
        .with_target(false)
        .with_filter(filter());
    let mut guard = None;
    // Said once the subscriber is up: without it, a log directory that
    // cannot be written left `doctor` naming a log file that never fills.
    let mut file_error = None;
    let file_layer = log_dir.and_then(|dir| {
        let built = crate::ledger::create_private_dir(dir)
            .map_err(|e| e.to_string())
            .and_then(|()| {
                tracing_appender::rolling::Builder::new()
                    .rotation(tracing_appender::rolling::Rotation::DAILY)
                    .filename_prefix("ai-cost-optimizer")
                    .filename_suffix("log")
                    .max_log_files(KEEP_LOG_FILES)
                    .build(dir)
                    .map_err(|e| e.to_string())
            });
        let appender = match built {
            Ok(a) => a,
            Err(e) => {
                file_error = Some((dir.display().to_string(), e));
                return None;
            }
        };
        let (writer, g) = tracing_appender::non_blocking(appender);
        guard = Some(g);
        Some(
            tracing_subscriber::fmt::layer()
                .with_writer(RedactingMake(writer))
                .with_ansi(false)
                .with_filter(filter()),
        )
    });
    let _ = tracing_subscriber::registry()
        .with(stderr)
        .with(file_layer)
        .try_init();
    if let Some((dir, error)) = file_error {
        tracing::warn!(
            dir,
            error,
            "cannot write the log file; logging to stderr only"
        );
    }
    if let Some(w) = warning {
        tracing::warn!("{w}");
    }
    LogGuard(guard)
}

/// Level names a filter directive may be on its own.
const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// The filter directives to log with, from `COST_OPTIMIZER_LOG` (`value`),
/// and a warning when the value could not be taken as given.
///
/// Why not the value as is: a filter with no overall level logs nothing
/// but what it names, so a typo such as `wran` (which parses, as the name
/// of a module) silenced every warning and error. Unless the value sets an
/// overall level, `default_level` is added for everything it does not
/// name. Empty counts as unset; a value that does not parse falls back to
/// the default, with a warning either way.
fn filter_directives(value: Option<&str>, default_level: &str) -> (String, Option<String>) {
    let Some(v) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return (default_level.to_string(), None);
    };
    if EnvFilter::try_new(v).is_err() {
        return (
            default_level.to_string(),
            Some(format!(
                "{LOG_ENV}={v:?} is not a log filter, so it is ignored; logging at {default_level} (levels: {})",
                LEVELS.join(", ")
            )),
        );
    }
    let directives: Vec<&str> = v
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .collect();
    let is_level = |d: &str| LEVELS.iter().any(|l| l.eq_ignore_ascii_case(d));
    let unknown: Vec<&str> = directives
        .iter()
        .copied()
        .filter(|d| !is_level(d) && !d.contains('=') && !d.contains('['))
        .collect();
    let warning = (!unknown.is_empty()).then(|| {
        format!(
            "{LOG_ENV}: {} is not a level and is read as the name of a module to log in full (levels: {})",
            unknown.join(", "),
            LEVELS.join(", ")
        )
    });
    if directives.iter().any(|d| is_level(d)) {
        (v.to_string(), warning)
    } else {
        (format!("{default_level},{v}"), warning)
    }
}

/// Replaces the default panic hook, whose report goes to stderr as is: a
/// panic message can quote anything the code held (a request, a provider's
/// reply, a URL), so the report passes through the same redaction as every
/// log line and lands in the log file too. With `RUST_BACKTRACE` set it
/// carries the backtrace, also redacted.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(no message)".to_string());
        let thread = std::thread::current()
            .name()
            .unwrap_or("unnamed")
            .to_string();
        let location = info.location().map(|l| l.to_string());
        let backtrace = std::backtrace::Backtrace::capture();
        let backtrace = match backtrace.status() {
            std::backtrace::BacktraceStatus::Captured => Some(backtrace.to_string()),
            _ => None,
        };
        let report = panic_report(&thread, &message, location.as_deref(), backtrace.as_deref());
        if tracing::dispatcher::has_been_set() {
            tracing::error!("{report}");
        } else {
            eprintln!("{report}");
        }
    }));
}

/// The text of a crash report, with every registered secret redacted.
pub fn panic_report(
    thread: &str,
    message: &str,
    location: Option<&str>,
    backtrace: Option<&str>,
) -> String {
    let mut report = format!(
        "panic in thread '{thread}' at {}: {message}",
        location.unwrap_or("an unknown location")
    );
    if let Some(bt) = backtrace {
        report.push_str("\nbacktrace:\n");
        report.push_str(bt);
    }
    crate::secrets::redact(&report)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A typo in the level no longer silences warnings and errors: the
    /// default level is kept for everything the filter does not name, and
    /// the typo is said.
    #[test]
    fn a_filter_without_a_level_keeps_the_default_for_the_rest() {
        let f = |v| filter_directives(Some(v), "warn");
        let (d, w) = f("wran");
        assert_eq!(d, "warn,wran");
        assert!(w.unwrap().contains("wran is not a level"));
        assert_eq!(f("debug"), ("debug".into(), None));
        assert_eq!(f("INFO,rmcp=debug"), ("INFO,rmcp=debug".into(), None));
        assert_eq!(
            f("ai_cost_optimizer=debug"),
            ("warn,ai_cost_optimizer=debug".into(), None)
        );
        assert_eq!(filter_directives(Some("  "), "info"), ("info".into(), None));
        assert_eq!(filter_directives(None, "info"), ("info".into(), None));
        let (d, w) = f("=[");
        assert_eq!(d, "warn");
        assert!(w.unwrap().contains("not a log filter"));
        // What the result does: warnings pass the typo'd filter.
        let filter = EnvFilter::try_new(f("wran").0).unwrap();
        assert_eq!(
            filter.max_level_hint(),
            Some(tracing::level_filters::LevelFilter::TRACE),
            "wran itself is a target at every level"
        );
    }

    /// rmcp is capped at info under a verbose filter, and left where the
    /// overall level puts it otherwise (the cap raised it to info under
    /// `warn`, logging every client notification).
    #[test]
    fn the_transport_is_capped_not_raised() {
        use tracing::level_filters::LevelFilter;
        let hint = |d: &str| quiet_transport(EnvFilter::try_new(d).unwrap(), d).max_level_hint();
        assert_eq!(hint("warn"), Some(LevelFilter::WARN));
        assert_eq!(hint("error"), Some(LevelFilter::ERROR));
        assert_eq!(hint("off"), Some(LevelFilter::OFF));
        // Under debug the cap is there (rmcp's info sits below debug, so
        // the hint stays debug; the directive is what matters).
        for verbose in ["debug", "TRACE", "4", "5"] {
            let capped = quiet_transport(EnvFilter::try_new(verbose).unwrap(), verbose);
            assert!(
                capped.to_string().contains("rmcp=info"),
                "{verbose}: {capped}"
            );
        }
        assert_eq!(hint("2"), Some(LevelFilter::WARN));
        let asked = quiet_transport(
            EnvFilter::try_new("debug,rmcp=trace").unwrap(),
            "debug,rmcp=trace",
        );
        assert!(!asked.to_string().contains("rmcp=info"), "{asked}");
    }

    #[test]
    fn crash_reports_are_redacted() {
        let _k = crate::secrets::Secret::new("sk-panic-leak-test-4242424242");
        let r = panic_report(
            "tokio-runtime-worker",
            "unexpected reply: {\"error\": \"bad key sk-panic-leak-test-4242424242\"}",
            Some("src/providers/anthropic.rs:10:5"),
            Some("   0: frame holding sk-panic-leak-test-4242424242"),
        );
        assert!(!r.contains("sk-panic-leak-test-4242424242"), "{r}");
        assert!(r.contains("[REDACTED]"), "{r}");
        assert!(r.contains("src/providers/anthropic.rs:10:5"), "{r}");
        assert!(r.contains("tokio-runtime-worker"), "{r}");
    }

    #[test]
    fn writer_redacts() {
        let _k = crate::secrets::Secret::new("sk-log-leak-test-99999");
        let mut out = Vec::new();
        {
            let mut w = Redacting(&mut out);
            w.write_all(b"calling with sk-log-leak-test-99999 now\n")
                .unwrap();
        }
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "calling with [REDACTED] now\n"
        );
    }
}
