//! The layering: each crate depends only on crates below it, and each module of the harness
//! crate imports only modules of its own layer or below. A new module must be given a layer
//! here; an import that reaches up fails with the file and line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The workspace's crates, bottom up.
const CRATES: &[(&str, &str)] = &[
    ("kernels", "harness-kernels"),
    ("api", "harness-api"),
    ("engines", "harness-engines"),
    ("harness", "harness"),
    ("cli", "harness-cli"),
];

/// The harness crate's top-level modules by layer, bottom up. Modules of one layer may use each
/// other; the modules of layer 0 are the engine API crate's, re-exported.
const LAYERS: &[(&str, &[&str])] = &[
    (
        "engine API (harness-api) and the built-in engines (harness-engines)",
        &[
            "config",
            "engines",
            "error",
            "hash",
            "inputs",
            "logits",
            "metrics",
            "model",
            "sentence",
            "structure",
            "tensor",
            "timings",
            "tolerance",
        ],
    ),
    ("base: project file, YAML, digests, report views", &["digest", "hub", "project", "report", "yaml"]),
    ("schema: cases and their inputs", &["case", "named", "text"]),
    ("goldens store and external engines", &["engine", "golden"]),
    ("compare and diagnose", &["bisect", "catalogue", "decode", "diagnose", "expected", "tokenization", "trial"]),
    (
        "run: runner, findings, shrinking, metamorphic, dump/diff",
        &["diff", "dump", "findings", "metamorphic", "runner", "shrink"],
    ),
];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|(_, mods)| mods.contains(&module))
}

/// Every `crate::<module>` the source names (comments skipped; `crate::{a, b::c}` groups
/// expanded), with its line number. Root items (`crate::Error`, re-exported from the engine API)
/// are not modules and are skipped.
fn crate_refs(src: &str) -> Vec<(usize, String)> {
    let code: String = src.lines().map(|l| l.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n");
    let line_of = |i: usize| code[..i].matches('\n').count() + 1;
    let ident = |s: &str| -> String { s.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect() };
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(k) = code[from..].find("crate::") {
        let i = from + k;
        from = i + "crate::".len();
        if code[..i].chars().last().is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue; // `harness_crate::` or the like
        }
        let rest = &code[from..];
        if let Some(group) = rest.strip_prefix('{') {
            // Names at the group's top level: the first identifier of each comma-separated item.
            let (mut depth, mut item_start) = (0usize, true);
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && (c.is_ascii_alphanumeric() || c == '_') => {
                        item_start = false;
                        out.push((line_of(from + 1 + j), ident(&group[j..])));
                    }
                    _ => {}
                }
            }
        } else {
            out.push((line_of(i), ident(rest)));
        }
    }
    out.retain(|(_, name)| name.starts_with(|c: char| c.is_ascii_lowercase()));
    out
}

/// The upward imports of a module (its files given as `(path, source)`), as messages.
fn upward(module: &str, files: &[(PathBuf, String)]) -> Vec<String> {
    let Some(own) = layer_of(module) else {
        return vec![format!("module `{module}` has no layer: add it to LAYERS in harness/tests/layering.rs")];
    };
    let mut bad = Vec::new();
    for (path, src) in files {
        for (line, name) in crate_refs(src) {
            match layer_of(&name) {
                Some(l) if l > own => bad.push(format!(
                    "{}:{line}: `{module}` ({}) imports `crate::{name}` ({}), a layer above it",
                    path.display(),
                    LAYERS[own].0,
                    LAYERS[l].0
                )),
                None if name != module => {
                    bad.push(format!("{}:{line}: `crate::{name}` is not a module in LAYERS", path.display()))
                }
                _ => {}
            }
        }
    }
    bad
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn harness_modules_import_only_their_layer_or_below() {
    let src = workspace().join("harness/src");
    let mut modules: BTreeMap<String, Vec<(PathBuf, String)>> = BTreeMap::new();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    for f in files {
        let rel = f.strip_prefix(&src).unwrap();
        let top = rel.iter().next().unwrap().to_string_lossy().trim_end_matches(".rs").to_string();
        if top == "lib" {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap();
        modules.entry(top).or_default().push((rel.to_path_buf(), text));
    }
    assert!(modules.len() > 10, "found only {} modules under {}", modules.len(), src.display());
    let bad: Vec<String> = modules.iter().flat_map(|(m, files)| upward(m, files)).collect();
    assert!(bad.is_empty(), "imports against the layering (harness/tests/layering.rs):\n{}", bad.join("\n"));
    // Every layer-0 name really is the engine API crate's, not a module of the harness.
    for m in LAYERS[0].1.iter().filter(|m| **m != "engines") {
        assert!(!modules.contains_key(*m), "`{m}` is in the engine API layer but is a module of harness/src");
        assert!(workspace().join(format!("api/src/{m}.rs")).exists(), "api/src/{m}.rs does not exist");
    }
}

#[test]
fn the_checker_catches_an_upward_import() {
    let files = vec![(
        PathBuf::from("case.rs"),
        "// crate::runner in a comment is fine\nuse crate::runner::Suite;\n".to_string(),
    )];
    let bad = upward("case", &files);
    assert_eq!(bad.len(), 1, "{bad:?}");
    assert!(bad[0].starts_with("case.rs:2: `case`"), "{}", bad[0]);
    assert!(upward("newmodule", &[]).iter().any(|m| m.contains("has no layer")));
    assert!(upward("runner", &[(PathBuf::from("r.rs"), "use crate::case::Case;".into())]).is_empty());
    let grouped = "use crate::{\n    tensor::Tensor,\n    shrink::{a, b},\n};\nuse crate::Error;\n";
    let bad = upward("golden", &[(PathBuf::from("g.rs"), grouped.to_string())]);
    assert_eq!(bad.len(), 1, "{bad:?}");
    assert!(bad[0].starts_with("g.rs:3: `golden`"), "{}", bad[0]);
}

/// The path dependencies of a crate's Cargo.toml, by package name (normal, dev and build).
fn path_deps(manifest: &str) -> Vec<(String, String)> {
    let doc: toml::Table = manifest.parse().unwrap();
    let mut out = Vec::new();
    for section in ["dependencies", "dev-dependencies", "build-dependencies"] {
        if let Some(deps) = doc.get(section).and_then(|d| d.as_table()) {
            for (name, spec) in deps {
                if spec.get("path").is_some() {
                    let pkg = spec.get("package").and_then(|p| p.as_str()).unwrap_or(name);
                    out.push((section.to_string(), pkg.to_string()));
                }
            }
        }
    }
    out
}

#[test]
fn crates_depend_only_on_crates_below() {
    for (i, (dir, pkg)) in CRATES.iter().enumerate() {
        let manifest = std::fs::read_to_string(workspace().join(dir).join("Cargo.toml")).unwrap();
        for (section, dep) in path_deps(&manifest) {
            let j =
                CRATES.iter().position(|(_, p)| *p == dep).unwrap_or_else(|| panic!("{dir}/Cargo.toml: unknown {dep}"));
            // A crate's tests may use the crates above it (the engines' tests run the harness).
            let allowed = j < i || (section == "dev-dependencies" && j != i);
            assert!(allowed, "{dir}/Cargo.toml [{section}]: {pkg} depends on {dep}, a crate above it");
        }
    }
    // The engine API builds without candle unless asked (feature `candle`).
    let api: toml::Table = std::fs::read_to_string(workspace().join("api/Cargo.toml")).unwrap().parse().unwrap();
    let candle = &api["dependencies"]["candle-core"];
    assert_eq!(candle.get("optional").and_then(|o| o.as_bool()), Some(true), "harness-api must not need candle");
}
