//! Turns one descriptor chain into what the executor needs: the message bytes (copied out of
//! guest memory, so the guest cannot change them while they are checked), the data-in and
//! data-out segments (left in place: bulk data is never copied), and the reply area.
//!
//! Everything here comes from the guest and is checked: descriptor order, guest addresses,
//! lengths, and overlaps between what the device writes and anything else in the chain.

use thiserror::Error;
use vgpu_executor::gpu::HostSeg;
use vgpu_protocol::MsgHeader;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// Largest message accepted (calls only; bulk data travels in the data streams).
pub const MAX_MESSAGE: usize = 16 << 20;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ChainError {
    #[error("A device-readable descriptor follows a device-writable one")]
    ReadableAfterWritable,
    #[error("The chain has no device-readable bytes")]
    NoMessage,
    #[error("Descriptor at {addr:#x}+{len:#x} is outside guest memory")]
    BadAddress { addr: u64, len: u32 },
    #[error("Descriptor at {addr:#x}+{len:#x} overlaps another descriptor of the chain")]
    Overlap { addr: u64, len: u32 },
    #[error("Message length {0} exceeds the limit of {MAX_MESSAGE} bytes")]
    TooLong(usize),
}

/// One descriptor as the guest described it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Desc {
    pub addr: u64,
    pub len: u32,
    pub writable: bool,
}

/// A decoded chain. Buffers are reused between chains.
#[derive(Default)]
pub struct ParsedChain {
    pub msg: Vec<u8>,
    pub data_in: Vec<HostSeg>,
    /// Reply area as guest ranges (address, length).
    pub reply_area: Vec<(u64, usize)>,
    pub reply_cap: usize,
    pub data_out: Vec<HostSeg>,
    sorted: Vec<(u64, u64, bool)>,
}

impl ParsedChain {
    /// Parses `descs` against `mem`.
    pub fn parse(&mut self, mem: &GuestMemoryMmap, descs: &[Desc]) -> Result<(), ChainError> {
        self.msg.clear();
        self.data_in.clear();
        self.reply_area.clear();
        self.data_out.clear();
        self.reply_cap = 0;
        check_shape(descs, &mut self.sorted)?;
        let readable: Vec<&Desc> = descs.iter().filter(|d| !d.writable).collect();
        let total_readable: u64 = readable.iter().map(|d| u64::from(d.len)).sum();
        if total_readable == 0 {
            return Err(ChainError::NoMessage);
        }

        // Read the header first to learn the message length, then the message itself.
        let mut head = [0u8; size_of::<MsgHeader>()];
        let head_len = read_stream(mem, &readable, 0, &mut head);
        let field = |o: usize| {
            u32::from_le_bytes([head[o], head[o + 1], head[o + 2], head[o + 3]]) as usize
        };
        // Without our magic nothing in the header is trusted, not even where a reply may go.
        let ours = head_len == head.len() && field(0) as u32 == vgpu_protocol::MAGIC;
        let (declared, resp_cap) = if ours {
            (field(16), field(20))
        } else {
            (head_len, 0)
        };

        // The reply area comes first, so that even a refused chain can be answered.
        let mut pos = 0usize;
        let mut out_ranges = Vec::new();
        for d in descs.iter().filter(|d| d.writable) {
            let len = d.len as usize;
            let in_reply = resp_cap.saturating_sub(pos).min(len);
            if in_reply > 0 {
                self.reply_area.push((d.addr, in_reply));
                self.reply_cap += in_reply;
            }
            if in_reply < len {
                out_ranges.push((d.addr + in_reply as u64, len - in_reply));
            }
            pos += len;
        }
        for d in descs {
            if mem
                .get_slices(GuestAddress(d.addr), d.len as usize)
                .any(|s| s.is_err())
            {
                return Err(ChainError::BadAddress {
                    addr: d.addr,
                    len: d.len,
                });
            }
        }
        if declared > MAX_MESSAGE {
            return Err(ChainError::TooLong(declared));
        }
        let msg_len = declared.min(total_readable as usize).max(head_len);
        self.msg.resize(msg_len, 0);
        read_stream(mem, &readable, 0, &mut self.msg);

        // Readable bytes after the message are the data-in stream.
        let mut pos = 0u64;
        for d in &readable {
            let (start, end) = (pos, pos + u64::from(d.len));
            pos = end;
            let from = (msg_len as u64).max(start);
            if from < end {
                push_segments(
                    mem,
                    d.addr + (from - start),
                    (end - from) as usize,
                    &mut self.data_in,
                )?;
            }
        }
        for (addr, len) in out_ranges {
            push_segments(mem, addr, len, &mut self.data_out)?;
        }
        Ok(())
    }

    /// Copies `reply` into the reply area; returns the bytes written.
    pub fn write_reply(&self, mem: &GuestMemoryMmap, reply: &[u8]) -> usize {
        let mut done = 0;
        for &(addr, len) in &self.reply_area {
            if done == reply.len() {
                break;
            }
            let n = len.min(reply.len() - done);
            if mem
                .write_slice(&reply[done..done + n], GuestAddress(addr))
                .is_err()
            {
                break;
            }
            done += n;
        }
        done
    }
}

/// Checks descriptor order, and that what the device writes overlaps neither another
/// writable descriptor nor the first readable one (the message). A data-out buffer may
/// overlap a data-in buffer: calls run in order, so a stream may read a buffer and then
/// write it back, as `cuMemcpyHtoDAsync` and `cuMemcpyDtoHAsync` of one pinned buffer do.
fn check_shape(descs: &[Desc], sorted: &mut Vec<(u64, u64, bool)>) -> Result<(), ChainError> {
    let mut seen_writable = false;
    sorted.clear();
    for (i, d) in descs.iter().enumerate() {
        if d.writable {
            seen_writable = true;
        } else if seen_writable {
            return Err(ChainError::ReadableAfterWritable);
        }
        let end = d
            .addr
            .checked_add(u64::from(d.len))
            .ok_or(ChainError::BadAddress {
                addr: d.addr,
                len: d.len,
            })?;
        if d.len > 0 && (d.writable || i == 0) {
            sorted.push((d.addr, end, d.writable));
        }
    }
    sorted.sort_unstable();
    for pair in sorted.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        if b.0 < a.1 {
            return Err(ChainError::Overlap {
                addr: b.0,
                len: (b.1 - b.0) as u32,
            });
        }
    }
    Ok(())
}

/// Copies the first `out.len()` bytes of the readable stream; returns how many there were.
fn read_stream(mem: &GuestMemoryMmap, readable: &[&Desc], mut skip: u64, out: &mut [u8]) -> usize {
    let mut done = 0;
    for d in readable {
        if done == out.len() {
            break;
        }
        let len = u64::from(d.len);
        if skip >= len {
            skip -= len;
            continue;
        }
        let n = ((len - skip) as usize).min(out.len() - done);
        if mem
            .read_slice(&mut out[done..done + n], GuestAddress(d.addr + skip))
            .is_err()
        {
            break;
        }
        done += n;
        skip = 0;
    }
    done
}

/// Appends the host segments of guest range `[addr, addr+len)` (split at region borders).
fn push_segments(
    mem: &GuestMemoryMmap,
    addr: u64,
    len: usize,
    out: &mut Vec<HostSeg>,
) -> Result<(), ChainError> {
    let bad = || ChainError::BadAddress {
        addr,
        len: len as u32,
    };
    for slice in mem.get_slices(GuestAddress(addr), len) {
        let slice = slice.map_err(|_| bad())?;
        out.push(HostSeg {
            ptr: slice.ptr_guard_mut().as_ptr(),
            len: slice.len(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use vgpu_protocol::{Encoder, calls, flags};
    use vm_memory::GuestAddress;

    use super::*;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    fn r(addr: u64, len: u32) -> Desc {
        Desc {
            addr,
            len,
            writable: false,
        }
    }

    fn w(addr: u64, len: u32) -> Desc {
        Desc {
            addr,
            len,
            writable: true,
        }
    }

    fn write_message(mem: &GuestMemoryMmap, at: u64, resp_cap: u32) -> usize {
        let mut buf = vec![0u8; 256];
        let mut e = Encoder::new(&mut buf).unwrap();
        e.push(1, 0, &calls::DeviceArg::default(), &[]).unwrap();
        let n = e.finish(flags::WANT_REPLY, 0, resp_cap, 1);
        mem.write_slice(&buf[..n], GuestAddress(at)).unwrap();
        n
    }

    #[test]
    fn message_data_and_reply_are_split_by_lengths_not_descriptors() {
        let m = mem();
        let n = write_message(&m, 0x1000, 100) as u32;
        let mut p = ParsedChain::default();
        // Message split over two descriptors, the second also holding 64 data-in bytes.
        p.parse(
            &m,
            &[
                r(0x1000, 10),
                r(0x1000 + 10, n - 10 + 64),
                w(0x8000, 60),
                w(0x9000, 4096),
            ],
        )
        .unwrap();
        assert_eq!(p.msg.len(), n as usize);
        assert_eq!(p.data_in.iter().map(|s| s.len).sum::<usize>(), 64);
        assert_eq!(p.reply_cap, 100);
        assert_eq!(p.reply_area, vec![(0x8000, 60), (0x9000, 40)]);
        assert_eq!(p.data_out.iter().map(|s| s.len).sum::<usize>(), 4096 - 40);
    }

    #[test]
    fn out_of_range_addresses_are_refused() {
        let m = mem();
        let mut p = ParsedChain::default();
        write_message(&m, 0, 64);
        assert!(matches!(
            p.parse(&m, &[r(0, 48), w(2 << 20, 64)]),
            Err(ChainError::BadAddress { .. })
        ));
        // A length running past the end of the region.
        assert!(matches!(
            p.parse(&m, &[r(0, 48), w((1 << 20) - 8, 64)]),
            Err(ChainError::BadAddress { .. })
        ));
        assert!(matches!(
            p.parse(&m, &[r(u64::MAX - 4, 48)]),
            Err(ChainError::BadAddress { .. })
        ));
    }

    #[test]
    fn writable_overlaps_and_bad_order_are_refused() {
        let m = mem();
        write_message(&m, 0, 64);
        let mut p = ParsedChain::default();
        assert!(matches!(
            p.parse(&m, &[r(0, 48), w(32, 64)]),
            Err(ChainError::Overlap { .. })
        ));
        assert_eq!(
            p.parse(&m, &[w(0x4000, 64), r(0, 48)]),
            Err(ChainError::ReadableAfterWritable)
        );
        assert_eq!(p.parse(&m, &[w(0x4000, 64)]), Err(ChainError::NoMessage));
        assert!(matches!(
            p.parse(&m, &[r(0, 48), w(0x4000, 64), w(0x4010, 64)]),
            Err(ChainError::Overlap { .. })
        ));
        // Two readable descriptors may overlap: the device only reads them. Data-out may
        // overlap data-in (a buffer copied in and later copied back).
        p.parse(&m, &[r(0, 48), r(0, 48), w(0x4000, 64)]).unwrap();
        p.parse(&m, &[r(0, 48), r(0x8000, 64), w(0x8000, 64)])
            .unwrap();
    }

    #[test]
    fn oversized_and_short_messages_do_not_panic() {
        let m = mem();
        let mut hdr = [0u8; 32];
        hdr[..4].copy_from_slice(&vgpu_protocol::MAGIC.to_le_bytes());
        hdr[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        m.write_slice(&hdr, GuestAddress(0)).unwrap();
        let mut p = ParsedChain::default();
        assert!(matches!(
            p.parse(&m, &[r(0, 32)]),
            Err(ChainError::TooLong(_))
        ));
        // A message shorter than a header is handed on as is; the decoder refuses it.
        p.parse(&m, &[r(0, 5)]).unwrap();
        assert_eq!(p.msg.len(), 5);
    }
}
