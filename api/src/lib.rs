//! The harness's engine API: what an engine under test implements ([`engine::Engine`],
//! [`engine::LoadedModel`]) and the data it exchanges with the harness ([`tensor::Tensor`],
//! [`inputs::Inputs`], [`model::ModelSpec`] with its recorded [`structure::Structure`]), plus the
//! comparison semantics ([`metrics`], [`tolerance`]) and the report data model ([`report`]).
//!
//! This crate is the light layer a downstream engine depends on: no candle, no YAML, no Python.
//! The harness crate (cases, goldens, diagnosis, the runner) builds on it.

pub mod config;
pub mod engine;
pub mod error;
pub mod hash;
pub mod inputs;
pub mod logits;
pub mod metrics;
pub mod model;
pub mod report;
pub mod sentence;
pub mod structure;
pub mod tensor;
pub mod timings;
pub mod tolerance;

pub use error::{Error, ErrorKind, Result};
