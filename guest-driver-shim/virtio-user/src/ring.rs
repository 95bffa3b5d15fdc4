//! The driver side of a split virtqueue, written the way a guest kernel writes it.

use std::sync::atomic::{AtomicU16, AtomicU32, Ordering, fence};

const DESC_F_NEXT: u16 = 1;
const DESC_F_WRITE: u16 = 2;

/// One buffer of a descriptor chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seg {
    pub gpa: u64,
    pub len: u32,
    pub writable: bool,
}

pub struct SplitRing {
    size: u16,
    desc: *mut u8,
    avail: *mut u8,
    used: *mut u8,
    event_idx: bool,
    free: Vec<u16>,
    next: Vec<u16>,
    chain_len: Vec<u16>,
    next_avail: u16,
    last_used: u16,
}

// Offsets inside the three ring parts.
const AVAIL_IDX: usize = 2;
const USED_IDX: usize = 2;

impl SplitRing {
    fn layout(size: u16) -> (usize, usize, usize) {
        let n = usize::from(size);
        let desc = 16 * n;
        let avail_off = desc;
        let avail = 6 + 2 * n;
        let used_off = (avail_off + avail).next_multiple_of(4096);
        (avail_off, used_off, used_off + 6 + 8 * n)
    }

    /// Bytes the ring needs.
    pub fn bytes(size: u16) -> usize {
        Self::layout(size).2
    }

    /// # Safety
    /// `hva` must point to at least [`SplitRing::bytes`] zeroed, shared, writable bytes that
    /// outlive the ring and are shared with the device.
    pub unsafe fn new(hva: *mut u8, size: u16, event_idx: bool) -> Self {
        let (avail_off, used_off, _) = Self::layout(size);
        Self {
            size,
            desc: hva,
            // SAFETY: offsets lie inside the reserved bytes (caller's contract).
            avail: unsafe { hva.add(avail_off) },
            // SAFETY: as above.
            used: unsafe { hva.add(used_off) },
            event_idx,
            free: (0..size).rev().collect(),
            next: vec![0; usize::from(size)],
            chain_len: vec![0; usize::from(size)],
            next_avail: 0,
            last_used: 0,
        }
    }

    /// Host virtual addresses of descriptor table, avail ring and used ring (what
    /// `SET_VRING_ADDR` takes).
    pub fn host_addresses(&self) -> (u64, u64, u64) {
        (self.desc as u64, self.avail as u64, self.used as u64)
    }

    fn u16_at(p: *mut u8) -> &'static AtomicU16 {
        // SAFETY: every caller passes an aligned address inside the ring, shared with the
        // device, which the ring outlives.
        unsafe { AtomicU16::from_ptr(p.cast()) }
    }

    fn u32_at(p: *mut u8) -> &'static AtomicU32 {
        // SAFETY: as in `u16_at`.
        unsafe { AtomicU32::from_ptr(p.cast()) }
    }

    pub fn free_descriptors(&self) -> usize {
        self.free.len()
    }

    /// Writes a chain and publishes it; returns (head, whether the device wants a kick).
    pub fn push(&mut self, segs: &[Seg]) -> Option<(u16, bool)> {
        if segs.len() > self.free.len() {
            return None;
        }
        let ids: Vec<u16> = (0..segs.len()).filter_map(|_| self.free.pop()).collect();
        for (i, (seg, &id)) in segs.iter().zip(&ids).enumerate() {
            let last = i + 1 == segs.len();
            let mut flags = if seg.writable { DESC_F_WRITE } else { 0 };
            let next = if last { 0 } else { ids[i + 1] };
            if !last {
                flags |= DESC_F_NEXT;
            }
            // SAFETY: descriptor `id` lies inside the table; the device does not read it
            // before the avail index below is published.
            unsafe {
                let d = self.desc.add(16 * usize::from(id));
                d.cast::<u64>().write_volatile(seg.gpa.to_le());
                d.add(8).cast::<u32>().write_volatile(seg.len.to_le());
                d.add(12).cast::<u16>().write_volatile(flags.to_le());
                d.add(14).cast::<u16>().write_volatile(next.to_le());
            }
            self.next[usize::from(id)] = next;
        }
        let head = ids[0];
        self.chain_len[usize::from(head)] = segs.len() as u16;
        let slot = usize::from(self.next_avail % self.size);
        // SAFETY: the slot lies inside the avail ring.
        Self::u16_at(unsafe { self.avail.add(4 + 2 * slot) }).store(head, Ordering::Relaxed);
        let old = self.next_avail;
        self.next_avail = self.next_avail.wrapping_add(1);
        // SAFETY: the avail index field.
        Self::u16_at(unsafe { self.avail.add(AVAIL_IDX) })
            .store(self.next_avail, Ordering::Release);
        fence(Ordering::SeqCst);
        let kick = if self.event_idx {
            // SAFETY: avail_event sits after the used ring's elements.
            let event = Self::u16_at(unsafe { self.used.add(4 + 8 * usize::from(self.size)) })
                .load(Ordering::Acquire);
            self.next_avail.wrapping_sub(event).wrapping_sub(1) < self.next_avail.wrapping_sub(old)
        } else {
            // SAFETY: the used ring's flags field; bit 0 is VRING_USED_F_NO_NOTIFY.
            Self::u16_at(self.used).load(Ordering::Acquire) & 1 == 0
        };
        Some((head, kick))
    }

    pub fn has_used(&self) -> bool {
        // SAFETY: the used index field.
        Self::u16_at(unsafe { self.used.add(USED_IDX) }).load(Ordering::Acquire) != self.last_used
    }

    /// Asks the device to interrupt at the next completion.
    pub fn arm_interrupt(&mut self) {
        if self.event_idx {
            // SAFETY: used_event sits after the avail ring's entries.
            Self::u16_at(unsafe { self.avail.add(4 + 2 * usize::from(self.size)) })
                .store(self.last_used, Ordering::Release);
        } else {
            Self::u16_at(self.avail).store(0, Ordering::Release);
        }
        fence(Ordering::SeqCst);
    }

    pub fn reap(&mut self, mut done: impl FnMut(u16, u32)) -> usize {
        let mut n = 0;
        // SAFETY: the used index field.
        let used_idx = Self::u16_at(unsafe { self.used.add(USED_IDX) }).load(Ordering::Acquire);
        while self.last_used != used_idx {
            let slot = usize::from(self.last_used % self.size);
            // SAFETY: the element lies inside the used ring.
            let elem = unsafe { self.used.add(4 + 8 * slot) };
            let id = Self::u32_at(elem).load(Ordering::Relaxed);
            // SAFETY: as above.
            let len = Self::u32_at(unsafe { elem.add(4) }).load(Ordering::Relaxed);
            self.last_used = self.last_used.wrapping_add(1);
            let Ok(head) = u16::try_from(id) else {
                continue;
            };
            if head >= self.size || self.chain_len[usize::from(head)] == 0 {
                // A device that reports a head we never gave it: ignore it.
                continue;
            }
            let mut id = head;
            for _ in 0..self.chain_len[usize::from(head)] {
                self.free.push(id);
                id = self.next[usize::from(id)];
            }
            self.chain_len[usize::from(head)] = 0;
            done(head, len);
            n += 1;
        }
        n
    }
}
