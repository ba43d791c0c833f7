//! The `harness` command itself (the harness crate's tests run it too, for each workflow).

use std::process::Command;

#[test]
fn help_lists_every_subcommand() {
    let out = Command::new(env!("CARGO_BIN_EXE_harness")).arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for sub in ["run", "goldens", "dump", "diff", "shrink"] {
        assert!(text.contains(&format!("  {sub}")), "{sub}: {text}");
    }
}
