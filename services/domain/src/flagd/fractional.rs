//! Fractional bucketing: MurmurHash3 and flagd's two generations of splitting a hash into weighted buckets.

#[allow(unused_imports)]
use super::*;

/// MurmurHash3, x86 32-bit variant.
pub fn murmur3_32(data: &[u8], seed: u32) -> u32 {
    const C1: u32 = 0xcc9e_2d51;
    const C2: u32 = 0x1b87_3593;
    let mut h = seed;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
        h ^= k;
        h = h.rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64);
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        let mut k = 0u32;
        for (i, b) in tail.iter().enumerate() {
            k |= u32::from(*b) << (8 * i);
        }
        k = k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
        h ^= k;
    }
    h ^= data.len() as u32;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

/// flagd's bucket of a value among weighted variants: the first variant
/// whose running weight sum exceeds `(hash × total) >> 32`.
pub fn bucket<'v>(value: &str, weighted: &[(&'v str, u64)]) -> Option<&'v str> {
    bucket_index(value, weighted.iter().map(|(_, w)| *w)).map(|i| weighted[i].0)
}

/// Which of the weights `value` falls in (see [`bucket`]).
pub(super) fn bucket_index(
    value: &str,
    weights: impl Iterator<Item = u64> + Clone,
) -> Option<usize> {
    let total: u64 = weights.clone().sum();
    if total == 0 {
        return None;
    }
    let hash = u64::from(murmur3_32(value.as_bytes(), 0));
    let bucket = (hash * total) >> 32;
    let mut sum = 0;
    for (i, weight) in weights.enumerate() {
        sum += weight;
        if sum > bucket {
            return Some(i);
        }
    }
    None
}

/// flagd's first bucketing (`@fractional-v1`): the hash read as a signed
/// 32-bit number, its magnitude as a share of `i32::MAX` in percent, against
/// each variant's running share of the total weight in percent.
pub(super) fn bucket_index_v1(value: &str, weights: &[u64]) -> Option<usize> {
    let total: u64 = weights.iter().sum();
    if total == 0 {
        return None;
    }
    let hash = murmur3_32(value.as_bytes(), 0) as i32;
    let bucket = f64::from(hash).abs() / f64::from(i32::MAX) * 100.0;
    let mut end = 0.0;
    for (i, weight) in weights.iter().enumerate() {
        end += *weight as f64 / total as f64 * 100.0;
        if bucket < end {
            return Some(i);
        }
    }
    None
}
