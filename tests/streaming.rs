//! Streaming through a real MCP client: progress notifications while the
//! answer arrives, and cancellation that stops the provider request,
//! releases the budget hold and records the abandoned attempt.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use rmcp::handler::client::progress::ProgressDispatcher;
use rmcp::model::{CallToolRequestParams, ClientRequest, ProgressNotificationParam, Request};
use rmcp::service::PeerRequestOptions;
use rmcp::transport::{ConfigureCommandExt, TokioChildProcess};
use rmcp::{ClientHandler, ServiceExt};
use serde_json::json;

#[derive(Clone, Default)]
struct Client {
    progress: ProgressDispatcher,
    seen: Arc<Mutex<Vec<ProgressNotificationParam>>>,
}

impl ClientHandler for Client {
    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _ctx: rmcp::service::NotificationContext<rmcp::RoleClient>,
    ) {
        self.seen.lock().unwrap().push(params.clone());
        self.progress.handle_notification(params).await;
    }
}

async fn connect(
    dir: &std::path::Path,
    env: &[(&str, String)],
) -> rmcp::service::RunningService<rmcp::RoleClient, Client> {
    let mut vars = base_env(dir);
    vars.extend(env.iter().map(|(k, v)| (k.to_string(), v.clone())));
    let cmd = tokio::process::Command::new(binary()).configure(|c| {
        c.env_clear();
        for (k, v) in &vars {
            c.env(k, v);
        }
    });
    let (transport, _) = TokioChildProcess::builder(cmd)
        .stderr(std::fs::File::create(dir.join("stderr.log")).unwrap())
        .spawn()
        .unwrap();
    Client::default().serve(transport).await.unwrap()
}

fn call(args: serde_json::Value) -> ClientRequest {
    ClientRequest::CallToolRequest(Request::new(
        CallToolRequestParams::new("complete_prompt")
            .with_arguments(args.as_object().unwrap().clone()),
    ))
}

/// Tool `name` with `args`, through `client`.
async fn tool(
    client: &rmcp::service::RunningService<rmcp::RoleClient, Client>,
    name: &'static str,
    args: serde_json::Value,
) -> rmcp::model::CallToolResult {
    client
        .call_tool(
            CallToolRequestParams::new(name).with_arguments(args.as_object().unwrap().clone()),
        )
        .await
        .unwrap()
}

/// `complete_prompt` with `args`, through `client`.
async fn complete(
    client: &rmcp::service::RunningService<rmcp::RoleClient, Client>,
    args: serde_json::Value,
) -> rmcp::model::CallToolResult {
    tool(client, "complete_prompt", args).await
}

/// The twelve words "w0 " … "w11 " as DeepSeek streams them, one event
/// every `gap`.
fn twelve_words(gap: Duration) -> (Reply, String) {
    let pieces: Vec<String> = (0..12).map(|i| format!("w{i} ")).collect();
    let refs: Vec<&str> = pieces.iter().map(String::as_str).collect();
    let reply = openai_sse(
        "deepseek-v3.2",
        &refs,
        json!({"prompt_tokens": 5, "completion_tokens": 12}),
    )
    .dripped(gap);
    (reply, pieces.concat())
}

/// A server with DeepSeek at `fake`, and `extra` settings.
async fn deepseek_server(
    dir: &std::path::Path,
    fake: &FakeProvider,
    extra: &[(&str, &str)],
) -> rmcp::service::RunningService<rmcp::RoleClient, Client> {
    let mut env = vec![
        ("DEEPSEEK_API_KEY", "sk-stream-FAKE-00000000000".to_string()),
        ("DEEPSEEK_BASE_URL", fake.base.clone()),
    ];
    env.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    connect(dir, &env).await
}

const FORCED_DEEPSEEK: &str = "deepseek/deepseek-v3.2";

/// Sixty words as DeepSeek streams them, 100 ms apart (still streaming
/// long after a test cancels), and their text.
fn sixty_slow_words() -> (Reply, String) {
    let pieces: Vec<String> = (0..60).map(|i| format!("word{i} ")).collect();
    let refs: Vec<&str> = pieces.iter().map(String::as_str).collect();
    let reply = openai_sse(
        "deepseek-v3.2",
        &refs,
        json!({"prompt_tokens": 5, "completion_tokens": 20}),
    )
    .dripped(Duration::from_millis(100));
    (reply, pieces.concat())
}

/// Starts a cheap-tier `complete_prompt` (100,000 tokens held), waits
/// until `fake` has begun sending its `events`-th event (so the ones
/// before it have gone out: a keep-alive, the role chunk, then words),
/// runs `before_cancel`, and cancels.
async fn cancel_once_streaming(
    client: &rmcp::service::RunningService<rmcp::RoleClient, Client>,
    fake: &FakeProvider,
    events: usize,
    before_cancel: impl FnOnce(),
) {
    let handle = client
        .send_cancellable_request(
            call(json!({"prompt": "count", "tier": "cheap", "max_tokens": 100000})),
            PeerRequestOptions::no_options(),
        )
        .await
        .unwrap();
    for _ in 0..500 {
        if fake.drip_sent() >= events {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        fake.drip_sent() >= events,
        "the provider never started streaming"
    );
    before_cancel();
    handle
        .cancel(Some("user pressed stop".into()))
        .await
        .unwrap();
}

#[tokio::test]
async fn progress_is_reported_while_the_answer_streams() {
    let pieces = ["The ", "quick ", "brown ", "fox ", "jumps."];
    let fake = FakeProvider::start(
        openai_sse(
            "deepseek-v3.2",
            &pieces,
            json!({"prompt_tokens": 5, "completion_tokens": 5}),
        )
        .dripped(Duration::from_millis(250)),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let client = connect(
        dir.path(),
        &[
            ("DEEPSEEK_API_KEY", "sk-stream-FAKE-00000000000".into()),
            ("DEEPSEEK_BASE_URL", fake.base.clone()),
        ],
    )
    .await;
    let handle = client
        .send_cancellable_request(
            call(json!({"prompt": "fox?", "tier": "cheap"})),
            PeerRequestOptions::no_options(),
        )
        .await
        .unwrap();
    let token = handle.progress_token.clone();
    let resp = handle.await_response().await.unwrap();
    let rmcp::model::ServerResult::CallToolResult(r) = resp else {
        panic!("unexpected response {resp:?}")
    };
    let answer = r.structured_content.unwrap()["answer"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(answer, pieces.concat());
    let seen = client.service().seen.lock().unwrap().clone();
    assert!(
        seen.len() >= 2,
        "expected several progress notifications, got {seen:?}"
    );
    assert!(seen.iter().all(|p| p.progress_token == token));
    assert!(
        seen.windows(2).all(|w| w[0].progress < w[1].progress),
        "{seen:?}"
    );
    let last = seen.last().unwrap().progress;
    assert!(
        last > 0.0 && last <= answer.chars().count() as f64,
        "{last}"
    );
    assert!(seen[0].message.as_deref().unwrap().contains("characters"));
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn cancelling_stops_the_provider_and_releases_the_hold() {
    let (reply, answer) = sixty_slow_words();
    let fake = FakeProvider::start(reply).await;
    let dir = tempfile::tempdir().unwrap();
    let client = deepseek_server(dir.path(), &fake, &[]).await;
    // Three words out (and 100 ms for them to arrive) before the cancel.
    cancel_once_streaming(&client, &fake, 6, || {}).await;

    // The provider's stream (65 events, 100 ms apart) stops well before
    // its end: either the fake sees the connection drop, or it stops being
    // read. Had the request kept running, ~35 more events would go out.
    // Waited for, not guessed: the fake sees the connection drop.
    let at_cancel = fake.drip_sent();
    for _ in 0..500 {
        if fake.aborted() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after = fake.drip_sent();
    assert_eq!(
        fake.aborted(),
        1,
        "the provider request kept running after cancellation ({at_cancel} → {after} events)"
    );

    // No money is held, the attempt is recorded, and the server still serves.
    let u = tool(&client, "query_usage", json!({}))
        .await
        .structured_content
        .unwrap();
    assert_eq!(u["budget"]["reserved_usd"], json!(0.0), "{u}");
    assert_eq!(u["calls"], json!(0));
    assert_eq!(u["totals"]["failed_attempts"], json!(1));
    // The provider bills what it generated before the cancel: the attempt
    // is charged an estimate (prompt + text streamed so far), not $0, and
    // far less than the 100,000-token worst case that was held.
    let row = &u["totals"];
    let out = row["output_tokens"].as_u64().unwrap();
    let streamed_max = (answer.len() as u64).div_ceil(4);
    // Words reached the server before the cancel: they are charged.
    assert!((1..=streamed_max).contains(&out), "{row}");
    assert!(row["input_tokens"].as_u64().unwrap() >= 1, "{row}");
    let cost = row["cost_usd"].as_f64().unwrap();
    assert!(
        cost > 0.0,
        "a cancelled attempt was recorded as free: {row}"
    );
    assert_eq!(u["budget"]["spent_usd"].as_f64().unwrap(), cost, "{u}");
    client.cancel().await.unwrap();
}

/// Two timeouts: an answer that keeps streaming is not cut off by the idle
/// limit (here 2.4 s against a 1 s idle limit, within the 60 s total),
/// while a provider that goes silent for longer than the idle limit is.
#[tokio::test]
async fn a_long_stream_is_not_cut_off_but_a_stall_is() {
    let (reply, answer) = twelve_words(Duration::from_millis(200));
    let fake = FakeProvider::start(reply).await;
    let dir = tempfile::tempdir().unwrap();
    let client = deepseek_server(
        dir.path(),
        &fake,
        &[
            ("COST_OPTIMIZER_IDLE_TIMEOUT_SECS", "1"),
            ("COST_OPTIMIZER_REQUEST_TIMEOUT_SECS", "60"),
            ("COST_OPTIMIZER_MAX_RETRIES", "0"),
        ],
    )
    .await;
    let args = json!({"prompt": "count", "force_model": FORCED_DEEPSEEK});
    let r = complete(&client, args.clone()).await;
    assert_ne!(r.is_error, Some(true), "{:?}", r.content);
    let c = r.structured_content.unwrap();
    assert_eq!(c["answer"], answer, "{c}");

    // Silent for 1.5 s between events: ended by the idle limit.
    fake.push(twelve_words(Duration::from_millis(1500)).0);
    let r = complete(&client, args).await;
    assert_eq!(r.is_error, Some(true));
    let text = format!("{:?}", r.content);
    assert!(text.contains("did not answer in time"), "{text}");
    client.cancel().await.unwrap();
}

/// A provider that keeps the stream open with keep-alive comments only
/// (DeepSeek's `: keep-alive` while a request waits in its queue, for up to
/// 30 minutes) is stalled after four idle limits (4 s here, against 10 s
/// of keep-alives), not the whole total timeout waited out.
#[tokio::test]
async fn keep_alives_alone_are_a_stall() {
    let keep_alives = ": keep-alive\n\n".repeat(100);
    let stalled = streamed("text/event-stream", keep_alives).dripped(Duration::from_millis(100));
    let deepseek = FakeProvider::start(stalled).await;
    let dir = tempfile::tempdir().unwrap();
    let client = deepseek_server(
        dir.path(),
        &deepseek,
        &[
            ("COST_OPTIMIZER_IDLE_TIMEOUT_SECS", "1"),
            ("COST_OPTIMIZER_REQUEST_TIMEOUT_SECS", "60"),
            ("COST_OPTIMIZER_MAX_RETRIES", "0"),
        ],
    )
    .await;
    let r = complete(
        &client,
        json!({"prompt": "count", "force_model": FORCED_DEEPSEEK}),
    )
    .await;
    assert_eq!(r.is_error, Some(true));
    let text = format!("{:?}", r.content);
    assert!(text.contains("keep-alives only"), "{text}");
    // The provider's stream was dropped long before its 10 s of keep-alives.
    for _ in 0..500 {
        if deepseek.aborted() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        deepseek.aborted(),
        1,
        "the stalled stream was read to its end"
    );
    client.cancel().await.unwrap();
}

/// Cancelled while Cartesia reads the answer out: Cartesia accepted the
/// request and bills its characters, so the speech attempt is recorded at
/// its price (not dropped from the ledger), no hold is left and no audio
/// file either.
#[tokio::test]
async fn speech_cancelled_midway_is_charged_and_leaves_no_file() {
    let chat = FakeProvider::start(openai_sse(
        "deepseek-v3.2",
        &["Hello", " there"],
        json!({"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20}),
    ))
    .await;
    let mut wav = b"RIFF\x24\x00\x00\x00WAVEfmt ".to_vec();
    wav.extend_from_slice(&[0u8; 28]);
    let tts = FakeProvider::start(Reply {
        status: 200,
        headers: vec![("content-type".into(), "audio/wav".into())],
        body: String::new(),
        delay: None,
        reset: false,
        raw: Some(wav),
        drip: None,
    })
    .await;
    tts.close_gate();
    let dir = tempfile::tempdir().unwrap();
    let client = connect(
        dir.path(),
        &[
            ("DEEPSEEK_API_KEY", "sk-stream-FAKE-00000000000".into()),
            ("DEEPSEEK_BASE_URL", chat.base.clone()),
            ("CARTESIA_API_KEY", "sk_car_FAKE_0000000000000000".into()),
            ("CARTESIA_BASE_URL", tts.base.clone()),
        ],
    )
    .await;
    let handle = client
        .send_cancellable_request(
            call(json!({"prompt": "greet me", "tier": "cheap", "speak": true})),
            PeerRequestOptions::no_options(),
        )
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while tts.requests().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "speech never requested"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    handle.cancel(Some("stop".into())).await.unwrap();
    let usage = || async {
        tool(&client, "query_usage", json!({}))
            .await
            .structured_content
            .unwrap()
    };
    let mut u = usage().await;
    while u["totals"]["failed_attempts"] != json!(1) {
        assert!(
            std::time::Instant::now() < deadline,
            "speech attempt never recorded: {u}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        u = usage().await;
    }
    let chat_cost = 10.0 * 0.28e-6 + 10.0 * 0.40e-6;
    let speech_cost = "Hello there".len() as f64 * 0.000_05;
    assert_usd(&u["total_cost_usd"], chat_cost + speech_cost);
    assert_eq!(u["calls"], json!(1), "the answer itself was recorded");
    assert_eq!(u["budget"]["reserved_usd"], json!(0.0), "{u}");
    // Cartesia now answers: the cancelled call must not write its audio
    // late. A second call is read out through the same server and the
    // same (open) fake; afterwards its file is the only one.
    tts.open_gate();
    let second = complete(
        &client,
        json!({"prompt": "greet me", "tier": "cheap", "speak": true}),
    )
    .await;
    assert_ne!(second.is_error, Some(true), "{:?}", second.content);
    let path = second.structured_content.unwrap()["audio"]["path"]
        .as_str()
        .expect("the second call's audio file")
        .to_string();
    let files: Vec<_> = std::fs::read_dir(dir.path().join("audio"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(files, [std::path::PathBuf::from(path)], "audio left behind");
    client.cancel().await.unwrap();
}

/// An answer still streaming when the total request timeout runs out is
/// charged for what arrived and not retried or sent elsewhere: the same
/// long answer would run out of time again, each attempt billed.
#[tokio::test]
async fn an_answer_cut_by_the_total_timeout_is_not_paid_for_twice() {
    let fake = FakeProvider::start(twelve_words(Duration::from_millis(300)).0).await;
    let dir = tempfile::tempdir().unwrap();
    let client = deepseek_server(
        dir.path(),
        &fake,
        &[
            ("COST_OPTIMIZER_IDLE_TIMEOUT_SECS", "1"),
            ("COST_OPTIMIZER_REQUEST_TIMEOUT_SECS", "2"),
        ],
    )
    .await;
    let r = complete(
        &client,
        json!({"prompt": "count", "force_model": FORCED_DEEPSEEK}),
    )
    .await;
    assert_eq!(r.is_error, Some(true));
    let text = format!("{:?}", r.content);
    assert!(text.contains("request timeout (2 s) ran out"), "{text}");
    assert_eq!(fake.requests().len(), 1, "retried: {text}");
    client.cancel().await.unwrap();
}

/// Streams frame every token in an event of a few hundred bytes: an answer
/// of 60,000 tokens takes more than 16 MiB on the wire, and is not cut off
/// (billed) for it when max_tokens allows that many.
#[tokio::test]
async fn a_long_answer_with_heavy_framing_is_not_cut_off() {
    let pad = "f".repeat(200);
    let mut body = String::new();
    for _ in 0..60_000 {
        body.push_str(&format!(
            "data: {}\n\n",
            json!({"id": "c1", "object": "chat.completion.chunk", "model": "deepseek-v3.2",
                   "system_fingerprint": pad,
                   "choices": [{"index": 0, "delta": {"content": "x"}, "finish_reason": null}]})
        ));
    }
    body.push_str(&format!(
        "data: {}\n\ndata: {}\n\ndata: [DONE]\n\n",
        json!({"id": "c1", "object": "chat.completion.chunk", "model": "deepseek-v3.2",
               "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
        json!({"id": "c1", "object": "chat.completion.chunk", "model": "deepseek-v3.2",
               "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 60000}})
    ));
    assert!(body.len() > 17 * 1024 * 1024, "{}", body.len());
    let fake = FakeProvider::start(streamed("text/event-stream", body)).await;
    let dir = tempfile::tempdir().unwrap();
    let client = deepseek_server(dir.path(), &fake, &[("COST_OPTIMIZER_MAX_RETRIES", "0")]).await;
    let r = complete(
        &client,
        json!({"prompt": "count", "force_model": FORCED_DEEPSEEK, "max_tokens": 64000}),
    )
    .await;
    assert_ne!(r.is_error, Some(true), "{:?}", r.content);
    let c = r.structured_content.unwrap();
    assert_eq!(c["answer"].as_str().unwrap().len(), 60_000);
    assert_eq!(fake.requests().len(), 1);
    client.cancel().await.unwrap();
}

/// A cancelled call's charge that crosses a threshold alerts at once (its
/// webhook), not at the next call, which may never come.
#[tokio::test]
async fn a_cancelled_calls_charge_alerts_at_once() {
    let fake = FakeProvider::start(sixty_slow_words().0).await;
    let hook = FakeProvider::start(Reply::json(200, json!({"ok": true}))).await;
    let dir = tempfile::tempdir().unwrap();
    let client = deepseek_server(dir.path(), &fake, &[]).await;
    // Warn mode: the 100,000-token worst case is not refused; 10% of
    // $0.00001 is crossed by a few tokens' estimate.
    let set = tool(
        &client,
        "set_budget",
        json!({"monthly_limit": 0.00001, "alert_thresholds": [0.1], "mode": "warn",
               "webhook_url": format!("{}/hook", hook.base)}),
    )
    .await;
    assert_ne!(set.is_error, Some(true), "{:?}", set.content);
    cancel_once_streaming(&client, &fake, 3, || {
        assert!(hook.requests().is_empty(), "nothing was charged yet");
    })
    .await;
    for _ in 0..250 {
        if !hook.requests().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let got = hook.requests();
    assert_eq!(got.len(), 1, "the crossing was alerted: {got:?}");
    assert_eq!(got[0].body["threshold"], json!(0.1), "{:?}", got[0].body);
    client.cancel().await.unwrap();
}

/// An answer that finished (its finish reason and usage arrived) and then
/// lost its connection before the stream's closing event is kept and
/// billed once, for each stream format: it used to be thrown away as a
/// connection error and paid for again by the retry.
#[tokio::test]
async fn an_answer_that_lost_only_its_closing_event_is_kept() {
    let openai = openai_sse_body(
        "deepseek-v3.2",
        &["Paris", "."],
        Some(json!({"prompt_tokens": 10, "completion_tokens": 2})),
        false,
    );
    let full = anthropic_sse_body(
        "claude-haiku-4-5",
        &["Paris", "."],
        json!({"input_tokens": 10, "output_tokens": 1}),
        2,
        true,
    );
    let anthropic = full[..full.find("event: message_stop").unwrap()].to_string();
    let gemini = gemini_sse_body(
        "gemini-2.5-flash-lite",
        &["Paris", "."],
        Some(json!({"promptTokenCount": 10, "candidatesTokenCount": 2, "totalTokenCount": 12})),
    );
    let cases = [
        (
            "deepseek/deepseek-v3.2",
            "DEEPSEEK_API_KEY",
            "DEEPSEEK_BASE_URL",
            "sk-FAKE-deepseek-000000000000",
            openai,
        ),
        (
            "anthropic/claude-haiku-4-5",
            "ANTHROPIC_API_KEY",
            "ANTHROPIC_BASE_URL",
            "sk-ant-FAKE-test-key-1717171717171717",
            anthropic,
        ),
        (
            "gemini/gemini-2.5-flash-lite",
            "GEMINI_API_KEY",
            "GEMINI_BASE_URL",
            "AIza-FAKE-gemini-key-5555555555",
            gemini,
        ),
    ];
    for (model, key_env, base_env, key, body) in cases {
        let fake =
            FakeProvider::start(streamed("text/event-stream", body).reset_after_body()).await;
        let dir = tempfile::tempdir().unwrap();
        let s = spawn(
            dir.path(),
            &[(key_env, key.to_string()), (base_env, fake.base.clone())],
        )
        .await;
        let c = s
            .ok(
                "complete_prompt",
                json!({"prompt": "Capital of France?", "force_model": model}),
            )
            .await;
        assert_eq!(c["answer"], "Paris.", "{model}: {c}");
        assert_eq!(fake.requests().len(), 1, "{model}: not asked again");
        assert_eq!(c["tokens"]["output"], json!(2), "{model}: {c}");
        assert_eq!(c["failed_attempts_cost_usd"], json!(0.0), "{model}: {c}");
        s.stop().await;
    }
}
