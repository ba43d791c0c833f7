//! Every case under `cases/` as a libtest-mimic trial: `cargo test -p harness --test cases`
//! (add `-- --timings` for where the time goes).

fn main() -> std::process::ExitCode {
    let args = libtest_mimic::Arguments::from_iter(harness::timings::take_flag(std::env::args()));
    harness::runner::main_with(&args, harness::engine::builtin())
}
