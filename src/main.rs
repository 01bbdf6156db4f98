//! `ai-cost-optimizer`: with no arguments (as Claude Desktop runs it) an MCP
//! server on stdio; otherwise a CLI over the same core. See `--help`.

use std::io::Write as _;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;

use ai_cost_optimizer::cli::{Cli, Command};
use ai_cost_optimizer::config::{InvalidConfig, Settings};
use ai_cost_optimizer::optimizer::{Optimizer, ToolError};
use ai_cost_optimizer::{http, logging, mcp};

fn main() -> ExitCode {
    logging::install_panic_hook();
    ignore_file_size_signal();
    private_file_mode();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // A script reading --json output gets a wrong argument as JSON
            // too; help and version are not failures.
            if e.use_stderr() && std::env::args_os().skip(1).any(|a| a == "--json") {
                let text = e.render().to_string();
                let message = text
                    .lines()
                    .take_while(|l| !l.starts_with("Usage:"))
                    .map(|l| l.trim().trim_start_matches("error: "))
                    .filter(|l| !l.is_empty())
                    .collect::<Vec<_>>()
                    .join(" ");
                let body =
                    serde_json::json!({"error": {"kind": "invalid_argument", "message": message}});
                let _ = writeln!(std::io::stdout(), "{body:#}");
            }
            e.exit()
        }
    };
    let serving = matches!(cli.command, None | Some(Command::Serve { .. }));
    // A script reading a command's --json output gets its failure as JSON
    // on stdout too (the message also goes to stderr; the exit code says
    // it failed).
    let json_out = !serving && std::env::args_os().skip(1).any(|a| a == "--json");
    // Not for a command that spends: its log lines go to stderr before
    // a billed attempt is recorded, and a reader gone from the pipe must
    // not kill it in between.
    if !serving && !matches!(cli.command, Some(Command::Complete { .. })) {
        default_pipe_signal();
    }
    // install-claude edits Claude Desktop's file and reads none of our
    // settings: a broken config file or variable (the thing a user may be
    // reinstalling to fix) must not stop it.
    if let Some(Command::InstallClaude {
        config,
        binary,
        dry_run,
    }) = cli.command
    {
        return exit_with(
            ai_cost_optimizer::install::run_cli(config, binary, dry_run),
            json_out,
        );
    }
    let settings = match Settings::load() {
        Ok(s) => s,
        Err(e) => {
            // Quoted values shortened: no key is registered for redaction
            // yet, and a webhook URL or a key set in the wrong variable is
            // quoted back by its error.
            let message = ai_cost_optimizer::secrets::redact(
                &ai_cost_optimizer::config::without_values(&format!("{e:#}")),
            );
            if json_out {
                let body =
                    serde_json::json!({"error": {"kind": "invalid_config", "message": message}});
                let _ = writeln!(std::io::stdout(), "{body:#}");
            }
            eprintln!("ai-cost-optimizer: {message}");
            // `doctor` is what a user runs when something is wrong: past
            // the setting at fault, say what can be said without settings.
            if matches!(cli.command, Some(Command::Doctor { .. })) && !json_out {
                println!("{}", doctor_without_settings(&message));
            }
            return ExitCode::from(2);
        }
    };
    // The server logs at info to stderr and the file; CLI commands keep
    // stderr quiet unless something goes wrong.
    let _guard = logging::init(
        Some(&settings.log_dir()),
        if serving { "info" } else { "warn" },
    );
    for w in &settings.warnings {
        tracing::warn!("{w}");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ai-cost-optimizer: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            None | Some(Command::Serve { http: None }) => {
                // The tokenizer is built on the first estimate, not here:
                // an idle server stays small (see `ai_cost_optimizer::tokens`).
                let core = Arc::new(Optimizer::from_env(settings)?);
                mcp::serve_stdio(core).await
            }
            Some(Command::Serve { http: Some(addr) }) => {
                let addr = if addr.trim().is_empty() {
                    settings.http.addr.clone()
                } else {
                    addr
                };
                let core = Arc::new(Optimizer::from_env(settings)?);
                http::serve_http(core, &addr).await
            }
            Some(cmd) => ai_cost_optimizer::cli::run(cmd, settings).await,
        }
    });
    exit_with(result, json_out)
}

/// What `doctor` can tell when the settings do not load: the error, the
/// config file and data directory asked for, and which providers' keys
/// are in the environment (names only). Settings load in one pass, so the
/// rest of the report (ledger, budget, reachable providers) waits for the
/// setting at fault to be fixed, and says so.
fn doctor_without_settings(error: &str) -> String {
    use ai_cost_optimizer::config::{CONFIG_ENV, DATA_DIR_ENV, env_var};
    use ai_cost_optimizer::providers::{ProviderId, spec};
    // As the settings read them: an unfilled `${user_config…}` template
    // is no key.
    let var = |k: &str| env_var(k).filter(|v| !v.trim().is_empty());
    let keys: Vec<&str> = ProviderId::ALL
        .iter()
        .filter(|p| spec(**p).key_envs.iter().any(|k| var(k).is_some()))
        .map(|p| spec(*p).display_name)
        .collect();
    format!(
        "ai-cost-optimizer {} doctor\n\
         Settings: NOT LOADED: {error}\n\
         Config file: {}\n\
         Data directory: {}\n\
         Provider keys in the environment: {}\n\
         Fix the setting above and run `ai-cost-optimizer doctor` again for the full report \
         (ledger, budget, providers reachable).",
        env!("CARGO_PKG_VERSION"),
        var(CONFIG_ENV).unwrap_or_else(|| format!("the default location ({CONFIG_ENV} unset)")),
        var(DATA_DIR_ENV).unwrap_or_else(|| format!("the platform default ({DATA_DIR_ENV} unset)")),
        if keys.is_empty() {
            "none".to_string()
        } else {
            keys.join(", ")
        }
    )
}

/// Reports a command's failure (stderr, and JSON on stdout for `--json`)
/// and picks the exit code: 2 for input or configuration the user must
/// fix, 1 for anything else.
fn exit_with(result: anyhow::Result<()>, json_out: bool) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let config = e.downcast_ref::<InvalidConfig>().is_some();
            let invalid = config
                || matches!(
                    e.downcast_ref::<ToolError>(),
                    Some(ToolError::Invalid(_) | ToolError::ContextTooLong(_))
                );
            let message = ai_cost_optimizer::secrets::redact(&format!("{e:#}"));
            if json_out {
                let kind = match e.downcast_ref::<ToolError>() {
                    Some(t) => t.kind(),
                    None if config => "invalid_config",
                    None => "error",
                };
                let body = serde_json::json!({"error": {"kind": kind, "message": message}});
                let _ = writeln!(std::io::stdout(), "{body:#}");
            }
            eprintln!("ai-cost-optimizer: {message}");
            if invalid {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// A command's output piped into a reader that stops early (`| head`)
/// ends the command quietly, as for any Unix tool, instead of a panic
/// ("failed printing to stdout: Broken pipe"). Not for the servers: they
/// must finish recording a call whoever stops listening.
fn default_pipe_signal() {
    #[cfg(unix)]
    // SAFETY: called in main before the runtime starts any thread;
    // SIG_DFL installs no handler code.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// A file-size limit (`ulimit -f`, RLIMIT_FSIZE) kills a process that
/// writes past it with SIGXFSZ — mid-transaction, with calls in flight.
/// Ignored, the write fails with EFBIG instead, SQLite rolls the
/// transaction back, and the caller is told the cost was not recorded
/// (the same path as a full disk).
fn ignore_file_size_signal() {
    #[cfg(unix)]
    // SAFETY: called first thing in main, before any thread exists;
    // SIG_IGN installs no handler code.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
}

/// Everything this process creates — the data dir, the ledger and SQLite's
/// `-wal`/`-shm` beside it, log files, instance locks, audio, backups — is
/// for the user alone: the ledger holds what they spent (and prompts, if
/// they opted in) and logs name their models and users. Setting the mask
/// once covers files created by libraries (SQLite, tracing-appender) too,
/// with no window where a file exists with wider permissions. Existing
/// files keep theirs (`install-claude` copies the original mode).
fn private_file_mode() {
    #[cfg(unix)]
    // SAFETY: umask only changes this process's creation mask; called
    // before any thread exists.
    unsafe {
        libc::umask(0o077);
    }
}
