//! virtio-user: this process drives the virtqueue itself over the daemon's vhost-user socket
//! (no VM). Shared memory is memfd regions announced to the daemon; liveness is the socket.

use std::{path::Path, time::Duration};

use vgpu_virtio_user::{Options, VirtioUser};

use super::{MAX_HEADS, Policy, Seg, SharedBuf, Submitted, Transport, TransportError};

/// Calls in a batch before it is sent even while the device is busy.
const BATCH_CALLS: u32 = 128;
/// Largest piece of one descriptor.
const MAX_PIECE: usize = 1 << 30;

pub struct VirtioUserTransport {
    vu: Box<VirtioUser>,
}

impl VirtioUserTransport {
    /// Connects to the daemon's socket, retrying for `wait` while it does not accept yet.
    pub fn connect(path: &Path, wait: Duration) -> Result<Self, vgpu_virtio_user::Error> {
        let options = Options {
            queue_size: MAX_HEADS as u16,
            ..Options::default()
        };
        Ok(Self {
            vu: Box::new(VirtioUser::connect(path, options, wait)?),
        })
    }
}

fn gone(e: vgpu_virtio_user::Error) -> TransportError {
    TransportError::Gone(Box::new(e))
}

impl Transport for VirtioUserTransport {
    fn policy(&self) -> Policy {
        Policy {
            batch_calls: BATCH_CALLS,
            send_when_idle: true,
            copies_complete_in_request: false,
            max_direct_piece: MAX_PIECE,
        }
    }

    fn alloc(&mut self, len: usize) -> Result<SharedBuf, TransportError> {
        // `alloc` waits for the daemon to map a new region before it returns.
        self.vu
            .alloc(len, 4096)
            .map_err(|e| TransportError::Alloc(Box::new(e)))
    }

    fn free(&mut self, buf: SharedBuf) {
        self.vu.free(buf);
    }

    fn translate(&self, p: *const u8, len: usize) -> Option<u64> {
        self.vu.translate(p, len)
    }

    fn has_room(&self, segs: usize) -> bool {
        self.vu.free_descriptors() >= segs
    }

    unsafe fn submit(
        &mut self,
        segs: &[Seg],
        _msg_len: usize,
        _resp_cap: usize,
    ) -> Result<Submitted, TransportError> {
        // The descriptors carry the message's and the reply area's lengths.
        let head = self.vu.submit(segs).map_err(gone)?;
        Ok(Submitted {
            head,
            completed: None,
        })
    }

    fn reap(&mut self, done: &mut dyn FnMut(u16, u32)) {
        self.vu.reap(done);
    }

    fn wait(&mut self) -> Result<(), TransportError> {
        self.vu.wait_for_used(Duration::MAX).map_err(gone)
    }

    fn is_gone(&self) -> bool {
        self.vu.is_disconnected()
    }
}
