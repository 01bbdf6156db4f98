//! The floor of any proxy on this machine, for `scripts/bench-http.sh`: an
//! axum server that forwards each `POST /v1/chat/completions` body to an
//! upstream's `/chat/completions` with reqwest and returns its answer, and
//! does nothing else (no routing, no budget, no ledger, no parsing).
//!
//! Built from the same HTTP stack as `serve --http` (axum server, reqwest
//! client, tokio with two workers), so `proxy − bare_proxy` is what our own
//! work costs and `bare_proxy − direct` is the two extra loopback hops and
//! wake-ups that no proxy avoids.
//!
//! `cargo run --release --example bare_proxy -- 127.0.0.1:0 http://UPSTREAM`
//! prints the bound address on stdout.
//!
//! An optional third argument, `WORK_US`, makes each request also burn that
//! many microseconds of CPU on its worker (half before the upstream call,
//! half after). It answers "how much work per request can a proxy on this
//! machine do and still add at most X at p99?", which is what a latency
//! target asks of `serve --http` (`WORK_US="50 100" scripts/bench-http.sh`).

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::post;
use std::time::{Duration, Instant};

/// Spins on the calling worker for `us` microseconds: work that holds the
/// thread, as our own per-request work does (a sleep would free it).
fn burn(us: u64) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_micros(us) {
        std::hint::spin_loop();
    }
}

async fn forward(
    State((http, url, work_us)): State<(reqwest::Client, String, u64)>,
    body: Bytes,
) -> impl IntoResponse {
    burn(work_us / 2);
    let sent = http
        .post(&url)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await;
    let answer = match sent {
        Ok(r) => r.bytes().await,
        Err(e) => Err(e),
    };
    burn(work_us - work_us / 2);
    match answer {
        Ok(b) => ([(header::CONTENT_TYPE, "application/json")], b).into_response(),
        Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:0".into());
    let Some(upstream) = args.next() else {
        eprintln!("usage: bare_proxy ADDR UPSTREAM_BASE_URL [WORK_US]");
        std::process::exit(2);
    };
    let work_us = match args.next().map(|w| w.parse::<u64>()) {
        None => 0,
        Some(Ok(us)) => us,
        Some(Err(e)) => {
            eprintln!("bare_proxy: WORK_US must be a whole number of microseconds: {e}");
            std::process::exit(2);
        }
    };
    let url = format!("{}/chat/completions", upstream.trim_end_matches('/'));
    let http = reqwest::Client::new();
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("http://{}", listener.local_addr()?);
    let app = Router::new()
        .route("/v1/chat/completions", post(forward))
        .with_state((http, url, work_us));
    axum::serve(listener, app).await
}
