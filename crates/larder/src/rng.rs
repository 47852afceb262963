//! Seeded randomness with a stable, documented stream.
//!
//! Every random choice larder makes (a random crop, a caption shuffle, later the data order) must
//! be a pure function of the user's seed and the position of the choice, across runs, machines,
//! thread counts and larder versions. So the stream is fixed here: ChaCha8 keyed by a SplitMix64
//! mix of the inputs, and the derived draws (ranges, floats, shuffles) are written out rather
//! than taken from `rand`'s distributions, whose exact outputs may change between releases.

use rand::{Rng as _, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A deterministic random stream for one purpose, e.g. "the caption of item 17 in epoch 3".
#[derive(Debug, Clone)]
pub struct Stream(ChaCha8Rng);

/// Domain tags keep streams for different purposes independent even with equal numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
pub enum Purpose {
    /// The random crop offset of an item, drawn once at planning time.
    Crop = 1,
    /// The caption transforms of an item in an epoch.
    Caption = 2,
    /// The data order of an epoch.
    Order = 3,
    /// The random flip of an item in an epoch.
    Flip = 4,
    /// Which precomputed caption variant (text embedding) an item gets in an epoch.
    CaptionVariant = 5,
    /// The start frame of a clip whose frames are taken at the dataset's `fps`, drawn once at
    /// planning time.
    Frames = 6,
    /// The images of its own folder an image takes as controls (`control_from_same_folder`),
    /// drawn once at scan time.
    Controls = 7,
}

impl Stream {
    /// The stream for `purpose` at the coordinates `parts` (seed, epoch, item, ...).
    pub fn new(purpose: Purpose, parts: &[u64]) -> Self {
        let mut key = [0u8; 32];
        let mut h = splitmix(purpose as u64 ^ 0x6c61_7264_6572_0000);
        for &p in parts {
            h = splitmix(h ^ p);
        }
        for (i, chunk) in key.chunks_exact_mut(8).enumerate() {
            h = splitmix(h.wrapping_add(i as u64));
            chunk.copy_from_slice(&h.to_le_bytes());
        }
        Stream(ChaCha8Rng::from_seed(key))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// A float uniformly drawn from [0, 1), with 53 bits of precision.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// An integer uniformly drawn from `0..n` (`n` > 0), without modulo bias (Lemire's method).
    pub fn below(&mut self, n: u64) -> u64 {
        debug_assert!(n > 0);
        let threshold = n.wrapping_neg() % n;
        loop {
            let m = u128::from(self.next_u64()) * u128::from(n);
            if (m as u64) >= threshold {
                return (m >> 64) as u64;
            }
        }
    }

    /// An integer uniformly drawn from `lo..=hi`.
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    /// Shuffles `items` in place (Fisher–Yates).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

/// SplitMix64's finaliser: a fast bijective mix of 64 bits.
fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_reproducible_and_independent() {
        let a: Vec<u64> = (0..4)
            .map(|_| 0)
            .scan(Stream::new(Purpose::Crop, &[1, 2]), |s, _| {
                Some(s.next_u64())
            })
            .collect();
        let b: Vec<u64> = (0..4)
            .map(|_| 0)
            .scan(Stream::new(Purpose::Crop, &[1, 2]), |s, _| {
                Some(s.next_u64())
            })
            .collect();
        let c: Vec<u64> = (0..4)
            .map(|_| 0)
            .scan(Stream::new(Purpose::Caption, &[1, 2]), |s, _| {
                Some(s.next_u64())
            })
            .collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn below_stays_in_range_and_covers_it() {
        let mut s = Stream::new(Purpose::Crop, &[7]);
        let mut seen = [false; 5];
        for _ in 0..200 {
            let v = s.below(5);
            assert!(v < 5);
            seen[v as usize] = true;
        }
        assert!(seen.iter().all(|&b| b));
    }

    #[test]
    fn shuffle_is_a_permutation() {
        let mut v: Vec<u32> = (0..50).collect();
        Stream::new(Purpose::Caption, &[3]).shuffle(&mut v);
        let mut sorted = v.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
        assert_ne!(v, sorted);
    }
}
