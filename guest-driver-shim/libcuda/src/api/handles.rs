//! Generation-checked handle tables for objects the application holds by handle and gives
//! back (`CUmodule`, `CUfunction`). A handle is a token, not a pointer: what it names is freed
//! when the application destroys it, and a stale or foreign token is refused
//! (`CUDA_ERROR_INVALID_HANDLE`) instead of being dereferenced. Slots are reused, so a program
//! that loads and unloads modules for ever uses the same memory for ever.

use std::sync::Arc;

/// Bits of a token: `tag << 56 | generation << 32 | (slot + 1)`.
const GEN_MASK: u32 = 0x00FF_FFFF;

struct Slot<T> {
    generation: u32,
    value: Option<Arc<T>>,
}

pub struct Handles<T> {
    tag: u8,
    slots: Vec<Slot<T>>,
    free: Vec<u32>,
}

impl<T> Handles<T> {
    /// An empty table whose tokens carry `tag` (so one table's tokens are foreign to another).
    pub const fn new(tag: u8) -> Self {
        Self {
            tag,
            slots: Vec::new(),
            free: Vec::new(),
        }
    }

    fn token(&self, index: u32, generation: u32) -> u64 {
        (u64::from(self.tag) << 56) | (u64::from(generation) << 32) | (u64::from(index) + 1)
    }

    fn index_of(&self, token: u64) -> Option<usize> {
        if (token >> 56) as u8 != self.tag {
            return None;
        }
        let index = (token as u32).checked_sub(1)? as usize;
        let generation = (token >> 32) as u32 & GEN_MASK;
        (self.slots.get(index)?.generation == generation).then_some(index)
    }

    /// The token the next `insert` will return.
    pub fn next_token(&self) -> u64 {
        match self.free.last() {
            Some(&i) => self.token(i, self.slots[i as usize].generation),
            None => self.token(self.slots.len() as u32, 1),
        }
    }

    /// Stores `value`; returns its token.
    pub fn insert(&mut self, value: Arc<T>) -> u64 {
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(Slot {
                    generation: 1,
                    value: None,
                });
                (self.slots.len() - 1) as u32
            }
        };
        let slot = &mut self.slots[index as usize];
        slot.value = Some(value);
        let generation = slot.generation;
        self.token(index, generation)
    }

    pub fn get(&self, token: u64) -> Option<&Arc<T>> {
        self.slots[self.index_of(token)?].value.as_ref()
    }

    /// Takes the value out; the token (and every copy of it) is dead from now on.
    pub fn remove(&mut self, token: u64) -> Option<Arc<T>> {
        let index = self.index_of(token)?;
        let slot = &mut self.slots[index];
        let value = slot.value.take()?;
        slot.generation = slot.generation % GEN_MASK + 1;
        self.free.push(index as u32);
        Some(value)
    }

    /// Live entries.
    pub fn len(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Slots ever used (live or free): what the table costs.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_die_with_their_value_and_slots_are_reused() {
        let mut t = Handles::new(0x4d);
        let a = t.insert(Arc::new("a"));
        assert_eq!(t.get(a).map(|v| **v), Some("a"));
        assert_eq!(t.remove(a).map(|v| *v), Some("a"));
        assert!(t.get(a).is_none(), "a stale token still resolves");
        assert!(t.remove(a).is_none());
        let predicted = t.next_token();
        let b = t.insert(Arc::new("b"));
        assert_eq!(b, predicted);
        assert_ne!(a, b, "a reused slot must not give the old token back");
        assert!(t.get(a).is_none());
        assert_eq!((t.len(), t.capacity()), (1, 1), "the slot was reused");
        // Foreign tags, zero and garbage are refused.
        let other: Handles<&str> = Handles::new(0x46);
        assert!(other.get(b).is_none());
        assert!(t.get(0).is_none());
        assert!(t.get(b + 7).is_none());
        for _ in 0..1000 {
            let x = t.insert(Arc::new("x"));
            t.remove(x);
        }
        assert_eq!(t.capacity(), 2);
    }
}
