//! The command line: `serve` (the default, as Claude Desktop runs it) and
//! commands that mirror the MCP tools for people and scripts. Every command
//! prints Markdown-ish text, or JSON with `--json`.

use std::io::{BufRead, Write};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};

/// Returns a wrong-argument error from a command: exit code 2, like the
/// tools' own validation (`ToolError::Invalid`), and JSON with `--json`.
macro_rules! invalid_arg {
    ($($t:tt)*) => {
        return Err(anyhow::Error::new(crate::optimizer::ToolError::Invalid(format!($($t)*))))
    };
}

use crate::config::Settings;
use crate::optimizer::{
    CompleteArgs, CostArgs, Optimizer, RecommendArgs, SetBudgetArgs, ToolError, UsageArgs,
};
use crate::pricing::{self, Catalog};
use crate::providers::Registry;
use crate::render;
use crate::router::{Router, scorer};

/// Routes every prompt to the cheapest capable LLM and records what it cost.
#[derive(Debug, Parser)]
#[command(name = "ai-cost-optimizer", version, about, long_about = None)]
pub struct Cli {
    /// What to do; with none, serve MCP over stdio (as Claude Desktop runs it).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve MCP over stdin/stdout (the default), or over HTTP with --http.
    Serve {
        /// Serve HTTP instead: MCP at /mcp, the OpenAI-compatible API at
        /// /v1, health, metrics. Without a value: http.addr from the config
        /// (COST_OPTIMIZER_HTTP_ADDR), else 127.0.0.1:8080.
        #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = "")]
        http: Option<String>,
    },
    /// Exit 0 if an HTTP server answers its /health probe (for container
    /// health checks: the image needs no curl).
    Healthcheck {
        /// The probe's URL (a bare server URL means its `/health`).
        #[arg(default_value = "http://127.0.0.1:8080/health")]
        url: String,
    },
    /// Manage the HTTP server's client API keys.
    Keys {
        #[command(subcommand)]
        action: KeysAction,
    },
    /// Recommend a model for a prompt without calling it.
    Recommend {
        /// The prompt ("-" reads stdin).
        prompt: String,
        /// Output token limit the call would use.
        #[arg(long, allow_negative_numbers = true)]
        max_tokens: Option<i64>,
        /// Most the call may cost, USD.
        #[arg(long, allow_negative_numbers = true)]
        budget_limit: Option<f64>,
        /// Near a tier boundary, take the cheaper tier (`cost`) or the
        /// stronger (`quality`); default: `[routing] prefer`.
        #[arg(long)]
        prefer: Option<String>,
        /// Whose budget the recommendation respects (default: the default
        /// user), as `complete --user` would spend.
        #[arg(long)]
        user: Option<String>,
        #[command(flatten)]
        out: Output,
    },
    /// Show model prices, optionally the cost of a prompt on each.
    Costs {
        /// Only this provider.
        #[arg(long)]
        provider: Option<String>,
        /// Only models whose id contains this.
        #[arg(long)]
        model: Option<String>,
        /// Estimate this prompt's cost on each model.
        #[arg(long)]
        prompt: Option<String>,
        #[command(flatten)]
        out: Output,
    },
    /// Show spending, savings and budget status.
    Usage {
        /// Whole UTC days to report, today included (default 30).
        #[arg(long, allow_negative_numbers = true)]
        days: Option<i64>,
        /// Start date (YYYY-MM-DD or RFC 3339) instead of --days.
        #[arg(long)]
        since: Option<String>,
        /// Only this user.
        #[arg(long)]
        user: Option<String>,
        /// Breakdown: model, provider, day, week, month, tier, user or band.
        #[arg(long)]
        group_by: Option<String>,
        #[command(flatten)]
        out: Output,
    },
    /// Write a self-contained HTML usage dashboard and print its path.
    Dashboard {
        /// Where to write it (default: <data dir>/dashboard.html).
        #[arg(long)]
        out: Option<std::path::PathBuf>,
        /// Open it in the default browser.
        #[arg(long)]
        open: bool,
        /// Days to show, today included (1-3650).
        #[arg(long, default_value_t = 30, allow_negative_numbers = true)]
        days: i64,
        /// Only this user's calls (and their budget).
        #[arg(long)]
        user: Option<String>,
    },
    /// Show the budget, or set it with --set.
    Budget {
        /// New limit in USD per period (monthly unless --period says otherwise).
        #[arg(long, allow_negative_numbers = true)]
        set: Option<f64>,
        /// Alert thresholds, comma-separated fractions (e.g. 0.5,0.8,1).
        #[arg(long, value_delimiter = ',')]
        thresholds: Option<Vec<f64>>,
        /// warn, downgrade or block.
        #[arg(long)]
        mode: Option<String>,
        /// Whose budget.
        #[arg(long)]
        user: Option<String>,
        /// Set the global budget (all users together) instead of a user's.
        #[arg(long)]
        global: bool,
        /// daily, weekly or monthly (default monthly).
        #[arg(long)]
        period: Option<String>,
        /// IANA time zone of the period calendar (e.g. Europe/Berlin).
        #[arg(long)]
        timezone: Option<String>,
        /// Webhook URL for threshold alerts ("" removes it).
        #[arg(long)]
        webhook_url: Option<String>,
        /// Webhook payload: json, slack or discord.
        #[arg(long)]
        webhook_format: Option<String>,
        #[command(flatten)]
        out: Output,
    },
    /// Route, call and record one prompt.
    Complete {
        /// The prompt ("-" reads stdin).
        prompt: String,
        /// System prompt.
        #[arg(long)]
        system: Option<String>,
        /// Output token limit.
        #[arg(long, allow_negative_numbers = true)]
        max_tokens: Option<i64>,
        /// Most this call may cost, USD.
        #[arg(long, allow_negative_numbers = true)]
        budget_limit: Option<f64>,
        /// Only this provider.
        #[arg(long)]
        provider: Option<String>,
        /// Exactly this model (provider/model).
        #[arg(long)]
        model: Option<String>,
        /// Exactly this tier.
        #[arg(long)]
        tier: Option<String>,
        /// Near a tier boundary, take the cheaper tier (`cost`) or the
        /// stronger (`quality`); default: `[routing] prefer`.
        #[arg(long)]
        prefer: Option<String>,
        /// Whose budget pays.
        #[arg(long)]
        user: Option<String>,
        /// Also read the answer aloud (Cartesia) into a WAV file.
        #[arg(long)]
        speak: bool,
        /// Cartesia voice id for --speak.
        #[arg(long)]
        voice: Option<String>,
        /// Language --speak reads the answer in, one of the 42 of
        /// Cartesia's sonic-3 (ISO 639-1: en, fr, de, es, ja, zh, hi, ar,
        /// vi, ...); default: the answer's own when it is clear, else
        /// English.
        #[arg(long)]
        language: Option<String>,
        #[command(flatten)]
        out: Output,
    },
    /// Score JSONL prompts: reads {"id","prompt"} lines on stdin, writes
    /// {"id","score","tier","model","reasons"} lines on stdout.
    Score {
        /// Score by prompt length alone: the baseline the benchmarks and the
        /// routing evaluation compare against, through the same I/O path.
        #[arg(long)]
        length_only: bool,
    },
    /// Show what is configured: providers, data dir, ledger, pricing.
    Doctor {
        #[command(flatten)]
        out: Output,
    },
    /// Manage the pricing catalog.
    Pricing {
        #[command(subcommand)]
        action: PricingAction,
    },
    /// Add (or update) this server in Claude Desktop's claude_desktop_config.json.
    InstallClaude {
        /// Config file (default: Claude Desktop's, per OS).
        #[arg(long)]
        config: Option<std::path::PathBuf>,
        /// Server binary to register (default: this executable).
        #[arg(long)]
        binary: Option<std::path::PathBuf>,
        /// Print the resulting config without writing it.
        #[arg(long)]
        dry_run: bool,
    },
    /// Rate an earlier answer (by the request_id complete printed), so
    /// `calibrate` can learn which prompts need a stronger tier.
    Feedback {
        /// The request_id of the call being rated.
        request_id: String,
        /// good, ok, bad, or 1 (bad) to 5 (good).
        #[arg(long)]
        rating: String,
        /// Optional note, kept with the rating.
        #[arg(long)]
        note: Option<String>,
        #[command(flatten)]
        out: Output,
    },
    /// Propose routing thresholds from ratings and overrides in the ledger,
    /// with the effect on cost; --apply writes them to the config file.
    Calibrate {
        /// Look back this many days (1-3650, default 90).
        #[arg(long, default_value_t = 90, allow_negative_numbers = true)]
        days: i64,
        /// Only this user's calls.
        #[arg(long)]
        user: Option<String>,
        /// Write the proposed thresholds to the config file.
        #[arg(long)]
        apply: bool,
        #[command(flatten)]
        out: Output,
    },
    /// Delete ledger rows older than N days.
    Retention {
        /// Keep this many days (default: retention_days from the config file).
        #[arg(long)]
        older_than_days: Option<u32>,
    },
}

/// `pricing` subcommands.
#[derive(Debug, Subcommand)]
pub enum PricingAction {
    /// Download (or read) a LiteLLM-format catalog, validate it, and use it
    /// from now on instead of the bundled one.
    Refresh {
        /// URL to fetch (default: LiteLLM's live catalog).
        #[arg(long, conflicts_with = "file")]
        url: Option<String>,
        /// Local file to read instead.
        #[arg(long)]
        file: Option<std::path::PathBuf>,
        /// Accept a catalog that makes a paid model free or moves a price
        /// more than tenfold (refused otherwise: budgets rest on prices).
        #[arg(long)]
        force: bool,
    },
    /// Forget a refreshed catalog and go back to the bundled one.
    Reset,
}

/// `keys` subcommands.
#[derive(Debug, Subcommand)]
pub enum KeysAction {
    /// Create a key for a user and print it (shown only this once).
    Create {
        /// Whose budget the key's calls spend.
        #[arg(long)]
        user: String,
        /// A label, e.g. the machine or tool using it.
        #[arg(long)]
        name: Option<String>,
        /// May act for any user and set budgets.
        #[arg(long)]
        admin: bool,
    },
    /// List keys (ids, users, names; never the keys).
    List {
        #[command(flatten)]
        out: Output,
    },
    /// Revoke a key by its id; it is refused from the next request on.
    Revoke {
        /// The key's id (from `keys list`), or the whole key.
        id: String,
    },
}

/// Output format flag shared by commands.
#[derive(Debug, Args)]
pub struct Output {
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

async fn healthcheck(url: &str) -> Result<()> {
    // The server's base URL is what people have at hand: its probe is
    // `/health` (a bare base answered 404, read as the server being down).
    let probe;
    let url = match reqwest::Url::parse(url) {
        Ok(u) if u.path() == "/" && u.query().is_none() => {
            probe = u.join("health")?.to_string();
            probe.as_str()
        }
        _ => url,
    };
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(5))
        .build()?;
    let resp = client
        .get(url)
        .send()
        .await
        .with_context(|| format!("no answer from {url}"))?;
    if !resp.status().is_success() {
        bail!("{url} answered {}", resp.status());
    }
    println!("ok");
    Ok(())
}

fn keys_command(action: KeysAction, settings: &Settings) -> Result<()> {
    let ledger = crate::ledger::Ledger::open(&settings.ledger_path())?;
    let now = crate::optimizer::system_clock()();
    match action {
        KeysAction::Create { user, name, admin } => {
            // `--user "$UNSET"` must not quietly make a key that spends the
            // default budget.
            if user.trim().is_empty() {
                invalid_arg!("--user must name the key's user (it was empty)");
            }
            let user = crate::optimizer::validate_user(Some(&user))?;
            let k = crate::http::auth::create_key(&ledger, &user, name.as_deref(), admin, now)?;
            eprintln!(
                "Created key {} for user {:?}{}. It is shown only now; store it safely:",
                k.row.id,
                user,
                if admin { " (admin)" } else { "" }
            );
            println!("{}", k.key);
            Ok(())
        }
        KeysAction::List { out } => {
            let keys = ledger.api_keys()?;
            if out.json {
                println!("{}", serde_json::to_string_pretty(&keys)?);
                return Ok(());
            }
            if keys.is_empty() {
                println!("No API keys. Create one with `ai-cost-optimizer keys create --user ID`.");
            }
            for k in keys {
                println!(
                    "{}  user={}  {}{}created {}{}",
                    k.id,
                    k.user_id,
                    k.name.map(|n| format!("name={n}  ")).unwrap_or_default(),
                    if k.admin { "admin  " } else { "" },
                    crate::budget::rfc3339(k.created_ms),
                    k.revoked_ms
                        .map(|r| format!("  REVOKED {}", crate::budget::rfc3339(r)))
                        .unwrap_or_default()
                );
            }
            Ok(())
        }
        KeysAction::Revoke { id } => {
            // The whole key works too (what a user whose key leaked has at
            // hand); only its id is ever printed.
            let given = id.trim();
            let id = crate::http::auth::key_id_of(given).unwrap_or(given);
            if ledger.revoke_api_key(id, now)? {
                println!("revoked key {id}");
                Ok(())
            } else {
                invalid_arg!("no active key with id {id:?} (see `keys list`)")
            }
        }
    }
}

fn read_prompt(p: String) -> Result<String> {
    if p == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .context("cannot read the prompt from stdin")?;
        // The line end `echo` or a file's last line adds is not part of
        // the prompt (it changed its length, and so its score).
        let end = s.trim_end_matches(['\n', '\r']).len();
        s.truncate(end);
        Ok(s)
    } else {
        Ok(p)
    }
}

fn emit<T: serde::Serialize>(
    out: &Output,
    r: std::result::Result<T, ToolError>,
    text: impl Fn(&T) -> String,
) -> Result<()> {
    match r {
        Ok(v) => {
            let body = if out.json {
                serde_json::to_string_pretty(&v)? + "\n"
            } else {
                text(&v)
            };
            // Not `print!`: `complete` keeps SIGPIPE ignored (a reader gone
            // must not kill it before its billed call is recorded), and
            // `print!` panics on the EPIPE that follows. The call is
            // recorded by now; a reader that left needs nothing more.
            let mut stdout = std::io::stdout().lock();
            match stdout
                .write_all(body.as_bytes())
                .and_then(|()| stdout.flush())
            {
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
                r => r.context("cannot write to stdout"),
            }
        }
        // With --json, `main` prints the failure as JSON too.
        Err(e) => Err(anyhow::Error::new(e)),
    }
}

/// Runs a non-serve command.
pub async fn run(command: Command, settings: Settings) -> Result<()> {
    match command {
        Command::Serve { .. } => unreachable!("serve is handled by main"),
        Command::Keys { action } => keys_command(action, &settings),
        Command::Healthcheck { url } => healthcheck(&url).await,
        Command::Score { length_only } => score_stdin(&settings, length_only),
        Command::Pricing { action } => pricing_command(action, &settings).await,
        Command::InstallClaude {
            config,
            binary,
            dry_run,
        } => crate::install::run_cli(config, binary, dry_run),
        other => {
            let core = Arc::new(Optimizer::from_env(settings)?);
            run_tool(other, core).await
        }
    }
}

async fn run_tool(command: Command, core: Arc<Optimizer>) -> Result<()> {
    match command {
        Command::Recommend {
            prompt,
            max_tokens,
            budget_limit,
            prefer,
            user,
            out,
        } => {
            let args = RecommendArgs {
                prompt: read_prompt(prompt)?,
                max_tokens,
                budget_limit,
                prefer,
                user_id: user,
            };
            emit(&out, core.recommend(&args), render::recommendation)
        }
        Command::Costs {
            provider,
            model,
            prompt,
            out,
        } => emit(
            &out,
            core.check_costs(&CostArgs {
                provider,
                model,
                prompt,
            }),
            render::cost_table,
        ),
        Command::Usage {
            days,
            since,
            user,
            group_by,
            out,
        } => emit(
            &out,
            core.usage(&UsageArgs {
                days,
                since,
                user_id: user,
                group_by,
            }),
            render::usage,
        ),
        Command::Budget {
            set,
            thresholds,
            mode,
            user,
            global,
            period,
            timezone,
            webhook_url,
            webhook_format,
            out,
        } => match set {
            Some(limit) => {
                let r = emit(
                    &out,
                    core.set_budget(&SetBudgetArgs {
                        monthly_limit: limit,
                        alert_thresholds: thresholds,
                        user_id: user,
                        mode,
                        period,
                        timezone,
                        webhook_url,
                        webhook_format,
                        global: global.then_some(true),
                    }),
                    render::budget_update,
                );
                core.flush_alerts().await;
                r
            }
            None => {
                if thresholds.is_some()
                    || mode.is_some()
                    || period.is_some()
                    || timezone.is_some()
                    || webhook_url.is_some()
                    || webhook_format.is_some()
                {
                    invalid_arg!(
                        "--thresholds, --mode, --period, --timezone and --webhook-* need --set LIMIT"
                    );
                }
                let user = if global {
                    None
                } else {
                    Some(crate::optimizer::validate_user(user.as_deref())?)
                };
                let shown = core.show_budget(user.as_deref()).and_then(|b| {
                    b.ok_or_else(|| {
                        ToolError::Invalid(
                            "no global budget is set; use --global --set LIMIT".into(),
                        )
                    })
                });
                emit(&out, shown, |b| {
                    let mut s = render::budget_update(b);
                    // Showing, not setting: drop the "set to" wording.
                    s = s.replacen(" set to ", ": ", 1);
                    s
                })
            }
        },
        Command::Complete {
            prompt,
            system,
            max_tokens,
            budget_limit,
            provider,
            model,
            tier,
            prefer,
            user,
            speak,
            voice,
            language,
            out,
        } => {
            let args = CompleteArgs {
                prompt: read_prompt(prompt)?,
                system,
                max_tokens,
                budget_limit,
                force_provider: provider,
                force_model: model,
                tier,
                prefer,
                user_id: user,
                speak: speak.then_some(true),
                voice,
                language,
                temperature: None,
                top_p: None,
                seed: None,
                feedback: None,
                feedback_owner: None,
            };
            let r = emit(
                &out,
                core.complete(&args, &crate::providers::NoSink).await,
                render::completion,
            );
            core.flush_alerts().await;
            r
        }
        Command::Dashboard {
            out,
            open,
            days,
            user,
        } => {
            let opts = crate::dashboard::DashboardOptions {
                days,
                user_id: user,
            };
            let now = crate::optimizer::system_clock()();
            let path = crate::dashboard::write(&core, &opts, out.as_deref(), now)?;
            println!("{}", path.display());
            if open && let Err(e) = crate::dashboard::open_in_browser(&path) {
                eprintln!("could not open a browser ({e}); open the file above yourself");
            }
            Ok(())
        }
        Command::Doctor { out } => emit(&out, Ok(core.doctor()), render::doctor),
        Command::Feedback {
            request_id,
            rating,
            note,
            out,
        } => {
            let args = crate::feedback::FeedbackArgs {
                request_id,
                rating: crate::feedback::RatingInput::Word(rating),
                note,
            };
            let now = crate::optimizer::system_clock()();
            emit(
                &out,
                crate::feedback::record(&core, &args, "cli", now, None),
                crate::feedback::render_receipt,
            )
        }
        Command::Calibrate {
            days,
            user,
            apply,
            out,
        } => {
            if !(1..=3650).contains(&days) {
                invalid_arg!("--days must be between 1 and 3650, got {days}");
            }
            let days = days as u32; // 1..=3650
            let user = match user {
                Some(u) => Some(crate::optimizer::validate_user(Some(&u))?),
                None => None,
            };
            let now = crate::optimizer::system_clock()();
            let proposal = crate::feedback::calibrate(&core, days, user.as_deref(), now)?;
            let target = crate::feedback::config_target(&core);
            let mut applied = false;
            if apply && proposal.changed {
                let path = target
                    .as_deref()
                    .context("no config file path; set COST_OPTIMIZER_CONFIG")?;
                crate::feedback::write_thresholds(path, proposal.proposed)?;
                applied = true;
            }
            let c = crate::feedback::Calibration {
                proposal,
                days,
                config_file: target.map(|p| p.display().to_string()),
                applied,
                user,
            };
            emit(&out, Ok(c), crate::feedback::render_calibration)
        }
        Command::Retention { older_than_days } => {
            let Some(days) = older_than_days.or(core.settings().retention_days) else {
                invalid_arg!("give --older-than-days N (or set retention_days in the config file)");
            };
            if days == 0 {
                invalid_arg!("--older-than-days must be at least 1");
            }
            let now = crate::optimizer::system_clock()();
            // Whole UTC days: reports count days, and a day cut in the
            // middle would show as a quiet day rather than a pruned one.
            let cutoff_for =
                |days: i64| (now - days * 86_400_000).div_euclid(86_400_000) * 86_400_000;
            let cutoff = cutoff_for(i64::from(days));
            // Deleting a call takes its cost out of its budget period's
            // spend: pruning into a current period would hand that money
            // back to be spent again.
            let (start, scope) = core.earliest_period_start(now)?;
            if cutoff > start {
                // The smallest value accepted, by the same rule (the days
                // are whole UTC days; the period may start at another
                // zone's midnight): "(now - start) + 1 days" was one more.
                let need = (1..=36_500)
                    .find(|d| cutoff_for(*d) <= start)
                    .unwrap_or(36_500);
                invalid_arg!(
                    "--older-than-days {days} would delete calls of a current budget period \
                     ({} budget, period started {}), and their cost would no longer count against it; \
                     keep at least {need} days",
                    if scope == crate::ledger::GLOBAL_SCOPE {
                        "the global".to_string()
                    } else {
                        format!("{scope:?}'s")
                    },
                    crate::budget::rfc3339(start)
                );
            }
            let n = core.ledger()?.prune(cutoff)?;
            println!(
                "deleted {n} ledger rows older than {days} days (before {})",
                crate::budget::rfc3339(cutoff)
            );
            Ok(())
        }
        Command::Serve { .. }
        | Command::Keys { .. }
        | Command::Healthcheck { .. }
        | Command::Score { .. }
        | Command::Pricing { .. }
        | Command::InstallClaude { .. } => {
            unreachable!("handled by run")
        }
    }
}

/// One line of `score` input.
#[derive(serde::Deserialize)]
struct ScoreIn {
    id: serde_json::Value,
    prompt: String,
}

/// One line of `score` output.
#[derive(serde::Serialize)]
struct ScoreOut<'a> {
    id: &'a serde_json::Value,
    score: f64,
    /// The tier routing would use: the scored one, or the neighbour the
    /// unsure margin sends it to under the configured `prefer` (cheaper
    /// for `cost`, stronger for `quality`). Routing a real call also skips
    /// a step down that would cost more (custom tiers whose cheaper tier
    /// is dearer), which this does not price.
    tier: &'static str,
    /// The model routing would try first for a typical short prompt in
    /// that tier (`null` when the tier lists none).
    model: Option<&'a str>,
    reasons: Vec<&'static str>,
}

/// Streams scores for JSONL prompts. A malformed line (not JSON, not
/// UTF-8) produces an `error` line and does not stop the stream; output is
/// flushed whenever the input has nothing more buffered, so a caller that
/// writes one line and waits gets its answer.
fn score_stdin(settings: &Settings, length_only: bool) -> Result<()> {
    let registry = Registry::from_env(
        &|k| crate::config::env_var(k),
        settings.connect_timeout,
        settings.idle_timeout,
        settings.request_timeout,
    )?;
    // A damaged refreshed catalog does not stop scoring: the model shown
    // per tier then comes from the bundled one.
    let catalog = Catalog::load(
        Some(&settings.refreshed_pricing_path()),
        &settings.price_overrides,
    )
    .unwrap_or_else(|e| {
        tracing::warn!(error = %e, "pricing catalog not loaded; using the bundled one");
        Catalog::bundled()
    });
    // The tier lists as the server reads them (names resolved to ids).
    let mut settings = settings.clone();
    crate::optimizer::resolve_model_names(&mut settings, &catalog);
    let router = Router::new(settings.tier_thresholds, &settings.tier_models);
    // Per scored tier: the tier a call lands in (the nearest with an
    // enabled model, as routing does) and its typical model, so the two
    // printed together always belong together.
    let served: Vec<(crate::router::Tier, Option<String>)> = crate::router::Tier::ALL
        .iter()
        .map(|t| {
            (
                router.serving_tier(*t, &catalog, &registry),
                router.typical_model(*t, &catalog, &registry),
            )
        })
        .collect();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut input = std::io::BufReader::with_capacity(1 << 16, std::io::stdin().lock());
    let mut bytes = Vec::new();
    let mut line_no = 0u64;
    let mut failed = 0u64;
    loop {
        if input.buffer().is_empty() {
            out.flush()?;
        }
        bytes.clear();
        if input.read_until(b'\n', &mut bytes)? == 0 {
            break;
        }
        line_no += 1;
        let mut text = match std::str::from_utf8(&bytes) {
            Ok(t) => t,
            Err(e) => {
                let msg = serde_json::json!({"line": line_no, "error": format!("not UTF-8: {e}")});
                serde_json::to_writer(&mut out, &msg)?;
                out.write_all(b"\n")?;
                failed += 1;
                continue;
            }
        };
        if line_no == 1 {
            text = text.strip_prefix('\u{feff}').unwrap_or(text);
        }
        if text.trim().is_empty() {
            continue;
        }
        // An object only: serde reads `{id, prompt}` from `[1, "hi"]` too.
        let parsed = if text.trim_start().starts_with('{') {
            serde_json::from_str::<ScoreIn>(text).map_err(|e| e.to_string())
        } else {
            Err("not a JSON object".to_string())
        };
        match parsed {
            Ok(item) => {
                let (value, reasons) = if length_only {
                    (scorer::length_only(&item.prompt), vec!["length"])
                } else {
                    // Feature names only: the example phrases behind `reasons()`
                    // sentences are never printed here, so they are not tracked.
                    let s = scorer::score_unexplained(&item.prompt);
                    (s.value, s.top_features(3))
                };
                let (tier, model) = &served[router.routed_tier(value, settings.prefer) as usize];
                let o = ScoreOut {
                    id: &item.id,
                    score: value,
                    tier: tier.as_str(),
                    model: model.as_deref(),
                    reasons,
                };
                serde_json::to_writer(&mut out, &o)?;
                out.write_all(b"\n")?;
            }
            Err(e) => {
                // The line's id too, when it has one: a caller matches
                // answers to inputs by id, not by counting lines.
                let id = serde_json::from_str::<serde_json::Value>(text)
                    .ok()
                    .and_then(|v| v.get("id").cloned());
                let mut msg = serde_json::json!({"line": line_no, "error": format!("expected {{\"id\",\"prompt\"}}: {e}")});
                if let Some(id) = id {
                    msg["id"] = id;
                }
                serde_json::to_writer(&mut out, &msg)?;
                out.write_all(b"\n")?;
                failed += 1;
            }
        }
    }
    out.flush()?;
    // Every line was answered; the exit status says whether all were
    // scored, for scripts that check it.
    if failed > 0 {
        bail!(
            "{failed} of {line_no} lines could not be scored (their output lines have an \"error\")"
        );
    }
    Ok(())
}

/// The largest catalog `pricing refresh` downloads (LiteLLM's is about
/// 3.5 MB): a server sending more is not sending a catalog.
const MAX_CATALOG_BYTES: usize = 64 << 20;

/// The body of `resp` as text, refused past `limit` bytes.
async fn read_capped(mut resp: reqwest::Response, limit: usize) -> Result<String> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        if body.len() + chunk.len() > limit {
            bail!(
                "the catalog is larger than {} MiB; refusing it",
                limit >> 20
            );
        }
        body.extend_from_slice(&chunk);
    }
    String::from_utf8(body).context("the catalog is not UTF-8 text")
}

async fn pricing_command(action: PricingAction, settings: &Settings) -> Result<()> {
    let dest = settings.refreshed_pricing_path();
    match action {
        PricingAction::Reset => {
            if dest.exists() {
                std::fs::remove_file(&dest)
                    .with_context(|| format!("cannot remove {}", dest.display()))?;
                println!("removed {}; using the bundled catalog", dest.display());
            } else {
                println!("no refreshed catalog; already using the bundled one");
            }
            Ok(())
        }
        PricingAction::Refresh { url, file, force } => {
            let source = match (&file, &url) {
                (Some(f), _) => f.display().to_string(),
                (None, Some(u)) => u.clone(),
                (None, None) => pricing::DEFAULT_REFRESH_URL.to_string(),
            };
            let text = match (file, url) {
                (Some(f), _) => {
                    // The same cap as a download: a file this size is not
                    // a catalog, and reading it whole would hold it all.
                    let size = std::fs::metadata(&f)
                        .with_context(|| format!("cannot read {}", f.display()))?
                        .len();
                    if size > MAX_CATALOG_BYTES as u64 {
                        bail!(
                            "{} is larger than {} MiB; refusing it",
                            f.display(),
                            MAX_CATALOG_BYTES >> 20
                        );
                    }
                    std::fs::read_to_string(&f)
                        .with_context(|| format!("cannot read {}", f.display()))?
                }
                (None, u) => {
                    let u = u.unwrap_or_else(|| pricing::DEFAULT_REFRESH_URL.to_string());
                    let parsed = reqwest::Url::parse(&u).ok();
                    let https = parsed.as_ref().is_some_and(|p| p.scheme() == "https");
                    let loopback = parsed.as_ref().is_some_and(|p| {
                        p.scheme() == "http"
                            && p.host_str().is_some_and(|h| {
                                let h = h.trim_start_matches('[').trim_end_matches(']');
                                h == "localhost"
                                    || h.parse::<std::net::IpAddr>().is_ok_and(|a| a.is_loopback())
                            })
                    });
                    // Prices decide what budgets refuse: not over a channel
                    // anyone on the path could rewrite.
                    if !(https || loopback) {
                        invalid_arg!(
                            "--url must be an https URL (plain http only to this machine), got {u:?}"
                        );
                    }
                    // Redirects only to https: a redirect to plain http would
                    // undo the check above.
                    let client = reqwest::Client::builder()
                        .timeout(std::time::Duration::from_secs(60))
                        .redirect(reqwest::redirect::Policy::custom(|a| {
                            if a.url().scheme() == "https" && a.previous().len() < 10 {
                                a.follow()
                            } else {
                                a.stop()
                            }
                        }))
                        .build()?;
                    let resp = client
                        .get(&u)
                        .send()
                        .await
                        .with_context(|| format!("cannot fetch {u}"))?;
                    if !resp.status().is_success() {
                        bail!("fetching {u} answered HTTP {}", resp.status());
                    }
                    read_capped(resp, MAX_CATALOG_BYTES)
                        .await
                        .context("cannot read the catalog body")?
                }
            };
            let current = Catalog::load(Some(&dest), &Default::default())?;
            let report = pricing::validate_refresh(&text, &current, force)
                .with_context(|| format!("the catalog from {source} was not used"))?;
            let dir = dest
                .parent()
                .context("refreshed catalog path has no parent")?;
            crate::ledger::create_private_dir(dir)?;
            // Written beside, synced, then renamed: a crash or a power cut
            // never leaves half a catalog (or an empty one).
            crate::atomic_file::replace(&dest, &text)
                .with_context(|| format!("cannot replace {}", dest.display()))?;
            println!(
                "pricing refreshed: {} models ({}) written to {}; was {} models",
                report.new_models,
                report
                    .per_provider
                    .iter()
                    .map(|(p, n)| format!("{p} {n}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                dest.display(),
                report.old_models
            );
            Ok(())
        }
    }
}
