//! The dashboard as an MCP App (`io.modelcontextprotocol/ui`): a `ui://`
//! resource whose HTML a host that supports MCP Apps renders in a sandboxed
//! frame beside `query_usage` results. Hosts without MCP Apps ignore the
//! link and still get the tool's text and structured content.
//!
//! The page is the same self-contained file `ai-cost-optimizer dashboard`
//! writes (default period, all users), rendered fresh on every read.

use rmcp::ErrorData as McpError;
use rmcp::model::{MetaObject, ReadResourceResult, Resource, ResourceContents};
use serde_json::json;

use crate::dashboard::{self, DashboardOptions};
use crate::optimizer::{Optimizer, ToolError, system_clock};

/// URI of the dashboard resource.
pub const DASHBOARD_URI: &str = "ui://ai-cost-optimizer/dashboard";

/// MIME type MCP Apps hosts look for.
pub const APP_MIME: &str = "text/html;profile=mcp-app";

/// `_meta` of the `query_usage` tool: links the dashboard as its UI (the
/// current `ui.resourceUri` key and the earlier flat `ui/resourceUri`).
pub fn usage_tool_meta() -> MetaObject {
    let mut m = serde_json::Map::new();
    m.insert("ui".into(), json!({ "resourceUri": DASHBOARD_URI }));
    m.insert("ui/resourceUri".into(), json!(DASHBOARD_URI));
    MetaObject(m)
}

/// The listing entry of the dashboard resource.
pub fn resource() -> Resource {
    Resource::new(DASHBOARD_URI, "dashboard")
        .with_title("AI Cost Optimizer dashboard")
        .with_description(
            "Spend over the last 30 days by provider and model, savings against always-premium, budget progress, routing by tier and recent calls, as one self-contained HTML page.",
        )
        .with_mime_type(APP_MIME)
}

/// Renders the dashboard for `resources/read`: everyone's calls, or only
/// `user`'s (an HTTP client whose key may see no one else).
pub fn read(
    core: &Optimizer,
    uri: &str,
    user: Option<String>,
) -> Result<ReadResourceResult, McpError> {
    if uri != DASHBOARD_URI {
        return Err(McpError::resource_not_found(
            format!("no resource {uri}; this server has {DASHBOARD_URI}"),
            None,
        ));
    }
    let opts = DashboardOptions {
        user_id: user,
        ..DashboardOptions::default()
    };
    let data = dashboard::collect(core, &opts, system_clock()())
        .map_err(|e: ToolError| McpError::internal_error(e.to_string(), None))?;
    let html = dashboard::render(&data);
    Ok(ReadResourceResult::new(vec![
        ResourceContents::text(html, DASHBOARD_URI).with_mime_type(APP_MIME),
    ]))
}
