//! Any bytes as a module image from a guest: the parser must list its kernels and globals or
//! refuse it, never panic or read outside the bytes it was given.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vgpu_cuda_image::{ELF_HEADER_LEN, elf_len, elf_section_table, fatbin, module_info};

fuzz_target!(|data: &[u8]| {
    let _ = module_info(data);
    let _ = fatbin::parse(data);
    let _ = fatbin::wrapper_data(data);
    if data.len() >= ELF_HEADER_LEN
        && let Ok((off, len)) = elf_section_table(data)
        && let Some(table) = data.get(off..off.saturating_add(len))
    {
        let _ = elf_len(data, table);
    }
});
