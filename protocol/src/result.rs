//! `CUresult` values as the wire carries them, and the one table of their names and
//! descriptions (the shim's `cuGetErrorName`/`cuGetErrorString`, and every log).

use std::ffi::CStr;

/// A `CUresult` code. Kept as a plain number: a peer built against a newer `cuda.h` may send
/// one this build does not name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct CuResult(pub u32);

impl CuResult {
    pub const SUCCESS: Self = Self(0);
    pub const INVALID_VALUE: Self = Self(1);
    pub const OUT_OF_MEMORY: Self = Self(2);
    pub const NOT_INITIALIZED: Self = Self(3);
    pub const DEINITIALIZED: Self = Self(4);
    pub const NO_DEVICE: Self = Self(100);
    pub const INVALID_DEVICE: Self = Self(101);
    pub const INVALID_IMAGE: Self = Self(200);
    pub const INVALID_CONTEXT: Self = Self(201);
    pub const NO_BINARY_FOR_GPU: Self = Self(209);
    pub const INVALID_SOURCE: Self = Self(300);
    pub const INVALID_HANDLE: Self = Self(400);
    pub const NOT_FOUND: Self = Self(500);
    pub const NOT_READY: Self = Self(600);
    pub const ILLEGAL_ADDRESS: Self = Self(700);
    pub const LAUNCH_OUT_OF_RESOURCES: Self = Self(701);
    pub const LAUNCH_FAILED: Self = Self(719);
    pub const NOT_PERMITTED: Self = Self(800);
    pub const NOT_SUPPORTED: Self = Self(801);
    pub const UNKNOWN: Self = Self(999);

    pub fn is_ok(self) -> bool {
        self == Self::SUCCESS
    }

    /// This code's entry of [`ERRORS`].
    fn entry(self) -> Option<&'static (u32, &'static CStr, &'static CStr)> {
        ERRORS.iter().find(|(c, _, _)| *c == self.0)
    }

    /// The enumerator name as `cuGetErrorName` gives it.
    pub fn name(self) -> Option<&'static str> {
        self.c_name().and_then(|n| n.to_str().ok())
    }

    /// A one-line description as `cuGetErrorString` gives it.
    pub fn description(self) -> Option<&'static str> {
        self.c_description().and_then(|d| d.to_str().ok())
    }

    /// [`CuResult::name`] as the C string `cuGetErrorName` hands out.
    pub fn c_name(self) -> Option<&'static CStr> {
        self.entry().map(|e| e.1)
    }

    /// [`CuResult::description`] as the C string `cuGetErrorString` hands out.
    pub fn c_description(self) -> Option<&'static CStr> {
        self.entry().map(|e| e.2)
    }
}

/// (code, name, description) as NVIDIA's driver reports them.
pub static ERRORS: &[(u32, &CStr, &CStr)] = &[
    (0, c"CUDA_SUCCESS", c"no error"),
    (1, c"CUDA_ERROR_INVALID_VALUE", c"invalid argument"),
    (2, c"CUDA_ERROR_OUT_OF_MEMORY", c"out of memory"),
    (3, c"CUDA_ERROR_NOT_INITIALIZED", c"initialization error"),
    (4, c"CUDA_ERROR_DEINITIALIZED", c"driver shutting down"),
    (
        5,
        c"CUDA_ERROR_PROFILER_DISABLED",
        c"profiler disabled while using a profiling tool",
    ),
    (
        34,
        c"CUDA_ERROR_STUB_LIBRARY",
        c"CUDA driver is a stub library",
    ),
    (
        46,
        c"CUDA_ERROR_DEVICE_UNAVAILABLE",
        c"CUDA-capable device(s) is/are busy or unavailable",
    ),
    (
        100,
        c"CUDA_ERROR_NO_DEVICE",
        c"no CUDA-capable device is detected",
    ),
    (101, c"CUDA_ERROR_INVALID_DEVICE", c"invalid device ordinal"),
    (
        200,
        c"CUDA_ERROR_INVALID_IMAGE",
        c"device kernel image is invalid",
    ),
    (
        201,
        c"CUDA_ERROR_INVALID_CONTEXT",
        c"invalid device context",
    ),
    (
        205,
        c"CUDA_ERROR_MAP_FAILED",
        c"mapping of buffer object failed",
    ),
    (
        209,
        c"CUDA_ERROR_NO_BINARY_FOR_GPU",
        c"no kernel image is available for execution on the device",
    ),
    (
        218,
        c"CUDA_ERROR_INVALID_PTX",
        c"a PTX JIT compilation failed",
    ),
    (
        222,
        c"CUDA_ERROR_UNSUPPORTED_PTX_VERSION",
        c"the provided PTX was compiled with an unsupported toolchain.",
    ),
    (
        300,
        c"CUDA_ERROR_INVALID_SOURCE",
        c"device kernel image is invalid",
    ),
    (301, c"CUDA_ERROR_FILE_NOT_FOUND", c"file not found"),
    (
        400,
        c"CUDA_ERROR_INVALID_HANDLE",
        c"invalid resource handle",
    ),
    (500, c"CUDA_ERROR_NOT_FOUND", c"named symbol not found"),
    (600, c"CUDA_ERROR_NOT_READY", c"device not ready"),
    (
        700,
        c"CUDA_ERROR_ILLEGAL_ADDRESS",
        c"an illegal memory access was encountered",
    ),
    (
        701,
        c"CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES",
        c"too many resources requested for launch",
    ),
    (
        702,
        c"CUDA_ERROR_LAUNCH_TIMEOUT",
        c"the launch timed out and was terminated",
    ),
    (710, c"CUDA_ERROR_ASSERT", c"device-side assert triggered"),
    (
        715,
        c"CUDA_ERROR_ILLEGAL_INSTRUCTION",
        c"an illegal instruction was encountered",
    ),
    (
        719,
        c"CUDA_ERROR_LAUNCH_FAILED",
        c"unspecified launch failure",
    ),
    (800, c"CUDA_ERROR_NOT_PERMITTED", c"operation not permitted"),
    (801, c"CUDA_ERROR_NOT_SUPPORTED", c"operation not supported"),
    (999, c"CUDA_ERROR_UNKNOWN", c"unknown error"),
];

impl std::fmt::Display for CuResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.name() {
            Some(n) => write!(f, "{n} ({})", self.0),
            None => write!(f, "CUresult {}", self.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_descriptions_come_from_the_one_table() {
        assert_eq!(CuResult(46).name(), Some("CUDA_ERROR_DEVICE_UNAVAILABLE"));
        assert_eq!(
            CuResult::INVALID_SOURCE.description(),
            Some("device kernel image is invalid")
        );
        assert_eq!(CuResult(12345).name(), None);
        assert_eq!(CuResult(12345).to_string(), "CUresult 12345");
        assert_eq!(
            CuResult::NOT_SUPPORTED.to_string(),
            "CUDA_ERROR_NOT_SUPPORTED (801)"
        );
        for (code, name, _) in ERRORS {
            assert_eq!(CuResult(*code).c_name(), Some(*name));
            assert!(name.to_str().unwrap().starts_with("CUDA_"), "{name:?}");
        }
        // Each code once, in order.
        assert!(ERRORS.windows(2).all(|w| w[0].0 < w[1].0));
    }
}
