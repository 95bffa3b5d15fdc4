//! Images in this process's memory, bounded by their own headers: the `__fatBinC_Wrapper_t`
//! the CUDA runtime registers, fatbin containers, cubins and PTX. The parsing is
//! `vgpu-cuda-image`'s (the executor's too); this module only reads the bytes those headers
//! say are there.

use std::ffi::{c_char, c_void};

pub use vgpu_cuda_image::fatbin::{FatbinError, describe, parse};
use vgpu_cuda_image::{
    ELF_HEADER_LEN, ELF_MAGIC, ImageError, elf_len, elf_section_table,
    fatbin::{FATBIN_MAGIC, HEADER_LEN, WRAPPER_LEN, WRAPPER_MAGIC, container_len, wrapper_data},
};

/// The container a fatbin header points at, bounded by its own header.
///
/// # Safety
/// `p` must be NULL or point at a fatbin container that is readable for the length its header
/// states (as nvcc-generated programs guarantee).
pub unsafe fn from_header<'a>(p: *const c_void) -> Result<&'a [u8], FatbinError> {
    if p.is_null() {
        return Err(FatbinError::Null);
    }
    // SAFETY: a fatbin container starts with a 16-byte header (caller's contract).
    let header = unsafe { std::slice::from_raw_parts(p.cast::<u8>(), HEADER_LEN) };
    let total = container_len(header)?;
    // SAFETY: the container spans `total` bytes by its own header (caller's contract).
    let image = unsafe { std::slice::from_raw_parts(p.cast::<u8>(), total) };
    parse(image)?;
    Ok(image)
}

/// The container a `__fatBinC_Wrapper_t` points at.
///
/// # Safety
/// `wrapper` must be NULL or point at a wrapper whose `data` satisfies [`from_header`].
pub unsafe fn from_wrapper<'a>(wrapper: *const c_void) -> Result<&'a [u8], FatbinError> {
    if wrapper.is_null() {
        return Err(FatbinError::Null);
    }
    // SAFETY: a wrapper is 24 readable bytes (caller's contract).
    let w = unsafe { std::slice::from_raw_parts(wrapper.cast::<u8>(), WRAPPER_LEN) };
    let data = wrapper_data(w)? as usize as *const c_void;
    // SAFETY: `data` points at the wrapped container (caller's contract).
    unsafe { from_header(data) }
}

/// Why an image in memory could not be bounded.
#[derive(Debug, thiserror::Error)]
pub enum ImageBoundsError {
    #[error("NULL image pointer")]
    Null,
    #[error("malformed fatbin")]
    Fatbin(#[from] FatbinError),
    #[error("malformed image")]
    Image(#[from] ImageError),
}

/// Any image the module API accepts (cubin, fatbin, fatbin wrapper or NUL-terminated PTX),
/// bounded by its own headers.
///
/// # Safety
/// `image` must be NULL or point at one of those formats, readable for the length its headers
/// state (or up to and including its NUL, for PTX).
pub unsafe fn image_bytes<'a>(image: *const c_void) -> Result<&'a [u8], ImageBoundsError> {
    if image.is_null() {
        return Err(ImageBoundsError::Null);
    }
    let p = image.cast::<u8>();
    // SAFETY: every format starts with at least 16 readable bytes.
    let head = unsafe { std::slice::from_raw_parts(p, HEADER_LEN) };
    let magic = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
    if magic == WRAPPER_MAGIC {
        // SAFETY: a wrapper (caller's contract).
        return Ok(unsafe { from_wrapper(image) }?);
    }
    if magic == FATBIN_MAGIC {
        // SAFETY: a container (caller's contract).
        return Ok(unsafe { from_header(image) }?);
    }
    if head.starts_with(ELF_MAGIC) {
        // SAFETY: an ELF64 header is 64 bytes.
        let h = unsafe { std::slice::from_raw_parts(p, ELF_HEADER_LEN) };
        let (off, len) = elf_section_table(h)?;
        // SAFETY: the section header table lies inside the image (caller's contract).
        let table = unsafe { std::slice::from_raw_parts(p.add(off), len) };
        let end = elf_len(h, table)?;
        // SAFETY: the image spans `end` bytes by its own headers.
        return Ok(unsafe { std::slice::from_raw_parts(p, end) });
    }
    // PTX text: up to and including the NUL.
    // SAFETY: NUL-terminated per the API contract.
    let len = unsafe { std::ffi::CStr::from_ptr(p.cast::<c_char>()) }
        .to_bytes_with_nul()
        .len();
    // SAFETY: as above.
    Ok(unsafe { std::slice::from_raw_parts(p, len) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures")
            .join(name);
        std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    #[test]
    fn pointers_through_a_wrapper_find_the_whole_container() {
        let image = fixture("kernels.fatbin");
        // Extra bytes after the container must not be taken.
        let mut padded = image.clone();
        padded.extend_from_slice(&[0xAB; 32]);
        let mut wrapper = Vec::new();
        wrapper.extend_from_slice(&WRAPPER_MAGIC.to_le_bytes());
        wrapper.extend_from_slice(&1u32.to_le_bytes());
        wrapper.extend_from_slice(&(padded.as_ptr() as u64).to_le_bytes());
        wrapper.extend_from_slice(&0u64.to_le_bytes());
        // SAFETY: the wrapper points at a live, complete container.
        let got = unsafe { from_wrapper(wrapper.as_ptr().cast()) }.unwrap();
        assert_eq!(got, image.as_slice());
        // SAFETY: as above.
        let got = unsafe { from_header(padded.as_ptr().cast()) }.unwrap();
        assert_eq!(got.len(), image.len());
        // SAFETY: as above; any format through the module API's entry.
        let got = unsafe { image_bytes(wrapper.as_ptr().cast()) }.unwrap();
        assert_eq!(got, image.as_slice());
        let wrapper = [0u8; 24];
        // SAFETY: a readable 24-byte buffer.
        let r = unsafe { from_wrapper(wrapper.as_ptr().cast()) };
        assert_eq!(r, Err(FatbinError::WrapperMagic(0)));
        // SAFETY: NULL is accepted and refused.
        let r = unsafe { from_wrapper(std::ptr::null()) };
        assert_eq!(r, Err(FatbinError::Null));
    }

    #[test]
    fn a_cubin_and_ptx_in_memory_are_bounded_by_their_headers() {
        let cubin = fixture("kernels.cubin");
        let mut padded = cubin.clone();
        padded.extend_from_slice(&[0xCD; 64]);
        // SAFETY: a complete cubin followed by more readable bytes.
        let got = unsafe { image_bytes(padded.as_ptr().cast()) }.unwrap();
        assert_eq!(got.len(), cubin.len());
        let ptx = b".version 8.0\n.entry k()\n{ ret; }\n\0trailing";
        // SAFETY: NUL-terminated text.
        let got = unsafe { image_bytes(ptx.as_ptr().cast()) }.unwrap();
        assert_eq!(got, &ptx[..ptx.iter().position(|&b| b == 0).unwrap() + 1]);
    }
}
