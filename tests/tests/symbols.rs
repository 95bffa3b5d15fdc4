//! The built `libcuda.so.1` exports every symbol NVIDIA's driver 580 exports: each name of
//! the checked-in list (`guest-driver-shim/libcuda/symbols/libcuda-580-symbols.txt`, taken
//! from the real library) is looked up in the built shared object with `dlsym`.

use std::ffi::CString;

use vgpu_tests::{built, repo};

#[test]
fn the_built_library_exports_every_symbol_of_the_real_driver() {
    let list = std::fs::read_to_string(
        repo().join("guest-driver-shim/libcuda/symbols/libcuda-580-symbols.txt"),
    )
    .expect("symbol list");
    let names: Vec<&str> = list
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    assert!(names.len() > 600, "{} names", names.len());
    let path = CString::new(built().join("libcuda.so").display().to_string()).expect("path");
    // SAFETY: dlopen with a valid C string; the library's initialisers only set up state (it
    // connects to a vGPU at cuInit, which nothing here calls).
    let lib = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    assert!(!lib.is_null(), "dlopen {path:?} failed");
    let missing: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| {
            let c = CString::new(*n).expect("name");
            // SAFETY: a live handle from dlopen and a valid C string.
            unsafe { libc::dlsym(lib, c.as_ptr()) }.is_null()
        })
        .collect();
    assert!(missing.is_empty(), "not exported: {missing:?}");
    let bogus = CString::new("cuDoesNotExist").expect("name");
    // SAFETY: as above.
    assert!(unsafe { libc::dlsym(lib, bogus.as_ptr()) }.is_null());
    // The library stays loaded (unloading a Rust cdylib with thread-locals is not worth it).
}
