//! An external engine's name and layout rules: how its tensors map onto HF tap names and HF
//! layouts.
//!
//! Name rules are regexes over the engine's tensor names with a template of the HF name
//! (`blk\.(\d+)\.attn_out` -> `model.layers.$1.self_attn`); the first rule that matches the whole
//! name wins, and a name no rule matches is taken as an HF name already. Layout rules are
//! regexes over the engine's names too (layout is a property of how the engine stores a
//! tensor); the first one that matches applies `reverse`, then `transpose`, then `reshape`.
//!
//! Rules also run backwards, to tell the engine which of its tensors the harness wants: the HF
//! name is matched against the template, the captured values are put into the regex in place of
//! its groups, and the result is kept only if the forward rules map it back to that HF name.

use std::collections::HashMap;
use std::path::PathBuf;

use regex::Regex;

use crate::error::{Error, Pos, Result};
use crate::tensor::Tensor;

/// A problem with one rule, before it is located in the engine file: (field, message, hint).
pub type RuleError = (&'static str, String, String);

/// Compile a rule's regex, anchored to the whole name.
fn compile(pattern: &str) -> std::result::Result<Regex, RuleError> {
    let bad = |e: regex::Error| {
        // regex's message is a caret diagram; its last line says what is wrong.
        let text = e.to_string();
        let last = text.lines().last().unwrap_or("").trim().trim_start_matches("error: ").to_string();
        ("engine", format!("invalid regex `{pattern}`: {last}"), "rules use Rust regex syntax (docs.rs/regex)".into())
    };
    if pattern.is_empty() {
        return Err((
            "engine",
            "empty regex".into(),
            "give the engine's tensor name, e.g. `blk\\.(\\d+)\\.attn_out`".into(),
        ));
    }
    // Compiled alone first, so that `a)|(b` cannot escape the anchoring group below.
    Regex::new(pattern).map_err(bad)?;
    Regex::new(&format!("^(?:{pattern})$")).map_err(bad)
}

/// A piece of an HF-name template: literal text or a reference to a capture group.
#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Lit(String),
    /// A group index.
    Group(usize),
}

/// Parse `$1`, `${1}`, `$name`, `${name}` and `$$` as regex's `Captures::expand` does, resolving
/// each reference to a group of `re`.
fn parse_template(t: &str, re: &Regex) -> std::result::Result<Vec<Piece>, RuleError> {
    let mut pieces = Vec::new();
    let mut lit = String::new();
    let mut rest = t;
    while let Some(i) = rest.find('$') {
        lit.push_str(&rest[..i]);
        rest = &rest[i + 1..];
        let (name, after) = if rest.starts_with('$') {
            lit.push('$');
            rest = &rest[1..];
            continue;
        } else if let Some(inner) = rest.strip_prefix('{') {
            match inner.find('}') {
                Some(j) => (&inner[..j], &inner[j + 1..]),
                None => {
                    return Err(("hf", format!("unclosed `${{` in `{t}`"), "write `${1}` or `${name}`".into()));
                }
            }
        } else {
            let n = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len());
            (&rest[..n], &rest[n..])
        };
        if name.is_empty() {
            lit.push('$');
            continue;
        }
        let group = match name.parse::<usize>() {
            Ok(i) if i > 0 && i < re.captures_len() => Some(i),
            Ok(_) => None,
            Err(_) => re.capture_names().position(|n| n == Some(name)),
        };
        let Some(group) = group else {
            let groups = re.captures_len() - 1;
            let digits = name.bytes().take_while(u8::is_ascii_digit).count();
            let hint = if digits > 0 && digits < name.len() {
                format!("write `${{{}}}{}` when text follows a group number", &name[..digits], &name[digits..])
            } else {
                match groups {
                    0 => "the regex has no capture group: add one, e.g. `blk\\.(\\d+)`".to_string(),
                    1 => "the regex has one capture group: `$1`".to_string(),
                    n => format!("the regex has {n} capture groups: `$1` to `${n}`"),
                }
            };
            return Err(("hf", format!("`${name}` in `{t}` refers to no capture group of the regex"), hint));
        };
        if !lit.is_empty() {
            pieces.push(Piece::Lit(std::mem::take(&mut lit)));
        }
        pieces.push(Piece::Group(group));
        rest = after;
    }
    lit.push_str(rest);
    if !lit.is_empty() {
        pieces.push(Piece::Lit(lit));
    }
    if pieces.is_empty() {
        return Err(("hf", "empty HF name".into(), "give the HF module path, e.g. `model.layers.$1.self_attn`".into()));
    }
    Ok(pieces)
}

/// One HF-name template of a name rule, with the regex that matches HF names against it.
#[derive(Debug, Clone)]
struct Template {
    pieces: Vec<Piece>,
    /// Matches an HF name against the template, one group per reference (for the inverse).
    re: Regex,
}

/// `engine` regex -> one or more `hf` templates: an engine tensor may be several HF taps' value
/// (llama.cpp's `attn_out-0` is HF's `self_attn` and its `o_proj`).
#[derive(Debug, Clone)]
pub struct NameRule {
    pub engine: String,
    /// The templates as written, joined by `, ` (for messages).
    pub hf: String,
    re: Regex,
    templates: Vec<Template>,
    pub pos: Option<Pos>,
}

impl NameRule {
    pub fn new(engine: &str, hf: &str, pos: Option<Pos>) -> std::result::Result<NameRule, RuleError> {
        Self::with_templates(engine, &[hf], pos)
    }

    /// A rule whose engine tensor is the value of every HF name in `hfs`.
    pub fn with_templates(engine: &str, hfs: &[&str], pos: Option<Pos>) -> std::result::Result<NameRule, RuleError> {
        let re = compile(engine)?;
        if hfs.is_empty() {
            return Err(("hf", "empty list of HF names".into(), "give at least one, e.g. `model.layers.$1`".into()));
        }
        let mut templates = Vec::new();
        for hf in hfs {
            let pieces = parse_template(hf, &re)?;
            let mut rx = String::from("^");
            for p in &pieces {
                match p {
                    Piece::Lit(s) => rx.push_str(&regex::escape(s)),
                    Piece::Group(_) => rx.push_str("(.+?)"),
                }
            }
            rx.push('$');
            let re = Regex::new(&rx).expect("escaped literals and plain groups always compile");
            templates.push(Template { pieces, re });
        }
        Ok(NameRule { engine: engine.into(), hf: hfs.join(", "), re, templates, pos })
    }

    /// The HF name of engine tensor `name`, if this rule matches it (the first template).
    pub fn apply(&self, name: &str) -> Option<String> {
        self.apply_all(name).into_iter().next()
    }

    /// Every HF name engine tensor `name` stands for, if this rule matches it.
    pub fn apply_all(&self, name: &str) -> Vec<String> {
        let Some(caps) = self.re.captures(name) else { return vec![] };
        self.templates
            .iter()
            .map(|t| {
                let mut out = String::new();
                for p in &t.pieces {
                    match p {
                        Piece::Lit(s) => out.push_str(s),
                        Piece::Group(i) => out.push_str(caps.get(*i).map_or("", |m| m.as_str())),
                    }
                }
                out
            })
            .collect()
    }

    /// Candidate engine names for HF name `hf` (to be verified by the caller).
    fn invert(&self, hf: &str) -> Vec<String> {
        self.templates.iter().filter_map(|t| Self::invert_one(t, &self.engine, hf)).collect()
    }

    fn invert_one(t: &Template, engine: &str, hf: &str) -> Option<String> {
        let caps = t.re.captures(hf)?;
        let mut values: HashMap<usize, &str> = HashMap::new();
        let groups = t.pieces.iter().filter_map(|p| if let Piece::Group(i) = p { Some(*i) } else { None });
        for (k, g) in groups.enumerate() {
            let v = caps.get(k + 1)?.as_str();
            if *values.entry(g).or_insert(v) != v {
                return None;
            }
        }
        render(engine, &values)
    }
}

/// The text a "simple" regex (literals, escaped punctuation, capture groups whose values are
/// known, `^`/`$` at the ends) matches; None for anything else.
fn render(pattern: &str, values: &HashMap<usize, &str>) -> Option<String> {
    let c: Vec<char> = pattern.chars().collect();
    let mut out = String::new();
    let mut group = 0;
    let mut i = 0;
    while i < c.len() {
        match c[i] {
            '\\' => {
                let next = *c.get(i + 1)?;
                if !next.is_ascii_punctuation() {
                    return None;
                }
                out.push(next);
                i += 2;
            }
            '(' => {
                if c.get(i + 1) == Some(&'?') && !named_group(&c, i) {
                    return None;
                }
                group += 1;
                let value = values.get(&group)?;
                i = skip_group(&c, i, &mut group)? + 1;
                out.push_str(value);
            }
            '^' if i == 0 => i += 1,
            '$' if i + 1 == c.len() => i += 1,
            '.' | '*' | '+' | '?' | '[' | ']' | '{' | '}' | '|' | ')' | '^' | '$' => return None,
            ch => {
                out.push(ch);
                i += 1;
            }
        }
    }
    Some(out)
}

fn named_group(c: &[char], i: usize) -> bool {
    let s: String = c[i..c.len().min(i + 4)].iter().collect();
    s.starts_with("(?P<") || (s.starts_with("(?<") && c.get(i + 3).is_some_and(|&x| x != '=' && x != '!'))
}

/// The index of the `)` closing the group opened at `start`; counts the capture groups nested
/// inside into `group`.
fn skip_group(c: &[char], start: usize, group: &mut usize) -> Option<usize> {
    let (mut depth, mut i, mut class) = (0usize, start, false);
    while i < c.len() {
        let ch = c[i];
        if ch == '\\' {
            i += 2;
            continue;
        }
        if class {
            class = ch != ']';
        } else {
            match ch {
                '[' => class = true,
                '(' => {
                    depth += 1;
                    if i != start && (c.get(i + 1) != Some(&'?') || named_group(c, i)) {
                        *group += 1;
                    }
                }
                ')' => {
                    depth -= 1;
                    if depth == 0 {
                        return Some(i);
                    }
                }
                _ => {}
            }
        }
        i += 1;
    }
    None
}

/// One dimension of a `reshape`: a size, `-1` (inferred, at most one), or the request's batch
/// size or sequence length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dim {
    Size(usize),
    Infer,
    Batch,
    Seq,
    /// An integer of the model's config, divided by `div` (`head_dim/2`, `num_attention_heads`).
    Var {
        key: String,
        div: usize,
    },
}

impl<'de> serde::Deserialize<'de> for Dim {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Dim;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a size, -1, `batch`, `seq` or a config integer such as `config.head_dim/2`")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> std::result::Result<Dim, E> {
                match v {
                    -1 => Ok(Dim::Infer),
                    v if v >= 0 => Ok(Dim::Size(v as usize)),
                    v => Err(E::custom(format!("dimension {v} is negative: use -1 to infer one dimension"))),
                }
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> std::result::Result<Dim, E> {
                usize::try_from(v).map(Dim::Size).map_err(|_| E::custom(format!("dimension {v} is too large")))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<Dim, E> {
                match v {
                    "batch" => Ok(Dim::Batch),
                    "seq" => Ok(Dim::Seq),
                    other => {
                        let var = other.strip_prefix("config.").map(|rest| match rest.split_once('/') {
                            Some((k, d)) => (k.trim(), d.trim().parse::<usize>().ok().filter(|d| *d > 0)),
                            None => (rest.trim(), Some(1)),
                        });
                        match var {
                            Some((key, Some(div)))
                                if !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') =>
                            {
                                Ok(Dim::Var { key: key.to_string(), div })
                            }
                            _ => Err(E::custom(format!(
                                "unknown dimension `{other}`: use a size, -1, `batch`, `seq` or a config integer \
                                 `config.<key>`, optionally divided (`config.head_dim/2`)"
                            ))),
                        }
                    }
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// The sizes `batch` and `seq` stand for in a reshape, and the model config's integers (plus
/// `head_dim` = hidden_size / num_attention_heads when the config has none).
#[derive(Debug, Clone, Default)]
pub struct Dims {
    pub batch: Option<usize>,
    pub seq: Option<usize>,
    pub vars: HashMap<String, usize>,
}

impl Dims {
    pub fn new(batch: Option<usize>, seq: Option<usize>) -> Dims {
        Dims { batch, seq, vars: HashMap::new() }
    }
    /// With the integer keys of a model's config (the effective HF config).
    pub fn with_config(mut self, config: &serde_json::Map<String, serde_json::Value>) -> Dims {
        for (k, v) in config {
            if let Some(n) = v.as_u64().and_then(|n| usize::try_from(n).ok()) {
                self.vars.insert(k.clone(), n);
            }
        }
        if !self.vars.contains_key("head_dim")
            && let (Some(h), Some(n)) = (self.vars.get("hidden_size"), self.vars.get("num_attention_heads"))
            && *n > 0
        {
            self.vars.insert("head_dim".into(), h / n);
        }
        self
    }
}

/// One layout op.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// Reverse every axis (ggml's dimension order).
    Reverse,
    Transpose(usize, usize),
    Reshape(Vec<Dim>),
}

fn show_dim(d: &Dim, dims: Option<&Dims>) -> String {
    match d {
        Dim::Size(n) => n.to_string(),
        Dim::Infer => "-1".into(),
        Dim::Batch => dims.and_then(|d| d.batch).map_or("batch".into(), |b| b.to_string()),
        Dim::Seq => dims.and_then(|d| d.seq).map_or("seq".into(), |s| s.to_string()),
        Dim::Var { key, div } => {
            let v = dims.and_then(|d| d.vars.get(key)).map(|v| v / div);
            match (v, div) {
                (Some(v), _) => v.to_string(),
                (None, 1) => format!("config.{key}"),
                (None, d) => format!("config.{key}/{d}"),
            }
        }
    }
}

/// `engine` regex -> layout ops, applied in order (`reverse`, `transpose`, `reshape` keys: in
/// that order; `ops:` any sequence).
#[derive(Debug, Clone)]
pub struct LayoutRule {
    pub engine: String,
    re: Regex,
    pub ops: Vec<Op>,
    pub pos: Option<Pos>,
}

fn check_op(op: &Op) -> std::result::Result<(), RuleError> {
    match op {
        Op::Reverse => Ok(()),
        Op::Transpose(a, b) if a == b => Err((
            "transpose",
            format!("`transpose: [{a}, {a}]` swaps an axis with itself"),
            "give two different axes, e.g. `transpose: [1, 2]`".into(),
        )),
        Op::Transpose(..) => Ok(()),
        Op::Reshape(dims) if dims.is_empty() => {
            Err(("reshape", "empty `reshape`".into(), "give the new shape, e.g. `[batch, seq, -1]`".into()))
        }
        Op::Reshape(dims) if dims.iter().filter(|d| **d == Dim::Infer).count() > 1 => {
            Err(("reshape", "more than one -1 in `reshape`".into(), "only one dimension can be inferred".into()))
        }
        Op::Reshape(_) => Ok(()),
    }
}

/// `transpose: [a, b]` as an op.
pub fn transpose_op(axes: &[usize]) -> std::result::Result<Op, RuleError> {
    match axes {
        &[a, b] => Ok(Op::Transpose(a, b)),
        other => Err((
            "transpose",
            format!("`transpose` takes two axes, got {}", other.len()),
            "e.g. `transpose: [1, 2]` swaps axes 1 and 2; use `reverse: true` to reverse every axis".into(),
        )),
    }
}

impl LayoutRule {
    /// The `reverse` / `transpose` / `reshape` form: those that are given, in that order.
    pub fn new(
        engine: &str,
        reverse: bool,
        transpose: Option<&[usize]>,
        reshape: Option<Vec<Dim>>,
        pos: Option<Pos>,
    ) -> std::result::Result<LayoutRule, RuleError> {
        let mut ops = Vec::new();
        if reverse {
            ops.push(Op::Reverse);
        }
        if let Some(axes) = transpose {
            ops.push(transpose_op(axes)?);
        }
        if let Some(r) = reshape {
            ops.push(Op::Reshape(r));
        }
        Self::with_ops(engine, ops, pos)
    }

    /// Ops applied in the order given.
    pub fn with_ops(engine: &str, ops: Vec<Op>, pos: Option<Pos>) -> std::result::Result<LayoutRule, RuleError> {
        let re = compile(engine)?;
        if ops.is_empty() {
            return Err((
                "engine",
                format!("the layout rule for `{engine}` does nothing"),
                "give `reverse: true`, `transpose: [a, b]`, `reshape: [...]` or `ops: [...]`".into(),
            ));
        }
        for op in &ops {
            check_op(op)?;
        }
        Ok(LayoutRule { engine: engine.into(), re, ops, pos })
    }

    fn describe_with(&self, dims: Option<&Dims>) -> String {
        let ops: Vec<String> = self
            .ops
            .iter()
            .map(|op| match op {
                Op::Reverse => "reverse".to_string(),
                Op::Transpose(a, b) => format!("transpose [{a}, {b}]"),
                Op::Reshape(r) => {
                    format!("reshape [{}]", r.iter().map(|d| show_dim(d, dims)).collect::<Vec<_>>().join(", "))
                }
            })
            .collect();
        ops.join(", then ")
    }

    /// What the rule does, for messages.
    pub fn describe(&self) -> String {
        self.describe_with(None)
    }

    fn apply(&self, t: Tensor, dims: &Dims) -> std::result::Result<Tensor, String> {
        let mut t = t;
        for op in &self.ops {
            let rank = t.shape().len();
            match op {
                Op::Reverse if rank > 1 => {
                    let perm: Vec<usize> = (0..rank).rev().collect();
                    t = permuted(&t, &perm);
                }
                Op::Reverse => {}
                Op::Transpose(a, b) => {
                    let (a, b) = (*a, *b);
                    if a.max(b) >= rank {
                        return Err(format!(
                            "`transpose: [{a}, {b}]` needs {} axes, the tensor has shape {:?}",
                            a.max(b) + 1,
                            t.shape()
                        ));
                    }
                    let mut perm: Vec<usize> = (0..rank).collect();
                    perm.swap(a, b);
                    t = permuted(&t, &perm);
                }
                Op::Reshape(r) => t = reshape(t, r, dims)?,
            }
        }
        Ok(t)
    }
}

fn reshape(t: Tensor, r: &[Dim], dims: &Dims) -> std::result::Result<Tensor, String> {
    let described = || r.iter().map(|d| show_dim(d, Some(dims))).collect::<Vec<_>>().join(", ");
    let n = t.numel();
    let mut shape = Vec::with_capacity(r.len());
    for d in r {
        shape.push(match d {
            Dim::Size(s) => Some(*s),
            Dim::Infer => None,
            Dim::Batch => Some(dims.batch.ok_or("`batch` is not known here (no request inputs)")?),
            Dim::Seq => Some(dims.seq.ok_or("`seq` is not known here (no request inputs)")?),
            Dim::Var { key, div } => {
                let v = dims.vars.get(key).ok_or_else(|| format!("the model's config has no integer `{key}`"))?;
                if v % div != 0 {
                    return Err(format!("`{key}` = {v} is not divisible by {div}"));
                }
                Some(v / div)
            }
        });
    }
    let known = shape.iter().flatten().try_fold(1usize, |acc, &d| acc.checked_mul(d));
    let Some(known) = known else {
        return Err(format!("reshape [{}] has more elements than fit in memory", described()));
    };
    let shape: Vec<usize> = if shape.contains(&None) {
        if known == 0 || !n.is_multiple_of(known) {
            return Err(format!("cannot reshape {:?} ({n} values) to [{}]", t.shape(), described()));
        }
        shape.into_iter().map(|d| d.unwrap_or(n / known)).collect()
    } else {
        shape.into_iter().flatten().collect()
    };
    let from = t.shape().to_vec();
    t.reshape(shape).map_err(|_| format!("cannot reshape {from:?} ({n} values) to [{}]", described()))
}

fn permuted(t: &Tensor, perm: &[usize]) -> Tensor {
    let (data, shape) = crate::tensor::permute(t.data(), t.shape(), perm);
    Tensor::new(shape, data).expect("a permutation keeps the element count")
}

/// Every rule of one engine file.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    pub names: Vec<NameRule>,
    pub layouts: Vec<LayoutRule>,
    /// The engine file, for errors.
    pub file: PathBuf,
}

impl Rules {
    /// The HF name of engine tensor `name`: the first name rule that matches, else `name` itself.
    pub fn to_hf(&self, name: &str) -> String {
        self.to_hf_all(name).swap_remove(0)
    }

    /// Every HF name engine tensor `name` stands for (the first matching rule's), else `name`.
    pub fn to_hf_all(&self, name: &str) -> Vec<String> {
        self.names.iter().map(|r| r.apply_all(name)).find(|v| !v.is_empty()).unwrap_or_else(|| vec![name.to_string()])
    }

    /// The engine's name for HF tap `hf`, when the rules can be run backwards.
    pub fn to_engine(&self, hf: &str) -> Option<String> {
        let candidates = self.names.iter().flat_map(|r| r.invert(hf)).chain(std::iter::once(hf.to_string()));
        candidates.into_iter().find(|c| self.to_hf_all(c).iter().any(|h| h == hf))
    }

    /// Engine tensor `name` in HF layout (the first layout rule that matches it, if any).
    pub fn layout(&self, name: &str, t: Tensor, dims: &Dims) -> Result<Tensor> {
        let Some(rule) = self.layouts.iter().find(|r| r.re.is_match(name)) else { return Ok(t) };
        let shape = t.shape().to_vec();
        rule.apply(t, dims).map_err(|m| {
            Error::engine(format!(
                "layout rule `{}` ({}) on tensor `{name}` of shape {shape:?}: {m}",
                rule.engine,
                rule.describe()
            ))
            .file(&self.file)
            .at(rule.pos)
            .hint("fix the layout rule, or the shape the engine writes")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(e: &str, h: &str) -> NameRule {
        NameRule::new(e, h, None).unwrap()
    }

    fn rules(names: &[(&str, &str)]) -> Rules {
        Rules { names: names.iter().map(|(e, h)| rule(e, h)).collect(), ..Default::default() }
    }

    #[test]
    fn names_map_with_captures_first_rule_wins() {
        let r = rules(&[
            (r"blk\.(\d+)\.attn_out", "model.layers.$1.self_attn"),
            (r"blk\.(\d+)\.attn_(q|k|v|o)", "model.layers.$1.self_attn.${2}_proj"),
            (r"blk\.(?P<layer>\d+)\.(.*)", "model.layers.${layer}.$2"),
        ]);
        assert_eq!(r.to_hf("blk.12.attn_out"), "model.layers.12.self_attn");
        assert_eq!(r.to_hf("blk.0.attn_k"), "model.layers.0.self_attn.k_proj");
        assert_eq!(r.to_hf("blk.3.mlp"), "model.layers.3.mlp");
        // Anchored: a prefix match is no match, and unmatched names are HF names already.
        assert_eq!(r.to_hf("xblk.1.attn_out"), "xblk.1.attn_out");
        assert_eq!(r.to_hf("logits"), "logits");
    }

    #[test]
    fn names_run_backwards_only_when_verified() {
        let r = rules(&[
            (r"blk\.(\d+)\.attn_out", "model.layers.$1.self_attn"),
            (r"blk\.(\d+)\.attn_(q|k|v|o)", "model.layers.$1.self_attn.${2}_proj"),
            (r"^token_embd$", "model.embed_tokens"),
            (r"out\.[a-z]+", "model.norm"),
        ]);
        assert_eq!(r.to_engine("model.layers.7.self_attn").as_deref(), Some("blk.7.attn_out"));
        assert_eq!(r.to_engine("model.layers.0.self_attn.v_proj").as_deref(), Some("blk.0.attn_v"));
        assert_eq!(r.to_engine("model.embed_tokens").as_deref(), Some("token_embd"));
        // `x` is not `\d+`: the candidate does not map back.
        assert_eq!(r.to_engine("model.layers.x.self_attn"), Some("model.layers.x.self_attn".into()));
        // `[a-z]+` has no known text: the engine is told the HF name, which it may also write.
        assert_eq!(r.to_engine("model.norm").as_deref(), Some("model.norm"));
        assert_eq!(r.to_engine("logits").as_deref(), Some("logits"));
        // ... unless another rule captures that name.
        let r = rules(&[(r"out\.[a-z]+", "model.norm"), (r"model\.(.*)", "m.$1")]);
        assert_eq!(r.to_engine("model.norm"), None);
    }

    #[test]
    fn bad_templates_and_regexes_are_explained() {
        let err = |e: &str, h: &str| NameRule::new(e, h, None).unwrap_err();
        let (field, msg, hint) = err(r"blk\.(\d+)\.ffn_(up|down)", "model.layers.$1.mlp.$2_proj");
        assert_eq!(field, "hf");
        assert!(msg.contains("`$2_proj`"), "{msg}");
        assert!(hint.contains("`${2}_proj`"), "{hint}");
        let (field, msg, _) = err(r"blk\.(\d+", "x");
        assert_eq!(field, "engine");
        assert!(msg.contains("invalid regex") && msg.contains("unclosed group"), "{msg}");
        assert_eq!(err(r"a)|(b", "x").0, "engine");
        assert!(err(r"blk\.(\d+)", "model.layers.$2").1.contains("refers to no capture group"));
    }

    fn t(shape: Vec<usize>) -> Tensor {
        let n = shape.iter().product();
        Tensor::new(shape, (0..n).map(|v| v as f32).collect()).unwrap()
    }

    #[test]
    fn layouts_reverse_transpose_reshape() {
        let dims = Dims::new(Some(1), Some(2));
        let rev = LayoutRule::new(r"blk\..*", true, None, None, None).unwrap();
        // ggml [hidden=3, seq=2] -> [2, 3].
        let out = rev.apply(t(vec![3, 2]), &dims).unwrap();
        assert_eq!(out.shape(), &[2, 3]);
        assert_eq!(out.data(), &[0., 2., 4., 1., 3., 5.]);
        let tr = LayoutRule::new("x", false, Some(&[0, 2]), None, None).unwrap();
        let out = tr.apply(t(vec![2, 1, 3]), &dims).unwrap();
        assert_eq!(out.shape(), &[3, 1, 2]);
        assert_eq!(out.data(), &[0., 3., 1., 4., 2., 5.]);
        let rs = LayoutRule::new("x", true, None, Some(vec![Dim::Batch, Dim::Seq, Dim::Infer]), None).unwrap();
        let out = rs.apply(t(vec![3, 2]), &dims).unwrap();
        assert_eq!(out.shape(), &[1, 2, 3]);
        assert_eq!(out.data(), &[0., 2., 4., 1., 3., 5.]);
        let huge = LayoutRule::new("x", false, None, Some(vec![Dim::Size(usize::MAX), Dim::Size(2)]), None).unwrap();
        assert!(huge.apply(t(vec![2]), &dims).unwrap_err().contains("more elements than fit"));
        let e = rs.apply(t(vec![5, 1]), &Dims::new(Some(1), Some(2))).unwrap_err();
        assert!(e.contains("cannot reshape [1, 5]") && e.contains("[1, 2, -1]"), "{e}");
        assert!(tr.apply(t(vec![2, 3]), &dims).unwrap_err().contains("needs 3 axes"));
    }

    #[test]
    fn bad_layout_rules_are_refused() {
        assert_eq!(LayoutRule::new("x", false, None, None, None).unwrap_err().0, "engine");
        assert!(LayoutRule::new("x", false, Some(&[1, 1]), None, None).unwrap_err().1.contains("itself"));
        assert!(LayoutRule::new("x", false, Some(&[0, 1, 2]), None, None).unwrap_err().1.contains("two axes"));
        let two = Some(vec![Dim::Infer, Dim::Infer]);
        assert!(LayoutRule::new("x", false, None, two, None).unwrap_err().1.contains("more than one -1"));
    }

    #[test]
    fn first_matching_layout_rule_applies_and_errors_are_located() {
        let r = Rules {
            layouts: vec![
                LayoutRule::new(
                    "rope_cos",
                    false,
                    None,
                    Some(vec![Dim::Size(1), Dim::Seq, Dim::Infer]),
                    Some(Pos { line: 9, col: 5 }),
                )
                .unwrap(),
                LayoutRule::new(".*", true, None, None, None).unwrap(),
            ],
            file: "cases/engines/x.yaml".into(),
            ..Default::default()
        };
        let dims = Dims::new(Some(1), Some(2));
        assert_eq!(r.layout("rope_cos", t(vec![2, 4]), &dims).unwrap().shape(), &[1, 2, 4]);
        assert_eq!(r.layout("blk.0.x", t(vec![4, 2]), &dims).unwrap().shape(), &[2, 4]);
        let e = r.layout("rope_cos", t(vec![3, 3]), &dims).unwrap_err().to_string();
        assert!(
            e.starts_with(
                "cases/engines/x.yaml:9:5: layout rule `rope_cos` (reshape [1, seq, -1]) on tensor `rope_cos`"
            ),
            "{e}"
        );
    }
}

#[cfg(test)]
mod ops_tests {
    use super::*;

    fn t(shape: Vec<usize>) -> Tensor {
        let n = shape.iter().product();
        Tensor::new(shape, (0..n).map(|v| v as f32).collect()).unwrap()
    }

    #[test]
    fn one_engine_tensor_feeds_every_hf_name_of_its_rule() {
        let r = Rules {
            names: vec![
                NameRule::with_templates(
                    r"attn_out-(\d+)",
                    &["model.layers.$1.self_attn", "model.layers.$1.self_attn.o_proj"],
                    None,
                )
                .unwrap(),
            ],
            ..Default::default()
        };
        assert_eq!(r.to_hf_all("attn_out-3"), vec!["model.layers.3.self_attn", "model.layers.3.self_attn.o_proj"]);
        assert_eq!(r.to_engine("model.layers.3.self_attn.o_proj").as_deref(), Some("attn_out-3"));
        assert_eq!(r.to_engine("model.layers.3.self_attn").as_deref(), Some("attn_out-3"));
        assert_eq!(r.to_hf_all("other"), vec!["other"]);
    }

    /// Undoing llama.cpp's interleaved RoPE pairs needs reverse, reshape, transpose, reshape.
    #[test]
    fn ops_apply_in_order_with_config_sizes() {
        let ops = vec![
            Op::Reverse,
            Op::Reshape(vec![
                Dim::Batch,
                Dim::Seq,
                Dim::Infer,
                Dim::Var { key: "head_dim".into(), div: 2 },
                Dim::Size(2),
            ]),
            Op::Transpose(3, 4),
            Op::Reshape(vec![Dim::Batch, Dim::Seq, Dim::Infer]),
        ];
        let rule = LayoutRule::with_ops("q", ops, None).unwrap();
        let mut config = serde_json::Map::new();
        config.insert("hidden_size".into(), 8.into());
        config.insert("num_attention_heads".into(), 2.into());
        let dims = Dims::new(Some(1), Some(1)).with_config(&config);
        assert_eq!(dims.vars["head_dim"], 4);
        // ggml [hidden=8, seq=1, batch=1]; per head, pairs (0,1),(2,3) -> halves.
        let out = rule.apply(t(vec![8, 1, 1]), &dims).unwrap();
        assert_eq!(out.shape(), &[1, 1, 8]);
        assert_eq!(out.data(), &[0., 2., 1., 3., 4., 6., 5., 7.]);
        assert_eq!(
            rule.describe(),
            "reverse, then reshape [batch, seq, -1, config.head_dim/2, 2], then transpose [3, 4], then reshape [batch, seq, -1]"
        );
        let e = rule.apply(t(vec![8, 1, 1]), &Dims::new(Some(1), Some(1))).unwrap_err();
        assert!(e.contains("no integer `head_dim`"), "{e}");
        assert!(LayoutRule::with_ops("q", vec![], None).is_err());
    }
}
