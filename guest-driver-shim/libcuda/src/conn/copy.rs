//! Copies between host and device memory: in place where the transport can name the host
//! bytes (pinned memory over virtio-user; any memory through the kernel driver, which pins
//! it), else through the connection's two staging buffers, pipelined so that one chunk is
//! copied by the CPU while the previous one is on its way to the GPU.

use vgpu_protocol::{CuResult, DataRef, Opcode, call_flags, calls};

use super::{Bulk, Inner, STAGING_BYTES};

/// Which way a copy between host and device memory goes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    HtoD,
    DtoH,
}

impl Dir {
    fn op(self) -> Opcode {
        match self {
            Dir::HtoD => Opcode::MemcpyHtoD,
            Dir::DtoH => Opcode::MemcpyDtoH,
        }
    }
}

/// Call flags of a copy whose descriptors name the application's memory directly. When the
/// transport releases that memory as the request completes (the kernel driver unpins it), an
/// asynchronous copy must finish on its stream before the request completes.
fn direct_flags(is_async: bool, completes_in_request: bool) -> u16 {
    match (is_async, completes_in_request) {
        (true, true) => call_flags::ASYNC | call_flags::WAIT_STREAM,
        (true, false) => call_flags::ASYNC,
        (false, _) => 0,
    }
}

/// Call flags of a copy staged through our buffers, which are reused as soon as it completes.
fn staged_flags(is_async: bool) -> u16 {
    if is_async {
        call_flags::ASYNC | call_flags::WAIT_STREAM
    } else {
        0
    }
}

impl Inner {
    /// Copies `n` bytes from host memory `src` to device address `dst`: on `stream`
    /// (asynchronously) or, with `None`, synchronously.
    ///
    /// # Safety
    /// `src` must be readable for `n` bytes, and stay unchanged until the copy has read it
    /// (for an asynchronous copy from pinned memory, until the stream reaches it).
    pub(super) unsafe fn copy_htod(
        &mut self,
        ctx: u64,
        dst: u64,
        src: *const u8,
        n: usize,
        stream: Option<u64>,
    ) -> Result<(), CuResult> {
        if let Some(gpa) = self.link.translate(src, n) {
            return self.direct_copy(Dir::HtoD, ctx, dst, gpa, n, stream);
        }
        // Ordinary memory: two staging buffers, one filled while the other is in flight.
        let flags = staged_flags(stream.is_some());
        let mut pending: [Option<u16>; 2] = [None, None];
        let mut result = Ok(());
        for (i, off) in (0..n).step_by(STAGING_BYTES).enumerate() {
            let slot = i % 2;
            if let Some(h) = pending[slot].take() {
                result = result.and(self.wait_staged(h, slot, Opcode::MemcpyHtoD));
            }
            let piece = (n - off).min(STAGING_BYTES);
            let buf = self.staging[slot];
            // SAFETY: `src` is readable for `n` bytes (caller's contract); the staging buffer
            // is ours and no chain in flight uses it.
            unsafe { std::ptr::copy_nonoverlapping(src.add(off), buf.hva, piece) };
            let sent = self
                .append_copy(
                    Dir::HtoD,
                    flags,
                    ctx,
                    stream.unwrap_or(0),
                    dst + off as u64,
                    buf.gpa,
                    piece,
                )
                .and_then(|()| self.flush_staged(slot));
            match sent {
                Ok(h) => pending[slot] = Some(h),
                Err(e) => {
                    // The pieces in flight still read the staging buffers: wait for them
                    // below before they can be reused.
                    result = result.and(Err(e));
                    break;
                }
            }
        }
        for (slot, h) in pending.iter().enumerate() {
            if let Some(h) = h {
                result = result.and(self.wait_staged(*h, slot, Opcode::MemcpyHtoD));
            }
        }
        result
    }

    /// Copies `n` bytes from device address `src` to host memory `dst`: on `stream`
    /// (asynchronously) or, with `None`, synchronously.
    ///
    /// # Safety
    /// `dst` must be writable for `n` bytes until the copy has written them (for an
    /// asynchronous copy into pinned memory, until the stream reaches it).
    pub(super) unsafe fn copy_dtoh(
        &mut self,
        ctx: u64,
        dst: *mut u8,
        src: u64,
        n: usize,
        stream: Option<u64>,
    ) -> Result<(), CuResult> {
        if let Some(gpa) = self.link.translate(dst, n) {
            return self.direct_copy(Dir::DtoH, ctx, src, gpa, n, stream);
        }
        let flags = staged_flags(stream.is_some());
        let chunks: Vec<usize> = (0..n).step_by(STAGING_BYTES).collect();
        let mut pending: [Option<(u16, usize)>; 2] = [None, None];
        let mut result = Ok(());
        let drain = |g: &mut Inner,
                     slot: usize,
                     pending: &mut [Option<(u16, usize)>; 2]|
         -> Result<(), CuResult> {
            if let Some((h, off)) = pending[slot].take() {
                g.wait_staged(h, slot, Opcode::MemcpyDtoH)?;
                let piece = (n - off).min(STAGING_BYTES);
                // SAFETY: `dst` is writable for `n` bytes (caller's contract); the staging
                // buffer was filled by the completed chain.
                unsafe { std::ptr::copy_nonoverlapping(g.staging[slot].hva, dst.add(off), piece) };
            }
            Ok(())
        };
        for (i, &off) in chunks.iter().enumerate() {
            let slot = i % 2;
            result = result.and(drain(self, slot, &mut pending));
            let piece = (n - off).min(STAGING_BYTES);
            let buf = self.staging[slot];
            let sent = self
                .append_copy(
                    Dir::DtoH,
                    flags,
                    ctx,
                    stream.unwrap_or(0),
                    src + off as u64,
                    buf.gpa,
                    piece,
                )
                .and_then(|()| self.flush_staged(slot));
            match sent {
                Ok(h) => pending[slot] = Some((h, off)),
                Err(e) => {
                    // The pieces in flight still write the staging buffers: wait for them below.
                    result = result.and(Err(e));
                    break;
                }
            }
        }
        let first = chunks.len() % 2;
        result = result.and(drain(self, first, &mut pending));
        result.and(drain(self, 1 - first, &mut pending))
    }

    /// Appends one copy of `len` bytes between device address `dev` and the host bytes the
    /// device sees at `gpa`.
    #[allow(clippy::too_many_arguments)]
    fn append_copy(
        &mut self,
        dir: Dir,
        flags: u16,
        ctx: u64,
        stream: u64,
        dev: u64,
        gpa: u64,
        len: usize,
    ) -> Result<(), CuResult> {
        let bulk = Some(Bulk {
            gpa,
            len: len as u64,
        });
        let (ctx, stream, dev) = (ctx.into(), stream.into(), dev.into());
        match dir {
            Dir::HtoD => self.append_bulk(
                Opcode::MemcpyHtoD,
                flags,
                |in_off, _| calls::MemcpyHtoD {
                    ctx,
                    stream,
                    dst: dev,
                    data: DataRef::new(in_off, len as u64),
                },
                bulk,
                None,
            ),
            Dir::DtoH => self.append_bulk(
                Opcode::MemcpyDtoH,
                flags,
                |_, out_off| calls::MemcpyDtoH {
                    ctx,
                    stream,
                    src: dev,
                    data: DataRef::new(out_off, len as u64),
                },
                None,
                bulk,
            ),
        }
    }

    /// A copy whose descriptors name the host memory directly (`gpa`, from the transport's
    /// `translate`).
    fn direct_copy(
        &mut self,
        dir: Dir,
        ctx: u64,
        dev: u64,
        gpa: u64,
        n: usize,
        stream: Option<u64>,
    ) -> Result<(), CuResult> {
        let whole = self.policy.copies_complete_in_request;
        let flags = direct_flags(stream.is_some(), whole);
        let max_piece = self.policy.max_direct_piece;
        let mut off = 0;
        while off < n {
            let piece = (n - off).min(max_piece);
            self.append_copy(
                dir,
                flags,
                ctx,
                stream.unwrap_or(0),
                dev + off as u64,
                gpa + off as u64,
                piece,
            )?;
            if whole {
                self.send_and_wait(dir.op())?;
            }
            off += piece;
        }
        if whole {
            Ok(())
        } else if stream.is_some() {
            self.kick_if_idle()
        } else {
            self.send_and_wait(dir.op())
        }
    }
}
