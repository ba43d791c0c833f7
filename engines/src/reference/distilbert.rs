//! DistilBertForSequenceClassification, following transformers' modeling_distilbert.py (eager
//! attention, float32).

use candle_core::Tensor as CTensor;

use super::dims::distilbert::{DistilBertDims, LN_EPS};
use super::encoder::{Bugs, Lin, Norm, attend, embed, encoder_bias, pool_rows, select_rows, split_heads};
use super::{Mutation, Recorder, Weights};
use harness_api::engine::{LoadedModel, Outputs};
use harness_api::error::Result;
use harness_api::inputs::Inputs;
use harness_api::model::ModelSpec;

pub const CLASS: &str = "DistilBertForSequenceClassification";

struct Layer {
    q: Lin,
    k: Lin,
    v: Lin,
    out: Lin,
    sa_norm: Norm,
    lin1: Lin,
    lin2: Lin,
    out_norm: Norm,
}

pub struct DistilBert {
    d: DistilBertDims,
    word: CTensor,
    position: CTensor,
    emb_norm: Norm,
    layers: Vec<Layer>,
    pre_classifier: Lin,
    classifier: Lin,
    bugs: Bugs,
}

impl DistilBert {
    pub fn new(spec: &ModelSpec, w: Weights, mutation: Option<Mutation>) -> Result<Self> {
        let d = DistilBertDims::from_config(&spec.config)?;
        let bugs = Bugs(mutation);
        let h = d.dim;
        let mut layers = Vec::with_capacity(d.layers);
        for i in 0..d.layers {
            let p = format!("distilbert.transformer.layer.{i}");
            layers.push(Layer {
                q: Lin::load(&w, &format!("{p}.attention.q_lin"), h, h, true)?,
                k: Lin::load(&w, &format!("{p}.attention.k_lin"), h, h, true)?,
                v: Lin::load(&w, &format!("{p}.attention.v_lin"), h, h, true)?,
                out: Lin::load(&w, &format!("{p}.attention.out_lin"), h, h, true)?,
                sa_norm: Norm::load(&w, &format!("{p}.sa_layer_norm"), h, true, LN_EPS)?,
                lin1: Lin::load(&w, &format!("{p}.ffn.lin1"), d.hidden_dim, h, true)?,
                lin2: Lin::load(&w, &format!("{p}.ffn.lin2"), h, d.hidden_dim, true)?,
                out_norm: Norm::load(&w, &format!("{p}.output_layer_norm"), h, true, LN_EPS)?,
            });
        }
        Ok(DistilBert {
            word: w.get("distilbert.embeddings.word_embeddings.weight", &[d.vocab, h])?,
            position: w.get("distilbert.embeddings.position_embeddings.weight", &[d.max_positions, h])?,
            emb_norm: Norm::load(&w, "distilbert.embeddings.LayerNorm", h, true, LN_EPS)?,
            layers,
            pre_classifier: Lin::load(&w, "pre_classifier", h, h, true)?,
            classifier: Lin::load(&w, "classifier", d.num_labels, h, true)?,
            d,
            bugs,
        })
    }
}

impl LoadedModel for DistilBert {
    fn run(&self, inputs: &Inputs, taps: &[&str]) -> Result<Outputs> {
        let (d, bugs) = (&self.d, &self.bugs);
        let (b, s) = (inputs.input_ids.batch, inputs.input_ids.seq);
        let mut rec = Recorder::new(taps);

        let word = embed(&self.word, &inputs.input_ids.data, b, s)?;
        rec.tap("distilbert.embeddings.word_embeddings", &word);
        let position = self.position.narrow(0, 0, s)?.unsqueeze(0)?;
        rec.tap("distilbert.embeddings.position_embeddings", &position);
        let x = self.emb_norm.fwd(&word.broadcast_add(&position)?, bugs)?;
        rec.tap("distilbert.embeddings.LayerNorm", &x);
        let mut x = bugs.dropout(&x)?;
        rec.tap("distilbert.embeddings.dropout", &x);
        rec.tap("distilbert.embeddings", &x);

        // Padding keys get the dtype minimum added to their scores (create_bidirectional_mask).
        let bias = encoder_bias(inputs, None, bugs)?;
        for (i, l) in self.layers.iter().enumerate() {
            let p = format!("distilbert.transformer.layer.{i}");
            let q = l.q.fwd(&x)?;
            rec.tap(&format!("{p}.attention.q_lin"), &q);
            let k = l.k.fwd(&x)?;
            rec.tap(&format!("{p}.attention.k_lin"), &k);
            let v = l.v.fwd(&x)?;
            rec.tap(&format!("{p}.attention.v_lin"), &v);
            let (q, k, v) = (
                split_heads(&q, d.heads, d.head_dim)?,
                split_heads(&k, d.heads, d.head_dim)?,
                split_heads(&v, d.heads, d.head_dim)?,
            );
            let a = l.out.fwd(&attend(&q, &k, &v, &bias, bugs)?)?;
            rec.tap(&format!("{p}.attention.out_lin"), &a);
            rec.tap(&format!("{p}.attention"), &a);
            let a = l.sa_norm.fwd(&bugs.residual("attention", &x, &a)?, bugs)?;
            rec.tap(&format!("{p}.sa_layer_norm"), &a);

            let f = l.lin1.fwd(&a)?;
            rec.tap(&format!("{p}.ffn.lin1"), &f);
            let f = bugs.gelu(&f)?;
            rec.tap(&format!("{p}.ffn.activation"), &f);
            let f = l.lin2.fwd(&f)?;
            rec.tap(&format!("{p}.ffn.lin2"), &f);
            let f = bugs.dropout(&f)?;
            rec.tap(&format!("{p}.ffn.dropout"), &f);
            rec.tap(&format!("{p}.ffn"), &f);
            x = l.out_norm.fwd(&bugs.residual("mlp", &a, &f)?, bugs)?;
            rec.tap(&format!("{p}.output_layer_norm"), &x);
            rec.tap(&p, &x);
        }
        rec.tap("distilbert.transformer", &x);
        rec.tap("distilbert", &x);
        rec.tap("last_hidden_state", &x);

        // Head: classifier(dropout(relu(pre_classifier(hidden_state[:, 0])))).
        let first = select_rows(&x, &pool_rows(inputs, bugs, false))?;
        let h = self.pre_classifier.fwd(&first)?;
        rec.tap("pre_classifier", &h);
        let h = bugs.dropout(&h.relu()?)?;
        rec.tap("dropout", &h);
        let logits = self.classifier.fwd(&h)?;
        rec.tap("classifier", &logits);
        rec.tap("logits", &logits);
        rec.finish()
    }
}
