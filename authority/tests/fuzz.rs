//! Fuzzing the JSON-RPC decoder and the dispatcher with arbitrary input: nothing panics,
//! and every answer is a JSON-RPC reply.

mod common;
use common::{Backend, Harness};
use proptest::prelude::*;
use serde_json::{json, Value};

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| json!(f)),
        ".{0,40}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map(".{0,12}", inner, 0..6).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, .. ProptestConfig::default() })]
    #[test]
    fn decoder_never_panics_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = plab_authority::rpc::decode(&bytes);
    }

    #[test]
    fn decoder_never_panics_on_json(v in arb_json()) {
        let _ = plab_authority::rpc::decode(v.to_string().as_bytes());
    }
}

#[test]
fn dispatcher_answers_every_method_with_arbitrary_params() {
    let h = Harness::start(Backend::Sqlite);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig { cases: 400, ..ProptestConfig::default() });
    let methods: Vec<&str> = plab_authority::Method::ALL.iter().map(|m| m.name()).collect();
    let strategy = (proptest::sample::select(methods), proptest::collection::vec(arb_json(), 0..5), arb_json());
    runner
        .run(&strategy, |(method, mut params, auth)| {
            params.insert(0, auth);
            let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).to_string();
            let answer = h.rt.block_on(h.authority.handle(body.as_bytes(), "127.0.0.1".parse().unwrap(), None));
            prop_assert_eq!(&answer["jsonrpc"], "2.0");
            prop_assert!(answer.get("result").is_some() || answer["error"]["message"].is_string());
            Ok(())
        })
        .unwrap();
}
