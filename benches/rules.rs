//! Rule engine cost per response.
//!
//! - `shipped/*`: the rules in `rules/` against ~4 KB non-matching bodies of each provider
//!   (target: ≤ 5 µs), a matching body, and the head-only `needs_body` check.
//! - `scaling/*`: generated rule sets of 200 and 2,000 rules against the same 4 KB body
//!   (target: 2,000 rules ≤ 2× the time of 200). The ratio is printed at the end.

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion, Throughput};
use http::{HeaderMap, Method, StatusCode};
use serde_json::{json, Value};

use haltgate::rules::{Exchange, ExchangeHead, ResponseBody, RuleSet, RuleSource, Scope, Verdict};

/// One exchange with owned parts.
struct Sample {
    provider: &'static str,
    method: Method,
    path_and_query: String,
    request_headers: HeaderMap,
    request_body: Vec<u8>,
    status: StatusCode,
    response_headers: HeaderMap,
    response_body: Vec<u8>,
    scope: Option<Value>,
}

impl Sample {
    fn new(
        provider: &'static str,
        method: Method,
        path: &str,
        status: u16,
        body: Vec<u8>,
    ) -> Sample {
        let mut response_headers = HeaderMap::new();
        response_headers.insert(
            "content-type",
            "application/json; charset=utf-8".parse().unwrap(),
        );
        let mut request_headers = HeaderMap::new();
        request_headers.insert("content-type", "application/json".parse().unwrap());
        Sample {
            provider,
            method,
            path_and_query: path.to_owned(),
            request_headers,
            request_body: Vec::new(),
            status: StatusCode::from_u16(status).unwrap(),
            response_headers,
            response_body: body,
            scope: None,
        }
    }

    fn head(&self) -> ExchangeHead<'_> {
        ExchangeHead {
            provider: self.provider,
            method: &self.method,
            path_and_query: &self.path_and_query,
            request_headers: &self.request_headers,
            status: self.status,
            response_headers: &self.response_headers,
        }
    }

    fn exchange(&self) -> Exchange<'_> {
        Exchange {
            head: self.head(),
            request_body: &self.request_body,
            response_body: ResponseBody::Complete(&self.response_body),
            scope: Scope::Known(self.scope.as_ref()),
        }
    }
}

/// Pads a JSON document with realistic filler until its encoding reaches `size` bytes.
fn padded(mut build: impl FnMut(usize) -> Value, size: usize) -> Vec<u8> {
    let mut count = 1;
    loop {
        let body = serde_json::to_vec(&build(count)).unwrap();
        if body.len() >= size {
            return body;
        }
        count += 1;
    }
}

fn slack_history(count: usize) -> Value {
    let messages: Vec<Value> = (0..count)
        .map(|i| {
            json!({
                "type": "message", "user": format!("U0{i:07}"), "ts": format!("17000000{i:02}.000100"),
                "text": format!("Deploy {i} finished; the error budget is fine and nobody is not_in_the_loop."),
                "reactions": [{"name": "white_check_mark", "count": 2}]
            })
        })
        .collect();
    json!({"ok": true, "messages": messages, "has_more": false, "response_metadata": {"next_cursor": ""}})
}

fn github_issues(count: usize) -> Value {
    Value::Array(
        (0..count)
            .map(|i| {
                json!({
                    "id": 1_000 + i, "number": i, "state": "open",
                    "title": format!("Flaky test in module {i}"),
                    "user": {"login": "octocat", "type": "User"},
                    "body": "The message says Not Found sometimes; retry fixes it.",
                    "labels": [{"name": "bug"}], "comments": 3
                })
            })
            .collect(),
    )
}

fn linear_issues(count: usize) -> Value {
    let nodes: Vec<Value> = (0..count)
        .map(|i| {
            json!({"id": format!("8f1d5c2a-3b7e-4c19-9a0d-{i:012}"), "identifier": format!("ENG-{i}"),
                   "title": "Investigate the forbidden word in logs", "state": {"name": "In Progress"}})
        })
        .collect();
    json!({"data": {"issues": {"nodes": nodes, "pageInfo": {"hasNextPage": false}}}})
}

fn mcp_result(count: usize) -> Value {
    let content: Vec<Value> = (0..count)
        .map(|i| json!({"type": "text", "text": format!("row {i}: session started, tool call ok")}))
        .collect();
    json!({"jsonrpc": "2.0", "id": 7, "result": {"content": content, "isError": false}})
}

fn anthropic_message(count: usize) -> Value {
    let text = (0..count)
        .map(|i| format!("Paragraph {i} explains how the session resumes after a restart. "))
        .collect::<String>();
    json!({"id": "msg_01", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
           "content": [{"type": "text", "text": text}], "stop_reason": "end_turn",
           "usage": {"input_tokens": 1200, "output_tokens": 900}})
}

fn shipped_rules() -> RuleSet {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
    RuleSet::load_dir(&dir).unwrap_or_else(|errors| panic!("{errors}"))
}

fn shipped(c: &mut Criterion) {
    let rules = shipped_rules();
    let size = 4096;
    let samples = [
        (
            "slack_4k_pass",
            Sample::new(
                "slack",
                Method::GET,
                "/api/conversations.history?channel=C0123ABCD",
                200,
                padded(slack_history, size),
            ),
        ),
        (
            "github_4k_pass",
            Sample::new(
                "github",
                Method::GET,
                "/repos/acme/widgets/issues",
                200,
                padded(github_issues, size),
            ),
        ),
        (
            "linear_4k_pass",
            Sample::new(
                "linear",
                Method::POST,
                "/graphql",
                200,
                padded(linear_issues, size),
            ),
        ),
        (
            "mcp_4k_pass",
            Sample::new("mcp", Method::POST, "/mcp", 200, padded(mcp_result, size)),
        ),
        (
            "anthropic_4k_pass",
            Sample::new(
                "anthropic",
                Method::POST,
                "/v1/messages",
                200,
                padded(anthropic_message, size),
            ),
        ),
    ];
    let mut group = c.benchmark_group("shipped");
    for (name, sample) in &samples {
        assert_eq!(
            rules.classify(&sample.exchange()),
            rules.explain(&sample.exchange()).verdict
        );
        assert!(
            matches!(rules.classify(&sample.exchange()), Verdict::Decided(ref d) if d.rule.is_none())
        );
        group.throughput(Throughput::Bytes(sample.response_body.len() as u64));
        group.bench_function(*name, |b| {
            b.iter(|| rules.classify(black_box(&sample.exchange())))
        });
    }

    let mut kicked = Sample::new(
        "slack",
        Method::POST,
        "/api/chat.postMessage",
        200,
        br#"{"ok":false,"error":"not_in_channel"}"#.to_vec(),
    );
    kicked.request_body = br#"{"channel":"C0123ABCD","text":"hi"}"#.to_vec();
    kicked.scope = Some(json!({"slack_channel": "C0123ABCD"}));
    match rules.classify(&kicked.exchange()) {
        Verdict::Decided(decision) => {
            assert_eq!(decision.rule.as_deref(), Some("slack.not_in_channel"))
        }
        Verdict::NeedsScope => panic!("scope was given"),
    }
    group.throughput(Throughput::Elements(1));
    group.bench_function("slack_not_in_channel_match", |b| {
        b.iter(|| rules.classify(black_box(&kicked.exchange())))
    });
    let (_, slack) = &samples[0];
    group.bench_function("needs_body_slack_200", |b| {
        b.iter(|| rules.needs_body(black_box(&slack.head())))
    });
    group.finish();
}

/// `count` rules shaped like the shipped ones: error codes in JSON, GraphQL error codes with a
/// scope comparison, status ranges with a header test, and literal body regexes on path globs.
fn synthetic_rules(count: usize) -> RuleSet {
    let mut text = String::from(
        "schema = 2\n\n[[guard]]\nname = \"synthetic.ratelimited\"\n[guard.when]\nall = [{ source = \"json\", path = \"error\", one_of = [\"ratelimited\", \"rate_limited\"] }]\n",
    );
    for i in 0..count {
        text.push_str(&format!(
            "\n[[rule]]\nid = \"synthetic.rule_{i}\"\nclass = \"lost_access\"\ndescription = \"Generated rule {i}.\"\npriority = {}\n[rule.when]\n",
            i % 3
        ));
        let when = match i % 4 {
            0 => format!("all = [{{ source = \"json\", path = \"ok\", equals = false }}, {{ source = \"json\", path = \"error\", equals = \"code_{i}_gone\" }}]\n"),
            1 => format!(
                "all = [{{ source = \"status\", one_of = [403, \"404\"] }}, {{ source = \"json\", path = \"errors[*].extensions.code\", equals = \"CODE_{i}_FORBIDDEN\" }}, {{ source = \"request_json\", path = \"variables.id\", equals_scope = \"issue\" }}]\n"
            ),
            2 => format!(
                "all = [{{ source = \"status\", equals = \"400-499\" }}, {{ source = \"header\", name = \"content-type\", regex = \"json\" }}, {{ source = \"json\", path = \"error.type\", one_of = [\"type_{i}_a\", \"type_{i}_b\"] }}]\n"
            ),
            _ => format!("all = [{{ source = \"url_path\", glob = \"/api/v{i}/**\" }}, {{ source = \"body\", regex = \"Resource {i} is blocked\" }}]\n"),
        };
        text.push_str(&when);
    }
    RuleSet::from_sources(vec![RuleSource::new("synthetic.toml", "synthetic", text)])
        .unwrap_or_else(|errors| panic!("{errors}"))
}

fn scaling_sample() -> Sample {
    Sample::new(
        "synthetic",
        Method::GET,
        "/api/v7/conversations.history",
        200,
        padded(slack_history, 4096),
    )
}

fn scaling(c: &mut Criterion) {
    let sample = scaling_sample();
    let mut group = c.benchmark_group("scaling");
    group.throughput(Throughput::Bytes(sample.response_body.len() as u64));
    for count in [200, 2000] {
        let rules = synthetic_rules(count);
        assert_eq!(rules.rule_count(), count);
        assert_eq!(
            rules.classify(&sample.exchange()),
            rules.explain(&sample.exchange()).verdict
        );
        group.bench_function(format!("rules_{count}_4k_pass"), |b| {
            b.iter(|| rules.classify(black_box(&sample.exchange())))
        });
    }
    group.finish();
}

/// Median of several timed batches, in nanoseconds per classification.
fn per_call_ns(rules: &RuleSet, sample: &Sample) -> f64 {
    let exchange = sample.exchange();
    let batch = 20_000;
    let mut medians: Vec<f64> = (0..9)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..batch {
                black_box(rules.classify(black_box(&exchange)));
            }
            start.elapsed().as_nanos() as f64 / batch as f64
        })
        .collect();
    medians.sort_by(f64::total_cmp);
    medians[medians.len() / 2]
}

fn report_scaling() {
    let sample = scaling_sample();
    let small = synthetic_rules(200);
    let large = synthetic_rules(2000);
    let (small_ns, large_ns) = (per_call_ns(&small, &sample), per_call_ns(&large, &sample));
    println!(
        "scaling: 200 rules {small_ns:.0} ns, 2000 rules {large_ns:.0} ns per 4 KB response: {:.2}x (target ≤ 2x)",
        large_ns / small_ns
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(40)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = shipped, scaling
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    report_scaling();
}
