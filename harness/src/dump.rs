//! `harness dump <case> --engine E --out DIR`: run one case on one engine and write every tap as
//! `<tap>.npy` (float32) plus `dump.json` (case, engine, taps in forward order), the input of
//! `harness diff` and of one's own scripts.

use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::case::Case;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::runner::Suite;
use crate::tensor::write_npy;

pub const DUMP_MANIFEST: &str = "dump.json";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DumpManifest {
    pub format: u32,
    pub tool: String,
    pub case: String,
    pub engine: String,
    /// Taps written, in forward order.
    pub taps: Vec<DumpEntry>,
    /// Taps asked for that the engine did not return.
    pub missing: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DumpEntry {
    pub name: String,
    pub file: String,
    pub shape: Vec<usize>,
}

/// Run `case` on `engine` and write its taps into `out` (created if needed). `every_module`
/// dumps every module of the model's structure instead of the case's taps.
pub fn dump(
    suite: &Suite,
    case: &Case,
    engine: &Arc<dyn Engine>,
    out: &Path,
    every_module: bool,
) -> Result<DumpManifest> {
    let names: Vec<String> = if every_module {
        case.model.structure.modules.iter().map(|m| m.path.clone()).collect()
    } else {
        case.taps.iter().map(|t| t.name.clone()).collect()
    };
    let model = suite.model(engine, &case.model)?;
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let outputs = model.run(&case.inputs, &refs).map_err(|e| e.file(&case.file))?;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, &e))?;
    let mut m = DumpManifest {
        format: 1,
        tool: format!("harness dump {}", env!("CARGO_PKG_VERSION")),
        case: case.id.clone(),
        engine: engine.name().to_string(),
        taps: vec![],
        missing: vec![],
    };
    for name in &names {
        match outputs.get(name) {
            Some(t) => {
                let file = format!("{name}.npy");
                write_npy(&out.join(&file), t)?;
                m.taps.push(DumpEntry { name: name.clone(), file, shape: t.shape().to_vec() });
            }
            None => m.missing.push(name.clone()),
        }
    }
    let path = out.join(DUMP_MANIFEST);
    let text = serde_json::to_string_pretty(&m).map_err(|e| Error::engine(e.to_string()))?;
    std::fs::write(&path, text + "\n").map_err(|e| Error::io(&path, &e))?;
    Ok(m)
}
