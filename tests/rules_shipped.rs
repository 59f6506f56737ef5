//! The shipped rule files in rules/ compile and pass their own cases and the transient corpus.

use std::path::PathBuf;

use haltgate::rules::{cases, check, DEFAULT_MAX_BODY_BYTES};

fn shipped() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("rules")
}

#[test]
fn shipped_rules_compile() {
    let mut out = Vec::new();
    let ok = check::run(&shipped(), &mut out).unwrap();
    let output = String::from_utf8(out).unwrap();
    assert!(ok, "{output}");
    assert!(output.starts_with("ok: "), "{output}");
}

#[test]
fn shipped_rules_pass_their_cases() {
    let mut out = Vec::new();
    let ok = cases::run(&shipped(), DEFAULT_MAX_BODY_BYTES, &mut out).unwrap();
    let output = String::from_utf8(out).unwrap();
    assert!(ok, "{output}");
    assert!(output.ends_with(" 0 failed\n"), "{output}");
}
