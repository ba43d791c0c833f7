//! The project file, `harness.toml`: where a project's cases and goldens live and how to run its
//! goldens tool. Found in the current directory or above, like Cargo.toml, so the harness runs
//! from an engine's own repository; every path and hint (regenerate, rerun, the Python that runs
//! the HF oracle) derives from it.
//!
//! ```toml
//! [paths]
//! cases = "cases"          # relative to this file (the defaults)
//! goldens = "goldens"
//!
//! [python]
//! command = "tools/.venv/bin/python"   # the Python that has the goldens tool
//!
//! [commands]
//! regen = "{python} -m harness_goldens --case {case}"   # shown when goldens are missing or stale
//! rerun = "cargo test --test cases -- --exact '{trial}'" # shown after a failing trial
//!
//! [engines]
//! default = ["reference", "my-port"]   # the engines that run on cases listing none
//!
//! [goldens]
//! remote = "https://example.org/goldens/"   # content-addressed store for large goldens
//! cache = "/var/cache/goldens"               # where fetched goldens go (default ~/.cache/harness/goldens)
//! ```
//!
//! Without a project file the root is the nearest directory with `cases/` and `goldens/`, and
//! every setting has its default.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use serde::Deserialize;

use crate::error::{Error, Result, did_you_mean};

pub const FILE: &str = "harness.toml";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    paths: PathsFile,
    #[serde(default)]
    python: PythonFile,
    #[serde(default)]
    commands: CommandsFile,
    #[serde(default)]
    engines: EnginesFile,
    #[serde(default)]
    goldens: GoldensFile,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PathsFile {
    cases: Option<PathBuf>,
    goldens: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PythonFile {
    command: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CommandsFile {
    regen: Option<String>,
    rerun: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct EnginesFile {
    default: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct GoldensFile {
    remote: Option<String>,
    cache: Option<PathBuf>,
}

/// A project: its root and settings, with defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct Project {
    pub root: PathBuf,
    /// The project file, when there is one.
    pub file: Option<PathBuf>,
    pub cases: PathBuf,
    pub goldens: PathBuf,
    /// The Python that runs the goldens tool and the HF oracle (relative to the root if it has a
    /// `/`, else looked up on PATH).
    pub python: String,
    regen: String,
    rerun: String,
    /// Engines that run on cases listing none (None: each engine's own default).
    pub default_engines: Option<Vec<String>>,
    /// Base URL of a content-addressed goldens store (fetched on demand into a local cache).
    pub remote: Option<String>,
    /// Where goldens fetched from `remote` are kept (default: [`crate::golden::remote::cache_dir`]).
    pub cache: Option<PathBuf>,
}

impl Project {
    /// The project rooted at `root`: its `harness.toml` if it has one, else the defaults.
    pub fn load(root: &Path) -> Result<Project> {
        let file = root.join(FILE);
        let parsed: File = match std::fs::read_to_string(&file) {
            Ok(text) => toml::from_str(&text).map_err(|e| toml_error(&file, &text, e))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => File::default(),
            Err(e) => return Err(Error::io(&file, &e)),
        };
        let has_file = file.is_file();
        let dir = |p: Option<PathBuf>, default: &str| {
            let p = p.unwrap_or_else(|| PathBuf::from(default));
            if p.is_absolute() { p } else { root.join(p) }
        };
        let python = parsed.python.command.unwrap_or_else(|| {
            if root.join("tools/.venv/bin/python").exists() {
                "tools/.venv/bin/python".into()
            } else {
                "python3".into()
            }
        });
        let regen = parsed.commands.regen.unwrap_or_else(|| {
            if root.join("tools/regen_goldens.py").is_file() {
                "{python} tools/regen_goldens.py --case {case}".into()
            } else {
                "harness-goldens --case {case}".into()
            }
        });
        let rerun = parsed.commands.rerun.unwrap_or_else(|| "cargo test --test cases -- --exact '{trial}'".into());
        for (key, template, need) in [("commands.regen", &regen, "{case}"), ("commands.rerun", &rerun, "{trial}")] {
            if has_file && !template.contains(need) {
                return Err(Error::input(format!("`{key}` has no `{need}`: {template}"))
                    .file(&file)
                    .hint(format!("the command must name what it runs, e.g. `... {need}`")));
            }
        }
        if let Some(r) = &parsed.goldens.remote
            && !(r.starts_with("http://") || r.starts_with("https://") || r.starts_with("file://"))
        {
            return Err(Error::input(format!("`goldens.remote` `{r}` is not an http(s):// or file:// URL"))
                .file(&file)
                .hint("e.g. `remote = \"https://example.org/goldens/\"`"));
        }
        Ok(Project {
            root: root.to_path_buf(),
            file: has_file.then_some(file),
            cases: dir(parsed.paths.cases, "cases"),
            goldens: dir(parsed.paths.goldens, "goldens"),
            python,
            regen,
            rerun,
            default_engines: parsed.engines.default,
            remote: parsed.goldens.remote,
            cache: parsed.goldens.cache.map(|c| dir(Some(c), "")),
        })
    }

    /// The command that regenerates `case`'s goldens (and records its model's structure).
    pub fn regen_command(&self, case: &str) -> String {
        self.regen.replace("{python}", &self.python).replace("{case}", case)
    }

    /// The regenerate command for everything stale (no `--case`).
    pub fn regen_all_command(&self) -> String {
        let c = self.regen.replace("{python}", &self.python);
        c.split(" --case {case}").next().unwrap_or(&c).replace(" {case}", "").replace("{case}", "")
    }

    /// The command that reruns one trial.
    pub fn rerun_command(&self, trial: &str) -> String {
        self.rerun.replace("{trial}", trial)
    }

    /// Run trials through another front-end (the `harness` CLI): its rerun command.
    pub fn with_rerun(mut self, template: &str) -> Project {
        self.rerun = template.to_string();
        self
    }
}

fn toml_error(file: &Path, text: &str, e: toml::de::Error) -> Error {
    let pos = e.span().map(|s| {
        let before = &text[..s.start.min(text.len())];
        crate::error::Pos {
            line: before.matches('\n').count() + 1,
            col: before.rsplit('\n').next().map_or(0, |l| l.len()) + 1,
        }
    });
    let msg = e.message().to_string();
    let mut err = Error::input(crate::error::lowercase_first(&msg)).file(file).at(pos);
    // serde names the unknown key and the expected ones: offer the closest.
    if let Some(rest) = msg.strip_prefix("unknown field `")
        && let Some((key, expected)) = rest.split_once("`, expected ")
    {
        let keys: Vec<&str> = expected
            .split(['`', ',', ' '])
            .filter(|w| !w.is_empty() && *w != "or" && *w != "one" && *w != "of")
            .collect();
        if let Some(k) = did_you_mean(key, keys.iter().copied()) {
            err = err.hint(format!("did you mean `{k}`?"));
        }
    }
    err
}

/// The project of `root`, read once per process.
pub fn for_root(root: &Path) -> Result<Arc<Project>> {
    static CACHE: OnceLock<Mutex<HashMap<PathBuf, Arc<Project>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(p) = cache.lock().unwrap().get(root) {
        return Ok(p.clone());
    }
    let p = Arc::new(Project::load(root)?);
    cache.lock().unwrap().insert(root.to_path_buf(), p.clone());
    Ok(p)
}

/// The project of `root`, or the defaults when its project file does not load (that error is
/// reported where the project is loaded for a run; hints must not fail).
pub fn or_default(root: &Path) -> Arc<Project> {
    for_root(root).unwrap_or_else(|_| {
        Arc::new(Project {
            root: root.to_path_buf(),
            file: None,
            cases: root.join("cases"),
            goldens: root.join("goldens"),
            python: "python3".into(),
            regen: "harness-goldens --case {case}".into(),
            rerun: "cargo test --test cases -- --exact '{trial}'".into(),
            default_engines: None,
            remote: None,
            cache: None,
        })
    })
}

/// The cases directory of the project at `root`.
pub fn cases_dir(root: &Path) -> PathBuf {
    or_default(root).cases.clone()
}

/// The goldens directory of the project at `root`.
pub fn goldens_dir(root: &Path) -> PathBuf {
    or_default(root).goldens.clone()
}

/// The project root: `$HARNESS_ROOT`; else the nearest ancestor of the current directory with a
/// `harness.toml`; else the nearest with `cases/` and `goldens/` (a project without a file).
pub fn find_root() -> Result<PathBuf> {
    if let Ok(r) = std::env::var("HARNESS_ROOT") {
        let p = PathBuf::from(r);
        if !p.join(FILE).is_file() && !p.join("cases").is_dir() {
            return Err(Error::input("HARNESS_ROOT has no harness.toml and no cases/ directory")
                .file(&p)
                .hint("point it at a project root, or create one with `harness init`"));
        }
        return Ok(p);
    }
    let cwd = std::env::current_dir().map_err(|e| Error::io(Path::new("."), &e))?;
    if let Some(p) = cwd.ancestors().find(|p| p.join(FILE).is_file()) {
        return Ok(p.to_path_buf());
    }
    cwd.ancestors().find(|p| p.join("cases").is_dir() && p.join("goldens").is_dir()).map(Path::to_path_buf).ok_or_else(
        || {
            Error::input("no harness.toml here or above, and no cases/ and goldens/ directories")
                .file(&cwd)
                .hint("run from a project, set HARNESS_ROOT, or create one with `harness init`")
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_without_a_file() {
        let d = tempfile::tempdir().unwrap();
        let p = Project::load(d.path()).unwrap();
        assert_eq!(p.cases, d.path().join("cases"));
        assert_eq!(p.regen_command("llama/mha"), "harness-goldens --case llama/mha");
        assert_eq!(p.rerun_command("reference::x"), "cargo test --test cases -- --exact 'reference::x'");
        assert_eq!(p.python, "python3");
    }

    #[test]
    fn settings_and_templates() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join(FILE),
            "[paths]\ncases = \"tests/cases\"\n[python]\ncommand = \".venv/bin/python\"\n[commands]\nregen = \"{python} -m harness_goldens --case {case}\"\nrerun = \"harness run --exact '{trial}'\"\n[engines]\ndefault = [\"mine\"]\n",
        )
        .unwrap();
        let p = Project::load(d.path()).unwrap();
        assert_eq!(p.cases, d.path().join("tests/cases"));
        assert_eq!(p.goldens, d.path().join("goldens"));
        assert_eq!(p.regen_command("a/b"), ".venv/bin/python -m harness_goldens --case a/b");
        assert_eq!(p.regen_all_command(), ".venv/bin/python -m harness_goldens");
        assert_eq!(p.rerun_command("e::c"), "harness run --exact 'e::c'");
        assert_eq!(p.default_engines.as_deref(), Some(&["mine".to_string()][..]));
    }

    #[test]
    fn a_misspelled_key_is_located_with_a_did_you_mean() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join(FILE), "[paths]\ncases = \"c\"\ngolden = \"g\"\n").unwrap();
        let e = Project::load(d.path()).unwrap_err();
        let s = e.to_string();
        assert!(s.contains("harness.toml:3:1") && s.contains("unknown field `golden`"), "{s}");
        assert_eq!(e.hint.as_deref(), Some("did you mean `goldens`?"));
        std::fs::write(d.path().join(FILE), "[commands]\nregen = \"python regen.py\"\n").unwrap();
        assert!(Project::load(d.path()).unwrap_err().to_string().contains("has no `{case}`"));
    }
}
