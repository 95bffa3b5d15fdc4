//! Frames and their limits. Every length is checked before anything is allocated.

use std::io::{self, Read, Write};

use thiserror::Error;
use zerocopy::{
    FromBytes, Immutable, IntoBytes, KnownLayout,
    little_endian::{I32, U16, U32, U64},
};

/// "VGT1": the session header's magic (the version field says which frames follow).
pub const SESSION_MAGIC: u32 = u32::from_le_bytes(*b"VGT1");
pub const REQUEST_MAGIC: u32 = u32::from_le_bytes(*b"VGTQ");
pub const REPLY_MAGIC: u32 = u32::from_le_bytes(*b"VGTR");
pub const CHALLENGE_MAGIC: u32 = u32::from_le_bytes(*b"VGTC");
/// A refusal in plain text, before TLS: "VGTX", a 16-bit length, that many bytes of UTF-8.
pub const PLAIN_REFUSAL_MAGIC: [u8; 4] = *b"VGTX";
/// Version 2: inside TLS, proofs bound to the TLS session, the server proves the secret too.
pub const FRAME_VERSION: u16 = 2;

/// Largest message (the shim's batches are 256 KiB).
pub const MAX_MESSAGE: u32 = 1 << 20;
/// Largest bulk data of one message, each way (the shim splits larger copies).
pub const MAX_DATA: u64 = 1 << 30;
/// Largest reply.
pub const MAX_REPLY: u32 = 8 << 20;
/// Bulk data is read in pieces of this size: memory grows only as bytes actually arrive.
pub const READ_CHUNK: usize = 1 << 20;

#[derive(Debug, Error)]
pub enum FrameError {
    #[error("connection failed")]
    Io(#[source] io::Error),
    #[error("data was altered in transit: a TLS record failed its integrity check")]
    Tampered,
    #[error("the peer found data altered in transit and closed the session")]
    TamperedSeen,
    #[error("secure channel failed")]
    Tls(#[source] rustls::Error),
    #[error("not a TLS peer: the remote-slice port speaks TLS only")]
    NotTls,
    #[error("the GPU host does not speak TLS (an older vhost-gpu?)")]
    ServerNotTls,
    #[error("could not make the TLS certificate")]
    Certificate(#[source] rcgen::Error),
    #[error("{what} within {after:?}")]
    Timeout {
        what: &'static str,
        after: std::time::Duration,
    },
    #[error("not a vGPU frame (magic {0:#010x})")]
    BadMagic(u32),
    #[error("frame version {0}, this side speaks {FRAME_VERSION}")]
    BadVersion(u16),
    #[error("{what} of {len} bytes is over the limit of {max}")]
    TooLarge {
        what: &'static str,
        len: u64,
        max: u64,
    },
    #[error("the GPU host refused the session: {0}")]
    Refused(String),
    #[error("the GPU host did not prove it holds this pool's secret")]
    ServerNotProven,
}

impl From<io::Error> for FrameError {
    /// TLS failures reach us as I/O errors that carry the rustls error: name them.
    fn from(e: io::Error) -> Self {
        if !e.get_ref().is_some_and(|i| i.is::<rustls::Error>()) {
            return Self::Io(e);
        }
        let kind = e.kind();
        match e.into_inner().map(|i| i.downcast::<rustls::Error>()) {
            Some(Ok(tls)) => Self::from(*tls),
            Some(Err(other)) => Self::Io(io::Error::new(kind, other)),
            None => Self::Io(kind.into()),
        }
    }
}

impl From<rustls::Error> for FrameError {
    fn from(e: rustls::Error) -> Self {
        match e {
            rustls::Error::DecryptError => Self::Tampered,
            rustls::Error::AlertReceived(rustls::AlertDescription::BadRecordMac) => {
                Self::TamperedSeen
            }
            e => Self::Tls(e),
        }
    }
}

impl FrameError {
    /// An I/O timeout under a deadline becomes the named timeout; other errors stay.
    pub fn timed_out_as(self, what: &'static str, after: std::time::Duration) -> Self {
        match self {
            Self::Io(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
                ) =>
            {
                Self::Timeout { what, after }
            }
            e => e,
        }
    }
}

/// What a session asks of the GPU host: which GPU and the slice's limits.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionParams {
    /// CUDA device ordinal on the GPU host (ignored by a simulator host).
    pub gpu: i32,
    /// Device memory the slice may hold; `None`: the whole device.
    pub mem_limit: Option<u64>,
    /// SMs of the slice; `None`: the whole device.
    pub sm_count: Option<u32>,
}

/// The server's first words inside TLS: a fresh nonce the client proves the shared secret
/// with, and how long the server waits for a request before it closes an idle session (the
/// client sends keepalives well within it).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct Challenge {
    pub magic: U32,
    /// 1: the server requires the shared secret.
    pub auth_required: U32,
    pub nonce: [u8; 32],
    pub idle_timeout_ms: U32,
    pub _pad: U32,
}

#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct SessionHeader {
    pub magic: U32,
    pub version: U16,
    pub _pad: U16,
    pub gpu: I32,
    pub sm_count: U32,
    /// 0: no limit.
    pub mem_limit: U64,
    /// The client's proof ([`Secret::prove`]); zeros without a secret.
    pub auth: [u8; 32],
}

/// The shared secret of a pool's hosts (`--token-file` or `VGPU_REMOTE_TOKEN`).
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// The TLS session both proofs are bound to: its exported keying material (RFC 5705 / 8446
/// section 7.5), equal at both ends only when no one terminates TLS in between.
pub type Binding = [u8; 32];

/// Who proves: the two directions use different labels, so a proof cannot be reflected.
const CLIENT_LABEL: &[u8] = b"vgpu remote slice: VM host";
const SERVER_LABEL: &[u8] = b"vgpu remote slice: GPU host";

impl Secret {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Option<Self> {
        let b = bytes.into();
        (!b.is_empty()).then_some(Self(b))
    }

    fn mac(
        &self,
        label: &[u8],
        binding: &Binding,
        nonce: &[u8; 32],
        header: &SessionHeader,
    ) -> hmac::Hmac<sha2::Sha256> {
        use hmac::Mac;
        let mut m = <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        m.update(label);
        m.update(binding);
        m.update(nonce);
        m.update(&header.as_bytes()[..AUTHENTICATED]);
        m
    }

    /// The client's proof: HMAC-SHA256(secret, label, TLS binding, nonce, the header's first
    /// 24 bytes).
    pub fn prove(&self, binding: &Binding, nonce: &[u8; 32], header: &SessionHeader) -> [u8; 32] {
        use hmac::Mac;
        self.mac(CLIENT_LABEL, binding, nonce, header)
            .finalize()
            .into_bytes()
            .into()
    }

    /// Checks a client's proof, in constant time.
    pub fn verify(&self, binding: &Binding, nonce: &[u8; 32], header: &SessionHeader) -> bool {
        use hmac::Mac;
        self.mac(CLIENT_LABEL, binding, nonce, header)
            .verify_slice(&header.auth)
            .is_ok()
    }

    /// The server's proof, over the same inputs under its own label.
    pub fn prove_server(
        &self,
        binding: &Binding,
        nonce: &[u8; 32],
        header: &SessionHeader,
    ) -> [u8; 32] {
        use hmac::Mac;
        self.mac(SERVER_LABEL, binding, nonce, header)
            .finalize()
            .into_bytes()
            .into()
    }

    /// Checks the server's proof, in constant time.
    pub fn verify_server(
        &self,
        binding: &Binding,
        nonce: &[u8; 32],
        header: &SessionHeader,
        proof: &[u8; 32],
    ) -> bool {
        use hmac::Mac;
        self.mac(SERVER_LABEL, binding, nonce, header)
            .verify_slice(proof)
            .is_ok()
    }
}

/// Bytes of a [`SessionHeader`] the proof covers (all but the proof).
const AUTHENTICATED: usize = 24;

/// A fresh nonce from the kernel's random source.
pub fn nonce() -> std::io::Result<[u8; 32]> {
    let mut n = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut n)?;
    Ok(n)
}

pub const REFUSAL_LEN: usize = 200;

#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct SessionReply {
    pub magic: U32,
    /// 0: accepted.
    pub status: U32,
    /// Why not, NUL-padded UTF-8.
    pub message: [u8; REFUSAL_LEN],
    /// The server's proof ([`Secret::prove_server`]); zeros without a secret.
    pub proof: [u8; 32],
}

#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct RequestHeader {
    pub magic: U32,
    pub msg_len: U32,
    pub data_in_len: U64,
    /// Room for returned data (the guest's data-out descriptors).
    pub data_out_cap: U64,
}

impl RequestHeader {
    /// A keepalive: no message, no data. The server answers it with an empty reply.
    pub fn keepalive() -> Self {
        Self {
            magic: REQUEST_MAGIC.into(),
            msg_len: 0.into(),
            data_in_len: 0.into(),
            data_out_cap: 0.into(),
        }
    }

    pub fn is_keepalive(&self) -> bool {
        self.msg_len.get() == 0 && self.data_in_len.get() == 0 && self.data_out_cap.get() == 0
    }
}

#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct ReplyHeader {
    pub magic: U32,
    pub reply_len: U32,
    pub data_out_len: U64,
}

impl SessionHeader {
    pub fn new(p: &SessionParams) -> Self {
        Self {
            magic: SESSION_MAGIC.into(),
            version: FRAME_VERSION.into(),
            _pad: 0.into(),
            gpu: p.gpu.into(),
            sm_count: p.sm_count.unwrap_or(0).into(),
            mem_limit: p.mem_limit.unwrap_or(0).into(),
            auth: [0; 32],
        }
    }

    pub fn params(&self) -> Result<SessionParams, FrameError> {
        if self.magic.get() != SESSION_MAGIC {
            return Err(FrameError::BadMagic(self.magic.get()));
        }
        if self.version.get() != FRAME_VERSION {
            return Err(FrameError::BadVersion(self.version.get()));
        }
        Ok(SessionParams {
            gpu: self.gpu.get(),
            mem_limit: Some(self.mem_limit.get()).filter(|&m| m != 0),
            sm_count: Some(self.sm_count.get()).filter(|&s| s != 0),
        })
    }
}

impl SessionReply {
    pub fn accept(proof: [u8; 32]) -> Self {
        Self {
            magic: SESSION_MAGIC.into(),
            status: 0.into(),
            message: [0; REFUSAL_LEN],
            proof,
        }
    }

    pub fn refuse(why: &str) -> Self {
        let mut message = [0; REFUSAL_LEN];
        let n = why.len().min(REFUSAL_LEN);
        message[..n].copy_from_slice(&why.as_bytes()[..n]);
        Self {
            magic: SESSION_MAGIC.into(),
            status: 1.into(),
            message,
            proof: [0; 32],
        }
    }

    pub fn result(&self) -> Result<(), FrameError> {
        if self.magic.get() != SESSION_MAGIC {
            return Err(FrameError::BadMagic(self.magic.get()));
        }
        if self.status.get() == 0 {
            return Ok(());
        }
        let end = self
            .message
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(REFUSAL_LEN);
        Err(FrameError::Refused(
            String::from_utf8_lossy(&self.message[..end]).into_owned(),
        ))
    }
}

/// A refusal in plain text, for a peer that has not (or could not) set up TLS with us.
pub fn plain_refusal(why: &str) -> Vec<u8> {
    let text = &why.as_bytes()[..why.len().min(REFUSAL_LEN)];
    let mut v = Vec::with_capacity(6 + text.len());
    v.extend_from_slice(&PLAIN_REFUSAL_MAGIC);
    v.extend_from_slice(&(text.len() as u16).to_le_bytes());
    v.extend_from_slice(text);
    v
}

pub fn check(what: &'static str, len: u64, max: u64) -> Result<(), FrameError> {
    if len > max {
        Err(FrameError::TooLarge { what, len, max })
    } else {
        Ok(())
    }
}

/// Reads a fixed header.
pub fn read_header<T: FromBytes + IntoBytes + KnownLayout + Immutable>(
    r: &mut impl Read,
) -> Result<T, FrameError> {
    let mut t = T::new_zeroed();
    r.read_exact(t.as_mut_bytes())?;
    Ok(t)
}

/// Reads exactly `len` bytes into `buf` (its allocation is reused), [`READ_CHUNK`] at a time:
/// however much a frame declares, the buffer holds at most one piece more than has arrived.
pub fn read_into(r: &mut impl Read, buf: &mut Vec<u8>, len: usize) -> Result<(), FrameError> {
    buf.clear();
    while buf.len() < len {
        let start = buf.len();
        let n = (len - start).min(READ_CHUNK);
        buf.resize(start + n, 0);
        r.read_exact(&mut buf[start..])?;
    }
    Ok(())
}

/// Writes the pieces of one frame.
pub fn write_all(w: &mut impl Write, parts: &[&[u8]]) -> Result<(), FrameError> {
    for p in parts {
        w.write_all(p)?;
    }
    w.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_sizes_are_fixed() {
        assert_eq!(size_of::<SessionHeader>(), 24 + 32);
        assert_eq!(size_of::<Challenge>(), 48);
        assert_eq!(size_of::<SessionReply>(), 240);
        assert_eq!(size_of::<RequestHeader>(), 24);
        assert_eq!(size_of::<ReplyHeader>(), 16);
    }

    #[test]
    fn session_params_round_trip_and_refusals_carry_their_reason() {
        let p = SessionParams {
            gpu: 3,
            mem_limit: Some(8 << 30),
            sm_count: None,
        };
        assert_eq!(SessionHeader::new(&p).params().unwrap(), p);
        let mut bad = SessionHeader::new(&p);
        bad.version = 1.into();
        assert!(matches!(bad.params(), Err(FrameError::BadVersion(1))));
        bad.magic = 7.into();
        assert!(matches!(bad.params(), Err(FrameError::BadMagic(7))));
        let r = SessionReply::refuse("no such GPU");
        assert!(matches!(r.result(), Err(FrameError::Refused(m)) if m == "no such GPU"));
        assert!(SessionReply::accept([0; 32]).result().is_ok());
        let plain = plain_refusal("busy");
        assert_eq!(&plain[..4], b"VGTX");
        assert_eq!(&plain[4..], b"\x04\x00busy");
    }

    #[test]
    fn proofs_bind_the_secret_the_tls_session_the_nonce_and_the_slice_asked_for() {
        let secret = Secret::new("pool secret").unwrap();
        let (binding, nonce) = ([5u8; 32], [7u8; 32]);
        let mut h = SessionHeader::new(&SessionParams {
            gpu: 0,
            mem_limit: Some(1 << 30),
            sm_count: Some(33),
        });
        h.auth = secret.prove(&binding, &nonce, &h);
        assert!(secret.verify(&binding, &nonce, &h));
        assert!(
            !Secret::new("other").unwrap().verify(&binding, &nonce, &h),
            "another secret"
        );
        assert!(
            !secret.verify(&binding, &[8u8; 32], &h),
            "a replay under another nonce"
        );
        assert!(
            !secret.verify(&[6u8; 32], &nonce, &h),
            "a proof relayed from another TLS session (a man in the middle)"
        );
        let mut bigger = h;
        bigger.mem_limit = (2u64 << 30).into();
        assert!(!secret.verify(&binding, &nonce, &bigger), "a changed limit");
        // The server's proof: its own label, so a client's proof cannot be reflected.
        let server = secret.prove_server(&binding, &nonce, &h);
        assert!(secret.verify_server(&binding, &nonce, &h, &server));
        assert!(
            !secret.verify_server(&binding, &nonce, &h, &h.auth),
            "a reflected proof"
        );
        assert!(!secret.verify_server(&[6u8; 32], &nonce, &h, &server));
        assert!(
            !Secret::new("other")
                .unwrap()
                .verify_server(&binding, &nonce, &h, &server)
        );
        assert!(Secret::new("").is_none());
        assert_eq!(format!("{secret:?}"), "Secret(..)");
    }

    #[test]
    fn limits_are_checked() {
        assert!(check("message", u64::from(MAX_MESSAGE), u64::from(MAX_MESSAGE)).is_ok());
        assert!(
            check(
                "message",
                u64::from(MAX_MESSAGE) + 1,
                u64::from(MAX_MESSAGE)
            )
            .is_err()
        );
    }

    /// A frame that declares a gibibyte and sends ten bytes costs a piece, not a gibibyte.
    #[test]
    fn declared_lengths_commit_memory_only_as_bytes_arrive() {
        let mut buf = Vec::new();
        let mut r: &[u8] = &[1u8; 10];
        assert!(read_into(&mut r, &mut buf, 1 << 30).is_err());
        assert!(buf.capacity() <= 2 * READ_CHUNK, "{}", buf.capacity());
        let data: Vec<u8> = (0..3 * READ_CHUNK + 5).map(|i| i as u8).collect();
        let mut r = &data[..];
        read_into(&mut r, &mut buf, data.len()).unwrap();
        assert_eq!(buf, data);
    }

    #[test]
    fn tls_failures_get_their_own_names() {
        let wrapped = io::Error::new(io::ErrorKind::InvalidData, rustls::Error::DecryptError);
        assert!(matches!(FrameError::from(wrapped), FrameError::Tampered));
        let alert = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::AlertReceived(rustls::AlertDescription::BadRecordMac),
        );
        assert!(matches!(FrameError::from(alert), FrameError::TamperedSeen));
        let timeout = FrameError::from(io::Error::from(io::ErrorKind::WouldBlock)).timed_out_as(
            "idle timeout: no request came",
            std::time::Duration::from_secs(2),
        );
        assert_eq!(
            timeout.to_string(),
            "idle timeout: no request came within 2s"
        );
        assert!(matches!(
            FrameError::from(io::Error::from(io::ErrorKind::UnexpectedEof))
                .timed_out_as("x", std::time::Duration::from_secs(1)),
            FrameError::Io(_)
        ));
    }
}
