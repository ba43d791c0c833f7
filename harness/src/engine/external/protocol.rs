//! The request an external engine reads and the outputs it writes back (protocol version 1,
//! documented with a worked example in docs/engine-protocol.md).
//!
//! The harness writes `request.json` and the inputs as int64 `.npy` into a fresh directory; the
//! engine writes one `.npy` per tensor, or one `.safetensors` file, into `output_dir`, under its
//! own names. The harness maps names and layouts with the engine's rules and keeps the taps it
//! asked for.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::rules::Dims;
use super::spec::{EngineSpec, OutputDtype};
use crate::case::{IdMatrix, Inputs, ModelSpec};
use crate::engine::Outputs;
use crate::error::{Error, Result, display_path};
use crate::tensor::{Tensor, parse_npy_bytes};
use harness_api::inputs::{InputData, NamedInput};

pub const PROTOCOL_VERSION: u32 = 1;
pub const REQUEST_FILE: &str = "request.json";
pub const OUTPUT_DIR: &str = "out";

#[derive(Debug, Serialize)]
pub struct Request<'a> {
    pub protocol: u32,
    pub engine: &'a str,
    pub model: RequestModel<'a>,
    /// `input_ids`, `attention_mask` / `token_type_ids` when the case gives them, and named inputs.
    pub inputs: BTreeMap<String, InputFile>,
    /// The tensors wanted, in forward order.
    pub taps: Vec<RequestTap>,
    /// Where to write the outputs (exists, empty).
    pub output_dir: PathBuf,
    /// The dtype the engine file declares for its outputs.
    pub dtype: &'static str,
}

#[derive(Debug, Serialize)]
pub struct RequestModel<'a> {
    pub id: &'a str,
    pub family: &'a str,
    /// Checkpoint directory: config.json + model.safetensors (absolute).
    pub dir: PathBuf,
    /// Storage dtype of the weights.
    pub dtype: &'a str,
    /// The effective HF config: config.json overlaid by the model spec's keys.
    pub config: &'a serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Serialize)]
pub struct InputFile {
    /// File name in the request directory.
    pub file: String,
    pub shape: Vec<usize>,
    /// numpy's name: `int64`, `float32`, `bool`.
    pub dtype: &'static str,
}

#[derive(Debug, Serialize)]
pub struct RequestTap {
    /// The HF name the harness compares.
    pub hf: String,
    /// The engine's own name for it, from its names rules run backwards; null when the rules
    /// cannot be inverted for this tap (the engine may then write the HF name itself).
    pub engine: Option<String>,
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// Write request.json and the input `.npy` files into `dir`; returns request.json's path.
pub fn write_request(
    dir: &Path,
    spec: &EngineSpec,
    model: &ModelSpec,
    inputs: &Inputs,
    taps: &[String],
) -> Result<PathBuf> {
    let files = write_inputs(dir, inputs, false)?;
    let out = dir.join(OUTPUT_DIR);
    std::fs::create_dir_all(&out).map_err(|e| Error::io(&out, &e))?;
    let req = Request {
        protocol: PROTOCOL_VERSION,
        engine: &spec.name,
        model: RequestModel {
            id: &model.id,
            family: &model.class,
            dir: absolute(&model.dir),
            dtype: model.dtype.as_str(),
            config: model.config.raw(),
        },
        inputs: files,
        taps: request_taps(spec, taps),
        output_dir: absolute(&out),
        dtype: spec.dtype.as_str(),
    };
    let path = dir.join(REQUEST_FILE);
    let text = serde_json::to_string_pretty(&req).map_err(|e| Error::engine(e.to_string()))?;
    std::fs::write(&path, text + "\n").map_err(|e| Error::io(&path, &e))?;
    Ok(path)
}

/// Write the inputs as `.npy` files into `dir`, by input name: token ids, masks and types as
/// int64, named inputs (`pixel_values`, ...) in their own dtype. `absolute`: name each file by
/// its absolute path (protocol 2, where requests are lines, not a directory). Protocol 2 also
/// gets `position_ids`: `0..seq` on every row, what HF used for the goldens (a forward without
/// position ids), padding included. A case without token ids sends none.
pub fn write_inputs(dir: &Path, inputs: &Inputs, absolute_paths: bool) -> Result<BTreeMap<String, InputFile>> {
    let mut files = BTreeMap::new();
    let mut add =
        |key: &str, shape: Vec<usize>, dtype: &'static str, write: &dyn Fn(&Path) -> Result<()>| -> Result<()> {
            let name = format!("{key}.npy");
            let path = dir.join(&name);
            write(&path)?;
            let file = if absolute_paths { absolute(&path).to_string_lossy().into_owned() } else { name };
            files.insert(key.to_string(), InputFile { file, shape, dtype });
            Ok(())
        };
    let mut ids = |key: &str, m: &IdMatrix| add(key, m.shape().to_vec(), "int64", &|p| write_npy_i64(p, m));
    if inputs.has_ids() {
        ids("input_ids", &inputs.input_ids)?;
        if let Some(m) = &inputs.attention_mask {
            ids("attention_mask", m)?;
        }
        if let Some(m) = &inputs.token_type_ids {
            ids("token_type_ids", m)?;
        }
        if absolute_paths {
            let (b, s) = (inputs.input_ids.batch, inputs.input_ids.seq);
            let data = (0..b).flat_map(|_| 0..s as i64).collect();
            ids("position_ids", &IdMatrix { batch: b, seq: s, data })?;
        }
    }
    for n in &inputs.named {
        add(&n.name, n.shape.clone(), n.data.dtype(), &|p| write_npy_named(p, n))?;
    }
    Ok(files)
}

/// The `taps` of a request: each HF name with the engine's own name from its rules.
pub fn request_taps(spec: &EngineSpec, taps: &[String]) -> Vec<RequestTap> {
    taps.iter().map(|t| RequestTap { hf: t.clone(), engine: spec.rules.to_engine(t) }).collect()
}

/// Write an int64 matrix as `.npy`.
pub fn write_npy_i64(path: &Path, m: &IdMatrix) -> Result<()> {
    write_npy_values(path, &[m.batch, m.seq], &m.data)
}

/// Write a named input as `.npy` of its own dtype.
pub fn write_npy_named(path: &Path, n: &NamedInput) -> Result<()> {
    match &n.data {
        InputData::F32(v) => write_npy_values(path, &n.shape, v),
        InputData::I64(v) => write_npy_values(path, &n.shape, v),
        InputData::Bool(v) => write_npy_values(path, &n.shape, v),
    }
}

/// `values` (C order) as a little-endian `.npy` of `shape`, in numpy's dtype for `T`.
fn write_npy_values<T: npyz::AutoSerialize + Copy>(path: &Path, shape: &[usize], values: &[T]) -> Result<()> {
    use npyz::WriterBuilder;
    let io = |e: std::io::Error| Error::io(path, &e);
    let file = std::fs::File::create(path).map_err(io)?;
    let shape: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
    let mut w = npyz::WriteOptions::new()
        .default_dtype()
        .shape(&shape)
        .writer(std::io::BufWriter::new(file))
        .begin_nd()
        .map_err(io)?;
    w.extend(values.iter().copied()).map_err(io)?;
    w.finish().map_err(io)
}

/// Where an engine tensor was found.
enum Source {
    Npy(PathBuf),
    Safetensors(PathBuf),
}

impl Source {
    fn describe(&self) -> String {
        match self {
            Source::Npy(p) => format!("`{}`", p.file_name().unwrap_or_default().to_string_lossy()),
            Source::Safetensors(file) => format!("in `{}`", file.file_name().unwrap_or_default().to_string_lossy()),
        }
    }
}

const OUTPUT_HINT: &str = "write one little-endian C-order .npy per tensor (numpy.save) or one .safetensors file; see docs/engine-protocol.md";

/// Read the engine's outputs from `out`, map them onto HF names and layouts, and return the
/// `wanted` taps. Every wanted tap must be there.
pub fn read_outputs(out: &Path, spec: &EngineSpec, wanted: &[String], dims: &Dims) -> Result<Outputs> {
    let err = |msg: String| Error::engine(msg).file(&spec.file);
    let rd = std::fs::read_dir(out).map_err(|e| Error::io(out, &e))?;
    let mut npy: Vec<(String, PathBuf)> = Vec::new();
    let mut st_files: Vec<PathBuf> = Vec::new();
    for entry in rd.flatten() {
        let p = entry.path();
        match p.extension().and_then(|e| e.to_str()) {
            Some("npy") => npy.push((p.file_stem().unwrap_or_default().to_string_lossy().into_owned(), p)),
            Some("safetensors") => st_files.push(p),
            _ => {}
        }
    }
    if st_files.len() > 1 {
        return Err(err(format!(
            "engine `{}` wrote {} .safetensors files; the protocol reads at most one",
            spec.name,
            st_files.len()
        ))
        .hint(OUTPUT_HINT));
    }
    let st_bytes = match st_files.first() {
        Some(p) => Some((p.clone(), std::fs::read(p).map_err(|e| Error::io(p, &e))?)),
        None => None,
    };
    let st = match &st_bytes {
        Some((p, b)) => Some(safetensors::SafeTensors::deserialize(b).map_err(|e| {
            err(format!(
                "engine `{}` wrote `{}`, which is not a valid safetensors file: {}",
                spec.name,
                p.file_name().unwrap_or_default().to_string_lossy(),
                crate::error::lowercase_first(&e.to_string())
            ))
            .hint(OUTPUT_HINT)
        })?),
        None => None,
    };
    // Engine name -> where it is, for every tensor the engine wrote.
    let mut found: Vec<(String, Source)> = npy.into_iter().map(|(n, p)| (n, Source::Npy(p))).collect();
    if let (Some((p, _)), Some(st)) = (&st_bytes, &st) {
        found.extend(st.iter().map(|(n, _)| (n.to_string(), Source::Safetensors(p.clone()))));
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    let mut by_hf: HashMap<String, (String, &Source)> = HashMap::new();
    for (name, src) in &found {
        // One engine tensor may be the value of several taps (a rule with a list of HF names).
        for hf in spec.rules.to_hf_all(name) {
            if !wanted.contains(&hf) {
                continue;
            }
            if let Some((other, _)) = by_hf.get(&hf) {
                return Err(err(format!(
                    "engine `{}` wrote both `{other}` and `{name}`, and both map to tap `{hf}`",
                    spec.name
                ))
                .hint("make the `names:` rules map each engine tensor to a different HF name"));
            }
            by_hf.insert(hf, (name.clone(), src));
        }
    }
    let mut outputs = Outputs::new();
    for hf in wanted {
        let Some((name, src)) = by_hf.get(hf) else {
            let expected = spec.rules.to_engine(hf).unwrap_or_else(|| hf.clone());
            let wrote: Vec<&str> = found.iter().map(|(n, _)| n.as_str()).collect();
            let wrote = match wrote.len() {
                0 => "it wrote no tensor at all".to_string(),
                n if n <= 12 => format!("it wrote: {}", wrote.join(", ")),
                n => format!("it wrote {n} tensors: {}, ...", wrote[..12].join(", ")),
            };
            return Err(err(format!(
                "engine `{}` wrote no tensor for tap `{hf}` (looked for `{expected}` as .npy or in the .safetensors file; {wrote})",
                spec.name
            ))
            .hint("check the engine's `names:` rules, or limit what it is asked for with `taps:`"));
        };
        let t = match src {
            Source::Npy(p) => read_npy_output(p, spec.dtype),
            Source::Safetensors(_) => {
                let st = st.as_ref().expect("a safetensors source implies the file");
                st.tensor(name).map_err(|e| Error::engine(e.to_string())).and_then(|v| safetensors_to_tensor(&v))
            }
        }
        .map_err(|e| {
            err(format!(
                "engine `{}`'s tensor `{name}` {} for tap `{hf}` is unreadable: {}",
                spec.name,
                src.describe(),
                e.msg
            ))
            .hint(OUTPUT_HINT)
        })?;
        if t.source_dtype != spec.dtype.as_str() {
            return Err(err(format!(
                "engine `{}`'s tensor `{name}` {} for tap `{hf}` is {}, but its engine file declares `dtype: {}`",
                spec.name,
                src.describe(),
                t.source_dtype,
                spec.dtype.as_str()
            ))
            .hint(format!(
                "write {} tensors, or change `dtype:` in {}",
                spec.dtype.as_str(),
                display_path(&spec.file)
            )));
        }
        outputs.insert(hf.clone(), spec.rules.layout(name, t, dims)?);
    }
    Ok(outputs)
}

fn read_npy_output(p: &Path, dtype: OutputDtype) -> Result<Tensor> {
    if dtype != OutputDtype::Bfloat16 {
        return crate::tensor::read_npy_owned(p, None);
    }
    let bytes = std::fs::read(p).map_err(|e| Error::io(p, &e))?;
    match parse_npy_bytes(&bytes, None) {
        // numpy has no bfloat16: a declared bfloat16 engine writes `<u2` bit patterns.
        Err(_) if dtype == OutputDtype::Bfloat16 => parse_npy_bytes(&bytes, Some("bfloat16")),
        r => r,
    }
}

fn safetensors_to_tensor(v: &safetensors::tensor::TensorView<'_>) -> Result<Tensor> {
    use safetensors::Dtype;
    let b = v.data();
    let (dtype, data): (&str, Vec<f32>) = match v.dtype() {
        Dtype::F32 => ("float32", b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()),
        Dtype::F64 => {
            ("float64", b.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32).collect())
        }
        Dtype::F16 => ("float16", b.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect()),
        Dtype::BF16 => {
            ("bfloat16", b.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect())
        }
        other => {
            return Err(Error::engine(format!("dtype {other:?} is not a float type"))
                .hint("write float32, float16, bfloat16 or float64 tensors"));
        }
    };
    let mut t = Tensor::new(v.shape().to_vec(), data)?;
    t.source_dtype = dtype.into();
    Ok(t)
}
