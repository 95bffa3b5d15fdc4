//! A virtio driver that lives in a process instead of a guest kernel ("virtio-user").
//!
//! The process connects to a vhost-user device (our `vhost-gpu`) itself, offers memfd memory
//! as its "guest memory", and drives a split virtqueue exactly as a guest driver would. The
//! device side cannot tell the difference, which is the point: containers, tests and
//! benchmarks exercise the very code path a VM uses, without QEMU.
//!
//! Memory handed out by [`VirtioUser::alloc`] is shared with the device, so data placed there
//! is used in place (and, on a real GPU, DMA'd straight from it).

mod alloc;
mod ring;
mod shm;

use std::{
    os::fd::{AsFd, AsRawFd},
    path::Path,
    time::{Duration, Instant},
};

use log::debug;
use thiserror::Error;
use vhost::{
    VhostBackend, VhostUserMemoryRegionInfo, VringConfigData,
    vhost_user::{
        Frontend, VhostUserFrontend,
        message::{VhostUserHeaderFlag, VhostUserProtocolFeatures},
    },
};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

pub use crate::ring::Seg;
use crate::{alloc::Arena, ring::SplitRing, shm::Region};

#[derive(Debug, Error)]
pub enum Error {
    #[error("Could not connect to the vGPU device at {path}: {source}")]
    Connect { path: String, source: vhost::Error },
    #[error("vhost-user negotiation failed at {step}: {source}")]
    Negotiate {
        step: &'static str,
        source: vhost::Error,
    },
    #[error("Shared memory: {0}")]
    Memory(#[from] std::io::Error),
    #[error("The device offers no usable queue")]
    NoQueue,
    #[error("Out of shared memory for a {0}-byte buffer")]
    OutOfSharedMemory(usize),
    #[error("Descriptor chain of {0} segments does not fit the ring")]
    ChainTooLong(usize),
    #[error("The device stopped answering (no completion within {0:?})")]
    Timeout(Duration),
    #[error("The device hung up (its vhost-user connection closed)")]
    Disconnected,
}

const VIRTIO_F_VERSION_1: u64 = 1 << 32;
const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;
const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;

/// Tunables of the connection.
#[derive(Clone, Debug)]
pub struct Options {
    /// Entries in the virtqueue.
    pub queue_size: u16,
    /// Bytes of the control region (rings and small shared buffers).
    pub control_bytes: usize,
    /// Buffers at least this large get a memory region of their own.
    pub dedicated_threshold: usize,
    /// How long to spin on the used ring before sleeping on the interrupt eventfd.
    pub spin: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            queue_size: 256,
            control_bytes: 64 << 20,
            dedicated_threshold: 4 << 20,
            spin: Duration::from_micros(200),
        }
    }
}

/// A buffer in memory the device can see.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SharedBuf {
    pub hva: *mut u8,
    pub gpa: u64,
    pub len: usize,
}

// SAFETY: a SharedBuf is an address range in process-wide shared mappings.
unsafe impl Send for SharedBuf {}

/// One virtio-user connection with one virtqueue.
pub struct VirtioUser {
    frontend: Frontend,
    ring: SplitRing,
    control: Region,
    arena: Arena,
    dedicated: Vec<Region>,
    next_gpa: u64,
    kick: EventFd,
    call: EventFd,
    event_idx: bool,
    /// REPLY_ACK was negotiated, so NEED_REPLY requests are acknowledged.
    reply_ack: bool,
    options: Options,
    config: Vec<u8>,
}

// SAFETY: raw pointers inside point into mappings owned by this struct; it is used behind a
// mutex by its owner.
unsafe impl Send for VirtioUser {}

fn region_info(r: &Region) -> VhostUserMemoryRegionInfo {
    VhostUserMemoryRegionInfo {
        guest_phys_addr: r.gpa,
        memory_size: r.len as u64,
        userspace_addr: r.hva as u64,
        mmap_offset: 0,
        mmap_handle: r.fd.as_fd().as_raw_fd(),
    }
}

impl VirtioUser {
    /// Connects to the device at `path` (retrying for up to `wait` while it comes up).
    pub fn connect(path: &Path, options: Options, wait: Duration) -> Result<Self, Error> {
        let deadline = Instant::now() + wait;
        let mut frontend = loop {
            match Frontend::connect(path, 1) {
                Ok(f) => break f,
                Err(e) if Instant::now() < deadline => {
                    debug!(
                        "virtio-user: connect to {} failed ({e}); retrying",
                        path.display()
                    );
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(source) => {
                    return Err(Error::Connect {
                        path: path.display().to_string(),
                        source,
                    });
                }
            }
        };
        let neg = |step| move |source| Error::Negotiate { step, source };
        frontend.set_owner().map_err(neg("SET_OWNER"))?;
        let offered = frontend.get_features().map_err(neg("GET_FEATURES"))?;
        let wanted = VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX | VHOST_USER_F_PROTOCOL_FEATURES;
        let features = offered & wanted;
        frontend
            .set_features(features)
            .map_err(neg("SET_FEATURES"))?;
        let mut config = Vec::new();
        let mut reply_ack = false;
        if features & VHOST_USER_F_PROTOCOL_FEATURES != 0 {
            let pf = frontend
                .get_protocol_features()
                .map_err(neg("GET_PROTOCOL_FEATURES"))?;
            let want = VhostUserProtocolFeatures::MQ
                | VhostUserProtocolFeatures::REPLY_ACK
                | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
                | VhostUserProtocolFeatures::CONFIG;
            let pf = pf & want;
            frontend
                .set_protocol_features(pf)
                .map_err(neg("SET_PROTOCOL_FEATURES"))?;
            reply_ack = pf.contains(VhostUserProtocolFeatures::REPLY_ACK);
            if pf.contains(VhostUserProtocolFeatures::CONFIG) {
                let (_, bytes) = frontend
                    .get_config(
                        0,
                        8,
                        vhost::vhost_user::message::VhostUserConfigFlags::WRITABLE,
                        &[0u8; 8],
                    )
                    .map_err(neg("GET_CONFIG"))?;
                config = bytes;
            }
        }
        let event_idx = features & VIRTIO_RING_F_EVENT_IDX != 0;

        let ring_bytes = SplitRing::bytes(options.queue_size);
        let control = Region::new(0, ring_bytes.next_multiple_of(4096) + options.control_bytes)?;
        frontend
            .set_mem_table(&[region_info(&control)])
            .map_err(neg("SET_MEM_TABLE"))?;
        // SAFETY: the first `ring_bytes` of the control region are reserved for the ring and
        // outlive it (both are owned by the connection).
        let ring = unsafe { SplitRing::new(control.hva, options.queue_size, event_idx) };
        let kick = EventFd::new(EFD_NONBLOCK)?;
        let call = EventFd::new(EFD_NONBLOCK)?;
        let q = 0;
        frontend
            .set_vring_num(q, options.queue_size)
            .map_err(neg("SET_VRING_NUM"))?;
        let (desc, avail, used) = ring.host_addresses();
        frontend
            .set_vring_addr(
                q,
                &VringConfigData {
                    queue_max_size: options.queue_size,
                    queue_size: options.queue_size,
                    flags: 0,
                    desc_table_addr: desc,
                    used_ring_addr: used,
                    avail_ring_addr: avail,
                    log_addr: None,
                },
            )
            .map_err(neg("SET_VRING_ADDR"))?;
        frontend
            .set_vring_base(q, 0)
            .map_err(neg("SET_VRING_BASE"))?;
        frontend
            .set_vring_call(q, &call)
            .map_err(neg("SET_VRING_CALL"))?;
        frontend
            .set_vring_kick(q, &kick)
            .map_err(neg("SET_VRING_KICK"))?;
        if features & VHOST_USER_F_PROTOCOL_FEATURES != 0 {
            frontend
                .set_vring_enable(q, true)
                .map_err(neg("SET_VRING_ENABLE"))?;
        }
        let arena_start = ring_bytes.next_multiple_of(4096);
        let arena = Arena::new(arena_start, control.len - arena_start);
        let next_gpa = (control.len as u64).next_multiple_of(2 << 20) + (2 << 20);
        Ok(Self {
            frontend,
            ring,
            control,
            arena,
            dedicated: Vec::new(),
            next_gpa,
            kick,
            call,
            event_idx,
            reply_ack,
            options,
            config,
        })
    }

    /// The device's config space as read at connect time.
    pub fn config_space(&self) -> &[u8] {
        &self.config
    }

    /// Allocates `len` bytes of memory shared with the device, aligned to `align`.
    pub fn alloc(&mut self, len: usize, align: usize) -> Result<SharedBuf, Error> {
        let len = len.max(1);
        if len < self.options.dedicated_threshold
            && let Some(off) = self.arena.alloc(len, align.max(64))
        {
            // SAFETY: the arena hands out offsets inside the control region.
            let hva = unsafe { self.control.hva.add(off) };
            return Ok(SharedBuf {
                hva,
                gpa: self.control.gpa + off as u64,
                len,
            });
        }
        let size = len.next_multiple_of(2 << 20);
        let region = Region::new(self.next_gpa, size)?;
        // The device must have mapped the region before any descriptor names it: ask for an
        // acknowledgement (without NEED_REPLY the request is fire-and-forget).
        self.frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        let added = self.frontend.add_mem_region(&region_info(&region));
        self.frontend.set_hdr_flags(VhostUserHeaderFlag::empty());
        added.map_err(|source| Error::Negotiate {
            step: "ADD_MEM_REG",
            source,
        })?;
        if !self.reply_ack {
            // No acknowledgements: a request with a reply orders us behind the device.
            self.frontend
                .get_features()
                .map_err(|source| Error::Negotiate {
                    step: "GET_FEATURES",
                    source,
                })?;
        }
        self.next_gpa += size as u64 + (2 << 20);
        let buf = SharedBuf {
            hva: region.hva,
            gpa: region.gpa,
            len,
        };
        self.dedicated.push(region);
        Ok(buf)
    }

    /// Returns a buffer from [`VirtioUser::alloc`].
    pub fn free(&mut self, buf: SharedBuf) {
        if let Some(i) = self.dedicated.iter().position(|r| r.hva == buf.hva) {
            let region = self.dedicated.swap_remove(i);
            // The device must have unmapped the region before we unmap it here.
            self.frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
            if let Err(e) = self.frontend.remove_mem_region(&region_info(&region)) {
                debug!("virtio-user: REM_MEM_REG failed: {e}");
            }
            self.frontend.set_hdr_flags(VhostUserHeaderFlag::empty());
            if !self.reply_ack {
                let _ = self.frontend.get_features();
            }
            return;
        }
        let off = buf.hva as usize - self.control.hva as usize;
        self.arena.free(off);
    }

    /// The guest address of `[hva, hva+len)` if it lies in shared memory.
    pub fn translate(&self, hva: *const u8, len: usize) -> Option<u64> {
        let a = hva as usize;
        std::iter::once(&self.control)
            .chain(self.dedicated.iter())
            .find_map(|r| {
                let start = r.hva as usize;
                (a >= start && a.checked_add(len)? <= start + r.len)
                    .then(|| r.gpa + (a - start) as u64)
            })
    }

    /// Announces `fd` to the device as a guest memory region of `declared_len` bytes at a
    /// fresh guest address, whatever the file behind it holds, and returns that address or the
    /// device's refusal. Only tests that play a hostile frontend need this.
    #[doc(hidden)]
    pub fn announce_region(
        &mut self,
        fd: std::os::fd::BorrowedFd<'_>,
        declared_len: usize,
    ) -> Result<u64, Error> {
        let gpa = self.next_gpa;
        self.next_gpa += declared_len.next_multiple_of(2 << 20) as u64 + (2 << 20);
        let info = VhostUserMemoryRegionInfo {
            guest_phys_addr: gpa,
            memory_size: declared_len as u64,
            // Never dereferenced by us; the device maps the file itself.
            userspace_addr: gpa | (1 << 46),
            mmap_offset: 0,
            mmap_handle: std::os::fd::AsRawFd::as_raw_fd(&fd),
        };
        self.frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        let added = self.frontend.add_mem_region(&info);
        self.frontend.set_hdr_flags(VhostUserHeaderFlag::empty());
        added.map_err(|source| Error::Negotiate {
            step: "ADD_MEM_REG",
            source,
        })?;
        Ok(gpa)
    }

    /// Free descriptors right now.
    pub fn free_descriptors(&self) -> usize {
        self.ring.free_descriptors()
    }

    /// Makes a chain available to the device and kicks it if it is waiting for a kick.
    /// Returns the head index, which identifies the completion.
    pub fn submit(&mut self, segs: &[Seg]) -> Result<u16, Error> {
        if segs.is_empty() || segs.len() > usize::from(self.options.queue_size) {
            return Err(Error::ChainTooLong(segs.len()));
        }
        let (head, needs_kick) = self
            .ring
            .push(segs)
            .ok_or(Error::ChainTooLong(segs.len()))?;
        if needs_kick || !self.event_idx {
            let _ = self.kick.write(1);
        }
        Ok(head)
    }

    /// Collects completions: calls `done(head, used_len)` for each, and frees their
    /// descriptors. Returns how many completed.
    pub fn reap(&mut self, done: impl FnMut(u16, u32)) -> usize {
        self.ring.reap(done)
    }

    /// Spins, then sleeps, until at least one completion is pending, `timeout` passes, or the
    /// device hangs up (its process died: nothing will complete, so waiting is pointless).
    pub fn wait_for_used(&mut self, timeout: Duration) -> Result<(), Error> {
        let start = Instant::now();
        while start.elapsed() < self.options.spin {
            if self.ring.has_used() {
                return Ok(());
            }
            std::hint::spin_loop();
        }
        loop {
            self.ring.arm_interrupt();
            if self.ring.has_used() {
                return Ok(());
            }
            let mut pfd = [
                libc::pollfd {
                    fd: self.call.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                // The vhost-user socket says nothing while the device works; it reports a
                // hang-up when the device's process is gone.
                libc::pollfd {
                    fd: self.frontend.as_raw_fd(),
                    events: libc::POLLRDHUP,
                    revents: 0,
                },
            ];
            // SAFETY: `pfd` is a valid array of two pollfds for the duration of the call.
            unsafe { libc::poll(pfd.as_mut_ptr(), 2, 20) };
            let _ = self.call.read();
            if self.ring.has_used() {
                return Ok(());
            }
            if pfd[1].revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR | libc::POLLNVAL)
                != 0
            {
                return Err(Error::Disconnected);
            }
            if start.elapsed() > timeout {
                return Err(Error::Timeout(timeout));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connecting_to_nothing_fails_cleanly() {
        let err = VirtioUser::connect(
            Path::new("/nonexistent/vgpu.sock"),
            Options::default(),
            Duration::ZERO,
        )
        .err();
        assert!(matches!(err, Some(Error::Connect { .. })));
    }
}
