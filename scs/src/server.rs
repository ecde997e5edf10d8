//! The ticket endpoint's HTTPS server: `POST /rpc`, JSON-RPC 2.0, with a server
//! certificate for the node's public address from the node manager (renewed daily, as it
//! lasts a week).

use crate::api::{calls, Request};
use crate::service::Scs;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Response, StatusCode};
use hyper_util::rt::TokioIo;
use jsonrpc::{reply, RpcError, Value};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Largest request body.
pub const MAX_BODY: usize = 256 << 10;

/// Most connections served at once; more wait in the listen queue.
pub const MAX_CONNECTIONS: usize = 64;

/// The endpoint's handler: the service.
struct Endpoint(Arc<Scs>);

impl jsonrpc::server::Handler for Endpoint {
    type Caller = ();
    async fn call(&self, _: &(), method: &str, params: Value) -> Result<Value, RpcError> {
        match Request::decode(method, params)? {
            Request::RedeemTicket(p) => {
                // A client that hangs up must not cancel a redemption halfway (between
                // the node manager's calls): it runs to the end on its own task.
                let scs = self.0.clone();
                let done = tokio::spawn(async move { scs.redeem(&p.ticket).await })
                    .await
                    .map_err(|e| RpcError::new(jsonrpc::ErrorCode::INTERNAL, format!("redeeming: {e}")))?;
                reply::<calls::RedeemTicket>(done)
            }
        }
    }
}

/// A TLS server configuration from a certificate chain and key (PEM).
pub fn tls(chain: &str, key: &str) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(chain.as_bytes()).collect::<Result<_, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(Arc::new(
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(certs, key)?,
    ))
}

fn respond(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert("content-type", hyper::header::HeaderValue::from_static("application/json"));
    r
}

/// Serves tickets on `listener` until the task is dropped.
pub async fn serve(scs: Arc<Scs>, listener: tokio::net::TcpListener) -> anyhow::Result<()> {
    let (chain, key) = scs.certificate(true).await?;
    let config = Arc::new(Mutex::new(tls(&chain, &key)?));
    {
        // The certificate lasts a week: a fresh one every day.
        let (scs, config) = (scs.clone(), config.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(86400)).await;
                match scs.certificate(true).await.map_err(anyhow::Error::from).and_then(|(c, k)| tls(&c, &k)) {
                    Ok(t) => *config.lock().unwrap_or_else(|p| p.into_inner()) = t,
                    Err(e) => tracing::warn!("renewing the ticket endpoint's certificate: {e}"),
                }
            }
        });
    }
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Some((slot, tcp, peer)) = jsonrpc::server::accept_capped(&listener, &slots).await else { return Ok(()) };
        let acceptor = tokio_rustls::TlsAcceptor::from(config.lock().unwrap_or_else(|p| p.into_inner()).clone());
        let scs = scs.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let Ok(Ok(tls)) = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await else { return };
            let svc = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                let scs = scs.clone();
                async move {
                    if req.uri().path() != "/rpc" || req.method() != Method::POST {
                        return Ok::<_, std::convert::Infallible>(respond(
                            StatusCode::NOT_FOUND,
                            "{\"error\":\"POST JSON-RPC to /rpc\"}".into(),
                        ));
                    }
                    let Ok(body) = Limited::new(req.into_body(), MAX_BODY).collect().await else {
                        return Ok(respond(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            "{\"error\":\"body larger than 256 KiB\"}".into(),
                        ));
                    };
                    match jsonrpc::server::answer(&Endpoint(scs), &(), &body.to_bytes()).await {
                        Some(a) => Ok(respond(StatusCode::OK, a.to_string())),
                        None => Ok(respond(StatusCode::NO_CONTENT, String::new())),
                    }
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(tls), svc);
            match tokio::time::timeout(Duration::from_secs(300), conn).await {
                Ok(Err(e)) => tracing::debug!(%peer, "ticket connection: {e}"),
                Err(_) => tracing::debug!(%peer, "ticket connection: closed after 300 s"),
                Ok(Ok(())) => {}
            }
        });
    }
}
