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

/// `engine` regex -> `hf` template.
#[derive(Debug, Clone)]
pub struct NameRule {
    pub engine: String,
    pub hf: String,
    re: Regex,
    template: Vec<Piece>,
    /// Matches an HF name against the template, one group per reference (for the inverse).
    template_re: Regex,
    pub pos: Option<Pos>,
}

impl NameRule {
    pub fn new(engine: &str, hf: &str, pos: Option<Pos>) -> std::result::Result<NameRule, RuleError> {
        let re = compile(engine)?;
        let template = parse_template(hf, &re)?;
        let mut rx = String::from("^");
        for p in &template {
            match p {
                Piece::Lit(s) => rx.push_str(&regex::escape(s)),
                Piece::Group(_) => rx.push_str("(.+?)"),
            }
        }
        rx.push('$');
        let template_re = Regex::new(&rx).expect("escaped literals and plain groups always compile");
        Ok(NameRule { engine: engine.into(), hf: hf.into(), re, template, template_re, pos })
    }

    /// The HF name of engine tensor `name`, if this rule matches it.
    pub fn apply(&self, name: &str) -> Option<String> {
        let caps = self.re.captures(name)?;
        let mut out = String::new();
        for p in &self.template {
            match p {
                Piece::Lit(s) => out.push_str(s),
                Piece::Group(i) => out.push_str(caps.get(*i).map_or("", |m| m.as_str())),
            }
        }
        Some(out)
    }

    /// A candidate engine name for HF name `hf` (to be verified by the caller).
    fn invert(&self, hf: &str) -> Option<String> {
        let caps = self.template_re.captures(hf)?;
        let mut values: HashMap<usize, &str> = HashMap::new();
        let groups = self.template.iter().filter_map(|p| if let Piece::Group(i) = p { Some(*i) } else { None });
        for (k, g) in groups.enumerate() {
            let v = caps.get(k + 1)?.as_str();
            if *values.entry(g).or_insert(v) != v {
                return None;
            }
        }
        render(&self.engine, &values)
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dim {
    Size(usize),
    Infer,
    Batch,
    Seq,
}

impl<'de> serde::Deserialize<'de> for Dim {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Dim;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a size, -1, `batch` or `seq`")
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
                    other => Err(E::custom(format!("unknown dimension `{other}`: use a size, -1, `batch` or `seq`"))),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// The sizes `batch` and `seq` stand for in a reshape.
#[derive(Debug, Clone, Copy, Default)]
pub struct Dims {
    pub batch: Option<usize>,
    pub seq: Option<usize>,
}

/// `engine` regex -> layout ops, applied in the order reverse, transpose, reshape.
#[derive(Debug, Clone)]
pub struct LayoutRule {
    pub engine: String,
    re: Regex,
    pub reverse: bool,
    pub transpose: Option<(usize, usize)>,
    pub reshape: Option<Vec<Dim>>,
    pub pos: Option<Pos>,
}

impl LayoutRule {
    pub fn new(
        engine: &str,
        reverse: bool,
        transpose: Option<&[usize]>,
        reshape: Option<Vec<Dim>>,
        pos: Option<Pos>,
    ) -> std::result::Result<LayoutRule, RuleError> {
        let re = compile(engine)?;
        let transpose = match transpose {
            None => None,
            Some(&[a, b]) if a != b => Some((a, b)),
            Some(&[a, _]) => {
                return Err((
                    "transpose",
                    format!("`transpose: [{a}, {a}]` swaps an axis with itself"),
                    "give two different axes, e.g. `transpose: [1, 2]`".into(),
                ));
            }
            Some(other) => {
                return Err((
                    "transpose",
                    format!("`transpose` takes two axes, got {}", other.len()),
                    "e.g. `transpose: [1, 2]` swaps axes 1 and 2; use `reverse: true` to reverse every axis".into(),
                ));
            }
        };
        if let Some(dims) = &reshape {
            if dims.is_empty() {
                return Err((
                    "reshape",
                    "empty `reshape`".into(),
                    "give the new shape, e.g. `[batch, seq, -1]`".into(),
                ));
            }
            if dims.iter().filter(|d| **d == Dim::Infer).count() > 1 {
                return Err((
                    "reshape",
                    "more than one -1 in `reshape`".into(),
                    "only one dimension can be inferred".into(),
                ));
            }
        }
        if !reverse && transpose.is_none() && reshape.is_none() {
            return Err((
                "engine",
                format!("the layout rule for `{engine}` does nothing"),
                "give `reverse: true`, `transpose: [a, b]` or `reshape: [...]`".into(),
            ));
        }
        Ok(LayoutRule { engine: engine.into(), re, reverse, transpose, reshape, pos })
    }

    /// What the rule does, for messages.
    pub fn describe(&self) -> String {
        let mut ops = Vec::new();
        if self.reverse {
            ops.push("reverse".to_string());
        }
        if let Some((a, b)) = self.transpose {
            ops.push(format!("transpose [{a}, {b}]"));
        }
        if let Some(r) = &self.reshape {
            let d: Vec<String> = r
                .iter()
                .map(|d| match d {
                    Dim::Size(n) => n.to_string(),
                    Dim::Infer => "-1".into(),
                    Dim::Batch => "batch".into(),
                    Dim::Seq => "seq".into(),
                })
                .collect();
            ops.push(format!("reshape [{}]", d.join(", ")));
        }
        ops.join(", then ")
    }

    fn apply(&self, t: Tensor, dims: &Dims) -> std::result::Result<Tensor, String> {
        let mut t = t;
        let rank = t.shape().len();
        if self.reverse && rank > 1 {
            let perm: Vec<usize> = (0..rank).rev().collect();
            t = permuted(&t, &perm);
        }
        if let Some((a, b)) = self.transpose {
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
        if let Some(r) = &self.reshape {
            let n = t.numel();
            let mut shape = Vec::with_capacity(r.len());
            for d in r {
                shape.push(match d {
                    Dim::Size(s) => Some(*s),
                    Dim::Infer => None,
                    Dim::Batch => Some(dims.batch.ok_or("`batch` is not known here (no request inputs)")?),
                    Dim::Seq => Some(dims.seq.ok_or("`seq` is not known here (no request inputs)")?),
                });
            }
            let known = shape.iter().flatten().try_fold(1usize, |acc, &d| acc.checked_mul(d));
            let Some(known) = known else {
                return Err(format!("reshape [{}] has more elements than fit in memory", self.describe_reshape(dims)));
            };
            let shape: Vec<usize> = if shape.contains(&None) {
                if known == 0 || !n.is_multiple_of(known) {
                    return Err(format!(
                        "cannot reshape {:?} ({n} values) to [{}]",
                        t.shape(),
                        self.describe_reshape(dims)
                    ));
                }
                shape.into_iter().map(|d| d.unwrap_or(n / known)).collect()
            } else {
                shape.into_iter().flatten().collect()
            };
            let from = t.shape().to_vec();
            t = t
                .reshape(shape)
                .map_err(|_| format!("cannot reshape {from:?} ({n} values) to [{}]", self.describe_reshape(dims)))?;
        }
        Ok(t)
    }

    fn describe_reshape(&self, dims: &Dims) -> String {
        let show = |d: &Dim| match d {
            Dim::Size(n) => n.to_string(),
            Dim::Infer => "-1".into(),
            Dim::Batch => dims.batch.map_or("batch".into(), |b| b.to_string()),
            Dim::Seq => dims.seq.map_or("seq".into(), |s| s.to_string()),
        };
        self.reshape.iter().flatten().map(show).collect::<Vec<_>>().join(", ")
    }
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
        self.names.iter().find_map(|r| r.apply(name)).unwrap_or_else(|| name.to_string())
    }

    /// The engine's name for HF tap `hf`, when the rules can be run backwards.
    pub fn to_engine(&self, hf: &str) -> Option<String> {
        let candidates = self.names.iter().filter_map(|r| r.invert(hf)).chain(std::iter::once(hf.to_string()));
        candidates.into_iter().find(|c| self.to_hf(c) == hf)
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
        let dims = Dims { batch: Some(1), seq: Some(2) };
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
        let e = rs.apply(t(vec![5, 1]), &Dims { batch: Some(1), seq: Some(2) }).unwrap_err();
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
        let dims = Dims { batch: Some(1), seq: Some(2) };
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
