//! Fuzzing the authority's request handling with arbitrary input, built so that it gets
//! past each layer: bytes and arbitrary JSON at the envelope; valid envelopes with
//! arbitrary method, id and params at the decoder; and every method with arbitrary params
//! from callers holding valid sessions (operator, member), anonymous callers, and random
//! `auth`, so that the params reach the handlers. Nothing panics, every answer is a
//! JSON-RPC reply for the request's id, and bad params never give Internal.
#![allow(clippy::unwrap_used)] // Test and benchmark code: a failed unwrap is a failed test.

mod common;
use common::{Backend, Harness};
use proptest::prelude::*;
use serde_json::{json, Value};

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        (0i64..20).prop_map(|n| json!(n)),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| json!(f)),
        ".{0,40}".prop_map(Value::String),
        prop_oneof![
            Just("plc.princeton.a"),
            Just("alice"),
            Just("princeton"),
            Just("mem_limit"),
            Just("bootscript"),
            Just("debug")
        ]
        .prop_map(|s| json!(s)),
    ];
    leaf.prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            proptest::collection::btree_map(
                prop_oneof![".{0,12}", Just("name".to_string()), Just("org".to_string()), Just("state".to_string())],
                inner,
                0..5
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn ask(h: &Harness, body: &[u8]) -> Value {
    h.rt.block_on(h.authority.handle(body, "127.0.0.1".parse().unwrap(), None))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, .. ProptestConfig::default() })]
    #[test]
    fn the_envelope_never_panics_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let _ = jsonrpc::server::decode_request(v);
    }

    #[test]
    fn valid_envelopes_with_arbitrary_fields_are_decoded_or_refused(method in ".{0,70}", id in arb_json(), params in arb_json()) {
        let v = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        match jsonrpc::server::decode_request(v) {
            Ok(r) => {
                prop_assert_eq!(r.method, method);
                prop_assert!(matches!(r.params, Value::Null | Value::Array(_) | Value::Object(_)));
            }
            Err((_, e)) => prop_assert_eq!(e.code, jsonrpc::ErrorCode::INVALID_REQUEST),
        }
    }
}

#[test]
fn every_method_with_arbitrary_params_from_every_kind_of_caller() {
    let h = Harness::start(Backend::Sqlite);
    let mut op = h.operator();
    op.call("AddOrg", vec![json!({"name": "princeton", "authority": "plc.princeton"})]).unwrap();
    let member = h.principal(&mut op, "alice", "princeton", "user");
    op.call("CreateSlice", vec![json!("plc.princeton.a")]).unwrap();
    op.call("AddSlicePrincipal", vec![json!("plc.princeton.a"), json!(["alice"])]).unwrap();
    let session = |chain: &str, key: &str| {
        let mut c = h.client(None);
        c.start_session(chain, key).unwrap();
        c.auth.clone()
    };
    let auths = [session(&h.op.0, &h.op.1), session(&member.0, &member.1), Value::Null];

    let mut runner =
        proptest::test_runner::TestRunner::new(ProptestConfig { cases: 1500, ..ProptestConfig::default() });
    let methods: Vec<&str> = plab_authority::Method::ALL.iter().map(|m| m.name()).collect();
    let strategy = (
        proptest::sample::select(methods),
        proptest::collection::vec(arb_json(), 0..5),
        // Mostly a valid session or anonymous, so the params reach the handlers.
        prop_oneof![8 => (0usize..3).prop_map(Some), 1 => Just(None)],
        arb_json(),
        any::<bool>(),
    );
    let reached = std::cell::Cell::new(0u32);
    runner
        .run(&strategy, |(method, params, which, random_auth, by_name)| {
            let auth = which.map(|i| auths[i].clone()).unwrap_or(random_auth);
            let p = if by_name {
                let names = plab_authority::Method::parse(method).unwrap().params();
                let mut o = serde_json::Map::new();
                o.insert("auth".into(), auth);
                for (n, v) in names.iter().zip(params) {
                    o.insert(n.to_string(), v);
                }
                Value::Object(o)
            } else {
                let mut a = vec![auth];
                a.extend(params);
                Value::Array(a)
            };
            let body = json!({"jsonrpc": "2.0", "id": 7, "method": method, "params": p}).to_string();
            let answer = ask(&h, body.as_bytes());
            prop_assert_eq!(&answer["jsonrpc"], "2.0");
            prop_assert_eq!(&answer["id"], 7);
            if let Some(e) = answer.get("error") {
                prop_assert!(e["message"].is_string());
                let code = e["code"].as_i64().unwrap();
                prop_assert_ne!(code, 5, "{} gave Internal for params {}: {}", method, p_show(&body), e);
                if ![1, 2, -32601].contains(&code) {
                    reached.set(reached.get() + 1);
                }
            } else {
                reached.set(reached.get() + 1);
            }
            Ok(())
        })
        .unwrap();
    // Most cases got past authentication and permission to the params' own checks.
    assert!(reached.get() > 500, "only {} of 1500 cases reached a handler", reached.get());
}

fn p_show(body: &str) -> String {
    body.chars().take(300).collect()
}
