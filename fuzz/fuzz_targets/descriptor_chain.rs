//! Any descriptor chain over a small guest memory: parsing must refuse or accept it without
//! panicking, and every segment it yields must lie inside guest memory.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vhost_gpu::chain::{Desc, ParsedChain};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

const MEM: u64 = 1 << 16;

fuzz_target!(|data: &[u8]| {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM as usize), (GuestAddress(2 * MEM), MEM as usize)]).unwrap();
    // The first 256 bytes become guest memory contents (a message header, perhaps).
    let (head, rest) = data.split_at(data.len().min(256));
    mem.write_slice(head, GuestAddress(0)).unwrap();
    // Bit 1 of the flags byte keeps the address and length as given (the whole address space,
    // up to u64::MAX, where sums overflow); otherwise they are folded near guest memory, where
    // the interesting edges are.
    let descs: Vec<Desc> = rest
        .chunks_exact(13)
        .map(|c| {
            let addr = u64::from_le_bytes(c[0..8].try_into().unwrap());
            let len = u32::from_le_bytes(c[8..12].try_into().unwrap());
            let raw = c[12] & 2 == 2;
            Desc {
                addr: if raw { addr } else { addr % (4 * MEM) },
                len: if raw { len } else { len % (2 * MEM as u32) },
                writable: c[12] & 1 == 1,
            }
        })
        .collect();
    let mut parsed = ParsedChain::default();
    if parsed.parse(&mem, &descs).is_ok() {
        let lo = mem.get_host_address(GuestAddress(0)).unwrap() as usize;
        let hi = mem.get_host_address(GuestAddress(2 * MEM)).unwrap() as usize;
        for s in parsed.data_in.iter().chain(parsed.data_out.iter()) {
            let p = s.ptr as usize;
            let inside = |base: usize| p >= base && p + s.len <= base + MEM as usize;
            assert!(inside(lo) || inside(hi), "segment outside guest memory");
        }
    }
});
