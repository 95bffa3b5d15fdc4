//! TLS on the remote-slice port: rustls with the ring provider, TLS 1.3 only.
//!
//! The server presents a self-signed certificate made for its session process, and the client
//! accepts any certificate (it still checks that the server holds the certificate's key). Who
//! the peer is gets proven above TLS: both sides show that they hold the pool's secret with an
//! HMAC over the TLS session's exported keying material (its *binding*, RFC 5705 / RFC 8446
//! section 7.5) and the server's nonce. A man in the middle runs two TLS sessions with two
//! different bindings, so the proofs it could relay are worthless on the other side.

use std::{
    io::{self, Read, Write},
    net::TcpStream,
    sync::Arc,
    time::{Duration, Instant},
};

use rustls::{
    ClientConfig, ClientConnection, DigitallySignedStruct, ServerConfig, ServerConnection,
    SignatureScheme, StreamOwned,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{CryptoProvider, WebPkiSupportedAlgorithms},
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime},
};

use crate::frame::{Binding, FrameError, PLAIN_REFUSAL_MAGIC, REFUSAL_LEN, plain_refusal};

/// The label of the keying material both proofs are bound to (unregistered, hence
/// "EXPERIMENTAL", as RFC 5705 asks).
const EXPORTER_LABEL: &[u8] = b"EXPERIMENTAL vgpu remote slice v2";

/// The name the client asks for; nothing checks it (see the module's text).
const SERVER_NAME: &str = "vgpu-remote-slice";

/// The first byte of every TLS connection: a handshake record.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A TCP stream whose reads and writes fail with `TimedOut` once `deadline` has passed (each
/// call waits at most until then), so a peer that goes silent cannot hold a session.
#[derive(Debug)]
pub struct Sock {
    tcp: TcpStream,
    pub deadline: Option<Instant>,
    armed: bool,
}

impl Sock {
    pub fn new(tcp: TcpStream) -> Self {
        Self {
            tcp,
            deadline: None,
            armed: false,
        }
    }

    fn arm(&mut self, reading: bool) -> io::Result<()> {
        match self.deadline {
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(io::ErrorKind::TimedOut.into());
                }
                if reading {
                    self.tcp.set_read_timeout(Some(left))?;
                } else {
                    self.tcp.set_write_timeout(Some(left))?;
                }
                self.armed = true;
            }
            None if self.armed => {
                self.tcp.set_read_timeout(None)?;
                self.tcp.set_write_timeout(None)?;
                self.armed = false;
            }
            None => {}
        }
        Ok(())
    }

    /// Looks at what has arrived without taking it.
    pub fn peek(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.arm(true)?;
        self.tcp.peek(buf)
    }

    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }
}

impl Read for Sock {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.arm(true)?;
        self.tcp.read(buf)
    }
}

impl Write for Sock {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.arm(false)?;
        self.tcp.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.tcp.flush()
    }
}

/// A byte stream whose operations can be given a deadline: the server's session runs on any
/// (TLS in production, plain bytes in the fuzzer).
pub trait Transport: Read + Write {
    fn set_deadline(&mut self, deadline: Option<Instant>);
}

impl Transport for StreamOwned<ServerConnection, Sock> {
    fn set_deadline(&mut self, deadline: Option<Instant>) {
        self.sock.deadline = deadline;
    }
}

impl Transport for StreamOwned<ClientConnection, Sock> {
    fn set_deadline(&mut self, deadline: Option<Instant>) {
        self.sock.deadline = deadline;
    }
}

/// The server's TLS configuration, with a certificate and key made for this process.
pub fn server_config() -> Result<Arc<ServerConfig>, FrameError> {
    let made = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_string()])
        .map_err(FrameError::Certificate)?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(made.signing_key.serialize_der()));
    let mut c = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(vec![made.cert.der().clone()], key)?;
    // One session per connection: nothing to resume.
    c.send_tls13_tickets = 0;
    Ok(Arc::new(c))
}

/// Accepts any certificate, but checks the handshake's signatures with it (the server holds
/// its key). Identity is proven above TLS with the pool's secret.
#[derive(Debug)]
struct AnyCertificate(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

pub fn client_config() -> Result<Arc<ClientConfig>, FrameError> {
    let p = provider();
    let algorithms = p.signature_verification_algorithms;
    let c = ClientConfig::builder_with_provider(p)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(algorithms)))
        .with_no_client_auth();
    Ok(Arc::new(c))
}

pub fn server_name() -> ServerName<'static> {
    ServerName::try_from(SERVER_NAME).unwrap_or_else(|_| unreachable!("a valid DNS name"))
}

/// The TLS session's binding (its exported keying material).
pub fn binding<D>(conn: &rustls::ConnectionCommon<D>) -> Result<Binding, FrameError> {
    Ok(conn.export_keying_material([0u8; 32], EXPORTER_LABEL, None)?)
}

/// Server side, before TLS: a peer whose first byte does not open a TLS handshake is told, in
/// plain text, that this port speaks TLS only.
pub fn expect_tls(sock: &mut Sock) -> Result<(), FrameError> {
    let mut first = [0u8; 1];
    let n = sock.peek(&mut first)?;
    if n == 0 {
        return Err(FrameError::Io(io::ErrorKind::UnexpectedEof.into()));
    }
    if first[0] != TLS_HANDSHAKE_RECORD {
        let refusal = plain_refusal(
            "this GPU host serves remote slices over TLS only (is the VM host's vhost-gpu older?)",
        );
        let _ = sock.write_all(&refusal);
        let _ = sock.tcp.shutdown(std::net::Shutdown::Write);
        return Err(FrameError::NotTls);
    }
    Ok(())
}

/// Client side, after sending its hello: a server that refuses in plain text (over its session
/// cap, or one that wants TLS from a client that did not send it) said why.
pub fn check_plain_refusal(sock: &mut Sock) -> Result<(), FrameError> {
    let mut head = [0u8; 6];
    loop {
        let n = sock.peek(&mut head)?;
        if n == 0 {
            return Err(FrameError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the GPU host closed the connection before TLS",
            )));
        }
        // A GPU host of the plaintext protocol speaks first, with its challenge.
        if n >= 4 && head[..4] == b"VGTC"[..] {
            return Err(FrameError::ServerNotTls);
        }
        if head[..n.min(4)] != PLAIN_REFUSAL_MAGIC[..n.min(4)] {
            return Ok(()); // TLS (or garbage that rustls will name)
        }
        if n == head.len() {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    sock.read_exact(&mut head)?;
    let len = usize::from(u16::from_le_bytes([head[4], head[5]])).min(REFUSAL_LEN);
    let mut text = vec![0u8; len];
    sock.read_exact(&mut text)?;
    Err(FrameError::Refused(
        String::from_utf8_lossy(&text).into_owned(),
    ))
}
