//! Every case under `cases/` as a libtest-mimic trial: `cargo test -p harness --test cases`.

fn main() {
    let args = libtest_mimic::Arguments::from_args();
    harness::runner::main_with(&args, harness::engine::Registry::builtin()).exit();
}
