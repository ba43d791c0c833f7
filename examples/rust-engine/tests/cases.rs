//! The case runner: every case under cases/ on this crate's engine, compared with the goldens
//! under goldens/. `cargo test --test cases -- --list` lists the trials (`{engine}::{case}`).

fn main() -> std::process::ExitCode {
    harness::Harness::new().without_builtin_engines().engine(rust_engine_example::Gpt2Engine::new()).run()
}
