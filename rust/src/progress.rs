//! Progress on stderr while a run goes, when the environment sets `EDP_PROGRESS` to a period in
//! seconds: one JSON line `{"progress":{"phase":..,"done":..,"total":..}}` on each phase change
//! and every period. The runner draws them as a bar. They come before any failure line, so the
//! last stderr line stays the failure object (SPEC.md, "Errors").
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

static ON: AtomicBool = AtomicBool::new(false);
static DONE: AtomicUsize = AtomicUsize::new(0);
/// The current phase and its total; no phase (`""`) until the run reaches its first.
static PHASE: Mutex<(&str, usize)> = Mutex::new(("", 0));

fn report() {
    // Read under the lock that a phase change holds, so a line never pairs a new phase with
    // the count of the one before.
    let (phase, total, done) = {
        let p = PHASE.lock().unwrap_or_else(|e| e.into_inner());
        (p.0, p.1, DONE.load(Ordering::Relaxed))
    };
    if phase.is_empty() {
        return; // a period can end while the config is read, before any phase
    }
    let mut err = std::io::stderr().lock();
    let _ = writeln!(
        err,
        "{{\"progress\":{{\"phase\":\"{phase}\",\"done\":{done},\"total\":{total}}}}}"
    );
}

/// Starts the periodic reports when `EDP_PROGRESS` asks for them; they end with the process.
pub fn start_from_env() {
    let period = match std::env::var("EDP_PROGRESS").ok().and_then(|v| v.parse::<f64>().ok()) {
        Some(p) if p > 0.0 => p,
        _ => return,
    };
    ON.store(true, Ordering::Relaxed);
    std::thread::spawn(move || loop {
        std::thread::sleep(Duration::from_secs_f64(period));
        report();
    });
}

/// A new phase of `total` steps (0: not counted); the phase before is reported as it ended.
pub fn phase(name: &'static str, total: usize) {
    if ON.load(Ordering::Relaxed) {
        report();
        {
            let mut p = PHASE.lock().unwrap_or_else(|e| e.into_inner());
            *p = (name, total);
            DONE.store(0, Ordering::Relaxed);
        }
        report();
    }
}

/// `n` more steps of the current phase done.
#[inline]
pub fn advance(n: usize) {
    if ON.load(Ordering::Relaxed) {
        DONE.fetch_add(n, Ordering::Relaxed);
    }
}
