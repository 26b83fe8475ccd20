//! ericsson-dataset-pipeline: normalize, chunk and deduplicate converted Markdown documents.
//! The behaviour is specified in SPEC.md; components/processing/ holds a Python twin of it.
pub mod chunk;
pub mod config;
pub mod dedup;
pub mod error;
pub mod normalize;
pub mod signals;
pub mod structure;

use rayon::prelude::*;
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};
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

/// A chunk before its signals are known: where it is and what section it belongs to.
struct Piece<'a> {
    doc: usize,
    index: usize,
    start: usize,
    end: usize,
    section: usize,
    text: &'a str,
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
    pub clusters: Vec<Cluster>,
    pub timings: Timings,
    pub mb_per_s: f64,
}

/// The documents to read: `<input_dir>/*.md`, sorted by doc id (the file stem).
pub fn list_documents(dir: &Path) -> Result<Vec<(String, PathBuf)>, Failure> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| Failure::new("input", format!("cannot list documents: {e}"), dir))?;
    let mut docs = Vec::new();
    for entry in entries {
        let path = entry
            .map_err(|e| Failure::new("input", format!("cannot list documents: {e}"), dir))?
            .path();
        let name = match path.file_name().and_then(|n| n.to_str()) {
            Some(n) => n,
            None => continue,
        };
        if let Some(stem) = name.strip_suffix(".md") {
            if !stem.is_empty() && path.is_file() {
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

/// Writes what `fill` produces to a temp file beside `path`, syncs it, then renames it over
/// `path`: a reader never sees a partial file.
fn write_atomic(path: &Path, fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>) -> Result<(), Failure> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("chunks.jsonl");
    let tmp = dir.join(format!(".{}.{}.tmp", name, std::process::id()));
    let io = |e: std::io::Error| Failure::new("output", format!("cannot write output: {e}"), path);
    let result = (|| {
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&tmp).map_err(io)?);
        fill(&mut f).map_err(io)?;
        let f = f.into_inner().map_err(|e| io(e.into_error()))?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

pub fn run(cfg: &Config) -> Result<ProcessResult, Failure> {
    let t0 = Instant::now();
    let mut timings = Timings::default();
    let docs = list_documents(&cfg.input_dir)?;

    let t = Instant::now();
    let raw: Vec<Result<Vec<u8>, std::io::Error>> = docs.par_iter().map(|(_, p)| std::fs::read(p)).collect();
    let bytes_in: u64 = raw.iter().map(|r| r.as_ref().map_or(0, |b| b.len() as u64)).sum();
    let mut failures = Vec::new();
    let mut texts: Vec<String> = Vec::with_capacity(docs.len());
    for (i, r) in raw.into_iter().enumerate() {
        let (doc_id, path) = &docs[i];
        let failure = |kind: &str, message: String| DocFailure {
            doc_id: doc_id.clone(),
            path: path.display().to_string(),
            kind: kind.into(),
            message,
        };
        match r {
            Err(e) => failures.push(failure("read_error", format!("cannot read document: {e}"))),
            Ok(b) => match String::from_utf8(b) {
                Ok(s) => texts.push(s),
                Err(e) => failures.push(failure(
                    "invalid_utf8",
                    format!("document is not UTF-8: {}", e.utf8_error()),
                )),
            },
        }
    }
    timings.read = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let normalizer = normalize::Normalizer::new(&cfg.normalize);
    // Each raw text becomes its normalized text in place.
    let normalized: Vec<String> = texts.into_par_iter().map(|s| normalizer.normalize_owned(s)).collect();
    timings.normalize = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let ok_docs: Vec<&str> = {
        let failed: std::collections::HashSet<&str> = failures.iter().map(|f| f.doc_id.as_str()).collect();
        docs.iter()
            .map(|(id, _)| id.as_str())
            .filter(|id| !failed.contains(id))
            .collect()
    };
    let chunked: Vec<(Vec<chunk::Section>, Vec<Piece>)> = normalized
        .par_iter()
        .enumerate()
        .map(|(doc, text)| {
            let d = chunk::Doc::new(text);
            let (sections, spans) = chunk::chunk(&d, &cfg.chunk);
            let pieces = spans
                .into_iter()
                .enumerate()
                .map(|(index, sp)| Piece {
                    doc,
                    index,
                    start: sp.start,
                    end: sp.end,
                    section: sp.section,
                    text: d.str(sp.start, sp.end),
                })
                .collect();
            (sections, pieces)
        })
        .collect();
    let pieces: Vec<&Piece> = chunked.iter().flat_map(|(_, p)| p.iter()).collect();
    timings.chunk = t.elapsed().as_secs_f64();

    // Identical texts have identical signals and filter outcomes, so exact duplicates are
    // found first and signals computed once per distinct text; the result is the same as
    // filtering first.
    let t = Instant::now();
    let texts: Vec<&str> = pieces.iter().map(|p| p.text).collect();
    let first: Vec<usize> = if cfg.dedup.exact {
        dedup::exact_representatives(&texts)
    } else {
        (0..texts.len()).collect()
    };
    let mut dedup_seconds = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let distinct: Vec<usize> = (0..pieces.len()).filter(|&i| first[i] == i).collect();
    let computed: Vec<Signals> = distinct
        .par_iter()
        .map(|&i| signals::signals(pieces[i].text, pieces[i].end - pieces[i].start, cfg.chunk.max_chars))
        .collect();
    let mut sig_of: Vec<Option<&Signals>> = vec![None; pieces.len()];
    for (&i, s) in distinct.iter().zip(&computed) {
        sig_of[i] = Some(s);
    }
    let passing: Vec<usize> = (0..pieces.len())
        .filter(|&i| passes(sig_of[first[i]].expect("signals"), &cfg.filters))
        .collect();
    let chunks_total = pieces.len();
    let chunks_filtered = chunks_total - passing.len();
    timings.chunk += t.elapsed().as_secs_f64();

    let t = Instant::now();
    let unique: Vec<usize> = passing.iter().copied().filter(|&i| first[i] == i).collect();
    let near: Vec<usize> = if cfg.dedup.near {
        let utexts: Vec<&str> = unique.iter().map(|&i| texts[i]).collect();
        dedup::near_representatives(&utexts, &cfg.dedup)
            .into_iter()
            .map(|r| unique[r])
            .collect()
    } else {
        unique.clone()
    };
    let id = |i: &usize| format!("{}#{}", ok_docs[pieces[*i].doc], pieces[*i].index);
    let mut exact_groups: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
    for &i in &passing {
        if first[i] != i {
            exact_groups.entry(first[i]).or_default().push(i);
        }
    }
    let mut near_groups: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
    for (u, &r) in unique.iter().zip(&near) {
        if r != *u {
            near_groups.entry(r).or_default().push(*u);
        }
    }
    let mut clusters = Vec::new();
    for (kind, groups) in [("exact", &exact_groups), ("near", &near_groups)] {
        for (r, dups) in groups.iter() {
            clusters.push(Cluster {
                kind,
                kept: id(r),
                duplicates: dups.iter().map(id).collect(),
            });
        }
    }
    let exact_duplicates: usize = exact_groups.values().map(Vec::len).sum();
    let near_duplicates: usize = near_groups.values().map(Vec::len).sum();
    let written: Vec<usize> = unique
        .iter()
        .zip(&near)
        .filter(|(u, r)| *u == *r)
        .map(|(u, _)| *u)
        .collect();
    dedup_seconds += t.elapsed().as_secs_f64();
    timings.dedup = dedup_seconds;

    let t = Instant::now();
    let line = |&i: &usize| {
        let p = pieces[i];
        let section = &chunked[p.doc].0[p.section];
        let c = Chunk {
            id: id(&i),
            doc_id: ok_docs[p.doc],
            index: p.index,
            section_path: &section.path,
            heading: &section.heading,
            kind: section.kind,
            start: p.start,
            end: p.end,
            text: p.text,
            signals: sig_of[i].expect("signals"),
        };
        let mut v = Vec::with_capacity(p.text.len() + 512);
        serde_json::to_writer(&mut v, &c).expect("chunk serializes");
        v.push(b'\n');
        v
    };
    // Serialized in parallel batches, written in order; batches keep memory small and reused.
    write_atomic(&cfg.output_path, |f| {
        for batch in written.chunks(2048) {
            for l in batch.par_iter().map(line).collect::<Vec<_>>() {
                f.write_all(&l)?;
            }
        }
        Ok(())
    })?;
    timings.write = t.elapsed().as_secs_f64();
    timings.total = t0.elapsed().as_secs_f64();

    Ok(ProcessResult {
        engine: "rust",
        documents: docs.len() - failures.len(),
        documents_failed: failures.len(),
        failures,
        bytes_in,
        chunks_total,
        chunks_filtered,
        exact_duplicates,
        near_duplicates,
        chunks_written: written.len(),
        clusters,
        mb_per_s: bytes_in as f64 / 1e6 / timings.total.max(1e-9),
        timings,
    })
}
