//! `source: {hf: org/name}`: a checkpoint in the local Hugging Face cache, resolved offline.
//!
//! The cache is laid out as huggingface_hub writes it:
//! `<cache>/models--{org}--{name}/refs/{ref}` holds a commit hash and
//! `<cache>/models--{org}--{name}/snapshots/{hash}/` the files. The harness never downloads.

use std::path::{Path, PathBuf};

/// The hub cache directory, as huggingface_hub picks it: `$HF_HUB_CACHE`, else `$HF_HOME/hub`,
/// else `$XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`.
pub fn cache_dir() -> PathBuf {
    cache_dir_from(|k| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from))
}

/// [`cache_dir`] with the environment given as a lookup (for tests).
pub fn cache_dir_from(env: impl Fn(&str) -> Option<PathBuf>) -> PathBuf {
    if let Some(p) = env("HF_HUB_CACHE") {
        return p;
    }
    if let Some(p) = env("HF_HOME") {
        return p.join("hub");
    }
    let cache = env("XDG_CACHE_HOME").or_else(|| env("HOME").map(|h| h.join(".cache"))).unwrap_or_default();
    cache.join("huggingface").join("hub")
}

/// Check a repository id (`org/name` or a legacy `name`) as the hub accepts it; the message says
/// what is wrong.
pub fn check_repo_id(id: &str) -> Result<(), String> {
    let parts: Vec<&str> = id.split('/').collect();
    if parts.len() > 2 {
        return Err(format!("`{id}` has {} `/`: a hub id is `org/name`", parts.len() - 1));
    }
    for p in &parts {
        if p.is_empty() {
            return Err(format!("`{id}` has an empty part: a hub id is `org/name`"));
        }
        if p.len() > 96 {
            return Err(format!("`{p}` is longer than 96 characters"));
        }
        if let Some(c) = p.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))) {
            return Err(format!("`{id}` contains `{c}`: hub ids use letters, digits, `-`, `_` and `.`"));
        }
        if p.starts_with(['-', '.']) || p.ends_with(['-', '.']) || p.contains("--") || p.contains("..") {
            return Err(format!("`{id}` is not a valid hub id (no leading or trailing `-`/`.`, no `--` or `..`)"));
        }
    }
    Ok(())
}

/// Check a revision: a branch or tag name, or a commit hash.
pub fn check_revision(rev: &str) -> Result<(), String> {
    let ok = !rev.is_empty()
        && rev.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
        && !rev.contains("..")
        && !rev.starts_with('/');
    if ok { Ok(()) } else { Err(format!("`{rev}` is not a branch, tag or commit hash")) }
}

pub fn is_commit_hash(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// The repository's directory in the cache.
pub fn repo_dir(cache: &Path, id: &str) -> PathBuf {
    cache.join(format!("models--{}", id.replace('/', "--")))
}

/// The snapshot directory of `id` at `revision` (default `main`) and its commit hash, or why it
/// is not in the cache.
pub fn resolve(cache: &Path, id: &str, revision: Option<&str>) -> Result<(PathBuf, String), String> {
    let repo = repo_dir(cache, id);
    if !repo.is_dir() {
        return Err(format!("`{id}` is not in the Hugging Face cache ({} does not exist)", repo.display()));
    }
    let rev = revision.unwrap_or("main");
    let hash = if is_commit_hash(rev) {
        rev.to_string()
    } else {
        let r = repo.join("refs").join(rev);
        let text = std::fs::read_to_string(&r)
            .map_err(|_| format!("`{id}` has no revision `{rev}` in the cache ({} does not exist)", r.display()))?;
        let h = text.trim().to_string();
        if !is_commit_hash(&h) {
            return Err(format!("{} does not hold a commit hash", r.display()));
        }
        h
    };
    let snap = repo.join("snapshots").join(&hash);
    if !snap.is_dir() {
        return Err(format!("`{id}` at {hash} is not in the cache ({} does not exist)", snap.display()));
    }
    Ok((snap, hash))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_dir_follows_huggingface_hub() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| PathBuf::from(v))
        };
        assert_eq!(cache_dir_from(env(&[("HF_HUB_CACHE", "/a"), ("HF_HOME", "/b")])), PathBuf::from("/a"));
        assert_eq!(cache_dir_from(env(&[("HF_HOME", "/b"), ("HOME", "/h")])), PathBuf::from("/b/hub"));
        assert_eq!(
            cache_dir_from(env(&[("XDG_CACHE_HOME", "/x"), ("HOME", "/h")])),
            PathBuf::from("/x/huggingface/hub")
        );
        assert_eq!(cache_dir_from(env(&[("HOME", "/h")])), PathBuf::from("/h/.cache/huggingface/hub"));
    }

    #[test]
    fn repo_ids() {
        assert!(check_repo_id("sentence-transformers/all-MiniLM-L6-v2").is_ok());
        assert!(check_repo_id("bert-base-uncased").is_ok());
        for bad in ["a/b/c", "/x", "org/", "org/na me", "org/-x", "org/a--b", "../x", "org/x.."] {
            assert!(check_repo_id(bad).is_err(), "{bad}");
        }
        assert!(check_revision("main").is_ok() && check_revision("v1.0/rc").is_ok());
        assert!(check_revision("../main").is_err() && check_revision("").is_err());
    }

    #[test]
    fn resolves_refs_and_hashes() {
        let dir = tempfile::tempdir().unwrap();
        let h = "0123456789abcdef0123456789abcdef01234567";
        let repo = repo_dir(dir.path(), "org/m");
        std::fs::create_dir_all(repo.join("snapshots").join(h)).unwrap();
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), h).unwrap();
        assert_eq!(resolve(dir.path(), "org/m", None).unwrap().1, h);
        assert_eq!(resolve(dir.path(), "org/m", Some(h)).unwrap().0, repo.join("snapshots").join(h));
        assert!(resolve(dir.path(), "org/m", Some("dev")).unwrap_err().contains("no revision `dev`"));
        assert!(resolve(dir.path(), "org/other", None).unwrap_err().contains("not in the Hugging Face cache"));
    }
}
