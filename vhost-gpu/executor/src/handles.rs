//! Per-client handle tables: O(1) lookup, generation-checked so a stale or forged handle is
//! refused instead of reaching another object.

/// A slab of objects addressed by `(generation << 32) | (index + FIRST)`. Handles are never
/// below 2^32, so they cannot collide with the special stream values 0, 1 and 2.
pub struct Slab<T> {
    slots: Vec<(u32, Option<T>)>,
    free: Vec<u32>,
    live: usize,
}

const FIRST: u64 = 16;

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Self {
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
        }
    }
}

impl<T> Slab<T> {
    pub fn insert(&mut self, value: T) -> u64 {
        self.live += 1;
        if let Some(index) = self.free.pop() {
            let slot = &mut self.slots[index as usize];
            slot.0 = slot.0.wrapping_add(1).max(1);
            slot.1 = Some(value);
            return (u64::from(slot.0) << 32) | (u64::from(index) + FIRST);
        }
        let index = self.slots.len() as u32;
        self.slots.push((1, Some(value)));
        (1u64 << 32) | (u64::from(index) + FIRST)
    }

    fn locate(&self, handle: u64) -> Option<usize> {
        let generation = (handle >> 32) as u32;
        let index = (handle & 0xffff_ffff).checked_sub(FIRST)? as usize;
        let slot = self.slots.get(index)?;
        (slot.0 == generation && slot.1.is_some()).then_some(index)
    }

    pub fn get(&self, handle: u64) -> Option<&T> {
        self.locate(handle).and_then(|i| self.slots[i].1.as_ref())
    }

    pub fn remove(&mut self, handle: u64) -> Option<T> {
        let i = self.locate(handle)?;
        self.live -= 1;
        self.free.push(i as u32);
        self.slots[i].1.take()
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.live
    }

    /// Handles of the live objects that match `pred`.
    pub fn handles_where(&self, mut pred: impl FnMut(&T) -> bool) -> Vec<u64> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, (generation, v))| {
                v.as_ref()
                    .filter(|v| pred(v))
                    .map(|_| (u64::from(*generation) << 32) | (i as u64 + FIRST))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_and_forged_handles_are_refused() {
        let mut s = Slab::default();
        let a = s.insert("a");
        assert_eq!(s.get(a), Some(&"a"));
        assert_eq!(s.remove(a), Some("a"));
        let b = s.insert("b");
        assert_ne!(a, b, "a reused slot gets a new generation");
        assert_eq!(s.get(a), None);
        assert_eq!(s.get(0), None);
        assert_eq!(s.get(2), None);
        assert_eq!(s.get(b ^ (1 << 40)), None);
        assert!(b > u64::from(u32::MAX));
        assert_eq!(s.len(), 1);
    }
}
