//! The guest kernel driver `/dev/vgpuN` (inside a VM): each chain is one ioctl that returns
//! when the device has answered, so nothing is ever in flight here and there is no wait loop
//! in Rust. Memory the device reaches is ordinary memory, which the driver pins per request.

use std::{io, path::Path};

use super::{MAX_HEADS, Policy, Seg, SharedBuf, Submitted, Transport, TransportError};

#[path = "../../../kmod/rust/kmod_transport.rs"]
#[allow(clippy::all, unsafe_op_in_unsafe_fn)]
mod sys;

/// Calls in a fire-and-forget batch (the driver has no cheap way to tell whether the device
/// is idle).
const BATCH_CALLS: u32 = 16;
/// Largest piece of a copy in one request (the driver's scatter-list budget is about 8 MiB of
/// scattered 4 KiB pages per request).
const MAX_PIECE: usize = 4 << 20;

pub struct KmodTransport {
    dev: sys::KmodTransport,
    /// Number of the next request (requests complete in `submit`).
    next_head: u16,
}

impl KmodTransport {
    /// Opens the device node (e.g. `/dev/vgpu0`).
    pub fn open(path: &Path) -> io::Result<Self> {
        Ok(Self {
            dev: sys::KmodTransport::open(path)?,
            next_head: 0,
        })
    }
}

/// A failed request: the device is gone (`ENODEV`), broken (`EIO`, `EBADMSG`) or timed out
/// (`ETIMEDOUT`, the module's `timeout_ms`), or the request alone was refused.
fn classify(e: io::Error) -> TransportError {
    match e.raw_os_error() {
        Some(libc::EINVAL | libc::E2BIG | libc::EFAULT) => TransportError::Refused(e),
        _ => TransportError::Gone(Box::new(e)),
    }
}

impl Transport for KmodTransport {
    fn policy(&self) -> Policy {
        Policy {
            batch_calls: BATCH_CALLS,
            send_when_idle: false,
            copies_complete_in_request: true,
            max_direct_piece: MAX_PIECE,
        }
    }

    fn alloc(&mut self, len: usize) -> Result<SharedBuf, TransportError> {
        // SAFETY: a fresh anonymous mapping, checked for failure.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len.max(1),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(TransportError::Alloc(Box::new(io::Error::last_os_error())));
        }
        Ok(SharedBuf {
            hva: p.cast(),
            gpa: p as u64,
            len,
        })
    }

    fn free(&mut self, buf: SharedBuf) {
        // SAFETY: `buf` came from the anonymous mapping made in `alloc`, and nothing uses it.
        unsafe { libc::munmap(buf.hva.cast(), buf.len.max(1)) };
    }

    fn translate(&self, p: *const u8, _len: usize) -> Option<u64> {
        Some(p as u64)
    }

    fn has_room(&self, _segs: usize) -> bool {
        true
    }

    unsafe fn submit(
        &mut self,
        segs: &[Seg],
        msg_len: usize,
        resp_cap: usize,
    ) -> Result<Submitted, TransportError> {
        let head = self.next_head;
        self.next_head = (self.next_head + 1) % MAX_HEADS as u16;
        // SAFETY: the caller's contract.
        let len = unsafe { submit(&self.dev, segs, msg_len, resp_cap) }.map_err(classify)?;
        Ok(Submitted {
            head,
            completed: Some(len),
        })
    }

    fn reap(&mut self, _done: &mut dyn FnMut(u16, u32)) {}

    fn wait(&mut self) -> Result<(), TransportError> {
        Err(TransportError::NothingInFlight)
    }

    fn is_gone(&self) -> bool {
        false
    }
}

/// One request: `segs` as the chain would carry them (message, data-in, reply area, data-out,
/// with user addresses in `gpa`). Returns the reply length.
///
/// # Safety
/// Every segment must name memory valid for its length for the whole request.
unsafe fn submit(
    t: &sys::KmodTransport,
    segs: &[Seg],
    msg_len: usize,
    resp_cap: usize,
) -> io::Result<u32> {
    // SAFETY: the caller's contract, for each segment.
    let slice = |s: &Seg| unsafe { std::slice::from_raw_parts(s.gpa as *const u8, s.len as usize) };
    let req = &slice(&segs[0])[..msg_len];
    let rest = &segs[1..];
    let ins: Vec<&[u8]> = rest.iter().filter(|s| !s.writable).map(slice).collect();
    let mut writable = rest.iter().filter(|s| s.writable);
    let mut resp_empty: [u8; 0] = [];
    let resp: &mut [u8] = if resp_cap > 0 {
        let r = writable
            .next()
            .ok_or_else(|| io::Error::other("reply area missing"))?;
        // SAFETY: the reply buffer is ours and `resp_cap` long.
        unsafe { std::slice::from_raw_parts_mut(r.gpa as *mut u8, resp_cap) }
    } else {
        &mut resp_empty
    };
    // SAFETY: data-out buffers are the application's, writable for their lengths.
    let mut outs: Vec<&mut [u8]> = writable
        .map(|s| unsafe { std::slice::from_raw_parts_mut(s.gpa as *mut u8, s.len as usize) })
        .collect();
    if resp_cap == 0 && outs.is_empty() {
        if ins.is_empty() {
            t.submit_nowait(req)?;
        } else {
            // SAFETY: data-in of fire-and-forget requests is our own shared memory, which
            // stays unchanged until the next synchronous request returns.
            unsafe { t.submit_nowait_with_data(req, &ins)? };
        }
        return Ok(0);
    }
    Ok(t.submit(req, resp, &ins, &mut outs)?.resp_len as u32)
}
