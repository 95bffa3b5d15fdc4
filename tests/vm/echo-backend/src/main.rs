//! vgpu-echo-backend: a vhost-user test double for the guest driver (tests/vm).
//!
//! Implements the daemon's framing contract, not its semantics:
//! * config space: "VGPU", u16 protocol major 1, u16 queue count;
//! * readable bytes = message (`req_len` from the header) + data-in; writable bytes = reply area
//!   (`resp_cap`) + data-out;
//! * reply = RespHeader{magic, nreplies, len, data_out_len, seq}; a `Hello` call (opcode 1) gets
//!   a HelloReply with message "echo-backend (not vhost-gpu)"; any other message gets a reply
//!   with zero records and its data-in copied to data-out (an echo, for bandwidth tests);
//! * CLIENT_CLOSE (flags bit1) frees the client: logs `client N freed`;
//! * on disconnect logs `frontend disconnected, freed N client(s)` and accepts the next one.
//!
//! Hostile replies for robustness tests (first call's opcode): 0xFFF0 = used length 0xFFFF_FFF0,
//! 0xFFF1 = used length 0 (no reply), 0xFFF2 = reply without magic, 0xFFF3 = never complete,
//! 0xFFF4 = complete a descriptor id that is not the chain's head (head ^ 1) instead of the chain,
//! 0xFFF5 = slow request (2 ms), to fill the ring.
//!
//! Usage: vgpu-echo-backend --socket PATH [--queues N]
use std::collections::BTreeSet;
use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex, RwLock};

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackend, VhostUserDaemon, VringRwLock, VringT};
use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::{QueueOwnedT, Reader, Writer};
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier};

const MAGIC: u32 = 0x5550_4756;
/// Internal marker: "complete the wrong descriptor id".
const WRONG_ID: u32 = 0xBAD1_D000;

#[derive(Clone)]
struct Echo {
    nq: usize,
    mem: Arc<RwLock<Option<GuestMemoryAtomic<GuestMemoryMmap>>>>,
    clients: Arc<Mutex<BTreeSet<u32>>>,
    event_idx: Arc<Mutex<bool>>,
    exit: Arc<Mutex<Option<(EventConsumer, EventNotifier)>>>,
}

fn le16(b: &[u8], o: usize) -> u16 { u16::from_le_bytes([b[o], b[o + 1]]) }
fn le32(b: &[u8], o: usize) -> u32 { u32::from_le_bytes(b[o..o + 4].try_into().unwrap()) }
fn le64(b: &[u8], o: usize) -> u64 { u64::from_le_bytes(b[o..o + 8].try_into().unwrap()) }

impl Echo {
    /// Handle one chain; returns Some(used length) or None to never complete it.
    fn handle(&self, mut r: Reader<'_, ()>, mut w: Writer<'_, ()>) -> io::Result<Option<u32>> {
        let mut hdr = [0u8; 32];
        r.read_exact(&mut hdr)?;
        if le32(&hdr, 0) != MAGIC {
            eprintln!("echo: bad magic {:#x}", le32(&hdr, 0));
            return Ok(Some(0));
        }
        let flags = le16(&hdr, 6);
        let client = le32(&hdr, 8);
        let ncalls = le32(&hdr, 12);
        let req_len = le32(&hdr, 16) as usize;
        let resp_cap = le32(&hdr, 20) as usize;
        let seq = le64(&hdr, 24);
        if flags & 2 != 0 {
            let had = self.clients.lock().unwrap().remove(&client);
            eprintln!("echo: client {client} freed (close, known={had})");
            return Ok(Some(0));
        }
        if self.clients.lock().unwrap().insert(client) {
            eprintln!("echo: new client {client}");
        }
        let mut body = vec![0u8; req_len.saturating_sub(32)];
        r.read_exact(&mut body)?;
        let opcode = if ncalls > 0 && body.len() >= 8 { le16(&body, 0) } else { 0 };
        let mut data_in = Vec::new();
        r.read_to_end(&mut data_in)?;
        match opcode {
            0xFFF0 => return Ok(Some(0xFFFF_FFF0)),
            0xFFF1 => return Ok(Some(0)),
            0xFFF3 => return Ok(None),
            0xFFF4 => return Ok(Some(WRONG_ID)),
            0xFFF5 => std::thread::sleep(std::time::Duration::from_millis(2)),
            _ => {}
        }
        if resp_cap == 0 && w.available_bytes() == 0 {
            return Ok(Some(0));
        }
        let mut out = if w.available_bytes() > resp_cap { Some(w.split_at(resp_cap).map_err(io::Error::other)?) } else { None };
        let mut out_len = 0usize;
        if let Some(o) = out.as_mut() {
            let n = data_in.len().min(o.available_bytes());
            o.write_all(&data_in[..n])?;
            out_len = n;
        }
        let mut resp = Vec::with_capacity(256);
        let magic = if opcode == 0xFFF2 { 0xdead_beef } else { MAGIC };
        resp.extend_from_slice(&magic.to_le_bytes());
        resp.extend_from_slice(&u32::from(opcode == 1).to_le_bytes()); // nreplies
        resp.extend_from_slice(&0u32.to_le_bytes()); // len, patched below
        resp.extend_from_slice(&(out_len as u32).to_le_bytes());
        resp.extend_from_slice(&seq.to_le_bytes());
        if opcode == 1 {
            // ReplyHeader{opcode, reserved, result=0, len, pad} (16 bytes) + HelloReply (224 bytes)
            resp.extend_from_slice(&1u16.to_le_bytes());
            resp.extend_from_slice(&0u16.to_le_bytes());
            resp.extend_from_slice(&0u32.to_le_bytes());
            resp.extend_from_slice(&224u32.to_le_bytes());
            resp.extend_from_slice(&0u32.to_le_bytes());
            let mut hr = vec![0u8; 224];
            hr[0..2].copy_from_slice(&1u16.to_le_bytes());
            hr[8..12].copy_from_slice(&1u32.to_le_bytes()); // device_count
            let id = b"vgpu-echo-backend";
            hr[16..16 + id.len()].copy_from_slice(id);
            let msg = b"echo-backend (not vhost-gpu)";
            hr[64..64 + msg.len()].copy_from_slice(msg);
            resp.extend_from_slice(&hr);
        }
        let len = resp.len() as u32;
        resp[8..12].copy_from_slice(&len.to_le_bytes());
        let n = resp.len().min(resp_cap);
        w.write_all(&resp[..n])?;
        Ok(Some(if out_len > 0 { (resp_cap + out_len) as u32 } else { n as u32 }))
    }

    fn process(&self, vring: &VringRwLock) -> io::Result<bool> {
        let Some(atomic) = self.mem.read().unwrap().clone() else { return Ok(false) };
        let mem = atomic.memory();
        let chains: Vec<_> = vring.get_mut().get_queue_mut().iter(mem.clone()).map_err(io::Error::other)?.collect();
        let mut any = false;
        for chain in chains {
            let head = chain.head_index();
            let r = Reader::new(&*mem, chain.clone()).map_err(io::Error::other)?;
            let w = Writer::new(&*mem, chain.clone()).map_err(io::Error::other)?;
            match self.handle(r, w) {
                Ok(Some(WRONG_ID)) => {
                    eprintln!("echo: completing id {} instead of chain {head} (hostile test)", head ^ 1);
                    vring.add_used(head ^ 1, 0).map_err(io::Error::other)?;
                    any = true;
                }
                Ok(Some(used)) => { vring.add_used(head, used).map_err(io::Error::other)?; any = true; }
                Ok(None) => eprintln!("echo: dropping chain {head} (never completed)"),
                Err(e) => { eprintln!("echo: chain {head}: {e}"); vring.add_used(head, 0).map_err(io::Error::other)?; any = true; }
            }
        }
        Ok(any)
    }
}

impl VhostUserBackend for Echo {
    type Bitmap = ();
    type Vring = VringRwLock;
    fn num_queues(&self) -> usize { self.nq }
    fn max_queue_size(&self) -> usize { 1024 }
    fn features(&self) -> u64 {
        1 << VIRTIO_F_VERSION_1 | 1 << VIRTIO_RING_F_EVENT_IDX | 1 << VIRTIO_RING_F_INDIRECT_DESC
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }
    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::CONFIG | VhostUserProtocolFeatures::REPLY_ACK
    }
    fn set_event_idx(&self, enabled: bool) { *self.event_idx.lock().unwrap() = enabled; }
    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let mut c = [0u8; 8];
        c[0..4].copy_from_slice(b"VGPU");
        c[4..6].copy_from_slice(&1u16.to_le_bytes());
        c[6..8].copy_from_slice(&(self.nq as u16).to_le_bytes());
        let o = (offset as usize).min(8);
        let e = (o + size as usize).min(8);
        let mut v = c[o..e].to_vec();
        v.resize(size as usize, 0);
        v
    }
    fn update_memory(&self, mem: GuestMemoryAtomic<GuestMemoryMmap>) -> io::Result<()> {
        *self.mem.write().unwrap() = Some(mem);
        Ok(())
    }
    fn exit_event(&self, _t: usize) -> Option<(EventConsumer, EventNotifier)> {
        let g = self.exit.lock().unwrap();
        let (c, n) = g.as_ref()?;
        Some((c.try_clone().ok()?, n.try_clone().ok()?))
    }
    fn handle_event(&self, q: u16, _ev: EventSet, vrings: &[VringRwLock], _t: usize) -> io::Result<()> {
        let Some(vring) = vrings.get(q as usize) else { return Ok(()) };
        if *self.event_idx.lock().unwrap() {
            loop {
                vring.disable_notification().map_err(io::Error::other)?;
                self.process(vring)?;
                if !vring.enable_notification().map_err(io::Error::other)? { break; }
            }
            if vring.needs_notification().map_err(io::Error::other)? { vring.signal_used_queue()?; }
        } else if self.process(vring)? {
            vring.signal_used_queue()?;
        }
        Ok(())
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mut socket = None;
    let mut nq = 2usize;
    let mut i = 1;
    while i < args.len() {
        match args[i].as_str() {
            "--socket" => { socket = args.get(i + 1).cloned(); i += 1; }
            "--queues" => { nq = args.get(i + 1).and_then(|s| s.parse().ok()).unwrap_or(2); i += 1; }
            _ => {}
        }
        i += 1;
    }
    let socket = socket.expect("--socket PATH");
    eprintln!("echo: vgpu-echo-backend (test double, NOT vhost-gpu) on {socket}, {nq} queue(s)");
    loop {
        let backend = Echo {
            nq,
            mem: Arc::default(),
            clients: Arc::default(),
            event_idx: Arc::default(),
            exit: Arc::new(Mutex::new(new_event_consumer_and_notifier(EventFlag::NONBLOCK).ok())),
        };
        let mut d = VhostUserDaemon::new("vgpu-echo".into(), Arc::new(backend.clone()), GuestMemoryAtomic::new(GuestMemoryMmap::new()))
            .expect("daemon");
        let r = d.serve(&socket);
        let n = std::mem::take(&mut *backend.clients.lock().unwrap()).len();
        eprintln!("echo: frontend disconnected, freed {n} client(s) ({r:?})");
    }
}
