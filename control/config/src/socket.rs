//! Who may connect to a worker's vhost-user socket: its mode and group (`socket_mode = "0660"`,
//! `socket_group = "kvm"`), so that QEMU running as its own user can, and nobody else.

use std::ffi::CString;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

/// Why a socket's access could not be set.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("No group {0:?} on this host")]
    NoGroup(String),
    #[error("Cannot look up group {name:?}")]
    Lookup {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("Cannot give {} group {gid}", path.display())]
    Chown {
        path: std::path::PathBuf,
        gid: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("Cannot set the mode of {}", path.display())]
    Chmod {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// clap value parser of a mode: octal digits (`0660`, `660`), at most `0777`.
pub fn parse_mode(s: &str) -> Result<u32, String> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    match u32::from_str_radix(digits, 8) {
        Ok(m) if m <= 0o777 && !digits.is_empty() => Ok(m),
        _ => Err(format!("{s:?} is not an octal mode such as 0660")),
    }
}

/// The id of group `name` (a name, or a number).
pub fn group_id(name: &str) -> Result<u32, SocketError> {
    if let Ok(gid) = name.parse::<u32>() {
        return Ok(gid);
    }
    let c = CString::new(name).map_err(|_| SocketError::NoGroup(name.to_string()))?;
    let mut buf = vec![0u8; 1024];
    loop {
        // SAFETY: an all-zero `group` (null pointers, zero ids) is a valid value to be written.
        let mut grp: libc::group = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::group = std::ptr::null_mut();
        // SAFETY: `c` is a NUL-terminated string, `grp` and `buf` are live for the call and
        // `buf.len()` is the buffer's size; getgrnam_r writes only into them and `found`.
        let rc = unsafe {
            libc::getgrnam_r(
                c.as_ptr(),
                &raw mut grp,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &raw mut found,
            )
        };
        match rc {
            0 if found.is_null() => return Err(SocketError::NoGroup(name.to_string())),
            0 => return Ok(grp.gr_gid),
            libc::ERANGE if buf.len() < 1 << 20 => buf.resize(buf.len() * 4, 0),
            e => {
                return Err(SocketError::Lookup {
                    name: name.to_string(),
                    source: std::io::Error::from_raw_os_error(e),
                });
            }
        }
    }
}

/// Gives `path` group `gid` (when given) and then `mode` (when given). The owner stays who
/// created it.
pub fn apply(path: &Path, mode: Option<u32>, gid: Option<u32>) -> Result<(), SocketError> {
    if let Some(gid) = gid {
        std::os::unix::fs::chown(path, None, Some(gid)).map_err(|source| SocketError::Chown {
            path: path.to_path_buf(),
            gid,
            source,
        })?;
    }
    if let Some(mode) = mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(
            |source| SocketError::Chmod {
                path: path.to_path_buf(),
                source,
            },
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt as _;

    #[test]
    fn modes_are_octal() {
        assert_eq!(parse_mode("0660"), Ok(0o660));
        assert_eq!(parse_mode("660"), Ok(0o660));
        assert_eq!(parse_mode("0o600"), Ok(0o600));
        assert!(parse_mode("0999").is_err());
        assert!(parse_mode("1777").is_err());
        assert!(parse_mode("").is_err());
    }

    // Mutation: returning `found`'s absence as gid 0 (root) fails the second assertion.
    #[test]
    fn groups_by_name_and_number() {
        assert_eq!(group_id("root").unwrap(), 0);
        assert!(matches!(
            group_id("no-such-group-vgpu"),
            Err(SocketError::NoGroup(_))
        ));
        assert_eq!(group_id("4242").unwrap(), 4242);
    }

    // Mutation: dropping the chmod (or the chown) fails this.
    #[test]
    fn apply_sets_mode_and_group() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.sock");
        let _l = std::os::unix::net::UnixListener::bind(&p).unwrap();
        // Root may give any group (CI runs as root); anyone may give their own.
        // SAFETY: geteuid and getegid have no preconditions.
        let gid = if unsafe { libc::geteuid() } == 0 {
            4242
        } else {
            // SAFETY: as above.
            unsafe { libc::getegid() }
        };
        apply(&p, Some(0o660), Some(gid)).unwrap();
        let md = std::fs::metadata(&p).unwrap();
        assert_eq!(md.mode() & 0o777, 0o660);
        assert_eq!(md.gid(), gid);
        apply(&p, Some(0o600), None).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o777, 0o600);
    }
}
