//! memfd-backed shared memory regions.

use std::{
    io,
    os::fd::{FromRawFd, OwnedFd},
};

/// A memfd mapping offered to the device as guest memory at `gpa`.
pub struct Region {
    pub gpa: u64,
    pub hva: *mut u8,
    pub len: usize,
    pub fd: OwnedFd,
}

impl Region {
    pub fn new(gpa: u64, len: usize) -> io::Result<Self> {
        // Sealing allowed: the device seals the file against shrinking before it maps it (a
        // mapping whose file was cut short faults where the file ends).
        // SAFETY: the name is a valid C string; the returned fd is checked.
        let fd = unsafe {
            libc::memfd_create(
                c"vgpu-shm".as_ptr(),
                libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: plain syscall on a descriptor we own.
        if unsafe { libc::ftruncate(std::os::fd::AsRawFd::as_raw_fd(&fd), len as libc::off_t) } != 0
        {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh shared mapping of the whole memfd; checked for MAP_FAILED.
        let hva = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                0,
            )
        };
        if hva == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            gpa,
            hva: hva.cast(),
            len,
            fd,
        })
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping created in `new`.
        unsafe { libc::munmap(self.hva.cast(), self.len) };
    }
}
