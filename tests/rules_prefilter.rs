//! The literal prefilter never changes a decision: `classify` (which skips rules whose literals
//! are absent) must agree with `explain` (which evaluates every rule) on generated responses
//! built from the words the rules look for, escaped variants and near misses included.

use std::path::Path;
use std::sync::OnceLock;

use http::{HeaderMap, HeaderValue, Method, StatusCode};
use proptest::prelude::*;
use serde_json::json;

use haltgate::rules::{Exchange, ExchangeHead, ResponseBody, RuleSet, Scope};

/// Per family of rules: keys, words (escaped spellings and near misses included) and document
/// templates whose `$` are filled with random scalars, so generated documents often hit real
/// shapes.
type Family = (
    &'static [&'static str],
    &'static [&'static str],
    &'static [&'static str],
);

const FAMILIES: &[Family] = &[
    (
        &["ok", "error", "channel", "warning"],
        &[
            "not_in_channel",
            "not\\u005fin_channel",
            "channel_not_found",
            "is_archived",
            "token_revoked",
            "invalid_auth",
            "account_inactive",
            "ratelimited",
            "not_in_channels",
            "C0123ABCD",
        ],
        &[r#"{"ok":$,"error":$}"#, r#"{"ok":$,"error":$,"warning":$}"#],
    ),
    (
        &["message", "errors", "type", "documentation_url"],
        &[
            "Bad credentials",
            "B\\u0061d credentials",
            "Not Found",
            "Requires authentication",
            "Repository access blocked",
            "API rate limit exceeded",
            "RATELIMITED",
            "bad credentials",
        ],
        &[
            r#"{"message":$,"documentation_url":$}"#,
            r#"{"data":null,"errors":[{"type":$,"message":$}]}"#,
        ],
    ),
    (
        &["errors", "message", "extensions", "type", "code", "data"],
        &[
            "Entity not found",
            "Entity not found: Issue",
            "forbidden",
            "authentication error",
            "RATELIMITED",
            "ratelimited",
            "invalid scope",
            "Entity n\\u006ft found",
        ],
        &[
            r#"{"errors":[{"message":$,"extensions":{"type":$,"code":$}}]}"#,
            r#"{"data":{},"errors":[{"message":$},{"message":$}]}"#,
        ],
    ),
    (
        &["error", "code", "message", "result", "isError", "jsonrpc"],
        &[
            "Session not found",
            "Bad Request: No valid session ID provided",
            "Method not found",
        ],
        &[
            r#"{"jsonrpc":"2.0","id":1,"error":{"code":$,"message":$}}"#,
            r#"{"result":{"isError":$}}"#,
        ],
    ),
    (
        &["type", "subtype", "errors", "error", "is_error", "result"],
        &[
            "result",
            "error",
            "error_during_execution",
            "authentication_error",
            "overloaded_error",
            "No conversation found with session ID: 42",
            "No message found with message.uuid of: 7",
            "r\\u0065sult",
        ],
        &[
            r#"{"type":$,"subtype":$,"is_error":$,"errors":[$]}"#,
            r#"{"type":$,"error":{"type":$,"message":$}}"#,
        ],
    ),
    (
        &["error", "detail", "state", "type", "kind"],
        &[
            "gone",
            "g\\u006fne",
            "gone_for_real",
            "expired",
            "missing",
            "busy",
            "retired",
            "temporary",
            "session_gone",
            "error",
            "Resource access blocked",
            "Resource disabled",
        ],
        &[
            r#"{"error":$}"#,
            r#"{"error":$,"detail":$,"state":$}"#,
            r#"{"type":$,"error":{"kind":$}}"#,
        ],
    ),
];

fn document(
    keys: &'static [&'static str],
    words: &'static [&'static str],
) -> impl Strategy<Value = String> {
    let scalar = scalar(words);
    let object = |value: BoxedStrategy<String>| {
        prop::collection::vec((prop::sample::select(keys), value), 1..5).prop_map(|fields| {
            let fields: Vec<String> = fields
                .into_iter()
                .map(|(key, value)| format!("\"{key}\":{value}"))
                .collect();
            format!("{{{}}}", fields.join(","))
        })
    };
    let inner = object(scalar.clone().boxed());
    let value = prop_oneof![
        4 => scalar.boxed(),
        1 => inner.clone().boxed(),
        1 => prop::collection::vec(inner, 1..3).prop_map(|items| format!("[{}]", items.join(","))).boxed(),
    ];
    object(value.boxed())
}

fn scalar(words: &'static [&'static str]) -> impl Strategy<Value = String> + Clone {
    prop_oneof![
        6 => prop::sample::select(words).prop_map(|word| format!("\"{word}\"")),
        2 => any::<bool>().prop_map(|b| b.to_string()),
        1 => Just("null".to_owned()),
        1 => prop::sample::select(&[-32601i64, 0, 401, 404][..]).prop_map(|n| n.to_string()),
    ]
}

fn filled(template: &'static str, words: &'static [&'static str]) -> impl Strategy<Value = String> {
    let holes = template.matches('$').count();
    prop::collection::vec(scalar(words), holes).prop_map(move |values| {
        let mut values = values.into_iter();
        template
            .split('$')
            .enumerate()
            .map(|(index, piece)| {
                if index == 0 {
                    piece.to_owned()
                } else {
                    values.next().unwrap() + piece
                }
            })
            .collect()
    })
}

fn documents() -> impl Strategy<Value = Vec<String>> {
    prop::sample::select((0..FAMILIES.len()).collect::<Vec<_>>()).prop_flat_map(|family| {
        let (keys, words, templates) = FAMILIES[family];
        let one = prop_oneof![
            1 => document(keys, words).boxed(),
            2 => prop::sample::select(templates)
                .prop_flat_map(move |template| filled(template, words))
                .boxed(),
        ];
        prop::collection::vec(one, 1..4)
    })
}

#[derive(Debug, Clone)]
enum Framing {
    Json,
    EventStream,
    JsonLines,
    Text,
}

fn framed(documents: &[String], framing: &Framing) -> (String, &'static str) {
    match framing {
        Framing::Json => (documents[0].clone(), "application/json"),
        Framing::EventStream => (
            documents
                .iter()
                .map(|doc| format!("event: message\ndata: {doc}\n\n"))
                .collect(),
            "text/event-stream",
        ),
        Framing::JsonLines => (documents.join("\n"), "application/x-ndjson"),
        Framing::Text => (documents.join(" "), "text/plain"),
    }
}

fn rule_sets() -> &'static [RuleSet] {
    static SETS: OnceLock<Vec<RuleSet>> = OnceLock::new();
    SETS.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        ["rules", "tests/fixtures/rules/engine"]
            .iter()
            .map(|dir| {
                RuleSet::load_dir(&root.join(dir)).unwrap_or_else(|errors| panic!("{errors}"))
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(600))]

    #[test]
    fn classify_agrees_with_exhaustive_evaluation(
        documents in documents(),
        framing in prop_oneof![Just(Framing::Json), Just(Framing::EventStream), Just(Framing::JsonLines), Just(Framing::Text)],
        status in prop::sample::select(&[200u16, 400, 401, 403, 404, 409, 410, 429, 451, 500, 529][..]),
        path in prop::sample::select(&["/api/chat.postMessage", "/repos/acme/widgets", "/repos/acme/widgets/issues/1", "/graphql", "/mcp", "/v1/messages", "/v1/x", "/api"][..]),
        scoped in any::<bool>(),
        known_scope in any::<bool>(),
        as_event in any::<bool>(),
        credential in any::<bool>(),
    ) {
        let (body, content_type) = framed(&documents, &framing);
        let mut response_headers = HeaderMap::new();
        response_headers.insert("content-type", HeaderValue::from_static(content_type));
        let mut request_headers = HeaderMap::new();
        request_headers.insert("mcp-session-id", HeaderValue::from_static("abc"));
        request_headers.insert("content-type", HeaderValue::from_static("application/json"));
        if credential {
            request_headers.insert("authorization", HeaderValue::from_static("Bearer xoxb-REDACTED"));
        }
        let request_body = br#"{"channel":"C0123ABCD","variables":{"id":"ENG-1"},"resource":"R1"}"#;
        let scope_value = json!({"slack_channel": "C0123ABCD", "github_repo": "acme/widgets", "linear_issue": "ENG-1", "demo_resource": "R1"});
        let scope = match (known_scope, scoped) {
            (false, _) => Scope::Unknown,
            (true, true) => Scope::Known(Some(&scope_value)),
            (true, false) => Scope::Known(None),
        };
        let method = Method::POST;
        let response_body = if as_event {
            ResponseBody::SseEvent(documents[0].as_bytes())
        } else {
            ResponseBody::Complete(body.as_bytes())
        };
        for rules in rule_sets() {
            for provider in rules.providers() {
                let exchange = Exchange {
                    head: ExchangeHead {
                        provider,
                        method: &method,
                        path_and_query: path,
                        request_headers: &request_headers,
                        status: StatusCode::from_u16(status).unwrap(),
                        response_headers: &response_headers,
                    },
                    request_body,
                    response_body,
                    scope,
                };
                let classified = rules.classify(&exchange);
                let explanation = rules.explain(&exchange);
                prop_assert_eq!(&classified, &explanation.verdict, "provider {}, body {}\n{}", provider, body, explanation);
                if !rules.needs_body(&exchange.head) {
                    let decision = classified.decision().cloned();
                    prop_assert!(decision.is_some_and(|d| d.rule.is_none() && d.shadow.is_empty()),
                        "needs_body was false but a rule matched: provider {}\n{}", provider, explanation);
                }
            }
        }
    }
}

/// The generator above is only useful if its documents often reach rules.
#[test]
fn generated_documents_often_match_a_rule() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;

    let mut runner = TestRunner::deterministic();
    let strategy = documents();
    let scope_value = json!({"slack_channel": "C0123ABCD", "demo_resource": "R1"});
    let (mut tried, mut matched) = (0, 0);
    let mut documents_matching = 0;
    let method = Method::POST;
    let mut response_headers = HeaderMap::new();
    response_headers.insert("content-type", HeaderValue::from_static("application/json"));
    let mut request_headers = HeaderMap::new();
    request_headers.insert(
        "authorization",
        HeaderValue::from_static("Bearer xoxb-REDACTED"),
    );
    for _ in 0..300 {
        let documents = strategy.new_tree(&mut runner).unwrap().current();
        let before = matched;
        for rules in rule_sets() {
            for provider in rules.providers() {
                for status in [200, 401, 403, 404] {
                    let exchange = Exchange {
                        head: ExchangeHead {
                            provider,
                            method: &method,
                            path_and_query: "/api",
                            request_headers: &request_headers,
                            status: StatusCode::from_u16(status).unwrap(),
                            response_headers: &response_headers,
                        },
                        request_body: br#"{"channel":"C0123ABCD","resource":"R1"}"#,
                        response_body: ResponseBody::Complete(documents[0].as_bytes()),
                        scope: Scope::Known(Some(&scope_value)),
                    };
                    tried += 1;
                    if rules
                        .classify(&exchange)
                        .decision()
                        .is_some_and(|d| d.rule.is_some())
                    {
                        matched += 1;
                    }
                }
            }
        }
        documents_matching += usize::from(matched > before);
    }
    assert!(
        documents_matching >= 300 / 10,
        "only {documents_matching} of 300 generated documents matched some rule ({matched} of {tried} exchanges)"
    );
}

fn single_provider(rules: &str) -> RuleSet {
    RuleSet::from_sources(vec![haltgate::rules::RuleSource::new(
        "p.toml",
        "p",
        format!("schema = 2\n{rules}"),
    )])
    .unwrap_or_else(|errors| panic!("{errors}"))
}

fn decide(rules: &RuleSet, body: &str) -> Option<String> {
    let method = Method::GET;
    let headers = HeaderMap::new();
    let exchange = Exchange {
        head: ExchangeHead {
            provider: "p",
            method: &method,
            path_and_query: "/",
            request_headers: &headers,
            status: StatusCode::NOT_FOUND,
            response_headers: &headers,
        },
        request_body: b"",
        response_body: ResponseBody::Complete(body.as_bytes()),
        scope: Scope::Known(None),
    };
    let verdict = rules.classify(&exchange);
    assert_eq!(verdict, rules.explain(&exchange).verdict);
    verdict
        .decision()
        .and_then(|d| d.rule.as_deref().map(str::to_owned))
}

#[test]
fn literals_starting_at_the_same_place_or_overlapping_are_all_seen() {
    let rules = single_provider(
        r#"
[[rule]]
id = "p.short"
class = "lost_access"
description = "Its literal is a prefix of the next rule's."
priority = 2
when = { all = [{ source = "body", regex = "Not Found" }] }

[[rule]]
id = "p.long"
class = "lost_access"
description = "Longer literal starting at the same place."
priority = 1
when = { all = [{ source = "body", contains = "Not Found at all" }] }

[[rule]]
id = "p.overlap"
class = "lost_access"
description = "Overlaps the end of the others."
priority = 3
when = { all = [{ source = "body", regex = "at allowed" }] }
"#,
    );
    assert_eq!(
        decide(&rules, "xx Not Found at all").as_deref(),
        Some("p.short")
    );
    assert_eq!(
        decide(&rules, "Not Found at allowed").as_deref(),
        Some("p.overlap")
    );
    assert_eq!(decide(&rules, "Not Foun at all").as_deref(), None);
}

#[test]
fn an_any_group_is_filtered_only_when_every_branch_has_a_literal() {
    let rules = single_provider(
        r#"
[[rule]]
id = "p.either_word"
class = "lost_access"
description = "Either word decides; both are literals."
priority = 2
[rule.when]
any = [
  { source = "body", contains = "gone for good" },
  { source = "json", path = "error", equals = "retired" },
]

[[rule]]
id = "p.word_or_status"
class = "credential_invalid"
description = "A branch without a literal: the rule must run on every body."
priority = 1
[rule.when]
any = [
  { source = "body", contains = "revoked for good" },
  { source = "status", equals = 404 },
]
"#,
    );
    assert_eq!(
        decide(&rules, "it is gone for good").as_deref(),
        Some("p.either_word")
    );
    assert_eq!(
        decide(&rules, r#"{"error":"retired"}"#).as_deref(),
        Some("p.either_word")
    );
    assert_eq!(
        decide(&rules, r#"{"error":"busy"}"#).as_deref(),
        Some("p.word_or_status"),
        "the status branch holds without any literal in the body"
    );
}
