//! One error type for the whole crate.
//!
//! Errors are for people: they name the file (and line:column when there is one), say what is
//! wrong in lowercase, and end with a hint. `Display` renders exactly that one line, e.g.
//! `cases/llama/gqa.yaml:12:5: unknown key `tolerence` (hint: did you mean `tolerance`?)`.

use std::fmt;
use std::path::{Path, PathBuf};

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, coarsely; callers match on it (e.g. a stale golden gets the regenerate command).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// A case, model spec, engine spec or other file the user wrote is invalid.
    Input,
    /// A golden is missing, corrupt or does not belong to the current case/model (stale).
    Golden,
    /// Goldens exist but were produced from a different case, model spec or weights.
    Stale,
    /// The engine under test failed (crash, timeout, wrong output).
    Engine,
    /// Reading or writing a file failed.
    Io,
    /// A checkpoint on disk (`path:` or `hf:` source) is not there: its cases are ignored.
    ModelAbsent,
}

/// The first line of a Git LFS pointer file: what a clone without `git lfs` holds in place of
/// a large file.
pub const GIT_LFS_POINTER: &[u8] = b"version https://git-lfs.github.com/spec/v1";

/// The error for `path` when `head` (its first bytes) is a Git LFS pointer, not the file.
pub fn git_lfs_pointer(path: &Path, head: &[u8]) -> Option<Error> {
    head.starts_with(GIT_LFS_POINTER).then(|| {
        let size = std::str::from_utf8(head)
            .ok()
            .and_then(|s| s.lines().find_map(|l| l.strip_prefix("size ")))
            .map(|n| format!(" (the real file has {n} bytes)"))
            .unwrap_or_default();
        Error::golden(format!("a Git LFS pointer, not the file it stands for{size}"))
            .file(path)
            .hint("fetch the files Git LFS tracks: `git lfs install && git lfs pull`")
    })
}

/// [`git_lfs_pointer`] on the first bytes of the file at `path` (None when it cannot be read).
pub fn git_lfs_pointer_file(path: &Path) -> Option<Error> {
    use std::io::Read;
    let mut head = [0u8; 200];
    let mut f = std::fs::File::open(path).ok()?;
    let n = f.read(&mut head).ok()?;
    git_lfs_pointer(path, &head[..n])
}

/// 1-based line and column in a text file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
}

#[derive(Debug, Clone)]
pub struct Error {
    pub kind: ErrorKind,
    pub file: Option<PathBuf>,
    pub pos: Option<Pos>,
    pub msg: String,
    pub hint: Option<String>,
}

impl Error {
    pub fn new(kind: ErrorKind, msg: impl Into<String>) -> Self {
        Error { kind, file: None, pos: None, msg: msg.into(), hint: None }
    }
    pub fn input(msg: impl Into<String>) -> Self {
        Self::new(ErrorKind::Input, msg)
    }
    pub fn golden(msg: impl Into<String>) -> Self {
        Self::new(ErrorKind::Golden, msg)
    }
    pub fn engine(msg: impl Into<String>) -> Self {
        Self::new(ErrorKind::Engine, msg)
    }
    pub fn io(path: &Path, err: &std::io::Error) -> Self {
        let what = match err.kind() {
            std::io::ErrorKind::NotFound => "no such file or directory".to_string(),
            std::io::ErrorKind::PermissionDenied => "permission denied".to_string(),
            _ => lowercase_first(&err.to_string()),
        };
        Self::new(ErrorKind::Io, what).file(path)
    }

    /// Attach the file this error is about (kept if one is already set: the innermost wins).
    pub fn file(mut self, path: impl AsRef<Path>) -> Self {
        if self.file.is_none() {
            self.file = Some(path.as_ref().to_path_buf());
        }
        self
    }
    pub fn at(mut self, pos: Option<Pos>) -> Self {
        if self.pos.is_none() {
            self.pos = pos;
        }
        self
    }
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
    pub fn kind(mut self, kind: ErrorKind) -> Self {
        self.kind = kind;
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{}", display_path(file))?;
            if let Some(p) = self.pos {
                write!(f, ":{}:{}", p.line, p.col)?;
            }
            write!(f, ": ")?;
        }
        write!(f, "{}", self.msg)?;
        if let Some(h) = &self.hint {
            write!(f, " (hint: {h})")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {}

#[cfg(feature = "candle")]
impl From<candle_core::Error> for Error {
    fn from(e: candle_core::Error) -> Self {
        Error::engine(format!("candle: {}", lowercase_first(&candle_message(&e))))
    }
}

#[cfg(feature = "candle")]
/// A candle error's message without the backtrace candle appends when RUST_BACKTRACE is set.
pub fn candle_message(e: &candle_core::Error) -> String {
    match e {
        candle_core::Error::WithBacktrace { inner, .. } => candle_message(inner),
        e => e.to_string(),
    }
}

/// Paths are shown relative to the current directory when they are under it.
pub fn display_path(p: &Path) -> String {
    if let Ok(cwd) = std::env::current_dir()
        && let Ok(rel) = p.strip_prefix(&cwd)
    {
        return rel.display().to_string();
    }
    p.display().to_string()
}

/// Lowercase the first letter of a message from a library, unless it starts an acronym (`EOF`).
pub fn lowercase_first(s: &str) -> String {
    let mut c = s.chars();
    let second_upper = s.chars().nth(1).is_some_and(|ch| ch.is_uppercase() || ch == '/');
    match c.next() {
        Some(first) if !second_upper => first.to_lowercase().chain(c).collect(),
        _ => s.to_string(),
    }
}

/// The closest candidate to `word`, if one is close enough to be a plausible typo.
pub fn did_you_mean<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::damerau_levenshtein(word, c), c))
        .filter(|(d, c)| *d <= 1 + c.len().min(word.len()) / 8)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_file_pos_and_hint() {
        let e = Error::input("unknown key `tolerence`")
            .file("cases/x.yaml")
            .at(Some(Pos { line: 12, col: 5 }))
            .hint("did you mean `tolerance`?");
        assert_eq!(e.to_string(), "cases/x.yaml:12:5: unknown key `tolerence` (hint: did you mean `tolerance`?)");
    }

    #[test]
    fn suggests_only_close_words() {
        let keys = ["tolerance", "taps", "inputs", "model"];
        assert_eq!(did_you_mean("tolerence", keys), Some("tolerance"));
        assert_eq!(did_you_mean("tap", keys), Some("taps"));
        assert_eq!(did_you_mean("zzzzzz", keys), None);
    }
}
