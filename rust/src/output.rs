//! Writing `chunks.jsonl`: atomically (a temp file, synced, then renamed), from one writer
//! thread that writes a batch while the next is serialized.
//!
//! Copying the batches into a shared mapping of the file from all threads (space reserved
//! with `fallocate` first) was measured on a 16-core VM and lost: the write phase took 0.65 s
//! instead of 0.22 s on ext4 (7.9 s of system time in page-fault handling against 1.2 s) and
//! 0.22 s instead of 0.18 s on tmpfs. A single sequential writer is the faster page-cache path.
use std::fs::File;
use std::io::Write;
use std::path::Path;

use crate::error::Failure;

/// Disk writes are started for each region this large as it fills, so the final sync waits
/// for the last region only instead of the whole file.
const REGION: u64 = 8 << 20;

/// Writes `path` through `fill(file)` into a temp file beside it, syncs and renames it.
pub fn write_atomic(path: &Path, fill: impl FnOnce(&File) -> std::io::Result<()>) -> Result<(), Failure> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("chunks.jsonl");
    let tmp = dir.join(format!(".{}.{}.tmp", name, std::process::id()));
    let io = |e: std::io::Error| Failure::new("output", format!("cannot write output: {e}"), path);
    let result = (|| {
        std::fs::create_dir_all(dir).map_err(io)?;
        let f = File::create(&tmp).map_err(io)?;
        fill(&f).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Starts the disk writes of `len` bytes at `offset` (a hint: the final sync decides).
#[cfg(target_os = "linux")]
fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // Safe: a plain system call on an open descriptor.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        )
    };
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_: &File, _: u64, _: u64) {}

/// Appends blocks to a file, starting the disk writes of each full region as it goes.
pub struct Appender<'f> {
    file: &'f File,
    len: u64,
    started: u64,
}

impl<'f> Appender<'f> {
    pub fn new(file: &'f File) -> Self {
        Appender {
            file,
            len: 0,
            started: 0,
        }
    }

    /// Appends the blocks, one after the other.
    pub fn append(&mut self, blocks: &[Vec<u8>]) -> std::io::Result<()> {
        let mut f = self.file;
        for b in blocks {
            f.write_all(b)?;
            self.len += b.len() as u64;
        }
        if self.len - self.started >= REGION {
            start_writeback(self.file, self.started, self.len - self.started);
            self.started = self.len;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Blocks of odd sizes, over REGION in all.
    fn batches() -> Vec<Vec<Vec<u8>>> {
        let mut state = 5u64;
        (0..6)
            .map(|b| {
                (0..40)
                    .map(|k| {
                        state = state
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        let n = (state >> 40) as usize % 90_000 + (b + k) % 3;
                        vec![b'a' + ((b * 40 + k) % 26) as u8; n]
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn appending_writes_the_blocks_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let expected: Vec<u8> = batches().concat().concat();
        assert!(expected.len() as u64 > REGION);
        let path = dir.path().join("out.jsonl");
        write_atomic(&path, |f| {
            let mut out = Appender::new(f);
            for batch in batches() {
                out.append(&batch)?;
            }
            out.append(&[])
        })
        .unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), expected);
    }

    #[test]
    fn a_failed_fill_leaves_no_file_and_names_the_output() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chunks.jsonl");
        let err = write_atomic(&path, |_| Err(std::io::Error::other("disk full"))).unwrap_err();
        assert_eq!(err.kind, "output");
        assert!(err.message.contains("disk full"));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
