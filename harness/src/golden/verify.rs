//! Checking a file (a golden, model weights) against the sha256 its manifest records.
//!
//! sha256 runs at about 1 GB/s on one core, 10-30x slower than reading a file from the page
//! cache, so hashing every large golden on every load would make loading, not comparing, the
//! cost of a suite. The policy:
//! - files under [`CACHE_MIN_BYTES`] are hashed on every check;
//! - a larger file is hashed in full the first time; when it matches, the match is remembered
//!   in `target/harness/verified/` with the file's identity (size, mtime and ctime to the
//!   nanosecond, inode, device). Later checks of an unchanged file skip the hash. Writing to the
//!   file changes its ctime (which user space cannot set back), so an edited golden is hashed
//!   again and a mismatch is reported as before;
//! - a file changed less than [`RACY_SECS`] ago is never remembered: timestamps are coarse, and a
//!   write in the same tick as the hash would otherwise go unseen (git's "racy clean" problem);
//! - `HARNESS_VERIFY_CACHE=0` turns remembering off; `HARNESS_VERIFY_CACHE=<dir>` moves it.
//!   Deleting the directory forces every file to be hashed again.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{sha256_bytes, sha256_file};
use crate::error::Result;

/// Smaller files are hashed on every check: 64 KiB hashes in ~60 µs, about 4x what looking up
/// a remembered check costs.
pub const CACHE_MIN_BYTES: u64 = 64 << 10;
/// A file modified this recently is hashed but not remembered.
pub const RACY_SECS: u64 = 2;

pub struct Verifier {
    cache: Option<PathBuf>,
    min_bytes: u64,
    racy_secs: u64,
    hashed: AtomicUsize,
}

impl Verifier {
    /// The verifier of the repository at `root`, configured by `HARNESS_VERIFY_CACHE`.
    pub fn for_root(root: &Path) -> Verifier {
        let cache = match std::env::var_os("HARNESS_VERIFY_CACHE") {
            Some(v) if v == "0" || v == "off" || v == "false" => None,
            Some(v) if !v.is_empty() => Some(PathBuf::from(v)),
            _ => Some(root.join("target/harness/verified")),
        };
        Verifier::new(cache, CACHE_MIN_BYTES, RACY_SECS)
    }

    pub fn new(cache: Option<PathBuf>, min_bytes: u64, racy_secs: u64) -> Verifier {
        Verifier { cache, min_bytes, racy_secs, hashed: AtomicUsize::new(0) }
    }

    /// How many files were hashed in full so far.
    pub fn hashed(&self) -> usize {
        self.hashed.load(Ordering::Relaxed)
    }

    /// `None` when `path` has the sha256 `expected`, else `Some(actual sha256)`.
    pub fn check(&self, path: &Path, expected: &str) -> Result<Option<String>> {
        let before = Identity::of(path);
        let entry = match (&self.cache, &before) {
            (Some(dir), Some(id)) if id.size >= self.min_bytes => {
                let entry = dir.join(&sha256_bytes(format!("{}\0{expected}", path.display()).as_bytes())[..32]);
                if std::fs::read_to_string(&entry).is_ok_and(|s| s == id.line(expected)) {
                    return Ok(None);
                }
                Some(entry)
            }
            _ => None,
        };
        self.hashed.fetch_add(1, Ordering::Relaxed);
        let actual = sha256_file(path)?;
        if actual != expected {
            return Ok(Some(actual));
        }
        if let (Some(entry), Some(id)) = (entry, before)
            && Identity::of(path).as_ref() == Some(&id)
            && !id.is_racy(self.racy_secs)
        {
            // Best effort: a cache that cannot be written only costs a hash next time.
            let _ = std::fs::create_dir_all(entry.parent().unwrap_or(Path::new(".")))
                .and_then(|_| std::fs::write(&entry, id.line(expected)));
        }
        Ok(None)
    }
}

/// What changes when a file's content can have changed.
#[derive(Debug, PartialEq)]
struct Identity {
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    ino: u64,
    dev: u64,
}

impl Identity {
    #[cfg(unix)]
    fn of(path: &Path) -> Option<Identity> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).ok()?;
        Some(Identity {
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
            ino: m.ino(),
            dev: m.dev(),
        })
    }

    /// Without ctime and inodes a file's identity is not trustworthy: always hash.
    #[cfg(not(unix))]
    fn of(_: &Path) -> Option<Identity> {
        None
    }

    fn line(&self, expected: &str) -> String {
        let Identity { size, mtime, ctime, ino, dev } = self;
        format!("v1 {expected} {size} {}.{} {}.{} {ino} {dev}\n", mtime.0, mtime.1, ctime.0, ctime.1)
    }

    fn is_racy(&self, secs: u64) -> bool {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
        now - self.mtime.0.max(self.ctime.0) < secs as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, PathBuf, String, Verifier) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("g.npy");
        std::fs::write(&file, b"0123456789").unwrap();
        let sha = sha256_file(&file).unwrap();
        let v = Verifier::new(Some(dir.path().join("cache")), 0, 0);
        (dir, file, sha, v)
    }

    #[test]
    fn an_unchanged_file_is_hashed_once() {
        let (_d, file, sha, v) = setup();
        assert_eq!(v.check(&file, &sha).unwrap(), None);
        assert_eq!(v.check(&file, &sha).unwrap(), None);
        assert_eq!(v.hashed(), 1);
    }

    #[test]
    fn an_edited_file_is_hashed_again_and_caught() {
        let (_d, file, sha, v) = setup();
        assert_eq!(v.check(&file, &sha).unwrap(), None);
        // Same size, and the mtime put back: the ctime still tells.
        let mtime = std::fs::metadata(&file).unwrap().modified().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&file, b"0123456780").unwrap();
        std::fs::File::options().write(true).open(&file).unwrap().set_modified(mtime).unwrap();
        assert!(v.check(&file, &sha).unwrap().is_some());
        assert_eq!(v.hashed(), 2);
    }

    #[test]
    fn another_expected_hash_is_not_taken_from_the_cache() {
        let (_d, file, sha, v) = setup();
        assert_eq!(v.check(&file, &sha).unwrap(), None);
        assert!(v.check(&file, &"0".repeat(64)).unwrap().is_some());
    }

    #[test]
    fn small_recent_or_uncached_files_are_always_hashed() {
        let (d, file, sha, _) = setup();
        for v in [
            Verifier::new(Some(d.path().join("c1")), 1 << 10, 0),
            Verifier::new(Some(d.path().join("c2")), 0, 3600),
            Verifier::new(None, 0, 0),
        ] {
            v.check(&file, &sha).unwrap();
            v.check(&file, &sha).unwrap();
            assert_eq!(v.hashed(), 2);
        }
        assert!(!d.path().join("c1").exists() && !d.path().join("c2").exists());
    }

    #[test]
    fn a_mismatch_is_never_remembered() {
        let (d, file, _, v) = setup();
        let wrong = "0".repeat(64);
        assert!(v.check(&file, &wrong).unwrap().is_some());
        assert!(v.check(&file, &wrong).unwrap().is_some());
        assert!(!d.path().join("cache").exists());
    }
}
