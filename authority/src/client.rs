//! A blocking client of the authority API for the CLI, the boot manager and benchmarks:
//! TLS (rustls, ring) with an optional client certificate, one kept-alive HTTP/1.1
//! connection, and an optional local address to call from (nodes call from their own).

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Settings are wrong (URL, certificates, keys).
    #[error("{0}")]
    Config(String),
    /// The connection failed.
    #[error("authority at {0}: {1}")]
    Io(String, std::io::Error),
    /// The authority answered with an error.
    #[error("{message}")]
    Rpc {
        /// Error code.
        code: i64,
        /// Message.
        message: String,
    },
    /// The answer was not understood.
    #[error("authority answer: {0}")]
    Protocol(String),
}

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A connection to an authority.
pub struct AuthorityClient {
    addr: SocketAddr,
    host: String,
    tls: Arc<rustls::ClientConfig>,
    bind: Option<IpAddr>,
    conn: Option<BufReader<Tls>>,
    next_id: u64,
    /// The `auth` value sent with every call made by [`AuthorityClient::call`].
    pub auth: Value,
}

impl AuthorityClient {
    /// A client of `url` (`https://host:port`), trusting `root_pem`, presenting
    /// `identity` (certificate chain PEM, private key PEM) when given.
    pub fn new(url: &str, root_pem: &str, identity: Option<(&str, &str)>, bind: Option<IpAddr>) -> Result<AuthorityClient, ClientError> {
        let rest = url.strip_prefix("https://").ok_or_else(|| ClientError::Config(format!("url: {url:?} must start with https://")))?;
        let hostport = rest.split('/').next().unwrap_or(rest);
        let (host, port) = hostport.rsplit_once(':').map_or((hostport, 443), |(h, p)| (h, p.parse().unwrap_or(443)));
        let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
        use std::net::ToSocketAddrs;
        let addr = (host.as_str(), port)
            .to_socket_addrs()
            .map_err(|e| ClientError::Config(format!("url: {host}: {e}")))?
            .next()
            .ok_or_else(|| ClientError::Config(format!("url: {host} has no address")))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(root_pem.as_bytes()) {
            let c = c.map_err(|e| ClientError::Config(format!("root certificate: {e}")))?;
            roots.add(c).map_err(|e| ClientError::Config(format!("root certificate: {e}")))?;
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ClientError::Config(e.to_string()))?
            .with_root_certificates(roots);
        let cfg = match identity {
            Some((chain, key)) => {
                let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain.as_bytes())
                    .collect::<Result<_, _>>()
                    .map_err(|e| ClientError::Config(format!("certificate: {e}")))?;
                let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).map_err(|e| ClientError::Config(format!("private key: {e}")))?;
                builder.with_client_auth_cert(certs, key).map_err(|e| ClientError::Config(format!("client certificate: {e}")))?
            }
            None => builder.with_no_client_auth(),
        };
        let auth = if identity.is_some() { json!({"AuthMethod": "certificate"}) } else { Value::Null };
        Ok(AuthorityClient { addr, host, tls: Arc::new(cfg), bind, conn: None, next_id: 1, auth })
    }

    fn connect(&self) -> Result<BufReader<Tls>, ClientError> {
        let io = |e| ClientError::Io(self.addr.to_string(), e);
        let sock = socket2::Socket::new(socket2::Domain::for_address(self.addr), socket2::Type::STREAM, None).map_err(io)?;
        if let Some(ip) = self.bind {
            sock.bind(&SocketAddr::new(ip, 0).into()).map_err(io)?;
        }
        sock.connect_timeout(&self.addr.into(), Duration::from_secs(10)).map_err(io)?;
        let tcp: TcpStream = sock.into();
        tcp.set_nodelay(true).map_err(io)?;
        tcp.set_read_timeout(Some(Duration::from_secs(60))).map_err(io)?;
        let name = ServerName::try_from(self.host.clone()).map_err(|e| ClientError::Config(format!("server name: {e}")))?;
        let conn = rustls::ClientConnection::new(self.tls.clone(), name).map_err(|e| ClientError::Config(e.to_string()))?;
        Ok(BufReader::new(rustls::StreamOwned::new(conn, tcp)))
    }

    fn round_trip(&mut self, body: &[u8]) -> Result<Vec<u8>, ClientError> {
        if self.conn.is_none() {
            self.conn = Some(self.connect()?);
        }
        let addr = self.addr.to_string();
        let io = |e| ClientError::Io(addr.clone(), e);
        let conn = self.conn.as_mut().ok_or_else(|| ClientError::Protocol("no connection".into()))?;
        let head = format!(
            "POST /rpc HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            self.host,
            body.len()
        );
        let s = conn.get_mut();
        // A server that refuses a body (too large) answers and closes while we may still be
        // writing: read its answer even when the write failed.
        let written = s.write_all(head.as_bytes()).and_then(|_| s.write_all(body)).and_then(|_| s.flush());
        let mut status = String::new();
        match conn.read_line(&mut status) {
            Ok(n) if n > 0 => {}
            other => {
                self.conn = None;
                let e = match (written, other) {
                    (Err(w), _) => w,
                    (_, Err(r)) => r,
                    _ => std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed"),
                };
                return Err(ClientError::Io(addr, e));
            }
        }
        let conn = self.conn.as_mut().ok_or_else(|| ClientError::Protocol("no connection".into()))?;
        let mut len = None;
        let mut close = false;
        loop {
            let mut line = String::new();
            conn.read_line(&mut line).map_err(io)?;
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let lower = line.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                len = v.trim().parse::<usize>().ok();
            }
            if lower.starts_with("connection:") && lower.contains("close") {
                close = true;
            }
        }
        let len = len.ok_or_else(|| ClientError::Protocol(format!("no content-length ({})", status.trim())))?;
        let mut out = vec![0u8; len];
        conn.read_exact(&mut out).map_err(io)?;
        if close {
            self.conn = None;
        }
        Ok(out)
    }

    /// Calls `method` with `auth` and `params`.
    pub fn call_with_auth(&mut self, method: &str, auth: Value, params: Vec<Value>) -> Result<Value, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut all = vec![auth];
        all.extend(params);
        let body = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": all}).to_string();
        let answer = match self.round_trip(body.as_bytes()) {
            Ok(a) => a,
            // A kept-alive connection the server closed: one fresh try.
            Err(ClientError::Io(..)) => {
                self.conn = None;
                self.round_trip(body.as_bytes())?
            }
            Err(e) => return Err(e),
        };
        let mut v: Value = serde_json::from_slice(&answer).map_err(|e| ClientError::Protocol(e.to_string()))?;
        if let Some(e) = v.get("error") {
            return Err(ClientError::Rpc { code: e["code"].as_i64().unwrap_or(0), message: e["message"].as_str().unwrap_or("").to_owned() });
        }
        Ok(v.get_mut("result").map(Value::take).unwrap_or(Value::Null))
    }

    /// Calls `method` with this client's `auth` and `params`.
    pub fn call(&mut self, method: &str, params: Vec<Value>) -> Result<Value, ClientError> {
        let auth = self.auth.clone();
        self.call_with_auth(method, auth, params)
    }

    /// Authenticates with `chain_pem` and switches this client to the session it gets.
    pub fn start_session(&mut self, chain_pem: &str, key_pem: &str) -> Result<i64, ClientError> {
        let r = self.call_with_auth("AuthenticateCertificate", Value::Null, vec![json!(chain_pem)])?;
        let sealed = r["session"].as_str().ok_or_else(|| ClientError::Protocol("no session".into()))?;
        let key = credentials::seal::open(key_pem, sealed).map_err(|e| ClientError::Config(e.to_string()))?;
        let key = String::from_utf8(key).map_err(|_| ClientError::Protocol("session key is not text".into()))?;
        self.auth = json!({"AuthMethod": "session", "session": key});
        Ok(r["expires"].as_i64().unwrap_or(0))
    }
}
