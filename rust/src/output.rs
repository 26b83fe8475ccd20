//! Writing `chunks.jsonl`: atomically (a temp file, synced, then renamed), and on Linux from all
//! threads at once. One thread copying a corpus-sized output into the page cache was the last
//! serial phase on many cores; here each batch's blocks are copied into a shared mapping of the
//! file in parallel. The blocks' space is reserved first (`fallocate`), so a full disk is an
//! error from that call, never a fault while copying. Elsewhere (macOS, or a filesystem without
//! `fallocate`) a writer thread writes the batches while the next ones are serialized.
use std::fs::File;
use std::io::Write;
use std::path::Path;

use rayon::prelude::*;

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
        // Read and write: a shared writable mapping needs both.
        let f = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(io)?;
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

/// Appends batches of blocks to an empty file, each batch copied by all threads.
pub struct Appender<'f> {
    file: &'f File,
    len: u64,
    started: u64,
    mapped: bool,
}

impl<'f> Appender<'f> {
    /// The parallel path where the file's filesystem reserves space (`fallocate`), else the
    /// sequential one.
    pub fn new(file: &'f File) -> Self {
        Appender {
            file,
            len: 0,
            started: 0,
            mapped: Self::can_reserve(file),
        }
    }

    pub fn parallel(&self) -> bool {
        self.mapped
    }

    #[cfg(target_os = "linux")]
    fn can_reserve(file: &File) -> bool {
        use std::os::fd::AsRawFd;
        // Safe: system calls on an open, empty descriptor; the probe byte is truncated away.
        unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, 1) == 0 && libc::ftruncate(file.as_raw_fd(), 0) == 0 }
    }

    #[cfg(not(target_os = "linux"))]
    fn can_reserve(_: &File) -> bool {
        false
    }

    /// Appends the blocks, one after the other.
    pub fn append(&mut self, blocks: &[Vec<u8>]) -> std::io::Result<()> {
        let total: u64 = blocks.iter().map(|b| b.len() as u64).sum();
        if total == 0 {
            return Ok(());
        }
        if self.mapped {
            self.copy_mapped(blocks, total)?;
        } else {
            let mut f = self.file;
            for b in blocks {
                f.write_all(b)?;
            }
        }
        self.len += total;
        if self.len - self.started >= REGION {
            start_writeback(self.file, self.started, self.len - self.started);
            self.started = self.len;
        }
        Ok(())
    }

    #[cfg(target_os = "linux")]
    fn copy_mapped(&mut self, blocks: &[Vec<u8>], total: u64) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        let fd = self.file.as_raw_fd();
        let start = self.len;
        // Safe: system calls on an open descriptor. The space is reserved (and the file
        // extended) before it is mapped, so no page of the mapping lies past the file's end.
        unsafe {
            if libc::fallocate(fd, 0, start as libc::off_t, total as libc::off_t) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let page = libc::sysconf(libc::_SC_PAGESIZE).max(4096) as u64;
            let from = start - start % page;
            let size = (start + total - from) as usize;
            let p = libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                from as libc::off_t,
            );
            if p == libc::MAP_FAILED {
                return Err(std::io::Error::last_os_error());
            }
            // Safe: [start, start + total) lies inside the mapping, which nothing else uses
            // until it is unmapped below.
            let dst = std::slice::from_raw_parts_mut((p as *mut u8).add((start - from) as usize), total as usize);
            let mut slots = Vec::with_capacity(blocks.len());
            let mut rest = dst;
            for b in blocks {
                let (slot, tail) = rest.split_at_mut(b.len());
                slots.push(slot);
                rest = tail;
            }
            slots
                .into_par_iter()
                .zip(blocks.par_iter())
                .for_each(|(d, b)| d.copy_from_slice(b));
            libc::munmap(p, size);
        }
        Ok(())
    }

    #[cfg(not(target_os = "linux"))]
    fn copy_mapped(&mut self, _: &[Vec<u8>], _: u64) -> std::io::Result<()> {
        unreachable!("mapped appends are only chosen on Linux")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Blocks of odd sizes, so appends start and end inside pages; over REGION in all.
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
    fn both_ways_of_appending_write_the_blocks_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let expected: Vec<u8> = batches().concat().concat();
        assert!(expected.len() as u64 > REGION);
        for mapped in [true, false] {
            let path = dir.path().join(format!("out-{mapped}.jsonl"));
            write_atomic(&path, |f| {
                let mut out = Appender::new(f);
                if !mapped {
                    out.mapped = false;
                }
                for batch in batches() {
                    out.append(&batch)?;
                }
                out.append(&[])
            })
            .unwrap();
            assert_eq!(std::fs::read(&path).unwrap(), expected, "mapped: {mapped}");
        }
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
