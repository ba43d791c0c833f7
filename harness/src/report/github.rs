//! GitHub Actions workflow commands: under Actions (`GITHUB_ACTIONS=true`) every trial that did
//! not pass prints `::error file=cases/...yaml,title=...::...`, which GitHub shows on the case
//! file in the pull request.

use std::path::Path;

use super::{TrialReport, Verdict, case_path, junit::headline};

/// Whether this process runs under GitHub Actions.
pub fn enabled() -> bool {
    std::env::var("GITHUB_ACTIONS").is_ok_and(|v| v == "true")
}

/// Message text of a workflow command (`%`, CR and LF are escaped).
fn esc_data(s: &str) -> String {
    s.replace('%', "%25").replace('\r', "%0D").replace('\n', "%0A")
}

/// A property value of a workflow command (also `:` and `,`).
fn esc_prop(s: &str) -> String {
    esc_data(s).replace(':', "%3A").replace(',', "%2C")
}

/// One `::error` line per trial that did not pass.
pub fn annotations(reports: &[TrialReport], root: &Path) -> String {
    let mut s = String::new();
    for r in reports.iter().filter(|r| r.verdict != Verdict::Pass) {
        let word = if r.verdict == Verdict::Fail { "failed" } else { "could not be judged" };
        let msg = format!("{} {word}: {}\nrerun: {}", r.trial, headline(r), r.rerun);
        s += &format!(
            "::error file={},title={}::{}\n",
            esc_prop(&case_path(root, &r.case_file)),
            esc_prop(&format!("harness: {}", r.trial)),
            esc_data(&msg)
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_per_the_workflow_command_rules() {
        assert_eq!(esc_data("50%\nnext"), "50%25%0Anext");
        assert_eq!(esc_prop("a::b,c"), "a%3A%3Ab%2Cc");
    }
}
