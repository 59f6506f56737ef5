//! The common path (a response no rule can match) allocates nothing: the prefilter rules the
//! rules out before any JSON is parsed. Counted with a global allocator, so this file holds a
//! single test.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::{HeaderMap, Method, StatusCode};
use serde_json::json;

use haltgate::rules::{Exchange, ExchangeHead, ResponseBody, RuleSet, Scope, Verdict};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn classifying_a_non_matching_response_does_not_allocate() {
    let rules = RuleSet::load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("rules"))
        .unwrap_or_else(|errors| panic!("{errors}"));
    let messages: Vec<_> = (0..30)
        .map(|i| json!({"type": "message", "ts": format!("1700000000.{i:06}"), "text": format!("update {i} is ok")}))
        .collect();
    let body = serde_json::to_vec(&json!({"ok": true, "messages": messages})).unwrap();
    let mut response_headers = HeaderMap::new();
    response_headers.insert("content-type", "application/json".parse().unwrap());
    let request_headers = HeaderMap::new();
    let method = Method::GET;
    let exchange = Exchange {
        head: ExchangeHead {
            provider: "slack",
            method: &method,
            path_and_query: "/api/conversations.history?channel=C0123ABCD",
            request_headers: &request_headers,
            status: StatusCode::OK,
            response_headers: &response_headers,
        },
        request_body: b"",
        response_body: ResponseBody::Complete(&body),
        scope: Scope::Unknown,
    };
    // Warm up anything lazily initialised.
    let first = rules.classify(&exchange);
    assert!(matches!(first, Verdict::Decided(ref decision) if decision.rule.is_none()));

    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for _ in 0..100 {
        std::hint::black_box(rules.classify(std::hint::black_box(&exchange)));
        std::hint::black_box(rules.needs_body(&exchange.head));
    }
    let allocated = ALLOCATIONS.load(Ordering::Relaxed) - before;
    assert_eq!(
        allocated, 0,
        "classify allocated {allocated} times over 100 calls"
    );

    // The counter does see allocations: a matching response parses JSON.
    let kicked = br#"{"ok":false,"error":"not_in_channel"}"#;
    let matching = Exchange {
        response_body: ResponseBody::Complete(kicked),
        ..exchange
    };
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    std::hint::black_box(rules.classify(&matching));
    assert!(ALLOCATIONS.load(Ordering::Relaxed) > before);
}
