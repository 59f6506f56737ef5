//! `rules check`: every error of every file in one run, each at its file:line:column with a caret
//! excerpt. The broken rule files live in tests/fixtures/rules/broken/.

use std::path::{Path, PathBuf};

use haltgate::rules::{check, RuleSet, RuleSource};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/rules")
        .join(name)
}

fn check_output(dir: &Path) -> (bool, String) {
    let mut out = Vec::new();
    let ok = check::run(dir, &mut out).unwrap();
    (ok, String::from_utf8(out).unwrap())
}

#[test]
fn reports_every_error_of_every_file_with_its_location() {
    let dir = fixture("broken");
    let (ok, output) = check_output(&dir);
    assert!(!ok);

    // (file:line:column, message start), in file order then source order.
    let expected = [
        ("alpha.toml:14:29", "unknown key `equls` in a check, expected `source`"),
        ("alpha.toml:18:9", "unknown class `lost_acess`"),
        ("alpha.toml:20:16", "unknown guard `alpha.bussy` in `skip_guards`, expected one of `transient`, `alpha.busy`"),
        ("alpha.toml:23:43", "a check needs exactly one test"),
        ("alpha.toml:24:33", "status range `499-400` is empty"),
        ("alpha.toml:24:33", "status code 1000 is outside 100-999"),
        ("alpha.toml:25:29", "invalid JSON path: `[x]` in `errors[x].code`"),
        ("alpha.toml:26:46", "invalid regex: unclosed group"),
        ("alpha.toml:30:6", "rule id `Alpha Bad Id` must be non-empty"),
        ("alpha.toml:34:68", "a check needs exactly one test"),
        ("beta.toml:4:6", "duplicate rule id `alpha.semantics`"),
        ("beta.toml:10:1", "`when` has no checks"),
        ("beta.toml:23:37", "`path_capture` `repo` needs a `url_path` regex"),
        ("beta.toml:24:47", "unknown list `gone_errors`"),
        ("delta.toml:1:10", "unknown schema 3"),
        ("epsilon.toml:2:10", "schema 1 is the previous rule format"),
        ("epsilon.toml:9:1", "`status` is now a check: `{ source = \"status\", one_of = [...] }`"),
        ("epsilon.toml:10:1", "`request_header` is now a check: `{ source = \"request_header\", name = \"...\", <test> }`"),
        ("gamma.toml:3:7", "invalid table header"),
    ];

    let found: Vec<(String, String)> = output
        .split("\n\n")
        .filter(|block| block.starts_with("error: "))
        .map(|block| {
            let mut lines = block.lines();
            let message = lines
                .next()
                .unwrap()
                .trim_start_matches("error: ")
                .to_owned();
            let location = lines
                .next()
                .unwrap()
                .trim()
                .trim_start_matches("--> ")
                .to_owned();
            (location, message)
        })
        .collect();
    assert_eq!(found.len(), expected.len(), "{output}");
    for ((location, message), (want_location, want_message)) in found.iter().zip(expected) {
        let shown = dir.join(want_location).display().to_string();
        assert_eq!(location, &shown, "{output}");
        assert!(
            message.starts_with(want_message),
            "{message:?} should start with {want_message:?}"
        );
    }
    assert!(output.contains(&format!(
        "= note: first defined at {}",
        dir.join("alpha.toml:17:6").display()
    )));
    assert!(
        output.ends_with(&format!("19 errors in {}\n", dir.display())),
        "{output}"
    );
}

#[test]
fn renders_the_source_line_and_carets_under_the_span() {
    let (_, output) = check_output(&fixture("broken"));
    let block = output
        .split("\n\n")
        .find(|block| block.contains("`request_header` is now"))
        .unwrap();
    let excerpt: Vec<&str> = block.lines().skip(2).collect();
    assert_eq!(
        excerpt,
        vec![
            "   |",
            "10 | request_header = [{ name = \"mcp-session-id\", present = true }]",
            "   | ^^^^^^^^^^^^^^",
        ]
    );
    let block = output
        .split("\n\n")
        .find(|block| block.contains("unknown schema"))
        .unwrap();
    assert_eq!(
        block.lines().skip(2).collect::<Vec<_>>(),
        vec!["  |", "1 | schema = 3", "  |          ^"]
    );
}

#[test]
fn a_good_directory_reports_its_counts() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("demo.toml"),
        "schema = 2\n[[rule]]\nid = \"demo.a\"\nclass = \"lost_access\"\ndescription = \"d\"\nwhen = { all = [{ source = \"status\", equals = 410 }] }\n",
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("tests")).unwrap();
    std::fs::write(dir.path().join("README.md"), "not a rule file").unwrap();
    let (ok, output) = check_output(dir.path());
    assert!(ok, "{output}");
    assert_eq!(output, "ok: 1 rule in 1 file\n");
}

#[test]
fn an_empty_or_missing_directory_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, output) = check_output(dir.path());
    assert!(!ok);
    assert!(
        output.contains("no rule files (*.toml) in this directory"),
        "{output}"
    );
    let missing = dir.path().join("missing");
    let error = check::run(&missing, &mut Vec::new()).unwrap_err();
    assert_eq!(error.kind(), std::io::ErrorKind::NotFound);
    assert!(
        error.to_string().contains("cannot read the directory"),
        "{error}"
    );
}

#[test]
fn errors_are_available_as_values_too() {
    let errors = RuleSet::from_sources(vec![
        RuleSource::new("one.toml", "one", "schema = 2\n[[rule]]\nid = \"x\"\nclass = \"nope\"\ndescription = \"d\"\nwhen = { all = [{ source = \"status\", equals = 401 }] }\n"),
        RuleSource::new("two.toml", "two", "schema = 2\nrule = 3\n"),
    ])
    .unwrap_err();
    let located: Vec<(&str, Option<(usize, usize)>)> = errors
        .errors()
        .iter()
        .map(|error| (error.file(), error.line_column()))
        .collect();
    assert_eq!(
        located,
        vec![("one.toml", Some((4, 9))), ("two.toml", Some((2, 8)))]
    );
    let error: &dyn std::error::Error = &errors;
    assert!(error
        .to_string()
        .contains("`rule` must be an array of tables"));
}
