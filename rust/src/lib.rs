//! ericsson-dataset-pipeline: normalize, chunk and deduplicate converted Markdown documents.
//! The behaviour is specified in SPEC.md; components/processing/ holds a Python twin of it.
pub mod chunk;
pub mod config;
pub mod dedup;
pub mod error;
pub mod normalize;
pub mod output;
pub mod par;
pub mod progress;
pub mod signals;
pub mod structure;

use rayon::prelude::*;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use config::Config;
use error::Failure;
use signals::Signals;

/// One line of chunks.jsonl, borrowing from the normalized documents.
#[derive(Debug, Clone, Serialize)]
pub struct Chunk<'a> {
    pub id: String,
    pub doc_id: &'a str,
    pub index: usize,
    pub section_path: &'a [String],
    pub heading: &'a str,
    pub kind: &'a str,
    pub start: usize,
    pub end: usize,
    pub text: &'a str,
    #[serde(flatten)]
    pub signals: &'a Signals,
}

/// A chunk before its signals are known: where it is, its section, a hash of its text.
struct Piece {
    index: usize,
    /// Code points, as in the output.
    start: usize,
    end: usize,
    /// Bytes of the normalized text.
    bytes: std::ops::Range<usize>,
    section: usize,
    hash: u64,
}

/// A document read, normalized and chunked.
struct DocOut {
    text: String,
    sections: Vec<chunk::Section>,
    pieces: Vec<Piece>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DocFailure {
    pub doc_id: String,
    pub path: String,
    pub kind: String,
    pub message: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Cluster {
    pub kind: &'static str,
    pub kept: String,
    pub duplicates: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct Timings {
    pub read: f64,
    pub normalize: f64,
    pub chunk: f64,
    pub dedup: f64,
    pub write: f64,
    pub total: f64,
    /// CPU seconds of the calling thread: the work that no other thread shares (the rest runs
    /// on the pool while this thread waits). Amdahl's law bounds the speed-up by it.
    pub serial: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProcessResult {
    pub engine: &'static str,
    pub documents: usize,
    pub documents_failed: usize,
    pub failures: Vec<DocFailure>,
    pub bytes_in: u64,
    pub chunks_total: usize,
    pub chunks_filtered: usize,
    pub exact_duplicates: usize,
    pub near_duplicates: usize,
    pub chunks_written: usize,
    /// Lines of the clusters file (SPEC.md, "Output").
    pub duplicate_clusters: usize,
    pub timings: Timings,
    pub mb_per_s: f64,
}

/// The clusters of sorted `(kept << 32 | duplicate)` pairs as JSON lines, serialized in
/// parallel batches, and their number.
fn cluster_lines(kind: &'static str, pairs: &[u64], id: &(impl Fn(usize) -> String + Sync)) -> (Vec<Vec<u8>>, usize) {
    // Batch bounds moved forward to a cluster's start, so no cluster is split.
    let parts = 256.min(pairs.len().max(1));
    let mut bounds: Vec<usize> = (0..=parts).map(|k| k * pairs.len() / parts).collect();
    for k in 1..parts {
        let mut b = bounds[k].max(bounds[k - 1]);
        while b > 0 && b < pairs.len() && pairs[b] >> 32 == pairs[b - 1] >> 32 {
            b += 1;
        }
        bounds[k] = b;
    }
    let batches: Vec<(Vec<u8>, usize)> = bounds
        .par_windows(2)
        .map(|w| {
            let mut out = Vec::new();
            let mut n = 0;
            for group in pairs[w[0]..w[1]].chunk_by(|a, b| a >> 32 == b >> 32) {
                let c = Cluster {
                    kind,
                    kept: id((group[0] >> 32) as usize),
                    duplicates: group.iter().map(|&p| id((p & 0xFFFF_FFFF) as usize)).collect(),
                };
                serde_json::to_writer(&mut out, &c).expect("cluster serializes");
                out.push(b'\n');
                n += 1;
            }
            (out, n)
        })
        .collect();
    let n = batches.iter().map(|b| b.1).sum();
    (batches.into_iter().map(|b| b.0).collect(), n)
}

/// The documents to read: `<input_dir>/*.md`, sorted by doc id (the file stem).
pub fn list_documents(dir: &Path) -> Result<Vec<(String, PathBuf)>, Failure> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| Failure::new("input", format!("cannot list documents: {e}"), dir))?;
    let mut docs = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Failure::new("input", format!("cannot list documents: {e}"), dir))?;
        let path = entry.path();
        let name = match path.file_name().and_then(|n| n.to_str()) {
            Some(n) => n,
            None => continue,
        };
        if let Some(stem) = name.strip_suffix(".md") {
            // The entry's type needs no extra system call; a link is followed, as is_file does.
            let is_file = entry
                .file_type()
                .is_ok_and(|t| t.is_file() || (t.is_symlink() && path.is_file()));
            if !stem.is_empty() && is_file {
                docs.push((stem.to_string(), path.clone()));
            }
        }
    }
    docs.sort();
    Ok(docs)
}

fn passes(s: &Signals, f: &config::FilterConfig) -> bool {
    s.n_chars >= f.min_chars
        && s.n_words >= f.min_words
        && s.alpha_ratio >= f.min_alpha_ratio
        && s.table_density <= f.max_table_density
}

/// Busy nanoseconds of all threads per phase of the document pass.
#[derive(Default)]
struct Busy {
    read: AtomicU64,
    normalize: AtomicU64,
    chunk: AtomicU64,
}

impl Busy {
    fn add(counter: &AtomicU64, since: &mut Instant) {
        let now = Instant::now();
        counter.fetch_add((now - *since).as_nanos() as u64, Ordering::Relaxed);
        *since = now;
    }
}

thread_local! {
    /// Per-thread read and normalize buffers, reused from one document to the next.
    static BUFFERS: std::cell::RefCell<(Vec<u8>, Vec<u8>)> = Default::default();
}

/// Reads, checks, normalizes and chunks one document; (bytes read, result or failure kind and
/// message). One task per document keeps its text in cache from reading to hashing its chunks.
fn process_document(
    path: &Path,
    normalizer: &normalize::Normalizer,
    cfg: &config::ChunkConfig,
    busy: &Busy,
) -> (u64, Result<DocOut, (&'static str, String)>) {
    BUFFERS.with_borrow_mut(|(buf, scratch)| {
        let mut t = Instant::now();
        buf.clear();
        let read = std::fs::File::open(path).and_then(|mut f| {
            use std::io::Read;
            f.read_to_end(buf)
        });
        if let Err(e) = read {
            return (0, Err(("read_error", format!("cannot read document: {e}"))));
        }
        let bytes = buf.len() as u64;
        if let Err(e) = std::str::from_utf8(buf) {
            return (bytes, Err(("invalid_utf8", format!("document is not UTF-8: {e}"))));
        }
        Busy::add(&busy.read, &mut t);
        let text = normalizer.normalize_in(buf, scratch);
        Busy::add(&busy.normalize, &mut t);
        let d = chunk::Doc::new(&text);
        let (sections, spans) = chunk::chunk(&d, cfg);
        let pieces = spans
            .into_iter()
            .enumerate()
            .map(|(index, sp)| {
                let (s, e) = d.byte_range(sp.start, sp.end);
                Piece {
                    index,
                    start: sp.start,
                    end: sp.end,
                    bytes: s..e,
                    section: sp.section,
                    hash: xxhash_rust::xxh3::xxh3_64(&text.as_bytes()[s..e]),
                }
            })
            .collect();
        drop(d);
        Busy::add(&busy.chunk, &mut t);
        (bytes, Ok(DocOut { text, sections, pieces }))
    })
}

/// Bytes read, and the document's output or its failure (kind, message).
type DocResult = (u64, Result<DocOut, (&'static str, String)>);

/// CPU time of the calling thread, in seconds.
fn thread_cpu_seconds() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // Safe: clock_gettime only writes the timespec it is given.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc == 0 {
        ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
    } else {
        0.0
    }
}

pub fn run(cfg: &Config) -> Result<ProcessResult, Failure> {
    let t0 = Instant::now();
    let cpu0 = thread_cpu_seconds();
    let mut timings = Timings::default();
    let docs = list_documents(&cfg.input_dir)?;

    // Read, normalize and chunk, one parallel task per document. The phases share one pass;
    // each is given the share of its wall time that all threads spent in it.
    let t = Instant::now();
    let normalizer = normalize::Normalizer::new(&cfg.normalize);
    let busy = Busy::default();
    progress::phase("documents", docs.len());
    let done: Vec<DocResult> = docs
        .par_iter()
        .map(|(_, path)| {
            let out = process_document(path, &normalizer, &cfg.chunk, &busy);
            progress::advance(1);
            out
        })
        .collect();
    let bytes_in: u64 = done.iter().map(|(b, _)| b).sum();
    let mut failures = Vec::new();
    let mut ok_docs: Vec<&str> = Vec::with_capacity(docs.len());
    let mut outs: Vec<DocOut> = Vec::with_capacity(docs.len());
    for ((doc_id, path), (_, r)) in docs.iter().zip(done) {
        match r {
            Ok(out) => {
                ok_docs.push(doc_id);
                outs.push(out);
            }
            Err((kind, message)) => failures.push(DocFailure {
                doc_id: doc_id.clone(),
                path: path.display().to_string(),
                kind: kind.into(),
                message,
            }),
        }
    }
    let pass = t.elapsed().as_secs_f64();
    let [read, norm, chunked] = [&busy.read, &busy.normalize, &busy.chunk].map(|c| c.load(Ordering::Relaxed) as f64);
    let all = (read + norm + chunked).max(1.0);
    (timings.read, timings.normalize, timings.chunk) = (pass * read / all, pass * norm / all, pass * chunked / all);

    // Global order: documents in input order, chunks by index.
    progress::phase("dedup", 0);
    let t = Instant::now();
    let starts: Vec<usize> = std::iter::once(0)
        .chain(outs.iter().scan(0, |n, o| {
            *n += o.pieces.len();
            Some(*n)
        }))
        .collect();
    let pieces: Vec<(usize, &Piece)> = (0..starts[outs.len()])
        .into_par_iter()
        .map(|i| {
            let d = starts.partition_point(|&s| s <= i) - 1;
            (d, &outs[d].pieces[i - starts[d]])
        })
        .collect();
    let text = |i: usize| {
        let (d, p) = pieces[i];
        &outs[d].text[p.bytes.clone()]
    };
    let texts: Vec<&str> = (0..pieces.len()).into_par_iter().map(text).collect();
    // Identical texts have identical signals and filter outcomes, so exact duplicates are
    // found first and signals computed once per distinct text; the result is the same as
    // filtering first.
    let first: Vec<usize> = if cfg.dedup.exact {
        let hashes: Vec<u64> = pieces.par_iter().map(|(_, p)| p.hash).collect();
        dedup::exact_representatives(&texts, &hashes)
    } else {
        (0..texts.len()).collect()
    };
    let mut dedup_seconds = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let signals: Vec<Option<Signals>> = (0..pieces.len())
        .into_par_iter()
        .map(|i| {
            let p = pieces[i].1;
            (first[i] == i).then(|| signals::signals(texts[i], p.end - p.start, cfg.chunk.max_chars))
        })
        .collect();
    let sig_of = |i: usize| signals[first[i]].as_ref().expect("signals of the first occurrence");
    let passing = par::filter_indices(pieces.len(), |i| passes(sig_of(i), &cfg.filters));
    let chunks_total = pieces.len();
    let chunks_filtered = chunks_total - passing.len();
    timings.chunk += t.elapsed().as_secs_f64();

    let t = Instant::now();
    let unique: Vec<usize> = {
        let keep = par::filter_indices(passing.len(), |k| first[passing[k]] == passing[k]);
        keep.into_par_iter().map(|k| passing[k]).collect()
    };
    let near: Vec<usize> = if cfg.dedup.near {
        let utexts: Vec<&str> = unique.par_iter().map(|&i| texts[i]).collect();
        let reps = dedup::near_representatives(&utexts, &cfg.dedup);
        reps.into_par_iter().map(|r| unique[r]).collect()
    } else {
        unique.clone()
    };
    let id = |i: usize| format!("{}#{}", ok_docs[pieces[i].0], pieces[i].1.index);
    // (kept << 32 | duplicate) pairs, sorted: clusters in the kept chunk's order, duplicates
    // in order.
    let pack = |kept: usize, dup: usize| ((kept as u64) << 32) | dup as u64;
    let limit = (pieces.len() as u64 + 1) << 32;
    let sorted = |parts: Vec<Vec<u64>>| {
        let slices: Vec<&[u64]> = parts.iter().map(|p| p.as_slice()).collect();
        par::sorted_distinct(&slices, limit)
    };
    let exact_pairs = sorted(
        passing
            .par_chunks(1 << 15)
            .map(|c| {
                c.iter()
                    .filter(|&&i| first[i] != i)
                    .map(|&i| pack(first[i], i))
                    .collect()
            })
            .collect(),
    );
    let near_pairs = sorted(
        unique
            .par_chunks(1 << 15)
            .zip(near.par_chunks(1 << 15))
            .map(|(u, r)| {
                u.iter()
                    .zip(r)
                    .filter(|(u, r)| u != r)
                    .map(|(&u, &r)| pack(r, u))
                    .collect()
            })
            .collect(),
    );
    let (mut clusters, exact_clusters) = cluster_lines("exact", &exact_pairs, &id);
    let (near_lines, near_clusters) = cluster_lines("near", &near_pairs, &id);
    clusters.extend(near_lines);
    let written: Vec<usize> = {
        let keep = par::filter_indices(unique.len(), |k| near[k] == unique[k]);
        keep.into_par_iter().map(|k| unique[k]).collect()
    };
    dedup_seconds += t.elapsed().as_secs_f64();
    timings.dedup = dedup_seconds;

    let t = Instant::now();
    let line = |v: &mut Vec<u8>, i: usize| {
        let (d, p) = pieces[i];
        let section = &outs[d].sections[p.section];
        let c = Chunk {
            id: id(i),
            doc_id: ok_docs[d],
            index: p.index,
            section_path: &section.path,
            heading: &section.heading,
            kind: section.kind,
            start: p.start,
            end: p.end,
            text: texts[i],
            signals: sig_of(i),
        };
        serde_json::to_writer(&mut *v, &c).expect("chunk serializes");
        v.push(b'\n');
    };
    let serialize = |batch: &[usize], blocks: &mut Vec<Vec<u8>>| {
        const LINES: usize = 64;
        blocks.resize_with(batch.len().div_ceil(LINES), Vec::new);
        blocks
            .par_iter_mut()
            .zip(batch.par_chunks(LINES))
            .for_each(|(v, lines)| {
                v.clear();
                v.reserve(lines.len() * (cfg.chunk.max_chars + 512));
                for &i in lines {
                    line(v, i);
                }
            });
    };
    progress::phase("write", written.len());
    // The clusters go to their own file from a thread of their own: two files are written
    // side by side, where one file's writes would take turns on its lock.
    let (chunks_file, clusters_file) = std::thread::scope(|scope| {
        let clusters_writer =
            scope.spawn(|| output::write_atomic(&cfg.clusters_path(), |f| output::Appender::new(f).append(&clusters)));
        let chunks = output::write_atomic(&cfg.output_path, |file| {
            const BATCH: usize = 8192;
            let mut out = output::Appender::new(file);
            // One writer thread writes a batch while the next is serialized, and hands each
            // written batch back, so its buffers are filled again instead of fresh memory.
            let (send, receive) = std::sync::mpsc::sync_channel::<Vec<Vec<u8>>>(1);
            let (give_back, reuse) = std::sync::mpsc::channel::<Vec<Vec<u8>>>();
            std::thread::scope(|scope| {
                let writer = scope.spawn(move || -> std::io::Result<()> {
                    for batch in receive {
                        out.append(&batch)?;
                        let _ = give_back.send(batch);
                    }
                    Ok(())
                });
                for batch in written.chunks(BATCH) {
                    let mut blocks = reuse.try_recv().unwrap_or_default();
                    serialize(batch, &mut blocks);
                    progress::advance(batch.len());
                    if send.send(blocks).is_err() {
                        break; // the writer failed; its error is returned below
                    }
                }
                drop(send);
                writer.join().expect("writer thread")
            })
        });
        (chunks, clusters_writer.join().expect("clusters writer thread"))
    });
    chunks_file?;
    clusters_file?;
    timings.write = t.elapsed().as_secs_f64();
    let documents = outs.len();
    let chunks_written = written.len();
    // Freed by all threads: one thread alone would take a noticeable share of the run.
    drop((texts, pieces, signals, clusters));
    outs.into_par_iter().for_each(drop);
    timings.total = t0.elapsed().as_secs_f64();
    timings.serial = thread_cpu_seconds() - cpu0;

    Ok(ProcessResult {
        engine: "rust",
        documents,
        documents_failed: failures.len(),
        failures,
        bytes_in,
        chunks_total,
        chunks_filtered,
        exact_duplicates: exact_pairs.len(),
        near_duplicates: near_pairs.len(),
        chunks_written,
        duplicate_clusters: exact_clusters + near_clusters,
        mb_per_s: bytes_in as f64 / 1e6 / timings.total.max(1e-9),
        timings,
    })
}
