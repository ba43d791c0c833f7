//! BertModel, following transformers' modeling_bert.py (eager attention, float32).

use candle_core::Tensor as CTensor;

use super::dims::bert::BertDims;
use super::encoder::{Bugs, Lin, Norm, attend, embed, encoder_bias, pool_rows, pooled_taps, select_rows, split_heads};
use super::{Mutation, Recorder, Weights};
use harness_api::engine::{LoadedModel, Outputs};
use harness_api::error::Result;
use harness_api::inputs::Inputs;
use harness_api::model::ModelSpec;

pub const CLASS: &str = "BertModel";

struct Layer {
    query: Lin,
    key: Lin,
    value: Lin,
    attn_out: Lin,
    attn_norm: Norm,
    inter: Lin,
    out: Lin,
    out_norm: Norm,
}

pub struct Bert {
    d: BertDims,
    word: CTensor,
    position: CTensor,
    token_type: CTensor,
    emb_norm: Norm,
    layers: Vec<Layer>,
    pooler: Lin,
    bugs: Bugs,
    sentence: Option<harness_api::sentence::Pipeline>,
}

impl Bert {
    pub fn new(spec: &ModelSpec, w: Weights, mutation: Option<Mutation>) -> Result<Self> {
        let d = BertDims::from_config(&spec.config)?;
        let bugs = Bugs(mutation);
        let (h, eps) = (d.hidden, d.ln_eps);
        let mut layers = Vec::with_capacity(d.layers);
        for i in 0..d.layers {
            let p = format!("encoder.layer.{i}");
            layers.push(Layer {
                query: Lin::load(&w, &format!("{p}.attention.self.query"), h, h, true)?,
                key: Lin::load(&w, &format!("{p}.attention.self.key"), h, h, true)?,
                value: Lin::load(&w, &format!("{p}.attention.self.value"), h, h, true)?,
                attn_out: Lin::load(&w, &format!("{p}.attention.output.dense"), h, h, true)?,
                attn_norm: Norm::load(&w, &format!("{p}.attention.output.LayerNorm"), h, true, eps)?,
                inter: Lin::load(&w, &format!("{p}.intermediate.dense"), d.intermediate, h, true)?,
                out: Lin::load(&w, &format!("{p}.output.dense"), h, d.intermediate, true)?,
                out_norm: Norm::load(&w, &format!("{p}.output.LayerNorm"), h, true, eps)?,
            });
        }
        Ok(Bert {
            word: w.get("embeddings.word_embeddings.weight", &[d.vocab, h])?,
            position: w.get("embeddings.position_embeddings.weight", &[d.max_positions, h])?,
            token_type: w.get("embeddings.token_type_embeddings.weight", &[d.type_vocab, h])?,
            emb_norm: Norm::load(&w, "embeddings.LayerNorm", h, true, eps)?,
            layers,
            pooler: Lin::load(&w, "pooler.dense", h, h, true)?,
            d,
            bugs,
            sentence: spec.sentence.clone(),
        })
    }
}

impl LoadedModel for Bert {
    fn run(&self, inputs: &Inputs, taps: &[&str]) -> Result<Outputs> {
        let (d, bugs) = (&self.d, &self.bugs);
        let (b, s) = (inputs.input_ids.batch, inputs.input_ids.seq);
        let mut rec = Recorder::new(taps);

        // Embeddings: (word + token type) + position, LayerNorm, dropout.
        let word = embed(&self.word, &inputs.input_ids.data, b, s)?;
        rec.tap("embeddings.word_embeddings", &word);
        let zeros = vec![0i64; b * s];
        let types = inputs.token_type_ids.as_ref().map_or(&zeros[..], |t| &t.data[..]);
        let token_type = embed(&self.token_type, types, b, s)?;
        rec.tap("embeddings.token_type_embeddings", &token_type);
        let position = self.position.narrow(0, 0, s)?.unsqueeze(0)?;
        rec.tap("embeddings.position_embeddings", &position);
        let x = (word + token_type)?.broadcast_add(&position)?;
        let x = self.emb_norm.fwd(&x, bugs)?;
        rec.tap("embeddings.LayerNorm", &x);
        let mut x = bugs.dropout(&x)?;
        rec.tap("embeddings.dropout", &x);
        rec.tap("embeddings", &x);

        let bias = encoder_bias(inputs, None, bugs)?;
        for (i, l) in self.layers.iter().enumerate() {
            let p = format!("encoder.layer.{i}");
            let q = l.query.fwd(&x)?;
            rec.tap(&format!("{p}.attention.self.query"), &q);
            let k = l.key.fwd(&x)?;
            rec.tap(&format!("{p}.attention.self.key"), &k);
            let v = l.value.fwd(&x)?;
            rec.tap(&format!("{p}.attention.self.value"), &v);
            let (q, k, v) = (
                split_heads(&q, d.heads, d.head_dim)?,
                split_heads(&k, d.heads, d.head_dim)?,
                split_heads(&v, d.heads, d.head_dim)?,
            );
            let ctx = attend(&q, &k, &v, &bias, bugs)?;
            rec.tap(&format!("{p}.attention.self"), &ctx);

            // BertSelfOutput: LayerNorm(dropout(dense(ctx)) + input).
            let a = l.attn_out.fwd(&ctx)?;
            rec.tap(&format!("{p}.attention.output.dense"), &a);
            let a = bugs.dropout(&a)?;
            rec.tap(&format!("{p}.attention.output.dropout"), &a);
            let a = l.attn_norm.fwd(&bugs.residual("attention", &x, &a)?, bugs)?;
            rec.tap(&format!("{p}.attention.output.LayerNorm"), &a);
            rec.tap(&format!("{p}.attention.output"), &a);
            rec.tap(&format!("{p}.attention"), &a);

            let m = l.inter.fwd(&a)?;
            rec.tap(&format!("{p}.intermediate.dense"), &m);
            let m = bugs.gelu(&m)?;
            rec.tap(&format!("{p}.intermediate.intermediate_act_fn"), &m);
            rec.tap(&format!("{p}.intermediate"), &m);

            // BertOutput: LayerNorm(dropout(dense(m)) + attention output).
            let o = l.out.fwd(&m)?;
            rec.tap(&format!("{p}.output.dense"), &o);
            let o = bugs.dropout(&o)?;
            rec.tap(&format!("{p}.output.dropout"), &o);
            x = l.out_norm.fwd(&bugs.residual("mlp", &a, &o)?, bugs)?;
            rec.tap(&format!("{p}.output.LayerNorm"), &x);
            rec.tap(&format!("{p}.output"), &x);
            rec.tap(&p, &x);
        }
        rec.tap("encoder", &x);

        // BertPooler: tanh(dense(hidden_states[:, 0])).
        let first = select_rows(&x, &pool_rows(inputs, bugs, false))?;
        let pooled = self.pooler.fwd(&first)?;
        rec.tap("pooler.dense", &pooled);
        let pooled = pooled.tanh()?;
        rec.tap("pooler.activation", &pooled);
        rec.tap("pooler", &pooled);
        rec.tap("last_hidden_state", &x);
        pooled_taps(&mut rec, &x, inputs, bugs, self.sentence.as_ref())?;
        rec.finish()
    }
}
