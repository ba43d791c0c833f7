//! Engines: the trait (in the engine API crate) and the external-process engines of
//! `cases/engines/`.

pub use harness_api::engine::*;

pub mod external;

use crate::error::Result;
use crate::tensor::Tensor;

/// How B's tensors (an engine's dump) map onto A's names and layouts.
pub trait Mapping {
    /// The A (HF) name of B's tensor `name`; None to ignore it.
    fn name(&self, name: &str) -> Option<String>;
    /// B's tensor `name` (mapped to `hf_name`) in A's layout (e.g. reversed dims), given A's shape.
    fn layout(&self, _name: &str, _hf_name: &str, t: Tensor, _expected: &[usize]) -> Result<Tensor> {
        Ok(t)
    }
}

/// Same names, same layouts.
pub struct Identity;

impl Mapping for Identity {
    fn name(&self, name: &str) -> Option<String> {
        Some(name.to_string())
    }
}

/// The engines that ship with this build of the harness (by cargo feature), as a registry.
pub fn builtin() -> Registry {
    #[cfg(any(feature = "reference", feature = "candle-transformers"))]
    return harness_engines::builtin();
    #[cfg(not(any(feature = "reference", feature = "candle-transformers")))]
    Registry::default()
}
