//! The YAML schema of cases and model specs, their loading and validation.
//!
//! A *model spec* (`cases/models/<id>.yaml`) names an HF class, where its weights come from and
//! its config. A *case* (`cases/**/<name>.yaml`) names a model, its inputs, the taps to compare and
//! their tolerances. Both are plain data: adding either never needs Rust code. The schema is
//! documented in README.md; unknown keys are errors with a did-you-mean.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Pos, Result, did_you_mean};
use crate::family::{self, Config, Family, Module};
use crate::tolerance::Tolerance;
use crate::yaml::Doc;

/// `cases/models/<id>.yaml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpecFile {
    /// The HF class, e.g. `LlamaForCausalLM`.
    pub family: String,
    pub source: SourceFile,
    /// HF config keys. For `random` models this *is* the config; for `path` models it is optional
    /// and must agree with the checkpoint's config.json.
    #[serde(default)]
    pub config: serde_json::Map<String, serde_json::Value>,
    /// Storage dtype of the weights; the reference forward always runs in float32.
    #[serde(default)]
    pub dtype: WeightDtype,
    #[serde(default)]
    pub description: Option<String>,
    /// Also write the model as GGUF in these types (`f32`, `q8_0`), for the `candle-gguf-*`
    /// engines (LlamaForCausalLM only; tools/hflib/gguf_export.py).
    #[serde(default)]
    pub gguf: Vec<String>,
}

/// Where a model's weights come from: `random: {seed: N}` or `path: DIR`.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// A tiny model initialised by HF transformers from `config` and this seed (by tools/).
    Random { seed: u64 },
    /// A checkpoint directory (config.json + model.safetensors), relative to the repository root.
    Path { path: PathBuf, allow_outside_root: bool },
}

/// `source:` as written: exactly one of `random` and `path` (checked with a located error).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceFile {
    #[serde(default)]
    random: Option<RandomFile>,
    #[serde(default)]
    path: Option<PathBuf>,
    /// Allow a `path` outside the repository (or through a symlink that leaves it).
    #[serde(default)]
    allow_outside_root: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RandomFile {
    seed: u64,
}

impl SourceFile {
    fn resolve(&self) -> std::result::Result<Source, &'static str> {
        match (&self.random, &self.path) {
            (Some(r), None) if !self.allow_outside_root => Ok(Source::Random { seed: r.seed }),
            (Some(_), None) => Err("`allow_outside_root` only applies to `path` sources"),
            (None, Some(path)) => Ok(Source::Path { path: path.clone(), allow_outside_root: self.allow_outside_root }),
            (Some(_), Some(_)) => Err("give either `random` or `path` as the source, not both"),
            (None, None) => Err("the source needs `random: {seed: N}` or `path: DIR`"),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum WeightDtype {
    #[default]
    Float32,
    Float16,
    Bfloat16,
}

impl WeightDtype {
    pub fn as_str(self) -> &'static str {
        match self {
            WeightDtype::Float32 => "float32",
            WeightDtype::Float16 => "float16",
            WeightDtype::Bfloat16 => "bfloat16",
        }
    }
}

/// A loaded, validated model spec.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    pub id: String,
    pub file: PathBuf,
    pub family: &'static Family,
    pub source: Source,
    pub dtype: WeightDtype,
    /// The checkpoint directory: `goldens/models/<id>` for random models, else the `path`.
    pub dir: PathBuf,
    /// Effective config: the checkpoint's config.json (when present) overlaid by the spec's keys.
    pub config: Config,
}

/// `cases/**/<name>.yaml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseFile {
    #[serde(default)]
    pub description: Option<String>,
    /// Id of a model spec under `cases/models/`.
    pub model: String,
    pub inputs: InputsFile,
    /// Taps to compare, in any order (they are compared in forward order).
    pub taps: Vec<TapSpec>,
    /// Default tolerance of every tap that has none of its own.
    #[serde(default)]
    pub tolerance: Option<Tolerance>,
    /// Engines to run; default: every registered engine that supports the family.
    #[serde(default)]
    pub engines: Option<Vec<String>>,
    /// Compare positions whose attention_mask is 0 too (default: only real tokens).
    #[serde(default)]
    pub compare_padding: bool,
    /// Incremental decoding after the prompt (causal families).
    #[serde(default)]
    pub decode: Option<DecodeFile>,
    /// Also write goldens of the model truncated to 1..L layers (`depth.{k}.{tap}`), so a failure
    /// of an outputs-only engine can be bisected to its first divergent layer.
    #[serde(default)]
    pub bisect: bool,
    /// Compare against another engine's outputs instead of goldens.
    #[serde(default)]
    pub reference: Option<ReferenceFile>,
}

/// `reference: {engine: NAME}`: the case's expected tensors come from that engine, run on the
/// same inputs, instead of goldens.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReferenceFile {
    pub engine: String,
}

/// A validated `reference:`, with where its engine name sits (for errors found by the runner,
/// such as an unknown engine).
#[derive(Debug, Clone, PartialEq)]
pub struct EngineReference {
    pub engine: String,
    pub pos: Option<Pos>,
}

/// `decode: {tokens: [[...]]}`: tokens fed one per step after the prompt, through the KV cache.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecodeFile {
    /// One row per batch row; step k feeds column k-1.
    pub tokens: IdRows,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputsFile {
    pub input_ids: IdRows,
    #[serde(default)]
    pub attention_mask: Option<IdRows>,
    #[serde(default)]
    pub token_type_ids: Option<IdRows>,
}

/// A batch of rows of integers, or a single flat row (a batch of one).
#[derive(Debug, Clone)]
pub enum IdRows {
    Batch(Vec<Vec<i64>>),
    One(Vec<i64>),
}

impl<'de> Deserialize<'de> for IdRows {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        // Hand-written (not `untagged`) so a bad element gets serde's path and position.
        enum Item {
            Id(i64),
            Row(Vec<i64>),
        }
        impl<'de> Deserialize<'de> for Item {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                struct V;
                impl<'de> serde::de::Visitor<'de> for V {
                    type Value = Item;
                    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                        f.write_str("a token id or a row of token ids")
                    }
                    fn visit_i64<E: serde::de::Error>(self, v: i64) -> std::result::Result<Item, E> {
                        Ok(Item::Id(v))
                    }
                    fn visit_u64<E: serde::de::Error>(self, v: u64) -> std::result::Result<Item, E> {
                        i64::try_from(v).map(Item::Id).map_err(|_| E::custom(format!("integer {v} is too large")))
                    }
                    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut s: A) -> std::result::Result<Item, A::Error> {
                        let mut row = Vec::new();
                        while let Some(v) = s.next_element::<i64>()? {
                            row.push(v);
                        }
                        Ok(Item::Row(row))
                    }
                }
                d.deserialize_any(V)
            }
        }
        let items = Vec::<Item>::deserialize(d)?;
        let rows = items.iter().filter(|i| matches!(i, Item::Row(_))).count();
        if rows == 0 {
            Ok(IdRows::One(items.into_iter().map(|i| if let Item::Id(v) = i { v } else { unreachable!() }).collect()))
        } else if rows == items.len() {
            Ok(IdRows::Batch(
                items.into_iter().map(|i| if let Item::Row(r) = i { r } else { unreachable!() }).collect(),
            ))
        } else {
            Err(serde::de::Error::custom(
                "mixes rows and single ids: give a list of rows `[[...], [...]]` or one flat row `[...]`",
            ))
        }
    }
}

impl IdRows {
    fn rows(&self) -> Vec<&[i64]> {
        match self {
            IdRows::Batch(b) => b.iter().map(|r| r.as_slice()).collect(),
            IdRows::One(r) => vec![r.as_slice()],
        }
    }
    fn is_flat(&self) -> bool {
        matches!(self, IdRows::One(_))
    }
}

/// A tap pattern with an optional tolerance: `model.layers.*.mlp` or
/// `{tap: logits, tolerance: {atol: 1e-4}}`.
#[derive(Debug, Clone)]
pub struct TapSpec {
    pub pattern: String,
    pub tolerance: Option<Tolerance>,
}

impl<'de> Deserialize<'de> for TapSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Full {
            tap: String,
            #[serde(default)]
            tolerance: Option<Tolerance>,
        }
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = TapSpec;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a tap name (e.g. `model.layers.*.mlp`) or a mapping `{tap: NAME, tolerance: {...}}`")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<TapSpec, E> {
                Ok(TapSpec { pattern: v.to_string(), tolerance: None })
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> std::result::Result<TapSpec, A::Error> {
                let f = Full::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(TapSpec { pattern: f.tap, tolerance: f.tolerance })
            }
        }
        d.deserialize_any(V)
    }
}

/// Integer matrix (batch x seq), row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdMatrix {
    pub batch: usize,
    pub seq: usize,
    pub data: Vec<i64>,
}

impl IdMatrix {
    pub fn row(&self, b: usize) -> &[i64] {
        &self.data[b * self.seq..(b + 1) * self.seq]
    }
    pub fn shape(&self) -> [usize; 2] {
        [self.batch, self.seq]
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Inputs {
    pub input_ids: IdMatrix,
    pub attention_mask: Option<IdMatrix>,
    pub token_type_ids: Option<IdMatrix>,
}

impl Inputs {
    /// True where the position holds a real token (mask 1, or no mask at all).
    pub fn is_real(&self, b: usize, s: usize) -> bool {
        self.attention_mask.as_ref().is_none_or(|m| m.data[b * m.seq + s] != 0)
    }
}

/// A validated `decode:`: step 0 is the prompt, step k (1..=steps) feeds `tokens[:, k-1]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Decode {
    /// batch x steps.
    pub tokens: IdMatrix,
}

impl Decode {
    pub fn steps(&self) -> usize {
        self.tokens.seq
    }

    /// The prompt followed by the first `k` decode tokens, as one unpadded input: what a full
    /// forward must see to reproduce decode step `k` at its last position.
    pub fn prefix(&self, prompt: &Inputs, k: usize) -> Inputs {
        let p = &prompt.input_ids;
        let seq = p.seq + k;
        let mut data = Vec::with_capacity(p.batch * seq);
        for b in 0..p.batch {
            data.extend_from_slice(p.row(b));
            data.extend_from_slice(&self.tokens.row(b)[..k]);
        }
        Inputs { input_ids: IdMatrix { batch: p.batch, seq, data }, attention_mask: None, token_type_ids: None }
    }
}

/// One tap of a case after glob expansion, in forward order.
#[derive(Debug, Clone)]
pub struct Tap {
    pub name: String,
    pub module: Module,
    pub tolerance: Tolerance,
    /// The pattern that selected it (for messages), and where that pattern is.
    pub pattern: String,
    /// Decode cases: the step (0 = prompt); `name` is then `{module}@{step}`.
    pub step: Option<usize>,
}

#[derive(Debug, Clone)]
pub struct Case {
    /// Path under `cases/` without `.yaml`, with `/` separators: `llama/gqa`.
    pub id: String,
    pub file: PathBuf,
    pub description: Option<String>,
    pub model: ModelSpec,
    pub inputs: Inputs,
    pub taps: Vec<Tap>,
    pub engines: Option<Vec<String>>,
    /// Where each entry of `engines:` is, for errors found later (unknown engine).
    pub engine_positions: Vec<Option<Pos>>,
    pub compare_padding: bool,
    /// The case's default tolerance (taps may have their own).
    pub tolerance: Tolerance,
    pub decode: Option<Decode>,
    /// Depth goldens exist (`bisect: true`): see [`crate::bisect`].
    pub bisect: bool,
    /// The engine whose outputs are the expected tensors; None: the goldens.
    pub reference: Option<EngineReference>,
}

/// Read and validate a model spec; `root` is the repository root.
pub fn load_model_spec(root: &Path, id: &str) -> Result<ModelSpec> {
    let file = root.join("cases").join("models").join(format!("{id}.yaml"));
    parse_model_spec(root, id, Doc::read(&file)?)
}

/// Validate a model spec already read into `doc` (also the fuzz target's entry point).
pub fn parse_model_spec(root: &Path, id: &str, mut doc: Doc) -> Result<ModelSpec> {
    let file = doc.file.clone();
    let spec: ModelSpecFile = doc.parse()?;
    let family = family::lookup(&spec.family).ok_or_else(|| {
        let names = family::all().iter().map(|f| f.class);
        let hint = match did_you_mean(&spec.family, names.clone()) {
            Some(n) => format!("did you mean `{n}`?"),
            None => format!("supported: {}", names.collect::<Vec<_>>().join(", ")),
        };
        doc.err("family", format!("unknown model family `{}`", spec.family)).hint(hint)
    })?;
    let source = spec.source.resolve().map_err(|m| doc.err("source", m))?;
    let dir = match &source {
        Source::Random { .. } => {
            if spec.config.is_empty() {
                return Err(doc
                    .err("source", "a random model needs a `config:` (HF config keys)")
                    .hint("add e.g. `config: {hidden_size: 64, num_hidden_layers: 2, ...}`"));
            }
            root.join("goldens").join("models").join(id)
        }
        Source::Path { path, allow_outside_root } => {
            let dir = if path.is_absolute() { path.clone() } else { root.join(path) };
            if !allow_outside_root {
                check_inside(root, &dir).map_err(|msg| {
                    doc.err("source.path", msg)
                        .hint("set `allow_outside_root: true` under `source:` if this is intended")
                })?;
            }
            if dir.is_dir()
                && !dir.join("model.safetensors").exists()
                && let Some(p) = PICKLES.iter().find(|p| dir.join(p).exists())
            {
                return Err(doc
                    .err(
                        "source.path",
                        format!(
                            "`{}` holds only a pickled checkpoint `{p}`; pickles are refused (they can run code)",
                            path.display()
                        ),
                    )
                    .hint("convert it to model.safetensors (safetensors.torch.save_file)"));
            }
            dir
        }
    };
    let mut config = match std::fs::read(dir.join("config.json")) {
        Ok(bytes) => serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&bytes).map_err(|e| {
            Error::input(format!("invalid config.json: {}", crate::error::lowercase_first(&e.to_string())))
                .file(dir.join("config.json"))
        })?,
        Err(_) => serde_json::Map::new(),
    };
    for (k, v) in &spec.config {
        config.insert(k.clone(), v.clone());
    }
    let config = Config::new(config, file.clone());
    (family.validate)(&config).map_err(|e| e.file(&file).at(doc.pos("config")))?;
    for (i, q) in spec.gguf.iter().enumerate() {
        if family.class != "LlamaForCausalLM" {
            return Err(doc
                .err("gguf", format!("`gguf:` is only supported for LlamaForCausalLM, not {}", family.class))
                .hint("remove `gguf:`"));
        }
        if crate::engines::candle_tx::gguf::GgufType::parse(q).is_none() {
            let known = crate::engines::candle_tx::gguf::GgufType::ALL.map(|t| t.as_str());
            let hint = match did_you_mean(q, known) {
                Some(k) => format!("did you mean `{k}`?"),
                None => format!("known types: {}", known.join(", ")),
            };
            return Err(doc.err(&format!("gguf[{i}]"), format!("unknown GGUF type `{q}`")).hint(hint));
        }
    }
    Ok(ModelSpec { id: id.to_string(), file, family, source, dtype: spec.dtype, dir, config })
}

/// Checkpoint files that are Python pickles: never loaded.
pub const PICKLES: &[&str] = &["pytorch_model.bin", "model.bin", "model.pt", "model.pth", "model.ckpt"];

/// Refuse paths that leave `root`, lexically (`..`) or through a symlink.
fn check_inside(root: &Path, dir: &Path) -> std::result::Result<(), String> {
    if dir.components().any(|c| c == Component::ParentDir) {
        let lexical = normalize(dir);
        if !lexical.starts_with(normalize(root)) {
            return Err(format!("model path `{}` leaves the repository", dir.display()));
        }
    }
    if let (Ok(real_root), Ok(real)) = (root.canonicalize(), dir.canonicalize())
        && !real.starts_with(&real_root)
    {
        return Err(format!(
            "model path `{}` resolves to `{}`, outside the repository (through a symlink)",
            dir.display(),
            real.display()
        ));
    }
    Ok(())
}

fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            c => out.push(c),
        }
    }
    out
}

/// A case id from its path under `cases/`.
pub fn case_id(cases_dir: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(cases_dir).unwrap_or(file).with_extension("");
    rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect::<Vec<_>>().join("/")
}

/// Load and validate one case. `models` caches model specs by id across cases.
pub fn load_case(root: &Path, file: &Path, models: &mut BTreeMap<String, Result<ModelSpec>>) -> Result<Case> {
    parse_case(root, Doc::read(file)?, models)
}

/// Validate a case already read into `doc` (also the fuzz target's entry point).
pub fn parse_case(root: &Path, mut doc: Doc, models: &mut BTreeMap<String, Result<ModelSpec>>) -> Result<Case> {
    let file = doc.file.clone();
    let file = file.as_path();
    let cases_dir = root.join("cases");
    let id = case_id(&cases_dir, file);
    let cf: CaseFile = doc.parse()?;

    let model = models.entry(cf.model.clone()).or_insert_with(|| load_model_spec(root, &cf.model)).clone();
    let model = model.map_err(|e| {
        if e.kind == crate::error::ErrorKind::Io
            && e.file.as_deref().is_some_and(|f| f.ends_with(format!("{}.yaml", cf.model)))
        {
            let known = list_model_ids(root);
            let hint = match did_you_mean(&cf.model, known.iter().map(|s| s.as_str())) {
                Some(m) => format!("did you mean `{m}`?"),
                None => format!("model specs live in cases/models/<id>.yaml; known: {}", known.join(", ")),
            };
            doc.err("model", format!("no model spec `{}`", cf.model)).hint(hint)
        } else {
            e
        }
    })?;

    let inputs = validate_inputs(&doc, &cf.inputs, &model)?;
    let decode = cf.decode.as_ref().map(|d| validate_decode(&doc, &cf, d, &inputs, &model)).transpose()?;
    let default_tol = match &cf.tolerance {
        Some(t) => {
            t.validate().map_err(|m| doc.err("tolerance", m))?;
            t.clone()
        }
        None => Tolerance::default(),
    };
    if cf.taps.is_empty() {
        return Err(doc.err("taps", "no taps to compare").hint("list at least one, e.g. `taps: [logits]`"));
    }
    let modules = (model.family.modules)(&model.config)?;
    let mut taps = expand_taps(&doc, &cf.taps, &modules, &default_tol)?;
    if let Some(d) = &decode {
        taps = per_step(&taps, d.steps());
    }
    if cf.bisect && decode.is_some() {
        return Err(doc
            .err("bisect", "`bisect: true` is not supported on decode cases")
            .hint("bisect a case of the prompt alone (without `decode:`)"));
    }
    if let Some(engines) = &cf.engines
        && engines.is_empty()
    {
        return Err(doc
            .err("engines", "empty engine list")
            .hint("remove `engines:` to run every engine that supports the family"));
    }
    let reference = cf.reference.as_ref().map(|r| validate_reference(&doc, &cf, r)).transpose()?;
    Ok(Case {
        id,
        file: file.to_path_buf(),
        description: cf.description,
        model,
        inputs,
        taps,
        engine_positions: (0..cf.engines.as_ref().map_or(0, |e| e.len()))
            .map(|i| doc.pos(&format!("engines[{i}]")))
            .collect(),
        engines: cf.engines,
        compare_padding: cf.compare_padding,
        tolerance: default_tol,
        decode,
        bisect: cf.bisect,
        reference,
    })
}

/// An engine reference has no float32 noise floor, so `noise:` tolerances cannot be judged.
fn validate_reference(doc: &Doc, cf: &CaseFile, r: &ReferenceFile) -> Result<EngineReference> {
    if r.engine.trim().is_empty() {
        return Err(doc
            .err("reference.engine", "empty engine name")
            .hint("name a registered engine, e.g. `reference`"));
    }
    let noise_at = std::iter::once(("tolerance.noise".to_string(), &cf.tolerance))
        .chain(cf.taps.iter().enumerate().map(|(i, t)| (format!("taps[{i}].tolerance.noise"), &t.tolerance)))
        .find(|(_, t)| t.as_ref().is_some_and(|t| t.noise.is_some()));
    if let Some((path, _)) = noise_at {
        return Err(doc
            .err(
                &path,
                "a `noise:` tolerance needs the goldens' float32 noise floor, and this case's reference is an engine",
            )
            .hint("use atol/rtol, cosine or sqnr_db, or compare against goldens (remove `reference:`)"));
    }
    Ok(EngineReference { engine: r.engine.clone(), pos: doc.pos("reference.engine") })
}

pub fn list_model_ids(root: &Path) -> Vec<String> {
    let mut ids: Vec<String> = std::fs::read_dir(root.join("cases").join("models"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let p = e.path();
            (p.extension()? == "yaml").then(|| p.file_stem().unwrap().to_string_lossy().into_owned())
        })
        .collect();
    ids.sort();
    ids
}

/// Rows of ids at `{section}.{key}` (e.g. `inputs.input_ids`, `decode.tokens`) as a matrix.
fn matrix(doc: &Doc, section: &str, key: &str, rows: &IdRows, expect: Option<[usize; 2]>) -> Result<IdMatrix> {
    let rows_v = rows.rows();
    let path_of = |b: usize, s: usize| {
        if rows.is_flat() { format!("{section}.{key}[{s}]") } else { format!("{section}.{key}[{b}][{s}]") }
    };
    let row_path = |b: usize| if rows.is_flat() { format!("{section}.{key}") } else { format!("{section}.{key}[{b}]") };
    if rows_v.is_empty() || rows_v[0].is_empty() {
        return Err(doc.err(&format!("{section}.{key}"), format!("`{key}` is empty")).hint("give at least one token"));
    }
    let seq = rows_v[0].len();
    for (b, r) in rows_v.iter().enumerate() {
        if r.len() != seq {
            return Err(doc
                .err(&row_path(b), format!("ragged batch: row {b} of `{key}` has {} tokens, row 0 has {seq}", r.len()))
                .hint("pad every row to the same length and mark padding with attention_mask 0"));
        }
    }
    let batch = rows_v.len();
    if let Some(e) = expect
        && e != [batch, seq]
    {
        return Err(doc
            .err(&format!("{section}.{key}"), format!("`{key}` is {batch}x{seq} but input_ids is {}x{}", e[0], e[1]))
            .hint(format!("give `{key}` one value per token of input_ids")));
    }
    let data: Vec<i64> = rows_v.iter().flat_map(|r| r.iter().copied()).collect();
    if let Some(i) = data.iter().position(|&v| v < 0) {
        return Err(doc
            .err(&path_of(i / seq, i % seq), format!("negative value {} in `{key}`", data[i]))
            .hint("ids, masks and token types are non-negative integers"));
    }
    let _ = path_of;
    Ok(IdMatrix { batch, seq, data })
}

fn validate_inputs(doc: &Doc, f: &InputsFile, model: &ModelSpec) -> Result<Inputs> {
    let ids = matrix(doc, "inputs", "input_ids", &f.input_ids, None)?;
    let flat = f.input_ids.is_flat();
    let at = |key: &str, i: usize, seq: usize| element_path("inputs", key, flat, i, seq);
    check_vocab(doc, "inputs", "input_ids", flat, &ids, model)?;
    if let Some(max_pos) = model.config.opt_usize("max_position_embeddings")? {
        let offset = model.family.position_offset;
        if ids.seq + offset > max_pos {
            return Err(doc
                .err(
                    "inputs.input_ids",
                    format!("sequence of {} tokens is longer than max_position_embeddings {max_pos}", ids.seq),
                )
                .hint("shorten the input or raise max_position_embeddings in the model config"));
        }
    }
    let mask =
        f.attention_mask.as_ref().map(|m| matrix(doc, "inputs", "attention_mask", m, Some(ids.shape()))).transpose()?;
    if let (Some(m), Some(mf)) = (&mask, &f.attention_mask) {
        if let Some(i) = m.data.iter().position(|&v| v > 1) {
            let flat = mf.is_flat();
            let p = if flat {
                format!("inputs.attention_mask[{i}]")
            } else {
                format!("inputs.attention_mask[{}][{}]", i / m.seq, i % m.seq)
            };
            return Err(doc
                .err(&p, format!("attention_mask value {} is not 0 or 1", m.data[i]))
                .hint("1 marks a real token, 0 padding"));
        }
        for b in 0..m.batch {
            if m.row(b).iter().all(|&v| v == 0) {
                return Err(doc
                    .err(&format!("inputs.attention_mask[{b}]"), format!("row {b} of attention_mask has no real token"))
                    .hint("every row needs at least one 1"));
            }
        }
    }
    let types =
        f.token_type_ids.as_ref().map(|t| matrix(doc, "inputs", "token_type_ids", t, Some(ids.shape()))).transpose()?;
    if let Some(t) = &types {
        let n = model.config.opt_usize("type_vocab_size")?.unwrap_or(0);
        if n == 0 {
            return Err(doc
                .err(
                    "inputs.token_type_ids",
                    format!("model `{}` ({}) takes no token_type_ids", model.id, model.family.class),
                )
                .hint("remove `token_type_ids`"));
        }
        if let Some(i) = t.data.iter().position(|&v| v as u64 >= n as u64) {
            return Err(doc.err(
                &at("token_type_ids", i, t.seq),
                format!("token type {} is out of range: type_vocab_size is {n}", t.data[i]),
            ));
        }
    }
    Ok(Inputs { input_ids: ids, attention_mask: mask, token_type_ids: types })
}

/// The serde-style path of element `i` of a `seq`-wide matrix given as rows (or one flat row).
fn element_path(section: &str, key: &str, flat: bool, i: usize, seq: usize) -> String {
    if flat { format!("{section}.{key}[{i}]") } else { format!("{section}.{key}[{}][{}]", i / seq, i % seq) }
}

fn check_vocab(doc: &Doc, section: &str, key: &str, flat: bool, ids: &IdMatrix, model: &ModelSpec) -> Result<()> {
    let vocab = model.config.usize("vocab_size")?;
    if let Some(i) = ids.data.iter().position(|&v| v as u64 >= vocab as u64) {
        return Err(doc
            .err(
                &element_path(section, key, flat, i, ids.seq),
                format!("token id {} is out of range: vocab_size is {vocab}", ids.data[i]),
            )
            .hint(format!("ids must be in 0..{vocab} for model `{}`", model.id)));
    }
    Ok(())
}

fn validate_decode(doc: &Doc, cf: &CaseFile, f: &DecodeFile, inputs: &Inputs, model: &ModelSpec) -> Result<Decode> {
    if !model.family.causal {
        return Err(doc
            .err("decode", format!("`decode:` needs a causal language model; `{}` is not one", model.family.class))
            .hint("remove `decode:`"));
    }
    let tokens = matrix(doc, "decode", "tokens", &f.tokens, None)?;
    let prompt = &inputs.input_ids;
    let rows = |n: usize| if n == 1 { "1 row".to_string() } else { format!("{n} rows") };
    if tokens.batch != prompt.batch {
        return Err(doc
            .err(
                "decode.tokens",
                format!("`decode.tokens` has {} but input_ids has {}", rows(tokens.batch), rows(prompt.batch)),
            )
            .hint("give one row of decode tokens per prompt row"));
    }
    check_vocab(doc, "decode", "tokens", f.tokens.is_flat(), &tokens, model)?;
    let mask_flat = cf.inputs.attention_mask.as_ref().is_some_and(|m| m.is_flat());
    if let Some(m) = &inputs.attention_mask
        && let Some(i) = m.data.iter().position(|&v| v == 0)
    {
        return Err(doc
            .err(
                &element_path("inputs", "attention_mask", mask_flat, i, m.seq),
                "decode cases take no padding, but attention_mask is 0 here",
            )
            .hint("give every prompt row the same number of real tokens, or drop `decode:`"));
    }
    if let Some(max_pos) = model.config.opt_usize("max_position_embeddings")?
        && prompt.seq + tokens.seq + model.family.position_offset > max_pos
    {
        return Err(doc
            .err(
                "decode.tokens",
                format!(
                    "a prompt of {} tokens plus {} decode steps is longer than max_position_embeddings {max_pos}",
                    prompt.seq, tokens.seq
                ),
            )
            .hint("use fewer decode tokens or a shorter prompt"));
    }
    Ok(Decode { tokens })
}

/// A decode case's taps: every tap once per step, step-major (`logits@0`, ..., `logits@N`).
fn per_step(taps: &[Tap], steps: usize) -> Vec<Tap> {
    (0..=steps)
        .flat_map(|k| taps.iter().map(move |t| Tap { name: format!("{}@{k}", t.name), step: Some(k), ..t.clone() }))
        .collect()
}

/// `*` matches one path segment (no dots); everything else matches itself.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let p: Vec<&str> = pattern.split('.').collect();
    let n: Vec<&str> = name.split('.').collect();
    p.len() == n.len() && p.iter().zip(&n).all(|(p, n)| segment_match(p, n))
}

fn segment_match(p: &str, n: &str) -> bool {
    match p.find('*') {
        None => p == n,
        Some(i) => {
            let (pre, rest) = (&p[..i], &p[i + 1..]);
            if !n.starts_with(pre) {
                return false;
            }
            let tail = &n[pre.len()..];
            (0..=tail.len()).filter(|&k| tail.is_char_boundary(k)).any(|k| segment_match(rest, &tail[k..]))
        }
    }
}

fn expand_taps(doc: &Doc, specs: &[TapSpec], modules: &[Module], default_tol: &Tolerance) -> Result<Vec<Tap>> {
    // Later specs win for a tap selected twice, so `model.layers.*` then `{tap: model.layers.1, ...}` works.
    let mut chosen: Vec<Option<Tap>> = vec![None; modules.len()];
    for (i, spec) in specs.iter().enumerate() {
        let path = format!("taps[{i}]");
        if spec.pattern.trim().is_empty() {
            return Err(doc
                .err(&path, "empty tap name")
                .hint("name an HF module path, e.g. `model.layers.*.mlp`, or `logits`"));
        }
        let tol = match &spec.tolerance {
            Some(t) => {
                t.validate().map_err(|m| doc.err(&format!("{path}.tolerance"), m))?;
                t.clone()
            }
            None => default_tol.clone(),
        };
        let mut hits = 0;
        for (m, slot) in modules.iter().zip(chosen.iter_mut()) {
            if glob_match(&spec.pattern, &m.path) {
                hits += 1;
                *slot = Some(Tap {
                    name: m.path.clone(),
                    module: m.clone(),
                    tolerance: tol.clone(),
                    pattern: spec.pattern.clone(),
                    step: None,
                });
            }
        }
        if hits == 0 {
            let names: Vec<String> = modules
                .iter()
                .map(|m| generalize(&m.path))
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            let hint = match did_you_mean(&generalize(&spec.pattern), names.iter().map(|s| s.as_str())) {
                Some(n) => format!("did you mean `{n}`?"),
                None => children_hint(&generalize(&spec.pattern), &names),
            };
            let what = if spec.pattern.contains('*') { "matches no module" } else { "is not a module of this model" };
            return Err(doc.err(&path, format!("tap `{}` {what}", spec.pattern)).hint(hint));
        }
    }
    Ok(chosen.into_iter().flatten().collect())
}

/// The modules one level below the longest prefix of `pattern` that exists, e.g. for
/// `model.layers.*.attention`: "under `model.layers.*`: input_layernorm, self_attn, ...".
fn children_hint(pattern: &str, names: &[String]) -> String {
    let segs: Vec<&str> = pattern.split('.').collect();
    for k in (0..segs.len()).rev() {
        let prefix = segs[..k].join(".");
        let mut kids: Vec<&str> = Vec::new();
        for n in names {
            let rest = if k == 0 { Some(n.as_str()) } else { n.strip_prefix(&format!("{prefix}.")) };
            if let Some(first) = rest.and_then(|r| r.split('.').next())
                && !kids.contains(&first)
            {
                kids.push(first);
            }
        }
        if !kids.is_empty() {
            let under = if k == 0 { "at the top".to_string() } else { format!("under `{prefix}`") };
            return format!("{under} this model has: {}", kids.join(", "));
        }
    }
    format!("taps of this model: {}", names.join(", "))
}

/// `model.layers.3.mlp` -> `model.layers.*.mlp`, for listing and suggesting tap names.
fn generalize(path: &str) -> String {
    path.split('.')
        .map(|s| if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) { "*" } else { s })
        .collect::<Vec<_>>()
        .join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_matches_one_segment() {
        assert!(glob_match("model.layers.*.mlp", "model.layers.12.mlp"));
        assert!(!glob_match("model.layers.*.mlp", "model.layers.1.mlp.up_proj"));
        assert!(!glob_match("model.layers.*", "model.layers.1.mlp"));
        assert!(glob_match("model.layers.1*", "model.layers.12"));
        assert!(glob_match("logits", "logits"));
        assert!(glob_match("model.layers.*.self_attn.*_proj", "model.layers.0.self_attn.q_proj"));
    }

    #[test]
    fn generalize_replaces_indices() {
        assert_eq!(generalize("model.layers.3.mlp"), "model.layers.*.mlp");
        assert_eq!(generalize("encoder.layer.10"), "encoder.layer.*");
    }

    #[test]
    fn path_escape_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        assert!(check_inside(r, &r.join("models/x")).is_ok());
        assert!(check_inside(r, &r.join("../x")).unwrap_err().contains("leaves the repository"));
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), r.join("link")).unwrap();
        assert!(check_inside(r, &r.join("link")).unwrap_err().contains("symlink"));
    }
}
