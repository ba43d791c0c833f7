//! The golden store: `goldens/<case>/manifest.json` + one `.npy` per tap, written only by
//! tools/regen_goldens.py from the reference (HF transformers). The Rust side reads and checks
//! them (staleness, here); it never computes a golden. It only moves pending goldens that tools/
//! wrote into place when a person accepts them ([`pending`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::case::Case;
use crate::error::{Error, ErrorKind, Result};
use crate::tensor::{Tensor, read_npy_bytes, read_npy_deferred};

mod verify;
pub use verify::{CACHE_MIN_BYTES, Verifier};

pub mod atomic;
pub mod describe;
pub mod lock;
pub mod pending;
pub mod remote;
pub mod review;
pub mod session;

pub const MANIFEST: &str = "manifest.json";

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Manifest {
    pub format: u32,
    pub case: String,
    /// What the goldens depend on in the case file ([`crate::digest::golden_digest`]).
    pub case_digest: String,
    pub model: ModelProvenance,
    pub generator: Generator,
    /// Every module that ran, in the order its forward completed.
    pub module_order: Vec<String>,
    /// The compared taps, in forward order.
    pub taps: Vec<TapEntry>,
    /// The named inputs (`pixel_values`, ...) the forward ran on, by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<InputEntry>,
}

/// A named input as the goldens tool built it: the harness checks that it builds the same.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct InputEntry {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<usize>,
    /// Of the array's bytes: C order, little-endian, a bool one byte.
    pub sha256: String,
}

/// sha256 of a named input's bytes as numpy lays them out (C order, little-endian).
pub fn input_sha256(n: &harness_api::inputs::NamedInput) -> String {
    use harness_api::inputs::InputData;
    use std::io::Write;
    let mut h = harness_api::hash::Sha256Writer::default();
    // Writing to a hasher cannot fail.
    let _ = match &n.data {
        InputData::F32(v) => v.iter().try_for_each(|x| h.write_all(&x.to_le_bytes())),
        InputData::I64(v) => v.iter().try_for_each(|x| h.write_all(&x.to_le_bytes())),
        InputData::Bool(v) => v.iter().try_for_each(|&x| h.write_all(&[x as u8])),
    };
    h.hex()
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ModelProvenance {
    pub id: String,
    pub class: String,
    /// What the goldens depend on in the model spec.
    pub spec_digest: String,
    pub weights_sha256: String,
    /// `hf` sources: the commit hash of the cache snapshot the goldens were made from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// Checkpoints on disk: sha256 of the other files of the model directory an engine reads
    /// (config.json, tokenizer and sentence-transformers files), by path relative to it.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub files_sha256: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Generator {
    pub tool: String,
    pub python: String,
    pub torch: String,
    pub transformers: String,
    pub numpy: String,
    pub dtype: String,
    pub attn_implementation: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct TapEntry {
    pub name: String,
    pub file: String,
    pub shape: Vec<usize>,
    pub dtype: String,
    pub sha256: String,
    /// How far HF's float32 result is from its float64 result on this tap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub noise: Option<NoiseFloor>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct NoiseFloor {
    /// `max |golden_f32 - reference_f64|`.
    pub max_abs: f64,
    /// `max(max_abs, 2^-23 * max |golden|)`: never 0, the unit of `noise:` tolerances.
    pub floor: f64,
}

pub use harness_api::hash::{sha256_bytes, sha256_file};

/// The command that regenerates one case's goldens in the project at `root`, as printed in errors
/// (from its harness.toml).
pub fn regen_command(root: &Path, case_id: &str) -> String {
    crate::project::or_default(root).regen_command(case_id)
}

/// Golden store rooted at `<root>/goldens`, with a per-run cache of weight checks.
pub struct Store {
    pub dir: PathBuf,
    /// The project root.
    pub root: PathBuf,
    /// (weights file, expected sha256) -> whether it matches.
    weight_checks: Mutex<HashMap<(PathBuf, String), bool>>,
    verifier: Arc<Verifier>,
}

/// A case's goldens, checked against the case (not stale).
pub struct Goldens {
    pub dir: PathBuf,
    /// The project root (for the hints that name the regenerate command).
    pub root: PathBuf,
    pub manifest: Manifest,
    /// Expected tensors held in memory instead of files under `dir`: an oracle's answer for a
    /// shrink candidate, which has no goldens (see [`Goldens::in_memory`]).
    pub memory: Option<HashMap<String, Tensor>>,
    verifier: Arc<Verifier>,
}

impl Store {
    pub fn new(root: &Path) -> Store {
        Store {
            dir: crate::project::goldens_dir(root),
            root: root.to_path_buf(),
            weight_checks: Mutex::new(HashMap::new()),
            verifier: Arc::new(Verifier::for_root(root)),
        }
    }

    pub fn case_dir(&self, case_id: &str) -> PathBuf {
        self.dir.join(case_id)
    }

    fn weights_match(&self, file: &Path, expected: &str) -> Result<bool> {
        let key = (file.to_path_buf(), expected.to_string());
        if let Some(&ok) = self.weight_checks.lock().unwrap().get(&key) {
            return Ok(ok);
        }
        let ok = self.verifier.check(file, expected)?.is_none();
        self.weight_checks.lock().unwrap().insert(key, ok);
        Ok(ok)
    }

    /// Load the manifest of `case` and check it still describes the case, its model spec and
    /// its weights. A missing or stale golden is an error carrying the regenerate command.
    pub fn open(&self, case: &Case) -> Result<Goldens> {
        let dir = self.case_dir(&case.id);
        let mpath = dir.join(MANIFEST);
        let regen = regen_command(&self.root, &case.id);
        // With new goldens waiting for review, say so next to the regenerate command.
        let pending = dir.join(format!("{MANIFEST}{}", pending::SUFFIX)).is_file();
        let regen_hint = |what: &str| {
            if pending {
                format!("new goldens are pending: `harness goldens review {}`; or {what}: {regen}", case.id)
            } else {
                format!("{what}: {regen}")
            }
        };
        let bytes = match std::fs::read(&mpath) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::golden(format!(
                    "no goldens for this case ({} does not exist)",
                    crate::error::display_path(&mpath)
                ))
                .file(&case.file)
                .hint(regen_hint("generate them")));
            }
            Err(e) => return Err(Error::io(&mpath, &e)),
        };
        let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|e| {
            Error::golden(format!("invalid manifest: {}", crate::error::lowercase_first(&e.to_string())))
                .file(&mpath)
                .hint(format!("regenerate it: {regen}"))
        })?;
        let stale = |what: &str| {
            Error::new(ErrorKind::Stale, format!("goldens are stale: {what} changed since they were generated"))
                .file(&mpath)
                .hint(regen_hint("review the change, then regenerate"))
        };
        // Only what the goldens depend on counts: editing a description, `engines:` or a
        // tolerance leaves them fresh.
        let case_text = std::fs::read_to_string(&case.file).map_err(|e| Error::io(&case.file, &e))?;
        if crate::digest::of_case(&case_text, case.file.parent().unwrap_or(Path::new("."))).as_deref()
            != Some(&manifest.case_digest)
        {
            return Err(stale(&format!(
                "the case file {} (its model, inputs, taps, decode, bisect or compare_padding)",
                crate::error::display_path(&case.file)
            )));
        }
        let spec_text = std::fs::read_to_string(&case.model.file).map_err(|e| Error::io(&case.model.file, &e))?;
        if crate::digest::of_yaml(&spec_text, crate::digest::SPEC_KEYS).as_deref() != Some(&manifest.model.spec_digest)
        {
            return Err(stale(&format!(
                "the model spec {} (its family, source, config, dtype or gguf)",
                crate::error::display_path(&case.model.file)
            )));
        }
        if manifest.model.revision != case.model.revision {
            let show = |r: &Option<String>| r.clone().unwrap_or_else(|| "none".into());
            return Err(stale(&format!(
                "the model revision ({} in the manifest, {} in the cache)",
                show(&manifest.model.revision),
                show(&case.model.revision)
            )));
        }
        // The generator and readers of named inputs exist twice (Rust, Python): the goldens were
        // made on the tensor the goldens tool built, and the engine must get the same one.
        for e in &manifest.inputs {
            let same = case
                .inputs
                .named(&e.name)
                .is_some_and(|n| n.data.dtype() == e.dtype && n.shape == e.shape && input_sha256(n) == e.sha256);
            if !same {
                return Err(Error::golden(format!(
                    "the harness builds another `{}` than the goldens were made on ({} {:?}, sha256 {})",
                    e.name,
                    e.dtype,
                    e.shape,
                    &e.sha256[..e.sha256.len().min(12)]
                ))
                .file(&mpath)
                .hint("the Rust and Python readers of named inputs disagree: report it with the case file"));
            }
        }
        let weights = case.model.dir.join("model.safetensors");
        if weights.exists() && !self.weights_match(&weights, &manifest.model.weights_sha256)? {
            return Err(stale(&format!("the weights {}", crate::error::display_path(&weights))));
        }
        // A hand edit of a checkpoint's config or tokenizer files changes what engines read.
        for (name, sha) in &manifest.model.files_sha256 {
            if name.contains("..") || name.starts_with('/') {
                return Err(Error::golden(format!("manifest names a model file outside its directory: `{name}`"))
                    .file(&mpath)
                    .hint(format!("regenerate: {regen}")));
            }
            let path = case.model.dir.join(name);
            if !path.is_file() {
                return Err(stale(&format!("the model file {} (it is gone)", crate::error::display_path(&path))));
            }
            if !self.weights_match(&path, sha)? {
                return Err(stale(&format!("the model file {}", crate::error::display_path(&path))));
            }
        }
        let tokenizer_taps = case.text.as_ref().map_or(&[][..], |_| &crate::text::TOKENIZER_TAPS[..2]);
        for name in case.taps.iter().map(|t| t.name.as_str()).chain(tokenizer_taps.iter().copied()) {
            if !manifest.taps.iter().any(|e| e.name == name) {
                return Err(Error::golden(format!("no golden for tap `{name}`"))
                    .file(&mpath)
                    .hint(format!("regenerate: {regen}")));
            }
        }
        Ok(Goldens { dir, root: self.root.clone(), manifest, memory: None, verifier: self.verifier.clone() })
    }
}

impl Goldens {
    /// Expected outputs that are not files: `taps` (name, tensor, noise floor) in forward order,
    /// computed by `source` (e.g. `engine reference`, `hf`) for `case`'s inputs.
    pub fn in_memory(case: &Case, source: &str, taps: Vec<(String, Tensor, Option<f64>)>) -> Goldens {
        let entries = taps
            .iter()
            .map(|(name, t, floor)| TapEntry {
                name: name.clone(),
                file: String::new(),
                shape: t.shape().to_vec(),
                dtype: "float32".into(),
                sha256: String::new(),
                noise: floor.map(|f| NoiseFloor { max_abs: f, floor: f }),
            })
            .collect();
        let manifest = Manifest {
            format: 1,
            case: case.id.clone(),
            case_digest: String::new(),
            model: ModelProvenance {
                id: case.model.id.clone(),
                class: case.model.class.clone(),
                spec_digest: String::new(),
                weights_sha256: String::new(),
                revision: case.model.revision.clone(),
                files_sha256: Default::default(),
            },
            generator: Generator {
                tool: source.to_string(),
                python: String::new(),
                torch: String::new(),
                transformers: String::new(),
                numpy: String::new(),
                dtype: "float32".into(),
                attn_implementation: String::new(),
            },
            module_order: taps.iter().map(|(n, _, _)| n.clone()).collect(),
            taps: entries,
            inputs: vec![],
        };
        let memory = taps.into_iter().map(|(n, t, _)| (n, t)).collect();
        Goldens {
            dir: PathBuf::from(format!("<{source}>")),
            root: PathBuf::from("."),
            manifest,
            memory: Some(memory),
            verifier: Arc::new(Verifier::new(None, u64::MAX, 0)),
        }
    }

    /// The goldens of `manifest` in `dir`, checked with `verifier` (for benchmarks and tools; a
    /// run gets its goldens from [`Store::open`], which also checks staleness).
    pub fn new(dir: PathBuf, manifest: Manifest, verifier: Arc<Verifier>) -> Goldens {
        let root = dir.clone();
        Goldens { dir, root, manifest, memory: None, verifier }
    }

    pub fn entry(&self, tap: &str) -> Option<&TapEntry> {
        self.manifest.taps.iter().find(|e| e.name == tap)
    }

    /// Read one tap's golden, checking it against its manifest entry (hash, shape, dtype). The
    /// hash of a large unchanged golden is checked once, not on every load (see [`verify`]).
    pub fn load(&self, tap: &str) -> Result<Tensor> {
        if let Some(memory) = &self.memory {
            return memory.get(tap).cloned().ok_or_else(|| {
                Error::golden(format!("the oracle `{}` gave no `{tap}`", self.manifest.generator.tool))
                    .hint("the oracle must return every tap of the case")
            });
        }
        let e = self
            .entry(tap)
            .ok_or_else(|| Error::golden(format!("no golden for tap `{tap}`")).file(self.dir.join(MANIFEST)))?;
        if e.file.contains("..") || e.file.contains('/') || e.file.contains('\\') {
            return Err(Error::golden(format!(
                "manifest entry for `{tap}` points outside the case directory: `{}`",
                e.file
            ))
            .file(self.dir.join(MANIFEST)));
        }
        let mut path = self.dir.join(&e.file);
        if !remote::present(&path) {
            let project = crate::project::or_default(&self.root);
            if let Some(url) = &project.remote {
                let cache = project.cache.clone().unwrap_or_else(remote::cache_dir);
                path = remote::fetch(url, &cache, &e.sha256, &path)?;
            }
        }
        let small = std::fs::metadata(&path).is_ok_and(|m| m.len() < verify::CACHE_MIN_BYTES);
        let (t, small_hash) = if small {
            let bytes = std::fs::read(&path).map_err(|err| Error::io(&path, &err))?;
            (read_npy_bytes(&path, &bytes, Some(&e.dtype))?, Some(sha256_bytes(&bytes)))
        } else {
            (read_npy_deferred(&path, Some(&e.dtype))?, None)
        };
        if t.shape() != e.shape.as_slice() {
            return Err(Error::golden(format!("shape {:?} differs from the manifest's {:?}", t.shape(), e.shape))
                .file(&path)
                .hint(format!("regenerate: {}", regen_command(&self.root, &self.manifest.case))));
        }
        let mismatch = match small_hash {
            Some(h) => Some(h).filter(|h| *h != e.sha256),
            None => self.verifier.check(&path, &e.sha256)?,
        };
        if let Some(h) = mismatch {
            return Err(Error::golden(format!(
                "sha256 {} does not match the manifest ({})",
                &h[..12],
                &e.sha256[..e.sha256.len().min(12)]
            ))
            .file(&path)
            .hint(format!(
                "the golden was modified after generation; regenerate: {}",
                regen_command(&self.root, &self.manifest.case)
            )));
        }
        Ok(t)
    }
}
