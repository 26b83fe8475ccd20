//! The `process` config: one schema shared with the Python side (components/processing/config.py).
use serde::Deserialize;
use std::path::{Path, PathBuf};

use crate::error::Failure;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub engine: String,
    pub timeout_s: f64,
    pub threads: usize,
    pub input_dir: PathBuf,
    pub output_path: PathBuf,
    pub normalize: NormalizeConfig,
    pub chunk: ChunkConfig,
    pub dedup: DedupConfig,
    pub filters: FilterConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NormalizeConfig {
    pub nfc: bool,
    pub strip_page_furniture: bool,
    pub strip_toc: bool,
    pub strip_toc_block: bool,
    pub reflow: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkConfig {
    pub max_chars: usize,
    pub overlap_chars: usize,
    pub min_chars: usize,
    pub clause_headings: bool,
    pub mark_boilerplate: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DedupConfig {
    pub exact: bool,
    pub near: bool,
    pub shingle_size: usize,
    pub num_perm: usize,
    pub bands: usize,
    pub threshold: f64,
    pub seed: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {
    pub min_chars: usize,
    pub min_words: usize,
    pub min_alpha_ratio: f64,
    pub max_table_density: f64,
}

impl Config {
    /// The duplicate clusters' file: `output_path` with its extension replaced by
    /// `clusters.jsonl` (SPEC.md, "Output").
    pub fn clusters_path(&self) -> PathBuf {
        self.output_path.with_extension("clusters.jsonl")
    }

    pub fn load(path: &Path) -> Result<Config, Failure> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Failure::new("config", format!("cannot read config: {e}"), path))?;
        let cfg: Config =
            serde_yaml::from_str(&text).map_err(|e| Failure::new("config", format!("invalid config: {e}"), path))?;
        cfg.validate()
            .map_err(|m| Failure::new("config", format!("invalid config: {m}"), path))?;
        Ok(cfg)
    }

    /// The same rules as ProcessConfig in components/processing/config.py.
    pub fn validate(&self) -> Result<(), String> {
        if !["auto", "rust", "python"].contains(&self.engine.as_str()) {
            return Err(format!("engine must be auto, rust or python, not {:?}", self.engine));
        }
        if self.timeout_s.is_nan() || self.timeout_s <= 0.0 {
            return Err("timeout_s must be > 0".into());
        }
        let c = &self.chunk;
        if c.max_chars < 1 {
            return Err("chunk.max_chars must be >= 1".into());
        }
        if c.overlap_chars >= c.max_chars {
            return Err("chunk.overlap_chars must be < chunk.max_chars".into());
        }
        if c.min_chars > c.max_chars {
            return Err("chunk.min_chars must be <= chunk.max_chars".into());
        }
        let d = &self.dedup;
        if d.shingle_size < 1 || d.num_perm < 1 || d.bands < 1 {
            return Err("dedup.shingle_size, dedup.num_perm and dedup.bands must be >= 1".into());
        }
        if !d.num_perm.is_multiple_of(d.bands) {
            return Err("dedup.num_perm must be a multiple of dedup.bands".into());
        }
        if d.threshold.is_nan() || d.threshold <= 0.0 || d.threshold > 1.0 {
            return Err("dedup.threshold must be in (0, 1]".into());
        }
        let f = &self.filters;
        if !(0.0..=1.0).contains(&f.min_alpha_ratio) || !(0.0..=1.0).contains(&f.max_table_density) {
            return Err("filters.min_alpha_ratio and filters.max_table_density must be in [0, 1]".into());
        }
        Ok(())
    }
}
