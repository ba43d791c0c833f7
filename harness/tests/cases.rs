//! Every case under `cases/` as a libtest-mimic trial: `cargo test -p harness --test cases`
//! (add `-- --timings` for where the time goes; several filters as with libtest).

fn main() -> std::process::ExitCode {
    harness::Harness::new().run()
}
