//! Any bytes as a message from a guest: the decoder and the executor (on the simulator) must
//! answer or refuse, never panic or touch memory outside the data they were given.
#![no_main]

use std::sync::Mutex;

use libfuzzer_sys::fuzz_target;
use vgpu_executor::{DataStream, Executor, SliceLimits, gpu::HostSeg, sim::SimGpu};
use vgpu_protocol::{Encoder, Opcode, PROTOCOL_MAJOR, calls, flags};

static EXECUTOR: Mutex<Option<Executor>> = Mutex::new(None);

fuzz_target!(|data: &[u8]| {
    let mut guard = EXECUTOR.lock().unwrap();
    let ex = guard.get_or_insert_with(|| {
        let mut ex = Executor::new(Box::new(SimGpu::new(64 << 20)), SliceLimits { mem_limit: Some(32 << 20), ..Default::default() });
        // Greet client 0 so the fuzzed calls reach past the handshake check.
        let mut buf = vec![0u8; 256];
        let mut e = Encoder::new(&mut buf).unwrap();
        let hello = calls::Hello { proto_major: PROTOCOL_MAJOR.into(), ..Default::default() };
        e.push(Opcode::Hello as u16, 0, &hello, &[]).unwrap();
        let n = e.finish(flags::WANT_REPLY, 0, 4096, 0);
        let mut reply = Vec::new();
        ex.execute(&buf[..n], DataStream::EMPTY, DataStream::EMPTY, &mut reply);
        ex
    });
    // The tail of the input doubles as data-in, and a scratch buffer as data-out.
    let split = data.len() / 2;
    let mut data_in = data[split..].to_vec();
    let mut data_out = vec![0u8; 4096];
    let ins = [HostSeg { ptr: data_in.as_mut_ptr(), len: data_in.len() }];
    let outs = [HostSeg { ptr: data_out.as_mut_ptr(), len: data_out.len() }];
    let mut reply = Vec::new();
    // Half the inputs are raw bytes; the other half a well-formed message of one call whose
    // opcode the second byte picks from every opcode there is, with the fuzzer's bytes as its
    // body, so every message type gets past the header checks.
    let mut framed = vec![0u8; 64 << 10];
    let msg: &[u8] = match data {
        [mode, pick, flags_byte, body @ ..] if mode & 1 == 1 => {
            let opcode = Opcode::ALL[usize::from(*pick) % Opcode::ALL.len()] as u16;
            let body = &body[..body.len().min(split)];
            let mut e = Encoder::new(&mut framed).unwrap();
            match e.push(opcode, u16::from(*flags_byte & 3), &(), body) {
                Ok(_) => {
                    let n = e.finish(flags::WANT_REPLY, 0, 1 << 16, 1);
                    &framed[..n]
                }
                Err(_) => data,
            }
        }
        _ => data,
    };
    let outcome = ex.execute(msg, DataStream::new(&ins), DataStream::new(&outs), &mut reply);
    assert!(outcome.reply_len <= reply.len());
    assert!(outcome.data_out_len <= data_out.len() as u64);
});
