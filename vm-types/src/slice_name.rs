//! Hierarchical slice names (section 4.4) and the Unix logins derived from them.
//!
//! A slice name is a dot-separated path of authorities ending in the slice:
//! `plc.princeton.codeen`. Each label is 1 to 30 characters of `a-z`, `0-9` and `-`,
//! starting with a letter. Because labels never contain `_`, the Unix login
//! (`plc_princeton_codeen`: dots become underscores) is unique for every slice name, and a
//! name whose login would exceed 32 characters (the Unix limit the specification's
//! implementation note mentions) is rejected instead of truncated, so two slices can never
//! share a login.

use std::fmt;

/// Longest Unix login a slice name may derive.
pub const MAX_LOGIN_LEN: usize = 32;

/// Why a string is not a valid slice name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SliceNameError {
    /// slice name is empty
    #[error("slice name is empty")]
    Empty,
    /// a label between dots is empty
    #[error("slice name {0:?}: empty label (two dots in a row, or a leading or trailing dot)")]
    EmptyLabel(String),
    /// a label has a character outside a-z, 0-9 and '-'
    #[error("slice name {name:?}: label {label:?} may only hold a-z, 0-9 and '-', and must start with a letter")]
    BadLabel {
        /// The whole name.
        name: String,
        /// The offending label.
        label: String,
    },
    /// the derived login is too long
    #[error("slice name {0:?}: its Unix login would be {1} characters, more than 32")]
    TooLong(String, usize),
}

/// A validated hierarchical slice name such as `plc.princeton.codeen`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SliceName(String);

impl SliceName {
    /// Parses and validates a slice name.
    pub fn parse(s: &str) -> Result<Self, SliceNameError> {
        if s.is_empty() {
            return Err(SliceNameError::Empty);
        }
        for label in s.split('.') {
            if label.is_empty() {
                return Err(SliceNameError::EmptyLabel(s.to_owned()));
            }
            let ok_first = label.as_bytes()[0].is_ascii_lowercase();
            let ok_rest = label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !ok_first || !ok_rest || label.len() > 30 {
                return Err(SliceNameError::BadLabel { name: s.to_owned(), label: label.to_owned() });
            }
        }
        if s.len() > MAX_LOGIN_LEN {
            return Err(SliceNameError::TooLong(s.to_owned(), s.len()));
        }
        Ok(SliceName(s.to_owned()))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The Unix login for this slice's VMs: dots become underscores.
    pub fn login(&self) -> String {
        self.0.replace('.', "_")
    }

    /// True when `self` is `other` or lies below it (`plc.princeton` covers
    /// `plc.princeton.codeen`, but not `plc.princetonx`).
    pub fn covers(&self, other: &SliceName) -> bool {
        other.0 == self.0
            || (other.0.len() > self.0.len()
                && other.0.starts_with(&self.0)
                && other.0.as_bytes()[self.0.len()] == b'.')
    }

    /// True when `other` lies strictly below `self`: what an authority named `self` may
    /// approve (`plc` is above `plc.princeton.codeen`, not above `plc` itself).
    pub fn is_above(&self, other: &SliceName) -> bool {
        self != other && self.covers(other)
    }
}

impl fmt::Display for SliceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for SliceName {
    type Err = SliceNameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SliceName::parse(s)
    }
}

impl serde::Serialize for SliceName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// A slice name on the wire is validated as it is read, so a bad one is refused at the
/// edge with the reason.
impl<'de> serde::Deserialize<'de> for SliceName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        SliceName::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn accepts_hierarchical_names() {
        for ok in ["plc", "plc.princeton.codeen", "plc.japan.utokyo.ubiq", "epfl.chawla", "com.start-up.voip2"] {
            let n = SliceName::parse(ok).unwrap();
            assert_eq!(n.as_str(), ok);
        }
        assert_eq!(SliceName::parse("plc.princeton.codeen").unwrap().login(), "plc_princeton_codeen");
    }

    #[test]
    fn rejects_bad_names_with_reason() {
        assert_eq!(SliceName::parse(""), Err(SliceNameError::Empty));
        assert!(matches!(SliceName::parse("plc..x"), Err(SliceNameError::EmptyLabel(_))));
        assert!(matches!(SliceName::parse("plc."), Err(SliceNameError::EmptyLabel(_))));
        for bad in ["Plc", "plc.prince_ton", "plc.1abc", "plc;rm -rf", "plc.a b", "plc.'x'", "ünï"] {
            assert!(matches!(SliceName::parse(bad), Err(SliceNameError::BadLabel { .. })), "{bad}");
        }
        let long = "plc.princeton.averyveryverylongslice";
        assert!(matches!(SliceName::parse(long), Err(SliceNameError::TooLong(_, 36))));
    }

    #[test]
    fn covers_is_hierarchical() {
        let p = SliceName::parse("plc.princeton").unwrap();
        assert!(p.covers(&SliceName::parse("plc.princeton.codeen").unwrap()));
        assert!(p.covers(&p));
        assert!(!p.covers(&SliceName::parse("plc.princetonx").unwrap()));
        assert!(!p.covers(&SliceName::parse("plc").unwrap()));
        assert!(p.is_above(&SliceName::parse("plc.princeton.codeen").unwrap()) && !p.is_above(&p));
    }

    #[test]
    fn logins_are_distinct_for_distinct_names() {
        // '_' is not allowed in labels, so the dot-to-underscore map is injective.
        let a = SliceName::parse("plc.a-b").unwrap();
        let b = SliceName::parse("plc.a.b").unwrap();
        assert_ne!(a.login(), b.login());
    }
}
