//! Engines that misbehave in-process: each fails only its own trial, with a clear report.
//! (External-process engines that hang or crash are covered in their own tests.)

mod common;

use std::sync::Arc;

use common::TempRepo;
use harness::case::{Inputs, ModelSpec};
use harness::engine::{Engine, LoadedModel, Outputs};
use harness::report::{TapStatus, Verdict};
use harness::tensor::Tensor;

#[derive(Clone, Copy)]
enum Fault {
    PanicOnLoad,
    PanicOnRun,
    Nan,
    WrongShape,
    NoTaps,
}

struct Faulty(Fault);

impl Engine for Faulty {
    fn name(&self) -> &str {
        "faulty"
    }
    fn load(&self, spec: &ModelSpec) -> harness::Result<Box<dyn LoadedModel>> {
        if let Fault::PanicOnLoad = self.0 {
            panic!("cannot map weights of {}", spec.id);
        }
        let inner = harness::engines::reference::ReferenceEngine::new().load(spec)?;
        Ok(Box::new(FaultyModel(self.0, inner)))
    }
}

struct FaultyModel(Fault, Box<dyn LoadedModel>);

impl LoadedModel for FaultyModel {
    fn run(&self, inputs: &Inputs, taps: &[&str]) -> harness::Result<Outputs> {
        let mut out = self.1.run(inputs, taps)?;
        match self.0 {
            Fault::PanicOnRun => panic!("index out of bounds: the len is 3 but the index is 7"),
            Fault::Nan => {
                let t = out.get_mut("model.layers.1.self_attn").unwrap();
                let (shape, mut v) = (t.shape().to_vec(), t.clone().into_vec());
                v[5] = f32::NAN;
                *t = Tensor::new(shape, v).unwrap();
            }
            Fault::WrongShape => {
                let t = out.remove("logits").unwrap();
                let n = t.numel();
                out.insert("logits".into(), t.reshape(vec![n]).unwrap());
            }
            Fault::NoTaps => out.clear(),
            Fault::PanicOnLoad => unreachable!(),
        }
        Ok(out)
    }
}

fn run(f: Fault) -> harness::report::TrialReport {
    let repo = TempRepo::with_cases(&["llama/mha"]);
    let suite = repo.suite(vec![Arc::new(Faulty(f))]);
    let case = repo.load("llama/mha").unwrap();
    let faulty = suite.registry.get("faulty").unwrap().clone();
    let reference = suite.registry.get("reference").unwrap().clone();
    let r = suite.run_trial(&case, &faulty);
    // The same suite goes on: the reference trial after it is unaffected.
    assert_eq!(suite.run_trial(&case, &reference).verdict, Verdict::Pass);
    r
}

#[test]
fn a_panicking_engine_fails_only_its_trial() {
    for f in [Fault::PanicOnLoad, Fault::PanicOnRun] {
        let r = run(f);
        assert_eq!(r.verdict, Verdict::Error);
        let e = r.error.unwrap();
        assert!(e.contains("engine `faulty` panicked:"), "{e}");
    }
}

#[test]
fn garbage_is_reported_per_tap() {
    let r = run(Fault::Nan);
    assert_eq!(r.verdict, Verdict::Fail);
    assert_eq!(r.first_divergent_tap().unwrap().name, "model.layers.1.self_attn");
    assert_eq!(r.hints[0].kind, harness::diagnose::HintKind::NonFinite);

    let r = run(Fault::WrongShape);
    let t = r.taps.iter().find(|t| t.name == "logits").unwrap();
    assert_eq!(t.status, TapStatus::ShapeMismatch { actual: vec![3072], expected: vec![1, 12, 256] });
    assert_eq!(r.first_divergent_tap().unwrap().name, "logits");

    let r = run(Fault::NoTaps);
    assert_eq!(r.verdict, Verdict::Fail);
    assert!(r.taps.iter().all(|t| t.status == TapStatus::Missing));
}
