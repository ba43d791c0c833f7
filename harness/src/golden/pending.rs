//! Pending goldens: what `tools/regen_goldens.py --pending` writes beside the accepted ones, and
//! accepting or rejecting them (the insta `.snap.new` workflow, for tensors).
//!
//! A case directory with pending goldens holds its accepted files untouched plus `<file>.new` for
//! every file that changed and, always, `manifest.json.new`: the marker, and the complete new
//! manifest. A random model's directory (`goldens/models/<id>`) works the same way with
//! `provenance.json.new` as marker. `accept` makes the directory hold the new set in one atomic
//! swap; `reject` deletes the marker first (after which nothing is pending), then the other
//! `.new` files, and never touches an accepted file.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::{MANIFEST, Manifest, atomic, sha256_file};
use crate::error::{Error, Result, display_path};

pub const SUFFIX: &str = ".new";
pub const MODEL_MARKER: &str = "provenance.json";

/// Whether the `CI` environment variable is set to something other than empty, `0` or `false`
/// (the convention insta and tools/regen_goldens.py use).
pub fn ci_is_set() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.as_str(), "" | "0" | "false"))
}

/// Nothing writes goldens when `CI` is set. The CLI asks this at its boundary; the library
/// functions below do not read the environment, so tests (which run under `CI=true`) can drive them.
pub fn refuse_in_ci(action: &str) -> Result<()> {
    if ci_is_set() {
        return Err(Error::golden(format!("refusing to {action} goldens with CI set"))
            .hint("review and accept goldens locally, then commit them; CI only checks"));
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Case,
    Model,
}

/// One directory with pending goldens.
#[derive(Debug, Clone)]
pub struct Pending {
    /// The case id (`llama/mha`) or `models/<model id>`.
    pub id: String,
    pub kind: Kind,
    pub dir: PathBuf,
}

impl Pending {
    pub fn marker(&self) -> PathBuf {
        let m = if self.kind == Kind::Case { MANIFEST } else { MODEL_MARKER };
        self.dir.join(format!("{m}{SUFFIX}"))
    }

    /// The accepted manifest, if the case has one.
    pub fn old_manifest(&self) -> Result<Option<Manifest>> {
        read_manifest_opt(&self.dir.join(MANIFEST))
    }

    pub fn new_manifest(&self) -> Result<Manifest> {
        read_manifest_opt(&self.marker())?.ok_or_else(|| Error::golden("pending manifest vanished").file(self.marker()))
    }

    /// `(name, is_new)` of every file in the directory, `.new` files by their final name.
    fn files(&self) -> Result<Vec<(String, bool)>> {
        let rd = std::fs::read_dir(&self.dir).map_err(|e| Error::io(&self.dir, &e))?;
        let mut out = Vec::new();
        for e in rd {
            let e = e.map_err(|e| Error::io(&self.dir, &e))?;
            if !e.file_type().map(|t| t.is_file()).unwrap_or(false) {
                continue;
            }
            let name = e.file_name().to_string_lossy().into_owned();
            match name.strip_suffix(SUFFIX) {
                Some(base) => out.push((base.to_string(), true)),
                None => out.push((name, false)),
            }
        }
        out.sort();
        Ok(out)
    }

    /// The file a name resolves to once accepted: its `.new` version if there is one.
    pub fn resolve(&self, name: &str) -> PathBuf {
        let new = self.dir.join(format!("{name}{SUFFIX}"));
        if new.is_file() { new } else { self.dir.join(name) }
    }
}

pub fn read_manifest_opt(path: &Path) -> Result<Option<Manifest>> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
            Error::golden(format!("invalid manifest: {}", crate::error::lowercase_first(&e.to_string())))
                .file(path)
                .hint("regenerate with tools/regen_goldens.py")
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(path, &e)),
    }
}

/// Every directory under `goldens_dir` with pending goldens, cases first, sorted by id.
pub fn list(goldens_dir: &Path) -> Result<Vec<Pending>> {
    let mut out = Vec::new();
    let case_marker = format!("{MANIFEST}{SUFFIX}");
    let model_marker = format!("{MODEL_MARKER}{SUFFIX}");
    let mut stack = vec![goldens_dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let rel = d.strip_prefix(goldens_dir).unwrap_or(&d);
            let id =
                rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect::<Vec<_>>().join("/");
            let in_models = id.starts_with("models/");
            if name == case_marker && !in_models {
                out.push(Pending { id, kind: Kind::Case, dir: d.clone() });
            } else if name == model_marker && in_models {
                out.push(Pending { id, kind: Kind::Model, dir: d.clone() });
            }
        }
    }
    out.sort_by(|a, b| (a.kind == Kind::Model, &a.id).cmp(&(b.kind == Kind::Model, &b.id)));
    Ok(out)
}

/// Select pending entries by id (`--all`: every one). An id with nothing pending is an error.
pub fn select(all: Vec<Pending>, ids: &[String], every: bool) -> Result<Vec<Pending>> {
    if every {
        return Ok(all);
    }
    let mut out = Vec::new();
    for id in ids {
        let id = id.trim_end_matches('/');
        match all.iter().find(|p| p.id == id) {
            Some(p) => out.push(p.clone()),
            None => {
                let known: Vec<&str> = all.iter().map(|p| p.id.as_str()).collect();
                let hint = match crate::error::did_you_mean(id, known.iter().copied()) {
                    Some(k) => format!("did you mean `{k}`?"),
                    None if known.is_empty() => {
                        "nothing is pending; `tools/regen_goldens.py --pending` writes new goldens for review".into()
                    }
                    None => format!("pending: {}", known.join(", ")),
                };
                return Err(Error::input(format!("no pending goldens for `{id}`")).hint(hint));
            }
        }
    }
    Ok(out)
}

/// What accepting did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub id: String,
    /// Files that changed, were added or removed, by name.
    pub changed: Vec<String>,
    pub removed: Vec<String>,
}

/// Accept a pending case or model: check the new set is complete and matches its manifest, then
/// swap it in atomically. A case whose new goldens were computed from pending model weights
/// accepts that model first (the goldens would be stale without it).
pub fn accept(goldens_dir: &Path, p: &Pending) -> Result<Vec<Accepted>> {
    let mut done = Vec::new();
    if p.kind == Kind::Case {
        let m = p.new_manifest()?;
        let model = Pending {
            id: format!("models/{}", m.model.id),
            kind: Kind::Model,
            dir: goldens_dir.join("models").join(&m.model.id),
        };
        if model.marker().is_file() {
            let weights = model.resolve("model.safetensors");
            let pending_weights = weights.extension().is_some_and(|e| e == "new");
            if pending_weights && sha256_file(&weights)? == m.model.weights_sha256 {
                done.extend(accept(goldens_dir, &model)?);
            }
        }
    }
    let files = p.files()?;
    let names: BTreeSet<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    let keep: BTreeSet<String> = match p.kind {
        Kind::Case => {
            let m = p.new_manifest()?;
            for e in &m.taps {
                let src = p.resolve(&e.file);
                if !src.is_file() {
                    return Err(Error::golden(format!("pending goldens are incomplete: `{}` has no file", e.name))
                        .file(p.marker())
                        .hint(format!(
                            "regenerate: {} --pending",
                            super::regen_command(&crate::project::find_root().unwrap_or_else(|_| ".".into()), &p.id)
                        )));
                }
                if sha256_file(&src)? != e.sha256 {
                    return Err(Error::golden(format!("`{}` does not match the pending manifest's sha256", e.name))
                        .file(&src)
                        .hint(format!(
                            "regenerate: {} --pending",
                            super::regen_command(&crate::project::find_root().unwrap_or_else(|_| ".".into()), &p.id)
                        )));
                }
            }
            m.taps.iter().map(|e| e.file.clone()).chain([MANIFEST.to_string()]).collect()
        }
        Kind::Model => names.iter().map(|s| s.to_string()).collect(),
    };
    let plan: Vec<(String, PathBuf)> = keep.iter().map(|n| (n.clone(), p.resolve(n))).collect();
    let changed = files.iter().filter(|(_, new)| *new).map(|(n, _)| n.clone()).filter(|n| n != MANIFEST).collect();
    let removed = names.iter().filter(|n| !keep.contains(**n)).map(|s| s.to_string()).collect();
    atomic::replace_dir(&p.dir, &plan)?;
    done.push(Accepted { id: p.id.clone(), changed, removed });
    Ok(done)
}

/// Reject a pending case or model: the accepted goldens stay exactly as they are.
pub fn reject(p: &Pending) -> Result<()> {
    // The marker goes first: once it is gone nothing is pending, even if we stop here.
    let marker = p.marker();
    std::fs::remove_file(&marker).map_err(|e| Error::io(&marker, &e))?;
    for (name, new) in p.files()? {
        if new {
            let f = p.dir.join(format!("{name}{SUFFIX}"));
            std::fs::remove_file(&f).map_err(|e| Error::io(&f, &e))?;
        }
    }
    // A case that had no accepted goldens leaves an empty directory.
    if std::fs::read_dir(&p.dir).is_ok_and(|mut d| d.next().is_none()) {
        let _ = std::fs::remove_dir(&p.dir);
    }
    Ok(())
}

/// Leftover `.new` files without a marker (an interrupted reject): removed, and reported.
pub fn clean_orphans(goldens_dir: &Path) -> Vec<String> {
    let mut notes = Vec::new();
    let mut stack = vec![goldens_dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        let entries: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
        let has_marker = entries.iter().any(|p| {
            p.file_name().is_some_and(|n| {
                n == format!("{MANIFEST}{SUFFIX}").as_str() || n == format!("{MODEL_MARKER}{SUFFIX}").as_str()
            })
        });
        for p in entries {
            if p.is_dir() {
                if !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')) {
                    stack.push(p);
                }
            } else if !has_marker && p.extension().is_some_and(|e| e == "new") && std::fs::remove_file(&p).is_ok() {
                notes.push(format!("removed {} (left by an interrupted reject)", display_path(&p)));
            }
        }
    }
    notes
}
