//! The writer lock of a golden directory, shared with the goldens tool
//! (tools/harness_goldens/store.py `lock`): an exclusive flock on `<goldens>/.locks/<id>.lock`,
//! which holds the holder's pid. `harness goldens accept/reject` take it, so they never mix with
//! a regeneration of the same case; `recover` leaves alone the temporary directories of a
//! directory whose lock is held.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

pub const LOCKS: &str = ".locks";

/// The lock file of golden directory `id` (`llama/mha`, `models/llama-tiny-mha`).
pub fn lock_file(goldens: &Path, id: &str) -> PathBuf {
    goldens.join(LOCKS).join(format!("{id}.lock"))
}

/// A held lock; released (and its file removed) on drop.
pub struct Held {
    #[cfg(unix)]
    file: std::fs::File,
    path: PathBuf,
}

impl Drop for Held {
    fn drop(&mut self) {
        // As the goldens tool does: remove the file first, then let go (closing unlocks).
        let _ = std::fs::remove_file(&self.path);
        #[cfg(unix)]
        let _ = &self.file;
    }
}

/// Take the lock of `id`, waiting for another holder (after saying so through `waiting`).
#[cfg(unix)]
pub fn hold(goldens: &Path, id: &str, waiting: &mut dyn FnMut(&str)) -> Result<Held> {
    use std::io::{Read, Seek, Write};
    use std::os::unix::io::AsRawFd;
    let path = lock_file(goldens, id);
    let mut said = false;
    loop {
        let parent = path.parent().unwrap();
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, &e))?;
        let mut file = match std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io(&path, &e)),
        };
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            if !said {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let pid = pid.trim();
                waiting(&format!(
                    "waiting for another writer of {id} (pid {})",
                    if pid.chars().all(|c| c.is_ascii_digit()) && !pid.is_empty() { pid } else { "?" }
                ));
                said = true;
            }
            // SAFETY: as above; blocks until the holder lets go.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
                return Err(Error::io(&path, &std::io::Error::last_os_error()));
            }
        }
        // The holder removes the file before letting go: if that happened, lock the new one.
        let same = match (std::fs::metadata(&path), file.metadata()) {
            (Ok(a), Ok(b)) => {
                use std::os::unix::fs::MetadataExt;
                a.ino() == b.ino() && a.dev() == b.dev()
            }
            _ => false,
        };
        if !same {
            continue;
        }
        let _ = file.set_len(0);
        let _ = file.rewind();
        let _ = writeln!(file, "{}", std::process::id());
        return Ok(Held { file, path });
    }
}

#[cfg(not(unix))]
pub fn hold(goldens: &Path, id: &str, _waiting: &mut dyn FnMut(&str)) -> Result<Held> {
    Ok(Held { path: lock_file(goldens, id) })
}

/// Whether another process holds the lock of `id` now (never creates the file).
pub fn is_locked(goldens: &Path, id: &str) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::io::AsRawFd;
        let Ok(f) = std::fs::File::open(lock_file(goldens, id)) else { return false };
        // SAFETY: flock on a descriptor we own; released when `f` closes.
        unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) != 0 }
    }
    #[cfg(not(unix))]
    {
        let _ = (goldens, id);
        false
    }
}
