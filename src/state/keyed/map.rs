//! The map of one state's key group ([`StateMap`]) and its fast, per-process seeded hasher
//! ([`StateHashBuilder`], [`StateHasher`]).

use std::collections::HashMap;

/// A key group's table of one state.
pub(super) type StateMap<K, T> = HashMap<K, T, StateHashBuilder>;

/// Builds the hasher of keyed state tables: each written word mixed by multiply-rotate and the
/// result passed through the MurmurHash3 finaliser, from a per-process random seed (so an
/// adversary cannot precompute colliding keys for another process). Several times faster than
/// SipHash for the small keys of keyed state; never used for anything stored.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StateHashBuilder {
    seed: u64,
}

impl Default for StateHashBuilder {
    fn default() -> Self {
        static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
        let seed = *SEED.get_or_init(|| {
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(0x5eed);
            h.finish()
        });
        StateHashBuilder { seed }
    }
}

impl std::hash::BuildHasher for StateHashBuilder {
    type Hasher = StateHasher;
    fn build_hasher(&self) -> StateHasher {
        StateHasher { h: self.seed }
    }
}

/// The hasher [`StateHashBuilder`] builds.
#[derive(Debug)]
pub(crate) struct StateHasher {
    h: u64,
}

impl StateHasher {
    #[inline]
    fn mix(&mut self, w: u64) {
        self.h = (self.h ^ w)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .rotate_left(31);
    }
}

impl std::hash::Hasher for StateHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.mix(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.mix(u64::from_le_bytes(w) ^ ((rest.len() as u64) << 56));
        }
    }
    #[inline]
    fn write_u64(&mut self, v: u64) {
        self.mix(v);
    }
    #[inline]
    fn write_u32(&mut self, v: u32) {
        self.mix(u64::from(v));
    }
    #[inline]
    fn write_usize(&mut self, v: usize) {
        self.mix(v as u64);
    }
    #[inline]
    fn finish(&self) -> u64 {
        let mut k = self.h;
        k ^= k >> 33;
        k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
        k ^= k >> 33;
        k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        k ^ (k >> 33)
    }
}
