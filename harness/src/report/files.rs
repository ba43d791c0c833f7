//! Writing a run's report files: `report.json`, `junit.xml`, `index.html` into one directory.

use std::path::{Path, PathBuf};

use super::TrialReport;
use crate::error::{Error, Result};

/// Environment variable naming the report directory (the case runner under `cargo test` takes
/// only libtest arguments, so this is how it is asked for reports).
pub const REPORT_ENV: &str = "HARNESS_REPORT";

/// `$HARNESS_REPORT`, a relative path taken from the repository root (under `cargo test` the
/// working directory is the crate, not the repository). Unset or empty: no reports.
pub fn report_dir_from_env(root: &Path) -> Option<PathBuf> {
    let v = std::env::var_os(REPORT_ENV)?;
    if v.is_empty() {
        return None;
    }
    let p = PathBuf::from(v);
    Some(if p.is_absolute() { p } else { root.join(p) })
}

/// Write the three report files into `dir` (created if needed); returns their paths. Each file is
/// written beside its final name and renamed into place, so a reader never sees half a file.
pub fn write_reports(dir: &Path, root: &Path, reports: &[TrialReport]) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::io(dir, &e).hint(format!("pass a writable directory to --report (or {REPORT_ENV})")))?;
    let files = [
        ("report.json", super::json::render(reports, root)),
        ("junit.xml", super::junit::render(reports, root)),
        ("index.html", super::html::render(reports, root)),
    ];
    let mut out = Vec::new();
    for (name, text) in files {
        let path = dir.join(name);
        let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
        std::fs::write(&tmp, text).map_err(|e| Error::io(&tmp, &e))?;
        std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, &e))?;
        out.push(path);
    }
    Ok(out)
}

/// The end-of-run hook: write the report files when asked (`dir`, else `$HARNESS_REPORT`) and,
/// under GitHub Actions, print an `::error` annotation per trial that did not pass.
pub fn after_run(root: &Path, reports: &[TrialReport], dir: Option<PathBuf>) -> Result<()> {
    let mut reports = reports.to_vec();
    reports.sort_by(|a, b| a.trial.cmp(&b.trial));
    if super::github::enabled() {
        print!("{}", super::github::annotations(&reports, root));
    }
    if let Some(dir) = dir.or_else(|| report_dir_from_env(root)) {
        let files = write_reports(&dir, root, &reports)?;
        eprintln!("report: {}", crate::error::display_path(&files[2]));
    }
    Ok(())
}
