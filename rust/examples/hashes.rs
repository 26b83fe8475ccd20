//! Prints the dedup hashes of texts, so the Python twin's hash functions can be checked
//! against these directly (chunks.jsonl alone hides them: exact Jaccard confirmation makes the
//! output robust to a different hash).
//! Usage: hashes <shingle_size> <num_perm> <bands> <seed> < texts.json  (a JSON list of strings)
use edp::dedup::{band_key, shingles, Permutations};

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("integer argument"))
        .collect();
    let [k, num_perm, bands, seed] = args[..] else {
        panic!("usage: hashes <k> <num_perm> <bands> <seed>")
    };
    let texts: Vec<String> = serde_json::from_reader(std::io::stdin()).expect("a JSON list of strings");
    let perms = Permutations::new(num_perm, seed as u64);
    let rows = num_perm / bands;
    let out: Vec<serde_json::Value> = texts
        .iter()
        .map(|t| {
            let set = shingles(t, k);
            let sig = perms.signature(&set);
            let keys: Vec<u64> = (0..bands).map(|b| band_key(&sig[b * rows..(b + 1) * rows])).collect();
            serde_json::json!({"shingles": set, "signature": sig, "band_keys": keys})
        })
        .collect();
    println!("{}", serde_json::to_string(&out).expect("serializes"));
}
