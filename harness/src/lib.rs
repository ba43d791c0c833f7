//! The harness: a differential-testing harness and golden-file framework for ML inference
//! engines. See README.md for the user's view and docs/ for the rest.

pub mod bisect;
pub mod case;
pub mod config;
pub mod decode;
pub mod diagnose;
pub mod diff;
pub mod digest;
pub mod dump;
pub mod engine;
pub mod engines;
pub mod error;
pub mod expect;
pub mod expected;
pub mod golden;
pub mod hub;
pub mod metamorphic;
pub mod metrics;
pub mod report;
pub mod runner;
pub mod sentence;
pub mod shrink;
pub mod structure;
pub mod tensor;
pub mod text;
pub mod timings;
pub mod tolerance;
pub mod trial;
pub mod yaml;

pub use error::{Error, ErrorKind, Result};
