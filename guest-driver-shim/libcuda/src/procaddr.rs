//! `cuGetProcAddress` resolution over every exported symbol.
//!
//! The name table is generated from NVIDIA's export list at build time. A base name
//! resolves to its newest versioned variant (`_v3` over `_v2` over none), and with the
//! per-thread-default-stream flag to its `_ptsz`/`_ptds` variant where one exists.

use std::ffi::c_void;

include!(concat!(env!("OUT_DIR"), "/symbols.rs"));

/// The entry point for `name` as `cuGetProcAddress` would return it.
pub fn resolve(name: &[u8], per_thread: bool) -> Option<*mut c_void> {
    let mut candidates: Vec<Vec<u8>> = Vec::with_capacity(8);
    for v in ["_v3", "_v2", ""] {
        let base = [name, v.as_bytes()].concat();
        if per_thread {
            candidates.push([base.as_slice(), b"_ptsz"].concat());
            candidates.push([base.as_slice(), b"_ptds"].concat());
        }
        candidates.push(base);
    }
    candidates.iter().find_map(|c| lookup(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_exported_symbol_resolves_by_its_own_name() {
        for name in ALL_SYMBOLS {
            assert!(lookup(name.as_bytes()).is_some(), "{name}");
        }
        assert!(lookup(b"cuDoesNotExist").is_none());
    }

    #[test]
    fn base_names_resolve_to_versioned_and_per_thread_variants() {
        assert_eq!(resolve(b"cuMemAlloc", false), lookup(b"cuMemAlloc_v2"));
        assert_eq!(
            resolve(b"cuLaunchKernel", true),
            lookup(b"cuLaunchKernel_ptsz")
        );
        assert_eq!(resolve(b"cuLaunchKernel", false), lookup(b"cuLaunchKernel"));
        assert_eq!(
            resolve(b"cuMemcpyHtoD", true),
            lookup(b"cuMemcpyHtoD_v2_ptds")
        );
        assert!(resolve(b"cuNoSuchThing", false).is_none());
    }
}
