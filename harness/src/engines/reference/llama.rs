//! LlamaForCausalLM, following transformers' modeling_llama.py (eager attention, float32).

use candle_core::{Device, Tensor as CTensor};

use super::ops::{apply_rope, attention, attention_bias, linear, repeat_kv, rms_norm, rope_tables};
use super::{Mutation, Recorder, Weights, input_ids};
use crate::case::{Inputs, ModelSpec};
use crate::engine::{LoadedModel, Outputs};
use crate::error::Result;
use crate::family::llama::LlamaDims;

pub const CLASS: &str = "LlamaForCausalLM";

struct Layer {
    in_norm: CTensor,
    q: (CTensor, Option<CTensor>),
    k: (CTensor, Option<CTensor>),
    v: (CTensor, Option<CTensor>),
    o: (CTensor, Option<CTensor>),
    post_norm: CTensor,
    gate: (CTensor, Option<CTensor>),
    up: (CTensor, Option<CTensor>),
    down: (CTensor, Option<CTensor>),
}

pub struct Llama {
    d: LlamaDims,
    embed: CTensor,
    layers: Vec<Layer>,
    norm: CTensor,
    lm_head: CTensor,
    #[allow(dead_code)]
    mutation: Option<Mutation>,
}

fn lin(w: &Weights, name: &str, out: usize, inp: usize, bias: bool) -> Result<(CTensor, Option<CTensor>)> {
    let weight = w.get(&format!("{name}.weight"), &[out, inp])?;
    let b = if bias { Some(w.get(&format!("{name}.bias"), &[out])?) } else { None };
    Ok((weight, b))
}

impl Llama {
    pub fn new(spec: &ModelSpec, w: Weights, mutation: Option<Mutation>) -> Result<Self> {
        let d = LlamaDims::from_config(&spec.config)?;
        let (h, hd) = (d.hidden, d.head_dim);
        let mut layers = Vec::with_capacity(d.layers);
        for i in 0..d.layers {
            let p = format!("model.layers.{i}");
            layers.push(Layer {
                in_norm: w.get(&format!("{p}.input_layernorm.weight"), &[h])?,
                q: lin(&w, &format!("{p}.self_attn.q_proj"), d.heads * hd, h, d.attention_bias)?,
                k: lin(&w, &format!("{p}.self_attn.k_proj"), d.kv_heads * hd, h, d.attention_bias)?,
                v: lin(&w, &format!("{p}.self_attn.v_proj"), d.kv_heads * hd, h, d.attention_bias)?,
                o: lin(&w, &format!("{p}.self_attn.o_proj"), h, d.heads * hd, d.attention_bias)?,
                post_norm: w.get(&format!("{p}.post_attention_layernorm.weight"), &[h])?,
                gate: lin(&w, &format!("{p}.mlp.gate_proj"), d.intermediate, h, d.mlp_bias)?,
                up: lin(&w, &format!("{p}.mlp.up_proj"), d.intermediate, h, d.mlp_bias)?,
                down: lin(&w, &format!("{p}.mlp.down_proj"), h, d.intermediate, d.mlp_bias)?,
            });
        }
        let embed = w.get("model.embed_tokens.weight", &[d.vocab, h])?;
        let lm_head = match w.opt("lm_head.weight", &[d.vocab, h])? {
            Some(t) if !d.tie_embeddings => t,
            _ => embed.clone(),
        };
        Ok(Llama { embed, layers, norm: w.get("model.norm.weight", &[h])?, lm_head, d, mutation })
    }
}

impl LoadedModel for Llama {
    fn run(&self, inputs: &Inputs, taps: &[&str]) -> Result<Outputs> {
        let dev = Device::Cpu;
        let d = &self.d;
        let (b, s) = (inputs.input_ids.batch, inputs.input_ids.seq);
        let mut rec = Recorder::new(taps);

        let mut x = self.embed.embedding(&input_ids(inputs)?.flatten_all()?)?.reshape((b, s, d.hidden))?;
        rec.tap("model.embed_tokens", &x);

        let pos: Vec<usize> = (0..s).collect();
        let (cos, sin) = rope_tables(&pos, d.head_dim, d.rope_theta, &dev)?;
        rec.tap("model.rotary_emb", &cos.unsqueeze(0)?);

        // Causal, and keys that are padding are never attended to.
        let bias = attention_bias(|bi, i, j| j <= i && inputs.is_real(bi, j), b, s, s, &dev)?;
        let scale = 1.0 / (d.head_dim as f64).sqrt();
        let n_rep = d.heads / d.kv_heads;

        for (i, l) in self.layers.iter().enumerate() {
            let p = format!("model.layers.{i}");
            let h = rms_norm(&x, &l.in_norm, d.rms_eps)?;
            rec.tap(&format!("{p}.input_layernorm"), &h);

            let q = linear(&h, &l.q.0, l.q.1.as_ref())?;
            rec.tap(&format!("{p}.self_attn.q_proj"), &q);
            let k = linear(&h, &l.k.0, l.k.1.as_ref())?;
            rec.tap(&format!("{p}.self_attn.k_proj"), &k);
            let v = linear(&h, &l.v.0, l.v.1.as_ref())?;
            rec.tap(&format!("{p}.self_attn.v_proj"), &v);

            let q = q.reshape((b, s, d.heads, d.head_dim))?.transpose(1, 2)?;
            let k = k.reshape((b, s, d.kv_heads, d.head_dim))?.transpose(1, 2)?;
            let v = v.reshape((b, s, d.kv_heads, d.head_dim))?.transpose(1, 2)?;
            let q = apply_rope(&q, &cos, &sin)?;
            let k = apply_rope(&k, &cos, &sin)?;
            let k = repeat_kv(&k, n_rep)?;
            let v = repeat_kv(&v, n_rep)?;
            let a = attention(&q, &k, &v, scale, &bias)?;
            let a = a.transpose(1, 2)?.reshape((b, s, d.heads * d.head_dim))?;
            let a = linear(&a, &l.o.0, l.o.1.as_ref())?;
            rec.tap(&format!("{p}.self_attn.o_proj"), &a);
            rec.tap(&format!("{p}.self_attn"), &a);
            x = (x + a)?;

            let h = rms_norm(&x, &l.post_norm, d.rms_eps)?;
            rec.tap(&format!("{p}.post_attention_layernorm"), &h);
            let g = linear(&h, &l.gate.0, l.gate.1.as_ref())?;
            rec.tap(&format!("{p}.mlp.gate_proj"), &g);
            let g = g.silu()?;
            rec.tap(&format!("{p}.mlp.act_fn"), &g);
            let u = linear(&h, &l.up.0, l.up.1.as_ref())?;
            rec.tap(&format!("{p}.mlp.up_proj"), &u);
            let m = linear(&(g * u)?, &l.down.0, l.down.1.as_ref())?;
            rec.tap(&format!("{p}.mlp.down_proj"), &m);
            rec.tap(&format!("{p}.mlp"), &m);
            x = (x + m)?;
            rec.tap(&p, &x);
        }
        let x = rms_norm(&x, &self.norm, d.rms_eps)?;
        rec.tap("model.norm", &x);
        rec.tap("last_hidden_state", &x);
        let logits = linear(&x, &self.lm_head, None)?;
        rec.tap("lm_head", &logits);
        rec.tap("logits", &logits);
        rec.finish()
    }
}
