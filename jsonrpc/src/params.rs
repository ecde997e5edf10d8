//! Typed params, given by name (an object) or by position (an array, in the order the
//! specification writes the call's arguments).
//!
//! A params struct derives `Serialize` and `Deserialize` and says its fields' positional
//! order in [`Params::NAMES`]. [`decode`] turns either wire form into the struct, with
//! errors that name the parameter (`rcap: invalid type: integer 5, expected a string`).

use crate::error::{ErrorCode, RpcError};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The params of one method.
pub trait Params: Serialize + DeserializeOwned {
    /// The parameter names, in positional order.
    const NAMES: &'static [&'static str];
}

/// The params of a method that takes none.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoParams {}

impl Params for NoParams {
    const NAMES: &'static [&'static str] = &[];
}

/// An empty result object (`{}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

/// Turns params given by position into the same params by name. Nulls are left out, so
/// that a required parameter given as `null` is reported as missing.
pub fn by_name(method: &str, names: &[&str], params: Value) -> Result<Map<String, Value>, RpcError> {
    let takes =
        || if names.is_empty() { "takes no parameters".to_string() } else { format!("takes {}", names.join(", ")) };
    match params {
        Value::Null => Ok(Map::new()),
        Value::Array(a) => {
            if a.len() > names.len() {
                return Err(RpcError::new(
                    ErrorCode::INVALID_PARAMS,
                    format!("{method}: takes at most {} parameters ({})", names.len(), takes()),
                ));
            }
            Ok(names.iter().zip(a).filter(|(_, v)| !v.is_null()).map(|(n, v)| (n.to_string(), v)).collect())
        }
        Value::Object(mut o) => {
            if let Some(k) = o.keys().find(|k| !names.contains(&k.as_str())) {
                return Err(RpcError::new(
                    ErrorCode::INVALID_PARAMS,
                    format!("{method}: unknown parameter {k:?} ({})", takes()),
                ));
            }
            o.retain(|_, v| !v.is_null());
            Ok(o)
        }
        _ => Err(RpcError::new(ErrorCode::INVALID_PARAMS, format!("{method}: params must be an object or an array"))),
    }
}

/// Decodes `params` (object, array or absent) for `method` into `P`.
pub fn decode<P: Params>(method: &str, params: Value) -> Result<P, RpcError> {
    decode_named(method, P::NAMES, by_name(method, P::NAMES, params)?)
}

/// Decodes params already given by name.
pub fn decode_named<P: DeserializeOwned>(method: &str, names: &[&str], o: Map<String, Value>) -> Result<P, RpcError> {
    serde_path_to_error::deserialize(Value::Object(o)).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        // serde's own wording for a missing field is "missing field `x`".
        if let Some(field) = inner.strip_prefix("missing field `").and_then(|r| r.split('`').next()) {
            let at = if path == "." { field.to_string() } else { format!("{path}.{field}") };
            return RpcError::new(
                ErrorCode::INVALID_PARAMS,
                format!("{at}: missing parameter ({method} takes {})", names.join(", ")),
            );
        }
        if path == "." {
            RpcError::new(ErrorCode::INVALID_PARAMS, format!("{method}: {inner}"))
        } else {
            RpcError::new(ErrorCode::INVALID_PARAMS, format!("{path}: {inner}"))
        }
    })
}

/// Encodes params by name (the form clients send).
pub fn encode<P: Params>(p: &P) -> Result<Value, serde_json::Error> {
    serde_json::to_value(p)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Split {
        rcap: String,
        rspec: String,
        #[serde(default)]
        bytes: Option<u64>,
    }
    impl Params for Split {
        const NAMES: &'static [&'static str] = &["rcap", "rspec", "bytes"];
    }

    #[test]
    fn by_name_or_position() {
        let want = Split { rcap: "ab".into(), rspec: "<x/>".into(), bytes: None };
        assert_eq!(decode::<Split>("SplitPool", serde_json::json!({"rcap": "ab", "rspec": "<x/>"})).unwrap(), want);
        assert_eq!(decode::<Split>("SplitPool", serde_json::json!(["ab", "<x/>"])).unwrap(), want);
        assert_eq!(decode::<Split>("SplitPool", serde_json::json!(["ab", "<x/>", null])).unwrap(), want);
    }

    #[test]
    fn errors_name_the_parameter() {
        let e = decode::<Split>("SplitPool", serde_json::json!({"rcap": "a", "slice": 1})).unwrap_err();
        assert_eq!(e.code, ErrorCode::INVALID_PARAMS);
        assert!(e.message.contains("unknown parameter \"slice\""), "{e}");
        let e = decode::<Split>("SplitPool", Value::Null).unwrap_err();
        assert!(e.message.starts_with("rcap: missing parameter"), "{e}");
        let e = decode::<Split>("SplitPool", serde_json::json!({"rcap": 5, "rspec": ""})).unwrap_err();
        assert!(e.message.starts_with("rcap: invalid type"), "{e}");
        let e = decode::<Split>("SplitPool", serde_json::json!(["a", "b", 1, 2])).unwrap_err();
        assert!(e.message.contains("at most 3"), "{e}");
        let e = decode::<Split>("SplitPool", serde_json::json!({"rcap": "a", "rspec": null})).unwrap_err();
        assert!(e.message.starts_with("rspec: missing"), "{e}");
        let e = decode::<NoParams>("NodeInfo", serde_json::json!(7)).unwrap_err();
        assert!(e.message.contains("object or an array"), "{e}");
    }
}
