//! `rules test` and `rules explain` over small rule directories written per test.

use std::fs;
use std::path::Path;

use serde_json::{json, Value};

use haltgate::rules::{cases, DEFAULT_MAX_BODY_BYTES};

const SHOP_RULES: &str = r#"schema = 2

[[rule]]
id = "shop.key_revoked"
class = "credential_invalid"
description = "The shop API key was revoked."
[rule.when]
all = [
  { source = "status", equals = 401 },
  { source = "json", path = "error.code", equals = "key_revoked" },
]

[[rule]]
id = "shop.store_closed"
class = "lost_access"
description = "The session's store was closed."
mode = "shadow"
[rule.when]
all = [
  { source = "status", equals = 404 },
  { source = "json", path = "error.code", equals = "store_closed" },
  { source = "path_capture", name = "store", equals_scope = "store" },
  { source = "url_path", regex = '^/stores/(?P<store>[a-z0-9]+)$' },
]
"#;

fn case(
    status: u16,
    body: &str,
    expect: Option<(&str, Option<&str>)>,
    not_rules: &[&str],
) -> Value {
    let mut case = json!({
        "description": "A recorded shop exchange.",
        "provider": "shop",
        "context": {"store": "s1"},
        "request": {"method": "GET", "url": "https://shop.example/stores/s1",
                    "headers": {"authorization": "Bearer REDACTED"}},
        "response": {"status": status, "headers": {"content-type": "application/json"}, "body": body},
        "not_rules": not_rules,
    });
    if let Some((class, rule)) = expect {
        case["expect"] = json!({"class": class, "rule": rule});
    }
    case
}

fn write(dir: &Path, relative: &str, content: &str) {
    let path = dir.join(relative);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, content).unwrap();
}

fn write_case(dir: &Path, relative: &str, case: &Value) {
    write(dir, relative, &serde_json::to_string_pretty(case).unwrap());
}

/// A directory where every rule has a positive and a negative case.
fn covered_shop() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(root, "shop.toml", SHOP_RULES);
    write(root, "README.md", "ignored");
    write_case(
        root,
        "tests/shop/key_revoked.json",
        &case(
            401,
            r#"{"error":{"code":"key_revoked"}}"#,
            Some(("credential_invalid", Some("shop.key_revoked"))),
            &["shop.store_closed"],
        ),
    );
    let mut retry_after = case(
        401,
        r#"{"error":{"code":"key_revoked"}}"#,
        Some(("pass", None)),
        &["shop.key_revoked"],
    );
    retry_after["response"]["headers"]["retry-after"] = json!("30");
    write_case(
        root,
        "tests/shop/key_revoked_retry_after.json",
        &retry_after,
    );
    write_case(
        root,
        "tests/shop/store_closed.json",
        &case(
            404,
            r#"{"error":{"code":"store_closed"}}"#,
            Some(("lost_access", Some("shop.store_closed"))),
            &[],
        ),
    );
    let mut other_store = case(
        404,
        r#"{"error":{"code":"store_closed"}}"#,
        Some(("pass", None)),
        &["shop.store_closed"],
    );
    other_store["context"] = json!({"store": "s2"});
    write_case(
        root,
        "tests/shop/store_closed_other_store.json",
        &other_store,
    );
    let mut transient = case(503, r#"{"error":{"code":"key_revoked"}}"#, None, &[]);
    transient.as_object_mut().unwrap().remove("provider");
    write_case(root, "tests/transient/503.json", &transient);
    dir
}

fn run_cases(dir: &Path) -> (bool, String) {
    let mut out = Vec::new();
    let ok = cases::run(dir, DEFAULT_MAX_BODY_BYTES, &mut out).unwrap();
    (ok, String::from_utf8(out).unwrap())
}

#[test]
fn a_covered_directory_passes() {
    let dir = covered_shop();
    let (ok, output) = run_cases(dir.path());
    assert!(ok, "{output}");
    assert_eq!(output, "5 passed, 0 failed\n");
}

#[test]
fn failures_are_shown_with_their_explanation() {
    let dir = covered_shop();
    let wrong = case(
        401,
        r#"{"error":{"code":"key_expired"}}"#,
        Some(("credential_invalid", Some("shop.key_revoked"))),
        &[],
    );
    write_case(dir.path(), "tests/shop/wrong.json", &wrong);
    let matched_negative = case(
        401,
        r#"{"error":{"code":"key_revoked"}}"#,
        None,
        &["shop.key_revoked"],
    );
    write_case(
        dir.path(),
        "tests/shop/matched_negative.json",
        &matched_negative,
    );
    write(
        dir.path(),
        "tests/shop/broken.json",
        "{\"provider\": \"shop\", \"request\": {}}",
    );
    let mut typo = case(401, "{}", Some(("pass", None)), &[]);
    typo["not_rule"] = json!(["shop.key_revoked"]);
    write_case(dir.path(), "tests/shop/typo.json", &typo);

    let (ok, output) = run_cases(dir.path());
    assert!(!ok);
    let failed: Vec<&str> = output
        .lines()
        .filter(|line| line.starts_with("FAIL "))
        .collect();
    assert_eq!(failed.len(), 4, "{output}");
    assert!(
        output.contains("  expected credential_invalid by shop.key_revoked, got pass (no rule)\n"),
        "{output}"
    );
    assert!(output.contains(
        "    |   shop.key_revoked [enforce credential_invalid, priority 0]: no match: json error.code equals \"key_revoked\" did not hold (error.code is \"key_expired\")\n"
    ), "{output}");
    assert!(
        output.contains("  rule shop.key_revoked matched, but the case lists it in not_rules\n"),
        "{output}"
    );
    assert!(output.contains("missing field `method`"), "{output}");
    assert!(output.contains("unknown field `not_rule`"), "{output}");
    assert!(output.ends_with("5 passed, 4 failed\n"), "{output}");
}

#[test]
fn rules_without_a_positive_or_negative_case_fail_the_run() {
    let dir = covered_shop();
    fs::remove_file(dir.path().join("tests/shop/store_closed_other_store.json")).unwrap();
    fs::remove_file(dir.path().join("tests/shop/key_revoked.json")).unwrap();
    let (ok, output) = run_cases(dir.path());
    assert!(!ok);
    assert!(
        output
            .contains("UNTESTED rule shop.key_revoked (shop) has no positive case (expect.rule)\n"),
        "{output}"
    );
    assert!(
        output
            .contains("UNTESTED rule shop.store_closed (shop) has no negative case (not_rules)\n"),
        "{output}"
    );
    assert!(
        output.ends_with("2 enabled rule(s) lack cases\n3 passed, 0 failed\n"),
        "{output}"
    );
}

#[test]
fn zero_cases_fail_the_run() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "shop.toml",
        &SHOP_RULES
            .replace(
                "id = \"shop.key_revoked\"",
                "id = \"shop.key_revoked\"\nenabled = false",
            )
            .replace("mode = \"shadow\"", "enabled = false"),
    );
    fs::create_dir(dir.path().join("tests")).unwrap();
    let (ok, output) = run_cases(dir.path());
    assert!(!ok);
    assert!(
        output.contains("error: no test cases found under"),
        "{output}"
    );
    assert!(output.ends_with("0 passed, 0 failed\n"), "{output}");
}

#[test]
fn the_transient_corpus_runs_against_every_provider() {
    let dir = covered_shop();
    write(
        dir.path(),
        "other.toml",
        r#"schema = 2
[[rule]]
id = "other.outage_means_gone"
class = "lost_access"
description = "Wrongly treats a 503 as lost access."
skip_guards = ["transient"]
[rule.when]
all = [{ source = "status", equals = 503 }]
"#,
    );
    let mut positive = case(
        503,
        "{}",
        Some(("lost_access", Some("other.outage_means_gone"))),
        &[],
    );
    positive["provider"] = json!("other");
    write_case(dir.path(), "tests/other/outage.json", &positive);
    let mut negative = case(
        200,
        "{}",
        Some(("pass", None)),
        &["other.outage_means_gone"],
    );
    negative["provider"] = json!("other");
    write_case(dir.path(), "tests/other/ok.json", &negative);

    let (ok, output) = run_cases(dir.path());
    assert!(!ok);
    assert!(
        output.contains("FAIL ") && output.contains("tests/transient/503.json"),
        "{output}"
    );
    assert!(
        output.contains(
            "  provider other: rule(s) other.outage_means_gone matched a transient response\n"
        ),
        "{output}"
    );
    assert!(output.ends_with("6 passed, 1 failed\n"), "{output}");
}

#[test]
fn explain_prints_the_decision_and_checks_expectations() {
    let dir = covered_shop();
    let mut out = Vec::new();
    let ok = cases::explain(
        dir.path(),
        &dir.path().join("tests/shop/key_revoked_retry_after.json"),
        DEFAULT_MAX_BODY_BYTES,
        &mut out,
    )
    .unwrap();
    let output = String::from_utf8(out).unwrap();
    assert!(ok, "{output}");
    assert!(
        output.contains("decision: pass (no enforce rule matched)\n"),
        "{output}"
    );
    assert!(
        output.contains("  transient: vetoes (the response has a Retry-After header)\n"),
        "{output}"
    );
    assert!(output.contains("shop.key_revoked [enforce credential_invalid, priority 0]: no match: vetoed by guard transient: the response has a Retry-After header\n"), "{output}");
    assert!(output.ends_with("expectations: ok\n"), "{output}");

    let mut out = Vec::new();
    let ok = cases::explain(
        dir.path(),
        &dir.path().join("tests/transient/503.json"),
        DEFAULT_MAX_BODY_BYTES,
        &mut out,
    )
    .unwrap();
    let output = String::from_utf8(out).unwrap();
    assert!(ok, "{output}");
    assert!(output.contains("provider: shop\n"), "{output}");

    let wrong = case(
        401,
        r#"{"error":{"code":"other"}}"#,
        Some(("credential_invalid", Some("shop.key_revoked"))),
        &[],
    );
    write_case(dir.path(), "wrong.json", &wrong);
    let mut out = Vec::new();
    let ok = cases::explain(
        dir.path(),
        &dir.path().join("wrong.json"),
        DEFAULT_MAX_BODY_BYTES,
        &mut out,
    )
    .unwrap();
    let output = String::from_utf8(out).unwrap();
    assert!(!ok);
    assert!(output.contains("expectation failed: expected credential_invalid by shop.key_revoked, got pass (no rule)"), "{output}");

    let missing = cases::explain(
        dir.path(),
        &dir.path().join("nope.json"),
        DEFAULT_MAX_BODY_BYTES,
        &mut Vec::new(),
    );
    assert_eq!(missing.unwrap_err().kind(), std::io::ErrorKind::NotFound);
    let no_rules = cases::run(
        &dir.path().join("nowhere"),
        DEFAULT_MAX_BODY_BYTES,
        &mut Vec::new(),
    );
    assert_eq!(no_rules.unwrap_err().kind(), std::io::ErrorKind::NotFound);
}
