//! An HF config (config.json keys overlaid by a model spec's `config:`), with typed getters
//! whose errors name the model spec. Engines that read config keys themselves (the reference
//! engine, candle-transformers) use it; the harness's own view of an architecture is the
//! recorded [`crate::structure::Structure`], never the config.

use std::path::PathBuf;

use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// Refuse configs whose weight matrices cannot exist: each product of dims (e.g.
/// `[vocab, hidden]`) must fit in memory (2^40 elements, 4 TiB of float32, is the limit).
pub fn check_param_count(c: &Config, products: &[&[usize]]) -> Result<()> {
    const LIMIT: usize = 1 << 40;
    for dims in products {
        let n = dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
        if n.is_none_or(|n| n > LIMIT) {
            return Err(c
                .err(format!("config dimensions {dims:?} imply more than 2^40 weights in one matrix"))
                .hint("check the config's sizes; tiny random models use dims in the tens or hundreds"));
        }
    }
    Ok(())
}

/// An HF config (config.json keys), with typed getters whose errors name the model spec.
#[derive(Debug, Clone)]
pub struct Config {
    map: Map<String, Value>,
    file: PathBuf,
}

impl Config {
    pub fn new(map: Map<String, Value>, file: PathBuf) -> Self {
        Config { map, file }
    }
    pub fn raw(&self) -> &Map<String, Value> {
        &self.map
    }
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }
    fn missing(&self, key: &str) -> Error {
        Error::input(format!("model config has no `{key}`"))
            .file(&self.file)
            .hint(format!("add `{key}:` under `config:`"))
    }
    fn wrong(&self, key: &str, what: &str) -> Error {
        Error::input(format!("model config `{key}` must be {what}, not {}", self.map[key])).file(&self.file)
    }
    pub fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_u64().map(|u| Some(u as usize)).ok_or_else(|| self.wrong(key, "a non-negative integer")),
        }
    }
    pub fn usize(&self, key: &str) -> Result<usize> {
        self.opt_usize(key)?.ok_or_else(|| self.missing(key))
    }
    pub fn usize_or(&self, key: &str, default: usize) -> Result<usize> {
        Ok(self.opt_usize(key)?.unwrap_or(default))
    }
    pub fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| self.wrong(key, "a number")),
        }
    }
    pub fn f64_or(&self, key: &str, default: f64) -> Result<f64> {
        Ok(self.opt_f64(key)?.unwrap_or(default))
    }
    pub fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.as_bool().ok_or_else(|| self.wrong(key, "true or false")),
        }
    }
    pub fn str_or<'a>(&'a self, key: &str, default: &'a str) -> Result<&'a str> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.as_str().ok_or_else(|| self.wrong(key, "a string")),
        }
    }
    pub fn err(&self, msg: impl Into<String>) -> Error {
        Error::input(msg).file(&self.file)
    }

    /// `rope_theta` in the transformers-4 form (top-level key) or the transformers-5 form
    /// (`rope_parameters: {rope_type, rope_theta}`); only the default rope type is supported.
    pub fn rope_theta(&self, default: f64) -> Result<f64> {
        if let Some(params) = self.get("rope_parameters") {
            let obj = params.as_object().ok_or_else(|| self.wrong("rope_parameters", "a mapping"))?;
            let ty = obj.get("rope_type").and_then(|v| v.as_str()).unwrap_or("default");
            if ty != "default" {
                return Err(self
                    .err(format!("rope_type `{ty}` is not supported by the reference engine"))
                    .hint("use `rope_type: default`"));
            }
            if let Some(t) = obj.get("rope_theta") {
                return t.as_f64().ok_or_else(|| self.wrong("rope_parameters.rope_theta", "a number"));
            }
        }
        if let Some(scaling) = self.get("rope_scaling") {
            let ty =
                scaling.get("rope_type").or_else(|| scaling.get("type")).and_then(|v| v.as_str()).unwrap_or("default");
            if ty != "default" {
                return Err(self
                    .err(format!("rope_scaling `{ty}` is not supported by the reference engine"))
                    .hint("only the default RoPE is implemented; remove `rope_scaling`"));
            }
        }
        self.f64_or("rope_theta", default)
    }
}
