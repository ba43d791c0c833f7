//! The `harness` command line.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "harness", version, about = "Differential testing of ML inference engines against HF goldens")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the suite (every case on every engine) and print a summary report.
    ///
    /// Takes the same arguments as `cargo test -- ...`: filters, --exact, --list, --ignored,
    /// --format json, --test-threads.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Run { args } => {
            let argv = std::iter::once("harness run".to_string()).chain(args);
            let args = libtest_mimic::Arguments::from_iter(argv);
            let (suite, conclusion) = harness::runner::run_suite(&args, harness::engine::Registry::builtin());
            let mut reports = suite.reports.lock().unwrap().clone();
            if !args.list && !reports.is_empty() {
                reports.sort_by(|a, b| a.trial.cmp(&b.trial));
                println!("\n{}", harness::report::terminal::summary(&reports));
            }
            conclusion.exit();
        }
    }
}
