//! A shrunk input written as a new case, `cases/regressions/<case>-<signature>.yaml`: the
//! original case's model, taps, tolerances and engines with the minimal input, and a comment
//! naming where it came from and how it fails. It has no goldens until
//! `tools/regen_goldens.py --case regressions/...` makes them (the runner reports it as missing
//! goldens until then), so it is committed together with them.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::Shrunk;
use crate::case::{Case, IdMatrix};
use crate::error::{Error, Result};
use crate::golden::regen_command;

/// Keys of a case file that the regression replaces.
const REPLACED: &[&str] = &["description", "model", "inputs", "decode"];

/// The regression case's id: `regressions/<case with / as ->-<signature slug>`.
pub fn case_id(source: &Case, shrunk: &Shrunk) -> String {
    format!("regressions/{}-{}", source.id.replace('/', "-"), shrunk.signature.slug())
}

fn flow_rows(m: &IdMatrix) -> String {
    let rows: Vec<String> = (0..m.batch)
        .map(|b| format!("[{}]", m.row(b).iter().map(|v| v.to_string()).collect::<Vec<_>>().join(", ")))
        .collect();
    format!("[{}]", rows.join(", "))
}

/// The source case's keys that a regression keeps (tolerances, taps, engines, ...).
fn other_keys(source: &Case) -> Result<serde_norway::Mapping> {
    let text = std::fs::read_to_string(&source.file).map_err(|e| Error::io(&source.file, &e))?;
    let mut rest: serde_norway::Mapping = serde_norway::from_str(&text).map_err(|e| {
        Error::input(format!("cannot re-read the case: {}", crate::error::lowercase_first(&e.to_string())))
            .file(&source.file)
    })?;
    for k in REPLACED {
        rest.remove(*k);
    }
    Ok(rest)
}

fn push_other_keys(y: &mut String, rest: &serde_norway::Mapping, source: &Case) -> Result<()> {
    if !rest.is_empty() {
        let tail = serde_norway::to_string(rest)
            .map_err(|e| Error::input(format!("cannot write the case's other keys: {e}")).file(&source.file))?;
        y.push_str(&tail);
    }
    Ok(())
}

/// The YAML text of the regression case.
pub fn render(root: &Path, source: &Case, shrunk: &Shrunk, engine: &str) -> Result<String> {
    let rest = other_keys(source)?;
    let c = &shrunk.case;
    let rel = crate::report::case_path(root, &source.file);
    let id = case_id(source, shrunk);
    let mut y = String::new();
    let _ = writeln!(y, "# Shrunk by `harness shrink` from {rel} (engine `{engine}`, oracle {}).", shrunk.oracle);
    let _ = writeln!(y, "# Signature: {}.", shrunk.signature);
    let _ = writeln!(y, "# {} -> {} in {} evaluations.", shrunk.original_size, shrunk.minimal_size, shrunk.evaluations);
    let _ = writeln!(y, "# Goldens: {}", regen_command(root, &id));
    let what = format!("minimal input of {} that fails with {}", source.id, shrunk.signature).replace('`', "");
    let _ = writeln!(y, "description: {}", serde_json::to_string(&what).unwrap_or_default());
    let _ = writeln!(y, "model: {}", source.model.id);
    let _ = writeln!(y, "inputs:");
    let _ = writeln!(y, "  input_ids: {}", flow_rows(&c.inputs.input_ids));
    if let Some(m) = &c.inputs.attention_mask {
        let _ = writeln!(y, "  attention_mask: {}", flow_rows(m));
    }
    if let Some(t) = &c.inputs.token_type_ids {
        let _ = writeln!(y, "  token_type_ids: {}", flow_rows(t));
    }
    if let Some(d) = &c.decode {
        let _ = writeln!(y, "decode:");
        let _ = writeln!(y, "  tokens: {}", flow_rows(&d.tokens));
    }
    push_other_keys(&mut y, &rest, source)?;
    Ok(y)
}

/// Write the regression case under `root/cases/regressions/`; returns its path.
pub fn write(root: &Path, source: &Case, shrunk: &Shrunk, engine: &str) -> Result<PathBuf> {
    let text = render(root, source, shrunk, engine)?;
    let path = crate::project::cases_dir(root).join(format!("{}.yaml", case_id(source, shrunk)));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, &e))?;
    }
    std::fs::write(&path, text).map_err(|e| Error::io(&path, &e))?;
    Ok(path)
}

/// The regression case of a batch row (named inputs): `regressions/<case>-row<b>-<signature>`.
pub fn row_case_id(source: &Case, shrunk: &super::rows::RowShrunk) -> String {
    let dec = shrunk.decoder_prefix.map(|(len, _)| format!("-dec{len}")).unwrap_or_default();
    format!("regressions/{}-row{}{dec}-{}", source.id.replace('/', "-"), shrunk.row, shrunk.signature.slug())
}

/// Write the regression case of a batch row: its named inputs as `.npy` files beside it
/// (`<case file stem>.<input>.npy`), token ids inline (named ones too), the source case's other
/// keys. Returns
/// the paths written, the case first.
pub fn write_row(root: &Path, source: &Case, shrunk: &super::rows::RowShrunk, engine: &str) -> Result<Vec<PathBuf>> {
    let rest = other_keys(source)?;
    let id = row_case_id(source, shrunk);
    let path = crate::project::cases_dir(root).join(format!("{id}.yaml"));
    let dir = path.parent().unwrap_or(root).to_path_buf();
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("row").to_string();
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, &e))?;
    let c = &shrunk.case;
    let rel = crate::report::case_path(root, &source.file);
    let mut y = String::new();
    let _ =
        writeln!(y, "# Shrunk by `harness shrink` from {rel} (engine `{engine}`, oracle: its goldens cut to one row).");
    let _ = writeln!(y, "# Signature: {}.", shrunk.signature);
    let _ = writeln!(
        y,
        "# Row {} of {}: named inputs shrink by batch rows only (their values are kept){}.",
        shrunk.row,
        shrunk.rows,
        shrunk
            .decoder_prefix
            .map(|(len, of)| format!("; decoder_input_ids cut to its first {len} of {of} tokens"))
            .unwrap_or_default()
    );
    let _ = writeln!(y, "# Goldens: {}", regen_command(root, &id));
    let what = format!("row {} of {}, which fails with {}", shrunk.row, source.id, shrunk.signature).replace('`', "");
    let _ = writeln!(y, "description: {}", serde_json::to_string(&what).unwrap_or_default());
    let _ = writeln!(y, "model: {}", source.model.id);
    let _ = writeln!(y, "inputs:");
    if c.inputs.has_ids() {
        let _ = writeln!(y, "  input_ids: {}", flow_rows(&c.inputs.input_ids));
    }
    if let Some(m) = &c.inputs.attention_mask {
        let _ = writeln!(y, "  attention_mask: {}", flow_rows(m));
    }
    if let Some(t) = &c.inputs.token_type_ids {
        let _ = writeln!(y, "  token_type_ids: {}", flow_rows(t));
    }
    let mut written = vec![path.clone()];
    for n in &c.inputs.named {
        // Token ids given by name (decoder_input_ids) stay readable: inline, as a case gives them.
        if let (harness_api::inputs::InputData::I64(v), [rows, seq]) = (&n.data, n.shape.as_slice())
            && v.len() <= 1024
        {
            let _ = writeln!(y, "  {}: {}", n.name, flow_rows(&IdMatrix { batch: *rows, seq: *seq, data: v.clone() }));
            continue;
        }
        let file = format!("{stem}.{}.npy", n.name);
        let npy = dir.join(&file);
        crate::engine::external::protocol::write_npy_named(&npy, n)?;
        let _ = writeln!(y, "  {}: {{npy: {file}}}", n.name);
        written.push(npy);
    }
    push_other_keys(&mut y, &rest, source)?;
    std::fs::write(&path, y).map_err(|e| Error::io(&path, &e))?;
    Ok(written)
}
