//! Structured results of trials. A trial produces a [`TrialReport`]; the terminal, JSON, JUnit,
//! HTML and GitHub-annotation views only render it.

pub use harness_api::report::*;

pub mod files;
pub mod github;
pub mod html;
pub mod json;
pub mod junit;
pub mod terminal;

pub use files::{REPORT_ENV, after_run, report_dir_from_env, write_reports};
