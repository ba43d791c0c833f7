//! ModernBertModel, following transformers' modeling_modernbert.py (eager attention, float32).

use candle_core::{D, Device, Tensor as CTensor};

use super::dims::modernbert::ModernBertDims;
use super::encoder::{Bugs, Lin, Norm, attend, embed, encoder_bias, pooled_taps, split_heads};
use super::ops::{apply_rope, rope_tables};
use super::{Mutation, Recorder, Weights};
use harness_api::engine::{LoadedModel, Outputs};
use harness_api::error::Result;
use harness_api::inputs::Inputs;
use harness_api::model::ModelSpec;

pub const CLASS: &str = "ModernBertModel";

struct Layer {
    /// None on layer 0, whose attn_norm is an Identity.
    attn_norm: Option<Norm>,
    wqkv: Lin,
    wo: Lin,
    mlp_norm: Norm,
    wi: Lin,
    mlp_wo: Lin,
}

pub struct ModernBert {
    d: ModernBertDims,
    tok: CTensor,
    emb_norm: Norm,
    layers: Vec<Layer>,
    final_norm: Norm,
    bugs: Bugs,
    sentence: Option<harness_api::sentence::Pipeline>,
}

impl ModernBert {
    pub fn new(spec: &ModelSpec, w: Weights, mutation: Option<Mutation>) -> Result<Self> {
        let d = ModernBertDims::from_config(&spec.config)?;
        let bugs = Bugs(mutation);
        let (h, eps, nb) = (d.hidden, d.norm_eps, d.norm_bias);
        let mut layers = Vec::with_capacity(d.layers);
        for i in 0..d.layers {
            let p = format!("layers.{i}");
            let attn_norm = if i == 0 { None } else { Some(Norm::load(&w, &format!("{p}.attn_norm"), h, nb, eps)?) };
            layers.push(Layer {
                attn_norm,
                wqkv: Lin::load(&w, &format!("{p}.attn.Wqkv"), 3 * h, h, d.attention_bias)?,
                wo: Lin::load(&w, &format!("{p}.attn.Wo"), h, h, d.attention_bias)?,
                mlp_norm: Norm::load(&w, &format!("{p}.mlp_norm"), h, nb, eps)?,
                wi: Lin::load(&w, &format!("{p}.mlp.Wi"), 2 * d.intermediate, h, d.mlp_bias)?,
                mlp_wo: Lin::load(&w, &format!("{p}.mlp.Wo"), h, d.intermediate, d.mlp_bias)?,
            });
        }
        Ok(ModernBert {
            tok: w.get("embeddings.tok_embeddings.weight", &[d.vocab, h])?,
            emb_norm: Norm::load(&w, "embeddings.norm", h, nb, eps)?,
            layers,
            final_norm: Norm::load(&w, "final_norm", h, nb, eps)?,
            d,
            bugs,
            sentence: spec.sentence.clone(),
        })
    }
}

impl LoadedModel for ModernBert {
    fn run(&self, inputs: &Inputs, taps: &[&str]) -> Result<Outputs> {
        let (d, bugs) = (&self.d, &self.bugs);
        let (b, s) = (inputs.input_ids.batch, inputs.input_ids.seq);
        let mut rec = Recorder::new(taps);

        let x = embed(&self.tok, &inputs.input_ids.data, b, s)?;
        rec.tap("embeddings.tok_embeddings", &x);
        let x = self.emb_norm.fwd(&x, bugs)?;
        rec.tap("embeddings.norm", &x);
        let mut x = bugs.dropout(&x)?;
        rec.tap("embeddings.drop", &x);
        rec.tap("embeddings", &x);

        let pos: Vec<usize> = (0..s).collect();
        let global_rope = rope_tables(&pos, d.head_dim, d.global_theta, &Device::Cpu)?;
        // Mutation: GlobalRopeOnLocal, local layers rotate with the global base.
        let local_theta = if bugs.is(&Mutation::GlobalRopeOnLocal) { d.global_theta } else { d.local_theta };
        let local_rope = rope_tables(&pos, d.head_dim, local_theta, &Device::Cpu)?;
        let global_bias = encoder_bias(inputs, None, bugs)?;
        // Mutation: NoSlidingWindow, local layers attend to every token.
        let window = if bugs.is(&Mutation::NoSlidingWindow) { None } else { Some(d.window) };
        let local_bias = encoder_bias(inputs, window, bugs)?;

        for (i, l) in self.layers.iter().enumerate() {
            let p = format!("layers.{i}");
            let ((cos, sin), bias) =
                if d.global[i] { (&global_rope, &global_bias) } else { (&local_rope, &local_bias) };
            let h = match &l.attn_norm {
                Some(n) => n.fwd(&x, bugs)?,
                None => x.clone(),
            };
            rec.tap(&format!("{p}.attn_norm"), &h);

            // Wqkv packs q, k, v along the output features (view(..., 3, heads, head_dim)).
            let qkv = l.wqkv.fwd(&h)?;
            rec.tap(&format!("{p}.attn.Wqkv"), &qkv);
            let part = |j: usize| split_heads(&qkv.narrow(D::Minus1, j * d.hidden, d.hidden)?, d.heads, d.head_dim);
            let q = apply_rope(&part(0)?, cos, sin)?;
            let k = apply_rope(&part(1)?, cos, sin)?;
            let a = l.wo.fwd(&attend(&q, &k, &part(2)?, bias, bugs)?)?;
            rec.tap(&format!("{p}.attn.Wo"), &a);
            let a = bugs.dropout(&a)?;
            rec.tap(&format!("{p}.attn.out_drop"), &a);
            rec.tap(&format!("{p}.attn"), &a);
            x = bugs.residual("attention", &x, &a)?;

            let h = l.mlp_norm.fwd(&x, bugs)?;
            rec.tap(&format!("{p}.mlp_norm"), &h);
            let wi = l.wi.fwd(&h)?;
            rec.tap(&format!("{p}.mlp.Wi"), &wi);
            // GeGLU: `input, gate = Wi(x).chunk(2)`; act(input) * gate.
            let (mut input, mut gate) =
                (wi.narrow(D::Minus1, 0, d.intermediate)?, wi.narrow(D::Minus1, d.intermediate, d.intermediate)?);
            // Mutation: GegluSwapped, the halves of Wi in the wrong order.
            if bugs.is(&Mutation::GegluSwapped) {
                std::mem::swap(&mut input, &mut gate);
            }
            let act = bugs.gelu(&input)?;
            rec.tap(&format!("{p}.mlp.act"), &act);
            let m = bugs.dropout(&(act * gate)?)?;
            rec.tap(&format!("{p}.mlp.drop"), &m);
            let m = l.mlp_wo.fwd(&m)?;
            rec.tap(&format!("{p}.mlp.Wo"), &m);
            rec.tap(&format!("{p}.mlp"), &m);
            x = bugs.residual("mlp", &x, &m)?;
            rec.tap(&p, &x);
        }
        // Mutation: NoFinalNorm.
        let x = if bugs.is(&Mutation::NoFinalNorm) { x } else { self.final_norm.fwd(&x, bugs)? };
        rec.tap("final_norm", &x);
        rec.tap("last_hidden_state", &x);
        pooled_taps(&mut rec, &x, inputs, bugs, self.sentence.as_ref())?;
        rec.finish()
    }
}
