//! A first-fit allocator of offsets inside the control region.

use std::collections::BTreeMap;

pub struct Arena {
    /// Free ranges: offset -> length.
    free: BTreeMap<usize, usize>,
    /// Live allocations: offset -> (start of the block, length of the block).
    used: BTreeMap<usize, (usize, usize)>,
}

impl Arena {
    pub fn new(start: usize, len: usize) -> Self {
        Self {
            free: BTreeMap::from([(start, len)]),
            used: BTreeMap::new(),
        }
    }

    pub fn alloc(&mut self, len: usize, align: usize) -> Option<usize> {
        let (&block, &block_len, off) = self.free.iter().find_map(|(b, l)| {
            let off = b.next_multiple_of(align);
            (off + len <= b + l).then_some((b, l, off))
        })?;
        self.free.remove(&block);
        let end = off + len;
        if end < block + block_len {
            self.free.insert(end, block + block_len - end);
        }
        self.used.insert(off, (block, end - block));
        Some(off)
    }

    pub fn free(&mut self, off: usize) {
        let Some((mut start, mut len)) = self.used.remove(&off) else {
            return;
        };
        // Merge with the neighbours.
        if let Some((&next, &next_len)) = self.free.range(start + len..).next()
            && next == start + len
        {
            self.free.remove(&next);
            len += next_len;
        }
        if let Some((&prev, &prev_len)) = self.free.range(..start).next_back()
            && prev + prev_len == start
        {
            self.free.remove(&prev);
            start = prev;
            len += prev_len;
        }
        self.free.insert(start, len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocations_are_aligned_disjoint_and_coalesce() {
        let mut a = Arena::new(100, 10_000);
        let x = a.alloc(1000, 64).unwrap();
        let y = a.alloc(1000, 4096).unwrap();
        assert_eq!(x % 64, 0);
        assert_eq!(y % 4096, 0);
        assert!(x + 1000 <= y || y + 1000 <= x);
        assert!(a.alloc(20_000, 64).is_none());
        a.free(x);
        a.free(y);
        assert_eq!(a.free.len(), 1, "freed blocks merge back into one");
        assert!(a.alloc(9_000, 64).is_some());
    }
}
