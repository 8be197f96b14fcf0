//! Stable key hashing and key groups.
//!
//! A key's *key group* is `stable_hash(key) % max_parallelism`. Task `i` of a keyed vertex with
//! parallelism `p` owns the contiguous key groups `[i*G/p, (i+1)*G/p)`, where `G` is the max
//! parallelism. State is stored and snapshotted by key group, so a restore at any parallelism
//! hands each task exactly the groups it owns.
//!
//! **Invariant:** [`stable_hash`] gives the same value for the same key on every run, process,
//! platform and version of snapshot. It does not use `std::hash::Hash` (whose output is not
//! specified and, for `usize`, depends on the word size) but the [`StableHash`] trait, which
//! feeds fixed-width little-endian bytes to a fixed hash function. Pinned values in the tests
//! catch any change.

use crate::error::{Error, Result};

/// The default number of key groups (the max parallelism of a keyed vertex).
pub const DEFAULT_MAX_PARALLELISM: u32 = 128;

/// The largest max parallelism supported.
pub const MAX_MAX_PARALLELISM: u32 = 32_768;

pub use crate::ids::{KeyGroup, KeyGroupRange};

fn check_max_parallelism(max_parallelism: u32) -> Result<()> {
    if max_parallelism == 0 || max_parallelism > MAX_MAX_PARALLELISM {
        return Err(Error::Config(format!(
            "max parallelism must be between 1 and {MAX_MAX_PARALLELISM}, not {max_parallelism}"
        )));
    }
    Ok(())
}

impl KeyGroupRange {
    /// Every key group of a vertex with `max_parallelism` key groups.
    pub fn all(max_parallelism: u32) -> Result<KeyGroupRange> {
        check_max_parallelism(max_parallelism)?;
        Ok(KeyGroupRange {
            start: 0,
            end: max_parallelism as u16,
        })
    }

    /// The key groups task `index` owns when the vertex runs with `parallelism` tasks:
    /// `[index*G/p, (index+1)*G/p)`.
    pub fn for_task(index: u32, parallelism: u32, max_parallelism: u32) -> Result<KeyGroupRange> {
        check_max_parallelism(max_parallelism)?;
        if parallelism == 0 || parallelism > max_parallelism {
            return Err(Error::InvalidParallelism {
                parallelism,
                max_parallelism,
            });
        }
        if index >= parallelism {
            return Err(Error::Config(format!(
                "task index {index} is not below the parallelism {parallelism}"
            )));
        }
        let g = u64::from(max_parallelism);
        let p = u64::from(parallelism);
        let i = u64::from(index);
        Ok(KeyGroupRange {
            start: (i * g / p) as u16,
            end: ((i + 1) * g / p) as u16,
        })
    }

    /// True when `group` is in the range.
    pub fn contains(&self, group: KeyGroup) -> bool {
        self.start <= group.0 && group.0 < self.end
    }

    /// The number of key groups in the range.
    pub fn len(&self) -> usize {
        usize::from(self.end - self.start)
    }

    /// True when the range holds no key group.
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// The key groups of the range, in order.
    pub fn iter(&self) -> impl Iterator<Item = KeyGroup> {
        (self.start..self.end).map(KeyGroup)
    }
}

/// The task (of `parallelism` tasks) that owns `group`: the inverse of
/// [`KeyGroupRange::for_task`].
pub fn task_for_key_group(group: KeyGroup, parallelism: u32, max_parallelism: u32) -> u32 {
    ((u64::from(group.0) + 1) * u64::from(parallelism)).saturating_sub(1) as u32 / max_parallelism
}

/// The key group of a key.
pub fn key_group_for<K: StableHash + ?Sized>(key: &K, max_parallelism: u32) -> KeyGroup {
    KeyGroup((stable_hash(key) % u64::from(max_parallelism.max(1))) as u16)
}

/// The stable 64-bit hash of a key.
pub fn stable_hash<K: StableHash + ?Sized>(key: &K) -> u64 {
    let mut h = StableHasher::new();
    key.stable_hash(&mut h);
    h.finish()
}

/// A hasher whose output is fixed forever: 64-bit words mixed with the MurmurHash3 finaliser.
/// Input is consumed as little-endian 8-byte words; the length is mixed in at the end.
#[derive(Debug, Clone)]
pub struct StableHasher {
    state: u64,
    len: u64,
    tail: u64,
    tail_len: u32,
}

const SEED: u64 = 0x5EED_5A9F_10E0_0001;
const MUL: u64 = 0x9E37_79B9_7F4A_7C15;

fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^= k >> 33;
    k
}

impl Default for StableHasher {
    fn default() -> Self {
        StableHasher::new()
    }
}

impl StableHasher {
    /// A hasher in its initial state.
    pub fn new() -> StableHasher {
        StableHasher {
            state: SEED,
            len: 0,
            tail: 0,
            tail_len: 0,
        }
    }

    #[inline]
    fn word(&mut self, w: u64) {
        self.state = (self.state ^ fmix64(w)).rotate_left(29).wrapping_mul(MUL);
    }

    /// Feeds bytes.
    pub fn write(&mut self, bytes: &[u8]) {
        self.len += bytes.len() as u64;
        for &b in bytes {
            self.tail |= u64::from(b) << (8 * self.tail_len);
            self.tail_len += 1;
            if self.tail_len == 8 {
                let w = self.tail;
                self.word(w);
                self.tail = 0;
                self.tail_len = 0;
            }
        }
    }

    /// Feeds a u64 as 8 little-endian bytes (fast when the input so far is word-aligned).
    #[inline]
    pub fn write_u64(&mut self, v: u64) {
        if self.tail_len == 0 {
            self.len += 8;
            self.word(v);
        } else {
            self.write(&v.to_le_bytes());
        }
    }

    /// The hash of everything fed so far.
    pub fn finish(&self) -> u64 {
        let mut s = self.state;
        if self.tail_len > 0 {
            s = (s ^ fmix64(self.tail)).rotate_left(29).wrapping_mul(MUL);
        }
        fmix64(s ^ self.len)
    }
}

/// A key type whose hash is stable across runs, processes and platforms. Implemented for the
/// integer types (`usize`/`isize` hashed as 64-bit), `bool`, `char`, strings, byte and other
/// slices, `Vec`, arrays, `Option`, references, boxes and tuples of up to four elements.
/// Implement it for a key struct by feeding its fields in a fixed order.
pub trait StableHash {
    /// Feeds this value to `h`.
    fn stable_hash(&self, h: &mut StableHasher);
}

macro_rules! stable_int {
    ($($t:ty => $as:ty),*) => {$(
        impl StableHash for $t {
            #[inline]
            fn stable_hash(&self, h: &mut StableHasher) {
                h.write_u64(*self as $as as u64);
            }
        }
    )*};
}
stable_int!(u8 => u64, u16 => u64, u32 => u64, u64 => u64, usize => u64,
            i8 => i64, i16 => i64, i32 => i64, i64 => i64, isize => i64);

impl StableHash for u128 {
    fn stable_hash(&self, h: &mut StableHasher) {
        h.write_u64(*self as u64);
        h.write_u64((*self >> 64) as u64);
    }
}

impl StableHash for i128 {
    fn stable_hash(&self, h: &mut StableHasher) {
        (*self as u128).stable_hash(h);
    }
}

impl StableHash for bool {
    fn stable_hash(&self, h: &mut StableHasher) {
        h.write_u64(u64::from(*self));
    }
}

impl StableHash for char {
    fn stable_hash(&self, h: &mut StableHasher) {
        h.write_u64(u64::from(*self));
    }
}

impl StableHash for () {
    fn stable_hash(&self, _h: &mut StableHasher) {}
}

impl StableHash for str {
    fn stable_hash(&self, h: &mut StableHasher) {
        h.write_u64(self.len() as u64);
        h.write(self.as_bytes());
    }
}

impl StableHash for String {
    fn stable_hash(&self, h: &mut StableHasher) {
        self.as_str().stable_hash(h);
    }
}

impl<T: StableHash> StableHash for [T] {
    fn stable_hash(&self, h: &mut StableHasher) {
        h.write_u64(self.len() as u64);
        for x in self {
            x.stable_hash(h);
        }
    }
}

impl<T: StableHash> StableHash for Vec<T> {
    fn stable_hash(&self, h: &mut StableHasher) {
        self.as_slice().stable_hash(h);
    }
}

impl<T: StableHash, const N: usize> StableHash for [T; N] {
    fn stable_hash(&self, h: &mut StableHasher) {
        self.as_slice().stable_hash(h);
    }
}

impl<T: StableHash> StableHash for Option<T> {
    fn stable_hash(&self, h: &mut StableHasher) {
        match self {
            None => h.write_u64(0),
            Some(v) => {
                h.write_u64(1);
                v.stable_hash(h);
            }
        }
    }
}

impl<T: StableHash + ?Sized> StableHash for &T {
    fn stable_hash(&self, h: &mut StableHasher) {
        (**self).stable_hash(h);
    }
}

impl<T: StableHash + ?Sized> StableHash for Box<T> {
    fn stable_hash(&self, h: &mut StableHasher) {
        (**self).stable_hash(h);
    }
}

impl<T: StableHash + ?Sized> StableHash for std::sync::Arc<T> {
    fn stable_hash(&self, h: &mut StableHasher) {
        (**self).stable_hash(h);
    }
}

macro_rules! stable_tuple {
    ($($name:ident)+) => {
        impl<$($name: StableHash),+> StableHash for ($($name,)+) {
            #[allow(non_snake_case)]
            fn stable_hash(&self, h: &mut StableHasher) {
                let ($($name,)+) = self;
                $($name.stable_hash(h);)+
            }
        }
    };
}
stable_tuple!(A);
stable_tuple!(A B);
stable_tuple!(A B C);
stable_tuple!(A B C D);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_ranges_cover_every_key_group_once_and_match_the_inverse() {
        for g in [1u32, 7, 128, 1000] {
            for p in 1..=g.min(40) {
                let mut next = 0u16;
                for i in 0..p {
                    let r = KeyGroupRange::for_task(i, p, g).expect("range");
                    assert_eq!(r.start, next, "g={g} p={p} i={i}");
                    for kg in r.iter() {
                        assert_eq!(task_for_key_group(kg, p, g), i, "g={g} p={p} kg={kg}");
                    }
                    next = r.end;
                }
                assert_eq!(u32::from(next), g);
            }
        }
    }

    #[test]
    fn invalid_parallelism_is_refused() {
        assert!(matches!(
            KeyGroupRange::for_task(0, 0, 128),
            Err(Error::InvalidParallelism { .. })
        ));
        assert!(matches!(
            KeyGroupRange::for_task(0, 129, 128),
            Err(Error::InvalidParallelism { .. })
        ));
        assert!(KeyGroupRange::for_task(3, 3, 128).is_err());
        assert!(KeyGroupRange::all(0).is_err());
    }

    #[test]
    fn word_aligned_and_byte_wise_writes_agree() {
        let mut a = StableHasher::new();
        a.write_u64(0x0102_0304_0506_0708);
        let mut b = StableHasher::new();
        b.write(&0x0102_0304_0506_0708u64.to_le_bytes());
        assert_eq!(a.finish(), b.finish());
    }
}
