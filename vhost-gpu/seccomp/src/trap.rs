//! [`SeccompMode::Trap`](crate::SeccompMode::Trap): a `SIGSYS` handler that names the call a
//! filter refused and makes it fail with `EPERM`, so a run shows everything a code path needs
//! (where the kernel's log, which `SECCOMP_RET_LOG` writes to, cannot be read).

use std::io;

/// `siginfo_t` as the kernel fills it for `SIGSYS` (`_sigsys` of the union, 64-bit layout).
#[repr(C)]
struct SigsysInfo {
    _signo: i32,
    _errno: i32,
    _code: i32,
    _pad: i32,
    _call_addr: usize,
    syscall: i32,
    _arch: u32,
}

/// Writes `seccomp: refused system call N` on stderr, with async-signal-safe calls only.
fn report(nr: i32) {
    let mut buf = *b"vgpu-seccomp: refused system call           \n";
    let prefix = b"vgpu-seccomp: refused system call ".len();
    let mut digits = [0u8; 11];
    let mut n = i64::from(nr).unsigned_abs();
    let mut len = 0;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for i in 0..len {
        buf[prefix + i] = digits[len - 1 - i];
    }
    buf[prefix + len] = b'\n';
    // SAFETY: writes bytes of a local buffer to stderr; write is async-signal-safe.
    unsafe { libc::write(libc::STDERR_FILENO, buf.as_ptr().cast(), prefix + len + 1) };
}

extern "C" fn on_sigsys(_sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a SIGSYS siginfo (SA_SIGINFO), whose layout SigsysInfo mirrors.
    let nr = unsafe { (*info.cast::<SigsysInfo>()).syscall };
    report(nr);
    let ctx = ctx.cast::<libc::ucontext_t>();
    // The refused call returns -EPERM: the kernel resumes the thread with these registers.
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `ctx` is the interrupted thread's ucontext, given by the kernel for SA_SIGINFO.
    unsafe {
        (*ctx).uc_mcontext.gregs[libc::REG_RAX as usize] = -i64::from(libc::EPERM);
    }
    #[cfg(target_arch = "aarch64")]
    // SAFETY: as above; x0 holds the return value on aarch64.
    unsafe {
        (*ctx).uc_mcontext.regs[0] = (-i64::from(libc::EPERM)) as u64;
    }
}

/// Installs the handler for the whole process.
pub(crate) fn install() -> io::Result<()> {
    // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value to fill in.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = on_sigsys as *const () as usize;
    action.sa_flags = libc::SA_SIGINFO;
    // SAFETY: installs a handler that only reads its arguments and calls write(2).
    if unsafe { libc::sigaction(libc::SIGSYS, &raw const action, std::ptr::null_mut()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
