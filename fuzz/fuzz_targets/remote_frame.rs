//! Any bytes from a VM host, as they arrive inside TLS: the GPU host's session handshake and
//! frame decoder (on the simulator) must refuse or serve them, never panic, and never commit
//! memory that a frame only declares (libFuzzer's RSS limit stands guard).
#![no_main]

use std::{
    io::{self, Read, Write},
    time::Instant,
};

use libfuzzer_sys::fuzz_target;
use vgpu_executor::{Executor, SliceLimits, sim::SimGpu};
use vgpu_remote::{
    Secret, SessionOptions, SessionParams, frame::SessionHeader, server::session, tls::Transport,
};
use zerocopy::IntoBytes;

/// The fuzzer's bytes as what the peer sent; what the server sends is counted and dropped.
struct Peer<'a> {
    input: &'a [u8],
    sent: usize,
}

impl Read for Peer<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.input.read(buf)
    }
}

impl Write for Peer<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.sent += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Transport for Peer<'_> {
    fn set_deadline(&mut self, _: Option<Instant>) {}
}

fuzz_target!(|data: &[u8]| {
    // The first byte picks whether the host requires the pool's secret (then a session can
    // only be refused: the fuzzer cannot forge the proof), and whether a valid session header
    // comes before the fuzzer's bytes (so they reach the request decoder).
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut input = Vec::new();
    if mode & 3 == 2 {
        let hello = SessionHeader::new(&SessionParams { gpu: 0, mem_limit: Some(32 << 20), sm_count: None });
        input.extend_from_slice(hello.as_bytes());
    }
    input.extend_from_slice(rest);
    let opts = SessionOptions {
        secret: (mode & 1 == 1).then(|| Secret::new("fuzz").unwrap()),
        max_in_flight: 64 << 20,
        ..SessionOptions::default()
    };
    let open = |p: &SessionParams| -> Result<Executor, String> {
        if p.gpu > 0 {
            return Err("no such GPU".into());
        }
        Ok(Executor::new(Box::new(SimGpu::new(64 << 20)), SliceLimits { mem_limit: p.mem_limit, sm_count: p.sm_count, ctx_overhead: 0 }))
    };
    let mut peer = Peer { input: &input, sent: 0 };
    let _ = session(&mut peer, &[0u8; 32], &open, &opts, Instant::now());
    // The challenge always goes out first.
    assert!(peer.sent >= 48);
});
