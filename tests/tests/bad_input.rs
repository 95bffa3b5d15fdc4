//! Malformed and hostile input from the ring: each gets an error (or is dropped) and the
//! daemon keeps serving. These talk to the real daemon over virtio-user with a raw client.

use vgpu_protocol::{
    CuResult, DataRef, Encoder, Opcode, PROTOCOL_MAJOR, calls, calls::read_str, flags,
    parse_response,
};
use vgpu_tests::{Daemon, RawClient, scratch};
use vgpu_virtio_user::Seg;
use zerocopy::{FromBytes, Immutable, IntoBytes};

fn message<T: IntoBytes + Immutable>(client: u32, op: u16, body: &T, tail: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; 4096];
    let mut e = Encoder::new(&mut buf).unwrap();
    e.push(op, 0, body, tail).unwrap();
    let n = e.finish(flags::WANT_REPLY, client, 1 << 16, 1);
    buf.truncate(n);
    buf
}

/// (result, body) of the last record of a reply.
fn last(reply: &[u8]) -> (u32, Vec<u8>) {
    let (_, records) = parse_response(reply).expect("a well-formed reply");
    let r = records.last().expect("a record").expect("a good record");
    (r.result, r.body.to_vec())
}

/// A 4 KiB allocation in context `ctx`.
fn alloc_4k(ctx: u64) -> calls::MemAlloc {
    calls::MemAlloc {
        ctx: ctx.into(),
        size: 4096.into(),
    }
}

fn hello(c: &mut RawClient, client: u32) {
    let body = calls::Hello {
        proto_major: PROTOCOL_MAJOR.into(),
        ..Default::default()
    };
    assert_eq!(
        last(&c.send(&message(client, Opcode::Hello as u16, &body, &[]))).0,
        0
    );
}

fn handle<T: IntoBytes + Immutable>(c: &mut RawClient, client: u32, op: Opcode, body: &T) -> u64 {
    let (r, b) = last(&c.send(&message(client, op as u16, body, &[])));
    assert_eq!(r, 0, "{op:?} failed");
    calls::HandleReply::read_from_prefix(&b)
        .unwrap()
        .0
        .handle
        .get()
}

#[test]
fn hostile_messages_get_errors_and_the_daemon_keeps_serving() {
    let dir = scratch("bad-input");
    let mut daemon = Daemon::start_sim(&dir, &[]);
    let mut c = RawClient::connect(&daemon.socket);

    // Garbage: no magic, so no reply at all, and nothing breaks.
    assert!(c.send(&[0xAB; 100]).is_empty());
    // A truncated header.
    assert!(c.send(&[0x56, 0x47]).is_empty());

    hello(&mut c, 1);
    // A declared length past what arrived.
    let mut m = message(1, Opcode::DeviceGetCount as u16, &(), &[]);
    m[16..20].copy_from_slice(&10_000u32.to_le_bytes());
    assert_ne!(last(&c.send(&m)).0, 0);
    // A call record whose length runs past the message.
    let mut m = message(1, Opcode::DeviceGetCount as u16, &(), &[]);
    let at = size_of::<vgpu_protocol::MsgHeader>() + 4;
    m[at..at + 4].copy_from_slice(&4096u32.to_le_bytes());
    assert_eq!(last(&c.send(&m)).0, CuResult::INVALID_VALUE.0);
    // An unknown opcode.
    assert_eq!(
        last(&c.send(&message(1, 0x7777, &(), &[]))).0,
        CuResult::NOT_SUPPORTED.0
    );
    // A body too short for its opcode.
    assert_eq!(
        last(&c.send(&message(1, Opcode::MemAlloc as u16, &0u8, &[]))).0,
        CuResult::INVALID_VALUE.0
    );
    // Calls before the handshake.
    assert_eq!(
        last(&c.send(&message(99, Opcode::DeviceGetCount as u16, &(), &[]))).0,
        CuResult::NOT_INITIALIZED.0
    );

    // Unknown handles.
    let ctx = handle(&mut c, 1, Opcode::CtxCreate, &calls::CtxCreate::default());
    let bogus = calls::StreamArg {
        stream: 0xdead_0000_0010u64.into(),
        ctx: ctx.into(),
    };
    assert_eq!(
        last(&c.send(&message(1, Opcode::StreamSynchronize as u16, &bogus, &[]))).0,
        CuResult::INVALID_HANDLE.0
    );
    let bogus_ctx = alloc_4k(ctx + 1);
    assert_eq!(
        last(&c.send(&message(1, Opcode::MemAlloc as u16, &bogus_ctx, &[]))).0,
        CuResult::INVALID_CONTEXT.0
    );

    // Another client's handles and memory are out of reach.
    let dptr = handle(&mut c, 1, Opcode::MemAlloc, &alloc_4k(ctx));
    // Handle numbers are per client: client 2's first context has the same number as client
    // 1's. Client 1's second context has no counterpart in client 2's table.
    let ctx_b = handle(&mut c, 1, Opcode::CtxCreate, &calls::CtxCreate::default());
    hello(&mut c, 2);
    let other_ctx = handle(&mut c, 2, Opcode::CtxCreate, &calls::CtxCreate::default());
    let steal = calls::MemFree {
        ctx: other_ctx.into(),
        dptr: dptr.into(),
    };
    assert_eq!(
        last(&c.send(&message(2, Opcode::MemFree as u16, &steal, &[]))).0,
        CuResult::INVALID_VALUE.0
    );
    assert_eq!(
        last(&c.send(&message(2, Opcode::MemAlloc as u16, &alloc_4k(ctx_b), &[]))).0,
        CuResult::INVALID_CONTEXT.0
    );
    let out = c.vu.alloc(4096, 4096).unwrap();
    let read_theirs = calls::MemcpyDtoH {
        ctx: other_ctx.into(),
        stream: 0.into(),
        src: dptr.into(),
        data: DataRef::new(0, 64),
    };
    let m = message(2, Opcode::MemcpyDtoH as u16, &read_theirs, &[]);
    let reply = c.send_with(
        &m,
        &[],
        &[Seg {
            gpa: out.gpa,
            len: 64,
            writable: true,
        }],
    );
    assert_eq!(last(&reply).0, CuResult::INVALID_VALUE.0);

    // Copies in the client wrote wrongly: a data reference past the end of the data it came
    // with, a copy past the end of the allocation, descriptors outside guest memory or running
    // past the end of a region.
    let htod = |dst: u64, data: DataRef| {
        let copy = calls::MemcpyHtoD {
            ctx: ctx.into(),
            stream: 0.into(),
            dst: dst.into(),
            data,
        };
        message(1, Opcode::MemcpyHtoD as u16, &copy, &[])
    };
    let data_in = |gpa: u64, len: u32| Seg {
        gpa,
        len,
        writable: false,
    };
    let end = out.gpa + (2 << 20) - 8;
    for (what, m, seg) in [
        (
            "data past its end",
            htod(dptr, DataRef::new(32, 64)),
            data_in(out.gpa, 64),
        ),
        (
            "past the allocation",
            htod(dptr + 4090, DataRef::new(0, 64)),
            data_in(out.gpa, 64),
        ),
        (
            "outside guest memory",
            htod(dptr, DataRef::new(0, 64)),
            data_in(1 << 50, 64),
        ),
        (
            "past the region's end",
            htod(dptr, DataRef::new(0, 64)),
            data_in(end, 4096),
        ),
    ] {
        let reply = c.send_with(&m, &[seg], &[]);
        assert_eq!(last(&reply).0, CuResult::INVALID_VALUE.0, "{what}");
    }
    let m = htod(dptr, DataRef::new(0, 64));
    // A reply area overlapping the message.
    let msg_gpa = c.msg.gpa;
    // SAFETY: the message buffer is ours.
    unsafe { std::ptr::copy_nonoverlapping(m.as_ptr(), c.msg.hva, m.len()) };
    let used = c.submit_wait(&[
        Seg {
            gpa: msg_gpa,
            len: m.len() as u32,
            writable: false,
        },
        Seg {
            gpa: msg_gpa,
            len: 256,
            writable: true,
        },
    ]);
    assert_eq!(used, 0);

    // And the good path still works on the same connection.
    // SAFETY: `out` is shared memory we own.
    unsafe { std::ptr::write_bytes(out.hva, 0x5a, 64) };
    let reply = c.send_with(&m, &[data_in(out.gpa, 64)], &[]);
    assert_eq!(last(&reply).0, 0);
    assert!(daemon.is_running());
}

/// The message of a handshake reply that refuses with `NOT_SUPPORTED`.
fn refusal_text((r, body): (u32, Vec<u8>)) -> String {
    assert_eq!(r, CuResult::NOT_SUPPORTED.0);
    read_str(
        &calls::HelloReply::read_from_prefix(&body)
            .unwrap()
            .0
            .message,
    )
}

#[test]
fn a_different_protocol_version_is_refused_with_both_versions_named() {
    let dir = scratch("version");
    let daemon = Daemon::start_sim(&dir, &[]);
    let mut c = RawClient::connect(&daemon.socket);
    // A guest two majors ahead: the header itself is refused.
    let mut m = message(1, Opcode::Hello as u16, &calls::Hello::default(), &[]);
    m[4..6].copy_from_slice(&(PROTOCOL_MAJOR + 2).to_le_bytes());
    let text = refusal_text(last(&c.send(&m)));
    assert!(
        text.contains("Protocol version 3") && text.contains("protocol 1."),
        "{text}"
    );
    // A guest whose handshake names another major.
    let body = calls::Hello {
        proto_major: 7.into(),
        ..Default::default()
    };
    let text = refusal_text(last(&c.send(&message(1, Opcode::Hello as u16, &body, &[]))));
    assert!(
        text.contains("guest speaks protocol 7.0, this host 1.0"),
        "{text}"
    );
    // The sim says what it is in the handshake.
    hello(&mut c, 1);
    let body = calls::Hello {
        proto_major: PROTOCOL_MAJOR.into(),
        ..Default::default()
    };
    let (_, reply) = last(&c.send(&message(1, Opcode::Hello as u16, &body, &[])));
    let h = calls::HelloReply::read_from_prefix(&reply).unwrap().0;
    assert_ne!(h.caps.get() & vgpu_protocol::caps::SIM_GPU, 0);
    assert!(read_str(&h.message).contains("sim"));
}
