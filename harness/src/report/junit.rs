//! `junit.xml` for CI systems: one `<testcase>` per trial; a tap out of tolerance is a
//! `<failure>`, a trial that could not be judged (stale golden, engine crash) an `<error>`. The
//! body is the terminal report, so the CI page shows the same per-tap table.

use std::fmt::Write;
use std::path::Path;

use super::{TrialReport, Verdict, case_path, escape_xml as esc, terminal};

/// The one-line reason shown by CI systems next to the test name.
pub fn headline(r: &TrialReport) -> String {
    if let Some(e) = &r.error {
        return e.clone();
    }
    match r.first_divergent_tap() {
        Some(t) => {
            let mut s = format!("first divergence: {}", t.name);
            if let Some(p) = terminal::tap_problem(t) {
                let _ = write!(s, ": {p}");
            }
            s
        }
        None => String::new(),
    }
}

pub fn render(reports: &[TrialReport], root: &Path) -> String {
    // A trial failing as its documented finding expects is `skipped`, not a failure.
    let xfail = |r: &TrialReport| r.verdict != Verdict::Pass && r.ok();
    let count = |v: Verdict| reports.iter().filter(|r| r.verdict == v && !xfail(r)).count();
    let (n, fail, err) = (reports.len(), count(Verdict::Fail), count(Verdict::Error));
    let skipped = reports.iter().filter(|r| xfail(r)).count();
    let mut s = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(s, "<testsuites name=\"harness\" tests=\"{n}\" failures=\"{fail}\" errors=\"{err}\">");
    let _ = writeln!(
        s,
        "  <testsuite name=\"harness\" tests=\"{n}\" failures=\"{fail}\" errors=\"{err}\" skipped=\"{skipped}\">"
    );
    for r in reports {
        let _ = write!(
            s,
            "    <testcase name=\"{}\" classname=\"{}\" file=\"{}\"",
            esc(&r.trial),
            esc(&r.engine),
            esc(&case_path(root, &r.case_file))
        );
        if r.verdict != Verdict::Pass
            && let Some(e) = r.expected.as_ref().filter(|e| e.mismatch.is_none())
        {
            let _ = writeln!(s, ">\n      <skipped message=\"known finding: {}\"/>\n    </testcase>", esc(&e.finding));
            continue;
        }
        let tag = match r.verdict {
            Verdict::Pass => {
                s.push_str("/>\n");
                continue;
            }
            Verdict::Fail => "failure",
            Verdict::Error => "error",
        };
        let kind = if r.verdict == Verdict::Fail { "out_of_tolerance" } else { "not_judged" };
        let _ = writeln!(s, ">");
        let _ = writeln!(
            s,
            "      <{tag} message=\"{}\" type=\"{kind}\">{}</{tag}>",
            esc(&headline(r)),
            esc(&terminal::render(r))
        );
        let _ = writeln!(s, "    </testcase>");
    }
    s.push_str("  </testsuite>\n</testsuites>\n");
    s
}
