//! `cases/engines/<name>.yaml`: the declaration of an external-process engine, read and
//! validated with located errors like cases (unknown keys are errors). The schema is documented
//! in docs/engine-protocol.md.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::rules::{Dim, LayoutRule, NameRule, Op, RuleError, Rules, transpose_op};
use crate::error::{Error, Result};
use crate::yaml::Doc;

/// Where engine files live, under the repository root.
pub const ENGINES_DIR: &str = "cases/engines";

/// The engine files' directory of the project at `root`: `<cases>/engines`.
pub fn engines_dir(root: &Path) -> PathBuf {
    crate::project::cases_dir(root).join("engines")
}

/// Placeholder in `command` replaced by the path of request.json.
pub const REQUEST_PLACEHOLDER: &str = "{request}";

/// Timeouts above this are refused: a trial that may hang for a day is a mistake.
const MAX_TIMEOUT_S: f64 = 24.0 * 3600.0;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct EngineFile {
    #[serde(default)]
    description: Option<String>,
    /// argv; `{request}` is replaced by the path of request.json. Run from the repository root.
    command: Vec<String>,
    /// HF classes the engine runs.
    families: Vec<String>,
    /// Extra environment variables for the command.
    #[serde(default)]
    env: BTreeMap<String, String>,
    /// Seconds before the engine's process group is killed.
    #[serde(default = "default_timeout")]
    timeout: f64,
    /// The dtype of the tensors the engine writes.
    #[serde(default)]
    dtype: OutputDtype,
    #[serde(default)]
    names: Vec<NameRuleFile>,
    #[serde(default)]
    layouts: Vec<LayoutRuleFile>,
    /// HF tap globs the engine can produce; default: every module.
    #[serde(default)]
    taps: Option<Vec<String>>,
    /// Run on every case of its families (not only cases that list it under `engines:`).
    #[serde(default)]
    default: bool,
    /// The command that installs what `command` needs, shown when it is missing.
    #[serde(default)]
    setup: Option<String>,
    /// The engine's precision: replaces the case's tolerances in its trials (a bfloat16 engine
    /// cannot meet a float32 tolerance, whatever the case).
    #[serde(default)]
    tolerance: Option<crate::tolerance::Tolerance>,
    /// 1: one process per forward (request.json); 2: one process per model, JSON lines.
    #[serde(default)]
    protocol: Option<u32>,
    /// Engine options, sent with every protocol-2 request (GGUF type, KV-cache dtype, ...).
    #[serde(default)]
    options: Option<serde_json::Value>,
}

fn default_timeout() -> f64 {
    60.0
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct NameRuleFile {
    engine: String,
    /// One HF name, or a list: the engine tensor is each of their values.
    hf: OneOrMany,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct LayoutRuleFile {
    engine: String,
    #[serde(default)]
    reverse: bool,
    #[serde(default)]
    transpose: Option<Vec<usize>>,
    #[serde(default)]
    reshape: Option<Vec<Dim>>,
    /// Layout ops in any order, e.g. `[{reverse: true}, {reshape: [batch, seq, -1, head_dim/2, 2]}]`.
    #[serde(default)]
    ops: Option<Vec<OpFile>>,
}

/// One entry of `ops:`: exactly one of its keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct OpFile {
    #[serde(default)]
    reverse: bool,
    #[serde(default)]
    transpose: Option<Vec<usize>>,
    #[serde(default)]
    reshape: Option<Vec<Dim>>,
}

/// The dtype of the tensors an engine writes. `.npy` has no bfloat16: bfloat16 tensors in `.npy`
/// are `<u2` bit patterns.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OutputDtype {
    #[default]
    Float32,
    Float16,
    Bfloat16,
    Float64,
}

impl OutputDtype {
    pub fn as_str(self) -> &'static str {
        match self {
            OutputDtype::Float32 => "float32",
            OutputDtype::Float16 => "float16",
            OutputDtype::Bfloat16 => "bfloat16",
            OutputDtype::Float64 => "float64",
        }
    }
}

/// A validated engine file.
#[derive(Debug, Clone)]
pub struct EngineSpec {
    /// The file stem: the engine's name in trial names and `engines:` lists.
    pub name: String,
    pub file: PathBuf,
    /// The repository root: the command's working directory.
    pub root: PathBuf,
    pub description: Option<String>,
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// HF class names the engine runs, `*` globs allowed (`*ForCausalLM`, `*`).
    pub families: Vec<String>,
    pub timeout: Duration,
    pub dtype: OutputDtype,
    pub rules: Rules,
    pub taps: Option<Vec<String>>,
    pub default: bool,
    pub setup: Option<String>,
    pub tolerance: Option<crate::tolerance::Tolerance>,
    /// The protocol version it speaks: 1 (a process per forward) or 2 (persistent, JSON lines).
    pub protocol: u32,
    /// Options sent with its protocol-2 requests (a JSON object; empty when none).
    pub options: serde_json::Value,
}

/// Every engine file under `root/cases/engines/`, sorted (no sub-directories).
pub fn discover(root: &Path) -> Result<Vec<PathBuf>> {
    let dir = engines_dir(root);
    let rd = match std::fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(Error::io(&dir, &e)),
    };
    let mut out: Vec<PathBuf> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    out.sort();
    Ok(out)
}

/// The engine name of an engine file: its stem.
pub fn engine_name(file: &Path) -> String {
    file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
}

/// YAML-level errors point at the case schema in docs/cases-and-inputs.md; an engine file's
/// schema is in docs/engine-protocol.md.
fn schema_hint(mut e: Error) -> Error {
    if let Some(h) = &e.hint {
        if h.contains("\"Adding a case\"") {
            e.hint = Some("see docs/engine-protocol.md for the keys of an engine file".into());
        } else {
            e.hint = Some(
                h.replace("the schema in docs/cases-and-inputs.md", "docs/engine-protocol.md")
                    .replace("docs/cases-and-inputs.md", "docs/engine-protocol.md"),
            );
        }
    }
    e
}

/// Read and validate one engine file.
pub fn load(root: &Path, file: &Path) -> Result<EngineSpec> {
    parse(root, Doc::read(file)?)
}

/// Validate an engine file already read into `doc` (also the fuzz/corpus entry point).
pub fn parse(root: &Path, mut doc: Doc) -> Result<EngineSpec> {
    let file = doc.file.clone();
    let name = engine_name(&file);
    if name.is_empty()
        || !name.starts_with(|c: char| c.is_ascii_alphanumeric())
        || !name.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
    {
        return Err(Error::input(format!("engine name `{name}` (the file name) is not a plain name"))
            .file(&file)
            .hint("name engine files with letters, digits, `-`, `_` and `.`, e.g. `my-port.yaml`"));
    }
    let f: EngineFile = doc.parse().map_err(schema_hint)?;
    let protocol = f.protocol.unwrap_or(1);
    if !(1..=2).contains(&protocol) {
        return Err(doc
            .err("protocol", format!("protocol {protocol} is not 1 or 2"))
            .hint("1: one process per forward (request.json); 2: one process per model, JSON lines"));
    }
    let options = f.options.clone().unwrap_or_else(|| serde_json::json!({}));
    if !options.is_object() {
        return Err(doc.err("options", "`options` must be a mapping").hint("e.g. `options: {kv_cache: f32}`"));
    }
    if f.command.is_empty() || f.command[0].trim().is_empty() {
        return Err(doc
            .err("command", "empty command")
            .hint("give the argv as a list, e.g. `command: [python3, tools/adapters/mine.py, \"{request}\"]`"));
    }
    if f.families.is_empty() {
        return Err(doc.err("families", "no families").hint("list the HF classes it runs, e.g. `[LlamaForCausalLM]`"));
    }
    let mut families = Vec::new();
    for (i, class) in f.families.iter().enumerate() {
        let class = class.trim();
        if class.is_empty() || !class.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '*') {
            return Err(doc
                .err(&format!("families[{i}]"), format!("`{class}` is not an HF class name or glob"))
                .hint("e.g. `LlamaForCausalLM`, `*ForCausalLM` or `*` (any class)"));
        }
        families.push(class.to_string());
    }
    if !(f.timeout.is_finite() && f.timeout > 0.0 && f.timeout <= MAX_TIMEOUT_S) {
        return Err(doc
            .err("timeout", format!("timeout {} is not a number of seconds in (0, {MAX_TIMEOUT_S}]", f.timeout))
            .hint("e.g. `timeout: 60`"));
    }
    for k in f.env.keys() {
        if k.is_empty() || k.contains('=') || k.contains('\0') {
            return Err(doc
                .err(&format!("env.{k}"), format!("`{k}` is not an environment variable name"))
                .hint("use letters, digits and `_`, e.g. `MODEL_DIR`"));
        }
    }
    let locate = |path: String, (field, msg, hint): RuleError| doc.err(&format!("{path}.{field}"), msg).hint(hint);
    let mut rules = Rules { file: file.clone(), ..Default::default() };
    for (i, r) in f.names.iter().enumerate() {
        let path = format!("names[{i}]");
        let hfs: Vec<&str> = match &r.hf {
            OneOrMany::One(h) => vec![h.as_str()],
            OneOrMany::Many(v) => v.iter().map(String::as_str).collect(),
        };
        rules.names.push(NameRule::with_templates(&r.engine, &hfs, doc.pos(&path)).map_err(|e| locate(path, e))?);
    }
    for (i, r) in f.layouts.iter().enumerate() {
        let path = format!("layouts[{i}]");
        let rule = match &r.ops {
            None => LayoutRule::new(&r.engine, r.reverse, r.transpose.as_deref(), r.reshape.clone(), doc.pos(&path)),
            Some(_) if r.reverse || r.transpose.is_some() || r.reshape.is_some() => Err((
                "ops",
                "`ops` cannot be combined with `reverse`, `transpose` or `reshape` in one rule".to_string(),
                "put every op in `ops:`, in the order they apply".to_string(),
            )),
            Some(list) => list
                .iter()
                .enumerate()
                .map(|(k, o)| match (o.reverse, &o.transpose, &o.reshape) {
                    (true, None, None) => Ok(Op::Reverse),
                    (false, Some(axes), None) => transpose_op(axes),
                    (false, None, Some(dims)) => Ok(Op::Reshape(dims.clone())),
                    _ => Err((
                        "ops",
                        format!("ops[{k}] must have exactly one of `reverse: true`, `transpose`, `reshape`"),
                        "write each op as its own entry, e.g. `- {transpose: [3, 4]}`".to_string(),
                    )),
                })
                .collect::<std::result::Result<Vec<Op>, RuleError>>()
                .and_then(|ops| LayoutRule::with_ops(&r.engine, ops, doc.pos(&path))),
        };
        rules.layouts.push(rule.map_err(|e| locate(path, e))?);
    }
    if let Some(t) = &f.tolerance {
        t.validate().map_err(|m| doc.err("tolerance", m))?;
        if t.noise.is_some() {
            return Err(doc
                .err("tolerance.noise", "an engine's tolerance cannot be in units of the goldens' noise floor")
                .hint("use atol/rtol, cosine or sqnr_db"));
        }
    }
    if let Some(taps) = &f.taps {
        if taps.is_empty() {
            return Err(doc.err("taps", "empty tap list").hint("remove `taps:` if the engine produces every module"));
        }
        if let Some(i) = taps.iter().position(|t| t.trim().is_empty()) {
            return Err(doc.err(&format!("taps[{i}]"), "empty tap name").hint("e.g. `logits` or `model.layers.*`"));
        }
    }
    Ok(EngineSpec {
        name,
        file,
        root: root.to_path_buf(),
        description: f.description,
        command: f.command,
        env: f.env,
        families,
        timeout: Duration::from_secs_f64(f.timeout),
        dtype: f.dtype,
        rules,
        taps: f.taps,
        default: f.default,
        setup: f.setup,
        tolerance: f.tolerance,
        protocol,
        options,
    })
}
