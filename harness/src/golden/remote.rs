//! A content-addressed remote store for goldens too large to commit (`[goldens] remote` in
//! harness.toml). The repository keeps each case's `manifest.json`; a `.npy` that is absent
//! (or a Git LFS pointer) is fetched by its manifest sha256 from `<remote>/<sha[..2]>/<sha>`
//! into a local cache, verified, and read from there. The store is plain files: any HTTP(S)
//! server, an S3-compatible bucket's HTTPS endpoint, or a `file://` directory.
//! `harness goldens export-store <dir>` lays out a project's goldens that way for upload.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Where fetched goldens are kept: `$HARNESS_GOLDENS_CACHE`, else `$XDG_CACHE_HOME/harness/goldens`,
/// else `~/.cache/harness/goldens`.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("HARNESS_GOLDENS_CACHE").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("harness/goldens")
}

/// The object name of a sha256 in a store: `ab/abcdef...`.
pub fn object_path(sha256: &str) -> Result<PathBuf> {
    if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) {
        return Err(Error::golden(format!("`{sha256}` is not a lowercase sha256")));
    }
    Ok(Path::new(&sha256[..2]).join(sha256))
}

/// The golden with `sha256` from the store at `remote`, as a verified file in `cache`
/// (downloaded once; a cached file is trusted only if it still hashes to its name).
/// `for_file` is the golden's path in the repository, for the errors.
pub fn fetch(remote: &str, cache: &Path, sha256: &str, for_file: &Path) -> Result<PathBuf> {
    let rel = object_path(sha256).map_err(|e| e.file(for_file))?;
    let dst = cache.join(&rel);
    if dst.is_file() && crate::hash::sha256_file(&dst)? == sha256 {
        return Ok(dst);
    }
    let url = format!("{}/{}/{}", remote.trim_end_matches('/'), &sha256[..2], sha256);
    let dir = dst.parent().unwrap();
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, &e))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| Error::io(dir, &e))?;
    let fail = |why: String| {
        Error::golden(format!("absent here, and fetching it from the goldens store failed: {why}"))
            .file(for_file)
            .hint(format!("check `[goldens] remote` in harness.toml and that {url} is reachable"))
    };
    let mut hasher = crate::hash::Sha256Writer::default();
    let copied = copy_from(&url, &mut Tee(tmp.as_file_mut(), &mut hasher)).map_err(fail)?;
    let got = hasher.hex();
    if got != sha256 {
        return Err(Error::golden(format!(
            "the goldens store served {copied} bytes hashing to {}, not the manifest's {}",
            &got[..12],
            &sha256[..12]
        ))
        .file(for_file)
        .hint(format!(
            "the store's {url} is corrupt or was overwritten; re-upload it (harness goldens export-store)"
        )));
    }
    tmp.as_file().sync_all().map_err(|e| Error::io(tmp.path(), &e))?;
    tmp.persist(&dst).map_err(|e| Error::io(&dst, &e.error))?;
    Ok(dst)
}

/// Stream `url` into `out`; the number of bytes copied.
fn copy_from(url: &str, out: &mut impl Write) -> std::result::Result<u64, String> {
    if let Some(path) = url.strip_prefix("file://") {
        let mut f = std::fs::File::open(path).map_err(|e| format!("{path}: {e}"))?;
        return std::io::copy(&mut f, out).map_err(|e| e.to_string());
    }
    #[cfg(feature = "remote")]
    {
        let resp = ureq::get(url).call().map_err(|e| format!("GET {url}: {e}"))?;
        let mut body = resp.into_body().into_reader();
        std::io::copy(&mut body, out).map_err(|e| format!("GET {url}: {e}"))
    }
    #[cfg(not(feature = "remote"))]
    Err(format!("this build has no HTTP client (cargo feature `remote`): cannot GET {url}"))
}

struct Tee<'a, A: Write, B: Write>(&'a mut A, &'a mut B);

impl<A: Write, B: Write> Write for Tee<'_, A, B> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.0.write(buf)?;
        self.1.write_all(&buf[..n])?;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()?;
        self.1.flush()
    }
}

/// Lay out the goldens of every manifest under `goldens` as a content-addressed store in `out`
/// (`<sha[..2]>/<sha>`), each file verified against its manifest; returns (written, already there).
/// Upload `out` as it is (e.g. `aws s3 sync out s3://bucket/goldens/`).
pub fn export(goldens: &Path, out: &Path, progress: &mut dyn FnMut(&str)) -> Result<(usize, usize)> {
    let (mut written, mut present) = (0, 0);
    let mut manifests = Vec::new();
    find_manifests(goldens, &mut manifests)?;
    manifests.sort();
    for m in manifests {
        let dir = m.parent().unwrap();
        let text = std::fs::read(&m).map_err(|e| Error::io(&m, &e))?;
        let manifest: super::Manifest =
            serde_json::from_slice(&text).map_err(|e| Error::golden(format!("invalid manifest: {e}")).file(&m))?;
        progress(&format!("{} ({} goldens)", crate::error::display_path(dir), manifest.taps.len()));
        for e in &manifest.taps {
            let src = dir.join(&e.file);
            let dst = out.join(object_path(&e.sha256).map_err(|err| err.file(&m))?);
            if dst.is_file() {
                present += 1;
                continue;
            }
            if let Some(err) = crate::error::git_lfs_pointer_file(&src) {
                return Err(err);
            }
            let got = crate::hash::sha256_file(&src)?;
            if got != e.sha256 {
                return Err(Error::golden(format!("sha256 {} does not match the manifest", &got[..12]))
                    .file(&src)
                    .hint("regenerate the case's goldens before exporting them"));
            }
            let parent = dst.parent().unwrap();
            std::fs::create_dir_all(parent).map_err(|err| Error::io(parent, &err))?;
            let tmp = tempfile::NamedTempFile::new_in(parent).map_err(|err| Error::io(parent, &err))?;
            std::fs::copy(&src, tmp.path()).map_err(|err| Error::io(&src, &err))?;
            tmp.persist(&dst).map_err(|err| Error::io(&dst, &err.error))?;
            written += 1;
        }
    }
    Ok((written, present))
}

fn find_manifests(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for e in std::fs::read_dir(dir).map_err(|e| Error::io(dir, &e))? {
        let p = e.map_err(|e| Error::io(dir, &e))?.path();
        if p.is_dir() {
            find_manifests(&p, out)?;
        } else if p.file_name().is_some_and(|n| n == super::MANIFEST) {
            out.push(p);
        }
    }
    Ok(())
}

/// Whether `path` holds a golden's bytes here (not absent, not a Git LFS pointer).
pub fn present(path: &Path) -> bool {
    if !path.is_file() {
        return false;
    }
    let mut head = [0u8; 64];
    let n = std::fs::File::open(path).and_then(|mut f| f.read(&mut head)).unwrap_or(0);
    !head[..n].starts_with(crate::error::GIT_LFS_POINTER)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_paths_are_checked_sha256() {
        let sha = "ab".repeat(32);
        assert_eq!(object_path(&sha).unwrap(), Path::new("ab").join(&sha));
        assert!(object_path("../../etc/passwd").is_err());
        assert!(object_path(&"AB".repeat(32)).is_err());
    }

    #[test]
    fn file_store_fetches_verifies_and_caches() {
        let store = tempfile::tempdir().unwrap();
        let cache = tempfile::tempdir().unwrap();
        let bytes = b"not really a golden";
        let sha = crate::hash::sha256_bytes(bytes);
        let obj = store.path().join(object_path(&sha).unwrap());
        std::fs::create_dir_all(obj.parent().unwrap()).unwrap();
        std::fs::write(&obj, bytes).unwrap();
        let remote = format!("file://{}", store.path().display());
        let got = fetch(&remote, cache.path(), &sha, Path::new("g/x.npy")).unwrap();
        assert_eq!(std::fs::read(&got).unwrap(), bytes);
        // Served bytes that do not hash to the name are refused and not cached.
        std::fs::write(&obj, b"tampered").unwrap();
        std::fs::remove_file(&got).unwrap();
        let e = fetch(&remote, cache.path(), &sha, Path::new("g/x.npy")).unwrap_err().to_string();
        assert!(e.contains("g/x.npy") && e.contains("not the manifest's"), "{e}");
        assert!(!got.exists());
        let e = fetch(&remote, cache.path(), &"cd".repeat(32), Path::new("g/y.npy")).unwrap_err().to_string();
        assert!(e.contains("fetching it from the goldens store failed"), "{e}");
    }
}
