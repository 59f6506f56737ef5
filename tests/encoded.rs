//! Encoded upstream answers (`Content-Encoding: gzip`, `deflate`, `br`, `zstd`) through the
//! proxy: the rules read a decoded copy and close sessions on it, the agent gets the upstream's
//! bytes untouched, and what cannot be decoded passes uninspected without closing anything.

mod support;

use std::io::Write;
use std::time::Duration;

use bytes::Bytes;
use haltgate::body;
use http::Request;
use http_body_util::{BodyExt, StreamBody};
use serde_json::{json, Value};
use support::*;

const KICK: &[u8] = br#"{"ok":false,"error":"not_in_channel"}"#;
const POSTED: &[u8] = br#"{"ok":true,"channel":"C0123ABCD","ts":"1700000000.000100"}"#;
const BAD_CREDENTIALS: &[u8] = br#"{"message":"Bad credentials","documentation_url":"https://docs.github.com/rest","status":"401"}"#;
const ACCEPT: &str = "gzip, deflate, br, zstd";

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn zlib(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn raw_deflate(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn brotli(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut w = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
        w.write_all(data).unwrap();
    }
    out
}

fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::stream::encode_all(data, 3).unwrap()
}

/// Every way an upstream may encode `data`: the header value and the bytes.
fn encodings(data: &[u8]) -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("gzip", gzip(data)),
        ("deflate", zlib(data)),
        ("deflate", raw_deflate(data)),
        ("br", brotli(data)),
        ("zstd", zstd(data)),
        ("gzip, br", brotli(&gzip(data))),
    ]
}

/// An upstream answering every request with `status`, these bytes and this coding.
fn encoded_upstream(status: u16, coding: &'static str, bytes: Vec<u8>) -> Handler {
    let bytes = Bytes::from(bytes);
    handler(move |_seen: Seen| {
        let bytes = bytes.clone();
        async move {
            let mut r = http::Response::new(body::full(bytes));
            *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
            r.headers_mut()
                .insert("content-type", "application/json".parse().unwrap());
            r.headers_mut()
                .insert("content-encoding", coding.parse().unwrap());
            r
        }
    })
}

fn post_message(proxy: &TestProxy, session: &str) -> Request<haltgate::body::ProxyBody> {
    Request::post(format!(
        "http://{}/slack/api/chat.postMessage",
        proxy.agent_addr()
    ))
    .header("content-type", "application/json; charset=utf-8")
    .header("authorization", "Bearer xoxb-REDACTED")
    .header("accept-encoding", ACCEPT)
    .header("x-haltgate-session", session)
    .body(body::full(
        json!({"channel": CHANNEL, "text": "hello"}).to_string(),
    ))
    .unwrap()
}

/// Status, headers and the raw bytes the agent received.
async fn exchange(request: Request<haltgate::body::ProxyBody>) -> (u16, http::HeaderMap, Bytes) {
    let response = client().request(request).await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, headers, read_body(response).await)
}

async fn session_status(proxy: &TestProxy, id: &str) -> Value {
    let (status, record) = control(proxy, "GET", &format!("/v1/sessions/{id}"), None).await;
    assert_eq!(status, 200, "{record}");
    record["status"].clone()
}

async fn stats(proxy: &TestProxy) -> Value {
    let (status, stats) = control(proxy, "GET", "/v1/stats", None).await;
    assert_eq!(status, 200);
    stats
}

async fn slack_proxy(
    upstream: &Upstream,
    flags: impl FnOnce(&mut haltgate::config::Overrides),
) -> TestProxy {
    let mut overrides = proxy_flags(&[("slack", upstream.http_url())]);
    flags(&mut overrides);
    let proxy = start_proxy(overrides).await;
    wait_ready(&proxy).await;
    proxy
}

#[tokio::test]
async fn an_encoded_lost_access_answer_closes_the_session_in_every_coding() {
    for (index, (coding, bytes)) in encodings(KICK).into_iter().enumerate() {
        let upstream = start_upstream(encoded_upstream(200, coding, bytes)).await;
        let proxy = slack_proxy(&upstream, |_| {}).await;
        let session = format!("kick-{index}");
        open_session(&proxy, &session).await;

        let (status, headers, body) = exchange(post_message(&proxy, &session)).await;
        assert_eq!(status, SLACK_HALT, "{coding}: {body:?}");
        assert_eq!(
            headers["x-haltgate-rule"], "slack.not_in_channel",
            "{coding}"
        );
        assert_eq!(session_status(&proxy, &session).await, "closed", "{coding}");
        // The agent's Accept-Encoding reached the upstream as it was sent.
        assert_eq!(upstream.last_seen().headers["accept-encoding"], ACCEPT);
        assert_eq!(stats(&proxy).await["inspected"], 1, "{coding}");
    }
}

#[tokio::test]
async fn an_encoded_answer_that_passes_reaches_the_agent_byte_exact() {
    for (index, (coding, bytes)) in encodings(POSTED).into_iter().enumerate() {
        let upstream = start_upstream(encoded_upstream(200, coding, bytes.clone())).await;
        let proxy = slack_proxy(&upstream, |_| {}).await;
        let session = format!("post-{index}");
        open_session(&proxy, &session).await;

        let (status, headers, body) = exchange(post_message(&proxy, &session)).await;
        assert_eq!(status, 200, "{coding}");
        assert_eq!(
            body, bytes,
            "{coding}: the encoded bytes as the upstream sent them"
        );
        assert_eq!(headers["content-encoding"], coding);
        assert_eq!(headers["content-length"], bytes.len().to_string());
        assert_eq!(session_status(&proxy, &session).await, "open");
    }
}

#[tokio::test]
async fn an_encoded_github_bad_credentials_halts_in_every_coding() {
    for (index, (coding, bytes)) in encodings(BAD_CREDENTIALS).into_iter().enumerate() {
        let upstream = start_upstream(encoded_upstream(401, coding, bytes)).await;
        let proxy = start_proxy(proxy_flags(&[("github", upstream.http_url())])).await;
        wait_ready(&proxy).await;
        let session = format!("gh-{index}");
        open_session(&proxy, &session).await;
        let request = Request::get(format!(
            "http://{}/github/repos/octo/hello/issues",
            proxy.agent_addr()
        ))
        .header("authorization", format!("Bearer ghp_REDACTED{index}"))
        .header("accept-encoding", ACCEPT)
        .header("x-haltgate-session", &session)
        .body(body::empty())
        .unwrap();
        let (status, headers, _) = exchange(request).await;
        assert_eq!(status, 410, "{coding}");
        assert_eq!(headers["x-haltgate-halt"], "credential_invalid", "{coding}");
        assert_eq!(session_status(&proxy, &session).await, "closed");
    }
}

#[tokio::test]
async fn a_corrupt_or_unknown_encoding_passes_untouched_and_counts_uninspected() {
    let mut corrupt = gzip(KICK);
    let middle = corrupt.len() / 2;
    corrupt[middle] ^= 0xff;
    for (coding, bytes, reason) in [
        ("gzip", corrupt, "undecodable"),
        ("compress", KICK.to_vec(), "unknown_encoding"),
    ] {
        let upstream = start_upstream(encoded_upstream(200, coding, bytes.clone())).await;
        let proxy = slack_proxy(&upstream, |_| {}).await;
        open_session(&proxy, "s").await;
        let (status, headers, body) = exchange(post_message(&proxy, "s")).await;
        assert_eq!(status, 200, "{coding}");
        assert_eq!(body, bytes, "{coding}");
        assert_eq!(headers["content-encoding"], coding);
        assert_eq!(session_status(&proxy, "s").await, "open");
        let stats = stats(&proxy).await;
        assert_eq!(stats["uninspected_by_reason"][reason], 1, "{stats}");
        assert_eq!(stats["inspected"], 0);
    }
}

/// 1 GiB of zeros as 1,024 gzip members of 1 MiB each: about 1 MB on the wire.
fn gigabyte_of_zeros() -> Vec<u8> {
    let member = gzip(&vec![0u8; 1 << 20]);
    member.repeat(1024)
}

#[tokio::test]
async fn a_decompression_bomb_passes_uninspected_and_closes_nothing() {
    let bomb = gigabyte_of_zeros();
    let upstream = start_upstream(encoded_upstream(200, "gzip", bomb.clone())).await;
    // The encoded bomb fits the limit, so it is decoded, and decoding must stop at 2 MiB.
    let proxy = slack_proxy(&upstream, |flags| flags.max_body_bytes = Some(2 << 20)).await;
    open_session(&proxy, "s").await;
    let (status, _, body) =
        within(Duration::from_secs(60), exchange(post_message(&proxy, "s"))).await;
    assert_eq!(status, 200);
    assert_eq!(body.len(), bomb.len());
    assert!(body == bomb, "the bomb reaches the agent as it was sent");
    assert_eq!(session_status(&proxy, "s").await, "open");
    let stats = stats(&proxy).await;
    assert_eq!(stats["uninspected_by_reason"]["too_large"], 1, "{stats}");
    assert_eq!(stats["inspected"], 0, "{stats}");
}

/// A rule file for a provider whose events carry Slack-like errors.
fn stream_rules() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("feed.toml"),
        r#"schema = 2

[[rule]]
id = "feed.not_in_channel"
class = "lost_access"
description = "An event reports the bot left the channel."
reason = "The bot is no longer in the channel."
[rule.when]
all = [{ source = "json", path = "error", equals = "not_in_channel" }]
"#,
    )
    .unwrap();
    dir
}

#[tokio::test]
async fn an_encoded_event_stream_with_a_lost_access_event_halts() {
    let events = b"event: message\ndata: {\"ok\":true,\"n\":1}\n\nevent: message\ndata: {\"ok\":false,\"error\":\"not_in_channel\"}\n\nevent: message\ndata: {\"ok\":true,\"n\":3}\n\n";
    for (index, (coding, bytes)) in encodings(events).into_iter().enumerate() {
        let bytes = Bytes::from(bytes);
        let upstream = start_upstream(handler(move |_seen: Seen| {
            let bytes = bytes.clone();
            async move {
                // The encoded stream arrives in small pieces, as a network delivers it.
                let frames: Vec<Result<http_body::Frame<Bytes>, haltgate::body::BoxError>> = bytes
                    .chunks(5)
                    .map(|c| Ok(http_body::Frame::data(Bytes::copy_from_slice(c))))
                    .collect();
                let stream = futures_util::stream::iter(frames);
                let mut r = http::Response::new(body::boxed(StreamBody::new(stream)));
                r.headers_mut()
                    .insert("content-type", "text/event-stream".parse().unwrap());
                r.headers_mut()
                    .insert("content-encoding", coding.parse().unwrap());
                r
            }
        }))
        .await;
        let rules = stream_rules();
        let mut flags = proxy_flags(&[("feed", upstream.http_url())]);
        flags.rules = Some(rules.path().to_owned());
        let proxy = start_proxy(flags).await;
        wait_ready(&proxy).await;
        let session = format!("feed-{index}");
        open_session(&proxy, &session).await;
        let request = Request::get(format!("http://{}/feed/events", proxy.agent_addr()))
            .header("accept-encoding", ACCEPT)
            .header("x-haltgate-session", &session)
            .body(body::empty())
            .unwrap();
        let response = client().request(request).await.unwrap();
        assert_eq!(response.status(), 200);
        let received = within(Duration::from_secs(10), response.into_body().collect())
            .await
            .unwrap()
            .to_bytes();
        let halt = b"event: haltgate.halt\n";
        assert!(
            received.windows(halt.len()).any(|w| w == halt),
            "{coding}: the stream ends with a halt event"
        );
        assert_eq!(session_status(&proxy, &session).await, "closed", "{coding}");
    }
}
