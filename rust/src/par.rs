//! Parallel building blocks that keep the calling thread idle. rayon's `collect` of a filtered
//! or flattened iterator appends the pieces on the calling thread, and `par_sort_unstable`
//! partitions the whole slice on one thread first: at corpus scale both are serial phases.
use rayon::prelude::*;

/// Items per task when splitting a slice.
const CHUNK: usize = 1 << 15;

/// A bucket count for `n` items that keeps each bucket small enough for the caches.
pub fn buckets_for(n: usize) -> usize {
    (n / 4096).clamp(1, 1024).next_power_of_two()
}

/// The top bits of a well-mixed hash, as a bucket index among `buckets` (a power of two).
pub fn top_bits(hash: u64, buckets: usize) -> usize {
    if buckets <= 1 {
        0
    } else {
        (hash >> (64 - buckets.trailing_zeros())) as usize
    }
}

/// Distributes the items of `parts` among `buckets` buckets (`bucket(x) < buckets`), in
/// parallel. The order inside a bucket is unspecified.
pub fn scatter<T: Copy + Send + Sync>(
    parts: &[&[T]],
    buckets: usize,
    bucket: impl Fn(&T) -> usize + Sync,
) -> Vec<Vec<T>> {
    let n: usize = parts.iter().map(|p| p.len()).sum();
    let chunk = CHUNK.max(n / 64);
    let local: Vec<Vec<Vec<T>>> = parts
        .par_iter()
        .flat_map(|p| p.par_chunks(chunk))
        .map(|items| {
            let mut out = vec![Vec::new(); buckets];
            for x in items {
                out[bucket(x)].push(*x);
            }
            out
        })
        .collect();
    (0..buckets)
        .into_par_iter()
        .map(|b| {
            let mut v = Vec::with_capacity(local.iter().map(|l| l[b].len()).sum());
            for l in &local {
                v.extend_from_slice(&l[b]);
            }
            v
        })
        .collect()
}

/// The parts one after the other, copied in parallel (a zeroed vector would be cleared by the
/// calling thread alone first).
pub fn concat<T: Copy + Send + Sync>(parts: &[Vec<T>]) -> Vec<T> {
    let total = parts.iter().map(Vec::len).sum();
    let mut out: Vec<T> = Vec::with_capacity(total);
    let mut rest = &mut out.spare_capacity_mut()[..total];
    let mut slots = Vec::with_capacity(parts.len());
    for p in parts {
        let (slot, tail) = rest.split_at_mut(p.len());
        slots.push(slot);
        rest = tail;
    }
    slots.into_par_iter().zip(parts).for_each(|(slot, p)| {
        for (d, &s) in slot.iter_mut().zip(p) {
            d.write(s);
        }
    });
    // Safe: the slots cover the first `total` elements, and each was written above.
    unsafe { out.set_len(total) };
    out
}

/// The indices `i < n` with `keep(i)`, in order.
pub fn filter_indices(n: usize, keep: impl Fn(usize) -> bool + Sync) -> Vec<usize> {
    let parts: Vec<Vec<usize>> = (0..n.div_ceil(CHUNK))
        .into_par_iter()
        .map(|c| (c * CHUNK..n.min((c + 1) * CHUNK)).filter(|&i| keep(i)).collect())
        .collect();
    concat(&parts)
}

/// The distinct values of `parts`, sorted, all below `limit`: a bucket sort on value ranges,
/// every step parallel.
pub fn sorted_distinct(parts: &[&[u64]], limit: u64) -> Vec<u64> {
    let n: usize = parts.iter().map(|p| p.len()).sum();
    let buckets = buckets_for(n);
    let width = (limit / buckets as u64).max(1);
    let mut groups = scatter(parts, buckets, |&v| ((v / width) as usize).min(buckets - 1));
    groups.par_iter_mut().for_each(|g| {
        g.sort_unstable();
        g.dedup();
    });
    concat(&groups)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorted_distinct_of_many_parts() {
        let mut state = 3u64;
        let parts: Vec<Vec<u64>> = (0..7)
            .map(|_| {
                (0..50_000)
                    .map(|_| {
                        state = state
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        (state >> 40) % 100_000
                    })
                    .collect()
            })
            .collect();
        let slices: Vec<&[u64]> = parts.iter().map(|p| p.as_slice()).collect();
        let mut expected: Vec<u64> = parts.concat();
        expected.sort_unstable();
        expected.dedup();
        assert_eq!(sorted_distinct(&slices, 100_000), expected);
        assert_eq!(sorted_distinct(&[], 10), Vec::<u64>::new());
    }

    #[test]
    fn filter_indices_in_order() {
        let n = 3 * CHUNK + 17;
        let expected: Vec<usize> = (0..n).filter(|i| i % 3 == 1).collect();
        assert_eq!(filter_indices(n, |i| i % 3 == 1), expected);
        assert!(filter_indices(0, |_| true).is_empty());
    }

    #[test]
    fn scatter_keeps_every_item_in_its_bucket() {
        let items: Vec<u64> = (0..100_000).map(crate::dedup::mix64).collect();
        let groups = scatter(&[&items[..]], 64, |&h| top_bits(h, 64));
        assert_eq!(groups.iter().map(Vec::len).sum::<usize>(), items.len());
        for (b, g) in groups.iter().enumerate() {
            assert!(g.iter().all(|&h| top_bits(h, 64) == b));
        }
    }
}
