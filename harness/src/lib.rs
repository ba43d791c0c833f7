//! The harness: a differential-testing harness and golden-file framework for ML inference
//! engines. See README.md for the user's view and `../shared/design.md` for the design.

pub mod bisect;
pub mod case;
pub mod decode;
pub mod diagnose;
pub mod diff;
pub mod dump;
pub mod engine;
pub mod engines;
pub mod error;
pub mod expect;
pub mod expected;
pub mod family;
pub mod golden;
pub mod hub;
pub mod metamorphic;
pub mod metrics;
pub mod report;
pub mod runner;
pub mod sentence;
pub mod shrink;
pub mod tensor;
pub mod text;
pub mod timings;
pub mod tolerance;
pub mod trial;
pub mod yaml;

pub use error::{Error, ErrorKind, Result};
