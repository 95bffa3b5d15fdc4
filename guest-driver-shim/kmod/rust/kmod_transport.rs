//! `/dev/vgpuN` transport: the guest kernel driver (`vgpu.ko`) as seen from the shim.
//!
//! Self-contained (std + `libc`); the shim includes it with `#[path = "..."] mod kmod_transport;`.
//! The ABI is `guest-driver-shim/kmod/vgpu_uapi.h` (version [`UAPI_VERSION`]), documented in
//! `docs/vm.md`. The structs below mirror it field by field; a layout test pins their sizes.
//!
//! # Contract
//!
//! * One [`KmodTransport`] (one open file) is one client of the host daemon. The kernel assigns
//!   the client id ([`DeviceInfo::client_id`]) and writes it into the header of every message,
//!   whatever the caller put there. Dropping the transport (closing the file), or the death of
//!   the process, makes the kernel send `CLIENT_CLOSE`; the host then frees everything the
//!   client held. Open the device once per process.
//! * A message is the protocol's 32-byte `MsgHeader` plus call records. The kernel checks the
//!   magic, that `header.req_len == req.len()`, that `CLIENT_CLOSE` is not set, and that
//!   `header.resp_cap <= resp.len()`; `WANT_REPLY` needs `header.resp_cap >= 4`.
//! * On the ring the readable bytes are `req` then the `data_in` slices in order; the writable
//!   bytes are the reply area (exactly `header.resp_cap` bytes) then the `data_out` slices. The
//!   message and reply are copied by the kernel; `data_in`/`data_out` are **not** copied: their
//!   pages are pinned and handed to the host as guest-physical addresses (zero copy).
//! * [`KmodTransport::submit`] blocks until the host returns the chain and reports how many
//!   bytes of the reply area and of the data-out stream were written. Ordinary signals do not
//!   interrupt it (the host would run the request anyway); only a fatal signal does.
//! * All requests of one transport go to one virtqueue, and the host processes a queue in
//!   order, so a synchronous request completes after every earlier fire-and-forget one.
//! * Fire-and-forget ([`KmodTransport::submit_nowait`]): no reply (`WANT_REPLY` clear,
//!   `resp_cap` 0) and no data-out. The call returns once the chain is queued. Data-in pages
//!   stay pinned by the kernel until the host returns the chain and the host reads them *then*:
//!   the caller must keep the data unchanged until a later synchronous `submit` on the same
//!   transport has returned. That is why the variant with data is `unsafe`.
//! * Limits ([`DeviceInfo`]): at most `max_segs` slices per direction, at most `max_sg` scatter
//!   entries per request after merging physically contiguous pages (4 KiB pages that are not
//!   contiguous cost one entry each: budget `(max_sg - 4) * 4 KiB` per request, about 8 MiB
//!   with the default 2048), messages up to `max_req_len`, replies up to `max_resp_len`. Larger
//!   bulk transfers must be split by the caller; `E2BIG` says a request was too large.
//! * Errors are `io::Error`s with the errno of the ioctl: `EINVAL` malformed request, `E2BIG`
//!   limits, `EFAULT` bad memory, `EIO` the device returned an impossible completion or its
//!   queue broke, `EBADMSG` the reply does not start with the protocol magic, `ENODEV` the
//!   device was removed, `ETIMEDOUT` only when the module's `timeout_ms` is set.
//! * `KmodTransport` is `Send + Sync`: several threads may submit at once on one transport.

#![allow(dead_code)]

use std::fs::{File, OpenOptions};
use std::io;
use std::mem::size_of;
use std::os::fd::AsRawFd;
use std::path::Path;

/// `VGPU_UAPI_VERSION` of the header this file mirrors.
pub const UAPI_VERSION: u32 = 1;
/// Most `data_in` (and, separately, `data_out`) slices per request (`VGPU_MAX_SEGS`).
pub const MAX_SEGS: usize = 256;
/// `VGPU_INFO_F_INDIRECT`: indirect descriptors were negotiated.
pub const INFO_F_INDIRECT: u32 = 1 << 0;
/// `VGPU_INFO_F_EVENT_IDX`: event-index notification suppression was negotiated.
pub const INFO_F_EVENT_IDX: u32 = 1 << 1;
/// `VGPU_INFO_F_POLL`: the module busy-polls the used ring before sleeping.
pub const INFO_F_POLL: u32 = 1 << 2;
const SUBMIT_F_NOWAIT: u32 = 1 << 0;

/// `struct vgpu_seg`
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct Seg {
    addr: u64,
    len: u64,
}

/// `struct vgpu_submit`
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct Submit {
    req_ptr: u64,
    resp_ptr: u64,
    data_in_ptr: u64,
    data_out_ptr: u64,
    req_len: u32,
    resp_cap: u32,
    n_data_in: u32,
    n_data_out: u32,
    flags: u32,
    resp_len: u32,
    data_out_written: u64,
    reserved: [u64; 2],
}

/// `struct vgpu_info`: what the device and this client are.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceInfo {
    pub uapi_version: u32,
    /// This file's client id (nonzero), as the host sees it.
    pub client_id: u32,
    /// 41 when attached as `vhost-user-gpio-pci`, 38/39 for the generic vhost-user device.
    pub virtio_id: u32,
    /// Protocol major version from the device's config space.
    pub proto_major: u16,
    pub num_queues: u16,
    pub queue_size: u32,
    /// The queue this client's requests go to.
    pub queue: u32,
    pub max_sg: u32,
    pub max_segs: u32,
    pub max_req_len: u32,
    pub max_resp_len: u32,
    /// `INFO_F_*` bits.
    pub features: u32,
    /// N of `/dev/vgpuN`.
    pub minor: u32,
    pub reserved: [u64; 2],
}

/// What the device wrote for one request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Completion {
    /// Bytes of the reply written at the start of `resp`.
    pub resp_len: usize,
    /// Bytes written into the data-out stream (the `data_out` slices, in order).
    pub data_out_written: u64,
}

const IOC_WRITE: u64 = 1;
const IOC_READ: u64 = 2;
const IOC_MAGIC: u64 = 0xB8;
const fn ioc(dir: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | (IOC_MAGIC << 8) | nr
}
/// `VGPU_IOC_INFO = _IOR(0xB8, 0, struct vgpu_info)`
const IOC_INFO: u64 = ioc(IOC_READ, 0, size_of::<DeviceInfo>());
/// `VGPU_IOC_SUBMIT = _IOWR(0xB8, 1, struct vgpu_submit)`
const IOC_SUBMIT: u64 = ioc(IOC_READ | IOC_WRITE, 1, size_of::<Submit>());

/// An open `/dev/vgpuN`: one client of the host daemon.
#[derive(Debug)]
pub struct KmodTransport {
    file: File,
    info: DeviceInfo,
}

fn too_many(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("more than {MAX_SEGS} {what} slices"),
    )
}

fn len_u32(n: usize, what: &str) -> io::Result<u32> {
    u32::try_from(n)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("{what} too long")))
}

impl KmodTransport {
    /// Opens the device (e.g. `/dev/vgpu0`, the value of `VGPU_DEVICE`) and reads its facts.
    pub fn open(path: impl AsRef<Path>) -> io::Result<Self> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        let mut info = DeviceInfo::default();
        // SAFETY: VGPU_IOC_INFO writes exactly one `struct vgpu_info`, which `DeviceInfo`
        // mirrors (size pinned by a test); the pointer is valid for that many bytes.
        let r = unsafe { libc::ioctl(file.as_raw_fd(), IOC_INFO as _, &raw mut info) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        if info.uapi_version != UAPI_VERSION {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "vgpu.ko speaks uapi {}, this shim {UAPI_VERSION}",
                    info.uapi_version
                ),
            ));
        }
        Ok(Self { file, info })
    }

    /// The device and client facts read at open.
    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    /// This file's client id, as the host sees it.
    pub fn client_id(&self) -> u32 {
        self.info.client_id
    }

    /// Sends one request and waits for the device to return it.
    ///
    /// `req` is the whole message (header + calls); `resp` receives the reply (its length must
    /// be at least the header's `resp_cap`); `data_in` is read by the host after the message,
    /// `data_out` written by the host after the reply area, both without copies.
    pub fn submit(
        &self,
        req: &[u8],
        resp: &mut [u8],
        data_in: &[&[u8]],
        data_out: &mut [&mut [u8]],
    ) -> io::Result<Completion> {
        if data_in.len() > MAX_SEGS {
            return Err(too_many("data-in"));
        }
        if data_out.len() > MAX_SEGS {
            return Err(too_many("data-out"));
        }
        let ins: Vec<Seg> = data_in
            .iter()
            .map(|s| Seg {
                addr: s.as_ptr() as u64,
                len: s.len() as u64,
            })
            .collect();
        let outs: Vec<Seg> = data_out
            .iter_mut()
            .map(|s| Seg {
                addr: s.as_mut_ptr() as u64,
                len: s.len() as u64,
            })
            .collect();
        let mut s = Submit {
            req_ptr: req.as_ptr() as u64,
            req_len: len_u32(req.len(), "message")?,
            resp_ptr: resp.as_mut_ptr() as u64,
            resp_cap: len_u32(resp.len(), "reply buffer")?,
            data_in_ptr: ins.as_ptr() as u64,
            n_data_in: ins.len() as u32,
            data_out_ptr: outs.as_ptr() as u64,
            n_data_out: outs.len() as u32,
            ..Submit::default()
        };
        // SAFETY: every pointer in `s` refers to memory borrowed for the whole call: `req` and
        // the `data_in` slices are only read, `resp` and the `data_out` slices are exclusively
        // borrowed and only written within their lengths, and the segment arrays outlive the
        // call. Without NOWAIT the kernel does not return before the device has finished with
        // the pinned pages, so nothing is accessed after the borrows end.
        let r = unsafe { libc::ioctl(self.file.as_raw_fd(), IOC_SUBMIT as _, &raw mut s) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Completion {
            resp_len: s.resp_len as usize,
            data_out_written: s.data_out_written,
        })
    }

    /// Fire-and-forget without bulk data: returns once the message is queued. The message
    /// itself is copied by the kernel, so `req` may be reused at once.
    pub fn submit_nowait(&self, req: &[u8]) -> io::Result<()> {
        // SAFETY: no data-in slices, so nothing outlives the call.
        unsafe { self.submit_nowait_with_data(req, &[]) }
    }

    /// Fire-and-forget with data-in: returns once the chain is queued.
    ///
    /// # Safety
    ///
    /// The host reads the `data_in` memory when it processes the request, after this returns.
    /// The caller must neither modify nor free (unmapping is fine: the kernel holds the pages)
    /// that memory's contents until a later [`submit`](Self::submit) on this transport has
    /// returned; otherwise the host may read the new contents.
    pub unsafe fn submit_nowait_with_data(&self, req: &[u8], data_in: &[&[u8]]) -> io::Result<()> {
        if data_in.len() > MAX_SEGS {
            return Err(too_many("data-in"));
        }
        let ins: Vec<Seg> = data_in
            .iter()
            .map(|s| Seg {
                addr: s.as_ptr() as u64,
                len: s.len() as u64,
            })
            .collect();
        let mut s = Submit {
            req_ptr: req.as_ptr() as u64,
            req_len: len_u32(req.len(), "message")?,
            data_in_ptr: ins.as_ptr() as u64,
            n_data_in: ins.len() as u32,
            flags: SUBMIT_F_NOWAIT,
            ..Submit::default()
        };
        // SAFETY: the kernel copies the message and the segment array during the call and pins
        // the data-in pages; the caller guarantees (see # Safety) the data stays unchanged
        // until the host has read it.
        let r = unsafe { libc::ioctl(self.file.as_raw_fd(), IOC_SUBMIT as _, &raw mut s) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(test)]
mod layout_tests {
    use super::*;

    #[test]
    fn layouts_match_vgpu_uapi_h() {
        assert_eq!(size_of::<Seg>(), 16);
        assert_eq!(size_of::<Submit>(), 80);
        assert_eq!(size_of::<DeviceInfo>(), 64);
        assert_eq!(std::mem::offset_of!(Submit, resp_len), 52);
        assert_eq!(std::mem::offset_of!(Submit, data_out_written), 56);
        assert_eq!(std::mem::offset_of!(DeviceInfo, queue_size), 16);
        assert_eq!(IOC_INFO, 0x8040_B800);
        assert_eq!(IOC_SUBMIT, 0xC050_B801);
    }
}
