//! Replacing a golden directory so that no interruption leaves a mix of old and new files: the
//! complete new directory is built in a hidden sibling `.<name>.tmp-<pid>` and exchanged with the
//! old one by `renameat2(RENAME_EXCHANGE)` (Linux). Elsewhere, or on a filesystem without it,
//! two renames via `.<name>.old-<pid>`; [`recover`] (and tools/hflib/store.py's `recover`, which
//! uses the same names) puts the old directory back after a kill between them.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

fn sibling(dir: &Path, tag: &str) -> PathBuf {
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    dir.with_file_name(format!(".{name}.{tag}-{}", std::process::id()))
}

fn fsync_dir(dir: &Path) {
    if let Ok(f) = std::fs::File::open(dir) {
        let _ = f.sync_all();
    }
}

#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let ca = std::ffi::CString::new(a.as_os_str().as_bytes())?;
    let cb = std::ffi::CString::new(b.as_os_str().as_bytes())?;
    // SAFETY: two valid NUL-terminated paths; the call only renames.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

#[cfg(not(target_os = "linux"))]
fn exchange(_: &Path, _: &Path) -> std::io::Result<()> {
    Err(std::io::Error::from(std::io::ErrorKind::Unsupported))
}

/// Make `dir` hold exactly `files` (name -> source file), atomically. Sources are hard-linked
/// (copied where links are not possible), so files carried over keep their bytes and inode.
pub fn replace_dir(dir: &Path, files: &[(String, PathBuf)]) -> Result<()> {
    let tmp = sibling(dir, "tmp");
    let io = |p: &Path, e: std::io::Error| Error::io(p, &e);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| io(&tmp, e))?;
    let built = (|| {
        for (name, src) in files {
            let dst = tmp.join(name);
            if std::fs::hard_link(src, &dst).is_err() {
                std::fs::copy(src, &dst).map_err(|e| io(src, e))?;
                std::fs::File::open(&dst).and_then(|f| f.sync_all()).map_err(|e| io(&dst, e))?;
            }
        }
        fsync_dir(&tmp);
        Ok(())
    })();
    if let Err(e) = built {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let parent = dir.parent().unwrap_or(Path::new("."));
    if !dir.exists() {
        std::fs::rename(&tmp, dir).map_err(|e| io(dir, e))?;
    } else if exchange(&tmp, dir).is_ok() {
        // `tmp` now holds the old contents.
        std::fs::remove_dir_all(&tmp).map_err(|e| io(&tmp, e))?;
    } else {
        let old = sibling(dir, "old");
        std::fs::rename(dir, &old).map_err(|e| io(dir, e))?;
        std::fs::rename(&tmp, dir).map_err(|e| io(dir, e))?;
        std::fs::remove_dir_all(&old).map_err(|e| io(&old, e))?;
    }
    fsync_dir(parent);
    Ok(())
}

/// Clean up after interrupted swaps under `root`: remove `.X.tmp-*` directories and put back an
/// `.X.old-*` whose `X` is missing. Returns what was done, for the user.
pub fn recover(root: &Path) -> Vec<String> {
    let mut notes = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if !p.is_dir() {
                continue;
            }
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(rest) = name.strip_prefix('.') {
                if let Some(i) = rest.find(".tmp-") {
                    // A writer still at work (the goldens tool holds the directory's lock).
                    let id = d.join(&rest[..i]);
                    let id = id.strip_prefix(root).unwrap_or(&id).to_string_lossy().into_owned();
                    if super::lock::is_locked(root, &id) {
                        continue;
                    }
                    if std::fs::remove_dir_all(&p).is_ok() {
                        notes.push(format!("removed unfinished {}", crate::error::display_path(&p)));
                    }
                } else if let Some(i) = rest.find(".old-") {
                    let fin = d.join(&rest[..i]);
                    if fin.exists() {
                        let _ = std::fs::remove_dir_all(&p);
                    } else if std::fs::rename(&p, &fin).is_ok() {
                        notes.push(format!("restored {} from an interrupted swap", crate::error::display_path(&fin)));
                    }
                }
            } else {
                stack.push(p);
            }
        }
    }
    notes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_contents_and_keeps_carried_over_inodes() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("case");
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("a"), "old a").unwrap();
        std::fs::write(d.join("b"), "old b").unwrap();
        std::fs::write(d.join("b.new"), "new b").unwrap();
        replace_dir(&d, &[("a".into(), d.join("a")), ("b".into(), d.join("b.new"))]).unwrap();
        let mut names: Vec<String> =
            std::fs::read_dir(&d).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(std::fs::read_to_string(d.join("b")).unwrap(), "new b");
        let siblings: Vec<_> = std::fs::read_dir(t.path()).unwrap().collect();
        assert_eq!(siblings.len(), 1, "no temp directory left behind");
    }

    #[test]
    fn recover_restores_a_half_swapped_directory() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("llama/.mha.old-123")).unwrap();
        std::fs::create_dir_all(t.path().join("llama/.gqa.tmp-123")).unwrap();
        let notes = recover(t.path());
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(t.path().join("llama/mha").is_dir());
        assert!(!t.path().join("llama/.gqa.tmp-123").exists());
    }
}
