//! RSpec resource attributes with their units (section 4.10) and pool arithmetic.
//!
//! | attribute        | unit   |
//! |------------------|--------|
//! | `cpu_share`      | shares |
//! | `disk_quota`     | GB (2^30 bytes) |
//! | `mem_limit`      | MB (2^20 bytes) |
//! | `base_rate`      | Kbps   |
//! | `burst_rate`     | Mbps   |
//! | `sustained_rate` | Mbps   |
//!
//! Values are decimals with at most three fractional digits (`1.5`, `0.25`), held exactly
//! as thousandths in a [`Quantity`], so splitting and merging pools never loses or invents
//! resources. A missing attribute means zero.

use std::fmt;

/// A non-negative decimal with three fractional digits, stored exactly in thousandths.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Quantity(u64);

/// Why resource attributes are not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResourceError {
    /// the text is not a decimal number
    #[error("{attr}: {value:?} is not a non-negative decimal with at most 3 fractional digits")]
    Malformed {
        /// Attribute name.
        attr: &'static str,
        /// The text given.
        value: String,
    },
    /// a split asks for more than the pool holds
    #[error("{attr}: asks for {wanted} {unit} but the pool holds only {held} {unit}")]
    Insufficient {
        /// Attribute name.
        attr: &'static str,
        /// Unit of the attribute.
        unit: &'static str,
        /// What was asked for.
        wanted: Quantity,
        /// What the pool holds.
        held: Quantity,
    },
    /// adding would overflow
    #[error("{0}: the sum is too large")]
    Overflow(&'static str),
}

impl Quantity {
    /// Zero.
    pub const ZERO: Quantity = Quantity(0);

    /// A whole number of units.
    pub const fn whole(n: u64) -> Quantity {
        Quantity(n * 1000)
    }

    /// From thousandths of a unit.
    pub const fn from_milli(m: u64) -> Quantity {
        Quantity(m)
    }

    /// Thousandths of a unit.
    pub const fn milli(self) -> u64 {
        self.0
    }

    /// Parses `12`, `1.5` or `0.125` for attribute `attr` (named in the error).
    pub fn parse(attr: &'static str, s: &str) -> Result<Quantity, ResourceError> {
        let bad = || ResourceError::Malformed { attr, value: s.to_owned() };
        let t = s.trim();
        let (int, frac) = t.split_once('.').unwrap_or((t, ""));
        if int.is_empty() || int.len() > 15 || frac.len() > 3 || (t.contains('.') && frac.is_empty()) {
            return Err(bad());
        }
        if !int.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let int: u64 = int.parse().map_err(|_| bad())?;
        let mut frac_m: u64 = if frac.is_empty() { 0 } else { frac.parse().map_err(|_| bad())? };
        for _ in frac.len()..3 {
            frac_m *= 10;
        }
        Ok(Quantity(int * 1000 + frac_m))
    }

    /// `self` scaled to an integer of smaller units: `q.scaled(1024)` turns GB into MB,
    /// rounding down.
    pub fn scaled(self, factor: u64) -> u64 {
        ((self.0 as u128 * factor as u128) / 1000) as u64
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (int, frac) = (self.0 / 1000, self.0 % 1000);
        if frac == 0 {
            write!(f, "{int}")
        } else {
            let s = format!("{frac:03}");
            write!(f, "{int}.{}", s.trim_end_matches('0'))
        }
    }
}

macro_rules! resources {
    ($( $(#[$doc:meta])* $field:ident : $unit:literal ),* $(,)?) => {
        /// The resource attributes of an RSpec (section 4.10).
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
        pub struct Resources {
            $( $(#[$doc])* pub $field: Quantity, )*
        }

        impl Resources {
            /// Attribute names, units and accessors, in document order.
            pub const ATTRIBUTES: &'static [(&'static str, &'static str)] = &[$( (stringify!($field), $unit), )*];

            /// The attribute's value by name.
            pub fn get(&self, attr: &str) -> Option<Quantity> {
                match attr { $( stringify!($field) => Some(self.$field), )* _ => None }
            }

            /// Sets the attribute by name; false when no such attribute exists.
            pub fn set(&mut self, attr: &str, q: Quantity) -> bool {
                match attr { $( stringify!($field) => { self.$field = q; true } )* _ => false }
            }

            /// `self - part`, attribute by attribute; fails naming the first attribute
            /// where `part` asks for more than `self` holds.
            pub fn checked_sub(&self, part: &Resources) -> Result<Resources, ResourceError> {
                Ok(Resources { $(
                    $field: Quantity(self.$field.0.checked_sub(part.$field.0).ok_or(
                        ResourceError::Insufficient {
                            attr: stringify!($field), unit: $unit,
                            wanted: part.$field, held: self.$field,
                        })?),
                )* })
            }

            /// `self + other`, attribute by attribute.
            pub fn checked_add(&self, other: &Resources) -> Result<Resources, ResourceError> {
                Ok(Resources { $(
                    $field: Quantity(self.$field.0.checked_add(other.$field.0)
                        .ok_or(ResourceError::Overflow(stringify!($field)))?),
                )* })
            }
        }
    };
}

resources! {
    /// Share of the CPU relative to other VMs (1 = one share; the cgroup weight is 1024 per share).
    cpu_share: "shares",
    /// Disk space, in GB.
    disk_quota: "GB",
    /// Memory limit, in MB.
    mem_limit: "MB",
    /// Guaranteed outgoing bandwidth, in Kbps.
    base_rate: "Kbps",
    /// Peak outgoing bandwidth, in Mbps.
    burst_rate: "Mbps",
    /// Long-term average outgoing bandwidth, in Mbps.
    sustained_rate: "Mbps",
}

impl Resources {
    /// The specification's default VM allocation (section 4.10).
    pub fn spec_default() -> Resources {
        Resources {
            cpu_share: Quantity::whole(1),
            disk_quota: Quantity::whole(5),
            mem_limit: Quantity::whole(256),
            base_rate: Quantity::whole(1),
            burst_rate: Quantity::whole(100),
            sustained_rate: Quantity::from_milli(1500),
        }
    }

    /// Memory limit in bytes.
    pub fn mem_limit_bytes(&self) -> u64 {
        self.mem_limit.scaled(1 << 20)
    }

    /// Disk quota in bytes.
    pub fn disk_quota_bytes(&self) -> u64 {
        self.disk_quota.scaled(1 << 30)
    }

    /// The cgroup v1 `cpu.shares` value (1024 per share, at least 2).
    pub fn cpu_shares(&self) -> u64 {
        self.cpu_share.scaled(1024).max(2)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_and_prints_decimals() {
        for (s, m) in [("1", 1000), ("1.5", 1500), ("0.125", 125), ("256", 256_000), ("0.05", 50)] {
            let q = Quantity::parse("mem_limit", s).unwrap();
            assert_eq!(q.milli(), m);
            assert_eq!(q.to_string(), s);
        }
        for bad in ["", "-1", "1.", ".5", "1.2345", "1e3", "abc", "1,5", "99999999999999999"] {
            let e = Quantity::parse("mem_limit", bad).unwrap_err();
            assert!(e.to_string().starts_with("mem_limit:"), "{e}");
        }
    }

    #[test]
    fn sub_names_the_short_attribute() {
        let pool = Resources::spec_default();
        let want = Resources { mem_limit: Quantity::whole(512), ..Default::default() };
        let e = pool.checked_sub(&want).unwrap_err();
        assert_eq!(e.to_string(), "mem_limit: asks for 512 MB but the pool holds only 256 MB");
    }

    fn arb_resources() -> impl Strategy<Value = Resources> {
        proptest::collection::vec(0u64..10_000_000, 6).prop_map(|v| Resources {
            cpu_share: Quantity(v[0]),
            disk_quota: Quantity(v[1]),
            mem_limit: Quantity(v[2]),
            base_rate: Quantity(v[3]),
            burst_rate: Quantity(v[4]),
            sustained_rate: Quantity(v[5]),
        })
    }

    proptest! {
        #[test]
        fn split_then_merge_conserves(pool in arb_resources(), part in arb_resources()) {
            match pool.checked_sub(&part) {
                Ok(rest) => prop_assert_eq!(rest.checked_add(&part).unwrap(), pool),
                // A failed split must be because some attribute asked for too much.
                Err(ResourceError::Insufficient { attr, .. }) => {
                    prop_assert!(part.get(attr).unwrap() > pool.get(attr).unwrap())
                }
                Err(e) => prop_assert!(false, "unexpected {e}"),
            }
        }

        #[test]
        fn quantity_text_round_trips(m in 0u64..1_000_000_000_000) {
            let q = Quantity(m);
            prop_assert_eq!(Quantity::parse("x", &q.to_string()).unwrap(), q);
        }
    }
}
