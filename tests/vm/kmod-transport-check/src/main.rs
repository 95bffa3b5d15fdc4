//! Runs in the test guest: exercises `kmod_transport.rs` over `/dev/vgpu0` (or `$VGPU_DEVICE`).
#[path = "../../../../guest-driver-shim/kmod/rust/kmod_transport.rs"]
mod kmod_transport;

use kmod_transport::KmodTransport;

const MAGIC: u32 = 0x5550_4756;

fn msg(flags: u16, ncalls_hello: bool, resp_cap: u32, seq: u64) -> Vec<u8> {
    let mut m = vec![0u8; 32];
    if ncalls_hello {
        m.extend_from_slice(&1u16.to_le_bytes()); // opcode Hello
        m.extend_from_slice(&0u16.to_le_bytes());
        m.extend_from_slice(&56u32.to_le_bytes());
        let mut body = [0u8; 56];
        body[0..2].copy_from_slice(&1u16.to_le_bytes());
        body[4..8].copy_from_slice(&4u32.to_le_bytes());
        body[8..28].copy_from_slice(b"kmod-transport-check");
        m.extend_from_slice(&body);
    }
    let len = m.len() as u32;
    m[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    m[4..6].copy_from_slice(&1u16.to_le_bytes());
    m[6..8].copy_from_slice(&flags.to_le_bytes());
    m[12..16].copy_from_slice(&u32::from(ncalls_hello).to_le_bytes());
    m[16..20].copy_from_slice(&len.to_le_bytes());
    m[20..24].copy_from_slice(&resp_cap.to_le_bytes());
    m[24..32].copy_from_slice(&seq.to_le_bytes());
    m
}

fn main() {
    let dev = std::env::var("VGPU_DEVICE").unwrap_or_else(|_| "/dev/vgpu0".into());
    let t = KmodTransport::open(&dev).unwrap_or_else(|e| panic!("open {dev}: {e}"));
    println!("OK rust open {dev}: {:?}", t.info());
    let mut resp = vec![0u8; 512];
    let c = t.submit(&msg(1, true, 512, 1), &mut resp, &[], &mut []).expect("hello");
    assert!(c.resp_len >= 24 && u32::from_le_bytes(resp[0..4].try_into().unwrap()) == MAGIC);
    println!("OK rust hello resp_len={} data_out_written={}", c.resp_len, c.data_out_written);
    // invalid: CLIENT_CLOSE from userspace
    let e = t.submit(&msg(2, false, 0, 2), &mut [], &[], &mut []).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
    println!("OK rust CLIENT_CLOSE refused: {e}");
    // fire-and-forget without and with data, then a synchronous call orders after them
    t.submit_nowait(&msg(0, false, 0, 3)).expect("nowait");
    let data = vec![0xA5u8; 1 << 20];
    // SAFETY: `data` is not modified before the synchronous submit below returns.
    unsafe { t.submit_nowait_with_data(&msg(0, false, 0, 4), &[&data]) }.expect("nowait data");
    let c = t.submit(&msg(1, true, 512, 5), &mut resp, &[&data[..4096]], &mut []).expect("sync");
    drop(data);
    println!("OK rust nowait x2 then sync resp_len={}", c.resp_len);
    // concurrent submits from several threads on one transport
    std::thread::scope(|s| {
        for i in 0..4u64 {
            let t = &t;
            s.spawn(move || {
                let mut r = vec![0u8; 512];
                for k in 0..50 {
                    t.submit(&msg(1, true, 512, 100 + i * 1000 + k), &mut r, &[], &mut []).expect("thread submit");
                }
            });
        }
    });
    println!("OK rust 4 threads x 50 submits, client {}", t.client_id());
}
