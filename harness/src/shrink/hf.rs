//! The live HF oracle: `tools/hf_oracle.py`, started once per shrink, answering one JSON line
//! per request on stdin/stdout, so candidates do not pay Python's start-up (torch and
//! transformers take seconds to import) each.
//!
//! Request: `{"model": ID, "inputs": {"input_ids": [[..]], "attention_mask": .., "token_type_ids":
//! ..}, "decode": [[..]] | null, "taps": [NAME, ..], "out": DIR}`; taps are module paths without
//! `@step`. Answer: `{"ok": true, "files": {TAP: PATH}}` (decode cases: `TAP@k`, every step), or
//! `{"ok": false, "error": MSG}`. The .npy files are read and deleted right away.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use serde_json::json;

use super::input::Candidate;
use super::oracle::Oracle;
use crate::case::{Case, IdMatrix};
use crate::error::{Error, Result};
use crate::golden::Goldens;
use crate::tensor::read_npy;

/// The oracle module of the goldens tool (`python -m harness_goldens.oracle`).
pub const MODULE: &str = "harness_goldens.oracle";

pub struct HfOracle {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    scratch: tempfile::TempDir,
    requests: usize,
}

/// The Python to run: `$HARNESS_PYTHON`, else the project's `python.command` (harness.toml;
/// relative to the root when it has a `/`), else `python3`.
pub fn python(root: &Path) -> PathBuf {
    if let Some(p) = std::env::var_os("HARNESS_PYTHON") {
        return PathBuf::from(p);
    }
    let cmd = crate::project::or_default(root).python.clone();
    if cmd.contains('/') && !Path::new(&cmd).is_absolute() { root.join(cmd) } else { PathBuf::from(cmd) }
}

impl HfOracle {
    pub fn start(root: &Path) -> Result<HfOracle> {
        let py = python(root);
        // A checkout's tools/ (not installed) is found through PYTHONPATH; an installed goldens
        // tool needs nothing.
        let mut cmd = Command::new(&py);
        if root.join("tools/harness_goldens").is_dir() {
            let mut path = std::ffi::OsString::from(root.join("tools"));
            if let Some(old) = std::env::var_os("PYTHONPATH") {
                path.push(":");
                path.push(old);
            }
            cmd.env("PYTHONPATH", path);
        }
        let mut child = cmd
            .args(["-m", MODULE])
            .arg("--root")
            .arg(root)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| {
                Error::io(&py, &e).hint(
                    "install the goldens tool (pip install <harness>/tools) and name its Python in harness.toml's \
                     `python.command` (or set HARNESS_PYTHON)",
                )
            })?;
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let scratch = tempfile::Builder::new()
            .prefix("harness-hf-oracle-")
            .tempdir()
            .map_err(|e| Error::io(Path::new("/tmp"), &e))?;
        Ok(HfOracle { child, stdin, stdout, scratch, requests: 0 })
    }

    fn ask(&mut self, req: &serde_json::Value) -> Result<serde_json::Value> {
        let died = |what: String| {
            Error::engine(format!("the HF oracle (python -m {MODULE}) {what}"))
                .hint("its error is printed above; run it by hand with the same Python to see more")
        };
        let stdin = self.stdin.as_mut().ok_or_else(|| died("is closed".into()))?;
        writeln!(stdin, "{req}")
            .and_then(|_| stdin.flush())
            .map_err(|e| died(format!("stopped reading requests: {e}")))?;
        let mut line = String::new();
        let n = self.stdout.read_line(&mut line).map_err(|e| died(format!("answer unreadable: {e}")))?;
        if n == 0 {
            let status = self.child.wait().map(|s| s.to_string()).unwrap_or_default();
            return Err(died(format!("exited ({status}) without answering")));
        }
        serde_json::from_str(&line)
            .map_err(|e| died(format!("answered something that is not JSON ({e}): {}", line.trim())))
    }
}

fn rows(m: &IdMatrix) -> Vec<Vec<i64>> {
    (0..m.batch).map(|b| m.row(b).to_vec()).collect()
}

impl Oracle for HfOracle {
    fn name(&self) -> String {
        "hf".into()
    }

    fn expected(&mut self, case: &Case, _cand: &Candidate) -> Result<Option<Goldens>> {
        self.requests += 1;
        let out = self.scratch.path().join(self.requests.to_string());
        std::fs::create_dir_all(&out).map_err(|e| Error::io(&out, &e))?;
        let mut inputs = json!({"input_ids": rows(&case.inputs.input_ids)});
        if let Some(m) = &case.inputs.attention_mask {
            inputs["attention_mask"] = json!(rows(m));
        }
        if let Some(t) = &case.inputs.token_type_ids {
            inputs["token_type_ids"] = json!(rows(t));
        }
        let mut bases: Vec<&str> = Vec::new();
        for t in &case.taps {
            let b = t.name.rsplit_once('@').filter(|_| t.step.is_some()).map_or(t.name.as_str(), |(b, _)| b);
            if !bases.contains(&b) {
                bases.push(b);
            }
        }
        let req = json!({
            "model": case.model.id,
            "inputs": inputs,
            "decode": case.decode.as_ref().map(|d| rows(&d.tokens)),
            "taps": bases,
            "out": out,
        });
        let answer = self.ask(&req)?;
        if answer["ok"] != json!(true) {
            let msg = answer["error"].as_str().unwrap_or("no error message");
            return Err(Error::engine(format!("the HF oracle failed: {msg}"))
                .hint(format!("check the case's model with tools/regen_goldens.py --case {}", case.id)));
        }
        let mut taps = Vec::with_capacity(case.taps.len());
        for t in &case.taps {
            let file = answer["files"][&t.name].as_str().ok_or_else(|| {
                Error::engine(format!("the HF oracle returned no `{}`", t.name))
                    .hint("the module may not run in HF's forward for this input")
            })?;
            taps.push((t.name.clone(), read_npy(Path::new(file), None)?, None));
        }
        let _ = std::fs::remove_dir_all(&out);
        Ok(Some(Goldens::in_memory(case, "hf", taps)))
    }
}

impl Drop for HfOracle {
    fn drop(&mut self) {
        // Closing stdin ends the process's loop.
        self.stdin.take();
        let _ = self.child.wait();
    }
}
