//! The reference engine's mutant zoo (`harness_engines::reference::Mutation`) as diagnosis
//! probes: diagnosis asks a [`Variants`] for the known bugs worth trying and runs them; this
//! module is the only place that knows they are mutations of the reference engine. Built without
//! the `reference` feature, the catalogue is empty.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::case::{Case, ModelSpec};
use crate::diagnose::probes::{Probe, Variants};
use crate::engine::{LoadedModel, Outputs};
use crate::error::Result;
#[cfg(feature = "reference")]
use crate::{
    engine::Engine,
    engines::reference::{Mutation, ReferenceEngine},
};

#[cfg(feature = "reference")]
fn probe(m: &Mutation) -> Probe {
    Probe { id: format!("{m:?}"), describe: m.describe(), rope_pairing: *m == Mutation::RopeInterleaved }
}

/// The probes for a first divergence at `tap`.
pub fn probes(tap: &str) -> Vec<Probe> {
    #[cfg(feature = "reference")]
    return Mutation::probes(tap).iter().map(probe).collect();
    #[cfg(not(feature = "reference"))]
    {
        let _ = tap;
        Vec::new()
    }
}

#[cfg(feature = "reference")]
fn mutation(p: &Probe) -> Option<Mutation> {
    // Probes name the tap's own weight (`TransposedWeight`), so look among every tap's list.
    let tap = p.id.strip_prefix("TransposedWeight(\"").and_then(|r| r.strip_suffix(".weight\")")).unwrap_or("");
    Mutation::probes(tap).into_iter().find(|m| format!("{m:?}") == p.id)
}

/// The reference engine with each probe's bug, loaded on first use and kept: diagnosis re-runs
/// them on every failing shrink candidate, and loading weights each time would dominate.
pub struct ProbeCache {
    #[cfg_attr(not(feature = "reference"), allow(dead_code))]
    spec: ModelSpec,
    models: Mutex<HashMap<String, Option<Arc<dyn LoadedModel>>>>,
}

impl ProbeCache {
    pub fn new(spec: &ModelSpec) -> ProbeCache {
        ProbeCache { spec: spec.clone(), models: Mutex::new(HashMap::new()) }
    }

    fn model(&self, p: &Probe) -> Option<Arc<dyn LoadedModel>> {
        let mut models = self.models.lock().unwrap();
        models.entry(p.id.clone()).or_insert_with(|| self.load(p)).clone()
    }

    #[cfg(feature = "reference")]
    fn load(&self, p: &Probe) -> Option<Arc<dyn LoadedModel>> {
        let e = ReferenceEngine::mutant("probe", mutation(p)?);
        e.supports(&self.spec).ok()?;
        e.load(&self.spec).ok().map(Arc::from)
    }

    #[cfg(not(feature = "reference"))]
    fn load(&self, _: &Probe) -> Option<Arc<dyn LoadedModel>> {
        None
    }
}

/// The zoo on one case's inputs (a trial's, or a shrink candidate's).
pub struct ReferenceProbes<'a> {
    pub cache: &'a ProbeCache,
    pub case: &'a Case,
}

impl Variants for ReferenceProbes<'_> {
    fn probes(&self, tap: &str) -> Vec<Probe> {
        probes(tap)
    }
    fn run(&self, probe: &Probe, taps: &[&str]) -> Option<Result<Outputs>> {
        let m = self.cache.model(probe)?;
        Some(crate::trial::run_case(self.case, m.as_ref(), taps))
    }
}

#[cfg(all(test, feature = "reference"))]
mod tests {
    use super::*;

    #[test]
    fn every_probe_maps_back_to_its_mutation() {
        for p in probes("model.layers.0.self_attn.o_proj") {
            assert_eq!(mutation(&p).map(|m| format!("{m:?}")).as_deref(), Some(p.id.as_str()));
        }
    }
}
