//! The live session ids of one connection, and the choice of the next id.
//!
//! Ids are given round-robin: the first id at or after a cursor that is not live, the
//! cursor wrapping at the end of the range. They live in a ring of `2^k` slots indexed
//! by their low `k` bits, so a reply finds its caller with one index and no hashing. With
//! replies in about the order of the requests, the live ids are a window of consecutive
//! ids, which fills the ring exactly: a hash map would sit at half load or less.
//!
//! An id whose slot holds another live id (a straggler a lap of the ring older, or a
//! caller's own id) goes to a map beside the ring, empty in the common case. When that
//! map grows past an eighth of the ring, the ring doubles and takes back what fits; so
//! the ring never grows past sixteen slots per live id, even for ids chosen at random
//! by callers. It does not shrink: it lives as long as its connection.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// The first ring.
const FIRST_RING: usize = 8;
/// The largest ring (in slots).
const MAX_RING: u64 = 1 << 24;

/// Live ids in `lo..=hi`, each with its value.
#[derive(Debug)]
pub(crate) struct IdTable<V> {
    /// Slot `id & (len - 1)` holds `id`, or another id (then `id` is in `spill`).
    ring: Vec<Option<(u64, V)>>,
    in_ring: usize,
    /// Live ids the ring could not place.
    spill: HashMap<u64, V, BuildHasherDefault<IdHasher>>,
    /// Live caller ids outside `lo..=hi`: they take none of the range's ids.
    outside: usize,
    lo: u64,
    hi: u64,
    /// Where the search for the next id starts.
    cursor: u64,
    /// The smallest ring with a slot for every id in range, or `MAX_RING`.
    max_ring: usize,
}

impl<V> IdTable<V> {
    /// An empty table giving ids in `lo..=hi` (`lo <= hi`).
    pub(crate) fn new(lo: u64, hi: u64) -> Self {
        debug_assert!(lo <= hi);
        let ids = (hi - lo).saturating_add(1).min(MAX_RING);
        IdTable {
            ring: Vec::new(),
            in_ring: 0,
            spill: HashMap::default(),
            outside: 0,
            lo,
            hi,
            cursor: lo,
            max_ring: ids.next_power_of_two() as usize,
        }
    }

    /// Live ids.
    pub(crate) fn len(&self) -> usize {
        self.in_ring + self.spill.len()
    }

    /// How many ids the range holds (saturating).
    pub(crate) fn range(&self) -> usize {
        usize::try_from((self.hi - self.lo).saturating_add(1)).unwrap_or(usize::MAX)
    }

    /// Live caller ids outside the range.
    pub(crate) fn outside(&self) -> usize {
        self.outside
    }

    /// Whether [`insert_next`](Self::insert_next) would find a free id: caller ids
    /// outside the range take none (helper-63's finding: counted, a watch under its own
    /// id kept a range of one full, and every other call waited).
    pub(crate) fn has_free(&self) -> bool {
        ((self.len() - self.outside) as u64) <= self.hi - self.lo
    }

    fn in_range(&self, id: u64) -> bool {
        (self.lo..=self.hi).contains(&id)
    }

    /// The ring slot of `id`; the ring must not be empty.
    fn slot(&self, id: u64) -> usize {
        (id & (self.ring.len() as u64 - 1)) as usize
    }

    pub(crate) fn contains(&self, id: u64) -> bool {
        if !self.ring.is_empty() && matches!(self.ring[self.slot(id)], Some((k, _)) if k == id) {
            return true;
        }
        !self.spill.is_empty() && self.spill.contains_key(&id)
    }

    pub(crate) fn get_mut(&mut self, id: u64) -> Option<&mut V> {
        if !self.ring.is_empty() {
            let slot = self.slot(id);
            if let Some((k, value)) = &mut self.ring[slot]
                && *k == id
            {
                return Some(value);
            }
        }
        self.spill.get_mut(&id)
    }

    pub(crate) fn remove(&mut self, id: u64) -> Option<V> {
        let removed = self.take(id);
        if removed.is_some() && !self.in_range(id) {
            self.outside -= 1;
        }
        removed
    }

    fn take(&mut self, id: u64) -> Option<V> {
        if !self.ring.is_empty() {
            let slot = self.slot(id);
            if matches!(self.ring[slot], Some((k, _)) if k == id) {
                self.in_ring -= 1;
                return self.ring[slot].take().map(|(_, value)| value);
            }
        }
        self.spill.remove(&id)
    }

    /// Inserts under a caller's own id; hands `value` back if the id is live.
    pub(crate) fn insert(&mut self, id: u64, value: V) -> Result<(), V> {
        if self.contains(id) {
            return Err(value);
        }
        self.place(id, value);
        Ok(())
    }

    /// Gives `value` the next free id and returns it; hands `value` back when every id is
    /// live.
    pub(crate) fn insert_next(&mut self, value: V) -> Result<u64, V> {
        if !self.has_free() {
            return Err(value);
        }
        // There is a free id in range: this ends within one lap.
        let mut id = self.cursor;
        while self.contains(id) {
            id = self.after(id);
        }
        self.cursor = self.after(id);
        self.place(id, value);
        Ok(id)
    }

    /// Every value, in no particular order.
    pub(crate) fn values(&self) -> impl Iterator<Item = &V> {
        self.ring
            .iter()
            .filter_map(|slot| slot.as_ref().map(|(_, value)| value))
            .chain(self.spill.values())
    }

    /// Every value, mutably, in no particular order.
    pub(crate) fn values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        self.ring
            .iter_mut()
            .filter_map(|slot| slot.as_mut().map(|(_, value)| value))
            .chain(self.spill.values_mut())
    }

    /// Every id with its value, mutably, in no particular order.
    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = (u64, &mut V)> {
        self.ring
            .iter_mut()
            .filter_map(|slot| slot.as_mut().map(|(id, value)| (*id, value)))
            .chain(self.spill.iter_mut().map(|(id, value)| (*id, value)))
    }

    /// Removes every value; the table is empty (and keeps its ring) after.
    pub(crate) fn drain(&mut self, mut each: impl FnMut(V)) {
        self.ring
            .iter_mut()
            .filter_map(Option::take)
            .for_each(|(_, value)| each(value));
        self.in_ring = 0;
        self.outside = 0;
        self.spill.drain().for_each(|(_, value)| each(value));
    }

    fn after(&self, id: u64) -> u64 {
        if id >= self.hi { self.lo } else { id + 1 }
    }

    /// Puts a live id where it goes: its ring slot if free, the map if not.
    fn place(&mut self, id: u64, value: V) {
        if !self.in_range(id) {
            self.outside += 1;
        }
        if self.ring.is_empty() {
            self.grow();
        }
        let slot = self.slot(id);
        if self.ring[slot].is_none() {
            self.ring[slot] = Some((id, value));
            self.in_ring += 1;
            return;
        }
        self.spill.insert(id, value);
        if self.spill.len() * 8 > self.ring.len() && self.ring.len() < self.max_ring {
            self.grow();
        }
    }

    /// Doubles the ring (or makes the first one) and moves every id to its slot there,
    /// map entries included when their slot is free.
    fn grow(&mut self) {
        let len = (self.ring.len() * 2).clamp(FIRST_RING.min(self.max_ring), self.max_ring);
        let old = std::mem::take(&mut self.ring);
        self.ring.reserve_exact(len);
        self.ring.resize_with(len, || None);
        // No two ring ids meet in a slot of the bigger ring: they would have met in the
        // old one.
        for (id, value) in old.into_iter().flatten() {
            let slot = self.slot(id);
            self.ring[slot] = Some((id, value));
        }
        for (id, value) in std::mem::take(&mut self.spill) {
            let slot = self.slot(id);
            match &self.ring[slot] {
                None => self.ring[slot] = Some((id, value)),
                Some(_) => {
                    self.spill.insert(id, value);
                }
            }
        }
        self.in_ring = self.ring.iter().filter(|slot| slot.is_some()).count();
    }
}

/// Session ids are already well spread integers: a multiply is all the hashing needed.
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, id: u64) {
        self.0 = id.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, VecDeque};

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn caller_ids_outside_the_range_take_none_of_its_ids() {
        let mut ids = IdTable::new(1, 1);
        ids.insert(1000, ()).unwrap();
        assert!(ids.has_free(), "id 1 is free");
        assert_eq!(ids.insert_next(()), Ok(1));
        assert!(!ids.has_free());
        ids.insert(5, ()).unwrap();
        assert_eq!(ids.remove(1000), Some(()));
        assert!(!ids.has_free(), "id 1 still live");
        assert_eq!(ids.remove(1), Some(()));
        assert!(ids.has_free());
        assert_eq!(ids.outside(), 1);
        ids.drain(|()| {});
        assert_eq!((ids.len(), ids.outside()), (0, 0));
    }

    #[test]
    fn a_slot_is_an_id_and_an_entry() {
        use super::super::matcher::Entry;
        assert_eq!(size_of::<Option<(u64, Entry<u64>)>>(), 40);
    }

    #[test]
    fn replies_in_order_give_consecutive_ids_round_the_range() {
        let mut t = IdTable::new(1, 32);
        let mut live = VecDeque::new();
        for i in 0..100u64 {
            if live.len() == 5 {
                let old = live.pop_front().unwrap();
                assert_eq!(t.remove(old), Some(old * 10));
            }
            let id = t.insert_next(0).unwrap();
            *t.get_mut(id).unwrap() = id * 10;
            live.push_back(id);
            assert_eq!(id, i % 32 + 1);
        }
        assert_eq!(t.len(), 5);
    }

    #[test]
    fn every_id_of_a_tiny_range_and_no_more() {
        for (lo, hi) in [(0, 0), (1, 3), (5, 9), (u64::MAX - 2, u64::MAX)] {
            let mut t = IdTable::new(lo, hi);
            let mut got: Vec<u64> = (lo..=hi).map(|_| t.insert_next(()).unwrap()).collect();
            got.sort_unstable();
            assert_eq!(got, (lo..=hi).collect::<Vec<_>>());
            assert!(!t.has_free());
            assert!(t.insert_next(()).is_err());
            assert!(t.insert(lo, ()).is_err());
            assert_eq!(t.remove(hi), Some(()));
            assert_eq!(t.insert_next(()), Ok(hi));
        }
    }

    #[test]
    fn the_full_u64_range_wraps() {
        let mut t = IdTable::new(0, u64::MAX);
        t.cursor = u64::MAX - 1;
        assert_eq!(t.insert_next(()), Ok(u64::MAX - 1));
        assert_eq!(t.insert_next(()), Ok(u64::MAX));
        assert_eq!(t.insert_next(()), Ok(0));
        assert!(t.contains(u64::MAX) && t.contains(0) && !t.contains(7));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Next,
        Caller(u64),
        /// Removes the live id at this index (modulo), or a random id if none is live.
        Remove(usize),
        RemoveOldest,
        Drain,
    }

    fn op(hi: u64) -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => Just(Op::Next),
            1 => (0..=hi + 2).prop_map(Op::Caller),
            4 => any::<usize>().prop_map(Op::Remove),
            3 => Just(Op::RemoveOldest),
            1 => Just(Op::Drain),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// The table agrees with a map of live ids, and gives the first id at or after
        /// the cursor that is not live.
        #[test]
        fn agrees_with_a_map(
            (lo, hi, ops) in (0u64..4, 0u64..70)
                .prop_flat_map(|(lo, n)| (Just(lo), Just(lo + n), prop::collection::vec(op(lo + n), 1..400)))
        ) {
            let mut t = IdTable::new(lo, hi);
            let mut model: BTreeMap<u64, u64> = BTreeMap::new();
            let mut order: VecDeque<u64> = VecDeque::new();
            let ids = hi - lo + 1;
            let mut cursor = lo;
            for (n, op) in ops.into_iter().enumerate() {
                let n = n as u64;
                match op {
                    Op::Next => {
                        let mut want = cursor;
                        for _ in 0..ids {
                            if !model.contains_key(&want) {
                                break;
                            }
                            want = if want == hi { lo } else { want + 1 };
                        }
                        match t.insert_next(n) {
                            Ok(id) => {
                                prop_assert_eq!(id, want, "not the first free id from {}", cursor);
                                model.insert(id, n);
                                order.push_back(id);
                                cursor = if id == hi { lo } else { id + 1 };
                            }
                            Err(v) => {
                                prop_assert_eq!(v, n);
                                prop_assert!(model.range(lo..=hi).count() as u64 >= ids);
                            }
                        }
                    }
                    Op::Caller(id) => {
                        let live = model.contains_key(&id);
                        prop_assert_eq!(t.insert(id, n).is_err(), live);
                        if !live {
                            model.insert(id, n);
                            order.push_back(id);
                        }
                    }
                    Op::Remove(i) => {
                        let id = order.get(i % order.len().max(1)).copied().unwrap_or(i as u64 % (hi + 3));
                        prop_assert_eq!(t.remove(id), model.remove(&id));
                        order.retain(|&x| x != id);
                        prop_assert_eq!(t.remove(id), None);
                    }
                    Op::RemoveOldest => {
                        if let Some(id) = order.pop_front() {
                            prop_assert_eq!(t.remove(id), model.remove(&id));
                        }
                    }
                    Op::Drain => {
                        let mut got = Vec::new();
                        t.drain(|v| got.push(v));
                        got.sort_unstable();
                        let want: Vec<u64> = model.values().copied().collect();
                        let mut want = want;
                        want.sort_unstable();
                        prop_assert_eq!(got, want);
                        model.clear();
                        order.clear();
                    }
                }
                prop_assert_eq!(t.len(), model.len());
                // Caller ids outside the range take none of its ids.
                let in_range = model.range(lo..=hi).count() as u64;
                prop_assert_eq!(t.has_free(), in_range < ids);
                prop_assert_eq!(t.outside() as u64, model.len() as u64 - in_range);
                for (&id, &v) in &model {
                    prop_assert_eq!(t.get_mut(id).copied(), Some(v));
                }
                let mut values: Vec<u64> = t.values().copied().collect();
                values.sort_unstable();
                let mut want: Vec<u64> = model.values().copied().collect();
                want.sort_unstable();
                prop_assert_eq!(values, want);
            }
        }
    }
}
