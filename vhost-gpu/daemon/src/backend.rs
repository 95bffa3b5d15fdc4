//! The vhost-user side: feature negotiation, config space, guest memory registration, and the
//! queue loop that feeds descriptor chains to the executor.

use std::{
    io,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use log::{info, warn};
use vgpu_executor::{DataStream, Executor, Freed};
use vgpu_protocol::{CuResult, ReplyWriter, config_space};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackendMut, VringRwLock, VringT};
use virtio_bindings::{
    virtio_config::{VIRTIO_F_NOTIFY_ON_EMPTY, VIRTIO_F_VERSION_1},
    virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC},
};
use virtio_queue::QueueT;
use vm_memory::{
    GuestAddressSpace, GuestMemoryAtomic, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
};
use vmm_sys_util::event::{
    EventConsumer, EventFlag, EventNotifier, new_event_consumer_and_notifier,
};

use crate::{
    chain::{Desc, ParsedChain},
    config::Config,
    isolation::{self, WorkerError, Workers},
};

/// State of the device for one connected frontend (and what carries over between them).
/// Where a frontend's calls run.
pub enum Runner {
    /// This host's GPU: one executor for every frontend, each in its own client namespace.
    Local {
        executor: Arc<Mutex<Executor>>,
        namespace: u32,
    },
    /// This host's GPU, each guest client in a worker process of its own
    /// ([`crate::isolation`]).
    Isolated(Box<Workers>),
    /// A GPU host's, over TCP (the network fallback).
    Remote(Box<vgpu_remote::RemoteSession>),
}

impl Runner {
    /// Ends every client of this frontend: freed here, or by the GPU host when its session
    /// closes.
    fn close(&mut self) -> Freed {
        match self {
            Runner::Local {
                executor,
                namespace,
            } => locked(executor).close_namespace(*namespace),
            Runner::Isolated(workers) => workers.close_all(),
            Runner::Remote(session) => {
                session.close();
                Freed::default()
            }
        }
    }
}

pub struct VgpuBackend {
    runner: Runner,
    mem: Option<GuestMemoryAtomic<GuestMemoryMmap>>,
    /// Guest memory regions pinned for DMA: (host address, length).
    registered: Vec<(usize, usize)>,
    event_idx: bool,
    queues: usize,
    queue_size: usize,
    poll: Duration,
    parsed: ParsedChain,
    descs: Vec<Desc>,
    reply: Vec<u8>,
    /// Accept guest memory files that cannot be sealed against shrinking.
    allow_unsealed: bool,
    /// Exit-event descriptors handed to vhost-user-backend, which does not close them.
    exit_fds: Mutex<Vec<std::os::fd::RawFd>>,
}

impl VgpuBackend {
    pub fn new(runner: Runner, config: &Config) -> Self {
        Self {
            runner,
            mem: None,
            registered: Vec::new(),
            event_idx: false,
            queues: config.queues,
            queue_size: config.queue_size,
            poll: Duration::from_micros(config.poll_us),
            parsed: ParsedChain::default(),
            descs: Vec::with_capacity(64),
            reply: Vec::with_capacity(64 << 10),
            allow_unsealed: config.allow_unsealed_memory,
            exit_fds: Mutex::new(Vec::new()),
        }
    }

    /// The frontend went away: free every client's resources, then unpin its memory.
    pub fn disconnected(&mut self) -> Freed {
        let freed = self.runner.close();
        if let Runner::Isolated(workers) = &mut self.runner {
            workers.forget_memory();
        }
        if let Runner::Local { executor, .. } = &self.runner {
            let mut ex = locked(executor);
            for (ptr, _) in self.registered.drain(..) {
                ex.unregister_host(ptr as *mut u8);
            }
        }
        self.mem = None;
        freed
    }

    /// Closes the exit-event descriptors vhost-user-backend left open. Call only after the
    /// frontend's `VhostUserDaemon` is dropped: dropping it joins the epoll threads, the only
    /// users of those descriptors (they never read them: the event only wakes epoll).
    pub fn close_exit_events(&mut self) {
        let fds = std::mem::take(
            self.exit_fds
                .get_mut()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for fd in fds {
            // SAFETY: `fd` was the consumer of an eventfd we created in `exit_event`; the
            // library converted it to a raw descriptor it never closes, and its only user, the
            // epoll thread, has been joined, so nothing else owns or uses it.
            drop(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) });
        }
    }

    /// Pops and runs every available chain; returns how many ran.
    fn drain(&mut self, vring: &VringRwLock) -> io::Result<usize> {
        let Some(atomic) = self.mem.clone() else {
            return Ok(0);
        };
        let mem = atomic.memory();
        let mut n = 0;
        loop {
            let chain = vring
                .get_mut()
                .get_queue_mut()
                .pop_descriptor_chain(mem.clone());
            let Some(chain) = chain else { break };
            let head = chain.head_index();
            self.descs.clear();
            self.descs.extend(chain.map(|d| Desc {
                addr: d.addr().0,
                len: d.len(),
                writable: d.is_write_only(),
            }));
            let used = self.run_chain(&mem);
            vring.add_used(head, used).map_err(io::Error::other)?;
            n += 1;
        }
        if n > 0 && vring.needs_notification().map_err(io::Error::other)? {
            vring.signal_used_queue()?;
        }
        Ok(n)
    }

    /// Runs one chain; returns the used length to report.
    fn run_chain(&mut self, mem: &GuestMemoryMmap) -> u32 {
        if let Err(e) = self.parsed.parse(mem, &self.descs) {
            warn!("refused a descriptor chain: {e}");
            // Answer in the reply area if the chain has one we can trust.
            if self.parsed.reply_cap >= 64 {
                let mut w = ReplyWriter::new(&mut self.reply);
                w.push_status(0, CuResult::INVALID_VALUE.0);
                let n = w.finish(0, 0);
                return self.parsed.write_reply(mem, &self.reply[..n]) as u32;
            }
            return 0;
        }
        let data_in = DataStream::new(&self.parsed.data_in);
        let data_out = DataStream::new(&self.parsed.data_out);
        let outcome = match &mut self.runner {
            Runner::Local {
                executor,
                namespace,
            } => locked(executor).execute_in(
                *namespace,
                &self.parsed.msg,
                data_in,
                data_out,
                &mut self.reply,
            ),
            Runner::Isolated(workers) => workers.execute(
                &self.parsed.msg,
                &self.parsed.data_in,
                &self.parsed.data_out,
                &mut self.reply,
            ),
            Runner::Remote(session) => {
                session.execute(&self.parsed.msg, data_in, data_out, &mut self.reply)
            }
        };
        let written = self
            .parsed
            .write_reply(mem, &self.reply[..outcome.reply_len]);
        if outcome.data_out_len > 0 {
            (self.parsed.reply_cap as u64 + outcome.data_out_len).min(u64::from(u32::MAX)) as u32
        } else {
            written as u32
        }
    }

    fn serve_queue(&mut self, vring: &VringRwLock) -> io::Result<()> {
        let mut idle_since = Instant::now();
        loop {
            if self.event_idx {
                vring.disable_notification().map_err(io::Error::other)?;
            }
            if self.drain(vring)? > 0 {
                idle_since = Instant::now();
                continue;
            }
            // Keep polling briefly: the next call of a synchronous guest usually follows
            // within microseconds, and a poll is cheaper than a kick and a wake-up.
            if idle_since.elapsed() < self.poll {
                std::hint::spin_loop();
                continue;
            }
            if !self.event_idx || !vring.enable_notification().map_err(io::Error::other)? {
                return Ok(());
            }
        }
    }
}

impl VhostUserBackendMut for VgpuBackend {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        self.queues
    }

    fn max_queue_size(&self) -> usize {
        self.queue_size
    }

    fn features(&self) -> u64 {
        (1 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_F_NOTIFY_ON_EMPTY)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
    }

    /// The VMM reset the device (a guest reboot, or a driver unbind): every client of the
    /// old guest is gone.
    fn reset_device(&mut self) {
        let freed = self.runner.close();
        info!(
            "device reset: freed {} allocations ({} bytes) and {} objects",
            freed.allocations, freed.bytes, freed.objects
        );
    }

    fn set_event_idx(&mut self, enabled: bool) {
        self.event_idx = enabled;
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let cfg = config_space(self.queues as u16);
        let start = (offset as usize).min(cfg.len());
        let end = start.saturating_add(size as usize).min(cfg.len());
        let mut out = cfg[start..end].to_vec();
        out.resize(size as usize, 0);
        out
    }

    fn update_memory(&mut self, atomic: GuestMemoryAtomic<GuestMemoryMmap>) -> io::Result<()> {
        let mem = atomic.memory();
        let mut regions = Vec::new();
        for r in mem.iter() {
            let Ok(p) = r.get_host_address(vm_memory::MemoryRegionAddress(0)) else {
                continue;
            };
            let Some(fo) = r.file_offset() else {
                // Memory we cannot check against a file (and a worker could not map).
                self.mem = None;
                return Err(io::Error::other(WorkerError::NoFile(regions.len())));
            };
            regions.push((p as usize, r.len() as usize, fo.file(), fo.start()));
        }
        // A region larger than its file faults (SIGBUS) where the file ends: refuse the
        // table, and serve nothing from it.
        if let Err(e) = isolation::check_regions(&regions, self.allow_unsealed) {
            warn!("refused a guest memory table: {e}");
            self.mem = None;
            return Err(io::Error::other(e));
        }
        if let Runner::Isolated(workers) = &mut self.runner {
            let result = workers.set_memory(&regions);
            drop(regions);
            drop(mem);
            return match result {
                Ok(()) => {
                    self.mem = Some(atomic);
                    Ok(())
                }
                Err(e) => {
                    warn!("refused a guest memory table: {e}");
                    self.mem = None;
                    Err(io::Error::other(e))
                }
            };
        }
        let now: Vec<(usize, usize)> = regions.iter().map(|r| (r.0, r.1)).collect();
        drop(regions);
        // Unpin regions that went away, pin the new ones.
        let gone: Vec<(usize, usize)> = self
            .registered
            .iter()
            .copied()
            .filter(|r| !now.contains(r))
            .collect();
        let Runner::Local { executor, .. } = &self.runner else {
            // Remote: the data travels inline; nothing to pin here.
            drop(mem);
            self.mem = Some(atomic);
            return Ok(());
        };
        let mut ex = locked(executor);
        for r in gone {
            ex.unregister_host(r.0 as *mut u8);
            self.registered.retain(|x| *x != r);
        }
        for r in now {
            if !self.registered.contains(&r) && ex.register_host(r.0 as *mut u8, r.1) {
                self.registered.push(r);
                info!("guest memory region of {} KiB pinned for DMA", r.1 >> 10);
            }
        }
        drop(ex);
        drop(mem);
        self.mem = Some(atomic);
        Ok(())
    }

    fn handle_event(
        &mut self,
        device_event: u16,
        _evset: vmm_sys_util::epoll::EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> io::Result<()> {
        let Some(vring) = vrings.get(usize::from(device_event)) else {
            return Ok(());
        };
        if self.mem.is_none() {
            // No memory table, or a refused one: touching the rings could fault.
            return Ok(());
        }
        self.serve_queue(vring)
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        let (consumer, notifier) = new_event_consumer_and_notifier(EventFlag::NONBLOCK).ok()?;
        // vhost-user-backend 0.24 registers the consumer in its epoll through `into_raw_fd`
        // and never closes it: one descriptor per frontend. Remember it to close it once the
        // frontend's threads are gone (see `close_exit_events`).
        self.exit_fds
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(std::os::fd::AsRawFd::as_raw_fd(&consumer));
        Some((consumer, notifier))
    }
}

/// The shared executor, also after a thread panicked holding it (its state stays usable).
fn locked(executor: &Mutex<Executor>) -> std::sync::MutexGuard<'_, Executor> {
    executor.lock().unwrap_or_else(PoisonError::into_inner)
}
