//! Named inputs of a case: any tensor the forward takes besides token ids (`pixel_values`,
//! `input_features`, `decoder_input_ids`, ...), given inline, as seeded random, or from a `.npy`
//! file beside the case; validated against the inputs recorded in the model's structure.json.
//! The goldens tool reads the same forms (tools/harness_goldens/spec.py); see
//! docs/cases-and-inputs.md, "Named inputs".

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_norway::Value;

use crate::error::{Result, did_you_mean};
use crate::yaml::Doc;
use harness_api::inputs::{InputData, NamedInput, SplitMix64};
use harness_api::model::ModelSpec;

/// Keys of `inputs:` that are not named inputs.
pub const TOKEN_KEYS: &[&str] = &["input_ids", "attention_mask", "token_type_ids", "text", "tokenizer"];

/// Larger inputs are refused: a case is a small reproduction, not a dataset.
const MAX_ELEMENTS: usize = 1 << 24;

/// Validate every named input of `raw` (the keys of `inputs:` that are not token keys).
pub fn validate(doc: &Doc, raw: &BTreeMap<String, Value>, model: &ModelSpec) -> Result<Vec<NamedInput>> {
    let base = doc.file.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut out: Vec<NamedInput> = Vec::new();
    for (name, v) in raw {
        let at = format!("inputs.{name}");
        let recorded = &model.structure.inputs;
        let Some(need) = recorded.iter().find(|i| &i.name == name) else {
            let names: Vec<&str> =
                recorded.iter().map(|i| i.name.as_str()).filter(|n| !TOKEN_KEYS.contains(n)).collect();
            let hint = match did_you_mean(name, names.iter().copied().chain(TOKEN_KEYS.iter().copied())) {
                Some(m) => format!("did you mean `{m}`?"),
                None if names.is_empty() => {
                    format!("{} takes token inputs only: {}", model.class, TOKEN_KEYS.join(", "))
                }
                None => format!("the forward of {} takes {}", model.class, names.join(", ")),
            };
            return Err(doc.err(&at, format!("`{name}` is not an input of {}'s forward", model.class)).hint(hint));
        };
        let input = parse(doc, &at, name, v, &need.dtype, &base)?;
        if input.shape.len() != need.rank {
            return Err(doc
                .err(
                    &at,
                    format!(
                        "`{name}` has rank {} ({:?}), the forward takes rank {}",
                        input.shape.len(),
                        input.shape,
                        need.rank
                    ),
                )
                .hint(format!("give `{name}` as a rank-{} {} tensor, batch first", need.rank, need.dtype)));
        }
        if input.data.dtype() != need.dtype {
            return Err(doc
                .err(&at, format!("`{name}` is {}, the forward takes {}", input.data.dtype(), need.dtype))
                .hint(format!("give `{name}` as {}", need.dtype)));
        }
        if let InputData::F32(d) = &input.data
            && let Some(i) = d.iter().position(|x| !x.is_finite())
        {
            return Err(doc
                .err(&at, format!("`{name}` holds a non-finite value ({}) at flat index {i}", d[i]))
                .hint("inputs must be finite: the forward of an HF model takes no NaN or infinity"));
        }
        if let Some(first) = out.first()
            && first.shape[0] != input.shape[0]
        {
            return Err(doc
                .err(&at, format!("`{name}` has a batch of {}, `{}` of {}", input.shape[0], first.name, first.shape[0]))
                .hint("every input has the same batch (first axis)"));
        }
        out.push(input);
    }
    Ok(out)
}

fn parse(doc: &Doc, at: &str, name: &str, v: &Value, dtype: &str, base: &Path) -> Result<NamedInput> {
    let named = |shape: Vec<usize>, data: InputData| -> Result<NamedInput> {
        if shape.contains(&0) || shape.is_empty() {
            return Err(doc
                .err(at, format!("`{name}` has shape {shape:?}: an input needs a batch and no empty axis"))
                .hint("e.g. `random: {shape: [1, 3, 16, 16], dtype: float32, seed: 1}`"));
        }
        Ok(NamedInput { name: name.to_string(), shape, data })
    };
    match v {
        Value::Mapping(m) if m.contains_key("random") => {
            let r: RandomInput = serde_norway::from_value(m.get("random").cloned().unwrap_or(Value::Null))
                .map_err(|e| doc.err(&format!("{at}.random"), format!("bad `random:` input: {e}")).hint(RANDOM_HINT))?;
            if m.len() != 1 {
                return Err(doc.err(at, "give `random:` alone").hint(RANDOM_HINT));
            }
            let n = count(doc, at, &r.shape)?;
            let mut g = SplitMix64::new(r.seed);
            let data = match r.dtype.as_str() {
                "float32" => {
                    let (low, high) = (r.low.unwrap_or(0.0), r.high.unwrap_or(1.0));
                    if low >= high || low.is_nan() || !low.is_finite() || !high.is_finite() {
                        return Err(
                            doc.err(&format!("{at}.random"), format!("needs finite low < high, has {low} and {high}"))
                        );
                    }
                    InputData::F32((0..n).map(|_| g.f32(low, high)).collect())
                }
                "int64" => {
                    let (Some(low), Some(high)) = (r.low, r.high) else {
                        return Err(doc
                            .err(
                                &format!("{at}.random"),
                                "an int64 random input needs `low` and `high` (high exclusive)",
                            )
                            .hint("e.g. `random: {shape: [1, 4], dtype: int64, seed: 1, low: 0, high: 100}`"));
                    };
                    if low.fract() != 0.0 || high.fract() != 0.0 || low >= high {
                        return Err(doc
                            .err(&format!("{at}.random"), format!("needs integers low < high, has {low} and {high}")));
                    }
                    InputData::I64((0..n).map(|_| g.i64(low as i64, high as i64)).collect())
                }
                "bool" => InputData::Bool((0..n).map(|_| g.bool()).collect()),
                other => {
                    return Err(doc
                        .err(&format!("{at}.random.dtype"), format!("unknown dtype `{other}`"))
                        .hint("one of float32, int64, bool"));
                }
            };
            named(r.shape, data)
        }
        Value::Mapping(m) if m.contains_key("npy") => {
            let Some(rel) = m.get("npy").and_then(Value::as_str) else {
                return Err(doc.err(&format!("{at}.npy"), "`npy:` takes a file name").hint(NPY_HINT));
            };
            if m.len() != 1 {
                return Err(doc.err(at, "give `npy:` alone").hint(NPY_HINT));
            }
            let path: PathBuf = base.join(rel);
            let (shape, data) = read_npy(&path).map_err(|msg| {
                doc.err(&format!("{at}.npy"), format!("cannot read `{name}` from {}: {msg}", path.display()))
                    .hint(NPY_HINT)
            })?;
            named(shape, data)
        }
        Value::Sequence(_) => {
            let mut shape = Vec::new();
            let mut cur = v;
            while let Value::Sequence(s) = cur {
                shape.push(s.len());
                match s.first() {
                    Some(x) => cur = x,
                    None => break,
                }
            }
            let mut flat = Vec::new();
            flatten(doc, at, v, &shape, 0, &mut flat)?;
            let data = match dtype {
                "float32" => InputData::F32(
                    flat.iter()
                        .map(|x| x.as_f64().map(|f| f as f32))
                        .collect::<Option<_>>()
                        .ok_or_else(|| doc.err(at, format!("`{name}` holds a value that is not a number")))?,
                ),
                "int64" => InputData::I64(
                    flat.iter()
                        .map(|x| x.as_i64())
                        .collect::<Option<_>>()
                        .ok_or_else(|| doc.err(at, format!("`{name}` is int64: every value must be an integer")))?,
                ),
                "bool" => InputData::Bool(
                    flat.iter()
                        .map(|x| x.as_bool())
                        .collect::<Option<_>>()
                        .ok_or_else(|| doc.err(at, format!("`{name}` is bool: every value must be true or false")))?,
                ),
                other => return Err(doc.err(at, format!("`{name}` has dtype {other}, which cannot be given inline"))),
            };
            named(shape, data)
        }
        _ => Err(doc
            .err(at, format!("`{name}` must be a nested list, `random: {{...}}` or `npy: file.npy`"))
            .hint(RANDOM_HINT)),
    }
}

const RANDOM_HINT: &str =
    "e.g. `pixel_values: {random: {shape: [1, 3, 16, 16], dtype: float32, seed: 1, low: -1.0, high: 1.0}}`";
const NPY_HINT: &str = "`npy:` names a .npy file (float32, int64 or bool, C order) relative to the case file";

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RandomInput {
    shape: Vec<usize>,
    dtype: String,
    seed: u64,
    #[serde(default)]
    low: Option<f64>,
    #[serde(default)]
    high: Option<f64>,
}

fn count(doc: &Doc, at: &str, shape: &[usize]) -> Result<usize> {
    shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).filter(|&n| n <= MAX_ELEMENTS).ok_or_else(|| {
        doc.err(at, format!("shape {shape:?} has more than {MAX_ELEMENTS} elements"))
            .hint("a case is a small reproduction: shrink the input")
    })
}

fn flatten<'a>(
    doc: &Doc,
    at: &str,
    v: &'a Value,
    shape: &[usize],
    depth: usize,
    out: &mut Vec<&'a Value>,
) -> Result<()> {
    match v {
        Value::Sequence(s) => {
            if depth >= shape.len() || s.len() != shape[depth] {
                return Err(doc
                    .err(
                        at,
                        format!(
                            "ragged nested list: an axis-{depth} list has {} entries, expected {:?}",
                            s.len(),
                            shape.get(depth)
                        ),
                    )
                    .hint("every list at the same depth has the same length"));
            }
            for x in s {
                flatten(doc, at, x, shape, depth + 1, out)?;
            }
            if out.len() > MAX_ELEMENTS {
                return Err(doc.err(at, "inline input too large").hint("put it in a .npy file (`npy: file.npy`)"));
            }
            Ok(())
        }
        x if depth == shape.len() => {
            out.push(x);
            Ok(())
        }
        _ => {
            Err(doc.err(at, format!("ragged nested list: a value where a list of {:?} was expected", shape.get(depth))))
        }
    }
}

fn read_npy(path: &Path) -> std::result::Result<(Vec<usize>, InputData), String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let npy = npyz::NpyFile::new(&bytes[..]).map_err(|e| format!("not a .npy file ({e})"))?;
    if npy.order() != npyz::Order::C {
        return Err("Fortran order; save it in C order".into());
    }
    let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    if shape.iter().product::<usize>() > MAX_ELEMENTS {
        return Err(format!("shape {shape:?} has more than {MAX_ELEMENTS} elements"));
    }
    let descr = npy.dtype().descr();
    let data = match descr.as_str() {
        "'<f4'" => InputData::F32(npy.into_vec::<f32>().map_err(|e| e.to_string())?),
        "'<i8'" => InputData::I64(npy.into_vec::<i64>().map_err(|e| e.to_string())?),
        "'|b1'" => InputData::Bool(npy.into_vec::<bool>().map_err(|e| e.to_string())?),
        other => return Err(format!("dtype {other}; use float32 (<f4), int64 (<i8) or bool (|b1)")),
    };
    Ok((shape, data))
}
