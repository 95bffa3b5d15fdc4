//! `cuGetProcAddress` resolution, answered as NVIDIA's driver 580 answers it.
//!
//! build.rs generates two tables: every exported symbol (`lookup`), and the real driver's
//! recorded answers for each base name, flag value and CUDA version (`proc_entries`, from
//! `symbols/probe-driver-580.tsv`). A name the probe did not cover falls back to its newest
//! exported variant (`_v3` over `_v2` over none; `_ptsz`/`_ptds` for per-thread streams).

use std::ffi::c_void;

include!(concat!(env!("OUT_DIR"), "/symbols.rs"));

/// `CUdriverProcAddressQueryResult`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Success = 0,
    SymbolNotFound = 1,
    VersionNotSufficient = 2,
}

/// The CUDA versions `tests/gpu/probe_driver.c` asked the real driver about.
pub const PROBED_VERSIONS: [u32; 35] = [
    2000, 3000, 3020, 4000, 5000, 5050, 6000, 6050, 7000, 7050, 8000, 9000, 9020, 10000, 10010,
    10020, 11000, 11010, 11020, 11030, 11040, 11050, 11060, 11070, 11080, 12000, 12010, 12020,
    12030, 12040, 12050, 12060, 12080, 12090, 13000,
];

/// `CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM`.
pub const PER_THREAD: u64 = 2;

/// What `cuGetProcAddress_v2(name, version, flags)` yields: the entry point or why not.
pub fn resolve_versioned(name: &[u8], version: i32, flags: u64) -> (Option<*mut c_void>, Status) {
    let flags_ix = flags as usize;
    if let Some(entries) = proc_entries(name, flags_ix) {
        let version = u32::try_from(version).unwrap_or(0);
        let at = |v: u32| entries.iter().rposition(|e| e.from_version <= v);
        // The probe asked at the versions of PROBED_VERSIONS only; its answer there is exact.
        // A version between two samples (the runtime asks for cuDriverGetVersion at 2020,
        // its introduction, between the samples 2000 and 3000) takes the next sample's answer
        // when that finds the symbol and the previous one said "not sufficient".
        let sampled = PROBED_VERSIONS.iter().rev().find(|&&v| v <= version);
        let next = PROBED_VERSIONS.iter().find(|&&v| v > version);
        let i = match (sampled, next) {
            (Some(&s), Some(&n)) if s != version => match (at(s), at(n)) {
                (Some(a), Some(b)) if entries[a].status == 2 && entries[b].status == 0 => Some(b),
                (a, _) => a,
            },
            (Some(&s), _) => at(s),
            (None, _) => None,
        };
        return match i.map(|i| &entries[i]) {
            Some(e) if e.status == 0 => match lookup(e.symbol.as_bytes()) {
                Some(p) => (Some(p), Status::Success),
                None => (None, Status::SymbolNotFound),
            },
            Some(e) if e.status == 1 => (None, Status::SymbolNotFound),
            _ => (None, Status::VersionNotSufficient),
        };
    }
    match resolve(name, flags & PER_THREAD != 0) {
        Some(p) => (Some(p), Status::Success),
        None => (None, Status::SymbolNotFound),
    }
}

/// The newest exported variant of `name` (for names the probe table lacks).
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

    /// Every symbol NVIDIA's libcuda.so.1 (driver 580) exports, from the list checked in
    /// beside the sources (not from the generated table), resolves by its own name.
    /// (tests/tests/symbols.rs checks the built library's dynamic symbols the same way.)
    #[test]
    fn every_exported_symbol_resolves_by_its_own_name() {
        let real = include_str!("../symbols/libcuda-580-symbols.txt");
        let names: Vec<&str> = real
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        assert!(names.len() > 600, "{} names", names.len());
        let missing: Vec<&str> = names
            .iter()
            .copied()
            .filter(|n| lookup(n.as_bytes()).is_none())
            .collect();
        assert!(missing.is_empty(), "not resolved: {missing:?}");
        for name in names {
            assert!(ALL_SYMBOLS.contains(&name), "{name} not in ALL_SYMBOLS");
        }
        assert!(lookup(b"cuDoesNotExist").is_none());
    }

    #[test]
    fn answers_follow_the_real_driver() {
        let r = |n: &[u8], v, f| resolve_versioned(n, v, f);
        assert_eq!(
            r(b"cuMemAlloc", 13000, 0),
            (lookup(b"cuMemAlloc_v2"), Status::Success)
        );
        assert_eq!(
            r(b"cuMemAlloc", 3000, 0),
            (lookup(b"cuMemAlloc"), Status::Success)
        );
        assert_eq!(
            r(b"cuLaunchKernel", 13000, 2),
            (lookup(b"cuLaunchKernel_ptsz"), Status::Success)
        );
        assert_eq!(
            r(b"cuLaunchKernel", 13000, 1),
            (lookup(b"cuLaunchKernel"), Status::Success)
        );
        assert_eq!(
            r(b"cuLaunchKernel", 3000, 0),
            (None, Status::VersionNotSufficient)
        );
        // Per-thread variants exist only from CUDA 7.0.
        assert_eq!(
            r(b"cuMemcpyHtoD", 6050, 2),
            (None, Status::VersionNotSufficient)
        );
        assert_eq!(
            r(b"cuMemcpyHtoD", 7000, 2),
            (lookup(b"cuMemcpyHtoD_v2_ptds"), Status::Success)
        );
        assert_eq!(
            r(b"cuCtxCreate", 12050, 0),
            (lookup(b"cuCtxCreate_v4"), Status::Success)
        );
        assert_eq!(
            r(b"cuCtxCreate", 12040, 0),
            (lookup(b"cuCtxCreate_v3"), Status::Success)
        );
        assert_eq!(
            r(b"cuGetProcAddress", 12000, 0),
            (lookup(b"cuGetProcAddress_v2"), Status::Success)
        );
        // The driver does not hand these out at all.
        assert_eq!(
            r(b"cuMemGetAttribute", 13000, 0),
            (None, Status::SymbolNotFound)
        );
        assert_eq!(
            r(b"cuNoSuchThing", 13000, 0),
            (None, Status::SymbolNotFound)
        );
        assert_eq!(
            r(b"cuMemAlloc", 1000, 0),
            (None, Status::VersionNotSufficient)
        );
        assert_eq!(
            r(b"cuLaunchKernel", 3020, 0),
            (None, Status::VersionNotSufficient)
        );
        assert_eq!(
            r(b"cuLaunchKernel", 3050, 0),
            (lookup(b"cuLaunchKernel"), Status::Success)
        );
        // Between samples: cuDriverGetVersion is from CUDA 2.2, the probe saw 2.0 and 3.0.
        assert_eq!(
            r(b"cuDriverGetVersion", 2000, 0),
            (None, Status::VersionNotSufficient)
        );
        assert_eq!(
            r(b"cuDriverGetVersion", 2020, 0),
            (lookup(b"cuDriverGetVersion"), Status::Success)
        );
    }

    /// Every probed answer is reproduced exactly: same symbol or same status, at every version
    /// the probe recorded.
    #[test]
    fn whole_probe_table_is_reproduced() {
        let mut checked = 0;
        for name in PROBED_NAMES {
            for flags in 0..3u64 {
                let entries = proc_entries(name.as_bytes(), flags as usize).unwrap();
                assert!(!entries.is_empty(), "{name} flags {flags}");
                for e in entries {
                    assert!(
                        PROBED_VERSIONS.contains(&e.from_version),
                        "{}",
                        e.from_version
                    );
                    let (p, st) = resolve_versioned(name.as_bytes(), e.from_version as i32, flags);
                    assert_eq!(
                        st as u8, e.status,
                        "{name} flags {flags} v{}",
                        e.from_version
                    );
                    if e.status == 0 {
                        assert_eq!(p, lookup(e.symbol.as_bytes()), "{name}");
                        assert!(p.is_some());
                    } else {
                        assert!(p.is_none());
                    }
                    checked += 1;
                }
            }
        }
        assert!(checked > 2800, "{checked}");
    }

    /// The static CUDA 13.0 runtime looks these names up (`cuGetProcAddress` on base names,
    /// `dlsym` on versioned ones): each must lead to an entry point of ours.
    #[test]
    fn every_name_the_cuda_13_runtime_looks_up_resolves() {
        let names = include_str!("../symbols/cudart-13.0-static-driver-names.txt");
        let mut missing = Vec::new();
        for name in names.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let by_procaddr =
                (0..3u64).any(|f| resolve_versioned(name.as_bytes(), 13000, f).0.is_some());
            if !by_procaddr && lookup(name.as_bytes()).is_none() {
                missing.push(name);
            }
        }
        assert!(missing.is_empty(), "these resolve to nothing: {missing:?}");
    }
}
