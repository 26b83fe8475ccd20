//! Exact and near-duplicate detection (SPEC.md, "Dedup").
use rayon::prelude::*;
use std::collections::HashMap;

use crate::config::DedupConfig;

#[inline]
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// FNV-1a 64 over the ASCII-lowercased UTF-8 bytes of a token.
#[inline]
pub fn token_hash(token: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in token {
        h ^= b.to_ascii_lowercase() as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// mix64 of the token hashes combined by rotate-and-xor: order-sensitive, one mix per shingle.
#[inline]
pub fn shingle_hash(tokens: &[u64]) -> u64 {
    mix64(tokens.iter().fold(0u64, |x, &t| x.rotate_left(23) ^ t))
}

/// Hashes of the word k-shingles of a text, in text order (with repeats), into `out`.
pub fn shingle_hashes(text: &str, k: usize, toks: &mut Vec<u64>, out: &mut Vec<u64>) {
    toks.clear();
    out.clear();
    // token_hash of every word, in one pass over the bytes.
    const BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    let mut h = BASIS;
    let mut in_word = false;
    for &b in text.as_bytes() {
        if b == b' ' || b == b'\n' {
            if in_word {
                toks.push(h);
                h = BASIS;
                in_word = false;
            }
        } else {
            h = (h ^ b.to_ascii_lowercase() as u64).wrapping_mul(0x0000_0100_0000_01b3);
            in_word = true;
        }
    }
    if in_word {
        toks.push(h);
    }
    if toks.is_empty() {
        return;
    }
    let w = k.min(toks.len());
    out.extend(toks.windows(w).map(shingle_hash));
}

/// Sorted, distinct hashes of the word k-shingles of a text.
pub fn shingles(text: &str, k: usize) -> Vec<u64> {
    let (mut toks, mut out) = (Vec::new(), Vec::new());
    shingle_hashes(text, k, &mut toks, &mut out);
    out.sort_unstable();
    out.dedup();
    out
}

pub struct Permutations {
    a: Vec<u32>,
    b: Vec<u32>,
}

impl Permutations {
    /// a_i, b_i from a splitmix64 stream seeded by `seed`, drawn a_0, b_0, a_1, b_1, ...
    pub fn new(num_perm: usize, seed: u64) -> Self {
        let mut state = seed;
        let mut next = || {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            mix64(state)
        };
        let (mut a, mut b) = (Vec::with_capacity(num_perm), Vec::with_capacity(num_perm));
        for _ in 0..num_perm {
            a.push((next() as u32) | 1);
            b.push(next() as u32);
        }
        Permutations { a, b }
    }

    /// sig_i = min over shingles of (a_i * (h >> 32) + b_i) mod 2^32. With odd a_i this is a
    /// permutation of 32-bit values; the shingle hashes are already random, and the exact
    /// Jaccard check after LSH keeps precision whatever the permutations' quality.
    pub fn signature(&self, set: &[u64]) -> Vec<u32> {
        let mut sig = vec![u32::MAX; self.a.len()];
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx512f") {
                // Safe: the CPU supports AVX-512F.
                unsafe { signature_avx512(&self.a, &self.b, set, &mut sig) };
                return sig;
            }
            if std::is_x86_feature_detected!("avx2") {
                // Safe: the CPU supports AVX2.
                unsafe { signature_avx2(&self.a, &self.b, set, &mut sig) };
                return sig;
            }
        }
        signature_into(&self.a, &self.b, set, &mut sig);
        sig
    }
}

const BLOCK: usize = 32;

/// Blocks of permutations stay in registers while every shingle passes through them.
#[inline(always)]
fn signature_into(a: &[u32], b: &[u32], set: &[u64], sig: &mut [u32]) {
    let full = a.len() / BLOCK * BLOCK;
    for start in (0..full).step_by(BLOCK) {
        let ab: &[u32; BLOCK] = a[start..start + BLOCK].try_into().expect("block");
        let bb: &[u32; BLOCK] = b[start..start + BLOCK].try_into().expect("block");
        let mut acc = [u32::MAX; BLOCK];
        for &h in set {
            let x = (h >> 32) as u32;
            for k in 0..BLOCK {
                acc[k] = acc[k].min(ab[k].wrapping_mul(x).wrapping_add(bb[k]));
            }
        }
        sig[start..start + BLOCK].copy_from_slice(&acc);
    }
    for &h in set {
        let x = (h >> 32) as u32;
        for i in full..a.len() {
            sig[i] = sig[i].min(a[i].wrapping_mul(x).wrapping_add(b[i]));
        }
    }
}

/// The same loop compiled for AVX-512: 16 lanes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn signature_avx512(a: &[u32], b: &[u32], set: &[u64], sig: &mut [u32]) {
    signature_into(a, b, set, sig)
}

/// The same loop compiled for AVX2: 8 lanes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn signature_avx2(a: &[u32], b: &[u32], set: &[u64], sig: &mut [u32]) {
    signature_into(a, b, set, sig)
}

pub fn band_key(band: &[u32]) -> u64 {
    band.iter().fold(0, |h, &v| mix64(h ^ v as u64))
}

pub fn jaccard(a: &[u64], b: &[u64]) -> f64 {
    let (mut i, mut j, mut inter) = (0, 0, 0usize);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                inter += 1;
                i += 1;
                j += 1;
            }
        }
    }
    let union = a.len() + b.len() - inter;
    if union == 0 {
        0.0
    } else {
        inter as f64 / union as f64
    }
}

fn find(parent: &mut [usize], mut x: usize) -> usize {
    while parent[x] != x {
        parent[x] = parent[parent[x]];
        x = parent[x];
    }
    x
}

/// Exact duplicates: identical texts. Returns, for each text, the index of its first occurrence.
pub fn exact_representatives(texts: &[&str]) -> Vec<usize> {
    let mut first: HashMap<&str, usize, xxhash_rust::xxh3::Xxh3Builder> =
        HashMap::with_capacity_and_hasher(texts.len(), Default::default());
    texts
        .iter()
        .enumerate()
        .map(|(i, t)| *first.entry(t).or_insert(i))
        .collect()
}

/// Band keys are already well-mixed 64-bit hashes; hashing them again is wasted work.
#[derive(Default)]
struct IdentityHasher(u64);

impl std::hash::Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, _: &[u8]) {
        unreachable!("only u64 keys")
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

type KeyMap<V> = HashMap<u64, V, std::hash::BuildHasherDefault<IdentityHasher>>;

/// Near duplicates: union-find components over LSH candidate pairs confirmed by exact Jaccard
/// of the shingle sets. Returns, for each text, the smallest index in its component.
pub fn near_representatives(texts: &[&str], cfg: &DedupConfig) -> Vec<usize> {
    let perms = Permutations::new(cfg.num_perm, cfg.seed);
    // Shingle hashes and a signature per text; repeated shingles do not change a minimum, so
    // no sort is needed yet. None: no words, not eligible.
    let mut hashed: Vec<(Vec<u64>, Option<Vec<u32>>)> = texts
        .par_iter()
        .map_init(Vec::new, |toks, t| {
            let mut hashes = Vec::new();
            shingle_hashes(t, cfg.shingle_size, toks, &mut hashes);
            let sig = (!hashes.is_empty()).then(|| perms.signature(&hashes));
            (hashes, sig)
        })
        .collect();
    let sigs: Vec<Option<Vec<u32>>> = hashed.iter_mut().map(|(_, s)| s.take()).collect();
    let mut sets: Vec<Vec<u64>> = hashed.into_iter().map(|(h, _)| h).collect();
    let rows = cfg.num_perm / cfg.bands;
    let mut pairs: Vec<(u32, u32)> = (0..cfg.bands)
        .into_par_iter()
        .flat_map_iter(|band| {
            // Buckets as chains: `last` maps a key to its latest member, `prev` links each
            // member to the one before it in the same bucket.
            let mut last: KeyMap<u32> = KeyMap::with_capacity_and_hasher(sigs.len(), Default::default());
            let mut prev = vec![u32::MAX; sigs.len()];
            let mut pairs = Vec::new();
            for (j, sig) in sigs.iter().enumerate() {
                let Some(sig) = sig else { continue };
                let key = band_key(&sig[band * rows..(band + 1) * rows]);
                if let Some(head) = last.insert(key, j as u32) {
                    prev[j] = head;
                    let mut i = head;
                    while i != u32::MAX {
                        pairs.push((i, j as u32));
                        i = prev[i as usize];
                    }
                }
            }
            pairs
        })
        .collect();
    pairs.par_sort_unstable();
    pairs.dedup();
    // Exact shingle sets (sorted, distinct), only for texts that are in some candidate pair.
    let mut involved = vec![false; texts.len()];
    for &(i, j) in &pairs {
        involved[i as usize] = true;
        involved[j as usize] = true;
    }
    sets.par_iter_mut()
        .zip(&involved)
        .filter(|(_, inv)| **inv)
        .for_each(|(s, _)| {
            s.sort_unstable();
            s.dedup();
        });
    let set = |i: u32| &sets[i as usize];
    let edges: Vec<(u32, u32)> = pairs
        .into_par_iter()
        .filter(|&(i, j)| jaccard(set(i), set(j)) >= cfg.threshold)
        .collect();
    let mut parent: Vec<usize> = (0..texts.len()).collect();
    for (i, j) in edges {
        let (ri, rj) = (find(&mut parent, i as usize), find(&mut parent, j as usize));
        if ri != rj {
            // The smaller index is the root, so the root is the component's earliest text.
            let (lo, hi) = if ri < rj { (ri, rj) } else { (rj, ri) };
            parent[hi] = lo;
        }
    }
    (0..texts.len()).map(|i| find(&mut parent, i)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> DedupConfig {
        DedupConfig {
            exact: true,
            near: true,
            shingle_size: 3,
            num_perm: 64,
            bands: 16,
            threshold: 0.7,
            seed: 7,
        }
    }

    #[test]
    fn splitmix64_reference_value() {
        // The first output of the reference splitmix64 seeded with 0.
        assert_eq!(mix64(0x9E37_79B9_7F4A_7C15), 0xE220_A839_7B1D_CDAF);
    }

    #[test]
    fn fnv1a_reference_value_and_case() {
        assert_eq!(token_hash(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(token_hash(b"SDAP"), token_hash(b"sdap"));
    }

    #[test]
    fn jaccard_of_sets() {
        assert_eq!(jaccard(&[1, 2, 3], &[2, 3, 4]), 0.5);
        assert_eq!(jaccard(&[], &[]), 0.0);
    }

    #[test]
    fn near_duplicates_cluster_and_keep_the_earliest() {
        let base: Vec<String> = (0..60).map(|i| format!("word{i}")).collect();
        let mut edited = base.clone();
        edited[30] = "changed".into();
        let other: Vec<String> = (0..60).map(|i| format!("other{i}")).collect();
        let (a, b, c) = (base.join(" "), edited.join(" "), other.join(" "));
        let reps = near_representatives(&[&c, &a, &b], &cfg());
        assert_eq!(reps, vec![0, 1, 1]);
    }

    #[test]
    fn exact_representatives_point_to_first() {
        assert_eq!(exact_representatives(&["a", "b", "a", "b", "c"]), vec![0, 1, 0, 1, 4]);
    }
}
