//! Encoding and decoding of messages and replies, in place, without allocating.
//!
//! The decoder is the first thing that touches bytes from a guest, so it trusts nothing:
//! every length is checked against the buffer before a slice is taken.

use thiserror::Error;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::{CallHeader, MAGIC, MsgHeader, PROTOCOL_MAJOR, ReplyHeader, RespHeader};

/// Why a message or reply could not be decoded.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("Message of {0} bytes is shorter than its header")]
    Truncated(usize),
    #[error("Bad magic {0:#010x}")]
    BadMagic(u32),
    #[error("Protocol version {got} is not the supported version {PROTOCOL_MAJOR}")]
    BadVersion { got: u16 },
    #[error("Declared length {declared} does not fit the {available} bytes received")]
    BadLength { declared: usize, available: usize },
    #[error("Call record {index} runs past the end of the message")]
    CallOverrun { index: usize },
    #[error("Body of opcode {opcode:#06x} is {got} bytes, shorter than the {want} it needs")]
    ShortBody {
        opcode: u16,
        got: usize,
        want: usize,
    },
    #[error("Message declares {declared} calls but holds {found}")]
    CallCount { declared: usize, found: usize },
}

/// Why a call could not be encoded.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum EncodeError {
    #[error("Buffer full: need {need} bytes, {left} left")]
    Full { need: usize, left: usize },
}

const fn pad8(n: usize) -> usize {
    (n + 7) & !7
}

/// Writes call records after a message header into a caller-owned buffer.
pub struct Encoder<'a> {
    buf: &'a mut [u8],
    pos: usize,
    ncalls: u32,
}

impl<'a> Encoder<'a> {
    /// Starts a message in `buf`; the header is written by [`Encoder::finish`].
    pub fn new(buf: &'a mut [u8]) -> Result<Self, EncodeError> {
        let need = size_of::<MsgHeader>();
        if buf.len() < need {
            return Err(EncodeError::Full {
                need,
                left: buf.len(),
            });
        }
        Ok(Self {
            buf,
            pos: need,
            ncalls: 0,
        })
    }

    /// Resumes a message of which `pos` bytes and `ncalls` calls are already written.
    pub fn resume(buf: &'a mut [u8], pos: usize, ncalls: u32) -> Self {
        debug_assert!(pos >= size_of::<MsgHeader>() && pos <= buf.len());
        Self { buf, pos, ncalls }
    }

    pub fn len(&self) -> usize {
        self.pos
    }

    pub fn is_empty(&self) -> bool {
        self.ncalls == 0
    }

    pub fn ncalls(&self) -> u32 {
        self.ncalls
    }

    /// Bytes a call with this body and tail takes.
    pub const fn record_len(body: usize, tail: usize) -> usize {
        size_of::<CallHeader>() + pad8(body + tail)
    }

    /// Appends one call: fixed body `body` followed by `tail`.
    pub fn push<T: IntoBytes + Immutable>(
        &mut self,
        opcode: u16,
        flags: u16,
        body: &T,
        tail: &[u8],
    ) -> Result<(), EncodeError> {
        self.push_with(opcode, flags, body, tail.len(), |out| {
            out.copy_from_slice(tail)
        })
    }

    /// Appends one call whose `tail_len`-byte tail is written in place by `fill` (so a
    /// caller need not build the tail in a buffer of its own first).
    pub fn push_with<T: IntoBytes + Immutable>(
        &mut self,
        opcode: u16,
        flags: u16,
        body: &T,
        tail_len: usize,
        fill: impl FnOnce(&mut [u8]),
    ) -> Result<(), EncodeError> {
        let body = body.as_bytes();
        let len = body.len() + tail_len;
        let need = Self::record_len(body.len(), tail_len);
        let left = self.buf.len() - self.pos;
        if need > left || len > u32::MAX as usize {
            return Err(EncodeError::Full { need, left });
        }
        let hdr = CallHeader {
            opcode: opcode.into(),
            flags: flags.into(),
            len: (len as u32).into(),
        };
        let out = &mut self.buf[self.pos..self.pos + need];
        let (h, rest) = out.split_at_mut(size_of::<CallHeader>());
        h.copy_from_slice(hdr.as_bytes());
        rest[..body.len()].copy_from_slice(body);
        rest[body.len()..].fill(0);
        fill(&mut rest[body.len()..len]);
        self.pos += need;
        self.ncalls += 1;
        Ok(())
    }

    /// Writes the header and returns the message length.
    pub fn finish(self, flags: u16, client: u32, resp_cap: u32, seq: u64) -> usize {
        let hdr = MsgHeader {
            magic: MAGIC.into(),
            version: PROTOCOL_MAJOR.into(),
            flags: flags.into(),
            client: client.into(),
            ncalls: self.ncalls.into(),
            req_len: (self.pos as u32).into(),
            resp_cap: resp_cap.into(),
            seq: seq.into(),
        };
        self.buf[..size_of::<MsgHeader>()].copy_from_slice(hdr.as_bytes());
        self.pos
    }
}

/// One decoded call record.
#[derive(Clone, Copy, Debug)]
pub struct Call<'a> {
    pub opcode: u16,
    pub flags: u16,
    pub body: &'a [u8],
}

/// A record's fixed body as `T`, and the tail after it.
fn parse_body<T: FromBytes + KnownLayout + Immutable>(
    opcode: u16,
    body: &[u8],
) -> Result<(&T, &[u8]), DecodeError> {
    T::ref_from_prefix(body).map_err(|_| DecodeError::ShortBody {
        opcode,
        got: body.len(),
        want: size_of::<T>(),
    })
}

/// Splits a record's body of `len` bytes, padded to 8, from what follows it; `None` when the
/// padded body runs past the end.
fn split_padded(after: &[u8], len: usize) -> Option<(&[u8], &[u8])> {
    let padded = pad8(len);
    (padded <= after.len() && len <= padded).then(|| (&after[..len], &after[padded..]))
}

impl<'a> Call<'a> {
    /// The fixed body as `T`, and the tail after it.
    pub fn parse<T: FromBytes + KnownLayout + Immutable>(
        &self,
    ) -> Result<(&'a T, &'a [u8]), DecodeError> {
        parse_body(self.opcode, self.body)
    }
}

/// Iterator over the call records of a message.
pub struct CallIter<'a> {
    rest: &'a [u8],
    index: usize,
    remaining: usize,
}

impl<'a> Iterator for CallIter<'a> {
    type Item = Result<Call<'a>, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 {
            return if self.rest.is_empty() {
                None
            } else {
                self.rest = &[];
                Some(Err(DecodeError::CallCount {
                    declared: self.index,
                    found: self.index + 1,
                }))
            };
        }
        let index = self.index;
        let Ok((hdr, after)) = CallHeader::read_from_prefix(self.rest) else {
            self.remaining = 0;
            self.rest = &[];
            return Some(Err(DecodeError::CallCount {
                declared: index + self.remaining,
                found: index,
            }));
        };
        let Some((body, rest)) = split_padded(after, hdr.len.get() as usize) else {
            self.remaining = 0;
            self.rest = &[];
            return Some(Err(DecodeError::CallOverrun { index }));
        };
        self.rest = rest;
        self.index += 1;
        self.remaining -= 1;
        Some(Ok(Call {
            opcode: hdr.opcode.get(),
            flags: hdr.flags.get(),
            body,
        }))
    }
}

/// Checks a message's header and returns it with an iterator over its calls.
///
/// `bytes` may be longer than the message (the rest is the data-in stream on inline
/// transports); the header's `req_len` decides where the message ends.
pub fn parse_request(bytes: &[u8]) -> Result<(MsgHeader, CallIter<'_>), DecodeError> {
    let (hdr, _) =
        MsgHeader::read_from_prefix(bytes).map_err(|_| DecodeError::Truncated(bytes.len()))?;
    if hdr.magic.get() != MAGIC {
        return Err(DecodeError::BadMagic(hdr.magic.get()));
    }
    if hdr.version.get() != PROTOCOL_MAJOR {
        return Err(DecodeError::BadVersion {
            got: hdr.version.get(),
        });
    }
    let req_len = hdr.req_len.get() as usize;
    if req_len < size_of::<MsgHeader>() || req_len > bytes.len() {
        return Err(DecodeError::BadLength {
            declared: req_len,
            available: bytes.len(),
        });
    }
    Ok((
        hdr,
        CallIter {
            rest: &bytes[size_of::<MsgHeader>()..req_len],
            index: 0,
            remaining: hdr.ncalls.get() as usize,
        },
    ))
}

/// Writes a reply into a caller-owned, reusable buffer.
pub struct ReplyWriter<'a> {
    buf: &'a mut Vec<u8>,
    nreplies: u32,
    /// Where the last record starts.
    last: Option<usize>,
}

impl<'a> ReplyWriter<'a> {
    /// Clears `buf` and starts a reply in it.
    pub fn new(buf: &'a mut Vec<u8>) -> Self {
        buf.clear();
        buf.resize(size_of::<RespHeader>(), 0);
        Self {
            buf,
            nreplies: 0,
            last: None,
        }
    }

    /// Appends one reply record with a fixed body and a tail.
    pub fn push<T: IntoBytes + Immutable>(
        &mut self,
        opcode: u16,
        result: u32,
        body: &T,
        tail: &[u8],
    ) {
        let body = body.as_bytes();
        let len = body.len() + tail.len();
        let hdr = ReplyHeader {
            opcode: opcode.into(),
            flags: 0.into(),
            result: result.into(),
            len: (len as u32).into(),
            _pad: 0.into(),
        };
        self.last = Some(self.buf.len());
        self.buf.extend_from_slice(hdr.as_bytes());
        self.buf.extend_from_slice(body);
        self.buf.extend_from_slice(tail);
        self.buf.resize(self.buf.len() + (pad8(len) - len), 0);
        self.nreplies += 1;
    }

    /// Appends a reply record with no body.
    pub fn push_status(&mut self, opcode: u16, result: u32) {
        self.push(opcode, result, &(), &[]);
    }

    /// Mutable access to the reply so far, for callers that build a tail in place.
    pub fn buffer(&mut self) -> &mut Vec<u8> {
        self.buf
    }

    /// Counts a record, starting at `start`, that the caller appended through
    /// [`ReplyWriter::buffer`].
    pub fn count_record(&mut self, start: usize) {
        self.last = Some(start);
        self.nreplies += 1;
    }

    /// Sets `flags` ([`crate::reply_flags`]) on the last record so far.
    pub fn flag_last(&mut self, flags: u16) {
        let Some(at) = self.last else { return };
        let Ok((mut hdr, _)) = ReplyHeader::read_from_prefix(&self.buf[at..]) else {
            return;
        };
        hdr.flags = (hdr.flags.get() | flags).into();
        self.buf[at..at + size_of::<ReplyHeader>()].copy_from_slice(hdr.as_bytes());
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nreplies == 0
    }

    /// Writes the header; returns the reply's length.
    pub fn finish(self, seq: u64, data_out_len: u32) -> usize {
        let hdr = RespHeader {
            magic: MAGIC.into(),
            nreplies: self.nreplies.into(),
            len: (self.buf.len() as u32).into(),
            data_out_len: data_out_len.into(),
            seq: seq.into(),
        };
        self.buf[..size_of::<RespHeader>()].copy_from_slice(hdr.as_bytes());
        self.buf.len()
    }
}

/// One decoded reply record.
#[derive(Clone, Copy, Debug)]
pub struct Reply<'a> {
    pub opcode: u16,
    /// [`crate::reply_flags`].
    pub flags: u16,
    pub result: u32,
    pub body: &'a [u8],
}

impl<'a> Reply<'a> {
    /// The fixed body as `T`, and the tail after it.
    pub fn parse<T: FromBytes + KnownLayout + Immutable>(
        &self,
    ) -> Result<(&'a T, &'a [u8]), DecodeError> {
        parse_body(self.opcode, self.body)
    }
}

/// Iterator over reply records.
pub struct ReplyIter<'a> {
    rest: &'a [u8],
    remaining: usize,
    index: usize,
}

impl<'a> Iterator for ReplyIter<'a> {
    type Item = Result<Reply<'a>, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 {
            return None;
        }
        let index = self.index;
        self.remaining -= 1;
        self.index += 1;
        let Ok((hdr, after)) = ReplyHeader::read_from_prefix(self.rest) else {
            self.remaining = 0;
            return Some(Err(DecodeError::CallOverrun { index }));
        };
        let Some((body, rest)) = split_padded(after, hdr.len.get() as usize) else {
            self.remaining = 0;
            return Some(Err(DecodeError::CallOverrun { index }));
        };
        self.rest = rest;
        Some(Ok(Reply {
            opcode: hdr.opcode.get(),
            flags: hdr.flags.get(),
            result: hdr.result.get(),
            body,
        }))
    }
}

/// Checks a reply's header and returns it with an iterator over its records.
pub fn parse_response(bytes: &[u8]) -> Result<(RespHeader, ReplyIter<'_>), DecodeError> {
    let (hdr, _) =
        RespHeader::read_from_prefix(bytes).map_err(|_| DecodeError::Truncated(bytes.len()))?;
    if hdr.magic.get() != MAGIC {
        return Err(DecodeError::BadMagic(hdr.magic.get()));
    }
    let len = hdr.len.get() as usize;
    if len < size_of::<RespHeader>() || len > bytes.len() {
        return Err(DecodeError::BadLength {
            declared: len,
            available: bytes.len(),
        });
    }
    Ok((
        hdr,
        ReplyIter {
            rest: &bytes[size_of::<RespHeader>()..len],
            remaining: hdr.nreplies.get() as usize,
            index: 0,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        Opcode,
        calls::{HandleReply, MemAlloc},
        flags,
    };

    fn message(calls: &[(Opcode, MemAlloc, &[u8])]) -> Vec<u8> {
        let mut buf = vec![0u8; 4096];
        let mut enc = Encoder::new(&mut buf).unwrap();
        for (op, body, tail) in calls {
            enc.push(*op as u16, 0, body, tail).unwrap();
        }
        let n = enc.finish(flags::WANT_REPLY, 7, 512, 42);
        buf.truncate(n);
        buf
    }

    #[test]
    fn request_round_trip() {
        let body = MemAlloc {
            ctx: 5.into(),
            size: 1024.into(),
        };
        let msg = message(&[
            (Opcode::MemAlloc, body, b""),
            (Opcode::MemAlloc, body, b"xyz"),
        ]);
        let (hdr, calls) = parse_request(&msg).unwrap();
        assert_eq!(hdr.client.get(), 7);
        assert_eq!(hdr.seq.get(), 42);
        let calls: Vec<_> = calls.collect::<Result<_, _>>().unwrap();
        assert_eq!(calls.len(), 2);
        let (b, tail) = calls[1].parse::<MemAlloc>().unwrap();
        assert_eq!(b.size.get(), 1024);
        assert_eq!(tail, b"xyz");
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let body = MemAlloc::default();
        let msg = message(&[
            (Opcode::MemAlloc, body, b"tail"),
            (Opcode::MemAlloc, body, b""),
        ]);
        for cut in 0..msg.len() {
            let mut m = msg[..cut].to_vec();
            if cut >= 20 {
                // Keep req_len consistent with the cut so the call records are what breaks.
                m[16..20].copy_from_slice(&(cut as u32).to_le_bytes());
            }
            let outcome =
                parse_request(&m).and_then(|(_, calls)| calls.collect::<Result<Vec<_>, _>>());
            assert!(outcome.is_err(), "cut at {cut} decoded");
        }
    }

    #[test]
    fn bad_magic_version_and_length_are_refused() {
        let msg = message(&[]);
        let mut m = msg.clone();
        m[0] = b'X';
        assert!(matches!(parse_request(&m), Err(DecodeError::BadMagic(_))));
        let mut m = msg.clone();
        m[4..6].copy_from_slice(&9u16.to_le_bytes());
        assert_eq!(
            parse_request(&m).err(),
            Some(DecodeError::BadVersion { got: 9 })
        );
        let mut m = msg;
        m[16..20].copy_from_slice(&4000u32.to_le_bytes());
        assert!(matches!(
            parse_request(&m),
            Err(DecodeError::BadLength { .. })
        ));
    }

    #[test]
    fn short_body_is_refused() {
        let mut buf = vec![0u8; 256];
        let mut enc = Encoder::new(&mut buf).unwrap();
        enc.push(Opcode::MemAlloc as u16, 0, &0u32, &[]).unwrap();
        let n = enc.finish(0, 0, 0, 0);
        let (_, mut calls) = parse_request(&buf[..n]).unwrap();
        let call = calls.next().unwrap().unwrap();
        assert!(matches!(
            call.parse::<MemAlloc>(),
            Err(DecodeError::ShortBody { .. })
        ));
    }

    #[test]
    fn encoder_reports_full() {
        let mut buf = vec![0u8; 40];
        let mut enc = Encoder::new(&mut buf).unwrap();
        let err = enc
            .push(Opcode::MemAlloc as u16, 0, &MemAlloc::default(), &[])
            .unwrap_err();
        assert!(matches!(err, EncodeError::Full { .. }));
    }

    #[test]
    fn reply_round_trip() {
        let mut buf = Vec::new();
        let mut w = ReplyWriter::new(&mut buf);
        w.push(
            Opcode::MemAlloc as u16,
            0,
            &HandleReply { handle: 99.into() },
            &[],
        );
        w.push_status(Opcode::MemFree as u16, 2);
        let n = w.finish(5, 0);
        let (hdr, replies) = parse_response(&buf[..n]).unwrap();
        assert_eq!(hdr.seq.get(), 5);
        let r: Vec<_> = replies.collect::<Result<_, _>>().unwrap();
        assert_eq!(r[0].parse::<HandleReply>().unwrap().0.handle.get(), 99);
        assert_eq!(r[1].result, 2);
    }
}
