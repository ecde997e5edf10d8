//! The public query: a packet's source, destination and a time window, from a URL's query
//! string (`src=ADDR[:PORT]&dst=ADDR[:PORT]&from=T&to=T`, times as Unix seconds or RFC
//! 3339). What does not parse is refused with the field and the reason.

use std::net::Ipv4Addr;

/// An address with an optional port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    /// The address.
    pub addr: Ipv4Addr,
    /// The port, when given.
    pub port: Option<u16>,
}

/// What someone asks about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// The packet's source.
    pub src: Endpoint,
    /// Its destination, when given.
    pub dst: Option<Endpoint>,
    /// The window's start, ms since the epoch.
    pub from_ms: i64,
    /// Its end.
    pub to_ms: i64,
}

/// Why a query was refused: the field and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct QueryError {
    /// The parameter.
    pub field: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

fn bad(field: &'static str, reason: impl Into<String>) -> QueryError {
    QueryError { field, reason: reason.into() }
}

/// The longest window one query may cover: 31 days.
pub const MAX_WINDOW_MS: i64 = 31 * 24 * 3600 * 1000;

fn endpoint(field: &'static str, s: &str) -> Result<Endpoint, QueryError> {
    let s = s.trim();
    let (addr, port) = match s.rsplit_once(':') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let addr: Ipv4Addr =
        addr.parse().map_err(|_| bad(field, format!("{addr:?} is not an IPv4 address (a.b.c.d, optionally :port)")))?;
    let port = match port {
        Some(p) => Some(p.parse::<u16>().map_err(|_| bad(field, format!("{p:?} is not a port (0 to 65535)")))?),
        None => None,
    };
    Ok(Endpoint { addr, port })
}

fn time_ms(field: &'static str, s: &str) -> Result<i64, QueryError> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<f64>() {
        if secs.is_finite() && (0.0..1e11).contains(&secs) {
            return Ok((secs * 1000.0) as i64);
        }
        return Err(bad(field, format!("{s} is not a time after 1970 in Unix seconds")));
    }
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).map_err(|_| {
        bad(field, format!("{s:?} is neither Unix seconds nor an RFC 3339 time (2026-11-27T10:00:00Z)"))
    })?;
    Ok((t.unix_timestamp_nanos() / 1_000_000) as i64)
}

impl Query {
    /// Parses a URL query string. `to` defaults to `now_ms`, `from` to an hour before `to`.
    pub fn parse_at(qs: &str, now_ms: i64) -> Result<Query, QueryError> {
        let (mut src, mut dst, mut from, mut to) = (None, None, None, None);
        for (k, v) in url::form_urlencoded::parse(qs.as_bytes()) {
            match k.as_ref() {
                "src" => src = Some(endpoint("src", &v)?),
                "dst" if !v.trim().is_empty() => dst = Some(endpoint("dst", &v)?),
                "from" if !v.trim().is_empty() => from = Some(time_ms("from", &v)?),
                "to" if !v.trim().is_empty() => to = Some(time_ms("to", &v)?),
                "dst" | "from" | "to" | "format" => {}
                other => return Err(bad("query", format!("unknown parameter {other:?} (src, dst, from, to)"))),
            }
        }
        let src = src.ok_or_else(|| bad("src", "missing: the packet's source address (and port, if known)"))?;
        let to_ms = to.unwrap_or(now_ms);
        let from_ms = from.unwrap_or(to_ms - 3_600_000);
        if from_ms > to_ms {
            return Err(bad("from", "is after to"));
        }
        if to_ms - from_ms > MAX_WINDOW_MS {
            return Err(bad("to", "the window is longer than 31 days"));
        }
        Ok(Query { src, dst, from_ms, to_ms })
    }

    /// Parses a URL query string, the window defaulting to the last hour.
    pub fn parse(qs: &str) -> Result<Query, QueryError> {
        let now = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
        Query::parse_at(qs, now as i64)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn queries_parse_and_bad_ones_name_the_field() {
        let q = Query::parse_at("src=192.0.2.10%3A33100&dst=198.51.100.7&from=2026-11-27T10:00:00Z&to=1795780800.5", 0)
            .unwrap();
        assert_eq!(q.src, Endpoint { addr: [192, 0, 2, 10].into(), port: Some(33100) });
        assert_eq!(q.dst, Some(Endpoint { addr: [198, 51, 100, 7].into(), port: None }));
        assert_eq!(q.from_ms, 1_795_773_600_000);
        assert_eq!(q.to_ms, 1_795_780_800_500);
        let q = Query::parse_at("src=10.0.0.1&dst=&from=&to=", 7_200_000).unwrap();
        assert_eq!((q.from_ms, q.to_ms, q.dst), (3_600_000, 7_200_000, None));
        for (qs, field, says) in [
            ("dst=10.0.0.1", "src", "missing"),
            ("src=10.0.0.300", "src", "not an IPv4"),
            ("src=10.0.0.1:70000", "src", "not a port"),
            ("src=10.0.0.1&dst=x", "dst", "not an IPv4"),
            ("src=10.0.0.1&from=yesterday", "from", "RFC 3339"),
            ("src=10.0.0.1&from=-5", "from", "after 1970"),
            ("src=10.0.0.1&from=20&to=10", "from", "after to"),
            ("src=10.0.0.1&from=0&to=99999999", "to", "31 days"),
            ("src=10.0.0.1&sql=1", "query", "unknown parameter"),
        ] {
            let e = Query::parse_at(qs, 0).unwrap_err();
            assert_eq!(e.field, field, "{qs}: {e}");
            assert!(e.reason.contains(says), "{qs}: {e}");
        }
    }
}
