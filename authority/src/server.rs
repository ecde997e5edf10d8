//! The HTTPS endpoint: TLS (rustls, ring provider) with optional client certificates
//! verified against the root CA, HTTP/1.1 (hyper), `POST /rpc` with at most 1 MiB bodies.

use crate::api::Authority;
use credentials::pki::Cert;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// Largest request body.
pub const MAX_BODY: usize = 1 << 20;

/// Most connections open at once (every node's service holds one for its long poll);
/// more wait in the listen queue.
pub const MAX_CONNECTIONS: usize = 4096;

/// How long a client may take to send a request's headers, or may keep a connection
/// idle between requests.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a client may take to send a request's body.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long one connection may live (clients open another; long polls are far shorter).
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(900);

/// The server's TLS settings: its certificate, and client certificates optional but, when
/// given, verified against the root.
pub fn tls_config(a: &Authority) -> anyhow::Result<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(a.ca.root.cert.der.clone()))?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()?;
    let chain = vec![CertificateDer::from(a.ca.server.cert.der.clone())];
    let key = PrivateKeyDer::from_pem_slice(a.ca.server.key_pem.as_bytes())?;
    Ok(rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?)
}

fn respond(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

/// Serves until the task is dropped.
pub async fn serve(a: Arc<Authority>, listener: TcpListener, tls: Arc<rustls::ServerConfig>) {
    tokio::spawn(a.clone().sweep_expiry_forever(Duration::from_secs(a.settings.sweep_secs.max(1))));
    tokio::spawn(a.clone().follow_generation());
    let acceptor = TlsAcceptor::from(tls);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Some((slot, tcp, peer)) = jsonrpc::server::accept_capped(&listener, &slots).await else { return };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let a = a.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let tls = match tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(t)) => t,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, "TLS handshake: {e}");
                    return;
                }
                Err(_) => return,
            };
            let chain: Option<Arc<Vec<Cert>>> = tls
                .get_ref()
                .1
                .peer_certificates()
                .map(|cs| cs.iter().filter_map(|c| Cert::from_der_bytes(c.as_ref()).ok()).collect())
                .map(Arc::new);
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let a = a.clone();
                let chain = chain.clone();
                async move {
                    if req.uri().path() != "/rpc" {
                        return Ok::<_, std::convert::Infallible>(respond(
                            StatusCode::NOT_FOUND,
                            "{\"error\":\"POST JSON-RPC to /rpc\"}".into(),
                        ));
                    }
                    if req.method() != Method::POST {
                        return Ok(respond(StatusCode::METHOD_NOT_ALLOWED, "{\"error\":\"POST only\"}".into()));
                    }
                    let body =
                        match tokio::time::timeout(BODY_TIMEOUT, Limited::new(req.into_body(), MAX_BODY).collect())
                            .await
                        {
                            Ok(Ok(b)) => b.to_bytes(),
                            Err(_) => {
                                let e = jsonrpc::RpcError::new(
                                    jsonrpc::ErrorCode::INVALID_REQUEST,
                                    format!("request refused: body not sent within {} s", BODY_TIMEOUT.as_secs()),
                                );
                                return Ok(respond(
                                    StatusCode::REQUEST_TIMEOUT,
                                    jsonrpc::server::response(serde_json::Value::Null, Err(e)).to_string(),
                                ));
                            }
                            Ok(Err(_)) => {
                                let e = jsonrpc::RpcError::new(
                                    jsonrpc::ErrorCode::INVALID_REQUEST,
                                    "request refused: body larger than 1 MiB",
                                );
                                return Ok(respond(
                                    StatusCode::PAYLOAD_TOO_LARGE,
                                    jsonrpc::server::response(serde_json::Value::Null, Err(e)).to_string(),
                                ));
                            }
                        };
                    let peer = crate::api::Peer { ip: peer.ip(), chain: chain.clone() };
                    match jsonrpc::server::answer(&*a, &peer, &body).await {
                        Some(answer) => Ok(respond(StatusCode::OK, answer.to_string())),
                        // Notifications only: nothing to answer.
                        None => Ok(respond(StatusCode::NO_CONTENT, String::new())),
                    }
                }
            });
            // hyper applies no timeout without a timer: a client that opens a connection
            // and sends nothing would hold it (and a connection slot) for ever.
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(tls), svc);
            match tokio::time::timeout(CONNECTION_LIFETIME, conn).await {
                Ok(Err(e)) => tracing::debug!(%peer, "connection: {e}"),
                Err(_) => tracing::debug!(%peer, "connection: closed after {} s", CONNECTION_LIFETIME.as_secs()),
                Ok(Ok(())) => {}
            }
        });
    }
}
