//! Clients of the authority API: [`Https`], a JSON-RPC transport over HTTPS (hyper's
//! HTTP/1.1 client on a rustls connection, optionally from a chosen local address, as
//! nodes call from their own), [`AsyncAuthorityClient`] for services, and
//! [`AuthorityClient`], a blocking wrapper for the CLI, the boot manager and tests.
//!
//! Calls are typed ([`AuthorityClient::request`] with the params and results of
//! [`crate::types`]) or raw (`call(method, params)`, params after `auth`).

use crate::types::SessionResult;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use jsonrpc::{AsyncClient, AsyncTransport, Call, Params, Value};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::json;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

pub use jsonrpc::ClientError;

/// Largest answer read, bytes.
pub const MAX_ANSWER: usize = 64 << 20;
/// How long one call may take, long polls included.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(120);

fn setup(what: impl std::fmt::Display) -> ClientError {
    ClientError::Setup(what.to_string())
}

/// JSON-RPC over HTTPS to one authority: `POST /rpc` on one kept-alive connection.
pub struct Https {
    addr: SocketAddr,
    server_name: ServerName<'static>,
    host_header: String,
    tls: tokio_rustls::TlsConnector,
    bind: Option<IpAddr>,
    conn: Option<SendRequest<Full<Bytes>>>,
}

impl Https {
    /// A transport to `url` (`https://host[:port]`), trusting `root_pem`, presenting
    /// `identity` (certificate chain PEM, private key PEM) when given, and calling from
    /// local address `bind` when given.
    pub fn new(
        url: &str,
        root_pem: &str,
        identity: Option<(&str, &str)>,
        bind: Option<IpAddr>,
    ) -> Result<Https, ClientError> {
        let u = url::Url::parse(url).map_err(|e| setup(format!("url: {url:?}: {e}")))?;
        if u.scheme() != "https" {
            return Err(setup(format!("url: {url:?} must start with https://")));
        }
        let port = u.port_or_known_default().unwrap_or(443);
        let (addr, server_name, host_header) = match u.host() {
            Some(url::Host::Ipv4(ip)) => {
                (SocketAddr::new(ip.into(), port), ServerName::IpAddress(IpAddr::V4(ip).into()), format!("{ip}:{port}"))
            }
            Some(url::Host::Ipv6(ip)) => (
                SocketAddr::new(ip.into(), port),
                ServerName::IpAddress(IpAddr::V6(ip).into()),
                format!("[{ip}]:{port}"),
            ),
            Some(url::Host::Domain(d)) => {
                use std::net::ToSocketAddrs;
                let addr = (d, port)
                    .to_socket_addrs()
                    .map_err(|e| setup(format!("url: {d}: {e}")))?
                    .next()
                    .ok_or_else(|| setup(format!("url: {d} has no address")))?;
                let name = ServerName::try_from(d.to_owned()).map_err(|e| setup(format!("url: {d}: {e}")))?;
                (addr, name, format!("{d}:{port}"))
            }
            None => return Err(setup(format!("url: {url:?} names no host"))),
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(root_pem.as_bytes()) {
            roots
                .add(c.map_err(|e| setup(format!("root certificate: {e}")))?)
                .map_err(|e| setup(format!("root certificate: {e}")))?;
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(setup)?
            .with_root_certificates(roots);
        let cfg = match identity {
            Some((chain, key)) => {
                let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain.as_bytes())
                    .collect::<Result<_, _>>()
                    .map_err(|e| setup(format!("certificate: {e}")))?;
                let key =
                    PrivateKeyDer::from_pem_slice(key.as_bytes()).map_err(|e| setup(format!("private key: {e}")))?;
                builder.with_client_auth_cert(certs, key).map_err(|e| setup(format!("client certificate: {e}")))?
            }
            None => builder.with_no_client_auth(),
        };
        Ok(Https {
            addr,
            server_name,
            host_header,
            tls: tokio_rustls::TlsConnector::from(Arc::new(cfg)),
            bind,
            conn: None,
        })
    }

    fn io(&self, what: &str, e: impl std::fmt::Display) -> ClientError {
        ClientError::Transport(format!("authority at {}: {what}: {e}", self.addr))
    }

    /// An error with its causes (hyper's own message alone says "connection error").
    fn io_chain(&self, what: &str, e: &(dyn std::error::Error + 'static)) -> ClientError {
        let mut msg = e.to_string();
        let mut cur = e.source();
        while let Some(s) = cur {
            msg = format!("{msg}: {s}");
            cur = s.source();
        }
        self.io(what, msg)
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, ClientError> {
        let sock = if self.addr.is_ipv4() { tokio::net::TcpSocket::new_v4() } else { tokio::net::TcpSocket::new_v6() }
            .map_err(|e| self.io("socket", e))?;
        if let Some(ip) = self.bind {
            sock.bind(SocketAddr::new(ip, 0)).map_err(|e| self.io(&format!("binding {ip}"), e))?;
        }
        let tcp = tokio::time::timeout(Duration::from_secs(10), sock.connect(self.addr))
            .await
            .map_err(|_| self.io("connect", "timed out"))?
            .map_err(|e| self.io("connect", e))?;
        let _ = tcp.set_nodelay(true);
        let tls = tokio::time::timeout(Duration::from_secs(10), self.tls.connect(self.server_name.clone(), tcp))
            .await
            .map_err(|_| self.io("TLS handshake", "timed out"))?
            .map_err(|e| self.io("TLS handshake", e))?;
        let (send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .map_err(|e| self.io("HTTP handshake", e))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(send)
    }

    async fn post(&self, send: &mut SendRequest<Full<Bytes>>, body: Bytes) -> Result<Vec<u8>, hyper::Error> {
        // The request was built from constant parts and a checked host: it cannot fail.
        let req = hyper::Request::post("/rpc")
            .header(hyper::header::HOST, &self.host_header)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .unwrap_or_default();
        send.ready().await?;
        let resp = send.send_request(req).await?;
        // An answer larger than MAX_ANSWER ends the read; what was read is not JSON and
        // the client says so.
        match Limited::new(resp.into_body(), MAX_ANSWER).collect().await {
            Ok(b) => Ok(b.to_bytes().to_vec()),
            Err(_) => Ok(Vec::new()),
        }
    }
}

impl AsyncTransport for Https {
    async fn round_trip(&mut self, request: Vec<u8>) -> Result<Vec<u8>, ClientError> {
        if request.len() > crate::server::MAX_BODY {
            return Err(setup(format!(
                "request refused: {} bytes is more than an authority accepts (1 MiB)",
                request.len()
            )));
        }
        let body = Bytes::from(request);
        // A kept-alive connection the server closed meanwhile gets one fresh try; a fresh
        // connection's failure is final (the call may have run).
        // Let the connection's task see what arrived while no call was running (a server
        // that closed the connection: a blocking client's runtime only runs during calls).
        if self.conn.is_some() {
            tokio::task::yield_now().await;
        }
        let (mut send, reused) = match self.conn.take().filter(|s| !s.is_closed()) {
            Some(s) => (s, true),
            None => (self.connect().await?, false),
        };
        let first = tokio::time::timeout(CALL_TIMEOUT, self.post(&mut send, body.clone())).await;
        let answer = match first {
            Ok(Ok(a)) => a,
            Ok(Err(e)) if reused && (e.is_canceled() || e.is_closed() || e.is_incomplete_message() || dead(&e)) => {
                send = self.connect().await?;
                match tokio::time::timeout(CALL_TIMEOUT, self.post(&mut send, body)).await {
                    Ok(Ok(a)) => a,
                    Ok(Err(e)) => return Err(self.io_chain("request", &e)),
                    Err(_) => return Err(self.io("request", "no answer in time")),
                }
            }
            Ok(Err(e)) => return Err(self.io_chain("request", &e)),
            Err(_) => return Err(self.io("request", "no answer in time")),
        };
        self.conn = Some(send);
        Ok(answer)
    }
}

/// Did the request fail because the kept-alive connection was already gone (the server
/// restarted or dropped it), so that it cannot have reached the server?
fn dead(e: &hyper::Error) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = cur {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            return matches!(io.kind(), UnexpectedEof | ConnectionReset | BrokenPipe | ConnectionAborted);
        }
        cur = s.source();
    }
    false
}

/// Params after `auth`, by position, from typed params.
fn positional<P: Params>(p: &P) -> Result<Vec<Value>, ClientError> {
    let v = serde_json::to_value(p).map_err(|e| ClientError::Protocol(format!("params: {e}")))?;
    let mut o = match v {
        Value::Object(o) => o,
        _ => return Err(ClientError::Protocol("params: not an object".into())),
    };
    let mut out: Vec<Value> = P::NAMES.iter().map(|n| o.remove(*n).unwrap_or(Value::Null)).collect();
    while out.last().is_some_and(Value::is_null) {
        out.pop();
    }
    Ok(out)
}

/// An authority client for async callers (services).
pub struct AsyncAuthorityClient {
    inner: AsyncClient<Https>,
    /// The `auth` value sent with every call made by `call` and `request`.
    pub auth: Value,
}

impl AsyncAuthorityClient {
    /// A client of `url` (see [`Https::new`]); it authenticates with the TLS client
    /// certificate when given one, and is anonymous otherwise.
    pub fn new(
        url: &str,
        root_pem: &str,
        identity: Option<(&str, &str)>,
        bind: Option<IpAddr>,
    ) -> Result<AsyncAuthorityClient, ClientError> {
        let auth = if identity.is_some() { json!({"AuthMethod": "certificate"}) } else { Value::Null };
        Ok(AsyncAuthorityClient { inner: AsyncClient::new(Https::new(url, root_pem, identity, bind)?), auth })
    }

    /// Calls `method` with `auth` and positional `params`.
    pub async fn call_with_auth(
        &mut self,
        method: &str,
        auth: Value,
        params: Vec<Value>,
    ) -> Result<Value, ClientError> {
        let mut all = vec![auth];
        all.extend(params);
        self.inner.call_value(method, Value::Array(all)).await
    }

    /// Calls `method` with this client's `auth`.
    pub async fn call(&mut self, method: &str, params: Vec<Value>) -> Result<Value, ClientError> {
        let auth = self.auth.clone();
        self.call_with_auth(method, auth, params).await
    }

    /// Calls `C` with typed params and this client's `auth`; its typed result.
    pub async fn request<C: Call>(&mut self, params: &C::Params) -> Result<C::Result, ClientError> {
        let v = self.call(C::METHOD, positional(params)?).await?;
        serde_path_to_error::deserialize(v)
            .map_err(|e| ClientError::Protocol(format!("{}: result {}: {}", C::METHOD, e.path(), e.inner())))
    }

    /// Authenticates with `chain_pem` (section 5.5) and switches this client to the
    /// session it gets; returns when it expires.
    pub async fn start_session(&mut self, chain_pem: &str, key_pem: &str) -> Result<i64, ClientError> {
        let r = self.call_with_auth("AuthenticateCertificate", Value::Null, vec![json!(chain_pem)]).await?;
        let r: SessionResult =
            serde_json::from_value(r).map_err(|e| ClientError::Protocol(format!("AuthenticateCertificate: {e}")))?;
        let key =
            credentials::seal::open(key_pem, &r.session).map_err(|e| setup(format!("opening the session key: {e}")))?;
        let key = String::from_utf8(key).map_err(|_| ClientError::Protocol("session key is not text".into()))?;
        self.auth = json!({"AuthMethod": "session", "session": key});
        Ok(r.expires)
    }
}

/// A blocking authority client (the CLI, the boot manager, tests). Not for use inside
/// an async runtime: use [`AsyncAuthorityClient`] there.
pub struct AuthorityClient {
    rt: tokio::runtime::Runtime,
    inner: AsyncAuthorityClient,
    /// The `auth` value sent with every call made by `call` and `request`.
    pub auth: Value,
}

impl AuthorityClient {
    /// A client of `url` (see [`Https::new`]).
    pub fn new(
        url: &str,
        root_pem: &str,
        identity: Option<(&str, &str)>,
        bind: Option<IpAddr>,
    ) -> Result<AuthorityClient, ClientError> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(setup)?;
        let inner = AsyncAuthorityClient::new(url, root_pem, identity, bind)?;
        Ok(AuthorityClient { rt, auth: inner.auth.clone(), inner })
    }

    /// Calls `method` with `auth` and positional `params`.
    pub fn call_with_auth(&mut self, method: &str, auth: Value, params: Vec<Value>) -> Result<Value, ClientError> {
        self.rt.block_on(self.inner.call_with_auth(method, auth, params))
    }

    /// Calls `method` with this client's `auth` and positional `params`.
    pub fn call(&mut self, method: &str, params: Vec<Value>) -> Result<Value, ClientError> {
        let auth = self.auth.clone();
        self.call_with_auth(method, auth, params)
    }

    /// Calls `C` with typed params; its typed result.
    pub fn request<C: Call>(&mut self, params: &C::Params) -> Result<C::Result, ClientError> {
        self.inner.auth = self.auth.clone();
        self.rt.block_on(self.inner.request::<C>(params))
    }

    /// Authenticates with `chain_pem` and switches this client to the session it gets.
    pub fn start_session(&mut self, chain_pem: &str, key_pem: &str) -> Result<i64, ClientError> {
        let r = self.rt.block_on(self.inner.start_session(chain_pem, key_pem))?;
        self.auth = self.inner.auth.clone();
        Ok(r)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_parsed_not_split() {
        let root = "";
        let h = Https::new("https://127.0.0.1:8443", root, None, None).unwrap();
        assert_eq!(h.addr, "127.0.0.1:8443".parse().unwrap());
        let h = Https::new("https://[::1]", root, None, None).unwrap();
        assert_eq!(h.addr, "[::1]:443".parse().unwrap());
        assert_eq!(h.host_header, "[::1]:443");
        let h = Https::new("https://[::1]:9443/rpc", root, None, None).unwrap();
        assert_eq!(h.addr.port(), 9443);
        let e = Https::new("https://127.0.0.1:84x3", root, None, None).err().unwrap();
        assert!(e.to_string().contains("url"), "{e}");
        let e = Https::new("http://127.0.0.1", root, None, None).err().unwrap();
        assert!(e.to_string().contains("https://"), "{e}");
        assert!(Https::new("https://", root, None, None).is_err());
    }

    #[test]
    fn typed_params_go_by_position_after_auth() {
        let p = crate::types::RenewParams { slice_name: "plc.a".into(), expires: 7 };
        assert_eq!(positional(&p).unwrap(), vec![json!("plc.a"), json!(7)]);
        let p = crate::types::SlicesForNodeParams { node_id: 3, since: None, wait: None };
        assert_eq!(positional(&p).unwrap(), vec![json!(3)]);
    }
}
