//! `ericsson-dataset-pipeline <config.yaml>`: prints the processing result as JSON on stdout;
//! on failure exits non-zero with {"kind", "message", "path"} on stderr.
use std::path::PathBuf;
use std::process::ExitCode;

use edp::config::Config;
use edp::error::Failure;

// Chunking and shingling allocate many small vectors; glibc malloc spent ~10% of the time.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (the same index in its v2 and v3 headers).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// A run is one short batch: memory freed by one phase is best reused by the next. By default
/// mimalloc hands it back to the OS after 10 ms, and taking it again means zeroed fresh pages;
/// on a 16-core VM those page faults serialize and were the largest part of the time.
fn keep_freed_memory() {
    // Safe: sets a process-wide option before any thread is started.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}

fn fail(f: Failure) -> ExitCode {
    eprintln!("{}", serde_json::to_string(&f).expect("failure serializes"));
    ExitCode::from(if f.kind == "config" || f.kind == "usage" { 2 } else { 1 })
}

fn main() -> ExitCode {
    keep_freed_memory();
    edp::progress::start_from_env();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() != 1 || args[0].starts_with('-') {
        return fail(Failure::new(
            "usage",
            "usage: ericsson-dataset-pipeline <config.yaml>",
            &PathBuf::from(""),
        ));
    }
    let cfg = match Config::load(&PathBuf::from(&args[0])) {
        Ok(c) => c,
        Err(f) => return fail(f),
    };
    if cfg.threads > 0 {
        if let Err(e) = rayon::ThreadPoolBuilder::new().num_threads(cfg.threads).build_global() {
            return fail(Failure::new(
                "internal",
                format!("cannot start threads: {e}"),
                &PathBuf::from(&args[0]),
            ));
        }
    }
    match edp::run(&cfg) {
        Ok(result) => {
            println!("{}", serde_json::to_string(&result).expect("result serializes"));
            ExitCode::SUCCESS
        }
        Err(f) => fail(f),
    }
}
