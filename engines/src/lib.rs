//! The engines that ship with the harness, each behind a cargo feature:
//!
//! - `reference`: the reference engine (candle-core), every module's output under its HF name for
//!   the classes it implements; the harness's known-good engine, and with a [`reference::Mutation`]
//!   the source of the mutant zoo.
//! - `candle-transformers`: candle-transformers' models, an engine this project did not write.
//! - `gguf`: candle's quantized Llama on the model's GGUF files.
//!
//! They implement [`harness_api::engine::Engine`] like any engine under test.

#[cfg(feature = "candle-transformers")]
pub mod candle_tx;
#[cfg(feature = "reference")]
pub mod reference;

use std::sync::Arc;

use harness_api::engine::Registry;

/// The built-in engines this build has (by cargo feature).
pub fn builtin() -> Registry {
    let mut r = Registry::default();
    #[cfg(feature = "reference")]
    r.add(Arc::new(reference::ReferenceEngine::new()));
    #[cfg(feature = "candle-transformers")]
    r.add(Arc::new(candle_tx::CandleTxEngine));
    #[cfg(feature = "gguf")]
    for q in candle_tx::gguf::GgufType::ALL {
        r.add(Arc::new(candle_tx::gguf::GgufEngine::new(q)));
    }
    let _ = &mut r;
    r
}
