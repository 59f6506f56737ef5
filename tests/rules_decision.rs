//! Decision order and inputs: priority, shadow, unless, guards, skip_guards, enabled = false,
//! the session scope (`NeedsScope`), uninspected bodies, event streams and `needs_body`.
//! Rules: tests/fixtures/rules/engine/*.toml.

use std::path::Path;

use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use serde_json::{json, Value};

use haltgate::rules::{
    Class, Decision, Exchange, ExchangeHead, ResponseBody, RuleOutcome, RuleSet, RuleSource, Scope,
    Verdict,
};

fn rules() -> RuleSet {
    RuleSet::load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/rules/engine"))
        .unwrap_or_else(|errors| panic!("{errors}"))
}

#[derive(Clone)]
enum Body {
    Complete(Vec<u8>),
    Event(Vec<u8>),
    Uninspected,
}

/// An exchange under construction; defaults to `POST /api` answered 200.
#[derive(Clone)]
struct Case {
    provider: &'static str,
    method: Method,
    path_and_query: String,
    request_headers: HeaderMap,
    request_body: Vec<u8>,
    status: StatusCode,
    response_headers: HeaderMap,
    body: Body,
    scope: Option<Option<Value>>,
}

fn case(body: &str) -> Case {
    let mut response_headers = HeaderMap::new();
    response_headers.insert("content-type", HeaderValue::from_static("application/json"));
    Case {
        provider: "demo",
        method: Method::POST,
        path_and_query: "/api".into(),
        request_headers: HeaderMap::new(),
        request_body: Vec::new(),
        status: StatusCode::OK,
        response_headers,
        body: Body::Complete(body.as_bytes().to_vec()),
        scope: Some(None),
    }
}

impl Case {
    fn status(mut self, code: u16) -> Case {
        self.status = StatusCode::from_u16(code).unwrap();
        self
    }
    fn path(mut self, path: &str) -> Case {
        self.path_and_query = path.into();
        self
    }
    fn method(mut self, method: Method) -> Case {
        self.method = method;
        self
    }
    fn header(mut self, name: &'static str, value: &'static str) -> Case {
        self.response_headers.append(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
        self
    }
    fn request_header(mut self, name: &'static str, value: &'static str) -> Case {
        self.request_headers.append(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
        self
    }
    fn request_body(mut self, body: &str) -> Case {
        self.request_body = body.as_bytes().to_vec();
        self
    }
    fn scope(mut self, scope: Value) -> Case {
        self.scope = Some(Some(scope));
        self
    }
    fn unknown_scope(mut self) -> Case {
        self.scope = None;
        self
    }
    fn body(mut self, body: Body) -> Case {
        self.body = body;
        self
    }
    fn provider(mut self, provider: &'static str) -> Case {
        self.provider = provider;
        self
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
            response_body: match &self.body {
                Body::Complete(bytes) => ResponseBody::Complete(bytes),
                Body::Event(bytes) => ResponseBody::SseEvent(bytes),
                Body::Uninspected => ResponseBody::Uninspected,
            },
            scope: match &self.scope {
                None => Scope::Unknown,
                Some(scope) => Scope::Known(scope.as_ref()),
            },
        }
    }

    /// Classifies, checking that `explain` reaches the same verdict.
    fn verdict(&self, rules: &RuleSet) -> Verdict {
        let verdict = rules.classify(&self.exchange());
        let explanation = rules.explain(&self.exchange());
        assert_eq!(
            verdict, explanation.verdict,
            "classify and explain disagree:\n{explanation}"
        );
        verdict
    }

    fn decision(&self, rules: &RuleSet) -> Decision {
        match self.verdict(rules) {
            Verdict::Decided(decision) => decision,
            Verdict::NeedsScope => panic!("unexpected NeedsScope"),
        }
    }
}

fn decided_by(decision: &Decision) -> (Class, Option<&str>) {
    (decision.class, decision.rule.as_deref())
}

#[test]
fn priority_decides_and_shadow_rules_are_reported_alongside() {
    let rules = rules();
    let decision = case(r#"{"error":"gone"}"#).decision(&rules);
    assert_eq!(
        decided_by(&decision),
        (Class::LostAccess, Some("demo.gone_high"))
    );
    assert_eq!(
        decision.reason.as_deref(),
        Some("The demo resource is gone.")
    );
    assert_eq!(
        decision.shadow,
        vec![std::sync::Arc::<str>::from("demo.gone_shadow")]
    );
    assert!(decision.body_inspected);

    let decision = case(r#"{"error":"gone_for_real"}"#).decision(&rules);
    assert_eq!(
        decided_by(&decision),
        (Class::CredentialInvalid, Some("demo.gone_low"))
    );
    assert_eq!(
        decision.reason.as_deref(),
        Some("Listed first but with the default priority."),
        "without `reason` the description is used"
    );
    assert!(decision.shadow.is_empty());
}

#[test]
fn any_holding_unless_table_stops_a_rule() {
    let rules = rules();
    let decision = case(r#"{"error":"gone","detail":"temporary"}"#).decision(&rules);
    assert_eq!(
        decided_by(&decision),
        (Class::CredentialInvalid, Some("demo.gone_low"))
    );
    assert_eq!(
        decision.shadow,
        vec![std::sync::Arc::<str>::from("demo.gone_shadow")]
    );

    let dry_run = case(r#"{"error":"gone"}"#).request_header("x-demo-dry-run", "1");
    assert_eq!(
        decided_by(&dry_run.decision(&rules)),
        (Class::CredentialInvalid, Some("demo.gone_low"))
    );
    let explanation = rules.explain(&dry_run.exchange());
    assert_eq!(
        explanation.rule("demo.gone_high").unwrap().outcome,
        RuleOutcome::Unless(1)
    );
    assert!(explanation
        .to_string()
        .contains("demo.gone_high [enforce lost_access, priority 10]: no match: unless #2 held"));
}

#[test]
fn file_guards_veto_unless_skipped() {
    let rules = rules();
    let decision = case(r#"{"error":"expired"}"#).decision(&rules);
    assert_eq!(
        decided_by(&decision),
        (Class::CredentialInvalid, Some("demo.expired"))
    );

    let busy = case(r#"{"error":"expired","state":"busy"}"#);
    let decision = busy.decision(&rules);
    assert_eq!(
        decided_by(&decision),
        (Class::LostAccess, Some("demo.expired_even_when_busy"))
    );
    let explanation = rules.explain(&busy.exchange());
    assert_eq!(
        explanation.rule("demo.expired").unwrap().outcome,
        RuleOutcome::Vetoed("demo.busy".into())
    );
    assert!(
        explanation.to_string().contains("demo.busy: vetoes"),
        "{explanation}"
    );
}

#[test]
fn the_transient_guard_vetoes_every_rule_that_keeps_it() {
    let rules = rules();
    let body = r#"{"error":"expired","state":"busy"}"#;
    for transient in [
        case(body).status(429),
        case(body).status(408),
        case(body).status(425),
        case(body).status(500),
        case(body).status(529),
        case(body).header("retry-after", "30"),
        case(body).header("x-ratelimit-remaining", "0"),
    ] {
        let decision = transient.decision(&rules);
        assert_eq!(
            decided_by(&decision),
            (Class::Pass, None),
            "status {}",
            transient.status
        );
        let explanation = rules.explain(&transient.exchange());
        assert_eq!(
            explanation
                .rule("demo.expired_even_when_busy")
                .unwrap()
                .outcome,
            RuleOutcome::Vetoed("transient".into())
        );
    }
    let still_remaining = case(body).header("x-ratelimit-remaining", "10");
    assert_eq!(
        decided_by(&still_remaining.decision(&rules)),
        (Class::LostAccess, Some("demo.expired_even_when_busy"))
    );

    let retired = case(r#"{"error":"retired"}"#).status(529);
    assert_eq!(
        decided_by(&retired.decision(&rules)),
        (Class::LostAccess, Some("demo.overloaded_for_good")),
        "skip_guards = [\"transient\"] lets a 529 match"
    );
}

#[test]
fn disabled_rules_are_never_evaluated() {
    let rules = rules();
    let ok = case("{}");
    assert_eq!(decided_by(&ok.decision(&rules)), (Class::Pass, None));
    let explanation = rules.explain(&ok.exchange());
    assert_eq!(
        explanation.rule("demo.disabled").unwrap().outcome,
        RuleOutcome::Disabled
    );
}

#[test]
fn scope_comparisons_ask_for_the_scope_when_it_is_unknown() {
    let rules = rules();
    let missing = case(r#"{"error":"missing"}"#).request_body(r#"{"resource":"R1"}"#);

    assert_eq!(
        missing.clone().unknown_scope().verdict(&rules),
        Verdict::NeedsScope
    );
    let own = missing.clone().scope(json!({"demo_resource": "R1"}));
    assert_eq!(
        decided_by(&own.decision(&rules)),
        (Class::LostAccess, Some("demo.resource_missing"))
    );
    let other = missing.clone().scope(json!({"demo_resource": "R2"}));
    assert_eq!(decided_by(&other.decision(&rules)), (Class::Pass, None));
    let listed = missing
        .clone()
        .scope(json!({"demo_resource": ["R0", "R1"]}));
    assert_eq!(
        decided_by(&listed.decision(&rules)),
        (Class::LostAccess, Some("demo.resource_missing"))
    );
    let unscoped = missing.clone();
    assert_eq!(
        decided_by(&unscoped.decision(&rules)),
        (Class::LostAccess, Some("demo.unscoped_missing"))
    );
    let null_value = missing.clone().scope(json!({"demo_resource": null}));
    assert_eq!(
        decided_by(&null_value.decision(&rules)),
        (Class::LostAccess, Some("demo.unscoped_missing")),
        "a null scope value counts as absent"
    );

    // A response no scope rule can match is decided without loading the scope.
    let gone = case(r#"{"error":"gone"}"#).unknown_scope();
    assert_eq!(
        decided_by(&gone.decision(&rules)),
        (Class::LostAccess, Some("demo.gone_high"))
    );
    let explanation = rules.explain(&missing.clone().unknown_scope().exchange());
    assert_eq!(
        explanation.rule("demo.resource_missing").unwrap().outcome,
        RuleOutcome::NeedsScope
    );
}

#[test]
fn request_values_come_from_query_form_json_and_path() {
    let rules = rules();
    let scope = json!({"demo_resource": "R 1", "demo_repo": "acme/widgets"});
    let body = r#"{"error":"missing"}"#;
    let sources = [
        case(body).path("/api?resource=R+1"),
        case(body)
            .path("/api?resource=R%201")
            .request_body(r#"{"resource":"other"}"#),
        case(body).request_body("resource=R+1&x=2"),
        case(body)
            .request_header("content-type", "application/x-www-form-urlencoded")
            .request_body("resource=R%201"),
        case(body).request_body(r#"{"resource":"R 1"}"#),
    ];
    for source in sources {
        let decision = source.clone().scope(scope.clone()).decision(&rules);
        assert_eq!(
            decided_by(&decision),
            (Class::LostAccess, Some("demo.resource_missing")),
            "{} {:?}",
            source.path_and_query,
            String::from_utf8_lossy(&source.request_body)
        );
    }
    // `field` prefers the query: a matching body does not count when the query names another.
    let query_wins = case(body)
        .path("/api?resource=other")
        .request_body(r#"{"resource":"R 1"}"#)
        .scope(scope.clone());
    assert_eq!(
        decided_by(&query_wins.decision(&rules)),
        (Class::Pass, None)
    );

    let repo = case("{}").method(Method::GET).status(404);
    let own = repo
        .clone()
        .path("/repos/Acme/Widgets")
        .scope(scope.clone());
    assert_eq!(
        decided_by(&own.decision(&rules)),
        (Class::LostAccess, Some("demo.repo_missing"))
    );
    let other = repo
        .clone()
        .path("/repos/acme/gadgets")
        .scope(scope.clone());
    assert_eq!(decided_by(&other.decision(&rules)), (Class::Pass, None));
    let deeper = repo.path("/repos/acme/widgets/issues").scope(scope);
    assert_eq!(decided_by(&deeper.decision(&rules)), (Class::Pass, None));
}

#[test]
fn uninspected_bodies_only_match_head_rules() {
    let rules = rules();
    let gone = case(r#"{"error":"gone"}"#).body(Body::Uninspected);
    let decision = gone.decision(&rules);
    assert_eq!(decided_by(&decision), (Class::Pass, None));
    assert!(!decision.body_inspected);

    // A head-only rule decides without the body, unless an exception of it reads the body:
    // `demo.unauthorized` is under the `demo.busy` guard (a JSON check), which cannot be
    // answered for a body nobody read, so the rule decides nothing.
    let challenge = case("")
        .method(Method::GET)
        .status(401)
        .header("www-authenticate", "Bearer realm=\"demo\"");
    assert_eq!(
        decided_by(&challenge.clone().decision(&rules)),
        (Class::CredentialInvalid, Some("demo.unauthorized"))
    );
    let unread = challenge.body(Body::Uninspected).decision(&rules);
    assert_eq!(decided_by(&unread), (Class::Pass, None));
    assert!(!unread.body_inspected);
}

#[test]
fn head_only_rules_without_body_exceptions_still_decide_unread_bodies() {
    let rules = RuleSet::from_sources(vec![RuleSource {
        display_path: "plain.toml".into(),
        provider: "plain".into(),
        text: r#"schema = 2
[[rule]]
id = "plain.unauthorized"
class = "credential_invalid"
description = "401 with a Bearer challenge."
[rule.when]
all = [{ source = "status", equals = 401 }, { source = "header", name = "www-authenticate", prefix = "Bearer " }]
[[rule.unless]]
all = [{ source = "request_header", name = "x-dry-run", exists = true }]
"#
        .into(),
    }])
    .unwrap_or_else(|errors| panic!("{errors}"));
    let challenge = case("")
        .provider("plain")
        .method(Method::GET)
        .status(401)
        .header("www-authenticate", "Bearer realm=\"plain\"")
        .body(Body::Uninspected);
    let decision = challenge.decision(&rules);
    assert_eq!(
        decided_by(&decision),
        (Class::CredentialInvalid, Some("plain.unauthorized"))
    );
    assert!(!decision.body_inspected);
}

#[test]
fn body_regex_reads_the_raw_body() {
    let rules = rules();
    let blocked = case("Resource access blocked by policy")
        .path("/v1/things/7")
        .status(403);
    assert_eq!(
        decided_by(&blocked.decision(&rules)),
        (Class::LostAccess, Some("demo.blocked"))
    );
    let other_branch = case("Resource disabled").path("/v1/x").status(410);
    assert_eq!(
        decided_by(&other_branch.decision(&rules)),
        (Class::LostAccess, Some("demo.blocked"))
    );
    let wrong_path = case("Resource access blocked")
        .path("/v2/things")
        .status(403);
    assert_eq!(
        decided_by(&wrong_path.decision(&rules)),
        (Class::Pass, None)
    );
}

#[test]
fn escaped_json_still_matches() {
    let rules = rules();
    // `\u0065` is `e` and `\u006f` is `o`: the literal prefilter can see neither the key
    // nor the value, so it must step aside.
    let escaped = case(r#"{"\u0065rror":"g\u006fne"}"#);
    assert_eq!(
        decided_by(&escaped.decision(&rules)),
        (Class::LostAccess, Some("demo.gone_high"))
    );
    let spaced = case("{ \"error\" :\n \"gone\" }");
    assert_eq!(
        decided_by(&spaced.decision(&rules)),
        (Class::LostAccess, Some("demo.gone_high"))
    );
}

#[test]
fn stream_json_matchers_must_hold_within_one_event() {
    let rules = rules();
    let stream = |body: &str| {
        let mut c = case(body);
        c.response_headers.insert(
            "content-type",
            HeaderValue::from_static("text/event-stream; charset=utf-8"),
        );
        c
    };
    let split = stream(concat!(
        "event: error\n",
        "data: {\"type\":\"error\",\"error\":{\"kind\":\"other\"}}\n\n",
        "data: {\"type\":\"message\",\"error\":{\"kind\":\"session_gone\"}}\n\n",
        "data: [DONE]\n\n",
    ));
    assert_eq!(decided_by(&split.decision(&rules)), (Class::Pass, None));

    let together = stream(concat!(
        ": keep-alive\r\n\r\n",
        "data: {\"type\":\"message\"}\r\n\r\n",
        "data: {\"type\":\"error\",\r\n",
        "data:  \"error\":{\"kind\":\"session_gone\"}}\r\n\r\n",
    ));
    assert_eq!(
        decided_by(&together.decision(&rules)),
        (Class::StaleSession, Some("demo.stream_session_gone"))
    );

    let one_event = case("").body(Body::Event(
        br#"{"type":"error","error":{"kind":"session_gone"}}"#.to_vec(),
    ));
    assert_eq!(
        decided_by(&one_event.decision(&rules)),
        (Class::StaleSession, Some("demo.stream_session_gone"))
    );
}

#[test]
fn unknown_providers_pass() {
    let rules = rules();
    let other = case(r#"{"error":"gone"}"#).provider("nobody");
    assert_eq!(decided_by(&other.decision(&rules)), (Class::Pass, None));
    assert!(!rules.needs_body(&other.head()));
    assert!(!rules.explain(&other.exchange()).provider_known);
}

#[test]
fn needs_body_is_false_only_when_no_rule_head_can_hold() {
    let rules = rules();
    let headed = |status: u16, path: &str| case("{}").provider("headed").status(status).path(path);
    let needs = |c: Case| rules.needs_body(&c.head());
    assert!(
        !needs(headed(200, "/repos/a/b")),
        "the only 200 rule is disabled"
    );
    assert!(needs(headed(401, "/anything")));
    assert!(needs(headed(404, "/repos/a/b")));
    assert!(!needs(headed(404, "/orgs/a")));
    assert!(
        !needs(headed(429, "/x")),
        "the 429 rule keeps the transient guard"
    );
    assert!(
        needs(headed(503, "/x")),
        "the 503 rule skips the transient guard"
    );
    assert!(!needs(headed(401, "/x").header("retry-after", "5")));
    // When needs_body is false, classify agrees whatever the body.
    for body in [r#"{"error":"banned"}"#, r#"{"message":"Not Found"}"#] {
        for c in [headed(429, "/x"), headed(404, "/orgs/a"), headed(200, "/")] {
            let c = c.body(Body::Complete(body.as_bytes().to_vec()));
            assert_eq!(decided_by(&c.decision(&rules)), (Class::Pass, None));
        }
    }
    assert!(needs(case("{}")), "demo has rules with no head matchers");
}

#[test]
fn rule_listing_and_counts() {
    let rules = rules();
    assert_eq!(
        rules.providers().collect::<Vec<_>>(),
        vec!["demo", "headed"]
    );
    assert_eq!(rules.rule_count(), 18);
    let demo: Vec<&str> = rules
        .rules()
        .filter(|r| r.provider == "demo")
        .map(|r| r.id)
        .collect();
    assert_eq!(
        &demo[..6],
        &[
            "demo.disabled",
            "demo.gone_shadow",
            "demo.gone_high",
            "demo.expired",
            "demo.resource_missing",
            "demo.gone_low"
        ],
        "priority descending, then file order"
    );
}

#[test]
fn a_rule_set_can_be_shared_across_threads() {
    fn shareable<T: Send + Sync + 'static>() {}
    shareable::<RuleSet>();
    let rules = std::sync::Arc::new(rules());
    let handles: Vec<_> = (0..2)
        .map(|_| {
            let rules = rules.clone();
            std::thread::spawn(move || case(r#"{"error":"gone"}"#).decision(&rules).rule)
        })
        .collect();
    for handle in handles {
        assert_eq!(handle.join().unwrap().as_deref(), Some("demo.gone_high"));
    }
}
