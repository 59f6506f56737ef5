//! `haltgate classify`: JSON lines in, one decision line out per input line, in order; ids of any
//! JSON type echoed; malformed lines answered with their line number and the run goes on.

use std::path::Path;

use serde_json::{json, Value};

use haltgate::classify;
use haltgate::rules::{RuleSet, DEFAULT_MAX_BODY_BYTES};

fn rules() -> RuleSet {
    RuleSet::load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/rules/engine"))
        .unwrap_or_else(|errors| panic!("{errors}"))
}

fn hosts() -> Vec<(String, String)> {
    vec![("api.demo.test".to_owned(), "demo".to_owned())]
}

fn run(rules: &RuleSet, input: &str) -> (bool, Vec<Value>) {
    run_limited(rules, DEFAULT_MAX_BODY_BYTES, input)
}

fn run_limited(rules: &RuleSet, max_body_bytes: usize, input: &str) -> (bool, Vec<Value>) {
    let mut out = Vec::new();
    let ok = classify::run(
        rules,
        &hosts(),
        max_body_bytes,
        &mut input.as_bytes(),
        &mut out,
    )
    .unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(text.is_empty() || text.ends_with('\n'));
    let lines = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}")))
        .collect();
    (ok, lines)
}

fn line(value: Value) -> String {
    let mut text = serde_json::to_string(&value).unwrap();
    text.push('\n');
    text
}

#[test]
fn answers_every_line_in_order_with_ids_echoed_and_errors_numbered() {
    let rules = rules();
    let gone = json!({"status": 200, "body": "{\"error\":\"gone\"}"});
    let mut input = String::new();
    input += &line(json!({"id": 1, "provider": "demo",
        "request": {"method": "POST", "url": "https://api.demo.test/api"}, "response": gone}));
    input += "\n";
    input += &line(json!({"id": "abc",
        "request": {"method": "GET", "url": "https://API.demo.test/repos/acme/widgets", "headers": {"accept": ["a", "b"]}},
        "response": {"status": 404, "headers": {"content-type": "application/json"}, "body": "{}"},
        "context": {"demo_repo": "ACME/widgets"}, "extra": true}));
    input += "{not json\n";
    input += &line(json!({"id": {"k": [1, 2]}, "provider": "nobody",
        "request": {"method": "GET", "url": "/"}, "response": {"status": 200}}));
    input += &line(json!({"id": null, "provider": "demo",
        "request": {"method": "GET", "url": "/"}, "response": {"status": 200, "body": "{}"}}));
    input += &line(
        json!({"id": 7, "request": {"method": "GET", "url": "https://unknown.test/"},
        "response": {"status": 200}}),
    );
    input += &line(json!({"id": 8.5, "provider": "demo", "response": {"status": 200}}));
    input += "[1, 2]\n";
    input += "   \t\n";
    input += &line(json!({"id": [true], "provider": "demo",
        "request": {"method": "GE T", "url": "/"}, "response": {"status": 200}}));
    // The last line has no newline and no id.
    input += r#"{"provider":"demo","request":{"method":"GET","url":"/api"},"response":{"status":200,"body":"{\"error\":\"expired\"}"}}"#;

    let (ok, lines) = run(&rules, &input);
    assert!(!ok, "some lines were in error");
    let errors: Vec<(u64, Option<&Value>)> = lines
        .iter()
        .filter(|line| line.get("error").is_some())
        .map(|line| (line["line"].as_u64().unwrap(), line.get("id")))
        .collect();
    assert_eq!(
        errors,
        vec![
            (4, None),
            (5, Some(&json!({"k": [1, 2]}))),
            (7, Some(&json!(7))),
            (8, Some(&json!(8.5))),
            (9, None),
            (11, Some(&json!([true]))),
        ]
    );
    let decided: Vec<&Value> = lines
        .iter()
        .filter(|line| line.get("class").is_some())
        .collect();
    assert_eq!(
        decided,
        vec![
            &json!({"id": 1, "class": "lost_access", "rule": "demo.gone_high"}),
            &json!({"id": "abc", "class": "lost_access", "rule": "demo.repo_missing"}),
            &json!({"id": null, "class": "pass", "rule": null}),
            &json!({"id": null, "class": "credential_invalid", "rule": "demo.expired"}),
        ]
    );
    // Output order follows input order.
    let order: Vec<String> = lines
        .iter()
        .map(|line| match line.get("line") {
            Some(number) => format!("error@{number}"),
            None => line["class"].as_str().unwrap().to_owned(),
        })
        .collect();
    assert_eq!(
        order,
        vec![
            "lost_access",
            "lost_access",
            "error@4",
            "error@5",
            "pass",
            "error@7",
            "error@8",
            "error@9",
            "error@11",
            "credential_invalid"
        ]
    );
    let messages: Vec<&str> = lines
        .iter()
        .filter_map(|line| line["error"].as_str())
        .collect();
    assert!(messages[0].starts_with("invalid JSON"), "{messages:?}");
    assert_eq!(messages[1], "unknown provider `nobody`");
    assert_eq!(
        messages[2],
        "no provider given and none configured for host `unknown.test`"
    );
    assert!(
        messages[3].contains("missing field `request`"),
        "{messages:?}"
    );
    assert_eq!(messages[4], "a line must be a JSON object");
    assert!(
        messages[5].contains("invalid request method"),
        "{messages:?}"
    );
}

#[test]
fn a_clean_run_succeeds_and_large_bodies_are_not_inspected() {
    let rules = rules();
    let small = json!({"id": "s", "provider": "demo", "request": {"method": "POST", "url": "/api"},
        "response": {"status": 200, "body": "{\"error\":\"gone\"}"}});
    let padded = format!("{{\"error\":\"gone\",\"pad\":\"{}\"}}", "x".repeat(64));
    let large = json!({"id": "l", "provider": "demo", "request": {"method": "POST", "url": "/api"},
        "response": {"status": 200, "body": padded}});
    let (ok, lines) = run_limited(&rules, 32, &(line(small) + &line(large)));
    assert!(ok);
    assert_eq!(
        lines,
        vec![
            json!({"id": "s", "class": "lost_access", "rule": "demo.gone_high"}),
            json!({"id": "l", "class": "pass", "rule": null}),
        ]
    );
}

#[test]
fn empty_input_writes_nothing() {
    let (ok, lines) = run(&rules(), "");
    assert!(ok);
    assert!(lines.is_empty());
}
