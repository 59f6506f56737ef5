//! Transparent forwarding through the proxy core, over real sockets.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use haltgate::body;
use http::Request;
use http_body_util::{BodyExt, StreamBody};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn echo_handler() -> support::Handler {
    handler(|seen: Seen| async move {
        let mut r = http::Response::new(body::full(seen.body.clone()));
        r.headers_mut().insert(
            "x-seen-path",
            seen.uri.path_and_query().unwrap().as_str().parse().unwrap(),
        );
        r
    })
}

#[tokio::test]
async fn request_and_response_bodies_are_byte_exact() {
    let download = Bytes::from(pattern(1024 * 1024));
    let d = download.clone();
    let upstream = start_upstream(handler(move |seen: Seen| {
        let d = d.clone();
        async move {
            // Echo the upload's length and the 1 MiB download in 16 KiB chunks.
            let chunks: Vec<Result<http_body::Frame<Bytes>, haltgate::body::BoxError>> = d
                .chunks(16 * 1024)
                .map(|c| Ok(http_body::Frame::data(Bytes::copy_from_slice(c))))
                .collect();
            let mut r = http::Response::new(body::boxed(StreamBody::new(
                futures_util::stream::iter(chunks),
            )));
            r.headers_mut()
                .insert("x-upload-len", seen.body.len().to_string().parse().unwrap());
            r
        }
    }))
    .await;
    let app = start_proxy(proxy_flags(&[("echo", upstream.http_url())])).await;

    let upload = Bytes::from(pattern(200 * 1024));
    let request = Request::post(format!("http://{}/echo/upload", app.agent_addr()))
        .body(body::full(upload.clone()))
        .unwrap();
    let response = client().request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-upload-len"], "204800");
    let received = read_body(response).await;
    assert_eq!(received.len(), download.len());
    assert!(received == download, "download differs");
    assert!(upstream.last_seen().body == upload, "upload differs");
}

#[tokio::test]
async fn path_and_query_are_forwarded_byte_exact_under_the_base_path() {
    let upstream = start_upstream(echo_handler()).await;
    let base = format!("{}/echo", upstream.http_url());
    let app = start_proxy(proxy_flags(&[("echo", base)])).await;
    let path = "/echo/a/b%2Fc/%7Euser?q=%20x%2By&empty=&utf=%E2%9C%93&plus=a+b";
    let response = client()
        .request(get(&format!("http://{}{path}", app.agent_addr())))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["x-seen-path"],
        "/echo/a/b%2Fc/%7Euser?q=%20x%2By&empty=&utf=%E2%9C%93&plus=a+b"
    );
    let seen = upstream.last_seen();
    assert_eq!(seen.headers["host"], upstream.addr.to_string());
}

async fn raw_exchange(addr: std::net::SocketAddr, request: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    within(Duration::from_secs(5), stream.read_to_end(&mut out))
        .await
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn hop_by_hop_and_haltgate_headers_are_not_forwarded() {
    let upstream = start_upstream(handler(|_seen: Seen| async move {
        let mut r = text(200, "ok");
        let h = r.headers_mut();
        h.insert("connection", "x-up-hop".parse().unwrap());
        h.insert("x-up-hop", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("proxy-authenticate", "Basic realm=x".parse().unwrap());
        h.insert("x-up-end", "kept".parse().unwrap());
        r
    }))
    .await;
    let app = start_proxy(proxy_flags(&[("up", upstream.http_url())])).await;
    let request = "GET /up/h HTTP/1.1\r\nHost: proxy\r\nConnection: close, X-Down-Hop\r\n\
        X-Down-Hop: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nTrailer: x-t\r\nUpgrade: websocket\r\n\
        Proxy-Authorization: Basic REDACTED\r\nX-Haltgate-Session: s-1\r\nX-Haltgate-Epoch: 3\r\n\
        Authorization: Bearer xoxb-REDACTED\r\nX-Down-End: kept\r\n\r\n";
    let response = raw_exchange(app.agent_addr(), request).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");

    let seen = upstream.last_seen();
    for gone in [
        "x-down-hop",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "proxy-authorization",
        "x-haltgate-session",
        "x-haltgate-epoch",
    ] {
        assert!(!seen.headers.contains_key(gone), "{gone} reached upstream");
    }
    assert_eq!(seen.headers["x-down-end"], "kept");
    assert_eq!(seen.headers["authorization"], "Bearer xoxb-REDACTED");

    let lower = response.to_ascii_lowercase();
    assert!(!lower.contains("x-up-hop"), "{response}");
    assert!(!lower.contains("keep-alive: timeout"), "{response}");
    assert!(!lower.contains("proxy-authenticate"), "{response}");
    assert!(lower.contains("x-up-end: kept"), "{response}");
}

#[tokio::test]
async fn first_sse_event_arrives_while_upstream_still_streams() {
    let (release_tx, release_rx) = tokio::sync::watch::channel(false);
    let upstream = start_upstream(handler(move |_seen: Seen| {
        let mut release = release_rx.clone();
        async move {
            let (tx, rx) = tokio::sync::mpsc::channel::<
                Result<http_body::Frame<Bytes>, haltgate::body::BoxError>,
            >(4);
            tokio::spawn(async move {
                let _ = tx
                    .send(Ok(http_body::Frame::data(Bytes::from_static(
                        b"data: {\"n\":1}\n\n",
                    ))))
                    .await;
                let _ = release.wait_for(|r| *r).await;
                let _ = tx
                    .send(Ok(http_body::Frame::data(Bytes::from_static(
                        b"data: {\"n\":2}\n\n",
                    ))))
                    .await;
            });
            let stream = tokio_stream_from(rx);
            let mut r = http::Response::new(body::boxed(StreamBody::new(stream)));
            r.headers_mut()
                .insert("content-type", "text/event-stream".parse().unwrap());
            r
        }
    }))
    .await;
    let app = start_proxy(proxy_flags(&[("mcp", upstream.http_url())])).await;
    let response = client()
        .request(get(&format!("http://{}/mcp/events", app.agent_addr())))
        .await
        .unwrap();
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.into_body();
    let first = within(Duration::from_secs(5), body.frame())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        first.into_data().unwrap(),
        Bytes::from_static(b"data: {\"n\":1}\n\n")
    );
    release_tx.send_replace(true);
    let rest = within(Duration::from_secs(5), body.collect())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(rest, Bytes::from_static(b"data: {\"n\":2}\n\n"));
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[tokio::test]
async fn unreachable_upstream_gives_502_with_json() {
    let dead = closed_port().await;
    let app = start_proxy(proxy_flags(&[("dead", format!("http://{dead}"))])).await;
    let response = client()
        .request(get(&format!("http://{}/dead/x", app.agent_addr())))
        .await
        .unwrap();
    assert_eq!(response.status(), 502);
    assert_eq!(
        response.headers()["x-haltgate-error"],
        "upstream_unreachable"
    );
    let body: serde_json::Value = serde_json::from_slice(&read_body(response).await).unwrap();
    assert_eq!(body["error"]["kind"], "upstream_unreachable");
    assert!(body["error"]["message"].as_str().unwrap().contains("dead"));
}

#[tokio::test]
async fn slow_upstream_gives_504() {
    let upstream = start_upstream(handler(|_seen: Seen| async move {
        tokio::time::sleep(Duration::from_secs(3)).await;
        text(200, "too late")
    }))
    .await;
    let mut flags = proxy_flags(&[("slow", upstream.http_url())]);
    flags.response_header_timeout = Some("200ms".into());
    let app = start_proxy(flags).await;
    let response = client()
        .request(get(&format!("http://{}/slow/x", app.agent_addr())))
        .await
        .unwrap();
    assert_eq!(response.status(), 504);
    let body: serde_json::Value = serde_json::from_slice(&read_body(response).await).unwrap();
    assert_eq!(body["error"]["kind"], "upstream_timeout");
}

#[tokio::test]
async fn unknown_route_is_404_without_upstream_contact() {
    let upstream = start_upstream(echo_handler()).await;
    let app = start_proxy(proxy_flags(&[("echo", upstream.http_url())])).await;
    for path in ["/nope/x", "/", "/echoes/x", "/ECHO/x"] {
        let response = client()
            .request(get(&format!("http://{}{path}", app.agent_addr())))
            .await
            .unwrap();
        assert_eq!(response.status(), 404, "{path}");
        assert_eq!(response.headers()["x-haltgate-error"], "unknown_route");
    }
    assert_eq!(upstream.hits(), 0);
}

#[tokio::test]
async fn forward_proxy_requests_are_refused() {
    let upstream = start_upstream(echo_handler()).await;
    let app = start_proxy(proxy_flags(&[("echo", upstream.http_url())])).await;
    let absolute = format!(
        "GET http://{}/echo/x HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        upstream.addr, upstream.addr
    );
    let response = raw_exchange(app.agent_addr(), &absolute).await;
    assert!(response.starts_with("HTTP/1.1 403"), "{response}");
    let connect = format!(
        "CONNECT {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        upstream.addr, upstream.addr
    );
    let response = raw_exchange(app.agent_addr(), &connect).await;
    assert!(response.starts_with("HTTP/1.1 405"), "{response}");
    assert_eq!(upstream.hits(), 0);

    // Absolute-form naming the proxy itself is an ordinary request.
    let own = format!(
        "GET http://{}/echo/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        app.agent_addr()
    );
    let response = raw_exchange(app.agent_addr(), &own).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert_eq!(upstream.hits(), 1);
}

#[tokio::test]
async fn https_upstream_speaks_http2_by_alpn_with_a_test_ca() {
    let upstream = start_tls_upstream(echo_handler()).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, upstream.ca_pem.as_ref().unwrap()).unwrap();
    let mut flags = proxy_flags(&[(
        "tls",
        format!("https://localhost:{}/base", upstream.addr.port()),
    )]);
    flags.upstream_ca = Some(ca);
    let app = start_proxy(flags).await;

    for i in 0..3 {
        let request = Request::post(format!("http://{}/tls/v1/x?i={i}", app.agent_addr()))
            .body(body::full(format!("payload {i}")))
            .unwrap();
        let response = client().request(request).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["x-seen-path"],
            format!("/base/v1/x?i={i}").as_str()
        );
        assert_eq!(read_body(response).await, format!("payload {i}").as_bytes());
    }
    let seen = upstream.last_seen();
    assert_eq!(seen.version, http::Version::HTTP_2);
    assert_eq!(upstream.hits(), 3);
    // Pooled: one TLS connection carried all three requests.
    assert_eq!(upstream.connections(), 1);
}

#[tokio::test]
async fn untrusted_upstream_certificate_gives_502() {
    let upstream = start_tls_upstream(echo_handler()).await;
    let app = start_proxy(proxy_flags(&[(
        "tls",
        format!("https://localhost:{}", upstream.addr.port()),
    )]))
    .await;
    let response = client()
        .request(get(&format!("http://{}/tls/x", app.agent_addr())))
        .await
        .unwrap();
    assert_eq!(response.status(), 502);
    assert_eq!(upstream.hits(), 0);
}

#[tokio::test]
async fn agents_may_speak_http2_to_the_proxy() {
    let upstream = start_upstream(echo_handler()).await;
    let app = start_proxy(proxy_flags(&[("echo", upstream.http_url())])).await;
    let h2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<haltgate::body::ProxyBody>();
    let response = h2
        .request(get(&format!("http://{}/echo/h2?x=1", app.agent_addr())))
        .await
        .unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(response.headers()["x-seen-path"], "/h2?x=1");
}

#[tokio::test]
async fn shutdown_drains_in_flight_requests_and_refuses_new_ones() {
    let upstream = start_upstream(handler(|_seen: Seen| async move {
        tokio::time::sleep(Duration::from_millis(600)).await;
        text(200, "finished")
    }))
    .await;
    let app = start_proxy(proxy_flags(&[("slow", upstream.http_url())])).await;
    let addr = app.agent_addr();
    let in_flight = tokio::spawn(async move {
        client()
            .request(get(&format!("http://{addr}/slow/x")))
            .await
    });
    // Let the request reach the upstream before shutting down.
    while upstream.hits() == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    app.shutdown();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "listener still accepts"
    );
    let response = within(Duration::from_secs(5), in_flight)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(read_body(response).await, "finished");
    within(Duration::from_secs(5), app.wait()).await;
}

#[tokio::test]
async fn shutdown_ends_open_event_streams_without_waiting_for_the_deadline() {
    let upstream = start_upstream(handler(|_seen: Seen| async move {
        let (tx, rx) = tokio::sync::mpsc::channel::<
            Result<http_body::Frame<Bytes>, haltgate::body::BoxError>,
        >(1);
        tokio::spawn(async move {
            let _ = tx
                .send(Ok(http_body::Frame::data(Bytes::from_static(
                    b"data: {}\n\n",
                ))))
                .await;
            // Never ends on its own.
            tokio::time::sleep(Duration::from_secs(3600)).await;
            drop(tx);
        });
        let mut r = http::Response::new(body::boxed(StreamBody::new(tokio_stream_from(rx))));
        r.headers_mut()
            .insert("content-type", "text/event-stream".parse().unwrap());
        r
    }))
    .await;
    let mut flags = proxy_flags(&[("sse", upstream.http_url())]);
    flags.shutdown_grace = Some("30s".into());
    let app = start_proxy(flags).await;
    let response = client()
        .request(get(&format!("http://{}/sse/stream", app.agent_addr())))
        .await
        .unwrap();
    let mut body = response.into_body();
    within(Duration::from_secs(5), body.frame())
        .await
        .unwrap()
        .unwrap();
    let started = Instant::now();
    app.shutdown();
    within(Duration::from_secs(5), app.wait()).await;
    assert!(started.elapsed() < Duration::from_secs(5));
    // The stream ended rather than hanging.
    let _ = within(Duration::from_secs(5), body.collect()).await;
}

#[tokio::test]
async fn health_and_readiness_answer_on_the_control_listener() {
    let upstream = start_upstream(echo_handler()).await;
    let app = start_proxy(proxy_flags(&[("echo", upstream.http_url())])).await;
    wait_ready(&app).await;
    for path in ["/healthz", "/readyz"] {
        let response = client()
            .request(get(&format!("http://{}{path}", app.control_addr())))
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }
}
