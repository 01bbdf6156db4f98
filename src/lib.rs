//! AI Cost Optimizer: score every prompt, route it to the cheapest model that can
//! handle it, call that model, and record what it really cost.
//!
//! The crate is a library with a thin binary on top. Read the modules in this
//! order to follow one `complete_prompt` call from the outside in:
//!
//! - [`mcp`]: the MCP server; thin tool handlers over [`optimizer`].
//! - [`http`]: `serve --http`: MCP over streamable HTTP, the OpenAI-compatible
//!   proxy, REST, metrics and client API keys.
//! - [`optimizer`]: the core that ties routing, providers, pricing, ledger and
//!   budgets together; the CLI and the MCP tools both call it.
//! - [`router`]: the complexity scorer, the tier/model choice and threshold
//!   calibration.
//! - [`feedback`]: ratings of answers, and `calibrate` from ratings and overrides.
//! - [`providers`]: one file per provider over a shared OpenAI-compatible module.
//! - [`pricing`]: the bundled LiteLLM catalog, refreshes and user overrides.
//! - [`tokens`]: token estimates before a call (tiktoken-rs).
//! - [`ledger`]: the SQLite record of every call, behind one narrow type.
//! - [`budget`]: periods, limits, thresholds and the refusal of calls that would
//!   overspend.
//! - [`config`]: every setting in one place (env vars, the TOML file, defaults).
//! - [`dashboard`]: the self-contained HTML usage dashboard (inline SVG charts).
//! - [`secrets`]: API keys, and the redaction that keeps them out of every output.

pub mod atomic_file;
pub mod budget;
pub mod cli;
pub mod config;
pub mod dashboard;
pub mod feedback;
pub mod http;
pub mod install;
pub mod ledger;
pub mod logging;
pub mod mcp;
pub mod optimizer;
pub mod pricing;
pub mod providers;
pub mod render;
pub mod router;
pub mod secrets;
pub mod tokens;
