//! Who a certificate names, written in its subject common name.
//!
//! | identity | common name |
//! |---|---|
//! | root CA | `plab-root:<name>` |
//! | slice or management authority | `authority:sa:<name>` / `authority:ma:<name>` |
//! | principal (user, admin, tech) | `principal:<name>` |
//! | node | `node:<node_id>` |
//! | service (a slice on a node, certified by that node's NM) | `service:<slice>@<node_id>` |

use crate::CredentialError;
use std::fmt;
use vm_types::SliceName;

/// Which authority.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthorityKind {
    /// Slice authority.
    Sa,
    /// Management authority.
    Ma,
}

/// What a certificate identifies.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Identity {
    /// A root CA.
    Root(String),
    /// An authority.
    Authority(AuthorityKind, String),
    /// A principal (a person), by login name.
    Principal(String),
    /// A node, by node id.
    Node(i64),
    /// A service: a slice running on a node.
    Service {
        /// The service's slice.
        slice: SliceName,
        /// The node it runs on.
        node: i64,
    },
}

fn simple_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

impl Identity {
    /// Parses a common name.
    pub fn parse(cn: &str) -> Result<Identity, CredentialError> {
        let bad = || CredentialError::Malformed(format!("certificate subject {cn:?} names no plab identity"));
        let (kind, rest) = cn.split_once(':').ok_or_else(bad)?;
        let id = match kind {
            "plab-root" if simple_name(rest) => Identity::Root(rest.into()),
            "authority" => {
                let (k, name) = rest.split_once(':').ok_or_else(bad)?;
                let k = match k {
                    "sa" => AuthorityKind::Sa,
                    "ma" => AuthorityKind::Ma,
                    _ => return Err(bad()),
                };
                if !simple_name(name) {
                    return Err(bad());
                }
                Identity::Authority(k, name.into())
            }
            "principal" if simple_name(rest) => Identity::Principal(rest.into()),
            "node" => Identity::Node(rest.parse().map_err(|_| bad())?),
            "service" => {
                let (slice, node) = rest.split_once('@').ok_or_else(bad)?;
                Identity::Service {
                    slice: SliceName::parse(slice).map_err(|e| CredentialError::Malformed(e.to_string()))?,
                    node: node.parse().map_err(|_| bad())?,
                }
            }
            _ => return Err(bad()),
        };
        Ok(id)
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Root(n) => write!(f, "plab-root:{n}"),
            Identity::Authority(AuthorityKind::Sa, n) => write!(f, "authority:sa:{n}"),
            Identity::Authority(AuthorityKind::Ma, n) => write!(f, "authority:ma:{n}"),
            Identity::Principal(n) => write!(f, "principal:{n}"),
            Identity::Node(id) => write!(f, "node:{id}"),
            Identity::Service { slice, node } => write!(f, "service:{slice}@{node}"),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects() {
        for cn in [
            "plab-root:plc",
            "authority:sa:plc",
            "authority:ma:plc",
            "principal:alice",
            "node:12",
            "service:plc.scs@12",
        ] {
            assert_eq!(Identity::parse(cn).unwrap().to_string(), cn);
        }
        for bad in [
            "",
            "root",
            "principal:",
            "principal:a b",
            "node:x",
            "service:plc.scs",
            "authority:xx:plc",
            "principal:a;rm",
        ] {
            assert!(Identity::parse(bad).is_err(), "{bad}");
        }
    }
}
