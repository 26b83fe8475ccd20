//! Exact and near-duplicate detection (SPEC.md, "Dedup").
use rayon::prelude::*;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::config::DedupConfig;
use crate::par;

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

/// The set elements (`h >> 32` of each shingle hash h) of a text, in text order (with
/// repeats), into `out`.
pub fn shingle_hashes(text: &str, k: usize, toks: &mut Vec<u64>, out: &mut Vec<u32>) {
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
    out.extend(toks.windows(w).map(|x| (shingle_hash(x) >> 32) as u32));
}

/// The set of a text: sorted, distinct `h >> 32` of its word k-shingle hashes.
pub fn shingles(text: &str, k: usize) -> Vec<u32> {
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

    /// sig_i = min over the set of (a_i * x + b_i) mod 2^32. With odd a_i this is a
    /// permutation of 32-bit values; the shingle hashes are already random, and the exact
    /// Jaccard check after LSH keeps precision whatever the permutations' quality.
    pub fn signature(&self, set: &[u32]) -> Vec<u32> {
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
fn signature_into(a: &[u32], b: &[u32], set: &[u32], sig: &mut [u32]) {
    let full = a.len() / BLOCK * BLOCK;
    for start in (0..full).step_by(BLOCK) {
        let ab: &[u32; BLOCK] = a[start..start + BLOCK].try_into().expect("block");
        let bb: &[u32; BLOCK] = b[start..start + BLOCK].try_into().expect("block");
        let mut acc = [u32::MAX; BLOCK];
        for &x in set {
            for k in 0..BLOCK {
                acc[k] = acc[k].min(ab[k].wrapping_mul(x).wrapping_add(bb[k]));
            }
        }
        sig[start..start + BLOCK].copy_from_slice(&acc);
    }
    for &x in set {
        for i in full..a.len() {
            sig[i] = sig[i].min(a[i].wrapping_mul(x).wrapping_add(b[i]));
        }
    }
}

/// The same loop compiled for AVX-512: 16 lanes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn signature_avx512(a: &[u32], b: &[u32], set: &[u32], sig: &mut [u32]) {
    signature_into(a, b, set, sig)
}

/// The same loop compiled for AVX2: 8 lanes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn signature_avx2(a: &[u32], b: &[u32], set: &[u32], sig: &mut [u32]) {
    signature_into(a, b, set, sig)
}

pub fn band_key(band: &[u32]) -> u64 {
    band.iter().fold(0, |h, &v| mix64(h ^ v as u64))
}

pub fn jaccard<T: Ord>(a: &[T], b: &[T]) -> f64 {
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

/// `jaccard(a, b) >= threshold` (sorted, distinct sets), stopping as soon as the elements left
/// cannot reach it. Most LSH candidates are far below the threshold, and their number grows
/// with the square of the corpus, so this decides the cost of confirmation.
pub fn jaccard_at_least<T: Ord>(a: &[T], b: &[T], threshold: f64) -> bool {
    let total = a.len() + b.len();
    // The same float division as `jaccard`; inter / (total - inter) grows with inter, and so
    // does its rounded value, so "passes" is "inter >= need".
    let passes = |inter: usize| total > inter && inter as f64 / (total - inter) as f64 >= threshold;
    let most = a.len().min(b.len());
    if !passes(most) {
        return false;
    }
    let (mut lo, mut hi) = (0, most);
    while lo < hi {
        let mid = (lo + hi) / 2;
        if passes(mid) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    let need = lo;
    // An element passed over without a match lowers the reachable intersection by one.
    let (slack_a, slack_b) = (a.len() - need, b.len() - need);
    let (mut i, mut j, mut inter) = (0, 0, 0usize);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => {
                i += 1;
                if i - inter > slack_a {
                    return false;
                }
            }
            std::cmp::Ordering::Greater => {
                j += 1;
                if j - inter > slack_b {
                    return false;
                }
            }
            std::cmp::Ordering::Equal => {
                inter += 1;
                i += 1;
                j += 1;
            }
        }
    }
    inter >= need
}

/// Exact duplicates: identical texts. Returns, for each text, the index of its first
/// occurrence. `hashes[i]` is any hash of `texts[i]` (the caller computes it while the text is
/// in cache): texts are spread over buckets by hash, and each bucket sorted on (hash, index)
/// and its equal-hash runs compared, all buckets in parallel.
pub fn exact_representatives(texts: &[&str], hashes: &[u64]) -> Vec<usize> {
    let keyed: Vec<(u64, u32)> = hashes.par_iter().enumerate().map(|(i, &h)| (h, i as u32)).collect();
    let buckets = par::buckets_for(keyed.len());
    let mut groups = par::scatter(&[&keyed[..]], buckets, |&(h, _)| par::top_bits(h, buckets));
    drop(keyed);
    let first: Vec<AtomicUsize> = (0..texts.len()).into_par_iter().map(AtomicUsize::new).collect();
    groups.par_iter_mut().for_each(|group| {
        group.sort_unstable();
        for run in group.chunk_by(|a, b| a.0 == b.0).filter(|run| run.len() > 1) {
            // In index order, so the first of each distinct text is its representative; more
            // than one representative only on a hash collision.
            let mut reps: Vec<u32> = Vec::with_capacity(1);
            for &(_, i) in run {
                match reps.iter().find(|&&r| texts[r as usize] == texts[i as usize]) {
                    Some(&r) => first[i as usize].store(r as usize, Ordering::Relaxed),
                    None => reps.push(i),
                }
            }
        }
    });
    first.into_par_iter().map(AtomicUsize::into_inner).collect()
}

/// Texts per block of band keys. Within a block the keys are stored band by band, so
/// gathering one band reads contiguous runs rather than one cache line per text.
const KEY_BLOCK: usize = 1024;

/// Candidate pairs `(i << 32) | j`, `i < j`, of the eligible texts sharing their key in `band`
/// (`keys`: one vector per block of KEY_BLOCK texts, band-major). Equal keys are grouped by
/// partitioning on the key's top bits into buckets of a few hundred entries, then sorting each:
/// the work per entry stays the same however large the corpus (a hash table per band would
/// outgrow the caches).
fn band_pairs(keys: &[Vec<u64>], bands: usize, band: usize, eligible: &[bool]) -> Vec<u64> {
    let mut entries: Vec<(u64, u32)> = Vec::with_capacity(eligible.len());
    for (b, block) in keys.iter().enumerate() {
        let len = block.len() / bands;
        let base = b * KEY_BLOCK;
        for (k, &key) in block[band * len..(band + 1) * len].iter().enumerate() {
            if eligible[base + k] {
                entries.push((key, (base + k) as u32));
            }
        }
    }
    let bits = (entries.len() / 256).max(1).next_power_of_two().trailing_zeros();
    let part = |key: u64| if bits == 0 { 0 } else { (key >> (64 - bits)) as usize };
    let mut starts = vec![0usize; (1 << bits) + 1];
    for &(k, _) in &entries {
        starts[part(k) + 1] += 1;
    }
    for p in 1..starts.len() {
        starts[p] += starts[p - 1];
    }
    let mut next = starts.clone();
    let mut grouped = vec![(0u64, 0u32); entries.len()];
    for &e in &entries {
        let slot = &mut next[part(e.0)];
        grouped[*slot] = e;
        *slot += 1;
    }
    drop(entries);
    let mut pairs = Vec::new();
    for w in starts.windows(2) {
        let bucket = &mut grouped[w[0]..w[1]];
        bucket.sort_unstable();
        for run in bucket.chunk_by(|a, b| a.0 == b.0) {
            for (x, &(_, i)) in run.iter().enumerate() {
                for &(_, j) in &run[x + 1..] {
                    pairs.push(((i as u64) << 32) | j as u64);
                }
            }
        }
    }
    pairs
}

/// A text's set: sorted, distinct 32-bit shingle values.
type Set = Box<[u32]>;

/// Near duplicates: union-find components over LSH candidate pairs confirmed by exact Jaccard
/// of the shingle sets. Returns, for each text, the smallest index in its component.
pub fn near_representatives(texts: &[&str], cfg: &DedupConfig) -> Vec<usize> {
    let perms = Permutations::new(cfg.num_perm, cfg.seed);
    let (bands, rows) = (cfg.bands, cfg.num_perm / cfg.bands);
    // One pass per text while it is in cache: its shingle set (sorted, distinct) and its band
    // keys; the signature itself is not kept. An empty set (no words) is not eligible.
    let (sets, keys): (Vec<Vec<Set>>, Vec<Vec<u64>>) = texts
        .par_chunks(KEY_BLOCK)
        .map(|texts| {
            // The set is built in a reused buffer and copied once at its final size: growing
            // and shrinking a fresh vector per text touched several times the sets' memory.
            let (mut toks, mut scratch) = (Vec::new(), Vec::new());
            let mut keys = vec![0u64; texts.len() * bands];
            let sets = texts
                .iter()
                .enumerate()
                .map(|(k, t)| {
                    shingle_hashes(t, cfg.shingle_size, &mut toks, &mut scratch);
                    scratch.sort_unstable();
                    scratch.dedup();
                    if !scratch.is_empty() {
                        let sig = perms.signature(&scratch);
                        for b in 0..bands {
                            keys[b * texts.len() + k] = band_key(&sig[b * rows..(b + 1) * rows]);
                        }
                    }
                    Set::from(scratch.as_slice())
                })
                .collect();
            (sets, keys)
        })
        .unzip();
    let set = |i: u64| &sets[i as usize / KEY_BLOCK][i as usize % KEY_BLOCK];
    let eligible: Vec<bool> = (0..texts.len() as u64)
        .into_par_iter()
        .map(|i| !set(i).is_empty())
        .collect();
    let per_band: Vec<Vec<u64>> = (0..bands)
        .into_par_iter()
        .map(|band| band_pairs(&keys, bands, band, &eligible))
        .collect();
    drop(keys);
    // A pair found in several bands is confirmed once: equal pairs meet in one bucket.
    let slices: Vec<&[u64]> = per_band.iter().map(|p| p.as_slice()).collect();
    let buckets = par::buckets_for(slices.iter().map(|s| s.len()).sum());
    let mut groups = par::scatter(&slices, buckets, |&p| par::top_bits(mix64(p), buckets));
    drop(per_band);
    let edges: Vec<Vec<u64>> = groups
        .par_iter_mut()
        .map(|pairs| {
            pairs.sort_unstable();
            pairs.dedup();
            pairs
                .iter()
                .copied()
                .filter(|&p| jaccard_at_least(set(p >> 32), set(p & 0xFFFF_FFFF), cfg.threshold))
                .collect()
        })
        .collect();
    // Roots are always the smaller index, so every parent pointer goes down.
    let mut parent: Vec<usize> = (0..texts.len()).into_par_iter().collect();
    for &p in edges.iter().flatten() {
        let (ri, rj) = (
            find(&mut parent, (p >> 32) as usize),
            find(&mut parent, (p & 0xFFFF_FFFF) as usize),
        );
        if ri != rj {
            let (lo, hi) = if ri < rj { (ri, rj) } else { (rj, ri) };
            parent[hi] = lo;
        }
    }
    // Parents point to smaller indices, so in index order each parent is already a root.
    for i in 0..parent.len() {
        parent[i] = parent[parent[i]];
    }
    // Many small allocations: freed by all threads rather than by the caller alone.
    sets.into_par_iter().for_each(drop);
    parent
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
        assert_eq!(jaccard::<u32>(&[], &[]), 0.0);
    }

    #[test]
    fn jaccard_at_least_agrees_with_jaccard() {
        // Pseudo-random sorted sets of many sizes and overlaps, thresholds on and around the
        // exact ratios: the early exit never changes the answer.
        let mut state = 11u64;
        let mut next = || {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            mix64(state)
        };
        for _ in 0..3000 {
            let common = (next() % 40) as usize;
            let (only_a, only_b) = ((next() % 12) as usize, (next() % 12) as usize);
            let shared: Vec<u64> = (0..common).map(|_| next() % 500).collect();
            let mut a: Vec<u64> = shared
                .iter()
                .copied()
                .chain((0..only_a).map(|_| next() % 500))
                .collect();
            let mut b: Vec<u64> = shared
                .iter()
                .copied()
                .chain((0..only_b).map(|_| next() % 500))
                .collect();
            for s in [&mut a, &mut b] {
                s.sort_unstable();
                s.dedup();
            }
            let j = jaccard(&a, &b);
            for t in [j, j - 1e-12, j + 1e-12, 0.5, 0.8, 1.0, 1e-9] {
                if t > 0.0 && t <= 1.0 {
                    assert_eq!(jaccard_at_least(&a, &b, t), j >= t, "{a:?} {b:?} {t}");
                }
            }
        }
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

    /// SPEC.md "Dedup" done the plain way: a hash table per band, every pair of a bucket,
    /// exact Jaccard, union-find. The parallel version must agree with it.
    fn near_reference(texts: &[&str], cfg: &DedupConfig) -> Vec<usize> {
        let perms = Permutations::new(cfg.num_perm, cfg.seed);
        let rows = cfg.num_perm / cfg.bands;
        let sets: Vec<Vec<u32>> = texts.iter().map(|t| shingles(t, cfg.shingle_size)).collect();
        let mut pairs = std::collections::BTreeSet::new();
        for band in 0..cfg.bands {
            let mut buckets: std::collections::HashMap<u64, Vec<usize>> = Default::default();
            for (i, s) in sets.iter().enumerate().filter(|(_, s)| !s.is_empty()) {
                let sig = perms.signature(s);
                buckets
                    .entry(band_key(&sig[band * rows..(band + 1) * rows]))
                    .or_default()
                    .push(i);
            }
            for members in buckets.values() {
                for (x, &i) in members.iter().enumerate() {
                    for &j in &members[x + 1..] {
                        pairs.insert((i, j));
                    }
                }
            }
        }
        let mut parent: Vec<usize> = (0..texts.len()).collect();
        for (i, j) in pairs {
            if jaccard(&sets[i], &sets[j]) >= cfg.threshold {
                let (ri, rj) = (find(&mut parent, i), find(&mut parent, j));
                parent[ri.max(rj)] = ri.min(rj);
            }
        }
        (0..texts.len()).map(|i| find(&mut parent, i)).collect()
    }

    /// Texts from a small vocabulary: many near-duplicates (a word or two changed), some exact
    /// repeats, some empty; enough of them that every stage splits into many buckets.
    fn corpus(n: usize) -> Vec<String> {
        let mut state = 5u64;
        let mut next = move || {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            mix64(state)
        };
        let vocab: Vec<String> = (0..300).map(|i| format!("w{i}")).collect();
        let mut out: Vec<String> = Vec::with_capacity(n);
        while out.len() < n {
            let r = next() % 10;
            if r < 4 && !out.is_empty() {
                let base = out[(next() % out.len() as u64) as usize].clone();
                let mut words: Vec<&str> = base.split(' ').collect();
                let k = (next() % words.len() as u64) as usize;
                words[k] = &vocab[(next() % 300) as usize];
                out.push(words.join(" "));
            } else if r < 5 && !out.is_empty() {
                out.push(out[(next() % out.len() as u64) as usize].clone());
            } else if r < 6 {
                out.push(String::new());
            } else {
                let len = 8 + next() % 30;
                out.push(
                    (0..len)
                        .map(|_| vocab[(next() % 300) as usize].as_str())
                        .collect::<Vec<_>>()
                        .join(" "),
                );
            }
        }
        out
    }

    #[test]
    fn near_duplicates_match_the_plain_algorithm_at_scale() {
        let texts = corpus(20_000);
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let cfg = DedupConfig {
            shingle_size: 2,
            threshold: 0.5,
            ..cfg()
        };
        let reps = near_representatives(&refs, &cfg);
        assert_eq!(reps, near_reference(&refs, &cfg));
        assert!(
            reps.iter().enumerate().filter(|(i, r)| i != *r).count() > 1000,
            "near-duplicates found"
        );
    }

    #[test]
    fn exact_duplicates_match_a_hash_map_at_scale() {
        let texts = corpus(60_000);
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let hashes: Vec<u64> = refs.iter().map(|t| xxhash_rust::xxh3::xxh3_64(t.as_bytes())).collect();
        let mut first: std::collections::HashMap<&str, usize> = Default::default();
        let expected: Vec<usize> = refs
            .iter()
            .enumerate()
            .map(|(i, t)| *first.entry(t).or_insert(i))
            .collect();
        assert_eq!(exact_representatives(&refs, &hashes), expected);
    }

    #[test]
    fn exact_representatives_point_to_first() {
        let texts = ["a", "b", "a", "b", "c"];
        let hashes: Vec<u64> = texts.iter().map(|t| xxhash_rust::xxh3::xxh3_64(t.as_bytes())).collect();
        assert_eq!(exact_representatives(&texts, &hashes), vec![0, 1, 0, 1, 4]);
        // A hash collision between different texts keeps them apart.
        assert_eq!(exact_representatives(&texts, &[7; 5]), vec![0, 1, 0, 1, 4]);
    }
}
