//! Where a suite's time goes: `cargo test --test cases -- --timings` (or `HARNESS_TIMINGS=1`,
//! which also works for `harness run` and nextest) prints, after the run, the time of each phase
//! summed over the trials, so the harness's own cost can be told apart from the engine's.
//!
//! Phases are always measured (a clock read costs tens of nanoseconds); only printing is opt-in.

use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Finding and parsing case files and model specs.
    Cases,
    /// Reading a case's manifest and checking it is not stale (hashes of case, spec, weights).
    OpenGoldens,
    /// Loading a model on an engine (once per engine and model).
    EngineLoad,
    /// The engine's forward pass.
    Forward,
    /// Mapping each golden and checking its hash.
    LoadGolden,
    /// Metrics and tolerance checks of every tap.
    Compare,
    /// Diagnosing a failing trial, with the reference engine's probes; the engine under test's
    /// reruns count as forward passes.
    Diagnose,
}

const PHASES: [(Phase, &str); 7] = [
    (Phase::Cases, "cases: discover and parse"),
    (Phase::OpenGoldens, "goldens: manifest and staleness"),
    (Phase::EngineLoad, "engine: load models"),
    (Phase::Forward, "engine: forward passes"),
    (Phase::LoadGolden, "goldens: map and verify"),
    (Phase::Compare, "compare: metrics and tolerances"),
    (Phase::Diagnose, "diagnose failures"),
];

static NANOS: [AtomicU64; 7] = [const { AtomicU64::new(0) }; 7];
static COUNTS: [AtomicU64; 7] = [const { AtomicU64::new(0) }; 7];
static ENABLED: AtomicBool = AtomicBool::new(false);

fn slot(p: Phase) -> usize {
    PHASES.iter().position(|(q, _)| *q == p).unwrap_or(0)
}

/// Run `f`, adding its duration to `phase`.
pub fn time<T>(phase: Phase, f: impl FnOnce() -> T) -> T {
    // Exclusive time: a timed call inside another (an engine rerun during diagnosis, a load
    // during bisection) counts in its own phase only, so the phases add up to at most the wall.
    let outer = NESTED.with(|c| c.replace(0));
    let start = Instant::now();
    let out = f();
    let total = start.elapsed().as_nanos() as u64;
    let inner = NESTED.with(|c| c.get());
    NESTED.with(|c| c.set(outer + total));
    let i = slot(phase);
    NANOS[i].fetch_add(total.saturating_sub(inner), Ordering::Relaxed);
    COUNTS[i].fetch_add(1, Ordering::Relaxed);
    out
}

thread_local! {
    /// Time spent in timed calls nested in the current one, on this thread.
    static NESTED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Print the breakdown at the end of this run.
pub fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

/// Whether `--timings` was given or `HARNESS_TIMINGS` is set (and not `0`).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed) || std::env::var("HARNESS_TIMINGS").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// The process arguments without `--timings`, which enables the breakdown (libtest-mimic would
/// refuse the unknown flag).
pub fn take_flag(args: impl IntoIterator<Item = String>) -> Vec<String> {
    args.into_iter()
        .filter(|a| {
            let hit = a == "--timings";
            if hit {
                enable();
            }
            !hit
        })
        .collect()
}

/// The breakdown of a run that took `wall` on `threads` test threads.
pub fn render(wall: Duration, threads: usize) -> String {
    let ms = |n: u64| n as f64 / 1e6;
    let wall_ns = wall.as_nanos() as u64;
    let nanos: Vec<u64> = NANOS.iter().map(|n| n.load(Ordering::Relaxed)).collect();
    let forward = nanos[slot(Phase::Forward)];
    let mut out = format!("timings: wall {:.1} ms on {threads} test thread(s)\n", ms(wall_ns));
    let _ = writeln!(out, "  {:<34} {:>10} {:>7} {:>8}", "phase (summed over trials)", "ms", "calls", "of wall");
    for (i, (_, name)) in PHASES.iter().enumerate() {
        let share = 100.0 * nanos[i] as f64 / wall_ns.max(1) as f64;
        let calls = COUNTS[i].load(Ordering::Relaxed);
        let _ = writeln!(out, "  {name:<34} {:>10.2} {calls:>7} {share:>7.1}%", ms(nanos[i]));
    }
    if threads == 1 {
        let other = wall_ns.saturating_sub(nanos.iter().sum());
        let share = 100.0 * other as f64 / wall_ns.max(1) as f64;
        let _ = writeln!(out, "  {:<34} {:>10.2} {:>7} {share:>7.1}%", "other: runner, test output", ms(other), "");
        let own = wall_ns.saturating_sub(forward);
        let share = 100.0 * own as f64 / wall_ns.max(1) as f64;
        let _ = writeln!(out, "  {:<34} {:>10.2} {:>7} {share:>7.1}%", "harness: wall - forward passes", ms(own), "");
    } else {
        let _ = writeln!(out, "  (trials overlap on {threads} threads; use --test-threads 1 for the harness's share)");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_is_taken_out_and_phases_add_up() {
        let args = take_flag(["bin", "--timings", "--exact", "x"].map(String::from));
        assert_eq!(args, ["bin", "--exact", "x"]);
        assert!(enabled());
        let before = NANOS[slot(Phase::Diagnose)].load(Ordering::Relaxed);
        time(Phase::Diagnose, || std::thread::sleep(Duration::from_millis(5)));
        assert!(NANOS[slot(Phase::Diagnose)].load(Ordering::Relaxed) - before >= 5_000_000);
        // Nested: the inner call counts in its own phase only.
        let (d0, f0) =
            (NANOS[slot(Phase::Diagnose)].load(Ordering::Relaxed), NANOS[slot(Phase::Forward)].load(Ordering::Relaxed));
        time(Phase::Diagnose, || {
            std::thread::sleep(Duration::from_millis(5));
            time(Phase::Forward, || std::thread::sleep(Duration::from_millis(30)));
        });
        let d = NANOS[slot(Phase::Diagnose)].load(Ordering::Relaxed) - d0;
        let f = NANOS[slot(Phase::Forward)].load(Ordering::Relaxed) - f0;
        assert!(f >= 30_000_000 && (5_000_000..30_000_000).contains(&d), "forward {f} ns, diagnose {d} ns");
        let text = render(Duration::from_millis(100), 1);
        assert!(text.contains("diagnose failures") && text.contains("harness: wall - forward passes"), "{text}");
        assert!(text.contains("other: runner"), "{text}");
    }
}
