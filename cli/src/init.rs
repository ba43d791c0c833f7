//! `harness init`: a working project in an empty directory (or an engine's repository): the
//! project file, a tiny model spec and case, a CI workflow, an engine stub, and the goldens when
//! a Python with the goldens tool is at hand. Nothing existing is overwritten.

use std::path::{Path, PathBuf};
use std::process::Command;

use harness::error::{Error, Result, display_path};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// A program in any language, run through the JSON protocol (docs/engine-protocol.md).
    External,
    /// A Rust crate implementing harness-api's `Engine`, tested with `cargo test`.
    Rust,
}

pub struct Options {
    pub dir: PathBuf,
    pub kind: Kind,
    pub name: String,
    /// The Python that has the goldens tool (harness_goldens).
    pub python: String,
    /// Where this harness's crates are, for a Rust engine's path dependencies.
    pub harness_path: PathBuf,
    pub goldens: bool,
}

const MODEL: &str = "cases/models/gpt2-tiny.yaml";
const CASE: &str = "cases/gpt2/smoke.yaml";
pub const CASE_ID: &str = "gpt2/smoke";

const MODEL_YAML: &str = "\
# A tiny GPT-2, random weights from this config and seed (the goldens tool writes them to
# goldens/models/gpt2-tiny/): learned positions, Conv1D layers, fused c_attn, gelu_new.
# Replace `family` and `config` with the architecture you port (any transformers class).
family: GPT2LMHeadModel
source:
  random: {seed: 44, every_weight: true}
config:
  vocab_size: 512
  n_embd: 64
  n_layer: 2
  n_head: 4
  n_positions: 64
  n_inner: 128
  activation_function: gelu_new
  layer_norm_epsilon: 1.0e-5
  initializer_range: 0.1
  bos_token_id: 1
  eos_token_id: 2
  tie_word_embeddings: true
";

fn case_yaml(o: &Options) -> String {
    // A Rust engine that runs nothing yet says so (`supports`), so its trial is ignored with the
    // reason; an external one is listed when its program computes taps.
    let engines = match o.kind {
        Kind::Rust => format!(
            "# `reference` is the harness's own engine (a check that the goldens and the setup work);\n\
             # `{0}` is yours: its trial is ignored, with the reason, until it runs the class.\n\
             engines: [reference, {0}]\n",
            o.name
        ),
        Kind::External => format!(
            "# `reference` is the harness's own engine (a check that the goldens and the setup work).\n\
             # Add `{0}` when engine/{0}.py writes the taps: engines: [reference, {0}]\n\
             engines: [reference]\n",
            o.name
        ),
    };
    format!(
        "\
description: one 12-token sequence through the tiny GPT-2, every block tapped
model: gpt2-tiny
inputs:
  input_ids: [[1, 12, 344, 469, 310, 128, 228, 250, 218, 68, 436, 198]]
taps:
  - transformer.wte
  - transformer.wpe
  - transformer.h.*.attn
  - transformer.h.*.mlp
  - transformer.h.*
  - transformer.ln_f
  - logits
{engines}"
    )
}

fn project_toml(o: &Options) -> String {
    let rerun = match o.kind {
        Kind::External => "harness run --exact '{trial}'",
        Kind::Rust => "cargo test --test cases -- --exact '{trial}'",
    };
    format!(
        "\
# The harness's project file: found upward from the current directory, like Cargo.toml.

[paths]
cases = \"cases\"
goldens = \"goldens\"

[python]
# The Python that has the goldens tool (pip install <harness>/tools).
command = \"{python}\"

[commands]
regen = \"{{python}} -m harness_goldens --case {{case}}\"
rerun = \"{rerun}\"

# [goldens]
# remote = \"https://example.org/goldens/\"   # large goldens in a content-addressed store
",
        python = o.python
    )
}

fn engine_yaml(name: &str) -> String {
    format!(
        "\
# Your engine (docs/engine-protocol.md): the harness runs `command` once per forward with a
# request.json; it writes one .npy per requested tap into the request's output_dir.
description: {name}, the engine under test
command: [python3, engine/{name}.py, \"{{request}}\"]
# The HF classes it runs; it runs only on cases that list it under `engines:`.
families: [GPT2LMHeadModel]
timeout: 60
"
    )
}

fn engine_py(name: &str) -> String {
    format!(
        "\
#!/usr/bin/env python3
\"\"\"{name}: the engine under test, as the harness runs it (docs/engine-protocol.md).

Read the request, run the model in your engine, write each requested tap as <name>.npy into
output_dir. Then list `{name}` under `engines:` in cases/gpt2/smoke.yaml.
\"\"\"
import json
import sys


def main():
    request = json.load(open(sys.argv[1]))
    model_dir = request[\"model\"][\"dir\"]          # config.json + model.safetensors (HF names)
    inputs = request[\"inputs\"]                    # input_ids.npy (int64, [batch, seq]), ...
    for tap in request[\"taps\"]:                   # {{\"hf\": \"transformer.h.0.attn\", \"engine\": ...}}
        pass                                        # numpy.save(f\"{{request['output_dir']}}/{{tap['hf']}}.npy\", x)
    sys.exit(f\"{name}: not implemented yet (model {{model_dir}}, inputs {{sorted(inputs)}})\")


if __name__ == \"__main__\":
    main()
"
    )
}

fn cargo_toml(o: &Options) -> String {
    let p = |c: &str| o.harness_path.join(c).display().to_string();
    format!(
        "\
[package]
name = \"{name}\"
version = \"0.1.0\"
edition = \"2024\"
publish = false

[dependencies]
# The engine API only (Tensor, Inputs, the Engine trait): no candle.
harness-api = {{ path = \"{api}\" }}

[dev-dependencies]
harness = {{ path = \"{harness}\", default-features = false }}

[[test]]
name = \"cases\"
harness = false
",
        name = o.name.replace('-', "_"),
        api = p("api"),
        harness = p("harness")
    )
}

fn engine_rs(name: &str) -> String {
    format!(
        "\
//! {name}: the engine under test. Implement `load` and `LoadedModel::run` (every requested
//! tap under its HF module name, `[batch, seq, hidden]`), then widen `implements`.

use harness_api::engine::{{Engine, LoadedModel, Outputs}};
use harness_api::inputs::Inputs;
use harness_api::model::ModelSpec;
use harness_api::{{Error, Result}};

pub struct MyEngine;

impl Engine for MyEngine {{
    fn name(&self) -> &str {{
        \"{name}\"
    }}
    fn supports(&self, model: &ModelSpec) -> std::result::Result<(), String> {{
        // Its trials are ignored with this reason until it runs the class.
        Err(format!(\"{name} does not run {{}} yet (src/lib.rs)\", model.class))
    }}
    fn load(&self, model: &ModelSpec) -> Result<Box<dyn LoadedModel>> {{
        // model.dir holds config.json and model.safetensors; model.config the effective config.
        Ok(Box::new(Loaded {{ dir: model.dir.clone() }}))
    }}
}}

struct Loaded {{
    dir: std::path::PathBuf,
}}

impl LoadedModel for Loaded {{
    fn run(&self, inputs: &Inputs, taps: &[&str]) -> Result<Outputs> {{
        let _ = (inputs, taps);
        Err(Error::engine(format!(\"not implemented yet ({{}})\", self.dir.display())))
    }}
}}
"
    )
}

fn cases_rs(o: &Options) -> String {
    format!(
        "\
//! Every case under cases/ as a trial, on the built-in reference engine and yours:
//! `cargo test --test cases`.

fn main() -> std::process::ExitCode {{
    harness::Harness::new().engine({krate}::MyEngine).run()
}}
",
        krate = o.name.replace('-', "_")
    )
}

fn workflow(o: &Options) -> String {
    // The harness's repository is expected at harness/ (a git submodule, or a checkout step).
    let (strategy, build, test) = match o.kind {
        Kind::External => {
            ("", "      - run: cargo install --locked --path harness/cli\n", "      - run: harness run\n")
        }
        Kind::Rust => (
            "    strategy:\n      matrix:\n        shard: [1, 2]\n",
            "      - uses: taiki-e/install-action@nextest\n",
            // nextest runs the libtest-mimic `cases` binary like any test; each job takes a share.
            "      - run: cargo nextest run --partition hash:${{ matrix.shard }}/2\n",
        ),
    };
    format!(
        "\
# The harness in CI: the goldens must reproduce, and every case must pass on every engine.
# It expects the harness's repository at harness/ (e.g. a git submodule).
name: harness
on: [push, pull_request]
jobs:
  cases:
    runs-on: ubuntu-latest
{strategy}    steps:
      - uses: actions/checkout@v4
        with: {{submodules: true, lfs: true}}
      - uses: actions/setup-python@v5
        with: {{python-version: '3.11', cache: pip}}
      # The goldens tool, pinned: goldens reproduce bit for bit only with its versions.
      - run: pip install ./harness/tools
      - uses: dtolnay/rust-toolchain@stable
{build}      - run: python -m harness_goldens --check --quiet
{test}"
    )
}

/// Write the project; returns the files written (relative), in order.
pub fn init(o: &Options) -> Result<Vec<PathBuf>> {
    let mut files: Vec<(String, String)> = vec![
        ("harness.toml".into(), project_toml(o)),
        (MODEL.into(), MODEL_YAML.into()),
        (CASE.into(), case_yaml(o)),
        (".github/workflows/harness.yml".into(), workflow(o)),
    ];
    match o.kind {
        Kind::External => {
            files.push((format!("cases/engines/{}.yaml", o.name), engine_yaml(&o.name)));
            files.push((format!("engine/{}.py", o.name), engine_py(&o.name)));
        }
        Kind::Rust => {
            files.push(("Cargo.toml".into(), cargo_toml(o)));
            files.push(("src/lib.rs".into(), engine_rs(&o.name)));
            files.push(("tests/cases.rs".into(), cases_rs(o)));
        }
    }
    if !o.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') || o.name.is_empty() {
        return Err(Error::input(format!("engine name `{}` must be letters, digits, `-` and `_`", o.name)));
    }
    let existing: Vec<&str> = files.iter().map(|(f, _)| f.as_str()).filter(|f| o.dir.join(f).exists()).collect();
    if !existing.is_empty() {
        return Err(Error::input(format!("{} already exists here; nothing was written", existing.join(", ")))
            .file(&o.dir)
            .hint("run `harness init` in an empty directory, or move those files away"));
    }
    for (rel, text) in &files {
        let path = o.dir.join(rel);
        let parent = path.parent().unwrap();
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, &e))?;
        std::fs::write(&path, text).map_err(|e| Error::io(&path, &e))?;
    }
    std::fs::create_dir_all(o.dir.join("goldens")).map_err(|e| Error::io(&o.dir.join("goldens"), &e))?;
    Ok(files.into_iter().map(|(f, _)| PathBuf::from(f)).collect())
}

/// Whether `python` can import the goldens tool.
pub fn has_goldens_tool(python: &str, dir: &Path) -> bool {
    Command::new(python)
        .args(["-c", "import harness_goldens"])
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Generate the case's goldens with the goldens tool (output passes through).
pub fn goldens(o: &Options) -> Result<()> {
    let status = Command::new(&o.python)
        .args(["-m", "harness_goldens", "--case", CASE_ID])
        .current_dir(&o.dir)
        .status()
        .map_err(|e| Error::io(Path::new(&o.python), &e))?;
    if !status.success() {
        return Err(Error::input(format!("the goldens tool failed ({status})")).file(o.dir.join(CASE)).hint(format!(
            "rerun it: cd {} && {} -m harness_goldens --case {CASE_ID}",
            display_path(&o.dir),
            o.python
        )));
    }
    Ok(())
}

/// What to run next, in the new project.
pub fn next(o: &Options, have_goldens: bool) -> Vec<String> {
    let mut steps = Vec::new();
    if !have_goldens {
        steps.push(format!("{} -m pip install {}", o.python, o.harness_path.join("tools").display()));
        steps.push(format!("{} -m harness_goldens --case {CASE_ID}", o.python));
    }
    steps.push(match o.kind {
        Kind::External => "harness run".into(),
        Kind::Rust => "cargo test --test cases".into(),
    });
    steps
}
