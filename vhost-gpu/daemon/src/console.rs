//! Device-side `printf` for guests. NVIDIA's driver prints a kernel's `printf` output to the
//! process's stdout at synchronising calls; in the daemon that stdout belongs to the guest.
//! We point fd 1 at a pipe, drain it on a thread (so a large flush never blocks the driver),
//! and hand the bytes to the executor, which returns them with the guest's synchronising call.

use std::{
    collections::VecDeque,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{Arc, Mutex, PoisonError},
};

use log::warn;
use vgpu_executor::Console;

/// Bytes kept for guests that do not synchronise; beyond this, output is dropped (and said so).
const MAX_BUFFERED: usize = 16 << 20;

struct Shared {
    pipe: OwnedFd,
    buffered: Mutex<Buffered>,
}

#[derive(Default)]
struct Buffered {
    bytes: VecDeque<u8>,
    dropped: u64,
}

impl Shared {
    /// Moves everything readable from the pipe into the buffer (the pipe is non-blocking).
    fn drain(&self) {
        let mut b = self.buffered.lock().unwrap_or_else(PoisonError::into_inner);
        let mut chunk = [0u8; 64 << 10];
        loop {
            // SAFETY: reads into a local buffer of the given length from our own pipe.
            let n = unsafe {
                libc::read(
                    self.pipe.as_raw_fd(),
                    chunk.as_mut_ptr().cast(),
                    chunk.len(),
                )
            };
            let Ok(n) = usize::try_from(n) else { break };
            if n == 0 {
                break;
            }
            let room = MAX_BUFFERED.saturating_sub(b.bytes.len());
            let kept = n.min(room);
            b.bytes.extend(&chunk[..kept]);
            if kept < n {
                if b.dropped == 0 {
                    warn!("guest console: more than {MAX_BUFFERED} bytes unread; dropping output");
                }
                b.dropped += (n - kept) as u64;
            }
        }
    }
}

/// The daemon's stdout, captured for the guests.
pub struct StdoutCapture {
    shared: Arc<Shared>,
}

impl StdoutCapture {
    /// Redirects fd 1 (and C's `stdout`, unbuffered) into a pipe read by this capture.
    pub fn install() -> io::Result<Self> {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 returns.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 just returned these descriptors; we own them from here on.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // The driver's writes must block rather than fail when the pipe is full.
        // SAFETY: fcntl on a descriptor we own.
        unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETFL, 0) };
        // SAFETY: dup2 onto fd 1 replaces stdout atomically; `write` stays valid until dropped.
        if unsafe { libc::dup2(write.as_raw_fd(), libc::STDOUT_FILENO) } < 0 {
            return Err(io::Error::last_os_error());
        }
        drop(write);
        unsafe extern "C" {
            static mut stdout: *mut libc::FILE;
        }
        // SAFETY: C's stdout is initialised before main; unbuffered so output reaches the pipe
        // when the driver writes it, not when a buffer fills.
        unsafe { libc::setvbuf(stdout, std::ptr::null_mut(), libc::_IONBF, 0) };
        Ok(Self::from_pipe(read))
    }

    /// A capture reading an existing non-blocking pipe (tests).
    pub fn from_pipe(read: OwnedFd) -> Self {
        let shared = Arc::new(Shared {
            pipe: read,
            buffered: Mutex::default(),
        });
        let reader = shared.clone();
        std::thread::Builder::new()
            .name("guest-console".into())
            .spawn(move || {
                loop {
                    let mut pfd = libc::pollfd {
                        fd: reader.pipe.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    // SAFETY: one valid pollfd.
                    let r = unsafe { libc::poll(&raw mut pfd, 1, -1) };
                    if r < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                        return;
                    }
                    if pfd.revents & libc::POLLHUP != 0 && pfd.revents & libc::POLLIN == 0 {
                        return;
                    }
                    reader.drain();
                }
            })
            .map(drop)
            .unwrap_or_else(|e| warn!("guest console: no reader thread ({e})"));
        Self { shared }
    }
}

impl Console for StdoutCapture {
    fn poll(&mut self, synced: bool) -> bool {
        if synced {
            self.shared.drain();
        }
        !self
            .shared
            .buffered
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .bytes
            .is_empty()
    }

    fn take(&mut self, max: usize) -> Vec<u8> {
        let mut b = self
            .shared
            .buffered
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let n = max.min(b.bytes.len());
        b.bytes.drain(..n).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipe() -> (OwnedFd, OwnedFd) {
        let mut fds = [0; 2];
        // SAFETY: room for two descriptors.
        let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) };
        assert_eq!(r, 0);
        // SAFETY: fresh descriptors from pipe2.
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
    }

    #[test]
    fn bytes_written_before_a_sync_are_there_after_it_in_order() {
        let (r, w) = pipe();
        let mut c = StdoutCapture::from_pipe(r);
        assert!(!c.poll(true));
        let mut expected = Vec::new();
        for i in 0..2000 {
            let line = format!("DEVPRINTF block {i}\n");
            expected.extend_from_slice(line.as_bytes());
            // Retry while the reader catches up.
            let mut off = 0;
            while off < line.len() {
                // SAFETY: writes from a live local buffer to our pipe.
                let n = unsafe {
                    libc::write(w.as_raw_fd(), line[off..].as_ptr().cast(), line.len() - off)
                };
                if n > 0 {
                    off += n as usize;
                }
            }
        }
        assert!(c.poll(true), "a sync sees what was written before it");
        let mut got = Vec::new();
        while c.poll(true) {
            got.extend(c.take(1000));
        }
        assert_eq!(got, expected);
        assert!(c.take(10).is_empty());
    }
}
