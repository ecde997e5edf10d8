//! The public query over HTTP (section 4.6): anyone who received unwanted traffic from
//! the node asks which slice sent it and who is responsible.
//!
//! - `GET /`: an HTML form (source, destination, time window);
//! - `GET /query?src=...&dst=...&from=...&to=...`: the answer as HTML;
//! - `GET /api/flows?...`: the same answer as JSON (`{"flows": [...]}`);
//! - `GET /metrics`: per-slice bytes, packets, drops and rates (Prometheus text format);
//! - a query that does not parse gets 400 with the field and the reason.

use crate::metrics::Metrics;
use crate::query::Query;
use crate::store::{FlowRecord, Store};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use std::sync::{Arc, Mutex};

/// The most flows one answer lists.
pub const MAX_ANSWER: usize = 1000;

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}

fn reply(status: StatusCode, ctype: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(ctype) {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

fn time_text(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| ms.to_string())
}

const FORM: &str = r#"<form id="query" method="get" action="/query">
<label>Source (address[:port]) <input id="src" name="src" required></label>
<label>Destination (address[:port]) <input id="dst" name="dst"></label>
<label>From (RFC 3339 or Unix seconds) <input id="from" name="from"></label>
<label>To <input id="to" name="to"></label>
<button id="ask" type="submit">Who sent this?</button>
</form>"#;

fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title></head>\
         <body><h1>{}</h1>{body}<p>Flows are recorded on every VM interface of this node. A source \
         port on this node's address names one VM: each VM sends from a block of ports of its own.</p></body></html>",
        escape(title),
        escape(title)
    )
}

fn html_answer(q: &str, flows: &[FlowRecord]) -> String {
    if flows.is_empty() {
        return page("No matching traffic", &format!("<p id=\"answer\">No flow matches {}.</p>{FORM}", escape(q)));
    }
    let mut rows = String::new();
    for f in flows {
        rows += &format!(
            "<tr class=\"flow\"><td class=\"slice\">{}</td><td class=\"users\">{}</td><td>{}</td><td>{}:{} &rarr; {}:{}</td>\
             <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&f.meta.slice),
            escape(&f.meta.users.join(", ")),
            f.proto,
            f.src,
            f.sport,
            f.dst,
            f.dport,
            escape(f.post_nat_src.as_deref().unwrap_or("")),
            time_text(f.first_ms),
            time_text(f.last_ms),
            f.bytes,
            f.packets
        );
    }
    page(
        "Traffic from this node",
        &format!(
            "<table id=\"answer\"><tr><th>slice</th><th>responsible</th><th>protocol</th><th>flow (on the VM's interface)</th>\
             <th>seen outside from</th><th>first</th><th>last</th><th>bytes</th><th>packets</th></tr>{rows}</table>{FORM}"
        ),
    )
}

/// Answers one request.
pub fn handle(
    store: &Arc<Mutex<Store>>,
    metrics: &Metrics,
    req: &Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    if req.method() != hyper::Method::GET {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "only GET\n".into());
    }
    let qs = req.uri().query().unwrap_or("");
    let path = req.uri().path();
    match path {
        "/" => reply(StatusCode::OK, "text/html; charset=utf-8", page("Who sent this traffic?", FORM)),
        "/metrics" => reply(StatusCode::OK, "text/plain; version=0.0.4", metrics.scrape()),
        "/query" | "/api/flows" => {
            let json = path == "/api/flows";
            let q = match Query::parse(qs) {
                Ok(q) => q,
                Err(e) if json => {
                    return reply(
                        StatusCode::BAD_REQUEST,
                        "application/json",
                        serde_json::json!({"error": e.to_string()}).to_string(),
                    )
                }
                Err(e) => return reply(StatusCode::BAD_REQUEST, "text/plain; charset=utf-8", format!("{e}\n")),
            };
            let found = store.lock().unwrap_or_else(|p| p.into_inner()).query(&q, MAX_ANSWER);
            match (found, json) {
                (Ok(f), true) => {
                    reply(StatusCode::OK, "application/json", serde_json::json!({ "flows": f }).to_string())
                }
                (Ok(f), false) => reply(StatusCode::OK, "text/html; charset=utf-8", html_answer(qs, &f)),
                (Err(e), _) => {
                    tracing::error!("query: {e:#}");
                    reply(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", "the flow store failed\n".into())
                }
            }
        }
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found: try / or /api/flows?src=ADDR[:PORT]\n".into()),
    }
}

/// Serves the query on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, store: Arc<Mutex<Store>>, metrics: Arc<Metrics>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let (store, metrics) = (store.clone(), metrics.clone());
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let (store, metrics) = (store.clone(), metrics.clone());
                async move {
                    let r = tokio::task::spawn_blocking(move || handle(&store, &metrics, &req)).await;
                    Ok::<_, std::convert::Infallible>(r.unwrap_or_else(|_| {
                        reply(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", "internal error\n".into())
                    }))
                }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(io, svc);
            let _ = tokio::time::timeout(std::time::Duration::from_secs(60), conn).await;
        });
    }
}
