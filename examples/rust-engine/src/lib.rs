//! A small GPT-2 (`GPT2LMHeadModel`) in plain Rust: the engine under test of this example.
//!
//! It implements the harness's engine API ([`Engine`], [`LoadedModel`] from `harness-api`) and
//! returns its intermediate activations ("taps") under HF's module names, so the harness compares
//! each of them with HF's and names the first module that diverges. Everything follows
//! transformers' modeling_gpt2.py (eager attention, float32): token + learned position
//! embeddings, pre-LayerNorm blocks, a fused `c_attn` projection, Conv1D layers (`x @ W + b`, W
//! stored `[in, out]`), `gelu_new`, a final LayerNorm and a head tied to `wte`.
//!
//! [`Gpt2Engine::with_bug`] plants a bug, to see what the harness reports when a port is wrong.

use harness_api::engine::{Engine, LoadedModel, Outputs};
use harness_api::error::{Error, Result};
use harness_api::inputs::Inputs;
use harness_api::model::ModelSpec;
use harness_api::tensor::Tensor;

/// A bug to plant in the engine (each gives it another name, so its trials are distinct).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bug {
    /// The exact (erf) GELU instead of `gelu_new`, GPT-2's tanh approximation.
    GeluErf,
    /// Attention ignores the attention mask: real tokens attend to left padding.
    IgnoreAttentionMask,
}

impl Bug {
    fn slug(self) -> &'static str {
        match self {
            Bug::GeluErf => "gelu-erf",
            Bug::IgnoreAttentionMask => "ignore-mask",
        }
    }
}

/// The engine: `my-gpt2`, or `my-gpt2+<bug>` with a planted bug.
pub struct Gpt2Engine {
    name: String,
    bug: Option<Bug>,
}

impl Gpt2Engine {
    pub fn new() -> Self {
        Gpt2Engine { name: "my-gpt2".into(), bug: None }
    }
    pub fn with_bug(bug: Bug) -> Self {
        Gpt2Engine { name: format!("my-gpt2+{}", bug.slug()), bug: Some(bug) }
    }
}

impl Default for Gpt2Engine {
    fn default() -> Self {
        Self::new()
    }
}

impl Engine for Gpt2Engine {
    fn name(&self) -> &str {
        &self.name
    }
    fn implements(&self, class: &str) -> bool {
        class == "GPT2LMHeadModel"
    }
    /// Config features this port lacks make the harness skip the model (an ignored trial that
    /// says why), rather than fail.
    fn supports(&self, model: &ModelSpec) -> std::result::Result<(), String> {
        if !self.implements(&model.class) {
            return Err(format!("only GPT2LMHeadModel, not {}", model.class));
        }
        let c = &model.config;
        let act = c.str_or("activation_function", "gelu_new").map_err(|e| e.to_string())?;
        if act != "gelu_new" {
            return Err(format!("activation_function `{act}` is not implemented (only gelu_new)"));
        }
        if c.bool_or("scale_attn_by_inverse_layer_idx", false).map_err(|e| e.to_string())? {
            return Err("scale_attn_by_inverse_layer_idx is not implemented".into());
        }
        Ok(())
    }
    fn load(&self, model: &ModelSpec) -> Result<Box<dyn LoadedModel>> {
        Ok(Box::new(Gpt2::load(model, self.bug)?))
    }
}

/// A Conv1D layer: `x @ w + b` with `w` `[inp, out]` row-major.
struct Conv1d {
    w: Vec<f32>,
    b: Vec<f32>,
    inp: usize,
    out: usize,
}

struct Norm {
    w: Vec<f32>,
    b: Vec<f32>,
}

struct Block {
    ln_1: Norm,
    c_attn: Conv1d,
    attn_proj: Conv1d,
    ln_2: Norm,
    c_fc: Conv1d,
    mlp_proj: Conv1d,
}

struct Gpt2 {
    hidden: usize,
    heads: usize,
    vocab: usize,
    positions: usize,
    eps: f32,
    wte: Vec<f32>,
    wpe: Vec<f32>,
    blocks: Vec<Block>,
    ln_f: Norm,
    /// `[vocab, hidden]`: `lm_head.weight`, or `wte` when the checkpoint ties them.
    lm_head: Vec<f32>,
    bug: Option<Bug>,
}

impl Gpt2 {
    fn load(spec: &ModelSpec, bug: Option<Bug>) -> Result<Gpt2> {
        let c = &spec.config;
        let (hidden, heads) = (c.usize("n_embd")?, c.usize("n_head")?);
        if heads == 0 || hidden % heads != 0 {
            return Err(c.err(format!("n_embd {hidden} is not a multiple of n_head {heads}")));
        }
        let inner = c.usize_or("n_inner", 4 * hidden)?;
        let (vocab, positions) = (c.usize("vocab_size")?, c.usize("n_positions")?);
        let file = spec.dir.join("model.safetensors");
        let bytes = std::fs::read(&file).map_err(|e| Error::io(&file, &e))?;
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| Error::engine(format!("not a safetensors file: {e}")).file(&file))?;
        let get = |name: &str, shape: &[usize]| -> Result<Vec<f32>> {
            let t = st.tensor(name).map_err(|e| Error::engine(format!("{name}: {e}")).file(&file))?;
            if t.dtype() != safetensors::Dtype::F32 || t.shape() != shape {
                let msg = format!("{name} is {:?} {:?}, expected F32 {shape:?}", t.dtype(), t.shape());
                return Err(Error::engine(msg).file(&file));
            }
            Ok(t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
        };
        let conv = |name: &str, inp: usize, out: usize| -> Result<Conv1d> {
            Ok(Conv1d {
                w: get(&format!("{name}.weight"), &[inp, out])?,
                b: get(&format!("{name}.bias"), &[out])?,
                inp,
                out,
            })
        };
        let norm = |name: &str| -> Result<Norm> {
            Ok(Norm { w: get(&format!("{name}.weight"), &[hidden])?, b: get(&format!("{name}.bias"), &[hidden])? })
        };
        let mut blocks = Vec::new();
        for i in 0..c.usize("n_layer")? {
            let p = format!("transformer.h.{i}");
            blocks.push(Block {
                ln_1: norm(&format!("{p}.ln_1"))?,
                c_attn: conv(&format!("{p}.attn.c_attn"), hidden, 3 * hidden)?,
                attn_proj: conv(&format!("{p}.attn.c_proj"), hidden, hidden)?,
                ln_2: norm(&format!("{p}.ln_2"))?,
                c_fc: conv(&format!("{p}.mlp.c_fc"), hidden, inner)?,
                mlp_proj: conv(&format!("{p}.mlp.c_proj"), inner, hidden)?,
            });
        }
        let wte = get("transformer.wte.weight", &[vocab, hidden])?;
        let tied = !st.names().contains(&"lm_head.weight");
        let lm_head = if tied { wte.clone() } else { get("lm_head.weight", &[vocab, hidden])? };
        Ok(Gpt2 {
            hidden,
            heads,
            vocab,
            positions,
            eps: c.f64_or("layer_norm_epsilon", 1e-5)? as f32,
            wpe: get("transformer.wpe.weight", &[positions, hidden])?,
            ln_f: norm("transformer.ln_f")?,
            wte,
            blocks,
            lm_head,
            bug,
        })
    }

    fn layer_norm(&self, x: &[f32], n: &Norm) -> Vec<f32> {
        let mut out = Vec::with_capacity(x.len());
        for row in x.chunks(self.hidden) {
            let mean = row.iter().sum::<f32>() / row.len() as f32;
            let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / row.len() as f32;
            let inv = 1.0 / (var + self.eps).sqrt();
            out.extend(row.iter().zip(&n.w).zip(&n.b).map(|((v, w), b)| (v - mean) * inv * w + b));
        }
        out
    }

    /// Causal self-attention on the fused `c_attn` output (`[batch, seq, 3 * hidden]`: q, k, v),
    /// heads concatenated, before `c_proj`.
    fn attention(&self, qkv: &[f32], inputs: &Inputs, batch: usize, seq: usize) -> Vec<f32> {
        let (hd, h3) = (self.hidden / self.heads, 3 * self.hidden);
        let scale = 1.0 / (hd as f32).sqrt();
        let mut out = vec![0.0; batch * seq * self.hidden];
        let mut probs = vec![0.0f32; seq];
        for b in 0..batch {
            // Query i sees the keys j <= i that are real tokens (attention mask 1).
            let sees = |j: usize| self.bug == Some(Bug::IgnoreAttentionMask) || inputs.is_real(b, j);
            for head in 0..self.heads {
                let (q0, k0, v0) = (head * hd, self.hidden + head * hd, 2 * self.hidden + head * hd);
                for i in 0..seq {
                    let q = &qkv[(b * seq + i) * h3 + q0..][..hd];
                    let mut max = f32::NEG_INFINITY;
                    for (j, p) in probs.iter_mut().enumerate().take(i + 1) {
                        let k = &qkv[(b * seq + j) * h3 + k0..][..hd];
                        *p = if sees(j) { dot(q, k) * scale } else { f32::NEG_INFINITY };
                        max = max.max(*p);
                    }
                    if max == f32::NEG_INFINITY {
                        continue; // A padding query that sees nothing: not compared, left zero.
                    }
                    let mut sum = 0.0;
                    for p in &mut probs[..=i] {
                        *p = (*p - max).exp();
                        sum += *p;
                    }
                    let o = &mut out[(b * seq + i) * self.hidden + q0..][..hd];
                    for (j, p) in probs[..=i].iter().enumerate() {
                        let v = &qkv[(b * seq + j) * h3 + v0..][..hd];
                        o.iter_mut().zip(v).for_each(|(o, v)| *o += p / sum * v);
                    }
                }
            }
        }
        out
    }

    fn forward(&self, inputs: &Inputs, taps: &mut Taps) -> Result<()> {
        let ids = &inputs.input_ids;
        let (b, s, h) = (ids.batch, ids.seq, self.hidden);
        if s > self.positions {
            return Err(Error::engine(format!("{s} positions, the model has {}", self.positions)));
        }
        if inputs.token_type_ids.is_some() {
            return Err(Error::engine("token_type_ids are not implemented (HF adds their `wte` rows)"));
        }
        let mut tok = Vec::with_capacity(b * s * h);
        for &id in &ids.data {
            let row = usize::try_from(id).ok().filter(|&i| i < self.vocab);
            let row = row.ok_or_else(|| Error::engine(format!("token id {id} is outside the vocabulary")))?;
            tok.extend_from_slice(&self.wte[row * h..(row + 1) * h]);
        }
        taps.put("transformer.wte", &[b, s, h], &tok)?;
        // Positions 0..seq for every row, padded or not: HF's GPT-2 forward does not derive them
        // from the attention mask (generate() does), so its `transformer.wpe` is [1, seq, hidden].
        let pos = &self.wpe[..s * h];
        taps.put("transformer.wpe", &[1, s, h], pos)?;
        let mut x: Vec<f32> = tok.iter().zip(pos.iter().cycle()).map(|(t, p)| t + p).collect();
        for (i, l) in self.blocks.iter().enumerate() {
            let p = format!("transformer.h.{i}");
            let hn = self.layer_norm(&x, &l.ln_1);
            taps.put(&format!("{p}.ln_1"), &[b, s, h], &hn)?;
            let a = conv1d(&self.attention(&conv1d(&hn, &l.c_attn), inputs, b, s), &l.attn_proj);
            taps.put(&format!("{p}.attn"), &[b, s, h], &a)?;
            x.iter_mut().zip(&a).for_each(|(x, a)| *x += a);
            let hn = self.layer_norm(&x, &l.ln_2);
            taps.put(&format!("{p}.ln_2"), &[b, s, h], &hn)?;
            let mut f = conv1d(&hn, &l.c_fc);
            let act = if self.bug == Some(Bug::GeluErf) { gelu_erf } else { gelu_new };
            f.iter_mut().for_each(|v| *v = act(*v));
            let m = conv1d(&f, &l.mlp_proj);
            taps.put(&format!("{p}.mlp"), &[b, s, h], &m)?;
            x.iter_mut().zip(&m).for_each(|(x, m)| *x += m);
            taps.put(&p, &[b, s, h], &x)?;
        }
        let x = self.layer_norm(&x, &self.ln_f);
        taps.put("transformer.ln_f", &[b, s, h], &x)?;
        if taps.wants("logits") {
            let logits: Vec<f32> =
                x.chunks(h).flat_map(|row| self.lm_head.chunks(h).map(move |w| dot(row, w))).collect();
            taps.put("logits", &[b, s, self.vocab], &logits)?;
        }
        Ok(())
    }
}

impl LoadedModel for Gpt2 {
    fn run(&self, inputs: &Inputs, taps: &[&str]) -> Result<Outputs> {
        let mut t = Taps { wanted: taps, out: Outputs::new() };
        self.forward(inputs, &mut t)?;
        Ok(t.out)
    }
    /// What this engine records; a case's other taps (e.g. `transformer.h.0.attn.c_attn`) are
    /// then not compared, with a note, instead of failing as missing.
    fn taps(&self) -> Option<Vec<String>> {
        let mut names = vec!["transformer.wte".to_string(), "transformer.wpe".to_string()];
        for i in 0..self.blocks.len() {
            names.extend(["ln_1", "attn", "ln_2", "mlp"].map(|m| format!("transformer.h.{i}.{m}")));
            names.push(format!("transformer.h.{i}"));
        }
        names.extend(["transformer.ln_f".to_string(), "logits".to_string()]);
        Some(names)
    }
}

/// The requested taps, collected during the forward pass.
struct Taps<'a> {
    wanted: &'a [&'a str],
    out: Outputs,
}

impl Taps<'_> {
    fn wants(&self, name: &str) -> bool {
        self.wanted.contains(&name)
    }
    fn put(&mut self, name: &str, shape: &[usize], data: &[f32]) -> Result<()> {
        if self.wants(name) {
            self.out.insert(name.to_string(), Tensor::new(shape.to_vec(), data.to_vec())?);
        }
        Ok(())
    }
}

/// GPT-2's Conv1D on rows of `c.inp` values: `x @ W + b`.
fn conv1d(x: &[f32], c: &Conv1d) -> Vec<f32> {
    let mut out = Vec::with_capacity(x.len() / c.inp * c.out);
    for row in x.chunks(c.inp) {
        let mut o = c.b.clone();
        for (xi, w) in row.iter().zip(c.w.chunks(c.out)) {
            o.iter_mut().zip(w).for_each(|(o, w)| *o += xi * w);
        }
        out.extend(o);
    }
    out
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(a, b)| a * b).sum()
}

/// `gelu_new`: GELU's tanh approximation, what GPT-2 was trained with.
fn gelu_new(x: f32) -> f32 {
    let c = (2.0 / std::f32::consts::PI).sqrt();
    0.5 * x * (1.0 + (c * (x + 0.044715 * x * x * x)).tanh())
}

/// The exact GELU, `x * Phi(x)` (the planted bug): close to `gelu_new`, off by up to ~1e-3.
fn gelu_erf(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x / std::f32::consts::SQRT_2))
}

/// erf (Abramowitz and Stegun 7.1.26, error < 1.5e-7): the standard library has none.
fn erf(x: f32) -> f32 {
    let t = 1.0 / (1.0 + 0.327_591_1 * x.abs() as f64);
    let poly =
        t * (0.254_829_592 + t * (-0.284_496_736 + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    let y = 1.0 - poly * (-(x as f64) * x as f64).exp();
    (if x < 0.0 { -y } else { y }) as f32
}
