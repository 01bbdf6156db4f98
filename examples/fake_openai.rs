//! A minimal OpenAI-compatible provider for load runs (`scripts/bench-http.sh`):
//! answers every POST with the same small chat completion, as fast as axum
//! can, so the proxy's own overhead is what a benchmark measures.
//!
//! `cargo run --release --example fake_openai -- 127.0.0.1:0` prints the
//! bound address on stdout.

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;

const REPLY: &str = r#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"deepseek-v3.2","choices":[{"index":0,"message":{"role":"assistant","content":"Paris."},"finish_reason":"stop"}],"usage":{"prompt_tokens":24,"completion_tokens":3,"total_tokens":27}}"#;

async fn reply() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], REPLY)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("http://{}", listener.local_addr()?);
    let app = Router::new().fallback(reply);
    axum::serve(listener, app).await
}
