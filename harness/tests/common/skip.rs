//! Tests that find out at run time that they cannot run here (a model not fetched, no Chromium,
//! no Python venv). libtest's `#[ignore]` is decided at compile time, so the binaries that need
//! this are libtest-mimic binaries (`harness = false`) listing their tests with [`tests!`]. A
//! test that returns [`Skip`] is reported as *ignored* with its reason, never as passed; under
//! `CI` it fails instead, naming what is missing.

use libtest_mimic::{Arguments, Completion, Failed, Trial};

/// Why a test cannot run here, and how to make it run.
#[derive(Debug)]
pub struct Skip(pub String);

pub type Outcome = Result<(), Skip>;

/// `CI` set to anything but empty, `0` or `false` (as the harness and insta read it).
pub fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

pub struct Test {
    pub name: &'static str,
    pub run: fn() -> Outcome,
    /// `#[ignore]`-like: only run with `--ignored` / `--include-ignored`.
    pub opt_in: Option<&'static str>,
}

/// Run `tests` as libtest does (filters, `--exact`, `--list`, `--ignored`, threads).
pub fn run(tests: Vec<Test>) -> std::process::ExitCode {
    let args = Arguments::from_args();
    let trials = tests
        .into_iter()
        .map(|t| {
            let f = t.run;
            let trial = Trial::ignorable_test(t.name, move || match f() {
                Ok(()) => Ok(Completion::Completed),
                Err(Skip(why)) if ci() => Err(Failed::from(format!("cannot run under CI: {why}"))),
                Err(Skip(why)) => Ok(Completion::ignored_with(why)),
            });
            match t.opt_in {
                Some(_) => trial.with_ignored_flag(true),
                None => trial,
            }
        })
        .collect();
    libtest_mimic::run(&args, trials).exit_code()
}

/// `tests!(a, b, #[ignore = "why"] c)`: the binary's `main`, running those functions.
#[macro_export]
macro_rules! tests {
    ($($(#[ignore = $why:literal])? $f:ident),* $(,)?) => {
        fn main() -> std::process::ExitCode {
            common::skip::run(vec![$(common::skip::Test {
                name: stringify!($f),
                run: $f,
                opt_in: None $(.or(Some($why)))?,
            }),*])
        }
    };
}
