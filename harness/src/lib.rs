//! The harness: a differential-testing harness and golden-file framework for ML inference
//! engines. See README.md for the user's view and docs/ for the rest.

pub mod bisect;
pub mod case;
pub mod catalogue;
pub mod decode;
pub mod diagnose;
pub mod diff;
pub mod digest;
pub mod dump;
pub mod engine;
pub mod expected;
pub mod findings;
pub mod golden;
pub mod hub;
pub mod metamorphic;
pub mod named;
pub mod project;
pub mod report;
pub mod runner;
pub mod shrink;
pub mod text;
pub mod tokenization;
pub mod trial;
pub mod yaml;

// The engine API (a crate of its own, no candle) under the paths the harness has always used.
pub use harness_api::{Error, ErrorKind, Result};
pub use harness_api::{
    config, error, hash, inputs, logits, metrics, model, sentence, structure, tensor, timings, tolerance,
};
/// The built-in candle engines (cargo features `reference`, `candle-transformers`, `gguf`).
#[cfg(any(feature = "reference", feature = "candle-transformers"))]
pub use harness_engines as engines;
pub use runner::Harness;
